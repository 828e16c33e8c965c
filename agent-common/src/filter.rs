//! In-kernel filtering by cgroup: the `filter` kernel module's mode and
//! map, filled by userspace from the configured cgroup v2 paths (each
//! with every cgroup below it).

/// `FILTER_MODE`: no filtering (the map is never read).
pub const MODE_OFF: u32 = 0;
/// Only tasks in a cgroup of `CGROUP_FILTER` are measured.
pub const MODE_INCLUDE: u32 = 1;
/// Tasks in a cgroup of `CGROUP_FILTER` are not measured.
pub const MODE_EXCLUDE: u32 = 2;
