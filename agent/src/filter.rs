//! What is not measured: tasks in configured cgroup v2 subtrees, filtered
//! in the kernel (`agent-ebpf/src/filter.rs`) so their syscalls and context
//! switches cost one lookup and touch no other map; and processes by
//! executable name or Kubernetes namespace, left out before export.
//!
//! The kernel checks the current task's cgroup id against `CGROUP_FILTER`.
//! This module fills it with the ids of the configured cgroups and of every
//! cgroup below them, and refreshes it every interval: a cgroup created
//! under a filtered one is filtered from the next interval on (until then
//! its tasks are measured in exclude mode, and not in include mode).
//! In-kernel filtering covers the syscalls signal, the sched signal's BTF
//! design and the tcp signal (by the cgroup of the socket's owner, since its
//! events come from softirq context; with an include list, events of
//! sockets without a known owner are left out). The raw-tracepoint sched
//! fallback, which counts a wait at switch-in from another task's context,
//! is not filtered in this version.

use std::{collections::HashSet, path::PathBuf};

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use hostscope_common::filter::{MODE_EXCLUDE, MODE_INCLUDE, MODE_OFF};
use thiserror::Error;
use tracing::{info, warn};

use crate::ebpf::{TakeMapError, take_map};

/// Filter settings (`filter.*`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FilterConfig {
    /// Measure only tasks in these cgroup v2 subtrees (paths from the
    /// cgroup2 root, e.g. `/kubepods.slice`).
    pub include_cgroups: Vec<String>,
    /// Do not measure tasks in these cgroup v2 subtrees.
    pub exclude_cgroups: Vec<String>,
    /// Do not export processes with these executable names.
    pub exclude_processes: Vec<String>,
    /// Do not export processes and cgroups of pods in these Kubernetes
    /// namespaces (known from the API; dropped before export).
    pub exclude_namespaces: Vec<String>,
}

impl FilterConfig {
    /// The kernel's `FILTER_MODE`.
    pub fn mode(&self) -> u32 {
        if !self.include_cgroups.is_empty() {
            MODE_INCLUDE
        } else if !self.exclude_cgroups.is_empty() {
            MODE_EXCLUDE
        } else {
            MODE_OFF
        }
    }

    fn paths(&self) -> &[String] {
        if self.include_cgroups.is_empty() {
            &self.exclude_cgroups
        } else {
            &self.include_cgroups
        }
    }

    /// Problems with the values, or None.
    pub fn check(&self) -> Result<(), String> {
        if !self.include_cgroups.is_empty() && !self.exclude_cgroups.is_empty() {
            return Err(
                "include_cgroups and exclude_cgroups cannot both be set: include the subtrees \
                 to measure, or exclude those not to"
                    .into(),
            );
        }
        if let Some(p) = self.paths().iter().find(|p| !p.starts_with('/')) {
            return Err(format!(
                "{p:?} is not a cgroup v2 path: expected one from the cgroup2 root, starting with / \
                 (e.g. /kubepods.slice), as in the 0:: line of /proc/<pid>/cgroup"
            ));
        }
        if self.exclude_processes.iter().any(|n| n.trim().is_empty()) {
            return Err("an executable name in exclude_processes is empty".into());
        }
        if self.exclude_namespaces.iter().any(|n| n.trim().is_empty()) {
            return Err("a namespace in exclude_namespaces is empty".into());
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum FilterError {
    #[error(
        "filtering by cgroup needs the cgroup2 file system mounted (no cgroup2 line in \
         /proc/self/mountinfo); the kernel tells cgroups apart by their cgroup v2 id"
    )]
    NoCgroup2,
    #[error(transparent)]
    Map(#[from] TakeMapError),
}

/// The kernel's cgroup filter map, kept in step with the cgroup tree.
pub struct CgroupFilter {
    root: PathBuf,
    paths: Vec<String>,
    map: HashMap<MapData, u64, u32>,
    ids: HashSet<u64>,
    /// Cgroups that did not fit in the map (cumulative, per interval).
    pub over_capacity: u64,
}

/// Whether cgroup `path` is `top` or below it.
fn under(path: &str, top: &str) -> bool {
    let top = top.trim_end_matches('/');
    top.is_empty() || path == top || path.strip_prefix(top).is_some_and(|r| r.starts_with('/'))
}

impl CgroupFilter {
    /// The filter for `cfg`, filled; None when no cgroup is configured.
    pub fn start(ebpf: &mut Ebpf, cfg: &FilterConfig) -> Result<Option<Self>, FilterError> {
        if cfg.mode() == MODE_OFF {
            return Ok(None);
        }
        let root = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| crate::signals::sched::cgroup2_mount(&m))
            .ok_or(FilterError::NoCgroup2)?;
        let mut f = Self {
            root,
            paths: cfg.paths().to_vec(),
            map: take_map(ebpf, "CGROUP_FILTER")?,
            ids: HashSet::new(),
            over_capacity: 0,
        };
        let n = f.refresh();
        info!(
            mode = if cfg.mode() == MODE_INCLUDE {
                "include"
            } else {
                "exclude"
            },
            paths = f.paths.join(","),
            cgroups = n,
            "cgroup filter set in the kernel"
        );
        Ok(Some(f))
    }

    /// Puts the ids of the configured subtrees' cgroups in the map and
    /// takes out those of removed cgroups; returns how many are in it.
    pub fn refresh(&mut self) -> usize {
        let tree = crate::signals::sched::walk(&self.root);
        let want: HashSet<u64> = tree
            .into_iter()
            .filter(|(_, path)| self.paths.iter().any(|top| under(path, top)))
            .map(|(id, _)| id)
            .collect();
        for gone in self.ids.difference(&want).copied().collect::<Vec<_>>() {
            let _ = self.map.remove(&gone);
            self.ids.remove(&gone);
        }
        for id in want {
            if self.ids.contains(&id) {
                continue;
            }
            match self.map.insert(id, 1, 0) {
                Ok(()) => {
                    self.ids.insert(id);
                }
                Err(e) => {
                    if self.over_capacity == 0 {
                        warn!("cgroup filter map full ({e}); further cgroups are not filtered");
                    }
                    self.over_capacity += 1;
                }
            }
        }
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtrees_match_whole_components() {
        assert!(under("/a/b", "/a"));
        assert!(under("/a", "/a"));
        assert!(under("/a", "/a/"));
        assert!(!under("/ab", "/a"));
        assert!(under("/anything", "/"));
    }

    #[test]
    fn include_and_exclude_are_exclusive_and_paths_absolute() {
        let mut c = FilterConfig {
            include_cgroups: vec!["/a".into()],
            exclude_cgroups: vec!["/b".into()],
            ..Default::default()
        };
        assert!(c.check().unwrap_err().contains("cannot both be set"));
        c.exclude_cgroups.clear();
        assert_eq!(c.mode(), MODE_INCLUDE);
        c.include_cgroups = vec!["kubepods.slice".into()];
        assert!(c.check().unwrap_err().contains("not a cgroup v2 path"));
    }
}
