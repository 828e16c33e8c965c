//! TCP retransmits and resets per (owner process, peer), see
//! `hostscope_common::tcp` for the attribution scheme.
//!
//! Hooks, each as a BTF tracepoint or else a raw tracepoint (same arguments):
//! - `tcp_retransmit_skb(sk, skb, ...)`, `tcp_retransmit_synack(sk, req)`:
//!   count segments and events per key, and send an episode event.
//! - `inet_sock_set_state(sk, old, new)`: record the owner on connect
//!   (`SYN_SENT`) and listen (`LISTEN`), in the owner's context; give an
//!   accepted connection its listener's owner; forget the socket on `CLOSE`.
//! - `tcp_sendmsg_locked(sk, ...)` (Linux 6.10+, optional): the sending
//!   process becomes the owner.
//! - `tcp_send_reset(sk, ...)`, `tcp_receive_reset(sk)`: resets.
//!
//! Struct fields are read with `bpf_probe_read_kernel` at offsets userspace
//! resolved from the running kernel's BTF (`TCP_OFFSETS`).

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use hostscope_common::{
    syscalls::RateWindow,
    tcp::{
        AF_INET, AF_INET6, ListenKey, TCP_CA_LOSS, TcpCounts, TcpEvent, TcpKey, TcpOffsets,
        TcpOwner, drop_reason, kind, state,
    },
};

use crate::task::read;

/// Field offsets of the running kernel (set by the loader).
#[unsafe(no_mangle)]
static TCP_OFFSETS: TcpOffsets = TcpOffsets {
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_family: 0,
    skc_state: 0,
    skc_net: 0,
    net_inum: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    skb_gso_segs: 0,
    icsk_ca_state_byte: 0,
    icsk_ca_state_shift: 0,
    icsk_ca_state_mask: 0,
    _pad: 0,
    valid: 0,
};
/// 1: key series by connection (local address and port too).
#[unsafe(no_mangle)]
static TCP_PER_CONNECTION: u32 = 0;
/// Episode events allowed per CPU per second.
#[unsafe(no_mangle)]
static TCP_EVENTS_PER_CPU_PER_SEC: u64 = 0;

/// Segments and events per key; the loader sizes it.
#[map]
static TCP_STATS: PerCpuHashMap<TcpKey, TcpCounts> = PerCpuHashMap::with_max_entries(4096, 0);

/// Owner of each TCP socket, by the socket's address. LRU: a socket whose
/// close was missed (agent attached late) ages out.
#[map]
static TCP_OWNERS: LruHashMap<u64, TcpOwner> = LruHashMap::with_max_entries(65536, 0);

/// Bumped after every write to `TCP_OWNERS` (an insert can also evict):
/// a [`SendSeen`] entry taken at an older value proves nothing.
#[map]
static TCP_OWNERS_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// What this CPU's `tcp_sendmsg_locked` last confirmed: `tgid` owned `sk`
/// in `TCP_OWNERS` while the generation was `generation`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SendSeen {
    sk: u64,
    generation: u64,
    tgid: u32,
    _pad: u32,
}

/// Entries of the per-CPU cache of [`SendSeen`]. Fully associative and
/// searched in order: the socket pointer of a BTF tracepoint may be
/// compared but not hashed (the verifier refuses arithmetic on it).
const SEEN_SLOTS: usize = 4;

/// One CPU's recently confirmed (socket, owner) pairs, replaced round-robin.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SendSeenCache {
    entries: [SendSeen; SEEN_SLOTS],
    next: u32,
    _pad: u32,
}

/// Per CPU, the sockets whose owner a send recently confirmed: lets the
/// per-send program skip the hash lookup when nothing changed since.
#[map]
static TCP_SEND_SEEN: PerCpuArray<SendSeenCache> = PerCpuArray::with_max_entries(1, 0);

/// Owner of each listening socket, by (namespace, port, family), for the
/// connections it accepts.
#[map]
static TCP_LISTENERS: LruHashMap<ListenKey, TcpOwner> = LruHashMap::with_max_entries(8192, 0);

/// Lost data, indexed by `drop_reason`.
#[map]
static TCP_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_reason::COUNT, 0);

/// Rate-limiter window for episode events, per CPU.
#[map]
static TCP_EVENTS_RATE: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(1, 0);

/// Retransmits and resets for episodes (traces).
#[map]
static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

const NS_PER_SEC: u64 = 1_000_000_000;

#[inline(always)]
fn offsets() -> TcpOffsets {
    // Volatile: the loader rewrites the value, the compiler must not fold it.
    unsafe { core::ptr::read_volatile(&TCP_OFFSETS) }
}

// ---- retransmits -------------------------------------------------------

// Linux 6.10+ also fires `tcp_retransmit_skb` for retransmits that were
// not sent (e.g. the original still in the host's queue), with the error as
// a third argument; those are not counted, as `RetransSegs` does not count
// them and older kernels do not report them. The loader tries these
// three-argument programs first: they fail to load or attach where the
// tracepoint has two.

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_err_btf(ctx: BtfTracePointContext) -> i32 {
    if ctx.arg::<u64>(2) as i32 != 0 {
        return 0;
    }
    on_retransmit(ctx.arg::<u64>(0), ctx.arg::<u64>(1))
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_err_raw(ctx: RawTracePointContext) -> i32 {
    if ctx.arg::<u64>(2) as i32 != 0 {
        return 0;
    }
    on_retransmit(ctx.arg::<u64>(0), ctx.arg::<u64>(1))
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_btf(ctx: BtfTracePointContext) -> i32 {
    on_retransmit(ctx.arg::<u64>(0), ctx.arg::<u64>(1))
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_raw(ctx: RawTracePointContext) -> i32 {
    on_retransmit(ctx.arg::<u64>(0), ctx.arg::<u64>(1))
}

#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack_btf(ctx: BtfTracePointContext) -> i32 {
    on_synack(ctx.arg::<u64>(0), ctx.arg::<u64>(1))
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack_raw(ctx: RawTracePointContext) -> i32 {
    on_synack(ctx.arg::<u64>(0), ctx.arg::<u64>(1))
}

fn on_retransmit(sk: u64, skb: u64) -> i32 {
    let o = offsets();
    if o.valid == 0 || sk == 0 {
        return 0;
    }
    let st: u8 = read(sk, o.skc_state).unwrap_or(0);
    let k = if st as i32 == state::SYN_SENT {
        kind::SYN
    } else {
        let ca: u8 = read(sk, o.icsk_ca_state_byte).unwrap_or(0);
        if ((ca as u32) >> o.icsk_ca_state_shift) & o.icsk_ca_state_mask == TCP_CA_LOSS {
            kind::TIMEOUT
        } else {
            kind::FAST
        }
    };
    // tcp_skb_pcount(): what RetransSegs adds for this skb.
    let segs: u16 = if skb == 0 {
        1
    } else {
        read(skb, o.skb_gso_segs).unwrap_or(1)
    };
    let owner = unsafe { TCP_OWNERS.get(sk) }.copied();
    record(&o, sk, sk, owner, k, segs.max(1) as u32);
    0
}

fn on_synack(listener: u64, req: u64) -> i32 {
    let o = offsets();
    if o.valid == 0 || req == 0 {
        return 0;
    }
    // A request_sock starts with a sock_common: same offsets.
    let owner = unsafe { TCP_OWNERS.get(listener) }.copied();
    record(&o, req, req, owner, kind::SYN_ACK, 1);
    0
}

// ---- resets ------------------------------------------------------------

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_btf(ctx: BtfTracePointContext) -> i32 {
    on_reset(ctx.arg::<u64>(0), kind::RESET_SENT)
}

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset_raw(ctx: RawTracePointContext) -> i32 {
    on_reset(ctx.arg::<u64>(0), kind::RESET_SENT)
}

#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset_btf(ctx: BtfTracePointContext) -> i32 {
    on_reset(ctx.arg::<u64>(0), kind::RESET_RECEIVED)
}

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset_raw(ctx: RawTracePointContext) -> i32 {
    on_reset(ctx.arg::<u64>(0), kind::RESET_RECEIVED)
}

fn on_reset(sk: u64, k: u32) -> i32 {
    let o = offsets();
    // A reset sent without a socket (to a port nobody listens on) has no
    // owner and no peer read here; it is not counted.
    if o.valid == 0 || sk == 0 {
        return 0;
    }
    let owner = unsafe { TCP_OWNERS.get(sk) }.copied();
    record(&o, sk, sk, owner, k, 1);
    0
}

/// Counts one event of `segs` segments for the connection of `common` (a
/// `sock_common`), owned by `owner`, and sends it for episodes.
#[inline(always)]
fn record(o: &TcpOffsets, sock: u64, common: u64, owner: Option<TcpOwner>, k: u32, segs: u32) {
    if crate::filter::owner_excluded(owner.map(|w| w.cgroup_id)) {
        return;
    }
    let Some(full) = conn_key(o, common) else {
        return;
    };
    let mut key = full;
    key.tgid = owner.map_or(0, |w| w.tgid);
    key.kind = k;
    if unsafe { core::ptr::read_volatile(&TCP_PER_CONNECTION) } == 0 {
        key.local_port = 0;
        key.local_addr = [0; 16];
    }
    match TCP_STATS.get_ptr_mut(key) {
        Some(c) => unsafe {
            (*c).segments += segs as u64;
            (*c).events += 1;
        },
        None => {
            let c = TcpCounts {
                segments: segs as u64,
                events: 1,
            };
            if TCP_STATS.insert(key, c, 0).is_err() {
                count_drop(drop_reason::STATS_MAP_FULL);
            }
        }
    }
    if k < kind::RETRANSMIT_KINDS {
        let mut ev_key = full;
        ev_key.tgid = key.tgid;
        ev_key.kind = k;
        send_event(sock, owner.map_or(0, |w| w.cgroup_id), segs, ev_key);
    }
}

/// The connection's family, addresses, ports and namespace.
#[inline(always)]
fn conn_key(o: &TcpOffsets, sk: u64) -> Option<TcpKey> {
    let family: u16 = read(sk, o.skc_family)?;
    let mut key = TcpKey {
        tgid: 0,
        kind: 0,
        netns: netns(o, sk),
        family,
        peer_port: u16::from_be(read::<u16>(sk, o.skc_dport)?),
        local_port: read::<u16>(sk, o.skc_num)?,
        _pad: 0,
        peer_addr: [0; 16],
        local_addr: [0; 16],
    };
    if family == AF_INET {
        let d: [u8; 4] = read(sk, o.skc_daddr)?;
        let s: [u8; 4] = read(sk, o.skc_rcv_saddr)?;
        key.peer_addr[..4].copy_from_slice(&d);
        key.local_addr[..4].copy_from_slice(&s);
    } else if family == AF_INET6 {
        key.peer_addr = read(sk, o.skc_v6_daddr)?;
        key.local_addr = read(sk, o.skc_v6_rcv_saddr)?;
    } else {
        return None;
    }
    Some(key)
}

#[inline(always)]
fn netns(o: &TcpOffsets, sk: u64) -> u32 {
    match read::<u64>(sk, o.skc_net) {
        Some(net) if net != 0 => read::<u32>(net, o.net_inum).unwrap_or(0),
        _ => 0,
    }
}

fn send_event(sock: u64, cgroup_id: u64, segments: u32, key: TcpKey) {
    let Some(rate) = TCP_EVENTS_RATE.get_ptr_mut(0) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let limit = unsafe { core::ptr::read_volatile(&TCP_EVENTS_PER_CPU_PER_SEC) };
    unsafe {
        let window = now / NS_PER_SEC;
        if (*rate).window != window {
            (*rate).window = window;
            (*rate).sent = 0;
        }
        if (*rate).sent >= limit {
            count_drop(drop_reason::EVENTS_RATE_LIMITED);
            return;
        }
        (*rate).sent += 1;
    }
    let Some(mut entry) = TCP_EVENTS.reserve::<TcpEvent>(0) else {
        count_drop(drop_reason::EVENTS_RINGBUF_FULL);
        return;
    };
    entry.write(TcpEvent {
        time_ns: now,
        sock,
        cgroup_id,
        segments,
        key,
    });
    entry.submit(0);
}

#[inline(always)]
fn count_drop(reason: u32) {
    if let Some(n) = TCP_DROPS.get_ptr_mut(reason) {
        unsafe { *n += 1 };
    }
}

// ---- ownership ---------------------------------------------------------

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcp_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    on_set_state(
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(1) as i32,
        ctx.arg::<u64>(2) as i32,
    )
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn tcp_set_state_raw(ctx: RawTracePointContext) -> i32 {
    on_set_state(
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(1) as i32,
        ctx.arg::<u64>(2) as i32,
    )
}

#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_btf(ctx: BtfTracePointContext) -> i32 {
    on_send(ctx.arg::<u64>(0))
}

#[raw_tracepoint(tracepoint = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_raw(ctx: RawTracePointContext) -> i32 {
    on_send(ctx.arg::<u64>(0))
}

#[inline(always)]
fn current_owner() -> TcpOwner {
    let pid_tgid = bpf_get_current_pid_tgid();
    TcpOwner {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
    }
}

fn on_set_state(sk: u64, old: i32, new: i32) -> i32 {
    let o = offsets();
    if o.valid == 0 || sk == 0 {
        return 0;
    }
    match new {
        // connect() and listen() run in the owner's context.
        state::SYN_SENT => {
            let _ = TCP_OWNERS.insert(sk, current_owner(), 0);
            owners_changed();
        }
        state::LISTEN => {
            let owner = current_owner();
            let _ = TCP_OWNERS.insert(sk, owner, 0);
            owners_changed();
            if let Some(k) = listen_key(&o, sk) {
                let _ = TCP_LISTENERS.insert(k, owner, 0);
            }
        }
        // A passive open completes in softirq: take the listener's owner.
        state::ESTABLISHED if old == state::SYN_RECV => {
            if unsafe { TCP_OWNERS.get(sk) }.is_none()
                && let Some(k) = listen_key(&o, sk)
                && let Some(owner) = unsafe { TCP_LISTENERS.get(k) }
            {
                let owner = *owner;
                let _ = TCP_OWNERS.insert(sk, owner, 0);
                owners_changed();
            }
        }
        state::CLOSE => {
            let _ = TCP_OWNERS.remove(sk);
            owners_changed();
            if old == state::LISTEN
                && let Some(k) = listen_key(&o, sk)
            {
                let _ = TCP_LISTENERS.remove(k);
            }
        }
        _ => {}
    }
    0
}

#[inline(always)]
fn on_send(sk: u64) -> i32 {
    if offsets().valid == 0 || sk == 0 {
        return 0;
    }
    // Only write when the owner changes: sendmsg is hot (once per new skb),
    // the map is shared. The common case is answered by this CPU's cache
    // of confirmed (socket, owner) pairs, valid while no owner changed
    // anywhere; else one lookup, and the cgroup is read only when the
    // owner changes.
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(generation) = TCP_OWNERS_GEN.get_ptr(0) else {
        return 0;
    };
    let generation = unsafe { core::ptr::read_volatile(generation) };
    let Some(cache) = TCP_SEND_SEEN.get_ptr_mut(0) else {
        return 0;
    };
    let cache = unsafe { &mut *cache };
    for e in &cache.entries {
        if e.sk == sk && e.tgid == tgid && e.generation == generation {
            return 0;
        }
    }
    if !unsafe { TCP_OWNERS.get(sk) }.is_some_and(|w| w.tgid == tgid) {
        let _ = TCP_OWNERS.insert(sk, current_owner(), 0);
        owners_changed();
        return 0;
    }
    let slot = cache.next as usize % SEEN_SLOTS;
    cache.next = cache.next.wrapping_add(1);
    if let Some(e) = cache.entries.get_mut(slot) {
        *e = SendSeen {
            sk,
            generation,
            tgid,
            _pad: 0,
        };
    }
    0
}

/// After a write to `TCP_OWNERS`: every CPU's [`SendSeen`] entries are stale.
#[inline(always)]
fn owners_changed() {
    if let Some(g) = TCP_OWNERS_GEN.get_ptr_mut(0) {
        // An atomic add (BPF_ATOMIC | BPF_ADD): two writers at once must
        // both move it on, or a stale entry could match again.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                g, 1,
            )
        };
    }
}

/// The floor for benchmarks: an empty program on the per-send hook
/// (`hostscope bench-floor --hooks tcp`).
#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[inline(always)]
fn listen_key(o: &TcpOffsets, sk: u64) -> Option<ListenKey> {
    Some(ListenKey {
        netns: netns(o, sk),
        port: read(sk, o.skc_num)?,
        family: read(sk, o.skc_family)?,
    })
}
