//! Process identity from kernel events, see `hostscope_common::procs`.
//!
//! Hooks, as BTF tracepoints or else raw tracepoints (same arguments):
//! `sched_process_fork(parent, child)`: a new process (not a thread) is
//! recorded with its parent (the current task), owner, `comm`, start time
//! and the parent's executable path; `sched_process_exec(p, old_pid,
//! bprm)`: the process is recorded again with the path it executed. Both
//! are rare next to syscalls and switches; each writes one LRU entry.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use hostscope_common::procs::{ProcOffsets, ProcRecord};

use crate::task::read;

#[unsafe(no_mangle)]
static PROC_OFFSETS: ProcOffsets = ProcOffsets {
    task_pid: 0,
    task_tgid: 0,
    task_start_time: 0,
    task_real_parent: 0,
    binprm_filename: 0,
    valid: 0,
};

/// Processes by tgid; the least recently written go first when full
/// (userspace removes those it has exported after they exit).
#[map]
static PROCS: LruHashMap<u32, ProcRecord> = LruHashMap::with_max_entries(32768, 0);

/// Tasks (threads too) created and not yet returned from the `clone` that
/// made them, by pid_tgid: a new task's first `sys_exit` (its return from
/// `clone`) has no `sys_enter`, and the syscalls programs do not count it as
/// an unmatched exit when they find it here.
#[map]
pub(crate) static FRESH_TASKS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

/// Scratch record (too large for comfort on the 512-byte stack).
#[map]
static PROC_SCRATCH: PerCpuArray<ProcRecord> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn offsets() -> ProcOffsets {
    unsafe { core::ptr::read_volatile(&PROC_OFFSETS) }
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn procs_fork_btf(ctx: BtfTracePointContext) -> i32 {
    match try_fork(ctx.arg::<u64>(1)) {
        Ok(()) | Err(()) => 0,
    }
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn procs_fork_raw(ctx: RawTracePointContext) -> i32 {
    match try_fork(ctx.arg::<u64>(1)) {
        Ok(()) | Err(()) => 0,
    }
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn procs_exec_btf(ctx: BtfTracePointContext) -> i32 {
    match try_exec(ctx.arg::<u64>(0), ctx.arg::<u64>(2)) {
        Ok(()) | Err(()) => 0,
    }
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn procs_exec_raw(ctx: RawTracePointContext) -> i32 {
    match try_exec(ctx.arg::<u64>(0), ctx.arg::<u64>(2)) {
        Ok(()) | Err(()) => 0,
    }
}

/// Writes `tgid`'s record from the scratch (by reference: a copy would put
/// 160 bytes on the 512-byte stack).
#[inline(always)]
#[allow(clippy::needless_borrows_for_generic_args)]
fn insert(tgid: u32, r: &ProcRecord) -> Result<(), ()> {
    PROCS.insert(&tgid, r, 0).map_err(|_| ())
}

/// A zeroed scratch record with the current task's owner and `comm`.
#[inline(always)]
fn scratch() -> Result<*mut ProcRecord, ()> {
    let r = PROC_SCRATCH.get_ptr_mut(0).ok_or(())?;
    unsafe {
        *r = ProcRecord::ZERO;
        (*r).uid = bpf_get_current_uid_gid() as u32;
        (*r).comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
    Ok(r)
}

/// `child` was just created by the current task.
#[inline(always)]
fn try_fork(child: u64) -> Result<(), ()> {
    let o = offsets();
    if o.valid == 0 || child == 0 {
        return Ok(());
    }
    let pid: u32 = read(child, o.task_pid).ok_or(())?;
    let tgid: u32 = read(child, o.task_tgid).ok_or(())?;
    let _ = FRESH_TASKS.insert((u64::from(tgid) << 32) | u64::from(pid), 1, 0);
    if pid != tgid {
        return Ok(()); // a thread of an existing process
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    let r = scratch()?;
    unsafe {
        (*r).ppid = parent;
        (*r).start_ns = read(child, o.task_start_time).unwrap_or(0);
        if let Some(p) = PROCS.get_ptr(parent) {
            (*r).path = (*p).path;
        }
        insert(tgid, &*r)
    }
}

/// The current task `p` executed the file of `bprm`.
#[inline(always)]
fn try_exec(p: u64, bprm: u64) -> Result<(), ()> {
    let o = offsets();
    if o.valid == 0 || p == 0 {
        return Ok(());
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let r = scratch()?;
    unsafe {
        (*r).start_ns = read(p, o.task_start_time).unwrap_or(0);
        (*r).ppid = read::<u64>(p, o.task_real_parent)
            .filter(|pp| *pp != 0)
            .and_then(|pp| read::<u32>(pp, o.task_tgid))
            .unwrap_or(0);
        if let Some(name) = read::<u64>(bprm, o.binprm_filename).filter(|f| *f != 0) {
            let _ = bpf_probe_read_kernel_str_bytes(name as *const u8, &mut (*r).path);
        }
        insert(tgid, &*r)
    }
}
