//! TCP retransmits and resets, attributed to the process that owns the
//! socket: keys, values, offsets and events of the `tcp` kernel programs.
//!
//! Retransmits fire from timers and softirqs, when whoever happens to be on
//! the CPU is rarely the socket's owner. So the owner is recorded while it
//! *is* on the CPU (connect, listen, send), keyed by the socket's address, and
//! looked up when the retransmit fires. An accepted connection inherits the
//! owner of its listener until its own process sends on it.
//!
//! The programs read a handful of kernel struct fields (addresses, ports,
//! state, namespace, segment count). Their offsets differ between kernels,
//! so userspace resolves them from the running kernel's BTF and passes them
//! in [`TcpOffsets`] at load time; nothing is baked in at build time.

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;

/// What was counted: the retransmit's cause, or a reset's direction.
pub mod kind {
    /// Retransmission timeout fired (the connection is in `TCP_CA_Loss`).
    pub const TIMEOUT: u32 = 0;
    /// Any other retransmit of an established connection: fast retransmit
    /// and recovery (duplicate ACKs, SACK, RACK), and tail-loss probes,
    /// which the kernel's state at the tracepoint cannot tell apart from
    /// fast retransmits (the armed timer is not the one that fired).
    pub const FAST: u32 = 1;
    /// Unused: see [`FAST`].
    pub const RESERVED: u32 = 2;
    /// The SYN of an active open.
    pub const SYN: u32 = 3;
    /// The SYN-ACK of a passive open.
    pub const SYN_ACK: u32 = 4;
    /// Retransmits counted: kinds below this.
    pub const RETRANSMIT_KINDS: u32 = 5;
    /// A reset this host sent.
    pub const RESET_SENT: u32 = 5;
    /// A reset this host received.
    pub const RESET_RECEIVED: u32 = 6;
    /// Number of kinds.
    pub const COUNT: u32 = 7;
}

/// Indices into `TCP_DROPS`: every place the tcp programs lose data.
pub mod drop_reason {
    /// `TCP_STATS` was full: a series was not counted.
    pub const STATS_MAP_FULL: u32 = 0;
    /// An episode event was not sent: the per-CPU rate limit was reached.
    pub const EVENTS_RATE_LIMITED: u32 = 1;
    /// An episode event was not sent: the ring buffer was full.
    pub const EVENTS_RINGBUF_FULL: u32 = 2;
    /// Number of reasons.
    pub const COUNT: u32 = 3;
}

/// Key of `TCP_STATS`: who, to which peer, what.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TcpKey {
    /// Owner process (tgid); 0 when no owner was ever seen for the socket.
    pub tgid: u32,
    /// See [`kind`].
    pub kind: u32,
    /// Network namespace (inode number of `/proc/<pid>/ns/net`).
    pub netns: u32,
    /// [`AF_INET`] or [`AF_INET6`] (IPv4-mapped IPv6 addresses stay AF_INET6
    /// here; userspace presents them as IPv4).
    pub family: u16,
    /// Remote port, host byte order.
    pub peer_port: u16,
    /// Local port, host byte order; 0 unless per-connection granularity.
    pub local_port: u16,
    /// Always 0 (explicit padding).
    pub _pad: u16,
    /// Remote address in network byte order; IPv4 in the first 4 bytes.
    pub peer_addr: [u8; 16],
    /// Local address; zero unless per-connection granularity.
    pub local_addr: [u8; 16],
}

/// Value of `TCP_STATS` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounts {
    /// Segments (an skb sent under GSO/TSO carries several).
    pub segments: u64,
    /// Tracepoint hits (retransmitted skbs, or resets).
    pub events: u64,
}

/// The process that owns a socket, recorded while it was on the CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpOwner {
    /// Process id.
    pub tgid: u32,
    /// Thread that was on the CPU.
    pub tid: u32,
    /// cgroup v2 id of the owner.
    pub cgroup_id: u64,
}

/// Key of `TCP_LISTENERS`: a listening socket's namespace, port and family.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub netns: u32,
    pub port: u16,
    pub family: u16,
}

/// One retransmit or reset for episodes (traces), through a ring buffer under
/// a per-CPU rate limit. Userspace folds them into one episode per connection
/// per interval.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpEvent {
    /// `bpf_ktime_get_ns` when it happened.
    pub time_ns: u64,
    /// The socket's kernel address: tells connections apart within an interval.
    pub sock: u64,
    /// Owner's cgroup id (0 when unknown).
    pub cgroup_id: u64,
    /// Segments of this event.
    pub segments: u32,
    /// The full connection (local address and port always filled in).
    pub key: TcpKey,
}

/// Byte offsets of the kernel fields the programs read, resolved from the
/// running kernel's BTF. Offsets in `struct sock` count from the start of
/// the socket (`sock_common` is its first member; `inet_connection_sock`
/// starts with a `sock`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOffsets {
    /// `sock_common.skc_daddr` (IPv4 remote address).
    pub skc_daddr: u32,
    /// `sock_common.skc_rcv_saddr` (IPv4 local address).
    pub skc_rcv_saddr: u32,
    /// `sock_common.skc_dport` (remote port, network order).
    pub skc_dport: u32,
    /// `sock_common.skc_num` (local port, host order).
    pub skc_num: u32,
    /// `sock_common.skc_family`.
    pub skc_family: u32,
    /// `sock_common.skc_state` (a `volatile unsigned char`).
    pub skc_state: u32,
    /// `sock_common.skc_net.net` (pointer to `struct net`).
    pub skc_net: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    /// `sock_common.skc_v6_daddr`.
    pub skc_v6_daddr: u32,
    /// `sock_common.skc_v6_rcv_saddr`.
    pub skc_v6_rcv_saddr: u32,
    /// `sk_buff.cb` + `tcp_skb_cb.tcp_gso_segs` (a `u16`).
    pub skb_gso_segs: u32,
    /// Byte holding the `inet_connection_sock.icsk_ca_state` bitfield.
    pub icsk_ca_state_byte: u32,
    /// Bit position of `icsk_ca_state` in that byte.
    pub icsk_ca_state_shift: u32,
    /// Mask of `icsk_ca_state` after shifting (`(1 << bits) - 1`).
    pub icsk_ca_state_mask: u32,
    /// Always 0 (explicit padding).
    pub _pad: u32,
    /// 1 when the offsets were resolved (the programs do nothing otherwise).
    pub valid: u32,
}

/// `TCP_SYN_SENT`, `TCP_SYN_RECV`, ... as the kernel numbers them.
pub mod state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const CLOSE: i32 = 7;
    pub const LISTEN: i32 = 10;
}

/// `TCP_CA_Loss`: the retransmission timer fired.
pub const TCP_CA_LOSS: u32 = 4;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for TcpKey {}
    unsafe impl aya::Pod for TcpCounts {}
    unsafe impl aya::Pod for TcpOwner {}
    unsafe impl aya::Pod for ListenKey {}
    unsafe impl aya::Pod for TcpEvent {}
    unsafe impl aya::Pod for TcpOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// No implicit padding: the sizes are the sums of the fields.
    #[test]
    fn padding_free() {
        assert_eq!(size_of::<TcpKey>(), 4 * 3 + 2 * 4 + 16 * 2);
        assert_eq!(size_of::<TcpCounts>(), 16);
        assert_eq!(size_of::<TcpOwner>(), 16);
        assert_eq!(size_of::<ListenKey>(), 8);
        assert_eq!(size_of::<TcpEvent>(), 8 * 3 + 4 + size_of::<TcpKey>());
        assert_eq!(size_of::<TcpOffsets>(), 16 * 4);
    }
}
