//! The agent: loads and attaches the signals, then every interval drains them,
//! attaches identity and hands OTLP requests to the exporters.

use std::{sync::Arc, time::Duration};

use anyhow::{Result, anyhow};
use aya::Ebpf;
use opentelemetry_proto::tonic::{
    collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::KeyValue,
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans},
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    config::Config,
    ebpf::{self, Attached, LoadSettings},
    export::Exporters,
    health::{self, Health},
    identity::{self, HostInfo, ProcessCache, ProcessInfo},
    k8s::PodMetadata,
    otlp::{self, Window},
    signals::{Collected, cgroups::Cgroups, oom::Oom, sched::Sched, syscalls::Syscalls, tcp::Tcp},
};

/// Bytes of one `SYSCALL_STATS` value on one CPU.
const STATS_VALUE_BYTES: u64 = size_of::<hostscope_common::syscalls::SyscallStats>() as u64;

pub struct Agent {
    cfg: Config,
    host: HostInfo,
    /// Pod names, namespaces, labels and container names of this node's
    /// pods, kept current by a watcher task (empty without API access).
    pods: PodMetadata,
    cache: ProcessCache,
    budget: crate::budget::Budget,
    /// The kernel's cgroup filter, refreshed every interval.
    cgroup_filter: Option<crate::filter::CgroupFilter>,
    exporters: Exporters,
    /// Keeps the programs attached; dropping it detaches them.
    _ebpf: Option<Ebpf>,
    syscalls: Option<Syscalls>,
    tcp: Option<Tcp>,
    sched: Option<Sched>,
    oom: Option<Oom>,
    /// Plain file reader, no kernel program.
    cgroups: Option<Cgroups>,
    started_unix_nano: u64,
    /// Everything attached, for self-telemetry.
    attached: Vec<Attached>,
    /// What `/healthz` and `/readyz` report.
    health: Arc<Health>,
    /// SIGINT and SIGTERM, caught from the start: one that arrives while
    /// attaching is handled (flush and clean exit) once the loop runs.
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
    /// SIGHUP: re-read the configuration (`reload`).
    sighup: tokio::signal::unix::Signal,
    /// Builds the configuration again from the same flags, file and
    /// environment; None: nothing to reload from.
    reload: Option<Reload>,
}

/// Builds the configuration again (for SIGHUP).
pub type Reload = Box<dyn Fn() -> Result<Config, crate::config::ConfigError>>;

impl Agent {
    /// Starts the HTTP listener, loads and attaches what it can (a signal
    /// that fails is logged in one line and the rest keeps running), then
    /// drops every capability unless told to keep them. Fails only when the
    /// capabilities cannot be dropped.
    pub fn start(cfg: Config) -> Result<Self> {
        let sigint = signal(SignalKind::interrupt())?;
        let sigterm = signal(SignalKind::terminate())?;
        let sighup = signal(SignalKind::hangup())?;
        let started_unix_nano = identity::now_unix_nano();
        let exporters = Exporters::start(&cfg);
        let health = Health::new(cfg.interval);
        if let Some(addr) = cfg.listen {
            health::start(
                addr,
                health.clone(),
                exporters.prometheus(),
                !cfg.keep_capabilities,
            );
        }
        // The watcher runs on this runtime between intervals; collection
        // only reads the index it fills.
        let pods = crate::k8s::start(&cfg.kubernetes);
        let mut agent = Self {
            host: HostInfo::read(),
            pods,
            cache: {
                let mut c = ProcessCache::new();
                c.set_command_line(
                    cfg.command_line
                        .then_some(cfg.command_line_max_bytes as usize),
                );
                c
            },
            budget: crate::budget::Budget::new(cfg.budget.clone()),
            cgroup_filter: None,
            exporters,
            _ebpf: None,
            syscalls: None,
            tcp: None,
            sched: None,
            oom: None,
            cgroups: None,
            started_unix_nano,
            attached: Vec::new(),
            health,
            sigint,
            sigterm,
            sighup,
            reload: None,
            cfg,
        };
        agent.load();
        if agent.cfg.cgroups.enabled {
            agent.cgroups = Cgroups::start(&agent.cfg.cgroups, started_unix_nano);
        }
        agent.health.attached(agent.signals_summary());
        agent.drop_privilege()?;
        Ok(agent)
    }

    /// Which enabled signals run and which failed, for `/readyz`.
    fn signals_summary(&self) -> String {
        let c = &self.cfg;
        let signals = [
            ("syscalls", c.syscalls.enabled, self.syscalls.is_some()),
            ("tcp", c.tcp.enabled, self.tcp.is_some()),
            ("sched", c.sched_enabled, self.sched.is_some()),
            ("oom", c.oom_enabled, self.oom.is_some()),
            ("cgroups", c.cgroups.enabled, self.cgroups.is_some()),
        ];
        let list = |up: bool| {
            let v: Vec<&str> = signals
                .iter()
                .filter(|(_, enabled, running)| *enabled && *running == up)
                .map(|(name, _, _)| *name)
                .collect();
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        format!("signals running: {}; failed: {}", list(true), list(false))
    }

    /// After attaching: gives up every capability (see `crate::privilege`),
    /// or says which are kept.
    fn drop_privilege(&self) -> Result<()> {
        if self.cfg.keep_capabilities {
            let held = caps::read(None, caps::CapSet::Permitted)
                .map(|s| {
                    let mut v: Vec<_> = s.into_iter().collect();
                    v.sort_by_key(|c| c.index());
                    crate::privilege::names(&v)
                })
                .unwrap_or_else(|e| e.to_string());
            info!(kept = held, "capabilities kept (--keep-capabilities)");
            return Ok(());
        }
        // One bpf() call on a descriptor the agent holds: the run statistics
        // of an attached program (what self-telemetry asks every interval).
        let probe = || -> std::io::Result<()> {
            let (Some(obj), Some(a)) = (self._ebpf.as_ref(), self.attached.first()) else {
                return Ok(());
            };
            let Some(p) = obj.program(&a.program) else {
                return Ok(());
            };
            p.info().map(|_| ()).map_err(|e| {
                let mut source: Option<&dyn std::error::Error> = Some(&e);
                while let Some(s) = source {
                    if let Some(io) = s.downcast_ref::<std::io::Error>() {
                        return std::io::Error::from_raw_os_error(io.raw_os_error().unwrap_or(0));
                    }
                    source = s.source();
                }
                std::io::Error::other(e.to_string())
            })
        };
        let d = crate::privilege::drop_process(probe).map_err(|e| {
            anyhow!(
                "cannot drop capabilities after attaching: {e}; refusing to run with them \
                 (--keep-capabilities or keep_capabilities: true runs with them)"
            )
        })?;
        let given_up: Vec<caps::Capability> = d
            .permitted_before
            .iter()
            .copied()
            .filter(|c| Some(*c) != d.kept)
            .collect();
        info!(
            dropped = crate::privilege::names(&given_up),
            bounding_set = match d.bounding_dropped {
                Some(n) => format!("{n} dropped"),
                None => "unchanged (no CAP_SETPCAP; no_new_privs is set)".to_string(),
            },
            "capabilities dropped after attaching: effective, permitted, inheritable and \
             ambient sets empty, no_new_privs set"
        );
        if let Some(k) = d.kept {
            warn!(
                "kept {k}: this kernel refuses bpf() calls on the agent's own map and program \
                 descriptors without it (kernel.unprivileged_bpf_disabled before Linux 5.19); \
                 every other capability is dropped"
            );
        }
        let threads = crate::privilege::threads_holding_capabilities(d.kept);
        if !threads.is_empty() {
            return Err(anyhow!(
                "capabilities dropped on the main thread, but threads {} still hold some; \
                 refusing to run with them",
                threads.join(", ")
            ));
        }
        Ok(())
    }

    fn load(&mut self) {
        if !self.cfg.syscalls.enabled && !self.cfg.tcp.enabled && !self.cfg.sched_enabled {
            info!("no eBPF signal enabled; exporting self-telemetry and file-based signals only");
            return;
        }
        ebpf::raise_memlock_rlimit();
        let s = &self.cfg.syscalls;
        let cpus = aya::util::nr_cpus().unwrap_or(1).max(1) as u64;
        let stats_capacity = s.max_series.unwrap_or_else(|| {
            (s.kernel_memory_budget / (STATS_VALUE_BYTES * cpus)).clamp(256, 65_536) as u32
        });
        // The kernel's BTF, parsed once for every signal's offsets (each
        // parse allocates several MiB that the allocator keeps).
        let kbtf = crate::btf::KernelBtf::load().map_err(|e| e.to_string());
        let kbtf = kbtf.as_ref().map_err(String::clone);
        let oom_variant = if self.cfg.oom_enabled {
            match kbtf
                .clone()
                .and_then(|btf| crate::signals::oom::resolve(btf).map_err(|e| e.to_string()))
            {
                Ok(v) => Some(v),
                Err(e) => {
                    error!("oom signal not attached: {e}");
                    None
                }
            }
        } else {
            None
        };
        let (sched_offsets, sched_no_info) = self.sched_offsets(kbtf.clone());
        let settings = LoadSettings {
            agent_tgid: std::process::id(),
            slow_threshold_ns: s
                .slow_threshold
                .map_or(u64::MAX, |d| d.as_nanos().min(u64::MAX as u128) as u64),
            slow_events_per_cpu_per_sec: s.slow_events_per_cpu_per_sec.into(),
            syscall_series: stats_capacity,
            syscall_error_series: s.max_error_series,
            inflight_threads: s.max_inflight_threads,
            tcp_offsets: self.tcp_offsets(kbtf.clone()),
            tcp_per_connection: self.cfg.tcp.per_connection,
            tcp_events_per_cpu_per_sec: self.cfg.tcp.events_per_cpu_per_sec.into(),
            tcp_series: self.cfg.tcp.max_series,
            tcp_sockets: self.cfg.tcp.max_sockets,
            sched_offsets,
            oom_offsets: oom_variant.map(|(_, o)| o).unwrap_or_default(),
            filter_mode: self.cfg.filter.mode(),
            proc_offsets: kbtf
                .clone()
                .and_then(|btf| {
                    crate::signals::procs::resolve_offsets(btf).map_err(|e| e.to_string())
                })
                .unwrap_or_else(|e| {
                    warn!(
                        "process identity from fork and exec events is off ({e}); processes \
                         gone before procfs is read are named by comm"
                    );
                    Default::default()
                }),
        };
        let mut obj = match ebpf::load(&settings) {
            Ok(obj) => obj,
            Err(e) => {
                error!("no signal attached: {e}");
                return;
            }
        };
        // The filter is filled before anything is attached, so filtered
        // tasks are never measured.
        match crate::filter::CgroupFilter::start(&mut obj, &self.cfg.filter) {
            Ok(f) => self.cgroup_filter = f,
            Err(e) => {
                error!("no signal attached: {e}");
                return;
            }
        }
        let btf = ebpf::kernel_btf();
        // Identity first: processes born while the signals attach are
        // recorded too.
        if settings.proc_offsets.valid == 1 {
            match crate::signals::procs::start(&mut obj, btf.as_ref(), self.cfg.hook_type) {
                Ok((programs, records)) => {
                    info!(
                        hook = programs[0].hook.as_str(),
                        "process identity from fork and exec events attached"
                    );
                    self.cache.set_kernel_records(records);
                    self.attached.extend(programs);
                }
                Err(e) => warn!(
                    "process identity from fork and exec events not attached ({e}); processes \
                     gone before procfs is read are named by comm"
                ),
            }
        }
        if settings.tcp_offsets.valid == 1 {
            match Tcp::start(
                &mut obj,
                btf.as_ref(),
                &self.cfg.tcp,
                self.cfg.hook_type,
                self.started_unix_nano,
            ) {
                Ok(t) => {
                    let hooks: Vec<String> = t
                        .programs
                        .iter()
                        .map(|p| {
                            // Which variant: with the error argument (6.10+) or not.
                            let err = if p.program.contains("_err_") {
                                "+err"
                            } else {
                                ""
                            };
                            format!(
                                "{}={}{err}",
                                p.label.trim_start_matches("tcp/"),
                                p.hook.as_str()
                            )
                        })
                        .collect();
                    info!(
                        hooks = hooks.join(" "),
                        per_connection = self.cfg.tcp.per_connection,
                        max_series = self.cfg.tcp.max_series,
                        "tcp signal attached"
                    );
                    self.attached.extend(t.programs.iter().cloned());
                    self.tcp = Some(t);
                }
                Err(e) => error!("tcp signal not attached: {e}"),
            }
        }
        if settings.sched_offsets.valid == 1 {
            match Sched::start(
                &mut obj,
                btf.as_ref(),
                self.cfg.hook_type,
                sched_no_info.as_deref(),
                self.started_unix_nano,
            ) {
                Ok(s) => {
                    let hook = |label: &str| {
                        s.programs
                            .iter()
                            .find(|p| p.label == label)
                            .map_or("off", |p| p.hook.as_str())
                    };
                    info!(
                        sched_wakeup = hook("sched/sched_wakeup"),
                        sched_switch = hook("sched/sched_switch"),
                        waits = if s.programs.len() == 1 {
                            "kernel sched_info"
                        } else {
                            "timed at wake-up"
                        },
                        "sched signal attached"
                    );
                    self.attached.extend(s.programs.iter().cloned());
                    self.sched = Some(s);
                }
                Err(e) => error!("sched signal not attached: {e}"),
            }
        }
        if let Some((variant, _)) = oom_variant {
            match Oom::start(
                &mut obj,
                btf.as_ref(),
                self.cfg.hook_type,
                variant,
                self.started_unix_nano,
            ) {
                Ok(o) => {
                    info!(
                        hook = o.programs[0].hook.as_str(),
                        argument = ?variant,
                        "oom signal attached"
                    );
                    self.attached.extend(o.programs.iter().cloned());
                    self.oom = Some(o);
                }
                Err(e) => error!("oom signal not attached: {e}"),
            }
        }
        if !self.cfg.syscalls.enabled {
            self._ebpf = Some(obj);
            return;
        }
        match Syscalls::start(
            &mut obj,
            btf.as_ref(),
            s,
            self.cfg.hook_type,
            stats_capacity,
            self.started_unix_nano,
        ) {
            Ok(sc) => {
                let hook = |label: &str| {
                    sc.programs
                        .iter()
                        .find(|p| p.label == label)
                        .map_or("off", |p| p.hook.as_str())
                };
                info!(
                    sys_enter = hook("syscalls/sys_enter"),
                    sys_exit = hook("syscalls/sys_exit"),
                    sched_switch = hook("syscalls/sched_switch"),
                    max_series = stats_capacity,
                    kernel_bytes = stats_capacity as u64 * STATS_VALUE_BYTES * cpus,
                    "syscalls signal attached"
                );
                self.attached.extend(sc.programs.iter().cloned());
                self.syscalls = Some(sc);
            }
            Err(e) => error!("syscalls signal not attached: {e}"),
        }
        self._ebpf = Some(obj);
    }

    /// Field offsets for the tcp programs from the running kernel's BTF;
    /// without them the tcp signal stays off, saying why.
    fn tcp_offsets(
        &self,
        kbtf: Result<&crate::btf::KernelBtf, String>,
    ) -> hostscope_common::tcp::TcpOffsets {
        if !self.cfg.tcp.enabled {
            return Default::default();
        }
        let resolved = kbtf
            .and_then(|btf| crate::signals::tcp::resolve_offsets(btf).map_err(|e| e.to_string()));
        match resolved {
            Ok(o) => o,
            Err(e) => {
                error!(
                    "tcp signal not attached: it reads kernel struct fields located through the \
                     kernel's BTF, and {e}"
                );
                Default::default()
            }
        }
    }

    /// Field offsets for the sched programs from the running kernel's BTF,
    /// and why the BTF design is unusable, if it is.
    fn sched_offsets(
        &self,
        kbtf: Result<&crate::btf::KernelBtf, String>,
    ) -> (hostscope_common::sched::SchedOffsets, Option<String>) {
        if !self.cfg.sched_enabled {
            return Default::default();
        }
        let loaded_ns = crate::identity::monotonic_ns();
        let resolved = kbtf.and_then(|btf| {
            crate::signals::sched::resolve_offsets(btf, loaded_ns).map_err(|e| e.to_string())
        });
        match resolved {
            Ok(o) => o,
            Err(e) => {
                error!(
                    "sched signal not attached: it reads task fields located through the \
                     kernel's BTF, and {e}"
                );
                Default::default()
            }
        }
    }

    /// Lets SIGHUP re-read the configuration with `reload`.
    pub fn with_reload(mut self, reload: Reload) -> Self {
        self.reload = Some(reload);
        self
    }

    /// SIGHUP: builds the configuration again and applies what can change
    /// while running (the interval, cardinality limits and granularities,
    /// the cgroup bound); a change to anything else is reported as needing
    /// a restart and not applied. A configuration that does not build is
    /// reported and the running one kept. Returns the new interval, if it
    /// changed.
    fn reload(&mut self) -> Option<Duration> {
        let Some(build) = self.reload.as_ref() else {
            info!("SIGHUP: no configuration to reload from; ignored");
            return None;
        };
        let new = match build() {
            Ok(c) => c,
            Err(e) => {
                error!("SIGHUP: configuration not reloaded, the running one is kept: {e}");
                return None;
            }
        };
        let mut applied = Vec::new();
        let old_interval = self.cfg.interval;
        if new.interval != self.cfg.interval {
            applied.push("interval");
        }
        if new.budget != self.cfg.budget {
            applied.push("limits and granularity");
            self.budget.set_config(new.budget.clone());
        }
        if new.cgroups.max_cgroups != self.cfg.cgroups.max_cgroups {
            applied.push("cgroups.max_cgroups");
            if let Some(c) = self.cgroups.as_mut() {
                c.set_max_cgroups(new.cgroups.max_cgroups);
            }
        }
        let restart = crate::config::needs_restart(&self.cfg, &new);
        for what in &restart {
            warn!(
                "SIGHUP: {what} changed; it takes effect only after a restart (running value kept)"
            );
        }
        let mut kept = self.cfg.clone();
        kept.interval = new.interval;
        kept.budget = new.budget;
        kept.cgroups.max_cgroups = new.cgroups.max_cgroups;
        self.cfg = kept;
        if applied.is_empty() {
            info!(
                needs_restart = restart.len(),
                "SIGHUP: configuration reloaded; nothing that can change at run time changed"
            );
        } else {
            info!(
                applied = applied.join(", "),
                needs_restart = restart.len(),
                "SIGHUP: configuration reloaded"
            );
        }
        (self.cfg.interval != old_interval).then_some(self.cfg.interval)
    }

    /// Runs until the configured duration ends or SIGINT/SIGTERM arrives, then
    /// exports the last interval and detaches.
    pub async fn run(mut self) -> Result<()> {
        let deadline = self.cfg.duration.map(|d| tokio::time::Instant::now() + d);
        let mut ticker = tokio::time::interval(self.cfg.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate: export after one interval
        loop {
            let events = async {
                match self.syscalls.as_mut() {
                    Some(s) => s.drain_events().await,
                    None => std::future::pending().await,
                }
            };
            let oom_events = async {
                match self.oom.as_mut() {
                    Some(o) => o.drain_events(&mut self.cache).await,
                    None => std::future::pending().await,
                }
            };
            let tcp_events = async {
                match self.tcp.as_mut() {
                    Some(t) => t.drain_events().await,
                    None => std::future::pending().await,
                }
            };
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ticker.tick() => self.export_interval(),
                () = events => {}
                () = tcp_events => {}
                () = oom_events => {}
                _ = self.sighup.recv() => {
                    if let Some(every) = self.reload() {
                        ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        self.health.set_interval(every);
                    }
                }
                _ = self.sigint.recv() => {
                    info!("SIGINT: flushing and detaching");
                    self.health.stopping("SIGINT");
                    break;
                }
                _ = self.sigterm.recv() => {
                    info!("SIGTERM: flushing and detaching");
                    self.health.stopping("SIGTERM");
                    break;
                }
                () = until_deadline => {
                    info!("duration reached: flushing and detaching");
                    self.health.stopping("--duration reached");
                    break;
                }
            }
        }
        // Pick up events already in the ring buffer, then flush.
        if let Some(s) = self.syscalls.as_mut() {
            let _ = tokio::time::timeout(Duration::from_millis(50), s.drain_events()).await;
        }
        if let Some(t) = self.tcp.as_mut() {
            let _ = tokio::time::timeout(Duration::from_millis(50), t.drain_events()).await;
        }
        self.export_interval();
        let deadline = std::time::Instant::now() + self.cfg.shutdown_timeout;
        self.exporters.shutdown(deadline).await;
        Ok(())
    }

    fn export_interval(&mut self) {
        let now = identity::now_unix_nano();
        let mono_to_unix = identity::monotonic_to_unix_offset();
        let mut collected = Collected::default();
        let t0 = std::time::Instant::now();
        if let Some(s) = self.syscalls.as_mut() {
            s.collect(now, mono_to_unix, &mut self.cache, &mut collected);
        }
        if let Some(t) = self.tcp.as_mut() {
            t.collect(now, mono_to_unix, &mut self.cache, &mut collected);
        }
        if let Some(s) = self.sched.as_mut() {
            s.collect(now, &mut self.cache, &mut collected);
        }
        if let Some(o) = self.oom.as_mut() {
            o.collect(now, &mut collected);
        }
        if let Some(c) = self.cgroups.as_mut() {
            c.collect(now, &mut collected);
        }
        self.cache.end_interval();
        if let Some(f) = self.cgroup_filter.as_mut() {
            f.refresh();
            collected.agent.push(otlp::counter_metric(
                "hostscope.agent.dropped",
                "Measurements lost, by where they were lost",
                "{event}",
                vec![otlp::int_point(
                    vec![otlp::kv_str(
                        "hostscope.drop.reason",
                        "cgroup_filter_map_full",
                    )],
                    Window {
                        start_unix_nano: self.started_unix_nano,
                        time_unix_nano: now,
                    },
                    f.over_capacity,
                )],
            ));
        }
        if !self.cfg.filter.exclude_processes.is_empty() {
            let names = &self.cfg.filter.exclude_processes;
            collected
                .processes
                .retain(|_, b| !names.contains(&b.info.executable_name));
        }
        if !self.cfg.filter.exclude_namespaces.is_empty() {
            let excluded = |c: Option<&crate::container::ContainerIdentity>| {
                c.and_then(|c| self.pods.namespace(c))
                    .is_some_and(|ns| self.cfg.filter.exclude_namespaces.contains(&ns))
            };
            collected
                .processes
                .retain(|_, b| !excluded(b.info.container.as_ref()));
            collected
                .cgroups
                .retain(|path, _| !excluded(crate::container::from_cgroup_path(path).as_ref()));
        }
        let tb = std::time::Instant::now();
        self.budget
            .apply(&mut collected, now, self.started_unix_nano);
        let budget_ms = tb.elapsed().as_secs_f64() * 1e3;
        let t1 = std::time::Instant::now();
        let (metrics, traces) = self.requests(now, collected);
        let t2 = std::time::Instant::now();
        self.exporters.export(metrics, traces);
        self.health.interval_exported();
        // Read by `cargo xtask bench` to split the agent's CPU time by phase.
        tracing::debug!(
            collect_ms = (t1 - t0).as_secs_f64() * 1e3,
            budget_ms,
            build_ms = (t2 - t1).as_secs_f64() * 1e3,
            encode_ms = t2.elapsed().as_secs_f64() * 1e3,
            "interval exported"
        );
    }

    /// Kernel run count and time of each attached program, when the kernel
    /// keeps them (`sysctl kernel.bpf_stats_enabled=1`; off by default since
    /// it costs a little on every run).
    fn program_run_stats(&self, w: Window) -> Vec<opentelemetry_proto::tonic::metrics::v1::Metric> {
        let enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .is_ok_and(|s| s.trim() == "1");
        let Some(obj) = self._ebpf.as_ref().filter(|_| enabled) else {
            return Vec::new();
        };
        let (mut counts, mut times) = (Vec::new(), Vec::new());
        for a in &self.attached {
            if let Some((count, time)) = ebpf::run_stats(obj, &a.program) {
                counts.push(otlp::int_point(program_attrs(a), w, count));
                times.push(otlp::double_point(program_attrs(a), w, time.as_secs_f64()));
            }
        }
        vec![
            otlp::counter_metric(
                "hostscope.agent.program.runs",
                "Times each kernel program ran (kernel.bpf_stats_enabled)",
                "{run}",
                counts,
            ),
            otlp::counter_metric(
                "hostscope.agent.program.run.time",
                "Time spent in each kernel program (kernel.bpf_stats_enabled)",
                "s",
                times,
            ),
        ]
    }

    /// Host attributes plus the user's OTEL_RESOURCE_ATTRIBUTES (except
    /// `service.*`, which describe the agent), on every resource.
    fn host_attributes(&self) -> Vec<KeyValue> {
        let h = &self.host;
        let mut attrs = vec![otlp::kv_str("host.name", h.name.clone())];
        if let Some(id) = &h.id {
            attrs.push(otlp::kv_str("host.id", id.clone()));
        }
        attrs.push(otlp::kv_str("host.arch", h.arch));
        attrs.push(otlp::kv_str("os.type", "linux"));
        if let Some(v) = &h.os_version {
            attrs.push(otlp::kv_str("os.version", v.clone()));
        }
        if let Some(node) = &self.cfg.kubernetes.node_name {
            attrs.push(otlp::kv_str("k8s.node.name", node.clone()));
        }
        // Configured attributes win over detected ones (as the SDK merges
        // OTEL_RESOURCE_ATTRIBUTES over its detectors): in a pod, host.name
        // is the pod's hostname unless the DaemonSet gives the node's.
        for (k, v) in &self.cfg.resource_attributes {
            if k.starts_with("service.") {
                continue;
            }
            match attrs.iter_mut().find(|a| &a.key == k) {
                Some(a) => *a = otlp::kv_str(k, v.clone()),
                None => attrs.push(otlp::kv_str(k, v.clone())),
            }
        }
        attrs
    }

    fn process_attributes(&self, info: &ProcessInfo) -> Vec<KeyValue> {
        let mut attrs = self.host_attributes();
        attrs.push(otlp::kv_int("process.pid", info.pid.into()));
        if !info.executable_name.is_empty() {
            attrs.push(otlp::kv_str(
                "process.executable.name",
                info.executable_name.clone(),
            ));
        }
        if info.creation_time_unix_nano != 0 {
            attrs.push(otlp::kv_str(
                "process.creation.time",
                info.creation_time_iso8601(),
            ));
        }
        if let Some(path) = &info.executable_path {
            attrs.push(otlp::kv_str("process.executable.path", path.clone()));
        }
        if let Some(ppid) = info.parent_pid {
            attrs.push(otlp::kv_int("process.parent_pid", ppid.into()));
        }
        if let Some(owner) = &info.owner {
            attrs.push(otlp::kv_str("process.owner", owner.clone()));
        }
        if let Some(line) = &info.command_line {
            attrs.push(otlp::kv_str("process.command_line", line.clone()));
        }
        if let Some(c) = &info.container {
            attrs.extend(c.attributes());
            attrs.extend(self.pods.attributes(c));
        }
        attrs
    }

    fn requests(
        &self,
        now: u64,
        collected: Collected,
    ) -> (ExportMetricsServiceRequest, ExportTraceServiceRequest) {
        let mut resource_metrics = Vec::with_capacity(collected.processes.len() + 1);
        let mut resource_spans = Vec::new();
        let mut agent_metrics = collected.agent;
        let w = Window {
            start_unix_nano: self.started_unix_nano,
            time_unix_nano: now,
        };
        agent_metrics.push(otlp::gauge_metric(
            "hostscope.agent.program.attached",
            "Kernel programs attached, by program and hook type",
            "{program}",
            self.attached
                .iter()
                .map(|a| otlp::int_point(program_attrs(a), w, 1))
                .collect(),
        ));
        agent_metrics.extend(self.program_run_stats(w));
        agent_metrics.extend(self.exporters.self_metrics(w));
        let mut agent_attrs = self.host_attributes();
        agent_attrs.push(otlp::kv_str("service.name", self.cfg.service_name.clone()));
        for (k, v) in &self.cfg.resource_attributes {
            if k.starts_with("service.") && k != "service.name" && k != "service.version" {
                agent_attrs.push(otlp::kv_str(k, v.clone()));
            }
        }
        agent_attrs.push(otlp::kv_str("service.version", env!("CARGO_PKG_VERSION")));
        agent_attrs.push(otlp::kv_int("process.pid", std::process::id().into()));
        resource_metrics.push(otlp::resource_metrics(agent_attrs, agent_metrics));

        if !collected.host_spans.is_empty() {
            resource_spans.push(ResourceSpans {
                resource: Some(Resource {
                    attributes: self.host_attributes(),
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(otlp::scope()),
                    spans: collected.host_spans,
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        if !collected.host.is_empty() {
            resource_metrics.push(otlp::resource_metrics(
                self.host_attributes(),
                collected.host,
            ));
        }
        for (path, metrics) in collected.cgroups {
            if metrics.is_empty() {
                continue;
            }
            let mut attrs = self.host_attributes();
            if let Some(c) = crate::container::from_cgroup_path(&path) {
                attrs.extend(c.attributes());
                attrs.extend(self.pods.attributes(&c));
            }
            attrs.push(otlp::kv_str("hostscope.cgroup.path", path));
            resource_metrics.push(otlp::resource_metrics(attrs, metrics));
        }
        for g in collected.groups {
            let mut attrs = self.host_attributes();
            if matches!(g.kind, crate::budget::GroupKind::Executable) || g.info.container.is_none()
            {
                attrs.push(otlp::kv_str(
                    "process.executable.name",
                    g.info.executable_name.clone(),
                ));
            }
            if let Some(c) = &g.info.container {
                attrs.extend(c.attributes());
                attrs.extend(self.pods.attributes(c));
            }
            resource_metrics.push(otlp::resource_metrics(attrs, g.metrics));
        }
        for batch in collected.processes.into_values() {
            let attrs = self.process_attributes(&batch.info);
            if !batch.spans.is_empty() {
                resource_spans.push(ResourceSpans {
                    resource: Some(Resource {
                        attributes: attrs.clone(),
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(otlp::scope()),
                        spans: batch.spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                });
            }
            if !batch.metrics.is_empty() {
                resource_metrics.push(otlp::resource_metrics(attrs, batch.metrics));
            }
        }
        (
            ExportMetricsServiceRequest { resource_metrics },
            ExportTraceServiceRequest { resource_spans },
        )
    }
}

fn program_attrs(a: &Attached) -> Vec<KeyValue> {
    vec![
        otlp::kv_str("hostscope.program", a.label.clone()),
        otlp::kv_str("hostscope.hook", a.hook.as_str()),
    ]
}

/// `hostscope bench-floor`: empty programs on a signal's hooks.
pub async fn bench_floor(duration: Duration, hooks: crate::cli::FloorHooks) -> Result<()> {
    use anyhow::Context as _;
    ebpf::raise_memlock_rlimit();
    let settings = LoadSettings {
        agent_tgid: std::process::id(),
        slow_threshold_ns: u64::MAX,
        slow_events_per_cpu_per_sec: 0,
        syscall_series: 256,
        syscall_error_series: 256,
        inflight_threads: 256,
        tcp_offsets: Default::default(),
        tcp_per_connection: false,
        tcp_events_per_cpu_per_sec: 0,
        tcp_series: 16,
        tcp_sockets: 256,
        sched_offsets: Default::default(),
        oom_offsets: Default::default(),
        filter_mode: hostscope_common::filter::MODE_OFF,
        proc_offsets: Default::default(),
    };
    let mut obj = ebpf::load(&settings)?;
    let btf = ebpf::kernel_btf().context("bench-floor needs kernel BTF")?;
    let (programs, what): (&[(&str, &str)], &str) = match hooks {
        crate::cli::FloorHooks::Syscalls => (
            &[
                ("sys_enter", "sys_enter_empty"),
                ("sys_exit", "sys_exit_empty"),
            ],
            "sys_enter/sys_exit",
        ),
        crate::cli::FloorHooks::Sched => {
            (&[("sched_switch", "sched_switch_empty")], "sched_switch")
        }
        crate::cli::FloorHooks::Tcp => (
            &[("tcp_sendmsg_locked", "tcp_sendmsg_empty")],
            "tcp_sendmsg_locked",
        ),
    };
    for &(tp, prog) in programs {
        let p: &mut aya::programs::BtfTracePoint = obj
            .program_mut(prog)
            .context("missing program")?
            .try_into()?;
        p.load(tp, &btf)?;
        p.attach()?;
    }
    info!("empty {what} programs attached");
    tokio::time::sleep(duration).await;
    Ok(())
}
