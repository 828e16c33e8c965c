//! Command line: `hostscope run ...`. Parsing errors exit with code 2 before
//! anything is loaded.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    config::{
        CgroupsConfig, Config, ConfigError, Env, ExporterKind, HookPreference, KubernetesConfig,
        SyscallsConfig, TcpConfig, exporters_from_env,
    },
    config_file::{FileConfig, FileError, Loaded},
    export::otlp_config::{OtlpConfigError, Signal, SignalConfig},
};

#[derive(Debug, Parser)]
#[command(
    name = "hostscope",
    version,
    about = "eBPF host observability agent exporting OTLP"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start-up: the size difference between variants is moot.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the kernel programs and export what they measure every interval.
    Run(RunArgs),
    /// Attach empty programs on a signal's hooks and wait: the cost floor
    /// that `cargo xtask bench` compares against.
    #[command(hide = true)]
    BenchFloor {
        /// Seconds to stay attached.
        #[arg(long, value_parser = parse_seconds)]
        duration: Duration,
        /// Whose hooks: `syscalls` (sys_enter, sys_exit), `sched`
        /// (sched_switch, the sched signal's one hook) or `tcp`
        /// (tcp_sendmsg_locked, the tcp signal's per-send hook).
        #[arg(long, value_enum, default_value = "syscalls")]
        hooks: FloorHooks,
    },
}

/// The hooks `hostscope bench-floor` attaches empty programs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FloorHooks {
    Syscalls,
    Sched,
    Tcp,
}

#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Where to send metrics and traces (repeatable). Without it,
    /// OTEL_METRICS_EXPORTER and OTEL_TRACES_EXPORTER decide (default otlp).
    #[arg(long = "exporter", value_enum)]
    pub exporters: Vec<ExporterKind>,
    /// Address of the HTTP listener serving /healthz, /readyz and (with
    /// --exporter prometheus) /metrics: IP:PORT, or none for no listener
    /// (default: OTEL_EXPORTER_PROMETHEUS_HOST and _PORT, else 127.0.0.1:9464).
    #[arg(long, visible_alias = "prometheus-listen", value_name = "ADDR|none", value_parser = parse_listen_flag)]
    pub listen: Option<Listen>,
    /// Keep every capability after the programs are attached (default: drop
    /// them all, so a compromised agent cannot load new programs).
    #[arg(long)]
    pub keep_capabilities: bool,
    /// YAML configuration file (default: $HOSTSCOPE_CONFIG if set). Its
    /// settings override OTEL_* variables; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Bytes each OTLP signal may queue while the collector is slow or down;
    /// beyond it the oldest data is dropped (and counted) [default: 8388608].
    #[arg(long)]
    pub export_queue_bytes: Option<usize>,
    /// Largest OTLP request to send (the collector's receive limit, 4 MiB by
    /// default for gRPC, must be above it); an interval with more data is
    /// split into several requests [default: 1048576].
    #[arg(long)]
    pub export_max_request_bytes: Option<usize>,
    /// Tracepoint programs to attach: BTF tracepoints with a raw-tracepoint
    /// fallback (auto), or only one kind [default: auto].
    #[arg(long, value_enum)]
    pub hook_type: Option<HookPreference>,
    /// Seconds between exports (default: OTEL_METRIC_EXPORT_INTERVAL in
    /// milliseconds, else 10 s).
    #[arg(long, value_parser = parse_seconds)]
    pub interval: Option<Duration>,
    /// Exit cleanly after this many seconds, flushing the last interval.
    #[arg(long, value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    /// Send syscalls at least this slow as events ("100ms", "1s"; "off"
    /// disables) [default: 100ms].
    #[arg(long, value_parser = parse_threshold)]
    pub slow_threshold: Option<Threshold>,
    /// In-kernel limit on slow-syscall events per CPU per second [default: 20].
    #[arg(long)]
    pub slow_events_per_cpu: Option<u32>,
    /// Bound on (process, syscall) series in the kernel map (default: from a
    /// 32 MiB kernel-memory budget and the number of CPUs).
    #[arg(long)]
    pub max_syscall_series: Option<u32>,
    /// Bound on (process, syscall, errno) series in the kernel map
    /// [default: 4096].
    #[arg(long)]
    pub max_syscall_error_series: Option<u32>,
    /// Bound on threads tracked inside a syscall at once [default: 32768].
    #[arg(long)]
    pub max_inflight_threads: Option<u32>,
    /// Do not attach the scheduler programs (run-queue delay, context switches).
    #[arg(long)]
    pub no_sched: bool,
    /// Do not read CPU throttling and pressure (PSI) from cgroups and
    /// /proc/pressure.
    #[arg(long)]
    pub no_cgroups: bool,
    /// Bound on cgroups exported per interval [default: 1024].
    #[arg(long)]
    pub max_cgroups: Option<u32>,
    /// Series of one per-process metric exported on their own; beyond it,
    /// they fold into the metric's overflow series
    /// (otel.metric.overflow=true) [default: 25000].
    #[arg(long)]
    pub max_series_per_metric: Option<u32>,
    /// Series of all per-process metrics together [default: 100000].
    #[arg(long)]
    pub max_series: Option<u32>,
    /// Export each process's command line as `process.command_line` (off by
    /// default: command lines can carry secrets).
    #[arg(long)]
    pub process_command_line: bool,
    /// Bytes of the command line kept [default: 1024].
    #[arg(long, value_name = "N")]
    pub process_command_line_max: Option<u32>,
    /// Measure only tasks in this cgroup v2 subtree (a path from the cgroup2
    /// root, e.g. /kubepods.slice; repeatable), filtered in the kernel.
    #[arg(long, value_name = "PATH")]
    pub include_cgroup: Vec<String>,
    /// Do not measure tasks in this cgroup v2 subtree (repeatable), filtered
    /// in the kernel.
    #[arg(long, value_name = "PATH")]
    pub exclude_cgroup: Vec<String>,
    /// Do not export processes with this executable name (repeatable).
    #[arg(long, value_name = "NAME")]
    pub exclude_process: Vec<String>,
    /// Do not export processes and cgroups of pods in this Kubernetes
    /// namespace (repeatable).
    #[arg(long, value_name = "NAMESPACE")]
    pub exclude_namespace: Vec<String>,
    /// How finely a signal's measurements are exported: SIGNAL=LEVEL with
    /// SIGNAL syscalls, tcp or sched and LEVEL process, executable or
    /// container (repeatable) [default: process for each].
    #[arg(long, value_parser = parse_granularity)]
    pub granularity: Vec<(crate::budget::SignalKind, crate::budget::Granularity)>,
    /// Do not watch OOM kills.
    #[arg(long)]
    pub no_oom: bool,
    /// Do not attach the TCP retransmit and reset programs.
    #[arg(long)]
    pub no_tcp: bool,
    /// TCP series per connection (local address and port too) rather than
    /// per (process, peer address, peer port).
    #[arg(long)]
    pub tcp_per_connection: bool,
    /// Bound on TCP (process, peer, kind) series in the kernel map
    /// [default: 4096].
    #[arg(long)]
    pub max_tcp_series: Option<u32>,
    /// Bound on sockets whose owning process is remembered (LRU)
    /// [default: 65536].
    #[arg(long)]
    pub max_tcp_sockets: Option<u32>,
    /// In-kernel limit on TCP retransmit/reset events (for episode spans)
    /// per CPU per second [default: 1000].
    #[arg(long)]
    pub tcp_events_per_cpu: Option<u32>,
    /// Pair syscall entry and exit through the in-flight hash map only, without
    /// the per-CPU fast path and its sched_switch program.
    #[arg(long, hide = true)]
    pub no_syscall_fast_path: bool,
    /// Do not attach the syscalls programs.
    #[arg(long)]
    pub no_syscalls: bool,
    /// Kubernetes API server to ask for pod metadata (default: in-cluster,
    /// from KUBERNETES_SERVICE_HOST and _PORT). https://, or http:// to a
    /// loopback address only.
    #[arg(long, value_name = "URL", value_parser = parse_api_url)]
    pub k8s_api_url: Option<String>,
    /// This node's name: only its pods are watched (default: $K8S_NODE_NAME).
    #[arg(long, value_name = "NAME")]
    pub k8s_node_name: Option<String>,
    /// Pod label exported as k8s.pod.label.<KEY> (repeatable or
    /// comma-separated; default: none).
    #[arg(long = "k8s-label", value_name = "KEY", value_delimiter = ',')]
    pub k8s_labels: Vec<String>,
    /// Do not ask the Kubernetes API for pod metadata.
    #[arg(long)]
    pub no_k8s: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold(pub Option<Duration>);

/// `--listen`: an address, or None for `none`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Listen(pub Option<std::net::SocketAddr>);

impl RunArgs {
    /// The configuration these flags, the config file and the environment
    /// describe, checked whole. Flags win over the file, which wins over
    /// OTEL_* variables.
    pub fn into_config(self, env: Env) -> Result<Config, ConfigError> {
        let path = self.config.clone().or_else(|| {
            env("HOSTSCOPE_CONFIG")
                .filter(|p| !p.trim().is_empty())
                .map(PathBuf::from)
        });
        let file = match path {
            Some(p) => Loaded::read(&p)?,
            None => Loaded::default(),
        };
        let layered = |name: &str| file.lookup(name, env);
        let cfg = self
            .into_config_layered(&layered, &file)
            .and_then(|c| c.validate().map(|()| c))
            .map_err(|e| name_file_key(e, &file))?;
        // A bad value in the file is an error even where the exporter that
        // would use it is not chosen: the file is checked whole.
        if file.file.otlp.is_some() {
            for signal in [Signal::Metrics, Signal::Traces] {
                match SignalConfig::from_env(signal, &layered) {
                    Err(e)
                        if matches!(&e, OtlpConfigError::Invalid { var, .. }
                            if file.key_of(var).is_some()) =>
                    {
                        return Err(name_file_key(ConfigError::Otlp(e), &file));
                    }
                    _ => {}
                }
            }
        }
        Ok(cfg)
    }

    fn into_config_layered(self, env: Env, file: &Loaded) -> Result<Config, ConfigError> {
        let (metrics_exporters, traces_exporters) = if self.exporters.is_empty() {
            (
                exporters_from_env("OTEL_METRICS_EXPORTER", env)?,
                exporters_from_env("OTEL_TRACES_EXPORTER", env)?,
            )
        } else {
            let e = dedup(self.exporters.clone());
            (e.clone(), e)
        };
        let interval = match self.interval {
            Some(i) => i,
            None => match env("OTEL_METRIC_EXPORT_INTERVAL").filter(|v| !v.trim().is_empty()) {
                None => Config::default().interval,
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(ms) if ms > 0 => Duration::from_millis(ms),
                    _ => {
                        return Err(ConfigError::Env {
                            var: "OTEL_METRIC_EXPORT_INTERVAL",
                            value: v,
                            reason: "expected a positive number of milliseconds",
                        });
                    }
                },
            },
        };
        // The flag, else the file's `listen`, else OTEL_EXPORTER_PROMETHEUS_*
        // (from the file's prometheus.host/port or the environment).
        let listen = match self.listen {
            Some(l) => l.0,
            None => match file.file.listen {
                Some(l) => l,
                None => {
                    let host = env("OTEL_EXPORTER_PROMETHEUS_HOST")
                        .filter(|h| !h.trim().is_empty())
                        .unwrap_or_else(|| "127.0.0.1".into());
                    let host = if host.trim() == "localhost" {
                        "127.0.0.1".to_string()
                    } else {
                        host.trim().to_string()
                    };
                    let port = env("OTEL_EXPORTER_PROMETHEUS_PORT")
                        .filter(|p| !p.trim().is_empty())
                        .unwrap_or_else(|| "9464".into());
                    let port: u16 = port.trim().parse().map_err(|_| ConfigError::Env {
                        var: "OTEL_EXPORTER_PROMETHEUS_PORT",
                        value: port.clone(),
                        reason: "expected a port number (0-65535)",
                    })?;
                    let ip: std::net::IpAddr = host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse()
                        .map_err(|_| ConfigError::Env {
                            var: "OTEL_EXPORTER_PROMETHEUS_HOST",
                            value: host.clone(),
                            reason: "expected an IP address (or localhost)",
                        })?;
                    Some(std::net::SocketAddr::new(ip, port))
                }
            },
        };
        let node_from_env = env("K8S_NODE_NAME")
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty());
        let mut cfg = self.into_config_with(metrics_exporters, traces_exporters, &file.file);
        if cfg.kubernetes.node_name.is_none() {
            cfg.kubernetes.node_name = node_from_env;
        }
        cfg.interval = interval;
        cfg.listen = listen;
        cfg.resolve_otlp(env)?;
        cfg.resolve_resource(env)?;
        Ok(cfg)
    }

    /// Settings without an OTEL_* variable: the flag, else the file, else
    /// the default.
    fn into_config_with(
        self,
        metrics_exporters: Vec<ExporterKind>,
        traces_exporters: Vec<ExporterKind>,
        f: &FileConfig,
    ) -> Config {
        let a = self;
        let d = Config::default();
        let ds = d.syscalls.clone();
        let export = f.export.as_ref();
        let sc = f.syscalls.as_ref();
        let tc = f.tcp.as_ref();
        let dt = d.tcp.clone();
        let kf = f.kubernetes.as_ref();
        let kubernetes = KubernetesConfig {
            enabled: !a.no_k8s && kf.and_then(|k| k.enabled).unwrap_or(d.kubernetes.enabled),
            api_url: a.k8s_api_url.clone().or(kf.and_then(|k| k.api_url.clone())),
            node_name: a
                .k8s_node_name
                .clone()
                .or(kf.and_then(|k| k.node_name.clone()))
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty()),
            labels: if a.k8s_labels.is_empty() {
                kf.and_then(|k| k.labels.clone()).unwrap_or_default()
            } else {
                a.k8s_labels.clone()
            },
        };
        Config {
            kubernetes,
            duration: a.duration,
            keep_capabilities: a.keep_capabilities || f.keep_capabilities.unwrap_or(false),
            metrics_exporters,
            traces_exporters,
            export_queue_bytes: a
                .export_queue_bytes
                .or(export.and_then(|e| e.queue_bytes))
                .unwrap_or(d.export_queue_bytes),
            export_max_request_bytes: a
                .export_max_request_bytes
                .or(export.and_then(|e| e.max_request_bytes))
                .unwrap_or(d.export_max_request_bytes),
            shutdown_timeout: export
                .and_then(|e| e.shutdown_timeout)
                .unwrap_or(d.shutdown_timeout),
            hook_type: a
                .hook_type
                .or(f.hook_type.map(Into::into))
                .unwrap_or(d.hook_type),
            syscalls: SyscallsConfig {
                enabled: !a.no_syscalls && sc.and_then(|s| s.enabled).unwrap_or(ds.enabled),
                fast_path: !a.no_syscall_fast_path && ds.fast_path,
                slow_threshold: a
                    .slow_threshold
                    .map(|t| t.0)
                    .or(sc.and_then(|s| s.slow_threshold))
                    .unwrap_or(ds.slow_threshold),
                slow_events_per_cpu_per_sec: a
                    .slow_events_per_cpu
                    .or(sc.and_then(|s| s.slow_events_per_cpu))
                    .unwrap_or(ds.slow_events_per_cpu_per_sec),
                max_series: a.max_syscall_series.or(sc.and_then(|s| s.max_series)),
                max_error_series: a
                    .max_syscall_error_series
                    .or(sc.and_then(|s| s.max_error_series))
                    .unwrap_or(ds.max_error_series),
                max_inflight_threads: a
                    .max_inflight_threads
                    .or(sc.and_then(|s| s.max_inflight_threads))
                    .unwrap_or(ds.max_inflight_threads),
                ..ds
            },
            sched_enabled: !a.no_sched
                && f.sched
                    .as_ref()
                    .and_then(|s| s.enabled)
                    .unwrap_or(d.sched_enabled),
            cgroups: CgroupsConfig {
                enabled: !a.no_cgroups
                    && f.cgroups
                        .as_ref()
                        .and_then(|c| c.enabled)
                        .unwrap_or(d.cgroups.enabled),
                max_cgroups: a
                    .max_cgroups
                    .or(f.cgroups.as_ref().and_then(|c| c.max_cgroups))
                    .unwrap_or(d.cgroups.max_cgroups),
            },
            oom_enabled: !a.no_oom
                && f.oom
                    .as_ref()
                    .and_then(|s| s.enabled)
                    .unwrap_or(d.oom_enabled),
            command_line: a.process_command_line
                || f.identity
                    .as_ref()
                    .and_then(|i| i.command_line)
                    .unwrap_or(d.command_line),
            command_line_max_bytes: a
                .process_command_line_max
                .or(f.identity.as_ref().and_then(|i| i.command_line_max_bytes))
                .unwrap_or(d.command_line_max_bytes),
            filter: {
                let ff = f.filter.as_ref();
                let pick = |flag: &Vec<String>, file: Option<&Vec<String>>| {
                    if flag.is_empty() {
                        file.cloned().unwrap_or_default()
                    } else {
                        flag.clone()
                    }
                };
                crate::filter::FilterConfig {
                    include_cgroups: pick(
                        &a.include_cgroup,
                        ff.and_then(|x| x.include_cgroups.as_ref()),
                    ),
                    exclude_cgroups: pick(
                        &a.exclude_cgroup,
                        ff.and_then(|x| x.exclude_cgroups.as_ref()),
                    ),
                    exclude_processes: pick(
                        &a.exclude_process,
                        ff.and_then(|x| x.exclude_processes.as_ref()),
                    ),
                    exclude_namespaces: pick(
                        &a.exclude_namespace,
                        ff.and_then(|x| x.exclude_namespaces.as_ref()),
                    ),
                }
            },
            budget: {
                let db = &d.budget;
                let lim = f.limits.as_ref();
                let flag = |k: crate::budget::SignalKind| {
                    a.granularity
                        .iter()
                        .rev()
                        .find(|(s, _)| *s == k)
                        .map(|(_, g)| *g)
                };
                crate::budget::BudgetConfig {
                    max_series_per_metric: a
                        .max_series_per_metric
                        .or(lim.and_then(|l| l.max_series_per_metric))
                        .unwrap_or(db.max_series_per_metric),
                    max_series: a
                        .max_series
                        .or(lim.and_then(|l| l.max_series))
                        .unwrap_or(db.max_series),
                    syscalls: flag(crate::budget::SignalKind::Syscalls)
                        .or(sc.and_then(|s| s.granularity))
                        .unwrap_or(db.syscalls),
                    tcp: flag(crate::budget::SignalKind::Tcp)
                        .or(tc.and_then(|t| t.granularity))
                        .unwrap_or(db.tcp),
                    sched: flag(crate::budget::SignalKind::Sched)
                        .or(f.sched.as_ref().and_then(|s| s.granularity))
                        .unwrap_or(db.sched),
                }
            },
            tcp: TcpConfig {
                enabled: !a.no_tcp && tc.and_then(|t| t.enabled).unwrap_or(dt.enabled),
                per_connection: a.tcp_per_connection
                    || tc
                        .and_then(|t| t.per_connection)
                        .unwrap_or(dt.per_connection),
                max_series: a
                    .max_tcp_series
                    .or(tc.and_then(|t| t.max_series))
                    .unwrap_or(dt.max_series),
                max_sockets: a
                    .max_tcp_sockets
                    .or(tc.and_then(|t| t.max_sockets))
                    .unwrap_or(dt.max_sockets),
                events_per_cpu_per_sec: a
                    .tcp_events_per_cpu
                    .or(tc.and_then(|t| t.events_per_cpu))
                    .unwrap_or(dt.events_per_cpu_per_sec),
            },
            ..d
        }
    }
}

/// An error in a value the config file supplied names the file and key
/// rather than the variable it stands for.
fn name_file_key(e: ConfigError, file: &Loaded) -> ConfigError {
    // A range error names "--flag (file.key)"; it is the file's when the
    // file gave that very value (a flag with another value won).
    if let ConfigError::OutOfRange { name, value, .. } = &e
        && let Some((_, key)) = name.split_once(" (")
        && file.number(key.trim_end_matches(')')) == Some(*value)
    {
        return ConfigError::File(FileError::Invalid {
            path: file.path.clone(),
            key: key.trim_end_matches(')').to_string(),
            reason: e.to_string(),
        });
    }
    let var = match &e {
        ConfigError::Env { var, .. } => var.to_string(),
        ConfigError::Otlp(OtlpConfigError::Invalid { var, .. }) => var.clone(),
        _ => return e,
    };
    match file.key_of(&var) {
        Some(key) => ConfigError::File(FileError::Invalid {
            path: file.path.clone(),
            key: key.to_string(),
            reason: e.to_string(),
        }),
        None => e,
    }
}

fn dedup(mut v: Vec<ExporterKind>) -> Vec<ExporterKind> {
    let mut seen = Vec::new();
    v.retain(|e| {
        let new = !seen.contains(e);
        seen.push(*e);
        new
    });
    v
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("expected a number of seconds, got {s:?}"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("expected a positive number of seconds, got {s:?}"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_api_url(s: &str) -> Result<String, String> {
    crate::k8s::check_api_url(s.trim()).map(|()| s.trim().to_string())
}

fn parse_listen_flag(s: &str) -> Result<Listen, String> {
    crate::config::parse_listen(s).map(Listen)
}

fn parse_threshold(s: &str) -> Result<Threshold, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Threshold(None));
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("expected a duration such as 100ms or 1s, or off; {s:?}: {e}"))?;
    if d.is_zero() {
        return Err("a zero threshold would send every syscall; use off to disable".into());
    }
    Ok(Threshold(Some(d)))
}

/// `SIGNAL=LEVEL` of `--granularity`.
fn parse_granularity(
    s: &str,
) -> Result<(crate::budget::SignalKind, crate::budget::Granularity), String> {
    use crate::budget::{Granularity, SignalKind};
    let (signal, level) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected SIGNAL=LEVEL, e.g. syscalls=executable"))?;
    let signal = match signal.trim() {
        "syscalls" => SignalKind::Syscalls,
        "tcp" => SignalKind::Tcp,
        "sched" => SignalKind::Sched,
        other => {
            return Err(format!(
                "{other:?} is not a signal: expected syscalls, tcp or sched"
            ));
        }
    };
    let level = <Granularity as clap::ValueEnum>::from_str(level.trim(), false).map_err(|_| {
        format!(
            "{:?} is not a granularity: expected process, executable or container",
            level.trim()
        )
    })?;
    Ok((signal, level))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hostscope").chain(args.iter().copied()))
    }

    #[test]
    fn run_flags() {
        let cli = parse(&[
            "run",
            "--exporter",
            "stdout",
            "--interval",
            "0.5",
            "--duration",
            "3",
            "--slow-threshold",
            "20ms",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        let c = args.into_config(&|_| None).unwrap();
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(c.duration, Some(Duration::from_secs(3)));
        assert_eq!(c.syscalls.slow_threshold, Some(Duration::from_millis(20)));
        assert_eq!(c.metrics_exporters, vec![ExporterKind::Stdout]);
        assert_eq!(c.traces_exporters, vec![ExporterKind::Stdout]);
        assert_eq!(c.otlp_metrics, None);
    }

    #[test]
    fn bad_flags_exit_2() {
        for bad in [
            &["run", "--interval", "0"][..],
            &["run", "--interval", "ten"],
            &["run", "--exporter", "carrier-pigeon"],
            &["run", "--slow-threshold", "0ms"],
            &["run", "--no-such-flag"],
            &["run", "--listen", "9464"],
            &["run", "--prometheus-listen", "nowhere"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }

    fn run_args(args: &[&str]) -> RunArgs {
        let Command::Run(a) = parse(&[&["run"][..], args].concat()).unwrap().command else {
            panic!("expected run")
        };
        a
    }

    /// A config file in a fresh temporary directory, removed on drop.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("hostscope-cli-test-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("hostscope.yaml");
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_the_environment() {
        let f = TempFile::new(
            "precedence",
            "interval: 3s\nexport: { queue_bytes: 100000 }\n\
             syscalls: { max_error_series: 77, slow_threshold: off }\n\
             otlp: { protocol: grpc, headers: { x-from: file } }\n",
        );
        let path = f.0.to_str().unwrap();
        let env = |n: &str| match n {
            "OTEL_METRIC_EXPORT_INTERVAL" => Some("9000".to_string()),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".to_string()),
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://env:4317".to_string()),
            _ => None,
        };
        let c = run_args(&["--config", path, "--max-syscall-error-series", "50"])
            .into_config(&env)
            .unwrap();
        assert_eq!(c.interval, Duration::from_secs(3), "file over env");
        assert_eq!(c.export_queue_bytes, 100_000, "file over default");
        assert_eq!(c.syscalls.max_error_series, 50, "flag over file");
        assert_eq!(c.syscalls.slow_threshold, None, "file: off");
        let m = c.otlp_metrics.expect("otlp metrics");
        assert_eq!(
            m.protocol,
            crate::export::otlp_config::Protocol::Grpc,
            "file over env"
        );
        assert_eq!(
            m.endpoint, "http://env:4317",
            "env where the file is silent"
        );
        assert_eq!(m.headers, vec![("x-from".to_string(), "file".to_string())]);
        // The same file through HOSTSCOPE_CONFIG.
        let env2 = |n: &str| (n == "HOSTSCOPE_CONFIG").then(|| path.to_string());
        let c = run_args(&["--interval", "1"]).into_config(&env2).unwrap();
        assert_eq!(c.interval, Duration::from_secs(1), "flag over file");
        assert_eq!(c.export_queue_bytes, 100_000);
    }

    #[test]
    fn listen_from_flag_alias_file_and_environment() {
        let none = |_: &str| None;
        let c = run_args(&[]).into_config(&none).unwrap();
        assert_eq!(c.listen, Some(([127, 0, 0, 1], 9464).into()), "default");
        assert!(!c.keep_capabilities, "default: drop");
        let c = run_args(&["--listen", "0.0.0.0:1000", "--keep-capabilities"])
            .into_config(&none)
            .unwrap();
        assert_eq!(c.listen, Some(([0, 0, 0, 0], 1000).into()));
        assert!(c.keep_capabilities);
        let c = run_args(&["--prometheus-listen", "127.0.0.1:1001"])
            .into_config(&none)
            .unwrap();
        assert_eq!(c.listen, Some(([127, 0, 0, 1], 1001).into()), "alias");
        let c = run_args(&["--listen", "none"]).into_config(&none).unwrap();
        assert_eq!(c.listen, None);
        let env = |n: &str| match n {
            "OTEL_EXPORTER_PROMETHEUS_HOST" => Some("0.0.0.0".to_string()),
            "OTEL_EXPORTER_PROMETHEUS_PORT" => Some("1002".to_string()),
            _ => None,
        };
        let c = run_args(&[]).into_config(&env).unwrap();
        assert_eq!(c.listen, Some(([0, 0, 0, 0], 1002).into()), "environment");
        let bad = |n: &str| (n == "OTEL_EXPORTER_PROMETHEUS_PORT").then(|| "http".to_string());
        let err = run_args(&[]).into_config(&bad).unwrap_err().to_string();
        assert!(err.contains("OTEL_EXPORTER_PROMETHEUS_PORT"), "{err}");
        let f = TempFile::new(
            "listen",
            "listen: 127.0.0.1:1003\nkeep_capabilities: true\n",
        );
        let path = f.0.to_str().unwrap();
        let c = run_args(&["--config", path]).into_config(&env).unwrap();
        assert_eq!(
            c.listen,
            Some(([127, 0, 0, 1], 1003).into()),
            "file over env"
        );
        assert!(c.keep_capabilities);
        let c = run_args(&["--config", path, "--listen", "none"])
            .into_config(&env)
            .unwrap();
        assert_eq!(c.listen, None, "flag over file");
        let f = TempFile::new("prom-port", "prometheus: { port: 1004 }\n");
        let c = run_args(&["--config", f.0.to_str().unwrap()])
            .into_config(&env)
            .unwrap();
        assert_eq!(
            c.listen,
            Some(([0, 0, 0, 0], 1004).into()),
            "prometheus.port"
        );
        let f = TempFile::new("prom-bad", "prometheus: { host: nowhere }\n");
        let p = f.0.to_str().unwrap();
        let err = run_args(&["--config", p])
            .into_config(&none)
            .unwrap_err()
            .to_string();
        assert!(err.contains(p) && err.contains("prometheus.host"), "{err}");
        let err = run_args(&["--listen", "none", "--exporter", "prometheus"])
            .into_config(&none)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--listen"), "{err}");
    }

    #[test]
    fn kubernetes_settings_from_flags_file_and_environment() {
        let env = |n: &str| (n == "K8S_NODE_NAME").then(|| "node-env".to_string());
        let c = run_args(&[]).into_config(&env).unwrap();
        assert!(c.kubernetes.enabled);
        assert_eq!(c.kubernetes.api_url, None, "default: in-cluster if any");
        assert_eq!(c.kubernetes.node_name.as_deref(), Some("node-env"));
        assert!(c.kubernetes.labels.is_empty(), "default: no labels");
        let f = TempFile::new(
            "k8s",
            "kubernetes:\n  api_url: https://10.0.0.1:6443\n  node_name: node-file\n  \
             labels: [app, team]\n",
        );
        let path = f.0.to_str().unwrap();
        let c = run_args(&["--config", path]).into_config(&env).unwrap();
        assert_eq!(
            c.kubernetes.api_url.as_deref(),
            Some("https://10.0.0.1:6443")
        );
        assert_eq!(
            c.kubernetes.node_name.as_deref(),
            Some("node-file"),
            "file over env"
        );
        assert_eq!(c.kubernetes.labels, ["app", "team"]);
        let c = run_args(&[
            "--config",
            path,
            "--k8s-api-url",
            "http://127.0.0.1:8001",
            "--k8s-node-name",
            "node-flag",
            "--k8s-label",
            "a,b",
            "--k8s-label",
            "c",
        ])
        .into_config(&env)
        .unwrap();
        assert_eq!(
            c.kubernetes.api_url.as_deref(),
            Some("http://127.0.0.1:8001")
        );
        assert_eq!(c.kubernetes.node_name.as_deref(), Some("node-flag"));
        assert_eq!(c.kubernetes.labels, ["a", "b", "c"], "flags over file");
        let c = run_args(&["--no-k8s"]).into_config(&env).unwrap();
        assert!(!c.kubernetes.enabled);
        // Plain http only to loopback: exit 2 naming the flag or key.
        let err = parse(&["run", "--k8s-api-url", "http://10.0.0.1:8080"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--k8s-api-url"), "{err}");
        let f = TempFile::new("k8s-bad", "kubernetes: { api_url: \"http://10.0.0.1\" }\n");
        let p = f.0.to_str().unwrap();
        let err = run_args(&["--config", p])
            .into_config(&env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(p) && err.contains("kubernetes.api_url") && err.contains("loopback"),
            "{err}"
        );
    }

    #[test]
    fn file_errors_name_the_file_and_key() {
        let f = TempFile::new(
            "bad-protocol",
            "otlp:\n  metrics:\n    protocol: carrier-pigeon\n",
        );
        let path = f.0.to_str().unwrap();
        let err = run_args(&["--config", path])
            .into_config(&|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("config file {path}: otlp.metrics.protocol: ")),
            "{err}"
        );
        assert!(err.contains("expected grpc or http/protobuf"), "{err}");
        let err = run_args(&["--config", "/nonexistent/hostscope.yaml"])
            .into_config(&|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config file /nonexistent/hostscope.yaml: cannot read it"),
            "{err}"
        );
    }
}
