//! Typed configuration with every default in one place.

use std::time::Duration;

use thiserror::Error;

use crate::export::otlp_config::{OtlpConfigError, Signal, SignalConfig, parse_key_values};

/// Reads one environment variable (a function, so tests can supply their own).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Exporters named by `OTEL_METRICS_EXPORTER` / `OTEL_TRACES_EXPORTER`
/// (comma-separated; default `otlp`).
pub fn exporters_from_env(var: &'static str, env: Env) -> Result<Vec<ExporterKind>, ConfigError> {
    let Some(value) = env(var).filter(|v| !v.trim().is_empty()) else {
        return Ok(vec![ExporterKind::Otlp]);
    };
    let mut out = Vec::new();
    for name in value.split(',').map(str::trim) {
        let kind = match name {
            "otlp" => ExporterKind::Otlp,
            "console" => ExporterKind::Stdout,
            "none" => continue,
            "prometheus" => ExporterKind::Prometheus,
            _ => {
                return Err(ConfigError::Env {
                    var,
                    value: value.clone(),
                    reason: "expected otlp, console or none",
                });
            }
        };
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(out)
}

impl Config {
    /// Reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME.
    pub fn resolve_resource(&mut self, env: Env) -> Result<(), ConfigError> {
        if let Some(v) = env("OTEL_RESOURCE_ATTRIBUTES").filter(|v| !v.trim().is_empty()) {
            self.resource_attributes = parse_key_values(&v).ok_or(ConfigError::Env {
                var: "OTEL_RESOURCE_ATTRIBUTES",
                value: v.clone(),
                reason: "expected comma-separated key=value pairs (values URL-encoded)",
            })?;
        }
        if let Some((_, name)) = self
            .resource_attributes
            .iter()
            .find(|(k, _)| k == "service.name")
        {
            self.service_name = name.clone();
        }
        if let Some(name) = env("OTEL_SERVICE_NAME").filter(|v| !v.trim().is_empty()) {
            self.service_name = name.trim().to_string();
        }
        Ok(())
    }

    /// Reads the OTLP settings of the signals that go to OTLP.
    pub fn resolve_otlp(&mut self, env: Env) -> Result<(), ConfigError> {
        if self.metrics_exporters.contains(&ExporterKind::Otlp) {
            self.otlp_metrics = Some(SignalConfig::from_env(Signal::Metrics, env)?);
        }
        if self.traces_exporters.contains(&ExporterKind::Otlp) {
            self.otlp_traces = Some(SignalConfig::from_env(Signal::Traces, env)?);
        }
        for sc in [&self.otlp_metrics, &self.otlp_traces]
            .into_iter()
            .flatten()
        {
            if sc.endpoint.starts_with("https://") {
                crate::export::otlp_tls::validate(&sc.tls).map_err(ConfigError::Tls)?;
            }
        }
        Ok(())
    }
}

/// An address for the HTTP listener: `IP:PORT` (`[::]:9464` for IPv6,
/// `localhost:PORT` for 127.0.0.1), or `none` (also `off`) for no listener.
/// Port 0 picks a free port (the log says which).
pub fn parse_listen(s: &str) -> Result<Option<std::net::SocketAddr>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("none") || t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let t = match t.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => t.to_string(),
    };
    t.parse().map(Some).map_err(|_| {
        format!("{s:?} is not an address: expected IP:PORT (e.g. 0.0.0.0:9464, [::]:9464), or none")
    })
}

/// Where measurements go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExporterKind {
    /// One line of OTLP/JSON per interval on standard output (the protobuf
    /// JSON mapping, as the OpenTelemetry Collector's file exporter writes it).
    #[value(alias = "console")]
    Stdout,
    /// OTLP over gRPC or HTTP, configured by the OTEL_EXPORTER_OTLP_* variables.
    Otlp,
    /// Prometheus text exposition at http://<--listen>/metrics (metrics only).
    Prometheus,
}

/// Which kind of tracepoint program to attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HookPreference {
    /// BTF tracepoints where the kernel has BTF, else raw tracepoints.
    #[default]
    Auto,
    /// BTF tracepoints only (fail rather than fall back).
    TpBtf,
    /// Raw tracepoints only (for kernels whose BTF tracepoints misbehave).
    RawTp,
}

/// Everything `hostscope run` needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// How often kernel maps are drained and exported.
    pub interval: Duration,
    /// Stop after this long (None: run until SIGINT/SIGTERM).
    pub duration: Option<Duration>,
    pub metrics_exporters: Vec<ExporterKind>,
    pub traces_exporters: Vec<ExporterKind>,
    /// OTLP settings per signal, when that signal goes to OTLP.
    pub otlp_metrics: Option<SignalConfig>,
    pub otlp_traces: Option<SignalConfig>,
    /// Where the HTTP listener (`/healthz`, `/readyz`, `/metrics`) binds;
    /// None: no listener.
    pub listen: Option<std::net::SocketAddr>,
    /// Keep the capabilities the agent started with after attaching (default:
    /// drop them all once the programs are attached).
    pub keep_capabilities: bool,
    /// Bound of each OTLP signal's queue between measuring and sending.
    pub export_queue_bytes: usize,
    /// Largest OTLP request sent; an interval with more is split. A request
    /// must fit in the queue, so the smaller of this and the queue applies.
    pub export_max_request_bytes: usize,
    /// How long SIGTERM/SIGINT may wait for queued data to be sent.
    pub shutdown_timeout: Duration,
    pub hook_type: HookPreference,
    pub syscalls: SyscallsConfig,
    pub tcp: TcpConfig,
    pub cgroups: CgroupsConfig,
    pub kubernetes: KubernetesConfig,
    /// Run-queue delay and context switches (sched tracepoints).
    pub sched_enabled: bool,
    /// OOM kills (oom/mark_victim).
    pub oom_enabled: bool,
    /// Cardinality budgets and per-signal granularity.
    pub budget: crate::budget::BudgetConfig,
    /// What is not measured (cgroups in the kernel, processes by name).
    pub filter: crate::filter::FilterConfig,
    /// Export `process.command_line` (opt-in: command lines can carry
    /// secrets and are high-cardinality).
    pub command_line: bool,
    /// Bytes of the command line kept.
    pub command_line_max_bytes: u32,
    /// From OTEL_RESOURCE_ATTRIBUTES: added to every resource, except
    /// `service.*` keys, which describe the agent and go on its resource only.
    pub resource_attributes: Vec<(String, String)>,
    /// `service.name` of the agent's resource (OTEL_SERVICE_NAME wins over
    /// OTEL_RESOURCE_ATTRIBUTES).
    pub service_name: String,
}

/// Settings of the syscalls signal.
#[derive(Clone, Debug, PartialEq)]
pub struct SyscallsConfig {
    pub enabled: bool,
    /// Pair entry and exit through a per-CPU slot (needs a sched_switch
    /// program); off: through the in-flight hash map for every syscall.
    pub fast_path: bool,
    /// Syscalls at least this slow are sent as events (None: never).
    pub slow_threshold: Option<Duration>,
    /// In-kernel rate limit for slow-syscall events, per CPU per second.
    pub slow_events_per_cpu_per_sec: u32,
    /// Bound on (process, syscall) series held in the kernel. None: derived
    /// from `kernel_memory_budget` and the number of possible CPUs.
    pub max_series: Option<u32>,
    /// Bound on (process, syscall, errno) series held in the kernel.
    pub max_error_series: u32,
    /// Bound on threads tracked inside a syscall at once (LRU beyond it).
    pub max_inflight_threads: u32,
    /// Kernel memory the per-CPU stats map may take when `max_series` is unset.
    pub kernel_memory_budget: u64,
}

/// Settings of the tcp signal.
#[derive(Clone, Debug, PartialEq)]
pub struct TcpConfig {
    pub enabled: bool,
    /// Series per connection (local address and port too) instead of per
    /// (process, peer address, peer port).
    pub per_connection: bool,
    /// Bound on series held in the kernel map.
    pub max_series: u32,
    /// Bound on sockets whose owner is remembered (LRU beyond it).
    pub max_sockets: u32,
    /// In-kernel rate limit for retransmit/reset events (episodes), per CPU
    /// per second.
    pub events_per_cpu_per_sec: u32,
}

/// Settings of the cgroups signal (CPU throttling and pressure, read from
/// cgroupfs and /proc/pressure).
#[derive(Clone, Debug, PartialEq)]
pub struct CgroupsConfig {
    pub enabled: bool,
    /// Bound on cgroups exported per interval; the others are counted as
    /// dropped (`cgroups_over_limit`).
    pub max_cgroups: u32,
}

/// Kubernetes pod metadata from the API server (see `crate::k8s`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KubernetesConfig {
    pub enabled: bool,
    /// The API server; None: in-cluster (`KUBERNETES_SERVICE_HOST`/`_PORT`)
    /// when set.
    pub api_url: Option<String>,
    /// This node's name (`K8S_NODE_NAME`): only its pods are watched, and it
    /// is the host resource's `k8s.node.name`.
    pub node_name: Option<String>,
    /// Pod label keys exported as `k8s.pod.label.<key>`; empty: none.
    pub labels: Vec<String>,
}

impl Default for CgroupsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_cgroups: 1024,
        }
    }
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            per_connection: false,
            max_series: 4096,
            max_sockets: 65_536,
            events_per_cpu_per_sec: 1000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            duration: None,
            metrics_exporters: vec![ExporterKind::Otlp],
            traces_exporters: vec![ExporterKind::Otlp],
            otlp_metrics: None,
            otlp_traces: None,
            export_queue_bytes: 8 << 20,
            export_max_request_bytes: 1 << 20,
            listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9464))),
            keep_capabilities: false,
            shutdown_timeout: Duration::from_secs(5),
            hook_type: HookPreference::Auto,
            syscalls: SyscallsConfig::default(),
            tcp: TcpConfig::default(),
            cgroups: CgroupsConfig::default(),
            kubernetes: KubernetesConfig {
                enabled: true,
                ..Default::default()
            },
            sched_enabled: true,
            oom_enabled: true,
            budget: crate::budget::BudgetConfig::default(),
            filter: crate::filter::FilterConfig::default(),
            command_line: false,
            command_line_max_bytes: 1024,
            resource_attributes: Vec::new(),
            service_name: "hostscope".to_string(),
        }
    }
}

impl Default for SyscallsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            fast_path: true,
            slow_threshold: Some(Duration::from_millis(100)),
            slow_events_per_cpu_per_sec: 20,
            max_series: None,
            max_error_series: 4096,
            max_inflight_threads: 32768,
            kernel_memory_budget: 32 << 20,
        }
    }
}

/// The settings that differ between `old` and `new` and take effect only
/// at start (everything but the interval, the cardinality limits and
/// granularities, and the cgroup bound), named as in the reference.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |differs: bool, name: &'static str| {
        if differs {
            out.push(name);
        }
    };
    check(old.duration != new.duration, "--duration");
    check(
        old.metrics_exporters != new.metrics_exporters
            || old.traces_exporters != new.traces_exporters,
        "exporters",
    );
    check(
        old.otlp_metrics != new.otlp_metrics || old.otlp_traces != new.otlp_traces,
        "otlp",
    );
    check(old.listen != new.listen, "listen");
    check(
        old.keep_capabilities != new.keep_capabilities,
        "keep_capabilities",
    );
    check(
        old.export_queue_bytes != new.export_queue_bytes
            || old.export_max_request_bytes != new.export_max_request_bytes
            || old.shutdown_timeout != new.shutdown_timeout,
        "export",
    );
    check(old.hook_type != new.hook_type, "hook_type");
    check(old.syscalls != new.syscalls, "syscalls");
    check(old.tcp != new.tcp, "tcp");
    check(
        old.cgroups.enabled != new.cgroups.enabled,
        "cgroups.enabled",
    );
    check(old.kubernetes != new.kubernetes, "kubernetes");
    check(old.sched_enabled != new.sched_enabled, "sched.enabled");
    check(old.oom_enabled != new.oom_enabled, "oom.enabled");
    check(old.filter != new.filter, "filter");
    check(
        old.command_line != new.command_line
            || old.command_line_max_bytes != new.command_line_max_bytes,
        "identity",
    );
    check(
        old.resource_attributes != new.resource_attributes || old.service_name != new.service_name,
        "resource",
    );
    out
}

/// A setting that cannot work, named with the offending value.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error(
        "--interval (interval in the config file) must be more than 0 seconds and at most 1 day, got {0:?}"
    )]
    Interval(Duration),
    #[error("--duration must be more than 0 seconds, got {0:?}")]
    RunDuration(Duration),
    #[error("{name} must be between {min} and {max}, got {value}")]
    OutOfRange {
        name: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("no exporter: metrics and traces are both set to none")]
    NoExporter,
    #[error(
        "the prometheus exporter is served by the HTTP listener, which is disabled \
         (--listen none or listen: none); give it an address, e.g. --listen 127.0.0.1:9464"
    )]
    PrometheusWithoutListener,
    #[error("{var}={value:?}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(transparent)]
    Otlp(#[from] OtlpConfigError),
    #[error("{0}")]
    Tls(String),
    #[error("{name}: {reason}")]
    Invalid { name: &'static str, reason: String },
    #[error(transparent)]
    File(#[from] crate::config_file::FileError),
}

impl Config {
    /// Checks every setting; called before anything is loaded or attached.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() || self.interval > Duration::from_secs(86_400) {
            return Err(ConfigError::Interval(self.interval));
        }
        if let Some(d) = self.duration
            && d.is_zero()
        {
            return Err(ConfigError::RunDuration(d));
        }
        if self.metrics_exporters.is_empty() && self.traces_exporters.is_empty() {
            return Err(ConfigError::NoExporter);
        }
        if self.listen.is_none() && self.metrics_exporters.contains(&ExporterKind::Prometheus) {
            return Err(ConfigError::PrometheusWithoutListener);
        }
        range(
            "--export-queue-bytes (export.queue_bytes)",
            self.export_queue_bytes as u64,
            4096,
            1 << 32,
        )?;
        range(
            "--export-max-request-bytes (export.max_request_bytes)",
            self.export_max_request_bytes as u64,
            4096,
            1 << 32,
        )?;
        range(
            "--max-tcp-series (tcp.max_series)",
            self.tcp.max_series.into(),
            16,
            1 << 22,
        )?;
        range(
            "--max-tcp-sockets (tcp.max_sockets)",
            self.tcp.max_sockets.into(),
            256,
            1 << 24,
        )?;
        range(
            "--tcp-events-per-cpu (tcp.events_per_cpu)",
            self.tcp.events_per_cpu_per_sec.into(),
            0,
            100_000,
        )?;
        range(
            "--max-cgroups (cgroups.max_cgroups)",
            self.cgroups.max_cgroups.into(),
            1,
            1 << 20,
        )?;
        range(
            "--process-command-line-max (identity.command_line_max_bytes)",
            self.command_line_max_bytes.into(),
            16,
            1 << 20,
        )?;
        range(
            "--max-series-per-metric (limits.max_series_per_metric)",
            self.budget.max_series_per_metric.into(),
            1,
            1 << 24,
        )?;
        range(
            "--max-series (limits.max_series)",
            self.budget.max_series.into(),
            1,
            1 << 26,
        )?;
        if let Some(u) = &self.kubernetes.api_url {
            crate::k8s::check_api_url(u).map_err(|reason| ConfigError::Invalid {
                name: "--k8s-api-url (kubernetes.api_url)",
                reason,
            })?;
        }
        self.filter.check().map_err(|reason| ConfigError::Invalid {
            name: "--include-cgroup, --exclude-cgroup, --exclude-process (filter.*)",
            reason,
        })?;
        if self.kubernetes.labels.iter().any(|l| l.trim().is_empty()) {
            return Err(ConfigError::Invalid {
                name: "--k8s-label (kubernetes.labels)",
                reason: "a label key is empty".into(),
            });
        }
        let s = &self.syscalls;
        range(
            "--slow-events-per-cpu (syscalls.slow_events_per_cpu)",
            s.slow_events_per_cpu_per_sec.into(),
            0,
            100_000,
        )?;
        if let Some(n) = s.max_series {
            range(
                "--max-syscall-series (syscalls.max_series)",
                n.into(),
                16,
                1 << 22,
            )?;
        }
        range(
            "--max-syscall-error-series (syscalls.max_error_series)",
            s.max_error_series.into(),
            16,
            1 << 22,
        )?;
        range(
            "--max-inflight-threads (syscalls.max_inflight_threads)",
            s.max_inflight_threads.into(),
            64,
            1 << 22,
        )?;
        Ok(())
    }
}

fn range(name: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            name,
            value,
            min,
            max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn resource_attributes_and_service_name() {
        let vars = [
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod,service.name=from-attrs,team=a%2Cb",
            ),
            ("OTEL_SERVICE_NAME", "agent-1"),
        ];
        let env = |n: &str| {
            vars.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        };
        let mut c = Config::default();
        c.resolve_resource(&env).unwrap();
        assert_eq!(c.service_name, "agent-1");
        assert!(
            c.resource_attributes
                .contains(&("team".into(), "a,b".into()))
        );
        let bad = |n: &str| (n == "OTEL_RESOURCE_ATTRIBUTES").then(|| "novalue".to_string());
        let err = Config::default()
            .resolve_resource(&bad)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("OTEL_RESOURCE_ATTRIBUTES"), "{err}");
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("0.0.0.0:9464"),
            Ok(Some(([0, 0, 0, 0], 9464).into()))
        );
        assert_eq!(
            parse_listen("localhost:1234"),
            Ok(Some(([127, 0, 0, 1], 1234).into()))
        );
        assert_eq!(parse_listen("[::]:9464").unwrap().unwrap().port(), 9464);
        assert_eq!(parse_listen("none"), Ok(None));
        assert_eq!(parse_listen("off"), Ok(None));
        for bad in ["", "9464", "0.0.0.0", "host:9464", "0.0.0.0:99999"] {
            let e = parse_listen(bad).unwrap_err();
            assert!(e.contains("expected IP:PORT"), "{bad:?}: {e}");
        }
        let c = Config {
            listen: None,
            metrics_exporters: vec![ExporterKind::Prometheus],
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::PrometheusWithoutListener));
    }

    #[test]
    fn rejects_zero_interval() {
        let c = Config {
            interval: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Interval(Duration::ZERO)));
    }

    #[test]
    fn rejects_tiny_map() {
        let mut c = Config::default();
        c.syscalls.max_series = Some(1);
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("--max-syscall-series") && err.contains("got 1"),
            "{err}"
        );
    }
}
