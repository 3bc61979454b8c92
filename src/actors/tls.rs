//! TLS with rustls (ring provider only): the server configuration of TLS listeners,
//! TLS 1.2 and 1.3, with mutual TLS when a client CA is configured.

use std::sync::Arc;

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::{ClientAuth, ConfigError, TlsSettings};

fn cfg_err(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        problem: problem.into(),
    }
}

fn certs(path: &std::path::Path, key: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| cfg_err(key, format!("{}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| cfg_err(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(cfg_err(
            key,
            format!("{}: no certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

/// Builds the listeners' TLS configuration from the PEM files; every problem names its key.
pub fn server_config(t: &TlsSettings) -> Result<Arc<ServerConfig>, ConfigError> {
    let provider = Arc::new(ring::default_provider());
    let chain = certs(&t.cert, "tls.cert")?;
    let key = PrivateKeyDer::from_pem_file(&t.key)
        .map_err(|e| cfg_err("tls.key", format!("{}: {e}", t.key.display())))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| cfg_err("tls", e.to_string()))?;
    let builder = match (&t.client_ca, t.client_auth) {
        (Some(ca), auth) if auth != ClientAuth::None => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca, "tls.client_ca")? {
                roots
                    .add(c)
                    .map_err(|e| cfg_err("tls.client_ca", e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| cfg_err("tls.client_ca", e.to_string()))?,
            )
        }
        _ => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| cfg_err("tls.key", format!("does not match tls.cert: {e}")))?;
    Ok(Arc::new(config))
}
