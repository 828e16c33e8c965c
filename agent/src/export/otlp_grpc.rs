//! OTLP over gRPC: the official `MetricsService`/`TraceService` clients from
//! `opentelemetry-proto`, on a lazily connecting tonic channel that reconnects
//! by itself when a collector comes back.

use std::marker::PhantomData;

use bytes::{BufMut as _, Bytes};
use opentelemetry_proto::tonic::collector::{
    metrics::v1::ExportMetricsServiceResponse, trace::v1::ExportTraceServiceResponse,
};
use tonic::{
    Code, Request, Status,
    client::Grpc,
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_types::StatusExt as _;

use super::{
    otlp::{Accepted, Payload, SendError},
    otlp_config::{Signal, SignalConfig},
};

pub struct GrpcTransport {
    channel: Channel,
    metadata: MetadataMap,
    gzip: bool,
    timeout: std::time::Duration,
}

impl GrpcTransport {
    pub fn new(cfg: &SignalConfig) -> Result<Self, String> {
        let mut endpoint = Endpoint::from_shared(cfg.endpoint.clone())
            .map_err(|e| format!("OTLP gRPC endpoint {:?}: {e}", cfg.endpoint))?
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout);
        if cfg.endpoint.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match &cfg.tls.ca {
                Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
                None => tls.with_native_roots(),
            };
            if let Some((cert, key)) = &cfg.tls.client {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| format!("OTLP gRPC TLS: {e}"))?;
        }
        let mut metadata = MetadataMap::new();
        for (k, v) in &cfg.headers {
            let key = AsciiMetadataKey::from_bytes(k.as_bytes())
                .map_err(|e| format!("OTLP header name {k:?}: {e}"))?;
            let value = AsciiMetadataValue::try_from(v.as_str())
                .map_err(|e| format!("OTLP header {k} value: {e}"))?;
            metadata.insert(key, value);
        }
        Ok(Self {
            channel: endpoint.connect_lazy(),
            metadata,
            gzip: cfg.gzip,
            timeout: cfg.timeout,
        })
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        *req.metadata_mut() = self.metadata.clone();
        req.set_timeout(self.timeout);
        req
    }

    pub async fn send(&mut self, p: &Payload) -> Result<Accepted, SendError> {
        let mut grpc = Grpc::new(self.channel.clone()).accept_compressed(CompressionEncoding::Gzip);
        if self.gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        grpc.ready().await.map_err(|e| SendError::Retryable {
            reason: format!("gRPC channel not ready: {e}"),
            after: None,
        })?;
        let req = self.request(p.body.clone());
        let result = match p.signal {
            Signal::Metrics => grpc
                .unary(
                    req,
                    PathAndQuery::from_static(METRICS_EXPORT),
                    EncodedCodec::<ExportMetricsServiceResponse>::default(),
                )
                .await
                .map(|r| {
                    let ps = r.into_inner().partial_success.unwrap_or_default();
                    Accepted {
                        rejected: ps.rejected_data_points.max(0) as u64,
                        message: ps.error_message,
                    }
                }),
            Signal::Traces => grpc
                .unary(
                    req,
                    PathAndQuery::from_static(TRACES_EXPORT),
                    EncodedCodec::<ExportTraceServiceResponse>::default(),
                )
                .await
                .map(|r| {
                    let ps = r.into_inner().partial_success.unwrap_or_default();
                    Accepted {
                        rejected: ps.rejected_spans.max(0) as u64,
                        message: ps.error_message,
                    }
                }),
        };
        result.map_err(classify)
    }
}

/// The `Export` methods of the official OTLP services (the same paths the
/// generated clients in `opentelemetry-proto` call).
const METRICS_EXPORT: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
const TRACES_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A codec that sends an already encoded request as it is and decodes the
/// response with prost: the exporter encodes each request once, when it is
/// queued, instead of cloning and re-encoding it on every attempt.
struct EncodedCodec<R>(PhantomData<R>);

impl<R> Default for EncodedCodec<R> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<R: prost::Message + Default + Send + 'static> Codec for EncodedCodec<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = BytesEncoder;
    type Decoder = ProstDecoder<R>;

    fn encoder(&mut self) -> Self::Encoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder(PhantomData)
    }
}

struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

struct ProstDecoder<R>(PhantomData<R>);

impl<R: prost::Message + Default> Decoder for ProstDecoder<R> {
    type Item = R;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<R>, Status> {
        R::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding the OTLP response: {e}")))
    }
}

/// The OTLP spec's retryable gRPC codes; RESOURCE_EXHAUSTED only when the
/// server says when to retry (RetryInfo), which is honoured for any code.
fn classify(status: Status) -> SendError {
    let after = status.get_details_retry_info().and_then(|r| r.retry_delay);
    let reason = format!("gRPC {:?}: {}", status.code(), status.message());
    let retryable = match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => true,
        Code::ResourceExhausted => after.is_some(),
        _ => false,
    };
    if retryable {
        SendError::Retryable { reason, after }
    } else {
        SendError::Permanent(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tonic_types::ErrorDetails;

    #[test]
    fn retryable_codes_follow_the_spec() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::DataLoss,
        ] {
            assert!(
                matches!(
                    classify(Status::new(code, "x")),
                    SendError::Retryable { after: None, .. }
                ),
                "{code:?}"
            );
        }
        for code in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::ResourceExhausted,
        ] {
            assert!(
                matches!(classify(Status::new(code, "x")), SendError::Permanent(_)),
                "{code:?}"
            );
        }
    }

    #[test]
    fn retry_info_is_honoured_and_makes_resource_exhausted_retryable() {
        let details = ErrorDetails::with_retry_info(Some(Duration::from_secs(3)));
        let status = Status::with_error_details(Code::ResourceExhausted, "slow down", details);
        match classify(status) {
            SendError::Retryable { after, .. } => assert_eq!(after, Some(Duration::from_secs(3))),
            other => panic!("expected retryable, got {other:?}"),
        }
    }
}
