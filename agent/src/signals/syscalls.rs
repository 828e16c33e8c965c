//! Syscall latency, counts and errors per process and syscall.
//!
//! Kernel side (`agent-ebpf/src/syscalls.rs`): `sys_enter`/`sys_exit` as BTF
//! tracepoints, else raw tracepoints.
//!
//! Metrics (one resource per process):
//! - `hostscope.syscall.duration`: exponential histogram (scale 0, unit `s`),
//!   attribute `syscall.name`; kernel log2 buckets map 1:1 onto OTLP buckets.
//! - `hostscope.syscall.errors`: counter, attributes `syscall.name`, `error.type`.
//!
//! Spans: syscalls slower than the threshold, from the ring buffer.
//!
//! Self-telemetry: `hostscope.agent.dropped` by reason, map fill, slow events.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap, HashSet, VecDeque},
    sync::Arc,
};

use aya::{
    Btf, Ebpf,
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf},
};
use hostscope_common::syscalls::{
    SlowSyscallEvent, SyscallErrorKey, SyscallKey, SyscallStats, drop_reason,
};
use opentelemetry_proto::tonic::{
    common::v1::KeyValue,
    metrics::v1::{Exemplar, exemplar},
    trace::v1::{Span, span::SpanKind},
};
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

use crate::{
    config::{HookPreference, SyscallsConfig},
    ebpf::{AttachError, Attached, attach_tracepoint, take_map, unload},
    identity::{ProcessCache, ProcessInfo},
    otlp::{self, Window},
    signals::Collected,
};

/// Exemplars (links to slow-syscall spans) per histogram point and interval.
const MAX_EXEMPLARS: usize = 4;

/// Slow-syscall events kept between two exports; beyond it they are dropped
/// and counted.
const MAX_PENDING_EVENTS: usize = 4096;

/// Names of the drop reasons, indexed like `drop_reason`.
const DROP_REASONS: [&str; drop_reason::COUNT as usize] = [
    "syscall_stats_map_full",
    "syscall_errors_map_full",
    "syscall_unmatched_exit",
    "syscall_slow_rate_limited",
    "syscall_slow_ringbuf_full",
    "syscall_inflight_handoff_failed",
];

#[derive(Debug, Error)]
pub enum SyscallsError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Map(#[from] crate::ebpf::TakeMapError),
    #[error("ring buffer: {0}")]
    RingBuf(#[source] std::io::Error),
}

/// The attached syscalls signal.
pub struct Syscalls {
    stats: PerCpuHashMap<MapData, SyscallKey, SyscallStats>,
    errors: PerCpuHashMap<MapData, SyscallErrorKey, u64>,
    comms: HashMap<MapData, u32, [u8; 16]>,
    /// Processes seen gone last interval: removed after this one.
    dying: HashSet<u32>,
    drops: PerCpuArray<MapData, u64>,
    events: AsyncFd<RingBuf<MapData>>,
    pending: VecDeque<SlowSyscallEvent>,
    events_received: u64,
    events_dropped_userspace: u64,
    /// What got attached, and how (sched_switch only with the fast path).
    pub programs: Vec<Attached>,
    stats_capacity: u32,
    errors_capacity: u32,
    attached_unix_nano: u64,
}

impl Syscalls {
    /// Attaches sys_enter and sys_exit (and sched_switch for the fast path)
    /// and takes the signal's maps. On failure nothing stays attached.
    pub fn start(
        ebpf: &mut Ebpf,
        btf: Option<&Btf>,
        cfg: &SyscallsConfig,
        pref: HookPreference,
        stats_capacity: u32,
        now_unix_nano: u64,
    ) -> Result<Self, SyscallsError> {
        // The fast path needs sched_switch to hand blocked syscalls over to
        // the hash map; without it, every syscall goes through the hash map.
        let switch = if cfg.fast_path {
            match attach_tracepoint(
                ebpf,
                btf,
                pref,
                "syscalls/sched_switch",
                "sched_switch",
                "syscall_sched_switch_btf",
                "syscall_sched_switch_raw",
            ) {
                Ok(a) => Some(a),
                Err(e) => {
                    warn!("syscalls: per-CPU fast path off, every syscall uses the hash map: {e}");
                    None
                }
            }
        } else {
            None
        };
        let suffix = if switch.is_some() { "" } else { "_hash" };
        // Exit before enter: an exit with no entry is merely unmatched, an entry
        // with no exit program would fill the in-flight map for nothing.
        let mut programs: Vec<Attached> = switch.into_iter().collect();
        let result = attach_tracepoint(
            ebpf,
            btf,
            pref,
            "syscalls/sys_exit",
            "sys_exit",
            &format!("sys_exit_btf{suffix}"),
            &format!("sys_exit_raw{suffix}"),
        )
        .and_then(|exit| {
            programs.push(exit);
            attach_tracepoint(
                ebpf,
                btf,
                pref,
                "syscalls/sys_enter",
                "sys_enter",
                &format!("sys_enter_btf{suffix}"),
                &format!("sys_enter_raw{suffix}"),
            )
        });
        match result {
            Ok(enter) => programs.push(enter),
            Err(e) => {
                // Nothing of a signal that cannot start whole stays attached.
                for p in &programs {
                    unload(ebpf, &p.program);
                }
                return Err(e.into());
            }
        }
        let ring: RingBuf<MapData> = take_map(ebpf, "SYSCALL_SLOW_EVENTS")?;
        Ok(Self {
            stats: take_map(ebpf, "SYSCALL_STATS")?,
            errors: take_map(ebpf, "SYSCALL_ERRORS")?,
            comms: take_map(ebpf, "PROCESS_COMM")?,
            dying: HashSet::new(),
            drops: take_map(ebpf, "SYSCALL_DROPS")?,
            // SAFETY: the RingBuf owns its map fd and is dropped with the AsyncFd.
            events: unsafe { AsyncFd::register(ring) }
                .map_err(|e| SyscallsError::RingBuf(e.into()))?,
            pending: VecDeque::new(),
            events_received: 0,
            events_dropped_userspace: 0,
            programs,
            stats_capacity,
            errors_capacity: cfg.max_error_series,
            attached_unix_nano: now_unix_nano,
        })
    }

    /// Waits until slow-syscall events are ready, then queues them.
    pub async fn drain_events(&mut self) {
        let Ok(mut guard) = self.events.readable_mut().await else {
            return;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<SlowSyscallEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a SlowSyscallEvent (repr(C), Pod).
            let ev: SlowSyscallEvent =
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<SlowSyscallEvent>()) };
            self.events_received += 1;
            if self.pending.len() >= MAX_PENDING_EVENTS {
                self.pending.pop_front();
                self.events_dropped_userspace += 1;
            }
            self.pending.push_back(ev);
        }
        guard.clear_ready();
    }

    /// Drains the maps into `out`; forgets processes that have exited once
    /// their last values are in `out`.
    pub fn collect(
        &mut self,
        now_unix_nano: u64,
        mono_to_unix: i128,
        cache: &mut ProcessCache,
        out: &mut Collected,
    ) {
        let mut by_pid: BTreeMap<u32, Vec<(u32, SyscallStats)>> = BTreeMap::new();
        let mut series = 0u64;
        for item in self.stats.iter() {
            match item {
                Ok((key, values)) => {
                    series += 1;
                    by_pid
                        .entry(key.tgid)
                        .or_default()
                        .push((key.nr, sum_stats(&values)));
                }
                Err(e) => debug!(error = %e, "SYSCALL_STATS entry vanished during iteration"),
            }
        }
        let mut errors_by_pid: BTreeMap<u32, Vec<(u32, u32, u64)>> = BTreeMap::new();
        let mut error_series = 0u64;
        // Entries that vanish mid-iteration (an exited process reclaimed) are skipped.
        for (key, values) in self.errors.iter().flatten() {
            error_series += 1;
            errors_by_pid.entry(key.tgid).or_default().push((
                key.nr,
                key.errno,
                values.iter().sum(),
            ));
        }

        let mut exemplars = self.spans(mono_to_unix, cache, out);
        let mut gone: HashSet<u32> = HashSet::new();
        let pids: BTreeSet<u32> = by_pid.keys().chain(errors_by_pid.keys()).copied().collect();
        for pid in pids {
            let info = self.identity(cache, pid);
            if !cache.is_alive(&info) {
                gone.insert(pid);
            }
            let w = Window {
                start_unix_nano: self.attached_unix_nano.max(info.creation_time_unix_nano),
                time_unix_nano: now_unix_nano,
            };
            let batch = out.process(&info);
            if let Some(stats) = by_pid.remove(&pid) {
                let points = stats
                    .iter()
                    .map(|(nr, s)| {
                        let mut p = otlp::exp_histogram_point(
                            vec![syscall_attr(*nr)],
                            w,
                            s.count,
                            s.sum_ns,
                            &s.slots,
                        );
                        p.exemplars = exemplars.remove(&(pid, *nr)).unwrap_or_default();
                        p
                    })
                    .collect();
                batch.metrics.push(otlp::exp_histogram_metric(
                    "hostscope.syscall.duration",
                    "Time from syscall entry to exit, per process and syscall",
                    "s",
                    points,
                ));
            }
            if let Some(errs) = errors_by_pid.remove(&pid) {
                let points = errs
                    .iter()
                    .map(|(nr, errno, n)| {
                        otlp::int_point(vec![syscall_attr(*nr), errno_attr(*errno)], w, *n)
                    })
                    .collect();
                batch.metrics.push(otlp::counter_metric(
                    "hostscope.syscall.errors",
                    "Syscalls that returned an error, by errno",
                    "{error}",
                    points,
                ));
            }
        }

        self.self_metrics(now_unix_nano, series, error_series, out);
        // A process seen gone is exported once more, next interval, with
        // whatever it counted between this read and its exit, and only then
        // removed: removing it now could take counts made after the read.
        let dying = std::mem::replace(&mut self.dying, gone);
        self.forget(&dying, cache);
        for pid in &dying {
            self.dying.remove(pid);
        }
    }

    /// Identity of `pid`: from procfs (cached), else, for a process that
    /// exited before we looked, the name the kernel recorded for it.
    fn identity(&self, cache: &mut ProcessCache, pid: u32) -> Arc<ProcessInfo> {
        cache.get(pid).unwrap_or_else(|| {
            let executable_name = self
                .comms
                .get(&pid, 0)
                .map(|c| crate::identity::c_str(&c))
                .unwrap_or_default();
            Arc::new(ProcessInfo {
                pid,
                executable_name,
                start_ticks: None,
                creation_time_unix_nano: 0,
                container: None,
                parent_pid: None,
                executable_path: None,
                owner: None,
                command_line: None,
            })
        })
    }

    /// Turns queued slow syscalls into spans, and returns exemplars linking
    /// them from their (process, syscall) histogram point: the slowest
    /// `MAX_EXEMPLARS` per point.
    fn spans(
        &mut self,
        mono_to_unix: i128,
        cache: &mut ProcessCache,
        out: &mut Collected,
    ) -> StdHashMap<(u32, u32), Vec<Exemplar>> {
        let mut exemplars: StdHashMap<(u32, u32), Vec<Exemplar>> = StdHashMap::new();
        let pending = std::mem::take(&mut self.pending);
        for ev in pending {
            let info = self.identity(cache, ev.tgid);
            let start = (ev.start_ns as i128 + mono_to_unix).max(0) as u64;
            let mut attributes = vec![
                syscall_attr(ev.nr),
                otlp::kv_int("thread.id", ev.tid.into()),
                otlp::kv_str("thread.name", crate::identity::c_str(&ev.comm)),
                otlp::kv_int("cpu.logical_number", ev.cpu.into()),
            ];
            if (-4095..0).contains(&ev.ret) {
                attributes.push(errno_attr((-ev.ret) as u32));
            }
            let span = Span {
                trace_id: random_bytes::<16>().to_vec(),
                span_id: random_bytes::<8>().to_vec(),
                name: syscall_name(ev.nr),
                kind: SpanKind::Internal as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: start + ev.duration_ns,
                attributes,
                ..Default::default()
            };
            let list = exemplars.entry((ev.tgid, ev.nr)).or_default();
            list.push(Exemplar {
                time_unix_nano: span.end_time_unix_nano,
                span_id: span.span_id.clone(),
                trace_id: span.trace_id.clone(),
                value: Some(exemplar::Value::AsDouble(ev.duration_ns as f64 / 1e9)),
                ..Default::default()
            });
            if list.len() > MAX_EXEMPLARS {
                // Keep the slowest.
                let fastest = list
                    .iter()
                    .enumerate()
                    .min_by(|a, b| exemplar_value(a.1).total_cmp(&exemplar_value(b.1)))
                    .map(|(i, _)| i);
                if let Some(i) = fastest {
                    list.swap_remove(i);
                }
            }
            out.process(&info).spans.push(span);
        }
        exemplars
    }

    fn self_metrics(&self, now: u64, series: u64, error_series: u64, out: &mut Collected) {
        let w = Window {
            start_unix_nano: self.attached_unix_nano,
            time_unix_nano: now,
        };
        let mut drops = [0u64; drop_reason::COUNT as usize];
        for (i, d) in drops.iter_mut().enumerate() {
            if let Ok(v) = self.drops.get(&(i as u32), 0) {
                *d = v.iter().sum();
            }
        }
        let mut points: Vec<_> = drops
            .iter()
            .zip(DROP_REASONS)
            .map(|(n, reason)| {
                otlp::int_point(vec![otlp::kv_str("hostscope.drop.reason", reason)], w, *n)
            })
            .collect();
        points.push(otlp::int_point(
            vec![otlp::kv_str(
                "hostscope.drop.reason",
                "syscall_slow_userspace_queue_full",
            )],
            w,
            self.events_dropped_userspace,
        ));
        out.agent.push(otlp::counter_metric(
            "hostscope.agent.dropped",
            "Measurements lost, by where they were lost",
            "{event}",
            points,
        ));
        out.agent.push(otlp::counter_metric(
            "hostscope.agent.slow_events",
            "Slow-syscall events received from the kernel",
            "{event}",
            vec![otlp::int_point(vec![], w, self.events_received)],
        ));
        let map = |name: &str, value: u64| {
            otlp::int_point(
                vec![otlp::kv_str("hostscope.map", name.to_string())],
                w,
                value,
            )
        };
        out.agent.push(otlp::gauge_metric(
            "hostscope.agent.map.entries",
            "Entries in a bounded kernel map",
            "{entry}",
            vec![
                map("SYSCALL_STATS", series),
                map("SYSCALL_ERRORS", error_series),
            ],
        ));
        out.agent.push(otlp::gauge_metric(
            "hostscope.agent.map.capacity",
            "Maximum entries of a bounded kernel map",
            "{entry}",
            vec![
                map("SYSCALL_STATS", self.stats_capacity.into()),
                map("SYSCALL_ERRORS", self.errors_capacity.into()),
            ],
        ));
    }

    /// Removes the kernel entries of exited processes.
    fn forget(&mut self, gone: &HashSet<u32>, cache: &mut ProcessCache) {
        if gone.is_empty() {
            return;
        }
        let keys: Vec<SyscallKey> = self
            .stats
            .keys()
            .filter_map(Result::ok)
            .filter(|k| gone.contains(&k.tgid))
            .collect();
        for k in keys {
            if let Err(e) = self.stats.remove(&k) {
                warn!(error = %e, pid = k.tgid, "could not remove an exited process from SYSCALL_STATS");
            }
        }
        let keys: Vec<SyscallErrorKey> = self
            .errors
            .keys()
            .filter_map(Result::ok)
            .filter(|k| gone.contains(&k.tgid))
            .collect();
        for k in keys {
            let _ = self.errors.remove(&k);
        }
        for pid in gone {
            let _ = self.comms.remove(pid);
            cache.forget(*pid);
        }
    }
}

fn sum_stats(values: &PerCpuValues<SyscallStats>) -> SyscallStats {
    let mut total = SyscallStats::ZERO;
    for v in values.iter() {
        total.count += v.count;
        total.errors += v.errors;
        total.sum_ns += v.sum_ns;
        for (t, s) in total.slots.iter_mut().zip(v.slots.iter()) {
            *t += s;
        }
    }
    total
}

/// Name of a syscall number of the native ABI (`read`, `getppid`, ...).
pub fn syscall_name(nr: u32) -> String {
    match syscalls::Sysno::new(nr as usize) {
        Some(s) => s.name().to_string(),
        None => format!("syscall_{nr}"),
    }
}

/// Symbolic name of an errno (`EAGAIN`), or its number when unknown.
pub fn errno_name(errno: u32) -> String {
    match syscalls::Errno::new(errno as i32).name_and_description() {
        Some((name, _)) => name.to_string(),
        None => errno.to_string(),
    }
}

fn syscall_attr(nr: u32) -> KeyValue {
    otlp::kv_str("syscall.name", syscall_name(nr))
}

fn errno_attr(errno: u32) -> KeyValue {
    otlp::kv_str("error.type", errno_name(errno))
}

fn exemplar_value(e: &Exemplar) -> f64 {
    match e.value {
        Some(exemplar::Value::AsDouble(v)) => v,
        Some(exemplar::Value::AsInt(v)) => v as f64,
        None => 0.0,
    }
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // getrandom only fails without any entropy source; an all-zero id is
    // invalid in OTLP, so fall back to a counter-derived one.
    if getrandom::fill(&mut b).is_err() {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_le_bytes();
        b[..8.min(N)].copy_from_slice(&n[..8.min(N)]);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(syscall_name(libc::SYS_getppid as u32), "getppid");
        assert_eq!(syscall_name(libc::SYS_read as u32), "read");
        assert_eq!(errno_name(libc::EAGAIN as u32), "EAGAIN");
        assert_eq!(errno_name(libc::EBADF as u32), "EBADF");
        assert_eq!(errno_name(100_000), "100000");
    }
}
