//! Cardinality budgets under a fork storm: 20,000 short-lived processes,
//! each with its own series, against an agent allowed 500 series per metric
//! and 2,000 in all. Every interval stays within the budget, what did not
//! fit lands in the overflow series (`otel.metric.overflow=true`) and is
//! counted, no call is lost, and the agent's memory stays under its bound.

use std::{
    collections::{BTreeMap, HashMap},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use hostscope_tests::{
    Agent, Mix, Workload,
    otlp::{attr, num, point, resources},
    require_root, target_bin,
};
use serde_json::Value;

const CHILDREN: u64 = 20_000;
const PER_METRIC: u64 = 500;
const TOTAL: u64 = 2_000;
/// The bound stated for how much the agent's resident memory may grow in
/// the storm above what it held just before. The agent holds every process
/// it saw in the last two intervals (one live, one exported once more after
/// exit), about 5 KiB each while an interval is collected; this machine
/// forks up to 5,000 a second, so up to 10,000 are in view with a 1 s
/// interval, and 52-54 MiB of growth were measured (14.6 MiB at 2,000 forks
/// a second). The kernel maps cap how many processes can be in view at all
/// (8,192 with run-queue data, about 20,000 with syscall data).
const RSS_GROWTH_BOUND_KIB: u64 = 96 * 1024;

/// `VmRSS` or `VmHWM` of `pid` in KiB.
fn vm(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn points_of(m: &Value) -> Vec<&Value> {
    ["sum", "gauge", "exponentialHistogram", "histogram"]
        .iter()
        .flat_map(|k| m[*k]["dataPoints"].as_array().into_iter().flatten())
        .collect()
}

fn is_overflow(p: &Value) -> bool {
    p["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["key"] == "otel.metric.overflow" && a["value"]["boolValue"] == Value::Bool(true))
}

#[test]
fn a_fork_storm_stays_within_the_series_budget() {
    require_root();
    let agent = Agent::start(&[
        "--interval",
        "1",
        "--slow-threshold",
        "off",
        "--no-tcp",
        "--max-series-per-metric",
        &PER_METRIC.to_string(),
        "--max-series",
        &TOTAL.to_string(),
    ]);
    let agent_pid = agent.pid();
    // The idle footprint, after the first interval.
    std::thread::sleep(Duration::from_millis(1500));
    let before = vm(agent_pid, "VmRSS:");
    let hwm_before = vm(agent_pid, "VmHWM:");
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(vm(agent_pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let out = Command::new(target_bin("hostscope-workload"))
        .args(["storm", &CHILDREN.to_string()])
        .output()
        .expect("run the fork storm");
    assert!(out.status.success(), "storm: {out:?}");
    // Two intervals for the last children to be exported once more.
    std::thread::sleep(Duration::from_millis(2500));
    let hwm = vm(agent_pid, "VmHWM:");
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let lines = agent.stop_with(libc::SIGTERM);

    // Every interval: per-process series within the budget.
    let mut intervals = 0;
    let mut most_per_metric: BTreeMap<String, u64> = BTreeMap::new();
    let mut most_total = 0;
    // Cumulative getppid calls per process on its own series (last seen),
    // the overflow series' count at the end, and the folded series.
    let mut own_getppid: HashMap<String, u64> = HashMap::new();
    let mut overflow_count = 0;
    let mut folded = 0;
    let mut unmatched: Vec<u64> = Vec::new();
    for line in &lines {
        if line["resourceMetrics"].is_null() {
            continue;
        }
        intervals += 1;
        let mut per_metric: BTreeMap<String, u64> = BTreeMap::new();
        for (attrs, metrics) in resources(line) {
            if attr(&attrs, "service.name") == Some("hostscope") {
                for m in &metrics {
                    if m["name"] == "hostscope.agent.series.folded" {
                        folded += points_of(m).iter().map(|p| num(&p["asInt"])).sum::<u64>();
                    }
                }
                if let Some(p) = point(
                    &metrics,
                    "hostscope.agent.dropped",
                    &[("hostscope.drop.reason", "syscall_unmatched_exit")],
                ) {
                    unmatched.push(num(&p["asInt"]));
                }
                continue;
            }
            let pid = attr(&attrs, "process.pid").map(str::to_string);
            for m in &metrics {
                let name = m["name"].as_str().unwrap_or_default().to_string();
                for p in points_of(m) {
                    if is_overflow(p) {
                        if name == "hostscope.syscall.duration" {
                            overflow_count = num(&p["count"]);
                        }
                        continue;
                    }
                    if pid.is_some() {
                        *per_metric.entry(name.clone()).or_default() += 1;
                    }
                }
            }
            if let Some(pid) = pid
                && let Some(p) = point(
                    &metrics,
                    "hostscope.syscall.duration",
                    &[("syscall.name", "getppid")],
                )
            {
                own_getppid.insert(pid, num(&p["count"]));
            }
        }
        for (name, n) in &per_metric {
            let most = most_per_metric.entry(name.clone()).or_default();
            *most = (*most).max(*n);
        }
        most_total = most_total.max(per_metric.values().sum::<u64>());
    }
    let own: u64 = own_getppid.values().sum();
    let unmatched_in_storm = unmatched.last().unwrap_or(&0) - unmatched.first().unwrap_or(&0);
    eprintln!(
        "{intervals} intervals; most series per metric {most_per_metric:?}, most in total {most_total}; \
         getppid on own series {own} ({} processes), overflow count {overflow_count}, \
         series folded over all intervals {folded}; unmatched exits during the storm {unmatched_in_storm}; agent RSS {before} KiB before, peak {} KiB sampled, VmHWM {hwm} KiB",
        own_getppid.len(),
        peak.load(Ordering::Relaxed)
    );
    assert!(
        intervals >= 5,
        "expected several intervals, saw {intervals}"
    );
    for (name, n) in &most_per_metric {
        assert!(
            *n <= PER_METRIC,
            "{name}: {n} per-process series in one interval, over the budget of {PER_METRIC}"
        );
    }
    assert!(
        most_total <= TOTAL,
        "{most_total} per-process series in one interval, over the budget of {TOTAL}"
    );
    assert!(
        folded > 0 && overflow_count > 0,
        "{CHILDREN} processes cannot fit in {PER_METRIC} series: expected folded series \
         ({folded}) and an overflow count ({overflow_count})"
    );
    // Nothing lost: each child's one getppid is on its own series or in the
    // overflow (which also holds other processes' folded calls).
    assert!(
        own + overflow_count >= CHILDREN,
        "getppid calls accounted for: {own} on own series + {overflow_count} in the overflow < {CHILDREN}"
    );
    // Each child's return from fork has no syscall entry; it is known to
    // be a new task's and not counted as a loss. What remains are syscalls
    // entered before the programs attached (threads blocked since) that
    // return now: a handful on a quiet machine, 20,000+ if children were
    // counted.
    assert!(
        unmatched_in_storm < 200,
        "{unmatched_in_storm} unmatched syscall exits counted during a storm of {CHILDREN} forks"
    );
    // The true peak: VmHWM if the storm raised it, else the sampled one.
    let sampled = peak.load(Ordering::Relaxed);
    let peak = if hwm > hwm_before { hwm } else { sampled };
    assert!(
        peak.saturating_sub(before) < RSS_GROWTH_BOUND_KIB,
        "agent RSS grew from {before} KiB to {peak} KiB in the storm, over the bound of {RSS_GROWTH_BOUND_KIB} KiB"
    );
}

/// An agent exporting the syscalls signal per executable.
const BY_EXECUTABLE: &[&str] = &[
    "--interval",
    "1",
    "--slow-threshold",
    "off",
    "--no-tcp",
    "--granularity",
    "syscalls=executable",
];

/// The last `getppid` count of each executable's summed resource.
fn getppid_by_executable(lines: &[Value]) -> BTreeMap<String, u64> {
    let mut by_name = BTreeMap::new();
    for line in lines {
        for (attrs, metrics) in resources(line) {
            if attr(&attrs, "process.pid").is_some() || attr(&attrs, "service.name").is_some() {
                continue;
            }
            let Some(name) = attr(&attrs, "process.executable.name") else {
                continue;
            };
            if let Some(p) = point(
                &metrics,
                "hostscope.syscall.duration",
                &[("syscall.name", "getppid")],
            ) {
                by_name.insert(name.to_string(), num(&p["count"]));
            }
        }
    }
    by_name
}

/// `--granularity syscalls=executable`: two processes of one executable
/// are exported as one resource (the executable's name, no pid) whose
/// counts are exactly the sum of theirs; the sched signal stays per process.
#[test]
fn executable_granularity_sums_the_processes_of_an_executable() {
    require_root();
    let agent = Agent::start(BY_EXECUTABLE);
    let mix = |getppid| Mix {
        getppid,
        ..Default::default()
    };
    let mut a = Workload::spawn(mix(1234));
    let mut b = Workload::spawn(mix(2345));
    a.run();
    b.run();
    // Alive through an interval, so the agent reads who they are from
    // procfs (identity from exec and exit events is not there yet).
    std::thread::sleep(Duration::from_millis(1500));
    let pids = [a.pid.to_string(), b.pid.to_string()];
    drop(a);
    drop(b);
    std::thread::sleep(Duration::from_millis(2500));
    let lines = agent.stop_with(libc::SIGTERM);
    let group = getppid_by_executable(&lines)
        .get("hostscope-workload")
        .copied();
    let mut per_process_syscalls = 0;
    let mut per_process_sched = 0;
    for line in &lines {
        for (attrs, metrics) in resources(line) {
            let pid = attr(&attrs, "process.pid");
            if pid.is_some_and(|p| pids.iter().any(|x| x == p)) {
                per_process_syscalls += metrics
                    .iter()
                    .filter(|m| m["name"] == "hostscope.syscall.duration")
                    .count();
                per_process_sched += metrics
                    .iter()
                    .filter(|m| m["name"] == "process.context_switches")
                    .count();
            }
        }
    }
    assert_eq!(
        group,
        Some(1234 + 2345),
        "getppid calls on the hostscope-workload executable's resource: the sum of both processes"
    );
    assert_eq!(
        per_process_syscalls, 0,
        "no syscall series on the processes' own resources"
    );
    assert!(per_process_sched > 0, "the sched signal stays per process");
}

/// With `--granularity syscalls=executable`, a fork storm's 20,000 children,
/// each gone within microseconds, are all named from the kernel's fork
/// records (their parent's executable) and summed on one resource: exactly
/// one `getppid` each.
#[test]
fn a_fork_storm_is_named_from_kernel_events() {
    require_root();
    let agent = Agent::start(BY_EXECUTABLE);
    let out = Command::new(target_bin("hostscope-workload"))
        .args(["storm", &CHILDREN.to_string()])
        .output()
        .expect("run the fork storm");
    assert!(out.status.success(), "storm: {out:?}");
    std::thread::sleep(Duration::from_millis(2500));
    let lines = agent.stop_with(libc::SIGTERM);
    let by_name = getppid_by_executable(&lines);
    assert_eq!(
        by_name.get("hostscope-workload").copied(),
        Some(CHILDREN),
        "getppid calls on the hostscope-workload executable's resource; by executable: {by_name:?}"
    );
}
