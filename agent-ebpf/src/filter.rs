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

#[inline(always)]
fn mode() -> u32 {
    unsafe { core::ptr::read_volatile(&FILTER_MODE) }
}

/// Whether a task in cgroup `id` is filtered out (`mode` not off).
#[inline(always)]
fn excluded(mode: u32, id: u64) -> bool {
    let listed = unsafe { CGROUP_FILTER.get(id) }.is_some();
    if mode == MODE_INCLUDE {
        !listed
    } else {
        listed
    }
}

/// Whether the current task is filtered out.
#[inline(always)]
pub fn current_excluded() -> bool {
    let mode = mode();
    mode != MODE_OFF && excluded(mode, unsafe { bpf_get_current_cgroup_id() })
}

/// Whether an event owned by a task of cgroup `owner` (None: no known
/// owner) is filtered out: with an include list, an event without an owner
/// is.
#[inline(always)]
pub fn owner_excluded(owner: Option<u64>) -> bool {
    let mode = mode();
    match (mode, owner) {
        (MODE_OFF, _) => false,
        (_, Some(id)) => excluded(mode, id),
        (m, None) => m == MODE_INCLUDE,
    }
}
