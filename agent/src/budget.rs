//! Cardinality budgets and granularity: which per-process series reach the
//! exporters as they are, which are summed per executable or per container,
//! and which fold into one overflow series per metric.
//!
//! A *series* is a (resource, metric, attribute set). The first
//! `max_series_per_metric` series of a metric (and `max_series` of all
//! metrics together) are admitted; a series keeps its place while its
//! source reports it and gives it up the interval after the source stops
//! (a process that exits is exported once more, then forgotten). Beyond
//! the limits a series is folded into the metric's overflow series on the
//! host's resource, whose only attribute is `otel.metric.overflow = true`,
//! as the OpenTelemetry metrics SDK specification describes for its
//! cardinality limits. How many series were folded is itself exported
//! (`hostscope.agent.series.folded`), with how many were exported on their
//! own (`hostscope.agent.series`).
//!
//! With a coarser granularity a signal's process series are summed per
//! executable (name and container) or per container (processes outside
//! containers: per executable) instead. Summed and overflow series stay
//! monotonic when their members come and go: each keeps a running total of
//! the increases of its members' cumulative values since the member was
//! last seen, as the per-cgroup figures of the sched signal do.
//!
//! Written here rather than taken from the OpenTelemetry SDK: the SDK's
//! limit applies to attribute sets inside one instrument, while hostscope's
//! series are mostly told apart by their resource (the process), and its
//! values arrive already aggregated (cumulative, from kernel maps).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher},
    sync::Arc,
};

use opentelemetry_proto::tonic::{
    common::v1::{KeyValue, any_value},
    metrics::v1::{
        ExponentialHistogramDataPoint, Metric, NumberDataPoint, exponential_histogram_data_point,
        metric::Data, number_data_point,
    },
};

use crate::{
    identity::ProcessInfo,
    otlp::{self, Window},
    signals::Collected,
};

/// How finely a signal's per-process measurements are exported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// One resource per process (pid and start time).
    #[default]
    Process,
    /// Summed per executable name (and container).
    Executable,
    /// Summed per container; processes outside containers per executable.
    Container,
}

/// The signals whose per-process series a granularity applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignalKind {
    Syscalls,
    Tcp,
    Sched,
}

impl SignalKind {
    /// The signal a per-process metric comes from, by its name.
    pub fn of_metric(name: &str) -> SignalKind {
        if name.starts_with("hostscope.syscall.") {
            SignalKind::Syscalls
        } else if name.starts_with("hostscope.tcp.") {
            SignalKind::Tcp
        } else {
            SignalKind::Sched
        }
    }
}

/// The limits and granularities, from the configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetConfig {
    /// Series of one metric exported on their own; beyond it, overflow.
    pub max_series_per_metric: u32,
    /// Series of all per-process metrics together.
    pub max_series: u32,
    pub syscalls: Granularity,
    pub tcp: Granularity,
    pub sched: Granularity,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            max_series_per_metric: 25_000,
            max_series: 100_000,
            syscalls: Granularity::Process,
            tcp: Granularity::Process,
            sched: Granularity::Process,
        }
    }
}

impl BudgetConfig {
    fn granularity(&self, s: SignalKind) -> Granularity {
        match s {
            SignalKind::Syscalls => self.syscalls,
            SignalKind::Tcp => self.tcp,
            SignalKind::Sched => self.sched,
        }
    }
}

/// Where a process's series goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Target {
    /// Its own process's resource: (pid, start ticks).
    Process(u32, u64),
    /// Summed per executable: (name, container id).
    Executable(String, Option<String>),
    /// Summed per container id.
    Container(String),
    /// The metric's overflow series.
    Overflow,
}

/// A summed (or overflow) resource, for the agent to name.
#[derive(Clone, Debug)]
pub enum GroupKind {
    /// `process.executable.name` and, if any, the container of `info`.
    Executable,
    /// The container of `info`.
    Container,
}

/// A resource of summed series.
pub struct GroupBatch {
    pub kind: GroupKind,
    /// A member process, whose executable name and container name the group.
    pub info: Arc<ProcessInfo>,
    pub metrics: Vec<Metric>,
}

/// A cumulative value that can be differenced and summed.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Int(u64),
    Double(f64),
    Hist(Hist),
}

/// An exponential histogram's counts (one scale throughout: hostscope's
/// histograms are all scale 0).
#[derive(Clone, Debug, Default, PartialEq)]
struct Hist {
    scale: i32,
    count: u64,
    sum: f64,
    zero_count: u64,
    offset: i32,
    counts: Vec<u64>,
}

impl Hist {
    fn from_point(p: &ExponentialHistogramDataPoint) -> Self {
        let (offset, counts) = p
            .positive
            .as_ref()
            .map(|b| (b.offset, b.bucket_counts.clone()))
            .unwrap_or_default();
        Self {
            scale: p.scale,
            count: p.count,
            sum: p.sum.unwrap_or(0.0),
            zero_count: p.zero_count,
            offset,
            counts,
        }
    }

    fn get(&self, i: i32) -> u64 {
        usize::try_from(i - self.offset)
            .ok()
            .and_then(|k| self.counts.get(k).copied())
            .unwrap_or(0)
    }

    /// `self - before`, bucket by bucket (0 where a count went back).
    fn minus(&self, before: &Hist) -> Hist {
        Hist {
            scale: self.scale,
            count: self.count.saturating_sub(before.count),
            sum: (self.sum - before.sum).max(0.0),
            zero_count: self.zero_count.saturating_sub(before.zero_count),
            offset: self.offset,
            counts: (0..self.counts.len())
                .map(|k| {
                    let i = self.offset + k as i32;
                    self.get(i).saturating_sub(before.get(i))
                })
                .collect(),
        }
    }

    fn add(&mut self, d: &Hist) {
        self.count += d.count;
        self.sum += d.sum;
        self.zero_count += d.zero_count;
        let Some(first) = d.counts.iter().position(|&c| c != 0) else {
            return;
        };
        let last = d.counts.iter().rposition(|&c| c != 0).unwrap_or(first);
        let (lo, hi) = (d.offset + first as i32, d.offset + last as i32);
        if self.counts.is_empty() {
            self.offset = lo;
        }
        let new_lo = self.offset.min(lo);
        let new_hi = (self.offset + self.counts.len() as i32 - 1).max(hi);
        if new_lo < self.offset {
            let grow = (self.offset - new_lo) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = new_lo;
        }
        self.counts.resize((new_hi - self.offset + 1) as usize, 0);
        for i in lo..=hi {
            self.counts[(i - self.offset) as usize] += d.get(i);
        }
    }
}

impl Value {
    fn of_number(p: &NumberDataPoint) -> Option<Value> {
        match p.value? {
            number_data_point::Value::AsInt(v) => Some(Value::Int(v.max(0) as u64)),
            number_data_point::Value::AsDouble(v) => Some(Value::Double(v)),
        }
    }

    /// The increase from `before` (a member seen for the first time
    /// contributes all it has).
    fn minus(&self, before: Option<&Value>) -> Value {
        match (self, before) {
            (Value::Int(a), Some(Value::Int(b))) => Value::Int(a.saturating_sub(*b)),
            (Value::Double(a), Some(Value::Double(b))) => Value::Double((a - b).max(0.0)),
            (Value::Hist(a), Some(Value::Hist(b))) if a.scale == b.scale => Value::Hist(a.minus(b)),
            _ => self.clone(),
        }
    }

    fn add(&mut self, d: &Value) {
        match (self, d) {
            (Value::Int(a), Value::Int(b)) => *a += b,
            (Value::Double(a), Value::Double(b)) => *a += b,
            (Value::Hist(a), Value::Hist(b)) if a.scale == b.scale => a.add(b),
            _ => {}
        }
    }
}

/// A summed series: its attributes, total and when it began.
struct Acc {
    attributes: Vec<KeyValue>,
    value: Value,
    start_unix_nano: u64,
    /// Interval number of the last time a member fed it.
    fed: u64,
}

/// One series of a member process: (process, metric, attribute hash).
type SourceKey = ((u32, u64), Arc<str>, u64);
/// One output series: (target, metric, attribute hash).
type SeriesKey = (Target, Arc<str>, u64);

/// The budget's memory between intervals.
pub struct Budget {
    cfg: BudgetConfig,
    interval: u64,
    /// Admitted series, with the interval they were last reported in.
    admitted: HashMap<SeriesKey, u64>,
    per_metric: HashMap<Arc<str>, u32>,
    total: u32,
    /// Last cumulative value of each member series that is summed, the
    /// interval it was reported in, and whether it goes to the overflow
    /// series (for good: once folded, a series stays folded while its source
    /// reports it, so no increase is counted twice).
    last: HashMap<SourceKey, (Value, u64, bool)>,
    /// Summed and overflow series.
    groups: BTreeMap<SeriesKey, Acc>,
    /// A member of each group resource, to name it.
    group_info: HashMap<Target, Arc<ProcessInfo>>,
    /// Each metric as first seen, without points (name, unit, kind).
    templates: HashMap<Arc<str>, Metric>,
    names: HashSet<Arc<str>>,
}

impl Budget {
    pub fn new(cfg: BudgetConfig) -> Self {
        Self {
            cfg,
            interval: 0,
            admitted: HashMap::new(),
            per_metric: HashMap::new(),
            total: 0,
            last: HashMap::new(),
            groups: BTreeMap::new(),
            group_info: HashMap::new(),
            templates: HashMap::new(),
            names: HashSet::new(),
        }
    }

    /// New limits and granularities (SIGHUP). Series already admitted keep
    /// their places; new ones are admitted against the new limits. A
    /// signal whose granularity changed starts its summed series afresh
    /// from its members' totals.
    pub fn set_config(&mut self, cfg: BudgetConfig) {
        self.cfg = cfg;
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.names.get(name) {
            return n.clone();
        }
        let n: Arc<str> = name.into();
        self.names.insert(n.clone());
        n
    }

    /// Whether series `key` may be exported on its own (admitting it if
    /// there is room).
    fn admit(&mut self, key: &SeriesKey) -> bool {
        if let Some(seen) = self.admitted.get_mut(key) {
            *seen = self.interval;
            return true;
        }
        let n = self.per_metric.entry(key.1.clone()).or_default();
        if *n >= self.cfg.max_series_per_metric || self.total >= self.cfg.max_series {
            return false;
        }
        *n += 1;
        self.total += 1;
        self.admitted.insert(key.clone(), self.interval);
        true
    }

    /// Applies budgets and granularities to this interval's per-process
    /// metrics in `out`: admitted process series stay where they are,
    /// summed series go to `out.groups`, overflow series and the budget's
    /// own figures to `out.host` and `out.agent`.
    pub fn apply(&mut self, out: &mut Collected, now_unix_nano: u64, agent_start_unix_nano: u64) {
        self.interval += 1;
        let mut folded: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        for batch in out.processes.values_mut() {
            let info = batch.info.clone();
            let proc_key = (info.pid, info.start_ticks.unwrap_or(0));
            let metrics = std::mem::take(&mut batch.metrics);
            for mut m in metrics {
                let name = self.intern(&m.name);
                let target = match self.cfg.granularity(SignalKind::of_metric(&m.name)) {
                    Granularity::Process => Target::Process(proc_key.0, proc_key.1),
                    Granularity::Executable => {
                        Target::Executable(info.executable_name.clone(), container_key(&info))
                    }
                    Granularity::Container => match container_key(&info) {
                        Some(c) => Target::Container(c),
                        None => Target::Executable(info.executable_name.clone(), None),
                    },
                };
                if !self.templates.contains_key(&name) {
                    let mut t = m.clone();
                    clear_points(&mut t);
                    self.templates.insert(name.clone(), t);
                }
                let kept = self.route(&mut m, &name, &target, proc_key, &info, &mut folded);
                if kept {
                    batch.metrics.push(m);
                }
            }
        }
        self.expire();
        self.emit(out, now_unix_nano, agent_start_unix_nano, &folded);
    }

    /// Routes the points of `m` (a metric of process `proc_key`): keeps in
    /// `m` those exported on the process's own resource (returns whether
    /// any are left) and adds the others to their group or overflow.
    fn route(
        &mut self,
        m: &mut Metric,
        name: &Arc<str>,
        target: &Target,
        proc_key: (u32, u64),
        info: &Arc<ProcessInfo>,
        folded: &mut BTreeMap<Arc<str>, u64>,
    ) -> bool {
        let points = take_points(m);
        let mut keep = Vec::with_capacity(points.len());
        for p in points {
            let h = attr_hash(p.attributes());
            let own = (target.clone(), name.clone(), h);
            let src = (proc_key, name.clone(), h);
            let overflowed = matches!(self.last.get(&src), Some((_, _, true)));
            let admitted = !overflowed && self.admit(&own);
            if admitted && matches!(target, Target::Process(..)) {
                keep.push(p);
                continue;
            }
            let Some(value) = p.value() else {
                // A gauge or an empty point: nothing to sum.
                if admitted {
                    keep.push(p);
                }
                continue;
            };
            let (dest, dest_attrs) = if admitted {
                self.group_info
                    .entry(target.clone())
                    .or_insert_with(|| info.clone());
                (own, p.attributes().to_vec())
            } else {
                *folded.entry(name.clone()).or_default() += 1;
                (
                    (Target::Overflow, name.clone(), 0),
                    vec![otlp::kv_bool("otel.metric.overflow", true)],
                )
            };
            let delta = value.minus(self.last.get(&src).map(|(v, _, _)| v));
            self.last
                .insert(src, (value.clone(), self.interval, !admitted));
            let interval = self.interval;
            let acc = self.groups.entry(dest).or_insert_with(|| Acc {
                attributes: dest_attrs,
                value: zero_like(&value),
                start_unix_nano: 0,
                fed: interval,
            });
            acc.value.add(&delta);
            acc.fed = interval;
        }
        put_points(m, keep)
    }

    /// Forgets series not reported this interval (their last report was
    /// exported last interval), and summed series no member fed in two
    /// intervals; overflow series stay.
    fn expire(&mut self) {
        let now = self.interval;
        let mut freed: Vec<Arc<str>> = Vec::new();
        self.admitted.retain(|k, seen| {
            // Group series are kept while their accumulator lives.
            let keep = *seen == now || !matches!(k.0, Target::Process(..));
            if !keep {
                freed.push(k.1.clone());
            }
            keep
        });
        self.last.retain(|_, (_, seen, _)| *seen == now);
        let mut gone_groups = Vec::new();
        self.groups.retain(|k, acc| {
            let keep = k.0 == Target::Overflow || acc.fed + 1 >= now;
            if !keep {
                gone_groups.push(k.clone());
            }
            keep
        });
        for k in gone_groups {
            if self.admitted.remove(&k).is_some() {
                freed.push(k.1.clone());
            }
        }
        for name in freed {
            if let Some(n) = self.per_metric.get_mut(&name) {
                *n = n.saturating_sub(1);
            }
            self.total = self.total.saturating_sub(1);
        }
        let live: HashSet<&Target> = self.groups.keys().map(|k| &k.0).collect();
        self.group_info.retain(|t, _| live.contains(t));
    }

    fn emit(
        &mut self,
        out: &mut Collected,
        now_unix_nano: u64,
        agent_start_unix_nano: u64,
        folded: &BTreeMap<Arc<str>, u64>,
    ) {
        let mut by_target: BTreeMap<Target, BTreeMap<Arc<str>, Metric>> = BTreeMap::new();
        for ((target, name, _), acc) in &mut self.groups {
            if acc.start_unix_nano == 0 {
                acc.start_unix_nano = if *target == Target::Overflow {
                    agent_start_unix_nano
                } else {
                    now_unix_nano
                };
            }
            let w = Window {
                start_unix_nano: acc.start_unix_nano,
                time_unix_nano: now_unix_nano,
            };
            let Some(template) = self.templates.get(name) else {
                continue;
            };
            let m = by_target
                .entry(target.clone())
                .or_default()
                .entry(name.clone())
                .or_insert_with(|| template.clone());
            push_point(m, &acc.attributes, &acc.value, w);
        }
        for (target, metrics) in by_target {
            let metrics: Vec<Metric> = metrics.into_values().collect();
            match target {
                Target::Overflow => {
                    for m in metrics {
                        merge_into(&mut out.host, m);
                    }
                }
                Target::Executable(..) | Target::Container(_) => {
                    let Some(info) = self.group_info.get(&target).cloned() else {
                        continue;
                    };
                    let kind = if matches!(target, Target::Container(_)) {
                        GroupKind::Container
                    } else {
                        GroupKind::Executable
                    };
                    out.groups.push(GroupBatch {
                        kind,
                        info,
                        metrics,
                    });
                }
                Target::Process(..) => {}
            }
        }
        let w = Window {
            start_unix_nano: agent_start_unix_nano,
            time_unix_nano: now_unix_nano,
        };
        let mut names: Vec<&Arc<str>> = self.templates.keys().collect();
        names.sort();
        let metric_attr = |n: &str| vec![otlp::kv_str("hostscope.metric.name", n)];
        out.agent.push(otlp::gauge_metric(
            "hostscope.agent.series",
            "Series exported on their own in the last interval, by metric (per process or summed)",
            "{series}",
            names
                .iter()
                .map(|n| {
                    otlp::int_point(
                        metric_attr(n),
                        w,
                        self.per_metric.get(*n).copied().unwrap_or(0).into(),
                    )
                })
                .collect(),
        ));
        out.agent.push(otlp::gauge_metric(
            "hostscope.agent.series.folded",
            "Series folded into the metric's overflow series (otel.metric.overflow=true) in the last interval, by metric",
            "{series}",
            names
                .iter()
                .map(|n| otlp::int_point(metric_attr(n), w, folded.get(*n).copied().unwrap_or(0)))
                .collect(),
        ));
    }
}

/// What tells a process's container apart: its id, else its pod's UID.
fn container_key(info: &ProcessInfo) -> Option<String> {
    let c = info.container.as_ref()?;
    c.id.clone().or_else(|| c.pod_uid.clone())
}

/// A zero of `v`'s kind.
fn zero_like(v: &Value) -> Value {
    match v {
        Value::Int(_) => Value::Int(0),
        Value::Double(_) => Value::Double(0.0),
        Value::Hist(h) => Value::Hist(Hist {
            scale: h.scale,
            ..Default::default()
        }),
    }
}

/// A hash of an attribute set (the order the signals write them in is
/// fixed, so it is hashed as written).
fn attr_hash(attrs: &[KeyValue]) -> u64 {
    let mut h = DefaultHasher::new();
    for kv in attrs {
        kv.key.hash(&mut h);
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.hash(&mut h),
            Some(any_value::Value::IntValue(i)) => i.hash(&mut h),
            Some(any_value::Value::BoolValue(b)) => b.hash(&mut h),
            Some(any_value::Value::DoubleValue(d)) => d.to_bits().hash(&mut h),
            other => format!("{other:?}").hash(&mut h),
        }
    }
    h.finish()
}

/// A point of a metric, with its attributes and (for sums and exponential
/// histograms) its value.
enum AnyPoint {
    Number(NumberDataPoint),
    Exp(ExponentialHistogramDataPoint),
    Gauge(NumberDataPoint),
}

fn take_points(m: &mut Metric) -> Vec<AnyPoint> {
    match m.data.as_mut() {
        Some(Data::Sum(s)) => std::mem::take(&mut s.data_points)
            .into_iter()
            .map(AnyPoint::Number)
            .collect(),
        Some(Data::ExponentialHistogram(e)) => std::mem::take(&mut e.data_points)
            .into_iter()
            .map(AnyPoint::Exp)
            .collect(),
        Some(Data::Gauge(g)) => std::mem::take(&mut g.data_points)
            .into_iter()
            .map(AnyPoint::Gauge)
            .collect(),
        _ => Vec::new(),
    }
}

impl AnyPoint {
    fn attributes(&self) -> &[KeyValue] {
        match self {
            AnyPoint::Number(p) | AnyPoint::Gauge(p) => &p.attributes,
            AnyPoint::Exp(p) => &p.attributes,
        }
    }

    /// Its cumulative value, for sums and exponential histograms.
    fn value(&self) -> Option<Value> {
        match self {
            AnyPoint::Number(p) => Value::of_number(p),
            AnyPoint::Exp(p) => Some(Value::Hist(Hist::from_point(p))),
            AnyPoint::Gauge(_) => None,
        }
    }
}

/// Puts `points` back into `m`; whether there are any.
fn put_points(m: &mut Metric, points: Vec<AnyPoint>) -> bool {
    let any = !points.is_empty();
    match m.data.as_mut() {
        Some(Data::Sum(s)) => {
            s.data_points = points
                .into_iter()
                .filter_map(|p| match p {
                    AnyPoint::Number(p) => Some(p),
                    _ => None,
                })
                .collect()
        }
        Some(Data::Gauge(g)) => {
            g.data_points = points
                .into_iter()
                .filter_map(|p| match p {
                    AnyPoint::Gauge(p) => Some(p),
                    _ => None,
                })
                .collect()
        }
        Some(Data::ExponentialHistogram(e)) => {
            e.data_points = points
                .into_iter()
                .filter_map(|p| match p {
                    AnyPoint::Exp(p) => Some(p),
                    _ => None,
                })
                .collect()
        }
        _ => {}
    }
    any
}

fn clear_points(m: &mut Metric) {
    let _ = take_points(m);
}

/// Appends a point of `value` to `m` (of the matching kind).
fn push_point(m: &mut Metric, attrs: &[KeyValue], value: &Value, w: Window) {
    match (m.data.as_mut(), value) {
        (Some(Data::Sum(s)), Value::Int(v)) => {
            s.data_points.push(otlp::int_point(attrs.to_vec(), w, *v))
        }
        (Some(Data::Sum(s)), Value::Double(v)) => {
            s.data_points
                .push(otlp::double_point(attrs.to_vec(), w, *v))
        }
        (Some(Data::ExponentialHistogram(e)), Value::Hist(h)) => {
            e.data_points.push(ExponentialHistogramDataPoint {
                attributes: attrs.to_vec(),
                start_time_unix_nano: w.start_unix_nano,
                time_unix_nano: w.time_unix_nano,
                count: h.count,
                sum: Some(h.sum),
                scale: h.scale,
                zero_count: h.zero_count,
                positive: (!h.counts.is_empty()).then(|| {
                    exponential_histogram_data_point::Buckets {
                        offset: h.offset,
                        bucket_counts: h.counts.clone(),
                    }
                }),
                ..Default::default()
            })
        }
        _ => {}
    }
}

/// Adds `m` to `metrics`: its points join those of a metric of the same
/// name, if there is one.
fn merge_into(metrics: &mut Vec<Metric>, mut m: Metric) {
    let Some(existing) = metrics.iter_mut().find(|e| e.name == m.name) else {
        metrics.push(m);
        return;
    };
    match (existing.data.as_mut(), m.data.as_mut()) {
        (Some(Data::Sum(a)), Some(Data::Sum(b))) => a.data_points.append(&mut b.data_points),
        (Some(Data::ExponentialHistogram(a)), Some(Data::ExponentialHistogram(b))) => {
            a.data_points.append(&mut b.data_points)
        }
        (Some(Data::Gauge(a)), Some(Data::Gauge(b))) => a.data_points.append(&mut b.data_points),
        _ => metrics.push(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::ProcessBatch;

    fn info(pid: u32, exe: &str) -> Arc<ProcessInfo> {
        Arc::new(ProcessInfo {
            pid,
            executable_name: exe.into(),
            start_ticks: Some(u64::from(pid) * 10),
            creation_time_unix_nano: 1,
            container: None,
            parent_pid: None,
            executable_path: None,
            owner: None,
            command_line: None,
        })
    }

    const W: Window = Window {
        start_unix_nano: 1,
        time_unix_nano: 2,
    };

    fn counter(v: u64) -> Metric {
        otlp::counter_metric(
            "hostscope.syscall.errors",
            "",
            "{error}",
            vec![otlp::int_point(vec![otlp::kv_str("k", "v")], W, v)],
        )
    }

    fn hist(slots: &[(usize, u64)]) -> Metric {
        let mut s = [0u64; hostscope_common::syscalls::HIST_SLOTS];
        for &(i, n) in slots {
            s[i] = n;
        }
        let count = s.iter().sum();
        otlp::exp_histogram_metric(
            "hostscope.syscall.duration",
            "",
            "s",
            vec![otlp::exp_histogram_point(
                vec![],
                W,
                count,
                count * 1000,
                &s,
            )],
        )
    }

    /// One interval: each (process, metrics) reported.
    fn interval(b: &mut Budget, procs: &[(Arc<ProcessInfo>, Vec<Metric>)]) -> Collected {
        let mut out = Collected::default();
        for (i, m) in procs {
            out.processes.insert(
                i.pid,
                ProcessBatch {
                    info: i.clone(),
                    metrics: m.clone(),
                    spans: Vec::new(),
                },
            );
        }
        b.apply(&mut out, 100, 1);
        out
    }

    fn int_of(m: &Metric) -> Vec<u64> {
        match m.data.as_ref() {
            Some(Data::Sum(s)) => s
                .data_points
                .iter()
                .map(|p| match p.value {
                    Some(number_data_point::Value::AsInt(v)) => v as u64,
                    _ => panic!("not an int point"),
                })
                .collect(),
            _ => panic!("not a sum"),
        }
    }

    fn own(out: &Collected) -> Vec<u32> {
        out.processes
            .iter()
            .filter(|(_, b)| !b.metrics.is_empty())
            .map(|(p, _)| *p)
            .collect()
    }

    fn overflow(out: &Collected, name: &str) -> Option<Metric> {
        out.host.iter().find(|m| m.name == name).cloned()
    }

    fn agent_gauge(out: &Collected, name: &str, metric: &str) -> u64 {
        let m = out.agent.iter().find(|m| m.name == name).expect(name);
        let Some(Data::Gauge(g)) = m.data.as_ref() else {
            panic!("{name} is not a gauge")
        };
        g.data_points
            .iter()
            .find(|p| {
                p.attributes.iter().any(|kv| {
                    kv.value.as_ref().and_then(|v| v.value.as_ref())
                        == Some(&any_value::Value::StringValue(metric.into()))
                })
            })
            .and_then(|p| match p.value {
                Some(number_data_point::Value::AsInt(v)) => Some(v as u64),
                _ => None,
            })
            .unwrap_or(0)
    }

    fn limited(per_metric: u32) -> Budget {
        Budget::new(BudgetConfig {
            max_series_per_metric: per_metric,
            ..Default::default()
        })
    }

    #[test]
    fn series_beyond_the_limit_fold_into_one_overflow_series() {
        let mut b = limited(2);
        let (p1, p2, p3) = (info(1, "a"), info(2, "b"), info(3, "c"));
        let out = interval(
            &mut b,
            &[
                (p1.clone(), vec![counter(5)]),
                (p2.clone(), vec![counter(6)]),
                (p3.clone(), vec![counter(7)]),
            ],
        );
        assert_eq!(own(&out), vec![1, 2], "the first two series are admitted");
        let o = overflow(&out, "hostscope.syscall.errors").expect("an overflow series");
        assert_eq!(int_of(&o), vec![7]);
        let Some(Data::Sum(s)) = o.data.as_ref() else {
            unreachable!()
        };
        assert_eq!(
            s.data_points[0].attributes,
            vec![otlp::kv_bool("otel.metric.overflow", true)],
            "the overflow series has that one attribute"
        );
        assert_eq!(
            agent_gauge(
                &out,
                "hostscope.agent.series.folded",
                "hostscope.syscall.errors"
            ),
            1
        );
        assert_eq!(
            agent_gauge(&out, "hostscope.agent.series", "hostscope.syscall.errors"),
            2
        );

        // p3 grows and a fourth process folds too: the overflow adds both.
        let p4 = info(4, "d");
        let out = interval(
            &mut b,
            &[
                (p1.clone(), vec![counter(5)]),
                (p2.clone(), vec![counter(6)]),
                (p3.clone(), vec![counter(10)]),
                (p4.clone(), vec![counter(1)]),
            ],
        );
        assert_eq!(
            int_of(&overflow(&out, "hostscope.syscall.errors").unwrap()),
            vec![11]
        );
        assert_eq!(
            agent_gauge(
                &out,
                "hostscope.agent.series.folded",
                "hostscope.syscall.errors"
            ),
            2
        );

        // p1 and p3 exit (no longer reported): p1's place is free the next
        // interval; the overflow keeps what p3 gave.
        let out = interval(
            &mut b,
            &[
                (p2.clone(), vec![counter(6)]),
                (p4.clone(), vec![counter(2)]),
            ],
        );
        assert_eq!(
            int_of(&overflow(&out, "hostscope.syscall.errors").unwrap()),
            vec![12]
        );
        assert_eq!(
            own(&out),
            vec![2],
            "p4 stays folded: its increases are in the overflow"
        );
        let p5 = info(5, "e");
        let out = interval(
            &mut b,
            &[
                (p2.clone(), vec![counter(6)]),
                (p4.clone(), vec![counter(2)]),
                (p5.clone(), vec![counter(3)]),
            ],
        );
        assert_eq!(own(&out), vec![2, 5], "p1's freed place goes to the new p5");
        assert_eq!(
            int_of(&overflow(&out, "hostscope.syscall.errors").unwrap()),
            vec![12]
        );
    }

    #[test]
    fn the_total_limit_applies_across_metrics() {
        let mut b = Budget::new(BudgetConfig {
            max_series: 3,
            ..Default::default()
        });
        let out = interval(
            &mut b,
            &[
                (info(1, "a"), vec![counter(1), hist(&[(3, 2)])]),
                (info(2, "b"), vec![counter(1), hist(&[(3, 2)])]),
            ],
        );
        assert_eq!(out.processes[&1].metrics.len(), 2);
        assert_eq!(
            out.processes[&2].metrics.len(),
            1,
            "the fourth series overflows"
        );
        assert!(overflow(&out, "hostscope.syscall.duration").is_some());
    }

    #[test]
    fn executable_granularity_sums_members_and_never_goes_back() {
        let mut b = Budget::new(BudgetConfig {
            syscalls: Granularity::Executable,
            ..Default::default()
        });
        let (p1, p2) = (info(1, "nginx"), info(2, "nginx"));
        let out = interval(
            &mut b,
            &[
                (p1.clone(), vec![counter(5), hist(&[(3, 2)])]),
                (p2.clone(), vec![counter(6), hist(&[(3, 1), (5, 4)])]),
            ],
        );
        assert!(own(&out).is_empty(), "no per-process series");
        assert_eq!(out.groups.len(), 1);
        let g = &out.groups[0];
        assert_eq!(g.info.executable_name, "nginx");
        let c = g
            .metrics
            .iter()
            .find(|m| m.name == "hostscope.syscall.errors")
            .unwrap();
        assert_eq!(int_of(c), vec![11]);
        let h = g
            .metrics
            .iter()
            .find(|m| m.name == "hostscope.syscall.duration")
            .unwrap();
        let Some(Data::ExponentialHistogram(e)) = h.data.as_ref() else {
            panic!("a histogram")
        };
        let p = &e.data_points[0];
        assert_eq!(p.count, 7);
        let buckets = p.positive.as_ref().unwrap();
        assert_eq!(buckets.bucket_counts, vec![3, 0, 4]);
        // p1 exits; p2 grows by 1; a new p3 arrives with 2.
        let p3 = info(3, "nginx");
        let out = interval(
            &mut b,
            &[
                (p2.clone(), vec![counter(7)]),
                (p3.clone(), vec![counter(2)]),
            ],
        );
        let c = out.groups[0]
            .metrics
            .iter()
            .find(|m| m.name == "hostscope.syscall.errors")
            .unwrap();
        assert_eq!(int_of(c), vec![14], "11 + 1 + 2: what p1 gave stays");
    }

    #[test]
    fn a_group_without_members_is_exported_once_more_then_forgotten() {
        let mut b = Budget::new(BudgetConfig {
            syscalls: Granularity::Executable,
            ..Default::default()
        });
        let out = interval(&mut b, &[(info(1, "job"), vec![counter(1)])]);
        assert_eq!(out.groups.len(), 1);
        let out = interval(&mut b, &[]);
        assert_eq!(out.groups.len(), 1, "exported once more");
        let out = interval(&mut b, &[]);
        assert!(out.groups.is_empty(), "then forgotten");
        assert_eq!(b.total, 0, "its place is free");
    }

    #[test]
    fn histograms_difference_and_add_bucket_by_bucket() {
        let mut a = Hist {
            offset: 2,
            counts: vec![1, 2],
            count: 3,
            ..Default::default()
        };
        let later = Hist {
            offset: 1,
            counts: vec![4, 1, 5, 0, 7],
            count: 17,
            ..Default::default()
        };
        let d = later.minus(&a);
        assert_eq!(
            (d.offset, d.counts.clone(), d.count),
            (1, vec![4, 0, 3, 0, 7], 14)
        );
        a.add(&d);
        assert_eq!(
            (a.offset, a.counts.clone(), a.count),
            (1, vec![4, 1, 5, 0, 7], 17)
        );
    }
}
