//! Exporters: where each interval's OTLP requests go. Stdout writes at once;
//! OTLP queues (bounded) and sends from a worker per signal.

pub mod delta;
pub mod explicit;
pub mod otlp;
pub mod otlp_config;
pub mod otlp_grpc;
pub mod otlp_http;
pub mod otlp_tls;
pub mod prometheus;
pub mod split;
pub mod stdout;

use std::{sync::atomic::Ordering::Relaxed, time::Instant};

use opentelemetry_proto::tonic::{
    collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
    metrics::v1::Metric,
};
use thiserror::Error;
use tracing::warn;

use self::{
    delta::{DeltaConverter, Temporality},
    otlp::SignalExporter,
    stdout::StdoutExporter,
};
use crate::{
    config::{Config, ExporterKind},
    otlp::{self as build, Window},
};

#[derive(Debug, Error)]
pub enum ExportError {
    #[error("{exporter}: writing failed: {source}")]
    Io {
        exporter: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{exporter}: encoding failed: {source}")]
    Encode {
        exporter: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Every configured destination, per signal.
pub struct Exporters {
    stdout: Option<StdoutExporter<std::io::Stdout>>,
    stdout_metrics: bool,
    stdout_traces: bool,
    otlp_metrics: Option<SignalExporter>,
    otlp_traces: Option<SignalExporter>,
    temporality: Temporality,
    delta: DeltaConverter,
    explicit_histograms: bool,
    max_request_bytes: usize,
    queue_bytes: usize,
    /// Whether the interval-larger-than-queue warning was given.
    warned_queue: bool,
    prometheus: Option<prometheus::PrometheusEndpoint>,
}

impl Exporters {
    /// Builds the exporters (OTLP workers start on the current runtime).
    /// An OTLP exporter that cannot start is logged and left out.
    pub fn start(cfg: &Config) -> Self {
        let stdout_metrics = cfg.metrics_exporters.contains(&ExporterKind::Stdout);
        let stdout_traces = cfg.traces_exporters.contains(&ExporterKind::Stdout);
        let otlp = |sc: &Option<otlp_config::SignalConfig>| {
            let sc = sc.clone()?;
            let signal = sc.signal;
            SignalExporter::start(sc, cfg.export_queue_bytes)
                .map_err(|e| warn!(signal = signal.as_str(), "OTLP exporter not started: {e}"))
                .ok()
        };
        Self {
            stdout: (stdout_metrics || stdout_traces).then(StdoutExporter::new),
            stdout_metrics,
            stdout_traces,
            otlp_metrics: otlp(&cfg.otlp_metrics),
            otlp_traces: otlp(&cfg.otlp_traces),
            temporality: cfg
                .otlp_metrics
                .as_ref()
                .map_or(Temporality::Cumulative, |c| c.temporality),
            delta: DeltaConverter::default(),
            prometheus: cfg
                .metrics_exporters
                .contains(&ExporterKind::Prometheus)
                .then(prometheus::PrometheusEndpoint::default),
            max_request_bytes: cfg.export_max_request_bytes.min(cfg.export_queue_bytes),
            queue_bytes: cfg.export_queue_bytes,
            warned_queue: false,
            explicit_histograms: cfg
                .otlp_metrics
                .as_ref()
                .is_some_and(|c| c.explicit_histograms),
        }
    }

    /// The Prometheus exposition, for the HTTP listener to serve at
    /// `/metrics` (None: the prometheus exporter is not selected).
    pub fn prometheus(&self) -> Option<prometheus::PrometheusEndpoint> {
        self.prometheus.clone()
    }

    /// Hands one interval's requests to every destination; never waits on
    /// the network.
    pub fn export(
        &mut self,
        metrics: ExportMetricsServiceRequest,
        traces: ExportTraceServiceRequest,
    ) {
        if let Some(out) = self.stdout.as_mut() {
            if self.stdout_metrics
                && let Err(e) = out.write(&metrics)
            {
                warn!("{e}");
            }
            if self.stdout_traces
                && !traces.resource_spans.is_empty()
                && let Err(e) = out.write(&traces)
            {
                warn!("{e}");
            }
        }
        if let Some(p) = &self.prometheus {
            p.update(&metrics);
        }
        if let Some(o) = &self.otlp_metrics {
            let mut metrics = metrics;
            self.delta.convert(&mut metrics, self.temporality);
            if self.explicit_histograms {
                explicit::to_explicit(&mut metrics);
            }
            let parts = split::metrics(metrics, self.max_request_bytes);
            let bytes: usize = parts.iter().map(|p| p.encoded_len()).sum();
            if bytes > self.queue_bytes && !std::mem::replace(&mut self.warned_queue, true) {
                warn!(
                    "one interval of metrics encodes to {bytes} bytes, more than the whole export \
                     queue ({} bytes): its oldest requests are dropped every interval; raise \
                     --export-queue-bytes",
                    self.queue_bytes
                );
            }
            for part in parts {
                o.submit(part);
            }
        }
        if let Some(o) = &self.otlp_traces
            && !traces.resource_spans.is_empty()
        {
            for part in split::traces(traces, self.max_request_bytes) {
                o.submit(part);
            }
        }
    }

    /// The exporters' own telemetry: items by outcome, retries, queue size.
    pub fn self_metrics(&self, w: Window) -> Vec<Metric> {
        let exporters: Vec<&SignalExporter> = [&self.otlp_metrics, &self.otlp_traces]
            .into_iter()
            .flatten()
            .collect();
        if exporters.is_empty() {
            return Vec::new();
        }
        let signal = |e: &SignalExporter| build::kv_str("hostscope.signal", e.signal.as_str());
        let mut items = Vec::new();
        let mut retries = Vec::new();
        let mut queued = Vec::new();
        let mut latency = Vec::new();
        for e in &exporters {
            let s = &e.stats;
            for (outcome, n) in [
                ("sent", &s.sent),
                ("rejected", &s.rejected),
                ("dropped", &s.dropped),
            ] {
                items.push(build::int_point(
                    vec![signal(e), build::kv_str("hostscope.outcome", outcome)],
                    w,
                    n.load(Relaxed),
                ));
            }
            retries.push(build::int_point(
                vec![signal(e)],
                w,
                s.retries.load(Relaxed),
            ));
            queued.push(build::int_point(
                vec![signal(e)],
                w,
                s.queued_bytes.load(Relaxed),
            ));
            let (count, sum_ns, slots) = s.latency.snapshot();
            latency.push(build::exp_histogram_point(
                vec![signal(e)],
                w,
                count,
                sum_ns,
                &slots,
            ));
        }
        vec![
            build::counter_metric(
                "hostscope.agent.export.items",
                "Data points and spans handed to OTLP exporters, by outcome",
                "{item}",
                items,
            ),
            build::counter_metric(
                "hostscope.agent.export.retries",
                "OTLP export attempts that failed and were retried",
                "{request}",
                retries,
            ),
            build::exp_histogram_metric(
                "hostscope.agent.export.duration",
                "Duration of each OTLP export attempt, including failed ones",
                "s",
                latency,
            ),
            build::gauge_metric(
                "hostscope.agent.export.queue.size",
                "Bytes waiting in the OTLP export queue",
                "By",
                queued,
            ),
        ]
    }

    /// Sends what is queued until `deadline`; reports what it could not.
    pub async fn shutdown(&mut self, deadline: Instant) {
        let metrics = async {
            if let Some(e) = self.otlp_metrics.as_mut() {
                e.shutdown(deadline).await;
            }
        };
        let traces = async {
            if let Some(e) = self.otlp_traces.as_mut() {
                e.shutdown(deadline).await;
            }
        };
        tokio::join!(metrics, traces);
    }
}
