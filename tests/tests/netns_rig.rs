//! The rig for the TCP retransmit tests checks itself: two namespaces, a
//! veth, loss from nftables, the kernel's per-namespace counters rising on
//! the sending side, the workload's TCP subcommands, and nothing left
//! afterwards.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use hostscope_tests::{
    netns::{JsonLines, NetPair, Side, wait_success},
    require_root,
};
use serde_json::Value;

fn assert_gone(names: &[String]) {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(out.status.success(), "ip netns list: {}", out.status);
    let list = String::from_utf8_lossy(&out.stdout);
    for name in names {
        assert!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "namespace {name} still listed after drop:\n{list}"
        );
        assert!(
            !std::path::Path::new("/run/netns").join(name).exists(),
            "/run/netns/{name} still exists after drop"
        );
    }
}

fn names(pair: &NetPair) -> Vec<String> {
    vec![
        pair.name(Side::A).to_string(),
        pair.name(Side::B).to_string(),
    ]
}

/// Counters of one namespace: `Tcp:` of /proc/net/snmp, `TcpExt:` of
/// /proc/net/netstat.
struct Counters(HashMap<String, u64>, HashMap<String, u64>);

impl Counters {
    fn read(pair: &NetPair, side: Side) -> Counters {
        Counters(pair.snmp(side), pair.netstat(side))
    }

    fn since(&self, before: &Counters) -> String {
        let d = |a: &HashMap<String, u64>, b: &HashMap<String, u64>, k: &str| {
            a.get(k).copied().unwrap_or(0) - b.get(k).copied().unwrap_or(0)
        };
        let mut s = format!(
            "RetransSegs +{} of OutSegs +{}",
            d(&self.0, &before.0, "RetransSegs"),
            d(&self.0, &before.0, "OutSegs")
        );
        for k in [
            "TCPSynRetrans",
            "TCPTimeouts",
            "TCPLossProbes",
            "TCPFastRetrans",
            "TCPSackRecovery",
            "TCPSpuriousRtxHostQueues",
        ] {
            s += &format!(", {k} +{}", d(&self.1, &before.1, k));
        }
        s
    }

    fn retrans_since(&self, before: &Counters) -> u64 {
        self.0["RetransSegs"] - before.0["RetransSegs"]
    }
}

/// Starts `tcp-sink` in B on `addr` with `extra` arguments; returns it with
/// its output once it is listening.
fn start_sink(pair: &NetPair, addr: &str, extra: &[&str]) -> (std::process::Child, JsonLines) {
    let mut args = vec!["tcp-sink", "--listen", addr, "--timeout-ms", "15000"];
    args.extend_from_slice(extra);
    let mut sink = pair.spawn(Side::B, &args);
    let out = JsonLines::new(&mut sink);
    let ready = out.next(Duration::from_secs(10), "tcp-sink ready");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["pid"].as_u64(), Some(sink.id() as u64), "{ready}");
    (sink, out)
}

/// Runs `tcp-send` in A to completion; returns its result line.
fn run_send(pair: &NetPair, args: &[&str]) -> Value {
    let mut args = [&["tcp-send"][..], args].concat();
    args.extend_from_slice(&["--timeout-ms", "15000"]);
    let mut send = pair.spawn(Side::A, &args);
    let out = JsonLines::new(&mut send);
    let v = out.next(Duration::from_secs(20), "tcp-send result");
    wait_success(&mut send, Duration::from_secs(5), "tcp-send");
    assert_eq!(v["pid"].as_u64(), Some(send.id() as u64), "{v}");
    v
}

/// Sends `bytes` from A to B's `port` through a B-side rule dropping one in
/// 20 packets to that port; checks every byte arrived and A retransmitted.
fn lossy_transfer(v6: bool, port: u16, bytes: u64) {
    require_root();
    let t0 = Instant::now();
    let pair = NetPair::new();
    let names = names(&pair);
    assert_ne!(pair.netns_inode(Side::A), pair.netns_inode(Side::B));
    let (a, b): (IpAddr, IpAddr) = if v6 {
        (pair.a_v6(), pair.b_v6())
    } else {
        (pair.a_v4(), pair.b_v4())
    };
    pair.drop_random(Side::B, &format!("tcp dport {port}"), 20);
    let setup = t0.elapsed();

    let listen = SocketAddr::new(b, port).to_string();
    let (mut sink, sink_out) = start_sink(&pair, &listen, &[]);
    let before = Counters::read(&pair, Side::A);
    let t = Instant::now();
    let sent = run_send(
        &pair,
        &["--connect", &listen, "--bytes", &bytes.to_string()],
    );
    let took = t.elapsed();
    let received = sink_out.next(Duration::from_secs(5), "tcp-sink result");
    wait_success(&mut sink, Duration::from_secs(5), "tcp-sink");
    let after = Counters::read(&pair, Side::A);

    assert_eq!(sent["sent"].as_u64(), Some(bytes), "{sent}");
    assert_eq!(received["received"].as_u64(), Some(bytes), "{received}");
    assert_eq!(
        received["peer"].as_str().unwrap(),
        SocketAddr::new(a, sent["local_port"].as_u64().unwrap() as u16).to_string(),
        "the sink's peer is the sender's socket"
    );
    println!(
        "{} {bytes} bytes A->B in {took:?} (pair set up in {setup:?}): {} dropped by nft; A: {}; \
         B RetransSegs {}",
        if v6 { "IPv6" } else { "IPv4" },
        pair.drops(Side::B),
        after.since(&before),
        pair.snmp(Side::B)["RetransSegs"],
    );
    assert!(
        after.retrans_since(&before) > 0,
        "A should have retransmitted under 5% loss"
    );

    drop(pair);
    assert_gone(&names);
    println!("total {:?}", t0.elapsed());
}

#[test]
fn lossy_ipv4_transfer_retransmits_and_cleans_up() {
    lossy_transfer(false, 5001, 20_000_000);
}

#[test]
fn lossy_ipv6_transfer_retransmits_and_cleans_up() {
    lossy_transfer(true, 5001, 5_000_000);
}

/// B (the server) sends 5 MB to A with one MSS per skb; A drops one in 20
/// packets from the server's port: B retransmits, A receives everything.
#[test]
fn lossy_server_bulk_one_segment_per_skb() {
    require_root();
    let t0 = Instant::now();
    let pair = NetPair::new();
    let names = names(&pair);
    pair.one_segment_per_skb();
    pair.drop_random(Side::A, "tcp sport 5003", 20);
    let bytes = 5_000_000u64;
    let listen = SocketAddr::new(pair.b_v4(), 5003).to_string();
    let (mut sink, sink_out) = start_sink(&pair, &listen, &["--send", &bytes.to_string()]);
    let before = Counters::read(&pair, Side::B);
    let t = Instant::now();
    let client = run_send(&pair, &["--connect", &listen, "--bytes", "0", "--recv"]);
    let took = t.elapsed();
    let server = sink_out.next(Duration::from_secs(5), "tcp-sink result");
    wait_success(&mut sink, Duration::from_secs(5), "tcp-sink");
    let after = Counters::read(&pair, Side::B);
    assert_eq!(client["received"].as_u64(), Some(bytes), "{client}");
    assert_eq!(client["sent"].as_u64(), Some(0), "{client}");
    assert_eq!(server["sent"].as_u64(), Some(bytes), "{server}");
    assert_eq!(server["received"].as_u64(), Some(0), "{server}");
    println!(
        "IPv4 {bytes} bytes B->A, one segment per skb, in {took:?}: {} dropped by nft; B: {}",
        pair.drops(Side::A),
        after.since(&before)
    );
    assert!(
        after.retrans_since(&before) > 0,
        "B should have retransmitted"
    );
    drop(pair);
    assert_gone(&names);
    println!("total {:?}", t0.elapsed());
}

/// Every SYN to B's port is dropped: A's connect times out after
/// retransmitting its SYN (at 1 s), which both counters show.
#[test]
fn dropped_syns_time_out_with_syn_retransmits() {
    require_root();
    let t0 = Instant::now();
    let pair = NetPair::new();
    let names = names(&pair);
    pair.drop_all(Side::B, "tcp dport 5002 tcp flags syn");
    let before = Counters::read(&pair, Side::A);
    let to = SocketAddr::new(pair.b_v6(), 5002).to_string();
    let mut c = pair.spawn(
        Side::A,
        &["tcp-connect", "--connect", &to, "--timeout-ms", "1500"],
    );
    let out = JsonLines::new(&mut c);
    let v = out.next(Duration::from_secs(10), "tcp-connect result");
    wait_success(&mut c, Duration::from_secs(5), "tcp-connect");
    let after = Counters::read(&pair, Side::A);
    println!(
        "connect to {to} with every SYN dropped: {v}; {} dropped by nft; A: {}",
        pair.drops(Side::B),
        after.since(&before)
    );
    assert_eq!(v["connected"], false, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("timed out"),
        "expected a timeout: {v}"
    );
    let elapsed = v["elapsed_ms"].as_u64().unwrap();
    assert!((1400..3000).contains(&elapsed), "{v}");
    assert_eq!(pair.drops(Side::B), 2, "the SYN and its retransmit at 1 s");
    assert_eq!(after.retrans_since(&before), 1, "one SYN retransmit");
    assert_eq!(after.1["TCPSynRetrans"] - before.1["TCPSynRetrans"], 1);
    drop(pair);
    assert_gone(&names);
    println!("total {:?}", t0.elapsed());
}

/// A test that panics with a workload still running in its namespaces
/// leaves neither behind.
#[test]
fn panicking_test_leaves_nothing_behind() {
    require_root();
    let seen = std::sync::Mutex::new((Vec::new(), 0u32));
    let r = std::panic::catch_unwind(|| {
        let pair = NetPair::new();
        let listen = SocketAddr::new(pair.b_v4(), 5004).to_string();
        let (sink, _out) = start_sink(&pair, &listen, &[]);
        *seen.lock().unwrap() = (names(&pair), sink.id());
        panic!("deliberate panic, to check NetPair cleanup (expected)");
    });
    assert!(r.is_err());
    let (names, pid) = seen.into_inner().unwrap();
    assert_gone(&names);
    // Killed by the drop (a zombie until reaped, as its Child was dropped).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty()
            || stat
                .rsplit(')')
                .next()
                .unwrap()
                .trim_start()
                .starts_with('Z'),
        "workload {pid} still running: {stat}"
    );
}
