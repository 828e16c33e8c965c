//! Syscall latency end to end: a workload with an exactly known syscall mix,
//! measured by the real agent, checked against the workload itself and
//! against libbpf-tools `syscount`.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hostscope_tests::{
    Agent, Lines, Mix, Workload, ensure_tracefs,
    otlp::{self, ExpHistogram, bucket_index_s},
    require_root, wait_timeout,
};
use serde_json::Value;

const MIX: Mix = Mix {
    getppid: 20_000,
    sleeps: 3,
    // 130 ms lies in the bucket (2^-3, 2^-2] s = (125, 250] ms: the kernel's
    // view of each sleep is at least 130 ms, and would have to be delayed by
    // 120 ms to leave the bucket (the test checks against the workload's own
    // measurement either way).
    sleep_ms: 130,
    ebadf: 7,
    enoent: 5,
    threads: 1,
    yields: 0,
};

/// The last metrics line that has the process, and every span of it.
fn final_view(lines: &[Value], pid: u32) -> (Vec<(String, String)>, Vec<Value>, Vec<Value>) {
    let (attrs, metrics) = lines
        .iter()
        .rev()
        .find_map(|l| otlp::process_metrics(l, pid))
        .unwrap_or_else(|| panic!("no metrics for pid {pid} in {} lines", lines.len()));
    let spans = lines
        .iter()
        .flat_map(|l| otlp::process_spans(l, pid))
        .collect();
    (attrs, metrics, spans)
}

fn histogram(metrics: &[Value], syscall: &str) -> ExpHistogram {
    let p = otlp::point(
        metrics,
        "hostscope.syscall.duration",
        &[("syscall.name", syscall)],
    )
    .unwrap_or_else(|| panic!("no hostscope.syscall.duration point for {syscall}"));
    ExpHistogram::from_point(p)
}

fn errors(metrics: &[Value], syscall: &str, errno: &str) -> u64 {
    otlp::point(
        metrics,
        "hostscope.syscall.errors",
        &[("syscall.name", syscall), ("error.type", errno)],
    )
    .map(|p| otlp::num(&p["asInt"]))
    .unwrap_or(0)
}

fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// BTF tracepoints with the per-CPU fast path (and its sched_switch handoff,
/// which the blocking sleeps go through).
#[test]
fn exact_counts_buckets_and_errors_with_btf_tracepoints() {
    exact_counts_buckets_and_errors(&["--hook-type", "tp-btf"], "tp_btf", 3);
}

/// The fallbacks (raw tracepoints for kernels without BTF; the in-flight hash
/// map for every syscall when sched_switch is unavailable) give the same numbers.
#[test]
fn exact_counts_buckets_and_errors_with_raw_tracepoints_and_hash_only() {
    exact_counts_buckets_and_errors(
        &["--hook-type", "raw-tp", "--no-syscall-fast-path"],
        "raw_tp",
        2,
    );
}

fn exact_counts_buckets_and_errors(mode: &[&str], hook_attr: &str, programs: usize) {
    require_root();
    let flags = [
        "--interval",
        "1",
        "--slow-threshold",
        "100ms",
        "--slow-events-per-cpu",
        "1000",
    ];
    let agent = Agent::start(&[mode, &flags[..]].concat());
    let before_spawn = unix_now_ns();
    let mut workload = Workload::spawn(MIX);
    let after_spawn = unix_now_ns();
    let sleep_ns = workload.run();
    let pid = workload.pid;
    // SIGTERM: the agent must flush the last interval before exiting.
    let lines = agent.stop_with(libc::SIGTERM);
    let (attrs, metrics, spans) = final_view(&lines, pid);

    // Attached the way it was asked to.
    let agent_metrics = lines
        .iter()
        .rev()
        .flat_map(otlp::resources)
        .find(|(a, _)| otlp::attr(a, "service.name") == Some("hostscope"))
        .expect("agent resource")
        .1;
    let hooks: Vec<String> = otlp::points(&agent_metrics, "hostscope.agent.program.attached")
        .iter()
        .filter(|p| {
            otlp::attr(&otlp::attrs(&p["attributes"]), "hostscope.program")
                .is_some_and(|l| l.starts_with("syscalls/"))
        })
        .map(|p| {
            otlp::attr(&otlp::attrs(&p["attributes"]), "hostscope.hook")
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(
        hooks,
        vec![hook_attr; programs],
        "every program should use {hook_attr}"
    );

    // Identity.
    assert_eq!(
        otlp::attr(&attrs, "process.executable.name"),
        Some("hostscope-workload"),
        "{attrs:?}"
    );
    let created = otlp::attr(&attrs, "process.creation.time").expect("process.creation.time");
    let created_ns = humantime_parse(created);
    // Kernel start times have clock-tick (10 ms) resolution, and we print ms.
    assert!(
        created_ns + 20_000_000 >= before_spawn && created_ns <= after_spawn + 20_000_000,
        "creation time {created} not within the spawn window [{before_spawn}, {after_spawn}]"
    );

    // Exact counts.
    let getppid = histogram(&metrics, "getppid");
    assert_eq!(
        getppid.count, MIX.getppid,
        "getppid calls: expected {}, saw {getppid:?}",
        MIX.getppid
    );
    assert_eq!(
        getppid.bucket_total(),
        getppid.count,
        "getppid buckets must sum to the count"
    );
    assert_eq!(getppid.scale, 0);

    let sleeps = histogram(&metrics, "nanosleep");
    assert_eq!(sleeps.count, MIX.sleeps, "nanosleep calls: {sleeps:?}");
    // Every sleep in the bucket its duration belongs to: the kernel's view
    // lies between the requested length and the workload's outer measurement.
    let mut want: BTreeMap<i32, u64> = BTreeMap::new();
    for &outer in &sleep_ns {
        let lo = bucket_index_s(MIX.sleep_ms as f64 / 1e3);
        let hi = bucket_index_s(outer as f64 / 1e9);
        assert_eq!(
            lo, hi,
            "a sleep of {outer} ns straddles a bucket boundary; cannot predict its bucket"
        );
        *want.entry(lo).or_default() += 1;
    }
    let want: Vec<(i32, u64)> = want.into_iter().collect();
    assert_eq!(
        sleeps.buckets, want,
        "nanosleep buckets (index, count); workload measured {sleep_ns:?}"
    );
    let min_sum = (MIX.sleeps * MIX.sleep_ms) as f64 / 1e3;
    let max_sum = sleep_ns.iter().sum::<u64>() as f64 / 1e9;
    assert!(
        sleeps.sum >= min_sum && sleeps.sum <= max_sum,
        "nanosleep sum {} s outside [{min_sum}, {max_sum}] (requested .. measured by the workload)",
        sleeps.sum
    );

    // Errors by errno, and the failing calls in the histogram too.
    assert_eq!(
        errors(&metrics, "fchdir", "EBADF"),
        MIX.ebadf,
        "fchdir EBADF errors"
    );
    assert_eq!(
        histogram(&metrics, "fchdir").count,
        MIX.ebadf,
        "fchdir calls"
    );
    assert_eq!(
        errors(&metrics, "rmdir", "ENOENT"),
        MIX.enoent,
        "rmdir ENOENT errors"
    );
    assert_eq!(
        histogram(&metrics, "rmdir").count,
        MIX.enoent,
        "rmdir calls"
    );
    assert_eq!(
        errors(&metrics, "getppid", "EBADF"),
        0,
        "getppid never fails"
    );

    // Every histogram point is self-consistent.
    for p in otlp::points(&metrics, "hostscope.syscall.duration") {
        let h = ExpHistogram::from_point(p);
        assert_eq!(
            h.bucket_total(),
            h.count,
            "bucket counts must sum to count: {p}"
        );
    }

    // Slow syscalls arrive as spans: exactly the sleeps, with kernel durations.
    let mut slow: Vec<u64> = spans
        .iter()
        .filter(|s| s["name"] == "nanosleep")
        .map(|s| otlp::num(&s["endTimeUnixNano"]) - otlp::num(&s["startTimeUnixNano"]))
        .collect();
    slow.sort();
    assert_eq!(
        slow.len() as u64,
        MIX.sleeps,
        "slow nanosleep spans: {slow:?}"
    );
    let max_outer = *sleep_ns.iter().max().unwrap();
    for d in &slow {
        assert!(
            *d >= MIX.sleep_ms * 1_000_000 && *d <= max_outer,
            "span duration {d} ns outside [{} ms, {max_outer} ns]",
            MIX.sleep_ms
        );
    }
    for s in spans.iter().filter(|s| s["name"] == "nanosleep") {
        let a = otlp::attrs(&s["attributes"]);
        assert_eq!(
            otlp::attr(&a, "thread.id"),
            Some(pid.to_string().as_str()),
            "{s}"
        );
        assert_eq!(
            s["traceId"].as_str().map(str::len),
            Some(32),
            "hex trace id: {s}"
        );
    }
}

/// Threads that keep being switched out mid-syscall (`sched_yield` on a
/// crowded machine) and migrating between CPUs: entry and exit must still
/// pair up exactly, whether they meet in the per-CPU slot or in the hash map.
#[test]
fn exact_counts_under_contention_and_migration() {
    for mode in [&[][..], &["--no-syscall-fast-path"][..]] {
        require_root();
        let flags = ["--interval", "1", "--slow-threshold", "off"];
        let agent = Agent::start(&[mode, &flags[..]].concat());
        let mix = Mix {
            getppid: 20_000,
            yields: 5_000,
            threads: 6,
            ..Mix::default()
        };
        let mut workload = Workload::spawn(mix);
        workload.run();
        let pid = workload.pid;
        let lines = agent.stop_with(libc::SIGTERM);
        let (_, metrics, _) = final_view(&lines, pid);
        let total = |n: u64| n * mix.threads;
        assert_eq!(
            histogram(&metrics, "getppid").count,
            total(mix.getppid),
            "getppid across {} threads ({mode:?})",
            mix.threads
        );
        assert_eq!(
            histogram(&metrics, "sched_yield").count,
            total(mix.yields),
            "sched_yield across {} threads ({mode:?})",
            mix.threads
        );
    }
}

/// A process that starts and exits between two exports keeps its name and
/// path (from the kernel's exec record, since /proc no longer has it) and its
/// exact counts, is exported in the next interval and once more (with
/// anything it counted after that read), and is then forgotten.
#[test]
fn short_lived_process_is_named_counted_and_then_forgotten() {
    require_root();
    let agent = Agent::start(&["--interval", "1.5", "--slow-threshold", "off"]);
    // Start right after an export, so the whole life (~50 ms) falls inside
    // one 1.5 s interval.
    while agent
        .next_line(Duration::from_secs(10))
        .get("resourceMetrics")
        .is_none()
    {}
    let mix = Mix {
        getppid: 3_000,
        ebadf: 2,
        ..Mix::default()
    };
    let pid = {
        let mut workload = Workload::spawn(mix);
        workload.run();
        workload.pid
    }; // dropped: stdin closed, process reaped
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the workload should have exited"
    );
    let metrics_line = |agent: &Agent| loop {
        let l = agent.next_line(Duration::from_secs(10));
        if l.get("resourceMetrics").is_some() {
            return l;
        }
    };
    let first = metrics_line(&agent);
    let second = metrics_line(&agent);
    let third = metrics_line(&agent);
    drop(agent.stop_with(libc::SIGTERM));

    let (attrs, metrics) = otlp::process_metrics(&first, pid)
        .unwrap_or_else(|| panic!("pid {pid} missing from the export after it exited"));
    assert_eq!(
        otlp::attr(&attrs, "process.executable.name"),
        Some("hostscope-workload"),
        "name from the kernel's exec record: {attrs:?}"
    );
    let path = hostscope_tests::target_bin("hostscope-workload");
    assert_eq!(
        otlp::attr(&attrs, "process.executable.path"),
        Some(path.to_string_lossy().as_ref()),
        "path from the kernel's exec record: {attrs:?}"
    );
    assert_eq!(
        histogram(&metrics, "getppid").count,
        mix.getppid,
        "getppid of the exited process"
    );
    assert_eq!(
        errors(&metrics, "fchdir", "EBADF"),
        mix.ebadf,
        "fchdir errors of the exited process"
    );
    let (_, again) = otlp::process_metrics(&second, pid)
        .unwrap_or_else(|| panic!("pid {pid} should be exported once more after it was seen gone"));
    assert_eq!(
        histogram(&again, "getppid").count,
        mix.getppid,
        "the same getppid count once more"
    );
    assert!(
        otlp::process_metrics(&third, pid).is_none(),
        "pid {pid} should be forgotten after its last export"
    );
}

#[test]
fn agent_does_not_measure_itself() {
    require_root();
    let agent = Agent::start(&["--interval", "0.5"]);
    std::thread::sleep(Duration::from_millis(1200));
    let lines = agent.stop_with(libc::SIGINT);
    let own_pid = lines
        .iter()
        .flat_map(otlp::resources)
        .find_map(|(a, _)| {
            (otlp::attr(&a, "service.name") == Some("hostscope"))
                .then(|| otlp::attr(&a, "process.pid").unwrap().to_string())
        })
        .expect("the agent's own resource");
    let measured_self = lines.iter().flat_map(otlp::resources).any(|(a, _)| {
        otlp::attr(&a, "service.name").is_none()
            && otlp::attr(&a, "process.pid") == Some(own_pid.as_str())
    });
    assert!(
        !measured_self,
        "the agent's own syscalls (pid {own_pid}) must be excluded"
    );
}

/// Runs libbpf-tools `syscount` on the same workload as the agent and checks
/// that both agree with each other and with what the workload did.
#[test]
fn agrees_with_syscount() {
    require_root();
    ensure_tracefs();
    let syscount = ["/usr/sbin/syscount", "/usr/bin/syscount"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("syscount not installed (apt-get install libbpf-tools; cargo xtask setup does)");

    let agent = Agent::start(&["--interval", "1", "--slow-threshold", "off"]);
    let mut workload = Workload::spawn(MIX);
    let pid = workload.pid;
    // syscount's stdout is a pipe here: line-buffer it so its "Tracing"
    // line (printed once attached) arrives before it exits.
    let mut sc = Command::new("stdbuf")
        .args(["-oL", syscount, "-L", "-T", "100", "-p", &pid.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn syscount");
    let out = Lines::default();
    let err = Lines::default();
    spawn_reader(&out, sc.stdout.take().unwrap());
    spawn_reader(&err, sc.stderr.take().unwrap());
    out.wait_for(
        "Tracing syscalls",
        Duration::from_secs(60),
        "syscount start",
    );
    workload.run();
    unsafe { libc::kill(sc.id() as i32, libc::SIGINT) };
    let status = wait_timeout(&mut sc, Duration::from_secs(30)).expect("syscount exits on SIGINT");
    // Give the reader a moment to take the last lines.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !out.text().contains("nanosleep") {
        std::thread::sleep(Duration::from_millis(20));
    }
    let table = parse_syscount(&out.snapshot());
    let lines = agent.stop_with(libc::SIGTERM);
    let (_, metrics, _) = final_view(&lines, pid);

    assert!(
        table.contains_key("getppid"),
        "syscount ({status}) printed no getppid row; stdout:\n{}\nstderr:\n{}",
        out.text(),
        err.text()
    );
    for (name, expected) in [
        ("getppid", MIX.getppid),
        ("nanosleep", MIX.sleeps),
        ("fchdir", MIX.ebadf),
        ("rmdir", MIX.enoent),
    ] {
        let (sc_count, sc_us) = table[name];
        let h = histogram(&metrics, name);
        assert_eq!(
            sc_count, expected,
            "syscount's {name} count vs the workload"
        );
        assert_eq!(h.count, sc_count, "hostscope's {name} count vs syscount's");
        if name == "nanosleep" {
            // Both time entry to exit of the same calls; probes differ by
            // well under a millisecond per call.
            let ours_us = h.sum * 1e6;
            assert!(
                (ours_us - sc_us).abs() <= 1_000.0 * expected as f64,
                "nanosleep total: hostscope {ours_us} us vs syscount {sc_us} us"
            );
        }
    }
}

fn spawn_reader(lines: &Lines, stream: impl std::io::Read + Send + 'static) {
    let l = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
        {
            l.push(line);
        }
    });
}

/// `SYSCALL COUNT TIME(us)` rows of syscount's final table.
fn parse_syscount(lines: &[String]) -> BTreeMap<String, (u64, f64)> {
    let mut table = BTreeMap::new();
    for line in lines {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if let [name, count, time] = cols[..]
            && let (Ok(count), Ok(time)) = (count.parse::<u64>(), time.parse::<f64>())
        {
            table.insert(name.to_string(), (count, time));
        }
    }
    table
}

/// Parses the agent's RFC 3339 UTC timestamp (`2026-11-22T09:25:34.853Z`).
fn humantime_parse(s: &str) -> u64 {
    let out = Command::new("date")
        .args(["-u", "-d", s, "+%s%N"])
        .output()
        .expect("date");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("date could not parse {s:?}"))
}
