//! TLS listeners with certificates made at test time (rcgen): a call over TLS in and UDP
//! out, and mutual TLS accepting a good client certificate and refusing none or one from
//! another CA.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sippool::sip::transport::Transport;
use support::*;

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
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
fn leaf(ca: &Ca, san: &str, client: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![san.to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, san);
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

struct Setup {
    ca: Ca,
    dir: PathBuf,
    tls_toml: String,
}

/// A CA, a server certificate for the proxy's address, and the `[tls]` section.
fn setup(proxy_ip: std::net::IpAddr, mutual: Option<&str>) -> Setup {
    let ca = ca("sippool test CA");
    let dir = std::env::temp_dir().join(unique("sippool-tls-"));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = leaf(&ca, &proxy_ip.to_string(), false);
    let cert = write(&dir, "server.pem", &cert);
    let key = write(&dir, "server.key", &key);
    let mut tls_toml = format!("[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n");
    if let Some(auth) = mutual {
        let ca_file = write(&dir, "ca.pem", &ca.pem);
        tls_toml.push_str(&format!(
            "client_ca = \"{ca_file}\"\nclient_auth = \"{auth}\"\n"
        ));
    }
    Setup { ca, dir, tls_toml }
}

/// Connects a phone over TLS, trusting `trust`, presenting `client` (cert, key) if given.
async fn tls_phone(proxy: SocketAddr, trust: &Ca, client: Option<(String, String)>) -> Phone {
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
    let tcp = sock.connect(proxy).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::IpAddress(proxy.ip().into()), tcp)
        .await
        .expect("TLS handshake");
    Phone::over_stream(tls, local, proxy, "TLS")
}

async fn call(phone: &mut Phone, up: &mut Upstream) -> SipMsg {
    let call_id = unique("tls");
    let ruri = "sip:bob@site.example";
    phone
        .send(&phone.request("INVITE", ruri, &call_id, &unique("z9hG4bKt"), "", ""))
        .await;
    let invite = up.recv_method("INVITE").await;
    let (ok, _) = phone.recv_final().await;
    assert_eq!(ok.status(), Some(200));
    phone
        .send(&phone.in_dialog("ACK", &ok, &call_id, 1, &unique("z9hG4bKa")))
        .await;
    up.recv_method("ACK").await;
    phone
        .send(&phone.in_dialog("BYE", &ok, &call_id, 2, &unique("z9hG4bKb")))
        .await;
    up.recv_method("BYE").await;
    assert_eq!(phone.recv_final().await.0.status(), Some(200));
    invite
}

#[tokio::test]
async fn call_over_tls_in_and_udp_out() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    // The server certificate names the proxy's address.
    let ip = loopback(PROXY);
    let s = setup(ip, None);
    let extra = format!("{}{}", pair(&up.uri(), "127.0.2.254:9"), s.tls_toml);
    let p = proxy_at(ip, &["udp", "tls"], &extra).await;
    let tls = p.local_addr(Transport::Tls).unwrap();
    let udp = p.local_addr(Transport::Udp).unwrap();
    let mut phone = tls_phone(tls, &s.ca, None).await;
    let invite = call(&mut phone, &mut up).await;
    let vias = invite.all("via");
    assert!(vias[0].starts_with("SIP/2.0/UDP "), "{}", vias[0]);
    assert!(vias[1].starts_with("SIP/2.0/TLS "), "{}", vias[1]);
    assert_eq!(
        invite.all("record-route"),
        vec![
            format!("<sip:{udp};lr>"),
            format!("<sip:{tls};transport=tls;lr>")
        ]
    );
    p.stop().await;
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[tokio::test]
async fn mutual_tls_accepts_a_good_client_and_refuses_others() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    // The server certificate names the proxy's address.
    let ip = loopback(PROXY);
    let s = setup(ip, Some("required"));
    let extra = format!("{}{}", pair(&up.uri(), "127.0.2.254:9"), s.tls_toml);
    let p = proxy_at(ip, &["udp", "tls"], &extra).await;
    let tls = p.local_addr(Transport::Tls).unwrap();
    // A client certificate from the configured CA: the call goes through.
    let good = leaf(&s.ca, "phone.example", true);
    let mut phone = tls_phone(tls, &s.ca, Some(good)).await;
    call(&mut phone, &mut up).await;
    // No client certificate: refused (under TLS 1.3 the client learns it on its first read).
    let mut none = tls_phone(tls, &s.ca, None).await;
    none.send(&none.request(
        "OPTIONS",
        "sip:bob@site.example",
        &unique("n"),
        &unique("z9hG4bKn"),
        "",
        "",
    ))
    .await;
    assert!(
        none.closed_within(WAIT).await,
        "a client without a certificate was served"
    );
    // A certificate from another CA: refused.
    let other = ca("some other CA");
    let foreign = leaf(&other, "phone.example", true);
    let mut stranger = tls_phone(tls, &s.ca, Some(foreign)).await;
    stranger
        .send(&stranger.request(
            "OPTIONS",
            "sip:bob@site.example",
            &unique("o"),
            &unique("z9hG4bKo"),
            "",
            "",
        ))
        .await;
    assert!(
        stranger.closed_within(WAIT).await,
        "a client from another CA was served"
    );
    assert!(
        sippool::metrics::Metrics::reason_value(&p.core().metrics.parse_errors, "tls_handshake")
            >= 2
    );
    p.stop().await;
    let _ = std::fs::remove_dir_all(&s.dir);
}
