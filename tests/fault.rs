//! A panic inside one transaction actor or connection task is contained: it is counted, and
//! every other call in flight, and every later one, goes through.
//! Run with `cargo test --features fault-injection`.

mod support;

use std::time::Duration;

use sippool::actors::Proxy;
use sippool::sip::transport::Transport;
use support::*;

const NO_BACKUP: &str = "127.0.2.254:9";

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn invite_until_200(phone: &mut Phone, up: &mut Upstream, call_id: &str) -> SipMsg {
    let ruri = format!("sip:bob@{}", up.addr.ip());
    phone
        .send(&phone.request("INVITE", &ruri, call_id, &unique("z9hG4bKi"), "", ""))
        .await;
    up.recv_method("INVITE").await;
    let (ok, _) = phone.recv_final().await;
    assert_eq!(ok.status(), Some(200));
    ok
}

async fn finish(phone: &mut Phone, up: &mut Upstream, ok: &SipMsg, call_id: &str) {
    phone
        .send(&phone.in_dialog("ACK", ok, call_id, 1, &unique("z9hG4bKa")))
        .await;
    up.recv_method("ACK").await;
    phone
        .send(&phone.in_dialog("BYE", ok, call_id, 2, &unique("z9hG4bKb")))
        .await;
    up.recv_method("BYE").await;
    assert_eq!(phone.recv_final().await.0.status(), Some(200));
}

fn failures(p: &Proxy, kind: &'static str) -> u64 {
    p.core().metrics.failures(kind)
}

#[tokio::test]
async fn panicking_transaction_is_contained() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(&["udp"], &pair(&up.uri(), NO_BACKUP)).await;
    let addr = p.local_addr(Transport::Udp).unwrap();
    let mut a = Phone::udp(addr).await;
    let mut b = Phone::udp(addr).await;
    // Call A is set up and still in progress (no ACK, no BYE yet).
    let call_a = unique("a");
    let ok_a = invite_until_200(&mut a, &mut up, &call_a).await;
    // B's INVITE makes its transaction actor panic.
    let ruri = format!("sip:bob@{}", up.addr.ip());
    b.send(&b.request(
        "INVITE",
        &ruri,
        &unique("b"),
        &unique("z9hG4bKf"),
        "X-Sippool-Fault: panic-transaction\r\n",
        "",
    ))
    .await;
    until("the failure to be counted", || {
        failures(&p, "transaction") == 1
    })
    .await;
    assert!(
        p.core().txns.server.len() <= 1,
        "the failed transaction was forgotten"
    );
    // Call A completes, and new calls from both phones go through.
    finish(&mut a, &mut up, &ok_a, &call_a).await;
    let call_b = unique("b2");
    let ok_b = invite_until_200(&mut b, &mut up, &call_b).await;
    finish(&mut b, &mut up, &ok_b, &call_b).await;
    assert_eq!(failures(&p, "transaction"), 1);
    p.stop().await;
}

#[tokio::test]
async fn panicking_connection_is_contained() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(&["tcp", "udp"], &pair(&up.uri(), NO_BACKUP)).await;
    let addr = p.local_addr(Transport::Tcp).unwrap();
    let mut a = Phone::tcp(addr).await;
    let b = Phone::tcp(addr).await;
    let call_a = unique("ca");
    let ok_a = invite_until_200(&mut a, &mut up, &call_a).await;
    until("two connections", || {
        p.core().transports.open_connections() == 2
    })
    .await;
    b.send("OPTIONS sip:x@y SIP/2.0\r\nX-Sippool-Fault: panic-connection\r\n\r\n")
        .await;
    until("the failure to be counted", || {
        failures(&p, "connection") == 1
    })
    .await;
    until("the connection to be released", || {
        p.core().transports.open_connections() == 1
    })
    .await;
    // The other connection's call completes and it carries a new call.
    finish(&mut a, &mut up, &ok_a, &call_a).await;
    let call = unique("cb");
    let ok = invite_until_200(&mut a, &mut up, &call).await;
    finish(&mut a, &mut up, &ok, &call).await;
    // A new connection works too.
    let mut c = Phone::tcp(addr).await;
    let call = unique("cc");
    let ok = invite_until_200(&mut c, &mut up, &call).await;
    finish(&mut c, &mut up, &ok, &call).await;
    p.stop().await;
}
