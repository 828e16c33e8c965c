//! `cargo xtask bench` (series part): what the agent costs per exported data
//! point, and the memory it holds, at 10k and 100k live series.
//!
//! For each size, `hostscope-workload series P 50` keeps P processes alive
//! that each made 50 different failing syscalls once: 100 series each (a
//! latency histogram and an error counter per syscall), all exported every
//! interval (cumulative temporality). The agent runs as users run it,
//! `hostscope run --exporter otlp` over gRPC with the default explicit
//! histograms, into `hostscope-sink`, an official-protocol receiver in
//! another process that counts what arrives.
//!
//! Measured between two quiet moments of the receiver (after an interval's
//! requests have all arrived), over whole intervals: the agent's CPU time
//! (utime + stime from /proc/<pid>/stat) and the data points received, so
//! points per CPU-second covers everything the agent does per interval
//! (draining the kernel maps, identity, building, encoding and sending).
//! Memory is the agent's VmRSS and VmHWM (peak) at the end.

use std::{
    io::Write as _,
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::bench::{Tracer, machine_summary, read_lines};

/// Different syscalls each workload process makes (2 series each).
const SYSCALLS_PER_PROCESS: usize = 50;
/// Export interval during the measurement.
const INTERVAL_S: u64 = 5;
/// Intervals let pass before measuring (process identity is read once).
const WARMUP_INTERVALS: usize = 2;
/// Intervals measured.
const MEASURED_INTERVALS: usize = 3;

/// One size's figures.
pub struct SeriesResult {
    pub series: usize,
    pub points_per_interval: f64,
    pub cpu_s_per_interval: f64,
    /// Wall time per interval of the agent's synchronous phases (from its
    /// debug log): draining maps and building points, and converting,
    /// splitting and encoding requests.
    pub collect_s_per_interval: f64,
    pub encode_s_per_interval: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// A helper process that runs until its stdin closes.
struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    label: &'static str,
}

impl Helper {
    fn spawn(label: &'static str, cmd: &mut Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {label}"))?;
        let (tx, lines) = mpsc::channel();
        read_lines(child.stdout.take().unwrap(), tx);
        Ok(Self {
            stdin: child.stdin.take(),
            child,
            lines,
            label,
        })
    }

    /// The first line starting with `prefix`.
    fn wait_line(&self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(_) => {}
                Err(_) => bail!(
                    "{} printed no line starting {prefix:?} within {timeout:?}",
                    self.label
                ),
            }
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Running totals the sink prints once a second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Totals {
    requests: u64,
    points: u64,
}

fn parse_totals(line: &str) -> Option<Totals> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(Totals {
        requests: v["requests"].as_u64()?,
        points: v["points"].as_u64()?,
    })
}

/// Waits until `bursts` export bursts have ended (the totals changed, then
/// stayed the same for a second) and returns the totals at that moment.
fn after_bursts(sink: &Helper, bursts: usize) -> Result<Totals> {
    let timeout = Duration::from_secs(INTERVAL_S * (bursts as u64 + 2) + 30);
    let deadline = Instant::now() + timeout;
    let mut last: Option<Totals> = None;
    let mut changed = false;
    let mut seen = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = sink
            .lines
            .recv_timeout(left)
            .map_err(|_| anyhow::anyhow!("sink went quiet for {timeout:?}"))?;
        let Some(t) = parse_totals(&line) else {
            continue;
        };
        if let Some(prev) = last {
            if t != prev {
                changed = true;
            } else if changed {
                changed = false;
                seen += 1;
                if seen == bursts {
                    return Ok(t);
                }
            }
        }
        last = Some(t);
    }
}

/// (collect, build, encode) in ms from the agent's "interval exported" line.
fn parse_phases(line: &str) -> Option<(f64, f64, f64)> {
    if !line.contains("interval exported") {
        return None;
    }
    let field = |name: &str| -> Option<f64> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        line[at..].split_whitespace().next()?.parse().ok()
    };
    Some((
        field("collect_ms")?,
        field("build_ms")?,
        field("encode_ms")?,
    ))
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Measures one size.
fn measure(
    hostscope: &Path,
    workload: &Path,
    sink_bin: &Path,
    series: usize,
) -> Result<SeriesResult> {
    let procs = series / (2 * SYSCALLS_PER_PROCESS);
    let sink = Helper::spawn("hostscope-sink", &mut Command::new(sink_bin))?;
    let addr = sink
        .wait_line("listening ", Duration::from_secs(10))?
        .trim_start_matches("listening ")
        .to_string();
    // Room in the kernel maps for the workload and the rest of the host.
    let max = (series + 20_000).to_string();
    let mut agent = Tracer::start(
        "hostscope run",
        Command::new(hostscope)
            .args([
                "run",
                "--exporter",
                "otlp",
                "--interval",
                &INTERVAL_S.to_string(),
                "--slow-threshold",
                "off",
                "--max-syscall-series",
                &max,
                "--max-syscall-error-series",
                &max,
                // The cardinality budget too: every series is measured.
                "--max-series-per-metric",
                &max,
                "--max-series",
                &(4 * (series + 20_000)).to_string(),
                "--export-queue-bytes",
                &(64u64 << 20).to_string(),
            ])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("RUST_LOG", "info,hostscope::agent=debug")
            .stdout(Stdio::null()),
        "syscalls signal attached",
        libc::SIGTERM,
    )?;
    let work = Helper::spawn(
        "hostscope-workload series",
        Command::new(workload).args([
            "series",
            &procs.to_string(),
            &SYSCALLS_PER_PROCESS.to_string(),
        ]),
    )?;
    work.wait_line("ready", Duration::from_secs(120))?;
    let start = after_bursts(&sink, WARMUP_INTERVALS)?;
    let cpu0 = cpu_seconds(agent.pid())?;
    agent.take_lines();
    let end = after_bursts(&sink, MEASURED_INTERVALS)?;
    let cpu1 = cpu_seconds(agent.pid())?;
    let phases: Vec<(f64, f64, f64)> = agent
        .take_lines()
        .iter()
        .filter_map(|l| parse_phases(l))
        .collect();
    if phases.len() != MEASURED_INTERVALS {
        bail!(
            "expected {MEASURED_INTERVALS} 'interval exported' lines from the agent between the two quiet moments, saw {}",
            phases.len()
        );
    }
    let (rss_kib, hwm_kib) = memory_kib(agent.pid())?;
    drop(work);
    agent.stop()?;
    let n = MEASURED_INTERVALS as f64;
    let result = SeriesResult {
        series,
        points_per_interval: (end.points - start.points) as f64 / n,
        cpu_s_per_interval: (cpu1 - cpu0) / n,
        collect_s_per_interval: phases.iter().map(|p| p.0 + p.1).sum::<f64>() / n / 1e3,
        encode_s_per_interval: phases.iter().map(|p| p.2).sum::<f64>() / n / 1e3,
        rss_kib,
        hwm_kib,
    };
    eprintln!(
        "bench: {series} series: {:.0} points and {} requests per interval, {:.3} CPU-s per interval, RSS {} KiB (peak {} KiB)",
        result.points_per_interval,
        (end.requests - start.requests) / MEASURED_INTERVALS as u64,
        result.cpu_s_per_interval,
        rss_kib,
        hwm_kib
    );
    Ok(result)
}

/// Runs every size and prints the markdown table.
pub fn run(hostscope: &Path, workload: &Path, sink: &Path, sizes: &[usize]) -> Result<()> {
    let mut results = Vec::new();
    for &s in sizes {
        results.push(measure(hostscope, workload, sink, s).with_context(|| format!("{s} series"))?);
    }
    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    writeln!(
        out,
        "Series: `hostscope-workload series P {SYSCALLS_PER_PROCESS}` (P processes x {SYSCALLS_PER_PROCESS} syscalls x 2 series), \
         agent `run --exporter otlp` (gRPC, explicit histograms) into `hostscope-sink`, interval {INTERVAL_S} s, \
         {MEASURED_INTERVALS} intervals measured after {WARMUP_INTERVALS}; {}",
        machine_summary()
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| workload series | points exported per interval | agent CPU per interval | of which collecting | of which encoding | points per CPU-second (whole agent) | points per CPU-second (encode and export) | CPU at a 10 s interval | RSS | peak RSS |"
    )?;
    writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for r in &results {
        let per = |cpu: f64| {
            if cpu > 0.0 {
                format!("{:.0}", r.points_per_interval / cpu)
            } else {
                "n/a (below tick resolution)".into()
            }
        };
        // Encoding and exporting: the agent's CPU time less the collecting
        // phase (both single-threaded on the agent's one runtime thread).
        let export_cpu = r.cpu_s_per_interval - r.collect_s_per_interval;
        writeln!(
            out,
            "| {} | {:.0} | {:.0} ms | {:.0} ms | {:.0} ms | {} | {} | {:.2}% of a core | {:.1} MiB | {:.1} MiB |",
            r.series,
            r.points_per_interval,
            r.cpu_s_per_interval * 1e3,
            r.collect_s_per_interval * 1e3,
            r.encode_s_per_interval * 1e3,
            per(r.cpu_s_per_interval),
            per(export_cpu),
            r.cpu_s_per_interval / 10.0 * 100.0,
            r.rss_kib as f64 / 1024.0,
            r.hwm_kib as f64 / 1024.0
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_parse() {
        assert_eq!(
            parse_totals(r#"{"requests":3,"points":120,"spans":0,"bytes":9}"#),
            Some(Totals {
                requests: 3,
                points: 120
            })
        );
        assert_eq!(parse_totals("listening 127.0.0.1:1"), None);
    }

    #[test]
    fn phases_parse() {
        let l = "2026-11-23T10:04:31Z DEBUG hostscope::agent: interval exported collect_ms=348.5 build_ms=0.69 encode_ms=65.0";
        assert_eq!(parse_phases(l), Some((348.5, 0.69, 65.0)));
        assert_eq!(parse_phases("INFO other"), None);
    }
}
