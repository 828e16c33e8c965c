//! OTLP over HTTP with protobuf bodies (`http/protobuf`): POST to the
//! signal's URL, optionally gzip-compressed.

use std::{io::Write as _, time::Duration};

use flate2::{Compression, write::GzEncoder};
use opentelemetry_proto::tonic::collector::{
    metrics::v1::ExportMetricsServiceResponse, trace::v1::ExportTraceServiceResponse,
};
use prost::Message as _;
use reqwest::{
    Client, StatusCode,
    header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER},
};

use super::{
    otlp::{Accepted, Payload, SendError},
    otlp_config::{Signal, SignalConfig},
    otlp_tls,
};

pub struct HttpTransport {
    client: Client,
    url: String,
    gzip: bool,
}

impl HttpTransport {
    pub fn new(cfg: &SignalConfig) -> Result<Self, String> {
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("OTLP header name {k:?}: {e}"))?;
            let value =
                HeaderValue::from_str(v).map_err(|e| format!("OTLP header {k} value: {e}"))?;
            headers.insert(name, value);
        }
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        if cfg.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let mut builder = Client::builder()
            .default_headers(headers)
            .timeout(cfg.timeout);
        if cfg.endpoint.starts_with("https://") {
            builder = builder.tls_backend_preconfigured(otlp_tls::client_config(&cfg.tls)?);
        }
        let client = builder
            .build()
            .map_err(|e| format!("OTLP HTTP client: {e}"))?;
        Ok(Self {
            client,
            url: cfg.endpoint.clone(),
            gzip: cfg.gzip,
        })
    }

    pub async fn send(&mut self, p: &Payload) -> Result<Accepted, SendError> {
        let mut body = p.body.clone();
        if self.gzip {
            let mut gz = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
            gz.write_all(&body)
                .and_then(|()| gz.finish())
                .map(|b| body = b.into())
                .map_err(|e| SendError::Permanent(format!("gzip: {e}")))?;
        }
        let resp = self
            .client
            .post(&self.url)
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Retryable {
                reason: format!("POST {}: {e}", self.url),
                after: None,
            })?;
        let status = resp.status();
        let after = retry_after(resp.headers());
        let bytes = resp.bytes().await.unwrap_or_default();
        if status.is_success() {
            return Ok(decode_partial(p, &bytes));
        }
        let reason = format!("POST {}: HTTP {status}", self.url);
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
        ) {
            Err(SendError::Retryable { reason, after })
        } else {
            Err(SendError::Permanent(reason))
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not honoured; backoff applies).
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let secs: u64 = h.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(300)))
}

fn decode_partial(p: &Payload, body: &[u8]) -> Accepted {
    match p.signal {
        Signal::Metrics => ExportMetricsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|ps| Accepted {
                rejected: ps.rejected_data_points.max(0) as u64,
                message: ps.error_message,
            }),
        Signal::Traces => ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|ps| Accepted {
                rejected: ps.rejected_spans.max(0) as u64,
                message: ps.error_message,
            }),
    }
    .unwrap_or_default()
}
