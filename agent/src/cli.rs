//! Command line: `hostscope run ...`. Parsing errors exit with code 2 before
//! anything is loaded.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{
    Config, ConfigError, Env, ExporterKind, HookPreference, SyscallsConfig, exporters_from_env,
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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the kernel programs and export what they measure every interval.
    Run(RunArgs),
    /// Attach empty programs on sys_enter/sys_exit and wait: the cost floor
    /// that `cargo xtask bench` compares against.
    #[command(hide = true)]
    BenchFloor {
        /// Seconds to stay attached.
        #[arg(long, value_parser = parse_seconds)]
        duration: Duration,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where to send metrics and traces (repeatable). Without it,
    /// OTEL_METRICS_EXPORTER and OTEL_TRACES_EXPORTER decide (default otlp).
    #[arg(long = "exporter", value_enum)]
    pub exporters: Vec<ExporterKind>,
    /// Address of the Prometheus endpoint (default: OTEL_EXPORTER_PROMETHEUS_HOST
    /// and _PORT, else 127.0.0.1:9464).
    #[arg(long)]
    pub prometheus_listen: Option<std::net::SocketAddr>,
    /// Bytes each OTLP signal may queue while the collector is slow or down;
    /// beyond it the oldest data is dropped (and counted).
    #[arg(long, default_value_t = Config::default().export_queue_bytes)]
    pub export_queue_bytes: usize,
    /// Largest OTLP request to send (the collector's receive limit, 4 MiB by
    /// default for gRPC, must be above it); an interval with more data is
    /// split into several requests.
    #[arg(long, default_value_t = Config::default().export_max_request_bytes)]
    pub export_max_request_bytes: usize,
    /// Tracepoint programs to attach: BTF tracepoints with a raw-tracepoint
    /// fallback (auto), or only one kind.
    #[arg(long, value_enum, default_value_t = HookPreference::Auto)]
    pub hook_type: HookPreference,
    /// Seconds between exports (default: OTEL_METRIC_EXPORT_INTERVAL in
    /// milliseconds, else 10 s).
    #[arg(long, value_parser = parse_seconds)]
    pub interval: Option<Duration>,
    /// Exit cleanly after this many seconds, flushing the last interval.
    #[arg(long, value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    /// Send syscalls at least this slow as events ("100ms", "1s"; "off" disables).
    #[arg(long, value_parser = parse_threshold, default_value = "100ms")]
    pub slow_threshold: Threshold,
    /// In-kernel limit on slow-syscall events per CPU per second.
    #[arg(long, default_value_t = SyscallsConfig::default().slow_events_per_cpu_per_sec)]
    pub slow_events_per_cpu: u32,
    /// Bound on (process, syscall) series in the kernel map (default: from a
    /// 32 MiB kernel-memory budget and the number of CPUs).
    #[arg(long)]
    pub max_syscall_series: Option<u32>,
    /// Bound on (process, syscall, errno) series in the kernel map.
    #[arg(long, default_value_t = SyscallsConfig::default().max_error_series)]
    pub max_syscall_error_series: u32,
    /// Bound on threads tracked inside a syscall at once.
    #[arg(long, default_value_t = SyscallsConfig::default().max_inflight_threads)]
    pub max_inflight_threads: u32,
    /// Pair syscall entry and exit through the in-flight hash map only, without
    /// the per-CPU fast path and its sched_switch program.
    #[arg(long, hide = true)]
    pub no_syscall_fast_path: bool,
    /// Do not attach the syscalls programs.
    #[arg(long)]
    pub no_syscalls: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold(pub Option<Duration>);

impl RunArgs {
    /// The configuration these flags and the environment describe. Flags win
    /// over OTEL_* variables.
    pub fn into_config(self, env: Env) -> Result<Config, ConfigError> {
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
        let prometheus_listen = match self.prometheus_listen {
            Some(a) => a,
            None => {
                let host =
                    env("OTEL_EXPORTER_PROMETHEUS_HOST").unwrap_or_else(|| "127.0.0.1".into());
                let host = if host == "localhost" {
                    "127.0.0.1".to_string()
                } else {
                    host
                };
                let port = env("OTEL_EXPORTER_PROMETHEUS_PORT").unwrap_or_else(|| "9464".into());
                format!("{host}:{port}")
                    .parse()
                    .map_err(|_| ConfigError::Env {
                        var: "OTEL_EXPORTER_PROMETHEUS_HOST",
                        value: format!("{host}:{port}"),
                        reason: "expected an IP address and a port (OTEL_EXPORTER_PROMETHEUS_PORT)",
                    })?
            }
        };
        let mut cfg = self.into_config_with(metrics_exporters, traces_exporters);
        cfg.interval = interval;
        cfg.prometheus_listen = prometheus_listen;
        cfg.resolve_otlp(env)?;
        cfg.resolve_resource(env)?;
        Ok(cfg)
    }

    fn into_config_with(
        self,
        metrics_exporters: Vec<ExporterKind>,
        traces_exporters: Vec<ExporterKind>,
    ) -> Config {
        let a = self;
        let defaults = Config::default();
        Config {
            duration: a.duration,
            metrics_exporters,
            traces_exporters,
            export_queue_bytes: a.export_queue_bytes,
            export_max_request_bytes: a.export_max_request_bytes,
            hook_type: a.hook_type,
            syscalls: SyscallsConfig {
                enabled: !a.no_syscalls,
                fast_path: !a.no_syscall_fast_path,
                slow_threshold: a.slow_threshold.0,
                slow_events_per_cpu_per_sec: a.slow_events_per_cpu,
                max_series: a.max_syscall_series,
                max_error_series: a.max_syscall_error_series,
                max_inflight_threads: a.max_inflight_threads,
                ..defaults.syscalls
            },
            ..defaults
        }
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
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
    }
}
