//! Shared-nothing workers (`runtime.workers`, issue 18): several threads, each with its own
//! `SO_REUSEPORT` socket on the listener's address, carry calls together.

mod support;

use std::time::Duration;

use sippool::sip::transport::Transport;
use support::*;

/// The sockets bound to `addr` (IPv4 UDP), from /proc/net/udp.
fn udp_sockets_on(addr: std::net::SocketAddr) -> usize {
    let std::net::SocketAddr::V4(v4) = addr else {
        return 0;
    };
    let o = v4.ip().octets();
    let want = format!(
        "{:02X}{:02X}{:02X}{:02X}:{:04X}",
        o[3],
        o[2],
        o[1],
        o[0],
        v4.port()
    );
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
        .count()
}

/// Threads of this process named as sippool's workers.
fn worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim_end().starts_with("sippool-w"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn two_workers_share_the_listener_and_every_call_goes_through() {
    let up = Upstream::udp(Behaviour::Answer).await;
    let extra = format!(
        "{}[runtime]\nworkers = 2\n",
        pair(&up.uri(), "127.0.2.254:9")
    );
    let p = proxy(&["udp"], &extra).await;
    let addr = p.local_addr(Transport::Udp).expect("udp");
    assert_eq!(udp_sockets_on(addr), 2, "one socket per worker");
    // Phones on many source ports: the kernel spreads them over both sockets.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..40 {
        calls.spawn(async move {
            let mut phone = Phone::udp(addr).await;
            phone.call("sip:agent@site.example").await;
        });
    }
    while let Some(done) = calls.join_next().await {
        done.expect("every call completes");
    }
    // Both workers received some of them.
    let metrics = p.core().metrics.encode();
    for w in ["0", "1"] {
        let n = sample(
            &metrics,
            &format!("sippool_datagrams_received_total{{worker=\"{w}\"}}"),
        );
        assert!(n > 0.0, "worker {w} received nothing:\n{metrics}");
    }
    let m = p.core().metrics.transactions.get();
    assert!(m <= 2, "transactions left in flight: {m}");
    assert!(
        worker_threads() >= 1,
        "the worker runs on a thread of its own"
    );
    p.stop().await;
    // Stopped: the worker's thread has ended.
    let start = std::time::Instant::now();
    while worker_threads() > 0 {
        assert!(start.elapsed() < WAIT, "a worker outlived the proxy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn workers_and_a_work_stealing_runtime_do_not_go_together() {
    let text =
        "[instance]\nname = \"w\"\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\
                [[pair]]\nname = \"p\"\nprimary = \"127.0.0.2:5060\"\nbackup = \"127.0.0.3:5060\"\n\
                [runtime]\nworkers = 2\nworker_threads = 2\n";
    let e = sippool::config::Config::from_toml_str(text)
        .expect("parses")
        .validate()
        .expect_err("refused");
    assert_eq!(e.key, "runtime.workers");
    let text = text.replace("workers = 2\nworker_threads = 2", "workers = \"many\"");
    let e = sippool::config::Config::from_toml_str(&text)
        .expect("parses")
        .validate()
        .expect_err("refused");
    assert_eq!(e.key, "runtime.workers");
    let auto = text.replace("\"many\"", "\"auto\"");
    let s = sippool::config::Config::from_toml_str(&auto)
        .expect("parses")
        .validate()
        .expect("auto is valid");
    assert!(s.workers >= 1);
}

/// The top Via's sent-by of a request, as an address.
fn via_sent_by(m: &SipMsg) -> std::net::SocketAddr {
    let top = m.all("via").into_iter().next().expect("a Via");
    let sent_by = top.split_whitespace().nth(1).expect("sent-by");
    sent_by
        .split(';')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("an IP address and port")
}

/// A UDP server that answers as RFC 3261 section 18.2.2 says without `rport`: to the
/// address in the top Via, not to the source. Each request it got, with its source, goes
/// to the returned channel.
async fn via_answering_server() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(std::net::SocketAddr, SipMsg)>,
) {
    let sock = tokio::net::UdpSocket::bind((loopback(UPSTREAM), 0))
        .await
        .expect("bind");
    let addr = sock.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let Some(req) = SipMsg::parse(&buf[..n]) else {
                continue;
            };
            let contact = format!("<sip:uas@{addr}>");
            let to = via_sent_by(&req);
            let answers: &[(u16, &str)] = match req.method() {
                Some("ACK") | None => &[],
                Some("INVITE") => &[(180, "Ringing"), (200, "OK")],
                Some(_) => &[(200, "OK")],
            };
            for (code, reason) in answers {
                let text = response(&req, *code, reason, &contact);
                let _ = sock.send_to(text.as_bytes(), to).await;
            }
            if tx.send((from, req)).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn responses_come_back_to_the_worker_that_sent_the_request() {
    let (server, mut requests) = via_answering_server().await;
    let extra = format!(
        "{}[runtime]\nworkers = 2\n",
        pair(&format!("{server};transport=udp"), "127.0.2.254:9")
    );
    let p = proxy(&["udp"], &extra).await;
    let addr = p.local_addr(Transport::Udp).expect("udp");
    // Phones on many source ports: the kernel spreads their requests over both workers.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..40 {
        calls.spawn(async move {
            let mut phone = Phone::udp(addr).await;
            phone.call("sip:agent@site.example").await;
        });
    }
    while let Some(done) = calls.join_next().await {
        done.expect("every call completes");
    }
    // Every request reached the server from a worker's own socket on the listener's
    // address, whose port its Via names; Record-Route names the listener.
    let mut sources = std::collections::HashSet::new();
    while let Ok((from, req)) = requests.try_recv() {
        assert_eq!(from.ip(), addr.ip(), "{}", req.start);
        assert_ne!(
            from.port(),
            addr.port(),
            "not the listener's socket: {}",
            req.text()
        );
        assert_eq!(
            via_sent_by(&req),
            from,
            "the Via names the socket it came from"
        );
        if req.method() == Some("INVITE") {
            let rr = req.all("record-route").join(",");
            assert!(rr.contains(&addr.to_string()), "{rr}");
        }
        sources.insert(from);
    }
    assert_eq!(sources.len(), 2, "one socket per worker: {sources:?}");
    let metrics = p.core().metrics.encode();
    for w in ["0", "1"] {
        let n = sample(
            &metrics,
            &format!("sippool_datagrams_received_total{{worker=\"{w}\"}}"),
        );
        assert!(n > 0.0, "worker {w} received nothing:\n{metrics}");
    }
    // Each response reached the worker whose transaction waited for it.
    assert_eq!(
        sample(&metrics, "sippool_worker_handoffs_total"),
        0.0,
        "{metrics}"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_flow_on_one_workers_connection_is_reached_from_another_worker() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    let extra = format!(
        "{}[runtime]\nworkers = 2\n",
        pair(&up.uri(), "127.0.2.254:9")
    );
    let p = proxy(&["udp", "tcp"], &extra).await;
    let udp = p.local_addr(Transport::Udp).expect("udp");
    let tcp = p.local_addr(Transport::Tcp).expect("tcp");
    // Two phones over TCP: their connections go to the workers in turn, one each.
    let mut phones = Vec::new();
    for _ in 0..2 {
        let mut phone = Phone::tcp(tcp).await;
        let path = register_with_path(&mut phone, &mut up).await;
        phones.push((phone, path));
    }
    let received = |p: &sippool::actors::Proxy| -> Vec<f64> {
        let metrics = p.core().metrics.encode();
        ["0", "1"]
            .iter()
            .map(|w| {
                sample(
                    &metrics,
                    &format!("sippool_datagrams_received_total{{worker=\"{w}\"}}"),
                )
            })
            .collect()
    };
    let metrics = p.core().metrics.encode();
    for w in ["0", "1"] {
        let n = sample(
            &metrics,
            &format!("sippool_worker_connections{{worker=\"{w}\"}}"),
        );
        assert_eq!(n, 1.0, "worker {w}:\n{metrics}");
    }
    let before = received(&p);
    // The server calls each phone along its Path, from one socket: both requests reach
    // the same worker, and each is sent over its phone's connection, one of them on the
    // other worker.
    let server = tokio::net::UdpSocket::bind((up.addr.ip(), 0))
        .await
        .expect("bind");
    for (phone, path) in &mut phones {
        let contact = format!("<sip:alice@{};transport=tcp>", phone.addr);
        call_phone_along_path(&server, udp, phone, path, &contact).await;
    }
    let after = received(&p);
    let got: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(
        got.contains(&2.0) && got.contains(&0.0),
        "one worker got both of the server's requests: {got:?}"
    );
    p.stop().await;
}
