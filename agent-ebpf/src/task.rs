//! Reads of kernel memory at offsets the loader resolved from the running
//! kernel's BTF, shared by the signals.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use hostscope_common::task::CgroupChain;

/// The `T` at `base + off` in kernel memory; `None` if unreadable.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// The cgroup v2 id of `task` (any task, not only the current one), or 0
/// if a link of the chain cannot be read.
#[inline(always)]
pub fn cgroup_id(task: u64, c: &CgroupChain) -> u64 {
    read::<u64>(task, c.task_cgroups)
        .filter(|p| *p != 0)
        .and_then(|cset| read::<u64>(cset, c.css_set_dfl_cgrp))
        .filter(|p| *p != 0)
        .and_then(|cgrp| read::<u64>(cgrp, c.cgroup_kn))
        .filter(|p| *p != 0)
        .and_then(|kn| read::<u64>(kn, c.kernfs_node_id))
        .unwrap_or(0)
}
