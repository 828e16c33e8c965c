//! Bounded memory: when a kernel map or the slow-event budget is exhausted,
//! data is dropped and every drop is counted in `hostscope.agent.dropped`.

use hostscope_tests::{
    Agent, Mix, Workload,
    otlp::{self, ExpHistogram},
    require_root,
};
use serde_json::Value;

/// `hostscope.agent.dropped` for `reason` in the last metrics line.
fn dropped(lines: &[Value], reason: &str) -> u64 {
    let agent = lines
        .iter()
        .rev()
        .flat_map(otlp::resources)
        .find(|(a, _)| otlp::attr(a, "service.name") == Some("hostscope"))
        .expect("agent resource");
    let p = otlp::point(
        &agent.1,
        "hostscope.agent.dropped",
        &[("hostscope.drop.reason", reason)],
    )
    .unwrap_or_else(|| panic!("no hostscope.agent.dropped point for {reason}"));
    otlp::num(&p["asInt"])
}

fn gauge(lines: &[Value], name: &str, map: &str) -> u64 {
    let agent = lines
        .iter()
        .rev()
        .flat_map(otlp::resources)
        .find(|(a, _)| otlp::attr(a, "service.name") == Some("hostscope"))
        .expect("agent resource");
    otlp::num(&otlp::point(&agent.1, name, &[("hostscope.map", map)]).expect(name)["asInt"])
}

/// With the stats map at its smallest (16 series; the workload's own start-up
/// alone makes more distinct syscalls than that), a workload's calls are
/// either counted exactly or counted as dropped: never silently lost.
#[test]
fn full_stats_map_counts_every_dropped_call() {
    require_root();
    // The whole host shares 16 series: they fill within the first interval.
    let agent = Agent::start(&[
        "--interval",
        "0.5",
        "--max-syscall-series",
        "16",
        "--slow-threshold",
        "off",
    ]);
    let mix = Mix {
        getppid: 5_000,
        ..Mix::default()
    };
    let mut workload = Workload::spawn(mix);
    workload.run();
    let pid = workload.pid;
    let lines = agent.stop_with(libc::SIGTERM);

    let entries = gauge(&lines, "hostscope.agent.map.entries", "SYSCALL_STATS");
    let capacity = gauge(&lines, "hostscope.agent.map.capacity", "SYSCALL_STATS");
    assert_eq!(capacity, 16, "capacity should be the configured bound");
    assert!(
        entries <= capacity,
        "entries {entries} over capacity {capacity}"
    );
    let drops = dropped(&lines, "syscall_stats_map_full");
    let counted = lines
        .iter()
        .rev()
        .find_map(|l| otlp::process_metrics(l, pid))
        .and_then(|(_, m)| {
            otlp::point(
                &m,
                "hostscope.syscall.duration",
                &[("syscall.name", "getppid")],
            )
            .map(|p| ExpHistogram::from_point(p).count)
        });
    // Usually the workload never gets a series and all its calls are drops.
    // If an exited process's series were reclaimed mid-loop, the rest of the
    // calls were counted instead: either way, every call is one or the other.
    let counted = counted.unwrap_or(0);
    assert!(
        counted <= mix.getppid,
        "counted {counted} getppid calls, made {}",
        mix.getppid
    );
    assert!(
        counted + drops >= mix.getppid,
        "each of the {} getppid calls must be counted or dropped: counted {counted}, dropped {drops}",
        mix.getppid
    );
    assert!(
        drops > 0,
        "16 series cannot hold a whole host's syscalls; expected drops, saw 0 (entries {entries})"
    );
}

/// The slow-syscall budget (1 event per CPU per second) holds: six 130 ms
/// sleeps (0.78 s, so at most 2 one-second windows on each of the CPUs)
/// cannot all be sent; each one is either a span or counted as rate-limited.
#[test]
fn slow_event_rate_limit_is_enforced_and_counted() {
    require_root();
    let agent = Agent::start(&[
        "--interval",
        "0.5",
        "--slow-threshold",
        "100ms",
        "--slow-events-per-cpu",
        "1",
    ]);
    let mix = Mix {
        sleeps: 6,
        sleep_ms: 130,
        ..Mix::default()
    };
    let mut workload = Workload::spawn(mix);
    workload.run();
    let pid = workload.pid;
    let lines = agent.stop_with(libc::SIGTERM);
    let spans = lines
        .iter()
        .flat_map(|l| otlp::process_spans(l, pid))
        .filter(|s| s["name"] == "nanosleep")
        .count() as u64;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let max_sent = cpus * 2;
    assert!(
        spans <= max_sent.min(mix.sleeps),
        "{spans} nanosleep spans sent, budget allows at most {max_sent}"
    );
    if max_sent < mix.sleeps {
        assert!(
            spans < mix.sleeps,
            "rate limit had no effect: {spans} spans"
        );
    }
    // Counters start at attach, so this is all since the agent started.
    let limited = dropped(&lines, "syscall_slow_rate_limited");
    assert!(
        spans + limited >= mix.sleeps,
        "each of the {} sleeps must be sent or counted: {spans} spans + {limited} rate-limited",
        mix.sleeps
    );
}
