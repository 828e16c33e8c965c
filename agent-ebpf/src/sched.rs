//! Run-queue delay and context switches per process, see
//! `hostscope_common::sched` for the two designs. Per-cgroup figures are
//! summed in userspace from the per-process ones, which keeps the
//! per-switch work small.
//!
//! BTF tracepoint, `sched_switch(preempt, prev, next, prev_state)` alone:
//! at each switch-out of `prev` (= `current`), one task-storage access, one
//! kernel read of its `sched_info` (`pcount`, `run_delay`: 16 bytes at a
//! BTF-resolved offset) and one per-CPU stats update (the switch, and the
//! wait that ended at its last switch-in, if any).
//!
//! Raw tracepoints, `sched_wakeup(p)`, `sched_wakeup_new(p)` and
//! `sched_switch`: a task's wake-up time is kept in a hash keyed by the
//! task's address (`RUNQ_START`). Per wake-up: one store. Per switch: for
//! `prev`, one store if it stays runnable; for `next`, a load and clear of
//! its wake-up time, one kernel read of its tgid at a BTF-resolved offset
//! and one per-CPU stats update, which also counts the switch-out that
//! began the wait (voluntary after a wake-up, involuntary after a
//! preemption). A thread's last switch-out, at exit, is never followed by
//! a switch-in and is not counted; its first run after `sched_wakeup_new`
//! is counted instead, so totals are exact for threads born while the
//! programs are attached.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_LOCAL_STORAGE_GET_F_CREATE, bpf_map_type, task_struct},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
        generated::bpf_task_storage_get,
    },
    macros::{btf_map, btf_tracepoint, map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use hostscope_common::{
    sched::{PreemptKey, RunqStats, SchedOffsets, TaskSeen, drop_reason},
    syscalls::slot_of_ns,
    task::CgroupChain,
};

use crate::task::{cgroup_id, read};

#[unsafe(no_mangle)]
static SCHED_OFFSETS: SchedOffsets = SchedOffsets {
    task_pid: 0,
    task_tgid: 0,
    valid: 0,
    sched_info: 0,
    task_start_time: 0,
    info_valid: 0,
    loaded_ns: 0,
    cgroup: CgroupChain {
        task_cgroups: 0,
        css_set_dfl_cgrp: 0,
        cgroup_kn: 0,
        kernfs_node_id: 0,
    },
    cgroup_valid: 0,
    _pad: 0,
};

/// When each runnable thread became runnable (ns), keyed by its
/// `task_struct` address (what the tracepoints pass, so no read is needed to
/// find the key; a new task's `sched_wakeup_new` replaces whatever a freed
/// one at the same address left). A plain (preallocated) hash: an entry
/// lives from wake-up or preemption to the next switch-in, so threads do not
/// leave entries behind when they exit (a thread exits while running, and
/// its last switch-out is voluntary).
#[map]
static RUNQ_START: HashMap<u64, u64> = HashMap::with_max_entries(65536, 0);

/// A BTF-defined task-local storage map (`BPF_MAP_TYPE_TASK_STORAGE`, Linux
/// 5.11; usable from tracing programs since 5.12): one value per task, in the
/// task itself, found without hashing. aya-ebpf 0.2.1 defines the other
/// local storages (`btf_maps::{SkStorage, CgrpStorage, InodeStorage}`) but
/// not this one; the layout is the same (`#[repr(C)]` pointers whose BTF
/// types carry the definition: the array lengths are the map type, the
/// flags and `max_entries`, which must be 0).
#[repr(C)]
pub struct TaskStorage<T> {
    r#type: *const [i32; bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE as usize],
    key: *const i32,
    value: *const T,
    max_entries: *const [i32; 0],
    map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
}

// SAFETY: the fields are never dereferenced; the loader replaces the static
// by a map reference.
unsafe impl<T> Sync for TaskStorage<T> {}

impl<T> TaskStorage<T> {
    pub const fn new() -> Self {
        Self {
            r#type: core::ptr::null(),
            key: core::ptr::null(),
            value: core::ptr::null(),
            max_entries: core::ptr::null(),
            map_flags: core::ptr::null(),
        }
    }

    /// `task`'s value, created zeroed if `create` and it has none yet; `None`
    /// when it has none (and not `create`), or creation failed (no memory,
    /// or the storage was busy on this CPU: the kernel's recursion guard).
    ///
    /// `task` must be a BTF `task_struct` pointer the verifier trusts (a
    /// BTF tracepoint's argument or `bpf_get_current_task_btf()`).
    #[inline(always)]
    fn get(&self, task: u64, create: bool) -> Option<*mut T> {
        let flags = if create {
            BPF_LOCAL_STORAGE_GET_F_CREATE as u64
        } else {
            0
        };
        let p = unsafe {
            bpf_task_storage_get(
                core::ptr::from_ref(self).cast_mut().cast(),
                task as *mut task_struct,
                core::ptr::null_mut(),
                flags,
            )
        };
        (!p.is_null()).then_some(p.cast::<T>())
    }
}

/// The BTF design's per-task memory: each task's `sched_info` figures at
/// its last switch-out seen. Created at a task's first switch-out and freed
/// by the kernel with the task; never deleted in between.
#[btf_map]
static TASK_SCHED_SEEN: TaskStorage<TaskSeen> = TaskStorage::new();

/// Waits and switches per process (tgid).
#[map]
static SCHED_STATS: PerCpuHashMap<u32, RunqStats> = PerCpuHashMap::with_max_entries(8192, 0);

/// All-zero initial value (from a map: too large for the stack).
#[map]
static SCHED_STATS_ZERO: PerCpuArray<RunqStats> = PerCpuArray::with_max_entries(1, 0);

/// Involuntary switches per process, by the cgroup of the task that got the
/// CPU instead (the noisy-neighbour question). Touched only at involuntary
/// switches, four kernel reads each.
#[map]
static SCHED_PREEMPTIONS: PerCpuHashMap<PreemptKey, u64> =
    PerCpuHashMap::with_max_entries(16384, 0);

#[map]
static SCHED_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_reason::COUNT, 0);

#[inline(always)]
fn offsets() -> SchedOffsets {
    unsafe { core::ptr::read_volatile(&SCHED_OFFSETS) }
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup_raw(ctx: RawTracePointContext) -> i32 {
    on_wakeup(ctx.arg::<u64>(0))
}

#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_wakeup_new_raw(ctx: RawTracePointContext) -> i32 {
    on_wakeup(ctx.arg::<u64>(0))
}

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    match try_sched_switch_btf(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(ctx: RawTracePointContext) -> i32 {
    on_switch(
        ctx.arg::<u64>(0) as u8 != 0,
        ctx.arg::<u64>(2),
        ctx.arg::<u64>(3) as u32,
    )
}

/// The floor for benchmarks: an empty program on the same hook
/// (`hostscope bench-floor --hooks sched`).
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

fn on_wakeup(task: u64) -> i32 {
    if offsets().valid == 0 || task == 0 {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    match RUNQ_START.get_ptr_mut(task) {
        // Preempted and still on the run queue: see [`PREEMPTED`].
        Some(v) if unsafe { *v } & PREEMPTED != 0 => {}
        Some(v) => unsafe { *v = now },
        None => start(task, now),
    }
    0
}

#[inline(always)]
fn start(task: u64, now: u64) {
    if RUNQ_START.insert(task, now, 0).is_err() {
        count_drop(drop_reason::START_MAP_FULL);
    }
}

#[inline(always)]
fn agent_tgid() -> u32 {
    unsafe { core::ptr::read_volatile(&crate::syscalls::AGENT_TGID) }
}

/// Set in a `RUNQ_START` value when the wait began with a preemption (the
/// switch-in then counts an involuntary switch), clear when it began with a
/// wake-up (a voluntary one).
///
/// A wake-up does not overwrite a preempted wait: a task preempted between
/// setting its sleep state and calling `schedule()` stays on the run queue,
/// and a wake-up meanwhile (its timer firing, say) fires `sched_wakeup` but
/// does not enqueue it again. The kernel counts that switch as involuntary
/// and its `run_delay` from the preemption, and so does this.
const PREEMPTED: u64 = 1 << 63;

fn on_switch(preempt: bool, next: u64, prev_state: u32) -> i32 {
    let o = offsets();
    if o.valid == 0 {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    // `prev` is the task still current at this tracepoint. A task switched
    // out while still runnable waits again from now; one that blocked waits
    // from its wake-up. Either way its switch-out is counted when it next
    // gets a CPU; only the cgroup that preempted it is counted now.
    // (The idle task, tid 0, is not timed.)
    let id = bpf_get_current_pid_tgid();
    if (preempt || prev_state == 0) && id as u32 != 0 {
        start(unsafe { bpf_get_current_task() }, now | PREEMPTED);
        let tgid = (id >> 32) as u32;
        if tgid != agent_tgid() {
            preempted_by(tgid, next, &o);
        }
    }
    if next == 0 {
        return 0;
    }
    let Some(started) = (unsafe { RUNQ_START.get(next) }).copied() else {
        return 0;
    };
    let _ = RUNQ_START.remove(next);
    let tgid: u32 = read(next, o.task_tgid).unwrap_or(0);
    switched_in(tgid, now, started);
    0
}

/// The BTF design: `prev` (the current task, a BTF pointer) leaves the CPU.
#[inline(always)]
fn try_sched_switch_btf(ctx: &BtfTracePointContext) -> Result<(), ()> {
    let o = offsets();
    if o.info_valid == 0 {
        return Err(());
    }
    let preempt = ctx.arg::<u64>(0) as u8 != 0;
    let prev: u64 = ctx.arg(1);
    let prev_state = ctx.arg::<u64>(3) as u32;
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // The idle task (tid 0) is not counted, nor the agent, nor what the
    // cgroup filter leaves out.
    if id as u32 == 0 || prev == 0 || tgid == agent_tgid() || crate::filter::current_excluded() {
        return Ok(());
    }
    let s = entry(tgid).ok_or(())?;
    unsafe {
        if preempt || prev_state == 0 {
            (*s).involuntary += 1;
            preempted_by(tgid, ctx.arg(2), &o);
        } else {
            (*s).voluntary += 1;
        }
    }
    let Some(v) = TASK_SCHED_SEEN.get(prev, true) else {
        count_drop(drop_reason::TASK_STORAGE_UNAVAILABLE);
        return Err(());
    };
    let [pcount, run_delay]: [u64; 2] = read(prev, o.sched_info).ok_or(())?;
    unsafe {
        if (*v).seen == 0 {
            (*v).seen = 1;
            // A task older than the programs: its waits so far are not
            // ours to count.
            let started: u64 = read(prev, o.task_start_time).ok_or(())?;
            if started < o.loaded_ns {
                (*v).pcount = pcount;
                (*v).run_delay = run_delay;
                return Ok(());
            }
        }
        let n = pcount.wrapping_sub((*v).pcount);
        let d = run_delay.wrapping_sub((*v).run_delay);
        (*v).pcount = pcount;
        (*v).run_delay = run_delay;
        if n == 0 || n > 1 << 32 {
            return Ok(());
        }
        (*s).count += n;
        (*s).sum_ns += d;
        if let Some(b) = (*s).slots.get_mut(slot_of_ns(d / n)) {
            *b += n;
        }
    }
    Ok(())
}

/// A task of process `tgid` got a CPU at `now` after waiting since
/// `started` (with [`PREEMPTED`]): one wait and the switch-out that began
/// it, on its process.
#[inline(always)]
fn switched_in(tgid: u32, now: u64, started: u64) {
    if tgid == 0 || tgid == agent_tgid() {
        return;
    }
    let wait = now.saturating_sub(started & !PREEMPTED);
    let slot = slot_of_ns(wait);
    if let Some(s) = entry(tgid) {
        unsafe {
            (*s).count += 1;
            (*s).sum_ns += wait;
            if let Some(b) = (*s).slots.get_mut(slot) {
                *b += 1;
            }
            if started & PREEMPTED != 0 {
                (*s).involuntary += 1;
            } else {
                (*s).voluntary += 1;
            }
        }
    }
}

/// A thread of process `tgid` was switched off the CPU while runnable and
/// `next` got it: one more involuntary switch of `tgid` by `next`'s cgroup.
#[inline(always)]
fn preempted_by(tgid: u32, next: u64, o: &SchedOffsets) {
    if o.cgroup_valid == 0 || next == 0 {
        return;
    }
    let key = PreemptKey {
        tgid,
        _pad: 0,
        cgroup_id: cgroup_id(next, &o.cgroup),
    };
    if let Some(n) = SCHED_PREEMPTIONS.get_ptr_mut(key) {
        unsafe { *n += 1 };
    } else if SCHED_PREEMPTIONS.insert(key, 1, 0).is_err() {
        count_drop(drop_reason::PREEMPTIONS_MAP_FULL);
    }
}

/// This CPU's stats of process `tgid`, created on first use.
#[inline(always)]
fn entry(tgid: u32) -> Option<*mut RunqStats> {
    if let Some(p) = SCHED_STATS.get_ptr_mut(tgid) {
        return Some(p);
    }
    let zero = SCHED_STATS_ZERO.get(0)?;
    if SCHED_STATS.insert(tgid, zero, 0).is_err() {
        count_drop(drop_reason::STATS_MAP_FULL);
        return None;
    }
    SCHED_STATS.get_ptr_mut(tgid)
}

#[inline(always)]
fn count_drop(reason: u32) {
    if let Some(n) = SCHED_DROPS.get_ptr_mut(reason) {
        unsafe { *n += 1 };
    }
}
