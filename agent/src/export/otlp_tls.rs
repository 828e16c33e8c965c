//! TLS for the OTLP exporters: rustls with the ring provider, trusting the
//! configured CA (OTEL_EXPORTER_OTLP_CERTIFICATE) or else the system's roots,
//! with an optional client certificate for mutual TLS.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use super::otlp_config::TlsFiles;

/// The rustls client configuration for OTLP/HTTP over https.
pub fn client_config(tls: &TlsFiles) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("OTLP CA certificate: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("OTLP CA certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err("OTLP CA certificate file holds no PEM certificate".into());
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots);
    let mut config = match &tls.client {
        Some((cert, key)) => {
            let (chain, key) = client_identity(cert, key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("OTLP client certificate: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Parses a client certificate chain and its private key.
fn client_identity(
    cert: &[u8],
    key: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("OTLP client certificate: {e}"))?;
    if chain.is_empty() {
        return Err("OTLP client certificate file holds no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("OTLP client key: {e}"))?;
    Ok((chain, key))
}

/// Checks that the PEM files parse, so bad files fail at start-up (exit 2).
pub fn validate(tls: &TlsFiles) -> Result<(), String> {
    client_config(tls).map(drop)
}
