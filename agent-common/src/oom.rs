//! OOM kills: the event the `oom` kernel program sends for each victim.

/// One OOM victim (`oom/mark_victim`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomEvent {
    /// `bpf_ktime_get_ns` when the victim was chosen.
    pub time_ns: u64,
    /// cgroup v2 id of the victim (0 when the kernel passes only a pid).
    pub cgroup_id: u64,
    /// Victim's thread id, as the tracepoint gives it.
    pub pid: u32,
    /// Victim's process id (= `pid` when the kernel passes only a pid).
    pub tgid: u32,
    /// Victim's `comm` (empty when the kernel passes only a pid).
    pub comm: [u8; 16],
}

/// Offsets for the task-argument variant (Linux 6.8+): `task_struct.pid`,
/// `.tgid`, `.comm`, and the chain to the task's cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub valid: u32,
    pub cgroup: crate::task::CgroupChain,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for OomEvent {}
    unsafe impl aya::Pod for OomOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_free() {
        assert_eq!(core::mem::size_of::<OomEvent>(), 8 + 8 + 4 + 4 + 16);
        assert_eq!(core::mem::size_of::<OomOffsets>(), 32);
    }
}
