//! Filtering: a cgroup v2 subtree excluded (or included) in the kernel, and
//! processes left out by executable name. One workload runs inside a test
//! cgroup, one outside; each makes a known number of `getppid` calls.

use std::time::Duration;

use hostscope_tests::{
    Agent, Mix, Workload,
    cgroup::{Layout, TestCgroup},
    otlp::{attr, num, point, resources},
    require_root,
};
use serde_json::Value;

/// The last `getppid` count of `pid`, and whether any metric names it.
fn seen(lines: &[Value], pid: u32) -> (Option<u64>, bool) {
    let pid = pid.to_string();
    let (mut count, mut any) = (None, false);
    for l in lines {
        for (attrs, metrics) in resources(l) {
            if attr(&attrs, "process.pid") != Some(pid.as_str()) || metrics.is_empty() {
                continue;
            }
            any = true;
            if let Some(p) = point(
                &metrics,
                "hostscope.syscall.duration",
                &[("syscall.name", "getppid")],
            ) {
                count = Some(num(&p["count"]));
            }
        }
    }
    (count, any)
}

/// Runs workload `inside` (already in the test cgroup) and `outside` under an
/// agent started with `flags`; returns the agent's lines.
fn run(flags: &[&str], inside: &mut Workload, outside: &mut Workload) -> Vec<Value> {
    let mut args = vec!["--interval", "1", "--slow-threshold", "off", "--no-tcp"];
    args.extend_from_slice(flags);
    let agent = Agent::start(&args);
    inside.run();
    outside.run();
    std::thread::sleep(Duration::from_millis(1500));
    agent.stop_with(libc::SIGTERM)
}

fn setup(tag: &str) -> Option<(TestCgroup, Workload, Workload)> {
    let Some(v2) = Layout::detect().v2 else {
        eprintln!("skipped: no cgroup2 hierarchy mounted (the filter works on cgroup v2 ids)");
        return None;
    };
    let cg = TestCgroup::create(&v2, &format!("hostscope-test-{tag}-{}", std::process::id()));
    let mix = |getppid| Mix {
        getppid,
        ..Default::default()
    };
    let inside = Workload::spawn(mix(1234));
    cg.write("cgroup.procs", &inside.pid.to_string());
    let outside = Workload::spawn(mix(2345));
    Some((cg, inside, outside))
}

#[test]
fn an_excluded_cgroup_is_not_measured() {
    require_root();
    let Some((cg, mut inside, mut outside)) = setup("excluded") else {
        return;
    };
    let lines = run(&["--exclude-cgroup", &cg.path], &mut inside, &mut outside);
    let (in_count, _) = seen(&lines, inside.pid);
    let (out_count, _) = seen(&lines, outside.pid);
    assert_eq!(
        in_count, None,
        "the 1234 getppid calls made inside the excluded {} should not be counted",
        cg.path
    );
    assert_eq!(
        out_count,
        Some(2345),
        "getppid calls outside the excluded cgroup"
    );
    drop(inside);
    drop(outside);
}

#[test]
fn only_an_included_cgroup_is_measured() {
    require_root();
    let Some((cg, mut inside, mut outside)) = setup("included") else {
        return;
    };
    let lines = run(&["--include-cgroup", &cg.path], &mut inside, &mut outside);
    let (in_count, _) = seen(&lines, inside.pid);
    let (out_count, out_any) = seen(&lines, outside.pid);
    assert_eq!(
        in_count,
        Some(1234),
        "getppid calls inside the included {}",
        cg.path
    );
    assert!(
        out_count.is_none() && !out_any,
        "nothing of pid {} outside the included cgroup should be exported (getppid: {out_count:?})",
        outside.pid
    );
    drop(inside);
    drop(outside);
}

#[test]
fn an_excluded_executable_is_not_exported() {
    require_root();
    let Some((_cg, mut inside, mut outside)) = setup("byname") else {
        return;
    };
    let lines = run(
        &["--exclude-process", "hostscope-workload"],
        &mut inside,
        &mut outside,
    );
    for w in [&inside, &outside] {
        let (_, any) = seen(&lines, w.pid);
        assert!(
            !any,
            "pid {} (hostscope-workload) should not be exported",
            w.pid
        );
    }
    drop(inside);
    drop(outside);
}
