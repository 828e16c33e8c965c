//! Explicit-bucket histograms for OTLP exporters configured with
//! `OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION=explicit_bucket_histogram`
//! (the specification's default). The kernel's buckets are powers of two
//! seconds, so they convert exactly: one fixed set of bounds, `2^k` s for
//! every kernel slot boundary, the same for every point and every interval
//! (so backends that key series by bucket bound see no churn).

use hostscope_common::syscalls::{HIST_SLOTS, SLOT0_OTLP_INDEX};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    metrics::v1::{ExponentialHistogramDataPoint, Histogram, HistogramDataPoint, metric::Data},
};

/// Upper bounds of kernel slots 0..HIST_SLOTS-1 (the last slot is open).
fn bounds() -> Vec<f64> {
    (0..HIST_SLOTS as i32 - 1)
        .map(|s| 2f64.powi(s + SLOT0_OTLP_INDEX + 1))
        .collect()
}

/// Rewrites every scale-0 exponential histogram in `req` as an explicit one.
pub fn to_explicit(req: &mut ExportMetricsServiceRequest) {
    let bounds = bounds();
    for m in req
        .resource_metrics
        .iter_mut()
        .flat_map(|rm| &mut rm.scope_metrics)
        .flat_map(|sm| &mut sm.metrics)
    {
        if let Some(Data::ExponentialHistogram(h)) = &m.data
            && h.data_points.iter().all(|p| p.scale == 0)
        {
            let points = h.data_points.iter().map(|p| convert(p, &bounds)).collect();
            m.data = Some(Data::Histogram(Histogram {
                data_points: points,
                aggregation_temporality: h.aggregation_temporality,
            }));
        }
    }
}

fn convert(p: &ExponentialHistogramDataPoint, bounds: &[f64]) -> HistogramDataPoint {
    let mut counts = vec![0u64; bounds.len() + 1];
    // Zero-width durations belong in the first bucket (-inf, 2^-30].
    counts[0] += p.zero_count;
    if let Some(b) = &p.positive {
        for (i, c) in b.bucket_counts.iter().enumerate() {
            // OTLP bucket index -> kernel slot, clamped to the open ends.
            let slot = (b.offset + i as i32 - SLOT0_OTLP_INDEX).clamp(0, HIST_SLOTS as i32 - 1);
            counts[slot as usize] += c;
        }
    }
    HistogramDataPoint {
        attributes: p.attributes.clone(),
        start_time_unix_nano: p.start_time_unix_nano,
        time_unix_nano: p.time_unix_nano,
        count: p.count,
        sum: p.sum,
        bucket_counts: counts,
        explicit_bounds: bounds.to_vec(),
        exemplars: p.exemplars.clone(),
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
        // Bucket 28 is (bounds[27], bounds[28]] = (0.125, 0.25].
        assert_eq!(p.bucket_counts[28], 3);
        assert_eq!(
            (p.explicit_bounds[27], p.explicit_bounds[28]),
            (0.125, 0.25)
        );
        assert_eq!(
            p.bucket_counts[HIST_SLOTS - 1],
            1,
            "last bucket is (2^16 s, +inf)"
        );
        assert_eq!(p.explicit_bounds[0], 2f64.powi(-30));
    }
}
