//! The agent's one HTTP listener (`--listen`, default 127.0.0.1:9464):
//!
//! - `GET /healthz`, liveness: 200 while the main loop completes intervals;
//!   503 once it has not completed one for 3 intervals plus 30 s (a wedged
//!   agent: stuck in a kernel call, a lock or a runaway drain).
//! - `GET /readyz`, readiness: 503 while the signals are being attached and
//!   until the first interval has been handed to the exporters, then 200;
//!   503 again once SIGTERM/SIGINT starts the shutdown. The body says why.
//! - `GET /metrics`: the Prometheus exposition of the latest interval when
//!   the prometheus exporter is selected, else 404 saying so.
//!
//! It runs on its own thread with its own small runtime, so it answers while
//! the main loop is busy attaching or collecting, and can report that loop
//! as wedged rather than hang with it. The socket is bound before anything
//! is attached (a port below 1024 is bound while the agent still holds its
//! capabilities); the thread drops its own capabilities before it serves.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{Method, StatusCode, body::Bytes, service::service_fn};
use tracing::{debug, error, info, warn};

use crate::export::prometheus::PrometheusEndpoint;

/// Slack added to 3 intervals before the main loop counts as wedged: covers
/// start-up (loading and attaching) and a slow collection.
const LIVENESS_GRACE: Duration = Duration::from_secs(30);

/// Where the agent is in its life, for `/readyz`.
#[derive(Clone, Debug, PartialEq)]
enum Phase {
    /// Loading and attaching the signals.
    Attaching,
    /// Every enabled signal attached or failed for good (the summary says
    /// which); the first interval is not exported yet.
    Attached(String),
    /// The first interval has been handed to the exporters.
    Ready(String),
    /// SIGTERM/SIGINT: flushing and detaching.
    Stopping(&'static str),
}

/// State shared between the main loop (which writes it) and the listener.
pub struct Health {
    started: Instant,
    /// Liveness limit: 3 intervals plus [`LIVENESS_GRACE`], in ms (the
    /// interval can change on SIGHUP).
    stale_after_ms: AtomicU64,
    /// Milliseconds from `started` to the last completed interval (0: none yet).
    last_beat_ms: AtomicU64,
    phase: Mutex<Phase>,
}

/// An HTTP answer: status and a one-line (or exposition) body.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Health {
    pub fn new(interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            stale_after_ms: AtomicU64::new(Self::stale_ms(interval)),
            last_beat_ms: AtomicU64::new(0),
            phase: Mutex::new(Phase::Attaching),
        })
    }

    fn stale_ms(interval: Duration) -> u64 {
        interval
            .saturating_mul(3)
            .saturating_add(LIVENESS_GRACE)
            .as_millis() as u64
    }

    /// The interval changed (SIGHUP): liveness allows 3 of the new ones.
    pub fn set_interval(&self, interval: Duration) {
        self.stale_after_ms.store(Self::stale_ms(interval), Relaxed);
    }

    /// Every enabled signal attached or failed for good; `summary` says which.
    pub fn attached(&self, summary: String) {
        self.set(Phase::Attached(summary));
    }

    /// The main loop completed an interval (handed it to the exporters).
    pub fn interval_exported(&self) {
        let ms = (self.started.elapsed().as_millis() as u64).max(1);
        self.last_beat_ms.store(ms, Relaxed);
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        if let Phase::Attached(s) = &*p {
            *p = Phase::Ready(s.clone());
        }
    }

    /// Shutdown began: no longer ready (liveness stays while it flushes).
    pub fn stopping(&self, why: &'static str) {
        self.set(Phase::Stopping(why));
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    /// `/healthz` at `now`.
    pub fn liveness(&self, now: Instant) -> Answer {
        let since_start = now.saturating_duration_since(self.started);
        let beat = Duration::from_millis(self.last_beat_ms.load(Relaxed));
        let (what, age) = if beat.is_zero() {
            ("started", since_start)
        } else {
            ("completed an interval", since_start.saturating_sub(beat))
        };
        let stale_after = Duration::from_millis(self.stale_after_ms.load(Relaxed));
        if age > stale_after {
            Answer {
                status: 503,
                body: format!(
                    "not alive: the main loop last {what} {:.1} s ago, more than the limit of \
                     {} s (3 intervals + {} s)\n",
                    age.as_secs_f64(),
                    stale_after.as_secs(),
                    LIVENESS_GRACE.as_secs()
                ),
            }
        } else {
            Answer {
                status: 200,
                body: format!(
                    "alive: the main loop last {what} {:.1} s ago\n",
                    age.as_secs_f64()
                ),
            }
        }
    }

    /// `/readyz`.
    pub fn readiness(&self) -> Answer {
        let phase = self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (status, body) = match phase {
            Phase::Attaching => (503, "not ready: loading and attaching the signals".into()),
            Phase::Attached(s) => (
                503,
                format!("not ready: {s}; waiting for the first interval to be exported"),
            ),
            Phase::Ready(s) => (200, format!("ready: {s}; first interval exported")),
            Phase::Stopping(why) => (503, format!("not ready: shutting down ({why})")),
        };
        Answer {
            status,
            body: body + "\n",
        }
    }
}

/// `/metrics`.
fn metrics(prometheus: Option<&PrometheusEndpoint>) -> Answer {
    match prometheus {
        Some(p) => Answer {
            status: 200,
            body: p.text(),
        },
        None => Answer {
            status: 404,
            body: "no metrics here: the prometheus exporter is not selected \
                   (--exporter prometheus, exporters.metrics or OTEL_METRICS_EXPORTER)\n"
                .into(),
        },
    }
}

fn route(
    method: &Method,
    path: &str,
    health: &Health,
    prom: Option<&PrometheusEndpoint>,
) -> Answer {
    if method != Method::GET && method != Method::HEAD {
        return Answer {
            status: 405,
            body: "only GET and HEAD are served\n".into(),
        };
    }
    match path {
        "/healthz" => health.liveness(Instant::now()),
        "/readyz" => health.readiness(),
        "/metrics" => metrics(prom),
        _ => Answer {
            status: 404,
            body: "not found: this listener serves /healthz, /readyz and /metrics\n".into(),
        },
    }
}

/// Binds `addr` and serves on a thread of its own. With `drop_capabilities`,
/// that thread drops every capability before it serves (capabilities belong
/// to each thread; the main thread drops its own after attaching). A bind
/// failure is logged in one line and the agent runs on without a listener.
pub fn start(
    addr: SocketAddr,
    health: Arc<Health>,
    prometheus: Option<PrometheusEndpoint>,
    drop_capabilities: bool,
) -> Option<SocketAddr> {
    let bound = std::net::TcpListener::bind(addr).and_then(|l| {
        l.set_nonblocking(true)?;
        let local = l.local_addr()?;
        Ok((l, local))
    });
    let (listener, local) = match bound {
        Ok(b) => b,
        Err(e) => {
            error!(
                "HTTP listener (--listen, /healthz, /readyz, /metrics) not started on {addr}: {e}"
            );
            return None;
        }
    };
    let with_metrics = prometheus.is_some();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("hostscope-http".into())
        .spawn(move || {
            if drop_capabilities && let Err(e) = crate::privilege::drop_thread() {
                warn!("HTTP listener thread keeps its capabilities: {e}");
            }
            let _ = ready_tx.send(());
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!("HTTP listener: cannot start its runtime: {e}");
                    return;
                }
            };
            rt.block_on(serve(listener, health, prometheus));
        });
    if let Err(e) = spawned {
        error!("HTTP listener not started: cannot spawn its thread: {e}");
        return None;
    }
    // The thread has dropped its capabilities before the agent goes on.
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    info!(
        addr = %local,
        metrics = if with_metrics { "prometheus" } else { "404 (no prometheus exporter)" },
        "HTTP listener serving /healthz, /readyz and /metrics"
    );
    Some(local)
}

async fn serve(
    listener: std::net::TcpListener,
    health: Arc<Health>,
    prometheus: Option<PrometheusEndpoint>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            error!("HTTP listener: {e}");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                debug!("HTTP listener accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let health = health.clone();
        let prometheus = prometheus.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let a = route(req.method(), req.uri().path(), &health, prometheus.as_ref());
                let content_type = if req.uri().path() == "/metrics" && a.status == 200 {
                    "text/plain; version=0.0.4; charset=utf-8"
                } else {
                    "text/plain; charset=utf-8"
                };
                let resp = hyper::Response::builder()
                    .status(StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK))
                    .header("content-type", content_type)
                    .body(Full::new(Bytes::from(a.body)));
                async move { resp }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await
            {
                debug!("HTTP listener connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_attach_then_first_export_then_shutdown() {
        let h = Health::new(Duration::from_secs(10));
        let r = h.readiness();
        assert_eq!(r.status, 503);
        assert!(r.body.contains("attaching"), "{r:?}");
        h.interval_exported(); // cannot happen before attach; stays not ready
        assert_eq!(h.readiness().status, 503);
        h.attached("attached: syscalls; failed: tcp".into());
        let r = h.readiness();
        assert_eq!(r.status, 503);
        assert!(r.body.contains("waiting for the first interval"), "{r:?}");
        assert!(r.body.contains("failed: tcp"), "{r:?}");
        h.interval_exported();
        let r = h.readiness();
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.starts_with("ready: attached: syscalls"), "{r:?}");
        h.stopping("SIGTERM");
        let r = h.readiness();
        assert_eq!(r.status, 503);
        assert!(r.body.contains("shutting down (SIGTERM)"), "{r:?}");
    }

    #[test]
    fn liveness_fails_when_the_loop_stops_completing_intervals() {
        let h = Health::new(Duration::from_secs(10));
        let t0 = h.started;
        // Start-up: alive until 3 intervals + 30 s have passed without one.
        assert_eq!(h.liveness(t0 + Duration::from_secs(59)).status, 200);
        let a = h.liveness(t0 + Duration::from_secs(61));
        assert_eq!(a.status, 503, "{a:?}");
        assert!(a.body.contains("limit of 60 s"), "{a:?}");
        h.interval_exported();
        let beat = t0 + Duration::from_millis(h.last_beat_ms.load(Relaxed));
        let a = h.liveness(beat + Duration::from_secs(12));
        assert_eq!(a.status, 200, "{a:?}");
        assert!(a.body.contains("completed an interval 12.0 s ago"), "{a:?}");
        assert_eq!(h.liveness(beat + Duration::from_secs(61)).status, 503);
    }

    #[test]
    fn routes() {
        let h = Health::new(Duration::from_secs(1));
        let get = |p| route(&Method::GET, p, &h, None);
        assert_eq!(get("/healthz").status, 200);
        assert_eq!(get("/readyz").status, 503);
        let m = get("/metrics");
        assert_eq!(m.status, 404);
        assert!(
            m.body.contains("prometheus exporter is not selected"),
            "{m:?}"
        );
        assert_eq!(get("/").status, 404);
        assert_eq!(route(&Method::POST, "/healthz", &h, None).status, 405);
        let p = PrometheusEndpoint::default();
        let m = route(&Method::GET, "/metrics", &h, Some(&p));
        assert_eq!(m.status, 200);
    }
}
