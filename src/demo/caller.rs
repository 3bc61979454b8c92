//! Light call traffic for the demo: a UAC placing calls through the proxy at a steady rate,
//! each held for a while and then hung up, counting what succeeded and what failed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::sip::message::{Framing, HeaderName, Limits, Message};

/// Call counters.
#[derive(Debug, Default)]
pub struct CallStats {
    /// Calls started.
    pub started: AtomicU64,
    /// Calls answered and hung up cleanly.
    pub completed: AtomicU64,
    /// Calls that got an error or no answer, at setup or hang-up.
    pub failed: AtomicU64,
}

impl CallStats {
    /// Calls still in progress.
    pub fn in_progress(&self) -> u64 {
        let done = self.completed.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
        self.started.load(Ordering::Relaxed).saturating_sub(done)
    }
}

/// How long a request may wait for its final response.
const ANSWER_WAIT: Duration = Duration::from_secs(40);

/// Places `rate` calls per second from `ip` through `proxy`, each held for `hold`, until
/// the task is aborted.
pub async fn run(
    ip: std::net::IpAddr,
    proxy: SocketAddr,
    rate: f64,
    hold: Duration,
    stats: Arc<CallStats>,
) {
    let Ok(sock) = UdpSocket::bind((ip, 0)).await else {
        tracing::error!(event = "demo_caller_cannot_start", %ip);
        return;
    };
    let sock = Arc::new(sock);
    let calls: Arc<DashMap<String, mpsc::UnboundedSender<Message>>> = Arc::new(DashMap::new());
    let reader = {
        let (sock, calls) = (sock.clone(), calls.clone());
        tokio::spawn(async move {
            let limits = Limits::default();
            let mut buf = vec![0u8; limits.max_size];
            while let Ok((n, _)) = sock.recv_from(&mut buf).await {
                let bytes = bytes::Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                let Ok(m) = Message::parse(bytes, Framing::Datagram, &limits) else {
                    continue;
                };
                let id = String::from_utf8_lossy(m.call_id().unwrap_or_default()).into_owned();
                if let Some(tx) = calls.get(&id) {
                    let _ = tx.send(m);
                }
            }
        })
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.01)));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let call = Call {
            id: format!("demo-{n}-{:x}@sippool", rand::random::<u32>()),
            sock: sock.clone(),
            proxy,
            rx,
        };
        calls.insert(call.id.clone(), tx);
        stats.started.fetch_add(1, Ordering::Relaxed);
        let (stats, calls) = (stats.clone(), calls.clone());
        tokio::spawn(async move {
            let id = call.id.clone();
            let ok = call.place(hold).await;
            calls.remove(&id);
            let counter = if ok { &stats.completed } else { &stats.failed };
            counter.fetch_add(1, Ordering::Relaxed);
            if !ok {
                tracing::warn!(event = "demo_call_failed", call_id = %id);
            }
        });
        if reader.is_finished() {
            return;
        }
    }
}

struct Call {
    id: String,
    sock: Arc<UdpSocket>,
    proxy: SocketAddr,
    rx: mpsc::UnboundedReceiver<Message>,
}

impl Call {
    /// INVITE, ACK, hold, BYE; true when both transactions got a 2xx.
    async fn place(mut self, hold: Duration) -> bool {
        let Ok(local) = self.sock.local_addr() else {
            return false;
        };
        let from = format!("<sip:caller@demo.invalid>;tag=c{:x}", rand::random::<u32>());
        let invite = format!(
            "INVITE sip:agent@demo.invalid SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: <sip:agent@demo.invalid>\r\nCall-ID: {}\r\n\
             CSeq: 1 INVITE\r\nContact: <sip:caller@{local}>\r\nContent-Length: 0\r\n\r\n",
            branch(),
            self.id
        );
        let Some(ok) = self.transaction(&invite, 1).await else {
            return false;
        };
        if !(200..300).contains(&ok.status().unwrap_or(0)) {
            return false;
        }
        // The route set is the Record-Route reversed; the remote target the Contact.
        let mut route: Vec<String> = ok
            .list_values(HeaderName::RecordRoute)
            .into_iter()
            .map(|r| String::from_utf8_lossy(ok.slice(r)).into_owned())
            .collect();
        route.reverse();
        let target = ok
            .header_value("contact")
            .and_then(crate::sip::message::name_addr_uri)
            .map(|u| String::from_utf8_lossy(u).into_owned())
            .unwrap_or_default();
        let to = ok
            .header_value("to")
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .unwrap_or_default();
        let in_dialog = |method: &str, cseq: u32| {
            let routes: String = route.iter().map(|r| format!("Route: {r}\r\n")).collect();
            format!(
                "{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={};rport\r\n\
                 Max-Forwards: 70\r\n{routes}From: {from}\r\nTo: {to}\r\nCall-ID: {}\r\n\
                 CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
                branch(),
                self.id
            )
        };
        let ack = in_dialog("ACK", 1);
        let bye = in_dialog("BYE", 2);
        let _ = self.sock.send_to(ack.as_bytes(), self.proxy).await;
        tokio::time::sleep(hold).await;
        matches!(self.transaction(&bye, 2).await, Some(r) if r.status() == Some(200))
    }

    /// Sends a request and waits for its final response (the one with its CSeq number).
    async fn transaction(&mut self, request: &str, cseq: u32) -> Option<Message> {
        self.sock
            .send_to(request.as_bytes(), self.proxy)
            .await
            .ok()?;
        let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
        loop {
            let m = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            if m.status().is_some_and(|c| c >= 200) && m.cseq().is_some_and(|(n, _)| n == cseq) {
                return Some(m);
            }
        }
    }
}

fn branch() -> String {
    format!("z9hG4bKdemo{:x}", rand::random::<u64>())
}
