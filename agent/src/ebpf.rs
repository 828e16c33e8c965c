//! Loading the kernel object and attaching programs, with fallbacks chosen by
//! what the running kernel offers.

use std::io;

use aya::{
    Btf, Ebpf, EbpfError, EbpfLoader,
    programs::{BtfTracePoint, ProgramError, RawTracePoint},
};
use thiserror::Error;
use tracing::{debug, info};

use crate::config::HookPreference;

/// The kernel programs, built by `build.rs` from `agent-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hostscope"));

/// A program attached by a signal, for self-telemetry and clean-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// What it is, as exported (`syscalls/sys_enter`).
    pub label: String,
    pub hook: Hook,
    /// Its name in the eBPF object.
    pub program: String,
}

/// Detaches and unloads a program (when its signal could not start whole).
pub fn unload(ebpf: &mut Ebpf, program: &str) {
    let Some(p) = ebpf.program_mut(program) else {
        return;
    };
    let result = match p {
        aya::programs::Program::BtfTracePoint(p) => p.unload(),
        aya::programs::Program::RawTracePoint(p) => p.unload(),
        _ => Ok(()),
    };
    if let Err(e) = result {
        debug!(program, error = %e, "unloading");
    }
}

/// Kernel run count and run time of a loaded program (non-zero only while
/// `kernel.bpf_stats_enabled` is 1).
pub fn run_stats(ebpf: &Ebpf, program: &str) -> Option<(u64, std::time::Duration)> {
    let info = ebpf.program(program)?.info().ok()?;
    Some((info.run_count(), info.run_time()))
}

/// How a program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// BTF-enabled tracepoint (`tp_btf`), Linux 5.5+ with BTF.
    BtfTracePoint,
    /// Raw tracepoint, Linux 4.17+.
    RawTracePoint,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::BtfTracePoint => "tp_btf",
            Hook::RawTracePoint => "raw_tp",
        }
    }
}

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("loading the eBPF object failed: {source}; {hint}")]
    Object {
        #[source]
        source: EbpfError,
        hint: &'static str,
    },
}

/// A map a signal needs could not be taken from the loaded object.
#[derive(Debug, Error)]
pub enum TakeMapError {
    #[error("map {0} missing from the eBPF object")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Takes map `name` out of `ebpf` as the typed map `T`.
pub fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, TakeMapError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(TakeMapError::Missing(name))?;
    T::try_from(map).map_err(|source| TakeMapError::Map { name, source })
}

#[derive(Debug, Error)]
#[error("program {program} on {tracepoint}: {reason}")]
pub struct AttachError {
    pub program: String,
    pub tracepoint: String,
    pub reason: String,
}

/// Load-time settings: globals and map sizes written into the object.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    pub agent_tgid: u32,
    pub slow_threshold_ns: u64,
    pub slow_events_per_cpu_per_sec: u64,
    pub syscall_series: u32,
    pub syscall_error_series: u32,
    pub inflight_threads: u32,
    /// Kernel field offsets for the tcp programs (`valid == 0`: they do nothing).
    pub tcp_offsets: hostscope_common::tcp::TcpOffsets,
    pub tcp_per_connection: bool,
    pub tcp_events_per_cpu_per_sec: u64,
    pub tcp_series: u32,
    pub tcp_sockets: u32,
    /// Kernel field offsets for the sched programs (`valid == 0`: they do nothing).
    pub sched_offsets: hostscope_common::sched::SchedOffsets,
    /// Task offsets for the OOM program's task variant.
    pub oom_offsets: hostscope_common::oom::OomOffsets,
    /// `hostscope_common::filter::MODE_*`.
    pub filter_mode: u32,
    /// Field offsets for the procs programs (`valid == 0`: they do nothing).
    pub proc_offsets: hostscope_common::procs::ProcOffsets,
}

/// Raises RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF maps to.
pub fn raise_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        // Linux 5.11+ charges BPF memory to the cgroup instead, so this
        // only matters on older kernels, where map creation will say so.
        debug!(
            error = %io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK; kernels before 5.11 may refuse to create maps"
        );
    }
}

/// Creates the maps and reads the programs; nothing is attached yet.
pub fn load(s: &LoadSettings) -> Result<Ebpf, LoadError> {
    let per_connection = u32::from(s.tcp_per_connection);
    let mut loader = EbpfLoader::new();
    loader
        // TASK_SCHED_SEEN (task storage), which aya 0.14 creates but has no
        // type for.
        .allow_unsupported_maps()
        .override_global("AGENT_TGID", &s.agent_tgid, true)
        .override_global("SLOW_THRESHOLD_NS", &s.slow_threshold_ns, true)
        .override_global(
            "SLOW_EVENTS_PER_CPU_PER_SEC",
            &s.slow_events_per_cpu_per_sec,
            true,
        )
        .map_max_entries("SYSCALL_STATS", s.syscall_series)
        .map_max_entries("SYSCALL_ERRORS", s.syscall_error_series)
        .map_max_entries("SYSCALL_INFLIGHT", s.inflight_threads)
        .override_global("TCP_OFFSETS", &s.tcp_offsets, true)
        .override_global("TCP_PER_CONNECTION", &per_connection, true)
        .override_global(
            "TCP_EVENTS_PER_CPU_PER_SEC",
            &s.tcp_events_per_cpu_per_sec,
            true,
        )
        .map_max_entries("TCP_STATS", s.tcp_series)
        .map_max_entries("TCP_OWNERS", s.tcp_sockets)
        .override_global("SCHED_OFFSETS", &s.sched_offsets, true)
        .override_global("OOM_OFFSETS", &s.oom_offsets, true)
        .override_global("FILTER_MODE", &s.filter_mode, true)
        .override_global("PROC_OFFSETS", &s.proc_offsets, true);
    // Kernels before 5.11 have no task storage: the object would not load
    // at all. There the sched programs use raw tracepoints (see
    // `signals::sched`), which do not touch TASK_SCHED_SEEN, so it is
    // created as a one-entry hash instead.
    let patched;
    let object = match aya::sys::is_map_supported(aya::maps::MapType::TaskStorage) {
        Ok(false) => match task_storage_as_hash(OBJECT, "TASK_SCHED_SEEN") {
            Some(o) => {
                info!(
                    "the kernel has no task storage (Linux 5.11+); the sched signal will use raw tracepoints"
                );
                patched = o;
                &patched[..]
            }
            None => OBJECT,
        },
        _ => OBJECT,
    };
    loader.load(object).map_err(|source| {
        let hint = match &source {
            EbpfError::MapError(_) => {
                "creating maps needs CAP_BPF (or CAP_SYS_ADMIN) and, before Linux 5.11, a large enough RLIMIT_MEMLOCK"
            }
            _ => "the kernel may lack BPF support (CONFIG_BPF_SYSCALL)",
        };
        LoadError::Object { source, hint }
    })
}

/// A copy of the ELF object `obj` in which the BTF-defined map `map`, a task
/// storage, is a non-preallocated one-entry hash (same key and value): its
/// `type` and `max_entries` are lengths of BTF array types, patched in the
/// `.BTF` section. `None` if anything is not where it should be.
fn task_storage_as_hash(obj: &[u8], map: &str) -> Option<Vec<u8>> {
    const TASK_STORAGE: u32 = 29;
    const HASH: u32 = 1;
    let (start, btf) = object_btf(obj)?;
    let mut out = obj.to_vec();
    for (member, from, to) in [("type", TASK_STORAGE, HASH), ("max_entries", 0, 1)] {
        let at = start + btf.map_def_array_len_at(map, member)?;
        if u32_at(&out, at)? != from {
            return None;
        }
        out[at..at + 4].copy_from_slice(&to.to_le_bytes());
    }
    Some(out)
}

/// The `.BTF` section of the ELF object `obj`: where it starts in `obj`,
/// and its types.
fn object_btf(obj: &[u8]) -> Option<(usize, crate::btf::KernelBtf)> {
    use object::{Object as _, ObjectSection as _};
    let file = object::File::parse(obj).ok()?;
    let (start, len) = file.section_by_name(".BTF")?.file_range()?;
    let range = usize::try_from(start).ok()?..usize::try_from(start + len).ok()?;
    let btf = crate::btf::KernelBtf::from_bytes(obj.get(range.clone())?).ok()?;
    Some((range.start, btf))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Loads and attaches one tracepoint hook: the BTF tracepoint program, and
/// where that is unavailable (or `pref` says so) the raw tracepoint program.
pub fn attach_tracepoint(
    ebpf: &mut Ebpf,
    btf: Option<&Btf>,
    pref: HookPreference,
    label: &str,
    tracepoint: &str,
    btf_program: &str,
    raw_program: &str,
) -> Result<Attached, AttachError> {
    let attached = |hook, program: &str| Attached {
        label: label.to_string(),
        hook,
        program: program.to_string(),
    };
    let btf_failure = match (pref, btf) {
        (HookPreference::RawTp, _) => "not tried (--hook-type raw-tp)".to_string(),
        (_, None) => "no kernel BTF (/sys/kernel/btf/vmlinux)".to_string(),
        (_, Some(btf)) => match attach_btf(ebpf, btf, tracepoint, btf_program) {
            Ok(()) => return Ok(attached(Hook::BtfTracePoint, btf_program)),
            Err(e) => explain(&e),
        },
    };
    if pref == HookPreference::TpBtf {
        return Err(AttachError {
            program: btf_program.to_string(),
            tracepoint: tracepoint.to_string(),
            reason: format!(
                "BTF tracepoint: {btf_failure} (--hook-type tp-btf allows no fallback)"
            ),
        });
    }
    match attach_raw(ebpf, tracepoint, raw_program) {
        Ok(()) => {
            if pref == HookPreference::Auto {
                info!(
                    program = raw_program,
                    tracepoint,
                    "BTF tracepoint unavailable ({btf_failure}); using the raw tracepoint instead"
                );
            }
            Ok(attached(Hook::RawTracePoint, raw_program))
        }
        Err(e) => Err(AttachError {
            program: raw_program.to_string(),
            tracepoint: tracepoint.to_string(),
            reason: format!(
                "raw tracepoint: {}; BTF tracepoint: {btf_failure}",
                explain(&e)
            ),
        }),
    }
}

fn attach_btf(ebpf: &mut Ebpf, btf: &Btf, tp: &str, name: &str) -> Result<(), ProgramError> {
    let prog: &mut BtfTracePoint = program(ebpf, name)?.try_into()?;
    prog.load(tp, btf)?;
    prog.attach()?;
    Ok(())
}

fn attach_raw(ebpf: &mut Ebpf, tp: &str, name: &str) -> Result<(), ProgramError> {
    let prog: &mut RawTracePoint = program(ebpf, name)?.try_into()?;
    prog.load()?;
    prog.attach(tp)?;
    Ok(())
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut aya::programs::Program, ProgramError> {
    // A missing program is a build defect, reported like any other failure.
    ebpf.program_mut(name)
        .ok_or(ProgramError::UnexpectedProgramType)
}

/// A program error in words, naming the capability or kernel feature missing.
fn explain(e: &ProgramError) -> String {
    let errno = match e {
        ProgramError::LoadError { io_error, .. } => io_error.raw_os_error(),
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    };
    let hint = match errno {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (missing capability: needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)"
        }
        Some(libc::ENOENT) => " (the kernel has no such tracepoint)",
        Some(libc::EINVAL) | Some(ENOTSUPP) | Some(libc::EOPNOTSUPP) => {
            " (the kernel does not support this program type or hook)"
        }
        _ => "",
    };
    let mut msg = match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } if verifier_log.to_string().trim().is_empty() => {
            format!("BPF_PROG_LOAD failed: {io_error}")
        }
        _ => e.to_string(),
    };
    // Verifier logs are long; the first lines say what matters.
    if msg.len() > 600 {
        msg.truncate(600);
        msg.push_str("...");
    }
    format!("{msg}{hint}")
}

/// Kernel BTF of the running kernel, if it has any.
pub fn kernel_btf() -> Option<Btf> {
    match Btf::from_sys_fs() {
        Ok(btf) => Some(btf),
        Err(e) => {
            info!(error = %e, "kernel BTF unavailable; BTF tracepoints will fall back to raw tracepoints");
            None
        }
    }
}

/// The kernel's internal "not supported" errno, which BPF syscalls leak.
const ENOTSUPP: i32 = 524;

#[cfg(test)]
mod tests {
    use super::*;

    fn lens(obj: &[u8]) -> Option<(u32, u32)> {
        let (start, btf) = object_btf(obj)?;
        let t = start + btf.map_def_array_len_at("TASK_SCHED_SEEN", "type")?;
        let m = start + btf.map_def_array_len_at("TASK_SCHED_SEEN", "max_entries")?;
        Some((u32_at(obj, t)?, u32_at(obj, m)?))
    }

    #[test]
    fn task_storage_map_is_patched_into_a_hash() {
        assert_eq!(lens(OBJECT), Some((29, 0)), "task storage, max_entries 0");
        let patched = task_storage_as_hash(OBJECT, "TASK_SCHED_SEEN").expect("patched");
        assert_eq!(lens(&patched), Some((1, 1)), "hash, max_entries 1");
        assert_eq!(patched.len(), OBJECT.len());
        let changed = OBJECT.iter().zip(&patched).filter(|(a, b)| a != b).count();
        assert!(changed <= 2, "{changed} bytes changed");
        assert!(task_storage_as_hash(&patched, "TASK_SCHED_SEEN").is_none());
        assert!(task_storage_as_hash(OBJECT, "RUNQ_START").is_none());
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not loading the patched object: not root");
            return;
        }
        let ebpf = EbpfLoader::new()
            .allow_unsupported_maps()
            .load(&patched)
            .expect("the patched object loads");
        assert!(matches!(
            ebpf.map("TASK_SCHED_SEEN"),
            Some(aya::maps::Map::HashMap(_))
        ));
    }
}
