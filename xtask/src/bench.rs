//! `cargo xtask bench`: what hostscope adds to every syscall.
//!
//! `hostscope-workload getppid-loop N` times N `getppid` calls under four
//! cases: no tracer, the cost floor (empty `sys_enter`/`sys_exit` programs,
//! `hostscope bench-floor`), the agent itself, and libbpf-tools `syscount -L`
//! (the reference peer). Each round runs every case once, rotating the order
//! so drift in the machine's speed spreads over all cases. The report gives
//! the median per case, the cost added over no tracer, and the two target
//! ratios; misses are reported, never turned into a failing exit code.
//!
//! Under the same tracer, `hostscope-workload pingpong N` times round trips
//! between two threads pinned to one CPU (two context switches each): the
//! cost of hostscope's `sched_switch` program, which the getppid loop never
//! triggers, shows there.

use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{setup, util};

/// How long a tracer may take to report that its programs are attached.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a tracer may take to exit after being signalled.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Lines of a tracer's output kept for error messages.
const TAIL_LINES: usize = 20;
/// hostscope's added cost over the empty-program floor must stay within this factor.
const FLOOR_TARGET: f64 = 1.5;
/// hostscope's added cost must stay below this fraction of `syscount -L`'s.
const SYSCOUNT_TARGET: f64 = 1.0;

/// Options of `cargo xtask bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Rounds; each runs every case once.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// getppid calls per measurement.
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub calls: u64,
    /// Ping-pong round trips per measurement.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub round_trips: u64,
    /// Live-series sizes for the export cost and memory part (comma-separated;
    /// empty skips it).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000,100000")]
    pub series: Vec<usize>,
    /// Only the series part (skip the syscall and ping-pong rounds).
    #[arg(long)]
    pub only_series: bool,
    /// Only the tcp part (loopback bulk and request/response with and
    /// without the agent).
    #[arg(long, conflicts_with = "only_series")]
    pub only_tcp: bool,
    /// Only the scheduler part (context-switch ping-pong with nothing,
    /// hostscope's sched signal and `runqlat` attached).
    #[arg(long, conflicts_with_all = ["only_series", "only_tcp"])]
    pub only_sched: bool,
    /// Rounds of the tcp part; each runs every case once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub tcp_rounds: u32,
    /// Bytes per tcp bulk measurement.
    #[arg(long, default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub tcp_bytes: u64,
    /// Round trips per tcp request/response measurement.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub tcp_round_trips: u64,
}

/// Samples of one workload, indexed by [`Case::index`].
type Samples = [Vec<f64>; 4];

/// What is attached while the loop runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    None,
    Floor,
    Hostscope,
    Syscount,
}

impl Case {
    const ALL: [Case; 4] = [Case::None, Case::Floor, Case::Hostscope, Case::Syscount];

    fn name(self) -> &'static str {
        match self {
            Case::None => "none",
            Case::Floor => "floor (empty programs)",
            Case::Hostscope => "hostscope",
            Case::Syscount => "syscount -L",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The binaries the benchmark runs.
struct Binaries {
    hostscope: PathBuf,
    workload: PathBuf,
    syscount: PathBuf,
}

/// Builds, measures and prints the report.
pub fn run(args: &BenchArgs) -> Result<()> {
    util::require_root("cargo xtask bench")?;
    setup::run()?;
    util::run(util::cargo().args([
        "build",
        "--release",
        "-p",
        "hostscope",
        "-p",
        "hostscope-tests",
    ]))?;
    let bins = Binaries {
        hostscope: util::built_binary("release", "hostscope"),
        workload: util::built_binary("release", "hostscope-workload"),
        syscount: find_syscount()?,
    };
    if !args.only_series && !args.only_tcp && !args.only_sched {
        let started = Instant::now();
        let samples = measure(&bins, args)?;
        eprintln!(
            "bench: {} rounds in {:.0} s",
            args.rounds,
            started.elapsed().as_secs_f64()
        );
        print_report(args, &samples[0]);
        print_pingpong(args, &samples[1]);
    }
    if !args.only_tcp && !args.only_sched && !args.series.is_empty() {
        crate::bench_series::run(
            &bins.hostscope,
            &bins.workload,
            &util::built_binary("release", "hostscope-sink"),
            &args.series,
        )?;
    }
    if !args.only_series && !args.only_sched {
        crate::bench_tcp::run(
            &bins.hostscope,
            &bins.workload,
            &crate::bench_tcp::TcpOptions {
                rounds: args.tcp_rounds,
                bytes: args.tcp_bytes,
                round_trips: args.tcp_round_trips,
            },
        )?;
    }
    if !args.only_series && !args.only_tcp {
        crate::bench_sched::run(&bins.hostscope, &bins.workload)?;
    }
    Ok(())
}

/// `syscount` from PATH, else `/usr/sbin/syscount` (not on a user's PATH).
fn find_syscount() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("syscount"))
        .find(|p| p.is_file())
        .context(
            "syscount not found on PATH or in /usr/sbin (cargo xtask setup installs libbpf-tools)",
        )
}

/// Runs all rounds; returns the getppid (ns/call) and ping-pong (ns/round
/// trip) samples.
fn measure(bins: &Binaries, args: &BenchArgs) -> Result<[Samples; 2]> {
    let mut samples: [Samples; 2] = Default::default();
    for round in 0..args.rounds {
        let mut order = Case::ALL;
        order.rotate_left(round as usize % Case::ALL.len());
        for case in order {
            let [ns, rt] = measure_case(bins, case, args)
                .with_context(|| format!("round {}: case `{}`", round + 1, case.name()))?;
            eprintln!(
                "bench: round {}/{}: {:<24} {ns:>8.1} ns/call {rt:>9.1} ns/round trip",
                round + 1,
                args.rounds,
                case.name()
            );
            samples[0][case.index()].push(ns);
            samples[1][case.index()].push(rt);
        }
    }
    Ok(samples)
}

/// One measurement: start the case's tracer, run both workloads, stop the tracer.
fn measure_case(bins: &Binaries, case: Case, args: &BenchArgs) -> Result<[f64; 2]> {
    let tracer = match case {
        Case::None => None,
        Case::Floor => Some(Tracer::start(
            "hostscope bench-floor",
            Command::new(&bins.hostscope)
                .args(["bench-floor", "--duration", "3600"])
                .stdout(Stdio::piped()),
            "empty sys_enter/sys_exit programs attached",
            libc::SIGINT,
        )?),
        Case::Hostscope => Some(Tracer::start(
            "hostscope run",
            Command::new(&bins.hostscope)
                .args(["run", "--exporter", "stdout", "--interval", "1"])
                .stdout(Stdio::null()),
            "syscalls signal attached",
            libc::SIGTERM,
        )?),
        // syscount's stdout is block-buffered into a pipe; stdbuf makes it
        // line-buffered so its ready line (printed after attaching) arrives.
        Case::Syscount => Some(Tracer::start(
            "syscount -L",
            Command::new("stdbuf")
                .arg("-oL")
                .arg(&bins.syscount)
                .arg("-L")
                .stdout(Stdio::piped()),
            "Ctrl+C to quit",
            libc::SIGINT,
        )?),
    };
    let ns = workload(&bins.workload, "getppid-loop", args.calls);
    let rt = workload(&bins.workload, "pingpong", args.round_trips);
    if let Some(tracer) = tracer {
        tracer.stop()?;
    }
    Ok([ns?, rt?])
}

/// Runs one of the workload's loops and returns the mean ns it printed.
fn workload(workload: &Path, name: &str, n: u64) -> Result<f64> {
    let out = util::output(Command::new(workload).arg(name).arg(n.to_string()))?;
    out.trim()
        .parse()
        .with_context(|| format!("hostscope-workload {name} printed {out:?}, not ns"))
}

/// A tracer running in the background while the loop runs. Reader threads
/// drain its output for its whole life so its pipes never fill.
pub(crate) struct Tracer {
    label: &'static str,
    child: Child,
    lines: Receiver<String>,
    tail: VecDeque<String>,
    readers: Vec<JoinHandle<()>>,
    stop_signal: libc::c_int,
}

impl Tracer {
    /// Spawns `cmd` and waits until a line of its output (stderr, and stdout
    /// if the caller piped it) contains `ready`.
    pub(crate) fn start(
        label: &'static str,
        cmd: &mut Command,
        ready: &str,
        stop_signal: libc::c_int,
    ) -> Result<Self> {
        let mut child = spawn_piped(cmd).with_context(|| format!("starting {label}"))?;
        let (tx, lines) = mpsc::channel();
        let readers = [
            child.stdout.take().map(|s| read_lines(s, tx.clone())),
            child.stderr.take().map(|s| read_lines(s, tx)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut tracer = Tracer {
            label,
            child,
            lines,
            tail: VecDeque::new(),
            readers,
            stop_signal,
        };
        tracer.wait_ready(ready)?;
        Ok(tracer)
    }

    /// Output lines received since the last call (or since ready).
    pub(crate) fn take_lines(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the ready line, the tracer's exit or the timeout.
    fn wait_ready(&mut self, ready: &str) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(ready) => return Ok(()),
                Ok(line) => self.remember(line),
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{} did not print {ready:?} within {} s; its output:\n{}",
                    self.label,
                    READY_TIMEOUT.as_secs(),
                    self.tail()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().context("waiting for the tracer")?;
                    bail!(
                        "{} exited ({status}) before printing {ready:?}; its output:\n{}",
                        self.label,
                        self.tail()
                    )
                }
            }
        }
    }

    /// Signals the tracer and waits for it; fails if it neither exits cleanly
    /// nor dies of that signal.
    pub(crate) fn stop(mut self) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // unreaped child, so it cannot have been reused.
        if unsafe { libc::kill(pid, self.stop_signal) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(e).with_context(|| format!("signalling {}", self.label));
        }
        let status = self.wait_with_timeout()?;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.check_exit(status)
    }

    /// Waits up to [`STOP_TIMEOUT`] for the tracer to exit.
    fn wait_with_timeout(&mut self) -> Result<ExitStatus> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().context("waiting for the tracer")? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        bail!(
            "{} did not exit within {} s of signal {}; killed it",
            self.label,
            STOP_TIMEOUT.as_secs(),
            self.stop_signal
        )
    }

    /// Accepts exit code 0 or death by the stop signal (programs without a
    /// handler for it, such as `bench-floor`).
    fn check_exit(&mut self, status: ExitStatus) -> Result<()> {
        use std::os::unix::process::ExitStatusExt as _;
        if status.success() || status.signal() == Some(self.stop_signal) {
            return Ok(());
        }
        while let Ok(line) = self.lines.try_recv() {
            self.remember(line);
        }
        bail!(
            "{} exited badly ({status}) after signal {}; its output:\n{}",
            self.label,
            self.stop_signal,
            self.tail()
        )
    }

    /// SIGKILL and reap; best effort, for error paths.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn remember(&mut self, line: String) {
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    fn tail(&self) -> String {
        self.tail.iter().map(|l| format!("  | {l}\n")).collect()
    }
}

/// A tracer left attached would skew every later measurement and outlive the
/// benchmark: kill it on every early exit. (After `stop` reaps it, `kill` is a
/// no-op.)
impl Drop for Tracer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `cmd` with stdin closed and stderr piped; the caller chooses stdout.
fn spawn_piped(cmd: &mut Command) -> Result<Child> {
    let line = util::display(cmd);
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    cmd.spawn()
        .with_context(|| format!("cannot start `{line}`"))
}

/// Forwards each line of `stream` to `tx` until EOF, then ends. Lines keep
/// being read after the receiver is gone, so the writer never blocks.
pub(crate) fn read_lines(stream: impl Read + Send + 'static, tx: Sender<String>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                    let _ = tx.send(line);
                }
            }
        }
    })
}

/// Median, min and max of a set of samples (every part of `cargo xtask
/// bench` reports these).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub(crate) fn of(values: impl IntoIterator<Item = f64>) -> Stats {
        let mut s: Vec<f64> = values.into_iter().collect();
        assert!(!s.is_empty(), "no samples");
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Stats {
            median,
            min: s[0],
            max: s[n - 1],
        }
    }
}

/// `added / base`, or `None` when the base cost is not positive (noise).
fn ratio(added: f64, base: f64) -> Option<f64> {
    (base > 0.0).then(|| added / base)
}

/// Prints the markdown report (table, ratios, command line) to stdout.
fn print_report(args: &BenchArgs, samples: &Samples) {
    let stats = samples.each_ref().map(|s| Stats::of(s.iter().copied()));
    let none = stats[Case::None.index()].median;
    let added = |c: Case| stats[c.index()].median - none;

    println!();
    println!(
        "Command: `cargo xtask bench --rounds {} --calls {}`",
        args.rounds, args.calls
    );
    println!("Machine: {}", machine_summary());
    println!(
        "Workload: `hostscope-workload getppid-loop {}`, median of {} rounds, cases interleaved",
        args.calls, args.rounds
    );
    println!();
    println!("| case | median ns/call | min | max | added vs none (ns) |");
    println!("|------|---------------:|----:|----:|-------------------:|");
    for case in Case::ALL {
        let s = stats[case.index()];
        let add = if case == Case::None {
            "-".to_owned()
        } else {
            format!("{:.1}", added(case))
        };
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {add} |",
            case.name(),
            s.median,
            s.min,
            s.max
        );
    }
    println!();
    let hostscope = added(Case::Hostscope);
    print_ratio(
        "hostscope added / floor added",
        ratio(hostscope, added(Case::Floor)),
        FLOOR_TARGET,
        true,
    );
    print_ratio(
        "hostscope added / syscount -L added",
        ratio(hostscope, added(Case::Syscount)),
        SYSCOUNT_TARGET,
        false,
    );
}

/// The ping-pong table: context-switch-heavy work under each tracer.
fn print_pingpong(args: &BenchArgs, samples: &Samples) {
    let stats = samples.each_ref().map(|s| Stats::of(s.iter().copied()));
    let none = stats[Case::None.index()].median;
    println!();
    println!(
        "Workload: `hostscope-workload pingpong {}` (two threads on one CPU, 2 context switches \
         and 4 syscalls per round trip), median of {} rounds",
        args.round_trips, args.rounds
    );
    println!();
    println!("| case | median ns/round trip | min | max | added vs none |");
    println!("|------|---------------------:|----:|----:|--------------:|");
    for case in Case::ALL {
        let s = stats[case.index()];
        let add = if case == Case::None {
            "-".to_owned()
        } else {
            format!("{:+.1}%", (s.median - none) / none * 100.0)
        };
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {add} |",
            case.name(),
            s.median,
            s.min,
            s.max
        );
    }
}

/// One ratio line with its target and PASS/MISS.
fn print_ratio(what: &str, value: Option<f64>, target: f64, inclusive: bool) {
    let op = if inclusive { "≤" } else { "<" };
    match value {
        Some(v) => {
            let pass = if inclusive { v <= target } else { v < target };
            let verdict = if pass { "PASS" } else { "MISS" };
            println!("- {what}: {v:.2} (target {op} {target:.1}): {verdict}");
        }
        None => println!(
            "- {what}: n/a, the baseline added no measurable cost (target {op} {target:.1}): MISS"
        ),
    }
}

/// Kernel release and CPU count, for the report.
pub(crate) fn machine_summary() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    format!("Linux {kernel}, {cpus} CPUs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_median_odd_and_even() {
        let s = Stats::of([3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Stats::of([4.0, 1.0, 2.0, 3.0]).median, 2.5);
    }

    #[test]
    fn ratio_needs_positive_base() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(3.0, -1.0), None);
    }
}
