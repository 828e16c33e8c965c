//! OOM kills: `oom/mark_victim`, as a BTF tracepoint or else a raw
//! tracepoint. Its argument is the victim's task on Linux 6.8+ and its pid
//! before; the loader picks the matching program from the kernel's BTF.
//! Each victim is sent to userspace through a ring buffer (OOM kills are
//! rare; a full buffer is counted).

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use hostscope_common::{
    oom::{OomEvent, OomOffsets},
    task::CgroupChain,
};

use crate::task::{cgroup_id, read};

#[unsafe(no_mangle)]
static OOM_OFFSETS: OomOffsets = OomOffsets {
    task_pid: 0,
    task_tgid: 0,
    task_comm: 0,
    valid: 0,
    cgroup: CgroupChain {
        task_cgroups: 0,
        css_set_dfl_cgrp: 0,
        cgroup_kn: 0,
        kernfs_node_id: 0,
    },
};

#[map]
static OOM_EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024, 0);

/// Events lost to a full ring buffer.
#[map]
static OOM_DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[btf_tracepoint(function = "mark_victim")]
pub fn oom_victim_task_btf(ctx: BtfTracePointContext) -> i32 {
    on_task(ctx.arg::<u64>(0))
}

#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn oom_victim_task_raw(ctx: RawTracePointContext) -> i32 {
    on_task(ctx.arg::<u64>(0))
}

#[btf_tracepoint(function = "mark_victim")]
pub fn oom_victim_pid_btf(ctx: BtfTracePointContext) -> i32 {
    let pid = ctx.arg::<u64>(0) as u32;
    send(pid, pid, 0, [0; 16]);
    0
}

#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn oom_victim_pid_raw(ctx: RawTracePointContext) -> i32 {
    let pid = ctx.arg::<u64>(0) as u32;
    send(pid, pid, 0, [0; 16]);
    0
}

fn on_task(task: u64) -> i32 {
    let o = unsafe { core::ptr::read_volatile(&OOM_OFFSETS) };
    if o.valid == 0 || task == 0 {
        return 0;
    }
    let pid: u32 = read(task, o.task_pid).unwrap_or(0);
    let tgid: u32 = read(task, o.task_tgid).unwrap_or(pid);
    let comm: [u8; 16] = read(task, o.task_comm).unwrap_or([0; 16]);
    let cgroup_id = cgroup_id(task, &o.cgroup);
    send(pid, tgid, cgroup_id, comm);
    0
}

fn send(pid: u32, tgid: u32, cgroup_id: u64, comm: [u8; 16]) {
    match OOM_EVENTS.reserve::<OomEvent>(0) {
        Some(mut e) => {
            e.write(OomEvent {
                time_ns: unsafe { bpf_ktime_get_ns() },
                cgroup_id,
                pid,
                tgid,
                comm,
            });
            e.submit(0);
        }
        None => {
            if let Some(n) = OOM_DROPS.get_ptr_mut(0) {
                unsafe { *n += 1 };
            }
        }
    }
}
