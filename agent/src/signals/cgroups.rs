//! CPU throttling and pressure stall information (PSI), per cgroup and for
//! the host.
//!
//! No kernel program: every interval this signal reads what the kernel
//! already counts in cgroupfs and `/proc/pressure`.
//!
//! The layout is found once at start-up in `/proc/self/mountinfo`:
//! - pure cgroup2 (most Kubernetes nodes): one tree, usually `/sys/fs/cgroup`,
//!   with `cpu.stat` (`nr_periods`, `nr_throttled`, `throttled_usec`) and
//!   `{cpu,memory,io}.pressure` in each cgroup;
//! - hybrid: the `cpu` controller in a cgroup v1 hierarchy (`cpu.stat`:
//!   `nr_periods`, `nr_throttled`, `throttled_time` in ns) and a cgroup2
//!   tree (usually `/sys/fs/cgroup/unified`) without controllers, whose
//!   cgroups still have pressure files;
//! - pure v1: throttling only (PSI is a cgroup2 feature).
//!
//! Metrics, on one resource per cgroup (`hostscope.cgroup.path`, the path
//! relative to its hierarchy's root; in a hybrid layout a path in the v1
//! `cpu` hierarchy and the same path in the cgroup2 tree are one cgroup, as
//! systemd and the kubelet create them in step):
//! - `hostscope.cpu.periods`, `hostscope.cpu.throttled.periods` (counters,
//!   `{period}`) and `hostscope.cpu.throttled.time` (counter, `s`): only for
//!   cgroups with a CFS quota (`nr_periods` > 0);
//! - `hostscope.pressure.stall.time` (counter, `s`, from each line's `total=`
//!   in µs), attributes `hostscope.pressure.resource` (`cpu`, `memory`, `io`)
//!   and `hostscope.pressure.type` (`some`, `full`): only for cgroups that
//!   have stalled at all (a `total=` above 0); the root cgroup is the host.
//!
//! The host's pressure (`/proc/pressure/{cpu,memory,io}`) goes on the host's
//! resource with the same metric. At most `max_cgroups` cgroups are exported
//! per interval (those exported before first, then by path); the others are
//! counted in `hostscope.agent.dropped` (`cgroups_over_limit`, one per
//! cgroup per interval). A cgroup removed during the walk, or a file that
//! cannot be read, is skipped (debug log): reading never fails the agent.

use std::{
    collections::{BTreeMap, HashSet},
    io::Read as _,
    path::{Path, PathBuf},
};

use opentelemetry_proto::tonic::{common::v1::KeyValue, metrics::v1::Metric};
use tracing::{debug, info};

use crate::{
    config::CgroupsConfig,
    otlp::{self, Window},
    signals::Collected,
};

/// The pressure resources read, in the order they are exported.
const RESOURCES: [&str; 3] = ["cpu", "memory", "io"];

/// Where the cgroup hierarchies this signal reads are mounted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// The cgroup v1 hierarchy holding the `cpu` controller.
    pub v1_cpu: Option<PathBuf>,
    /// The cgroup2 (unified) tree.
    pub v2: Option<PathBuf>,
}

impl Layout {
    /// Reads `/proc/self/mountinfo`; an unreadable file means no cgroups.
    pub fn detect() -> Self {
        match std::fs::read_to_string("/proc/self/mountinfo") {
            Ok(text) => Self::from_mountinfo(&text),
            Err(e) => {
                debug!(error = %e, "cannot read /proc/self/mountinfo");
                Self::default()
            }
        }
    }

    /// The first cgroup2 mount and the first v1 mount with the `cpu`
    /// controller, preferring mounts of a hierarchy's root (a bind mount of
    /// a sub-tree shows only part of it).
    pub fn from_mountinfo(text: &str) -> Self {
        let mut v1: Option<(bool, PathBuf)> = None;
        let mut v2: Option<(bool, PathBuf)> = None;
        for line in text.lines() {
            // id parent major:minor root mount-point options [optional...] - fstype source super-options
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            if fields.len() < 5 || right.len() < 3 {
                continue;
            }
            let (root, mount) = (fields[3] == "/", PathBuf::from(unescape(fields[4])));
            let slot = match right[0] {
                "cgroup2" => &mut v2,
                "cgroup" if right[2].split(',').any(|o| o == "cpu") => &mut v1,
                _ => continue,
            };
            if slot.as_ref().is_none_or(|(r, _)| !r && root) {
                *slot = Some((root, mount));
            }
        }
        Self {
            v1_cpu: v1.map(|(_, p)| p),
            v2: v2.map(|(_, p)| p),
        }
    }

    /// `cgroup2`, `hybrid`, `cgroup1` or `none`.
    pub fn name(&self) -> &'static str {
        match (&self.v1_cpu, &self.v2) {
            (None, Some(_)) => "cgroup2",
            (Some(_), Some(_)) => "hybrid",
            (Some(_), None) => "cgroup1",
            (None, None) => "none",
        }
    }
}

/// Mount points in mountinfo escape space, tab, newline and backslash as
/// three octal digits.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `total=` of the `some` and `full` lines of a pressure file, in µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Psi {
    pub some: Option<u64>,
    pub full: Option<u64>,
}

impl Psi {
    fn stalled(&self) -> bool {
        self.some.unwrap_or(0) > 0 || self.full.unwrap_or(0) > 0
    }
}

/// Parses `some avg10=0.00 avg60=0.00 avg300=0.00 total=12345` lines.
pub fn parse_psi(text: &str) -> Psi {
    let mut psi = Psi::default();
    for line in text.lines() {
        let mut words = line.split_ascii_whitespace();
        let slot = match words.next() {
            Some("some") => &mut psi.some,
            Some("full") => &mut psi.full,
            _ => continue,
        };
        if let Some(total) = words.find_map(|w| w.strip_prefix("total=")?.parse().ok()) {
            *slot = Some(total);
        }
    }
    psi
}

/// CFS bandwidth counters of one cgroup.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throttling {
    /// Enforcement periods that elapsed while the cgroup was runnable.
    pub periods: u64,
    /// Periods in which the cgroup used up its quota.
    pub throttled_periods: u64,
    /// Time its tasks were throttled, in seconds (converted from the
    /// kernel's unit: ns in v1, µs in v2).
    pub throttled_s: f64,
}

/// Which `cpu.stat` format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// `throttled_time` in ns.
    V1,
    /// `throttled_usec`.
    V2,
}

/// Parses `cpu.stat`; `None` unless it has the bandwidth counters and
/// `nr_periods` > 0 (the cgroup has, or had, a quota).
pub fn parse_cpu_stat(text: &str, version: Version) -> Option<Throttling> {
    let (mut periods, mut throttled, mut time) = (None, None, None);
    let time_key = match version {
        Version::V1 => "throttled_time",
        Version::V2 => "throttled_usec",
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once(' ') else {
            continue;
        };
        let v: Option<u64> = v.trim().parse().ok();
        match k {
            "nr_periods" => periods = v,
            "nr_throttled" => throttled = v,
            k if k == time_key => time = v,
            _ => {}
        }
    }
    let (periods, throttled_periods, time) = (periods?, throttled?, time?);
    if periods == 0 {
        return None;
    }
    let throttled_s = match version {
        Version::V1 => time as f64 / 1e9,
        Version::V2 => time as f64 / 1e6,
    };
    Some(Throttling {
        periods,
        throttled_periods,
        throttled_s,
    })
}

/// Seconds of a PSI total in µs.
pub fn psi_seconds(total_us: u64) -> f64 {
    total_us as f64 / 1e6
}

/// What was read of one cgroup this interval.
#[derive(Debug, Default)]
struct Sample {
    throttling: Option<Throttling>,
    /// Pressure, by resource; empty unless the cgroup has stalled.
    pressure: Vec<(&'static str, Psi)>,
}

/// The running signal.
pub struct Cgroups {
    layout: Layout,
    /// `/proc/pressure`, when the kernel has PSI.
    host_pressure: Option<PathBuf>,
    /// Whether cgroup2 cgroups have pressure files (the kernel has PSI).
    cgroup_pressure: bool,
    max_cgroups: usize,
    /// Paths exported at the last interval: kept first when over the limit,
    /// so series do not come and go.
    exported: HashSet<String>,
    /// Cgroups left out, summed over intervals.
    dropped: u64,
    attached_unix_nano: u64,
    buf: String,
}

impl Cgroups {
    /// Detects the layout and says in one line what was found; `None` when
    /// there is nothing to read.
    pub fn start(cfg: &CgroupsConfig, now_unix_nano: u64) -> Option<Self> {
        let layout = Layout::detect();
        let host_psi = Path::new("/proc/pressure/cpu").exists();
        let show = |p: &Option<PathBuf>| p.as_ref().map_or("-".into(), |p| p.display().to_string());
        let per_cgroup_psi = layout.v2.is_some() && host_psi;
        info!(
            layout = layout.name(),
            cpu_hierarchy = show(&layout.v1_cpu.clone().or(layout.v2.clone())),
            pressure_hierarchy = if per_cgroup_psi {
                show(&layout.v2)
            } else {
                "-".to_string()
            },
            host_pressure = host_psi,
            max_cgroups = cfg.max_cgroups,
            "cgroups signal started{}",
            if host_psi {
                ""
            } else {
                " (no /proc/pressure: the kernel runs without PSI, boot with psi=1)"
            }
        );
        if layout == Layout::default() && !host_psi {
            return None;
        }
        Some(Self {
            layout,
            host_pressure: host_psi.then(|| PathBuf::from("/proc/pressure")),
            cgroup_pressure: host_psi,
            max_cgroups: cfg.max_cgroups as usize,
            exported: HashSet::new(),
            dropped: 0,
            attached_unix_nano: now_unix_nano,
            buf: String::new(),
        })
    }

    /// Reads the host's pressure and every cgroup into `out`.
    /// A new bound on cgroups exported per interval (SIGHUP).
    pub fn set_max_cgroups(&mut self, n: u32) {
        self.max_cgroups = n as usize;
    }

    pub fn collect(&mut self, now_unix_nano: u64, out: &mut Collected) {
        let w = Window {
            start_unix_nano: self.attached_unix_nano,
            time_unix_nano: now_unix_nano,
        };
        if let Some(dir) = &self.host_pressure {
            let mut host = Vec::new();
            for r in RESOURCES {
                if let Some(text) = read(&dir.join(r), &mut self.buf) {
                    host.push((r, parse_psi(text)));
                }
            }
            if !host.is_empty() {
                out.host.push(pressure_metric(&host, w));
            }
        }

        let mut samples: BTreeMap<String, Sample> = BTreeMap::new();
        if let Some(v2) = self.layout.v2.clone() {
            // A controller is bound to one hierarchy: with a v1 cpu
            // hierarchy, cgroup2's cpu.stat has no bandwidth counters.
            let throttling = self.layout.v1_cpu.is_none();
            let psi = self.cgroup_pressure;
            let v2_samples = self.walk(&v2, |dir, rel, buf| {
                let mut s = Sample::default();
                if throttling {
                    s.throttling = read(&dir.join("cpu.stat"), buf)
                        .and_then(|t| parse_cpu_stat(t, Version::V2));
                }
                // The root cgroup's pressure is the host's.
                if psi && rel != "/" {
                    for r in RESOURCES {
                        if let Some(t) = read(&dir.join(format!("{r}.pressure")), buf) {
                            s.pressure.push((r, parse_psi(t)));
                        }
                    }
                    if !s.pressure.iter().any(|(_, p)| p.stalled()) {
                        s.pressure.clear();
                    }
                }
                s
            });
            samples.extend(v2_samples);
        }
        if let Some(v1) = self.layout.v1_cpu.clone() {
            for (rel, s) in self.walk(&v1, |dir, _, buf| Sample {
                throttling: read(&dir.join("cpu.stat"), buf)
                    .and_then(|t| parse_cpu_stat(t, Version::V1)),
                pressure: Vec::new(),
            }) {
                samples.entry(rel).or_default().throttling = s.throttling;
            }
        }
        samples.retain(|_, s| s.throttling.is_some() || !s.pressure.is_empty());

        // Over the limit: keep the cgroups exported last time, then the
        // others by path.
        let over = samples.len().saturating_sub(self.max_cgroups);
        if over > 0 {
            let mut order: Vec<(bool, String)> = samples
                .keys()
                .map(|k| (!self.exported.contains(k), k.clone()))
                .collect();
            order.sort();
            for (_, k) in order.into_iter().skip(self.max_cgroups) {
                samples.remove(&k);
            }
            self.dropped += over as u64;
            debug!(over, "cgroups over the limit left out this interval");
        }
        self.exported = samples.keys().cloned().collect();
        for (rel, s) in samples {
            let mut metrics = Vec::new();
            if let Some(t) = s.throttling {
                metrics.extend(throttling_metrics(&t, w));
            }
            if !s.pressure.is_empty() {
                metrics.push(pressure_metric(&s.pressure, w));
            }
            // Other signals (sched) add to the same cgroups.
            out.cgroups.entry(rel).or_default().extend(metrics);
        }
        out.agent.push(otlp::counter_metric(
            "hostscope.agent.dropped",
            "Measurements lost, by where they were lost",
            "{event}",
            vec![otlp::int_point(
                vec![otlp::kv_str("hostscope.drop.reason", "cgroups_over_limit")],
                w,
                self.dropped,
            )],
        ));
    }

    /// Every cgroup under `root` (itself included, as `/`), sampled by `f`
    /// with its directory and path relative to `root`; those with something
    /// to export. Directories that vanish mid-walk are skipped.
    fn walk(
        &mut self,
        root: &Path,
        mut f: impl FnMut(&Path, &str, &mut String) -> Sample,
    ) -> Vec<(String, Sample)> {
        let mut out = Vec::new();
        let mut stack = vec![(root.to_path_buf(), "/".to_string())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) => {
                    debug!(cgroup = rel, error = %e, "cgroup vanished during the walk");
                    continue;
                }
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    let child = if rel == "/" {
                        format!("/{name}")
                    } else {
                        format!("{rel}/{name}")
                    };
                    stack.push((entry.path(), child));
                }
            }
            let s = f(&dir, &rel, &mut self.buf);
            if s.throttling.is_some() || !s.pressure.is_empty() {
                out.push((rel, s));
            }
        }
        out
    }
}

/// Reads a small file into `buf`; `None` (debug log) if it cannot be read.
fn read<'a>(path: &Path, buf: &'a mut String) -> Option<&'a str> {
    buf.clear();
    match std::fs::File::open(path).and_then(|mut f| f.read_to_string(buf)) {
        Ok(_) => Some(buf.as_str()),
        Err(e) => {
            debug!(path = %path.display(), error = %e, "skipped an unreadable cgroup file");
            None
        }
    }
}

fn throttling_metrics(t: &Throttling, w: Window) -> [Metric; 3] {
    [
        otlp::counter_metric(
            "hostscope.cpu.periods",
            "CFS bandwidth enforcement periods elapsed while the cgroup was runnable (nr_periods)",
            "{period}",
            vec![otlp::int_point(Vec::new(), w, t.periods)],
        ),
        otlp::counter_metric(
            "hostscope.cpu.throttled.periods",
            "Periods in which the cgroup exhausted its CPU quota (nr_throttled)",
            "{period}",
            vec![otlp::int_point(Vec::new(), w, t.throttled_periods)],
        ),
        otlp::counter_metric(
            "hostscope.cpu.throttled.time",
            "Time the cgroup's tasks were throttled by its CPU quota",
            "s",
            vec![otlp::double_point(Vec::new(), w, t.throttled_s)],
        ),
    ]
}

fn pressure_attrs(resource: &'static str, kind: &'static str) -> Vec<KeyValue> {
    vec![
        otlp::kv_str("hostscope.pressure.resource", resource),
        otlp::kv_str("hostscope.pressure.type", kind),
    ]
}

fn pressure_metric(psi: &[(&'static str, Psi)], w: Window) -> Metric {
    let mut points = Vec::new();
    for (r, p) in psi {
        for (kind, total) in [("some", p.some), ("full", p.full)] {
            if let Some(total) = total {
                points.push(otlp::double_point(
                    pressure_attrs(r, kind),
                    w,
                    psi_seconds(total),
                ));
            }
        }
    }
    otlp::counter_metric(
        "hostscope.pressure.stall.time",
        "Time tasks stalled waiting for a resource (PSI total): some = at least one task, full = all non-idle tasks",
        "s",
        points,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_lines() {
        let cpu = "some avg10=10.48 avg60=52.85 avg300=49.79 total=465787214\n\
                   full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(
            parse_psi(cpu),
            Psi {
                some: Some(465_787_214),
                full: Some(0)
            }
        );
        // Kernels before 5.13 have no cpu `full` line.
        let old = "some avg10=0.00 avg60=0.00 avg300=0.00 total=12345\n";
        assert_eq!(
            parse_psi(old),
            Psi {
                some: Some(12_345),
                full: None
            }
        );
        assert_eq!(parse_psi(""), Psi::default());
        assert!(!parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").stalled());
        assert_eq!(psi_seconds(12_345), 0.012345);
    }

    #[test]
    fn cpu_stat_v1() {
        let text = "nr_periods 21\nnr_throttled 20\nthrottled_time 1812345678\n\
                    nr_bursts 0\nburst_time 0\n";
        assert_eq!(
            parse_cpu_stat(text, Version::V1),
            Some(Throttling {
                periods: 21,
                throttled_periods: 20,
                throttled_s: 1.812345678,
            })
        );
        // No quota, or no bandwidth counters at all.
        let idle = "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n";
        assert_eq!(parse_cpu_stat(idle, Version::V1), None);
        assert_eq!(parse_cpu_stat(text, Version::V2), None, "v2 keys only");
    }

    #[test]
    fn cpu_stat_v2() {
        let text = "usage_usec 5224313650\nuser_usec 4434824001\nsystem_usec 789489649\n\
                    core_sched.force_idle_usec 0\nnr_periods 100\nnr_throttled 7\n\
                    throttled_usec 123456\nnr_bursts 0\nburst_usec 0\n";
        assert_eq!(
            parse_cpu_stat(text, Version::V2),
            Some(Throttling {
                periods: 100,
                throttled_periods: 7,
                throttled_s: 0.123456,
            })
        );
        // Without the cpu controller (hybrid layout's unified tree).
        let bare = "usage_usec 5224313650\nuser_usec 4434824001\nsystem_usec 789489649\n\
                    nice_usec 0\n";
        assert_eq!(parse_cpu_stat(bare, Version::V2), None);
    }

    #[test]
    fn mountinfo_layouts() {
        let hybrid = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let l = Layout::from_mountinfo(hybrid);
        assert_eq!(l.v1_cpu.as_deref(), Some(Path::new("/sys/fs/cgroup/cpu")));
        assert_eq!(l.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(l.name(), "hybrid");

        let v2 = "\
25 22 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
        let l = Layout::from_mountinfo(v2);
        assert_eq!(
            (l.v1_cpu, l.v2.as_deref()),
            (None, Some(Path::new("/sys/fs/cgroup")))
        );

        // cpu co-mounted with cpuacct; a bind mount of a sub-tree first,
        // and a mount point with a space.
        let v1 = "\
50 40 0:29 /kubepods /host/cpu rw - cgroup cgroup rw,cpu,cpuacct
51 31 0:29 / /sys/fs/cgroup/cpu\\040acct rw shared:9 - cgroup cgroup rw,cpu,cpuacct
";
        let l = Layout::from_mountinfo(v1);
        assert_eq!(
            l.v1_cpu.as_deref(),
            Some(Path::new("/sys/fs/cgroup/cpu acct"))
        );
        assert_eq!(l.name(), "cgroup1");
        assert_eq!(Layout::from_mountinfo("").name(), "none");
    }

    /// A fake hybrid tree on tmpfs-like plain directories: throttling from
    /// the v1 side, pressure from the v2 side, merged by path, filtered,
    /// capped and counted.
    #[test]
    fn collect_merges_filters_and_caps() {
        let base = std::env::temp_dir().join(format!("hostscope-cgroups-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (v1, v2) = (base.join("cpu"), base.join("unified"));
        let put = |dir: &Path, file: &str, text: &str| {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(file), text).unwrap();
        };
        let idle_psi = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n\
                        full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        put(
            &v1,
            "cpu.stat",
            "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
        );
        put(
            &v1.join("a"),
            "cpu.stat",
            "nr_periods 10\nnr_throttled 9\nthrottled_time 900000000\n",
        );
        put(
            &v1.join("b"),
            "cpu.stat",
            "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
        );
        for r in RESOURCES {
            put(&base.join("pressure"), r, idle_psi);
            put(
                &v2,
                &format!("{r}.pressure"),
                "some avg10=1.00 avg60=0.00 avg300=0.00 total=5\n",
            );
            put(&v2.join("a"), &format!("{r}.pressure"), idle_psi);
            put(&v2.join("b"), &format!("{r}.pressure"), idle_psi);
            put(&v2.join("b/c"), &format!("{r}.pressure"), idle_psi);
        }
        put(
            &v2.join("b/c"),
            "cpu.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=250\n\
             full avg10=0.00 avg60=0.00 avg300=0.00 total=100\n",
        );
        let mut c = Cgroups {
            layout: Layout {
                v1_cpu: Some(v1.clone()),
                v2: Some(v2.clone()),
            },
            host_pressure: Some(base.join("pressure")),
            cgroup_pressure: true,
            max_cgroups: 10,
            exported: HashSet::new(),
            dropped: 0,
            attached_unix_nano: 1,
            buf: String::new(),
        };
        let mut out = Collected::default();
        c.collect(2, &mut out);
        let paths: Vec<&str> = out.cgroups.keys().map(String::as_str).collect();
        assert_eq!(paths, ["/a", "/b/c"], "root, /b (idle) left out");
        let host = serde_json::to_value(&out.host).unwrap();
        assert_eq!(host[0]["name"], "hostscope.pressure.stall.time");
        assert_eq!(
            host[0]["sum"]["dataPoints"].as_array().unwrap().len(),
            6,
            "the host's pressure is exported even when idle: {host}"
        );
        let names = |m: &[Metric]| m.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&out.cgroups["/a"]),
            [
                "hostscope.cpu.periods",
                "hostscope.cpu.throttled.periods",
                "hostscope.cpu.throttled.time"
            ]
        );
        let json = serde_json::to_value(&out.cgroups["/b/c"][0]).unwrap();
        let points = json["sum"]["dataPoints"].as_array().unwrap();
        assert_eq!(
            points.len(),
            6,
            "some and full of cpu, memory and io, zeros included: {json}"
        );
        assert_eq!(points[0]["asDouble"], 0.00025);
        assert_eq!(points[1]["asDouble"], 0.0001);
        let a = serde_json::to_value(&out.cgroups["/a"][2]).unwrap();
        assert_eq!(a["sum"]["dataPoints"][0]["asDouble"], 0.9);

        // Over the limit: the cgroup exported before stays; the drop is counted.
        c.max_cgroups = 1;
        c.exported = ["/b/c".to_string()].into();
        let mut out = Collected::default();
        c.collect(3, &mut out);
        assert_eq!(out.cgroups.keys().collect::<Vec<_>>(), ["/b/c"]);
        let mut out = Collected::default();
        c.collect(4, &mut out);
        let drops = serde_json::to_value(&out.agent[0]).unwrap();
        assert_eq!(drops["sum"]["dataPoints"][0]["asInt"], "2", "{drops}");

        // A hierarchy that is gone is skipped without error.
        std::fs::remove_dir_all(&base).unwrap();
        let mut out = Collected::default();
        c.collect(5, &mut out);
        assert!(out.cgroups.is_empty());
    }
}
