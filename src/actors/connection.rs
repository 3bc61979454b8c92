//! Stream connections: one task per TCP or TLS connection, inbound or outbound, and the
//! accept loop of a TCP listener.
//!
//! A connection's task ([`task`]) owns its socket, its framing buffer and its lifetime.
//! Messages it frames are handed to [`Core::deliver`](super::core::Core::deliver) (the
//! dispatcher) with a [`ReplyPath::Stream`](super::transport::ReplyPath::Stream) naming this connection, so responses go back on
//! exactly this connection; what is sent to it is queued on its [`ConnHandle`]. A panic
//! while handling one connection's bytes ends that connection only: it is counted, logged
//! and its table entries cleaned.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::metrics::{KindLabels, Metrics, WorkerLabels};
use crate::sip::transport::Transport;

use super::core::Core;
use super::transport::{send_udp, ConnHandle, SendError, Target};

pub mod task;

pub use task::ConnStream;

/// What a connection starts with.
pub struct NewConn {
    /// The byte stream (TCP, or TLS over TCP).
    pub stream: ConnStream,
    /// Remote address.
    pub peer: SocketAddr,
    /// TCP or TLS.
    pub transport: Transport,
    /// The address of the listener that accepted it; `None` for one we opened.
    pub local: Option<SocketAddr>,
    /// We opened it, toward a server.
    pub outbound: bool,
}

fn release(core: &Core, h: &ConnHandle) {
    core.transports.remove_conn(h.transport, h.peer, h.id);
    let kind = KindLabels {
        kind: h.transport.uri_param(),
    };
    core.metrics.connections.get_or_create(&kind).dec();
    core.metrics
        .worker_connections
        .get_or_create(&WorkerLabels { worker: h.worker })
        .dec();
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

/// Registers a connection and starts its task; its handle, to write to it.
pub fn start_connection(core: &Arc<Core>, conn: NewConn) -> Result<ConnHandle, SendError> {
    // Connections are tasks that contain their own panics ([`task`]); one starts only
    // once the proxy is up (its dispatcher installed).
    if !core.is_started() {
        return Err(SendError::NoTransport);
    }
    let handle = ConnHandle::new(
        core.transports.next_id(),
        conn.peer,
        conn.transport,
        conn.local,
        conn.outbound,
    );
    core.transports.add_conn(handle.clone());
    core.metrics
        .connections
        .get_or_create(&KindLabels {
            kind: conn.transport.uri_param(),
        })
        .inc();
    core.metrics
        .worker_connections
        .get_or_create(&WorkerLabels {
            worker: handle.worker,
        })
        .inc();
    task::spawn(core.clone(), handle.clone(), conn.stream);
    Ok(handle)
}

/// Sends a request toward `target`: UDP from a listen socket (toward a server, the worker's
/// own socket: see `Transports::udp_toward`), TCP over an open connection to
/// that address or a new one.
pub async fn send(core: &Arc<Core>, target: Target, bytes: Bytes) -> Result<ConnOrUdp, SendError> {
    match target.transport {
        Transport::Udp => {
            let server = |ip| core.live().upstreams.is_upstream(ip);
            let sock = core
                .transports
                .udp_toward(&target.addr, server)
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
        .listeners()
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
    let stream = match connector {
        None => ConnStream::Tcp(stream),
        Some((connector, tls)) => {
            let host = core.tls_name(target.addr);
            let name = super::tls::server_name(tls.settings(), host.as_deref(), target.addr.ip());
            let handshake = connector.connect(name.clone(), stream);
            let tls = tls_handshake(core, target.addr, Some(&name), handshake).await?;
            ConnStream::Tls(Box::new(tls.into()))
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
/// admitted on a task of its own (see [`admit`]), on the worker whose turn it is.
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
            place(&core, stream, peer, &opts);
        }
    })
}

/// Starts admitting an accepted connection on the worker whose turn it is (see
/// `workers::Placement`); that worker owns it from then on. With one worker, here.
fn place(
    core: &Arc<Core>,
    stream: TcpStream,
    peer: SocketAddr,
    opts: &Arc<crate::config::Listener>,
) {
    let (core, opts) = (core.clone(), opts.clone());
    let Some((worker, rt)) = core.transports.placement.next() else {
        tokio::spawn(admit(core, stream, peer, opts));
        return;
    };
    if worker == super::workers::current() {
        tokio::spawn(admit(core, stream, peer, opts));
        return;
    }
    // Off this runtime's reactor, onto the worker's.
    let std = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(event = "accept_failed", %peer, error = %e);
            return;
        }
    };
    rt.spawn(async move {
        match TcpStream::from_std(std) {
            Ok(stream) => admit(core, stream, peer, opts).await,
            Err(e) => tracing::warn!(event = "accept_failed", %peer, error = %e),
        }
    });
}

/// One accepted connection: on a PROXY protocol listener, its header first (the client's
/// address); then the per-address cap, and for TLS a handshake (bounded in time and in how
/// many run at once); then its connection task.
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
        let _ = start_connection(&core, inbound(ConnStream::Tcp(stream), peer, &opts));
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
        let tls = ConnStream::Tls(Box::new(tls.into()));
        let _ = start_connection(&core, inbound(tls, peer, &opts));
    }
}

fn inbound(stream: ConnStream, peer: SocketAddr, listener: &crate::config::Listener) -> NewConn {
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
