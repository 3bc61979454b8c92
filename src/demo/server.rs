//! A simulated upstream SIP server for the demo: answers OPTIONS probes, INVITE with 180
//! and 200, BYE and everything else with 200, like one of an HA pair sharing call state
//! (a BYE for a call its peer answered is answered too). "Killed", it stays silent, as a
//! dead host does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::UdpSocket;

use crate::sip::builder;
use crate::sip::message::{Framing, Limits, Message, Method};

/// A running simulated server.
#[derive(Debug, Clone)]
pub struct SimServer {
    /// Its address.
    pub addr: SocketAddr,
    alive: Arc<AtomicBool>,
    /// INVITEs it answered.
    pub invites: Arc<AtomicU64>,
}

impl SimServer {
    /// Binds a UDP socket on `ip` (any port) and starts answering.
    pub async fn start(ip: std::net::IpAddr) -> std::io::Result<SimServer> {
        let sock = UdpSocket::bind((ip, 0)).await?;
        let addr = sock.local_addr()?;
        let server = SimServer {
            addr,
            alive: Arc::new(AtomicBool::new(true)),
            invites: Arc::new(AtomicU64::new(0)),
        };
        let s = server.clone();
        tokio::spawn(async move { s.serve(sock).await });
        Ok(server)
    }

    /// Kills (false) or revives (true) the server.
    pub fn set_alive(&self, alive: bool) {
        self.alive.store(alive, Ordering::Relaxed);
        if alive {
            tracing::info!(event = "demo_server_revived", server = %self.addr);
        } else {
            tracing::warn!(event = "demo_server_killed", server = %self.addr);
        }
    }

    /// Whether it answers.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    async fn serve(self, sock: UdpSocket) {
        let limits = Limits::default();
        let mut buf = vec![0u8; limits.max_size];
        let contact = format!("Contact: <sip:agent@{}>", self.addr);
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            if !self.is_alive() {
                continue;
            }
            let bytes = bytes::Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
            let Ok(req) = Message::parse(bytes, Framing::Datagram, &limits) else {
                continue;
            };
            let tag = format!("sim{:x}", self.addr.port());
            let replies: Vec<bytes::Bytes> = match req.method() {
                None | Some(Method::Ack) => Vec::new(),
                Some(Method::Invite) => {
                    self.invites.fetch_add(1, Ordering::Relaxed);
                    let mut extra: Vec<String> = req
                        .list_values(crate::sip::message::HeaderName::RecordRoute)
                        .into_iter()
                        .map(|r| format!("Record-Route: {}", String::from_utf8_lossy(req.slice(r))))
                        .collect();
                    extra.push(contact.clone());
                    vec![
                        builder::response(
                            &req,
                            180,
                            "Ringing",
                            &tag,
                            std::slice::from_ref(&contact),
                        ),
                        builder::response(&req, 200, "OK", &tag, &extra),
                    ]
                }
                Some(_) => vec![builder::response(&req, 200, "OK", &tag, &[])],
            };
            for r in replies {
                let _ = sock.send_to(&r, from).await;
            }
        }
    }
}
