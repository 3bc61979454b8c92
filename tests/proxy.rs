//! The proxy core over real loopback sockets: calls over UDP and TCP, transport changes,
//! CANCEL, the RFC 3261 section 16 checks, timeouts and stream framing.

mod support;

use std::time::Duration;

use sippool::sip::transport::Transport;
use support::*;

const NO_BACKUP: &str = "127.0.2.254:9";

/// A whole call: INVITE, 180/200, ACK and BYE through the proxy; returns the INVITE
/// and the 200 as the two ends saw them. The server answers at once, so the phone gets no
/// 100 Trying (unless this machine took 200 ms to relay the 180: not asserted here;
/// `a_server_silent_for_200_ms_makes_the_proxy_send_100_trying` and the response
/// context's unit tests cover it).
async fn call(phone: &mut Phone, up: &mut Upstream) -> (SipMsg, SipMsg) {
    let call_id = unique("call");
    let ruri = format!("sip:bob@{}", up.addr.ip());
    let invite = phone.request(
        "INVITE",
        &ruri,
        &call_id,
        &unique("z9hG4bKi"),
        "",
        "v=0\r\n",
    );
    phone.send(&invite).await;
    let got_invite = up.recv_method("INVITE").await;
    let (ok, provisional) = phone.recv_final().await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text());
    assert!(
        provisional.contains(&180),
        "180 relayed, got {provisional:?}"
    );
    let ack = phone.in_dialog("ACK", &ok, &call_id, 1, &unique("z9hG4bKa"));
    phone.send(&ack).await;
    let got_ack = up.recv_method("ACK").await;
    assert_eq!(got_ack.header("call-id"), Some(call_id.as_str()));
    let bye = phone.in_dialog("BYE", &ok, &call_id, 2, &unique("z9hG4bKb"));
    phone.send(&bye).await;
    let got_bye = up.recv_method("BYE").await;
    assert_eq!(got_bye.header("call-id"), Some(call_id.as_str()));
    let (bye_ok, _) = phone.recv_final().await;
    assert_eq!(bye_ok.status(), Some(200));
    assert!(bye_ok.header("cseq").unwrap().ends_with("BYE"));
    (got_invite, ok)
}

#[tokio::test]
async fn full_call_over_udp() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    // One worker: its Via names the listener (with several, the sending worker's own
    // port: tests/workers.rs).
    let one_worker = format!("{}[runtime]\nworkers = 1\n", pair(&up.uri(), NO_BACKUP));
    let p = proxy(&["udp"], &one_worker).await;
    let proxy_addr = p.local_addr(Transport::Udp).unwrap();
    let mut phone = Phone::udp(proxy_addr).await;
    let (invite, ok) = call(&mut phone, &mut up).await;
    // Our Via on top with a unique RFC 3261 branch, the phone's below with received/rport.
    let vias = invite.all("via");
    assert_eq!(vias.len(), 2);
    assert!(
        vias[0].starts_with(&format!("SIP/2.0/UDP {proxy_addr};branch=z9hG4bK")),
        "{}",
        vias[0]
    );
    assert!(
        vias[1].contains(&format!("rport={}", phone.addr.port())),
        "{}",
        vias[1]
    );
    assert!(
        vias[1].contains(&format!("received={}", phone.addr.ip())),
        "{}",
        vias[1]
    );
    assert_eq!(invite.header("max-forwards"), Some("69"));
    // The phone asked for rport (behind NAT): the entry facing it names its flow.
    let rr = invite.all("record-route");
    assert_eq!(rr.len(), 2, "{rr:?}");
    assert_eq!(rr[0], format!("<sip:{proxy_addr};lr>"));
    assert!(rr[1].ends_with(&format!("@{proxy_addr};lr>")), "{}", rr[1]);
    assert_eq!(ok.all("via").len(), 1, "our Via removed from the response");
    // The body is forwarded byte for byte.
    assert_eq!(invite.body, b"v=0\r\n");
    p.stop().await;
}

#[tokio::test]
async fn full_call_over_tcp() {
    let mut up = Upstream::tcp(Behaviour::Answer).await;
    let p = proxy(&["tcp"], &pair(&up.uri(), NO_BACKUP)).await;
    let proxy_addr = p.local_addr(Transport::Tcp).unwrap();
    let mut phone = Phone::tcp(proxy_addr).await;
    let (invite, _) = call(&mut phone, &mut up).await;
    assert!(invite.all("via")[0].starts_with("SIP/2.0/TCP "));
    let rr = invite.all("record-route");
    assert_eq!(rr.len(), 2, "{rr:?}");
    assert_eq!(rr[0], format!("<sip:{proxy_addr};transport=tcp;lr>"));
    assert!(
        rr[1].ends_with(&format!("@{proxy_addr};transport=tcp;lr>")),
        "{}",
        rr[1]
    );
    // A second call reuses the proxy's connection to the server.
    call(&mut phone, &mut up).await;
    assert_eq!(p.core().transports.open_connections(), 2);
    p.stop().await;
}

#[tokio::test]
async fn udp_in_tcp_out_double_record_route() {
    let mut up = Upstream::tcp(Behaviour::Answer).await;
    let p = proxy(&["udp", "tcp"], &pair(&up.uri(), NO_BACKUP)).await;
    let udp = p.local_addr(Transport::Udp).unwrap();
    let tcp = p.local_addr(Transport::Tcp).unwrap();
    let mut phone = Phone::udp(udp).await;
    let (invite, ok) = call(&mut phone, &mut up).await;
    assert!(invite.all("via")[0].starts_with(&format!("SIP/2.0/TCP {tcp};")));
    // RFC 5658: the entry facing the server on top, the one facing the phone below.
    let rr = invite.all("record-route");
    assert_eq!(rr.len(), 2, "{rr:?}");
    assert_eq!(rr[0], format!("<sip:{tcp};transport=tcp;lr>"));
    assert!(
        rr[1].starts_with("<sip:") && rr[1].ends_with(&format!("@{udp};lr>")),
        "{}",
        rr[1]
    );
    assert_eq!(ok.all("record-route").len(), 2);
    p.stop().await;
}

#[tokio::test]
async fn cancel_of_a_ringing_call() {
    let mut up = Upstream::udp(Behaviour::Ring).await;
    let p = proxy(&["udp"], &pair(&up.uri(), NO_BACKUP)).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    let call_id = unique("cancel");
    let branch = unique("z9hG4bKc");
    let ruri = format!("sip:bob@{}", up.addr.ip());
    phone
        .send(&phone.request("INVITE", &ruri, &call_id, &branch, "", ""))
        .await;
    up.recv_method("INVITE").await;
    // Wait for ringing, then cancel.
    loop {
        if phone.recv().await.status() == Some(180) {
            break;
        }
    }
    phone
        .send(&phone.request("CANCEL", &ruri, &call_id, &branch, "", ""))
        .await;
    let cancel_ok = phone.recv().await;
    assert_eq!(cancel_ok.status(), Some(200));
    assert!(cancel_ok.header("cseq").unwrap().ends_with("CANCEL"));
    let cancel = up.recv_method("CANCEL").await;
    assert_eq!(cancel.header("call-id"), Some(call_id.as_str()));
    let (fin, _) = phone.recv_final().await;
    assert_eq!(fin.status(), Some(487));
    assert!(fin.header("cseq").unwrap().ends_with("INVITE"));
    // The proxy acknowledged the 487 itself, hop by hop.
    let ack = up.recv_method("ACK").await;
    assert_eq!(ack.header("cseq"), Some("1 ACK"));
    p.stop().await;
}

#[tokio::test]
async fn max_forwards_zero_gets_483() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(&["udp"], &pair(&up.uri(), NO_BACKUP)).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    let req = phone
        .request(
            "OPTIONS",
            "sip:bob@example.com",
            &unique("mf"),
            &unique("z9hG4bKm"),
            "",
            "",
        )
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    phone.send(&req).await;
    let (r, _) = phone.recv_final().await;
    assert_eq!(r.status(), Some(483));
    assert!(up.drain(Duration::from_millis(200)).await.is_empty());
    p.stop().await;
}

#[tokio::test]
async fn loop_through_a_static_route_back_to_us_gets_482() {
    let up = Upstream::udp(Behaviour::Answer).await;
    // A static route whose target is the proxy itself: the request comes back unchanged.
    let ip = loopback(PROXY);
    let sock = std::net::UdpSocket::bind((ip, 0)).unwrap();
    let port = sock.local_addr().unwrap().port();
    drop(sock);
    let toml = format!(
        "[instance]\nname = \"loop\"\nadvertised_host = \"{ip}\"\n[[listen]]\ntransport = \"udp\"\naddress = \"{ip}:{port}\"\n{}\
         [[route]]\ndomain = \"loop.example\"\ntarget = \"{ip}:{port}\"\n",
        pair(&up.uri(), NO_BACKUP)
    );
    let settings = sippool::config::Config::from_toml_str(&toml)
        .unwrap()
        .validate()
        .unwrap();
    let p = sippool::actors::Proxy::start(settings).await.unwrap();
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    phone
        .send(&phone.request(
            "MESSAGE",
            "sip:x@loop.example",
            &unique("loop"),
            &unique("z9hG4bKl"),
            "",
            "",
        ))
        .await;
    let (r, _) = phone.recv_final().await;
    assert_eq!(r.status(), Some(482), "{}", r.text());
    p.stop().await;
}

#[tokio::test]
async fn silent_upstream_gives_408() {
    let up = Upstream::udp(Behaviour::Silent).await;
    // T1 = 20 ms: Timer B fires after 64*T1 = 1.28 s.
    let extra = format!(
        "{}[timers]\nt1_ms = 20\nt2_ms = 80\n",
        pair(&up.uri(), NO_BACKUP)
    );
    let p = proxy(&["udp"], &extra).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    let ruri = format!("sip:bob@{}", up.addr.ip());
    phone
        .send(&phone.request(
            "INVITE",
            &ruri,
            &unique("silent"),
            &unique("z9hG4bKs"),
            "",
            "",
        ))
        .await;
    let (r, prov) = phone.recv_final().await;
    assert_eq!(prov, vec![100]);
    assert_eq!(r.status(), Some(408));
    assert_eq!(Sippool::timeouts(&p), 1);
    p.stop().await;
}

/// RFC 3261 section 17.2.1: the proxy sends 100 Trying itself when the server has sent
/// nothing back within 200 ms (`timers.trying_ms`), well before the phone would retransmit
/// (T1, 500 ms), and only then.
#[tokio::test]
async fn a_server_silent_for_200_ms_makes_the_proxy_send_100_trying() {
    let mut up = Upstream::udp(Behaviour::LateAnswer(700)).await;
    let p = proxy(&["udp"], &pair(&up.uri(), NO_BACKUP)).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    let ruri = format!("sip:bob@{}", up.addr.ip());
    let sent = std::time::Instant::now();
    phone
        .send(&phone.request(
            "INVITE",
            &ruri,
            &unique("late"),
            &unique("z9hG4bKl"),
            "",
            "",
        ))
        .await;
    up.recv_method("INVITE").await;
    let trying = phone.recv().await;
    let after = sent.elapsed();
    assert_eq!(trying.status(), Some(100), "{}", trying.text());
    assert!(
        after >= Duration::from_millis(200),
        "100 Trying after {after:?}"
    );
    let (ok, provisional) = phone.recv_final().await;
    assert_eq!(ok.status(), Some(200));
    assert!(provisional.is_empty(), "one 100 only, then {provisional:?}");
    p.stop().await;
}

struct Sippool;
impl Sippool {
    fn timeouts(p: &sippool::actors::Proxy) -> u64 {
        p.core().metrics.upstream_timeouts.get()
    }
}

#[tokio::test]
async fn upstream_503_becomes_500() {
    // Both members answer 503: the backup is tried, then the client gets 500.
    let mut up = Upstream::udp(Behaviour::Reply(503)).await;
    let mut backup = Upstream::udp(Behaviour::Reply(503)).await;
    let p = proxy(&["udp"], &pair(&up.uri(), &backup.uri())).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    let ruri = format!("sip:bob@{}", up.addr.ip());
    phone
        .send(&phone.request(
            "INVITE",
            &ruri,
            &unique("busy"),
            &unique("z9hG4bK5"),
            "",
            "",
        ))
        .await;
    let (r, _) = phone.recv_final().await;
    assert_eq!(r.status(), Some(500));
    // Each 503 was acknowledged toward its server.
    up.recv_method("ACK").await;
    backup.recv_method("INVITE").await;
    backup.recv_method("ACK").await;
    p.stop().await;
}

#[tokio::test]
async fn retransmitted_invite_is_absorbed() {
    let mut up = Upstream::udp(Behaviour::Ring).await;
    let p = proxy(&["udp"], &pair(&up.uri(), NO_BACKUP)).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    let ruri = format!("sip:bob@{}", up.addr.ip());
    let invite = phone.request("INVITE", &ruri, &unique("rtx"), &unique("z9hG4bKr"), "", "");
    phone.send(&invite).await;
    up.recv_method("INVITE").await;
    // Wait until the proxy has relayed the 180, then retransmit.
    loop {
        if phone.recv().await.status() == Some(180) {
            break;
        }
    }
    phone.send(&invite).await;
    phone.send(&invite).await;
    // Each retransmission is answered with the last provisional, never forwarded.
    assert_eq!(phone.recv().await.status(), Some(180));
    assert_eq!(phone.recv().await.status(), Some(180));
    let later = up.drain(Duration::from_millis(300)).await;
    assert!(
        later.iter().all(|m| m.method() != Some("INVITE")),
        "INVITE forwarded twice"
    );
    p.stop().await;
}

#[tokio::test]
async fn ten_kilobyte_message_split_over_tcp_reads() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(&["tcp", "udp"], &pair(&up.uri(), NO_BACKUP)).await;
    let mut phone = Phone::tcp(p.local_addr(Transport::Tcp).unwrap()).await;
    let body: String = (0..10_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let msg = phone.request(
        "MESSAGE",
        &format!("sip:bob@{}", up.addr.ip()),
        &unique("big"),
        &unique("z9hG4bKg"),
        "Content-Type: text/plain\r\n",
        &body,
    );
    let bytes = msg.as_bytes();
    for chunk in bytes.chunks(997) {
        phone.send_bytes(chunk).await;
        tokio::task::yield_now().await;
    }
    let got = up.recv_method("MESSAGE").await;
    assert_eq!(got.body, body.as_bytes());
    let (r, _) = phone.recv_final().await;
    assert_eq!(r.status(), Some(200));
    p.stop().await;
}

#[tokio::test]
async fn two_pipelined_messages_in_one_tcp_write() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(&["tcp", "udp"], &pair(&up.uri(), NO_BACKUP)).await;
    let mut phone = Phone::tcp(p.local_addr(Transport::Tcp).unwrap()).await;
    let ruri = format!("sip:bob@{}", up.addr.ip());
    let a = phone.request(
        "MESSAGE",
        &ruri,
        &unique("pa"),
        &unique("z9hG4bKp"),
        "",
        "first",
    );
    let b = phone.request(
        "MESSAGE",
        &ruri,
        &unique("pb"),
        &unique("z9hG4bKq"),
        "",
        "second",
    );
    phone.send(&format!("{a}{b}")).await;
    let m1 = up.recv_method("MESSAGE").await;
    let m2 = up.recv_method("MESSAGE").await;
    let mut bodies = vec![m1.body, m2.body];
    bodies.sort();
    assert_eq!(bodies, vec![b"first".to_vec(), b"second".to_vec()]);
    assert_eq!(phone.recv_final().await.0.status(), Some(200));
    assert_eq!(phone.recv_final().await.0.status(), Some(200));
    p.stop().await;
}

#[tokio::test]
async fn request_from_upstream_follows_its_request_uri() {
    // The server calls a phone: the request goes where the Request-URI says.
    let up = Upstream::udp(Behaviour::Answer).await;
    let mut callee = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(&["udp"], &pair(&up.uri(), NO_BACKUP)).await;
    let proxy_addr = p.local_addr(Transport::Udp).unwrap();
    // The "server" side sends from the upstream's own IP.
    let sock = tokio::net::UdpSocket::bind((up.addr.ip(), 0))
        .await
        .unwrap();
    let call_id = unique("down");
    let req = format!(
        "OPTIONS sip:phone@{} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={}\r\nMax-Forwards: 70\r\n\
         From: <sip:pbx@x>;tag=1\r\nTo: <sip:phone@x>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        callee.addr,
        sock.local_addr().unwrap(),
        unique("z9hG4bKd")
    );
    sock.send_to(req.as_bytes(), proxy_addr).await.unwrap();
    let got = callee.recv_method("OPTIONS").await;
    assert_eq!(got.header("call-id"), Some(call_id.as_str()));
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let resp = SipMsg::parse(&buf[..n]).unwrap();
    assert_eq!(resp.status(), Some(200));
    p.stop().await;
}

#[tokio::test]
async fn malformed_request_gets_400_and_the_next_call_still_works() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(&["udp"], &pair(&up.uri(), NO_BACKUP)).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    let bad = phone
        .request(
            "INVITE",
            "sip:bob@example.com",
            &unique("bad"),
            &unique("z9hG4bKx"),
            "",
            "",
        )
        .replace("CSeq: 1 INVITE", "CSeq: 99999999999 INVITE");
    phone.send(&bad).await;
    let (r, _) = phone.recv_final().await;
    assert_eq!(r.status(), Some(400));
    phone
        .send_bytes(b"\x00\x01garbage that is not SIP at all\r\n\r\n")
        .await;
    call(&mut phone, &mut up).await;
    p.stop().await;
}

#[tokio::test]
async fn invite_retransmitted_after_200_is_absorbed_not_forwarded() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(&["udp"], &pair(&up.uri(), NO_BACKUP)).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    let ruri = format!("sip:bob@{}", up.addr.ip());
    let call_id = unique("late");
    let invite = phone.request("INVITE", &ruri, &call_id, &unique("z9hG4bKl"), "", "");
    phone.send(&invite).await;
    up.recv_method("INVITE").await;
    let (ok, _) = phone.recv_final().await;
    assert_eq!(ok.status(), Some(200));
    // The transaction now lingers (RFC 6026 Accepted): a late retransmission is absorbed.
    phone.send(&invite).await;
    phone
        .send(&phone.in_dialog("ACK", &ok, &call_id, 1, &unique("z9hG4bKa")))
        .await;
    let later = up.drain(Duration::from_millis(300)).await;
    let methods: Vec<_> = later.iter().filter_map(|m| m.method()).collect();
    assert_eq!(methods, vec!["ACK"]);
    p.stop().await;
}

#[tokio::test]
async fn ipv6_phone_calls_through_an_ipv6_listener() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(&["udp", "udp@[::1]"], &pair(&up.uri(), NO_BACKUP)).await;
    let v6 = p
        .local_addrs()
        .iter()
        .find(|(_, a)| a.is_ipv6())
        .map(|(_, a)| *a)
        .unwrap();
    let mut phone = Phone::udp_from("[::1]:0".parse().unwrap(), v6).await;
    let (invite, _) = call(&mut phone, &mut up).await;
    // The phone's Via carries its IPv6 source as received/rport.
    let vias = invite.all("via");
    assert!(
        vias[1].contains(&format!("rport={}", phone.addr.port())),
        "{}",
        vias[1]
    );
    assert!(vias[1].starts_with("SIP/2.0/UDP [::1]:"), "{}", vias[1]);
    p.stop().await;
}

#[tokio::test]
async fn dead_connection_toward_the_server_is_reopened_and_the_request_resent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = tokio::net::TcpListener::bind((loopback(UPSTREAM), 0))
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let p = proxy(
        &["udp"],
        &pair(&format!("{addr};transport=tcp"), "127.0.2.254:9"),
    )
    .await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    let call_id = unique("stale");
    phone
        .send(&phone.request(
            "INVITE",
            "sip:bob@site.example",
            &call_id,
            &unique("z9hG4bKs"),
            "",
            "",
        ))
        .await;
    async fn next_invite(s: &mut tokio::net::TcpStream) -> SipMsg {
        let mut d = Deframer::default();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "connection closed before the INVITE");
            if let Some(raw) = d.push(&buf[..n]).into_iter().next() {
                return SipMsg::parse(&raw).unwrap();
            }
        }
    }
    // The first connection dies with the INVITE unanswered.
    let (mut first, _) = tokio::time::timeout(WAIT, server.accept())
        .await
        .unwrap()
        .unwrap();
    let sent = next_invite(&mut first).await;
    drop(first);
    // The proxy opens a new one and sends the same request (same branch) again.
    let (mut second, _) = tokio::time::timeout(WAIT, server.accept())
        .await
        .unwrap()
        .unwrap();
    let again = next_invite(&mut second).await;
    assert_eq!(again.method(), Some("INVITE"));
    assert_eq!(again.header("via"), sent.header("via"));
    let ok = response(
        &again,
        200,
        "OK",
        &format!("<sip:uas@{addr};transport=tcp>"),
    );
    second.write_all(ok.as_bytes()).await.unwrap();
    let (fin, _) = phone.recv_final().await;
    assert_eq!(fin.status(), Some(200));
    assert_eq!(p.core().metrics.reconnects.get(), 1);
    // Closed while no transaction uses it: released, and the next request opens a new one.
    drop(second);
    let start = std::time::Instant::now();
    while p.core().transports.open_connections() > 0 {
        assert!(start.elapsed() < WAIT, "dead connection not released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let next_call = unique("next");
    phone
        .send(&phone.request(
            "INVITE",
            "sip:bob@site.example",
            &next_call,
            &unique("z9hG4bKn"),
            "",
            "",
        ))
        .await;
    let (mut third, _) = tokio::time::timeout(WAIT, server.accept())
        .await
        .unwrap()
        .unwrap();
    let inv = next_invite(&mut third).await;
    assert_eq!(inv.header("call-id"), Some(next_call.as_str()));
    assert_eq!(
        p.core().metrics.reconnects.get(),
        1,
        "no resend without a transaction"
    );
    p.stop().await;
}

#[tokio::test]
async fn idle_connections_close_unless_they_carry_a_flow() {
    let up = Upstream::udp(Behaviour::Answer).await;
    let extra = format!(
        "{}[limits]\nidle_timeout_s = 1\n[flow]\ntoken_key = \"000102030405060708090a0b0c0d0e0f\"\n",
        pair(&up.uri(), "127.0.2.254:9")
    );
    let p = proxy(&["udp", "tcp"], &extra).await;
    let tcp = p.local_addr(Transport::Tcp).unwrap();
    // A phone that registers: its connection now carries a flow.
    let mut registered = Phone::tcp(tcp).await;
    assert_eq!(
        registered
            .ask("REGISTER", "sip:site.example")
            .await
            .status(),
        Some(200)
    );
    // A connection that only sent an OPTIONS carries none: closed after a second idle.
    let mut plain = Phone::tcp(tcp).await;
    assert_eq!(
        plain.ask("OPTIONS", "sip:bob@site.example").await.status(),
        Some(200)
    );
    assert!(plain.closed_within(WAIT).await, "idle connection kept");
    // The registered phone, idle for longer still, is reachable on its connection.
    assert!(
        eventually(|| p.core().transports.open_connections() == 1).await,
        "{} connections open",
        p.core().transports.open_connections()
    );
    assert_eq!(
        registered
            .ask("OPTIONS", "sip:bob@site.example")
            .await
            .status(),
        Some(200)
    );
    p.stop().await;
}

/// A STUN Binding request (RFC 5389) with FINGERPRINT, as a phone keeping its UDP flow
/// alive sends it (RFC 5626 section 4.4.2).
fn stun_binding_request(id: [u8; 12]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
    m.extend_from_slice(&id);
    let crc = crc32fast::hash(&m) ^ 0x5354_554e;
    m.extend_from_slice(&[0x80, 0x28, 0x00, 0x04]);
    m.extend_from_slice(&crc.to_be_bytes());
    m
}

#[tokio::test]
async fn stun_keepalive_on_udp_is_answered_with_the_mapped_address() {
    let up = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(&["udp"], &pair(&up.uri(), NO_BACKUP)).await;
    let proxy_addr = p.local_addr(Transport::Udp).unwrap();
    let sock = tokio::net::UdpSocket::bind((loopback(PHONE), 0))
        .await
        .unwrap();
    let me = sock.local_addr().unwrap();
    let id = *b"keepalive-01";
    sock.send_to(&stun_binding_request(id), proxy_addr)
        .await
        .unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("STUN answer")
        .unwrap();
    assert_eq!(from, proxy_addr);
    let resp = &buf[..n];
    assert_eq!(&resp[..2], &[0x01, 0x01], "Binding success response");
    assert_eq!(&resp[4..8], &[0x21, 0x12, 0xa4, 0x42]);
    assert_eq!(&resp[8..20], &id);
    // XOR-MAPPED-ADDRESS names the address the phone sent from.
    let at = resp
        .windows(2)
        .enumerate()
        .skip(20)
        .find(|(i, w)| (i % 4 == 0) && w == &[0x00, 0x20])
        .map(|(i, _)| i)
        .expect("XOR-MAPPED-ADDRESS");
    let port = u16::from_be_bytes([resp[at + 6], resp[at + 7]]) ^ 0x2112;
    let ip: Vec<u8> = resp[at + 8..at + 12]
        .iter()
        .zip([0x21, 0x12, 0xa4, 0x42])
        .map(|(a, k)| a ^ k)
        .collect();
    assert_eq!(port, me.port());
    assert_eq!(
        std::net::IpAddr::from([ip[0], ip[1], ip[2], ip[3]]),
        me.ip()
    );
    // It carries a FINGERPRINT, as the request did, over the rest of the answer.
    let fp = &resp[n - 8..];
    assert_eq!(&fp[..4], &[0x80, 0x28, 0x00, 0x04]);
    let crc = crc32fast::hash(&resp[..n - 8]) ^ 0x5354_554e;
    assert_eq!(&fp[4..], &crc.to_be_bytes());
    // A malformed STUN packet is dropped and counted; SIP on the same socket still works.
    let mut broken = stun_binding_request(id);
    broken[3] = 0x40;
    sock.send_to(&broken, proxy_addr).await.unwrap();
    let mut phone = Phone::udp(proxy_addr).await;
    let ok = phone.ask("OPTIONS", &format!("sip:{proxy_addr}")).await;
    assert_eq!(ok.status(), Some(200));
    // The broken packet may have gone to another worker than the OPTIONS (another source).
    let dropped = "sippool_messages_dropped_total{reason=\"stun_malformed\"}";
    assert_eq!(sample_reaching(&p, dropped, 1.0).await, 1.0);
    let text = p.core().metrics.encode();
    assert_eq!(
        sample(&text, "sippool_stun_requests_total{outcome=\"answered\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "sippool_stun_requests_total{outcome=\"dropped\"}"),
        1.0
    );
}
