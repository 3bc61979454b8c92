//! Upstream servers given by name, resolved per RFC 3263 through a real DNS server on
//! loopback (dnsmasq, Debian package dnsmasq-base).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sippool::health::Member;
use sippool::sip::transport::Transport;
use support::dnsmasq::Dnsmasq;
use support::*;

fn config(dns: &Dnsmasq, primary: &str, backup: &str) -> String {
    format!(
        "[[pair]]\nname = \"p\"\nprimary = \"{primary}\"\nbackup = \"{backup}\"\n\
         [dns]\nservers = [\"{}\"]\ntimeout_ms = 300\n\
         [health]\noos_check = 1\noos_force = 1\nprobe_timeout_ms = 300\n",
        dns.addr
    )
}

async fn call_reaches(phone: &mut Phone, up: &mut Upstream) {
    let call_id = unique("dns");
    let req = phone.request(
        "INVITE",
        "sip:bob@site.example",
        &call_id,
        &unique("z9hG4bKd"),
        "",
        "",
    );
    phone.send(&req).await;
    let got = up.recv_method("INVITE").await;
    assert_eq!(got.header("call-id"), Some(call_id.as_str()));
    let (ok, _) = phone.recv_final().await;
    assert_eq!(ok.status(), Some(200));
    phone
        .send(&phone.in_dialog("ACK", &ok, &call_id, 1, &unique("z9hG4bKa")))
        .await;
}

#[tokio::test]
async fn srv_record_names_the_server_and_its_port() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    let dns = Dnsmasq::start(
        &format!("{} pbx-a.sippool.test\n", up.addr.ip()),
        &[format!(
            "_sip._udp.pbx.sippool.test,pbx-a.sippool.test,{},10,10",
            up.addr.port()
        )],
    );
    dns.ready("pbx-a.sippool.test:1").await;
    let p = proxy(&["udp"], &config(&dns, "pbx.sippool.test", "127.0.2.254:9")).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    call_reaches(&mut phone, &mut up).await;
    p.stop().await;
}

#[tokio::test]
async fn a_name_that_does_not_resolve_counts_as_down() {
    let up = Upstream::udp(Behaviour::Answer).await;
    let dns = Dnsmasq::start(&format!("{} pbx-a.sippool.test\n", up.addr.ip()), &[]);
    dns.ready("pbx-a.sippool.test:1").await;
    let primary = format!("pbx-a.sippool.test:{}", up.addr.port());
    let p = proxy(
        &["udp"],
        &config(&dns, &primary, "nothing-here.sippool.test:5060"),
    )
    .await;
    let start = Instant::now();
    while p.core().live().upstreams.states.is_up(0, Member::Backup) {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "backup still counted up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(p.core().live().upstreams.states.is_up(0, Member::Primary));
    assert_eq!(
        p.core().live().upstreams.states.active(0),
        Some(Member::Primary)
    );
    p.stop().await;
}

#[tokio::test]
async fn a_changed_record_is_used_once_its_ttl_expires() {
    let mut a = Upstream::udp(Behaviour::Answer).await;
    let port = a.addr.port();
    let b_ip = loopback(UPSTREAM);
    let mut b = Upstream::udp_at(SocketAddr::new(b_ip, port), Behaviour::Answer).await;
    let dns = Dnsmasq::start(&format!("{} pbx-b.sippool.test\n", a.addr.ip()), &[]);
    dns.ready("pbx-b.sippool.test:1").await;
    let primary = format!("pbx-b.sippool.test:{port}");
    let p = proxy(&["udp"], &config(&dns, &primary, "127.0.2.254:9")).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    call_reaches(&mut phone, &mut a).await;
    dns.rewrite_hosts(&format!("{b_ip} pbx-b.sippool.test\n"));
    // The answer had a TTL of 1 s: after it, the new address is looked up and used.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let call_id = unique("ttl");
        let req = phone.request(
            "OPTIONS",
            "sip:bob@site.example",
            &call_id,
            &unique("z9hG4bKt"),
            "",
            "",
        );
        phone.send(&req).await;
        let (r, _) = phone.recv_final().await;
        assert_eq!(r.status(), Some(200));
        let at_b = b
            .drain(Duration::from_millis(100))
            .await
            .iter()
            .any(|m| m.header("call-id") == Some(call_id.as_str()));
        if at_b {
            break;
        }
        assert!(Instant::now() < deadline, "the new record was never used");
    }
    p.stop().await;
}
