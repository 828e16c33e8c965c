//! Explicit-bucket histograms for OTLP exporters configured with
//! `OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION=explicit_bucket_histogram`
//! (the specification's default). The kernel's buckets are powers of two
//! seconds; the explicit bounds are every other one of those boundaries,
//! `4^k` s from 2^-24 s (60 ns) to 2^6 s (64 s), so kernel buckets merge into
//! them exactly. One fixed set of 16 bounds for every point and interval
//! (backends that key series by bucket bound see no churn), and a point
//! costs about a third of the bytes that all 47 kernel boundaries would:
//! at 100k series that is the difference between 25 MB and 70 MB per
//! interval.

use hostscope_common::syscalls::{HIST_SLOTS, SLOT0_OTLP_INDEX};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    metrics::v1::{ExponentialHistogramDataPoint, Histogram, HistogramDataPoint, metric::Data},
};

/// Base-2 exponents of the explicit bounds: 2^-24 s, 2^-22 s, ..., 2^6 s.
const BOUND_EXPONENTS: [i32; 16] = {
    let mut e = [0i32; 16];
    let mut i = 0;
    while i < 16 {
        e[i] = 2 * i as i32 - 24;
        i += 1;
    }
    e
};

fn bounds() -> Vec<f64> {
    BOUND_EXPONENTS.iter().map(|&e| 2f64.powi(e)).collect()
}

/// The explicit bucket that holds all of kernel slot `slot`, whose upper
/// bound is `2^(slot + SLOT0_OTLP_INDEX + 1)` s (the top slot is open and
/// lands in the open top bucket).
fn bucket_of_slot(slot: usize) -> usize {
    let upper = slot as i32 + SLOT0_OTLP_INDEX + 1;
    if slot == HIST_SLOTS - 1 {
        return BOUND_EXPONENTS.len();
    }
    BOUND_EXPONENTS.iter().filter(|&&e| e < upper).count()
}

/// Rewrites every scale-0 exponential histogram in `req` as an explicit one.
pub fn to_explicit(req: &mut ExportMetricsServiceRequest) {
    let bounds = bounds();
    let bucket: [usize; HIST_SLOTS] = std::array::from_fn(bucket_of_slot);
    for m in req
        .resource_metrics
        .iter_mut()
        .flat_map(|rm| &mut rm.scope_metrics)
        .flat_map(|sm| &mut sm.metrics)
    {
        if let Some(Data::ExponentialHistogram(h)) = &mut m.data
            && h.data_points.iter().all(|p| p.scale == 0)
        {
            let points = std::mem::take(&mut h.data_points)
                .into_iter()
                .map(|p| convert(p, &bounds, &bucket))
                .collect();
            m.data = Some(Data::Histogram(Histogram {
                data_points: points,
                aggregation_temporality: h.aggregation_temporality,
            }));
        }
    }
}

fn convert(
    p: ExponentialHistogramDataPoint,
    bounds: &[f64],
    bucket: &[usize; HIST_SLOTS],
) -> HistogramDataPoint {
    let mut counts = vec![0u64; bounds.len() + 1];
    // Zero-width durations belong in the first bucket (-inf, 2^-30].
    counts[0] += p.zero_count;
    if let Some(b) = &p.positive {
        for (i, c) in b.bucket_counts.iter().enumerate() {
            // OTLP bucket index -> kernel slot, clamped to the open ends.
            let slot = (b.offset + i as i32 - SLOT0_OTLP_INDEX).clamp(0, HIST_SLOTS as i32 - 1);
            counts[bucket[slot as usize]] += c;
        }
    }
    HistogramDataPoint {
        attributes: p.attributes,
        start_time_unix_nano: p.start_time_unix_nano,
        time_unix_nano: p.time_unix_nano,
        count: p.count,
        sum: p.sum,
        bucket_counts: counts,
        explicit_bounds: bounds.to_vec(),
        exemplars: p.exemplars,
        flags: p.flags,
        min: p.min,
        max: p.max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::{self, Window};

    #[test]
    fn kernel_buckets_map_exactly_onto_power_of_two_bounds() {
        let mut slots = [0u64; HIST_SLOTS];
        slots[28] = 3; // (2^-3, 2^-2] s
        slots[HIST_SLOTS - 1] = 1; // open-ended top slot
        let w = Window {
            start_unix_nano: 1,
            time_unix_nano: 2,
        };
        let metric = otlp::exp_histogram_metric(
            "h",
            "",
            "s",
            vec![otlp::exp_histogram_point(vec![], w, 4, 1, &slots)],
        );
        let mut req = ExportMetricsServiceRequest {
            resource_metrics: vec![otlp::resource_metrics(vec![], vec![metric])],
        };
        to_explicit(&mut req);
        let Some(Data::Histogram(h)) = &req.resource_metrics[0].scope_metrics[0].metrics[0].data
        else {
            panic!("expected an explicit histogram")
        };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds.len() + 1, p.bucket_counts.len());
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), p.count);
        // Slot 28, (0.125, 0.25] s, lies in bucket 11 = (bounds[10], bounds[11]] = (1/16, 1/4].
        assert_eq!(p.bucket_counts[11], 3);
        assert_eq!(
            (p.explicit_bounds[10], p.explicit_bounds[11]),
            (0.0625, 0.25)
        );
        assert_eq!(p.bucket_counts[16], 1, "last bucket is (64 s, +inf)");
        assert_eq!(p.explicit_bounds[0], 2f64.powi(-24));
    }

    /// Every kernel slot lies wholly inside one explicit bucket, so merging
    /// is exact: the slot's range (2^(u-1), 2^u] is within (lower, upper].
    #[test]
    fn every_kernel_slot_lies_inside_one_bucket() {
        let b = bounds();
        for slot in 0..HIST_SLOTS - 1 {
            let (lo, hi) = (
                2f64.powi(slot as i32 + SLOT0_OTLP_INDEX),
                2f64.powi(slot as i32 + SLOT0_OTLP_INDEX + 1),
            );
            let j = bucket_of_slot(slot);
            let (blo, bhi) = (
                if j == 0 { f64::NEG_INFINITY } else { b[j - 1] },
                b.get(j).copied().unwrap_or(f64::INFINITY),
            );
            assert!(
                blo <= lo && hi <= bhi,
                "slot {slot} ({lo}, {hi}] not inside bucket {j} ({blo}, {bhi}]"
            );
        }
    }
}
