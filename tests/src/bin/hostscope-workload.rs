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
//!
//! `hostscope-workload series P K` forks P processes that each make K
//! different syscalls once (each on fd -1, so each also fails with one
//! errno: 2K series per process, as far as hostscope is concerned), prints
//! `ready` once all have, and keeps them alive until stdin closes; then it
//! kills them and exits. For the series-count benchmarks.
//!
//! `hostscope-workload pingpong N` bounces one byte N times between two
//! threads over two pipes and prints the mean nanoseconds per round trip
//! (four syscalls and two context switches each, both threads on one CPU).
//!
//! TCP, for the retransmit tests (run inside a test's network namespaces;
//! IPv6 addresses are written `[fd00:1::2]:5001`). Each is bounded in time
//! by `--timeout-ms` (default 20000): past it, a watchdog prints
//! `{"pid":..,"error":"deadline ..","sent":..,"received":..}` and exits 3.
//! Other failures print a JSON line with `"error"` and exit 1.
//!
//! `hostscope-workload tcp-sink --listen ADDR:PORT [--send BYTES]
//! [--max-bytes B]` listens, prints `{"ready":true,"pid":..,"port":..}`,
//! accepts one connection; with `--send` writes BYTES to it, shuts down
//! writing and reads until EOF, else reads until EOF (at most B bytes,
//! default 4 GiB, exit 4 beyond); closes it and prints
//! `{"pid":..,"received":..,"sent":..,"peer":"ip:port"}`.
//!
//! `hostscope-workload tcp-send --connect ADDR:PORT [--bytes N] [--recv]
//! [--max-bytes B]` connects (within the deadline), writes N bytes (default
//! 0) in 64 KiB writes, shuts down writing and reads until EOF (so the peer
//! has read everything); prints `{"pid":..,"sent":..,"received":..,
//! "local_port":..,"local":"ip:port"}`. With `--recv` it reads until EOF
//! *before* shutting down writing: the client of `tcp-sink --send`.
//!
//! `hostscope-workload tcp-connect --connect ADDR:PORT --timeout-ms T` makes
//! one `connect` with a T ms timeout and prints `{"pid":..,"connected":..,
//! "error":..,"elapsed_ms":..}` (`error` null if it connected); exit 0
//! either way (its deadline is T + 5 s).
//!
//! Loopback TCP throughput, for `cargo xtask bench` (tcp part); both ends
//! run in this process (two threads), so its CPU time is both ends' (the
//! kernel's loopback receive work included: it runs in the sender's
//! context). Bounded by `--timeout-ms` (default 60000) like the above.
//!
//! `hostscope-workload tcp-bulk --bytes N [--write-size W]` sends N bytes
//! over one 127.0.0.1 connection in W-byte writes (default 64 KiB) to a
//! thread that reads until EOF; prints `{"bytes":..,"elapsed_ns":..,
//! "cpu_ns":..}` (`cpu_ns`: this process's CPU time, all threads).
//!
//! `hostscope-workload tcp-rr --count N [--size S] [--one-cpu]` makes N
//! request/response round trips of S bytes (default 64) each way over one
//! 127.0.0.1 connection with TCP_NODELAY to an echo thread: one write and
//! one read per message. With `--one-cpu` both threads are pinned to the
//! current CPU. Prints `{"round_trips":..,"elapsed_ns":..,"cpu_ns":..}`.

use std::{
    io::{BufRead, Read as _, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
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
        Some("series") => {
            let num = |i: usize| args.get(i).and_then(|s| s.parse::<usize>().ok());
            let (Some(procs), Some(k)) = (num(1), num(2)) else {
                eprintln!("usage: hostscope-workload series PROCESSES SYSCALLS");
                std::process::exit(2);
            };
            series(procs, k);
        }
        Some("storm") => {
            let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20_000);
            storm(n);
        }
        Some("tcp-sink") => tcp_sink(&args[1..]),
        Some("tcp-send") => tcp_send(&args[1..]),
        Some("tcp-connect") => tcp_connect(&args[1..]),
        Some("tcp-bulk") => tcp_bulk(&args[1..]),
        Some("tcp-rr") => tcp_rr(&args[1..]),
        Some("pingpong") => {
            let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
            println!("{:.2}", pingpong(n));
        }
        _ => {
            eprintln!(
                "usage: hostscope-workload mix [--getppid N] [--sleeps K] [--sleep-ms M] [--ebadf F] [--enoent E] | getppid-loop N | series P K | storm N | pingpong N | tcp-sink --listen ADDR:PORT [--send N] | tcp-send --connect ADDR:PORT [--bytes N] [--recv] | tcp-connect --connect ADDR:PORT --timeout-ms T | tcp-bulk --bytes N [--write-size W] | tcp-rr --count N [--size S] [--one-cpu]"
            );
            std::process::exit(2);
        }
    }
}

/// A fork storm: N children, one after another, each making exactly one
/// `getppid` and exiting (`_exit`, so no other syscall returns). Prints
/// `{"children":N,"elapsed_ns":..}`.
fn storm(n: u64) {
    let t = Instant::now();
    for _ in 0..n {
        match unsafe { libc::fork() } {
            0 => unsafe {
                libc::syscall(libc::SYS_getppid);
                libc::_exit(0);
            },
            -1 => {
                eprintln!("fork: {}", std::io::Error::last_os_error());
                std::process::exit(1);
            }
            pid => {
                let mut status = 0;
                unsafe { libc::waitpid(pid, &mut status, 0) };
            }
        }
    }
    println!(
        "{{\"children\":{n},\"elapsed_ns\":{}}}",
        t.elapsed().as_nanos()
    );
}

fn pingpong(n: u64) -> f64 {
    fn pipe() -> [i32; 2] {
        let mut fds = [0i32; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
        fds
    }
    // Both threads on one CPU: every round trip is two context switches,
    // not two cross-CPU wake-ups (which on a VM cost ten times more and vary).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(libc::sched_getcpu().max(0) as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
    let (ping, pong) = (pipe(), pipe());
    let bounce = |from: i32, to: i32| {
        let mut b = [0u8; 1];
        assert_eq!(unsafe { libc::read(from, b.as_mut_ptr().cast(), 1) }, 1);
        assert_eq!(unsafe { libc::write(to, b.as_ptr().cast(), 1) }, 1);
    };
    let echo = std::thread::spawn(move || {
        for _ in 0..n {
            bounce(ping[0], pong[1]);
        }
    });
    let t = Instant::now();
    for _ in 0..n {
        assert_eq!(unsafe { libc::write(ping[1], [1u8].as_ptr().cast(), 1) }, 1);
        let mut b = [0u8; 1];
        assert_eq!(unsafe { libc::read(pong[0], b.as_mut_ptr().cast(), 1) }, 1);
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    echo.join().unwrap();
    for fd in ping.into_iter().chain(pong) {
        unsafe { libc::close(fd) };
    }
    ns
}

/// Bytes written and read so far, for the deadline watchdog's report.
static SENT: AtomicU64 = AtomicU64::new(0);
static RECEIVED: AtomicU64 = AtomicU64::new(0);

/// Size of each write, and of the read buffer.
const CHUNK: usize = 64 * 1024;

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn socket_addr(args: &[String], name: &str) -> SocketAddr {
    let v = opt(args, name).unwrap_or_else(|| {
        eprintln!("{name} ADDR:PORT is required (IPv6: [ADDR]:PORT)");
        std::process::exit(2);
    });
    v.parse()
        .unwrap_or_else(|_| panic!("{name} takes ADDR:PORT or [ADDR]:PORT, got {v}"))
}

/// Prints one JSON line and flushes.
fn emit(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}").unwrap();
    out.flush().unwrap();
}

/// Prints `{"pid":..,"error":..,"sent":..,"received":..}` and exits `code`.
fn fail(error: String, code: i32) -> ! {
    emit(serde_json::json!({
        "pid": std::process::id(),
        "error": error,
        "sent": SENT.load(Ordering::Relaxed),
        "received": RECEIVED.load(Ordering::Relaxed),
    }));
    std::process::exit(code);
}

/// The hard deadline: after `ms`, report what was done and exit 3, whatever
/// the main thread is blocked in.
fn watchdog(ms: u64) -> Instant {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(ms));
        fail(format!("deadline of {ms} ms passed"), 3);
    });
    Instant::now() + Duration::from_millis(ms)
}

/// Writes `n` bytes in writes of at most `CHUNK`.
fn send_bytes(s: &mut TcpStream, n: u64) {
    let buf = [0x5au8; CHUNK];
    let mut left = n;
    while left > 0 {
        let len = left.min(CHUNK as u64) as usize;
        match s.write(&buf[..len]) {
            Ok(0) => fail("write returned 0".into(), 1),
            Ok(w) => {
                left -= w as u64;
                SENT.fetch_add(w as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => fail(format!("write: {e}"), 1),
        }
    }
}

/// Reads until EOF, at most `max` bytes (else exit 4).
fn recv_to_eof(s: &mut TcpStream, max: u64) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(r) => {
                if RECEIVED.fetch_add(r as u64, Ordering::Relaxed) + r as u64 > max {
                    fail(format!("received more than --max-bytes {max}"), 4);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => fail(format!("read: {e}"), 1),
        }
    }
}

fn tcp_sink(args: &[String]) {
    let listen = socket_addr(args, "--listen");
    let send = flag(args, "--send", 0);
    let max = flag(args, "--max-bytes", 4 << 30);
    watchdog(flag(args, "--timeout-ms", 20_000));
    let listener =
        TcpListener::bind(listen).unwrap_or_else(|e| fail(format!("bind {listen}: {e}"), 1));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    emit(serde_json::json!({ "ready": true, "pid": std::process::id(), "port": port }));
    let (mut s, peer) = listener
        .accept()
        .unwrap_or_else(|e| fail(format!("accept: {e}"), 1));
    drop(listener);
    if send > 0 {
        send_bytes(&mut s, send);
        s.shutdown(Shutdown::Write)
            .unwrap_or_else(|e| fail(format!("shutdown: {e}"), 1));
    }
    recv_to_eof(&mut s, max);
    drop(s);
    emit(serde_json::json!({
        "pid": std::process::id(),
        "received": RECEIVED.load(Ordering::Relaxed),
        "sent": SENT.load(Ordering::Relaxed),
        "peer": peer.to_string(),
    }));
}

fn tcp_send(args: &[String]) {
    let to = socket_addr(args, "--connect");
    let bytes = flag(args, "--bytes", 0);
    let recv_first = args.iter().any(|a| a == "--recv");
    let max = flag(args, "--max-bytes", 4 << 30);
    let deadline = watchdog(flag(args, "--timeout-ms", 20_000));
    let left = deadline.saturating_duration_since(Instant::now());
    let mut s = TcpStream::connect_timeout(&to, left.max(Duration::from_millis(1)))
        .unwrap_or_else(|e| fail(format!("connect {to}: {e}"), 1));
    let local = s
        .local_addr()
        .unwrap_or_else(|e| fail(format!("getsockname: {e}"), 1));
    send_bytes(&mut s, bytes);
    if recv_first {
        recv_to_eof(&mut s, max);
        s.shutdown(Shutdown::Write)
            .unwrap_or_else(|e| fail(format!("shutdown: {e}"), 1));
    } else {
        s.shutdown(Shutdown::Write)
            .unwrap_or_else(|e| fail(format!("shutdown: {e}"), 1));
        recv_to_eof(&mut s, max);
    }
    drop(s);
    emit(serde_json::json!({
        "pid": std::process::id(),
        "sent": SENT.load(Ordering::Relaxed),
        "received": RECEIVED.load(Ordering::Relaxed),
        "local_port": local.port(),
        "local": local.to_string(),
    }));
}

fn tcp_connect(args: &[String]) {
    let to = socket_addr(args, "--connect");
    let timeout_ms = flag(args, "--timeout-ms", 20_000).max(1);
    watchdog(timeout_ms + 5_000);
    let t = Instant::now();
    let r = TcpStream::connect_timeout(&to, Duration::from_millis(timeout_ms));
    let elapsed_ms = t.elapsed().as_millis() as u64;
    let (connected, error) = match r {
        Ok(s) => {
            let _ = s.shutdown(Shutdown::Both);
            (true, None)
        }
        Err(e) => (false, Some(e.to_string())),
    };
    emit(serde_json::json!({
        "pid": std::process::id(),
        "connected": connected,
        "error": error,
        "elapsed_ms": elapsed_ms,
    }));
}

/// CPU time of this process (all threads) in ns.
fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) },
        0,
        "clock_gettime"
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A listener on an ephemeral 127.0.0.1 port and a connection to it: (the
/// client end, the accepted end).
fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| fail(format!("bind 127.0.0.1:0: {e}"), 1));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| fail(format!("getsockname: {e}"), 1));
    let client =
        TcpStream::connect(addr).unwrap_or_else(|e| fail(format!("connect {addr}: {e}"), 1));
    let (server, _) = listener
        .accept()
        .unwrap_or_else(|e| fail(format!("accept: {e}"), 1));
    (client, server)
}

fn tcp_bulk(args: &[String]) {
    let bytes = flag(args, "--bytes", 1 << 30);
    let write_size = flag(args, "--write-size", CHUNK as u64).clamp(1, 1 << 20) as usize;
    watchdog(flag(args, "--timeout-ms", 60_000));
    let (mut client, mut server) = loopback_pair();
    let t = Instant::now();
    let cpu = process_cpu_ns();
    let reader = std::thread::spawn(move || recv_to_eof(&mut server, u64::MAX));
    let buf = vec![0x5au8; write_size];
    let mut left = bytes;
    while left > 0 {
        let len = left.min(write_size as u64) as usize;
        match client.write(&buf[..len]) {
            Ok(0) => fail("write returned 0".into(), 1),
            Ok(w) => {
                left -= w as u64;
                SENT.fetch_add(w as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => fail(format!("write: {e}"), 1),
        }
    }
    client
        .shutdown(Shutdown::Write)
        .unwrap_or_else(|e| fail(format!("shutdown: {e}"), 1));
    reader.join().unwrap();
    let elapsed_ns = t.elapsed().as_nanos() as u64;
    let cpu_ns = process_cpu_ns() - cpu;
    let received = RECEIVED.load(Ordering::Relaxed);
    if received != bytes {
        fail(format!("sent {bytes} bytes, received {received}"), 1);
    }
    emit(serde_json::json!({ "bytes": bytes, "elapsed_ns": elapsed_ns, "cpu_ns": cpu_ns }));
}

/// Reads exactly `buf.len()` bytes; false on EOF before the first byte.
fn read_message(s: &mut TcpStream, buf: &mut [u8]) -> bool {
    let mut at = 0;
    while at < buf.len() {
        match s.read(&mut buf[at..]) {
            Ok(0) if at == 0 => return false,
            Ok(0) => fail("EOF inside a message".into(), 1),
            Ok(r) => at += r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => fail(format!("read: {e}"), 1),
        }
    }
    true
}

/// Writes all of `buf`.
fn write_message(s: &mut TcpStream, buf: &[u8]) {
    s.write_all(buf)
        .unwrap_or_else(|e| fail(format!("write: {e}"), 1));
}

fn tcp_rr(args: &[String]) {
    let count = flag(args, "--count", 100_000);
    let size = flag(args, "--size", 64).clamp(1, 1 << 20) as usize;
    let one_cpu = args.iter().any(|a| a == "--one-cpu");
    watchdog(flag(args, "--timeout-ms", 60_000));
    if one_cpu {
        // Inherited by the echo thread spawned below.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(libc::sched_getcpu().max(0) as usize, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
                0,
                "sched_setaffinity"
            );
        }
    }
    let (mut client, mut server) = loopback_pair();
    for s in [&client, &server] {
        s.set_nodelay(true)
            .unwrap_or_else(|e| fail(format!("TCP_NODELAY: {e}"), 1));
    }
    let echo = std::thread::spawn(move || {
        let mut buf = vec![0u8; size];
        while read_message(&mut server, &mut buf) {
            write_message(&mut server, &buf);
        }
    });
    let request = vec![0x5au8; size];
    let mut response = vec![0u8; size];
    let t = Instant::now();
    let cpu = process_cpu_ns();
    for _ in 0..count {
        write_message(&mut client, &request);
        if !read_message(&mut client, &mut response) {
            fail("EOF instead of a response".into(), 1);
        }
    }
    let elapsed_ns = t.elapsed().as_nanos() as u64;
    let cpu_ns = process_cpu_ns() - cpu;
    client
        .shutdown(Shutdown::Write)
        .unwrap_or_else(|e| fail(format!("shutdown: {e}"), 1));
    echo.join().unwrap();
    emit(serde_json::json!({ "round_trips": count, "elapsed_ns": elapsed_ns, "cpu_ns": cpu_ns }));
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

/// Syscalls that take a file descriptor first and fail with EBADF (or
/// another errno, before touching anything) when it is -1; the remaining
/// arguments are zero.
const BAD_FD_SYSCALLS: [libc::c_long; 50] = [
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_fstat,
    libc::SYS_lseek,
    libc::SYS_ioctl,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_dup,
    libc::SYS_connect,
    libc::SYS_accept,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_getdents64,
    libc::SYS_fchdir,
    libc::SYS_fchmod,
    libc::SYS_fchown,
    libc::SYS_fstatfs,
    libc::SYS_fadvise64,
    libc::SYS_epoll_ctl,
    libc::SYS_inotify_rm_watch,
    libc::SYS_fgetxattr,
    libc::SYS_flistxattr,
    libc::SYS_fremovexattr,
    libc::SYS_syncfs,
    libc::SYS_accept4,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_readahead,
    libc::SYS_sync_file_range,
    libc::SYS_fallocate,
    libc::SYS_timerfd_gettime,
    libc::SYS_setns,
    libc::SYS_getdents,
    libc::SYS_fsetxattr,
];

fn series(procs: usize, k: usize) {
    assert!(
        k <= BAD_FD_SYSCALLS.len(),
        "at most {} syscalls per process",
        BAD_FD_SYSCALLS.len()
    );
    let mut children = Vec::with_capacity(procs);
    for _ in 0..procs {
        // Each child reports on a pipe once it has made its syscalls.
        let mut fds = [0i32; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
        match unsafe { libc::fork() } {
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            0 => unsafe {
                // Never outlive the parent, whatever happens to it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::close(fds[0]);
                for &nr in &BAD_FD_SYSCALLS[..k] {
                    libc::syscall(nr, -1i64, 0i64, 0i64, 0i64, 0i64, 0i64);
                }
                libc::write(fds[1], b"x".as_ptr().cast(), 1);
                loop {
                    libc::pause();
                }
            },
            pid => {
                unsafe { libc::close(fds[1]) };
                let mut b = 0u8;
                let n = unsafe { libc::read(fds[0], (&mut b as *mut u8).cast(), 1) };
                assert_eq!(n, 1, "child {pid} did not report");
                unsafe { libc::close(fds[0]) };
                children.push(pid);
            }
        }
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut rest = String::new();
    let _ = std::io::stdin().read_to_string(&mut rest);
    for &pid in &children {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for &pid in &children {
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
}
