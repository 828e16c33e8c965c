//! Kernel task fields several signals read, located through the running
//! kernel's BTF at start-up (never baked in at build time).

/// Byte offsets of the chain from a task to the id of its cgroup v2
/// (`task->cgroups->dfl_cgrp->kn->id`, the cgroup directory's inode
/// number, what `bpf_get_current_cgroup_id` returns for the current task).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupChain {
    /// `task_struct.cgroups` (a `css_set *`).
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp` (a `cgroup *`).
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.kn` (a `kernfs_node *`).
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (u64).
    pub kernfs_node_id: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for CgroupChain {}
}
