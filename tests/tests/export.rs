//! OTLP export end to end, against real protocol peers (tests/src/collector.rs):
//! wire content, gzip, headers, retries as the OTLP spec says, partial
//! success, and a collector outage.

use std::time::Duration;

use hostscope_tests::{
    Agent, Mix, Workload,
    collector::{Collector, Received, Reply, ServerTls},
    otlp::{self, ExpHistogram},
    require_root,
};
use serde_json::Value;
use tonic::Code;

const MIX: Mix = Mix {
    getppid: 2_000,
    ebadf: 3,
    sleeps: 0,
    sleep_ms: 0,
    enoent: 0,
    threads: 1,
    yields: 0,
};

/// Starts the agent exporting OTLP to `collector` with `protocol` and extra
/// environment; `args` after `run --exporter otlp`.
fn agent(collector: &Collector, protocol: &str, env: &[(&str, &str)], args: &[&str]) -> Agent {
    let endpoint = collector.endpoint();
    let mut all = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
    ];
    all.extend_from_slice(env);
    let flags = [&["--exporter", "otlp", "--slow-threshold", "off"][..], args].concat();
    Agent::start_with(&flags, &all)
}

fn metrics(received: &[Received]) -> Vec<&Received> {
    received.iter().filter(|r| r.signal == "metrics").collect()
}

/// `pid`'s metrics in the last interval that has it, gathered from every
/// request of that interval (a large interval is split across requests).
fn process_view(received: &[Received], pid: u32) -> Vec<Value> {
    let last = received
        .iter()
        .rev()
        .filter(|r| r.signal == "metrics")
        .find(|r| otlp::process_metrics(&r.json, pid).is_some())
        .unwrap_or_else(|| {
            panic!(
                "no metrics request had pid {pid} ({} received)",
                received.len()
            )
        });
    let time = last.interval_time();
    metrics(received)
        .into_iter()
        .filter(|r| r.interval_time() == time)
        .filter_map(|r| otlp::process_metrics(&r.json, pid))
        .flat_map(|(_, m)| m)
        .collect()
}

/// Exact counts of the workload in what the collector received, and the
/// wire shape of the histogram (explicit buckets at powers of four seconds,
/// the spec's default, or base-2 exponential when `exponential`) and counter.
fn check_content(received: &[Received], pid: u32, exponential: bool) {
    let m = process_view(received, pid);
    let p = otlp::point(
        &m,
        "hostscope.syscall.duration",
        &[("syscall.name", "getppid")],
    )
    .expect("getppid histogram point");
    let metric = m
        .iter()
        .find(|x| x["name"] == "hostscope.syscall.duration")
        .unwrap();
    assert_eq!(metric["unit"], "s");
    if exponential {
        let h = ExpHistogram::from_point(p);
        assert_eq!(h.count, MIX.getppid, "getppid count over OTLP");
        assert_eq!(h.bucket_total(), h.count, "bucket counts sum to the count");
        assert_eq!(h.scale, 0);
        assert_eq!(
            metric["exponentialHistogram"]["aggregationTemporality"], 2,
            "cumulative"
        );
    } else {
        let counts: Vec<u64> = p["bucketCounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(otlp::num)
            .collect();
        let bounds: Vec<f64> = p["explicitBounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_f64().unwrap())
            .collect();
        assert_eq!(
            otlp::num(&p["count"]),
            MIX.getppid,
            "getppid count over OTLP"
        );
        assert_eq!(
            counts.iter().sum::<u64>(),
            MIX.getppid,
            "bucket counts sum to the count"
        );
        assert_eq!(counts.len(), bounds.len() + 1);
        for (i, b) in bounds.iter().enumerate() {
            assert_eq!(
                *b,
                2f64.powi(2 * i as i32 - 24),
                "bound {i} is a power of four seconds from 2^-24"
            );
        }
        assert_eq!(
            metric["histogram"]["aggregationTemporality"], 2,
            "cumulative"
        );
    }
    let e = otlp::point(
        &m,
        "hostscope.syscall.errors",
        &[("syscall.name", "fchdir"), ("error.type", "EBADF")],
    )
    .expect("fchdir EBADF errors point");
    assert_eq!(otlp::num(&e["asInt"]), MIX.ebadf);
}

fn run_workload() -> u32 {
    let mut w = Workload::spawn(MIX);
    w.run();
    w.pid
}

#[test]
fn grpc_content_gzip_and_headers() {
    require_root();
    let collector = Collector::grpc(0);
    let agent = agent(
        &collector,
        "grpc",
        &[
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=secret,x-tenant=team%20a",
            ),
            (
                "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
                "base2_exponential_bucket_histogram",
            ),
        ],
        &["--interval", "0.5"],
    );
    let pid = run_workload();
    drop(agent.stop_with(libc::SIGTERM)); // flushes the last interval
    let received = collector.received();
    check_content(&received, pid, true);
    for r in metrics(&received) {
        assert!(
            r.gzip,
            "every request gzip-compressed (grpc-encoding: gzip)"
        );
        assert_eq!(r.header("api-key"), Some("secret"));
        assert_eq!(
            r.header("x-tenant"),
            Some("team a"),
            "header value URL-decoded"
        );
    }
}

/// A config file configures the OTLP exporter and wins over the OTEL_*
/// variables: the environment points at a port nobody listens on with the
/// wrong protocol, the file at the collector over gRPC with gzip and headers.
#[test]
fn config_file_configures_otlp_over_the_environment() {
    require_root();
    let collector = Collector::grpc(0);
    let dir = std::env::temp_dir().join(format!("hostscope-export-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let path = dir.join("hostscope.yaml");
    std::fs::write(
        &path,
        format!(
            "interval: 500ms\n\
             exporters: {{ metrics: [otlp] }}\n\
             otlp:\n  endpoint: {}\n  protocol: grpc\n  compression: gzip\n\
             \x20 headers: {{ api-key: from-file, x-tenant: team a }}\n\
             \x20 metrics:\n    default_histogram_aggregation: base2_exponential_bucket_histogram\n\
             syscalls: {{ slow_threshold: \"off\" }}\n",
            collector.endpoint()
        ),
    )
    .unwrap();
    let agent = Agent::start_with(
        &["--config", path.to_str().unwrap()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=from-env"),
            ("OTEL_METRICS_EXPORTER", "console"),
        ],
    );
    let pid = run_workload();
    let stdout = agent.stop_with(libc::SIGTERM);
    assert!(
        stdout.is_empty(),
        "the file's exporters (otlp only) replace OTEL_METRICS_EXPORTER=console; stdout had {} lines",
        stdout.len()
    );
    let received = collector.received();
    check_content(&received, pid, true);
    for r in metrics(&received) {
        assert!(r.gzip, "compression: gzip from the file");
        assert_eq!(
            r.header("api-key"),
            Some("from-file"),
            "the file wins over the variable"
        );
        assert_eq!(
            r.header("x-tenant"),
            Some("team a"),
            "a value with a space survives"
        );
    }
}

#[test]
fn http_protobuf_content_and_per_signal_headers() {
    require_root();
    let collector = Collector::http(0);
    let agent = agent(
        &collector,
        "http/protobuf",
        &[
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=generic"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "api-key=metrics-only"),
        ],
        &["--interval", "0.5"],
    );
    let pid = run_workload();
    drop(agent.stop_with(libc::SIGTERM));
    let received = collector.received();
    check_content(&received, pid, false);
    for r in metrics(&received) {
        assert_eq!(r.path, "/v1/metrics");
        assert!(!r.gzip, "no compression unless asked");
        assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
        assert_eq!(
            r.header("api-key"),
            Some("metrics-only"),
            "the per-signal variable wins"
        );
    }
}

/// Slow syscalls arrive as spans over the gRPC TraceService, linked from
/// their histogram point by exemplars.
#[test]
fn grpc_traces_and_exemplars() {
    require_root();
    let collector = Collector::grpc(0);
    let endpoint = collector.endpoint();
    let agent = Agent::start_with(
        &[
            "--exporter",
            "otlp",
            "--interval",
            "0.5",
            "--slow-threshold",
            "100ms",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    let mix = Mix {
        sleeps: 2,
        sleep_ms: 130,
        ..Mix::default()
    };
    let mut w = Workload::spawn(mix);
    w.run();
    let pid = w.pid;
    drop(agent.stop_with(libc::SIGTERM));
    let received = collector.received();
    let spans: Vec<Value> = received
        .iter()
        .filter(|r| r.signal == "traces")
        .flat_map(|r| otlp::process_spans(&r.json, pid))
        .filter(|s| s["name"] == "nanosleep")
        .collect();
    assert_eq!(
        spans.len() as u64,
        mix.sleeps,
        "nanosleep spans over OTLP/gRPC"
    );
    let exemplars: Vec<Value> = metrics(&received)
        .iter()
        .filter_map(|r| otlp::process_metrics(&r.json, pid))
        .flat_map(|(_, m)| {
            otlp::point(
                &m,
                "hostscope.syscall.duration",
                &[("syscall.name", "nanosleep")],
            )
            .and_then(|p| p["exemplars"].as_array().cloned())
            .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        exemplars.len(),
        spans.len(),
        "one exemplar per slow span: {exemplars:?}"
    );
    for e in &exemplars {
        let span = spans
            .iter()
            .find(|s| s["spanId"] == e["spanId"] && s["traceId"] == e["traceId"])
            .unwrap_or_else(|| panic!("exemplar {e} links to no span"));
        let dur = otlp::num(&span["endTimeUnixNano"]) - otlp::num(&span["startTimeUnixNano"]);
        let value = e["asDouble"].as_f64().unwrap();
        assert!(
            (value - dur as f64 / 1e9).abs() < 1e-6,
            "exemplar value {value} vs span {dur} ns"
        );
    }
}

/// UNAVAILABLE is retried (the same interval's request arrives again);
/// INVALID_ARGUMENT is not (its interval never arrives again).
#[test]
fn grpc_retries_unavailable_but_not_invalid_argument() {
    require_root();
    let collector = Collector::grpc(0);
    collector.script([
        Reply::Grpc(Code::Unavailable),
        Reply::Grpc(Code::Unavailable),
        Reply::Ok,
        Reply::Grpc(Code::InvalidArgument),
    ]);
    let agent = agent(&collector, "grpc", &[], &["--interval", "0.5"]);
    let received = collector.wait_for(Duration::from_secs(30), "six metrics requests", |r| {
        metrics(r).len() >= 6
    });
    drop(agent.stop_with(libc::SIGTERM));
    let m = metrics(&received);
    let t: Vec<String> = m
        .iter()
        .map(|r| r.interval_time().expect("data point time"))
        .collect();
    assert_eq!(
        t[0], t[1],
        "first UNAVAILABLE retried with the same content: {t:?}"
    );
    assert_eq!(
        t[1], t[2],
        "second UNAVAILABLE retried with the same content: {t:?}"
    );
    assert_ne!(t[3], t[2], "after success, the next interval: {t:?}");
    assert!(
        t[4..].iter().all(|x| *x != t[3]),
        "the INVALID_ARGUMENT request must not be retried: {t:?}"
    );

    // The last request (the shutdown flush, built after all of the above)
    // reports it in the agent's own telemetry.
    let all = collector.received();
    let last = metrics(&all).last().copied().unwrap();
    let (_, agent_metrics) = otlp::resources(&last.json)
        .into_iter()
        .find(|(a, _)| otlp::attr(a, "service.name") == Some("hostscope"))
        .expect("agent resource");
    let own = |name: &str, extra: &[(&str, &str)]| {
        let want = [&[("hostscope.signal", "metrics")][..], extra].concat();
        otlp::point(&agent_metrics, name, &want)
            .unwrap_or_else(|| panic!("{name} {extra:?}"))
            .clone()
    };
    assert!(
        otlp::num(&own("hostscope.agent.export.retries", &[])["asInt"]) >= 2,
        "two retries counted"
    );
    let rejected = own(
        "hostscope.agent.export.items",
        &[("hostscope.outcome", "rejected")],
    );
    assert!(
        otlp::num(&rejected["asInt"]) > 0,
        "the INVALID_ARGUMENT request's items counted as rejected"
    );
    let latency = own("hostscope.agent.export.duration", &[]);
    let counts: Vec<u64> = latency["bucketCounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(otlp::num)
        .collect();
    assert!(
        otlp::num(&latency["count"]) >= 6,
        "every attempt timed: {latency}"
    );
    assert_eq!(counts.iter().sum::<u64>(), otlp::num(&latency["count"]));
}

/// A partial success is logged with the count and never retried.
#[test]
fn partial_success_is_logged_and_not_retried() {
    require_root();
    let collector = Collector::grpc(0);
    collector.script([Reply::Partial {
        rejected: 3,
        message: "three points too old".into(),
    }]);
    let agent = agent(&collector, "grpc", &[], &["--interval", "0.5"]);
    let received = collector.wait_for(Duration::from_secs(20), "three metrics requests", |r| {
        metrics(r).len() >= 3
    });
    agent.stderr.wait_for(
        "partial success",
        Duration::from_secs(5),
        "partial-success warning",
    );
    let log = agent.stderr.text();
    drop(agent.stop_with(libc::SIGTERM));
    let line = log.lines().find(|l| l.contains("partial success")).unwrap();
    assert!(
        line.contains("WARN")
            && line.contains("rejected 3")
            && line.contains("three points too old"),
        "{line}"
    );
    let t: Vec<String> = metrics(&received)
        .iter()
        .map(|r| r.interval_time().unwrap())
        .collect();
    assert!(
        t[1..].iter().all(|x| *x != t[0]),
        "partial success must not be retried: {t:?}"
    );
}

/// HTTP 503 with Retry-After: 1 is retried no sooner than a second later;
/// 400 is not retried.
#[test]
fn http_retry_after_is_obeyed_and_400_not_retried() {
    require_root();
    let collector = Collector::http(0);
    collector.script([Reply::Http(503, Some(1)), Reply::Ok, Reply::Http(400, None)]);
    let agent = agent(&collector, "http/protobuf", &[], &["--interval", "0.5"]);
    let received = collector.wait_for(Duration::from_secs(30), "five metrics requests", |r| {
        metrics(r).len() >= 5
    });
    drop(agent.stop_with(libc::SIGTERM));
    let m = metrics(&received);
    let t: Vec<String> = m.iter().map(|r| r.interval_time().unwrap()).collect();
    assert_eq!(t[0], t[1], "503 retried with the same content: {t:?}");
    let waited = m[1].at - m[0].at;
    assert!(
        waited >= Duration::from_millis(1000),
        "Retry-After: 1 obeyed, waited {waited:?}"
    );
    assert!(
        t[3..].iter().all(|x| *x != t[2]),
        "400 must not be retried: {t:?}"
    );
}

/// An interval larger than `--export-max-request-bytes` arrives as several
/// complete requests, none over the limit, and nothing is lost.
#[test]
fn large_intervals_are_split_into_bounded_requests() {
    require_root();
    let collector = Collector::grpc(0);
    let agent = agent(
        &collector,
        "grpc",
        &[],
        &["--interval", "0.5", "--export-max-request-bytes", "4096"],
    );
    let pid = run_workload();
    drop(agent.stop_with(libc::SIGTERM));
    let received = collector.received();
    check_content(&received, pid, false);
    let mut per_interval: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for r in metrics(&received) {
        assert!(
            r.bytes <= 4096,
            "a request of {} bytes exceeds --export-max-request-bytes 4096",
            r.bytes
        );
        let e = per_interval
            .entry(r.interval_time().expect("data point time"))
            .or_default();
        e.0 += 1;
        e.1 += r.bytes;
    }
    assert!(
        per_interval
            .values()
            .any(|&(n, bytes)| n >= 2 && bytes > 4096),
        "some interval over 4096 bytes arrives split in several requests: {per_interval:?}"
    );
}

/// RESOURCE_EXHAUSTED with a RetryInfo detail is retried no sooner than
/// the delay the server asked for; without RetryInfo it is not retried.
#[test]
fn grpc_retry_info_delay_is_obeyed() {
    require_root();
    let collector = Collector::grpc(0);
    collector.script([
        Reply::GrpcRetryInfo(Code::ResourceExhausted, Duration::from_millis(1500)),
        Reply::Ok,
        Reply::Grpc(Code::ResourceExhausted),
    ]);
    let agent = agent(&collector, "grpc", &[], &["--interval", "0.5"]);
    let received = collector.wait_for(Duration::from_secs(30), "five metrics requests", |r| {
        metrics(r).len() >= 5
    });
    drop(agent.stop_with(libc::SIGTERM));
    let m = metrics(&received);
    let t: Vec<String> = m.iter().map(|r| r.interval_time().unwrap()).collect();
    assert_eq!(
        t[0], t[1],
        "RESOURCE_EXHAUSTED with RetryInfo retried with the same content: {t:?}"
    );
    let waited = m[1].at - m[0].at;
    assert!(
        waited >= Duration::from_millis(1500),
        "RetryInfo delay of 1.5 s obeyed, waited {waited:?}"
    );
    assert_ne!(t[2], t[1], "after success, the next interval: {t:?}");
    assert!(
        t[3..].iter().all(|x| *x != t[2]),
        "RESOURCE_EXHAUSTED without RetryInfo must not be retried: {t:?}"
    );
}

/// 429, 502 and 504 are retryable like 503: the same interval arrives
/// until it is accepted.
#[test]
fn http_429_502_504_are_retried() {
    require_root();
    let collector = Collector::http(0);
    collector.script([
        Reply::Http(429, None),
        Reply::Http(502, None),
        Reply::Http(504, None),
        Reply::Ok,
    ]);
    let agent = agent(&collector, "http/protobuf", &[], &["--interval", "0.5"]);
    let received = collector.wait_for(Duration::from_secs(30), "five metrics requests", |r| {
        metrics(r).len() >= 5
    });
    drop(agent.stop_with(libc::SIGTERM));
    let t: Vec<String> = metrics(&received)
        .iter()
        .map(|r| r.interval_time().unwrap())
        .collect();
    assert!(
        t[1..4].iter().all(|x| *x == t[0]),
        "429, 502 and 504 each retried with the same content: {t:?}"
    );
    assert_ne!(t[4], t[3], "after success, the next interval: {t:?}");
}

/// `OTEL_METRICS_EXPORTER=otlp,console` sends metrics both ways;
/// `OTEL_TRACES_EXPORTER=none` sends no spans anywhere, even with slow
/// syscalls to report.
#[test]
fn exporters_chosen_by_otel_variables() {
    require_root();
    let collector = Collector::http(0);
    let endpoint = collector.endpoint();
    let agent = Agent::start_with(
        &["--interval", "0.5", "--slow-threshold", "100ms"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_METRICS_EXPORTER", "otlp,console"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ],
    );
    let mix = Mix {
        sleeps: 2,
        sleep_ms: 130,
        ..MIX
    };
    let mut w = Workload::spawn(mix);
    w.run();
    let pid = w.pid;
    let lines = agent.stop_with(libc::SIGTERM);
    let received = collector.received();
    check_content(&received, pid, false);
    assert!(
        received.iter().all(|r| r.signal == "metrics"),
        "no traces requests with OTEL_TRACES_EXPORTER=none"
    );
    assert!(
        lines.iter().all(|l| l.get("resourceSpans").is_none()),
        "no spans on stdout with OTEL_TRACES_EXPORTER=none"
    );
    let count = lines
        .iter()
        .rev()
        .find_map(|l| otlp::process_metrics(l, pid))
        .and_then(|(_, m)| {
            otlp::point(
                &m,
                "hostscope.syscall.duration",
                &[("syscall.name", "getppid")],
            )
            .map(|p| otlp::num(&p["count"]))
        })
        .expect("console exporter printed the workload's getppid histogram");
    assert_eq!(count, mix.getppid, "getppid count on the console exporter");
}

/// The collector goes away for 3 s: the agent keeps running within its
/// queue bound, drops the oldest data (and says so in its own telemetry),
/// and delivers again once the collector is back on the same port.
#[test]
fn collector_outage_drops_oldest_counts_and_recovers() {
    require_root();
    let mut collector = Collector::grpc(0);
    // Size the queue from this host's own requests: about three fit, so an
    // outage of ten intervals must drop some, while any one request fits.
    let probe = agent(&collector, "grpc", &[], &["--interval", "0.3"]);
    let first = collector.wait_for(Duration::from_secs(10), "a first request", |r| {
        metrics(r).len() >= 2
    });
    drop(probe.stop_with(libc::SIGTERM));
    let size = metrics(&first).iter().map(|r| r.bytes).max().unwrap();
    let queue = (size * 3).to_string();
    let mut agent = agent(
        &collector,
        "grpc",
        &[],
        &["--interval", "0.3", "--export-queue-bytes", &queue],
    );
    let seen = collector.received().len();
    collector.wait_for(
        Duration::from_secs(10),
        "a request from the second agent",
        |r| r.len() > seen,
    );
    collector.stop();
    // Down until the queue has overflowed (intervals vary in size with the
    // host's process churn, so a fixed outage may not be enough).
    agent.stderr.wait_for(
        "export queue full",
        Duration::from_secs(60),
        "the queue to overflow while the collector is down",
    );
    assert!(
        agent.is_running(),
        "the agent must keep running while the collector is down"
    );
    let before = collector.received().len();
    collector.restart(true);
    let dropped = |r: &Received| {
        otlp::resources(&r.json)
            .into_iter()
            .find(|(a, _)| otlp::attr(a, "service.name") == Some("hostscope"))
            .and_then(|(_, m)| {
                otlp::point(
                    &m,
                    "hostscope.agent.export.items",
                    &[
                        ("hostscope.signal", "metrics"),
                        ("hostscope.outcome", "dropped"),
                    ],
                )
                .map(|p| otlp::num(&p["asInt"]))
            })
            .unwrap_or(0)
    };
    let received = collector.wait_for(
        Duration::from_secs(30),
        "a request after recovery reporting dropped items",
        |r| {
            r[before..]
                .iter()
                .any(|x| x.signal == "metrics" && dropped(x) > 0)
        },
    );
    assert!(
        received.len() > before,
        "data arrives again after the outage"
    );
    drop(agent.stop_with(libc::SIGTERM));
}

/// A throwaway CA, a server certificate for 127.0.0.1 and a client
/// certificate, made with the `openssl` command; removed on drop.
struct TestCerts {
    dir: std::path::PathBuf,
}

impl TestCerts {
    fn new() -> TestCerts {
        let dir = std::env::temp_dir().join(format!("hostscope-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sh = |script: &str| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(&dir)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh(
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=hostscope-test-ca",
        );
        sh(
            "openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 \
            && printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > server.ext \
            && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile server.ext",
        );
        sh(
            "openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=hostscope \
            && printf 'extendedKeyUsage=clientAuth\\n' > client.ext \
            && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 1 -extfile client.ext",
        );
        TestCerts { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).unwrap()
    }

    fn server_tls(&self) -> ServerTls {
        ServerTls {
            cert: self.read("server.pem"),
            key: self.read("server.key"),
            client_ca: Some(self.read("ca.pem")),
        }
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Mutual TLS over both protocols with a test CA: with the client
/// certificate the data arrives exactly; without it the collector refuses the
/// connection and the agent keeps running, saying the export is failing.
#[test]
fn mutual_tls_over_grpc_and_http() {
    require_root();
    let certs = TestCerts::new();
    for (grpc, protocol) in [(true, "grpc"), (false, "http/protobuf")] {
        let collector = Collector::with_tls(grpc, certs.server_tls());
        let (ca, cert, key) = (
            certs.path("ca.pem"),
            certs.path("client.pem"),
            certs.path("client.key"),
        );
        let tls_env = [
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca.as_str()),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert.as_str()),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", key.as_str()),
        ];
        let a = agent(&collector, protocol, &tls_env, &["--interval", "0.5"]);
        let pid = run_workload();
        drop(a.stop_with(libc::SIGTERM));
        check_content(&collector.received(), pid, false);

        // Trusting the CA but presenting no client certificate: refused.
        let before = collector.received().len();
        let mut a = agent(&collector, protocol, &tls_env[..1], &["--interval", "0.3"]);
        a.stderr.wait_for(
            "export failing",
            Duration::from_secs(10),
            "a failing export without a client certificate",
        );
        assert!(a.is_running(), "{protocol}: the agent keeps running");
        assert_eq!(
            collector.received().len(),
            before,
            "{protocol}: nothing accepted without a client certificate"
        );
    }
}
