//! Delta temporality for OTLP exporters that prefer it
//! (`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`): the kernel keeps
//! cumulative counts, and this turns each cumulative sum or histogram point
//! into the change since the same series' previous export.
//!
//! A series is identified by its resource attributes, metric name and point
//! attributes. A value that went down, or a changed start time, is a reset:
//! the point is sent whole with its own start time. Series absent from a
//! batch are forgotten, so memory follows the live series.

use std::{
    collections::{HashMap, HashSet},
    hash::{DefaultHasher, Hash, Hasher},
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::KeyValue,
    metrics::v1::{
        AggregationTemporality, ExponentialHistogramDataPoint, NumberDataPoint,
        exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    },
};

/// Which instruments become delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Temporality {
    /// Everything cumulative (the default).
    Cumulative,
    /// Monotonic sums and histograms as deltas.
    Delta,
    /// Histograms as deltas; sums (observed from kernel counters, like
    /// asynchronous counters) stay cumulative, as the spec's LowMemory says.
    LowMemory,
}

enum Prev {
    Sum {
        start: u64,
        time: u64,
        value: i64,
    },
    Histogram {
        start: u64,
        time: u64,
        count: u64,
        sum: f64,
        zero_count: u64,
        /// bucket index -> cumulative count
        buckets: Vec<(i32, u64)>,
    },
}

#[derive(Default)]
pub struct DeltaConverter {
    prev: HashMap<u64, Prev>,
}

const DELTA: i32 = AggregationTemporality::Delta as i32;
const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;

fn hash_attrs(h: &mut DefaultHasher, attrs: &[KeyValue]) {
    for kv in attrs {
        kv.key.hash(h);
        // The JSON form is a stable rendering of any AnyValue.
        serde_json::to_string(&kv.value).unwrap_or_default().hash(h);
    }
}

impl DeltaConverter {
    /// Rewrites `req` in place.
    pub fn convert(&mut self, req: &mut ExportMetricsServiceRequest, mode: Temporality) {
        if mode == Temporality::Cumulative {
            return;
        }
        let mut seen = HashSet::new();
        for rm in &mut req.resource_metrics {
            let mut rh = DefaultHasher::new();
            hash_attrs(
                &mut rh,
                rm.resource.as_ref().map_or(&[][..], |r| &r.attributes),
            );
            for m in rm.scope_metrics.iter_mut().flat_map(|sm| &mut sm.metrics) {
                let mut mh = rh.clone();
                m.name.hash(&mut mh);
                match &mut m.data {
                    Some(Data::Sum(s))
                        if mode == Temporality::Delta
                            && s.is_monotonic
                            && s.aggregation_temporality == CUMULATIVE =>
                    {
                        for p in &mut s.data_points {
                            let key = point_key(&mh, &p.attributes);
                            seen.insert(key);
                            self.sum_point(key, p);
                        }
                        s.aggregation_temporality = DELTA;
                    }
                    Some(Data::ExponentialHistogram(h))
                        if h.aggregation_temporality == CUMULATIVE =>
                    {
                        for p in &mut h.data_points {
                            let key = point_key(&mh, &p.attributes);
                            seen.insert(key);
                            self.histogram_point(key, p);
                        }
                        h.aggregation_temporality = DELTA;
                    }
                    _ => {}
                }
            }
        }
        self.prev.retain(|k, _| seen.contains(k));
    }

    fn sum_point(&mut self, key: u64, p: &mut NumberDataPoint) {
        let Some(number_data_point::Value::AsInt(value)) = p.value else {
            return;
        };
        let (start, time) = (p.start_time_unix_nano, p.time_unix_nano);
        if let Some(Prev::Sum {
            start: s,
            time: t,
            value: v,
        }) = self.prev.get(&key)
            && *s == start
            && *v <= value
        {
            p.value = Some(number_data_point::Value::AsInt(value - v));
            p.start_time_unix_nano = *t;
        }
        self.prev.insert(key, Prev::Sum { start, time, value });
    }

    fn histogram_point(&mut self, key: u64, p: &mut ExponentialHistogramDataPoint) {
        let (start, time) = (p.start_time_unix_nano, p.time_unix_nano);
        let buckets = expand(p.positive.as_ref());
        let (count, sum, zero_count) = (p.count, p.sum.unwrap_or(0.0), p.zero_count);
        if let Some(Prev::Histogram {
            start: s,
            time: t,
            count: c,
            sum: su,
            zero_count: z,
            buckets: b,
        }) = self.prev.get(&key)
            && *s == start
            && *c <= count
            && *z <= zero_count
            && let Some(diff) = subtract(&buckets, b)
        {
            p.count = count - c;
            p.zero_count = zero_count - z;
            p.sum = Some((sum - su).max(0.0));
            p.positive = collapse(&diff);
            p.start_time_unix_nano = *t;
        }
        self.prev.insert(
            key,
            Prev::Histogram {
                start,
                time,
                count,
                sum,
                zero_count,
                buckets,
            },
        );
    }
}

fn point_key(metric: &DefaultHasher, attrs: &[KeyValue]) -> u64 {
    let mut h = metric.clone();
    hash_attrs(&mut h, attrs);
    h.finish()
}

fn expand(b: Option<&Buckets>) -> Vec<(i32, u64)> {
    b.map(|b| {
        b.bucket_counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (b.offset + i as i32, *c))
            .collect()
    })
    .unwrap_or_default()
}

/// `now - before` per bucket; None if any bucket went down (a reset).
fn subtract(now: &[(i32, u64)], before: &[(i32, u64)]) -> Option<Vec<(i32, u64)>> {
    let before: HashMap<i32, u64> = before.iter().copied().collect();
    let mut out = Vec::with_capacity(now.len());
    let mut matched = 0;
    for &(i, c) in now {
        let b = before.get(&i).copied().unwrap_or(0);
        if b > 0 {
            matched += 1;
        }
        out.push((i, c.checked_sub(b)?));
    }
    // A bucket that had counts before and has none now went down.
    (matched == before.len()).then_some(out)
}

fn collapse(buckets: &[(i32, u64)]) -> Option<Buckets> {
    let first = buckets.iter().find(|(_, c)| *c > 0)?.0;
    let last = buckets.iter().rev().find(|(_, c)| *c > 0)?.0;
    let mut counts = vec![0u64; (last - first + 1) as usize];
    for &(i, c) in buckets {
        if (first..=last).contains(&i) {
            counts[(i - first) as usize] += c;
        }
    }
    Some(Buckets {
        offset: first,
        bucket_counts: counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::{self, Window};
    use hostscope_common::syscalls::HIST_SLOTS;
    use opentelemetry_proto::tonic::metrics::v1::Metric;

    fn request(
        t: u64,
        start: u64,
        counter: u64,
        slots: &[(usize, u64)],
    ) -> ExportMetricsServiceRequest {
        let w = Window {
            start_unix_nano: start,
            time_unix_nano: t,
        };
        let mut s = [0u64; HIST_SLOTS];
        for &(i, c) in slots {
            s[i] = c;
        }
        let count = s.iter().sum();
        let metrics: Vec<Metric> = vec![
            otlp::counter_metric(
                "c",
                "",
                "1",
                vec![otlp::int_point(vec![otlp::kv_str("k", "v")], w, counter)],
            ),
            otlp::exp_histogram_metric(
                "h",
                "",
                "s",
                vec![otlp::exp_histogram_point(
                    vec![],
                    w,
                    count,
                    count * 1_000,
                    &s,
                )],
            ),
        ];
        ExportMetricsServiceRequest {
            resource_metrics: vec![otlp::resource_metrics(
                vec![otlp::kv_int("process.pid", 1)],
                metrics,
            )],
        }
    }

    fn parts(r: &ExportMetricsServiceRequest) -> (i64, u64, u64, Option<Buckets>, i32) {
        let ms = &r.resource_metrics[0].scope_metrics[0].metrics;
        let Some(Data::Sum(s)) = &ms[0].data else {
            panic!()
        };
        let Some(Data::ExponentialHistogram(h)) = &ms[1].data else {
            panic!()
        };
        let Some(number_data_point::Value::AsInt(v)) = s.data_points[0].value else {
            panic!()
        };
        let hp = &h.data_points[0];
        (
            v,
            hp.count,
            hp.start_time_unix_nano,
            hp.positive.clone(),
            h.aggregation_temporality,
        )
    }

    #[test]
    fn deltas_between_exports_and_resets() {
        let mut d = DeltaConverter::default();
        let mut r1 = request(10, 1, 5, &[(3, 2), (5, 1)]);
        d.convert(&mut r1, Temporality::Delta);
        // First sight: the whole cumulative value, with its own start.
        assert_eq!(parts(&r1).0, 5);
        assert_eq!(parts(&r1).1, 3);
        assert_eq!(parts(&r1).2, 1);
        assert_eq!(parts(&r1).4, DELTA);

        let mut r2 = request(20, 1, 12, &[(3, 2), (5, 4), (6, 1)]);
        d.convert(&mut r2, Temporality::Delta);
        let (v, count, start, buckets, _) = parts(&r2);
        assert_eq!((v, count, start), (7, 4, 10));
        let b = buckets.unwrap();
        assert_eq!((b.offset, b.bucket_counts), (5 - 31, vec![3, 1]));

        // A counter that went down is a reset: sent whole.
        let mut r3 = request(30, 25, 4, &[(1, 1)]);
        d.convert(&mut r3, Temporality::Delta);
        assert_eq!(parts(&r3).0, 4);
        assert_eq!(parts(&r3).2, 25);
    }

    #[test]
    fn low_memory_keeps_sums_cumulative() {
        let mut d = DeltaConverter::default();
        let mut r1 = request(10, 1, 5, &[(3, 2)]);
        d.convert(&mut r1, Temporality::LowMemory);
        let mut r2 = request(20, 1, 9, &[(3, 5)]);
        d.convert(&mut r2, Temporality::LowMemory);
        assert_eq!(parts(&r2).0, 9, "sum stays cumulative");
        assert_eq!(parts(&r2).1, 3, "histogram becomes delta");
    }
}
