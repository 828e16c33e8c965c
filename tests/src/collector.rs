//! Real OTLP peers for the export tests: a gRPC collector on the official
//! `opentelemetry-proto` service definitions (tonic server) and an OTLP/HTTP
//! collector (hyper), both on 127.0.0.1. Each records what it received
//! (decoded, with headers and whether it was gzip-compressed) and answers
//! from a script of replies, then `Ok` once the script is empty.

use std::{
    collections::VecDeque,
    io::Read as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use http_body_util::{BodyExt as _, Full};
use hyper::{body::Bytes, service::service_fn};
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
};
use prost::Message as _;
use serde_json::Value;
use tokio::sync::oneshot;
use tonic::{Code, Request, Response, Status, codec::CompressionEncoding};
use tonic_types::{ErrorDetails, StatusExt as _};

/// What a collector answers to one metrics request.
#[derive(Clone, Debug)]
pub enum Reply {
    Ok,
    /// Accepted, but `rejected` data points refused.
    Partial {
        rejected: i64,
        message: String,
    },
    /// gRPC: this status code.
    Grpc(Code),
    /// gRPC: this status code with a `google.rpc.RetryInfo` detail asking
    /// for this delay.
    GrpcRetryInfo(Code, Duration),
    /// HTTP: this status, with `Retry-After: secs` if given.
    Http(u16, Option<u64>),
}

/// One request as the collector saw it.
#[derive(Clone, Debug)]
pub struct Received {
    /// `metrics` or `traces`.
    pub signal: &'static str,
    /// The request in the OTLP/JSON mapping (as the stdout exporter prints).
    pub json: Value,
    /// Header names lower-case.
    pub headers: Vec<(String, String)>,
    pub gzip: bool,
    /// HTTP: the path posted to.
    pub path: String,
    pub at: Instant,
    /// What the collector answered.
    pub reply: String,
    /// Size of the request's protobuf encoding (uncompressed).
    pub bytes: usize,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `timeUnixNano` of the first data point: which interval this was.
    pub fn interval_time(&self) -> Option<String> {
        let rm = self.json["resourceMetrics"].get(0)?;
        let m = rm["scopeMetrics"][0]["metrics"].get(0)?;
        ["sum", "gauge", "histogram", "exponentialHistogram"]
            .iter()
            .find_map(|k| m.get(*k))
            .and_then(|d| d["dataPoints"][0]["timeUnixNano"].as_str())
            .map(str::to_string)
    }
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    script: VecDeque<Reply>,
}

type Shared = Arc<Mutex<State>>;

fn next_reply(state: &Shared) -> Reply {
    state
        .lock()
        .unwrap()
        .script
        .pop_front()
        .unwrap_or(Reply::Ok)
}

/// Server TLS of a collector: its certificate and key, and (for mutual TLS)
/// the CA its clients' certificates must chain to. All PEM.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

/// A running collector; stopped (and its port freed) on `stop` or drop.
pub struct Collector {
    pub addr: SocketAddr,
    tls: Option<ServerTls>,
    state: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Collector {
    /// A gRPC collector on `port` (0: any free port).
    pub fn grpc(port: u16) -> Collector {
        Self::start(port, true, None, Shared::default())
    }

    /// An OTLP/HTTP collector on `port` (0: any free port).
    pub fn http(port: u16) -> Collector {
        Self::start(port, false, None, Shared::default())
    }

    /// A collector serving over TLS (gRPC or HTTP) on any free port.
    pub fn with_tls(grpc: bool, tls: ServerTls) -> Collector {
        Self::start(0, grpc, Some(tls), Shared::default())
    }

    /// `http://127.0.0.1:<port>`, or `https://` when serving TLS.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Replies for the next metrics requests, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Waits until `pred` holds over everything received; panics with what
    /// was received after `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.received();
            if pred(&r) {
                return r;
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = r
                    .iter()
                    .map(|x| {
                        format!(
                            "{} {} -> {}",
                            x.signal,
                            x.interval_time().unwrap_or_default(),
                            x.reply
                        )
                    })
                    .collect();
                panic!(
                    "collector: expected {what} within {timeout:?}; received {}:\n{}",
                    r.len(),
                    seen.join("\n")
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops serving and frees the port (what was received is kept).
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("collector thread panicked");
        }
    }

    /// Serves again on the same port, with the same record.
    pub fn restart(&mut self, grpc: bool) {
        self.stop();
        let again = Self::start(self.addr.port(), grpc, self.tls.clone(), self.state.clone());
        *self = again;
    }

    fn start(port: u16, grpc: bool, tls: Option<ServerTls>, state: Shared) -> Collector {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("collector: bind 127.0.0.1:{port}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let st = state.clone();
        let server_tls = tls.clone();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                if grpc {
                    serve_grpc(listener, st, server_tls, rx).await;
                } else {
                    serve_http(listener, st, server_tls, rx).await;
                }
            });
        });
        Collector {
            addr,
            tls,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Grpc(Shared);

/// Headers, whether gzip-encoded, and the message as JSON of a gRPC request.
fn seen<T: serde::Serialize>(request: &Request<T>) -> (Vec<(String, String)>, bool, Value) {
    let headers: Vec<(String, String)> = request
        .metadata()
        .clone()
        .into_headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let gzip = headers
        .iter()
        .any(|(k, v)| k == "grpc-encoding" && v == "gzip");
    (
        headers,
        gzip,
        serde_json::to_value(request.get_ref()).unwrap(),
    )
}

#[allow(clippy::too_many_arguments)]
fn record(
    bytes: usize,
    state: &Shared,
    signal: &'static str,
    json: Value,
    headers: Vec<(String, String)>,
    gzip: bool,
    path: &str,
    reply: &Reply,
) {
    state.lock().unwrap().received.push(Received {
        signal,
        json,
        gzip,
        headers,
        path: path.to_string(),
        at: Instant::now(),
        reply: format!("{reply:?}"),
        bytes,
    });
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let (headers, gzip, json) = seen(&request);
        let reply = next_reply(&self.0);
        record(
            request.get_ref().encoded_len(),
            &self.0,
            "metrics",
            json,
            headers,
            gzip,
            "",
            &reply,
        );
        match reply {
            Reply::Ok | Reply::Http(..) => {
                Ok(Response::new(ExportMetricsServiceResponse::default()))
            }
            Reply::Partial { rejected, message } => {
                Ok(Response::new(ExportMetricsServiceResponse {
                    partial_success: Some(ExportMetricsPartialSuccess {
                        rejected_data_points: rejected,
                        error_message: message,
                    }),
                }))
            }
            Reply::Grpc(code) => Err(Status::new(code, "scripted failure")),
            Reply::GrpcRetryInfo(code, delay) => Err(Status::with_error_details(
                code,
                "scripted failure with RetryInfo",
                ErrorDetails::with_retry_info(Some(delay)),
            )),
        }
    }
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let (headers, gzip, json) = seen(&request);
        record(
            request.get_ref().encoded_len(),
            &self.0,
            "traces",
            json,
            headers,
            gzip,
            "",
            &Reply::Ok,
        );
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn serve_grpc(
    listener: tokio::net::TcpListener,
    state: Shared,
    tls: Option<ServerTls>,
    stop: oneshot::Receiver<()>,
) {
    let metrics =
        MetricsServiceServer::new(Grpc(state.clone())).accept_compressed(CompressionEncoding::Gzip);
    let traces = TraceServiceServer::new(Grpc(state)).accept_compressed(CompressionEncoding::Gzip);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        let mut config = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&tls.cert, &tls.key));
        if let Some(ca) = &tls.client_ca {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        builder = builder.tls_config(config).expect("collector TLS config");
    }
    builder
        .add_service(metrics)
        .add_service(traces)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async {
                let _ = stop.await;
            },
        )
        .await
        .expect("gRPC collector");
}

async fn serve_http(
    listener: tokio::net::TcpListener,
    state: Shared,
    tls: Option<ServerTls>,
    mut stop: oneshot::Receiver<()>,
) {
    let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(Arc::new(rustls_server(&t))));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| handle_http(state.clone(), req));
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        None => {
                            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            // A client without an acceptable certificate fails here.
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(hyper_util::rt::TokioIo::new(tls), svc).await;
                            }
                        }
                    }
                });
            }
        }
    }
    // Dropping the connections frees the port at once.
    conns.abort_all();
}

/// rustls server configuration, requiring a client certificate from
/// `client_ca` when given.
fn rustls_server(tls: &ServerTls) -> tokio_rustls::rustls::ServerConfig {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    use tokio_rustls::rustls::{self, RootCertStore, server::WebPkiClientVerifier};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&tls.cert)
        .collect::<Result<_, _>>()
        .expect("collector certificate");
    let key = PrivateKeyDer::from_pem_slice(&tls.key).expect("collector key");
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                roots.add(c.expect("client CA")).expect("client CA");
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .expect("collector certificate and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

async fn handle_http(
    state: Shared,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let gzip = headers
        .iter()
        .any(|(k, v)| k == "content-encoding" && v == "gzip");
    let mut body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    if gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .expect("gzip body");
        body = out;
    }
    let (signal, json, reply) = match path.as_str() {
        "/v1/metrics" => {
            let r = ExportMetricsServiceRequest::decode(&body[..]).expect("protobuf metrics body");
            (
                "metrics",
                serde_json::to_value(&r).unwrap(),
                next_reply(&state),
            )
        }
        "/v1/traces" => {
            let r = ExportTraceServiceRequest::decode(&body[..]).expect("protobuf traces body");
            ("traces", serde_json::to_value(&r).unwrap(), Reply::Ok)
        }
        other => panic!("collector: POST to unexpected path {other}"),
    };
    record(
        body.len(),
        &state,
        signal,
        json,
        headers,
        gzip,
        &path,
        &reply,
    );
    let mut resp = hyper::Response::builder().header("content-type", "application/x-protobuf");
    let body = match reply {
        Reply::Ok | Reply::Grpc(_) | Reply::GrpcRetryInfo(..) => {
            ExportMetricsServiceResponse::default().encode_to_vec()
        }
        Reply::Partial { rejected, message } => ExportMetricsServiceResponse {
            partial_success: Some(ExportMetricsPartialSuccess {
                rejected_data_points: rejected,
                error_message: message,
            }),
        }
        .encode_to_vec(),
        Reply::Http(status, retry_after) => {
            resp = resp.status(status);
            if let Some(s) = retry_after {
                resp = resp.header("retry-after", s.to_string());
            }
            Vec::new()
        }
    };
    Ok(resp.body(Full::new(Bytes::from(body))).unwrap())
}
