//! The shipped artefacts do what `deploy/` says: the Kubernetes manifests
//! validate against the API schemas and render with the least privilege
//! asked for; the systemd unit verifies; the tarball holds exactly its files
//! and installs; the container image runs under podman with exactly the
//! DaemonSet's capabilities, as its user, and exports real data, and with
//! one capability fewer names the missing one.
//!
//! The image and the tarball are what `cargo xtask image` and `cargo xtask
//! package` build (`cargo xtask test` builds both before these tests);
//! kubernetes-validate is the one `cargo xtask setup` puts in
//! `target/deploy-venv`.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use hostscope_tests::{
    Lines, Mix, Workload, free_port,
    otlp::{self, ExpHistogram},
    require_root, wait_timeout,
};
use serde_json::{Value, json};

/// Kubernetes version the manifests are validated against (strict schemas
/// bundled with kubernetes-validate): the oldest minor still supported
/// upstream when this was written.
const KUBERNETES_VERSION: &str = "1.33.0";

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root().join(d),
        None => root().join("target"),
    }
}

fn image() -> String {
    format!("localhost/hostscope:{VERSION}")
}

/// Runs `cmd`, returning its output; panics if it cannot start.
fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` and panics unless it exits 0, showing both streams.
fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// A directory removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "hostscope-deploy-{what}-{}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- Kubernetes

/// The YAML documents of `text`, as JSON values.
fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| {
            <Value as serde::Deserialize>::deserialize(d)
                .unwrap_or_else(|e| panic!("unparsable YAML ({e}):\n{text}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}; rendered: {docs:#?}");
    found[0]
}

#[test]
fn kubernetes_manifests_validate_and_render_least_privilege() {
    let dir = root().join("deploy/kubernetes");
    let rendered = run_ok(Command::new("kubectl").arg("kustomize").arg(&dir));
    let tmp = TempDir::new("k8s");
    let rendered_file = tmp.0.join("rendered.yaml");
    fs::write(&rendered_file, &rendered).unwrap();

    // Strict: unknown fields are errors. The sources and the rendering.
    let validate = target_dir().join("deploy-venv/bin/kubernetes-validate");
    assert!(
        validate.is_file(),
        "{} is missing: run `cargo xtask setup`",
        validate.display()
    );
    let sources = [
        "namespace.yaml",
        "serviceaccount.yaml",
        "clusterrole.yaml",
        "daemonset.yaml",
    ];
    let out = run_ok(
        Command::new(&validate)
            .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
            .arg(&rendered_file)
            .args(sources.iter().map(|f| dir.join(f))),
    );
    // One "passed" line per resource: 6 rendered, 5 in the sources.
    let passed = out.lines().filter(|l| l.contains(" passed ")).count();
    assert_eq!(passed, 11, "kubernetes-validate output:\n{out}");

    let docs = yaml_docs(&rendered);
    let kinds: BTreeSet<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Namespace",
            "ServiceAccount"
        ]),
        "rendered kinds"
    );
    for d in &docs {
        if !matches!(
            d["kind"].as_str(),
            Some("Namespace" | "ClusterRole" | "ClusterRoleBinding")
        ) {
            assert_eq!(
                d["metadata"]["namespace"], "hostscope",
                "namespace of {d:#}"
            );
        }
    }

    // RBAC: read pods, nothing else.
    assert_eq!(
        kind(&docs, "ClusterRole")["rules"],
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]),
        "ClusterRole rules"
    );
    let binding = kind(&docs, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], "hostscope");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "hostscope", "namespace": "hostscope"}])
    );

    let ds = kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "hostPID");
    assert!(pod["hostNetwork"].is_null(), "no host network: {pod:#}");
    assert_eq!(pod["serviceAccountName"], "hostscope");
    assert_eq!(
        pod["tolerations"],
        json!([{"operator": "Exists"}]),
        "tolerations"
    );
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    let c = &containers[0];
    assert_eq!(c["image"], image(), "image tag = workspace version");

    let sc = &c["securityContext"];
    assert_eq!(
        sc["capabilities"],
        json!({"drop": ["ALL"], "add": ["BPF", "PERFMON"]}),
        "capabilities"
    );
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65534);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    // Started with the health listener the probes use.
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "run",
            "--config",
            "/etc/hostscope/config.yaml",
            "--listen",
            "0.0.0.0:9464"
        ]
    );
    let ports = c["ports"].as_array().expect("ports");
    let port_of = |p: &Value| -> u64 {
        match p {
            Value::Number(n) => n.as_u64().unwrap(),
            Value::String(name) => ports
                .iter()
                .find(|q| q["name"] == *name.as_str())
                .and_then(|q| q["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("probe port {name} not declared: {ports:?}")),
            other => panic!("probe port {other}"),
        }
    };
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(port_of(&get["port"]), 9464, "{probe} port");
    }

    // Environment: node name from the Downward API, OTLP endpoint.
    let env = c["env"].as_array().expect("env");
    let var = |name: &str| -> &Value {
        env.iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("env {name} missing: {env:#?}"))
    };
    assert_eq!(
        var("K8S_NODE_NAME")["valueFrom"],
        json!({"fieldRef": {"fieldPath": "spec.nodeName"}})
    );
    assert!(var("OTEL_EXPORTER_OTLP_ENDPOINT")["value"].is_string());
    assert_eq!(
        var("OTEL_RESOURCE_ATTRIBUTES")["value"],
        "k8s.node.name=$(K8S_NODE_NAME),host.name=$(K8S_NODE_NAME)",
        "the node's name as k8s.node.name and host.name"
    );

    // Requests and limits set, limits above requests.
    let res = &c["resources"];
    for k in ["cpu", "memory"] {
        assert!(res["requests"][k].is_string(), "requests.{k}: {res}");
        assert!(res["limits"][k].is_string(), "limits.{k}: {res}");
    }
    assert_eq!(
        res,
        &json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}})
    );

    // Every mount read-only; host paths exactly the cgroup tree, BTF and the
    // machine id.
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    for m in mounts {
        assert_eq!(m["readOnly"], true, "mount not read-only: {m}");
    }
    let volumes = pod["volumes"].as_array().expect("volumes");
    let host_paths: BTreeSet<(&str, &str)> = volumes
        .iter()
        .filter_map(|v| {
            let path = v["hostPath"]["path"].as_str()?;
            let mount = mounts.iter().find(|m| m["name"] == v["name"])?;
            Some((path, mount["mountPath"].as_str().unwrap()))
        })
        .collect();
    assert_eq!(
        host_paths,
        BTreeSet::from([
            ("/sys/fs/cgroup", "/sys/fs/cgroup"),
            ("/sys/kernel/btf", "/sys/kernel/btf"),
            ("/etc/machine-id", "/etc/machine-id"),
        ]),
        "host paths and where they are mounted"
    );

    // The config volume is the generated ConfigMap, holding config.yaml.
    let cm = kind(&docs, "ConfigMap");
    let config_volume = volumes
        .iter()
        .find(|v| v["configMap"].is_object())
        .expect("a configMap volume");
    assert_eq!(config_volume["configMap"]["name"], cm["metadata"]["name"]);
    assert_eq!(
        cm["data"]["config.yaml"].as_str(),
        Some(
            fs::read_to_string(dir.join("config.yaml"))
                .unwrap()
                .as_str()
        )
    );
}

// ---------------------------------------------------------------- systemd

/// `Key=value` lines of a unit (the last one of each key wins, as systemd
/// reads single-valued settings).
fn unit_settings(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Unpacks the tarball into a new temporary directory; returns it and the
/// top directory inside.
fn unpack_package() -> (TempDir, PathBuf) {
    let tarball = target_dir()
        .join("package")
        .join(format!("hostscope-{VERSION}-x86_64-linux.tar.gz"));
    assert!(
        tarball.is_file(),
        "{} is missing: run `cargo xtask package` (cargo xtask test does)",
        tarball.display()
    );
    let tmp = TempDir::new("pkg");
    run_ok(
        Command::new("tar")
            .arg("--extract")
            .arg("--file")
            .arg(&tarball)
            .arg("--directory")
            .arg(&tmp.0),
    );
    let top = tmp.0.join(format!("hostscope-{VERSION}-x86_64-linux"));
    (tmp, top)
}

#[test]
fn systemd_unit_verifies_with_the_least_privilege() {
    let (_tmp, top) = unpack_package();
    let unit = fs::read_to_string(top.join("hostscope.service")).unwrap();
    let s = unit_settings(&unit);
    for (key, want) in [
        ("DynamicUser", "yes"),
        ("AmbientCapabilities", "CAP_BPF CAP_PERFMON"),
        ("CapabilityBoundingSet", "CAP_BPF CAP_PERFMON"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("Restart", "on-failure"),
        ("EnvironmentFile", "-/etc/hostscope/hostscope.env"),
        (
            "ExecStart",
            "/usr/local/bin/hostscope run --config /etc/hostscope/config.yaml",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert_eq!(
            s.get(key).map(String::as_str),
            Some(want),
            "{key} in the unit"
        );
    }
    for key in ["StartLimitIntervalSec", "StartLimitBurst"] {
        assert!(s.contains_key(key), "{key} missing from the unit");
    }

    // systemd-analyze wants ExecStart's binary to exist: the same unit with
    // the packaged binary's path.
    let verify_dir = TempDir::new("unit");
    let copy = verify_dir.0.join("hostscope.service");
    let bin = top.join("hostscope");
    fs::write(
        &copy,
        unit.replace("/usr/local/bin/hostscope", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and bad values are warnings with exit code 0: any output
    // about the unit fails the test.
    assert!(
        out.status.success() && !stderr.contains("hostscope.service"),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

#[test]
fn default_configs_are_accepted_by_the_agent() {
    require_root();
    // The systemd default and the DaemonSet's ConfigMap: a key the agent does
    // not know would exit 2 before anything is loaded.
    let (_tmp, top) = unpack_package();
    for config in [
        top.join("config.yaml"),
        root().join("deploy/kubernetes/config.yaml"),
    ] {
        let mut child = Command::new(top.join("hostscope"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args([
                "--exporter",
                "stdout",
                "--duration",
                "1",
                "--listen",
                "none",
            ])
            .args(["--no-syscalls", "--no-sched", "--no-oom", "--no-tcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the packaged hostscope");
        let status = wait_timeout(&mut child, Duration::from_secs(60)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!(
                "hostscope with {} did not exit within 60 s",
                config.display()
            )
        });
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(
            status.success(),
            "hostscope --config {}: expected exit 0, got {status}:\n{stderr}",
            config.display()
        );
    }
}

// ---------------------------------------------------------------- tarball

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn package_holds_exactly_its_files_and_installs() {
    let tarball = target_dir()
        .join("package")
        .join(format!("hostscope-{VERSION}-x86_64-linux.tar.gz"));
    let (_tmp, top) = unpack_package();
    let listing = run_ok(
        Command::new("tar")
            .arg("--list")
            .arg("--file")
            .arg(&tarball),
    );
    let top_name = format!("hostscope-{VERSION}-x86_64-linux");
    let entries: BTreeSet<&str> = listing.lines().collect();
    let want: BTreeSet<String> = [
        "",
        "hostscope",
        "hostscope.service",
        "config.yaml",
        "hostscope.env.example",
        "install.sh",
    ]
    .iter()
    .map(|f| format!("{top_name}/{f}"))
    .collect();
    assert_eq!(
        entries,
        want.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        "tarball entries"
    );
    assert_eq!(mode(&top.join("hostscope")), 0o755);
    assert_eq!(mode(&top.join("install.sh")), 0o755);

    // install.sh is clean under shellcheck.
    run_ok(Command::new("shellcheck").arg(top.join("install.sh")));

    let dest = TempDir::new("dest");
    let install = |args: &[&str]| -> String {
        run_ok(
            Command::new(top.join("install.sh"))
                .args(args)
                .arg("--destdir")
                .arg(&dest.0),
        )
    };
    install(&[]);
    let bin = dest.0.join("usr/local/bin/hostscope");
    let unit = dest.0.join("etc/systemd/system/hostscope.service");
    let config = dest.0.join("etc/hostscope/config.yaml");
    let env = dest.0.join("etc/hostscope/hostscope.env");
    for (path, from, want_mode) in [
        (&bin, "hostscope", 0o755),
        (&unit, "hostscope.service", 0o644),
        (&config, "config.yaml", 0o644),
        (&env, "hostscope.env.example", 0o600),
    ] {
        assert_eq!(
            fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
            fs::read(top.join(from)).unwrap(),
            "{} should be the tarball's {from}",
            path.display()
        );
        assert_eq!(mode(path), want_mode, "mode of {}", path.display());
    }
    // The installed binary runs (static: no loader needed).
    let help = run_ok(Command::new(&bin).arg("--help"));
    assert!(help.contains("run"), "hostscope --help:\n{help}");

    // Again: idempotent, and an edited configuration is kept.
    fs::write(&config, "interval: 30s\n").unwrap();
    fs::write(&env, "OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318\n").unwrap();
    let again = install(&[]);
    assert!(
        again.contains("kept existing"),
        "second install said:\n{again}"
    );
    assert_eq!(fs::read_to_string(&config).unwrap(), "interval: 30s\n");
    assert_eq!(
        fs::read_to_string(&env).unwrap(),
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318\n"
    );
    assert!(bin.is_file() && unit.is_file());

    // Uninstall removes the binary and the unit, keeps the configuration;
    // twice is fine.
    install(&["--uninstall"]);
    install(&["--uninstall"]);
    assert!(!bin.exists(), "{} left after --uninstall", bin.display());
    assert!(!unit.exists(), "{} left after --uninstall", unit.display());
    assert_eq!(fs::read_to_string(&config).unwrap(), "interval: 30s\n");
}

// ---------------------------------------------------------------- image

/// A seccomp profile like the `RuntimeDefault` of containerd (and Docker):
/// podman's default with `bpf` allowed to holders of CAP_BPF and
/// `perf_event_open` to holders of CAP_PERFMON. Debian 12's podman (4.3)
/// ships a profile older than those capabilities that allows both calls
/// only with CAP_SYS_ADMIN; everything else is left as podman has it.
fn runtime_default_seccomp(dir: &Path) -> PathBuf {
    const PODMAN_PROFILE: &str = "/usr/share/containers/seccomp.json";
    let text = fs::read_to_string(PODMAN_PROFILE)
        .unwrap_or_else(|e| panic!("{PODMAN_PROFILE} (containers-common): {e}"));
    let mut profile: Value = serde_json::from_str(&text).expect("podman's seccomp profile");
    let moved = ["bpf", "perf_event_open"];
    let rules = profile["syscalls"].as_array_mut().expect("syscalls");
    for rule in rules.iter_mut() {
        if rule["action"] != "SCMP_ACT_ALLOW" {
            let names = rule["names"].as_array_mut().expect("names");
            names.retain(|n| !moved.contains(&n.as_str().unwrap_or("")));
        }
    }
    for (call, cap) in [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")] {
        rules.push(json!({
            "names": [call], "action": "SCMP_ACT_ALLOW", "args": [],
            "includes": {"caps": [cap]}, "excludes": {}
        }));
    }
    assert_eq!(
        profile["defaultAction"], "SCMP_ACT_ERRNO",
        "without the capability the call must still be refused"
    );
    let path = dir.join("seccomp.json");
    fs::write(&path, profile.to_string()).unwrap();
    path
}

/// A podman container started by a test; removed when dropped.
struct Container {
    _dir: TempDir,
    name: String,
    child: Option<std::process::Child>,
    stdout: mpsc::Receiver<String>,
    stderr: Lines,
}

/// `podman run` as the DaemonSet runs the pod: host pid namespace, all
/// capabilities dropped and `caps` added, user 65534, read-only root, no new
/// privileges, the runtime's default seccomp profile, the host's cgroup tree
/// and BTF read-only, the ConfigMap's config file; for this machine, runc
/// and explicit limits.
fn podman_run(name: &str, caps: &str, seccomp: &Path) -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc", "run", "--rm", "--name", name])
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .args(["--pid=host", "--cap-drop=all"])
        .arg(format!("--cap-add={caps}"))
        .args([
            "--user",
            "65534:65534",
            "--read-only",
            "--read-only-tmpfs=false",
        ])
        .args(["--security-opt", "no-new-privileges"])
        .arg("--security-opt")
        .arg(format!("seccomp={}", seccomp.display()))
        .args(["-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"])
        .args(["-v", "/sys/kernel/btf:/sys/kernel/btf:ro"])
        .arg("-v")
        .arg(format!(
            "{}:/etc/hostscope/config.yaml:ro",
            root().join("deploy/kubernetes/config.yaml").display()
        ))
        .args(["--env", "RUST_LOG=info", "--env", "NO_COLOR=1"])
        .arg(image())
        .args(["run", "--config", "/etc/hostscope/config.yaml"]);
    cmd
}

impl Container {
    /// Starts the image with `caps`; `publish` maps a host port on
    /// 127.0.0.1 to the container's 9464.
    fn start(what: &str, caps: &str, publish: Option<u16>, args: &[&str]) -> Container {
        require_root();
        let have = run(Command::new("podman").args(["image", "exists", &image()]));
        assert!(
            have.status.success(),
            "image {} is missing: run `cargo xtask image` (cargo xtask test does)",
            image()
        );
        let name = format!("hostscope-test-{what}-{}", std::process::id());
        let _ = run(Command::new("podman").args(["rm", "--force", "--ignore", &name]));
        let dir = TempDir::new(what);
        let seccomp = runtime_default_seccomp(&dir.0);
        let mut cmd = podman_run(&name, caps, &seccomp);
        if let Some(port) = publish {
            // Options go before the image: insert them after `run`.
            let mut args: Vec<std::ffi::OsString> = cmd.get_args().map(Into::into).collect();
            let at = args.iter().position(|a| a == "run").unwrap() + 1;
            args.insert(at, format!("--publish=127.0.0.1:{port}:9464").into());
            cmd = Command::new("podman");
            cmd.args(args);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn podman");
        let stderr = Lines::default();
        stderr.spawn_reader(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Container {
            _dir: dir,
            name,
            child: Some(child),
            stdout: rx,
            stderr,
        }
    }

    /// Waits for the container to exit (bounded); returns its status.
    fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        wait_timeout(child, timeout).unwrap_or_else(|| {
            panic!(
                "container {} did not exit within {timeout:?}; log:\n{}",
                self.name,
                self.stderr.text()
            )
        })
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "--force", "--ignore", "--time", "0", &self.name])
            .output();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `GET path` on 127.0.0.1:port: (status code, trimmed body); (0, error)
/// when the request fails.
fn http_get(port: u16, path: &str) -> (u16, String) {
    hostscope_tests::http_get(&format!("127.0.0.1:{port}"), path)
        .map(|(code, body)| (code, body.trim().to_owned()))
        .unwrap_or_else(|e| (0, e.to_string()))
}

/// Count of the workload's `getppid` calls in a metrics line, if its
/// process is there.
fn getppid_count(line: &Value, pid: u32) -> Option<u64> {
    let (_, metrics) = otlp::process_metrics(line, pid)?;
    let p = otlp::point(
        &metrics,
        "hostscope.syscall.duration",
        &[("syscall.name", "getppid")],
    )?;
    Some(ExpHistogram::from_point(p).count)
}

#[test]
fn image_runs_with_the_daemonsets_capabilities_and_exports_real_data() {
    let mut workload = Workload::spawn(Mix {
        getppid: 500,
        ..Mix::default()
    });
    let port = free_port();
    let mut c = Container::start(
        "caps",
        "bpf,perfmon",
        Some(port),
        &[
            "--listen",
            "0.0.0.0:9464",
            "--exporter",
            "stdout",
            "--interval",
            "1",
            "--duration",
            "120",
        ],
    );
    // Every signal attaches (the agent loads and attaches in the container).
    for signal in ["tcp", "sched", "oom", "syscalls"] {
        c.stderr.wait_for(
            &format!("{signal} signal attached"),
            Duration::from_secs(120),
            "hostscope in the container",
        );
    }
    workload.run();

    // The workload's exact count, from a host pid seen through --pid=host.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_seen = None;
    while Instant::now() < deadline {
        let line = match c.stdout.recv_timeout(Duration::from_secs(5)) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break, // the container ended
        };
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("container printed a line that is not JSON ({e}): {line}"));
        if let Some(n) = getppid_count(&v, workload.pid) {
            last_seen = Some(n);
            if n == workload.mix.getppid {
                break;
            }
        }
    }
    assert_eq!(
        last_seen,
        Some(workload.mix.getppid),
        "getppid calls of host pid {} exported from the container; log:\n{}",
        workload.pid,
        c.stderr.text()
    );

    // The DaemonSet's probes, through the published port: both answer 200
    // once the first interval is out (bounded wait for readiness).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    for path in ["/healthz", "/readyz"] {
        loop {
            let (code, body) = http_get(port, path);
            if code == 200 {
                break;
            }
            seen.push(format!("{path}: {code} {body}"));
            assert!(
                Instant::now() < deadline,
                "{path} should answer 200 within 30 s; saw:\n{}\nlog:\n{}",
                seen.join("\n"),
                c.stderr.text()
            );
            thread::sleep(Duration::from_millis(500));
        }
    }

    // SIGTERM through podman: the agent flushes and exits 0.
    run_ok(Command::new("podman").args(["kill", "--signal", "TERM", &c.name]));
    let status = c.wait(Duration::from_secs(60));
    let log = c.stderr.text();
    assert!(status.success(), "container exit: {status}; log:\n{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "ERROR lines in the log:\n{log}");
}

#[test]
fn image_without_perfmon_names_the_missing_capability() {
    let mut c = Container::start(
        "noperfmon",
        "bpf",
        None,
        &["--exporter", "stdout", "--interval", "1", "--duration", "2"],
    );
    let status = c.wait(Duration::from_secs(120));
    let log = c.stderr.text();
    for signal in ["syscalls", "tcp", "sched", "oom"] {
        assert!(
            !log.contains(&format!("{signal} signal attached")),
            "{signal} attached without CAP_PERFMON; log:\n{log}"
        );
    }
    let line = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("syscalls signal not attached"))
        .unwrap_or_else(|| {
            panic!("expected an ERROR line for the syscalls signal (exit {status}); log:\n{log}")
        });
    assert!(
        line.contains("missing capability") && line.contains("CAP_PERFMON"),
        "the error should name CAP_PERFMON as missing: {line}"
    );
}
