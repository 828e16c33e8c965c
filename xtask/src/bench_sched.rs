//! `cargo xtask bench` (scheduler part): what hostscope's scheduler hooks add
//! to context-switch-heavy work, against libbpf-tools `runqlat`.
//!
//! `hostscope-workload pingpong N` bounces one byte N times between two
//! threads pinned to one CPU over two pipes (two context switches, two
//! wake-ups and four blocking syscalls per round trip) and prints the mean ns
//! per round trip. It runs with nothing attached, with an empty program on
//! the hook hostscope uses (`hostscope bench-floor --hooks sched`,
//! `sched_switch`: the floor, what any program there costs on this kernel),
//! with `hostscope run` and only its sched signal (`sched_switch` reading the
//! kernel's own per-task wait accounting), with `runqlat` (the reference
//! peer: `sched_wakeup`, `sched_wakeup_new` and `sched_switch`, one
//! histogram), and with `hostscope run` and every signal (for scale). Each
//! round runs every case once, rotating the order so drift in the machine's
//! speed spreads over all cases; each case starts its tracer, waits until it
//! says it is attached, runs one measurement and stops it. The report gives
//! the median per case of the ns per round trip the workload prints, and the
//! target ratios; misses are reported, never turned into a failing exit code.
//! It also gives the workload's CPU time (rusage from `wait4`) as a share of
//! its wall time: below 100%, other processes took turns on its CPU and the
//! figures are noisier.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::bench::{Stats, Tracer, machine_summary};

/// Rounds; each runs every case once.
const ROUNDS: usize = 7;
/// Round trips per measurement (1.4-2.5 s with nothing attached on the 2-core
/// VM, up to 4 s under a tracer).
const ROUND_TRIPS: u64 = 300_000;
/// Round trips of the unmeasured warm-up run.
const WARMUP_ROUND_TRIPS: u64 = 50_000;
/// How long one measurement may take before it is killed.
const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// hostscope (sched only) may add less than this fraction to a round trip.
const ADDED_TARGET: f64 = 0.10;

/// What is attached while the ping-pong runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    None,
    Floor,
    HostscopeSched,
    Runqlat,
    HostscopeAll,
}

impl Case {
    const ALL: [Case; 5] = [
        Case::None,
        Case::Floor,
        Case::HostscopeSched,
        Case::Runqlat,
        Case::HostscopeAll,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::None => "none",
            Case::Floor => "floor (empty program)",
            Case::HostscopeSched => "hostscope (sched only)",
            Case::Runqlat => "runqlat",
            Case::HostscopeAll => "hostscope (all signals)",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Starts this case's tracer and waits until it is attached.
    fn start(self, hostscope: &Path, runqlat: &Path) -> Result<Option<Tracer>> {
        let tracer = match self {
            Case::None => return Ok(None),
            // An empty BTF-tracepoint program on the hook hostscope uses: what any
            // program there costs on this kernel, before it does anything.
            Case::Floor => Tracer::start(
                "hostscope bench-floor --hooks sched",
                Command::new(hostscope)
                    .args(["bench-floor", "--hooks", "sched", "--duration", "3600"])
                    .stdout(Stdio::null()),
                "empty sched_switch programs attached",
                libc::SIGTERM,
            )?,
            Case::HostscopeSched => Tracer::start(
                "hostscope run (sched only)",
                Command::new(hostscope)
                    .args([
                        "run",
                        "--exporter",
                        "stdout",
                        "--no-syscalls",
                        "--no-tcp",
                        "--no-oom",
                    ])
                    .arg("--no-cgroups")
                    .args(["--interval", "10"])
                    .stdout(Stdio::null()),
                "sched signal attached",
                libc::SIGTERM,
            )?,
            // The syscalls signal attaches last.
            Case::HostscopeAll => Tracer::start(
                "hostscope run (all signals)",
                Command::new(hostscope)
                    .args(["run", "--exporter", "stdout", "--interval", "10"])
                    .stdout(Stdio::null()),
                "syscalls signal attached",
                libc::SIGTERM,
            )?,
            // runqlat prints its ready line on stdout after attaching, block-
            // buffered into a pipe unless stdbuf makes it line-buffered. It
            // prints its histogram and exits 0 on SIGINT.
            Case::Runqlat => Tracer::start(
                "runqlat",
                Command::new("stdbuf")
                    .arg("-oL")
                    .arg(runqlat)
                    .stdout(Stdio::piped()),
                "Hit Ctrl-C to end",
                libc::SIGINT,
            )?,
        };
        Ok(Some(tracer))
    }
}

/// Samples (ns per round trip) per case, indexed by [`Case::index`], in round
/// order.
type Samples = [Vec<f64>; 5];

/// One ping-pong measurement.
#[derive(Clone, Copy, Debug)]
struct Measurement {
    /// Wall-clock ns per round trip, as the workload printed it.
    wall: f64,
    /// The workload's CPU time (both threads, user + system) per round trip:
    /// about the wall time less the time other processes held its CPU.
    cpu: f64,
}

/// Measures and prints the scheduler part's report (markdown, stdout).
pub fn run(hostscope: &Path, workload: &Path) -> Result<()> {
    let runqlat = find_runqlat()?;
    let load_before = loadavg();
    let started = Instant::now();
    // One unmeasured run so the first measured case does not pay for cold
    // caches or a CPU waking up.
    pingpong(workload, WARMUP_ROUND_TRIPS).context("warm-up ping-pong")?;
    let mut wall: Samples = Default::default();
    // The workload's CPU time over its wall time, per measurement.
    let mut cpu_share = Vec::new();
    for round in 0..ROUNDS {
        let mut order = Case::ALL;
        order.rotate_left(round % Case::ALL.len());
        for case in order {
            let m = measure(hostscope, &runqlat, workload, case)
                .with_context(|| format!("sched round {}: case `{}`", round + 1, case.name()))?;
            eprintln!(
                "bench sched: round {}/{ROUNDS}: {:<24} {:>8.0} ns/round trip wall {:>8.0} cpu",
                round + 1,
                case.name(),
                m.wall,
                m.cpu
            );
            wall[case.index()].push(m.wall);
            cpu_share.push(m.cpu / m.wall);
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "bench sched: {ROUNDS} rounds in {:.0} s",
        elapsed.as_secs_f64()
    );
    println!();
    println!("Command: `cargo xtask bench --only-sched`");
    println!("Machine: {}", machine_summary());
    println!(
        "Workload: `hostscope-workload pingpong {ROUND_TRIPS}` (two threads on one CPU, 2 context \
         switches, 2 wake-ups and 4 syscalls per round trip), median of {ROUNDS} rounds, cases \
         interleaved; {:.0} s; load average {load_before} before, {} after",
        elapsed.as_secs_f64(),
        loadavg()
    );
    print_table(&wall);
    println!();
    print_verdicts(&wall);
    let share = stats(&cpu_share);
    println!(
        "- the workload's CPU time was {:.1}-{:.1}% (median {:.1}%) of its wall time over all \
         measurements (100%: no other process ran on its CPU while it ran)",
        share.min * 100.0,
        share.max * 100.0,
        share.median * 100.0
    );
    program_cost(hostscope, &runqlat, workload)?;
    Ok(())
}

/// Rounds of the program-cost phase (each tool alone, interleaved).
const COST_ROUNDS: usize = 5;

/// The kernel's own per-program statistics (`kernel.bpf_stats_enabled`):
/// ns per run of each tool's `sched_switch` and `sched_wakeup` programs
/// (hostscope's BTF design and the floor have no `sched_wakeup` program:
/// 0),
/// each tool attached alone (two programs on one tracepoint slow each other
/// through the cache), interleaved, median of rounds. Wall-clock ratios on a
/// shared VM swing by 20-30%; the programs' own time is the cost the design
/// controls.
fn program_cost(hostscope: &Path, runqlat: &Path, workload: &Path) -> Result<()> {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(STATS).unwrap_or_else(|_| "0".into());
    let tools = [
        (
            Case::Floor,
            ["sched_switch_empty", "sched_switch_empty"],
            ["sched_wakeup_empty", "sched_wakeup_empty"],
        ),
        (
            Case::HostscopeSched,
            ["sched_switch_btf", "sched_switch_raw"],
            ["sched_wakeup_btf", "sched_wakeup_raw"],
        ),
        (
            Case::Runqlat,
            ["sched_switch", "sched_switch"],
            ["sched_wakeup", "sched_wakeup"],
        ),
    ];
    let mut per_tool: [(Vec<f64>, Vec<f64>); 3] = Default::default();
    for round in 0..COST_ROUNDS {
        for k in 0..tools.len() {
            let t = (k + round) % tools.len();
            let (case, switch, wakeup) = &tools[t];
            let tracer = case.start(hostscope, runqlat)?;
            std::fs::write(STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
            let m = pingpong(workload, ROUND_TRIPS / 3);
            let shown = Command::new("bpftool")
                .args(["-j", "prog", "show"])
                .output();
            let _ = std::fs::write(STATS, "0");
            if let Some(tracer) = tracer {
                tracer.stop()?;
            }
            m?;
            let shown = shown.context("bpftool prog show")?;
            let progs: serde_json::Value =
                serde_json::from_slice(&shown.stdout).context("parsing `bpftool -j prog show`")?;
            let cost = |names: &[&str; 2]| -> Option<f64> {
                progs.as_array()?.iter().find_map(|p| {
                    let name = p["name"].as_str()?;
                    names.contains(&name).then(|| {
                        let t = p["run_time_ns"].as_u64().unwrap_or(0);
                        let n = p["run_cnt"].as_u64().unwrap_or(0).max(1);
                        t as f64 / n as f64
                    })
                })
            };
            let wk = match cost(wakeup) {
                Some(wk) => Some(wk),
                None if *case != Case::Runqlat => Some(0.0),
                None => None,
            };
            let (Some(sw), Some(wk)) = (cost(switch), wk) else {
                anyhow::bail!(
                    "{}: its sched_switch/sched_wakeup programs not found in bpftool's list",
                    case.name()
                );
            };
            eprintln!(
                "bench sched: cost round {}/{COST_ROUNDS}: {:<24} switch {sw:.0} ns/run, wakeup {wk:.0} ns/run",
                round + 1,
                case.name()
            );
            per_tool[t].0.push(sw);
            per_tool[t].1.push(wk);
        }
    }
    let _ = std::fs::write(STATS, before.trim());
    println!();
    println!(
        "Program cost: each tool alone on `pingpong {}`, kernel run_time_ns / run_cnt with \
         kernel.bpf_stats_enabled=1, median of {COST_ROUNDS} interleaved rounds:",
        ROUND_TRIPS / 3
    );
    println!();
    println!(
        "| tool | sched_switch ns/run | sched_wakeup ns/run | ns per round trip (2 switches, 2 wake-ups) |"
    );
    println!("|------|---:|---:|---:|");
    let mut per_trip = [0.0; 3];
    for (t, (case, _, _)) in tools.iter().enumerate() {
        let (sw, wk) = (stats(&per_tool[t].0).median, stats(&per_tool[t].1).median);
        per_trip[t] = 2.0 * sw + 2.0 * wk;
        println!(
            "| {} | {sw:.0} | {wk:.0} | {:.0} |",
            case.name(),
            per_trip[t]
        );
    }
    println!();
    let [floor, hostscope, runqlat] = per_trip;
    println!(
        "- hostscope's programs / runqlat's, per round trip: {:.2} (target: hostscope adds less \
         than runqlat): {}",
        hostscope / runqlat,
        verdict(hostscope < runqlat)
    );
    println!(
        "- empty programs on the same hooks: {floor:.0} ns per round trip, {:.0}% of hostscope's \
         ({:.0} ns above the floor) and {:.0}% of runqlat's",
        floor / hostscope * 100.0,
        hostscope - floor,
        floor / runqlat * 100.0
    );
    Ok(())
}

/// One measurement under `case`'s tracer.
fn measure(hostscope: &Path, runqlat: &Path, workload: &Path, case: Case) -> Result<Measurement> {
    let tracer = case.start(hostscope, runqlat)?;
    let m = pingpong(workload, ROUND_TRIPS);
    if let Some(tracer) = tracer {
        tracer.stop()?;
    }
    m
}

/// `runqlat` from PATH, else `/usr/sbin/runqlat` (not on a user's PATH).
fn find_runqlat() -> Result<PathBuf> {
    let on_path = Command::new("sh")
        .args(["-c", "command -v runqlat"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match on_path {
        Some(p) if !p.as_os_str().is_empty() => Ok(p),
        _ if Path::new("/usr/sbin/runqlat").exists() => Ok(PathBuf::from("/usr/sbin/runqlat")),
        _ => bail!("runqlat not found (apt-get install libbpf-tools; cargo xtask setup does)"),
    }
}

/// Runs `pingpong n`; its printed mean ns per round trip, and its CPU time
/// (both threads, from `wait4`'s rusage) per round trip.
fn pingpong(workload: &Path, n: u64) -> Result<Measurement> {
    let mut child = Command::new(workload)
        .args(["pingpong", &n.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", workload.display()))?;
    let pid = child.id() as libc::pid_t;
    let mut out = String::new();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let deadline = Instant::now() + WORKLOAD_TIMEOUT;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 {
            bail!(
                "wait4 on the ping-pong: {}",
                std::io::Error::last_os_error()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("ping-pong still running after {WORKLOAD_TIMEOUT:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    out.push_str(&reader.join().unwrap_or_default());
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("ping-pong failed (status {status}): {out}");
    }
    let wall: f64 = out
        .trim()
        .parse()
        .with_context(|| format!("ping-pong printed {out:?}, not ns per round trip"))?;
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e9 + t.tv_usec as f64 * 1e3;
    let cpu = (tv(usage.ru_utime) + tv(usage.ru_stime)) / n as f64;
    Ok(Measurement { wall, cpu })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Median, min and max of `samples`.
fn stats(samples: &[f64]) -> Stats {
    Stats::of(samples.iter().copied())
}

/// Median over rounds of `case / base` within the same round: drift in the
/// machine's speed between rounds cancels out.
fn paired_ratio(samples: &Samples, case: Case, base: Case) -> f64 {
    let ratios: Vec<f64> = samples[case.index()]
        .iter()
        .zip(&samples[base.index()])
        .map(|(c, b)| c / b)
        .collect();
    stats(&ratios).median
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

fn print_table(samples: &Samples) {
    let none = stats(&samples[Case::None.index()]).median;
    println!();
    println!(
        "| case | median ns/round trip | min | max | added vs none | per-round ratio to none |"
    );
    println!(
        "|------|---------------------:|----:|----:|--------------:|------------------------:|"
    );
    for case in Case::ALL {
        let s = &samples[case.index()];
        let med = stats(s).median;
        let (added, ratio) = if case == Case::None {
            ("-".to_string(), "-".to_string())
        } else {
            (
                format!(
                    "{:+.0} ns ({:+.1}%)",
                    med - none,
                    (med - none) / none * 100.0
                ),
                format!("{:.3}", paired_ratio(samples, case, Case::None)),
            )
        };
        println!(
            "| {} | {med:.0} | {:.0} | {:.0} | {added} | {ratio} |",
            case.name(),
            stats(s).min,
            stats(s).max
        );
    }
}

fn print_verdicts(samples: &Samples) {
    let med = samples.each_ref().map(|s| stats(s).median);
    let none = med[Case::None.index()];
    let added = |c: Case| med[c.index()] - none;
    let sched = med[Case::HostscopeSched.index()];
    let runqlat = med[Case::Runqlat.index()];
    let frac = added(Case::HostscopeSched) / none;
    println!(
        "- hostscope (sched only) / none: {:.3}, adds {:+.1}% (target < {:.0}%): {}",
        sched / none,
        frac * 100.0,
        ADDED_TARGET * 100.0,
        verdict(frac < ADDED_TARGET)
    );
    println!(
        "- runqlat / none: {:.3}, adds {:+.1}%",
        runqlat / none,
        added(Case::Runqlat) / none * 100.0
    );
    println!(
        "- floor (empty programs on the same hooks) / none: {:.3}, adds {:+.1}%; hostscope \
         (sched only) adds {:.2} times what the floor adds, runqlat {:.2} times",
        med[Case::Floor.index()] / none,
        added(Case::Floor) / none * 100.0,
        added(Case::HostscopeSched) / added(Case::Floor),
        added(Case::Runqlat) / added(Case::Floor)
    );
    let (ph, pr) = (
        paired_ratio(samples, Case::HostscopeSched, Case::None),
        paired_ratio(samples, Case::Runqlat, Case::None),
    );
    println!(
        "- per-round ratios to none: hostscope (sched only) {ph:.3}, runqlat {pr:.3} (target: \
         hostscope adds less than runqlat): {}",
        verdict(ph < pr)
    );
    let spread = |c: Case| {
        let s = &samples[c.index()];
        (stats(s).max - stats(s).min) / med[c.index()] * 100.0
    };
    println!(
        "- noise, (max - min) / median: none {:.1}%, hostscope (sched only) {:.1}%, \
         runqlat {:.1}%",
        spread(Case::None),
        spread(Case::HostscopeSched),
        spread(Case::Runqlat)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_ratio_is_within_round() {
        let samples: Samples = [
            vec![100.0, 200.0, 300.0],
            vec![],
            vec![110.0, 220.0, 330.0],
            vec![],
            vec![],
        ];
        let r = paired_ratio(&samples, Case::HostscopeSched, Case::None);
        assert!((r - 1.1).abs() < 1e-9);
    }
}
