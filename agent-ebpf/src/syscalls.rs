//! Syscall latency, counts and errors per (process, syscall).
//!
//! Hooks: `sys_enter` and `sys_exit`, as BTF tracepoints (`tp_btf`) or, where
//! BTF tracepoints are unavailable, as raw tracepoints. Both variants share the
//! same body: the two tracepoints' second argument is the syscall number
//! (`sys_enter`) or its return value (`sys_exit`), and neither needs a kernel
//! struct offset.
//!
//! Per syscall: entry writes this CPU's in-flight slot; exit reads it back and
//! updates one per-CPU stats entry (plus an errno-map entry on failure). Only
//! when the thread is switched out mid-syscall (it blocked or was preempted)
//! does `sched_switch` move the entry into the in-flight hash map, where the
//! exit finds it on whatever CPU it resumes. Without the `sched_switch`
//! program, the `_hash` variants use the hash map for every syscall.
//! Nothing crosses to userspace except syscalls slower than `SLOW_THRESHOLD_NS`,
//! sent through a ring buffer under a per-CPU rate limit.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use hostscope_common::syscalls::{
    CpuSlot, RateWindow, SlowSyscallEvent, SyscallErrorKey, SyscallKey, SyscallStart, SyscallStats,
    drop_reason, slot_of_ns,
};

/// Process id of the agent itself: its threads are not measured.
#[unsafe(no_mangle)]
pub(crate) static AGENT_TGID: u32 = 0;
/// Syscalls at least this long (ns) are sent as events; `u64::MAX` disables.
#[unsafe(no_mangle)]
static SLOW_THRESHOLD_NS: u64 = u64::MAX;
/// Slow-syscall events allowed per CPU per second.
#[unsafe(no_mangle)]
static SLOW_EVENTS_PER_CPU_PER_SEC: u64 = 0;

/// In-flight syscalls by thread (pid_tgid). LRU, so threads that die inside a
/// syscall (exit, exit_group, exec by a non-leader thread) never fill it.
#[map]
static SYSCALL_INFLIGHT: LruHashMap<u64, SyscallStart> = LruHashMap::with_max_entries(32768, 0);

/// This CPU's syscall in flight (the fast path; see `CpuSlot`).
#[map]
static SYSCALL_CPU_SLOT: PerCpuArray<CpuSlot> = PerCpuArray::with_max_entries(1, 0);

/// Count, errors, sum and histogram per (process, syscall); the loader resizes it.
#[map]
static SYSCALL_STATS: PerCpuHashMap<SyscallKey, SyscallStats> =
    PerCpuHashMap::with_max_entries(8192, 0);

/// Name (`comm`) of each process with series, by tgid.
#[map]
static PROCESS_COMM: LruHashMap<u32, [u8; 16]> = LruHashMap::with_max_entries(8192, 0);

/// One all-zero `SyscallStats`, the initial value of new series.
#[map]
static SYSCALL_STATS_ZERO: PerCpuArray<SyscallStats> = PerCpuArray::with_max_entries(1, 0);

/// Errors per (process, syscall, errno).
#[map]
static SYSCALL_ERRORS: PerCpuHashMap<SyscallErrorKey, u64> =
    PerCpuHashMap::with_max_entries(4096, 0);

/// Lost data, indexed by `drop_reason`.
#[map]
static SYSCALL_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_reason::COUNT, 0);

/// Rate-limiter state for slow-syscall events, one window per CPU.
#[map]
static SYSCALL_SLOW_RATE: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(1, 0);

/// Slow syscalls for traces.
#[map]
static SYSCALL_SLOW_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

const NS_PER_SEC: u64 = 1_000_000_000;
const MAX_ERRNO: i64 = 4095;

// Two variants of each program: with the per-CPU fast path (used when the
// `sched_switch` handoff program is attached) and hash-only (when it is not).

#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter_btf(ctx: BtfTracePointContext) -> i32 {
    on_enter::<true>(ctx.arg::<i64>(1))
}

#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_btf(ctx: BtfTracePointContext) -> i32 {
    on_exit::<true>(ctx.arg::<i64>(1))
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_raw(ctx: RawTracePointContext) -> i32 {
    on_enter::<true>(ctx.arg::<i64>(1))
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_raw(ctx: RawTracePointContext) -> i32 {
    on_exit::<true>(ctx.arg::<i64>(1))
}

#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter_btf_hash(ctx: BtfTracePointContext) -> i32 {
    on_enter::<false>(ctx.arg::<i64>(1))
}

#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_btf_hash(ctx: BtfTracePointContext) -> i32 {
    on_exit::<false>(ctx.arg::<i64>(1))
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_raw_hash(ctx: RawTracePointContext) -> i32 {
    on_enter::<false>(ctx.arg::<i64>(1))
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_raw_hash(ctx: RawTracePointContext) -> i32 {
    on_exit::<false>(ctx.arg::<i64>(1))
}

/// The thread leaving the CPU (`current` at this tracepoint) takes its
/// in-flight syscall from the per-CPU slot into the hash map.
#[btf_tracepoint(function = "sched_switch")]
pub fn syscall_sched_switch_btf(_ctx: BtfTracePointContext) -> i32 {
    on_switch()
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn syscall_sched_switch_raw(_ctx: RawTracePointContext) -> i32 {
    on_switch()
}

/// The floor for benchmarks: empty programs on the same hooks.
#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[inline(always)]
fn on_enter<const FAST: bool>(nr: i64) -> i32 {
    match try_enter::<FAST>(nr) {
        Ok(()) => 0,
        Err(()) => 1,
    }
}

#[inline(always)]
fn on_exit<const FAST: bool>(ret: i64) -> i32 {
    match try_exit::<FAST>(ret) {
        Ok(()) => 0,
        Err(()) => 1,
    }
}

#[inline(always)]
fn on_switch() -> i32 {
    match try_switch() {
        Ok(()) => 0,
        Err(()) => 1,
    }
}

#[inline(always)]
fn agent_tgid() -> u32 {
    unsafe { core::ptr::read_volatile(&AGENT_TGID) }
}

#[inline(always)]
fn try_enter<const FAST: bool>(nr: i64) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == agent_tgid() || crate::filter::current_excluded() {
        return Ok(());
    }
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let nr = nr as u32;
    if FAST {
        let slot = SYSCALL_CPU_SLOT.get_ptr_mut(0).ok_or(())?;
        unsafe {
            *slot = CpuSlot {
                pid_tgid,
                ts_ns,
                nr,
                active: 1,
            };
        }
        return Ok(());
    }
    store_inflight(pid_tgid, ts_ns, nr)
}

/// Records a syscall in flight in the hash map, in place when the thread has
/// an entry already (a lookup is cheaper than an LRU update, which allocates).
#[inline(always)]
fn store_inflight(pid_tgid: u64, ts_ns: u64, nr: u32) -> Result<(), ()> {
    if let Some(start) = SYSCALL_INFLIGHT.get_ptr_mut(pid_tgid) {
        unsafe {
            (*start).ts_ns = ts_ns;
            (*start).nr = nr;
        }
        return Ok(());
    }
    let start = SyscallStart { ts_ns, nr, _pad: 0 };
    SYSCALL_INFLIGHT.insert(pid_tgid, start, 0).map_err(|_| ())
}

#[inline(always)]
fn try_switch() -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let slot = SYSCALL_CPU_SLOT.get_ptr_mut(0).ok_or(())?;
    let (active, owner, ts_ns, nr) =
        unsafe { ((*slot).active, (*slot).pid_tgid, (*slot).ts_ns, (*slot).nr) };
    if active == 0 || owner != pid_tgid {
        return Ok(());
    }
    unsafe { (*slot).active = 0 };
    if store_inflight(pid_tgid, ts_ns, nr).is_err() {
        count_drop(drop_reason::INFLIGHT_HANDOFF_FAILED);
    }
    Ok(())
}

/// Takes the start of the current thread's syscall: from this CPU's slot
/// when the thread was not switched out, else from the hash map.
#[inline(always)]
fn take_start<const FAST: bool>(pid_tgid: u64) -> Option<(u64, u32)> {
    if FAST
        && let Some(slot) = SYSCALL_CPU_SLOT.get_ptr_mut(0)
        && unsafe { (*slot).active != 0 && (*slot).pid_tgid == pid_tgid }
    {
        return unsafe {
            (*slot).active = 0;
            Some(((*slot).ts_ns, (*slot).nr))
        };
    }
    let start = SYSCALL_INFLIGHT.get_ptr_mut(pid_tgid)?;
    let (ts_ns, nr) = unsafe { ((*start).ts_ns, (*start).nr) };
    if ts_ns == 0 {
        return None;
    }
    // Marked consumed, not removed: an LRU delete takes locks and measured
    // ~350 ns per blocked syscall in the ping-pong bench; the entry is reused
    // in place by the thread's next switch-out, and the LRU reclaims entries
    // of threads that are gone.
    unsafe { (*start).ts_ns = 0 };
    Some((ts_ns, nr))
}

#[inline(always)]
fn try_exit<const FAST: bool>(ret: i64) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == agent_tgid() || crate::filter::current_excluded() {
        return Ok(());
    }
    let Some((start_ns, nr)) = take_start::<FAST>(pid_tgid) else {
        // A new task returning from the clone that made it entered nothing.
        // Marked seen rather than deleted: deleting from an LRU map in a
        // tracing program while another CPU inserts deadlocked Linux 6.1
        // (soft lockup on both CPUs under qemu); the LRU recycles the entry.
        match crate::procs::FRESH_TASKS.get_ptr_mut(pid_tgid) {
            Some(fresh) if unsafe { *fresh } != 0 => unsafe { *fresh = 0 },
            _ => count_drop(drop_reason::UNMATCHED_EXIT),
        }
        return Ok(());
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let duration_ns = now.saturating_sub(start_ns);
    let failed = (-MAX_ERRNO..0).contains(&ret);

    let key = SyscallKey { tgid, nr };
    let stats = match SYSCALL_STATS.get_ptr_mut(key) {
        Some(stats) => stats,
        None => {
            // The zero value comes from a map, not the stack: a 408-byte
            // stack value takes older verifiers (before per-program private
            // stacks in 6.13) over the 512-byte combined stack limit.
            let zero = SYSCALL_STATS_ZERO.get(0).ok_or(())?;
            if SYSCALL_STATS.insert(key, zero, 0).is_err() {
                count_drop(drop_reason::STATS_MAP_FULL);
                return Err(());
            }
            remember_comm(tgid);
            SYSCALL_STATS.get_ptr_mut(key).ok_or(())?
        }
    };
    let slot = slot_of_ns(duration_ns);
    // Per-CPU value, and programs do not migrate while running: plain
    // read-modify-write is race-free.
    unsafe {
        (*stats).count += 1;
        (*stats).sum_ns += duration_ns;
        if let Some(b) = (*stats).slots.get_mut(slot) {
            *b += 1;
        }
        if failed {
            (*stats).errors += 1;
        }
    }

    if failed {
        let ekey = SyscallErrorKey {
            tgid,
            nr,
            errno: (-ret) as u32,
        };
        match SYSCALL_ERRORS.get_ptr_mut(ekey) {
            Some(n) => unsafe { *n += 1 },
            None => {
                if SYSCALL_ERRORS.insert(ekey, 1, 0).is_err() {
                    count_drop(drop_reason::ERRORS_MAP_FULL);
                }
            }
        }
    }

    if duration_ns >= unsafe { core::ptr::read_volatile(&SLOW_THRESHOLD_NS) } {
        send_slow(start_ns, duration_ns, ret, pid_tgid, nr);
    }
    Ok(())
}

/// Cold path (a new series): the process's current name, for processes that
/// exit before userspace can read /proc. Overwritten on each new series, so
/// the name after an exec wins over the parent's from before it.
#[inline(never)]
fn remember_comm(tgid: u32) {
    if let Ok(comm) = bpf_get_current_comm() {
        let _ = PROCESS_COMM.insert(tgid, comm, 0);
    }
}

#[inline(always)]
fn count_drop(reason: u32) {
    if let Some(n) = SYSCALL_DROPS.get_ptr_mut(reason) {
        unsafe { *n += 1 };
    }
}

/// Cold path: only for syscalls over the threshold.
#[inline(never)]
fn send_slow(start_ns: u64, duration_ns: u64, ret: i64, pid_tgid: u64, nr: u32) {
    let Some(rate) = SYSCALL_SLOW_RATE.get_ptr_mut(0) else {
        return;
    };
    let window = (start_ns + duration_ns) / NS_PER_SEC;
    let limit = unsafe { core::ptr::read_volatile(&SLOW_EVENTS_PER_CPU_PER_SEC) };
    unsafe {
        if (*rate).window != window {
            (*rate).window = window;
            (*rate).sent = 0;
        }
        if (*rate).sent >= limit {
            count_drop(drop_reason::SLOW_RATE_LIMITED);
            return;
        }
        (*rate).sent += 1;
    }
    let Some(mut entry) = SYSCALL_SLOW_EVENTS.reserve::<SlowSyscallEvent>(0) else {
        count_drop(drop_reason::SLOW_RINGBUF_FULL);
        return;
    };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    entry.write(SlowSyscallEvent {
        start_ns,
        duration_ns,
        ret,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        nr,
        cpu: unsafe { bpf_get_smp_processor_id() },
        comm,
    });
    entry.submit(0);
}
