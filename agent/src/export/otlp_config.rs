//! OTLP exporter settings from the standard `OTEL_EXPORTER_OTLP_*`
//! environment variables (OpenTelemetry "OTLP Exporter Configuration"), with
//! the per-signal `_METRICS_` / `_TRACES_` variants taking precedence over the
//! generic ones.

use std::time::Duration;

use thiserror::Error;

use super::delta::Temporality;

/// Wire protocol of an OTLP exporter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Which OTLP signal a setting is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Metrics,
    Traces,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Metrics => "metrics",
            Signal::Traces => "traces",
        }
    }

    fn env_infix(self) -> &'static str {
        match self {
            Signal::Metrics => "METRICS_",
            Signal::Traces => "TRACES_",
        }
    }

    /// Path appended to a generic HTTP endpoint.
    fn http_path(self) -> &'static str {
        match self {
            Signal::Metrics => "v1/metrics",
            Signal::Traces => "v1/traces",
        }
    }
}

/// Settings of one signal's OTLP exporter.
#[derive(Clone, Debug, PartialEq)]
pub struct SignalConfig {
    pub signal: Signal,
    pub protocol: Protocol,
    /// gRPC: the server's base URI. HTTP: the full URL requests are posted to.
    pub endpoint: String,
    /// Lower-case header names with decoded values.
    pub headers: Vec<(String, String)>,
    pub gzip: bool,
    pub timeout: Duration,
    /// Metrics only: OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE.
    pub temporality: Temporality,
    /// Metrics only: explicit buckets (the spec's default) or base-2
    /// exponential (OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION).
    pub explicit_histograms: bool,
    /// PEM contents for TLS, read when the configuration is read.
    pub tls: TlsFiles,
}

/// PEM files named by OTEL_EXPORTER_OTLP_CERTIFICATE (trusted CA),
/// OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY
/// (mutual TLS). Without a CA, the system's trusted roots are used.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsFiles {
    pub ca: Option<Vec<u8>>,
    /// Client certificate chain and private key, both or neither.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// A variable that does not hold a usable value, named with what it held.
#[derive(Debug, Error, PartialEq)]
pub enum OtlpConfigError {
    #[error("{var}={value:?}: expected {expected}")]
    Invalid {
        var: String,
        value: String,
        expected: &'static str,
    },
}

/// The spec's default timeout: 10 seconds.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl SignalConfig {
    /// Reads the settings of `signal` through `env` (a variable lookup).
    pub fn from_env(
        signal: Signal,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, OtlpConfigError> {
        // The signal-specific variable wins over the generic one.
        let var = |suffix: &str| -> Option<(String, String)> {
            let specific = format!("OTEL_EXPORTER_OTLP_{}{suffix}", signal.env_infix());
            let generic = format!("OTEL_EXPORTER_OTLP_{suffix}");
            [specific, generic].into_iter().find_map(|name| {
                env(&name)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (name, v))
            })
        };
        let invalid = |(var, value): (String, String), expected| OtlpConfigError::Invalid {
            var,
            value,
            expected,
        };

        let protocol = match var("PROTOCOL") {
            None => Protocol::HttpProtobuf,
            Some((n, v)) => match v.trim() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                _ => return Err(invalid((n, v), "grpc or http/protobuf")),
            },
        };

        let specific_endpoint = env(&format!(
            "OTEL_EXPORTER_OTLP_{}ENDPOINT",
            signal.env_infix()
        ))
        .filter(|v| !v.trim().is_empty());
        let endpoint = match (protocol, specific_endpoint) {
            (_, Some(e)) => e.trim().to_string(),
            (Protocol::Grpc, None) => env("OTEL_EXPORTER_OTLP_ENDPOINT")
                .filter(|v| !v.trim().is_empty())
                .map_or_else(
                    || "http://localhost:4317".to_string(),
                    |e| e.trim().to_string(),
                ),
            (Protocol::HttpProtobuf, None) => {
                let base = env("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .filter(|v| !v.trim().is_empty())
                    .map_or_else(
                        || "http://localhost:4318".to_string(),
                        |e| e.trim().to_string(),
                    );
                format!("{}/{}", base.trim_end_matches('/'), signal.http_path())
            }
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            let name = format!("OTEL_EXPORTER_OTLP_{}ENDPOINT", signal.env_infix());
            return Err(invalid(
                (name, endpoint),
                "a URL starting with http:// or https://",
            ));
        }

        let headers = match var("HEADERS") {
            None => Vec::new(),
            Some((n, v)) => parse_headers(&v).ok_or_else(|| {
                invalid(
                    (n, v),
                    "comma-separated key=value pairs (values URL-encoded)",
                )
            })?,
        };
        let gzip = match var("COMPRESSION") {
            None => false,
            Some((n, v)) => match v.trim() {
                "gzip" => true,
                "none" => false,
                _ => return Err(invalid((n, v), "gzip or none")),
            },
        };
        let timeout = match var("TIMEOUT") {
            None => DEFAULT_TIMEOUT,
            Some((n, v)) => match v.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => return Err(invalid((n, v), "a positive number of milliseconds")),
            },
        };
        let temporality = match env("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
            .filter(|v| !v.trim().is_empty())
        {
            None => Temporality::Cumulative,
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "cumulative" => Temporality::Cumulative,
                "delta" => Temporality::Delta,
                "lowmemory" => Temporality::LowMemory,
                _ => {
                    let n = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE".to_string();
                    return Err(invalid((n, v), "cumulative, delta or lowmemory"));
                }
            },
        };
        let read = |suffix: &str| -> Result<Option<Vec<u8>>, OtlpConfigError> {
            let Some((n, path)) = var(suffix) else {
                return Ok(None);
            };
            std::fs::read(path.trim())
                .map(Some)
                .map_err(|e| OtlpConfigError::Invalid {
                    var: n,
                    value: path,
                    expected: if e.kind() == std::io::ErrorKind::NotFound {
                        "a readable PEM file (not found)"
                    } else {
                        "a readable PEM file"
                    },
                })
        };
        let ca = read("CERTIFICATE")?;
        let client = match (read("CLIENT_CERTIFICATE")?, read("CLIENT_KEY")?) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(OtlpConfigError::Invalid {
                    var: "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE".into(),
                    value: String::new(),
                    expected: "to be set together with OTEL_EXPORTER_OTLP_CLIENT_KEY",
                });
            }
        };
        let var_name = "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION";
        let explicit_histograms = match env(var_name).filter(|v| !v.trim().is_empty()) {
            None => true,
            Some(v) => match v.trim() {
                "explicit_bucket_histogram" => true,
                "base2_exponential_bucket_histogram" => false,
                _ => {
                    return Err(invalid(
                        (var_name.to_string(), v),
                        "explicit_bucket_histogram or base2_exponential_bucket_histogram",
                    ));
                }
            },
        };
        Ok(SignalConfig {
            explicit_histograms,
            tls: TlsFiles { ca, client },
            temporality,
            signal,
            protocol,
            endpoint,
            headers,
            gzip,
            timeout,
        })
    }
}

/// `k1=v1,k2=v2` with URL-encoded values (W3C Baggage-like, as the spec says),
/// as used by OTEL_EXPORTER_OTLP_HEADERS and OTEL_RESOURCE_ATTRIBUTES.
pub fn parse_key_values(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=')?;
        let k = k.trim();
        if k.is_empty() {
            return None;
        }
        out.push((k.to_string(), percent_decode(v.trim())?));
    }
    Some(out)
}

/// Headers: key=value pairs with token-like, lower-cased names.
fn parse_headers(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=')?;
        let k = k.trim();
        if k.is_empty()
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return None;
        }
        out.push((k.to_ascii_lowercase(), percent_decode(v.trim())?));
    }
    Some(out)
}

/// Decodes `%XX` escapes; None on a malformed escape or non-UTF-8 result.
/// Written here rather than adding a crate: it is ten lines.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = SignalConfig::from_env(Signal::Metrics, &env(&[])).unwrap();
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoint, "http://localhost:4318/v1/metrics");
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert!(!c.gzip && c.headers.is_empty());
        let c = SignalConfig::from_env(
            Signal::Traces,
            &env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
        )
        .unwrap();
        assert_eq!(c.endpoint, "http://localhost:4317");
    }

    #[test]
    fn generic_http_endpoint_gets_the_signal_path_and_specific_is_used_as_is() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:9999/custom",
            ),
        ]);
        assert_eq!(
            SignalConfig::from_env(Signal::Metrics, &e)
                .unwrap()
                .endpoint,
            "http://collector:4318/v1/metrics"
        );
        assert_eq!(
            SignalConfig::from_env(Signal::Traces, &e).unwrap().endpoint,
            "http://traces:9999/custom"
        );
    }

    #[test]
    fn specific_variables_win_and_headers_are_decoded() {
        let e = env(&[
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=secret, X-Tenant=team%20a",
            ),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "api-key=metrics-only"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "2500"),
        ]);
        let m = SignalConfig::from_env(Signal::Metrics, &e).unwrap();
        assert_eq!(m.headers, vec![("api-key".into(), "metrics-only".into())]);
        assert_eq!(m.timeout, Duration::from_millis(2500));
        assert!(m.gzip);
        let t = SignalConfig::from_env(Signal::Traces, &e).unwrap();
        assert_eq!(
            t.headers,
            vec![
                ("api-key".into(), "secret".into()),
                ("x-tenant".into(), "team a".into())
            ]
        );
        assert_eq!(t.timeout, Duration::from_secs(10));
    }

    #[test]
    fn tls_files_are_read_and_paired() {
        let dir = std::env::temp_dir().join(format!("hostscope-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, b"CA").unwrap();
        let ca_s = ca.to_str().unwrap().to_string();
        let c = SignalConfig::from_env(
            Signal::Metrics,
            &env(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca_s)]),
        )
        .unwrap();
        assert_eq!(c.tls.ca.as_deref(), Some(&b"CA"[..]));
        let err = SignalConfig::from_env(
            Signal::Metrics,
            &env(&[("OTEL_EXPORTER_OTLP_CLIENT_KEY", &ca_s)]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("OTEL_EXPORTER_OTLP_CLIENT_KEY"), "{err}");
        let err = SignalConfig::from_env(
            Signal::Traces,
            &env(&[(
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                "/nonexistent/ca.pem",
            )]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE") && err.contains("not found"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "k=%zz"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "collector:4318"),
        ] {
            let err = SignalConfig::from_env(Signal::Metrics, &env(&[(var, value)])).unwrap_err();
            assert!(err.to_string().starts_with(var), "{var}={value}: {err}");
        }
    }
}
