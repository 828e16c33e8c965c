//! `cargo xtask bench` (tcp part): what the tcp signal costs loopback TCP.
//!
//! Two workloads of `hostscope-workload`, both ends in one process (two
//! threads) over 127.0.0.1: `tcp-bulk` (one connection, N bytes in 64 KiB
//! writes) and `tcp-rr` (round trips of 64 bytes each way, TCP_NODELAY, one
//! write and one read per message). Each reports wall time and its own CPU
//! time (both ends, including the loopback receive work, which runs in the
//! sender's context, and the kernel programs, which run in the caller's).
//!
//! Cases, interleaved round by round (the order rotates each round): no
//! agent; no agent again (an A/A control: the spread between two identical
//! cases is the noise floor of the run); `hostscope run` with the tcp signal
//! only (every other signal switched off with its `--no-*` flag: the case the
//! 1% target is about); and `hostscope run` as users run it, all signals on.
//! The agent starts before and stops after each measurement, exporting to
//! stdout (discarded) every 10 s, so no export falls inside a measurement.
//!
//! Reported: medians per case and the ratio to no agent, taken round by round
//! (each round's case against the same round's no-agent run) so drift of
//! the machine's speed cancels. A last pass runs both workloads three more
//! times under the tcp signal and under the floor (an empty program on the
//! per-send hook, `hostscope bench-floor --hooks tcp`) with the kernel's BPF
//! run-time statistics on, and reads each program's run count and time from
//! the tracer's descriptors (`/proc/<pid>/fdinfo`): the programs' own share
//! of the workload's CPU, free of the run-to-run noise.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench::{Stats, Tracer, machine_summary},
    util,
};

/// Bytes per `tcp-bulk` write (the workload's default).
const WRITE_SIZE: u64 = 64 * 1024;
/// Bytes per `tcp-rr` message, each way.
const MESSAGE_SIZE: u64 = 64;
/// Export interval of the agent: longer than any measurement.
const INTERVAL_S: &str = "10";
/// Pause after the agent reports ready (and before a no-agent measurement),
/// so start-up work does not overlap the measurement.
const SETTLE: Duration = Duration::from_millis(2000);
/// How long the default agent may take from its tcp signal to its syscalls
/// signal being attached.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// The difference from no agent the tcp signal must stay under.
const TARGET: f64 = 0.01;
/// The machine counts as quiet when everything else uses less CPU than this
/// (in cores) over [`QUIET_WINDOW`] and no other tracing program is loaded.
const QUIET_CORES: f64 = 0.15;
const QUIET_WINDOW: Duration = Duration::from_millis(300);
/// A measurement during which everything else used more CPU than this (in
/// cores), or another tracing program appeared, is repeated.
const DISTURBED_CORES: f64 = 0.25;
/// Attempts per measurement; the last one is kept (and counted as disturbed).
const ATTEMPTS: u32 = 3;
/// Longest wait for a quiet machine before one measurement, and in all.
const QUIET_WAIT: Duration = Duration::from_secs(60);
const QUIET_BUDGET: Duration = Duration::from_secs(600);
/// bpftool's names of program types that trace (and so could add to the
/// workloads' cost).
const TRACING_TYPES: [&str; 6] = [
    "tracing",
    "raw_tracepoint",
    "raw_tracepoint_writable",
    "tracepoint",
    "kprobe",
    "perf_event",
];

/// Options of the tcp part.
pub struct TcpOptions {
    pub rounds: u32,
    pub bytes: u64,
    pub round_trips: u64,
}

/// What runs beside the workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    None,
    NoneAgain,
    Tcp,
    All,
}

impl Case {
    const ALL: [Case; 4] = [Case::None, Case::NoneAgain, Case::Tcp, Case::All];

    fn name(self) -> &'static str {
        match self {
            Case::None => "no agent",
            Case::NoneAgain => "no agent again (A/A control)",
            Case::Tcp => "hostscope, tcp signal only",
            Case::All => "hostscope, all signals (default)",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One run of a workload.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    /// Units done per second of wall time (GiB or round trips).
    rate: f64,
    /// CPU seconds of the workload process per unit.
    cpu_per_unit: f64,
    /// CPU used by everything else on the machine during the run, in cores
    /// (from /proc/stat; includes the agent's user-space side).
    background: f64,
}

/// Samples of one workload, indexed by [`Case::index`], one per round.
type Samples = [Vec<Sample>; 4];

/// A workload and how its figures read.
struct Workload {
    title: &'static str,
    args: Vec<String>,
    /// Units per run (GiB or round trips).
    units: f64,
    /// What one unit is ("GiB", "round trip").
    unit: &'static str,
    rate_unit: &'static str,
    /// CPU per unit is printed in this unit, scaled from seconds.
    cpu_unit: &'static str,
    cpu_scale: f64,
}

impl Workload {
    fn bulk(bytes: u64) -> Self {
        Workload {
            title: "bulk",
            args: vec![
                "tcp-bulk".into(),
                "--bytes".into(),
                bytes.to_string(),
                "--write-size".into(),
                WRITE_SIZE.to_string(),
            ],
            units: bytes as f64 / (1u64 << 30) as f64,
            unit: "GiB",
            rate_unit: "GiB/s",
            cpu_unit: "CPU ms/GiB",
            cpu_scale: 1e3,
        }
    }

    fn rr(round_trips: u64) -> Self {
        Workload {
            title: "request/response",
            args: vec![
                "tcp-rr".into(),
                "--count".into(),
                round_trips.to_string(),
                "--size".into(),
                MESSAGE_SIZE.to_string(),
            ],
            units: round_trips as f64,
            unit: "round trip",
            rate_unit: "round trips/s",
            cpu_unit: "CPU µs/round trip",
            cpu_scale: 1e6,
        }
    }

    fn command_line(&self) -> String {
        format!("hostscope-workload {}", self.args.join(" "))
    }

    /// Runs the workload once.
    fn run(&self, workload: &Path) -> Result<(Sample, u64)> {
        let busy = Busy::start()?;
        let out = util::output(Command::new(workload).args(&self.args))?;
        let (busy_s, wall_s) = busy.end()?;
        let v: serde_json::Value = out
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .with_context(|| format!("{} printed {out:?}, not a JSON line", self.command_line()))?;
        let field = |name: &str| {
            v[name]
                .as_u64()
                .with_context(|| format!("{} printed no {name:?}: {out:?}", self.command_line()))
        };
        let (elapsed_ns, cpu_ns) = (field("elapsed_ns")?, field("cpu_ns")?);
        let (elapsed, cpu) = (elapsed_ns as f64 / 1e9, cpu_ns as f64 / 1e9);
        Ok((
            Sample {
                rate: self.units / elapsed,
                cpu_per_unit: cpu / self.units,
                background: ((busy_s - cpu) / wall_s).max(0.0),
            },
            cpu_ns,
        ))
    }
}

/// Runs the tcp part and prints its tables.
pub fn run(hostscope: &Path, workload: &Path, opts: &TcpOptions) -> Result<()> {
    let started = Instant::now();
    let off_flags = other_signals_off(hostscope)?;
    let workloads = [Workload::bulk(opts.bytes), Workload::rr(opts.round_trips)];
    let mut samples: [Samples; 2] = Default::default();
    let mut gate = Gate::default();
    for round in 0..opts.rounds {
        let mut order = Case::ALL;
        order.rotate_left(round as usize % Case::ALL.len());
        for case in order {
            let agent = start_agent(hostscope, case, &off_flags)
                .with_context(|| format!("round {}: starting `{}`", round + 1, case.name()))?;
            std::thread::sleep(SETTLE);
            let mut line = format!(
                "bench tcp: round {}/{}: {:<34}",
                round + 1,
                opts.rounds,
                case.name()
            );
            for (w, s) in workloads.iter().zip(&mut samples) {
                let (sample, _) = gate
                    .measure(w, workload, agent.as_ref())
                    .with_context(|| format!("round {}: case `{}`", round + 1, case.name()))?;
                let _ = write!(
                    line,
                    " {:>9.2} {} {:>7.2} {}",
                    sample.rate,
                    w.rate_unit,
                    sample.cpu_per_unit * w.cpu_scale,
                    w.cpu_unit
                );
                s[case.index()].push(sample);
            }
            if let Some(agent) = agent {
                agent.stop()?;
            }
            eprintln!("{line}");
        }
    }
    let (costs, floor) = program_costs(hostscope, workload, &workloads, &off_flags, &mut gate)
        .context("kernel program run-time pass")?;
    eprintln!(
        "bench tcp: {} rounds and the run-time pass in {:.0} s",
        opts.rounds,
        started.elapsed().as_secs_f64()
    );
    print_report(
        opts,
        &workloads,
        &samples,
        (&costs, &floor),
        &off_flags,
        &gate,
    );
    Ok(())
}

/// Keeps measurements off a busy machine: waits for quiet before each one
/// and repeats one that something else disturbed.
#[derive(Debug, Default)]
struct Gate {
    waited: Duration,
    repeated: u32,
    disturbed: u32,
}

impl Gate {
    /// Runs `w` once the machine is quiet; again (up to [`ATTEMPTS`] in all)
    /// if something else ran meanwhile.
    fn measure(
        &mut self,
        w: &Workload,
        workload: &Path,
        agent: Option<&Tracer>,
    ) -> Result<(Sample, u64)> {
        let own = match agent {
            Some(a) => agent_programs(a.pid())?.1.into_keys().collect(),
            None => Vec::new(),
        };
        for attempt in 1..=ATTEMPTS {
            self.wait_quiet(&own)?;
            let (sample, cpu_ns) = w.run(workload)?;
            let foreign = foreign_tracing_programs(&own)?;
            let busy = sample.background > DISTURBED_CORES;
            if !busy && foreign == 0 {
                return Ok((sample, cpu_ns));
            }
            eprintln!(
                "bench tcp: {} disturbed (everything else: {:.0}% of a core, {foreign} other \
                 tracing programs loaded){}",
                w.title,
                sample.background * 100.0,
                if attempt < ATTEMPTS {
                    "; again"
                } else {
                    "; kept"
                }
            );
            if attempt == ATTEMPTS {
                self.disturbed += 1;
                return Ok((sample, cpu_ns));
            }
            self.repeated += 1;
        }
        unreachable!("the last attempt returns")
    }

    /// Waits until the rest of the machine is idle and no tracing program
    /// but the agent's (`own`) is loaded, within [`QUIET_WAIT`] and what is
    /// left of [`QUIET_BUDGET`].
    fn wait_quiet(&mut self, own: &[u32]) -> Result<()> {
        let start = Instant::now();
        let limit = QUIET_WAIT.min(QUIET_BUDGET.saturating_sub(self.waited));
        let mut said = false;
        loop {
            let foreign = foreign_tracing_programs(own)?;
            let busy = Busy::start()?;
            std::thread::sleep(QUIET_WINDOW);
            let (busy_s, wall_s) = busy.end()?;
            let cores = busy_s / wall_s;
            if foreign == 0 && cores < QUIET_CORES {
                break;
            }
            if start.elapsed() >= limit {
                eprintln!(
                    "bench tcp: the machine did not get quiet (everything else: {:.0}% of a \
                     core, {foreign} other tracing programs); measuring anyway",
                    cores * 100.0
                );
                break;
            }
            if !said {
                eprintln!(
                    "bench tcp: waiting for a quiet machine (everything else: {:.0}% of a core, \
                     {foreign} other tracing programs)",
                    cores * 100.0
                );
                said = true;
            }
        }
        self.waited += start.elapsed();
        Ok(())
    }
}

/// Loaded tracing programs (by `bpftool prog show`) other than `own`.
fn foreign_tracing_programs(own: &[u32]) -> Result<usize> {
    let out = util::output(Command::new("bpftool").args(["-j", "prog", "show"]))
        .context("listing BPF programs (cargo xtask setup installs bpftool)")?;
    let progs: serde_json::Value =
        serde_json::from_str(&out).context("bpftool -j prog show printed no JSON")?;
    Ok(progs
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|p| TRACING_TYPES.contains(&p["type"].as_str().unwrap_or("")))
                .filter(|p| {
                    p["id"]
                        .as_u64()
                        .is_none_or(|id| !own.iter().any(|&o| u64::from(o) == id))
                })
                .count()
        })
        .unwrap_or(0))
}

/// The `--no-*` flags of `hostscope run` that switch off a signal other than
/// tcp ("Do not attach ..." in its help), so the tcp case measures tcp alone
/// whatever other signals the agent has.
fn other_signals_off(hostscope: &Path) -> Result<Vec<String>> {
    let help = util::output(Command::new(hostscope).args(["run", "--help"]))?;
    let lines: Vec<&str> = help.lines().map(str::trim).collect();
    let flags: Vec<String> = lines
        .windows(2)
        .filter(|w| {
            w[0].starts_with("--no-")
                && !w[0].contains(' ')
                && w[0] != "--no-tcp"
                && w[1].starts_with("Do not ")
        })
        .map(|w| w[0].to_owned())
        .collect();
    if !flags.iter().any(|f| f == "--no-syscalls") {
        bail!("`hostscope run --help` lists no --no-syscalls; cannot measure the tcp signal alone");
    }
    Ok(flags)
}

/// Starts the case's agent (none for the no-agent cases) and waits until
/// its programs are attached.
fn start_agent(hostscope: &Path, case: Case, off_flags: &[String]) -> Result<Option<Tracer>> {
    let mut cmd = Command::new(hostscope);
    cmd.args(["run", "--exporter", "stdout", "--interval", INTERVAL_S])
        .stdout(Stdio::null());
    match case {
        Case::None | Case::NoneAgain => return Ok(None),
        Case::Tcp => {
            cmd.args(off_flags);
        }
        Case::All => {}
    }
    let mut agent = Tracer::start(
        "hostscope run",
        &mut cmd,
        "tcp signal attached",
        libc::SIGTERM,
    )?;
    if case == Case::All {
        // The syscalls signal attaches after the tcp signal.
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        'wait: loop {
            for l in agent.take_lines() {
                if l.contains("syscalls signal attached") {
                    break 'wait;
                }
                if l.contains("not attached") {
                    bail!("the default agent failed to attach a signal: {l}");
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the default agent did not attach its syscalls signal within {} s",
                    ATTACH_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(Some(agent))
}

/// Busy CPU time of the whole machine over an interval: all CPUs' time
/// less their idle and iowait time. /proc/stat keeps idle time exactly on
/// tickless kernels, while its busy fields are tick samples, which miss
/// most of a workload that runs in bursts shorter than a tick.
struct Busy {
    idle_s: f64,
    at: Instant,
}

impl Busy {
    fn start() -> Result<Self> {
        Ok(Busy {
            idle_s: machine_idle_s()?.0,
            at: Instant::now(),
        })
    }

    /// (busy CPU seconds, wall seconds) since `start`.
    fn end(self) -> Result<(f64, f64)> {
        let (idle_s, cpus) = machine_idle_s()?;
        let wall_s = self.at.elapsed().as_secs_f64();
        Ok((
            (wall_s * cpus as f64 - (idle_s - self.idle_s)).max(0.0),
            wall_s,
        ))
    }
}

/// Idle and iowait time of all CPUs so far (seconds, from the first line of
/// /proc/stat) and the number of CPUs.
fn machine_idle_s() -> Result<(f64, usize)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let mut lines = stat.lines();
    let f: Vec<u64> = lines
        .next()
        .context("empty /proc/stat")?
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    if f.len() < 5 {
        bail!("/proc/stat: short cpu line");
    }
    let cpus = lines.take_while(|l| l.starts_with("cpu")).count().max(1);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(((f[3] + f[4]) as f64 / hz, cpus))
}

/// Run count and time of one kernel program over one workload run.
#[derive(Clone, Debug, Default)]
struct ProgramCost {
    runs: u64,
    run_time_ns: u64,
}

/// Per workload: tracepoint → its program's runs and time, and the
/// workload's CPU ns over the same runs.
type Costs = Vec<(BTreeMap<String, ProgramCost>, u64)>;

/// Rounds of the run-time pass; each runs both workloads under the tcp
/// signal and under the floor, in alternating order.
const COST_ROUNDS: usize = 3;

/// More runs of each workload with the kernel's BPF run-time statistics on
/// (`BPF_ENABLE_STATS`, held only for this pass), under the tcp signal and
/// under the floor (an empty program on the per-send hook, `hostscope
/// bench-floor --hooks tcp`): runs and time summed over [`COST_ROUNDS`].
/// Returns (tcp signal, floor).
fn program_costs(
    hostscope: &Path,
    workload: &Path,
    workloads: &[Workload],
    off_flags: &[String],
    gate: &mut Gate,
) -> Result<(Costs, Costs)> {
    let _stats = enable_bpf_stats()?;
    let empty = || -> Costs { workloads.iter().map(|_| Default::default()).collect() };
    let mut totals = [empty(), empty()];
    for round in 0..COST_ROUNDS {
        for k in 0..2 {
            let which = (k + round) % 2;
            let tracer = if which == 0 {
                start_agent(hostscope, Case::Tcp, off_flags)?.context("tcp case has an agent")?
            } else {
                Tracer::start(
                    "hostscope bench-floor --hooks tcp",
                    Command::new(hostscope)
                        .args(["bench-floor", "--hooks", "tcp", "--duration", "3600"])
                        .stdout(Stdio::null()),
                    "empty tcp_sendmsg_locked programs attached",
                    libc::SIGTERM,
                )?
            };
            std::thread::sleep(SETTLE);
            for (w, total) in workloads.iter().zip(&mut totals[which]) {
                let before = program_stats(tracer.pid())?;
                let (_, cpu_ns) = gate.measure(w, workload, Some(&tracer))?;
                let after = program_stats(tracer.pid())?;
                for (tp, a) in after {
                    let b = before.get(&tp).cloned().unwrap_or_default();
                    let t = total.0.entry(tp).or_default();
                    t.runs += a.runs.saturating_sub(b.runs);
                    t.run_time_ns += a.run_time_ns.saturating_sub(b.run_time_ns);
                }
                total.1 += cpu_ns;
            }
            tracer.stop()?;
        }
    }
    let [tcp, floor] = totals;
    Ok((tcp, floor))
}

/// Turns on the kernel's BPF run-time statistics until the returned
/// descriptor is closed (also when this process dies).
fn enable_bpf_stats() -> Result<OwnedFd> {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    const BPF_STATS_RUN_TIME: u32 = 0;
    let attr: [u32; 2] = [BPF_STATS_RUN_TIME, 0];
    // SAFETY: attr is a valid, initialised bpf_attr prefix of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("bpf(BPF_ENABLE_STATS)");
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The agent's BPF descriptors, from their fdinfo: its links as (program
/// id, tracepoint), and its programs by id with their cumulative run count
/// and time.
type AgentPrograms = (Vec<(u32, String)>, BTreeMap<u32, ProgramCost>);

fn agent_programs(pid: u32) -> Result<AgentPrograms> {
    let mut links = Vec::new();
    let mut progs = BTreeMap::new();
    let dir = format!("/proc/{pid}/fd");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        let is_link = target == "anon_inode:bpf_link";
        if !is_link && target != "anon_inode:bpf-prog" {
            continue;
        }
        let info_path = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(info) = std::fs::read_to_string(&info_path) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        };
        let Some(id) = field("prog_id").and_then(|v| v.parse::<u32>().ok()) else {
            continue;
        };
        if is_link {
            let tp = field("tp_name").unwrap_or_else(|| format!("program {id}"));
            links.push((id, tp));
        } else {
            let num = |name: &str| field(name).and_then(|v| v.parse().ok()).unwrap_or(0);
            progs.insert(
                id,
                ProgramCost {
                    runs: num("run_cnt"),
                    run_time_ns: num("run_time_ns"),
                },
            );
        }
    }
    Ok((links, progs))
}

/// The agent's attached programs, by tracepoint, with their cumulative run
/// count and time.
fn program_stats(pid: u32) -> Result<BTreeMap<String, ProgramCost>> {
    let (links, progs) = agent_programs(pid)?;
    if links.is_empty() {
        bail!("no bpf_link descriptors in /proc/{pid}/fd: is the agent attached?");
    }
    Ok(links
        .into_iter()
        .map(|(id, tp)| (tp, progs.get(&id).cloned().unwrap_or_default()))
        .collect())
}

/// Round-by-round ratios of `case` to the first no-agent case.
fn paired(samples: &Samples, case: Case, f: impl Fn(&Sample) -> f64) -> Stats {
    Stats::of(
        samples[case.index()]
            .iter()
            .zip(&samples[Case::None.index()])
            .map(|(c, n)| f(c) / f(n)),
    )
}

/// `+1.2%` from a ratio.
fn pct(ratio: f64) -> String {
    format!("{:+.1}%", (ratio - 1.0) * 100.0)
}

/// A paired ratio as "median% (min% to max%)".
fn pct_spread(s: Stats) -> String {
    format!("{} ({} to {})", pct(s.median), pct(s.min), pct(s.max))
}

/// Prints the markdown report to stdout.
fn print_report(
    opts: &TcpOptions,
    workloads: &[Workload],
    samples: &[Samples; 2],
    (costs, floor): (&Costs, &Costs),
    off_flags: &[String],
    gate: &Gate,
) {
    println!();
    println!(
        "TCP: `cargo xtask bench --only-tcp` (--tcp-rounds {} --tcp-bytes {} --tcp-round-trips {}); {}",
        opts.rounds,
        opts.bytes,
        opts.round_trips,
        machine_summary()
    );
    println!(
        "Cases interleaved, order rotating each round; agent `hostscope run --exporter stdout --interval {INTERVAL_S}` \
         (tcp only: `{}`), started before and stopped after each measurement.",
        off_flags.join(" ")
    );
    println!(
        "Each measurement waited for a quiet machine (everything else under {:.0}% of a core, no \
         other tracing program loaded): {:.0} s of waiting; {} measurements repeated because \
         something else ran meanwhile, {} kept disturbed after {ATTEMPTS} attempts.",
        QUIET_CORES * 100.0,
        gate.waited.as_secs_f64(),
        gate.repeated,
        gate.disturbed
    );
    let mut verdicts = Vec::new();
    for (w, s) in workloads.iter().zip(samples) {
        println!();
        println!(
            "{}: `{}`, median of {} rounds; \"vs no agent\" is the median (min to max) of the \
             round-by-round ratios",
            w.title,
            w.command_line(),
            opts.rounds
        );
        println!();
        println!(
            "| case | {r} | min | max | {c} | min | max | {r} vs no agent | {c} vs no agent | other CPU load |",
            r = w.rate_unit,
            c = w.cpu_unit
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for case in Case::ALL {
            let xs = &s[case.index()];
            let rate = Stats::of(xs.iter().map(|x| x.rate));
            let cpu = Stats::of(xs.iter().map(|x| x.cpu_per_unit * w.cpu_scale));
            let bg = Stats::of(xs.iter().map(|x| x.background));
            let (vr, vc) = if case == Case::None {
                ("-".to_owned(), "-".to_owned())
            } else {
                (
                    pct_spread(paired(s, case, |x| x.rate)),
                    pct_spread(paired(s, case, |x| x.cpu_per_unit)),
                )
            };
            let prec = if rate.median < 100.0 { 3 } else { 0 };
            println!(
                "| {} | {:.prec$} | {:.prec$} | {:.prec$} | {:.2} | {:.2} | {:.2} | {vr} | {vc} | {:.0}% of a core (max {:.0}%) |",
                case.name(),
                rate.median,
                rate.min,
                rate.max,
                cpu.median,
                cpu.min,
                cpu.max,
                bg.median * 100.0,
                bg.max * 100.0,
            );
        }
        let tcp_rate = paired(s, Case::Tcp, |x| x.rate).median;
        let tcp_cpu = paired(s, Case::Tcp, |x| x.cpu_per_unit).median;
        let aa_rate = paired(s, Case::NoneAgain, |x| x.rate);
        let aa_cpu = paired(s, Case::NoneAgain, |x| x.cpu_per_unit);
        verdicts.push(format!(
            "- {}, tcp signal vs no agent: {} {}, {} {} (target: under {:.0}% worse; {})",
            w.title,
            w.rate_unit,
            pct(tcp_rate),
            w.cpu_unit,
            pct(tcp_cpu),
            TARGET * 100.0,
            if tcp_rate > 1.0 - TARGET && tcp_cpu < 1.0 + TARGET {
                "met"
            } else {
                "MISSED"
            }
        ));
        verdicts.push(format!(
            "  - noise: the A/A control differed by {} and {} (round-by-round spread {} to {}, {} to {})",
            pct(aa_rate.median),
            pct(aa_cpu.median),
            pct(aa_rate.min),
            pct(aa_rate.max),
            pct(aa_cpu.min),
            pct(aa_cpu.max)
        ));
    }
    println!();
    for v in verdicts {
        println!("{v}");
    }
    println!();
    println!(
        "The tcp signal's kernel programs, measured directly ({COST_ROUNDS} more runs of each \
         workload, BPF run-time statistics on, summed): runs and time of each attached program, \
         and their share of the workload's CPU time; the floor is an empty program on the \
         per-send hook (`hostscope bench-floor --hooks tcp`), measured the same way in \
         alternating runs"
    );
    println!();
    println!(
        "| programs | tracepoint | workload | runs | runs per unit | ns per run | share of workload CPU |"
    );
    println!("|---|---|---|---:|---:|---:|---:|");
    let mut shares = Vec::new();
    for (label, costs) in [("tcp signal", costs), ("floor (empty)", floor)] {
        for (w, (per_tp, cpu_ns)) in workloads.iter().zip(costs) {
            for (tp, c) in per_tp {
                if c.runs == 0 {
                    continue;
                }
                println!(
                    "| {label} | {tp} | {} | {} | {:.2} per {} | {:.0} | {:.3}% |",
                    w.title,
                    c.runs,
                    c.runs as f64 / (w.units * COST_ROUNDS as f64),
                    w.unit,
                    c.run_time_ns as f64 / c.runs as f64,
                    c.run_time_ns as f64 / *cpu_ns as f64 * 100.0
                );
            }
            let total: u64 = per_tp.values().map(|c| c.run_time_ns).sum();
            let share = total as f64 / *cpu_ns as f64;
            println!(
                "| {label} | all | {} | | | | {:.3}% |",
                w.title,
                share * 100.0
            );
            shares.push((label, w.title, share));
        }
    }
    println!();
    for (label, title, share) in &shares {
        if *label == "tcp signal" {
            println!(
                "- {title}: the tcp signal's programs took {:.2}% of the workload's CPU time \
                 (target: under {:.0}%): {}",
                share * 100.0,
                TARGET * 100.0,
                if *share < TARGET { "met" } else { "MISSED" }
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pct_signs() {
        assert_eq!(pct(1.0123), "+1.2%");
        assert_eq!(pct(0.99), "-1.0%");
    }
}
