//! Container and pod identity from cgroup paths: workloads moved into cgroup2
//! directories named as the kubelet and containerd name them (systemd driver)
//! and as the kubelet's cgroupfs driver does are exported with exactly the
//! `container.id`, `k8s.pod.uid` and QoS class their paths carry.
//!
//! The trees are made under a directory of this test's own in the cgroup2
//! mount (`/sys/fs/cgroup/unified` on hybrid hosts, `/sys/fs/cgroup` on pure
//! v2), so a real `kubepods` is never touched; the parser finds `kubepods`
//! at any depth.

use std::time::Duration;

use hostscope_tests::{
    Agent, Mix, Workload,
    cgroup::{Layout, Tree, v2_path},
    otlp::{self, Attrs},
    require_root,
};
use serde_json::Value;

/// Attributes of the last process resource exported for `pid`, and its
/// getppid count there.
fn last_process(lines: &[Value], pid: u32) -> (Attrs, u64) {
    let (attrs, metrics) = lines
        .iter()
        .rev()
        .find_map(|l| otlp::process_metrics(l, pid))
        .unwrap_or_else(|| panic!("no resource for pid {pid} in {} lines", lines.len()));
    let getppid = otlp::point(
        &metrics,
        "hostscope.syscall.duration",
        &[("syscall.name", "getppid")],
    )
    .map_or(0, |p| otlp::num(&p["count"]));
    (attrs, getppid)
}

/// Every resource exported for the cgroup `path`.
fn cgroup_resources(lines: &[Value], path: &str) -> Vec<Attrs> {
    lines
        .iter()
        .flat_map(otlp::resources)
        .map(|(a, _)| a)
        .filter(|a| otlp::attr(a, "hostscope.cgroup.path") == Some(path))
        .collect()
}

const KEYS: [&str; 4] = [
    "container.id",
    "container.runtime.name",
    "k8s.pod.uid",
    "hostscope.k8s.pod.qos_class",
];

/// The container attributes in `attrs`, each once at most.
fn container_attrs(attrs: &Attrs) -> Vec<(String, String)> {
    for k in KEYS {
        let n = attrs.iter().filter(|(key, _)| key == k).count();
        assert!(n <= 1, "{k} appears {n} times: {attrs:?}");
    }
    attrs
        .iter()
        .filter(|(k, _)| KEYS.contains(&k.as_str()))
        .cloned()
        .collect()
}

fn expect(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn processes_in_pod_cgroups_carry_container_and_pod_identity() {
    require_root();
    let v2 = Layout::detect()
        .v2
        .expect("a cgroup2 mount (/sys/fs/cgroup/unified on hybrid hosts)");
    let me = std::process::id();
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    // Distinct per run, so leftovers of a killed run never collide.
    let uid_a = format!("{me:08x}-0000-4000-8000-{:012x}", salt & 0xffff_ffff_ffff);
    let uid_b = format!("{me:08x}-0000-4000-9000-{:012x}", salt & 0xffff_ffff_ffff);
    let id_a = format!("{:016x}{:016x}{:016x}{:016x}", salt, me, 0xaaaa_u64, salt);
    let id_b = format!("{:016x}{:016x}{:016x}{:016x}", salt, me, 0xbbbb_u64, salt);
    let top = format!("hostscope-container-{me}");
    let systemd_path = format!(
        "/{top}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id_a}.scope",
        uid_a.replace('-', "_")
    );
    let cgroupfs_path = format!("/{top}/kubepods/besteffort/pod{uid_b}/{id_b}");

    // Trees first (dropped last), then the workloads: on failure the
    // workloads exit, the trees are emptied and removed.
    let top_tree = Tree::create(&v2, &top);
    let systemd_tree = Tree::create(&v2, &systemd_path);
    let cgroupfs_tree = Tree::create(&v2, &cgroupfs_path);
    let mix = Mix {
        getppid: 1000,
        threads: 1,
        ..Default::default()
    };
    let mut a = Workload::spawn(mix);
    let mut b = Workload::spawn(mix);
    systemd_tree.enter(a.pid);
    cgroupfs_tree.enter(b.pid);
    assert_eq!(v2_path(a.pid), systemd_path, "the 0:: line shows the tree");
    assert_eq!(v2_path(b.pid), cgroupfs_path, "the 0:: line shows the tree");

    // Moved before the agent starts, so it reads them in their cgroups.
    let agent = Agent::start(&["--interval", "1", "--slow-threshold", "off"]);
    agent.stderr.wait_for(
        "syscalls signal attached",
        Duration::from_secs(30),
        "syscalls signal",
    );
    a.run();
    b.run();
    std::thread::sleep(Duration::from_millis(2500));
    let lines = agent.stop_with(libc::SIGTERM);

    let (attrs_a, calls_a) = last_process(&lines, a.pid);
    let (attrs_b, calls_b) = last_process(&lines, b.pid);
    assert_eq!(calls_a, 1000, "pid {} getppid count: {attrs_a:?}", a.pid);
    assert_eq!(calls_b, 1000, "pid {} getppid count: {attrs_b:?}", b.pid);
    let want_a = expect(&[
        ("container.id", &id_a),
        ("container.runtime.name", "containerd"),
        ("k8s.pod.uid", &uid_a),
        ("hostscope.k8s.pod.qos_class", "burstable"),
    ]);
    // cgroupfs names the container by its id alone: no runtime.
    let want_b = expect(&[
        ("container.id", &id_b),
        ("k8s.pod.uid", &uid_b),
        ("hostscope.k8s.pod.qos_class", "besteffort"),
    ]);
    assert_eq!(container_attrs(&attrs_a), want_a, "systemd-driver pod");
    assert_eq!(container_attrs(&attrs_b), want_b, "cgroupfs-driver pod");

    // Per-cgroup resources of those cgroups (run-queue delay) say the same.
    for (path, want) in [(&systemd_path, &want_a), (&cgroupfs_path, &want_b)] {
        let seen = cgroup_resources(&lines, path);
        assert!(!seen.is_empty(), "no cgroup resource for {path}");
        for attrs in seen {
            assert_eq!(&container_attrs(&attrs), want, "cgroup resource {path}");
        }
    }

    drop((a, b));
    drop((cgroupfs_tree, systemd_tree, top_tree));
}
