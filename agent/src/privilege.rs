//! Dropping privilege once the programs are attached.
//!
//! Loading and attaching need `CAP_BPF` and `CAP_PERFMON` (or
//! `CAP_SYS_ADMIN`); what the agent does afterwards does not: it reads maps
//! and ring buffers through the file descriptors it already holds, asks the
//! kernel for program run statistics by descriptor, reads /proc and cgroup
//! files and talks to the network. So after attaching, the agent empties its
//! effective, permitted, inheritable and ambient sets, drops every
//! capability from the bounding set (when it holds `CAP_SETPCAP`, as root
//! does) and sets `no_new_privs`, so neither it nor anything it could exec
//! gets capabilities back: a compromised agent cannot load new programs.
//!
//! One exception, found by asking the kernel rather than by version: before
//! Linux 5.19, `kernel.unprivileged_bpf_disabled` (set by most distributions)
//! makes *every* bpf() command, map reads included, need `CAP_BPF`. The
//! agent clears its effective set, makes one bpf() call on a descriptor it
//! holds, and if the kernel refuses it keeps `CAP_BPF` (only that) and says
//! so in a warning.
//!
//! Capabilities belong to each thread: the HTTP listener's thread drops its
//! own ([`drop_thread`]); [`threads_holding_capabilities`] checks that no
//! thread of the process kept any.

use caps::{CapSet, Capability, CapsHashSet, errors::CapsError};
use thiserror::Error;

/// Why the capabilities could not be dropped.
#[derive(Debug, Error)]
pub enum PrivilegeError {
    #[error("reading the {set} capability set failed: {source}")]
    Read {
        set: &'static str,
        #[source]
        source: CapsError,
    },
    #[error("dropping capabilities from the {set} set failed: {source}")]
    Drop {
        set: &'static str,
        #[source]
        source: CapsError,
    },
    #[error("setting no_new_privs failed: {0}")]
    NoNewPrivs(#[source] std::io::Error),
    #[error("after dropping, the {set} set still holds {held}")]
    StillHeld { set: &'static str, held: String },
}

/// What [`drop_process`] did.
#[derive(Debug)]
pub struct Dropped {
    /// The permitted set before, by name (what the agent gave up, plus
    /// `kept`).
    pub permitted_before: Vec<Capability>,
    /// Capabilities removed from the bounding set; None when the agent
    /// lacks `CAP_SETPCAP` to do it (no_new_privs covers that case).
    pub bounding_dropped: Option<usize>,
    /// Kept because this kernel wants it for reading maps.
    pub kept: Option<Capability>,
}

/// Raises the permitted capabilities into the effective set, at start-up,
/// before any thread exists (threads inherit the set).
///
/// The container image's binary carries `cap_bpf,cap_perfmon=p`: Kubernetes
/// gives a non-root container process its added capabilities in the bounding
/// and permitted sets but no ambient set, so only file capabilities survive
/// the exec, and they arrive permitted, not effective. Without the effective
/// bit on the file, a container lacking one of them still starts (instead of
/// exec failing with EPERM) and the agent names what is missing. A no-op when
/// both sets are equal (root, systemd's ambient capabilities); a failure is
/// left for loading to report.
pub fn raise_permitted() {
    if let Ok(permitted) = caps::read(None, CapSet::Permitted)
        && caps::read(None, CapSet::Effective).is_ok_and(|e| e != permitted)
    {
        let _ = caps::set(None, CapSet::Effective, &permitted);
    }
}

/// Names, sorted by capability number: `CAP_BPF,CAP_PERFMON`.
pub fn names(caps: &[Capability]) -> String {
    if caps.is_empty() {
        return "none".into();
    }
    caps.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn sorted(set: &CapsHashSet) -> Vec<Capability> {
    let mut v: Vec<Capability> = set.iter().copied().collect();
    v.sort_by_key(|c| c.index());
    v
}

fn read(cset: CapSet, set: &'static str) -> Result<CapsHashSet, PrivilegeError> {
    caps::read(None, cset).map_err(|source| PrivilegeError::Read { set, source })
}

/// Drops every capability of the calling thread from all five sets, except
/// `keep`. Returns how many left the bounding set (None: not allowed).
fn drop_sets(keep: &CapsHashSet) -> Result<Option<usize>, PrivilegeError> {
    let permitted = read(CapSet::Permitted, "permitted")?;
    let drop_err = |set| move |source| PrivilegeError::Drop { set, source };
    // The bounding set first: it needs CAP_SETPCAP, which goes next.
    let bounding_dropped = if permitted.contains(&Capability::CAP_SETPCAP) {
        caps::raise(None, CapSet::Effective, Capability::CAP_SETPCAP)
            .map_err(drop_err("effective"))?;
        let mut n = 0;
        for c in sorted(&read(CapSet::Bounding, "bounding")?) {
            if !keep.contains(&c) {
                caps::drop(None, CapSet::Bounding, c).map_err(drop_err("bounding"))?;
                n += 1;
            }
        }
        Some(n)
    } else {
        None
    };
    if caps::runtime::ambient_set_supported().is_ok() {
        caps::clear(None, CapSet::Ambient).map_err(drop_err("ambient"))?;
    }
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(drop_err("inheritable"))?;
    let keep: CapsHashSet = keep.intersection(&permitted).copied().collect();
    // Effective must stay within permitted: lower it first.
    caps::set(None, CapSet::Effective, &keep).map_err(drop_err("effective"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(drop_err("permitted"))?;
    // No exec can give capabilities back (setuid-root or file capabilities).
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivilegeError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    for (cset, set) in [
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Ambient, "ambient"),
    ] {
        if matches!(cset, CapSet::Ambient) && caps::runtime::ambient_set_supported().is_err() {
            continue;
        }
        let now = read(cset, set)?;
        if !now.is_subset(&keep) {
            return Err(PrivilegeError::StillHeld {
                set,
                held: names(&sorted(&now)),
            });
        }
    }
    Ok(bounding_dropped)
}

/// Drops every capability of the calling (main) thread. `map_access` makes
/// one bpf() call on a descriptor the agent holds; it is tried with an empty
/// effective set to learn whether this kernel still needs `CAP_BPF` for
/// reading maps (before Linux 5.19, with unprivileged BPF disabled).
pub fn drop_process(
    map_access: impl Fn() -> std::io::Result<()>,
) -> Result<Dropped, PrivilegeError> {
    let permitted = read(CapSet::Permitted, "permitted")?;
    let effective = read(CapSet::Effective, "effective")?;
    let mut keep = CapsHashSet::new();
    if permitted.contains(&Capability::CAP_BPF) || permitted.contains(&Capability::CAP_SYS_ADMIN) {
        let drop_err = |source| PrivilegeError::Drop {
            set: "effective",
            source,
        };
        caps::clear(None, CapSet::Effective).map_err(drop_err)?;
        let probe = map_access();
        caps::set(None, CapSet::Effective, &effective).map_err(drop_err)?;
        match probe {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                // CAP_BPF where the kernel knows it (5.8+), else CAP_SYS_ADMIN.
                let cap = if permitted.contains(&Capability::CAP_BPF) {
                    Capability::CAP_BPF
                } else {
                    Capability::CAP_SYS_ADMIN
                };
                keep.insert(cap);
            }
            Err(e) => tracing::debug!("bpf() without capabilities: {e}"),
            Ok(()) => {}
        }
    }
    let bounding_dropped = drop_sets(&keep)?;
    Ok(Dropped {
        permitted_before: sorted(&permitted),
        bounding_dropped,
        kept: keep.into_iter().next(),
    })
}

/// Drops every capability of the calling thread (a helper thread that never
/// needs any).
pub fn drop_thread() -> Result<(), PrivilegeError> {
    drop_sets(&CapsHashSet::new()).map(|_| ())
}

/// Threads of this process whose effective or permitted set is not empty
/// (beyond `allowed`), as `tid (name)`.
pub fn threads_holding_capabilities(allowed: Option<Capability>) -> Vec<String> {
    let allowed_mask = allowed.map_or(0, |c| c.bitmask());
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0)
        };
        if (field("CapEff:") | field("CapPrm:")) & !allowed_mask != 0 {
            let name = status
                .lines()
                .find_map(|l| l.strip_prefix("Name:"))
                .unwrap_or("")
                .trim()
                .to_string();
            out.push(format!("{} ({name})", entry.file_name().to_string_lossy()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs in a thread of its own: dropping is per thread, so the test
    /// process keeps whatever it had.
    #[test]
    fn a_thread_drops_everything_it_holds() {
        std::thread::spawn(|| {
            drop_thread().unwrap();
            for cset in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
                assert!(caps::read(None, cset).unwrap().is_empty(), "{cset:?}");
            }
            // Raising anything now fails.
            assert!(caps::raise(None, CapSet::Effective, Capability::CAP_BPF).is_err());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn names_are_sorted_by_number() {
        let mut s = CapsHashSet::new();
        s.insert(Capability::CAP_PERFMON);
        s.insert(Capability::CAP_BPF);
        s.insert(Capability::CAP_SYS_ADMIN);
        assert_eq!(
            names(&sorted(&s)),
            "CAP_SYS_ADMIN,CAP_PERFMON,CAP_BPF",
            "by capability number"
        );
        assert_eq!(names(&[]), "none");
    }
}
