//! Process and host identity for resources, following OpenTelemetry's process
//! and host conventions. Looked up in procfs on first sight of a process and
//! cached; a process is recognised by (pid, start time), so a reused pid is
//! never taken for its predecessor.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nix::time::{ClockId, clock_gettime};

/// What a process is, as exported in its resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Base name of `/proc/<pid>/exe`'s target; where that link cannot be
    /// read (another user's process, or one holding capabilities the agent
    /// lacks, without `CAP_SYS_PTRACE`), see [`name_without_exe`].
    pub executable_name: String,
    /// Start time in kernel clock ticks since boot (`/proc/<pid>/stat` field
    /// 22); None when the process was gone before procfs could be read.
    pub start_ticks: Option<u64>,
    /// Wall-clock creation time.
    pub creation_time_unix_nano: u64,
    /// Container and pod, from `/proc/<pid>/cgroup` read with the rest; None
    /// outside containers or when the process was gone first.
    pub container: Option<crate::container::ContainerIdentity>,
    /// `process.parent_pid`.
    pub parent_pid: Option<u32>,
    /// `process.executable.path`: `/proc/<pid>/exe`'s target, else the
    /// path the process was executed from (kernel record, cut to 128 bytes).
    pub executable_path: Option<String>,
    /// `process.owner`: the user name of the real uid (the uid in decimal
    /// where no name is known, e.g. in a container image without
    /// `/etc/passwd`).
    pub owner: Option<String>,
    /// `process.command_line`, when enabled (`identity.command_line`), cut
    /// to its configured length.
    pub command_line: Option<String>,
}

impl ProcessInfo {
    /// `process.creation.time` as ISO 8601, as the semantic conventions ask.
    pub fn creation_time_iso8601(&self) -> String {
        let t = UNIX_EPOCH + Duration::from_nanos(self.creation_time_unix_nano);
        humantime::format_rfc3339_millis(t).to_string()
    }
}

/// Host resource attributes, read once.
#[derive(Debug, Clone)]
pub struct HostInfo {
    pub name: String,
    /// `/etc/machine-id` (else `/var/lib/dbus/machine-id`), as the
    /// semantic conventions' `host.id` asks on Linux; None when neither is
    /// readable (a container image without one).
    pub id: Option<String>,
    /// `host.arch` in the conventions' words (`amd64`, `arm64`, ...).
    pub arch: &'static str,
    /// The kernel release (`os.version`), from `/proc/sys/kernel/osrelease`.
    pub os_version: Option<String>,
}

impl HostInfo {
    pub fn read() -> Self {
        let name = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".into());
        let first_line = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        Self {
            name,
            id: first_line("/etc/machine-id").or_else(|| first_line("/var/lib/dbus/machine-id")),
            arch: host_arch(std::env::consts::ARCH),
            os_version: first_line("/proc/sys/kernel/osrelease"),
        }
    }
}

/// Rust's architecture name in the semantic conventions' `host.arch` values.
pub fn host_arch(rust_arch: &'static str) -> &'static str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "x86",
        "arm" => "arm32",
        "powerpc" => "ppc32",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        other => other,
    }
}

/// Cache of process identities keyed by pid.
pub struct ProcessCache {
    by_pid: HashMap<u32, Arc<ProcessInfo>>,
    ticks_per_sec: u64,
    /// Wall-clock time of boot in ns: CLOCK_REALTIME - CLOCK_BOOTTIME.
    boot_unix_nano: u64,
    /// What the kernel recorded at fork and exec (`PROCS`), for processes
    /// gone before procfs was read.
    kernel: Option<crate::signals::procs::ProcRecords>,
    /// User names by uid, from `/etc/passwd` (read once).
    users: HashMap<u32, String>,
    /// Export `process.command_line`, cut to this many bytes.
    command_line_max: Option<usize>,
    /// Pids to forget once every signal has collected this interval.
    forgotten: Vec<u32>,
    /// Pids looked up since the last [`ProcessCache::end_interval`].
    used: std::collections::HashSet<u32>,
}

impl Default for ProcessCache {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessCache {
    pub fn new() -> Self {
        let ticks_per_sec = procfs::ticks_per_second().max(1);
        Self {
            by_pid: HashMap::new(),
            ticks_per_sec,
            boot_unix_nano: boot_unix_nano(),
            kernel: None,
            users: std::fs::read_to_string("/etc/passwd")
                .map(|t| parse_passwd(&t))
                .unwrap_or_default(),
            command_line_max: None,
            forgotten: Vec::new(),
            used: std::collections::HashSet::new(),
        }
    }

    /// Identities of processes gone before procfs was read come from
    /// `records` (the `procs` kernel programs' map).
    pub fn set_kernel_records(&mut self, records: crate::signals::procs::ProcRecords) {
        self.kernel = Some(records);
    }

    /// Export `process.command_line` (of processes read from procfs), cut to
    /// `max` bytes; None: not exported.
    pub fn set_command_line(&mut self, max: Option<usize>) {
        self.command_line_max = max;
    }

    fn owner(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    /// The executable path in the kernel's record of `pid`, if any.
    fn recorded_path(&self, pid: u32) -> Option<String> {
        let r = self.kernel.as_ref()?.get(&pid, 0).ok()?;
        Some(c_str(&r.path)).filter(|p| !p.is_empty())
    }

    /// Identity from the kernel's record of `pid` (fork and exec events).
    fn recorded(&self, pid: u32) -> Option<ProcessInfo> {
        let r = self.kernel.as_ref()?.get(&pid, 0).ok()?;
        let path = c_str(&r.path);
        let comm = c_str(&r.comm);
        let executable_name = std::path::Path::new(&path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or(comm);
        let creation = i128::from(r.start_ns) + monotonic_to_unix_offset();
        Some(ProcessInfo {
            pid,
            executable_name,
            start_ticks: Some(
                (u128::from(r.start_ns) * u128::from(self.ticks_per_sec) / 1_000_000_000) as u64,
            ),
            creation_time_unix_nano: creation.max(0) as u64,
            container: None,
            parent_pid: (r.ppid != 0).then_some(r.ppid),
            executable_path: (!path.is_empty()).then(|| path.clone()),
            owner: Some(self.owner(r.uid)),
            command_line: None,
        })
    }

    /// Identity of `pid`: from the cache, else from procfs, else from what
    /// the kernel recorded at its fork or exec. None when the process is
    /// gone and was never seen.
    pub fn get(&mut self, pid: u32) -> Option<Arc<ProcessInfo>> {
        self.used.insert(pid);
        if let Some(info) = self.by_pid.get(&pid) {
            return Some(info.clone());
        }
        let info = Arc::new(self.read(pid).or_else(|| self.recorded(pid))?);
        self.by_pid.insert(pid, info.clone());
        Some(info)
    }

    /// Whether the process we know as `info` still runs (same pid, same
    /// start; for a process never read from procfs, any process with its pid).
    pub fn is_alive(&self, info: &ProcessInfo) -> bool {
        match info.start_ticks {
            Some(ticks) => read_start_ticks(info.pid) == Some(ticks),
            None => std::path::Path::new(&format!("/proc/{}", info.pid)).exists(),
        }
    }

    /// Forgets a pid (after its process exited and was exported once more),
    /// here and in the kernel's records, once the interval's collection is
    /// over ([`ProcessCache::end_interval`]): the other signals still name
    /// it this interval.
    pub fn forget(&mut self, pid: u32) {
        self.forgotten.push(pid);
    }

    /// Carries out this interval's [`ProcessCache::forget`]s, and drops the
    /// identities no signal looked up this interval: a process no signal
    /// reports any more has exited or gone quiet, and its pid may be handed
    /// to a new process (which must not be taken for it). A quiet process
    /// that comes back is read again.
    pub fn end_interval(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.by_pid.retain(|pid, _| used.contains(pid));
        for pid in std::mem::take(&mut self.forgotten) {
            self.by_pid.remove(&pid);
            if let Some(k) = self.kernel.as_mut() {
                let _ = k.remove(&pid);
            }
        }
    }

    fn read(&self, pid: u32) -> Option<ProcessInfo> {
        let proc = procfs::process::Process::new(pid as i32).ok()?;
        let stat = proc.stat().ok()?;
        // `/proc/<pid>/exe`, else the path the kernel saw it execute (the
        // link is unreadable without CAP_SYS_PTRACE for processes holding
        // capabilities the agent lacks, which after its drop is any).
        let executable_path = proc
            .exe()
            .ok()
            .map(|p| {
                p.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_string()
            })
            .or_else(|| self.recorded_path(pid));
        let executable_name = executable_path
            .as_deref()
            .and_then(|p| std::path::Path::new(p).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| name_without_exe(&stat.comm, proc.cmdline().ok()));
        let since_boot_ns =
            u128::from(stat.starttime) * 1_000_000_000 / u128::from(self.ticks_per_sec);
        let owner = proc.status().ok().map(|s| self.owner(s.ruid));
        let command_line = self.command_line_max.and_then(|max| {
            let line = proc.cmdline().ok()?.join(" ");
            Some(cut(&line, max).to_string())
        });
        Some(ProcessInfo {
            pid,
            executable_name,
            start_ticks: Some(stat.starttime),
            creation_time_unix_nano: self.boot_unix_nano + since_boot_ns as u64,
            container: crate::container::read(pid),
            parent_pid: u32::try_from(stat.ppid).ok().filter(|p| *p != 0),
            executable_path,
            owner,
            command_line,
        })
    }
}

/// A NUL-terminated string the kernel wrote (`comm`, a path), up to its
/// first NUL or the whole buffer.
pub fn c_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// uid -> user name from `/etc/passwd` text.
fn parse_passwd(text: &str) -> HashMap<u32, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse().ok()?;
            Some((uid, name.to_string()))
        })
        .collect()
}

/// The executable's name when `/proc/<pid>/exe` is unreadable: the kernel's
/// `comm` (the base name of the path the process was started from, cut to 15
/// bytes), or, where `comm` was cut, the base name of `argv[0]` if it begins
/// with `comm` (`hostscope-workl` -> `hostscope-workload`). Both files are
/// readable by anyone; `argv[0]` is used only where it agrees with `comm`.
pub fn name_without_exe(comm: &str, cmdline: Option<Vec<String>>) -> String {
    const COMM_MAX: usize = 15;
    if comm.len() == COMM_MAX
        && let Some(argv0) = cmdline.as_ref().and_then(|c| c.first())
        && let Some(base) = std::path::Path::new(argv0)
            .file_name()
            .map(|b| b.to_string_lossy())
        && base.len() > COMM_MAX
        && base.starts_with(comm)
    {
        return base.into_owned();
    }
    comm.to_string()
}

fn read_start_ticks(pid: u32) -> Option<u64> {
    procfs::process::Process::new(pid as i32)
        .ok()?
        .stat()
        .ok()
        .map(|s| s.starttime)
}

fn boot_unix_nano() -> u64 {
    let ns = |c| {
        clock_gettime(c)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0)
    };
    ns(ClockId::CLOCK_REALTIME).saturating_sub(ns(ClockId::CLOCK_BOOTTIME))
}

/// Current wall-clock time in ns since the epoch.
pub fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `CLOCK_MONOTONIC` now in ns (the clock of `bpf_ktime_get_ns()` and of
/// a task's `start_time`).
pub fn monotonic_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Offset that turns `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) into wall-clock ns.
pub fn monotonic_to_unix_offset() -> i128 {
    let ns = |c| {
        clock_gettime(c)
            .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
            .unwrap_or(0)
    };
    ns(ClockId::CLOCK_REALTIME) - ns(ClockId::CLOCK_MONOTONIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_identity_matches_procfs() {
        let mut cache = ProcessCache::new();
        let pid = std::process::id();
        let info = cache.get(pid).expect("own process is visible in /proc");
        let exe = std::env::current_exe().unwrap();
        assert_eq!(
            info.executable_name,
            exe.file_name().unwrap().to_string_lossy(),
            "executable name should be the base name of /proc/self/exe"
        );
        assert!(cache.is_alive(&info));
        // Started before now, and not before boot.
        let now = now_unix_nano();
        assert!(
            info.creation_time_unix_nano <= now,
            "{info:?} created after {now}"
        );
        assert!(
            info.creation_time_unix_nano + 3_600_000_000_000 > now,
            "{info:?}: test process older than an hour?"
        );
        assert!(info.creation_time_iso8601().ends_with('Z'));
    }

    #[test]
    fn name_without_exe_completes_a_cut_comm_from_argv0() {
        let argv = |a: &str| Some(vec![a.to_string(), "mix".to_string()]);
        assert_eq!(
            name_without_exe("hostscope-workl", argv("/x/hostscope-workload")),
            "hostscope-workload"
        );
        assert_eq!(name_without_exe("bash", argv("-bash")), "bash", "not cut");
        assert_eq!(
            name_without_exe("hostscope-workl", argv("nginx: worker process")),
            "hostscope-workl",
            "argv[0] that disagrees is ignored"
        );
        assert_eq!(
            name_without_exe("hostscope-workl", None),
            "hostscope-workl",
            "exited"
        );
    }

    #[test]
    fn host_identity() {
        let h = HostInfo::read();
        assert_eq!(host_arch("x86_64"), "amd64");
        assert_eq!(host_arch("aarch64"), "arm64");
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(h.os_version.as_deref(), Some(release.trim()));
        if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
            assert_eq!(h.id.as_deref(), Some(id.trim()));
        }
    }

    #[test]
    fn dead_pid_is_not_alive() {
        let info = ProcessInfo {
            pid: std::process::id(),
            executable_name: "x".into(),
            start_ticks: Some(u64::MAX),
            creation_time_unix_nano: 0,
            container: None,
            parent_pid: None,
            executable_path: None,
            owner: None,
            command_line: None,
        };
        assert!(
            !ProcessCache::new().is_alive(&info),
            "different start time means a different process"
        );
    }
}
