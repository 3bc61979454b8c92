//! Calls outlive the instance that set them up: three sippool processes with `pool.name`
//! behind SRV records served by dnsmasq. Record-Route names the pool, so the in-dialog
//! requests of calls set up through instance a reach whichever instance the sender's
//! RFC 3263 lookup picks once a is killed (SIGKILL), from the caller's side and from the
//! server's. A request toward a phone whose flow another instance holds is relayed to that
//! instance, delivered over the flow and not taken for a loop; when that instance is gone,
//! a UDP phone is reached from the instance itself and a TLS phone's request gets 430 at
//! once.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sippool::config::HostPort;
use sippool::dns::Locator;
use support::pki::*;
use support::pool::{Pool, POOL};
use support::*;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// A scripted upstream server (the pair's primary): answers OPTIONS probes itself and
/// hands every other message to the test, with its source.
struct Server {
    sock: Arc<UdpSocket>,
    rx: mpsc::UnboundedReceiver<(SipMsg, SocketAddr)>,
}

impl Server {
    async fn start() -> Server {
        let sock = Arc::new(UdpSocket::bind((loopback(UPSTREAM), 0)).await.unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        let s = sock.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let Some(m) = SipMsg::parse(&buf[..n]) else {
                    continue;
                };
                if m.method() == Some("OPTIONS") {
                    let ok = response(&m, 200, "OK", "<sip:srv@127.0.0.1>");
                    let _ = s.send_to(ok.as_bytes(), from).await;
                } else if tx.send((m, from)).is_err() {
                    break;
                }
            }
        });
        Server { sock, rx }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    async fn recv(&mut self) -> (SipMsg, SocketAddr) {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("server: timed out")
            .expect("server: socket closed")
    }

    /// The next request with this method, skipping retransmissions and stray responses.
    async fn recv_request(&mut self, method: &str) -> (SipMsg, SocketAddr) {
        loop {
            let (m, from) = self.recv().await;
            if m.method() == Some(method) {
                return (m, from);
            }
        }
    }

    async fn send(&self, text: &str, to: SocketAddr) {
        self.sock.send_to(text.as_bytes(), to).await.unwrap();
    }
}

/// The instances of the pool in the order an RFC 3263 client tries them, and the ones it
/// has found dead (no answer within half a second: skipped from then on).
struct PoolClient {
    locator: Locator,
    dead: HashSet<SocketAddr>,
}

impl PoolClient {
    async fn targets(&self, transport: &str) -> Vec<SocketAddr> {
        let hp: HostPort = format!("{POOL};transport={transport}").parse().unwrap();
        let all = self.locator.candidates(&hp).await;
        assert!(!all.is_empty(), "no SRV targets");
        all.into_iter()
            .map(|t| t.addr)
            .filter(|a| !self.dead.contains(a))
            .collect()
    }
}

/// What the server keeps of a call it answered: the INVITE as it arrived.
struct Call {
    call_id: String,
    invite: SipMsg,
    ok: SipMsg,
    phone: Phone,
    /// The next CSeq of each side.
    phone_cseq: u32,
    server_cseq: u32,
}

/// A call from `phone` through the instance it is connected to, answered by the server.
async fn set_up(server: &mut Server, mut phone: Phone) -> Call {
    let call_id = unique("pd");
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
    let (invite, from) = server.recv_request("INVITE").await;
    let ok = response(
        &invite,
        200,
        "OK",
        &format!("<sip:agent@{}>", server.addr()),
    );
    server.send(&ok, from).await;
    let (ok, _) = phone.recv_final().await;
    assert_eq!(ok.status(), Some(200));
    let rr = ok.all("record-route");
    assert!(
        !rr.is_empty()
            && rr
                .iter()
                .all(|r| r.contains(&format!("{POOL};")) || r.contains(&format!("{POOL}>"))),
        "Record-Route names the pool: {rr:?}"
    );
    phone
        .send(&phone.in_dialog("ACK", &ok, &call_id, 1, &unique("z9hG4bKa")))
        .await;
    server.recv_request("ACK").await;
    Call {
        call_id,
        invite,
        ok,
        phone,
        phone_cseq: 2,
        server_cseq: 1,
    }
}

/// A request from the server in the dialog of `call` (RFC 3261 section 12.2.1.1): to the
/// phone's Contact, along the Record-Route as the INVITE carried it.
fn from_server(server: &Server, call: &mut Call, method: &str) -> String {
    let inv = &call.invite;
    let contact = inv.header("contact").expect("contact");
    let target = contact.trim_start_matches('<').split('>').next().unwrap();
    let routes = inv.all("record-route").join(", ");
    call.server_cseq += 1;
    format!(
        "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={}\r\nMax-Forwards: 70\r\n\
         Route: {routes}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {method}\r\n\
         Contact: <sip:agent@{}>\r\nContent-Length: 0\r\n\r\n",
        server.addr(),
        unique("z9hG4bKs"),
        call.ok.header("to").unwrap(),
        inv.header("from").unwrap(),
        call.call_id,
        call.server_cseq,
        server.addr(),
    )
}

/// The sent-by of a request's top Via: where its response goes.
fn via_sent_by(m: &SipMsg) -> SocketAddr {
    let via = m.header("via").expect("via");
    let sent_by = via
        .split_whitespace()
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    sent_by.parse().expect("an IP sent-by")
}

/// The server sends `method` toward the phone through the pool (the first live instance
/// by SRV, the next one after half a second of silence); returns the final response, the
/// instance that carried it, and how long it took.
async fn server_request(
    server: &mut Server,
    client: &mut PoolClient,
    call: &mut Call,
    method: &str,
    phone_answers: bool,
) -> (SipMsg, SocketAddr, Duration) {
    let req = from_server(server, call, method);
    for target in client.targets("udp").await {
        let start = Instant::now();
        server.send(&req, target).await;
        if phone_answers {
            let Some(got) = call.phone.recv_within(Duration::from_millis(1500)).await else {
                client.dead.insert(target);
                continue;
            };
            assert_eq!(got.method(), Some(method), "the phone got {}", got.text());
            call.phone.proxy = via_sent_by(&got);
            call.phone
                .send(&response(
                    &got,
                    200,
                    "OK",
                    &format!("<sip:alice@{}>", call.phone.addr),
                ))
                .await;
        }
        let answer = tokio::time::timeout(Duration::from_millis(1500), async {
            loop {
                let (m, _) = server.recv().await;
                if m.header("call-id") == Some(call.call_id.as_str())
                    && m.status().is_some_and(|c| c >= 200)
                {
                    return m;
                }
            }
        })
        .await;
        match answer {
            Ok(m) => return (m, target, start.elapsed()),
            Err(_) => {
                client.dead.insert(target);
            }
        }
    }
    panic!("no instance of the pool carried the server's {method}");
}

/// The phone sends BYE along its route set through the pool; the server answers it.
async fn phone_bye(server: &mut Server, client: &mut PoolClient, call: &mut Call, transport: &str) {
    let bye = call.phone.in_dialog(
        "BYE",
        &call.ok,
        &call.call_id,
        call.phone_cseq,
        &unique("z9hG4bKb"),
    );
    call.phone_cseq += 1;
    if transport == "udp" {
        for target in client.targets("udp").await {
            call.phone.proxy = target;
            call.phone.send(&bye).await;
            let Ok((m, from)) =
                tokio::time::timeout(Duration::from_millis(500), server.recv_request("BYE")).await
            else {
                client.dead.insert(target);
                continue;
            };
            assert_eq!(m.header("call-id"), Some(call.call_id.as_str()));
            server
                .send(&response(&m, 200, "OK", "<sip:agent@127.0.0.1>"), from)
                .await;
            let (ok, _) = call.phone.recv_final().await;
            assert_eq!(ok.status(), Some(200), "the caller's BYE completed");
            return;
        }
        panic!("no instance carried the phone's BYE");
    }
    call.phone.send(&bye).await;
    let (m, from) = server.recv_request("BYE").await;
    assert_eq!(m.header("call-id"), Some(call.call_id.as_str()));
    server
        .send(&response(&m, 200, "OK", "<sip:agent@127.0.0.1>"), from)
        .await;
    let (ok, _) = call.phone.recv_final().await;
    assert_eq!(ok.status(), Some(200), "the phone's BYE completed");
}

#[tokio::test]
async fn established_calls_outlive_the_instance_that_set_them_up() {
    let mut server = Server::start().await;
    let backup = Upstream::udp(Behaviour::Answer).await;
    let mut pool = Pool::start(
        [(10, 10), (20, 10), (30, 10)],
        [(10, 10), (20, 10), (30, 10)],
        &format!(
            "{}[pool]\nname = \"{POOL}\"\n",
            pair(&server.addr().to_string(), &backup.uri())
        ),
    )
    .await;
    let ips = pool.ips;
    let mut client = PoolClient {
        locator: Locator::new(&[pool.dns], Duration::from_millis(300)).unwrap(),
        dead: HashSet::new(),
    };
    let a_udp = SocketAddr::new(ips[0], 5060);
    let b_udp = SocketAddr::new(ips[1], 5060);

    // Calls set up through a: four from UDP phones, one from a TLS phone.
    let mut calls = Vec::new();
    for _ in 0..4 {
        calls.push(set_up(&mut server, Phone::udp(a_udp).await).await);
    }
    let tls_phone = try_tls_phone(SocketAddr::new(ips[0], 5061), &pool.ca, None)
        .await
        .expect("TLS to a");
    let mut tls_call = set_up(&mut server, tls_phone).await;

    // Instance to instance: the server's request for the TLS phone sent to b is relayed to
    // a, which holds the phone's connection, delivered over it, and not taken for a loop.
    let req = from_server(&server, &mut tls_call, "INFO");
    server.send(&req, b_udp).await;
    let got = tls_call.phone.recv().await;
    assert_eq!(
        got.method(),
        Some("INFO"),
        "over the TLS flow: {}",
        got.text()
    );
    assert_eq!(
        got.all("via").len(),
        3,
        "a's, b's and the server's Via: {}",
        got.text()
    );
    tls_call
        .phone
        .send(&response(&got, 200, "OK", "<sip:alice@127.0.0.1>"))
        .await;
    let (ok, from) = server.recv().await;
    assert_eq!(ok.status(), Some(200), "relayed answer: {}", ok.text());
    assert_eq!(
        from, b_udp,
        "the answer comes back the way the request went"
    );

    // a dies with every call up.
    pool.kill(0);

    for (i, call) in calls.iter_mut().enumerate() {
        if i % 2 == 0 {
            // Hung up by the caller, through another instance.
            phone_bye(&mut server, &mut client, call, "udp").await;
        } else {
            // Held by the agent (re-INVITE), then hung up by the server.
            let (ok, via, _) = server_request(&mut server, &mut client, call, "INVITE", true).await;
            assert_eq!(ok.status(), Some(200), "re-INVITE: {}", ok.text());
            assert_ne!(via, a_udp);
            // Its ACK (end to end, along the route) reaches the phone too.
            call.server_cseq -= 1;
            let ack = from_server(&server, call, "ACK");
            server.send(&ack, via).await;
            let got = call.phone.recv().await;
            assert_eq!(got.method(), Some("ACK"), "{}", got.text());
            let (ok, _, _) = server_request(&mut server, &mut client, call, "BYE", true).await;
            assert_eq!(ok.status(), Some(200), "server's BYE: {}", ok.text());
        }
    }

    // The TLS phone's connection went with a: a request toward it is 430 at once, not a
    // timeout, and the phone's own BYE over a new connection completes.
    let (answer, _, took) =
        server_request(&mut server, &mut client, &mut tls_call, "INFO", false).await;
    assert_eq!(answer.status(), Some(430), "{}", answer.text());
    assert!(took < Duration::from_millis(1000), "430 after {took:?}");
    assert!(
        tls_call.phone.closed_within(WAIT).await,
        "a's connection closed"
    );
    let targets = client.targets("tls").await;
    let mut phone = None;
    for t in targets {
        if let Ok(p) = try_tls_phone(SocketAddr::new(t.ip(), 5061), &pool.ca, None).await {
            phone = Some(p);
            break;
        }
    }
    tls_call.phone = phone.expect("a TLS connection to a surviving instance");
    phone_bye(&mut server, &mut client, &mut tls_call, "tls").await;
}
