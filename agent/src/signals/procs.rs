//! Process identity from kernel events (kernel side:
//! `agent-ebpf/src/procs.rs`): `sched_process_fork` and
//! `sched_process_exec`, as BTF tracepoints, else raw tracepoints. Their map
//! is handed to the [`ProcessCache`](crate::identity::ProcessCache), which
//! names processes gone before procfs was read from it and removes their
//! entries when it forgets them.

use aya::{
    Btf, Ebpf,
    maps::{HashMap, MapData},
};
use hostscope_common::procs::{ProcOffsets, ProcRecord};
use thiserror::Error;

use crate::{
    btf::{BtfError, KernelBtf},
    config::HookPreference,
    ebpf::{AttachError, Attached, TakeMapError, attach_tracepoint, take_map, unload},
};

/// The kernel's process records, by tgid.
pub type ProcRecords = HashMap<MapData, u32, ProcRecord>;

#[derive(Debug, Error)]
pub enum ProcsError {
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Map(#[from] TakeMapError),
}

/// Locates the task and exec fields the programs read.
pub fn resolve_offsets(btf: &KernelBtf) -> Result<ProcOffsets, BtfError> {
    Ok(ProcOffsets {
        task_pid: btf.offset_of("task_struct", "pid")?,
        task_tgid: btf.offset_of("task_struct", "tgid")?,
        task_start_time: btf.offset_of("task_struct", "start_time")?,
        task_real_parent: btf.offset_of("task_struct", "real_parent")?,
        binprm_filename: btf.offset_of("linux_binprm", "filename")?,
        valid: 1,
    })
}

/// Attaches both programs (fork first); on failure nothing stays attached.
pub fn start(
    ebpf: &mut Ebpf,
    btf: Option<&Btf>,
    pref: HookPreference,
) -> Result<(Vec<Attached>, ProcRecords), ProcsError> {
    let mut programs = Vec::new();
    for (label, tp, b, r) in [
        (
            "procs/sched_process_fork",
            "sched_process_fork",
            "procs_fork_btf",
            "procs_fork_raw",
        ),
        (
            "procs/sched_process_exec",
            "sched_process_exec",
            "procs_exec_btf",
            "procs_exec_raw",
        ),
    ] {
        match attach_tracepoint(ebpf, btf, pref, label, tp, b, r) {
            Ok(a) => programs.push(a),
            Err(e) => {
                for p in &programs {
                    unload(ebpf, &p.program);
                }
                return Err(e.into());
            }
        }
    }
    Ok((programs, take_map(ebpf, "PROCS")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_resolve_on_this_kernel() {
        let Ok(btf) = KernelBtf::load() else {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux");
            return;
        };
        let o = resolve_offsets(&btf).expect("every field the procs programs read");
        assert_eq!(o.valid, 1);
        assert_ne!(o.task_start_time, o.task_real_parent);
    }
}
