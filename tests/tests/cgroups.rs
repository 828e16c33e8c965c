//! CPU throttling and pressure (PSI) per cgroup and for the host, proved
//! against the kernel's own files read after the load has stopped: a cgroup
//! with a 10% CPU quota and a busy loop (its `cpu.stat`), a cgroup2 cgroup
//! with three busy loops on one CPU (its `cpu.pressure`), and
//! `/proc/pressure/cpu`.
//!
//! Each test creates its cgroups and removes them, also on failure
//! ([`TestCgroup`]'s `Drop` kills and reaps the busy loops first).

use std::time::{Duration, Instant};

use hostscope_tests::{
    Agent,
    cgroup::{Layout, TestCgroup, psi_total},
    otlp::{attr, point, resources},
    require_root,
};
use serde_json::Value;

fn start_agent() -> Agent {
    let agent = Agent::start(&["--interval", "1", "--slow-threshold", "off"]);
    agent.stderr.wait_for(
        "cgroups signal started",
        Duration::from_secs(10),
        "cgroups signal",
    );
    let line = agent
        .stderr
        .snapshot()
        .into_iter()
        .find(|l| l.contains("cgroups signal started"))
        .unwrap();
    eprintln!("agent: {line}");
    agent
}

/// Metrics lines only (not traces).
fn metric_lines(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|l| l.get("resourceMetrics").is_some())
        .collect()
}

/// The metrics of the resource of cgroup `path` in a metrics line.
fn cgroup_metrics(line: &Value, path: &str) -> Option<Vec<Value>> {
    resources(line)
        .into_iter()
        .find(|(a, _)| attr(a, "hostscope.cgroup.path") == Some(path))
        .map(|(a, m)| {
            assert_eq!(
                attr(&a, "process.pid"),
                None,
                "a cgroup resource is no process"
            );
            assert!(attr(&a, "host.name").is_some(), "host attributes: {a:?}");
            m
        })
}

/// The host's resource: host attributes only.
fn host_metrics(line: &Value) -> Option<Vec<Value>> {
    resources(line)
        .into_iter()
        .find(|(a, _)| {
            attr(a, "host.name").is_some()
                && attr(a, "process.pid").is_none()
                && attr(a, "service.name").is_none()
                && attr(a, "hostscope.cgroup.path").is_none()
        })
        .map(|(_, m)| m)
}

fn double(metrics: &[Value], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    point(metrics, name, want).map(|p| {
        p["asDouble"]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}: expected a double point, got {p}"))
    })
}

fn int(metrics: &[Value], name: &str) -> Option<u64> {
    point(metrics, name, &[]).map(|p| hostscope_tests::otlp::num(&p["asInt"]))
}

/// Reads `f` until two reads 200 ms apart agree (the kernel may account
/// the last period or throttle shortly after the tasks are gone).
fn settled<T: PartialEq + Copy + std::fmt::Debug>(what: &str, f: impl Fn() -> T) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = f();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = f();
        if now == last {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what} still changing 5 s after the load stopped: {last:?} -> {now:?}"
        );
        last = now;
    }
}

/// Seconds as exported, back to the kernel's integer unit (exact for the
/// magnitudes here: far below 2^53 units).
fn to_units(seconds: f64, per_second: f64) -> u64 {
    (seconds * per_second).round() as u64
}

/// A busy loop in a cgroup limited to 10% of one CPU (10 ms per 100 ms) is
/// throttled nearly every period; once it is gone, the agent's last values
/// for the cgroup equal its cpu.stat exactly.
#[test]
fn cpu_throttling_equals_cpu_stat() {
    require_root();
    let layout = Layout::detect();
    let (root, version) = layout.cpu();
    let agent = start_agent();
    let mut cg = TestCgroup::create(&root, &format!("hostscope-test-{}", std::process::id()));
    let time_key = if version == 1 {
        cg.write("cpu.cfs_period_us", "100000");
        cg.write("cpu.cfs_quota_us", "10000");
        "throttled_time"
    } else {
        let parent = root.join("cgroup.subtree_control");
        if !std::fs::read_to_string(&parent)
            .unwrap_or_default()
            .contains("cpu")
        {
            std::fs::write(&parent, "+cpu").expect("enable the cpu controller");
        }
        cg.write("cpu.max", "10000 100000");
        "throttled_usec"
    };
    let per_second = if version == 1 { 1e9 } else { 1e6 };
    let t0 = Instant::now();
    cg.spawn_busy(None);
    std::thread::sleep(Duration::from_secs(2));
    cg.stop_children();
    let (periods, throttled, time) = settled("cpu.stat", || {
        (
            cg.stat("cpu.stat", "nr_periods"),
            cg.stat("cpu.stat", "nr_throttled"),
            cg.stat("cpu.stat", time_key),
        )
    });
    eprintln!(
        "cgroup v{version} {}: nr_periods {periods}, nr_throttled {throttled}, {time_key} {time} \
         (read {:.1} s after the start)",
        cg.path,
        t0.elapsed().as_secs_f64()
    );
    assert!(throttled > 0, "a busy loop at 10% quota must be throttled");

    // The last collection (at SIGTERM) comes after the read above.
    let lines = agent.stop_with(libc::SIGTERM);
    let lines = metric_lines(&lines);
    let seen: Vec<(f64, u64, u64)> = lines
        .iter()
        .filter_map(|l| cgroup_metrics(l, &cg.path))
        .map(|m| {
            (
                double(&m, "hostscope.cpu.throttled.time", &[]).expect("throttled time"),
                int(&m, "hostscope.cpu.throttled.periods").expect("throttled periods"),
                int(&m, "hostscope.cpu.periods").expect("periods"),
            )
        })
        .collect();
    eprintln!("agent, per interval (throttled s, throttled periods, periods): {seen:?}");
    assert!(
        seen.len() >= 2,
        "the cgroup in at least one interval during the load and the last: {seen:?}"
    );
    assert!(
        seen.windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1 && w[0].2 <= w[1].2),
        "cumulative values never decrease: {seen:?}"
    );
    let last = cgroup_metrics(lines.last().expect("a metrics line"), &cg.path)
        .expect("the cgroup in the last interval");
    let a_time = double(&last, "hostscope.cpu.throttled.time", &[]).unwrap();
    let a_throttled = int(&last, "hostscope.cpu.throttled.periods").unwrap();
    let a_periods = int(&last, "hostscope.cpu.periods").unwrap();
    eprintln!(
        "agent last: throttled.time {a_time} s ({} {}), throttled.periods {a_throttled}, periods {a_periods}",
        to_units(a_time, per_second),
        if version == 1 { "ns" } else { "µs" }
    );
    assert_eq!(
        to_units(a_time, per_second),
        time,
        "hostscope.cpu.throttled.time {a_time} s against {time_key} {time}"
    );
    assert!((a_time - time as f64 / per_second).abs() <= 1e-6);
    assert_eq!(a_throttled, throttled, "hostscope.cpu.throttled.periods");
    assert_eq!(a_periods, periods, "hostscope.cpu.periods");
    let units: Vec<&str> = ["hostscope.cpu.throttled.time", "hostscope.cpu.periods"]
        .iter()
        .map(|n| {
            last.iter()
                .find(|m| m["name"] == *n)
                .and_then(|m| m["unit"].as_str())
                .unwrap()
        })
        .collect();
    assert_eq!(units, ["s", "{period}"]);
}

/// Three busy loops pinned to one CPU in one cgroup2 cgroup: at least one
/// of them always waits, so the cgroup's cpu `some` total grows by about
/// the run time. After they are gone, the agent's last value equals the
/// cgroup's `cpu.pressure` total.
#[test]
fn cgroup_cpu_pressure_equals_cpu_pressure_file() {
    require_root();
    let layout = Layout::detect();
    let v2 = layout.v2.clone().expect("a cgroup2 tree");
    let agent = start_agent();
    let mut cg = TestCgroup::create(&v2, &format!("hostscope-test-psi-{}", std::process::id()));
    for _ in 0..3 {
        cg.spawn_busy(Some(0));
    }
    std::thread::sleep(Duration::from_secs(2));
    cg.stop_children();
    // PSI totals are aggregated when read; with no task left in the
    // cgroup they should not move. Measured: two reads 1 s apart, and
    // the agent's later value may differ from the second by at most what
    // changed between them (0 on this kernel in every run so far).
    let read = || {
        let text = cg.read("cpu.pressure");
        (
            psi_total(&text, "some").unwrap(),
            psi_total(&text, "full").unwrap_or(0),
        )
    };
    let first = read();
    std::thread::sleep(Duration::from_secs(1));
    let (some, full) = read();
    let (drift_some, drift_full) = (some - first.0, full - first.1);
    eprintln!(
        "cgroup {}: cpu some total {some} µs, full {full} µs (a second earlier: {first:?})",
        cg.path
    );
    assert!(
        some > 500_000,
        "three busy loops on one CPU for 2 s stall over 0.5 s: {some} µs"
    );

    let lines = agent.stop_with(libc::SIGTERM);
    let lines = metric_lines(&lines);
    let last = cgroup_metrics(lines.last().expect("a metrics line"), &cg.path)
        .expect("the cgroup in the last interval");
    let stall = |resource: &str, kind: &str| {
        double(
            &last,
            "hostscope.pressure.stall.time",
            &[
                ("hostscope.pressure.resource", resource),
                ("hostscope.pressure.type", kind),
            ],
        )
        .unwrap_or_else(|| panic!("no {resource} {kind} stall for {}", cg.path))
    };
    let (a_some, a_full) = (stall("cpu", "some"), stall("cpu", "full"));
    eprintln!("agent last: cpu some {a_some} s, full {a_full} s");
    let a_some_us = to_units(a_some, 1e6);
    assert!(
        (some..=some + drift_some).contains(&a_some_us),
        "cpu some: agent {a_some} s, cpu.pressure total {some} µs (+{drift_some} drift)"
    );
    if drift_some == 0 {
        assert_eq!(a_some, some as f64 / 1e6, "exact when the total is still");
    }
    let a_full_us = to_units(a_full, 1e6);
    assert!(
        (full..=full + drift_full).contains(&a_full_us),
        "cpu full: agent {a_full} s, cpu.pressure total {full} µs (+{drift_full} drift)"
    );
    // A cgroup that stalled exports all its lines, idle ones included.
    for r in ["memory", "io"] {
        for k in ["some", "full"] {
            stall(r, k);
        }
    }
}

/// The host's pressure (/proc/pressure) on the host's resource: the
/// agent's last cpu `some` total lies between the totals read before the
/// agent started and after it stopped.
#[test]
fn host_pressure_within_proc_pressure() {
    require_root();
    let proc = |r: &str| std::fs::read_to_string(format!("/proc/pressure/{r}")).unwrap();
    let before = psi_total(&proc("cpu"), "some").unwrap();
    let agent = start_agent();
    std::thread::sleep(Duration::from_millis(1500));
    let lines = agent.stop_with(libc::SIGTERM);
    let cpu_after = proc("cpu");
    let after = psi_total(&cpu_after, "some").unwrap();
    let lines = metric_lines(&lines);
    let host = host_metrics(lines.last().expect("a metrics line")).expect("a host resource");
    let stall = |resource: &str, kind: &str| {
        double(
            &host,
            "hostscope.pressure.stall.time",
            &[
                ("hostscope.pressure.resource", resource),
                ("hostscope.pressure.type", kind),
            ],
        )
    };
    let a = to_units(stall("cpu", "some").expect("host cpu some"), 1e6);
    eprintln!("/proc/pressure/cpu some total: before {before} µs, after {after} µs; agent {a} µs");
    assert!(
        (before..=after).contains(&a),
        "host cpu some: agent {a} µs outside [{before}, {after}]"
    );
    assert_eq!(
        stall("cpu", "full").is_some(),
        psi_total(&cpu_after, "full").is_some(),
        "cpu full exported exactly when the kernel has it"
    );
    for r in ["memory", "io"] {
        for k in ["some", "full"] {
            assert!(stall(r, k).is_some(), "host {r} {k}");
        }
    }
    // Other signals' host metrics may share the resource.
    assert!(
        host.iter()
            .any(|m| m["name"] == "hostscope.pressure.stall.time" && m["unit"] == "s")
    );
}
