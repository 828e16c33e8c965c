//! OTLP/JSON lines on standard output: each interval's
//! `ExportMetricsServiceRequest` (and, when there are spans,
//! `ExportTraceServiceRequest`) as one line in the protobuf JSON mapping, as
//! the OpenTelemetry Collector's file exporter writes them. Lines are told
//! apart by their top-level key, `resourceMetrics` or `resourceSpans`.

use std::io::Write;

use serde::Serialize;

use super::ExportError;

pub struct StdoutExporter<W: Write> {
    out: W,
}

impl StdoutExporter<std::io::Stdout> {
    pub fn new() -> Self {
        Self {
            out: std::io::stdout(),
        }
    }
}

impl<W: Write> StdoutExporter<W> {
    /// Writes one request as a JSON line and flushes.
    pub fn write(&mut self, value: &impl Serialize) -> Result<(), ExportError> {
        let mut line = serde_json::to_vec(value).map_err(|source| ExportError::Encode {
            exporter: "stdout",
            source,
        })?;
        line.push(b'\n');
        let io = |source| ExportError::Io {
            exporter: "stdout",
            source,
        };
        self.out.write_all(&line).map_err(io)?;
        self.out.flush().map_err(io)
    }
}
