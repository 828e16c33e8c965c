//! TCP retransmits attributed to the process that owns the connection,
//! proved against the kernel's own per-namespace `RetransSegs`
//! (`/proc/net/snmp`) in namespaces the test creates, with random loss from
//! nftables between them.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use hostscope_tests::{
    Agent,
    netns::{JsonLines, NetPair, Side, wait_success},
    require_root,
};
use serde_json::Value;

/// One `hostscope.tcp.retransmits` series: (pid or None for the host
/// resource, peer address, peer port, type).
type Series = (Option<u64>, String, u64, String);

fn attr<'a>(attrs: &'a Value, key: &str) -> Option<&'a Value> {
    attrs
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

fn attr_str(attrs: &Value, key: &str) -> Option<String> {
    attr(attrs, key).and_then(|v| v["stringValue"].as_str().map(str::to_string))
}

fn attr_int(attrs: &Value, key: &str) -> Option<u64> {
    attr(attrs, key).and_then(|v| v["intValue"].as_str()?.parse().ok())
}

/// Every series of `metric` in the agent's output, at its latest
/// (cumulative) value.
fn series(lines: &[Value], metric: &str, type_key: &str) -> BTreeMap<Series, u64> {
    let mut out = BTreeMap::new();
    for line in lines {
        for rm in line["resourceMetrics"].as_array().into_iter().flatten() {
            let pid = attr_int(&rm["resource"]["attributes"], "process.pid");
            for m in rm["scopeMetrics"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["metrics"].as_array().into_iter().flatten())
                .filter(|m| m["name"] == metric)
            {
                for p in m["sum"]["dataPoints"].as_array().into_iter().flatten() {
                    let a = &p["attributes"];
                    let key = (
                        pid,
                        attr_str(a, "network.peer.address").unwrap_or_default(),
                        attr_int(a, "network.peer.port").unwrap_or_default(),
                        attr_str(a, type_key).unwrap_or_default(),
                    );
                    let v: u64 = p["asInt"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let e = out.entry(key).or_insert(0);
                    *e = (*e).max(v);
                }
            }
        }
    }
    out
}

fn start_agent(extra: &[&str]) -> Agent {
    let agent =
        Agent::start(&[&["--interval", "1", "--slow-threshold", "off"][..], extra].concat());
    agent
        .stderr
        .wait_for("tcp signal attached", Duration::from_secs(30), "tcp signal");
    agent
}

/// The agent's retransmitted segments towards `peer`, split into those of
/// `pid` and those of anyone else (other pids, or no owner).
fn split(all: &BTreeMap<Series, u64>, pid: u64, peer: SocketAddr) -> (u64, u64, Vec<String>) {
    let (mut mine, mut others, mut seen) = (0, 0, Vec::new());
    for ((p, addr, port, kind), n) in all {
        if addr != &peer.ip().to_string() || *port != u64::from(peer.port()) {
            continue;
        }
        seen.push(format!("pid {p:?} {kind}: {n}"));
        if *p == Some(pid) {
            mine += n;
        } else {
            others += n;
        }
    }
    (mine, others, seen)
}

/// Within 1% (and at least one segment of slack for tiny counts).
fn assert_close(agent: u64, kernel: u64, what: &str) {
    let margin = (kernel / 100).max(1);
    assert!(
        agent.abs_diff(kernel) <= margin,
        "{what}: agent counted {agent} retransmitted segments, the kernel's RetransSegs rose by {kernel} (allowed ±{margin})"
    );
}

/// A client in A sends bulk data to a listener in B through a B-side rule
/// dropping one segment in 20: every retransmitted segment the kernel counts
/// in A's namespace is the client's, towards B's address and port.
/// With `per_connection`, the series also carry the client's local address
/// and port.
fn bulk_sender(v6: bool, per_connection: bool) {
    require_root();
    let pair = NetPair::new();
    let (a, b, port) = if v6 {
        (pair.a_v6(), pair.b_v6(), 5001u16)
    } else {
        (pair.a_v4(), pair.b_v4(), 5001u16)
    };
    pair.drop_random(Side::B, &format!("tcp dport {port}"), 20);
    let listen = SocketAddr::new(b, port);
    let agent = start_agent(if per_connection {
        &["--tcp-per-connection"]
    } else {
        &[]
    });

    let mut sink = pair.spawn(
        Side::B,
        &[
            "tcp-sink",
            "--listen",
            &listen.to_string(),
            "--timeout-ms",
            "20000",
        ],
    );
    let sink_out = JsonLines::new(&mut sink);
    sink_out.next(Duration::from_secs(10), "tcp-sink ready");
    let before = pair.snmp(Side::A)["RetransSegs"];
    let ext_before = pair.netstat(Side::A);
    let mut send = pair.spawn(
        Side::A,
        &[
            "tcp-send",
            "--connect",
            &listen.to_string(),
            "--bytes",
            "8000000",
            "--timeout-ms",
            "20000",
        ],
    );
    let pid = u64::from(send.id());
    let send_out = JsonLines::new(&mut send);
    let sent = send_out.next(Duration::from_secs(25), "tcp-send result");
    wait_success(&mut send, Duration::from_secs(5), "tcp-send");
    sink_out.next(Duration::from_secs(5), "tcp-sink result");
    wait_success(&mut sink, Duration::from_secs(5), "tcp-sink");
    let kernel = pair.snmp(Side::A)["RetransSegs"] - before;
    let ext_after = pair.netstat(Side::A);
    let ext = |k: &str| ext_after[k] - ext_before[k];
    assert_eq!(sent["sent"].as_u64(), Some(8_000_000), "{sent}");
    assert!(kernel > 0, "the loss rule should have caused retransmits");

    // Let one interval pass so the last retransmits are in a flushed line.
    std::thread::sleep(Duration::from_millis(1200));
    let lines = agent.stop_with(libc::SIGTERM);
    let all = series(
        &lines,
        "hostscope.tcp.retransmits",
        "hostscope.tcp.retransmit.type",
    );
    let (mine, others, seen) = split(&all, pid, listen);
    eprintln!("kernel RetransSegs +{kernel}; agent: {seen:?}");
    assert_eq!(
        others, 0,
        "no retransmit towards {listen} may be attributed to another process or to no owner: {seen:?}"
    );
    assert_close(mine, kernel, &format!("client pid {pid} -> {listen}"));

    // The causes, against the kernel's own split. Outside loss recovery by
    // timeout, retransmits are TCPFastRetrans (segments) or tail-loss
    // probes (among TCPLossProbes, which also counts probes of new data);
    // the agent reports both as `fast`.
    let of = |kind: &str| -> u64 {
        all.iter()
            .filter(|((p, a, pt, k), _)| {
                *p == Some(pid)
                    && a == &listen.ip().to_string()
                    && *pt == u64::from(listen.port())
                    && k == kind
            })
            .map(|(_, n)| n)
            .sum()
    };
    let (fast, probes) = (ext("TCPFastRetrans"), ext("TCPLossProbes"));
    eprintln!(
        "TCPFastRetrans +{fast}, TCPLossProbes +{probes}, TCPSlowStartRetrans +{}, TCPTimeouts +{}, TCPSynRetrans +{}",
        ext("TCPSlowStartRetrans"),
        ext("TCPTimeouts"),
        ext("TCPSynRetrans")
    );
    assert!(
        of("fast") + (fast / 100).max(1) >= fast
            && of("fast") <= fast + probes + (fast / 100).max(1),
        "fast retransmits: agent {seen:?}; kernel TCPFastRetrans +{fast}, TCPLossProbes +{probes}"
    );
    assert_eq!(
        of("syn"),
        ext("TCPSynRetrans"),
        "SYN retransmits: agent {seen:?}"
    );

    // Per-connection granularity names the client's end too; by default
    // the local port is left out so ephemeral ports do not multiply series.
    let local = SocketAddr::new(a, sent["local_port"].as_u64().unwrap() as u16);
    let locals = local_ends(&lines, pid);
    if per_connection {
        assert_eq!(
            locals,
            vec![local.to_string()],
            "per-connection series carry the client's address and port"
        );
    } else {
        assert!(locals.is_empty(), "no local address by default: {locals:?}");
    }

    // Episodes: one span per connection per interval, whose segments add
    // up to the counter (nothing was rate-limited at this rate).
    let spans = spans(&lines, pid);
    assert!(!spans.is_empty(), "retransmit episodes as spans");
    let in_spans: u64 = spans.iter().map(|s| s.segments).sum();
    assert_eq!(
        in_spans,
        mine,
        "episode segments add up to the counter; rate-limited: {}",
        dropped(&lines, "tcp_events_rate_limited")
    );
    for s in &spans {
        assert!(s.start <= s.end, "episode start after its end: {s:?}");
        assert_eq!(s.peer, listen.to_string());
        assert_eq!(s.local, local.to_string());
    }
}

/// `(peer, local)` of the `network.local.*` attributes of `pid`'s
/// retransmit series.
fn local_ends(lines: &[Value], pid: u64) -> Vec<String> {
    let mut out = Vec::new();
    for (res, m) in metrics_named(lines, "hostscope.tcp.retransmits") {
        if attr_int(res, "process.pid") != Some(pid) {
            continue;
        }
        for p in m["sum"]["dataPoints"].as_array().into_iter().flatten() {
            let a = &p["attributes"];
            if let (Some(addr), Some(port)) = (
                attr_str(a, "network.local.address"),
                attr_int(a, "network.local.port"),
            ) {
                let end = SocketAddr::new(addr.parse().unwrap(), port as u16).to_string();
                if !out.contains(&end) {
                    out.push(end);
                }
            }
        }
    }
    out
}

/// (resource attributes, metric) of every metric called `name`.
fn metrics_named<'a>(lines: &'a [Value], name: &str) -> Vec<(&'a Value, &'a Value)> {
    let mut out = Vec::new();
    for line in lines {
        for rm in line["resourceMetrics"].as_array().into_iter().flatten() {
            for m in rm["scopeMetrics"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["metrics"].as_array().into_iter().flatten())
                .filter(|m| m["name"] == name)
            {
                out.push((&rm["resource"]["attributes"], m));
            }
        }
    }
    out
}

/// The agent's `hostscope.agent.dropped` for `reason`, latest value.
fn dropped(lines: &[Value], reason: &str) -> u64 {
    let mut n = 0;
    for (_, m) in metrics_named(lines, "hostscope.agent.dropped") {
        for p in m["sum"]["dataPoints"].as_array().into_iter().flatten() {
            if attr_str(&p["attributes"], "hostscope.drop.reason").as_deref() == Some(reason) {
                n = n.max(
                    p["asInt"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                );
            }
        }
    }
    n
}

#[derive(Debug)]
struct Episode {
    start: u64,
    end: u64,
    segments: u64,
    peer: String,
    local: String,
}

/// `tcp.retransmit` spans on `pid`'s resource.
fn spans(lines: &[Value], pid: u64) -> Vec<Episode> {
    let mut out = Vec::new();
    for line in lines {
        for rs in line["resourceSpans"].as_array().into_iter().flatten() {
            if attr_int(&rs["resource"]["attributes"], "process.pid") != Some(pid) {
                continue;
            }
            for sp in rs["scopeSpans"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["spans"].as_array().into_iter().flatten())
                .filter(|sp| sp["name"] == "tcp.retransmit")
            {
                let a = &sp["attributes"];
                let end = |k: &str, p: &str| {
                    let addr: std::net::IpAddr =
                        attr_str(a, k).unwrap_or_default().parse().unwrap();
                    SocketAddr::new(addr, attr_int(a, p).unwrap_or(0) as u16).to_string()
                };
                let num = |k: &str| sp[k].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
                out.push(Episode {
                    start: num("startTimeUnixNano"),
                    end: num("endTimeUnixNano"),
                    segments: attr_int(a, "hostscope.tcp.retransmit.segments").unwrap_or(0),
                    peer: end("network.peer.address", "network.peer.port"),
                    local: end("network.local.address", "network.local.port"),
                });
            }
        }
    }
    out
}

/// A connection refused by B: the client receives a reset, counted on the
/// client's process towards B's port, matching B's OutRsts and A's
/// AttemptFails; B's reset has no socket and no owner, so it is not counted.
/// Connects from side A to `target`, where nothing listens; returns the
/// client's pid once it has seen the refusal and exited.
fn refused_connect(pair: &NetPair, target: SocketAddr) -> u64 {
    let mut client = pair.spawn(
        Side::A,
        &[
            "tcp-connect",
            "--connect",
            &target.to_string(),
            "--timeout-ms",
            "3000",
        ],
    );
    let pid = u64::from(client.id());
    let res = JsonLines::new(&mut client).next(Duration::from_secs(10), "tcp-connect result");
    wait_success(&mut client, Duration::from_secs(5), "tcp-connect");
    assert_eq!(
        res["connected"], false,
        "nothing listens on {target}: {res}"
    );
    pid
}

#[test]
fn refused_connection_reset_is_received_by_the_client() {
    require_root();
    let pair = NetPair::new();
    let target = SocketAddr::new(pair.b_v4(), 5009);
    let agent = start_agent(&[]);
    let (rsts, fails) = (
        pair.snmp(Side::B)["OutRsts"],
        pair.snmp(Side::A)["AttemptFails"],
    );
    let pid = refused_connect(&pair, target);
    let sent_by_b = pair.snmp(Side::B)["OutRsts"] - rsts;
    let failed_in_a = pair.snmp(Side::A)["AttemptFails"] - fails;
    assert_eq!(
        (sent_by_b, failed_in_a),
        (1, 1),
        "one reset, one refused attempt"
    );

    std::thread::sleep(Duration::from_millis(1200));
    let lines = agent.stop_with(libc::SIGTERM);
    let resets = series(
        &lines,
        "hostscope.tcp.resets",
        "hostscope.tcp.reset.direction",
    );
    let (mine, others, seen) = split(&resets, pid, target);
    assert_eq!(
        (mine, others),
        (1, 0),
        "one reset received by pid {pid} from {target}: {seen:?}"
    );
    assert!(
        resets
            .keys()
            .any(|(p, _, _, d)| *p == Some(pid) && d == "received"),
        "direction received: {seen:?}"
    );
}

#[test]
fn ipv4_bulk_sender_matches_retranssegs() {
    bulk_sender(false, false);
}

#[test]
fn ipv6_bulk_sender_per_connection_matches_retranssegs() {
    bulk_sender(true, true);
}

/// A server in B accepts a connection and sends bulk data back through an
/// A-side rule dropping one in 20 of its segments: B's RetransSegs are the
/// server's, towards the client's address and port.
#[test]
fn accepting_server_retransmits_are_its_own() {
    require_root();
    let pair = NetPair::new();
    let (a, b, port) = (pair.a_v4(), pair.b_v4(), 5003u16);
    pair.drop_random(Side::A, &format!("tcp sport {port}"), 20);
    let listen = SocketAddr::new(b, port);
    let agent = start_agent(&[]);

    let mut sink = pair.spawn(
        Side::B,
        &[
            "tcp-sink",
            "--listen",
            &listen.to_string(),
            "--send",
            "8000000",
            "--timeout-ms",
            "20000",
        ],
    );
    let server_pid = u64::from(sink.id());
    let sink_out = JsonLines::new(&mut sink);
    sink_out.next(Duration::from_secs(10), "tcp-sink ready");
    let before = pair.snmp(Side::B)["RetransSegs"];
    let mut client = pair.spawn(
        Side::A,
        &[
            "tcp-send",
            "--connect",
            &listen.to_string(),
            "--bytes",
            "0",
            "--recv",
            "--timeout-ms",
            "20000",
        ],
    );
    let client_out = JsonLines::new(&mut client);
    let got = client_out.next(Duration::from_secs(25), "client result");
    wait_success(&mut client, Duration::from_secs(5), "client");
    sink_out.next(Duration::from_secs(5), "tcp-sink result");
    wait_success(&mut sink, Duration::from_secs(5), "tcp-sink");
    let kernel = pair.snmp(Side::B)["RetransSegs"] - before;
    assert_eq!(got["received"].as_u64(), Some(8_000_000), "{got}");
    assert!(kernel > 0, "the loss rule should have caused retransmits");
    let client_port = got["local_port"].as_u64().expect("client local_port") as u16;

    std::thread::sleep(Duration::from_millis(1200));
    let lines = agent.stop_with(libc::SIGTERM);
    let all = series(
        &lines,
        "hostscope.tcp.retransmits",
        "hostscope.tcp.retransmit.type",
    );
    let peer = SocketAddr::new(a, client_port);
    let (mine, others, seen) = split(&all, server_pid, peer);
    eprintln!("kernel RetransSegs in B +{kernel}; agent: {seen:?}");
    assert_eq!(others, 0, "all of them the server's: {seen:?}");
    assert_close(mine, kernel, &format!("server pid {server_pid} -> {peer}"));
}

/// A peer that drops every SYN: the connecting process's SYN retransmits,
/// typed `syn`, equal the kernel's RetransSegs and TCPSynRetrans.
#[test]
fn syn_retransmits_belong_to_the_connecting_process() {
    require_root();
    let pair = NetPair::new();
    let (b, port) = (pair.b_v4(), 5002u16);
    pair.drop_all(Side::B, &format!("tcp dport {port}"));
    let target = SocketAddr::new(b, port);
    let agent = start_agent(&[]);
    let before = (
        pair.snmp(Side::A)["RetransSegs"],
        pair.netstat(Side::A)["TCPSynRetrans"],
    );
    // SYN retransmits come 1 s, then 2 s later: 3.5 s sees two of them.
    let mut client = pair.spawn(
        Side::A,
        &[
            "tcp-connect",
            "--connect",
            &target.to_string(),
            "--timeout-ms",
            "3500",
        ],
    );
    let pid = u64::from(client.id());
    let out = JsonLines::new(&mut client);
    let res = out.next(Duration::from_secs(10), "tcp-connect result");
    wait_success(&mut client, Duration::from_secs(5), "tcp-connect");
    assert_eq!(res["connected"], false, "every SYN is dropped: {res}");
    let kernel = pair.snmp(Side::A)["RetransSegs"] - before.0;
    let syn = pair.netstat(Side::A)["TCPSynRetrans"] - before.1;
    assert!(kernel >= 1, "a 3.5 s connect should retransmit its SYN");
    assert_eq!(kernel, syn, "all of A's retransmits are SYNs");

    std::thread::sleep(Duration::from_millis(1200));
    let lines = agent.stop_with(libc::SIGTERM);
    let all = series(
        &lines,
        "hostscope.tcp.retransmits",
        "hostscope.tcp.retransmit.type",
    );
    let (mine, others, seen) = split(&all, pid, target);
    eprintln!("kernel RetransSegs +{kernel}, TCPSynRetrans +{syn}; agent: {seen:?}");
    assert_eq!(others, 0, "{seen:?}");
    assert_eq!(mine, kernel, "exact SYN retransmits of pid {pid}: {seen:?}");
    let typed: u64 = all
        .iter()
        .filter(|((p, a, pt, k), _)| {
            *p == Some(pid) && a == &b.to_string() && *pt == u64::from(port) && k == "syn"
        })
        .map(|(_, n)| n)
        .sum();
    assert_eq!(typed, kernel, "typed syn: {seen:?}");
}

/// The cgroup filter reaches the tcp signal through the socket's owner:
/// with this test's own cgroup excluded, the refused connection's reset is
/// not counted; with it included (the positive control), it is, once.
#[test]
fn the_cgroup_filter_applies_to_tcp_events_by_their_owner() {
    require_root();
    let own = hostscope_tests::cgroup::v2_path(std::process::id());
    for (flag, want) in [("--exclude-cgroup", 0), ("--include-cgroup", 1)] {
        let pair = NetPair::new();
        let target = SocketAddr::new(pair.b_v4(), 5010);
        let agent = start_agent(&[flag, &own]);
        let pid = refused_connect(&pair, target);
        std::thread::sleep(Duration::from_millis(1200));
        let lines = agent.stop_with(libc::SIGTERM);
        let resets = series(
            &lines,
            "hostscope.tcp.resets",
            "hostscope.tcp.reset.direction",
        );
        let (mine, _, seen) = split(&resets, pid, target);
        assert_eq!(
            mine, want,
            "{flag} {own}: resets received by pid {pid} from {target}: {seen:?}"
        );
    }
}
