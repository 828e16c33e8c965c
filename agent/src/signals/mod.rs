//! One module per signal, each mirroring the kernel module of the same name in
//! `agent-ebpf/src/`. A signal attaches its programs, and every interval drains
//! its maps into a [`Collected`] batch.

pub mod cgroups;
pub mod oom;
pub mod procs;
pub mod sched;
pub mod syscalls;
pub mod tcp;

use std::{collections::BTreeMap, sync::Arc};

use opentelemetry_proto::tonic::{metrics::v1::Metric, trace::v1::Span};

use crate::identity::ProcessInfo;

/// What one interval produced, grouped by the resource it belongs to.
#[derive(Default)]
pub struct Collected {
    /// Per-process metrics and spans, keyed by pid.
    pub processes: BTreeMap<u32, ProcessBatch>,
    /// The agent's own telemetry (drops, map fill, attached programs).
    pub agent: Vec<Metric>,
    /// Measurements of the host that no process owns (e.g. retransmits on
    /// sockets whose owner was never in view).
    pub host: Vec<Metric>,
    pub host_spans: Vec<Span>,
    /// Per-cgroup metrics, by path relative to the cgroup hierarchy's root.
    pub cgroups: BTreeMap<String, Vec<Metric>>,
    /// Per-process series summed per executable or container (see
    /// `crate::budget`).
    pub groups: Vec<crate::budget::GroupBatch>,
}

pub struct ProcessBatch {
    pub info: Arc<ProcessInfo>,
    pub metrics: Vec<Metric>,
    pub spans: Vec<Span>,
}

impl Collected {
    /// The batch of `info`'s process, created on first use.
    pub fn process(&mut self, info: &Arc<ProcessInfo>) -> &mut ProcessBatch {
        self.processes
            .entry(info.pid)
            .or_insert_with(|| ProcessBatch {
                info: info.clone(),
                metrics: Vec::new(),
                spans: Vec::new(),
            })
    }
}
