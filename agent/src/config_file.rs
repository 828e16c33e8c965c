//! The YAML configuration file (`hostscope run --config FILE`).
//!
//! Precedence, lowest first: built-in defaults, `OTEL_*` environment
//! variables, this file, command-line flags. Settings that have a standard
//! `OTEL_*` variable are written in the file under names that mirror it
//! (`otlp.metrics.endpoint` is `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`) and
//! are applied by layering them over the environment, so the file and the
//! variables share one parser and one set of checks; an error in such a
//! value names the file and the key. Unknown keys and values of the wrong
//! type are rejected with the key's path before anything is loaded.

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde::{Deserialize, Deserializer};
use thiserror::Error;

use crate::{budget::Granularity, config::HookPreference};

/// Why the file could not be used.
#[derive(Debug, Error, PartialEq)]
pub enum FileError {
    #[error("config file {path}: cannot read it: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path}: {key}: {reason}")]
    Invalid {
        path: String,
        key: String,
        reason: String,
    },
}

/// The file, as written. Every key is optional; absent keys leave the
/// setting to the environment or the defaults.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Time between exports, e.g. `10s` (OTEL_METRIC_EXPORT_INTERVAL).
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<Duration>,
    pub exporters: Option<Exporters>,
    pub otlp: Option<Otlp>,
    pub prometheus: Option<Prometheus>,
    /// Address of the HTTP listener (`/healthz`, `/readyz`, `/metrics`):
    /// `IP:PORT` or `none` (the `--listen` flag).
    #[serde(default, deserialize_with = "listen")]
    pub listen: Option<Option<std::net::SocketAddr>>,
    /// Keep every capability after attaching (`--keep-capabilities`).
    pub keep_capabilities: Option<bool>,
    pub resource: Option<ResourceSection>,
    pub export: Option<Export>,
    pub hook_type: Option<HookName>,
    pub syscalls: Option<Syscalls>,
    pub tcp: Option<Tcp>,
    pub cgroups: Option<Cgroups>,
    pub sched: Option<Sched>,
    pub oom: Option<Oom>,
    pub limits: Option<Limits>,
    pub filter: Option<Filter>,
    pub identity: Option<Identity>,
    pub kubernetes: Option<Kubernetes>,
}

/// `kubernetes:` pod metadata from the API server.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    pub enabled: Option<bool>,
    /// `https://HOST[:PORT]`, or `http://` to a loopback address.
    #[serde(default, deserialize_with = "api_url")]
    pub api_url: Option<String>,
    /// Overrides `K8S_NODE_NAME`.
    pub node_name: Option<String>,
    /// Label keys exported as `k8s.pod.label.<key>`.
    pub labels: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Sched {
    pub enabled: Option<bool>,
    /// `process`, `executable` or `container`.
    pub granularity: Option<Granularity>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Oom {
    pub enabled: Option<bool>,
}

/// `identity:` what process resources carry.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub command_line: Option<bool>,
    pub command_line_max_bytes: Option<u32>,
}

/// `filter:` what is not measured (see `crate::filter`).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub include_cgroups: Option<Vec<String>>,
    pub exclude_cgroups: Option<Vec<String>>,
    pub exclude_processes: Option<Vec<String>>,
    pub exclude_namespaces: Option<Vec<String>>,
}

/// `limits:` cardinality budgets (see `crate::budget`).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_series_per_metric: Option<u32>,
    pub max_series: Option<u32>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cgroups {
    pub enabled: Option<bool>,
    pub max_cgroups: Option<u32>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tcp {
    pub enabled: Option<bool>,
    pub per_connection: Option<bool>,
    pub max_series: Option<u32>,
    pub max_sockets: Option<u32>,
    pub events_per_cpu: Option<u32>,
    /// `process`, `executable` or `container`.
    pub granularity: Option<Granularity>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Exporters {
    /// OTEL_METRICS_EXPORTER: otlp, console, prometheus, none.
    pub metrics: Option<Vec<ExporterName>>,
    /// OTEL_TRACES_EXPORTER: otlp, console, none.
    pub traces: Option<Vec<ExporterName>>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum ExporterName {
    Otlp,
    Console,
    Stdout,
    Prometheus,
    None,
}

impl ExporterName {
    fn as_env(self) -> &'static str {
        match self {
            ExporterName::Otlp => "otlp",
            ExporterName::Console | ExporterName::Stdout => "console",
            ExporterName::Prometheus => "prometheus",
            ExporterName::None => "none",
        }
    }
}

/// The settings every OTLP section has (`OTEL_EXPORTER_OTLP_[SIGNAL_]*`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OtlpSettings {
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub compression: Option<String>,
    pub timeout: Option<Duration>,
    pub certificate: Option<String>,
    pub client_certificate: Option<String>,
    pub client_key: Option<String>,
}

/// An OTLP section: the common settings (written out in each struct, since
/// serde cannot reject unknown keys through `flatten`) and `$extra` fields.
macro_rules! otlp_section {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Default, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub endpoint: Option<String>,
            /// `grpc` or `http/protobuf`.
            pub protocol: Option<String>,
            pub headers: Option<BTreeMap<String, String>>,
            /// `gzip` or `none`.
            pub compression: Option<String>,
            #[serde(default, deserialize_with = "duration")]
            pub timeout: Option<Duration>,
            /// PEM file of the CA to trust.
            pub certificate: Option<String>,
            pub client_certificate: Option<String>,
            pub client_key: Option<String>,
            $($(#[$fdoc])* pub $field: $ty,)*
        }

        impl $name {
            pub fn common(&self) -> OtlpSettings {
                OtlpSettings {
                    endpoint: self.endpoint.clone(),
                    protocol: self.protocol.clone(),
                    headers: self.headers.clone(),
                    compression: self.compression.clone(),
                    timeout: self.timeout,
                    certificate: self.certificate.clone(),
                    client_certificate: self.client_certificate.clone(),
                    client_key: self.client_key.clone(),
                }
            }
        }
    };
}

otlp_section!(
    /// `otlp:` the settings for both signals, and per-signal overrides.
    Otlp {
        metrics: Option<OtlpMetrics>,
        traces: Option<OtlpTraces>,
    }
);

otlp_section!(
    /// `otlp.metrics:`
    OtlpMetrics {
        /// `cumulative`, `delta` or `lowmemory`.
        temporality_preference: Option<String>,
        /// `explicit_bucket_histogram` or `base2_exponential_bucket_histogram`.
        default_histogram_aggregation: Option<String>,
    }
);

otlp_section!(
    /// `otlp.traces:`
    OtlpTraces {}
);

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Prometheus {
    pub host: Option<String>,
    pub port: Option<u16>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResourceSection {
    /// Added to every resource (OTEL_RESOURCE_ATTRIBUTES).
    pub attributes: Option<BTreeMap<String, String>>,
    /// OTEL_SERVICE_NAME.
    pub service_name: Option<String>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Export {
    pub queue_bytes: Option<usize>,
    pub max_request_bytes: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub shutdown_timeout: Option<Duration>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum HookName {
    Auto,
    TpBtf,
    RawTp,
}

impl From<HookName> for HookPreference {
    fn from(h: HookName) -> Self {
        match h {
            HookName::Auto => HookPreference::Auto,
            HookName::TpBtf => HookPreference::TpBtf,
            HookName::RawTp => HookPreference::RawTp,
        }
    }
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Syscalls {
    pub enabled: Option<bool>,
    /// `100ms`, `1s`, or `off`.
    #[serde(default, deserialize_with = "threshold")]
    pub slow_threshold: Option<Option<Duration>>,
    pub slow_events_per_cpu: Option<u32>,
    pub max_series: Option<u32>,
    pub max_error_series: Option<u32>,
    pub max_inflight_threads: Option<u32>,
    /// `process`, `executable` or `container`.
    pub granularity: Option<Granularity>,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    let v = humantime::parse_duration(s.trim()).map_err(|e| {
        serde::de::Error::custom(format!("{s:?} is not a duration such as 10s or 500ms: {e}"))
    })?;
    if v.is_zero() {
        return Err(serde::de::Error::custom("must be more than zero"));
    }
    Ok(Some(v))
}

fn api_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    crate::k8s::check_api_url(s.trim()).map_err(serde::de::Error::custom)?;
    Ok(Some(s.trim().to_string()))
}

fn listen<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<std::net::SocketAddr>>, D::Error> {
    let s = String::deserialize(d)?;
    crate::config::parse_listen(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn threshold<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<Duration>>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(Some(None));
    }
    let v = humantime::parse_duration(s.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration such as 100ms, or off: {e}"
        ))
    })?;
    if v.is_zero() {
        return Err(serde::de::Error::custom(
            "a zero threshold would send every syscall; use off to disable",
        ));
    }
    Ok(Some(Some(v)))
}

/// A loaded file: its settings, and the `OTEL_*` variables it stands for,
/// each with the key it came from.
#[derive(Debug, Default)]
pub struct Loaded {
    pub path: String,
    pub file: FileConfig,
    /// Variable name -> (value, key path in the file).
    pub vars: BTreeMap<String, (String, String)>,
}

impl Loaded {
    /// Reads and checks `path`.
    pub fn read(path: &Path) -> Result<Self, FileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| FileError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&shown, &text)
    }

    pub fn parse(path: &str, text: &str) -> Result<Self, FileError> {
        let file: FileConfig = if text.trim().is_empty() {
            FileConfig::default()
        } else {
            let de = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let key = e.path().to_string();
                let reason = e.into_inner().to_string();
                // The YAML parser may name the key itself; say it once.
                let reason = reason
                    .strip_prefix(&format!("{key}: "))
                    .map_or(reason.clone(), str::to_string);
                FileError::Invalid {
                    path: path.to_string(),
                    key: if key == "." {
                        "(top level)".into()
                    } else {
                        key
                    },
                    reason,
                }
            })?
        };
        let mut loaded = Loaded {
            path: path.to_string(),
            vars: BTreeMap::new(),
            file: FileConfig::default(),
        };
        if file.listen.is_some()
            && file
                .prometheus
                .as_ref()
                .is_some_and(|p| p.host.is_some() || p.port.is_some())
        {
            return Err(FileError::Invalid {
                path: path.to_string(),
                key: "listen".into(),
                reason: "both listen and prometheus.host/prometheus.port give the listener's \
                         address; keep listen"
                    .into(),
            });
        }
        loaded.collect_vars(&file);
        loaded.file = file;
        Ok(loaded)
    }

    fn set(&mut self, var: &str, value: String, key: &str) {
        self.vars.insert(var.to_string(), (value, key.to_string()));
    }

    fn collect_vars(&mut self, f: &FileConfig) {
        if let Some(i) = f.interval {
            self.set(
                "OTEL_METRIC_EXPORT_INTERVAL",
                i.as_millis().to_string(),
                "interval",
            );
        }
        if let Some(e) = &f.exporters {
            for (list, var, key) in [
                (&e.metrics, "OTEL_METRICS_EXPORTER", "exporters.metrics"),
                (&e.traces, "OTEL_TRACES_EXPORTER", "exporters.traces"),
            ] {
                if let Some(list) = list {
                    let v: Vec<&str> = list.iter().map(|x| x.as_env()).collect();
                    // An empty list means none.
                    let v = if v.is_empty() {
                        "none".to_string()
                    } else {
                        v.join(",")
                    };
                    self.set(var, v, key);
                }
            }
        }
        if let Some(o) = &f.otlp {
            self.otlp_vars(&o.common(), "", "otlp");
            if let Some(m) = &o.metrics {
                self.otlp_vars(&m.common(), "METRICS_", "otlp.metrics");
                if let Some(t) = &m.temporality_preference {
                    self.set(
                        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
                        t.clone(),
                        "otlp.metrics.temporality_preference",
                    );
                }
                if let Some(h) = &m.default_histogram_aggregation {
                    self.set(
                        "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
                        h.clone(),
                        "otlp.metrics.default_histogram_aggregation",
                    );
                }
            }
            if let Some(t) = &o.traces {
                self.otlp_vars(&t.common(), "TRACES_", "otlp.traces");
            }
        }
        if let Some(p) = &f.prometheus {
            if let Some(h) = &p.host {
                self.set(
                    "OTEL_EXPORTER_PROMETHEUS_HOST",
                    h.clone(),
                    "prometheus.host",
                );
            }
            if let Some(port) = p.port {
                self.set(
                    "OTEL_EXPORTER_PROMETHEUS_PORT",
                    port.to_string(),
                    "prometheus.port",
                );
            }
        }
        if let Some(r) = &f.resource {
            if let Some(a) = &r.attributes {
                self.set(
                    "OTEL_RESOURCE_ATTRIBUTES",
                    key_values(a),
                    "resource.attributes",
                );
            }
            if let Some(n) = &r.service_name {
                self.set("OTEL_SERVICE_NAME", n.clone(), "resource.service_name");
            }
        }
    }

    fn otlp_vars(&mut self, s: &OtlpSettings, infix: &str, key: &str) {
        let var = |suffix: &str| format!("OTEL_EXPORTER_OTLP_{infix}{suffix}");
        let k = |name: &str| format!("{key}.{name}");
        for (suffix, name, value) in [
            ("ENDPOINT", "endpoint", s.endpoint.clone()),
            ("PROTOCOL", "protocol", s.protocol.clone()),
            ("HEADERS", "headers", s.headers.as_ref().map(key_values)),
            ("COMPRESSION", "compression", s.compression.clone()),
            (
                "TIMEOUT",
                "timeout",
                s.timeout.map(|t| t.as_millis().to_string()),
            ),
            ("CERTIFICATE", "certificate", s.certificate.clone()),
            (
                "CLIENT_CERTIFICATE",
                "client_certificate",
                s.client_certificate.clone(),
            ),
            ("CLIENT_KEY", "client_key", s.client_key.clone()),
        ] {
            if let Some(v) = value {
                self.set(&var(suffix), v, &k(name));
            }
        }
    }

    /// The variable `name`: from the file if it sets it, else from `env`.
    pub fn lookup(&self, name: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
        match self.vars.get(name) {
            Some((v, _)) => Some(v.clone()),
            None => env(name),
        }
    }

    /// The number the file gives for `key` (the settings that are range
    /// checked), if it sets it.
    pub fn number(&self, key: &str) -> Option<u64> {
        let f = &self.file;
        let (e, s) = (f.export.as_ref(), f.syscalls.as_ref());
        match key {
            "export.queue_bytes" => e?.queue_bytes.map(|v| v as u64),
            "export.max_request_bytes" => e?.max_request_bytes.map(|v| v as u64),
            "syscalls.slow_events_per_cpu" => s?.slow_events_per_cpu.map(u64::from),
            "syscalls.max_series" => s?.max_series.map(u64::from),
            "syscalls.max_error_series" => s?.max_error_series.map(u64::from),
            "syscalls.max_inflight_threads" => s?.max_inflight_threads.map(u64::from),
            "tcp.max_series" => f.tcp.as_ref()?.max_series.map(u64::from),
            "tcp.max_sockets" => f.tcp.as_ref()?.max_sockets.map(u64::from),
            "tcp.events_per_cpu" => f.tcp.as_ref()?.events_per_cpu.map(u64::from),
            "cgroups.max_cgroups" => f.cgroups.as_ref()?.max_cgroups.map(u64::from),
            "limits.max_series_per_metric" => {
                f.limits.as_ref()?.max_series_per_metric.map(u64::from)
            }
            "limits.max_series" => f.limits.as_ref()?.max_series.map(u64::from),
            "identity.command_line_max_bytes" => {
                f.identity.as_ref()?.command_line_max_bytes.map(u64::from)
            }
            _ => None,
        }
    }

    /// The file key that stands for variable `var`, if the file set it.
    pub fn key_of(&self, var: &str) -> Option<&str> {
        self.vars.get(var).map(|(_, k)| k.as_str())
    }
}

/// `k=v,...` with values percent-encoded, as OTEL_EXPORTER_OTLP_HEADERS and
/// OTEL_RESOURCE_ATTRIBUTES carry them.
fn key_values(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file's keys, found by asking the parser: an unknown key's error
    /// lists the known ones of its section.
    fn keys(prefix: &str) -> Vec<String> {
        let probe = "zz_not_a_key";
        let yaml = if prefix.is_empty() {
            format!("{probe}: 1")
        } else {
            let mut y = format!("{probe}: 1");
            for part in prefix.split('.').rev() {
                y = format!("{part}: {{ {y} }}");
            }
            y
        };
        let Err(FileError::Invalid { reason, .. }) = Loaded::parse("f.yaml", &yaml) else {
            return Vec::new();
        };
        // "unknown field `x`, expected `a`", "... expected `a` or `b`",
        // "... expected one of `a`, `b`, ..."; anything else: a leaf.
        if !reason.contains("unknown field") {
            return Vec::new();
        }
        let Some((_, list)) = reason.split_once(", expected") else {
            return Vec::new();
        };
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(|k| {
                if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                }
            })
            .collect()
    }

    fn all_keys(prefix: &str, out: &mut Vec<String>) {
        for k in keys(prefix) {
            let before = out.len();
            all_keys(&k, out);
            if out.len() == before {
                out.push(k);
            }
        }
    }

    /// docs/configuration.md is the one reference: every file key and every
    /// flag of `hostscope run` has a row there, and every key and flag named
    /// there exists.
    #[test]
    fn the_reference_names_every_key_and_flag() {
        let doc = include_str!("../../docs/configuration.md");
        let reference = doc
            .split("\n## Reference")
            .nth(1)
            .and_then(|r| r.split("\n## ").next())
            .expect("a Reference section");
        let table: Vec<&str> = reference
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| file key"))
            .collect();
        let documented_keys: Vec<String> = table
            .iter()
            .filter_map(|l| l.split('|').nth(1))
            .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_string))
            .collect();
        let mut code_keys = Vec::new();
        all_keys("", &mut code_keys);
        assert!(code_keys.len() > 40, "found only {code_keys:?}");
        let covered = |k: &str| {
            documented_keys.iter().any(|d| {
                d == k
                    || d.strip_suffix(".*")
                        .is_some_and(|p| k.starts_with(&format!("{p}.")))
            })
        };
        let missing: Vec<&String> = code_keys.iter().filter(|k| !covered(k)).collect();
        assert!(
            missing.is_empty(),
            "file keys without a row in docs/configuration.md: {missing:?}"
        );
        for d in &documented_keys {
            let k = d.trim_end_matches(".*");
            assert!(
                code_keys
                    .iter()
                    .any(|c| c == k || c.starts_with(&format!("{k}."))),
                "docs/configuration.md names a file key the parser does not know: {d}"
            );
        }

        let cmd = <crate::cli::Cli as clap::CommandFactory>::command();
        let run = cmd.find_subcommand("run").expect("run subcommand");
        let flags: Vec<String> = run
            .get_arguments()
            .filter_map(|a| a.get_long())
            .filter(|l| *l != "help")
            .map(|l| format!("--{l}"))
            .collect();
        let mentioned = |f: &str| {
            doc.match_indices(f).any(|(i, _)| {
                !doc[i + f.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
            })
        };
        let undocumented: Vec<&String> = flags.iter().filter(|f| !mentioned(f)).collect();
        assert!(
            undocumented.is_empty(),
            "flags of hostscope run missing from docs/configuration.md: {undocumented:?}"
        );
    }

    #[test]
    fn full_file_maps_onto_the_standard_variables() {
        let l = Loaded::parse(
            "f.yaml",
            r#"
interval: 2500ms
exporters: { metrics: [otlp, console], traces: [] }
otlp:
  endpoint: https://collector:4317
  protocol: grpc
  headers: { api-key: "a b,c" }
  timeout: 3s
  metrics:
    temporality_preference: delta
    default_histogram_aggregation: base2_exponential_bucket_histogram
  traces:
    endpoint: http://traces:4318/v1/traces
resource:
  attributes: { deployment.environment.name: prod }
  service_name: agent-a
prometheus: { host: 0.0.0.0, port: 9999 }
keep_capabilities: true
export: { queue_bytes: 1000000, shutdown_timeout: 2s }
hook_type: raw-tp
syscalls: { enabled: true, slow_threshold: off, max_error_series: 100 }
"#,
        )
        .unwrap();
        let v = |n: &str| l.vars.get(n).map(|(v, _)| v.as_str());
        assert_eq!(v("OTEL_METRIC_EXPORT_INTERVAL"), Some("2500"));
        assert_eq!(v("OTEL_METRICS_EXPORTER"), Some("otlp,console"));
        assert_eq!(v("OTEL_TRACES_EXPORTER"), Some("none"));
        assert_eq!(
            v("OTEL_EXPORTER_OTLP_ENDPOINT"),
            Some("https://collector:4317")
        );
        assert_eq!(v("OTEL_EXPORTER_OTLP_HEADERS"), Some("api-key=a%20b%2Cc"));
        assert_eq!(v("OTEL_EXPORTER_OTLP_TIMEOUT"), Some("3000"));
        assert_eq!(
            v("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"),
            Some("delta")
        );
        assert_eq!(
            v("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            Some("http://traces:4318/v1/traces")
        );
        assert_eq!(
            v("OTEL_RESOURCE_ATTRIBUTES"),
            Some("deployment.environment.name=prod")
        );
        assert_eq!(v("OTEL_EXPORTER_PROMETHEUS_PORT"), Some("9999"));
        assert_eq!(l.key_of("OTEL_EXPORTER_OTLP_TIMEOUT"), Some("otlp.timeout"));
        let s = l.file.syscalls.as_ref().unwrap();
        assert_eq!(s.slow_threshold, Some(None));
        assert_eq!(s.max_error_series, Some(100));
        assert_eq!(l.file.hook_type, Some(HookName::RawTp));
        assert_eq!(l.file.keep_capabilities, Some(true));
        let l2 = Loaded::parse("f.yaml", "listen: none\n").unwrap();
        assert_eq!(l2.file.listen, Some(None));
        assert_eq!(
            l.file.export.as_ref().unwrap().shutdown_timeout,
            Some(Duration::from_secs(2))
        );
        // The file wins over the environment; the rest comes from it.
        let env = |n: &str| Some(format!("env:{n}"));
        assert_eq!(
            l.lookup("OTEL_SERVICE_NAME", &env).as_deref(),
            Some("agent-a")
        );
        assert_eq!(
            l.lookup("OTEL_EXPORTER_OTLP_COMPRESSION", &env).as_deref(),
            Some("env:OTEL_EXPORTER_OTLP_COMPRESSION")
        );
    }

    #[test]
    fn bad_keys_and_values_name_the_key() {
        for (text, key, reason) in [
            ("intervall: 10s", "intervall", "unknown field `intervall`"),
            (
                "syscalls: { max_seriez: 3 }",
                "syscalls.max_seriez",
                "unknown field `max_seriez`",
            ),
            (
                "otlp: { metrics: { endpont: x } }",
                "otlp.metrics.endpont",
                "unknown field `endpont`",
            ),
            ("interval: soon", "interval", "not a duration"),
            (
                "syscalls: { max_series: -1 }",
                "syscalls.max_series",
                "invalid type: integer `-1`, expected u32",
            ),
            (
                "exporters: { metrics: [kafka] }",
                "exporters.metrics[0]",
                "unknown variant `kafka`",
            ),
            ("hook_type: kprobe", "hook_type", "unknown variant `kprobe`"),
            ("listen: 9464", "listen", "expected IP:PORT"),
            (
                "listen: 0.0.0.0:1\nprometheus: { port: 2 }",
                "listen",
                "keep listen",
            ),
            (
                "keep_capabilities: maybe",
                "keep_capabilities",
                "invalid type",
            ),
            (
                "syscalls: { slow_threshold: 0ms }",
                "syscalls.slow_threshold",
                "zero threshold",
            ),
        ] {
            match Loaded::parse("f.yaml", text) {
                Err(FileError::Invalid {
                    key: k, reason: r, ..
                }) => {
                    assert_eq!(k, key, "{text}: key path ({r})");
                    assert!(r.contains(reason), "{text}: reason {r:?} lacks {reason:?}");
                }
                other => panic!("{text}: expected an error naming {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn empty_file_sets_nothing() {
        let l = Loaded::parse("f.yaml", "\n# nothing\n").unwrap();
        assert!(l.vars.is_empty());
        assert_eq!(l.file, FileConfig::default());
    }
}
