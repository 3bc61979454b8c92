//! TLS with rustls (ring provider only), TLS 1.2 and 1.3: the server configuration of TLS
//! listeners (mutual TLS when a client CA is configured), the client configuration toward
//! upstream servers, and their reload without a restart.
//!
//! [`TlsContext`] holds the current configurations. Listeners and connectors take the
//! current one for each new handshake, so a reload (SIGHUP, or a changed file seen by the
//! watcher) applies to new connections while open ones keep theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{ClientAuth, ConfigError, TlsSettings};

fn cfg_err(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        problem: problem.into(),
    }
}

fn certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
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

fn roots(path: &Path, key: &str) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for c in certs(path, key)? {
        roots.add(c).map_err(|e| cfg_err(key, e.to_string()))?;
    }
    Ok(roots)
}

/// Our certificate chain and key.
type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Our certificate chain and key, when configured.
fn identity(t: &TlsSettings) -> Result<Option<Identity>, ConfigError> {
    let (Some(cert), Some(key)) = (&t.cert, &t.key) else {
        return Ok(None);
    };
    let chain = certs(cert, "tls.cert")?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| cfg_err("tls.key", format!("{}: {e}", key.display())))?;
    Ok(Some((chain, key)))
}

/// The earliest not-after (Unix seconds) among the certificates of a chain: the moment the
/// chain stops being valid. `None` when no certificate in it can be parsed.
pub fn chain_not_after(chain: &[CertificateDer<'_>]) -> Option<i64> {
    chain
        .iter()
        .filter_map(|der| {
            x509_parser::parse_x509_certificate(der.as_ref())
                .ok()
                .map(|(_, cert)| cert.validity().not_after.timestamp())
        })
        .min()
}

/// Both configurations from the PEM files, each file read once, and the expiry of our
/// certificate chain; every problem names its key.
fn configs(t: &TlsSettings) -> Result<Configs, ConfigError> {
    let id = identity(t)?;
    let not_after = id.as_ref().and_then(|(chain, _)| chain_not_after(chain));
    let server = match &id {
        Some((chain, key)) => Some(server_config(t, (chain.clone(), key.clone_key()))?),
        None => None,
    };
    Ok((server, client_config(t, id)?, not_after))
}

/// The listeners' and the connectors' configurations (either may be absent), and the
/// not-after of our certificate chain (Unix seconds) when there is one.
type Configs = (
    Option<Arc<ServerConfig>>,
    Option<Arc<ClientConfig>>,
    Option<i64>,
);

/// Builds the listeners' TLS configuration around our certificate (TLS listeners need one;
/// without it there is TLS only toward servers).
fn server_config(
    t: &TlsSettings,
    (chain, key): Identity,
) -> Result<Arc<ServerConfig>, ConfigError> {
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| cfg_err("tls", e.to_string()))?;
    let builder = match (&t.client_ca, t.client_auth) {
        (Some(ca), auth) if auth != ClientAuth::None => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca, "tls.client_ca")?),
                provider,
            );
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

/// Builds the configuration for connections toward upstream servers: their certificate
/// must chain to `tls.upstream_ca`; our own certificate, when configured, is offered to
/// servers that ask for one (mutual TLS toward the servers). `None` without an upstream CA.
fn client_config(
    t: &TlsSettings,
    id: Option<Identity>,
) -> Result<Option<Arc<ClientConfig>>, ConfigError> {
    let Some(ca) = &t.upstream_ca else {
        return Ok(None);
    };
    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| cfg_err("tls", e.to_string()))?
        .with_root_certificates(roots(ca, "tls.upstream_ca")?);
    let config = match id {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| cfg_err("tls.key", format!("does not match tls.cert: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

/// The name an upstream server's certificate is checked against: `tls.upstream_server_name`
/// when set, else the host the server was configured or located by (RFC 5922: the SIP
/// domain, not an SRV target), else its address.
pub fn server_name(
    t: &TlsSettings,
    host: Option<&str>,
    addr: std::net::IpAddr,
) -> ServerName<'static> {
    let configured = t.upstream_server_name.as_deref().or(host);
    configured
        .and_then(|h| {
            ServerName::try_from(h.trim_start_matches('[').trim_end_matches(']'))
                .ok()
                .map(|n| n.to_owned())
        })
        .unwrap_or(ServerName::IpAddress(addr.into()))
}

/// Modification stamps of the TLS files, to notice a change.
type Stamps = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

fn stamps(t: &TlsSettings) -> Stamps {
    [&t.cert, &t.key, &t.client_ca, &t.upstream_ca]
        .into_iter()
        .flatten()
        .map(|p| {
            let meta = std::fs::metadata(p).ok();
            let stamp = meta.and_then(|m| Some((m.modified().ok()?, m.len())));
            (p.clone(), stamp)
        })
        .collect()
}

/// The current TLS configurations, reloadable while running.
#[derive(Debug)]
pub struct TlsContext {
    settings: TlsSettings,
    server: RwLock<Option<Arc<ServerConfig>>>,
    client: RwLock<Option<Arc<ClientConfig>>>,
    not_after: RwLock<Option<i64>>,
    stamps: Mutex<Stamps>,
}

impl TlsContext {
    /// Loads every configured file; an error names its config key.
    pub fn load(settings: TlsSettings) -> Result<TlsContext, ConfigError> {
        let stamps = stamps(&settings);
        let (server, client, not_after) = configs(&settings)?;
        Ok(TlsContext {
            server: RwLock::new(server),
            client: RwLock::new(client),
            not_after: RwLock::new(not_after),
            stamps: Mutex::new(stamps),
            settings,
        })
    }

    /// The settings the context was loaded from.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// An acceptor with the current server configuration.
    pub fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        let cfg = self.server.read().ok()?.clone()?;
        Some(tokio_rustls::TlsAcceptor::from(cfg))
    }

    /// A connector with the current client configuration.
    pub fn connector(&self) -> Option<tokio_rustls::TlsConnector> {
        let cfg = self.client.read().ok()?.clone()?;
        Some(tokio_rustls::TlsConnector::from(cfg))
    }

    /// Re-reads the files. On an error the configurations in use stay as they were.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let stamps = stamps(&self.settings);
        let (server, client, not_after) = configs(&self.settings)?;
        if let Ok(mut s) = self.server.write() {
            *s = server;
        }
        if let Ok(mut c) = self.client.write() {
            *c = client;
        }
        if let Ok(mut n) = self.not_after.write() {
            *n = not_after;
        }
        if let Ok(mut s) = self.stamps.lock() {
            *s = stamps;
        }
        Ok(())
    }

    /// When the certificate chain in use (`tls.cert`) stops being valid: the earliest
    /// not-after of its certificates, Unix seconds. `None` without a certificate.
    pub fn not_after(&self) -> Option<i64> {
        self.not_after.read().ok().and_then(|n| *n)
    }

    /// Whether a file changed since the last (re)load.
    pub fn files_changed(&self) -> bool {
        let now = stamps(&self.settings);
        self.stamps.lock().map(|s| *s != now).unwrap_or(false)
    }
}
