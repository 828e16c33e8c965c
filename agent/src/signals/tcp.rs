//! TCP retransmits and resets, per owning process and peer.
//!
//! Kernel side (`agent-ebpf/src/tcp.rs`): `tcp_retransmit_skb`,
//! `tcp_retransmit_synack`, `tcp_send_reset`, `tcp_receive_reset`, and for
//! attribution `inet_sock_set_state` and (Linux 6.10+) `tcp_sendmsg_locked`,
//! each as a BTF tracepoint, else a raw tracepoint. The few struct fields the
//! programs read are located in the running kernel's BTF at start-up.
//!
//! Metrics (on the owning process's resource; retransmits whose socket never
//! had an owner in view go on the host's resource):
//! - `hostscope.tcp.retransmits`: counter of segments (`{segment}`), the
//!   same unit as `RetransSegs` in `/proc/net/snmp`;
//! - `hostscope.tcp.retransmit.events`: counter of retransmitted skbs;
//! - `hostscope.tcp.resets`: counter, `hostscope.tcp.reset.direction`.
//!
//! with `network.peer.address`, `network.peer.port`, `network.type`,
//! `network.transport`, `hostscope.network.namespace`, and
//! `hostscope.tcp.retransmit.type`: `timeout` (the retransmission timer
//! fired: the connection is in loss recovery), `fast` (fast retransmit,
//! recovery and tail-loss probes, which the kernel's state at the
//! tracepoint does not tell apart), `syn`, `syn_ack`; per-connection granularity adds
//! `network.local.address` and `network.local.port`.
//!
//! Spans: one `tcp.retransmit` episode per connection per interval (first
//! and last retransmit, segments, types), from rate-limited kernel events.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use aya::{
    Btf, Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf},
};
use hostscope_common::tcp::{
    AF_INET, AF_INET6, TcpCounts, TcpEvent, TcpKey, TcpOffsets, drop_reason, kind,
};
use opentelemetry_proto::tonic::{
    common::v1::KeyValue,
    metrics::v1::Metric,
    trace::v1::{Span, span::SpanKind},
};
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tracing::{debug, info};

use crate::{
    btf::{BtfError, KernelBtf},
    config::{HookPreference, TcpConfig},
    ebpf::{AttachError, Attached, attach_tracepoint, take_map, unload},
    identity::{ProcessCache, ProcessInfo},
    otlp::{self, Window},
    signals::Collected,
};

/// Episode events kept between two exports; beyond it they are dropped and
/// counted.
const MAX_PENDING_EVENTS: usize = 16_384;

const DROP_REASONS: [&str; drop_reason::COUNT as usize] = [
    "tcp_stats_map_full",
    "tcp_events_rate_limited",
    "tcp_events_ringbuf_full",
];

#[derive(Debug, Error)]
pub enum TcpError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Map(#[from] crate::ebpf::TakeMapError),
    #[error("ring buffer: {0}")]
    RingBuf(#[source] std::io::Error),
}

/// Locates the fields the tcp programs read in the running kernel's BTF.
pub fn resolve_offsets(btf: &KernelBtf) -> Result<TcpOffsets, BtfError> {
    let sc = |f: &str| btf.offset_of("sock_common", f);
    let ca = btf.field("inet_connection_sock", "icsk_ca_state")?;
    let (ca_byte, ca_shift, ca_mask) = if ca.bit_size == 0 {
        (ca.bit_offset / 8, 0, 0xff)
    } else {
        (
            ca.bit_offset / 8,
            ca.bit_offset % 8,
            (1u32 << ca.bit_size.min(8)) - 1,
        )
    };
    Ok(TcpOffsets {
        skc_daddr: sc("skc_daddr")?,
        skc_rcv_saddr: sc("skc_rcv_saddr")?,
        skc_dport: sc("skc_dport")?,
        skc_num: sc("skc_num")?,
        skc_family: sc("skc_family")?,
        skc_state: sc("skc_state")?,
        skc_net: sc("skc_net")? + btf.offset_of("possible_net_t", "net")?,
        net_inum: btf.offset_of("net", "ns")? + btf.offset_of("ns_common", "inum")?,
        skc_v6_daddr: sc("skc_v6_daddr")?,
        skc_v6_rcv_saddr: sc("skc_v6_rcv_saddr")?,
        skb_gso_segs: btf.offset_of("sk_buff", "cb")?
            + btf.offset_of("tcp_skb_cb", "tcp_gso_segs")?,
        icsk_ca_state_byte: ca_byte,
        icsk_ca_state_shift: ca_shift,
        icsk_ca_state_mask: ca_mask,
        _pad: 0,
        valid: 1,
    })
}

/// The attached tcp signal.
pub struct Tcp {
    stats: PerCpuHashMap<MapData, TcpKey, TcpCounts>,
    drops: PerCpuArray<MapData, u64>,
    events: AsyncFd<RingBuf<MapData>>,
    pending: Vec<TcpEvent>,
    events_dropped_userspace: u64,
    /// What got attached, and how.
    pub programs: Vec<Attached>,
    capacity: u32,
    per_connection: bool,
    attached_unix_nano: u64,
}

/// (label, tracepoint, BTF program, raw program, required). A hook listed
/// twice is tried in order until one attaches.
const HOOKS: [(&str, &str, &str, &str, bool); 7] = [
    (
        "tcp/inet_sock_set_state",
        "inet_sock_set_state",
        "tcp_set_state_btf",
        "tcp_set_state_raw",
        true,
    ),
    (
        "tcp/tcp_sendmsg_locked",
        "tcp_sendmsg_locked",
        "tcp_sendmsg_btf",
        "tcp_sendmsg_raw",
        false,
    ),
    (
        "tcp/tcp_retransmit_skb",
        "tcp_retransmit_skb",
        "tcp_retransmit_skb_err_btf",
        "tcp_retransmit_skb_err_raw",
        false,
    ),
    (
        "tcp/tcp_retransmit_skb",
        "tcp_retransmit_skb",
        "tcp_retransmit_skb_btf",
        "tcp_retransmit_skb_raw",
        true,
    ),
    (
        "tcp/tcp_retransmit_synack",
        "tcp_retransmit_synack",
        "tcp_retransmit_synack_btf",
        "tcp_retransmit_synack_raw",
        false,
    ),
    (
        "tcp/tcp_send_reset",
        "tcp_send_reset",
        "tcp_send_reset_btf",
        "tcp_send_reset_raw",
        false,
    ),
    (
        "tcp/tcp_receive_reset",
        "tcp_receive_reset",
        "tcp_receive_reset_btf",
        "tcp_receive_reset_raw",
        false,
    ),
];

impl Tcp {
    /// Attaches the tcp programs (owner tracking first, so no retransmit is
    /// seen before its socket could have an owner) and takes the maps. The
    /// optional hooks are skipped with a log line when the kernel lacks them;
    /// if a required one fails, nothing stays attached.
    pub fn start(
        ebpf: &mut Ebpf,
        btf: Option<&Btf>,
        cfg: &TcpConfig,
        pref: HookPreference,
        now_unix_nano: u64,
    ) -> Result<Self, TcpError> {
        let mut programs: Vec<Attached> = Vec::new();
        for (i, (label, tp, btf_prog, raw_prog, required)) in HOOKS.into_iter().enumerate() {
            if programs.iter().any(|p| p.label == label) {
                continue; // an earlier variant attached
            }
            let has_variant = HOOKS[i + 1..].iter().any(|h| h.0 == label);
            match attach_tracepoint(ebpf, btf, pref, label, tp, btf_prog, raw_prog) {
                Ok(a) => programs.push(a),
                Err(e) if has_variant => {
                    debug!("tcp: {tp}: {e}; trying the next variant");
                }
                Err(e) if !required => {
                    info!("tcp: optional hook {tp} not attached: {e}");
                }
                Err(e) => {
                    for p in &programs {
                        unload(ebpf, &p.program);
                    }
                    return Err(e.into());
                }
            }
        }
        let ring: RingBuf<MapData> = take_map(ebpf, "TCP_EVENTS")?;
        Ok(Self {
            stats: take_map(ebpf, "TCP_STATS")?,
            drops: take_map(ebpf, "TCP_DROPS")?,
            // SAFETY: the RingBuf owns its map fd and is dropped with the AsyncFd.
            events: unsafe { AsyncFd::register(ring) }.map_err(|e| TcpError::RingBuf(e.into()))?,
            pending: Vec::new(),
            events_dropped_userspace: 0,
            programs,
            capacity: cfg.max_series,
            per_connection: cfg.per_connection,
            attached_unix_nano: now_unix_nano,
        })
    }

    /// Waits until episode events are ready, then queues them.
    pub async fn drain_events(&mut self) {
        let Ok(mut guard) = self.events.readable_mut().await else {
            return;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<TcpEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a TcpEvent (repr(C), Pod).
            let ev: TcpEvent =
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<TcpEvent>()) };
            if self.pending.len() >= MAX_PENDING_EVENTS {
                self.events_dropped_userspace += 1;
                continue;
            }
            self.pending.push(ev);
        }
        guard.clear_ready();
    }

    /// Drains the maps into `out`.
    pub fn collect(
        &mut self,
        now_unix_nano: u64,
        mono_to_unix: i128,
        cache: &mut ProcessCache,
        out: &mut Collected,
    ) {
        let mut by_pid: BTreeMap<u32, Vec<(TcpKey, TcpCounts)>> = BTreeMap::new();
        let mut series = 0u64;
        for item in self.stats.iter() {
            match item {
                Ok((key, values)) => {
                    series += 1;
                    let mut total = TcpCounts::default();
                    for v in values.iter() {
                        total.segments += v.segments;
                        total.events += v.events;
                    }
                    by_pid.entry(key.tgid).or_default().push((key, total));
                }
                Err(e) => debug!(error = %e, "TCP_STATS entry vanished during iteration"),
            }
        }
        let mut gone = Vec::new();
        for (pid, entries) in by_pid {
            let info = (pid != 0).then(|| identity(cache, pid));
            if let Some(i) = &info
                && !cache.is_alive(i)
            {
                // Exported once more below, then removed from the kernel map.
                gone.push(pid);
            }
            let w = Window {
                start_unix_nano: self
                    .attached_unix_nano
                    .max(info.as_ref().map_or(0, |i| i.creation_time_unix_nano)),
                time_unix_nano: now_unix_nano,
            };
            let metrics = self.metrics(&entries, w);
            match info {
                Some(info) => out.process(&info).metrics.extend(metrics),
                None => out.host.extend(metrics),
            }
        }
        self.episodes(mono_to_unix, cache, out);
        self.self_metrics(now_unix_nano, series, out);
        self.forget(&gone);
    }

    /// Removes the series of exited processes (after their last export), so
    /// they do not hold kernel map entries for ever.
    fn forget(&mut self, gone: &[u32]) {
        if gone.is_empty() {
            return;
        }
        let keys: Vec<TcpKey> = self
            .stats
            .keys()
            .filter_map(Result::ok)
            .filter(|k| gone.contains(&k.tgid))
            .collect();
        for k in keys {
            if let Err(e) = self.stats.remove(&k) {
                debug!(error = %e, pid = k.tgid, "could not remove an exited process from TCP_STATS");
            }
        }
    }

    fn metrics(&self, entries: &[(TcpKey, TcpCounts)], w: Window) -> Vec<Metric> {
        let (mut segs, mut events, mut resets) = (Vec::new(), Vec::new(), Vec::new());
        for (key, c) in entries {
            let mut attrs = self.conn_attrs(key);
            match key.kind {
                kind::RESET_SENT | kind::RESET_RECEIVED => {
                    let dir = if key.kind == kind::RESET_SENT {
                        "sent"
                    } else {
                        "received"
                    };
                    attrs.push(otlp::kv_str("hostscope.tcp.reset.direction", dir));
                    resets.push(otlp::int_point(attrs, w, c.events));
                }
                k => {
                    attrs.push(otlp::kv_str("hostscope.tcp.retransmit.type", kind_name(k)));
                    segs.push(otlp::int_point(attrs.clone(), w, c.segments));
                    events.push(otlp::int_point(attrs, w, c.events));
                }
            }
        }
        let mut out = Vec::new();
        if !segs.is_empty() {
            out.push(otlp::counter_metric(
                "hostscope.tcp.retransmits",
                "TCP segments retransmitted, by owning process, peer and cause (RetransSegs)",
                "{segment}",
                segs,
            ));
            out.push(otlp::counter_metric(
                "hostscope.tcp.retransmit.events",
                "TCP retransmissions (one may carry several segments)",
                "{event}",
                events,
            ));
        }
        if !resets.is_empty() {
            out.push(otlp::counter_metric(
                "hostscope.tcp.resets",
                "TCP resets sent or received, by owning process and peer",
                "{reset}",
                resets,
            ));
        }
        out
    }

    /// Peer (and, per connection, local) attributes of a key.
    fn conn_attrs(&self, key: &TcpKey) -> Vec<KeyValue> {
        let peer = address(key.family, &key.peer_addr);
        let mut attrs = vec![
            otlp::kv_str("network.peer.address", peer.to_string()),
            otlp::kv_int("network.peer.port", key.peer_port.into()),
            otlp::kv_str("network.transport", "tcp"),
            otlp::kv_str("network.type", if peer.is_ipv4() { "ipv4" } else { "ipv6" }),
            otlp::kv_int("hostscope.network.namespace", key.netns.into()),
        ];
        if self.per_connection {
            let local = address(key.family, &key.local_addr);
            attrs.push(otlp::kv_str("network.local.address", local.to_string()));
            attrs.push(otlp::kv_int("network.local.port", key.local_port.into()));
        }
        attrs
    }

    /// One span per connection with retransmits in this interval.
    fn episodes(&mut self, mono_to_unix: i128, cache: &mut ProcessCache, out: &mut Collected) {
        struct Episode {
            first: u64,
            last: u64,
            segments: u64,
            events: u64,
            kinds: u32,
            cgroup_id: u64,
            key: TcpKey,
        }
        let mut by_conn: StdHashMap<(u64, TcpKey), Episode> = StdHashMap::new();
        for ev in std::mem::take(&mut self.pending) {
            let mut k = ev.key;
            let kind_bit = 1u32 << k.kind.min(31);
            k.kind = 0;
            let e = by_conn.entry((ev.sock, k)).or_insert(Episode {
                first: ev.time_ns,
                last: ev.time_ns,
                segments: 0,
                events: 0,
                kinds: 0,
                cgroup_id: ev.cgroup_id,
                key: ev.key,
            });
            e.first = e.first.min(ev.time_ns);
            e.last = e.last.max(ev.time_ns);
            e.segments += u64::from(ev.segments);
            e.events += 1;
            e.kinds |= kind_bit;
        }
        let to_unix = |t: u64| (t as i128 + mono_to_unix).max(0) as u64;
        for e in by_conn.into_values() {
            let key = e.key;
            let peer = address(key.family, &key.peer_addr);
            let local = address(key.family, &key.local_addr);
            let types: Vec<&str> = (0..kind::RETRANSMIT_KINDS)
                .filter(|k| e.kinds & (1 << k) != 0)
                .map(kind_name)
                .collect();
            let attributes = vec![
                otlp::kv_str("network.peer.address", peer.to_string()),
                otlp::kv_int("network.peer.port", key.peer_port.into()),
                otlp::kv_str("network.local.address", local.to_string()),
                otlp::kv_int("network.local.port", key.local_port.into()),
                otlp::kv_str("network.transport", "tcp"),
                otlp::kv_str("network.type", if peer.is_ipv4() { "ipv4" } else { "ipv6" }),
                otlp::kv_int("hostscope.network.namespace", key.netns.into()),
                otlp::kv_int("hostscope.tcp.retransmit.segments", e.segments as i64),
                otlp::kv_int("hostscope.tcp.retransmit.events", e.events as i64),
                otlp::kv_str("hostscope.tcp.retransmit.types", types.join(",")),
                otlp::kv_int("hostscope.cgroup.id", e.cgroup_id as i64),
            ];
            let span = Span {
                trace_id: crate::signals::syscalls::random_bytes::<16>().to_vec(),
                span_id: crate::signals::syscalls::random_bytes::<8>().to_vec(),
                name: "tcp.retransmit".to_string(),
                kind: SpanKind::Internal as i32,
                start_time_unix_nano: to_unix(e.first),
                end_time_unix_nano: to_unix(e.last),
                attributes,
                ..Default::default()
            };
            if key.tgid == 0 {
                out.host_spans.push(span);
            } else {
                let info = identity(cache, key.tgid);
                out.process(&info).spans.push(span);
            }
        }
    }

    fn self_metrics(&self, now: u64, series: u64, out: &mut Collected) {
        let w = Window {
            start_unix_nano: self.attached_unix_nano,
            time_unix_nano: now,
        };
        let mut points = Vec::new();
        for (i, reason) in DROP_REASONS.iter().enumerate() {
            let n: u64 = self
                .drops
                .get(&(i as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            points.push(otlp::int_point(
                vec![otlp::kv_str("hostscope.drop.reason", *reason)],
                w,
                n,
            ));
        }
        points.push(otlp::int_point(
            vec![otlp::kv_str(
                "hostscope.drop.reason",
                "tcp_events_userspace_queue_full",
            )],
            w,
            self.events_dropped_userspace,
        ));
        out.agent.push(otlp::counter_metric(
            "hostscope.agent.dropped",
            "Measurements lost, by where they were lost",
            "{event}",
            points,
        ));
        let map = |value: u64| {
            vec![otlp::int_point(
                vec![otlp::kv_str("hostscope.map", "TCP_STATS")],
                w,
                value,
            )]
        };
        out.agent.push(otlp::gauge_metric(
            "hostscope.agent.map.entries",
            "Entries in a bounded kernel map",
            "{entry}",
            map(series),
        ));
        out.agent.push(otlp::gauge_metric(
            "hostscope.agent.map.capacity",
            "Maximum entries of a bounded kernel map",
            "{entry}",
            map(self.capacity.into()),
        ));
    }
}

fn identity(cache: &mut ProcessCache, pid: u32) -> Arc<ProcessInfo> {
    cache.get(pid).unwrap_or_else(|| {
        Arc::new(ProcessInfo {
            pid,
            executable_name: String::new(),
            start_ticks: None,
            creation_time_unix_nano: 0,
            container: None,
            parent_pid: None,
            executable_path: None,
            owner: None,
            command_line: None,
        })
    })
}

/// The retransmit cause as exported.
pub fn kind_name(k: u32) -> &'static str {
    match k {
        kind::TIMEOUT => "timeout",
        kind::FAST => "fast",
        kind::SYN => "syn",
        kind::SYN_ACK => "syn_ack",
        _ => "unknown",
    }
}

/// An address as the kernel stores it; IPv4-mapped IPv6 is shown as IPv4.
pub fn address(family: u16, bytes: &[u8; 16]) -> IpAddr {
    match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        AF_INET6 => {
            let v6 = Ipv6Addr::from(*bytes);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&[10, 200, 0, 2]);
        assert_eq!(address(AF_INET, &b).to_string(), "10.200.0.2");
        let v6: Ipv6Addr = "fd00:1::2".parse().unwrap();
        assert_eq!(address(AF_INET6, &v6.octets()).to_string(), "fd00:1::2");
        let mapped: Ipv6Addr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(address(AF_INET6, &mapped.octets()).to_string(), "10.1.2.3");
    }

    /// The offsets resolved on this machine's kernel agree with facts that
    /// have held for years (sock_common starts with the IPv4 addresses).
    #[test]
    fn offsets_resolve_on_this_kernel() {
        let Ok(btf) = KernelBtf::load() else {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux");
            return;
        };
        let o = resolve_offsets(&btf).expect("every field the tcp programs read");
        assert_eq!((o.skc_daddr, o.skc_rcv_saddr), (0, 4));
        assert_eq!(o.skc_family, 16);
        assert_eq!(o.icsk_ca_state_mask, 0x1f, "icsk_ca_state is 5 bits");
        assert_eq!(o.valid, 1);
    }
}
