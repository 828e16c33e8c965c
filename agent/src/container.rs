//! Container and pod identity from a cgroup path, as container runtimes and
//! the kubelet name their cgroups (no runtime or Kubernetes API involved).
//!
//! Recognised, under either cgroup driver:
//! - systemd driver: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_with_underscores>.slice/<runtime>-<64 hex>.scope`
//!   (guaranteed pods sit directly in `kubepods.slice/kubepods-pod<uid>.slice`),
//!   where the scope prefix names the runtime: `cri-containerd-`, `crio-`,
//!   `docker-`, `libpod-` (podman); also outside Kubernetes
//!   (`system.slice/docker-<id>.scope`, `machine.slice/libpod-<id>.scope`);
//! - cgroupfs driver: `kubepods[/<qos>]/pod<uid>/<64 hex>` (or a prefixed id),
//!   `docker/<64 hex>`, `libpod_parent/libpod-<64 hex>`.
//!
//! `crio-conmon-` and `libpod-conmon-` scopes hold the runtime's monitor, not
//! a container; ids shorter than 64 hex digits are not taken. The innermost
//! container of a path wins (a process in `docker-<id>.scope/init.scope` is in
//! that container).

use opentelemetry_proto::tonic::common::v1::KeyValue;

use crate::otlp;

/// Who a cgroup (or a process in it) belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerIdentity {
    /// The runtime's full container id (64 lowercase hex digits).
    pub id: Option<String>,
    /// `containerd`, `cri-o`, `docker` or `podman`, when the name says.
    pub runtime: Option<&'static str>,
    /// The pod's UID with dashes (`1234abcd-...`).
    pub pod_uid: Option<String>,
    /// `guaranteed`, `burstable` or `besteffort`, with a pod.
    pub qos_class: Option<&'static str>,
}

/// Attribute keys, as exported.
pub const CONTAINER_ID: &str = "container.id";
pub const CONTAINER_RUNTIME: &str = "container.runtime.name";
pub const POD_UID: &str = "k8s.pod.uid";
/// No semantic convention exists for the QoS class.
pub const QOS_CLASS: &str = "hostscope.k8s.pod.qos_class";

impl ContainerIdentity {
    /// Resource attributes, those known only.
    pub fn attributes(&self) -> Vec<KeyValue> {
        let mut attrs = Vec::with_capacity(4);
        if let Some(id) = &self.id {
            attrs.push(otlp::kv_str(CONTAINER_ID, id.clone()));
        }
        if let Some(r) = self.runtime {
            attrs.push(otlp::kv_str(CONTAINER_RUNTIME, r));
        }
        if let Some(uid) = &self.pod_uid {
            attrs.push(otlp::kv_str(POD_UID, uid.clone()));
        }
        if let Some(q) = self.qos_class {
            attrs.push(otlp::kv_str(QOS_CLASS, q));
        }
        attrs
    }
}

/// Identity of a process from `/proc/<pid>/cgroup`; None when it is in no
/// recognisable container or pod, or is gone.
pub fn read(pid: u32) -> Option<ContainerIdentity> {
    from_proc_cgroup(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// Identity from the text of `/proc/<pid>/cgroup`: the cgroup v2 line
/// (`0::/...`) first; on hybrid and v1 hosts, where runtimes may only place
/// the process in v1 hierarchies, then the v1 lines, `cpu`/`cpuacct`,
/// `memory`, `pids` and `name=systemd` before the others.
pub fn from_proc_cgroup(text: &str) -> Option<ContainerIdentity> {
    // (rank, path): lower rank is tried first.
    let mut candidates: Vec<(u8, &str)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let rank = if controllers.is_empty() {
                0
            } else {
                let has = |c: &str| controllers.split(',').any(|x| x == c);
                if has("cpu") || has("cpuacct") {
                    1
                } else if has("memory") {
                    2
                } else if has("pids") {
                    3
                } else if has("name=systemd") {
                    4
                } else {
                    5
                }
            };
            Some((rank, path))
        })
        .filter(|(_, path)| *path != "/")
        .collect();
    candidates.sort_by_key(|(rank, _)| *rank);
    candidates
        .into_iter()
        .find_map(|(_, p)| from_cgroup_path(p))
}

/// Identity from a cgroup path (relative to its hierarchy's root, with or
/// without a leading `/`). None unless it names a container or a pod.
pub fn from_cgroup_path(path: &str) -> Option<ContainerIdentity> {
    let mut out = ContainerIdentity::default();
    let mut in_kubepods = false;
    let mut parent = "";
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        if let Some((uid, qos)) = pod_component(comp, parent, in_kubepods) {
            out.pod_uid = Some(uid);
            out.qos_class = Some(qos);
        } else if let Some((id, runtime)) = container_component(comp, parent) {
            // The innermost container wins.
            out.id = Some(id.to_string());
            out.runtime = runtime;
        }
        if is_kubepods(comp) {
            in_kubepods = true;
        }
        parent = comp;
    }
    (out.id.is_some() || out.pod_uid.is_some()).then_some(out)
}

/// `kubepods` (cgroupfs), `kubepods.slice` or a nested root such as
/// `kubelet-kubepods.slice` (kind).
fn is_kubepods(comp: &str) -> bool {
    let name = comp.strip_suffix(".slice").unwrap_or(comp);
    name == "kubepods" || name.ends_with("-kubepods")
}

/// A pod's cgroup: (UID with dashes, QoS class).
fn pod_component(comp: &str, parent: &str, in_kubepods: bool) -> Option<(String, &'static str)> {
    if let Some(name) = comp.strip_suffix(".slice") {
        // systemd: `[...-]kubepods[-<qos>]-pod<uid_with_underscores>.slice`.
        let at = name.find("kubepods-")?;
        let rest = &name[at + "kubepods-".len()..];
        let (qos, uid) = if let Some(u) = rest.strip_prefix("pod") {
            ("guaranteed", u)
        } else if let Some(u) = rest.strip_prefix("burstable-pod") {
            ("burstable", u)
        } else if let Some(u) = rest.strip_prefix("besteffort-pod") {
            ("besteffort", u)
        } else {
            return None;
        };
        return Some((pod_uid(&uid.replace('_', "-"))?, qos));
    }
    // cgroupfs: `kubepods[/<qos>]/pod<uid>`.
    let uid = comp.strip_prefix("pod")?;
    if !in_kubepods {
        return None;
    }
    let qos = match parent {
        "burstable" => "burstable",
        "besteffort" => "besteffort",
        p if is_kubepods(p) => "guaranteed",
        _ => return None,
    };
    Some((pod_uid(uid)?, qos))
}

/// A pod UID as the kubelet writes it: a UUID (8-4-4-4-12 hex digits) or,
/// for static pods, 32 hex digits. Returned lowercase.
fn pod_uid(s: &str) -> Option<String> {
    let ok = match s.len() {
        32 => s.bytes().all(|b| b.is_ascii_hexdigit()),
        36 => s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        }),
        _ => false,
    };
    ok.then(|| s.to_ascii_lowercase())
}

/// A container's cgroup: (id, runtime).
fn container_component<'a>(comp: &'a str, parent: &str) -> Option<(&'a str, Option<&'static str>)> {
    let name = comp.strip_suffix(".scope").unwrap_or(comp);
    if is_container_id(name) {
        // cgroupfs names the directory by the bare id; the parent says whose.
        let runtime = match parent {
            "docker" => Some("docker"),
            "libpod_parent" => Some("podman"),
            _ => None,
        };
        return Some((name, runtime));
    }
    // The monitors (`crio-conmon-<id>`, `libpod-conmon-<id>`) fail the id
    // check below, as their id starts with `conmon-`.
    const PREFIXES: [(&str, &str); 4] = [
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
        ("libpod-", "podman"),
    ];
    PREFIXES.iter().find_map(|(prefix, runtime)| {
        let id = name.strip_prefix(prefix)?;
        is_container_id(id).then_some((id, Some(*runtime)))
    })
}

/// 64 lowercase hex digits, as containerd, CRI-O, Docker and Podman write
/// full ids.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const ID2: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    const UID: &str = "1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d";
    const UID_US: &str = "1a2b3c4d_5e6f_4a8b_9c0d_1e2f3a4b5c6d";

    fn ident(
        id: Option<&str>,
        runtime: Option<&'static str>,
        pod: Option<&str>,
        qos: Option<&'static str>,
    ) -> Option<ContainerIdentity> {
        Some(ContainerIdentity {
            id: id.map(str::to_string),
            runtime,
            pod_uid: pod.map(str::to_string),
            qos_class: qos,
        })
    }

    #[test]
    fn kubernetes_systemd_driver() {
        let cases = [
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{ID}.scope"
                ),
                ident(Some(ID), Some("containerd"), Some(UID), Some("burstable")),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/crio-{ID}.scope"
                ),
                ident(Some(ID), Some("cri-o"), Some(UID), Some("besteffort")),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_US}.slice/docker-{ID}.scope"),
                ident(Some(ID), Some("docker"), Some(UID), Some("guaranteed")),
            ),
            // crun under CRI-O: the process sits in a `container` child.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/crio-{ID}.scope/container"
                ),
                ident(Some(ID), Some("cri-o"), Some(UID), Some("burstable")),
            ),
            // kind: the node's kubelet nests its root.
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{ID}.scope"
                ),
                ident(Some(ID), Some("containerd"), Some(UID), Some("besteffort")),
            ),
            // Without a leading slash, as cgroup paths sometimes are.
            (
                format!("kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{ID}.scope"),
                ident(Some(ID), Some("containerd"), Some(UID), Some("guaranteed")),
            ),
            // A static pod: its UID is 32 hex digits.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5d4b2d6a1c9d3f0e5b8e3f2a0a1b2c3d.slice/cri-containerd-{ID}.scope"
                ),
                ident(
                    Some(ID),
                    Some("containerd"),
                    Some("5d4b2d6a1c9d3f0e5b8e3f2a0a1b2c3d"),
                    Some("burstable"),
                ),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(from_cgroup_path(&path), want, "{path}");
        }
    }

    #[test]
    fn kubernetes_cgroupfs_driver() {
        let cases = [
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                ident(Some(ID), None, Some(UID), Some("burstable")),
            ),
            (
                format!("/kubepods/pod{UID}/{ID}"),
                ident(Some(ID), None, Some(UID), Some("guaranteed")),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                ident(Some(ID), None, Some(UID), Some("besteffort")),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/crio-{ID}"),
                ident(Some(ID), Some("cri-o"), Some(UID), Some("besteffort")),
            ),
            // Uppercase UID digits are written lowercase.
            (
                format!("/kubepods/pod{}/{ID}", UID.to_uppercase()),
                ident(Some(ID), None, Some(UID), Some("guaranteed")),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(from_cgroup_path(&path), want, "{path}");
        }
    }

    #[test]
    fn pod_cgroups_without_a_container() {
        assert_eq!(
            from_cgroup_path(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice"
            )),
            ident(None, None, Some(UID), Some("burstable"))
        );
        assert_eq!(
            from_cgroup_path(&format!("/kubepods/pod{UID}")),
            ident(None, None, Some(UID), Some("guaranteed"))
        );
        // A pod with its CRI-O monitor: the pod, no container.
        assert_eq!(
            from_cgroup_path(&format!(
                "/kubepods.slice/kubepods-pod{UID_US}.slice/crio-conmon-{ID}.scope"
            )),
            ident(None, None, Some(UID), Some("guaranteed"))
        );
    }

    #[test]
    fn plain_hosts() {
        let cases = [
            (
                format!("/docker/{ID}"),
                ident(Some(ID), Some("docker"), None, None),
            ),
            (
                format!("/system.slice/docker-{ID}.scope"),
                ident(Some(ID), Some("docker"), None, None),
            ),
            // systemd running inside the container.
            (
                format!("/system.slice/docker-{ID}.scope/init.scope"),
                ident(Some(ID), Some("docker"), None, None),
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                ident(Some(ID), Some("podman"), None, None),
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
                ),
                ident(Some(ID), Some("podman"), None, None),
            ),
            (
                format!("/libpod_parent/libpod-{ID}"),
                ident(Some(ID), Some("podman"), None, None),
            ),
            (
                format!("/libpod_parent/{ID}"),
                ident(Some(ID), Some("podman"), None, None),
            ),
            (
                format!("/system.slice/crio-{ID}.scope"),
                ident(Some(ID), Some("cri-o"), None, None),
            ),
            // Docker in Docker: the inner container.
            (
                format!("/docker/{ID}/docker/{ID2}"),
                ident(Some(ID2), Some("docker"), None, None),
            ),
            // A bare id elsewhere (nerdctl's namespace directory): runtime unknown.
            (format!("/default/{ID}"), ident(Some(ID), None, None, None)),
        ];
        for (path, want) in cases {
            assert_eq!(from_cgroup_path(&path), want, "{path}");
        }
    }

    #[test]
    fn not_containers() {
        let short = &ID[..63];
        let upper = ID.to_uppercase();
        let paths = [
            "/".to_string(),
            String::new(),
            "/init.scope".into(),
            "/system.slice/ssh.service".into(),
            "/system.slice/containerd.service".into(),
            "/system.slice/docker.service".into(),
            "/system.slice/systemd-journald.service".into(),
            "/user.slice/user-1000.slice/session-3.scope".into(),
            "/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service".into(),
            "/process_api/55b737f85a52fa8f9d8f7900c580da32".into(),
            "/kubepods.slice".into(),
            "/kubepods.slice/kubepods-burstable.slice".into(),
            "/kubepods/burstable".into(),
            "/kubepods".into(),
            // Monitors, not containers.
            format!("/system.slice/crio-conmon-{ID}.scope"),
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-conmon-{ID}.scope"
            ),
            // Truncated, overlong, uppercase or non-hex ids.
            format!("/docker/{short}"),
            format!("/system.slice/docker-{short}.scope"),
            format!("/system.slice/docker-{ID}0.scope"),
            format!("/docker/{upper}"),
            format!("/system.slice/docker-{}g.scope", &ID[..63]),
            "/system.slice/docker-0123456789ab.scope".into(),
            // Unknown runtime prefix.
            format!("/system.slice/rkt-{ID}.scope"),
            // A `pod...` directory outside kubepods, or with a malformed UID.
            format!("/system.slice/pod{UID}"),
            "/kubepods/burstable/pod1234".into(),
            "/kubepods.slice/kubepods-pod1234_5678.slice".into(),
            format!("/kubepods.slice/kubepods-pod{}.slice", &UID_US[..35]),
        ];
        for p in paths {
            assert_eq!(from_cgroup_path(&p), None, "{p}");
        }
    }

    #[test]
    fn proc_cgroup_lines_in_order() {
        // Pure v2.
        let v2 =
            format!("0::/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(
            from_proc_cgroup(&v2),
            ident(Some(ID), Some("containerd"), Some(UID), Some("guaranteed"))
        );
        // Hybrid: the v2 line is `/`, the v1 hierarchies carry the container.
        let hybrid = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{ID}\n\
             4:memory:/kubepods/besteffort/pod{UID}/{ID}\n\
             3:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n\
             0::/\n"
        );
        assert_eq!(
            from_proc_cgroup(&hybrid),
            ident(Some(ID), None, Some(UID), Some("besteffort"))
        );
        // The v2 line wins over v1 lines when it names a container.
        let both = format!("3:cpu,cpuacct:/docker/{ID2}\n0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(
            from_proc_cgroup(&both),
            ident(Some(ID), Some("docker"), None, None)
        );
        // cpu before memory before name=systemd, whatever the line order.
        let v1 = format!(
            "9:name=systemd:/system.slice/docker-{ID2}.scope\n\
             4:memory:/docker/{ID2}\n\
             2:cpu,cpuacct:/docker/{ID}\n"
        );
        assert_eq!(
            from_proc_cgroup(&v1),
            ident(Some(ID), Some("docker"), None, None)
        );
        // Only the systemd hierarchy says it.
        let sd = format!("9:name=systemd:/system.slice/docker-{ID}.scope\n2:cpu:/\n0::/\n");
        assert_eq!(
            from_proc_cgroup(&sd),
            ident(Some(ID), Some("docker"), None, None)
        );
        // This machine's style of host process: nothing.
        let host = "9:name=systemd:/\n4:memory:/process_api/55b737f85a52fa8f9d8f7900c580da32\n1:cpu:/\n0::/\n";
        assert_eq!(from_proc_cgroup(host), None);
        assert_eq!(from_proc_cgroup(""), None);
        assert_eq!(from_proc_cgroup("garbage\n"), None);
        assert_eq!(
            from_proc_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"),
            None
        );
    }

    #[test]
    fn attributes_as_exported() {
        let id = from_cgroup_path(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/crio-{ID}.scope"
        ))
        .unwrap();
        let got: Vec<(String, String)> = id
            .attributes()
            .into_iter()
            .map(|kv| {
                let v = serde_json::to_value(&kv.value).unwrap();
                (kv.key, v["stringValue"].as_str().unwrap().to_string())
            })
            .collect();
        let want = [
            ("container.id", ID),
            ("container.runtime.name", "cri-o"),
            ("k8s.pod.uid", UID),
            ("hostscope.k8s.pod.qos_class", "burstable"),
        ];
        assert_eq!(
            got,
            want.map(|(k, v)| (k.to_string(), v.to_string())).to_vec()
        );
        // Only what is known.
        let plain = from_cgroup_path(&format!("/kubepods/pod{UID}/{ID}")).unwrap();
        let keys: Vec<String> = plain.attributes().into_iter().map(|kv| kv.key).collect();
        assert_eq!(
            keys,
            ["container.id", "k8s.pod.uid", "hostscope.k8s.pod.qos_class"]
        );
    }

    #[test]
    fn own_process_is_readable() {
        // Whatever this process is in, reading it must not fail or panic;
        // a gone pid has no identity.
        let _ = read(std::process::id());
        assert_eq!(read(u32::MAX), None);
    }
}
