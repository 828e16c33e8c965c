//! OTLP over HTTP with protobuf bodies (`http/protobuf`): POST to the
//! signal's URL, optionally gzip-compressed.

use std::{
    io::Write as _,
    time::{Duration, SystemTime},
};

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

/// Longest `Retry-After` obeyed; a longer one waits this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// `Retry-After` as delay-seconds or as an HTTP-date (RFC 9110 10.2.3); a
/// date in the past means now. Anything else is ignored (backoff applies).
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    retry_after_value(h.get(RETRY_AFTER)?.to_str().ok()?, SystemTime::now())
}

fn retry_after_value(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(d.min(MAX_RETRY_AFTER))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = httpdate::parse_http_date("Sun, 22 Nov 2026 10:00:00 GMT").unwrap();
        assert_eq!(retry_after_value("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after_value("Sun, 22 Nov 2026 10:00:42 GMT", now),
            Some(Duration::from_secs(42))
        );
        assert_eq!(
            retry_after_value("Sun, 22 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past: retry now"
        );
        assert_eq!(retry_after_value("3600", now), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after_value("soon", now), None);
    }
}
