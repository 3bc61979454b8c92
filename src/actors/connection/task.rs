//! The task of one stream connection: a plain tokio task that owns the socket (TCP, or TLS
//! over TCP), reads and frames what arrives, and writes what the rest of the proxy queues
//! on its [`ConnHandle`].
//!
//! Most of a proxy's connections are idle phones that send a CRLFCRLF ping every few
//! minutes, so an idle connection holds only what it needs to wake: the socket, the TLS
//! session state, its framer (no buffer between messages, see [`StreamFramer::shed`]), a
//! timer and a small handle. It waits for the TCP socket to become readable before it reads
//! anything; the bytes are read into a buffer of the thread, not of the connection, and
//! copied into the framer only while part of a message waits for the rest.
//!
//! A panic while handling one connection ends that connection only: it is counted
//! (`sippool_actor_failures_total{kind="connection"}`), logged (`connection_failed`) and
//! its table entries are cleaned; nothing else in flight is lost.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::metrics::{KindLabels, Metrics};
use crate::sip::framing::{Frame, StreamFramer};
use crate::sip::message::{Framing, Message};

use super::super::core::Core;
use super::super::transport::{ConnHandle, Inbound, ReplyPath};

/// The byte stream of a connection.
pub enum ConnStream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP, either side.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl ConnStream {
    /// The TCP socket underneath, whose readiness wakes the connection.
    fn tcp(&self) -> &TcpStream {
        match self {
            ConnStream::Tcp(s) => s,
            ConnStream::Tls(s) => s.get_ref().0,
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            ConnStream::Tcp(s) => s.write_all(bytes).await,
            ConnStream::Tls(s) => s.write_all(bytes).await,
        }
    }

    /// Pushes out what TLS still holds encrypted (nothing to do on TCP).
    async fn flush(&mut self) -> io::Result<()> {
        match self {
            ConnStream::Tcp(_) => Ok(()),
            ConnStream::Tls(s) => s.flush().await,
        }
    }

    /// Waits until there is something to read: bytes on the socket, or plaintext (or the
    /// peer's close_notify) that TLS already holds. The socket's readiness alone is not
    /// enough: tokio clears it after a short read (tokio#5866), and TLS may have read and
    /// decrypted several records in one read, during the handshake (data sent right
    /// behind the client's Finished) or beyond what one wake takes.
    async fn readable(&self) -> io::Result<()> {
        if let ConnStream::Tls(s) = self {
            if !s.get_ref().1.wants_read() {
                return Ok(());
            }
        }
        self.tcp().readable().await
    }

    /// Whether TLS has records waiting to be written (an alert, a key update answer).
    fn wants_write(&self) -> bool {
        match self {
            ConnStream::Tcp(_) => false,
            ConnStream::Tls(s) => s.get_ref().1.wants_write(),
        }
    }

    async fn shutdown(&mut self) {
        let done = match self {
            ConnStream::Tcp(s) => s.shutdown().await,
            ConnStream::Tls(s) => s.shutdown().await,
        };
        let _ = done;
    }

    /// Reads what can be read now, without waiting, into `framer`, at most a few chunks
    /// (the loop comes back while the socket stays readable). `Ok(false)` at the end of
    /// the stream.
    fn read_now(&mut self, framer: &mut StreamFramer) -> io::Result<bool> {
        match self {
            // Polled without a waker (the loop waits for readiness itself): a short read
            // clears the readiness at once, which saves a read that would block.
            ConnStream::Tcp(s) => SCRATCH.with_borrow_mut(|buf| {
                let mut cx = Context::from_waker(Waker::noop());
                let mut read = ReadBuf::new(buf);
                match Pin::new(s).poll_read(&mut cx, &mut read) {
                    Poll::Pending => Ok(true),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Ready(Ok(())) if read.filled().is_empty() => Ok(false),
                    Poll::Ready(Ok(())) => {
                        framer.push(read.filled());
                        Ok(true)
                    }
                }
            }),
            ConnStream::Tls(s) => {
                // The TLS stream reads the socket itself; polled without a waker, it says
                // Pending once the socket would block, and the readiness it cleared is
                // waited for again by the connection's loop.
                let mut cx = Context::from_waker(Waker::noop());
                let mut tls = Pin::new(s.as_mut());
                for _ in 0..TLS_CHUNKS_PER_WAKE {
                    let n = match tls.as_mut().poll_fill_buf(&mut cx) {
                        Poll::Pending => return Ok(true),
                        Poll::Ready(Err(e)) => return Err(e),
                        Poll::Ready(Ok([])) => return Ok(false),
                        Poll::Ready(Ok(data)) => {
                            framer.push(data);
                            data.len()
                        }
                    };
                    tls.as_mut().consume(n);
                    if framer.buffered() >= SCRATCH_SIZE {
                        break;
                    }
                }
                Ok(true)
            }
        }
    }
}

/// Bytes read from a TCP socket at a time, into a buffer of the thread.
const SCRATCH_SIZE: usize = 16 * 1024;

/// Plaintext chunks (TLS records) taken per wake before the framer runs.
const TLS_CHUNKS_PER_WAKE: usize = 8;

thread_local! {
    /// The read buffer of every connection run by this thread: bytes are framed (and the
    /// buffer free again) before the connection waits.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_SIZE]);
}

/// Starts the task of a registered connection; it releases the connection when it ends.
pub fn spawn(core: Arc<Core>, handle: ConnHandle, stream: ConnStream) {
    let run = Box::pin(run(core.clone(), handle.clone(), stream));
    tokio::spawn(Contained {
        run: Some(run),
        core,
        handle,
    });
}

/// Why a connection ended.
type Reason = &'static str;

/// What the connection's loop keeps between wakes.
struct Conn {
    core: Arc<Core>,
    handle: ConnHandle,
    framer: StreamFramer,
    /// Since when part of a message has been waiting for the rest.
    partial_since: Option<Instant>,
    /// When the last bytes were read.
    last_read: Instant,
}

/// The connection's loop: writes what is queued, reads what arrives, and closes the
/// connection when it has been idle too long (unless it carries a flow) or a message has
/// been left incomplete too long.
async fn run(core: Arc<Core>, handle: ConnHandle, mut stream: ConnStream) {
    let _release = Release {
        core: core.clone(),
        handle: handle.clone(),
    };
    let idle = Duration::from_secs(core.live().settings.limits.idle_timeout_s.max(1));
    let message_timeout = Duration::from_millis(core.live().settings.limits.message_timeout_ms);
    let mut conn = Conn {
        framer: StreamFramer::new(core.live().limits),
        core,
        handle,
        partial_since: None,
        last_read: Instant::now(),
    };
    // Set no later than the next deadline; checked when it fires (so a read does not
    // touch the timer).
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    let reason: Reason = loop {
        if conn.handle.has_queued() || stream.wants_write() {
            if let Err(e) = write_queued(&mut stream, &conn.handle).await {
                tracing::debug!(event = "connection_write_failed", peer = %conn.handle.peer, error = %e);
                break "write failed";
            }
        }
        tokio::select! {
            biased;
            _ = conn.handle.queued() => {}
            ready = stream.readable() => {
                if ready.is_err() {
                    break "error";
                }
                match conn.read(&mut stream).await {
                    Ok(()) => {}
                    Err(reason) => break reason,
                }
                if let Some(since) = conn.partial_since {
                    let due = since + message_timeout;
                    if due < timer.deadline() {
                        timer.as_mut().reset(due);
                    }
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if conn.partial_since.is_some_and(|since| now >= since + message_timeout) {
                    Metrics::count(&conn.core.metrics.overload_rejections, "slow_message");
                    tracing::info!(event = "connection_closed", peer = %conn.handle.peer, reason = "message_timeout");
                    break "message timeout";
                }
                if now >= conn.last_read + idle {
                    // A connection that carries a flow stays open while the phone keeps
                    // it: it is the only way to reach that phone (RFC 5626). TCP
                    // keep-alive and the phone's own pings find it when it is dead.
                    if !conn.handle.has_flow() {
                        break "idle";
                    }
                    conn.last_read = now;
                }
                let mut next = conn.last_read + idle;
                if let Some(since) = conn.partial_since {
                    next = next.min(since + message_timeout);
                }
                timer.as_mut().reset(next);
            }
        }
    };
    tracing::debug!(event = "connection_ended", peer = %conn.handle.peer, reason);
    conn.handle.close();
    if reason != "error" {
        // A TLS close_notify; bounded, as the peer may not be reading any more.
        let _ = tokio::time::timeout(SHUTDOWN_LIMIT, stream.shutdown()).await;
    }
}

/// How long closing a connection may wait on its peer.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(1);

/// Writes every queued message, then what TLS holds.
async fn write_queued(stream: &mut ConnStream, handle: &ConnHandle) -> io::Result<()> {
    for bytes in handle.take_queued() {
        stream.write_all(&bytes).await?;
    }
    stream.flush().await
}

impl Conn {
    /// Reads what arrived, hands every whole message on, answers pings; the framer keeps
    /// a partial message and sheds its buffer otherwise.
    async fn read(&mut self, stream: &mut ConnStream) -> Result<(), Reason> {
        let before = self.framer.buffered();
        let open = match stream.read_now(&mut self.framer) {
            Ok(open) => open,
            Err(_) => return Err("error"),
        };
        if self.framer.buffered() > before {
            self.last_read = Instant::now();
            #[cfg(feature = "fault-injection")]
            if memchr::memmem::find(
                self.framer.held().get(before..).unwrap_or_default(),
                b"X-Sippool-Fault: panic-connection",
            )
            .is_some()
            {
                super::super::fault::injected("connection");
            }
        }
        let pings = self.frame()?;
        if pings > 0 {
            // RFC 5626 section 4.4.1: answer CRLFCRLF with CRLF.
            for _ in 0..pings {
                if stream.write_all(b"\r\n").await.is_err() {
                    return Err("write failed");
                }
            }
            if stream.flush().await.is_err() {
                return Err("write failed");
            }
        }
        if !open {
            return Err("eof");
        }
        Ok(())
    }

    /// Delivers the whole messages the framer holds; the number of pings among them.
    fn frame(&mut self) -> Result<usize, Reason> {
        let mut pings = 0;
        while self.framer.buffered() > 0 {
            match self.framer.next_frame() {
                Ok(None) => break,
                Ok(Some(Frame::Ping)) => {
                    self.partial_since = None;
                    pings += 1;
                }
                Ok(Some(Frame::Message(bytes))) => {
                    self.partial_since = None;
                    match Message::parse(bytes, Framing::Stream, &self.core.live().limits) {
                        Ok(msg) => self.core.deliver(Box::new(Inbound {
                            msg,
                            transport: self.handle.transport,
                            source: self.handle.peer,
                            reply: ReplyPath::Stream(self.handle.clone()),
                            received: std::time::Instant::now(),
                        })),
                        Err(e) => self.core.metrics.parse_failed(super::parse_reason(e)),
                    }
                }
                Err(e) => {
                    // Framing cannot recover on a stream (RFC 3261 section 18.3).
                    self.core.metrics.parse_failed(e.as_str());
                    tracing::info!(event = "connection_framing_error", peer = %self.handle.peer, reason = e.as_str());
                    return Err(e.as_str());
                }
            }
        }
        // A message left incomplete must be completed within message_timeout_ms.
        if self.framer.buffered() == 0 {
            self.partial_since = None;
            self.framer.shed();
        } else if self.partial_since.is_none() {
            self.partial_since = Some(Instant::now());
        }
        Ok(pings)
    }
}

/// Takes the connection out of the tables when its task ends, however it ends.
struct Release {
    core: Arc<Core>,
    handle: ConnHandle,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.handle.close();
        super::release(&self.core, &self.handle);
    }
}

/// A connection's future with its panics contained: a panic is counted and logged, and
/// the connection is released (its future dropped); the runtime and every other
/// connection go on.
struct Contained {
    run: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    core: Arc<Core>,
    handle: ConnHandle,
}

impl Future for Contained {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(run) = self.run.as_mut() else {
            return Poll::Ready(());
        };
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run.as_mut().poll(cx)));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => {
                self.run = None;
                Poll::Ready(())
            }
            Err(panic) => {
                let error = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                self.core
                    .metrics
                    .actor_failures
                    .get_or_create(&KindLabels { kind: "connection" })
                    .inc();
                tracing::error!(event = "connection_failed", peer = %self.handle.peer, connection = self.handle.id, %error);
                // Dropping the future releases the connection (and closes its socket).
                self.run = None;
                Poll::Ready(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::NewConn;
    use super::*;
    use crate::sip::transport::Transport;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    const WAIT: Duration = Duration::from_secs(5);

    /// Waits until the socket is readable and reads what is there, as the loop does.
    async fn wake(conn: &mut Conn, stream: &mut ConnStream) {
        stream.tcp().readable().await.unwrap();
        conn.read(stream).await.unwrap();
    }

    /// A proxy with a TCP listener on 127.0.0.1, to deliver to.
    async fn proxy() -> crate::actors::Proxy {
        let toml = "[instance]\nname = \"t\"\nadvertised_host = \"127.0.0.1\"\n\
                    [[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:0\"\n\
                    [[pair]]\nname = \"p\"\nprimary = \"127.0.2.253:9\"\nbackup = \"127.0.2.254:9\"\n\
                    [health]\noos_check = 0\n";
        let settings = crate::config::Config::from_toml_str(toml)
            .unwrap()
            .validate()
            .unwrap();
        crate::actors::Proxy::start(settings).await.unwrap()
    }

    /// A connected TLS pair over loopback (a self-signed certificate for 127.0.0.1): the
    /// client's side, and the server's with its peer address.
    async fn tls_pair() -> (
        tokio_rustls::client::TlsStream<TcpStream>,
        tokio_rustls::server::TlsStream<TcpStream>,
        std::net::SocketAddr,
    ) {
        use rustls::pki_types::{PrivateKeyDer, ServerName};
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let name = ServerName::IpAddress(addr.ip().into());
        let (client, (server, peer)) = tokio::join!(
            async {
                let tcp = TcpStream::connect(addr).await.unwrap();
                connector.connect(name, tcp).await.unwrap()
            },
            async {
                let (tcp, peer) = l.accept().await.unwrap();
                (acceptor.accept(tcp).await.unwrap(), peer)
            }
        );
        (client, server, peer)
    }

    #[tokio::test]
    async fn records_tls_already_holds_are_read_without_new_bytes_on_the_socket() {
        let p = proxy().await;
        let (mut client, server, peer) = tls_pair().await;
        // Many pings, each its own TLS record, all on the socket before the connection
        // starts: TLS reads and decrypts them in one read of the socket (a short read,
        // which clears the socket's readiness), more than one wake takes.
        const PINGS: usize = 3 * TLS_CHUNKS_PER_WAKE;
        for _ in 0..PINGS {
            client.write_all(b"\r\n\r\n").await.unwrap();
            client.flush().await.unwrap();
        }
        let conn = NewConn {
            stream: ConnStream::Tls(Box::new(server.into())),
            peer,
            transport: Transport::Tls,
            local: None,
            outbound: false,
        };
        super::super::start_connection(p.core(), conn).unwrap();
        // Every ping is answered, with nothing more sent.
        let mut pongs = vec![0u8; 2 * PINGS];
        tokio::time::timeout(WAIT, client.read_exact(&mut pongs))
            .await
            .expect("every ping answered")
            .unwrap();
        assert!(pongs.chunks(2).all(|c| c == b"\r\n"));
        p.stop().await;
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer_and_frames_a_later_split_message() {
        let p = proxy().await;
        let proxy_addr = p.local_addr(Transport::Tcp).unwrap();
        // A connection of our own, driven step by step.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, peer) = l.accept().await.unwrap();
        let mut stream = ConnStream::Tcp(server);
        let handle = ConnHandle::new(1, peer, Transport::Tcp, Some(proxy_addr), false);
        let mut conn = Conn {
            framer: StreamFramer::new(p.core().live().limits),
            core: p.core().clone(),
            handle: handle.clone(),
            partial_since: None,
            last_read: Instant::now(),
        };
        assert_eq!(conn.framer.capacity(), 0, "no buffer before any byte");
        // A keep-alive ping is answered, and nothing is kept.
        client.write_all(b"\r\n\r\n").await.unwrap();
        wake(&mut conn, &mut stream).await;
        let mut pong = [0u8; 2];
        client.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"\r\n");
        assert_eq!(
            conn.framer.capacity(),
            0,
            "an idle connection holds no buffer"
        );
        // Later, an OPTIONS to the proxy arrives in two pieces.
        let options = format!(
            "OPTIONS sip:{proxy_addr} SIP/2.0\r\nVia: SIP/2.0/TCP {peer};branch=z9hG4bKidle1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:{proxy_addr}>\r\n\
             Call-ID: idle-split\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        let (first, rest) = options.as_bytes().split_at(options.len() / 2);
        client.write_all(first).await.unwrap();
        while conn.framer.buffered() < first.len() {
            wake(&mut conn, &mut stream).await;
        }
        assert!(conn.partial_since.is_some(), "half a message is timed");
        client.write_all(rest).await.unwrap();
        while conn.framer.buffered() > 0 {
            wake(&mut conn, &mut stream).await;
        }
        assert!(conn.partial_since.is_none());
        assert_eq!(
            conn.framer.capacity(),
            0,
            "the buffer went with the message"
        );
        // The message was delivered: the proxy's answer is queued on this connection.
        let answer = tokio::time::timeout(WAIT, async {
            loop {
                let queued = handle.take_queued();
                if let Some(b) = queued.first() {
                    break b.clone();
                }
                handle.queued().await;
            }
        })
        .await
        .unwrap();
        assert!(answer.starts_with(b"SIP/2.0 200"), "{answer:?}");
        p.stop().await;
    }

    #[tokio::test]
    async fn a_closed_handle_refuses_bytes() {
        let h = ConnHandle::new(
            7,
            "127.0.0.1:5060".parse().unwrap(),
            Transport::Tcp,
            None,
            false,
        );
        assert!(h.send(bytes::Bytes::from_static(b"x")));
        assert!(h.has_queued());
        assert_eq!(h.take_queued().len(), 1);
        assert!(!h.has_queued());
        h.close();
        assert!(h.is_closed());
        assert!(!h.send(bytes::Bytes::from_static(b"y")));
        assert!(!h.has_queued());
    }
}
