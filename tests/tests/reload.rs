//! SIGHUP re-reads the configuration: what can change at run time (here a
//! signal's granularity) takes effect, what cannot (a kernel map size) is
//! reported and kept, and a file that does not parse is reported with its
//! key while the agent runs on unchanged.

use std::time::Duration;

use hostscope_tests::{
    Agent, Mix, Workload,
    otlp::{attr, num, point, resources},
    require_root,
};

fn hup(agent: &Agent) {
    assert_eq!(
        unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) },
        0,
        "kill -HUP"
    );
}

#[test]
fn sighup_applies_what_can_change_and_reports_the_rest() {
    require_root();
    let dir = std::env::temp_dir().join(format!("hostscope-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("hostscope.yaml");
    let write = |text: &str| std::fs::write(&file, text).expect("write the config file");
    write("syscalls: { granularity: process }\ntcp: { max_series: 4096 }\n");
    let path = file.to_string_lossy().to_string();
    let agent = Agent::start(&[
        "--config",
        &path,
        "--interval",
        "1",
        "--slow-threshold",
        "off",
        "--no-tcp",
    ]);
    let mix = |getppid| Mix {
        getppid,
        ..Default::default()
    };
    let mut a = Workload::spawn(mix(1111));
    a.run();
    std::thread::sleep(Duration::from_millis(1500));

    write("syscalls: { granularity: executable }\ntcp: { max_series: 2048 }\n");
    hup(&agent);
    let reloaded = agent.stderr.wait_for(
        "SIGHUP: configuration reloaded",
        Duration::from_secs(10),
        "reload",
    );
    assert!(
        reloaded.contains("limits and granularity"),
        "the granularity change should be applied: {reloaded}"
    );
    let restart = agent.stderr.wait_for(
        "SIGHUP: tcp changed",
        Duration::from_secs(5),
        "restart warning",
    );
    assert!(restart.contains("after a restart"), "{restart}");

    let mut b = Workload::spawn(mix(2222));
    b.run();
    std::thread::sleep(Duration::from_millis(2500));

    write("syscalls: { granularity: sideways }\n");
    hup(&agent);
    let refused = agent.stderr.wait_for(
        "configuration not reloaded",
        Duration::from_secs(10),
        "refused reload",
    );
    assert!(
        refused.contains("syscalls.granularity") && refused.contains("sideways"),
        "the error should name the key and the value: {refused}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let a_pid = a.pid.to_string();
    drop(a);
    drop(b);
    let lines = agent.stop_with(libc::SIGTERM);
    let _ = std::fs::remove_dir_all(&dir);

    // Before the reload, A on its own resource; after it, A and B summed on
    // the executable's resource, to the call.
    let own_a = lines.iter().any(|l| {
        resources(l).into_iter().any(|(attrs, metrics)| {
            attr(&attrs, "process.pid") == Some(a_pid.as_str())
                && point(
                    &metrics,
                    "hostscope.syscall.duration",
                    &[("syscall.name", "getppid")],
                )
                .is_some()
        })
    });
    assert!(
        own_a,
        "before SIGHUP, pid {a_pid}'s getppid series on its own resource"
    );
    let mut group = None;
    for l in &lines {
        for (attrs, metrics) in resources(l) {
            if attr(&attrs, "process.pid").is_none()
                && attr(&attrs, "process.executable.name") == Some("hostscope-workload")
                && let Some(p) = point(
                    &metrics,
                    "hostscope.syscall.duration",
                    &[("syscall.name", "getppid")],
                )
            {
                group = Some(num(&p["count"]));
            }
        }
    }
    assert_eq!(
        group,
        Some(1111 + 2222),
        "after SIGHUP, both workloads' getppid calls summed on the executable's resource \
         (and still after the refused reload)"
    );
}
