//! The test upstream server (UAS): answers what the proxy forwards as its [`Behaviour`]
//! says, over UDP, TCP or TLS, and hands every request it gets to the test.

use super::*;

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
