//! TLS listeners with certificates made at test time (rcgen): a call over TLS in and UDP
//! out, and mutual TLS accepting a good client certificate and refusing none or one from
//! another CA.

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sippool::actors::Proxy;
use sippool::sip::transport::Transport;
use support::pki::*;
use support::*;

struct Setup {
    ca: Ca,
    dir: PathBuf,
    tls_toml: String,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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

/// A proxy on a fresh address with UDP and TLS listeners (`mutual`: the client auth mode)
/// in front of an answering UDP server; `more` is TOML appended after the `[tls]` section.
async fn tls_proxy(mutual: Option<&str>, more: &str) -> (Setup, Proxy, Upstream) {
    let up = Upstream::udp(Behaviour::Answer).await;
    // The server certificate names the proxy's address.
    let ip = loopback(PROXY);
    let s = setup(ip, mutual);
    let more = more.replace("{ip}", &ip.to_string());
    let extra = format!("{}{}{more}", pair(&up.uri(), "127.0.2.254:9"), s.tls_toml);
    let p = proxy_at(ip, &["udp", "tls"], &extra).await;
    (s, p, up)
}

/// Whether the proxy closes this TLS phone's connection on its first request.
async fn refused(mut phone: Phone) -> bool {
    let req = phone.request(
        "OPTIONS",
        "sip:bob@site.example",
        &unique("r"),
        &unique("z9hG4bKr"),
        "",
        "",
    );
    phone.send(&req).await;
    phone.closed_within(WAIT).await
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
    let (s, p, mut up) = tls_proxy(None, "").await;
    let tls = p.local_addr(Transport::Tls).unwrap();
    let udp = p.local_addr(Transport::Udp).unwrap();
    let mut phone = tls_phone(tls, &s.ca, None).await;
    let invite = call(&mut phone, &mut up).await;
    let vias = invite.all("via");
    assert!(vias[0].starts_with("SIP/2.0/UDP "), "{}", vias[0]);
    assert!(vias[1].starts_with("SIP/2.0/TLS "), "{}", vias[1]);
    // Double Record-Route; the entry facing the phone names its flow (a token as user part).
    let rr = invite.all("record-route");
    assert_eq!(rr.len(), 2);
    assert_eq!(rr[0], format!("<sip:{udp};lr>"));
    assert!(
        rr[1].starts_with("<sip:") && rr[1].ends_with(&format!("@{tls};transport=tls;lr>")),
        "{}",
        rr[1]
    );
    p.stop().await;
}

#[tokio::test]
async fn mutual_tls_accepts_a_good_client_and_refuses_others() {
    let (s, p, mut up) = tls_proxy(Some("required"), "").await;
    let tls = p.local_addr(Transport::Tls).unwrap();
    // A client certificate from the configured CA: the call goes through.
    let good = leaf(&s.ca, "phone.example", true);
    let mut phone = tls_phone(tls, &s.ca, Some(good)).await;
    call(&mut phone, &mut up).await;
    // No client certificate: refused (under TLS 1.3 the client learns it on its first read).
    assert!(
        refused(tls_phone(tls, &s.ca, None).await).await,
        "a client without a certificate was served"
    );
    // A certificate from another CA: refused.
    let other = ca("some other CA");
    let foreign = leaf(&other, "phone.example", true);
    assert!(
        refused(tls_phone(tls, &s.ca, Some(foreign)).await).await,
        "a client from another CA was served"
    );
    assert!(
        sippool::metrics::Metrics::reason_value(&p.core().metrics.parse_errors, "tls_handshake")
            >= 2
    );
    p.stop().await;
}

#[tokio::test]
async fn phone_registered_over_tls_is_reached_over_its_own_connection() {
    let (s, p, mut up) = tls_proxy(
        None,
        "[flow]\ntoken_key = \"000102030405060708090a0b0c0d0e0f\"\n[http]\naddress = \"{ip}:0\"\n",
    )
    .await;
    let tls = p.local_addr(Transport::Tls).unwrap();
    let udp = p.local_addr(Transport::Udp).unwrap();
    let mut phone = tls_phone(tls, &s.ca, None).await;
    // REGISTER over TLS: the registrar sees a Path naming this instance and this connection.
    let path = register_with_path(&mut phone, &mut up).await;
    assert!(
        // The entry names the side that faces the registrar (UDP here): it must reach us.
        // No `ob`: this is not an outbound (reg-id) registration.
        path.starts_with("<sip:") && path.ends_with(&format!("@{udp};lr>")),
        "{path}"
    );
    // The server calls the phone along the Path: it arrives over the phone's own connection.
    let call_id = unique("down");
    let (server, invite) = call_along(&path, &mut phone, &up, udp, &call_id).await;
    let server_addr = server.local_addr().unwrap();
    assert!(invite.all("via")[0].starts_with(&format!("SIP/2.0/TLS {tls};")));
    phone
        .send(&response(
            &invite,
            200,
            "OK",
            &format!("<sip:alice@{}>", phone.addr),
        ))
        .await;
    let ok = server_final(&server, &call_id).await;
    assert_eq!(ok.status(), Some(200));
    // The server's in-dialog BYE follows the route set (the Record-Route reversed): it too
    // reaches the phone over its own connection.
    let route: Vec<String> = ok.all("record-route").into_iter().rev().collect();
    let bye = server_invite(server_addr, &phone, &route.join(", "), &call_id)
        .replace("INVITE sip:", "BYE sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 2 BYE")
        .replace(
            "To: <sip:alice@site.example>",
            &format!("To: <sip:alice@site.example>;tag={}", ok.to_tag().unwrap()),
        );
    server.send_to(bye.as_bytes(), udp).await.unwrap();
    let got = loop {
        let m = phone.recv().await;
        if m.method() == Some("BYE") {
            break m;
        }
    };
    assert_eq!(got.header("call-id"), Some(call_id.as_str()));
    // A token altered by one character is refused.
    let forged = path.replacen(&path[5..6], if &path[5..6] == "0" { "1" } else { "0" }, 1);
    let id2 = unique("forged");
    server
        .send_to(
            server_invite(server_addr, &phone, &forged, &id2).as_bytes(),
            udp,
        )
        .await
        .unwrap();
    assert_eq!(server_final(&server, &id2).await.status(), Some(403));
    // The connection carries a flow: counted in /status and /metrics.
    let http = p.http_addr().unwrap();
    let status = http_get(http, "/status").await.1;
    assert!(status.contains("\"flows\":1"), "{status}");
    let metrics = http_get(http, "/metrics").await.1;
    assert_eq!(sample(&metrics, "sippool_flows_open{kind=\"tls\"}"), 1.0);
    // The phone's connection drops while the server's INVITE waits for its answer: the
    // flow has failed (RFC 5626), 430 at once rather than a timeout.
    let id4 = unique("dropped");
    server
        .send_to(
            server_invite(server_addr, &phone, &path, &id4).as_bytes(),
            udp,
        )
        .await
        .unwrap();
    while phone.recv().await.header("call-id") != Some(id4.as_str()) {}
    drop(phone);
    assert_eq!(server_final(&server, &id4).await.status(), Some(430));
    // And later requests along that Path get 430 too.
    let start = std::time::Instant::now();
    while p.core().transports.open_connections() > 0 {
        assert!(start.elapsed() < WAIT, "connection not released");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let metrics = http_get(http, "/metrics").await.1;
    assert_eq!(sample(&metrics, "sippool_flows_open{kind=\"tls\"}"), 0.0);
    let phone2 = Phone::udp(udp).await; // only for its address in the Request-URI
    let id3 = unique("gone");
    server
        .send_to(
            server_invite(server_addr, &phone2, &path, &id3).as_bytes(),
            udp,
        )
        .await
        .unwrap();
    assert_eq!(server_final(&server, &id3).await.status(), Some(430));
    p.stop().await;
}

/// A connection that carries a flow is kept past the idle timeout (RFC 5626) and, woken
/// after idling with no buffer, still carries a request sent toward the phone over its
/// flow; an idle connection without a flow is closed meanwhile.
#[tokio::test]
async fn an_idle_tls_flow_outlives_the_idle_timeout_and_still_reaches_the_phone() {
    let (s, p, mut up) = tls_proxy(
        None,
        "[flow]\ntoken_key = \"000102030405060708090a0b0c0d0e0f\"\n[limits]\nidle_timeout_s = 1\n",
    )
    .await;
    let tls = p.local_addr(Transport::Tls).unwrap();
    let udp = p.local_addr(Transport::Udp).unwrap();
    let mut phone = tls_phone(tls, &s.ca, None).await;
    let path = register_with_path(&mut phone, &mut up).await;
    // Another phone, without a flow, is heard from after the first one last spoke.
    let mut other = tls_phone(tls, &s.ca, None).await;
    assert_eq!(
        other.ask("OPTIONS", "sip:bob@site.example").await.status(),
        Some(200)
    );
    // It is closed for idling: the first phone has been idle at least as long.
    let start = std::time::Instant::now();
    while p.core().transports.open_connections() > 1 {
        assert!(start.elapsed() < WAIT, "the idle connection was not closed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        p.core().transports.open_connections(),
        1,
        "the flow is kept"
    );
    // The server calls the phone along the Path: it arrives over the idle flow.
    let call_id = unique("after-idle");
    let (server, invite) = call_along(&path, &mut phone, &up, udp, &call_id).await;
    phone
        .send(&response(
            &invite,
            200,
            "OK",
            &format!("<sip:alice@{}>", phone.addr),
        ))
        .await;
    assert_eq!(server_final(&server, &call_id).await.status(), Some(200));
    p.stop().await;
}

/// A rustls server configuration for a test upstream server at `ip`, with a certificate
/// from `ca`, requiring a client certificate from `client_ca` when given.
fn upstream_tls(
    ca: &Ca,
    ip: std::net::IpAddr,
    client_ca: Option<&Ca>,
) -> Arc<rustls::ServerConfig> {
    let (cert, key) = leaf(ca, &ip.to_string(), false);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        Some(c) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(c.pem.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            b.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap(),
            )
        }
        None => b.with_no_client_auth(),
    };
    Arc::new(b.with_single_cert(chain, key).unwrap())
}

#[tokio::test]
async fn tls_toward_the_server_verifies_it_and_offers_our_certificate() {
    let server_ca = ca("upstream CA");
    let ip = loopback(PROXY);
    let s = setup(ip, None);
    // The server requires a client certificate from the proxy's CA: mutual TLS both ways.
    let server_ip = loopback(UPSTREAM);
    let (mut up, _) = Upstream::tls(
        server_ip,
        Behaviour::Answer,
        upstream_tls(&server_ca, server_ip, Some(&s.ca)),
    )
    .await;
    let ca_file = write(&s.dir, "upstream-ca.pem", &server_ca.pem);
    let extra = format!(
        "{}{}upstream_ca = \"{ca_file}\"\n",
        pair(&up.uri(), "127.0.2.254:9"),
        s.tls_toml
    );
    let p = proxy_at(ip, &["udp"], &extra).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    let invite = call(&mut phone, &mut up).await;
    assert!(
        invite.all("via")[0].starts_with("SIP/2.0/TLS "),
        "{:?}",
        invite.all("via")
    );
    // One connection carried the whole call.
    assert_eq!(p.core().transports.open_connections(), 1);
    p.stop().await;

    // A server whose certificate does not chain to upstream_ca, or does not carry the
    // configured name, is refused before any request reaches it.
    let other = ca("not the upstream CA");
    let other_file = write(&s.dir, "other-ca.pem", &other.pem);
    for tls_extra in [
        format!("upstream_ca = \"{other_file}\"\n"),
        format!("upstream_ca = \"{ca_file}\"\nupstream_server_name = \"sip.wrong.example\"\n"),
    ] {
        let server_ip = loopback(UPSTREAM);
        let (mut up, refused) = Upstream::tls(
            server_ip,
            Behaviour::Answer,
            upstream_tls(&server_ca, server_ip, None),
        )
        .await;
        let extra = format!(
            "{}{}{tls_extra}",
            pair(&up.uri(), "127.0.2.254:9"),
            s.tls_toml
        );
        let p = proxy_at(ip, &["udp"], &extra).await;
        let phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
        phone
            .send(&phone.request(
                "INVITE",
                "sip:bob@site.example",
                &unique("bad"),
                &unique("z9hG4bKx"),
                "",
                "",
            ))
            .await;
        let start = std::time::Instant::now();
        while sippool::metrics::Metrics::reason_value(
            &p.core().metrics.parse_errors,
            "tls_handshake",
        ) == 0
        {
            assert!(
                start.elapsed() < WAIT,
                "the handshake did not fail ({tls_extra})"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // The server notices the failed handshake a moment after the proxy does.
        while refused.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            assert!(
                start.elapsed() < WAIT,
                "the server saw no refused handshake"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(up
            .drain(std::time::Duration::from_millis(100))
            .await
            .is_empty());
        p.stop().await;
    }
}

#[tokio::test]
async fn certificates_reload_on_file_change_and_open_connections_keep_going() {
    let (s, p, _up) = tls_proxy(None, "watch_s = 1\n").await;
    let ip = p.local_addr(Transport::Tls).unwrap().ip();
    let tls = p.local_addr(Transport::Tls).unwrap();
    let mut old = tls_phone(tls, &s.ca, None).await;
    assert_eq!(
        old.ask("OPTIONS", "sip:bob@site.example").await.status(),
        Some(200)
    );
    // New certificate from another CA written over the files in place.
    let ca2 = ca("sippool test CA 2");
    let (cert, key) = leaf(&ca2, &ip.to_string(), false);
    write(&s.dir, "server.pem", &cert);
    write(&s.dir, "server.key", &key);
    let reloads =
        |outcome| sippool::metrics::Metrics::reason_value(&p.core().metrics.tls_reloads, outcome);
    let start = std::time::Instant::now();
    while reloads("ok") == 0 {
        assert!(start.elapsed() < WAIT, "the file change was not picked up");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // New connections get the new certificate; a client trusting only the old CA fails.
    let mut new = tls_phone(tls, &ca2, None).await;
    assert_eq!(
        new.ask("OPTIONS", "sip:bob@site.example").await.status(),
        Some(200)
    );
    assert!(try_tls_phone(tls, &s.ca, None).await.is_err());
    // The connection opened before the reload keeps going.
    assert_eq!(
        old.ask("OPTIONS", "sip:bob@site.example").await.status(),
        Some(200)
    );
    // A reload (SIGHUP) that finds a broken key keeps the running certificate.
    write(&s.dir, "server.key", "not a key");
    p.core().reload_tls("SIGHUP");
    assert_eq!(reloads("error"), 1);
    let mut after = tls_phone(tls, &ca2, None).await;
    assert_eq!(
        after.ask("OPTIONS", "sip:bob@site.example").await.status(),
        Some(200)
    );
    p.stop().await;
}

/// The value of `sippool_tls_certificate_expiry_timestamp_seconds` for a listener, read
/// from the proxy's OpenMetrics text (what /metrics serves).
fn expiry_metric(p: &Proxy, listener: std::net::SocketAddr) -> Option<i64> {
    let series =
        format!("sippool_tls_certificate_expiry_timestamp_seconds{{listener=\"{listener}\"}} ");
    p.core()
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse().ok())
}

#[tokio::test]
async fn certificate_expiry_metric_follows_the_certificate_in_use() {
    let ca = ca("sippool expiry CA");
    let ip = loopback(PROXY);
    let dir = std::env::temp_dir().join(unique("sippool-expiry-"));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key, first) = leaf_until(&ca, &ip.to_string(), (2031, 5, 17));
    let cert_file = write(&dir, "server.pem", &cert);
    let key_file = write(&dir, "server.key", &key);
    let up = Upstream::udp(Behaviour::Answer).await;
    let extra = format!(
        "{}[tls]\ncert = \"{cert_file}\"\nkey = \"{key_file}\"\n",
        pair(&up.uri(), "127.0.2.254:9")
    );
    let p = proxy_at(ip, &["udp", "tls"], &extra).await;
    let tls = p.local_addr(Transport::Tls).unwrap();
    // 2031-05-17T00:00:00Z, as the certificate says, at start.
    assert_eq!(first, 1_936_742_400);
    assert_eq!(expiry_metric(&p, tls), Some(first));
    // The series exist before the first reload, at zero (an alert takes their increase).
    let reloads =
        |outcome| sippool::metrics::Metrics::reason_value(&p.core().metrics.tls_reloads, outcome);
    assert!(p
        .core()
        .metrics
        .encode()
        .contains("sippool_tls_reloads_total{reason=\"error\"} 0"));
    // A renewed certificate: the metric moves with it at the reload.
    let (cert, key, renewed) = leaf_until(&ca, &ip.to_string(), (2032, 1, 2));
    write(&dir, "server.pem", &cert);
    write(&dir, "server.key", &key);
    p.core().reload_tls("SIGHUP");
    assert_eq!(reloads("ok"), 1);
    assert_eq!(expiry_metric(&p, tls), Some(renewed));
    // A renewal that does not load changes nothing: the old certificate is still served.
    let (cert, _, _) = leaf_until(&ca, &ip.to_string(), (2040, 1, 1));
    write(&dir, "server.pem", &cert);
    p.core().reload_tls("SIGHUP");
    assert_eq!(reloads("error"), 1);
    assert_eq!(expiry_metric(&p, tls), Some(renewed));
    p.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn optional_client_auth_serves_anonymous_clients_and_checks_offered_certificates() {
    let (s, p, _up) = tls_proxy(Some("optional"), "").await;
    let tls = p.local_addr(Transport::Tls).unwrap();
    // No certificate: served.
    let mut anonymous = tls_phone(tls, &s.ca, None).await;
    assert_eq!(
        anonymous
            .ask("OPTIONS", "sip:bob@site.example")
            .await
            .status(),
        Some(200)
    );
    // A good certificate: served.
    let mut good = tls_phone(tls, &s.ca, Some(leaf(&s.ca, "phone.example", true))).await;
    assert_eq!(
        good.ask("OPTIONS", "sip:bob@site.example").await.status(),
        Some(200)
    );
    // A certificate from another CA is still checked, and refused.
    let other = ca("some other CA");
    let stranger = tls_phone(tls, &s.ca, Some(leaf(&other, "phone.example", true))).await;
    assert!(
        refused(stranger).await,
        "a foreign certificate was accepted"
    );
    p.stop().await;
}

#[tokio::test]
async fn tls_handshakes_in_progress_are_capped() {
    let (s, p, _up) = tls_proxy(
        None,
        "[limits]\nmax_tls_handshakes = 2\ntls_handshake_timeout_ms = 10000\n[runtime]\nworkers = 2\n",
    )
    .await;
    let tls = p.local_addr(Transport::Tls).unwrap();
    let rejected = || {
        sippool::metrics::Metrics::reason_value(
            &p.core().metrics.overload_rejections,
            "tls_handshakes",
        )
    };
    // Two clients that connect and never say hello hold both handshake places (once
    // admitted: with several workers a connection is admitted on its worker's runtime).
    let stalled = [
        tokio::net::TcpStream::connect(tls).await.unwrap(),
        tokio::net::TcpStream::connect(tls).await.unwrap(),
    ];
    assert!(
        eventually(|| p.core().tls_handshakes_in_progress() >= 2).await,
        "the stalled clients were never admitted"
    );
    // A third is turned away at once (closed before its handshake).
    let start = std::time::Instant::now();
    loop {
        if try_tls_phone(tls, &s.ca, None).await.is_err() && rejected() >= 1 {
            break;
        }
        assert!(start.elapsed() < WAIT, "no handshake was refused");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The stalled clients leave: their places free up and a handshake succeeds.
    drop(stalled);
    let start = std::time::Instant::now();
    let mut phone = loop {
        if let Ok(phone) = try_tls_phone(tls, &s.ca, None).await {
            break phone;
        }
        assert!(start.elapsed() < WAIT, "places never freed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        phone.ask("OPTIONS", "sip:bob@site.example").await.status(),
        Some(200)
    );
    p.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_certificate_of_a_running_process() {
    let ip = loopback(PROXY);
    let s = setup(ip, None);
    let port = std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = std::net::SocketAddr::new(ip, port);
    // File watching off: only the signal can make it reload.
    let config = format!(
        "[instance]\nname = \"hup\"\nadvertised_host = \"{ip}\"\n\
         [[listen]]\ntransport = \"tls\"\naddress = \"{addr}\"\n{}{}watch_s = 0\n",
        pair("127.0.2.254:9", "127.0.2.253:9"),
        s.tls_toml
    );
    let path = write(&s.dir, "hup.toml", &config);
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_sippool"))
            .args(["run", "--config", &path])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = std::time::Instant::now();
    while try_tls_phone(addr, &s.ca, None).await.is_err() {
        assert!(start.elapsed() < WAIT, "sippool did not start");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ca2 = ca("sippool test CA 2");
    let (cert, key) = leaf(&ca2, &ip.to_string(), false);
    write(&s.dir, "server.pem", &cert);
    write(&s.dir, "server.key", &key);
    assert!(
        try_tls_phone(addr, &ca2, None).await.is_err(),
        "reloaded without a signal"
    );
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let start = std::time::Instant::now();
    while try_tls_phone(addr, &ca2, None).await.is_err() {
        assert!(
            start.elapsed() < WAIT,
            "SIGHUP did not reload the certificate"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(child);
}

/// A server beside `up` sends an INVITE along `path` to the proxy's UDP listener; the
/// phone receives it. The server's socket and the INVITE as the phone got it.
async fn call_along(
    path: &str,
    phone: &mut Phone,
    up: &Upstream,
    udp: std::net::SocketAddr,
    call_id: &str,
) -> (tokio::net::UdpSocket, SipMsg) {
    let server = tokio::net::UdpSocket::bind((up.addr.ip(), 0))
        .await
        .unwrap();
    let server_addr = server.local_addr().unwrap();
    server
        .send_to(
            server_invite(server_addr, phone, path, call_id).as_bytes(),
            udp,
        )
        .await
        .unwrap();
    let invite = loop {
        let m = phone.recv().await;
        if m.method() == Some("INVITE") {
            break m;
        }
    };
    assert_eq!(invite.header("call-id"), Some(call_id));
    (server, invite)
}
