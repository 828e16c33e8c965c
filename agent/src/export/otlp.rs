//! The OTLP exporter: a bounded queue (in bytes) per signal between measuring
//! and sending, and a worker per signal that sends with retries as the OTLP
//! specification asks. Measuring never waits for the network: when the
//! collector is slow or down, the oldest queued batches are dropped first
//! and every dropped data point or span is counted. With cumulative
//! temporality a later batch carries everything a dropped one had, so an
//! outage costs resolution, not totals.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hostscope_common::syscalls::{HIST_SLOTS, slot_of_ns};
use tokio::{sync::Notify, task::JoinHandle};
use tracing::{debug, info, warn};

use super::{
    otlp_config::{Protocol, Signal, SignalConfig},
    otlp_grpc::GrpcTransport,
    otlp_http::HttpTransport,
};

/// First retry waits up to this long (full jitter: uniformly 0..=cap).
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// The cap of the backoff doubles per attempt up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A batch still failing after this long is dropped (and counted).
const MAX_RETRY_ELAPSED: Duration = Duration::from_secs(60);

/// One encoded request for one signal. Requests are encoded once, when
/// queued: the queue's bound in bytes is then the memory it holds, and a
/// retry resends the same bytes.
#[derive(Clone, Debug)]
pub struct Payload {
    pub signal: Signal,
    /// The protobuf-encoded `Export*ServiceRequest`.
    pub body: Bytes,
    /// Data points or spans carried.
    pub items: u64,
}

impl Payload {
    pub fn encoded_len(&self) -> usize {
        self.body.len()
    }

    pub fn items(&self) -> u64 {
        self.items
    }
}

/// What a server said to an export that it accepted.
#[derive(Debug, Default)]
pub struct Accepted {
    /// Data points or spans it rejected (partial success).
    pub rejected: u64,
    pub message: String,
}

/// Why an export failed.
#[derive(Debug)]
pub enum SendError {
    /// Worth trying again, after `after` if the server said how long.
    Retryable {
        reason: String,
        after: Option<Duration>,
    },
    /// Trying again cannot help (bad request, unauthenticated, ...).
    Permanent(String),
}

/// Counters of one signal's exporter, read into self-telemetry.
#[derive(Debug, Default)]
pub struct SignalStats {
    pub sent: AtomicU64,
    pub rejected: AtomicU64,
    pub dropped: AtomicU64,
    pub retries: AtomicU64,
    pub queued_bytes: AtomicU64,
    /// Items of the payload being sent right now (lost if the worker is
    /// stopped at the shutdown deadline).
    pub in_flight: AtomicU64,
    /// Duration of every export attempt, in the kernel's log2 slots.
    pub latency: Latency,
}

/// A histogram of export-attempt durations in the same power-of-two-seconds
/// slots as the kernel's syscall histograms (`slot_of_ns`).
#[derive(Debug)]
pub struct Latency {
    pub slots: [AtomicU64; HIST_SLOTS],
    pub count: AtomicU64,
    pub sum_ns: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Latency {
    fn record(&self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        self.slots[slot_of_ns(ns)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// (count, sum in ns, slots) as of now.
    pub fn snapshot(&self) -> (u64, u64, [u64; HIST_SLOTS]) {
        let slots = std::array::from_fn(|i| self.slots[i].load(Relaxed));
        (self.count.load(Relaxed), self.sum_ns.load(Relaxed), slots)
    }
}

struct QueueState {
    items: VecDeque<(Payload, usize)>,
    bytes: usize,
    closed: bool,
    /// Whether the queue-full warning was given since the queue last ran
    /// empty (once per backlog, not once per dropped request).
    warned_full: bool,
}

/// Bounded FIFO of payloads; full means the oldest go first.
struct Queue {
    state: Mutex<QueueState>,
    ready: Notify,
    capacity: usize,
    stats: Arc<SignalStats>,
}

impl Queue {
    fn push(&self, payload: Payload) {
        let len = payload.encoded_len();
        let mut s = self.state.lock().unwrap();
        if s.closed {
            return;
        }
        if len > self.capacity {
            warn!(
                bytes = len,
                capacity = self.capacity,
                "export batch larger than the whole queue; dropped"
            );
            self.stats.dropped.fetch_add(payload.items(), Relaxed);
            return;
        }
        while s.bytes + len > self.capacity {
            let Some((old, old_len)) = s.items.pop_front() else {
                break;
            };
            s.bytes -= old_len;
            self.stats.dropped.fetch_add(old.items(), Relaxed);
            if !std::mem::replace(&mut s.warned_full, true) {
                warn!(
                    capacity = self.capacity,
                    "export queue full: dropping the oldest data (counted in hostscope.agent.export.items, outcome dropped)"
                );
            }
        }
        s.bytes += len;
        s.items.push_back((payload, len));
        self.stats.queued_bytes.store(s.bytes as u64, Relaxed);
        drop(s);
        self.ready.notify_one();
    }

    /// The oldest payload; None once closed and empty.
    async fn pop(&self) -> Option<Payload> {
        loop {
            {
                let mut s = self.state.lock().unwrap();
                if let Some((p, len)) = s.items.pop_front() {
                    s.bytes -= len;
                    self.stats.queued_bytes.store(s.bytes as u64, Relaxed);
                    return Some(p);
                }
                if s.closed {
                    return None;
                }
                s.warned_full = false;
            }
            self.ready.notified().await;
        }
    }

    fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.ready.notify_one();
    }

    /// Drops everything still queued, counting it; returns the items dropped.
    fn discard(&self) -> u64 {
        let mut s = self.state.lock().unwrap();
        let n: u64 = s.items.drain(..).map(|(p, _)| p.items()).sum();
        s.bytes = 0;
        self.stats.queued_bytes.store(0, Relaxed);
        self.stats.dropped.fetch_add(n, Relaxed);
        n
    }
}

/// The wire half of an exporter.
pub enum Transport {
    Grpc(GrpcTransport),
    Http(HttpTransport),
}

impl Transport {
    async fn send(&mut self, p: &Payload) -> Result<Accepted, SendError> {
        match self {
            Transport::Grpc(t) => t.send(p).await,
            Transport::Http(t) => t.send(p).await,
        }
    }
}

/// One signal's exporter: its queue and its worker.
pub struct SignalExporter {
    pub signal: Signal,
    queue: Arc<Queue>,
    pub stats: Arc<SignalStats>,
    worker: Option<JoinHandle<()>>,
}

impl SignalExporter {
    /// Starts the worker on the current tokio runtime.
    pub fn start(cfg: SignalConfig, queue_bytes: usize) -> Result<Self, String> {
        let transport = match cfg.protocol {
            Protocol::Grpc => Transport::Grpc(GrpcTransport::new(&cfg)?),
            Protocol::HttpProtobuf => Transport::Http(HttpTransport::new(&cfg)?),
        };
        let stats = Arc::new(SignalStats::default());
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
                warned_full: false,
            }),
            ready: Notify::new(),
            capacity: queue_bytes,
            stats: stats.clone(),
        });
        let worker = tokio::spawn(run(cfg.signal, transport, queue.clone(), stats.clone()));
        Ok(Self {
            signal: cfg.signal,
            queue,
            stats,
            worker: Some(worker),
        })
    }

    /// Queues a payload; never waits.
    pub fn submit(&self, payload: Payload) {
        self.queue.push(payload);
    }

    /// Stops taking data, sends what is queued until `deadline`, then drops
    /// and reports the rest.
    pub async fn shutdown(&mut self, deadline: Instant) {
        self.queue.close();
        let Some(mut worker) = self.worker.take() else {
            return;
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, &mut worker).await.is_err() {
            worker.abort();
            let in_flight = self.stats.in_flight.swap(0, Relaxed);
            self.stats.dropped.fetch_add(in_flight, Relaxed);
            let n = self.queue.discard() + in_flight;
            warn!(
                signal = self.signal.as_str(),
                "export flush deadline reached: {n} items (data points or spans) not sent"
            );
        }
    }
}

async fn run(signal: Signal, mut transport: Transport, queue: Arc<Queue>, stats: Arc<SignalStats>) {
    let mut failing = false;
    while let Some(payload) = queue.pop().await {
        stats.in_flight.store(payload.items(), Relaxed);
        deliver(signal, &mut transport, &payload, &stats, &mut failing).await;
        stats.in_flight.store(0, Relaxed);
    }
}

/// Sends one payload, retrying what the spec says to retry. `failing` tracks
/// an outage so that its start and end are logged once, not every attempt.
async fn deliver(
    signal: Signal,
    transport: &mut Transport,
    p: &Payload,
    stats: &SignalStats,
    failing: &mut bool,
) {
    let items = p.items();
    let started = Instant::now();
    let mut attempt: u32 = 0;
    loop {
        let attempt_started = Instant::now();
        let result = transport.send(p).await;
        stats.latency.record(attempt_started.elapsed());
        match result {
            Ok(accepted) => {
                if std::mem::take(failing) {
                    info!(signal = signal.as_str(), "export recovered");
                }
                if accepted.rejected > 0 {
                    warn!(
                        signal = signal.as_str(),
                        "partial success: the collector rejected {} of {items} items: {}",
                        accepted.rejected,
                        accepted.message
                    );
                }
                let rejected = accepted.rejected.min(items);
                stats.rejected.fetch_add(rejected, Relaxed);
                stats.sent.fetch_add(items - rejected, Relaxed);
                return;
            }
            Err(SendError::Permanent(reason)) => {
                warn!(
                    signal = signal.as_str(),
                    "export rejected, not retrying: {reason}"
                );
                stats.rejected.fetch_add(items, Relaxed);
                return;
            }
            Err(SendError::Retryable { reason, after }) => {
                let delay = after.unwrap_or_else(|| full_jitter(attempt));
                if started.elapsed() + delay > MAX_RETRY_ELAPSED {
                    warn!(
                        signal = signal.as_str(),
                        "export failed for {:?}, dropping {items} items: {reason}",
                        started.elapsed()
                    );
                    stats.dropped.fetch_add(items, Relaxed);
                    return;
                }
                if std::mem::replace(failing, true) {
                    debug!(
                        signal = signal.as_str(),
                        ?delay,
                        attempt,
                        "export failed, retrying: {reason}"
                    );
                } else {
                    warn!(
                        signal = signal.as_str(),
                        "export failing, will retry with backoff: {reason}"
                    );
                }
                stats.retries.fetch_add(1, Relaxed);
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Exponential backoff with full jitter: uniform in `0..=min(MAX, INITIAL * 2^attempt)`.
fn full_jitter(attempt: u32) -> Duration {
    let cap = INITIAL_BACKOFF
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF);
    let mut b = [0u8; 8];
    let r = if getrandom::fill(&mut b).is_ok() {
        u64::from_le_bytes(b)
    } else {
        u64::MAX / 2
    };
    let frac = (r >> 11) as f64 / (1u64 << 53) as f64;
    cap.mul_f64(frac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        trace::v1::{ResourceSpans, ScopeSpans, Span},
    };

    fn spans(n: usize) -> Payload {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default(); n],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        super::super::split::traces(req, usize::MAX).remove(0)
    }

    fn queue(capacity: usize) -> Queue {
        Queue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
                warned_full: false,
            }),
            ready: Notify::new(),
            capacity,
            stats: Arc::new(SignalStats::default()),
        }
    }

    #[test]
    fn full_queue_drops_oldest_and_counts_items() {
        let one = spans(3).encoded_len();
        let q = queue(one * 2);
        q.push(spans(3));
        q.push(spans(3));
        q.push(spans(3)); // evicts the first
        assert_eq!(q.stats.dropped.load(Relaxed), 3);
        assert_eq!(q.state.lock().unwrap().items.len(), 2);
        assert_eq!(q.stats.queued_bytes.load(Relaxed), (one * 2) as u64);
        q.push(spans(100)); // larger than the whole queue
        assert_eq!(q.stats.dropped.load(Relaxed), 103);
        assert_eq!(q.discard(), 6);
        assert_eq!(q.stats.dropped.load(Relaxed), 109);
    }

    #[test]
    fn jitter_stays_under_the_cap() {
        for attempt in 0..40 {
            let cap = INITIAL_BACKOFF
                .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
                .min(MAX_BACKOFF);
            for _ in 0..50 {
                assert!(full_jitter(attempt) <= cap);
            }
        }
    }
}
