//! Small SIP agents for the integration tests: a phone (UAC) and an upstream server (UAS),
//! over UDP or TCP on loopback. They parse SIP with their own few lines of code, not with
//! sippool's parser, so a parser bug in sippool cannot hide itself.
#![allow(dead_code)]

pub mod binary;
pub mod dnsmasq;
pub mod pki;
pub mod pool;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sippool::actors::Proxy;
use sippool::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// How long a test waits for any one message before failing.
pub const WAIT: Duration = Duration::from_secs(5);

static NEXT_HOST: AtomicU8 = AtomicU8::new(1);

/// A fresh loopback address per role: 127.0.<role>.<n>, unique within this test binary.
pub fn loopback(role: u8) -> IpAddr {
    let n = NEXT_HOST.fetch_add(1, Ordering::Relaxed);
    IpAddr::V4(Ipv4Addr::new(127, role, 7, n))
}

/// Roles, so that phones are never mistaken for upstream servers.
pub const PROXY: u8 = 1;
/// Upstream servers.
pub const UPSTREAM: u8 = 2;
/// Phones.
pub const PHONE: u8 = 3;

/// A parsed SIP message (test-side parser).
#[derive(Debug, Clone)]
pub struct SipMsg {
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub raw: Vec<u8>,
}

fn long_name(n: &str) -> String {
    match n.to_ascii_lowercase().as_str() {
        "v" => "via".into(),
        "f" => "from".into(),
        "t" => "to".into(),
        "i" => "call-id".into(),
        "m" => "contact".into(),
        "l" => "content-length".into(),
        other => other.to_string(),
    }
}

impl SipMsg {
    pub fn parse(raw: &[u8]) -> Option<SipMsg> {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = std::str::from_utf8(&raw[..split]).ok()?;
        let mut lines = head.split("\r\n");
        let start = lines.next()?.to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
                continue;
            }
            let (n, v) = line.split_once(':')?;
            headers.push((long_name(n.trim()), v.trim().to_string()));
        }
        let mut m = SipMsg {
            start,
            headers,
            body: Vec::new(),
            raw: raw.to_vec(),
        };
        let cl: usize = m
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        m.body = raw.get(split + 4..split + 4 + cl)?.to_vec();
        Some(m)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All values of a header, comma-separated values split (good enough for Via and
    /// Record-Route in these tests).
    pub fn all(&self, name: &str) -> Vec<String> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .flat_map(|(_, v)| split_commas(v))
            .collect()
    }

    pub fn status(&self) -> Option<u16> {
        self.start.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
    }

    pub fn method(&self) -> Option<&str> {
        if self.start.starts_with("SIP/2.0") {
            None
        } else {
            self.start.split(' ').next()
        }
    }

    pub fn request_uri(&self) -> Option<&str> {
        self.start.split(' ').nth(1)
    }

    pub fn to_tag(&self) -> Option<String> {
        let to = self.header("to")?;
        to.split(';')
            .find_map(|p| p.trim().strip_prefix("tag=").map(str::to_string))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.raw).into_owned()
    }
}

fn split_commas(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in v.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// Splits a byte stream into SIP messages by Content-Length.
#[derive(Default)]
pub struct Deframer {
    buf: Vec<u8>,
}

impl Deframer {
    pub fn push(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            while self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                break;
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
            let cl: usize = head
                .split("\r\n")
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    let n = n.trim();
                    (n == "content-length" || n == "l").then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let total = end + 4 + cl;
            if self.buf.len() < total {
                break;
            }
            out.push(self.buf.drain(..total).collect());
        }
        out
    }
}

/// Where an agent sends and receives.
pub enum Link {
    Udp(Arc<UdpSocket>),
    Stream(Arc<tokio::sync::Mutex<BoxWrite>>),
}

/// The write half of a TCP or TLS stream.
pub type BoxWrite = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// A received message and who sent it (for UDP), with a way to answer on the same link.
pub struct Received {
    pub msg: SipMsg,
    pub from: SocketAddr,
    pub link: Arc<Link>,
}

impl Received {
    pub async fn reply(&self, text: &str) {
        send_link(&self.link, self.from, text.as_bytes()).await;
    }
}

pub async fn send_link(link: &Link, to: SocketAddr, bytes: &[u8]) {
    match link {
        Link::Udp(s) => {
            s.send_to(bytes, to).await.expect("udp send");
        }
        Link::Stream(w) => {
            w.lock().await.write_all(bytes).await.expect("stream write");
        }
    }
}

fn spawn_tcp_reader(
    stream: TcpStream,
    tx: mpsc::UnboundedSender<Received>,
) -> (Arc<Link>, tokio::task::JoinHandle<()>) {
    let peer = stream.peer_addr().expect("peer");
    spawn_stream_reader(stream, peer, tx)
}

/// Reads SIP messages from any byte stream (TCP or TLS) into `tx`.
pub fn spawn_stream_reader<S>(
    stream: S,
    peer: SocketAddr,
    tx: mpsc::UnboundedSender<Received>,
) -> (Arc<Link>, tokio::task::JoinHandle<()>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut r, w) = tokio::io::split(stream);
    let w: BoxWrite = Box::new(w);
    let link = Arc::new(Link::Stream(Arc::new(tokio::sync::Mutex::new(w))));
    let l2 = link.clone();
    let task = tokio::spawn(async move {
        let mut d = Deframer::default();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            for raw in d.push(&buf[..n]) {
                if let Some(msg) = SipMsg::parse(&raw) {
                    let _ = tx.send(Received {
                        msg,
                        from: peer,
                        link: l2.clone(),
                    });
                }
            }
        }
    });
    (link, task)
}

fn spawn_udp_reader(sock: Arc<UdpSocket>, tx: mpsc::UnboundedSender<Received>) -> Arc<Link> {
    let link = Arc::new(Link::Udp(sock.clone()));
    let l2 = link.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            if let Some(msg) = SipMsg::parse(&buf[..n]) {
                let _ = tx.send(Received {
                    msg,
                    from,
                    link: l2.clone(),
                });
            }
        }
    });
    link
}

/// A phone: sends requests to the proxy and reads what comes back.
pub struct Phone {
    pub addr: SocketAddr,
    pub transport: &'static str,
    pub proxy: SocketAddr,
    link: Arc<Link>,
    rx: mpsc::UnboundedReceiver<Received>,
    /// The task reading a stream; aborted on drop so that the connection closes.
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Phone {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}

impl Phone {
    pub async fn udp(proxy: SocketAddr) -> Phone {
        Self::udp_from(SocketAddr::new(loopback(PHONE), 0), proxy).await
    }

    /// A UDP phone bound to `bind` (for IPv6).
    pub async fn udp_from(bind: SocketAddr, proxy: SocketAddr) -> Phone {
        let sock = Arc::new(UdpSocket::bind(bind).await.expect("bind"));
        let addr = sock.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let link = spawn_udp_reader(sock, tx);
        Phone {
            addr,
            transport: "UDP",
            proxy,
            link,
            rx,
            reader: None,
        }
    }

    pub async fn tcp(proxy: SocketAddr) -> Phone {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(loopback(PHONE), 0))
            .expect("bind");
        let stream = sock.connect(proxy).await.expect("connect");
        let addr = stream.local_addr().expect("addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let (link, reader) = spawn_tcp_reader(stream, tx);
        Phone {
            addr,
            transport: "TCP",
            proxy,
            link,
            rx,
            reader: Some(reader),
        }
    }

    /// A phone on an already connected stream (for TLS).
    pub fn over_stream<S>(
        stream: S,
        local: SocketAddr,
        proxy: SocketAddr,
        transport: &'static str,
    ) -> Phone
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let (link, reader) = spawn_stream_reader(stream, proxy, tx);
        Phone {
            addr: local,
            transport,
            proxy,
            link,
            rx,
            reader: Some(reader),
        }
    }

    /// Whether the proxy closed the stream (or sends nothing) within `d`: `true` when the
    /// link ended.
    pub async fn closed_within(&mut self, d: Duration) -> bool {
        matches!(tokio::time::timeout(d, self.rx.recv()).await, Ok(None))
    }

    pub async fn send(&self, text: &str) {
        send_link(&self.link, self.proxy, text.as_bytes()).await;
    }

    pub async fn send_bytes(&self, bytes: &[u8]) {
        send_link(&self.link, self.proxy, bytes).await;
    }

    pub async fn recv(&mut self) -> SipMsg {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("phone: timed out waiting for a message")
            .expect("phone: link closed")
            .msg
    }

    /// Receives until a response with a final status (or `code`) arrives; returns it and
    /// the provisional codes seen before it.
    pub async fn recv_final(&mut self) -> (SipMsg, Vec<u16>) {
        let mut provisional = Vec::new();
        loop {
            let m = self.recv().await;
            match m.status() {
                Some(c) if c < 200 => provisional.push(c),
                Some(_) => return (m, provisional),
                None => panic!("phone: unexpected request {}", m.start),
            }
        }
    }

    /// The next message within `d`, if any.
    pub async fn recv_within(&mut self, d: Duration) -> Option<SipMsg> {
        tokio::time::timeout(d, self.rx.recv())
            .await
            .ok()
            .flatten()
            .map(|r| r.msg)
    }

    /// Sends an out-of-dialog request and returns its final response.
    pub async fn ask(&mut self, method: &str, ruri: &str) -> SipMsg {
        let req = self.request(method, ruri, &unique("ask"), &unique("z9hG4bKq"), "", "");
        self.send(&req).await;
        self.recv_final().await.0
    }

    /// A whole call from this phone: INVITE, 200, ACK, BYE, 200 (the call must succeed).
    pub async fn call(&mut self, ruri: &str) {
        let call_id = unique("call");
        self.send(&self.request("INVITE", ruri, &call_id, &unique("z9hG4bKc"), "", ""))
            .await;
        let (ok, _) = self.recv_final().await;
        assert_eq!(ok.status(), Some(200), "INVITE: {}", ok.start);
        self.send(&self.in_dialog("ACK", &ok, &call_id, 1, &unique("z9hG4bKa")))
            .await;
        self.send(&self.in_dialog("BYE", &ok, &call_id, 2, &unique("z9hG4bKb")))
            .await;
        let (bye_ok, _) = self.recv_final().await;
        assert_eq!(bye_ok.status(), Some(200), "BYE: {}", bye_ok.start);
    }

    /// Nothing arrives within `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(d, self.rx.recv()).await {
            panic!("phone: expected nothing, got {}", r.msg.start);
        }
    }

    pub fn via(&self, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            self.transport, self.addr
        )
    }

    /// An INVITE (or other method) from this phone.
    pub fn request(
        &self,
        method: &str,
        ruri: &str,
        call_id: &str,
        branch: &str,
        extra: &str,
        body: &str,
    ) -> String {
        let cseq = 1;
        format!(
            "{method} {ruri} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=ph{call_id}\r\n\
             To: <{ruri}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:alice@{};transport={}>\r\n{extra}\
             Content-Length: {}\r\n\r\n{body}",
            self.via(branch),
            self.addr,
            self.transport.to_ascii_lowercase(),
            body.len()
        )
    }

    /// An in-dialog request (ACK or BYE) for a dialog set up by `ok` (the 200 to INVITE):
    /// Request-URI is the remote Contact, Route the reversed Record-Route.
    pub fn in_dialog(
        &self,
        method: &str,
        ok: &SipMsg,
        call_id: &str,
        cseq: u32,
        branch: &str,
    ) -> String {
        let contact = ok.header("contact").expect("contact in 200");
        let target = contact
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap_or_default();
        let mut routes = ok.all("record-route");
        routes.reverse();
        let route_hdr = if routes.is_empty() {
            String::new()
        } else {
            format!("Route: {}\r\n", routes.join(", "))
        };
        format!(
            "{method} {target} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\n{route_hdr}From: <sip:alice@example.com>;tag=ph{call_id}\r\n\
             To: {}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            self.via(branch),
            ok.header("to").expect("to"),
        )
    }
}

/// What a test upstream server does with requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// INVITE -> 180, 200; other requests -> 200.
    Answer,
    /// INVITE -> 180 and nothing more (CANCEL -> 200 and 487).
    Ring,
    /// Never answers.
    Silent,
    /// Answers every request with this final status.
    Reply(u16),
    /// Answers OPTIONS with 200 after this many milliseconds; ignores everything else.
    LateOptions(u64),
    /// INVITE -> 180 at once and 200 after this many milliseconds; others -> 200.
    AnswerAfter(u64),
    /// Ignores INVITEs, answers everything else with 200 (a live server that drops one
    /// request it does not like).
    IgnoreInvite,
    /// INVITE -> 180 only after this many milliseconds, then rings (CANCEL -> 200 and 487):
    /// a slow server whose agent phone starts ringing late.
    LateRing(u64),
    /// INVITE -> 200 only after this many milliseconds, nothing before (a slow server).
    LateAnswer(u64),
}

/// A test upstream SIP server (UAS).
pub struct Upstream {
    pub addr: SocketAddr,
    pub transport: &'static str,
    behaviour: Arc<Mutex<Behaviour>>,
    rx: mpsc::UnboundedReceiver<SipMsg>,
}

impl Upstream {
    pub async fn udp(b: Behaviour) -> Upstream {
        Self::udp_at(SocketAddr::new(loopback(UPSTREAM), 0), b).await
    }

    /// A UDP server on a given address.
    pub async fn udp_at(bind: SocketAddr, b: Behaviour) -> Upstream {
        let sock = Arc::new(UdpSocket::bind(bind).await.expect("bind"));
        let addr = sock.local_addr().expect("addr");
        let (tx, rx_net) = mpsc::unbounded_channel();
        spawn_udp_reader(sock, tx);
        Self::serve(addr, "UDP", b, rx_net)
    }

    pub async fn tcp(b: Behaviour) -> Upstream {
        let listener = TcpListener::bind((loopback(UPSTREAM), 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx_net) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                spawn_tcp_reader(s, tx.clone());
            }
        });
        Self::serve(addr, "TCP", b, rx_net)
    }

    /// A TLS server on `ip` (its certificate and client policy in `config`); handshakes
    /// that fail are counted in the returned counter.
    pub async fn tls(
        ip: IpAddr,
        b: Behaviour,
        config: Arc<rustls::ServerConfig>,
    ) -> (Upstream, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx_net) = mpsc::unbounded_channel();
        let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let f2 = failed.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            while let Ok((s, peer)) = listener.accept().await {
                match acceptor.accept(s).await {
                    Ok(tls) => {
                        spawn_stream_reader(tls, peer, tx.clone());
                    }
                    Err(_) => {
                        f2.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        (Self::serve(addr, "TLS", b, rx_net), failed)
    }

    fn serve(
        addr: SocketAddr,
        transport: &'static str,
        b: Behaviour,
        mut net: mpsc::UnboundedReceiver<Received>,
    ) -> Upstream {
        let behaviour = Arc::new(Mutex::new(b));
        let (tx, rx) = mpsc::unbounded_channel();
        let beh = behaviour.clone();
        tokio::spawn(async move {
            let mut ringing: Vec<Received> = Vec::new();
            while let Some(r) = net.recv().await {
                let _ = tx.send(r.msg.clone());
                let b = *beh.lock().expect("lock");
                let Some(method) = r.msg.method().map(str::to_string) else {
                    continue;
                };
                let contact = format!(
                    "<sip:uas@{addr};transport={}>",
                    transport.to_ascii_lowercase()
                );
                match (b, method.as_str()) {
                    (_, "ACK") => {}
                    (Behaviour::Silent, _) => {}
                    (Behaviour::LateOptions(ms), "OPTIONS") => {
                        let text = response(&r.msg, 200, "Late", &contact);
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            r.reply(&text).await;
                        });
                    }
                    (Behaviour::LateOptions(_), _) => {}
                    (Behaviour::IgnoreInvite, "INVITE") => {}
                    (Behaviour::LateRing(ms), "INVITE") => {
                        let ringing_msg = response(&r.msg, 180, "Ringing", &contact);
                        let late = Received {
                            msg: r.msg.clone(),
                            from: r.from,
                            link: r.link.clone(),
                        };
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            late.reply(&ringing_msg).await;
                        });
                        ringing.push(r);
                    }
                    (Behaviour::LateAnswer(ms), "INVITE") => {
                        let ok = response(&r.msg, 200, "OK", &contact);
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            r.reply(&ok).await;
                        });
                    }
                    (Behaviour::AnswerAfter(ms), "INVITE") => {
                        r.reply(&response(&r.msg, 180, "Ringing", &contact)).await;
                        let ok = response(&r.msg, 200, "OK", &contact);
                        tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            r.reply(&ok).await;
                        });
                    }
                    (Behaviour::Reply(code), _) => {
                        r.reply(&response(&r.msg, code, "Test", &contact)).await;
                    }
                    (Behaviour::Answer, "INVITE") => {
                        r.reply(&response(&r.msg, 180, "Ringing", &contact)).await;
                        r.reply(&response(&r.msg, 200, "OK", &contact)).await;
                    }
                    (Behaviour::Ring, "INVITE") => {
                        r.reply(&response(&r.msg, 180, "Ringing", &contact)).await;
                        ringing.push(r);
                    }
                    (_, "CANCEL") => {
                        r.reply(&response(&r.msg, 200, "OK", &contact)).await;
                        let call = r.msg.header("call-id").map(str::to_string);
                        if let Some(pos) = ringing
                            .iter()
                            .position(|i| i.msg.header("call-id").map(str::to_string) == call)
                        {
                            let inv = ringing.remove(pos);
                            inv.reply(&response(&inv.msg, 487, "Request Terminated", &contact))
                                .await;
                        }
                    }
                    _ => {
                        r.reply(&response(&r.msg, 200, "OK", &contact)).await;
                    }
                }
            }
        });
        Upstream {
            addr,
            transport,
            behaviour,
            rx,
        }
    }

    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().expect("lock") = b;
    }

    /// The next request the server received.
    pub async fn recv(&mut self) -> SipMsg {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("upstream: timed out waiting for a request")
            .expect("upstream: closed")
    }

    /// The next request, or `None` when the server's task ended.
    pub async fn recv_any(&mut self) -> Option<SipMsg> {
        self.rx.recv().await
    }

    /// The next request of this method (others are skipped).
    pub async fn recv_method(&mut self, method: &str) -> SipMsg {
        loop {
            let m = self.recv().await;
            if m.method() == Some(method) {
                return m;
            }
        }
    }

    /// Requests received within `d`.
    pub async fn drain(&mut self, d: Duration) -> Vec<SipMsg> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.push(m);
        }
        out
    }

    pub fn uri(&self) -> String {
        format!(
            "{};transport={}",
            self.addr,
            self.transport.to_ascii_lowercase()
        )
    }
}

/// A request the upstream server sends toward a phone, through the proxy, along `route`.
pub fn server_invite(server: SocketAddr, phone: &Phone, route: &str, call_id: &str) -> String {
    format!(
        "INVITE sip:alice@{} SIP/2.0\r\nVia: SIP/2.0/UDP {server};branch={}\r\nMax-Forwards: 70\r\n\
         Route: {route}\r\nFrom: <sip:pbx@site.example>;tag=pbx1\r\nTo: <sip:alice@site.example>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:pbx@{server}>\r\nContent-Length: 0\r\n\r\n",
        phone.addr,
        unique("z9hG4bKs")
    )
}

/// The final response the server socket gets for `call_id`.
pub async fn server_final(sock: &tokio::net::UdpSocket, call_id: &str) -> SipMsg {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let m = SipMsg::parse(&buf[..n]).unwrap();
        if m.header("call-id") == Some(call_id) && m.status().is_some_and(|c| c >= 200) {
            return m;
        }
    }
}

/// The phone registers through the proxy (the registrar `up` answers 200); the Path the
/// registrar saw.
pub async fn register_with_path(phone: &mut Phone, up: &mut Upstream) -> String {
    let req = phone.request(
        "REGISTER",
        "sip:site.example",
        &unique("reg"),
        &unique("z9hG4bKr"),
        "",
        "",
    );
    phone.send(&req).await;
    let path = up
        .recv_method("REGISTER")
        .await
        .header("path")
        .expect("Path added")
        .to_string();
    assert_eq!(phone.recv_final().await.0.status(), Some(200));
    path
}

/// The server socket sends an INVITE along `path` to `to` (an instance's listener); the
/// phone must receive it, answers 200 with `contact`, and the 200 must reach the server.
pub async fn call_phone_along_path(
    server: &UdpSocket,
    to: SocketAddr,
    phone: &mut Phone,
    path: &str,
    contact: &str,
) {
    let call_id = unique("to-phone");
    let invite = server_invite(server.local_addr().expect("addr"), phone, path, &call_id);
    server.send_to(invite.as_bytes(), to).await.expect("send");
    let got = loop {
        let m = phone.recv().await;
        if m.method() == Some("INVITE") {
            break m;
        }
    };
    assert_eq!(got.header("call-id"), Some(call_id.as_str()));
    phone.send(&response(&got, 200, "OK", contact)).await;
    assert_eq!(server_final(server, &call_id).await.status(), Some(200));
}

/// A response to `req` built the way a UAS does (RFC 3261 section 8.2.6).
pub fn response(req: &SipMsg, code: u16, reason: &str, contact: &str) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for (n, v) in &req.headers {
        match n.as_str() {
            "via" => out.push_str(&format!("Via: {v}\r\n")),
            "record-route" if req.method() == Some("INVITE") => {
                out.push_str(&format!("Record-Route: {v}\r\n"))
            }
            "from" => out.push_str(&format!("From: {v}\r\n")),
            "to" if code > 100 && !v.contains("tag=") => {
                out.push_str(&format!("To: {v};tag=uas1\r\n"))
            }
            "to" => out.push_str(&format!("To: {v}\r\n")),
            "call-id" => out.push_str(&format!("Call-ID: {v}\r\n")),
            "cseq" => out.push_str(&format!("CSeq: {v}\r\n")),
            _ => {}
        }
    }
    out.push_str(&format!("Contact: {contact}\r\nContent-Length: 0\r\n\r\n"));
    out
}

/// Starts a proxy on a fresh loopback address with `extra` TOML appended (pairs, timers).
pub async fn proxy(listen: &[&str], extra: &str) -> Proxy {
    proxy_at(loopback(PROXY), listen, extra).await
}

/// Starts a proxy on `ip` (when its certificate must name that address).
pub async fn proxy_at(ip: IpAddr, listen: &[&str], extra: &str) -> Proxy {
    let mut toml = format!("[instance]\nname = \"test\"\nadvertised_host = \"{ip}\"\n");
    for t in listen {
        // "udp@[::1]": a listener on another address than the proxy's own.
        let (t, host) = t.split_once('@').unwrap_or((t, ""));
        let host = if host.is_empty() {
            ip.to_string()
        } else {
            host.to_string()
        };
        toml.push_str(&format!(
            "[[listen]]\ntransport = \"{t}\"\naddress = \"{host}:0\"\n"
        ));
    }
    toml.push_str(extra);
    if !extra.contains("[runtime]") {
        // One worker, whatever the host's cores: these tests check what happens in which
        // order on one runtime. Several workers ("auto", the default) are tested by
        // tests/workers.rs, tests that ask for them, and every e2e run.
        toml.push_str("\n[runtime]\nworkers = 1\n");
    }
    let settings = Config::from_toml_str(&toml)
        .expect("config")
        .validate()
        .expect("valid config");
    Proxy::start(settings).await.expect("proxy starts")
}

/// The TOML of one pair with these upstream servers, probing off (tests of the proxy core
/// see no OPTIONS of ours).
pub fn pair(primary: &str, backup: &str) -> String {
    format!(
        "[[pair]]\nname = \"p\"\nprimary = \"{primary}\"\nbackup = \"{backup}\"\n[health]\noos_check = 0\n"
    )
}

/// A unique Call-ID / branch suffix.
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A plain HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_exchange(addr, &req).await
}

/// A plain HTTP/1.1 POST with an optional bearer token: (status, body).
pub async fn http_post(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http_exchange(addr, &req).await
}

/// Sends one HTTP/1.1 request and reads the answer to the end: (status, body).
async fn http_exchange(addr: SocketAddr, req: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("http connect");
    s.write_all(req.as_bytes()).await.expect("http write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("http timeout")
        .expect("http read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Whether `cond` holds within [`WAIT`], checked every 5 ms: with several workers, what a
/// connection or transaction on another worker's thread does after the peer saw its effect
/// (a close, a reply) lands a moment later.
pub async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while !cond() {
        if start.elapsed() > WAIT {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// One sample of the proxy's metrics once it has reached `at_least`, or its value after
/// [`WAIT`]: with several workers, a message handled on another worker's thread is counted
/// there, maybe just after the reply the test waited for.
pub async fn sample_reaching(p: &Proxy, series: &str, at_least: f64) -> f64 {
    let mut v = 0.0;
    eventually(|| {
        v = sample(&p.core().metrics.encode(), series);
        v >= at_least
    })
    .await;
    v
}

/// The value of one sample in OpenMetrics text (`name{labels} value`).
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
