//! Upstream health and failover over real sockets: OPTIONS probing, the pair's switching
//! rules, and transaction retry on the other member.

mod support;

use std::time::{Duration, Instant};

use sippool::actors::Proxy;
use sippool::health::Member;
use sippool::sip::transport::Transport;
use support::*;

/// A pair probed every second with a 300 ms probe timeout.
fn probed_pair(primary: &Upstream, backup: &Upstream, extra: &str) -> String {
    format!(
        "[[pair]]\nname = \"p\"\nprimary = \"{}\"\nbackup = \"{}\"\n{extra}\
         [health]\noos_check = 1\noos_force = 1\nprobe_timeout_ms = 300\n",
        primary.uri(),
        backup.uri()
    )
}

async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

fn active(p: &Proxy) -> Option<Member> {
    p.core().live().upstreams.states.active(0)
}

/// Sends an INVITE, acknowledges its final response, and returns that response.
async fn invite(phone: &mut Phone) -> SipMsg {
    let call_id = unique("fo");
    let branch = unique("z9hG4bKf");
    let ruri = "sip:bob@site.example";
    let req = phone.request("INVITE", ruri, &call_id, &branch, "", "");
    phone.send(&req).await;
    let (r, _) = phone.recv_final().await;
    let ack = if r.status() == Some(200) {
        phone.in_dialog("ACK", &r, &call_id, 1, &unique("z9hG4bKa"))
    } else {
        // ACK for a non-2xx final: the INVITE's branch, the response's To (RFC 3261 17.1.1.3).
        phone
            .request("ACK", ruri, &call_id, &branch, "", "")
            .replace(
                &format!("To: <{ruri}>"),
                &format!("To: {}", r.header("to").unwrap()),
            )
    };
    phone.send(&ack).await;
    r
}

#[tokio::test]
async fn silent_primary_switches_within_oos_check_plus_timeout() {
    let primary = Upstream::udp(Behaviour::Answer).await;
    let mut backup = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(&["udp"], &probed_pair(&primary, &backup, "")).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    // Let the first probe round pass, then silence the primary.
    until("primary probed up", Duration::from_secs(3), || {
        p.core().live().upstreams.states.is_up(0, Member::Primary)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    primary.set(Behaviour::Silent);
    let took = until("switch to backup", Duration::from_secs(4), || {
        active(&p) == Some(Member::Backup)
    })
    .await;
    assert!(
        took <= Duration::from_millis(1300 + 400),
        "switch took {took:?}"
    );
    let r = invite(&mut phone).await;
    assert_eq!(r.status(), Some(200));
    backup.recv_method("INVITE").await;
    p.stop().await;
}

#[tokio::test]
async fn request_from_backup_switches_at_once() {
    let primary = Upstream::udp(Behaviour::Answer).await;
    let mut backup = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(&["udp"], &probed_pair(&primary, &backup, "")).await;
    let proxy_addr = p.local_addr(Transport::Udp).unwrap();
    assert_eq!(active(&p), Some(Member::Primary));
    // The backup server sends a request through the proxy (from its own address).
    let sock = tokio::net::UdpSocket::bind((backup.addr.ip(), 0))
        .await
        .unwrap();
    let req = format!(
        "OPTIONS sip:{proxy_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={}\r\nMax-Forwards: 70\r\n\
         From: <sip:b@x>;tag=1\r\nTo: <sip:{proxy_addr}>\r\nCall-ID: {}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        sock.local_addr().unwrap(),
        unique("z9hG4bKb"),
        unique("fb")
    );
    sock.send_to(req.as_bytes(), proxy_addr).await.unwrap();
    until("switch to backup", Duration::from_millis(500), || {
        active(&p) == Some(Member::Backup)
    })
    .await;
    let mut phone = Phone::udp(proxy_addr).await;
    assert_eq!(invite(&mut phone).await.status(), Some(200));
    backup.recv_method("INVITE").await;
    p.stop().await;
}

#[tokio::test]
async fn both_silent_gives_503_with_retry_after_and_recovers() {
    let primary = Upstream::udp(Behaviour::Silent).await;
    let backup = Upstream::udp(Behaviour::Silent).await;
    let http = format!("[http]\naddress = \"{}:0\"\n", loopback(PROXY));
    let p = proxy(&["udp"], &probed_pair(&primary, &backup, &http)).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    until("pair out of service", Duration::from_secs(3), || {
        active(&p).is_none()
    })
    .await;
    let r = invite(&mut phone).await;
    assert_eq!(r.status(), Some(503));
    assert!(r.header("retry-after").is_some(), "{}", r.text());
    // A client probing this instance as its outbound proxy hears it cannot serve, and so
    // does the readiness probe.
    let me = format!("sip:{}", p.local_addr(Transport::Udp).unwrap());
    let r = phone.ask("OPTIONS", &me).await;
    assert_eq!(r.status(), Some(503), "{}", r.text());
    assert!(r.header("retry-after").is_some());
    let (code, body) = http_get(p.http_addr().unwrap(), "/readyz").await;
    assert_eq!((code, body.trim()), (503, "serving pair out of service"));
    // The backup comes back first: it takes over.
    backup.set(Behaviour::Answer);
    until("back in service", Duration::from_secs(3), || {
        active(&p) == Some(Member::Backup)
    })
    .await;
    let r = invite(&mut phone).await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    assert_eq!(phone.ask("OPTIONS", &me).await.status(), Some(200));
    assert_eq!(http_get(p.http_addr().unwrap(), "/readyz").await.0, 200);
    p.stop().await;
}

#[tokio::test]
async fn no_flapping_without_failback() {
    let primary = Upstream::udp(Behaviour::Answer).await;
    let backup = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(&["udp"], &probed_pair(&primary, &backup, "")).await;
    primary.set(Behaviour::Silent);
    until("switch", Duration::from_secs(4), || {
        active(&p) == Some(Member::Backup)
    })
    .await;
    primary.set(Behaviour::Answer);
    until("primary up again", Duration::from_secs(4), || {
        p.core().live().upstreams.states.is_up(0, Member::Primary)
    })
    .await;
    // Another probe round: still on the backup.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(active(&p), Some(Member::Backup));
    p.stop().await;
}

#[tokio::test]
async fn failback_returns_to_primary() {
    let primary = Upstream::udp(Behaviour::Answer).await;
    let backup = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(
        &["udp"],
        &probed_pair(&primary, &backup, "failback = true\n"),
    )
    .await;
    primary.set(Behaviour::Silent);
    until("switch", Duration::from_secs(4), || {
        active(&p) == Some(Member::Backup)
    })
    .await;
    primary.set(Behaviour::Answer);
    until("failback", Duration::from_secs(4), || {
        active(&p) == Some(Member::Primary)
    })
    .await;
    p.stop().await;
}

#[tokio::test]
async fn late_probe_answers_are_ignored() {
    // The primary answers OPTIONS, but only after the probe timeout.
    let primary = Upstream::udp(Behaviour::LateOptions(500)).await;
    let backup = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(&["udp"], &probed_pair(&primary, &backup, "")).await;
    until("switch", Duration::from_secs(3), || {
        active(&p) == Some(Member::Backup)
    })
    .await;
    // Three more probe rounds: every answer is late, the primary stays down.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(!p.core().live().upstreams.states.is_up(0, Member::Primary));
    }
    p.stop().await;
}

#[tokio::test]
async fn unanswered_invite_is_retried_on_the_backup() {
    // Probing is slow here (30 s): only the transaction notices the dead primary.
    let primary = Upstream::udp(Behaviour::Silent).await;
    let mut backup = Upstream::udp(Behaviour::Answer).await;
    let extra = format!(
        "[[pair]]\nname = \"p\"\nprimary = \"{}\"\nbackup = \"{}\"\n[health]\noos_check = 30\nfailover_timeout_ms = 200\n",
        primary.uri(),
        backup.uri()
    );
    let p = proxy(&["udp"], &extra).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    let r = invite(&mut phone).await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    backup.recv_method("INVITE").await;
    assert_eq!(p.core().metrics.retries.get(), 1);
    p.stop().await;
}

/// A pair whose primary answers INVITEs after the failover timer (200 ms) sent the call to
/// the backup; probing is slow, so only the transaction notices.
async fn slow_primary(b: Behaviour) -> (Upstream, Upstream, Proxy) {
    let primary = Upstream::udp(b).await;
    let backup = Upstream::udp(Behaviour::Answer).await;
    let extra = format!(
        "[[pair]]\nname = \"p\"\nprimary = \"{}\"\nbackup = \"{}\"\n[health]\noos_check = 30\nfailover_timeout_ms = 200\n",
        primary.uri(),
        backup.uri()
    );
    let p = proxy(&["udp"], &extra).await;
    (primary, backup, p)
}

#[tokio::test]
async fn a_primary_that_rings_late_is_cancelled_not_left_ringing() {
    let (mut primary, mut backup, p) = slow_primary(Behaviour::LateRing(500)).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    let r = invite(&mut phone).await;
    assert_eq!(r.status(), Some(200), "the call is answered on the backup");
    backup.recv_method("INVITE").await;
    // The primary's late 180 gets a CANCEL; its 487 the hop-by-hop ACK.
    let invite = primary.recv_method("INVITE").await;
    let cancel = primary.recv_method("CANCEL").await;
    assert_eq!(cancel.header("call-id"), invite.header("call-id"));
    let ack = primary.recv_method("ACK").await;
    assert_eq!(ack.header("call-id"), invite.header("call-id"));
    let cancelled = "sippool_ghost_branches_total{outcome=\"cancelled\"}";
    assert_eq!(sample_reaching(&p, cancelled, 1.0).await, 1.0);
    p.stop().await;
}

#[tokio::test]
async fn a_primary_that_answers_late_has_its_dialog_ended() {
    let (mut primary, mut backup, p) = slow_primary(Behaviour::LateAnswer(500)).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    let r = invite(&mut phone).await;
    assert_eq!(r.status(), Some(200));
    assert_eq!(r.to_tag().as_deref(), Some("uas1"));
    backup.recv_method("INVITE").await;
    // The primary's late 200 is ACKed and its dialog ended with a BYE from the proxy; the
    // phone never hears of it (one 200 only).
    let invite = primary.recv_method("INVITE").await;
    let ack = primary.recv_method("ACK").await;
    let bye = primary.recv_method("BYE").await;
    for m in [&ack, &bye] {
        assert_eq!(m.header("call-id"), invite.header("call-id"));
        assert!(m.header("to").unwrap().contains("tag=uas1"));
    }
    let ended = "sippool_ghost_branches_total{outcome=\"ended\"}";
    assert_eq!(sample_reaching(&p, ended, 1.0).await, 1.0);
    assert!(phone
        .recv_within(Duration::from_millis(300))
        .await
        .is_none());
    p.stop().await;
}

#[tokio::test]
async fn a_primary_whose_port_is_closed_is_left_within_milliseconds() {
    // Nothing listens on the primary's port: the kernel answers the INVITE with ICMP port
    // unreachable. The failover timer (5 s) and probing (30 s) are far too slow to matter.
    let closed = std::net::UdpSocket::bind((loopback(UPSTREAM), 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let mut backup = Upstream::udp(Behaviour::Answer).await;
    let extra = format!(
        "[[pair]]\nname = \"p\"\nprimary = \"{closed};transport=udp\"\nbackup = \"{}\"\n\
         [health]\noos_check = 30\nfailover_timeout_ms = 5000\n",
        backup.uri()
    );
    let p = proxy(&["udp"], &extra).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    let start = Instant::now();
    let r = invite(&mut phone).await;
    let took = start.elapsed();
    assert_eq!(r.status(), Some(200), "{}", r.text());
    assert!(
        took < Duration::from_millis(1000),
        "answered after {took:?}"
    );
    backup.recv_method("INVITE").await;
    // The probe counted it too: the pair runs on the backup now.
    until("switch to the backup", Duration::from_secs(2), || {
        active(&p) == Some(Member::Backup)
    })
    .await;
    let metrics = p.core().metrics.encode();
    assert!(
        sample(
            &metrics,
            "sippool_destinations_unreachable_total{reason=\"port_unreachable\"}"
        ) >= 1.0,
        "{metrics}"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_member_that_answers_probes_but_fails_calls_is_taken_out_then_probed_back() {
    // The primary answers everything with 500: alive for OPTIONS, useless for calls.
    let primary = Upstream::udp(Behaviour::Reply(500)).await;
    let mut backup = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(
        &["udp"],
        &probed_pair(&primary, &backup, "").replace(
            "[health]\n",
            "[health]\nbreaker_failures = 3\nbreaker_probation_s = 1\n",
        ),
    )
    .await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    for _ in 0..3 {
        assert_eq!(invite(&mut phone).await.status(), Some(500));
    }
    // Three failed calls in a row: the breaker opens although OPTIONS are answered.
    until("breaker opens", Duration::from_secs(2), || {
        active(&p) == Some(Member::Backup)
    })
    .await;
    assert!(!p.core().live().upstreams.states.is_up(0, Member::Primary));
    assert_eq!(invite(&mut phone).await.status(), Some(200));
    backup.recv_method("INVITE").await;
    // After the probation its probes bring it back (the pair stays where it is).
    until("probation over", Duration::from_secs(4), || {
        p.core().live().upstreams.states.is_up(0, Member::Primary)
    })
    .await;
    assert_eq!(active(&p), Some(Member::Backup));
    p.stop().await;
}

#[tokio::test]
async fn invite_answered_503_is_retried_on_the_backup() {
    let primary = Upstream::udp(Behaviour::Reply(503)).await;
    let backup = Upstream::udp(Behaviour::Answer).await;
    let extra = format!(
        "[[pair]]\nname = \"p\"\nprimary = \"{}\"\nbackup = \"{}\"\n[health]\noos_check = 0\n",
        primary.uri(),
        backup.uri()
    );
    let p = proxy(&["udp"], &extra).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    assert_eq!(invite(&mut phone).await.status(), Some(200));
    p.stop().await;
}

#[tokio::test]
async fn request_for_another_site_goes_to_that_sites_active_member() {
    let a1 = Upstream::udp(Behaviour::Answer).await;
    let a2 = Upstream::udp(Behaviour::Answer).await;
    let b1 = Upstream::udp(Behaviour::Silent).await;
    let mut b2 = Upstream::udp(Behaviour::Answer).await;
    let extra = format!(
        "[[pair]]\nname = \"site-a\"\ndomain = \"site-a.example\"\nprimary = \"{}\"\nbackup = \"{}\"\n\
         [[pair]]\nname = \"site-b\"\ndomain = \"site-b.example\"\nprimary = \"{}\"\nbackup = \"{}\"\n\
         [routing]\nserving_pair = \"site-a\"\n\
         [health]\noos_check = 1\noos_force = 1\nprobe_timeout_ms = 300\n",
        a1.uri(),
        a2.uri(),
        b1.uri(),
        b2.uri()
    );
    let p = proxy(&["udp"], &extra).await;
    // Site B's primary is silent: site B switches to its backup, site A stays on its primary.
    until("site-b on its backup", Duration::from_secs(3), || {
        p.core().live().upstreams.states.active(1) == Some(Member::Backup)
    })
    .await;
    assert_eq!(
        p.core().live().upstreams.states.active(0),
        Some(Member::Primary)
    );
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    let call_id = unique("site");
    let req = phone.request(
        "INVITE",
        "sip:agent@site-b.example",
        &call_id,
        &unique("z9hG4bKs"),
        "",
        "",
    );
    phone.send(&req).await;
    let got = b2.recv_method("INVITE").await;
    assert_eq!(got.header("call-id"), Some(call_id.as_str()));
    assert_eq!(phone.recv_final().await.0.status(), Some(200));
    p.stop().await;
}

#[tokio::test]
async fn one_ignored_invite_does_not_take_a_live_server_down() {
    // The primary answers probes but drops INVITEs (as a server does with one it dislikes).
    let primary = Upstream::udp(Behaviour::IgnoreInvite).await;
    let mut backup = Upstream::udp(Behaviour::Answer).await;
    let extra = format!(
        "[[pair]]\nname = \"p\"\nprimary = \"{}\"\nbackup = \"{}\"\n\
         [health]\noos_check = 1\noos_force = 1\nprobe_timeout_ms = 300\nfailover_timeout_ms = 300\n",
        primary.uri(),
        backup.uri()
    );
    let p = proxy(&["udp"], &extra).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    // The call still gets through, on the backup...
    assert_eq!(invite(&mut phone).await.status(), Some(200));
    backup.recv_method("INVITE").await;
    // ... but the primary, which keeps answering probes, stays in service and active.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(p.core().live().upstreams.states.is_up(0, Member::Primary));
    assert_eq!(active(&p), Some(Member::Primary));
    p.stop().await;
}

#[tokio::test]
async fn in_dialog_request_to_a_dead_member_goes_to_its_peer() {
    let primary = Upstream::udp(Behaviour::Answer).await;
    let mut backup = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(&["udp"], &probed_pair(&primary, &backup, "")).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    until("primary probed up", Duration::from_secs(3), || {
        p.core().live().upstreams.states.is_up(0, Member::Primary)
    })
    .await;
    // A call set up on the primary (its Contact is the primary's address).
    let call_id = unique("dlg");
    phone
        .send(&phone.request(
            "INVITE",
            "sip:bob@site.example",
            &call_id,
            &unique("z9hG4bKi"),
            "",
            "",
        ))
        .await;
    let (ok, _) = phone.recv_final().await;
    assert_eq!(ok.status(), Some(200));
    phone
        .send(&phone.in_dialog("ACK", &ok, &call_id, 1, &unique("z9hG4bKa")))
        .await;
    // The primary dies and is taken out of service.
    primary.set(Behaviour::Silent);
    until("switch to backup", Duration::from_secs(4), || {
        active(&p) == Some(Member::Backup)
    })
    .await;
    // The BYE names the primary; its HA peer takes it at once.
    phone
        .send(&phone.in_dialog("BYE", &ok, &call_id, 2, &unique("z9hG4bKb")))
        .await;
    let (r, _) = phone.recv_final().await;
    assert_eq!(r.status(), Some(200));
    let bye = backup.recv_method("BYE").await;
    assert_eq!(bye.header("call-id"), Some(call_id.as_str()));
    p.stop().await;
}
