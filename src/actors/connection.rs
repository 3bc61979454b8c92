//! Stream connections: one actor per TCP connection, inbound or outbound, and the accept
//! loop of a TCP listener.
//!
//! A connection actor owns its socket's write half, its framing buffer and its lifetime; a
//! small reader task owned by it feeds it the bytes read. Messages it frames are handed to
//! [`Core::deliver`](super::core::Core::deliver) (the dispatcher) with a [`ReplyPath::Stream`] naming this connection, so responses go
//! back on exactly this connection. A panic while handling one connection's bytes stops
//! that actor only; the supervisor counts it and cleans its table entry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, WriteHalf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::metrics::{KindLabels, Metrics};
use crate::sip::framing::{Frame, StreamFramer};
use crate::sip::message::{Framing, Message};
use crate::sip::transport::Transport;

use super::core::Core;
use super::transport::{send_udp, ConnHandle, ConnMsg, Inbound, ReplyPath, SendError, Target};

/// The connection actor.
pub struct ConnectionActor;

/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 4096;

/// State of one connection.
pub struct ConnState {
    core: Arc<Core>,
    handle: ConnHandle,
    writer: WriteHalf<Box<dyn Stream>>,
    framer: StreamFramer,
    reader: JoinHandle<()>,
    /// Since when part of a message has been waiting for the rest.
    partial_since: Option<std::time::Instant>,
}

/// What a connection actor starts with.
pub struct NewConn {
    /// The byte stream (TCP, or TLS over TCP).
    pub stream: Box<dyn Stream>,
    /// Remote address.
    pub peer: SocketAddr,
    /// TCP or TLS.
    pub transport: Transport,
    /// The address of the listener that accepted it; `None` for one we opened.
    pub local: Option<SocketAddr>,
    /// We opened it, toward a server.
    pub outbound: bool,
}

impl Actor for ConnectionActor {
    type Msg = ConnMsg;
    type State = ConnState;
    type Arguments = (Arc<Core>, NewConn);

    async fn pre_start(
        &self,
        myself: ActorRef<ConnMsg>,
        (core, conn): Self::Arguments,
    ) -> Result<ConnState, ActorProcessingErr> {
        let (mut read, writer) = tokio::io::split(conn.stream);
        let id = core.transports.next_id();
        let handle = ConnHandle::new(
            id,
            conn.peer,
            conn.transport,
            conn.local,
            conn.outbound,
            myself.clone(),
        );
        core.transports.add_conn(handle.clone());
        core.metrics
            .connections
            .get_or_create(&KindLabels {
                kind: conn.transport.uri_param(),
            })
            .inc();
        let idle = Duration::from_secs(core.live().settings.limits.idle_timeout_s.max(1));
        let carries_flow = handle.flow_flag();
        let me = myself.clone();
        let reader = tokio::spawn(async move {
            // Small: most of a proxy's connections are idle phones; a large message just
            // takes a few reads (measured: 37 KiB per idle TLS connection with 16 KiB here).
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                let reason = match tokio::time::timeout(idle, read.read(&mut buf)).await {
                    // A connection that carries a flow stays open while the phone keeps it:
                    // it is the only way to reach that phone (RFC 5626). TCP keep-alive
                    // and the phone's own pings find it when it is dead.
                    Err(_) if carries_flow.load(std::sync::atomic::Ordering::Relaxed) => continue,
                    Err(_) => "idle",
                    Ok(Ok(0)) => "eof",
                    Ok(Err(_)) => "error",
                    Ok(Ok(n)) => {
                        let chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
                        if me.send_message(ConnMsg::Data(chunk)).is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let _ = me.send_message(ConnMsg::Closed(reason));
                return;
            }
        });
        Ok(ConnState {
            framer: StreamFramer::new(core.live().limits),
            core,
            handle,
            writer,
            reader,
            partial_since: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ConnMsg>,
        msg: ConnMsg,
        state: &mut ConnState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConnMsg::Send(bytes) => {
                if let Err(e) = state.writer.write_all(&bytes).await {
                    tracing::debug!(event = "connection_write_failed", peer = %state.handle.peer, error = %e);
                    myself.stop(Some("write failed".into()));
                }
            }
            ConnMsg::Data(chunk) => {
                #[cfg(feature = "fault-injection")]
                if memchr::memmem::find(&chunk, b"X-Sippool-Fault: panic-connection").is_some() {
                    super::fault::injected("connection");
                }
                state.framer.push(&chunk);
                loop {
                    if state.framer.buffered() == 0 {
                        break;
                    }
                    match state.framer.next_frame() {
                        Ok(None) => break,
                        Ok(Some(Frame::Ping)) => {
                            state.partial_since = None;
                            // RFC 5626 section 4.4.1: answer CRLFCRLF with CRLF.
                            if state.writer.write_all(b"\r\n").await.is_err() {
                                myself.stop(Some("write failed".into()));
                                return Ok(());
                            }
                        }
                        Ok(Some(Frame::Message(bytes))) => {
                            state.partial_since = None;
                            match Message::parse(bytes, Framing::Stream, &state.core.live().limits)
                            {
                                Ok(msg) => state.core.deliver(Inbound {
                                    msg,
                                    transport: state.handle.transport,
                                    source: state.handle.peer,
                                    reply: ReplyPath::Stream(state.handle.clone()),
                                    received: std::time::Instant::now(),
                                }),
                                Err(e) => state.core.metrics.parse_failed(parse_reason(e)),
                            }
                        }
                        Err(e) => {
                            // Framing cannot recover on a stream (RFC 3261 section 18.3).
                            state.core.metrics.parse_failed(e.as_str());
                            tracing::info!(event = "connection_framing_error", peer = %state.handle.peer, reason = e.as_str());
                            myself.stop(Some(e.as_str().into()));
                            return Ok(());
                        }
                    }
                }
            }
            ConnMsg::Closed(reason) => myself.stop(Some(reason.into())),
            ConnMsg::CheckPartial(since) => {
                if state.partial_since == Some(since) {
                    Metrics::count(&state.core.metrics.overload_rejections, "slow_message");
                    tracing::info!(event = "connection_closed", peer = %state.handle.peer, reason = "message_timeout");
                    myself.stop(Some("message timeout".into()));
                }
                return Ok(());
            }
        }
        // A message left incomplete must be completed within message_timeout_ms.
        if state.framer.buffered() == 0 {
            state.partial_since = None;
        } else if state.partial_since.is_none() {
            let since = std::time::Instant::now();
            state.partial_since = Some(since);
            let wait = Duration::from_millis(state.core.live().settings.limits.message_timeout_ms);
            drop(myself.send_after(wait, move || ConnMsg::CheckPartial(since)));
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ConnMsg>,
        state: &mut ConnState,
    ) -> Result<(), ActorProcessingErr> {
        state.reader.abort();
        let _ = state.writer.shutdown().await;
        release(&state.core, &state.handle);
        Ok(())
    }
}

fn release(core: &Core, h: &ConnHandle) {
    core.transports.remove_conn(h.transport, h.peer, h.id);
    let kind = KindLabels {
        kind: h.transport.uri_param(),
    };
    core.metrics.connections.get_or_create(&kind).dec();
    if h.has_flow() {
        core.metrics.flows.get_or_create(&kind).dec();
    }
    if h.outbound || h.has_flow() {
        // Transactions waiting for an answer over it hear of it: toward a server they
        // reopen and resend, toward a phone they answer 430 (RFC 5626).
        core.txns.connection_lost(h.id);
    }
}

/// A metrics reason for a parse error.
pub fn parse_reason(e: crate::sip::message::ParseError) -> &'static str {
    use crate::sip::message::ParseError::*;
    match e {
        TooLarge => "too_large",
        Empty => "empty",
        BadStatusLine => "bad_status_line",
        BadResponse(_) => "bad_response",
    }
}

/// Supervises every connection actor: a failed connection is counted, logged and forgotten.
pub struct ConnectionSupervisor;

impl Actor for ConnectionSupervisor {
    type Msg = ();
    type State = Arc<Core>;
    type Arguments = Arc<Core>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        core: Arc<Core>,
    ) -> Result<Arc<Core>, ActorProcessingErr> {
        Ok(core)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        evt: SupervisionEvent,
        core: &mut Arc<Core>,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            core.metrics
                .actor_failures
                .get_or_create(&KindLabels { kind: "connection" })
                .inc();
            tracing::error!(event = "connection_failed", actor = %cell.get_id(), error = %err);
            if let Some(h) = core.transports.conn_by_actor(cell.get_id()) {
                release(core, &h);
            }
        }
        Ok(())
    }
}

/// A byte stream a connection actor can own: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Starts a connection actor for `stream` under the connection supervisor.
pub async fn start_connection(core: &Arc<Core>, conn: NewConn) -> Result<ConnHandle, SendError> {
    let sup = core
        .conn_supervisor()
        .cloned()
        .ok_or(SendError::NoTransport)?;
    let (transport, peer) = (conn.transport, conn.peer);
    let (actor, _) = Actor::spawn_linked(None, ConnectionActor, (core.clone(), conn), sup)
        .await
        .map_err(|e| SendError::Io(e.to_string()))?;
    core.transports
        .conn_to(transport, peer)
        .filter(|h| h.is_actor(&actor))
        .ok_or_else(|| SendError::Io("connection closed at once".into()))
}

/// Sends a request toward `target`: UDP from a listen socket, TCP over an open connection to
/// that address or a new one.
pub async fn send(core: &Arc<Core>, target: Target, bytes: Bytes) -> Result<ConnOrUdp, SendError> {
    match target.transport {
        Transport::Udp => {
            let sock = core
                .transports
                .udp_for(&target.addr)
                .ok_or(SendError::NoTransport)?;
            send_udp(&sock, target.addr, bytes)?;
            Ok(ConnOrUdp::Udp)
        }
        Transport::Tcp | Transport::Tls => {
            if let Some(h) = core.transports.conn_to(target.transport, target.addr) {
                if h.send(bytes.clone()) {
                    return Ok(ConnOrUdp::Conn(h));
                }
            }
            let h = connect(core, target).await?;
            if h.send(bytes) {
                Ok(ConnOrUdp::Conn(h))
            } else {
                Err(SendError::Io("connection closed".into()))
            }
        }
    }
}

/// Opens a connection toward a server: TCP, or TLS verified against `tls.upstream_ca` and
/// the name the server was located by.
async fn connect(core: &Arc<Core>, target: Target) -> Result<ConnHandle, SendError> {
    if core.transports.open_connections() >= core.live().settings.limits.max_connections {
        Metrics::count(&core.metrics.overload_rejections, "connections");
        return Err(SendError::TooManyConnections);
    }
    let connector = match target.transport {
        Transport::Tls => Some(
            core.tls
                .as_ref()
                .and_then(|t| t.connector().map(|c| (c, t)))
                .ok_or(SendError::NoTransport)?,
        ),
        _ => None,
    };
    let socket = if target.addr.is_ipv6() {
        tokio::net::TcpSocket::new_v6()
    } else {
        tokio::net::TcpSocket::new_v4()
    }
    .map_err(|e| SendError::ConnectFailed(e.to_string()))?;
    // The DSCP of the listener of that transport, from the SYN on.
    let dscp = core
        .live()
        .identity
        .listeners
        .iter()
        .find(|l| l.transport == target.transport)
        .and_then(|l| l.dscp);
    if let Some(d) = dscp {
        if let Err(e) = super::sockopt::set_dscp(socket2::SockRef::from(&socket), target.addr, d) {
            tracing::debug!(event = "dscp_not_set", error = %e);
        }
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(target.addr))
        .await
        .map_err(|_| SendError::ConnectFailed("timeout".into()))?
        .map_err(|e| SendError::ConnectFailed(e.to_string()))?;
    tune(&stream, core.live().settings.keepalive);
    let stream: Box<dyn Stream> = match connector {
        None => Box::new(stream),
        Some((connector, tls)) => {
            let host = core.tls_name(target.addr);
            let name = super::tls::server_name(tls.settings(), host.as_deref(), target.addr.ip());
            let handshake = connector.connect(name.clone(), stream);
            Box::new(tls_handshake(core, target.addr, Some(&name), handshake).await?)
        }
    };
    start_connection(
        core,
        NewConn {
            stream,
            peer: target.addr,
            transport: target.transport,
            local: None,
            outbound: true,
        },
    )
    .await
}

/// Runs a TLS handshake, either side, within `limits.tls_handshake_timeout_ms`; a failure
/// or a timeout is counted and logged (`tls_handshake_failed`): as a warning toward a
/// server (`server_name`, the name it had to prove), as information from a client.
async fn tls_handshake<S>(
    core: &Core,
    peer: SocketAddr,
    server_name: Option<&ServerName<'_>>,
    handshake: impl std::future::Future<Output = std::io::Result<S>>,
) -> Result<S, SendError> {
    let limit = Duration::from_millis(core.live().settings.limits.tls_handshake_timeout_ms);
    let (reason, error) = match tokio::time::timeout(limit, handshake).await {
        Ok(Ok(s)) => return Ok(s),
        Ok(Err(e)) => ("tls_handshake", e.to_string()),
        Err(_) => ("tls_handshake_timeout", "timeout".to_string()),
    };
    core.metrics.parse_failed(reason);
    match server_name {
        Some(name) => {
            tracing::warn!(event = "tls_handshake_failed", %peer, server_name = ?name, error = %error)
        }
        None => tracing::info!(event = "tls_handshake_failed", %peer, error = %error),
    }
    Err(SendError::ConnectFailed(error))
}

/// How long a TCP connect toward a server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Socket options of every stream connection: no Nagle delay, and TCP keep-alive when
/// configured, with a user timeout to match so that unacknowledged data on a dead
/// connection is noticed as soon as an idle one would be.
pub fn tune(stream: &TcpStream, keepalive: Option<crate::config::Keepalive>) {
    let _ = stream.set_nodelay(true);
    let Some(k) = keepalive else { return };
    let sock = socket2::SockRef::from(stream);
    let params = socket2::TcpKeepalive::new()
        .with_time(k.idle)
        .with_interval(k.interval)
        .with_retries(k.count);
    if let Err(e) = sock.set_tcp_keepalive(&params) {
        tracing::debug!(event = "keepalive_not_set", error = %e);
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let _ = sock.set_tcp_user_timeout(Some(k.idle + k.interval * k.count));
    }
}

/// How a request left.
#[derive(Debug, Clone)]
pub enum ConnOrUdp {
    /// As a datagram.
    Udp,
    /// Over this connection.
    Conn(ConnHandle),
}

/// Accepts TCP connections on a bound listener until the owning actor stops it; each is
/// admitted on a task of its own (see [`admit`]).
pub fn spawn_accept_loop(
    core: Arc<Core>,
    listener: TcpListener,
    opts: crate::config::Listener,
) -> JoinHandle<()> {
    let opts = Arc::new(opts);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(event = "accept_failed", error = %e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if core.transports.open_connections() >= core.live().settings.limits.max_connections {
                Metrics::count(&core.metrics.overload_rejections, "connections");
                tracing::debug!(event = "connection_refused", %peer, reason = "max_connections");
                drop(stream);
                continue;
            }
            tokio::spawn(admit(core.clone(), stream, peer, opts.clone()));
        }
    })
}

/// One accepted connection: on a PROXY protocol listener, its header first (the client's
/// address); then the per-address cap, and for TLS a handshake (bounded in time and in how
/// many run at once); then its connection actor.
async fn admit(
    core: Arc<Core>,
    mut stream: TcpStream,
    mut peer: SocketAddr,
    opts: Arc<crate::config::Listener>,
) {
    if opts.proxy_protocol {
        let deadline = Duration::from_millis(core.live().settings.limits.message_timeout_ms);
        match super::proxy_protocol::read_header(&mut stream, peer, deadline).await {
            Ok(client) => peer = client,
            Err(why) => {
                core.metrics.message_dropped("proxy_protocol_header");
                tracing::info!(event = "connection_refused", %peer, reason = "proxy_protocol", problem = why.as_str());
                return;
            }
        }
    }
    if core.transports.connections_from(peer.ip())
        >= core.live().settings.limits.max_connections_per_ip
    {
        Metrics::count(&core.metrics.overload_rejections, "connections_per_ip");
        tracing::debug!(event = "connection_refused", %peer, reason = "max_connections_per_ip");
        return;
    }
    tune(&stream, core.live().settings.keepalive);
    if opts.transport != Transport::Tls {
        let _ = start_connection(&core, inbound(Box::new(stream), peer, &opts)).await;
        return;
    }
    // The current configuration: a reload applies from the next handshake on.
    let Some(acceptor) = core.tls.as_ref().and_then(|t| t.acceptor()) else {
        return;
    };
    let Some(permit) = core.tls_handshake_permit() else {
        Metrics::count(&core.metrics.overload_rejections, "tls_handshakes");
        return;
    };
    let accepted = tls_handshake(&core, peer, None, acceptor.accept(stream)).await;
    drop(permit);
    if let Ok(tls) = accepted {
        let _ = start_connection(&core, inbound(Box::new(tls), peer, &opts)).await;
    }
}

fn inbound(
    stream: Box<dyn Stream>,
    peer: SocketAddr,
    listener: &crate::config::Listener,
) -> NewConn {
    NewConn {
        stream,
        peer,
        transport: listener.transport,
        local: Some(listener.address),
        outbound: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keepalive_settings_reach_the_socket() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let k = crate::config::Keepalive {
            idle: Duration::from_secs(7),
            interval: Duration::from_secs(3),
            count: 4,
        };
        tune(&c, Some(k));
        let s = socket2::SockRef::from(&c);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(s.keepalive_interval().unwrap(), Duration::from_secs(3));
        assert_eq!(s.keepalive_retries().unwrap(), 4);
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_secs(19)));
        assert!(c.nodelay().unwrap());
        // Off: no keep-alive.
        let c2 = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        tune(&c2, None);
        assert!(!socket2::SockRef::from(&c2).keepalive().unwrap());
    }
}
