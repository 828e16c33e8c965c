//! Exporters: where each interval's OTLP requests go.

pub mod stdout;

use opentelemetry_proto::tonic::collector::{
    metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest,
};
use thiserror::Error;

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

/// A destination for OTLP data.
pub trait Exporter {
    fn export_metrics(&mut self, req: &ExportMetricsServiceRequest) -> Result<(), ExportError>;
    fn export_traces(&mut self, req: &ExportTraceServiceRequest) -> Result<(), ExportError>;
}
