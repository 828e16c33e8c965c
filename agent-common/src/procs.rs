//! Process identity from kernel events: what the `procs` kernel programs
//! record at `sched_process_fork` (a new process, not a thread) and
//! `sched_process_exec`, so a process that exits before userspace looks at
//! procfs still has a name, a parent, an owner and a start time.

/// Bytes of the executable path kept (longer paths are cut; the name is
/// taken from what is kept, or else from `comm`).
pub const PATH_BYTES: usize = 128;

/// One process in `PROCS`, keyed by tgid.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcRecord {
    /// `task_struct.start_time` of the process (`CLOCK_MONOTONIC` ns).
    pub start_ns: u64,
    /// Parent process id.
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// `comm` at the event (the executable's name cut to 15 bytes).
    pub comm: [u8; 16],
    /// The executed file's path as given to `execve` (NUL-terminated; empty
    /// for a forked process whose parent's path was not recorded).
    pub path: [u8; PATH_BYTES],
}

impl ProcRecord {
    pub const ZERO: Self = Self {
        start_ns: 0,
        ppid: 0,
        uid: 0,
        comm: [0; 16],
        path: [0; PATH_BYTES],
    };
}

/// Byte offsets of the kernel fields the programs read, from the running
/// kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_start_time: u32,
    pub task_real_parent: u32,
    pub binprm_filename: u32,
    /// 1 when resolved.
    pub valid: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for ProcRecord {}
    unsafe impl aya::Pod for ProcOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_free() {
        assert_eq!(
            core::mem::size_of::<ProcRecord>(),
            8 + 4 + 4 + 16 + PATH_BYTES
        );
        assert_eq!(core::mem::size_of::<ProcOffsets>(), 24);
    }
}
