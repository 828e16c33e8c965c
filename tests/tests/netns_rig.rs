//! The rig for the TCP retransmit tests checks itself: two namespaces, a
//! veth, random loss from nftables, and the kernel's per-namespace
//! `RetransSegs` rising on the sending side; and nothing left afterwards.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::{Duration, Instant},
};

use hostscope_tests::{
    netns::{JsonLines, NetPair, Side, wait_success},
    require_root,
};

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(out.status.success(), "ip netns list: {}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends `bytes` from A to B's `port` through a B-side rule dropping one in
/// 20 segments to that port; checks every byte arrived and A retransmitted.
fn lossy_transfer(v6: bool, port: u16, bytes: u64) {
    require_root();
    let t0 = Instant::now();
    let pair = NetPair::new();
    let names = [
        pair.name(Side::A).to_string(),
        pair.name(Side::B).to_string(),
    ];
    assert_ne!(pair.netns_inode(Side::A), pair.netns_inode(Side::B));
    let (a, b): (IpAddr, IpAddr) = if v6 {
        (pair.a_v6(), pair.b_v6())
    } else {
        (pair.a_v4(), pair.b_v4())
    };
    pair.drop_random(Side::B, &format!("tcp dport {port}"), 20);

    let listen = SocketAddr::new(b, port).to_string();
    let mut sink = pair.spawn(
        Side::B,
        &["tcp-sink", "--listen", &listen, "--timeout-ms", "15000"],
    );
    let sink_out = JsonLines::new(&mut sink);
    let ready = sink_out.next(Duration::from_secs(10), "tcp-sink ready");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["pid"].as_u64(), Some(sink.id() as u64), "{ready}");

    let before = (pair.snmp(Side::A), pair.netstat(Side::A));
    let t = Instant::now();
    let mut send = pair.spawn(
        Side::A,
        &[
            "tcp-send",
            "--connect",
            &listen,
            "--bytes",
            &bytes.to_string(),
            "--timeout-ms",
            "15000",
        ],
    );
    let send_out = JsonLines::new(&mut send);
    let sent = send_out.next(Duration::from_secs(20), "tcp-send result");
    let took = t.elapsed();
    wait_success(&mut send, Duration::from_secs(5), "tcp-send");
    let received = sink_out.next(Duration::from_secs(5), "tcp-sink result");
    wait_success(&mut sink, Duration::from_secs(5), "tcp-sink");
    let after = (pair.snmp(Side::A), pair.netstat(Side::A));

    assert_eq!(sent["sent"].as_u64(), Some(bytes), "{sent}");
    assert_eq!(received["received"].as_u64(), Some(bytes), "{received}");
    assert_eq!(
        received["peer"].as_str().unwrap(),
        SocketAddr::new(a, sent["local_port"].as_u64().unwrap() as u16).to_string(),
        "the sink's peer is the sender's socket"
    );
    let delta = |m: &(std::collections::HashMap<String, u64>, _), k: &str| -> u64 { m.0[k] };
    let retrans = delta(&after, "RetransSegs") - delta(&before, "RetransSegs");
    let out_segs = delta(&after, "OutSegs") - delta(&before, "OutSegs");
    let ext =
        |k: &str| after.1.get(k).copied().unwrap_or(0) - before.1.get(k).copied().unwrap_or(0);
    println!(
        "{} {bytes} bytes in {took:?}: RetransSegs +{retrans} of OutSegs +{out_segs}; \
         TCPSynRetrans +{}, TCPTimeouts +{}, TCPLossProbes +{}, TCPFastRetrans +{}, TCPSackRecovery +{}",
        if v6 { "IPv6" } else { "IPv4" },
        ext("TCPSynRetrans"),
        ext("TCPTimeouts"),
        ext("TCPLossProbes"),
        ext("TCPFastRetrans"),
        ext("TCPSackRecovery"),
    );
    assert!(retrans > 0, "A should have retransmitted under 5% loss");
    // B's segments are never dropped, but A's ACK of B's FIN may be, and
    // then B retransmits its FIN: B's count is small, not always zero.
    println!("B RetransSegs {}", pair.snmp(Side::B)["RetransSegs"]);

    drop(pair);
    let list = netns_list();
    for name in &names {
        assert!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "namespace {name} still listed after drop:\n{list}"
        );
    }
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
