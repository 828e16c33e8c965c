//! Prometheus text exposition (format 0.0.4) of the latest interval, served
//! at `GET /metrics` by the agent's HTTP listener (`crate::health`) for
//! pull-based setups, converted as the OpenTelemetry
//! Prometheus compatibility specification describes: dots become
//! underscores, units become suffixes (`_seconds`, `_bytes`; `{...}` units
//! none), counters get `_total`, histograms become `_bucket{le=...}`, `_sum`
//! and `_count` with the fixed power-of-two-second bounds of the kernel's
//! buckets. A scrape sees many processes, so the identifying resource
//! attributes (`process.*`, `service.*`) become labels of every series; the
//! host's (`host.*`, `os.*`) go on `target_info` once.

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value},
    metrics::v1::{metric::Data, number_data_point},
};
use std::sync::RwLock;

use super::explicit;

/// The text served, replaced every interval; shared with the listener.
#[derive(Clone, Default)]
pub struct PrometheusEndpoint {
    text: Arc<RwLock<String>>,
}

impl PrometheusEndpoint {
    /// The exposition of the latest interval (empty before the first).
    pub fn text(&self) -> String {
        self.text.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// Replaces what scrapes see with this interval's metrics.
    pub fn update(&self, metrics: &ExportMetricsServiceRequest) {
        let mut req = metrics.clone();
        explicit::to_explicit(&mut req);
        let text = render(&req);
        if let Ok(mut t) = self.text.write() {
            *t = text;
        }
    }
}

/// A Prometheus metric or label name from an OpenTelemetry one.
fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

fn unit_suffix(unit: &str) -> &str {
    match unit {
        "s" => "_seconds",
        "By" => "_bytes",
        "ms" => "_milliseconds",
        _ => "",
    }
}

fn value_str(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn labels(pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}=\"{}\"", k, escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn attr_pairs(attrs: &[KeyValue]) -> Vec<(String, String)> {
    attrs
        .iter()
        .map(|kv| (sanitize(&kv.key), value_str(&kv.value)))
        .collect()
}

fn float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

/// One metric family: its type, help and sample lines.
#[derive(Default)]
struct Family {
    kind: &'static str,
    help: String,
    lines: Vec<String>,
}

/// Renders a metrics request as Prometheus text.
pub fn render(req: &ExportMetricsServiceRequest) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut target: Vec<(String, String)> = Vec::new();
    for rm in &req.resource_metrics {
        let resource = rm.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        let (host, ident): (Vec<&KeyValue>, Vec<&KeyValue>) = resource
            .iter()
            .partition(|kv| kv.key.starts_with("host.") || kv.key.starts_with("os."));
        if target.is_empty() {
            target = host
                .iter()
                .map(|kv| (sanitize(&kv.key), value_str(&kv.value)))
                .collect();
        }
        let ident: Vec<(String, String)> = ident
            .iter()
            .map(|kv| (sanitize(&kv.key), value_str(&kv.value)))
            .collect();
        for m in rm.scope_metrics.iter().flat_map(|sm| &sm.metrics) {
            let base = format!("{}{}", sanitize(&m.name), unit_suffix(&m.unit));
            let with = |point: &[KeyValue]| {
                let mut l = ident.clone();
                l.extend(attr_pairs(point));
                l
            };
            match &m.data {
                Some(Data::Sum(s)) => {
                    let (name, kind) = if s.is_monotonic {
                        (format!("{base}_total"), "counter")
                    } else {
                        (base.clone(), "gauge")
                    };
                    let f = family(&mut families, &name, kind, &m.description);
                    for p in &s.data_points {
                        f.lines.push(format!(
                            "{name}{} {}",
                            labels(&with(&p.attributes)),
                            number(&p.value)
                        ));
                    }
                }
                Some(Data::Gauge(g)) => {
                    let f = family(&mut families, &base, "gauge", &m.description);
                    for p in &g.data_points {
                        f.lines.push(format!(
                            "{base}{} {}",
                            labels(&with(&p.attributes)),
                            number(&p.value)
                        ));
                    }
                }
                Some(Data::Histogram(h)) => {
                    let f = family(&mut families, &base, "histogram", &m.description);
                    for p in &h.data_points {
                        let l = with(&p.attributes);
                        let mut cumulative = 0u64;
                        for (i, c) in p.bucket_counts.iter().enumerate() {
                            cumulative += c;
                            let le = p.explicit_bounds.get(i).copied().unwrap_or(f64::INFINITY);
                            let mut bl = l.clone();
                            bl.push(("le".into(), float(le)));
                            f.lines
                                .push(format!("{base}_bucket{} {cumulative}", labels(&bl)));
                        }
                        f.lines.push(format!(
                            "{base}_sum{} {}",
                            labels(&l),
                            float(p.sum.unwrap_or(0.0))
                        ));
                        f.lines
                            .push(format!("{base}_count{} {}", labels(&l), p.count));
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = String::new();
    if !target.is_empty() {
        let _ = writeln!(
            out,
            "# HELP target_info Target metadata\n# TYPE target_info gauge"
        );
        let _ = writeln!(out, "target_info{} 1", labels(&target));
    }
    for (name, f) in families {
        let _ = writeln!(out, "# HELP {name} {}", f.help.replace('\n', " "));
        let _ = writeln!(out, "# TYPE {name} {}", f.kind);
        for l in f.lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

fn family<'a>(
    families: &'a mut BTreeMap<String, Family>,
    name: &str,
    kind: &'static str,
    help: &str,
) -> &'a mut Family {
    families.entry(name.to_string()).or_insert_with(|| Family {
        kind,
        help: help.to_string(),
        lines: Vec::new(),
    })
}

fn number(v: &Option<number_data_point::Value>) -> String {
    match v {
        Some(number_data_point::Value::AsInt(i)) => i.to_string(),
        Some(number_data_point::Value::AsDouble(d)) => float(*d),
        None => "0".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::{self, Window};
    use hostscope_common::syscalls::HIST_SLOTS;

    #[test]
    fn renders_counters_and_cumulative_buckets_with_resource_labels() {
        let w = Window {
            start_unix_nano: 1,
            time_unix_nano: 2,
        };
        let mut slots = [0u64; HIST_SLOTS];
        slots[28] = 3;
        slots[30] = 1;
        let metrics = vec![
            otlp::exp_histogram_metric(
                "hostscope.syscall.duration",
                "d",
                "s",
                vec![otlp::exp_histogram_point(
                    vec![otlp::kv_str("syscall.name", "read")],
                    w,
                    4,
                    1_500_000_000,
                    &slots,
                )],
            ),
            otlp::counter_metric(
                "hostscope.syscall.errors",
                "e",
                "{error}",
                vec![otlp::int_point(
                    vec![otlp::kv_str("error.type", "EAGAIN")],
                    w,
                    7,
                )],
            ),
        ];
        let req = ExportMetricsServiceRequest {
            resource_metrics: vec![otlp::resource_metrics(
                vec![
                    otlp::kv_str("host.name", "h"),
                    otlp::kv_int("process.pid", 42),
                ],
                metrics,
            )],
        };
        let mut r = req.clone();
        explicit::to_explicit(&mut r);
        let text = render(&r);
        assert!(text.contains("target_info{host_name=\"h\"} 1"), "{text}");
        assert!(
            text.contains("# TYPE hostscope_syscall_duration_seconds histogram"),
            "{text}"
        );
        assert!(text.contains(r#"hostscope_syscall_duration_seconds_bucket{process_pid="42",syscall_name="read",le="0.25"} 3"#), "{text}");
        assert!(text.contains(r#"hostscope_syscall_duration_seconds_bucket{process_pid="42",syscall_name="read",le="1"} 4"#), "{text}");
        assert!(text.contains(r#"hostscope_syscall_duration_seconds_bucket{process_pid="42",syscall_name="read",le="+Inf"} 4"#), "{text}");
        assert!(text.contains(r#"hostscope_syscall_duration_seconds_count{process_pid="42",syscall_name="read"} 4"#), "{text}");
        assert!(
            text.contains(
                r#"hostscope_syscall_errors_total{process_pid="42",error_type="EAGAIN"} 7"#
            ),
            "{text}"
        );
    }
}
