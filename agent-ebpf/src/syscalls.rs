//! Syscall latency, counts and errors per (process, syscall).
//!
//! Hooks: `sys_enter` and `sys_exit`, as BTF tracepoints (`tp_btf`) or, where
//! BTF tracepoints are unavailable, as raw tracepoints. Both variants share the
//! same body: the two tracepoints' second argument is the syscall number
//! (`sys_enter`) or its return value (`sys_exit`), and neither needs a kernel
//! struct offset.
//!
//! Per syscall: one in-flight map lookup at entry, then at exit one in-flight
//! lookup and one per-CPU stats lookup (plus an errno-map update on failure).
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
    RateWindow, SlowSyscallEvent, SyscallErrorKey, SyscallKey, SyscallStart, SyscallStats,
    drop_reason, slot_of_ns,
};

/// Process id of the agent itself: its threads are not measured.
#[unsafe(no_mangle)]
static AGENT_TGID: u32 = 0;
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

/// Count, errors, sum and histogram per (process, syscall); the loader resizes it.
#[map]
static SYSCALL_STATS: PerCpuHashMap<SyscallKey, SyscallStats> =
    PerCpuHashMap::with_max_entries(8192, 0);

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

#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter_btf(ctx: BtfTracePointContext) -> i32 {
    on_enter(ctx.arg::<i64>(1))
}

#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_btf(ctx: BtfTracePointContext) -> i32 {
    on_exit(ctx.arg::<i64>(1))
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_raw(ctx: RawTracePointContext) -> i32 {
    on_enter(ctx.arg::<i64>(1))
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_raw(ctx: RawTracePointContext) -> i32 {
    on_exit(ctx.arg::<i64>(1))
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
fn on_enter(nr: i64) -> i32 {
    match try_enter(nr) {
        Ok(()) => 0,
        Err(()) => 1,
    }
}

#[inline(always)]
fn on_exit(ret: i64) -> i32 {
    match try_exit(ret) {
        Ok(()) => 0,
        Err(()) => 1,
    }
}

#[inline(always)]
fn agent_tgid() -> u32 {
    unsafe { core::ptr::read_volatile(&AGENT_TGID) }
}

#[inline(always)]
fn try_enter(nr: i64) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == agent_tgid() {
        return Ok(());
    }
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let nr = nr as u32;
    // Reuse this thread's slot in place when it exists (a lookup is cheaper
    // than an LRU update, which allocates a node); insert on first sight.
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
fn try_exit(ret: i64) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == agent_tgid() {
        return Ok(());
    }
    let Some(start) = SYSCALL_INFLIGHT.get_ptr_mut(pid_tgid) else {
        count_drop(drop_reason::UNMATCHED_EXIT);
        return Ok(());
    };
    let (start_ns, nr) = unsafe { ((*start).ts_ns, (*start).nr) };
    if start_ns == 0 {
        count_drop(drop_reason::UNMATCHED_EXIT);
        return Ok(());
    }
    unsafe { (*start).ts_ns = 0 };
    let now = unsafe { bpf_ktime_get_ns() };
    let duration_ns = now.saturating_sub(start_ns);
    let failed = (-MAX_ERRNO..0).contains(&ret);

    let key = SyscallKey { tgid, nr };
    let stats = match SYSCALL_STATS.get_ptr_mut(key) {
        Some(stats) => stats,
        None => {
            if SYSCALL_STATS.insert(key, SyscallStats::ZERO, 0).is_err() {
                count_drop(drop_reason::STATS_MAP_FULL);
                return Err(());
            }
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
