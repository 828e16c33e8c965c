//! OOM kills, from `oom/mark_victim`.
//!
//! Metrics: `hostscope.oom.kills` (counter, `{kill}`), on the victim's
//! process resource (1, in the interval after the kill, with
//! `hostscope.cgroup.path`), on the victim's cgroup resource (cumulative per
//! cgroup) and on the host resource (cumulative).

use std::{collections::BTreeMap, sync::Arc};

use aya::{
    Btf, Ebpf,
    maps::{MapData, PerCpuArray, RingBuf},
};
use hostscope_common::oom::{OomEvent, OomOffsets};
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tracing::warn;

use crate::{
    btf::{BtfError, KernelBtf},
    config::HookPreference,
    ebpf::{AttachError, Attached, attach_tracepoint, take_map},
    identity::{ProcessCache, ProcessInfo},
    otlp::{self, Window},
    signals::{Collected, sched::CgroupPaths},
};

#[derive(Debug, Error)]
pub enum OomError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(
        "the kernel's BTF has no mark_victim tracepoint (or no BTF): OOM kills are not watched"
    )]
    NoTracepoint,
    #[error(transparent)]
    Map(#[from] crate::ebpf::TakeMapError),
    #[error("ring buffer: {0}")]
    RingBuf(#[source] std::io::Error),
}

/// Which `mark_victim` the kernel has: its argument is a task (6.8+) or a pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Task,
    Pid,
}

/// The variant and the offsets the task variant needs.
pub fn resolve(btf: &KernelBtf) -> Result<(Variant, OomOffsets), OomError> {
    let args = btf
        .tracepoint_args("mark_victim")
        .ok_or(OomError::NoTracepoint)?;
    if args.first() != Some(&true) {
        return Ok((Variant::Pid, OomOffsets::default()));
    }
    let off = |s: &str, f: &str| -> Result<u32, BtfError> { btf.offset_of(s, f) };
    let o = (|| -> Result<OomOffsets, BtfError> {
        Ok(OomOffsets {
            task_pid: off("task_struct", "pid")?,
            task_tgid: off("task_struct", "tgid")?,
            task_comm: off("task_struct", "comm")?,
            valid: 1,
            cgroup: btf.cgroup_chain()?,
        })
    })();
    match o {
        Ok(o) => Ok((Variant::Task, o)),
        Err(e) => {
            warn!("OOM kills: task fields not found ({e}); only pids are reported");
            Ok((Variant::Pid, OomOffsets::default()))
        }
    }
}

struct Victim {
    info: Arc<ProcessInfo>,
    cgroup: String,
}

pub struct Oom {
    events: AsyncFd<RingBuf<MapData>>,
    drops: PerCpuArray<MapData, u64>,
    pub programs: Vec<Attached>,
    /// Victims since the last export, with their identity read on arrival.
    victims: Vec<Victim>,
    by_cgroup: BTreeMap<String, u64>,
    total: u64,
    paths: CgroupPaths,
    attached_unix_nano: u64,
}

impl Oom {
    pub fn start(
        ebpf: &mut Ebpf,
        btf: Option<&Btf>,
        pref: HookPreference,
        variant: Variant,
        now_unix_nano: u64,
    ) -> Result<Self, OomError> {
        let (b, r) = match variant {
            Variant::Task => ("oom_victim_task_btf", "oom_victim_task_raw"),
            Variant::Pid => ("oom_victim_pid_btf", "oom_victim_pid_raw"),
        };
        let a = attach_tracepoint(ebpf, btf, pref, "oom/mark_victim", "mark_victim", b, r)?;
        let ring: RingBuf<MapData> = take_map(ebpf, "OOM_EVENTS")?;
        Ok(Self {
            // SAFETY: the RingBuf owns its map fd and is dropped with the AsyncFd.
            events: unsafe { AsyncFd::register(ring) }.map_err(|e| OomError::RingBuf(e.into()))?,
            drops: take_map(ebpf, "OOM_DROPS")?,
            programs: vec![a],
            victims: Vec::new(),
            by_cgroup: BTreeMap::new(),
            total: 0,
            paths: CgroupPaths::discover(),
            attached_unix_nano: now_unix_nano,
        })
    }

    /// Waits for victims and records who they were while they still exist.
    pub async fn drain_events(&mut self, cache: &mut ProcessCache) {
        let Ok(mut guard) = self.events.readable_mut().await else {
            return;
        };
        let mut got = Vec::new();
        {
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() >= size_of::<OomEvent>() {
                    // SAFETY: the kernel wrote an OomEvent (repr(C), Pod).
                    got.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<OomEvent>()) });
                }
            }
        }
        guard.clear_ready();
        for ev in got {
            let info = cache.get(ev.tgid).unwrap_or_else(|| {
                Arc::new(ProcessInfo {
                    pid: ev.tgid,
                    executable_name: crate::identity::c_str(&ev.comm),
                    start_ticks: None,
                    creation_time_unix_nano: 0,
                    container: None,
                    parent_pid: None,
                    executable_path: None,
                    owner: None,
                    command_line: None,
                })
            });
            let cgroup = if ev.cgroup_id != 0 {
                self.paths.path_of(ev.cgroup_id)
            } else {
                None
            }
            .or_else(|| cgroup_v2_of(ev.tgid))
            .unwrap_or_default();
            warn!(
                pid = ev.tgid,
                name = %info.executable_name,
                cgroup = %cgroup,
                "OOM kill"
            );
            self.total += 1;
            *self.by_cgroup.entry(cgroup.clone()).or_default() += 1;
            self.victims.push(Victim { info, cgroup });
        }
    }

    pub fn collect(&mut self, now_unix_nano: u64, out: &mut Collected) {
        let w = Window {
            start_unix_nano: self.attached_unix_nano,
            time_unix_nano: now_unix_nano,
        };
        let kills = |attrs, n| {
            otlp::counter_metric(
                "hostscope.oom.kills",
                "Processes killed by the OOM killer",
                "{kill}",
                vec![otlp::int_point(attrs, w, n)],
            )
        };
        for v in std::mem::take(&mut self.victims) {
            let attrs = vec![otlp::kv_str("hostscope.cgroup.path", v.cgroup.clone())];
            out.process(&v.info).metrics.push(kills(attrs, 1));
        }
        for (path, n) in &self.by_cgroup {
            if !path.is_empty() {
                out.cgroups
                    .entry(path.clone())
                    .or_default()
                    .push(kills(vec![], *n));
            }
        }
        out.host.push(kills(vec![], self.total));
        let lost: u64 = self.drops.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0);
        out.agent.push(otlp::counter_metric(
            "hostscope.agent.dropped",
            "Measurements lost, by where they were lost",
            "{event}",
            vec![otlp::int_point(
                vec![otlp::kv_str("hostscope.drop.reason", "oom_ringbuf_full")],
                w,
                lost,
            )],
        ));
    }
}

/// The cgroup v2 path of a process (`0::/path` in /proc/<pid>/cgroup).
fn cgroup_v2_of(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}
