//! Cgroups the tests create, fill with busy processes and remove.
//!
//! [`TestCgroup`]'s `Drop` kills and reaps the processes it started, then
//! removes the directory, also when the test panics.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Where the cgroup hierarchies are mounted, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// The cgroup v1 hierarchy with the `cpu` controller (hybrid or v1 hosts).
    pub v1_cpu: Option<PathBuf>,
    /// The cgroup2 tree.
    pub v2: Option<PathBuf>,
}

impl Layout {
    pub fn detect() -> Layout {
        let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
        let mut l = Layout::default();
        for line in text.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            if left.len() < 5 || right.len() < 3 || left[3] != "/" {
                continue;
            }
            let mount = PathBuf::from(left[4]);
            match right[0] {
                "cgroup2" if l.v2.is_none() => l.v2 = Some(mount),
                "cgroup" if l.v1_cpu.is_none() && right[2].split(',').any(|o| o == "cpu") => {
                    l.v1_cpu = Some(mount)
                }
                _ => {}
            }
        }
        l
    }

    /// The hierarchy with the cpu controller: v1's, else cgroup2 (pure v2).
    pub fn cpu(&self) -> (PathBuf, u8) {
        match (&self.v1_cpu, &self.v2) {
            (Some(p), _) => (p.clone(), 1),
            (None, Some(p)) => (p.clone(), 2),
            (None, None) => panic!("no cgroup hierarchy with the cpu controller"),
        }
    }
}

/// `<root>/<name>`, removed on drop after its processes are killed.
pub struct TestCgroup {
    pub dir: PathBuf,
    /// The path relative to the hierarchy's root, as hostscope reports it.
    pub path: String,
    children: Vec<Child>,
}

impl TestCgroup {
    /// Creates `<root>/<name>` (removing a leftover of the same name).
    pub fn create(root: &Path, name: &str) -> TestCgroup {
        let dir = root.join(name);
        if dir.exists() {
            let _ = std::fs::remove_dir(&dir);
        }
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
        TestCgroup {
            dir,
            path: format!("/{name}"),
            children: Vec::new(),
        }
    }

    pub fn write(&self, file: &str, value: &str) {
        let p = self.dir.join(file);
        std::fs::write(&p, value)
            .unwrap_or_else(|e| panic!("write {value:?} to {}: {e}", p.display()));
    }

    pub fn read(&self, file: &str) -> String {
        let p = self.dir.join(file);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    /// `name value` lines of a file such as `cpu.stat`.
    pub fn stat(&self, file: &str, key: &str) -> u64 {
        let text = self.read(file);
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {}/{file}:\n{text}", self.dir.display()))
    }

    /// `total=` of the `some` (or `full`) line of a pressure file, in µs.
    pub fn pressure_total(&self, file: &str, kind: &str) -> u64 {
        psi_total(&self.read(file), kind)
            .unwrap_or_else(|| panic!("no {kind} total in {}/{file}", self.dir.display()))
    }

    /// Starts a shell busy loop (pinned to `cpu` with `taskset` if given)
    /// and moves it into this cgroup; returns its pid.
    pub fn spawn_busy(&mut self, cpu: Option<u32>) -> u32 {
        let mut cmd = match cpu {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", &c.to_string(), "sh"]);
                cmd
            }
            None => Command::new("sh"),
        };
        let child = cmd
            .args(["-c", "while :; do :; done"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn a sh busy loop");
        let pid = child.id();
        self.children.push(child);
        self.write("cgroup.procs", &pid.to_string());
        pid
    }

    /// Kills and reaps the processes this cgroup was given; afterwards the
    /// cgroup is empty.
    pub fn stop_children(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for mut c in self.children.drain(..) {
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.read("cgroup.procs").trim().is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for mut c in self.children.drain(..) {
            let _ = c.wait();
        }
        // A cgroup whose last task just exited can be busy for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("could not remove cgroup {}: {e}", self.dir.display());
                    return;
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// `total=` of the `kind` (`some`/`full`) line of PSI text, in µs.
pub fn psi_total(text: &str, kind: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(kind))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("total=")?.parse().ok())
}

/// Cgroup directories of a test's own (named as the kubelet and container
/// runtimes name theirs), created top-down; on drop, processes still in them are moved
/// to the hierarchy's root and the directories removed bottom-up.
pub struct Tree {
    root: PathBuf,
    dirs: Vec<PathBuf>,
}

impl Tree {
    /// Creates `<root>/<rel>` component by component; returns the leaf.
    pub fn create(root: &Path, rel: &str) -> Tree {
        let mut t = Tree {
            root: root.to_path_buf(),
            dirs: Vec::new(),
        };
        let mut dir = root.to_path_buf();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            dir.push(comp);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
                t.dirs.push(dir.clone());
            }
        }
        t
    }

    pub fn leaf(&self) -> &Path {
        self.dirs.last().expect("a created cgroup")
    }

    pub fn enter(&self, pid: u32) {
        let procs = self.leaf().join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", procs.display()));
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= deadline => {
                        eprintln!("could not remove cgroup {}: {e}", dir.display());
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}

/// The process's cgroup v2 path (`0::` line of `/proc/<pid>/cgroup`).
pub fn v2_path(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .expect("a cgroup v2 line")
}
