//! Run-queue delay and context switches: keys, values and offsets of the
//! `sched` kernel programs.
//!
//! A task becomes runnable at `sched_wakeup`/`sched_wakeup_new`, or stays
//! runnable when `sched_switch` takes it off the CPU while it is still
//! `TASK_RUNNING` (preempted). The time from then until `sched_switch` puts
//! it on a CPU is its run-queue delay, counted in the same log2 buckets as
//! syscall durations (powers of two seconds, see `crate::syscalls`).
//!
//! A switch away from a task is voluntary when it was not a preemption and
//! the task was no longer runnable (`!preempt && prev_state != 0`), exactly
//! the condition under which the kernel counts `nvcsw`; otherwise it counts
//! towards `nivcsw`. It is counted when the task next gets a CPU: the last
//! switch-out of an exiting thread is missed and its first run (after
//! `sched_wakeup_new`) counted in its place.

use crate::syscalls::HIST_SLOTS;

/// Per-process value of `SCHED_STATS` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunqStats {
    /// Times the process's threads got a CPU after waiting.
    pub count: u64,
    /// Sum of the waits in ns.
    pub sum_ns: u64,
    /// Voluntary context switches (the thread blocked).
    pub voluntary: u64,
    /// Involuntary context switches (preempted while runnable).
    pub involuntary: u64,
    /// Histogram of waits (slot layout of `crate::syscalls`).
    pub slots: [u64; HIST_SLOTS],
}

impl RunqStats {
    pub const ZERO: Self = Self {
        count: 0,
        sum_ns: 0,
        voluntary: 0,
        involuntary: 0,
        slots: [0; HIST_SLOTS],
    };
}

/// Byte offsets of the kernel fields the programs read, resolved from the
/// running kernel's BTF. Only the task switched in is read: the one switched
/// out is `current`, known from a helper.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedOffsets {
    /// `task_struct.pid` (thread id).
    pub task_pid: u32,
    /// `task_struct.tgid` (process id).
    pub task_tgid: u32,
    /// 1 when resolved.
    pub valid: u32,
    /// Always 0.
    pub _pad: u32,
}

/// Drop reasons of `SCHED_DROPS`.
pub mod drop_reason {
    /// `SCHED_STATS` was full: a process's waits were not counted.
    pub const STATS_MAP_FULL: u32 = 0;
    /// `RUNQ_START` was full, or (BTF tracepoints) the task's
    /// `TASK_RUNQ_START` storage could not be created: a wait was not timed.
    pub const START_MAP_FULL: u32 = 1;
    pub const COUNT: u32 = 2;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for RunqStats {}
    unsafe impl aya::Pod for SchedOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn padding_free() {
        assert_eq!(size_of::<RunqStats>(), 8 * (4 + HIST_SLOTS));
        assert_eq!(size_of::<SchedOffsets>(), 16);
    }
}
