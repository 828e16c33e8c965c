//! Splitting one interval's export request into requests of bounded encoded
//! size. Collectors refuse large requests (gRPC's default receive limit is
//! 4 MiB) and a request larger than the export queue could never be queued,
//! so a host with many series is sent as several requests, each a complete
//! OTLP request: a resource or metric that does not fit is split between
//! requests, repeating its resource, scope and metric description.
//!
//! Sizes are measured with prost's `encoded_len`; the framing of a repeated
//! field (a tag and a length prefix) is counted as [`FRAME`] bytes while
//! splitting, and exactly when bodies are assembled.

use opentelemetry_proto::tonic::{
    collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
    metrics::v1::{Metric, ResourceMetrics, ScopeMetrics, metric::Data},
    trace::v1::{ResourceSpans, ScopeSpans},
};
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint, encoded_len_varint},
};

use super::{otlp::Payload, otlp_config::Signal};

/// Upper bound of the framing of one embedded message (1-byte tag plus a
/// length varint of up to 5 bytes).
const FRAME: usize = 6;

fn framed<M: Message>(m: &M) -> usize {
    m.encoded_len() + FRAME
}

/// Greedily groups `items` into runs whose sizes add up to at most `budget`;
/// an item larger than the budget travels alone.
fn group<T>(items: Vec<T>, budget: usize, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut used = 0;
    for it in items {
        let n = size(&it);
        if !cur.is_empty() && used + n > budget {
            out.push(std::mem::take(&mut cur));
            used = 0;
        }
        used += n;
        cur.push(it);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Splits a metric's data points into metrics of at most `budget` bytes.
fn split_metric(m: Metric, budget: usize) -> Vec<Metric> {
    if framed(&m) <= budget {
        return vec![m];
    }
    let mut shell = m;
    let data = shell.data.take();
    let room = budget.saturating_sub(framed(&shell) + FRAME);
    macro_rules! by_points {
        ($variant:ident, $h:expr) => {{
            let mut h = $h;
            let points = std::mem::take(&mut h.data_points);
            group(points, room, framed)
                .into_iter()
                .map(|pts| {
                    let mut part = shell.clone();
                    let mut h = h.clone();
                    h.data_points = pts;
                    part.data = Some(Data::$variant(h));
                    part
                })
                .collect()
        }};
    }
    match data {
        Some(Data::Gauge(h)) => by_points!(Gauge, h),
        Some(Data::Sum(h)) => by_points!(Sum, h),
        Some(Data::Histogram(h)) => by_points!(Histogram, h),
        Some(Data::ExponentialHistogram(h)) => by_points!(ExponentialHistogram, h),
        Some(Data::Summary(h)) => by_points!(Summary, h),
        None => vec![shell],
    }
}

/// Splits one resource's metrics into resources of at most `budget` bytes.
fn split_resource_metrics(rm: ResourceMetrics, budget: usize) -> Vec<ResourceMetrics> {
    if framed(&rm) <= budget {
        return vec![rm];
    }
    let mut shell = rm;
    let scopes = std::mem::take(&mut shell.scope_metrics);
    let mut out = Vec::new();
    for mut sm in scopes {
        let metrics = std::mem::take(&mut sm.metrics);
        let room = budget.saturating_sub(framed(&shell) + framed(&sm) + FRAME);
        let pieces: Vec<Metric> = metrics
            .into_iter()
            .flat_map(|m| split_metric(m, room))
            .collect();
        for run in group(pieces, room, framed) {
            let mut part = shell.clone();
            part.scope_metrics = vec![ScopeMetrics {
                metrics: run,
                ..sm.clone()
            }];
            out.push(part);
        }
    }
    out
}

/// Encodes `req` as requests of at most `max_bytes` bytes each (a single
/// data point larger than that is sent alone). Each resource is encoded
/// once and appended to the current body as field 1 of the request, which
/// is byte for byte what encoding the whole request would give. Data points
/// keep their order; nothing is dropped.
pub fn metrics(req: ExportMetricsServiceRequest, max_bytes: usize) -> Vec<Payload> {
    let mut bodies = Bodies::new(Signal::Metrics, max_bytes);
    for rm in req.resource_metrics {
        for piece in split_resource_metrics(rm, max_bytes) {
            let items = metric_points_of(&piece);
            bodies.append(&piece, items);
        }
    }
    bodies.finish()
}

fn metric_points_of(rm: &ResourceMetrics) -> u64 {
    rm.scope_metrics
        .iter()
        .flat_map(|sm| &sm.metrics)
        .map(|m| match &m.data {
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Summary(s)) => s.data_points.len(),
            None => 0,
        } as u64)
        .sum()
}

/// Request bodies being filled with encoded resources.
struct Bodies {
    signal: Signal,
    max: usize,
    done: Vec<Payload>,
    body: Vec<u8>,
    items: u64,
}

impl Bodies {
    fn new(signal: Signal, max: usize) -> Self {
        Self {
            signal,
            max,
            done: Vec::new(),
            body: Vec::new(),
            items: 0,
        }
    }

    /// Appends `m` as field 1 of the request, starting a new body when it
    /// would not fit in this one.
    fn append<M: Message>(&mut self, m: &M, items: u64) {
        let len = m.encoded_len();
        let framed = 1 + encoded_len_varint(len as u64) + len;
        if !self.body.is_empty() && self.body.len() + framed > self.max {
            self.flush();
        }
        self.body.reserve(framed);
        encode_key(1, WireType::LengthDelimited, &mut self.body);
        encode_varint(len as u64, &mut self.body);
        // Cannot fail: a Vec grows as needed.
        m.encode(&mut self.body).expect("encoding into a Vec");
        self.items += items;
    }

    fn flush(&mut self) {
        let body = std::mem::take(&mut self.body);
        self.done.push(Payload {
            signal: self.signal,
            body: body.into(),
            items: std::mem::take(&mut self.items),
        });
    }

    fn finish(mut self) -> Vec<Payload> {
        if !self.body.is_empty() {
            self.flush();
        }
        self.done
    }
}

fn split_resource_spans(rs: ResourceSpans, budget: usize) -> Vec<ResourceSpans> {
    if framed(&rs) <= budget {
        return vec![rs];
    }
    let mut shell = rs;
    let scopes = std::mem::take(&mut shell.scope_spans);
    let mut out = Vec::new();
    for mut ss in scopes {
        let spans = std::mem::take(&mut ss.spans);
        let room = budget.saturating_sub(framed(&shell) + framed(&ss) + FRAME);
        for run in group(spans, room, framed) {
            let mut part = shell.clone();
            part.scope_spans = vec![ScopeSpans {
                spans: run,
                ..ss.clone()
            }];
            out.push(part);
        }
    }
    out
}

/// Encodes `req` as requests of at most `max_bytes` bytes each.
pub fn traces(req: ExportTraceServiceRequest, max_bytes: usize) -> Vec<Payload> {
    let mut bodies = Bodies::new(Signal::Traces, max_bytes);
    for rs in req.resource_spans {
        for piece in split_resource_spans(rs, max_bytes) {
            let items = piece
                .scope_spans
                .iter()
                .map(|ss| ss.spans.len() as u64)
                .sum();
            bodies.append(&piece, items);
        }
    }
    bodies.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::{self as build, Window};
    use hostscope_common::syscalls::HIST_SLOTS;
    use opentelemetry_proto::tonic::trace::v1::Span;

    const W: Window = Window {
        start_unix_nano: 1,
        time_unix_nano: 2,
    };

    /// `resources` resources of `per` histogram points and `per` counter
    /// points each.
    fn request(resources: usize, per: usize) -> ExportMetricsServiceRequest {
        let mut slots = [0u64; HIST_SLOTS];
        slots[20] = 5;
        let resource_metrics = (0..resources)
            .map(|r| {
                let hist = (0..per)
                    .map(|i| {
                        build::exp_histogram_point(
                            vec![build::kv_str("syscall.name", format!("s{i}"))],
                            W,
                            5,
                            100,
                            &slots,
                        )
                    })
                    .collect();
                let ints = (0..per)
                    .map(|i| {
                        build::int_point(
                            vec![build::kv_str("error.type", format!("E{i}"))],
                            W,
                            i as u64,
                        )
                    })
                    .collect();
                build::resource_metrics(
                    vec![build::kv_str("process.pid", r.to_string())],
                    vec![
                        build::exp_histogram_metric("h", "d", "s", hist),
                        build::counter_metric("c", "d", "1", ints),
                    ],
                )
            })
            .collect();
        ExportMetricsServiceRequest { resource_metrics }
    }

    fn decode(parts: &[Payload]) -> Vec<ExportMetricsServiceRequest> {
        parts
            .iter()
            .map(|p| {
                let req = ExportMetricsServiceRequest::decode(p.body.clone()).expect("decodes");
                assert_eq!(
                    p.items,
                    req.resource_metrics
                        .iter()
                        .map(metric_points_of)
                        .sum::<u64>(),
                    "items counted"
                );
                req
            })
            .collect()
    }

    /// (resource pid, metric name, point attributes) of every point, in order.
    fn points(reqs: &[ExportMetricsServiceRequest]) -> Vec<String> {
        let mut out = Vec::new();
        for req in reqs {
            for rm in &req.resource_metrics {
                let res = format!("{:?}", rm.resource);
                for sm in &rm.scope_metrics {
                    for m in &sm.metrics {
                        let attrs: Vec<String> = match &m.data {
                            Some(Data::ExponentialHistogram(h)) => h
                                .data_points
                                .iter()
                                .map(|p| format!("{:?}", p.attributes))
                                .collect(),
                            Some(Data::Sum(s)) => s
                                .data_points
                                .iter()
                                .map(|p| format!("{:?}", p.attributes))
                                .collect(),
                            _ => panic!("unexpected data in {}", m.name),
                        };
                        for a in attrs {
                            out.push(format!("{res}/{}/{}/{a}", m.name, m.unit));
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn small_request_is_left_whole() {
        let req = request(3, 4);
        let parts = metrics(req.clone(), 1 << 20);
        assert_eq!(parts.len(), 1);
        assert_eq!(
            parts[0].body,
            req.encode_to_vec(),
            "the same bytes as encoding the whole request"
        );
        assert_eq!(decode(&parts), vec![req]);
    }

    #[test]
    fn large_request_splits_under_the_limit_and_keeps_every_point() {
        // Many small resources, and one resource far larger than the limit.
        for (resources, per) in [(2000, 3), (2, 5000), (1, 20000)] {
            let req = request(resources, per);
            let total = req.encoded_len();
            let max = 64 << 10;
            let before = points(std::slice::from_ref(&req));
            let parts = metrics(req, max);
            for p in &parts {
                assert!(
                    p.body.len() <= max,
                    "{resources}x{per}: part of {} bytes over the {max} limit",
                    p.body.len()
                );
            }
            let parts = decode(&parts);
            assert!(
                parts.len() >= total.div_ceil(max),
                "{resources}x{per}: {total} bytes in only {} parts",
                parts.len()
            );
            for p in &parts {
                assert!(
                    p.encoded_len() <= max,
                    "{resources}x{per}: part of {} bytes over the {max} limit",
                    p.encoded_len()
                );
            }
            assert_eq!(
                points(&parts),
                before,
                "{resources}x{per}: points lost or reordered"
            );
        }
    }

    #[test]
    fn spans_split_under_the_limit() {
        let span = Span {
            name: "x".repeat(100),
            ..Default::default()
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span; 10_000],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let parts = traces(req, 100 << 10);
        assert!(parts.len() > 1);
        let n: usize = parts
            .iter()
            .inspect(|p| assert!(p.body.len() <= 100 << 10))
            .map(|p| ExportTraceServiceRequest::decode(p.body.clone()).unwrap())
            .collect::<Vec<_>>()
            .iter()
            .flat_map(|p| &p.resource_spans)
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        assert_eq!(n, 10_000);
    }
}
