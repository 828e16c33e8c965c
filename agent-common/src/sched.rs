//! Run-queue delay and context switches: keys, values and offsets of the
//! `sched` kernel programs.
//!
//! Two designs, one per hook type:
//!
//! - **BTF tracepoint** (`sched_switch` alone): the kernel already times
//!   every wait in the task's `sched_info` (`pcount`, the number of waits
//!   ended by getting a CPU, and `run_delay`, their total in ns, the figures
//!   of `/proc/<pid>/schedstat`). At each switch-out the program reads both
//!   and keeps them in the task's own storage; the change since the task's
//!   last switch-out is the wait that ended at its last switch-in (the run
//!   queue's clock, exactly as the kernel counts it). No wake-up hook and no
//!   clock read.
//! - **Raw tracepoints** (`sched_wakeup`, `sched_wakeup_new`,
//!   `sched_switch`, for kernels without BTF tracepoints, task storage or
//!   `sched_info`): a task becomes runnable at a wake-up, or stays runnable
//!   when `sched_switch` takes it off the CPU while still `TASK_RUNNING`
//!   (preempted); the time from then until `sched_switch` puts it on a CPU
//!   is its wait, timed with the BPF clock.
//!
//! Waits are counted in the same log2 buckets as syscall durations (powers
//! of two seconds, see `crate::syscalls`).
//!
//! A switch away from a task is voluntary when it was not a preemption and
//! the task was no longer runnable (`!preempt && prev_state != 0`), exactly
//! the condition under which the kernel counts `nvcsw`; otherwise it counts
//! towards `nivcsw`. The BTF design counts it at the switch-out itself, so
//! its totals equal the kernel's; the raw design counts it when the task
//! next gets a CPU (missing the last one, at exit, and counting a new
//! thread's first run instead).

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
/// running kernel's BTF, and the time they were loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedOffsets {
    /// `task_struct.pid` (thread id).
    pub task_pid: u32,
    /// `task_struct.tgid` (process id).
    pub task_tgid: u32,
    /// 1 when `task_pid` and `task_tgid` are resolved.
    pub valid: u32,
    /// `task_struct.sched_info.pcount`, immediately followed by the 8-byte
    /// `sched_info.run_delay` (the layout of every kernel since 2.6).
    pub sched_info: u32,
    /// `task_struct.start_time` (`CLOCK_MONOTONIC` ns at fork).
    pub task_start_time: u32,
    /// 1 when `sched_info` and `task_start_time` are resolved and the kernel
    /// keeps `sched_info` (the BTF design is usable).
    pub info_valid: u32,
    /// `CLOCK_MONOTONIC` ns when the programs were loaded: a task started
    /// since then has all its waits counted, an older one those after its
    /// first switch-out seen.
    pub loaded_ns: u64,
    /// The chain to the cgroup of the task that gets the CPU at an
    /// involuntary switch (`SCHED_PREEMPTIONS`).
    pub cgroup: crate::task::CgroupChain,
    /// 1 when `cgroup` is resolved.
    pub cgroup_valid: u32,
    /// Always 0.
    pub _pad: u32,
}

/// Key of `SCHED_PREEMPTIONS`: involuntary switches of a process's
/// threads, by the cgroup v2 id of the task that got the CPU instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PreemptKey {
    /// The process switched out.
    pub tgid: u32,
    /// Always 0.
    pub _pad: u32,
    /// cgroup v2 id of the task switched in (0 if unreadable).
    pub cgroup_id: u64,
}

/// A task's value in the BTF design's task storage: its `sched_info`
/// figures at its last switch-out seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskSeen {
    /// `sched_info.pcount` then.
    pub pcount: u64,
    /// `sched_info.run_delay` then.
    pub run_delay: u64,
    /// 0 until the first switch-out seen.
    pub seen: u64,
}

/// Drop reasons of `SCHED_DROPS`.
pub mod drop_reason {
    /// `SCHED_STATS` was full: a process's waits were not counted.
    pub const STATS_MAP_FULL: u32 = 0;
    /// Raw tracepoints: `RUNQ_START` was full, a wait was not timed.
    pub const START_MAP_FULL: u32 = 1;
    /// BTF tracepoint: a task's storage could not be had at a switch-out
    /// (out of memory, or busy on that CPU). Nothing is lost from the
    /// counts and sums; the waits since its last switch-out seen go into
    /// the histogram as that many waits of their mean length, at its next.
    pub const TASK_STORAGE_UNAVAILABLE: u32 = 2;
    /// `SCHED_PREEMPTIONS` was full: an involuntary switch was not
    /// attributed to the cgroup that got the CPU (it is still counted in
    /// the process's switches).
    pub const PREEMPTIONS_MAP_FULL: u32 = 3;
    pub const COUNT: u32 = 4;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for RunqStats {}
    unsafe impl aya::Pod for SchedOffsets {}
    unsafe impl aya::Pod for TaskSeen {}
    unsafe impl aya::Pod for PreemptKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn padding_free() {
        assert_eq!(size_of::<RunqStats>(), 8 * (4 + HIST_SLOTS));
        assert_eq!(size_of::<SchedOffsets>(), 56);
        assert_eq!(size_of::<PreemptKey>(), 16);
        assert_eq!(size_of::<TaskSeen>(), 24);
    }
}
