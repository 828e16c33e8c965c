//! A minimal OTLP/gRPC receiver for benchmarks: the official
//! `MetricsService`/`TraceService` servers from `opentelemetry-proto` with
//! the gRPC default 4 MiB receive limit, that decode every request, count
//! its data points and spans, and keep nothing.
//!
//! `hostscope-sink` listens on 127.0.0.1 (an ephemeral port), prints
//! `listening <addr>`, then once a second a JSON line with running totals:
//! `{"requests":R,"points":P,"spans":S,"bytes":B}`. It exits when stdin
//! closes.

use std::{
    io::Read as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
            metrics_service_server::{MetricsService, MetricsServiceServer},
        },
        trace::v1::{
            ExportTraceServiceRequest, ExportTraceServiceResponse,
            trace_service_server::{TraceService, TraceServiceServer},
        },
    },
    metrics::v1::metric::Data,
};
use prost::Message as _;
use tonic::{Request, Response, Status, codec::CompressionEncoding};

#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    points: AtomicU64,
    spans: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Clone)]
struct Sink(Arc<Totals>);

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let req = request.into_inner();
        let points: usize = req
            .resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .map(|m| match &m.data {
                Some(Data::Gauge(g)) => g.data_points.len(),
                Some(Data::Sum(s)) => s.data_points.len(),
                Some(Data::Histogram(h)) => h.data_points.len(),
                Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
                Some(Data::Summary(s)) => s.data_points.len(),
                None => 0,
            })
            .sum();
        let t = &self.0;
        t.requests.fetch_add(1, Relaxed);
        t.points.fetch_add(points as u64, Relaxed);
        t.bytes.fetch_add(req.encoded_len() as u64, Relaxed);
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let req = request.into_inner();
        let spans: usize = req
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        let t = &self.0;
        t.requests.fetch_add(1, Relaxed);
        t.spans.fetch_add(spans as u64, Relaxed);
        t.bytes.fetch_add(req.encoded_len() as u64, Relaxed);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let totals = Arc::new(Totals::default());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind 127.0.0.1");
    println!("listening {}", listener.local_addr().unwrap());
    let sink = Sink(totals.clone());
    rt.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(
                MetricsServiceServer::new(sink.clone())
                    .accept_compressed(CompressionEncoding::Gzip),
            )
            .add_service(TraceServiceServer::new(sink).accept_compressed(CompressionEncoding::Gzip))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .expect("gRPC sink");
    });
    rt.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            println!(
                "{{\"requests\":{},\"points\":{},\"spans\":{},\"bytes\":{}}}",
                totals.requests.load(Relaxed),
                totals.points.load(Relaxed),
                totals.spans.load(Relaxed),
                totals.bytes.load(Relaxed)
            );
        }
    });
    // Until stdin closes.
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}
