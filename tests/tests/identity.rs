//! Process identity: a pid the kernel gives to a new process after the old
//! one exited is a new resource, with its own `process.creation.time` and
//! only its own counts.

use std::{collections::BTreeMap, time::Duration};

use hostscope_tests::{
    Agent, Mix, Workload,
    otlp::{attr, num, point, resources},
    require_root,
};

const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";

#[test]
fn a_reused_pid_gets_a_new_identity() {
    require_root();
    let agent = Agent::start(&["--interval", "1", "--slow-threshold", "off", "--no-tcp"]);
    let mix = |getppid| Mix {
        getppid,
        ..Default::default()
    };
    let mut a = Workload::spawn(mix(1111));
    let pid = a.pid;
    a.run();
    std::thread::sleep(Duration::from_millis(1500));
    drop(a);
    // A is exported once more after it exits, then forgotten.
    std::thread::sleep(Duration::from_millis(2500));
    // The next pid the kernel hands out is ns_last_pid + 1: ask for A's,
    // retrying while other processes on the machine take it first.
    let mut b = None;
    for _ in 0..50 {
        std::fs::write(NS_LAST_PID, (pid - 1).to_string()).expect("write ns_last_pid");
        let w = Workload::spawn(mix(2222));
        if w.pid == pid {
            b = Some(w);
            break;
        }
    }
    let Some(mut b) = b else {
        panic!("could not get pid {pid} again through {NS_LAST_PID} in 50 tries");
    };
    b.run();
    std::thread::sleep(Duration::from_millis(1500));
    drop(b);
    std::thread::sleep(Duration::from_millis(1200));
    let lines = agent.stop_with(libc::SIGTERM);

    // Every getppid count seen for the pid, by creation time.
    let mut by_creation: BTreeMap<String, u64> = BTreeMap::new();
    let p = pid.to_string();
    for l in &lines {
        for (attrs, metrics) in resources(l) {
            if attr(&attrs, "process.pid") != Some(p.as_str()) {
                continue;
            }
            let created = attr(&attrs, "process.creation.time")
                .expect("process.creation.time on a process resource")
                .to_string();
            if let Some(pt) = point(
                &metrics,
                "hostscope.syscall.duration",
                &[("syscall.name", "getppid")],
            ) {
                by_creation.insert(created, num(&pt["count"]));
            }
        }
    }
    let counts: Vec<u64> = by_creation.values().copied().collect();
    assert_eq!(
        counts,
        vec![1111, 2222],
        "pid {pid}: two identities (creation times {:?}) with their own getppid counts",
        by_creation.keys().collect::<Vec<_>>()
    );
}

/// A process started while the agent runs carries its executable's path
/// (from the exec event: the agent cannot read `/proc/<pid>/exe` of
/// processes holding capabilities once it has dropped its own), its parent
/// and its owner.
#[test]
fn a_process_carries_its_path_parent_and_owner() {
    require_root();
    let agent = Agent::start(&["--interval", "1", "--slow-threshold", "off", "--no-tcp"]);
    let mut w = Workload::spawn(Mix {
        getppid: 10,
        ..Default::default()
    });
    w.run();
    std::thread::sleep(Duration::from_millis(1500));
    let pid = w.pid;
    drop(w);
    let lines = agent.stop_with(libc::SIGTERM);
    let attrs = lines
        .iter()
        .rev()
        .find_map(|l| hostscope_tests::otlp::process_metrics(l, pid))
        .map(|(a, _)| a)
        .unwrap_or_else(|| panic!("no resource for pid {pid}"));
    let path = hostscope_tests::target_bin("hostscope-workload");
    let want = [
        (
            "process.executable.path",
            path.to_string_lossy().to_string(),
        ),
        ("process.executable.name", "hostscope-workload".to_string()),
        ("process.parent_pid", std::process::id().to_string()),
        ("process.owner", "root".to_string()),
    ];
    for (k, v) in want {
        assert_eq!(
            attr(&attrs, k),
            Some(v.as_str()),
            "{k} of pid {pid}: {attrs:?}"
        );
    }
}
