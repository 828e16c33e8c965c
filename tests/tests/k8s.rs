//! Kubernetes pod metadata through the agent's real client code, talking to
//! a local HTTP server that replays Kubernetes API responses: the pod list
//! for the node, then a watch stream (chunked JSON lines) in which a pod is
//! added, one is deleted and re-created under the same name with a new UID.
//! Workloads sit in cgroups named the way the kubelet names them, with the
//! replayed pods' UIDs and container ids, and their exported resources must
//! carry exactly the pods' names, namespaces, container names and
//! allow-listed labels. An API answering 403 gives one warning, and the
//! identity from cgroup paths still flows.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use hostscope_tests::{
    Agent, Mix, Workload,
    cgroup::{Layout, Tree},
    otlp::{self, Attrs},
    require_root,
};
use serde_json::{Value, json};

const NODE: &str = "node-hostscope-test";

/// What the fake API server answers.
#[derive(Clone)]
enum Reply {
    /// The pod list (for requests without `watch`), then a watch stream fed
    /// by [`FakeApi::send`].
    Pods(String),
    /// 403 Forbidden, as the API server answers without RBAC rights.
    Forbidden,
}

/// A Kubernetes API server on 127.0.0.1 that replays canned responses.
/// Stops (and its threads end) on drop.
struct FakeApi {
    port: u16,
    /// Request targets (`/api/v1/pods?...`), in order.
    requests: Arc<Mutex<Vec<String>>>,
    events: mpsc::Sender<String>,
    stop: Arc<AtomicBool>,
}

impl FakeApi {
    fn start(reply: Reply) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<String>();
        let rx = Arc::new(Mutex::new(rx));
        let (reqs, st) = (requests.clone(), stop.clone());
        thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (reqs, st, rx, reply) =
                            (reqs.clone(), st.clone(), rx.clone(), reply.clone());
                        thread::spawn(move || serve(conn, &reqs, &st, &rx, &reply));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        FakeApi {
            port,
            requests,
            events: tx,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Queues one watch event (`{"type": ..., "object": ...}`).
    fn send(&self, kind: &str, pod: &Value) {
        let line = json!({"type": kind, "object": pod}).to_string();
        self.events.send(line).expect("watch event channel");
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One request per connection (`Connection: close`).
fn serve(
    conn: TcpStream,
    requests: &Mutex<Vec<String>>,
    stop: &AtomicBool,
    events: &Mutex<mpsc::Receiver<String>>,
    reply: &Reply,
) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => return,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {}
        }
    }
    let target = first.split_whitespace().nth(1).unwrap_or("").to_string();
    requests.lock().unwrap().push(target.clone());
    let mut conn = conn;
    let status_json = |code: u16, reason: &str, message: &str| {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code})
        .to_string()
    };
    let respond = |conn: &mut TcpStream, status: &str, body: &str| {
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
    };
    let list_body = match reply {
        Reply::Forbidden => {
            let body = status_json(
                403,
                "Forbidden",
                "pods is forbidden: User \"system:serviceaccount:hostscope:hostscope\" cannot \
                 list resource \"pods\" in API group \"\" at the cluster scope",
            );
            respond(&mut conn, "403 Forbidden", &body);
            return;
        }
        Reply::Pods(list) => list,
    };
    if !target.starts_with("/api/v1/pods?") {
        respond(
            &mut conn,
            "404 Not Found",
            &status_json(404, "NotFound", "not here"),
        );
        return;
    }
    if query(&target, "watch").is_none() {
        respond(&mut conn, "200 OK", list_body);
        return;
    }
    // The watch: chunked JSON lines as the test sends them, open until the
    // test ends.
    if write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n"
    )
    .is_err()
    {
        return;
    }
    let _ = conn.flush();
    while !stop.load(Ordering::Relaxed) {
        let ev = events
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_millis(100));
        if let Ok(line) = ev {
            let chunk = format!("{line}\n");
            if write!(conn, "{:x}\r\n{chunk}\r\n", chunk.len()).is_err() {
                return;
            }
            let _ = conn.flush();
        }
    }
    let _ = write!(conn, "0\r\n\r\n");
}

/// The decoded value of `name` in a request target's query.
fn query(target: &str, name: &str) -> Option<String> {
    let (_, q) = target.split_once('?')?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 3 <= b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A pod as the API server returns it (the fields the agent reads, and a
/// few it must ignore).
fn pod(name: &str, namespace: &str, uid: &str, rv: u64, labels: Value, containers: Value) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "uid": uid,
                     "resourceVersion": rv.to_string(), "labels": labels,
                     "creationTimestamp": "2026-11-23T10:00:00Z"},
        "spec": {"nodeName": NODE, "containers": []},
        "status": {"phase": "Running", "qosClass": "Burstable", "containerStatuses": containers}
    })
}

/// The identity attributes (`container.*`, `k8s.*`) of `pid`'s resource in
/// one OTLP/JSON line, sorted; None when the line has no resource for it.
fn identity(line: &Value, pid: u32) -> Option<Attrs> {
    let (attrs, _) = otlp::process_metrics(line, pid)?;
    let mut v: Attrs = attrs
        .into_iter()
        .filter(|(k, _)| k.starts_with("container.") || k.starts_with("k8s."))
        .collect();
    v.sort();
    Some(v)
}

fn sorted(pairs: &[(&str, &str)]) -> Attrs {
    let mut v: Attrs = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

/// Reads lines until one has, for every (pid, want) pair, a resource with
/// exactly `want`'s identity attributes; panics with what was seen after
/// `timeout`.
fn wait_for_identities(agent: &Agent, want: &[(u32, &str, Attrs)], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut seen: Vec<Option<Attrs>> = vec![None; want.len()];
    while Instant::now() < deadline {
        let line = agent.next_line(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1)),
        );
        if line.get("resourceMetrics").is_none() {
            continue;
        }
        let got: Vec<Option<Attrs>> = want
            .iter()
            .map(|(pid, _, _)| identity(&line, *pid))
            .collect();
        for (s, g) in seen.iter_mut().zip(&got) {
            if g.is_some() {
                s.clone_from(g);
            }
        }
        if want
            .iter()
            .zip(&got)
            .all(|((_, _, w), g)| g.as_ref() == Some(w))
        {
            return;
        }
    }
    let report: Vec<String> = want
        .iter()
        .zip(&seen)
        .map(|((pid, what, w), s)| {
            format!("{what} (pid {pid}):\n  expected {w:?}\n  last seen {s:?}")
        })
        .collect();
    panic!(
        "within {timeout:?}, no interval had the expected identities:\n{}\nagent log:\n{}",
        report.join("\n"),
        agent.stderr.text()
    );
}

/// A fresh UID / container id per run, so a killed run's leftovers never
/// collide.
fn ids(tag: u64) -> (String, String) {
    let me = std::process::id();
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        & 0xffff_ffff_ffff;
    (
        format!("{me:08x}-{tag:04x}-4000-8000-{salt:012x}"),
        format!("{salt:016x}{me:016x}{tag:016x}{salt:016x}"),
    )
}

fn systemd_path(top: &str, uid: &str, id: &str) -> String {
    format!(
        "/{top}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    )
}

fn mix() -> Mix {
    Mix {
        getppid: 100,
        threads: 1,
        ..Default::default()
    }
}

#[test]
fn pods_of_this_node_name_their_processes_through_list_and_watch() {
    require_root();
    let v2 = Layout::detect().v2.expect("a cgroup2 mount");
    let top = format!("hostscope-k8s-{}", std::process::id());
    let (uid_web1, id_web1) = ids(1);
    let (uid_web2, id_web2) = ids(2);
    let (uid_db, id_db) = ids(3);
    let (_, id_sidecar) = ids(4);
    let path_web1 = systemd_path(&top, &uid_web1, &id_web1);
    let path_web2 = systemd_path(&top, &uid_web2, &id_web2);
    // CRI-O under the cgroupfs driver.
    let path_db = format!("/{top}/kubepods/besteffort/pod{uid_db}/crio-{id_db}");

    let web = |uid: &str, id: &str, rv: u64, tier: &str| {
        pod(
            "web-0",
            "shop",
            uid,
            rv,
            json!({"app": "web", "tier": tier, "pod-template-hash": "5f7c9d"}),
            json!([
                {"name": "nginx", "containerID": format!("containerd://{id}"), "ready": true},
                {"name": "sidecar", "containerID": format!("containerd://{id_sidecar}")},
                // Not started yet: no containerID.
                {"name": "late", "state": {"waiting": {"reason": "ContainerCreating"}}}
            ]),
        )
    };
    let list = json!({
        "kind": "PodList", "apiVersion": "v1",
        "metadata": {"resourceVersion": "1000"},
        "items": [web(&uid_web1, &id_web1, 990, "front")]
    });
    let api = FakeApi::start(Reply::Pods(list.to_string()));

    // Trees first (dropped last), then the workloads.
    let _top_tree = Tree::create(&v2, &top);
    let web1_tree = Tree::create(&v2, &path_web1);
    let web2_tree = Tree::create(&v2, &path_web2);
    let db_tree = Tree::create(&v2, &path_db);
    let mut a = Workload::spawn(mix());
    let mut b = Workload::spawn(mix());
    let mut c = Workload::spawn(mix());
    web1_tree.enter(a.pid);
    web2_tree.enter(b.pid);
    db_tree.enter(c.pid);

    let agent = Agent::start(&[
        "--interval",
        "1",
        "--slow-threshold",
        "off",
        "--k8s-api-url",
        &api.url(),
        "--k8s-node-name",
        NODE,
        "--k8s-label",
        "app,tier",
        "--k8s-label",
        "absent-label",
    ]);
    a.run();
    b.run();
    c.run();
    let node = ("k8s.node.name", NODE);
    let web1_cgroup = [
        node,
        ("container.id", id_web1.as_str()),
        ("container.runtime.name", "containerd"),
        ("k8s.pod.uid", uid_web1.as_str()),
    ];
    let web2_cgroup = [
        node,
        ("container.id", id_web2.as_str()),
        ("container.runtime.name", "containerd"),
        ("k8s.pod.uid", uid_web2.as_str()),
    ];
    let db_cgroup = [
        node,
        ("container.id", id_db.as_str()),
        ("container.runtime.name", "cri-o"),
        ("k8s.pod.uid", uid_db.as_str()),
    ];
    let web_meta = |tier: &'static str| {
        [
            ("k8s.pod.name", "web-0"),
            ("k8s.namespace.name", "shop"),
            ("k8s.container.name", "nginx"),
            ("k8s.pod.label.app", "web"),
            ("k8s.pod.label.tier", tier),
        ]
    };

    // From the list: web-0 (first UID) only; the other two pods are not
    // known yet and keep their cgroup identity.
    wait_for_identities(
        &agent,
        &[
            (
                a.pid,
                "web-0 (listed)",
                sorted(&[&web1_cgroup[..], &web_meta("front")].concat()),
            ),
            (
                b.pid,
                "web-0's next pod (not yet created)",
                sorted(&web2_cgroup),
            ),
            (c.pid, "db-0 (not yet added)", sorted(&db_cgroup)),
        ],
        Duration::from_secs(60),
    );

    // The watch: db-0 added (CRI-O id), web-0 relabelled, then deleted and
    // re-created with a new UID (a StatefulSet pod's replacement).
    let db = pod(
        "db-0",
        "data",
        &uid_db,
        1001,
        json!({"app": "db", "secret-ish": "no"}),
        json!([{"name": "postgres", "containerID": format!("cri-o://{id_db}")}]),
    );
    api.send("ADDED", &db);
    api.send("MODIFIED", &web(&uid_web1, &id_web1, 1002, "middle"));
    wait_for_identities(
        &agent,
        &[
            (
                a.pid,
                "web-0 (modified)",
                sorted(&[&web1_cgroup[..], &web_meta("middle")].concat()),
            ),
            (
                c.pid,
                "db-0 (added)",
                sorted(
                    &[
                        &db_cgroup[..],
                        &[
                            ("k8s.pod.name", "db-0"),
                            ("k8s.namespace.name", "data"),
                            ("k8s.container.name", "postgres"),
                            ("k8s.pod.label.app", "db"),
                        ],
                    ]
                    .concat(),
                ),
            ),
        ],
        Duration::from_secs(60),
    );
    api.send("DELETED", &web(&uid_web1, &id_web1, 1003, "middle"));
    api.send("ADDED", &web(&uid_web2, &id_web2, 1004, "back"));
    wait_for_identities(
        &agent,
        &[
            // The deleted pod is forgotten: its cgroup identity only.
            (a.pid, "web-0 (deleted)", sorted(&web1_cgroup)),
            (
                b.pid,
                "web-0 (re-created, new UID)",
                sorted(&[&web2_cgroup[..], &web_meta("back")].concat()),
            ),
        ],
        Duration::from_secs(60),
    );
    let _ = agent.stop_with(libc::SIGTERM);

    // Every request asked for this node's pods only; the watch resumed from
    // the list's resourceVersion.
    let requests = api.requests();
    assert!(
        requests.len() >= 2,
        "expected a list and a watch request, saw {requests:?}"
    );
    for r in &requests {
        assert_eq!(
            query(r, "fieldSelector").as_deref(),
            Some(format!("spec.nodeName={NODE}").as_str()),
            "request {r} should select this node's pods"
        );
        assert!(r.starts_with("/api/v1/pods?"), "request {r}");
    }
    assert_eq!(
        query(&requests[0], "watch"),
        None,
        "first a list: {requests:?}"
    );
    assert_eq!(
        query(&requests[1], "watch").as_deref(),
        Some("1"),
        "then a watch: {requests:?}"
    );
    assert_eq!(
        query(&requests[1], "resourceVersion").as_deref(),
        Some("1000"),
        "the watch resumes from the list's resourceVersion: {requests:?}"
    );
    drop((a, b, c));
    drop((db_tree, web2_tree, web1_tree));
}

#[test]
fn an_api_answering_403_gives_one_warning_and_cgroup_identity_flows() {
    require_root();
    let v2 = Layout::detect().v2.expect("a cgroup2 mount");
    let top = format!("hostscope-k8s403-{}", std::process::id());
    let (uid, id) = ids(5);
    let path = systemd_path(&top, &uid, &id);
    let api = FakeApi::start(Reply::Forbidden);
    let _top_tree = Tree::create(&v2, &top);
    let tree = Tree::create(&v2, &path);
    let mut w = Workload::spawn(mix());
    tree.enter(w.pid);
    let agent = Agent::start(&[
        "--interval",
        "1",
        "--slow-threshold",
        "off",
        "--k8s-api-url",
        &api.url(),
        "--k8s-node-name",
        NODE,
        "--k8s-label",
        "app",
    ]);
    w.run();
    // The agent keeps trying (backoff from 1 s): wait for three attempts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.requests().len() < 3 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let attempts = api.requests().len();
    assert!(
        attempts >= 3,
        "expected the agent to retry the refused list at least 3 times within 60 s, saw \
         {attempts} requests; log:\n{}",
        agent.stderr.text()
    );
    wait_for_identities(
        &agent,
        &[(
            w.pid,
            "pod cgroup without API access",
            sorted(&[
                ("k8s.node.name", NODE),
                ("container.id", id.as_str()),
                ("container.runtime.name", "containerd"),
                ("k8s.pod.uid", uid.as_str()),
            ]),
        )],
        Duration::from_secs(60),
    );
    let log = agent.stderr.snapshot();
    let _ = agent.stop_with(libc::SIGTERM);
    let warnings: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("Kubernetes"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "expected exactly one Kubernetes warning over {attempts}+ refused attempts, saw \
         {warnings:#?}"
    );
    assert!(
        warnings[0].contains("403") && warnings[0].contains("forbidden"),
        "the warning should say the API refused (403) and why: {}",
        warnings[0]
    );
    drop(w);
    drop(tree);
}

/// `--exclude-namespace`: once the API has said which pods are in the
/// namespace, their processes are no longer exported; other pods' are.
#[test]
fn an_excluded_namespace_is_not_exported() {
    require_root();
    let v2 = Layout::detect().v2.expect("a cgroup2 mount");
    let top = format!("hostscope-k8sns-{}", std::process::id());
    let (uid_web, id_web) = ids(6);
    let (uid_db, id_db) = ids(7);
    let list = json!({
        "kind": "PodList", "apiVersion": "v1",
        "metadata": {"resourceVersion": "2000"},
        "items": [
            pod("web-0", "shop", &uid_web, 1990, json!({}),
                json!([{"name": "nginx", "containerID": format!("containerd://{id_web}")}])),
            pod("db-0", "data", &uid_db, 1991, json!({}),
                json!([{"name": "postgres", "containerID": format!("containerd://{id_db}")}])),
        ]
    });
    let api = FakeApi::start(Reply::Pods(list.to_string()));
    let _top_tree = Tree::create(&v2, &top);
    let web_tree = Tree::create(&v2, &systemd_path(&top, &uid_web, &id_web));
    let db_tree = Tree::create(&v2, &systemd_path(&top, &uid_db, &id_db));
    let mut web = Workload::spawn(mix());
    let mut db = Workload::spawn(mix());
    web_tree.enter(web.pid);
    db_tree.enter(db.pid);
    let agent = Agent::start(&[
        "--interval",
        "1",
        "--slow-threshold",
        "off",
        "--k8s-api-url",
        &api.url(),
        "--k8s-node-name",
        NODE,
        "--exclude-namespace",
        "data",
    ]);
    web.run();
    // The list has been applied once web-0 carries its namespace.
    wait_for_identities(
        &agent,
        &[(
            web.pid,
            "web-0 in shop (listed)",
            sorted(&[
                ("k8s.node.name", NODE),
                ("container.id", id_web.as_str()),
                ("container.runtime.name", "containerd"),
                ("k8s.pod.uid", uid_web.as_str()),
                ("k8s.pod.name", "web-0"),
                ("k8s.namespace.name", "shop"),
                ("k8s.container.name", "nginx"),
            ]),
        )],
        Duration::from_secs(60),
    );
    db.run();
    thread::sleep(Duration::from_millis(2500));
    let lines = agent.stop_with(libc::SIGTERM);
    let db_seen = lines
        .iter()
        .filter(|l| otlp::process_metrics(l, db.pid).is_some())
        .count();
    let web_seen = lines
        .iter()
        .filter(|l| otlp::process_metrics(l, web.pid).is_some())
        .count();
    assert_eq!(
        db_seen, 0,
        "db-0 (namespace data, excluded) should not be exported once its pod is known"
    );
    assert!(
        web_seen > 0,
        "web-0 (namespace shop) should still be exported"
    );
    drop(web);
    drop(db);
    drop(web_tree);
    drop(db_tree);
}
