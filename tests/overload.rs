//! Overload protection: the INVITE rate, caps on transactions, connections and slow
//! senders, and the graceful drain on SIGTERM.

mod support;

use std::time::{Duration, Instant};

use sippool::sip::transport::Transport;
use support::binary::{free_udp_port, wait_listening, Running};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NO_BACKUP: &str = "127.0.2.254:9";

fn invite(phone: &Phone, call_id: &str, branch: &str) -> String {
    phone.request("INVITE", "sip:bob@site.example", call_id, branch, "", "")
}

#[tokio::test]
async fn invites_over_the_rate_get_503_and_in_dialog_requests_pass() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    let extra = format!(
        "{}[overload]\ninvite_rate = 2\n",
        pair(&up.uri(), NO_BACKUP)
    );
    let p = proxy(&["udp"], &extra).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    // The first call is admitted (burst of one).
    let first = unique("rate");
    phone
        .send(&invite(&phone, &first, &unique("z9hG4bKr")))
        .await;
    let (ok, _) = phone.recv_final().await;
    assert_eq!(ok.status(), Some(200));
    // The next ones, at once, are over the rate.
    for _ in 0..3 {
        let id = unique("over");
        let branch = unique("z9hG4bKo");
        phone.send(&invite(&phone, &id, &branch)).await;
        let (r, _) = phone.recv_final().await;
        assert_eq!(r.status(), Some(503));
        assert_eq!(r.header("retry-after"), Some("1"));
        // Its ACK is absorbed by the proxy.
        let ack = phone
            .request("ACK", "sip:bob@site.example", &id, &branch, "", "")
            .replace(
                "To: <sip:bob@site.example>",
                &format!("To: {}", r.header("to").unwrap()),
            );
        phone.send(&ack).await;
    }
    // In-dialog requests of the admitted call are never limited.
    phone
        .send(&phone.in_dialog("ACK", &ok, &first, 1, &unique("z9hG4bKa")))
        .await;
    phone
        .send(&phone.in_dialog("BYE", &ok, &first, 2, &unique("z9hG4bKb")))
        .await;
    assert_eq!(phone.recv_final().await.0.status(), Some(200));
    let seen: Vec<String> = up
        .drain(Duration::from_millis(200))
        .await
        .iter()
        .filter_map(|m| m.method().map(str::to_string))
        .collect();
    // One INVITE reached the server; the 503s and their ACKs never did.
    assert_eq!(seen, vec!["INVITE", "ACK", "BYE"], "{seen:?}");
    assert_eq!(
        sippool::metrics::Metrics::reason_value(
            &p.core().metrics.overload_rejections,
            "invite_rate"
        ),
        3
    );
    p.stop().await;
}

#[tokio::test]
async fn transaction_cap_answers_503() {
    let up = Upstream::udp(Behaviour::Ring).await;
    let extra = format!(
        "{}[limits]\nmax_transactions = 1\n",
        pair(&up.uri(), NO_BACKUP)
    );
    let p = proxy(&["udp"], &extra).await;
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    phone
        .send(&invite(&phone, &unique("cap1"), &unique("z9hG4bKc")))
        .await;
    loop {
        if phone.recv().await.status() == Some(180) {
            break;
        }
    }
    phone
        .send(&invite(&phone, &unique("cap2"), &unique("z9hG4bKd")))
        .await;
    let (r, _) = phone.recv_final().await;
    assert_eq!(r.status(), Some(503));
    assert_eq!(
        sippool::metrics::Metrics::reason_value(
            &p.core().metrics.overload_rejections,
            "transactions"
        ),
        1
    );
    p.stop().await;
}

async fn closed(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// With `limit` (a `[limits]` line) allowing one connection, a second one, from the same
/// IP or from another, is closed and the first stays.
async fn second_connection_is_refused(limit: &str, same_ip: bool) {
    let up = Upstream::udp(Behaviour::Answer).await;
    let extra = format!("{}[limits]\n{limit}\n", pair(&up.uri(), NO_BACKUP));
    let p = proxy(&["tcp", "udp"], &extra).await;
    let addr = p.local_addr(Transport::Tcp).unwrap();
    let ip = loopback(PHONE);
    let s1 = tokio::net::TcpSocket::new_v4().unwrap();
    s1.bind((ip, 0).into()).unwrap();
    let mut c1 = s1.connect(addr).await.unwrap();
    let start = Instant::now();
    while p.core().transports.open_connections() < 1 {
        assert!(start.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s2 = tokio::net::TcpSocket::new_v4().unwrap();
    s2.bind((if same_ip { ip } else { loopback(PHONE) }, 0).into())
        .unwrap();
    let mut c2 = s2.connect(addr).await.unwrap();
    assert!(
        closed(&mut c2, WAIT).await,
        "second connection is closed ({limit})"
    );
    assert!(
        !closed(&mut c1, Duration::from_millis(200)).await,
        "the first one stays"
    );
    p.stop().await;
}

#[tokio::test]
async fn connections_per_ip_are_capped() {
    second_connection_is_refused("max_connections_per_ip = 1", true).await;
}

#[tokio::test]
async fn connections_in_total_are_capped() {
    second_connection_is_refused("max_connections = 1", false).await;
}

#[tokio::test]
async fn slow_sender_is_cut_off() {
    let up = Upstream::udp(Behaviour::Answer).await;
    let extra = format!(
        "{}[limits]\nmessage_timeout_ms = 300\n",
        pair(&up.uri(), NO_BACKUP)
    );
    let p = proxy(&["tcp", "udp"], &extra).await;
    let mut c = tokio::net::TcpStream::connect(p.local_addr(Transport::Tcp).unwrap())
        .await
        .unwrap();
    // Half a message, then a byte now and then: never complete.
    c.write_all(
        b"INVITE sip:bob@site.example SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.1;branch=z9hG4bKslow\r\n",
    )
    .await
    .unwrap();
    let start = Instant::now();
    let cut = tokio::select! {
        c = closed_while_dripping(&mut c) => c,
        _ = tokio::time::sleep(WAIT) => false,
    };
    assert!(cut, "the slow sender was not cut off");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    p.stop().await;
}

async fn closed_while_dripping(c: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        if c.write_all(b"X").await.is_err() {
            return true;
        }
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(100), c.read(&mut buf)).await
        {
            return true;
        }
    }
}

/// sippool as a child process, for signals.
fn binary_config(ip: std::net::IpAddr, port: u16, up: &Upstream, extra: &str) -> String {
    format!(
        "[instance]\nname = \"bin\"\n[[listen]]\ntransport = \"udp\"\naddress = \"{ip}:{port}\"\n{}{extra}",
        pair(&up.uri(), NO_BACKUP)
    )
}

#[tokio::test]
async fn sigterm_drains_a_ringing_call_and_rejects_new_ones() {
    let mut up = Upstream::udp(Behaviour::AnswerAfter(1500)).await;
    let ip = loopback(PROXY);
    let port = free_udp_port(ip);
    let mut run = Running::start(&binary_config(
        ip,
        port,
        &up,
        "[runtime]\ndrain_timeout_s = 10\n",
    ));
    let mut phone = Phone::udp(std::net::SocketAddr::new(ip, port)).await;
    wait_listening(&mut phone).await;
    let call = unique("drain");
    phone
        .send(&invite(&phone, &call, &unique("z9hG4bKq")))
        .await;
    up.recv_method("INVITE").await;
    loop {
        if phone.recv().await.status() == Some(180) {
            break;
        }
    }
    run.signal("-TERM");
    // Until the ringing call ends, the process is draining: new calls get 503.
    tokio::time::sleep(Duration::from_millis(100)).await;
    phone
        .send(&invite(&phone, &unique("new"), &unique("z9hG4bKn")))
        .await;
    let (r, _) = phone.recv_final().await;
    assert_eq!(r.status(), Some(503), "{}", r.text());
    assert!(r.header("retry-after").is_some());
    // The ringing call is answered through the draining proxy.
    let (ok, _) = phone.recv_final().await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.header("call-id"), Some(call.as_str()));
    // Then the process exits by itself, cleanly.
    let start = Instant::now();
    let status = loop {
        if let Some(s) = run.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < WAIT,
            "sippool did not exit after the drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success());
    run.wait_log("\"event\":\"drain_started\"").await;
    run.wait_log("\"reason\":\"drained\"").await;
}

#[tokio::test]
async fn sighup_reloads_the_invite_rate() {
    let up = Upstream::udp(Behaviour::Answer).await;
    let ip = loopback(PROXY);
    let port = free_udp_port(ip);
    let run = Running::start(&binary_config(
        ip,
        port,
        &up,
        "[overload]\ninvite_rate = 0\n",
    ));
    let mut phone = Phone::udp(std::net::SocketAddr::new(ip, port)).await;
    wait_listening(&mut phone).await;
    run.rewrite(&binary_config(
        ip,
        port,
        &up,
        "[overload]\ninvite_rate = 1\n",
    ));
    run.signal("-HUP");
    // Within a moment the new limit applies: a burst of INVITEs meets 503s.
    let start = Instant::now();
    loop {
        let mut codes = Vec::new();
        for _ in 0..3 {
            phone
                .send(&invite(&phone, &unique("hup"), &unique("z9hG4bKh")))
                .await;
            codes.push(phone.recv_final().await.0.status());
        }
        if codes.contains(&Some(503)) {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the new rate never applied: {codes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn oversized_message_closes_the_stream_and_too_many_headers_get_400() {
    let up = Upstream::udp(Behaviour::Answer).await;
    let extra = format!(
        "{}[limits]\nmax_message_size = 4096\nmax_headers = 20\n",
        pair(&up.uri(), NO_BACKUP)
    );
    let p = proxy(&["tcp", "udp"], &extra).await;
    // Over TCP: a message larger than the cap cannot be framed; the connection is closed.
    let mut c = tokio::net::TcpStream::connect(p.local_addr(Transport::Tcp).unwrap())
        .await
        .unwrap();
    let big = format!(
        "MESSAGE sip:bob@site.example SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.1;branch=z9hG4bKbig\r\nContent-Length: 5000\r\n\r\n{}",
        "x".repeat(5000)
    );
    let _ = c.write_all(big.as_bytes()).await;
    assert!(closed(&mut c, WAIT).await);
    assert_eq!(
        sippool::metrics::Metrics::reason_value(&p.core().metrics.parse_errors, "too_large"),
        1
    );
    // Over UDP: more header lines than the cap get 400.
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    let many = "X-Filler: y\r\n".repeat(30);
    phone
        .send(&phone.request(
            "OPTIONS",
            "sip:bob@site.example",
            &unique("hdr"),
            &unique("z9hG4bKh"),
            &many,
            "",
        ))
        .await;
    let (r, _) = phone.recv_final().await;
    assert_eq!(r.status(), Some(400));
    assert!(r.start.contains("Too Many Header Fields"), "{}", r.start);
    p.stop().await;
}
