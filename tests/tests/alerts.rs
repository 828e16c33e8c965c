//! The alert rules shipped for hostscope's own telemetry
//! (`deploy/prometheus/hostscope-alerts.yaml`): Prometheus accepts them,
//! their unit tests pass under `promtool test rules`, every metric they
//! query is one a running agent really exposes under that name, and every
//! alert has its section in the runbook.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use hostscope_tests::{Agent, free_port, http_get, require_root};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rules() -> PathBuf {
    repo().join("deploy/prometheus/hostscope-alerts.yaml")
}

fn promtool(args: &[&str], dir: &Path) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool (apt-get install prometheus; cargo xtask setup does)");
    assert!(
        out.status.success(),
        "promtool {args:?} should succeed; it said: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rules_are_valid_and_their_unit_tests_pass() {
    let dir = repo().join("deploy/prometheus");
    promtool(&["check", "rules", "hostscope-alerts.yaml"], &dir);
    promtool(&["test", "rules", "hostscope-alerts.test.yaml"], &dir);
}

/// `(alert name, expression)` of every rule, read line by line (the file
/// keeps each `expr:` on one line).
fn alerts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(rules()).unwrap();
    let mut out = Vec::new();
    let mut name = None;
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("- alert:") {
            name = Some(n.trim().to_string());
        } else if let Some(e) = line.strip_prefix("expr:") {
            let n = name.take().expect("an expr: after each - alert:");
            out.push((n, e.trim().to_string()));
        }
    }
    assert!(out.len() >= 8, "expected at least 8 alerts, read {out:?}");
    out
}

#[test]
fn every_alert_has_a_runbook_section() {
    let runbook = std::fs::read_to_string(repo().join("docs/runbook.md")).unwrap();
    let headings: BTreeSet<&str> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::trim)
        .collect();
    for (name, _) in alerts() {
        assert!(
            headings.contains(name.as_str()),
            "docs/runbook.md should have a `## {name}` section; it has {headings:?}"
        );
    }
}

#[test]
fn rules_query_metrics_the_agent_exposes() {
    require_root();
    // Metric names the rules use (besides Prometheus' own `up`).
    let wanted: BTreeSet<String> = alerts()
        .iter()
        .flat_map(|(_, expr)| {
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|t| t.starts_with("hostscope_agent_"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        wanted.len() >= 5,
        "expected the rules to use several agent metrics: {wanted:?}"
    );
    // The agent as a collector-less node runs it: Prometheus endpoint plus
    // OTLP to a port nobody listens on (so the export self-telemetry exists
    // and retries count up).
    let (port, dead) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let endpoint = format!("http://127.0.0.1:{dead}");
    let _agent = Agent::start_with(
        &[
            "--exporter",
            "prometheus",
            "--exporter",
            "otlp",
            "--listen",
            &listen,
            "--interval",
            "0.5",
        ],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    loop {
        if let Ok((_, text)) = http_get(&listen, "/metrics") {
            let exposed: BTreeSet<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split(['{', ' ']).next())
                .collect();
            let missing: Vec<&String> = wanted
                .iter()
                .filter(|m| !exposed.contains(m.as_str()))
                .collect();
            if missing.is_empty() {
                return;
            }
            last = format!("missing {missing:?}; exposed {exposed:?}");
        }
        assert!(
            Instant::now() < deadline,
            "every metric the alert rules query should be on the agent's /metrics within 30 s: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
