//! Reading the OTLP/JSON the agent prints (the protobuf JSON mapping, where
//! 64-bit integers are strings).

use serde_json::Value;

/// Attributes as (key, value-as-string) pairs.
pub type Attrs = Vec<(String, String)>;

/// One resource of a metrics line: its attributes and its metrics.
pub type ResourceView = (Attrs, Vec<Value>);

/// A number that the JSON mapping may give as a string or a number.
pub fn num(v: &Value) -> u64 {
    match v {
        Value::String(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("not an integer: {s:?}")),
        Value::Number(n) => n.as_u64().unwrap_or_else(|| panic!("not a u64: {n}")),
        other => panic!("expected an integer, got {other}"),
    }
}

/// Attributes of an OTLP attribute list.
pub fn attrs(v: &Value) -> Attrs {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|kv| {
                    let val = &kv["value"];
                    let s = val
                        .get("stringValue")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .or_else(|| val.get("intValue").map(|i| num(i).to_string()))
                        .unwrap_or_else(|| val.to_string());
                    (kv["key"].as_str().unwrap().to_string(), s)
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn attr<'a>(attrs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The resources of a metrics line: (resource attributes, metrics).
pub fn resources(line: &Value) -> Vec<ResourceView> {
    let Some(rms) = line["resourceMetrics"].as_array() else {
        return Vec::new();
    };
    rms.iter()
        .map(|rm| {
            let metrics = rm["scopeMetrics"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|sm| sm["metrics"].as_array().cloned().unwrap_or_default())
                .collect();
            (attrs(&rm["resource"]["attributes"]), metrics)
        })
        .collect()
}

/// Metrics of the process with `pid` in a metrics line.
pub fn process_metrics(line: &Value, pid: u32) -> Option<ResourceView> {
    let pid = pid.to_string();
    resources(line).into_iter().find(|(a, _)| {
        attr(a, "process.pid") == Some(pid.as_str()) && attr(a, "service.name").is_none()
    })
}

/// The data points of metric `name`.
pub fn points<'a>(metrics: &'a [Value], name: &str) -> Vec<&'a Value> {
    metrics
        .iter()
        .filter(|m| m["name"] == name)
        .flat_map(|m| {
            ["sum", "gauge", "histogram", "exponentialHistogram"]
                .iter()
                .filter_map(|k| m.get(*k))
                .flat_map(|d| d["dataPoints"].as_array().into_iter().flatten())
        })
        .collect()
}

/// The point whose attributes include every `(key, value)` of `want`.
pub fn point<'a>(metrics: &'a [Value], name: &str, want: &[(&str, &str)]) -> Option<&'a Value> {
    points(metrics, name).into_iter().find(|p| {
        let a = attrs(&p["attributes"]);
        want.iter().all(|(k, v)| attr(&a, k) == Some(v))
    })
}

/// An exponential histogram data point, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpHistogram {
    pub count: u64,
    pub sum: f64,
    pub scale: i64,
    /// (bucket index, count) for every non-empty bucket.
    pub buckets: Vec<(i32, u64)>,
}

impl ExpHistogram {
    pub fn from_point(p: &Value) -> Self {
        let offset = p["positive"]["offset"].as_i64().unwrap_or(0) as i32;
        let buckets = p["positive"]["bucketCounts"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, c)| (offset + i as i32, num(c)))
            .filter(|(_, c)| *c > 0)
            .collect();
        ExpHistogram {
            count: num(&p["count"]),
            sum: p["sum"].as_f64().unwrap_or(0.0),
            scale: p["scale"].as_i64().unwrap_or(0),
            buckets,
        }
    }

    pub fn bucket_total(&self) -> u64 {
        self.buckets.iter().map(|(_, c)| c).sum()
    }
}

/// OTLP exponential-histogram bucket index at scale 0 of a duration: the
/// bucket `(2^i, 2^(i+1)]` seconds holding it.
pub fn bucket_index_s(seconds: f64) -> i32 {
    (seconds.log2().ceil() as i32) - 1
}

/// Spans of the process with `pid` in a traces line.
pub fn process_spans(line: &Value, pid: u32) -> Vec<Value> {
    let pid = pid.to_string();
    line["resourceSpans"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|rs| {
            attr(&attrs(&rs["resource"]["attributes"]), "process.pid") == Some(pid.as_str())
        })
        .flat_map(|rs| {
            rs["scopeSpans"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
        })
        .collect()
}
