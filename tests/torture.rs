//! RFC 4475 torture messages (`../shared/sip-torture/`), each handled as its MANIFEST.tsv
//! says, over UDP and over TCP, with a normal call placed right after each one.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sippool::sip::transport::Transport;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

struct Row {
    file: String,
    action: String,
    code: Option<u16>,
}

fn torture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/sip-torture")
}

fn manifest() -> Vec<Row> {
    let text = std::fs::read_to_string(torture_dir().join("MANIFEST.tsv")).expect("MANIFEST.tsv");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Row {
                file: f[0].to_string(),
                action: f[4].to_string(),
                code: f[5].parse().ok(),
            }
        })
        .collect()
}

/// The header lines of a message (folded continuations joined), without the start line.
fn header_lines(raw: &[u8]) -> Vec<Vec<u8>> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = &raw[..end];
    let mut out: Vec<Vec<u8>> = Vec::new();
    for (i, line) in head.split(|&b| b == b'\n').enumerate() {
        if i == 0 {
            continue;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if (line.starts_with(b" ") || line.starts_with(b"\t")) && !out.is_empty() {
            let last = out.last_mut().unwrap();
            last.extend_from_slice(b"\r\n");
            last.extend_from_slice(line);
        } else {
            out.push(line.to_vec());
        }
    }
    out
}

fn header_name(line: &[u8]) -> String {
    let colon = line.iter().position(|&b| b == b':').unwrap_or(0);
    String::from_utf8_lossy(&line[..colon])
        .trim()
        .to_ascii_lowercase()
}

fn call_id(raw: &[u8]) -> Option<String> {
    header_lines(raw).into_iter().find_map(|l| {
        let n = header_name(&l);
        (n == "call-id" || n == "i").then(|| {
            let colon = l.iter().position(|&b| b == b':').unwrap();
            String::from_utf8_lossy(&l[colon + 1..]).trim().to_string()
        })
    })
}

fn body(raw: &[u8]) -> &[u8] {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |p| p + 4);
    &raw[end..]
}

/// Checks that the forwarded request kept every header line it had no reason to touch,
/// byte for byte, and its body (exactly Content-Length bytes).
fn assert_intact(file: &str, original: &[u8], forwarded: &[u8]) {
    let touched = ["via", "v", "max-forwards", "route", "record-route"];
    for line in header_lines(original) {
        if touched.contains(&header_name(&line).as_str()) {
            continue;
        }
        assert!(
            forwarded.windows(line.len()).any(|w| w == line.as_slice()),
            "{file}: header line {:?} not forwarded intact",
            String::from_utf8_lossy(&line)
        );
    }
    let orig_body = body(original);
    let fwd_body = body(forwarded);
    if file == "dblreq.dat" {
        assert!(fwd_body.is_empty(), "dblreq: trailing octets forwarded");
    } else if !orig_body.is_empty() {
        assert!(
            orig_body.starts_with(fwd_body) && !fwd_body.is_empty(),
            "{file}: body changed"
        );
    }
}

/// Sockets on the tester's address at every port a torture Via names (responses over UDP
/// go to the source IP and the Via port, RFC 3261 section 18.2.2).
struct UdpTester {
    socks: Vec<UdpSocket>,
}

impl UdpTester {
    async fn new() -> UdpTester {
        let ip = loopback(PHONE);
        let mut socks = Vec::new();
        for port in [5060u16, 5050, 5070] {
            socks.push(UdpSocket::bind((ip, port)).await.expect("bind tester port"));
        }
        UdpTester { socks }
    }

    async fn send(&self, bytes: &[u8], to: SocketAddr) {
        self.socks[0].send_to(bytes, to).await.unwrap();
    }

    /// The first response within `d` for this Call-ID (answers to earlier messages, such
    /// as a relayed 180, are skipped).
    async fn recv_for(&self, cid: Option<&str>, d: Duration) -> Option<SipMsg> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self.recv(left).await?;
            if cid.is_none() || m.header("call-id").map(str::trim) == cid {
                return Some(m);
            }
        }
    }

    /// The first response within `d` on any port.
    async fn recv(&self, d: Duration) -> Option<SipMsg> {
        let mut bufs = [vec![0u8; 65536], vec![0u8; 65536], vec![0u8; 65536]];
        let [b0, b1, b2] = &mut bufs;
        let r = tokio::time::timeout(d, async {
            tokio::select! {
                r = self.socks[0].recv_from(b0) => (r, 0),
                r = self.socks[1].recv_from(b1) => (r, 1),
                r = self.socks[2].recv_from(b2) => (r, 2),
            }
        })
        .await
        .ok()?;
        let (Ok((n, _)), i) = r else { return None };
        SipMsg::parse(&bufs[i][..n])
    }
}

/// The pair, plus static routes for the next hops that the Route headers of `wsinv.dat`
/// and `mpart01.dat` name, so that their forwarding can be seen.
fn torture_config(up: &Upstream) -> String {
    format!(
        "{}[[route]]\ndomain = \"services.example.com\"\ntarget = \"{}\"\n\
         [[route]]\ndomain = \"127.0.0.1\"\ntarget = \"{}\"\n",
        pair(&up.uri(), "127.0.2.254:9"),
        up.uri(),
        up.uri()
    )
}

/// A whole normal call (INVITE, 200, ACK, BYE, 200) through the same proxy.
async fn check_call(phone: &mut Phone, up: &mut Upstream, file: &str) {
    let id = unique("after");
    let req = phone.request(
        "INVITE",
        "sip:bob@site.example",
        &id,
        &unique("z9hG4bKn"),
        "",
        "",
    );
    phone.send(&req).await;
    let (ok, _) = phone.recv_final().await;
    assert_eq!(
        ok.status(),
        Some(200),
        "call after {file} failed: {}",
        ok.text()
    );
    phone
        .send(&phone.in_dialog("ACK", &ok, &id, 1, &unique("z9hG4bKa")))
        .await;
    phone
        .send(&phone.in_dialog("BYE", &ok, &id, 2, &unique("z9hG4bKb")))
        .await;
    let (bye_ok, _) = phone.recv_final().await;
    assert_eq!(bye_ok.status(), Some(200), "BYE after {file} failed");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = up.recv().await;
        if m.header("call-id") == Some(id.as_str()) {
            seen.push(m.method().unwrap_or_default().to_string());
        }
    }
    assert_eq!(seen, ["INVITE", "ACK", "BYE"], "after {file}");
}

/// Waits for the request with this Call-ID at the upstream server.
async fn forwarded(up: &mut Upstream, cid: &str, d: Duration) -> Option<SipMsg> {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let m = tokio::time::timeout_at(deadline, up.recv_any())
            .await
            .ok()??;
        if m.header("call-id").map(str::trim) == Some(cid) {
            return Some(m);
        }
    }
}

#[tokio::test]
async fn every_torture_message_over_udp() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    let tester = UdpTester::new().await;
    let mut report: HashMap<String, String> = HashMap::new();
    // A proxy per message: several torture messages reuse the same branch and sent-by, so
    // on one proxy a later one would rightly be taken for a retransmission of an earlier.
    for row in manifest() {
        let p = proxy(&["udp"], &torture_config(&up)).await;
        let proxy_addr = p.local_addr(Transport::Udp).unwrap();
        let mut phone = Phone::udp(proxy_addr).await;
        let raw = std::fs::read(torture_dir().join(&row.file)).unwrap();
        tester.send(&raw, proxy_addr).await;
        let is_response = raw.starts_with(b"SIP/");
        match (row.action.as_str(), is_response) {
            ("process", false) => {
                let cid = call_id(&raw).expect("call-id");
                let fwd = forwarded(&mut up, &cid, WAIT)
                    .await
                    .unwrap_or_else(|| panic!("{}: not forwarded", row.file));
                assert_intact(&row.file, &raw, &fwd.raw);
            }
            ("reject", _) => {
                let code = row.code.unwrap();
                let mut got = None;
                let cid = call_id(&raw);
                while let Some(m) = tester.recv_for(cid.as_deref(), WAIT).await {
                    match m.status() {
                        Some(c) if c < 200 => continue,
                        c => {
                            got = c;
                            break;
                        }
                    }
                }
                assert_eq!(got, Some(code), "{}: expected {code} over UDP", row.file);
            }
            // Responses that match nothing, and drops: nothing comes back to the sender.
            _ => {
                let cid = call_id(&raw);
                if let Some(m) = tester
                    .recv_for(cid.as_deref(), Duration::from_millis(150))
                    .await
                {
                    assert!(
                        m.status() == Some(100),
                        "{}: unexpected answer {}",
                        row.file,
                        m.start
                    );
                }
            }
        }
        report.insert(row.file.clone(), "ok".into());
        check_call(&mut phone, &mut up, &row.file).await;
        p.stop().await;
    }
    assert_eq!(report.len(), 50);
}

/// Over TCP each message gets its own connection. Framing errors close it (RFC 4475).
#[tokio::test]
async fn every_torture_message_over_tcp() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    for row in manifest() {
        let p = proxy(&["tcp", "udp"], &torture_config(&up)).await;
        let tcp = p.local_addr(Transport::Tcp).unwrap();
        let mut phone = Phone::tcp(tcp).await;
        let mut raw = std::fs::read(torture_dir().join(&row.file)).unwrap();
        if row.file == "baddn.dat" {
            // The archive's bytes lack the final empty line (see the torture README).
            raw.extend_from_slice(b"\r\n");
        }
        let mut c = TcpStream::connect(tcp).await.unwrap();
        c.write_all(&raw).await.unwrap();
        let framing_error = ["clerr.dat", "ncl.dat", "mcl01.dat"].contains(&row.file.as_str());
        let is_response = raw.starts_with(b"SIP/");
        if framing_error {
            // Close the connection (clerr: when the rest never comes).
            let mut buf = [0u8; 1024];
            let closed = tokio::time::timeout(Duration::from_secs(15), async {
                loop {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => return true,
                        Ok(_) => continue,
                    }
                }
            })
            .await
            .unwrap_or(false);
            assert!(closed, "{}: connection not closed", row.file);
        } else if row.action == "process" && !is_response {
            let cid = call_id(&raw).unwrap();
            let fwd = forwarded(&mut up, &cid, WAIT)
                .await
                .unwrap_or_else(|| panic!("{}: not forwarded over TCP", row.file));
            if row.file != "dblreq.dat" && row.file != "inv2543.dat" {
                assert_intact(&row.file, &raw, &fwd.raw);
            }
        } else if row.action == "reject" {
            let code = row.code.unwrap();
            let mut d = Deframer::default();
            let mut buf = vec![0u8; 65536];
            let got = tokio::time::timeout(WAIT, async {
                loop {
                    let n = c.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return None;
                    }
                    for m in d.push(&buf[..n]) {
                        let m = SipMsg::parse(&m)?;
                        if m.status().is_some_and(|s| s >= 200) {
                            return m.status();
                        }
                    }
                }
            })
            .await
            .ok()
            .flatten();
            assert_eq!(got, Some(code), "{}: expected {code} over TCP", row.file);
        }
        check_call(&mut phone, &mut up, &row.file).await;
        p.stop().await;
    }
}

/// The same walk through the sans-IO layers alone: parse, then the proxy's decision.
#[test]
fn every_torture_message_decided_as_listed() {
    use bytes::Bytes;
    use sippool::sip::message::{Framing, Limits, Message};
    use sippool::sip::proxy::{decide, Decision, Received};
    let settings = sippool::config::Config::from_toml_str(
        "[instance]\nname = \"t\"\n[[listen]]\ntransport = \"udp\"\naddress = \"192.0.2.200:5060\"\n\
         [[pair]]\nname = \"p\"\nprimary = \"192.0.2.201\"\nbackup = \"192.0.2.202\"\n",
    )
    .unwrap()
    .validate()
    .unwrap();
    let identity = settings.identity();
    let router = settings.router();
    let mut wrong = Vec::new();
    for row in manifest() {
        let raw = std::fs::read(torture_dir().join(&row.file)).unwrap();
        let got = match Message::parse(Bytes::from(raw), Framing::Datagram, &Limits::default()) {
            Err(e) => format!("drop ({e:?})"),
            Ok(m) if m.is_response() => "response".to_string(),
            Ok(m) => match decide(
                Received {
                    msg: &m,
                    transport: Transport::Udp,
                    source: "192.0.2.99:5060".parse().unwrap(),
                    from_upstream: false,
                    local: None,
                    flow_token: None,
                },
                &identity,
                &router,
            ) {
                Decision::Forward(_) => "process".to_string(),
                Decision::Respond(r) => format!("reject {} {}", r.code, r.reason),
                Decision::Drop(why) => format!("drop ({why})"),
                Decision::OptionsToUs { .. } => "reject 200 OK".to_string(),
            },
        };
        let expected_ok = match row.action.as_str() {
            "process" => got == "process" || got == "response",
            "reject" => got.starts_with(&format!("reject {}", row.code.unwrap())),
            _ => got.starts_with("drop") || got == "response",
        };
        if !expected_ok {
            wrong.push(format!(
                "{}: expected {} {:?}, got {got}",
                row.file, row.action, row.code
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}
