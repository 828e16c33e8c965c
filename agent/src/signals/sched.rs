//! Run-queue delay and context switches, per process and per cgroup.
//!
//! Kernel side (`agent-ebpf/src/sched.rs`): `sched_switch` as a BTF
//! tracepoint, reading the kernel's own per-task wait accounting
//! (`sched_info`); else `sched_wakeup`, `sched_wakeup_new` and
//! `sched_switch` as raw tracepoints, timing waits itself. Task fields are
//! located through the running kernel's BTF.
//!
//! Metrics:
//! - `hostscope.cpu.runqueue.delay`: exponential histogram (scale 0, `s`) of
//!   the time from becoming runnable to running, on each process's resource
//!   and on each cgroup's; kernel threads together on the host's resource;
//! - `process.context_switches` (`{context_switch}`), with
//!   `process.context_switch.type` = `voluntary` / `involuntary`, counted as
//!   the kernel counts `nvcsw` / `nivcsw`.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    Btf, Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
};
use hostscope_common::sched::{PreemptKey, RunqStats, SchedOffsets, drop_reason};
use opentelemetry_proto::tonic::metrics::v1::Metric;
use thiserror::Error;
use tracing::{debug, info};

use crate::{
    btf::{BtfError, KernelBtf},
    config::HookPreference,
    ebpf::{AttachError, Attached, attach_tracepoint, take_map, unload},
    identity::{ProcessCache, ProcessInfo},
    otlp::{self, Window},
    signals::Collected,
};

const DROP_REASONS: [&str; drop_reason::COUNT as usize] = [
    "sched_stats_map_full",
    "sched_start_map_full",
    "sched_task_storage_unavailable",
    "sched_preemptions_map_full",
];

#[derive(Debug, Error)]
pub enum SchedError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Map(#[from] crate::ebpf::TakeMapError),
}

/// Locates the task fields the sched programs read. `loaded_ns` is now on
/// `CLOCK_MONOTONIC`. The BTF design (`info_valid`) also needs
/// `sched_info.pcount` followed by `run_delay` and `start_time`, and a
/// kernel that keeps `sched_info` (see [`kernel_keeps_sched_info`]);
/// without them only the raw design is usable, and the reason is returned
/// with the offsets.
pub fn resolve_offsets(
    btf: &KernelBtf,
    loaded_ns: u64,
) -> Result<(SchedOffsets, Option<String>), BtfError> {
    let mut o = SchedOffsets {
        task_pid: btf.offset_of("task_struct", "pid")?,
        task_tgid: btf.offset_of("task_struct", "tgid")?,
        valid: 1,
        loaded_ns,
        ..Default::default()
    };
    match btf.cgroup_chain() {
        Ok(c) => {
            o.cgroup = c;
            o.cgroup_valid = 1;
        }
        Err(e) => info!("sched: preemptions are not attributed to cgroups: {e}"),
    }
    let info = (|| -> Result<(u32, u32), String> {
        let pcount = btf
            .offset_of("task_struct", "sched_info.pcount")
            .map_err(|e| e.to_string())?;
        let run_delay = btf
            .offset_of("task_struct", "sched_info.run_delay")
            .map_err(|e| e.to_string())?;
        if run_delay != pcount + 8 {
            return Err(format!(
                "sched_info.run_delay is at {run_delay}, not right after pcount at {pcount}"
            ));
        }
        let start = btf
            .offset_of("task_struct", "start_time")
            .map_err(|e| e.to_string())?;
        kernel_keeps_sched_info()?;
        Ok((pcount, start))
    })();
    match info {
        Ok((pcount, start)) => {
            o.sched_info = pcount;
            o.task_start_time = start;
            o.info_valid = 1;
            Ok((o, None))
        }
        Err(why) => Ok((o, Some(why))),
    }
}

/// Whether the kernel keeps per-task wait accounting: this process has
/// got a CPU after waiting at least once (its start), so `pcount`, the third
/// figure of `/proc/self/schedstat`, is non-zero unless the kernel does not
/// count (`CONFIG_SCHED_INFO` off, or, before Linux 5.14, neither
/// schedstats nor delay accounting on).
fn kernel_keeps_sched_info() -> Result<(), String> {
    let s = std::fs::read_to_string("/proc/self/schedstat")
        .map_err(|e| format!("/proc/self/schedstat: {e}"))?;
    match s.split_whitespace().nth(2).map(str::parse::<u64>) {
        Some(Ok(n)) if n > 0 => Ok(()),
        _ => Err(format!(
            "the kernel does not count waits per task (/proc/self/schedstat: {:?})",
            s.trim()
        )),
    }
}

/// The attached sched signal.
pub struct Sched {
    stats: PerCpuHashMap<MapData, u32, RunqStats>,
    preemptions: PerCpuHashMap<MapData, PreemptKey, u64>,
    /// Preemptor cgroup ids to paths, kept once resolved so a series'
    /// attribute never changes (`unknown` when the cgroup was gone before
    /// it could be resolved).
    preemptor_paths: StdHashMap<u64, String>,
    cgroup_paths: CgroupPaths,
    drops: PerCpuArray<MapData, u64>,
    pub programs: Vec<Attached>,
    attached_unix_nano: u64,
    /// Per process: whether it is a kernel thread, its cgroup v2 path, and
    /// its totals at the last collection (to add the change to its cgroup).
    seen: StdHashMap<u32, Seen>,
    /// Cumulative totals per cgroup path, and of all kernel threads.
    by_cgroup: BTreeMap<String, RunqStats>,
    kthreads: RunqStats,
    /// Cumulative involuntary switches by preemptor cgroup path, per
    /// cgroup path and of all kernel threads.
    preempted_by_cgroup: BTreeMap<String, BTreeMap<String, u64>>,
    preempted_kthreads: BTreeMap<String, u64>,
    /// Processes seen gone last interval: removed after this one.
    dying: Vec<u32>,
}

struct Seen {
    kthread: bool,
    cgroup: Option<String>,
    last: RunqStats,
    /// Involuntary switches by preemptor cgroup id at the last collection.
    last_preempted: StdHashMap<u64, u64>,
}

/// Attaches the raw-tracepoint design's three hooks, the wake-ups first
/// (a switch with no recorded wake-up is simply not timed); on failure
/// detaches what it had attached.
fn attach_raw(ebpf: &mut Ebpf, btf: Option<&Btf>) -> Result<Vec<Attached>, SchedError> {
    let mut programs: Vec<Attached> = Vec::new();
    for (label, tp, r) in [
        ("sched/sched_wakeup", "sched_wakeup", "sched_wakeup_raw"),
        (
            "sched/sched_wakeup_new",
            "sched_wakeup_new",
            "sched_wakeup_new_raw",
        ),
        ("sched/sched_switch", "sched_switch", "sched_switch_raw"),
    ] {
        match attach_tracepoint(ebpf, btf, HookPreference::RawTp, label, tp, "", r) {
            Ok(a) => programs.push(a),
            Err(e) => {
                for p in &programs {
                    unload(ebpf, &p.program);
                }
                return Err(e.into());
            }
        }
    }
    Ok(programs)
}

/// Attaches the BTF design: `sched_switch` alone.
fn attach_btf(ebpf: &mut Ebpf, btf: Option<&Btf>) -> Result<Vec<Attached>, SchedError> {
    Ok(vec![attach_tracepoint(
        ebpf,
        btf,
        HookPreference::TpBtf,
        "sched/sched_switch",
        "sched_switch",
        "sched_switch_btf",
        "",
    )?])
}

impl Sched {
    /// Attaches the BTF design where the kernel offers it (BTF tracepoints,
    /// task storage and `sched_info`: `no_info` is why not, if not), else
    /// the raw design, saying why. On failure nothing stays attached.
    pub fn start(
        ebpf: &mut Ebpf,
        btf: Option<&Btf>,
        pref: HookPreference,
        no_info: Option<&str>,
        now_unix_nano: u64,
    ) -> Result<Self, SchedError> {
        let programs = match (pref, btf, no_info) {
            (HookPreference::RawTp, _, _) => attach_raw(ebpf, btf)?,
            (HookPreference::TpBtf, _, Some(why)) => {
                return Err(AttachError {
                    program: "sched_switch_btf".into(),
                    tracepoint: "sched_switch".into(),
                    reason: format!(
                        "BTF tracepoint: it reads the kernel's sched_info, and {why} \
                         (--hook-type tp-btf allows no fallback)"
                    ),
                }
                .into());
            }
            (HookPreference::TpBtf, _, None) => attach_btf(ebpf, btf)?,
            (HookPreference::Auto, Some(_), None) => match attach_btf(ebpf, btf) {
                Ok(p) => p,
                Err(e) => {
                    // Kernels 5.5-5.11 have BTF tracepoints but no task
                    // storage for them: the verifier refuses the helper.
                    info!("sched: {e}; using raw tracepoints on all three hooks instead");
                    attach_raw(ebpf, btf)?
                }
            },
            (HookPreference::Auto, None, _) => attach_raw(ebpf, btf)?,
            (HookPreference::Auto, Some(_), Some(why)) => {
                info!(
                    "sched: the BTF tracepoint reads the kernel's own per-task wait accounting \
                     (sched_info), and {why}; timing waits with raw tracepoints on all three \
                     hooks instead"
                );
                attach_raw(ebpf, btf)?
            }
        };
        Ok(Self {
            stats: take_map(ebpf, "SCHED_STATS")?,
            preemptions: take_map(ebpf, "SCHED_PREEMPTIONS")?,
            preemptor_paths: StdHashMap::new(),
            cgroup_paths: CgroupPaths::discover(),
            drops: take_map(ebpf, "SCHED_DROPS")?,
            programs,
            attached_unix_nano: now_unix_nano,
            seen: StdHashMap::new(),
            by_cgroup: BTreeMap::new(),
            kthreads: RunqStats::ZERO,
            preempted_by_cgroup: BTreeMap::new(),
            preempted_kthreads: BTreeMap::new(),
            dying: Vec::new(),
        })
    }

    /// Drains the map into `out`: per process (kernel threads together on
    /// the host's resource), and per cgroup as the running sum of its
    /// processes' changes (so a cgroup's counters never go back when one of
    /// its processes exits).
    pub fn collect(&mut self, now_unix_nano: u64, cache: &mut ProcessCache, out: &mut Collected) {
        let per_pid: Vec<(u32, RunqStats)> = self
            .stats
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, sum(&v)))
            .collect();
        let mut preempted: StdHashMap<u32, StdHashMap<u64, u64>> = StdHashMap::new();
        for (k, v) in self.preemptions.iter().filter_map(Result::ok) {
            *preempted
                .entry(k.tgid)
                .or_default()
                .entry(k.cgroup_id)
                .or_default() += v.iter().sum::<u64>();
        }
        let mut gone = Vec::new();
        for (pid, s) in per_pid {
            let seen = self.seen.entry(pid).or_insert_with(|| Seen {
                kthread: is_kthread(pid),
                cgroup: cgroup_v2_path(pid),
                last: RunqStats::ZERO,
                last_preempted: StdHashMap::new(),
            });
            let delta = diff(&s, &seen.last);
            seen.last = s;
            // Involuntary switches by preemptor path: cumulative, and the
            // change since the last collection.
            let mut by_path: BTreeMap<String, u64> = BTreeMap::new();
            let mut by_path_delta: BTreeMap<String, u64> = BTreeMap::new();
            for (id, n) in preempted.remove(&pid).unwrap_or_default() {
                let path = self
                    .preemptor_paths
                    .entry(id)
                    .or_insert_with(|| {
                        self.cgroup_paths
                            .path_of(id)
                            .unwrap_or_else(|| "unknown".into())
                    })
                    .clone();
                let before = seen.last_preempted.insert(id, n).unwrap_or(0);
                *by_path_delta.entry(path.clone()).or_default() += n.saturating_sub(before);
                *by_path.entry(path).or_default() += n;
            }
            if seen.kthread {
                add(&mut self.kthreads, &delta);
                add_counts(&mut self.preempted_kthreads, &by_path_delta);
                continue;
            }
            if let Some(path) = &seen.cgroup {
                add(
                    self.by_cgroup
                        .entry(path.clone())
                        .or_insert(RunqStats::ZERO),
                    &delta,
                );
                add_counts(
                    self.preempted_by_cgroup.entry(path.clone()).or_default(),
                    &by_path_delta,
                );
            }
            let info = identity(cache, pid);
            if !cache.is_alive(&info) {
                gone.push(pid);
            }
            let w = Window {
                start_unix_nano: self.attached_unix_nano.max(info.creation_time_unix_nano),
                time_unix_nano: now_unix_nano,
            };
            let m = &mut out.process(&info).metrics;
            m.extend(metrics(&s, w));
            m.extend(preemption_metric(&by_path, w));
        }
        let w = Window {
            start_unix_nano: self.attached_unix_nano,
            time_unix_nano: now_unix_nano,
        };
        out.host.extend(metrics(&self.kthreads, w));
        out.host
            .extend(preemption_metric(&self.preempted_kthreads, w));
        for (path, s) in &self.by_cgroup {
            let m = out.cgroups.entry(path.clone()).or_default();
            m.extend(metrics(s, w));
            if let Some(p) = self.preempted_by_cgroup.get(path) {
                m.extend(preemption_metric(p, w));
            }
        }
        self.self_metrics(w, out);
        // Removed one interval after they were seen gone (exported once
        // more): a switch counted between this read and the exit is kept.
        let dying = std::mem::replace(&mut self.dying, gone);
        if !dying.is_empty() {
            let keys: Vec<PreemptKey> = self
                .preemptions
                .keys()
                .filter_map(Result::ok)
                .filter(|k| dying.contains(&k.tgid))
                .collect();
            for k in keys {
                let _ = self.preemptions.remove(&k);
            }
        }
        for pid in dying {
            let _ = self.stats.remove(&pid);
            self.seen.remove(&pid);
            self.dying.retain(|p| *p != pid);
        }
    }

    fn self_metrics(&self, w: Window, out: &mut Collected) {
        let points = DROP_REASONS
            .iter()
            .enumerate()
            .map(|(i, reason)| {
                let n: u64 = self
                    .drops
                    .get(&(i as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                otlp::int_point(vec![otlp::kv_str("hostscope.drop.reason", *reason)], w, n)
            })
            .collect();
        out.agent.push(otlp::counter_metric(
            "hostscope.agent.dropped",
            "Measurements lost, by where they were lost",
            "{event}",
            points,
        ));
    }
}

fn sum(values: &PerCpuValues<RunqStats>) -> RunqStats {
    let mut t = RunqStats::ZERO;
    for v in values.iter() {
        t.count += v.count;
        t.sum_ns += v.sum_ns;
        t.voluntary += v.voluntary;
        t.involuntary += v.involuntary;
        for (a, b) in t.slots.iter_mut().zip(v.slots.iter()) {
            *a += b;
        }
    }
    t
}

fn diff(now: &RunqStats, before: &RunqStats) -> RunqStats {
    let mut d = RunqStats::ZERO;
    d.count = now.count.saturating_sub(before.count);
    d.sum_ns = now.sum_ns.saturating_sub(before.sum_ns);
    d.voluntary = now.voluntary.saturating_sub(before.voluntary);
    d.involuntary = now.involuntary.saturating_sub(before.involuntary);
    for ((d, n), b) in d.slots.iter_mut().zip(&now.slots).zip(&before.slots) {
        *d = n.saturating_sub(*b);
    }
    d
}

fn add(total: &mut RunqStats, d: &RunqStats) {
    total.count += d.count;
    total.sum_ns += d.sum_ns;
    total.voluntary += d.voluntary;
    total.involuntary += d.involuntary;
    for (t, x) in total.slots.iter_mut().zip(&d.slots) {
        *t += x;
    }
}

fn add_counts(total: &mut BTreeMap<String, u64>, d: &BTreeMap<String, u64>) {
    for (k, n) in d {
        *total.entry(k.clone()).or_default() += n;
    }
}

/// `hostscope.cpu.preemptions` by preemptor cgroup path (none if empty).
fn preemption_metric(by_path: &BTreeMap<String, u64>, w: Window) -> Option<Metric> {
    (!by_path.is_empty()).then(|| {
        otlp::counter_metric(
            "hostscope.cpu.preemptions",
            "Involuntary context switches, by the cgroup of the task that got the CPU",
            "{context_switch}",
            by_path
                .iter()
                .map(|(path, n)| {
                    otlp::int_point(
                        vec![otlp::kv_str("hostscope.preemptor.cgroup", path.clone())],
                        w,
                        *n,
                    )
                })
                .collect(),
        )
    })
}

/// `PF_KTHREAD` in `/proc/<pid>/stat`'s flags (field 9).
fn is_kthread(pid: u32) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.to_string();
            after.split_whitespace().nth(6)?.parse::<u64>().ok()
        })
        .is_some_and(|f| f & PF_KTHREAD != 0)
}

/// The cgroup v2 path of a process (the `0::` line of /proc/<pid>/cgroup).
fn cgroup_v2_path(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .filter(|p| p != "/")
}

fn metrics(s: &RunqStats, w: Window) -> Vec<Metric> {
    vec![
        otlp::exp_histogram_metric(
            "hostscope.cpu.runqueue.delay",
            "Time from becoming runnable to running on a CPU",
            "s",
            vec![otlp::exp_histogram_point(
                vec![],
                w,
                s.count,
                s.sum_ns,
                &s.slots,
            )],
        ),
        otlp::counter_metric(
            "process.context_switches",
            "Times the process's threads were switched off a CPU",
            "{context_switch}",
            vec![
                otlp::int_point(
                    vec![otlp::kv_str("process.context_switch.type", "voluntary")],
                    w,
                    s.voluntary,
                ),
                otlp::int_point(
                    vec![otlp::kv_str("process.context_switch.type", "involuntary")],
                    w,
                    s.involuntary,
                ),
            ],
        ),
    ]
}

fn identity(cache: &mut ProcessCache, pid: u32) -> Arc<ProcessInfo> {
    cache.get(pid).unwrap_or_else(|| {
        Arc::new(ProcessInfo {
            pid,
            executable_name: String::new(),
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

/// cgroup v2 ids (directory inode numbers) to paths relative to the cgroup2
/// mount, re-read when an unknown id shows up.
pub struct CgroupPaths {
    root: Option<PathBuf>,
    by_id: StdHashMap<u64, String>,
}

impl CgroupPaths {
    /// Finds the cgroup2 mount (`/sys/fs/cgroup` on pure v2 hosts,
    /// `/sys/fs/cgroup/unified` on hybrid ones).
    pub fn discover() -> Self {
        let root = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| cgroup2_mount(&m));
        if root.is_none() {
            debug!("no cgroup2 mount: run-queue delay per cgroup is off");
        }
        Self {
            root,
            by_id: StdHashMap::new(),
        }
    }

    /// The path of cgroup `id` (re-reading the tree once if unknown).
    pub fn path_of(&mut self, id: u64) -> Option<String> {
        self.path(id)
    }

    fn path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        let root = self.root.clone()?;
        self.by_id = walk(&root);
        self.by_id.get(&id).cloned()
    }
}

/// Mount point of the cgroup2 file system in `/proc/self/mountinfo` text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
    })
}

/// Every cgroup directory under `root`: inode -> path relative to `root`
/// (`/` for the root itself).
pub(crate) fn walk(root: &Path) -> StdHashMap<u64, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = StdHashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        let rel = dir
            .strip_prefix(root)
            .map_or_else(|_| "/".to_string(), |r| format!("/{}", r.to_string_lossy()));
        out.insert(meta.ino(), rel);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                      37 35 0:32 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/sda rw\n"), None);
    }

    #[test]
    fn offsets_resolve_on_this_kernel() {
        let Ok(btf) = KernelBtf::load() else {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux");
            return;
        };
        let (o, no_info) = resolve_offsets(&btf, 1).expect("every field the sched programs read");
        assert_eq!(o.valid, 1);
        assert_eq!(no_info, None, "this kernel keeps sched_info");
        assert_eq!(o.info_valid, 1);
        assert_eq!(o.loaded_ns, 1);
        assert_ne!(o.task_pid, o.task_tgid);
    }
}
