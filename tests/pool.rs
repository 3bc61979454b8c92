//! The pool: three sippool processes on their own loopback addresses behind SRV records
//! served by a real DNS server (dnsmasq). A client picks instances as RFC 3263 says
//! (priority, then weight) and falls back to the next when one does not answer. One
//! instance is killed (SIGKILL) mid-run: calls keep completing through the others, and a
//! phone registered over TLS through the killed instance re-registers through another and
//! is reachable again through it.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use sippool::config::HostPort;
use sippool::dns::Locator;
use support::pki::*;
use support::pool::Pool;
use support::*;

/// A call placed the RFC 3263 way: the targets in SRV order, the next one tried when a
/// target gives no response within half a second. Returns the instance that carried it
/// and how many targets were given up on first.
async fn call_through_pool(locator: &Locator) -> (SocketAddr, usize) {
    let hp: HostPort = "pool.sippool.test;transport=udp".parse().unwrap();
    let targets = locator.candidates(&hp).await;
    assert!(!targets.is_empty(), "no SRV targets");
    for (skipped, t) in targets.iter().enumerate() {
        let mut phone = Phone::udp(t.addr).await;
        let call_id = unique("pool");
        let ruri = "sip:bob@site.example";
        phone
            .send(&phone.request("INVITE", ruri, &call_id, &unique("z9hG4bKp"), "", ""))
            .await;
        let Some(first) = phone.recv_within(Duration::from_millis(500)).await else {
            continue; // No answer: the next target (RFC 3263 section 4.3).
        };
        let ok = if first.status().is_some_and(|c| c >= 200) {
            first
        } else {
            phone.recv_final().await.0
        };
        assert_eq!(ok.status(), Some(200));
        phone
            .send(&phone.in_dialog("ACK", &ok, &call_id, 1, &unique("z9hG4bKa")))
            .await;
        phone
            .send(&phone.in_dialog("BYE", &ok, &call_id, 2, &unique("z9hG4bKb")))
            .await;
        assert_eq!(phone.recv_final().await.0.status(), Some(200));
        return (t.addr, skipped);
    }
    panic!("no instance of the pool answered");
}

/// Connects over TLS to the first `_sips._tcp` target that accepts, and registers.
/// Returns the phone and the Path the registrar saw.
async fn register_over_tls(locator: &Locator, ca: &Ca, up: &mut Upstream) -> (Phone, String) {
    let hp: HostPort = "pool.sippool.test;transport=tls".parse().unwrap();
    for t in locator.candidates(&hp).await {
        let Ok(mut phone) = try_tls_phone(t.addr, ca, None).await else {
            continue;
        };
        let call_id = unique("reg");
        phone
            .send(&phone.request(
                "REGISTER",
                "sip:site.example",
                &call_id,
                &unique("z9hG4bKr"),
                "",
                "",
            ))
            .await;
        let reg = loop {
            let m = up.recv_method("REGISTER").await;
            if m.header("call-id") == Some(call_id.as_str()) {
                break m;
            }
        };
        assert_eq!(phone.recv_final().await.0.status(), Some(200));
        return (phone, reg.header("path").expect("Path").to_string());
    }
    panic!("no instance accepted the TLS phone");
}

/// The server calls the phone along `path`, sending to the instance the Path names; the
/// INVITE must arrive over the phone's connection.
async fn reach_phone(server: &tokio::net::UdpSocket, phone: &mut Phone, path: &str) {
    let host = path
        .split('@')
        .nth(1)
        .and_then(|h| h.split(';').next())
        .expect("Path host");
    let instance: SocketAddr = host.parse().expect("Path names an address");
    let contact = format!("<sip:alice@{}>", phone.addr);
    call_phone_along_path(server, instance, phone, path, &contact).await;
}

#[tokio::test]
async fn a_pool_survives_losing_an_instance() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    let up2 = Upstream::udp(Behaviour::Answer).await;
    // UDP: a and b share priority 10 (weights 90/10), c is the last resort. TLS: a, then
    // b, then c, so that the phone registers through a.
    let mut pool = Pool::start(
        [(10, 90), (10, 10), (20, 10)],
        [(10, 10), (20, 10), (30, 10)],
        &pair(&up.uri(), &up2.uri()),
    )
    .await;
    let ips = pool.ips;
    let a = SocketAddr::new(ips[0], 5060);

    // The TLS phone registers through a and is reached through it.
    let server = tokio::net::UdpSocket::bind((up.addr.ip(), 0))
        .await
        .unwrap();
    let (mut phone, path) = register_over_tls(&pool.locator, &pool.ca, &mut up).await;
    assert!(
        path.contains(&format!("@{a};")),
        "registered through a: {path}"
    );
    reach_phone(&server, &mut phone, &path).await;

    // Calls through the pool; a is killed after the tenth.
    let mut used = std::collections::HashMap::new();
    let mut fell_back = 0;
    for n in 0..30 {
        if n == 10 {
            pool.kill(0);
        }
        let (via, skipped) = call_through_pool(&pool.locator).await;
        assert!(
            n < 10 || via != a,
            "call {n} went through the killed instance"
        );
        *used.entry(via).or_insert(0) += 1;
        fell_back += skipped;
    }
    assert!(
        used.get(&a).copied().unwrap_or(0) > 0,
        "a carried no call before it died: {used:?}"
    );
    assert!(fell_back > 0, "no call had to fall back after a died");
    assert!(
        used.keys().any(|k| k.ip() == ips[1]),
        "b carried no call: {used:?}"
    );

    // The phone's connection went with a; it re-registers through b and is reachable.
    assert!(
        phone.closed_within(WAIT).await,
        "the phone's connection survived a's death"
    );
    let (mut phone, path) = register_over_tls(&pool.locator, &pool.ca, &mut up).await;
    let b = SocketAddr::new(ips[1], 5060);
    assert!(
        path.contains(&format!("@{b};")),
        "re-registered through b: {path}"
    );
    reach_phone(&server, &mut phone, &path).await;
}
