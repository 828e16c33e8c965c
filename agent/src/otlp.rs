//! Building OTLP protobuf messages (the `opentelemetry-proto` types) from
//! kernel aggregates, with no SDK instruments in between.

use hostscope_common::syscalls::{HIST_SLOTS, SLOT0_OTLP_INDEX};
use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Metric,
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
        exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    },
    resource::v1::Resource,
};

/// Instrumentation scope of everything hostscope emits.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "hostscope".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

pub fn kv_str(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

pub fn kv_bool(key: &str, value: bool) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::BoolValue(value)),
        }),
        ..Default::default()
    }
}

pub fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// One resource with one scope holding `metrics`.
pub fn resource_metrics(attributes: Vec<KeyValue>, metrics: Vec<Metric>) -> ResourceMetrics {
    ResourceMetrics {
        resource: Some(Resource {
            attributes,
            ..Default::default()
        }),
        scope_metrics: vec![ScopeMetrics {
            scope: Some(scope()),
            metrics,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Start and end of a cumulative data point.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start_unix_nano: u64,
    pub time_unix_nano: u64,
}

/// A base-2 exponential histogram data point (scale 0, unit seconds) made
/// directly from kernel slots: slot `s` is OTLP bucket `s + SLOT0_OTLP_INDEX`.
pub fn exp_histogram_point(
    attributes: Vec<KeyValue>,
    w: Window,
    count: u64,
    sum_ns: u64,
    slots: &[u64; HIST_SLOTS],
) -> ExponentialHistogramDataPoint {
    let first = slots.iter().position(|&c| c != 0);
    let last = slots.iter().rposition(|&c| c != 0);
    let positive = match (first, last) {
        (Some(first), Some(last)) => Some(Buckets {
            offset: first as i32 + SLOT0_OTLP_INDEX,
            bucket_counts: slots[first..=last].to_vec(),
        }),
        _ => None,
    };
    ExponentialHistogramDataPoint {
        attributes,
        start_time_unix_nano: w.start_unix_nano,
        time_unix_nano: w.time_unix_nano,
        count,
        sum: Some(sum_ns as f64 / 1e9),
        scale: 0,
        zero_count: 0,
        positive,
        ..Default::default()
    }
}

pub fn int_point(attributes: Vec<KeyValue>, w: Window, value: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: w.start_unix_nano,
        time_unix_nano: w.time_unix_nano,
        value: Some(number_data_point::Value::AsInt(
            value.min(i64::MAX as u64) as i64
        )),
        ..Default::default()
    }
}

pub fn double_point(attributes: Vec<KeyValue>, w: Window, value: f64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: w.start_unix_nano,
        time_unix_nano: w.time_unix_nano,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    }
}

fn metric(name: &str, description: &str, unit: &str, data: Data) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(data),
        ..Default::default()
    }
}

/// A cumulative base-2 exponential histogram.
pub fn exp_histogram_metric(
    name: &str,
    description: &str,
    unit: &str,
    points: Vec<ExponentialHistogramDataPoint>,
) -> Metric {
    let data = Data::ExponentialHistogram(ExponentialHistogram {
        data_points: points,
        aggregation_temporality: AggregationTemporality::Cumulative as i32,
    });
    metric(name, description, unit, data)
}

/// A cumulative monotonic sum (an OpenTelemetry counter).
pub fn counter_metric(
    name: &str,
    description: &str,
    unit: &str,
    points: Vec<NumberDataPoint>,
) -> Metric {
    let data = Data::Sum(Sum {
        data_points: points,
        aggregation_temporality: AggregationTemporality::Cumulative as i32,
        is_monotonic: true,
    });
    metric(name, description, unit, data)
}

pub fn gauge_metric(
    name: &str,
    description: &str,
    unit: &str,
    points: Vec<NumberDataPoint>,
) -> Metric {
    let data = Data::Gauge(Gauge {
        data_points: points,
    });
    metric(name, description, unit, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_trimmed_and_offset() {
        let mut slots = [0u64; HIST_SLOTS];
        slots[5] = 2;
        slots[7] = 3;
        let w = Window {
            start_unix_nano: 1,
            time_unix_nano: 2,
        };
        let p = exp_histogram_point(vec![], w, 5, 2_000_000_000, &slots);
        let b = p.positive.unwrap();
        assert_eq!(b.offset, 5 - 31);
        assert_eq!(b.bucket_counts, vec![2, 0, 3]);
        assert_eq!(p.sum, Some(2.0));
        assert_eq!(p.count, b.bucket_counts.iter().sum::<u64>());
    }

    #[test]
    fn json_mapping_uses_strings_for_64_bit_integers() {
        let w = Window {
            start_unix_nano: 1_700_000_000_000_000_000,
            time_unix_nano: 1_700_000_000_000_000_001,
        };
        let m = counter_metric("c", "", "1", vec![int_point(vec![kv_str("k", "v")], w, 7)]);
        let json = serde_json::to_value(&m).unwrap();
        let p = &json["sum"]["dataPoints"][0];
        assert_eq!(p["asInt"], "7");
        assert_eq!(p["timeUnixNano"], "1700000000000000001");
        assert_eq!(p["attributes"][0]["value"]["stringValue"], "v");
        assert_eq!(json["sum"]["aggregationTemporality"], 2);
        assert_eq!(json["sum"]["isMonotonic"], true);
    }
}
