//! Certificates made at test time (rcgen) and TLS clients that trust them.

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::{loopback, Phone, PHONE};

pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// A leaf certificate and key (PEM) for `san`, for a server or a client.
pub fn leaf(ca: &Ca, san: &str, client: bool) -> (String, String) {
    leaf_for(ca, &[san.to_string()], client)
}

/// A server leaf certificate and key (PEM) for `san` that is valid until the end of the
/// day `(year, month, day)` (00:00 UTC); also the not-after as Unix seconds.
pub fn leaf_until(ca: &Ca, san: &str, (year, month, day): (i32, u8, u8)) -> (String, String, i64) {
    let not_after = rcgen::date_time_ymd(year, month, day);
    let (cert, key) = leaf_with(ca, &[san.to_string()], false, |p| p.not_after = not_after);
    (cert, key, not_after.unix_timestamp())
}

/// A leaf certificate and key (PEM) naming every one of `sans` (names or IP addresses).
pub fn leaf_for(ca: &Ca, sans: &[String], client: bool) -> (String, String) {
    leaf_with(ca, sans, client, |_| {})
}

/// As [`leaf_for`], with `adjust` applied to the parameters before signing.
fn leaf_with(
    ca: &Ca,
    sans: &[String],
    client: bool,
    adjust: impl FnOnce(&mut CertificateParams),
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(sans.to_vec()).unwrap();
    p.distinguished_name.push(
        DnType::CommonName,
        sans.first().cloned().unwrap_or_default(),
    );
    // A server certificate serves as a client one too (the proxy offers it to servers).
    p.extended_key_usages = if client {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    };
    adjust(&mut p);
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Connects a phone over TLS, trusting `trust`, presenting `client` (cert, key) if given.
pub async fn tls_phone(proxy: SocketAddr, trust: &Ca, client: Option<(String, String)>) -> Phone {
    try_tls_phone(proxy, trust, client)
        .await
        .expect("TLS handshake")
}

/// As [`tls_phone`], or the handshake error.
pub async fn try_tls_phone(
    proxy: SocketAddr,
    trust: &Ca,
    client: Option<(String, String)>,
) -> std::io::Result<Phone> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(trust.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let cfg = match client {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(Result::unwrap)
                    .collect();
            b.with_client_auth_cert(
                chain,
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap()
        }
        None => b.with_no_client_auth(),
    };
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(loopback(PHONE), 0)).unwrap();
    let tcp = sock.connect(proxy).await?;
    let local = tcp.local_addr().unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::IpAddress(proxy.ip().into()), tcp)
        .await?;
    Ok(Phone::over_stream(tls, local, proxy, "TLS"))
}
