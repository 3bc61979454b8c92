//! The test phone (UAC): sends requests to the proxy over UDP, TCP or TLS and reads what
//! comes back, with the test-side parser of `support`.

use super::*;

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
