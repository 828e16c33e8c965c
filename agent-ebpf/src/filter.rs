//! In-kernel filtering by cgroup (see `hostscope_common::filter`): a task
//! whose cgroup is filtered out costs one global load, one helper call and
//! one hash lookup per hook, and touches nothing else. With filtering off
//! (the default) it costs the global load alone.

use aya_ebpf::{helpers::bpf_get_current_cgroup_id, macros::map, maps::HashMap};
use hostscope_common::filter::{MODE_INCLUDE, MODE_OFF};

/// One of `hostscope_common::filter::MODE_*` (set by the loader).
#[unsafe(no_mangle)]
static FILTER_MODE: u32 = MODE_OFF;

/// cgroup v2 ids (the cgroups configured and every cgroup below them).
#[map]
static CGROUP_FILTER: HashMap<u64, u32> = HashMap::with_max_entries(16384, 0);

/// Whether the current task is filtered out.
#[inline(always)]
pub fn current_excluded() -> bool {
    let mode = unsafe { core::ptr::read_volatile(&FILTER_MODE) };
    if mode == MODE_OFF {
        return false;
    }
    let id = unsafe { bpf_get_current_cgroup_id() };
    let listed = unsafe { CGROUP_FILTER.get(id) }.is_some();
    if mode == MODE_INCLUDE {
        !listed
    } else {
        listed
    }
}
