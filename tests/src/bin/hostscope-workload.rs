//! A process whose syscalls the tests control exactly.
//!
//! `hostscope-workload mix --getppid N --sleeps K --sleep-ms M --ebadf F --enoent E
//! --threads T --yields Y` prints `ready <pid>` and waits for a line on stdin;
//! then each of T threads makes exactly N `getppid` and Y `sched_yield`
//! (which switches the thread out mid-syscall whenever another task is
//! runnable), and the main thread K `nanosleep` of M ms, F failing
//! `fchdir(-1)` (EBADF) and E failing `rmdir` of a missing path (ENOENT), all
//! through raw `syscall(2)`; it prints
//! one JSON line with what it did (including each sleep's duration measured
//! around the syscall), and waits for stdin to close before exiting.
//!
//! `hostscope-workload getppid-loop N` makes N `getppid` calls and prints the
//! mean nanoseconds per call (for `cargo xtask bench`).

use std::{
    io::{BufRead, Write},
    time::Instant,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("mix") => mix(&args[1..]),
        Some("getppid-loop") => {
            let n: u64 = args
                .get(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(1_000_000);
            let t = Instant::now();
            for _ in 0..n {
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
            let ns = t.elapsed().as_nanos() as f64 / n as f64;
            println!("{ns:.2}");
        }
        _ => {
            eprintln!(
                "usage: hostscope-workload mix [--getppid N] [--sleeps K] [--sleep-ms M] [--ebadf F] [--enoent E] | getppid-loop N"
            );
            std::process::exit(2);
        }
    }
}

fn flag(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, got {v}"))
        })
        .unwrap_or(default)
}

fn mix(args: &[String]) {
    let getppid = flag(args, "--getppid", 0);
    let sleeps = flag(args, "--sleeps", 0);
    let sleep_ms = flag(args, "--sleep-ms", 0);
    let ebadf = flag(args, "--ebadf", 0);
    let enoent = flag(args, "--enoent", 0);
    let threads = flag(args, "--threads", 1);
    let yields = flag(args, "--yields", 0);

    let stdin = std::io::stdin();
    let mut line = String::new();
    println!("ready {}", std::process::id());
    std::io::stdout().flush().unwrap();
    stdin.lock().read_line(&mut line).expect("read go line");

    let busy = move || {
        for i in 0..getppid.max(yields) {
            if i < getppid {
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
            if i < yields {
                unsafe { libc::syscall(libc::SYS_sched_yield) };
            }
        }
    };
    let workers: Vec<_> = (1..threads).map(|_| std::thread::spawn(busy)).collect();
    busy();
    for w in workers {
        w.join().unwrap();
    }
    let ts = libc::timespec {
        tv_sec: (sleep_ms / 1000) as libc::time_t,
        tv_nsec: ((sleep_ms % 1000) * 1_000_000) as libc::c_long,
    };
    let mut sleep_ns = Vec::new();
    for _ in 0..sleeps {
        let t = Instant::now();
        let r = unsafe {
            libc::syscall(
                libc::SYS_nanosleep,
                &ts as *const libc::timespec,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
        sleep_ns.push(t.elapsed().as_nanos() as u64);
        assert_eq!(r, 0, "nanosleep interrupted");
    }
    for _ in 0..ebadf {
        let r = unsafe { libc::syscall(libc::SYS_fchdir, -1) };
        assert_eq!(r, -1);
    }
    let missing = c"/nonexistent-hostscope-test/dir";
    for _ in 0..enoent {
        let r = unsafe { libc::syscall(libc::SYS_rmdir, missing.as_ptr()) };
        assert_eq!(r, -1);
    }
    println!(
        "{}",
        serde_json::json!({ "pid": std::process::id(), "sleep_ns": sleep_ns })
    );
    std::io::stdout().flush().unwrap();
    // Stay alive (and so identifiable) until the test closes stdin.
    let mut rest = String::new();
    while stdin
        .lock()
        .read_line(&mut rest)
        .map(|n| n > 0)
        .unwrap_or(false)
    {
        rest.clear();
    }
}
