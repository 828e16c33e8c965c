//! Two network namespaces joined by a veth pair, for tests that compare what
//! hostscope reports about TCP with the kernel's own per-namespace counters.
//!
//! Everything is done with `ip` (iproute2) and `nft` (nftables) through
//! [`std::process::Command`]; a failing command panics with the command
//! line and its stderr. [`NetPair`]'s `Drop` kills whatever still runs in
//! its namespaces and deletes them (which deletes the veth), also when the
//! test panics.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt,
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::Duration,
};

use serde_json::Value;

/// One end of a [`NetPair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// Pairs made by this process so far: part of the names and addresses.
static PAIRS: AtomicU32 = AtomicU32::new(0);
/// `ip netns add` of the first namespace makes `/run/netns` a shared mount;
/// two of them at once can race, so this process makes one at a time.
static SETUP: Mutex<()> = Mutex::new(());

/// The veth's name inside each namespace (the same name in both).
const VETH: &str = "hs0";

/// Namespaces `hs-a-<pid>-<n>` and `hs-b-<pid>-<n>` joined by a veth
/// (`hs0` in each), with `10.<x>.<n>.1/24` and `fd00:<pid>:<n>::1/64` on A
/// and `.2`/`::2` on B, and `lo` up in both.
pub struct NetPair {
    names: [String; 2],
    v4: [Ipv4Addr; 2],
    v6: [Ipv6Addr; 2],
    /// Whether the `inet loss` table and its `input` chain exist, per side.
    loss_table: Mutex<[bool; 2]>,
}

impl NetPair {
    /// Creates both namespaces and the veth between them; panics (after
    /// removing whatever it made) if a command fails.
    pub fn new() -> NetPair {
        let pid = std::process::id();
        let n = PAIRS.fetch_add(1, Ordering::Relaxed);
        let x = (pid % 250 + 1) as u8;
        let y = (n % 256) as u8;
        let (p16, n16) = ((pid & 0xffff) as u16, (n & 0xffff) as u16);
        let pair = NetPair {
            names: [format!("hs-a-{pid}-{n}"), format!("hs-b-{pid}-{n}")],
            v4: [Ipv4Addr::new(10, x, y, 1), Ipv4Addr::new(10, x, y, 2)],
            v6: [
                Ipv6Addr::new(0xfd00, p16, n16, 0, 0, 0, 0, 1),
                Ipv6Addr::new(0xfd00, p16, n16, 0, 0, 0, 0, 2),
            ],
            loss_table: Mutex::new([false; 2]),
        };
        {
            let _setup = SETUP.lock().unwrap_or_else(|e| e.into_inner());
            if n == 0 {
                remove_stale_namespaces();
            }
            // From here on, Drop removes whatever was made if a step panics.
            for name in &pair.names {
                run(&["ip", "netns", "add", name]);
            }
        }
        let [a, b] = &pair.names;
        run(&[
            "ip", "link", "add", VETH, "netns", a, "type", "veth", "peer", "name", VETH, "netns", b,
        ]);
        for side in [Side::A, Side::B] {
            let ns = pair.name(side);
            let i = side.index();
            let v4 = format!("{}/24", pair.v4[i]);
            let v6 = format!("{}/64", pair.v6[i]);
            run(&["ip", "-n", ns, "addr", "add", &v4, "dev", VETH]);
            run(&["ip", "-n", ns, "addr", "add", &v6, "dev", VETH, "nodad"]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            run(&["ip", "-n", ns, "link", "set", VETH, "up"]);
        }
        pair.wait_ready(Duration::from_secs(10));
        pair
    }

    /// Waits until the kernel has processed the carrier coming up on both
    /// ends: until then the veth is `NO-CARRIER`/`state DOWN` and IPv6 has
    /// no `ff00::/8` route on it, so neighbour solicitations are dropped
    /// (`IP_INNOROUTES`) and a first IPv6 connect stalls ~1 s in the
    /// neighbour queue. The kernel's linkwatch handles carrier changes at
    /// most once a second host-wide, so after other link changes (such as
    /// the previous pair's deletion) this can take up to ~1 s.
    fn wait_ready(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        let ready = |side: Side| {
            let ns = self.name(side);
            let link = run(&["ip", "-n", ns, "-o", "link", "show", "dev", VETH]);
            let mroute = run(&["ip", "-n", ns, "-6", "route", "show", "table", "local"]);
            link.contains(" state UP ")
                && !link.contains("NO-CARRIER")
                && mroute.contains(&format!("multicast ff00::/8 dev {VETH} "))
        };
        let mut left = vec![Side::A, Side::B];
        loop {
            left.retain(|&side| !ready(side));
            if left.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "veth {VETH} in {:?} not up (carrier, IPv6 multicast route) within {timeout:?}:\n{}",
                left.iter().map(|&s| self.name(s)).collect::<Vec<_>>(),
                left.iter()
                    .map(|&s| run(&["ip", "-n", self.name(s), "addr", "show", "dev", VETH]))
                    .collect::<String>()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self, side: Side) -> &str {
        &self.names[side.index()]
    }

    pub fn a_v4(&self) -> IpAddr {
        IpAddr::V4(self.v4[0])
    }

    pub fn b_v4(&self) -> IpAddr {
        IpAddr::V4(self.v4[1])
    }

    pub fn a_v6(&self) -> IpAddr {
        IpAddr::V6(self.v6[0])
    }

    pub fn b_v6(&self) -> IpAddr {
        IpAddr::V6(self.v6[1])
    }

    /// Runs `args` inside the namespace to completion; returns its stdout.
    /// Panics if it fails.
    pub fn exec(&self, side: Side, args: &[&str]) -> String {
        let mut cmd = vec!["ip", "netns", "exec", self.name(side)];
        cmd.extend_from_slice(args);
        run(&cmd)
    }

    /// Drops a random one in `one_in` of the packets that `rule` (nftables
    /// match syntax, e.g. `tcp dport 5001`) matches on input in `side`.
    /// A dropped SYN or SYN-ACK costs a 1 s retransmit timeout; to spare
    /// the handshake, add `tcp flags & syn == 0` to the rule. With veth's
    /// TSO/GRO a packet here may be an skb of many segments (see
    /// [`one_segment_per_skb`](Self::one_segment_per_skb)).
    pub fn drop_random(&self, side: Side, rule: &str, one_in: u32) {
        assert!(one_in > 0, "drop_random: one_in must be at least 1");
        self.add_loss_rule(
            side,
            &format!("{rule} numgen random mod {one_in} == 0 counter drop"),
        );
    }

    /// Drops every packet that `rule` (e.g. `tcp dport 5002 tcp flags syn`)
    /// matches on input in `side`.
    pub fn drop_all(&self, side: Side, rule: &str) {
        self.add_loss_rule(side, &format!("{rule} counter drop"));
    }

    /// Packets the rules of [`drop_random`](Self::drop_random) and
    /// [`drop_all`](Self::drop_all) have dropped in `side` so far (each
    /// nftables counter counts packets as they arrive: with TSO/GRO one
    /// may carry several TCP segments).
    pub fn drops(&self, side: Side) -> u64 {
        if !self.loss_table.lock().unwrap()[side.index()] {
            return 0;
        }
        let chain = self.exec(side, &["nft", "list", "chain", "inet", "loss", "input"]);
        chain
            .split("counter packets ")
            .skip(1)
            .map(|rest| {
                let n = rest.split_whitespace().next().unwrap_or_default();
                n.parse::<u64>()
                    .unwrap_or_else(|_| panic!("bad nft counter {n:?} in:\n{chain}"))
            })
            .sum()
    }

    /// Makes TCP send one MSS per skb over the veth (`gso_max_segs 1` on
    /// both ends), for connections made afterwards. Otherwise veth's TSO
    /// lets an skb carry ~15 segments in a bulk transfer, and the
    /// `tcp:tcp_retransmit_skb` tracepoint fires once per skb while
    /// `RetransSegs` adds the skb's segment count. Costs throughput (20 MB
    /// under 5% loss: ~2-5 s instead of ~0.02-1 s).
    pub fn one_segment_per_skb(&self) {
        for side in [Side::A, Side::B] {
            let ns = self.name(side);
            run(&[
                "ip",
                "-n",
                ns,
                "link",
                "set",
                "dev",
                VETH,
                "gso_max_segs",
                "1",
            ]);
        }
    }

    /// Removes every rule [`drop_random`](Self::drop_random) and
    /// [`drop_all`](Self::drop_all) added in `side`.
    pub fn clear_drops(&self, side: Side) {
        if self.loss_table.lock().unwrap()[side.index()] {
            self.exec(side, &["nft", "flush", "chain", "inet", "loss", "input"]);
        }
    }

    fn add_loss_rule(&self, side: Side, rule: &str) {
        let mut made = self.loss_table.lock().unwrap();
        if !made[side.index()] {
            self.exec(side, &["nft", "add", "table", "inet", "loss"]);
            self.exec(
                side,
                &[
                    "nft",
                    "add",
                    "chain",
                    "inet",
                    "loss",
                    "input",
                    "{ type filter hook input priority 0; policy accept; }",
                ],
            );
            made[side.index()] = true;
        }
        let mut cmd = vec!["nft", "add", "rule", "inet", "loss", "input"];
        cmd.extend(rule.split_whitespace());
        self.exec(side, &cmd);
    }

    /// The `Tcp:` counters of `/proc/net/snmp` in `side`'s namespace
    /// (`RetransSegs`, `OutSegs`, `ActiveOpens`, ...). `MaxConn`, which is
    /// -1, is left out.
    pub fn snmp(&self, side: Side) -> HashMap<String, u64> {
        parse_proc_net(&self.exec(side, &["cat", "/proc/net/snmp"]), "Tcp:")
    }

    /// The `TcpExt:` counters of `/proc/net/netstat` in `side`'s namespace
    /// (`TCPSynRetrans`, `TCPLostRetransmit`, `TCPTimeouts`, ...).
    pub fn netstat(&self, side: Side) -> HashMap<String, u64> {
        parse_proc_net(&self.exec(side, &["cat", "/proc/net/netstat"]), "TcpExt:")
    }

    /// Starts `hostscope-workload args...` in `side`'s namespace, stdout
    /// piped, stderr inherited. `ip netns exec` execs the program, so the
    /// child's pid is the workload's.
    pub fn spawn(&self, side: Side, args: &[&str]) -> Child {
        let bin = crate::target_bin("hostscope-workload");
        Command::new("ip")
            .args(["netns", "exec", self.name(side)])
            .arg(&bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "spawn ip netns exec {} {} {args:?}: {e}",
                    self.name(side),
                    bin.display()
                )
            })
    }

    /// The inode of `side`'s network namespace (what `/proc/<pid>/ns/net`
    /// of a process inside it links to, `net:[<inode>]`).
    pub fn netns_inode(&self, side: Side) -> u64 {
        let path = format!("/run/netns/{}", self.name(side));
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("stat {path}: {e}"))
            .ino()
    }
}

impl Default for NetPair {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetPair {
    /// Never panics (it may run while a test unwinds): failures are printed.
    fn drop(&mut self) {
        for name in &self.names {
            if !std::path::Path::new("/run/netns").join(name).exists() {
                continue;
            }
            // A process left inside would keep the namespace, and the
            // veth, alive after its name is gone.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            match Command::new("ip").args(["netns", "del", name]).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "NetPair drop: ip netns del {name}: {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => eprintln!("NetPair drop: ip netns del {name}: {e}"),
            }
        }
    }
}

/// Deletes `hs-a-<pid>-<n>`/`hs-b-<pid>-<n>` namespaces whose process is
/// gone (a test run killed before its `Drop`s ran).
fn remove_stale_namespaces() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name
            .strip_prefix("hs-a-")
            .or_else(|| name.strip_prefix("hs-b-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// Runs `args[0] args[1..]`; returns stdout; panics with the command and
/// its stderr if it cannot start or exits non-zero.
fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run `{}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`{}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Parses the `prefix` lines (a header line of names, then a line of
/// values) of a `/proc/net/snmp`-style file. Values that are not `u64`
/// (`MaxConn` is -1) are left out.
pub fn parse_proc_net(text: &str, prefix: &str) -> HashMap<String, u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        panic!("no {prefix} header and values lines in:\n{text}");
    };
    let names: Vec<&str> = names[prefix.len()..].split_whitespace().collect();
    let values: Vec<&str> = values[prefix.len()..].split_whitespace().collect();
    assert_eq!(
        names.len(),
        values.len(),
        "{prefix} header and values differ in length:\n{text}"
    );
    names
        .into_iter()
        .zip(values)
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// The JSON lines a spawned workload prints on stdout, read by a thread so
/// that waiting for one can time out.
pub struct JsonLines {
    rx: Receiver<String>,
}

impl JsonLines {
    /// Takes `child`'s stdout (which must be piped).
    pub fn new(child: &mut Child) -> JsonLines {
        let stdout = child.stdout.take().expect("child stdout is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        JsonLines { rx }
    }

    /// The next line, parsed; panics after `timeout`, at EOF, or if it is
    /// not JSON, saying it was waiting for `what`.
    pub fn next(&self, timeout: Duration, what: &str) -> Value {
        let line = match self.rx.recv_timeout(timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!("{what}: no line from the workload within {timeout:?}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("{what}: the workload closed stdout without a line")
            }
        };
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{what}: workload line is not JSON ({e}): {line}"))
    }
}

/// Waits up to `timeout` for `child` to exit 0; otherwise kills it and
/// panics, saying it was `what`.
pub fn wait_success(child: &mut Child, timeout: Duration, what: &str) {
    match crate::wait_timeout(child, timeout) {
        Some(status) => assert!(status.success(), "{what}: exited {status}"),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {timeout:?}; killed");
        }
    }
}
