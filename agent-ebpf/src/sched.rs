//! Run-queue delay and context switches per process and per cgroup, see
//! `hostscope_common::sched`.
//!
//! Hooks, as BTF tracepoints or else raw tracepoints (same arguments):
//! `sched_wakeup(p)`, `sched_wakeup_new(p)`: `p` became runnable now;
//! `sched_switch(preempt, prev, next, prev_state)`: `prev` leaves the CPU
//! (runnable again now if it was preempted or still `TASK_RUNNING`), `next`
//! gets it after waiting since it became runnable.
//!
//! Task fields (`pid`, `tgid`, `flags`, cgroup) are read at offsets userspace
//! resolved from the running kernel's BTF (`SCHED_OFFSETS`).

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use hostscope_common::{
    sched::{PF_KTHREAD, RunqStats, SchedOffsets, drop_reason},
    syscalls::slot_of_ns,
};

#[unsafe(no_mangle)]
static SCHED_OFFSETS: SchedOffsets = SchedOffsets {
    task_pid: 0,
    task_tgid: 0,
    task_flags: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    valid: 0,
};

/// When each runnable thread became runnable (ns), by thread id. LRU: a
/// thread that exits while runnable ages out.
#[map]
static RUNQ_START: LruHashMap<u32, u64> = LruHashMap::with_max_entries(65536, 0);

/// Waits and switches per process (tgid; 0: kernel threads together).
#[map]
static SCHED_STATS: PerCpuHashMap<u32, RunqStats> = PerCpuHashMap::with_max_entries(8192, 0);

/// Waits and switches per cgroup v2 id.
#[map]
static SCHED_CGROUP_STATS: PerCpuHashMap<u64, RunqStats> = PerCpuHashMap::with_max_entries(4096, 0);

/// All-zero initial value (from a map: too large for the stack).
#[map]
static SCHED_STATS_ZERO: PerCpuArray<RunqStats> = PerCpuArray::with_max_entries(1, 0);

#[map]
static SCHED_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_reason::COUNT, 0);

#[inline(always)]
fn offsets() -> SchedOffsets {
    unsafe { core::ptr::read_volatile(&SCHED_OFFSETS) }
}

#[inline(always)]
fn read<T>(base: u64, off: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup_btf(ctx: BtfTracePointContext) -> i32 {
    on_wakeup(ctx.arg::<u64>(0))
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup_raw(ctx: RawTracePointContext) -> i32 {
    on_wakeup(ctx.arg::<u64>(0))
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new_btf(ctx: BtfTracePointContext) -> i32 {
    on_wakeup(ctx.arg::<u64>(0))
}

#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_wakeup_new_raw(ctx: RawTracePointContext) -> i32 {
    on_wakeup(ctx.arg::<u64>(0))
}

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    on_switch(
        ctx.arg::<u64>(0) as u8 != 0,
        ctx.arg::<u64>(1),
        ctx.arg::<u64>(2),
        ctx.arg::<u64>(3) as u32,
    )
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(ctx: RawTracePointContext) -> i32 {
    on_switch(
        ctx.arg::<u64>(0) as u8 != 0,
        ctx.arg::<u64>(1),
        ctx.arg::<u64>(2),
        ctx.arg::<u64>(3) as u32,
    )
}

fn on_wakeup(task: u64) -> i32 {
    let o = offsets();
    if o.valid == 0 || task == 0 {
        return 0;
    }
    if let Some(tid) = read::<u32>(task, o.task_pid)
        && tid != 0
    {
        let now = unsafe { bpf_ktime_get_ns() };
        let _ = RUNQ_START.insert(tid, now, 0);
    }
    0
}

fn on_switch(preempt: bool, prev: u64, next: u64, prev_state: u32) -> i32 {
    let o = offsets();
    if o.valid == 0 {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if prev != 0
        && let Some(tid) = read::<u32>(prev, o.task_pid)
        && tid != 0
    {
        let voluntary = !preempt && prev_state != 0;
        if !voluntary {
            // Still runnable: it waits again from now.
            let _ = RUNQ_START.insert(tid, now, 0);
        }
        account(&o, prev, |s| unsafe {
            if voluntary {
                (*s).voluntary += 1;
            } else {
                (*s).involuntary += 1;
            }
        });
    }
    if next != 0
        && let Some(tid) = read::<u32>(next, o.task_pid)
        && tid != 0
        && let Some(start) = unsafe { RUNQ_START.get(tid) }.copied()
    {
        let _ = RUNQ_START.remove(tid);
        let wait = now.saturating_sub(start);
        let slot = slot_of_ns(wait);
        account(&o, next, |s| unsafe {
            (*s).count += 1;
            (*s).sum_ns += wait;
            if let Some(b) = (*s).slots.get_mut(slot) {
                *b += 1;
            }
        });
    }
    0
}

/// Applies `f` to the task's process entry and to its cgroup's entry.
#[inline(always)]
fn account(o: &SchedOffsets, task: u64, f: impl Fn(*mut RunqStats)) {
    let flags: u32 = read(task, o.task_flags).unwrap_or(0);
    let tgid: u32 = if flags & PF_KTHREAD != 0 {
        0
    } else {
        read(task, o.task_tgid).unwrap_or(0)
    };
    // The agent does not measure itself.
    if tgid != 0 && tgid == unsafe { core::ptr::read_volatile(&crate::syscalls::AGENT_TGID) } {
        return;
    }
    match entry_u32(tgid) {
        Some(s) => f(s),
        None => count_drop(drop_reason::STATS_MAP_FULL),
    }
    let cgid = cgroup_id(o, task);
    if cgid != 0 {
        match entry_u64(cgid) {
            Some(s) => f(s),
            None => count_drop(drop_reason::CGROUP_MAP_FULL),
        }
    }
}

#[inline(always)]
fn entry_u32(tgid: u32) -> Option<*mut RunqStats> {
    if let Some(p) = SCHED_STATS.get_ptr_mut(tgid) {
        return Some(p);
    }
    let zero = SCHED_STATS_ZERO.get(0)?;
    SCHED_STATS.insert(tgid, zero, 0).ok()?;
    SCHED_STATS.get_ptr_mut(tgid)
}

#[inline(always)]
fn entry_u64(cgid: u64) -> Option<*mut RunqStats> {
    if let Some(p) = SCHED_CGROUP_STATS.get_ptr_mut(cgid) {
        return Some(p);
    }
    let zero = SCHED_STATS_ZERO.get(0)?;
    SCHED_CGROUP_STATS.insert(cgid, zero, 0).ok()?;
    SCHED_CGROUP_STATS.get_ptr_mut(cgid)
}

/// The task's cgroup v2 id: task->cgroups->dfl_cgrp->kn->id.
#[inline(always)]
fn cgroup_id(o: &SchedOffsets, task: u64) -> u64 {
    let Some(cset) = read::<u64>(task, o.task_cgroups).filter(|p| *p != 0) else {
        return 0;
    };
    let Some(cgrp) = read::<u64>(cset, o.css_set_dfl_cgrp).filter(|p| *p != 0) else {
        return 0;
    };
    let Some(kn) = read::<u64>(cgrp, o.cgroup_kn).filter(|p| *p != 0) else {
        return 0;
    };
    read::<u64>(kn, o.kernfs_node_id).unwrap_or(0)
}

#[inline(always)]
fn count_drop(reason: u32) {
    if let Some(n) = SCHED_DROPS.get_ptr_mut(reason) {
        unsafe { *n += 1 };
    }
}
