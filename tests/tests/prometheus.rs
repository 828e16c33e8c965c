//! The Prometheus endpoint scraped by a real Prometheus server (Debian's
//! `prometheus`): a PromQL query over its HTTP API returns the workload's
//! exact getppid count, and `promtool check metrics` accepts the exposition.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use hostscope_tests::{Agent, Mix, Workload, free_port, require_root, wait_timeout};
use serde_json::Value;

/// `GET path` on 127.0.0.1:port: the body, if the request got an answer.
fn http_get(port: u16, path: &str) -> Option<String> {
    hostscope_tests::http_get(&format!("127.0.0.1:{port}"), path)
        .ok()
        .map(|(_, body)| body)
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Removes the Prometheus data directory and stops the server, even on failure.
struct Prometheus {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn prometheus_scrapes_exact_counts() {
    require_root();
    let (agent_port, prom_port) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{agent_port}");
    let agent = Agent::start_with(
        &[
            "--exporter",
            "prometheus",
            "--prometheus-listen",
            &listen,
            "--interval",
            "0.5",
        ],
        &[],
    );
    let mix = Mix {
        getppid: 4_321,
        ..Mix::default()
    };
    let mut w = Workload::spawn(mix);
    w.run();
    let pid = w.pid;

    // The exposition is valid Prometheus text.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        if let Some(t) = http_get(agent_port, "/metrics")
            .filter(|t| t.contains(&format!("process_pid=\"{pid}\"")))
        {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "the endpoint never showed pid {pid}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus; cargo xtask setup does)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus scrapes it every second.
    let dir = std::env::temp_dir().join(format!("hostscope-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: hostscope\n    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n"
        ),
    )
    .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus");
    let mut prom = Prometheus { child, dir };

    let query = format!(
        "hostscope_syscall_duration_seconds_count{{syscall_name=\"getppid\",process_pid=\"{pid}\"}}"
    );
    let path = format!("/api/v1/query?query={}", url_encode(&query));
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = String::new();
    let value = loop {
        if let Some(body) = http_get(prom_port, &path) {
            last = body.clone();
            if let Ok(v) = serde_json::from_str::<Value>(&body)
                && let Some(s) = v["data"]["result"][0]["value"][1].as_str()
            {
                break s.to_string();
            }
        }
        assert!(
            wait_timeout(&mut prom.child, Duration::from_millis(250)).is_none(),
            "prometheus exited early"
        );
        assert!(
            Instant::now() < deadline,
            "PromQL {query} returned nothing; last answer: {last}"
        );
    };
    assert_eq!(value, mix.getppid.to_string(), "PromQL {query}");
    drop(w);
    drop(agent.stop_with(libc::SIGTERM));
}
