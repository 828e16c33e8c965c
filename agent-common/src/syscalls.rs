//! Syscall latency: keys, values and events of the `syscalls` kernel programs.
//!
//! Durations are bucketed in kernel into base-2 buckets whose boundaries are
//! powers of two *seconds*, the boundaries of an OpenTelemetry exponential
//! histogram at scale 0, so userspace maps kernel buckets 1:1 onto OTLP
//! buckets with no replay of samples.
//!
//! The kernel measures in nanoseconds, converts a duration to units of
//! 2^-30 s (see [`ns_to_units_ceil`]) and counts it in slot
//! `s = bit_length(units - 1)`: slot `s >= 1` holds durations in
//! `(2^(s-1), 2^s]` units, that is `(2^(s-31), 2^(s-30)]` seconds, which is
//! the OTLP exponential bucket with index `s - 31`. Slot 0 holds durations of at
//! most 2^-30 s (~0.93 ns). The last slot is open-ended.

/// Number of histogram slots. Slot 47 starts at 2^16 s (about 18 hours).
pub const HIST_SLOTS: usize = 48;

/// OTLP exponential-histogram bucket index (scale 0, unit seconds) of slot 0.
/// Slot `s` is OTLP bucket `s as i32 + SLOT0_OTLP_INDEX`.
pub const SLOT0_OTLP_INDEX: i32 = -31;

/// Indices into the `SYSCALL_DROPS` per-CPU array: every place the kernel side
/// loses data is counted under one of these.
pub mod drop_reason {
    /// `SYSCALL_STATS` was full: a (process, syscall) pair was not counted.
    pub const STATS_MAP_FULL: u32 = 0;
    /// `SYSCALL_ERRORS` was full: an error was counted in the totals but its
    /// errno breakdown was lost.
    pub const ERRORS_MAP_FULL: u32 = 1;
    /// A syscall exit with no recorded entry: it started before the programs
    /// were attached, or its entry was evicted from the bounded in-flight map.
    pub const UNMATCHED_EXIT: u32 = 2;
    /// A slow syscall was not sent because the per-CPU rate limit was reached.
    pub const SLOW_RATE_LIMITED: u32 = 3;
    /// A slow syscall was not sent because the ring buffer was full.
    pub const SLOW_RINGBUF_FULL: u32 = 4;
    /// A thread switched out mid-syscall could not be moved into
    /// `SYSCALL_INFLIGHT`: its syscall's exit will be unmatched.
    pub const INFLIGHT_HANDOFF_FAILED: u32 = 5;
    /// Number of reasons (length of the array).
    pub const COUNT: u32 = 6;
}

/// Key of `SYSCALL_STATS`: one process and one syscall number.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyscallKey {
    /// Process id (the kernel's tgid).
    pub tgid: u32,
    /// Syscall number of the running kernel's native ABI.
    pub nr: u32,
}

/// Value of `SYSCALL_STATS` (per CPU): count, error count, sum and histogram.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallStats {
    /// Completed calls.
    pub count: u64,
    /// Calls that returned an error (-4095..=-1).
    pub errors: u64,
    /// Sum of durations in nanoseconds.
    pub sum_ns: u64,
    /// Duration histogram, see the module documentation.
    pub slots: [u64; HIST_SLOTS],
}

impl SyscallStats {
    pub const ZERO: Self = Self {
        count: 0,
        errors: 0,
        sum_ns: 0,
        slots: [0; HIST_SLOTS],
    };
}

/// Key of `SYSCALL_ERRORS`: errors by errno per (process, syscall).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyscallErrorKey {
    pub tgid: u32,
    pub nr: u32,
    /// Positive errno value (`EAGAIN` = 11 on x86-64).
    pub errno: u32,
}

/// Value of `SYSCALL_INFLIGHT`, keyed by the thread's pid_tgid: when the
/// thread's current syscall entered the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallStart {
    /// `bpf_ktime_get_ns()` at entry; 0 once consumed by the exit.
    pub ts_ns: u64,
    /// Syscall number.
    pub nr: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// Value of `SYSCALL_CPU_SLOT` (per CPU): the syscall in flight of the thread
/// running on this CPU. Most syscalls return without the thread being
/// switched out, so entry and exit meet here without a hash lookup; when the
/// thread is switched out mid-syscall, the `sched_switch` program moves the
/// entry into `SYSCALL_INFLIGHT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuSlot {
    /// Thread (pid_tgid) whose syscall this is.
    pub pid_tgid: u64,
    /// `bpf_ktime_get_ns()` at entry.
    pub ts_ns: u64,
    pub nr: u32,
    /// 1 while the syscall is in flight and its thread on this CPU.
    pub active: u32,
}

/// A syscall slower than the configured threshold, sent through the
/// `SYSCALL_SLOW_EVENTS` ring buffer under a per-CPU rate limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowSyscallEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at entry.
    pub start_ns: u64,
    pub duration_ns: u64,
    /// Return value (negative errno on failure).
    pub ret: i64,
    pub tgid: u32,
    pub tid: u32,
    pub nr: u32,
    pub cpu: u32,
    /// Thread name, NUL-padded.
    pub comm: [u8; 16],
}

/// Per-CPU state of the slow-event rate limiter.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateWindow {
    /// Current one-second window (`ktime / 1e9`).
    pub window: u64,
    /// Events sent in that window.
    pub sent: u64,
}

/// Converts nanoseconds to units of 2^-30 s, rounding up, without overflow for
/// any `u64` input. `units = ceil(ns * 2^30 / 10^9) = ceil(ns * 2^21 / 5^9)`.
#[inline(always)]
pub fn ns_to_units_ceil(ns: u64) -> u64 {
    const FIVE_9: u64 = 1_953_125; // 5^9; 10^9 = 2^9 * 5^9
    let q = ns / FIVE_9;
    let r = ns % FIVE_9;
    // r < 2^21, so r << 21 < 2^42: no overflow.
    (q << 21) + (r << 21).div_ceil(FIVE_9)
}

/// Largest duration in ns that belongs in slot `s` or below:
/// `floor(10^9 * 2^(s-30))`, computed with shifts only (no overflow for
/// `s <= 64`, since 10^9 < 2^30).
#[inline(always)]
pub fn slot_upper_ns(s: u32) -> u64 {
    const NS_PER_SEC: u64 = 1_000_000_000;
    if s <= 30 {
        (NS_PER_SEC << s) >> 30
    } else {
        NS_PER_SEC << (s - 30)
    }
}

/// Histogram slot of a duration in nanoseconds (see the module docs).
///
/// Equivalent to `bit_length(ns_to_units_ceil(ns) - 1)`, without division:
/// a duration lies in slot `s` iff `slot_upper_ns(s-1) < ns <= slot_upper_ns(s)`.
/// Since `slot_upper_ns(s)` is about `0.93 * 2^s`, a duration with
/// `b = bit_length(ns)` lies in slot `b` or `b + 1`; one comparison decides.
#[inline(always)]
pub fn slot_of_ns(ns: u64) -> usize {
    if ns == 0 {
        return 0;
    }
    let b = 64 - ns.leading_zeros();
    let slot = if ns <= slot_upper_ns(b) { b } else { b + 1 } as usize;
    if slot >= HIST_SLOTS {
        HIST_SLOTS - 1
    } else {
        slot
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for SyscallKey {}
    unsafe impl aya::Pod for SyscallStats {}
    unsafe impl aya::Pod for SyscallErrorKey {}
    unsafe impl aya::Pod for SyscallStart {}
    unsafe impl aya::Pod for CpuSlot {}
    unsafe impl aya::Pod for SlowSyscallEvent {}
    unsafe impl aya::Pod for RateWindow {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upper boundary in seconds of slot `s` is 2^(s-30).
    fn upper_s(slot: usize) -> f64 {
        2f64.powi(slot as i32 - 30)
    }

    #[test]
    fn slots_match_power_of_two_seconds() {
        // Just above a boundary goes to the next slot; exactly at it stays.
        for slot in 1..HIST_SLOTS - 1 {
            let upper_ns = upper_s(slot) * 1e9;
            // Largest integer ns that is <= boundary, and the next one.
            let at = upper_ns.floor() as u64;
            let above = at + 1;
            assert_eq!(slot_of_ns(at), slot, "ns={at} (boundary {upper_ns})");
            assert_eq!(
                slot_of_ns(above),
                slot + 1,
                "ns={above} (boundary {upper_ns})"
            );
        }
    }

    #[test]
    fn examples() {
        assert_eq!(slot_of_ns(0), 0);
        assert_eq!(slot_of_ns(1), 1); // 1 ns = 1.07 units: (1, 2] units
        // 130 ms is in (2^-3, 2^-2] s = slot 28.
        assert_eq!(slot_of_ns(130_000_000), 28);
        assert_eq!(slot_of_ns(125_000_000), 27); // exactly 2^-3 s
        assert_eq!(slot_of_ns(1_000_000_000), 30); // exactly 1 s
        assert_eq!(slot_of_ns(1_000_000_001), 31);
        assert_eq!(slot_of_ns(u64::MAX), HIST_SLOTS - 1);
    }

    /// The shift-only slot equals the definition through units of 2^-30 s.
    #[test]
    fn slot_matches_units_definition() {
        let by_units = |ns: u64| {
            let units = ns_to_units_ceil(ns);
            if units <= 1 {
                0
            } else {
                ((64 - (units - 1).leading_zeros()) as usize).min(HIST_SLOTS - 1)
            }
        };
        let mut ns = 0u64;
        while ns < u64::MAX / 3 {
            for probe in [ns.saturating_sub(1), ns, ns + 1] {
                assert_eq!(slot_of_ns(probe), by_units(probe), "ns={probe}");
            }
            ns = ns + ns / 4 + 1;
        }
        for s in 0..64 {
            let t = slot_upper_ns(s);
            for probe in [t.saturating_sub(1), t, t + 1] {
                assert_eq!(
                    slot_of_ns(probe),
                    by_units(probe),
                    "ns={probe} near slot {s}"
                );
            }
        }
    }

    #[test]
    fn units_ceil_is_exact() {
        for ns in [
            0u64,
            1,
            2,
            999,
            1_000_000_000,
            123_456_789_012,
            u64::MAX / 4,
        ] {
            let exact = (ns as u128) * (1u128 << 30);
            let want = exact.div_ceil(1_000_000_000) as u64;
            assert_eq!(ns_to_units_ceil(ns), want, "ns={ns}");
        }
    }
}
