//! Small SIP agents for the integration tests: a phone (UAC) and an upstream server (UAS),
//! over UDP or TCP on loopback. They parse SIP with their own few lines of code, not with
//! sippool's parser, so a parser bug in sippool cannot hide itself.
#![allow(dead_code)]

pub mod binary;
pub mod dnsmasq;
mod phone;
pub mod pki;
pub mod pool;
mod upstream;

// Not every test binary uses both.
#[allow(unused_imports)]
pub use phone::Phone;
#[allow(unused_imports)]
pub use upstream::{Behaviour, Upstream};

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
