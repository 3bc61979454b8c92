//! Sending and receiving paths: which socket or connection a message leaves by.
//!
//! This module owns the table of open stream connections (found by transport and peer
//! address for requests we originate; responses always go back on the connection the
//! request came in on, carried in [`ReplyPath`]) and the UDP sockets of the listeners.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::net::UdpSocket;
use tokio::sync::Notify;

use crate::sip::message::Message;
use crate::sip::transport::Transport;

/// A received message and where it came from.
#[derive(Debug)]
pub struct Inbound {
    /// The parsed message.
    pub msg: Message,
    /// Transport it arrived on.
    pub transport: Transport,
    /// Packet source (the peer of the connection for streams).
    pub source: SocketAddr,
    /// How to answer it.
    pub reply: ReplyPath,
    /// When it was read from the socket.
    pub received: std::time::Instant,
}

/// The way back to whoever sent a message.
#[derive(Debug, Clone)]
pub enum ReplyPath {
    /// The UDP socket it arrived on, and that socket's local address (read once when the
    /// listener starts, not per message).
    Udp(Arc<UdpSocket>, Option<SocketAddr>),
    /// The connection it arrived on.
    Stream(ConnHandle),
}

/// A handle on one stream connection: what the rest of the proxy holds to write to it, and
/// to find it again (flow tokens name connections by [`id`](Self::id)). The connection
/// itself is a task that owns the socket (`connection::task`); the handle shares only a
/// small outbox and a flag with it.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// Process-unique connection number.
    pub id: u64,
    /// Remote address.
    pub peer: SocketAddr,
    /// TCP or TLS.
    pub transport: Transport,
    /// The address of the listener that accepted it; `None` for one we opened.
    pub local: Option<SocketAddr>,
    /// We opened it (toward a server); when it dies under a transaction, we reopen it.
    pub outbound: bool,
    /// The worker whose runtime runs its task (`runtime.workers`; 0: the proxy's own).
    pub worker: u32,
    shared: Arc<ConnShared>,
}

/// What a connection's handles share with its task.
#[derive(Debug, Default)]
struct ConnShared {
    /// A flow token was issued for it (RFC 5626): it is not closed for being idle.
    flow: AtomicBool,
    /// Bytes queued for writing, and whether the connection is gone.
    outbox: Mutex<Outbox>,
    /// Wakes the task when bytes are queued.
    wake: Notify,
}

/// Bytes waiting for the connection's task to write them.
#[derive(Debug, Default)]
struct Outbox {
    queue: Vec<Bytes>,
    closed: bool,
}

impl ReplyPath {
    /// The listener a message came in on, and a reply or a request over the same way
    /// goes through.
    pub fn through(&self) -> Through {
        match self {
            ReplyPath::Udp(_, local) => Through {
                transport: Transport::Udp,
                local: *local,
            },
            ReplyPath::Stream(c) => Through {
                transport: c.transport,
                local: c.local,
            },
        }
    }
}

impl ConnHandle {
    /// A handle on a new, open connection, whose task runs on the calling worker.
    pub fn new(
        id: u64,
        peer: SocketAddr,
        transport: Transport,
        local: Option<SocketAddr>,
        outbound: bool,
    ) -> Self {
        ConnHandle {
            id,
            peer,
            transport,
            local,
            outbound,
            worker: super::workers::current(),
            shared: Arc::default(),
        }
    }

    /// Records that the connection carries a flow; true the first time.
    pub fn mark_flow(&self) -> bool {
        !self.shared.flow.swap(true, Ordering::Relaxed)
    }

    /// Whether the connection carries a flow.
    pub fn has_flow(&self) -> bool {
        self.shared.flow.load(Ordering::Relaxed)
    }

    /// Queues bytes for writing; false when the connection is gone.
    pub fn send(&self, bytes: Bytes) -> bool {
        {
            let mut outbox = self.outbox();
            if outbox.closed {
                return false;
            }
            outbox.queue.push(bytes);
        }
        self.shared.wake.notify_one();
        true
    }

    /// Whether both handles name the same connection.
    pub fn same(&self, other: &ConnHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// The bytes queued so far, oldest first (the queue is left empty, without capacity,
    /// so an idle connection holds nothing here).
    pub fn take_queued(&self) -> Vec<Bytes> {
        std::mem::take(&mut self.outbox().queue)
    }

    /// Whether bytes are queued.
    pub fn has_queued(&self) -> bool {
        !self.outbox().queue.is_empty()
    }

    /// Waits until bytes may have been queued since the last call (a notification sent
    /// while nobody waits is kept for the next call).
    pub async fn queued(&self) {
        self.shared.wake.notified().await
    }

    /// Marks the connection gone: later [`send`](Self::send)s fail, and what is still
    /// queued is dropped.
    pub fn close(&self) {
        let mut outbox = self.outbox();
        outbox.closed = true;
        outbox.queue = Vec::new();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.outbox().closed
    }

    /// The outbox, also when a thread panicked while holding it (its state is a plain
    /// queue, always consistent).
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.shared
            .outbox
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

use crate::sip::addr::Listener;
pub use crate::sip::addr::Target;
use crate::sip::proxy::Through;

/// Why a message could not be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// No listen socket or connection can carry this transport/family.
    NoTransport,
    /// The connection attempt failed or was refused.
    ConnectFailed(String),
    /// The connection cap is reached.
    TooManyConnections,
    /// The socket write failed.
    Io(String),
}

/// Sockets and connections shared by every actor.
#[derive(Debug, Default)]
pub struct Transports {
    udp: RwLock<Vec<UdpEntry>>,
    conns: DashMap<(Transport, SocketAddr), ConnHandle>,
    next_conn_id: AtomicU64,
    open: AtomicUsize,
    per_ip: DashMap<std::net::IpAddr, usize>,
    by_id: DashMap<u64, ConnHandle>,
    /// Source addresses toward destinations, when a family has several UDP sockets.
    sources: super::egress::SourceCache,
    /// Which worker's runtime an accepted connection runs on.
    pub(crate) placement: super::workers::Placement,
}

/// A UDP listener's socket, and the workers' own sockets on its address.
#[derive(Debug)]
struct UdpEntry {
    /// The listener's bound address.
    local: SocketAddr,
    sock: Arc<UdpSocket>,
    /// By worker: the socket its requests toward servers leave by, and that socket's
    /// address (empty with one worker).
    own: Vec<Option<(SocketAddr, Arc<UdpSocket>)>>,
}

impl Transports {
    /// Adds a bound UDP socket.
    pub fn register_udp(&self, sock: Arc<UdpSocket>) {
        if let (Ok(mut v), Ok(local)) = (self.udp.write(), sock.local_addr()) {
            v.push(UdpEntry {
                local,
                sock,
                own: Vec::new(),
            });
        }
    }

    /// Adds a worker's own socket on the address of the UDP listener bound to `listener`
    /// (see [`Self::udp_toward`]); false when no such listener is registered.
    pub fn register_worker_udp(
        &self,
        worker: u32,
        listener: SocketAddr,
        sock: Arc<UdpSocket>,
    ) -> bool {
        let (Ok(mut v), Ok(local), Ok(w)) =
            (self.udp.write(), sock.local_addr(), usize::try_from(worker))
        else {
            return false;
        };
        let Some(e) = v.iter_mut().find(|e| e.local == listener) else {
            return false;
        };
        if e.own.len() <= w {
            e.own.resize(w + 1, None);
        }
        if let Some(slot) = e.own.get_mut(w) {
            *slot = Some((local, sock));
        }
        true
    }

    /// The UDP socket a datagram to `dest` leaves by: of its address family, and when the
    /// family has several, the one bound to the address the kernel would send from (or a
    /// wildcard one); else the family's first. A listener's socket: for responses, and
    /// requests toward phones.
    pub fn udp_for(&self, dest: &SocketAddr) -> Option<Arc<UdpSocket>> {
        self.udp_entry(dest, |_| false).map(|(_, s)| s)
    }

    /// The UDP socket a request to `dest` leaves by: toward a server (`is_server`, asked
    /// only when workers have sockets of their own), the calling worker's own socket on
    /// the address of the listener [`Self::udp_for`] picks (the responses then come back
    /// to this worker); else that listener's socket.
    pub fn udp_toward(
        &self,
        dest: &SocketAddr,
        is_server: impl FnOnce(IpAddr) -> bool,
    ) -> Option<Arc<UdpSocket>> {
        self.udp_entry(dest, is_server).map(|(_, s)| s)
    }

    /// [`Self::udp_toward`] with the socket's local address, as it was registered.
    fn udp_entry(
        &self,
        dest: &SocketAddr,
        is_server: impl FnOnce(IpAddr) -> bool,
    ) -> Option<(SocketAddr, Arc<UdpSocket>)> {
        let v = self.udp.read().ok()?;
        let family = || v.iter().filter(|e| e.local.is_ipv4() == dest.is_ipv4());
        let chosen = if family().nth(1).is_some() {
            self.sources
                .source_for(dest.ip())
                .and_then(|src| super::egress::pick(family().map(|e| e.local), src))
        } else {
            None
        };
        let entry = match chosen {
            Some(local) => family().find(|e| e.local == local),
            None => family().next(),
        }?;
        let mine = match entry.own.is_empty() {
            true => None,
            false => usize::try_from(super::workers::current())
                .ok()
                .and_then(|w| entry.own.get(w))
                .and_then(Option::as_ref)
                .filter(|_| is_server(dest.ip())),
        };
        Some(match mine {
            Some((local, sock)) => (*local, sock.clone()),
            None => (entry.local, entry.sock.clone()),
        })
    }

    /// The listener a message to `dest` over `transport` leaves by (see
    /// [`Self::udp_toward`], with the worker's own socket toward a server; for streams,
    /// the listener of that transport bound to the source address the kernel would use),
    /// for the Via, Record-Route and Path written into it.
    pub fn through(
        &self,
        listeners: &[Listener],
        transport: Transport,
        dest: SocketAddr,
        is_server: impl FnOnce(IpAddr) -> bool,
    ) -> Through {
        let local = if transport == Transport::Udp {
            self.udp_entry(&dest, is_server).map(|(local, _)| local)
        } else {
            let of = || {
                listeners
                    .iter()
                    .filter(|l| l.transport == transport && l.address.is_ipv4() == dest.is_ipv4())
                    .map(|l| l.address)
            };
            if of().nth(1).is_some() {
                self.sources
                    .source_for(dest.ip())
                    .and_then(|src| super::egress::pick(of(), src))
            } else {
                of().next()
            }
        };
        Through { transport, local }
    }

    /// A new connection number.
    pub fn next_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records an open connection so that requests toward its peer reuse it.
    pub fn add_conn(&self, h: ConnHandle) {
        self.open.fetch_add(1, Ordering::Relaxed);
        *self.per_ip.entry(h.peer.ip()).or_insert(0) += 1;
        self.by_id.insert(h.id, h.clone());
        self.conns.insert((h.transport, h.peer), h);
    }

    /// Forgets a closed connection.
    pub fn remove_conn(&self, transport: Transport, peer: SocketAddr, id: u64) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.by_id.remove(&id);
        self.per_ip.remove_if_mut(&peer.ip(), |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
        self.conns.remove_if(&(transport, peer), |_, h| h.id == id);
    }

    /// Open connections from one IP address.
    pub fn connections_from(&self, ip: std::net::IpAddr) -> usize {
        self.per_ip.get(&ip).map_or(0, |n| *n)
    }

    /// Open connections.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// An open connection by its number (flow tokens name connections by number).
    pub fn conn_by_id(&self, id: u64) -> Option<ConnHandle> {
        self.by_id.get(&id).map(|h| h.clone())
    }

    /// An open connection to `peer`.
    pub fn conn_to(&self, transport: Transport, peer: SocketAddr) -> Option<ConnHandle> {
        self.conns.get(&(transport, peer)).map(|h| h.clone())
    }
}

/// Sends on the path a message arrived by (responses).
pub fn send_reply(path: &ReplyPath, dest: SocketAddr, bytes: Bytes) -> Result<(), SendError> {
    match path {
        ReplyPath::Udp(sock, _) => send_udp(sock, dest, bytes),
        ReplyPath::Stream(conn) => {
            if conn.send(bytes) {
                Ok(())
            } else {
                Err(SendError::Io("connection closed".into()))
            }
        }
    }
}

/// Sends one datagram without waiting; falls back to an awaited send when the socket
/// buffer is full.
pub fn send_udp(sock: &Arc<UdpSocket>, dest: SocketAddr, bytes: Bytes) -> Result<(), SendError> {
    let mut sent = sock.try_send_to(&bytes, dest);
    if sent.as_ref().is_err_and(is_pending_icmp_error) {
        // With IP_RECVERR, an ICMP error that came back for an earlier datagram (to any
        // destination) is reported by the next call on the socket, this send included, and
        // then cleared: it says nothing about `dest`. The receive loop reads what it was
        // from the error queue; this datagram is sent again.
        sent = sock.try_send_to(&bytes, dest);
    }
    match sent {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            let sock = sock.clone();
            tokio::spawn(async move {
                let _ = sock.send_to(&bytes, dest).await;
            });
            Ok(())
        }
        Err(e) => Err(SendError::Io(e.to_string())),
    }
}

/// Whether a socket call failed with an asynchronous ICMP error (port, host or net
/// unreachable) rather than for its own sake.
fn is_pending_icmp_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable
    )
}

/// Where responses to a request go (RFC 3261 section 18.2.2, RFC 3581): on streams the
/// connection; on UDP the source IP, and the source port when `rport` was asked for, else
/// the Via port.
pub fn response_destination(msg: &Message, source: SocketAddr, reply: &ReplyPath) -> SocketAddr {
    if matches!(reply, ReplyPath::Stream(_)) {
        return source;
    }
    match msg.top_via() {
        Some(Ok(v)) if v.rport().is_none() => SocketAddr::new(source.ip(), v.port.unwrap_or(5060)),
        _ => source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::proxy::{LocalIdentity, Side};

    /// Toward a server, a worker's own socket (and its port in our Via); toward anyone
    /// else, and in Record-Route and Path, the listener.
    #[tokio::test]
    async fn a_workers_requests_to_servers_leave_by_its_own_socket() {
        let listen = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let own = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let (l_addr, own_addr) = (listen.local_addr().unwrap(), own.local_addr().unwrap());
        let t = Transports::default();
        t.register_udp(listen);
        assert!(!t.register_worker_udp(0, "127.0.0.9:5060".parse().unwrap(), own.clone()));
        assert!(t.register_worker_udp(0, l_addr, own));
        let server: SocketAddr = "127.0.0.2:5060".parse().unwrap();
        let local = |s: Option<Arc<UdpSocket>>| s.and_then(|s| s.local_addr().ok());
        assert_eq!(local(t.udp_toward(&server, |_| true)), Some(own_addr));
        assert_eq!(local(t.udp_toward(&server, |_| false)), Some(l_addr));
        assert_eq!(local(t.udp_for(&server)), Some(l_addr));
        let mut listener = Listener::new(Transport::Udp, l_addr);
        listener.worker_ports = vec![own_addr.port()];
        let id = LocalIdentity::new("127.0.0.1", vec![listener.clone()]);
        let through = t.through(
            std::slice::from_ref(&listener),
            Transport::Udp,
            server,
            |_| true,
        );
        assert_eq!(through.local, Some(own_addr));
        assert_eq!(
            id.via(through, "z9hG4bK1"),
            format!("SIP/2.0/UDP {own_addr};branch=z9hG4bK1")
        );
        assert_eq!(
            id.record_route(through, Side::Servers, None),
            format!("<sip:{l_addr};lr>")
        );
        assert!(id
            .path(through, "tok", false)
            .contains(&format!("@{l_addr};lr>")));
        assert!(id.is_local("127.0.0.1", Some(own_addr.port()), Transport::Udp));
        let phone = t.through(&[listener], Transport::Udp, server, |_| false);
        assert_eq!(phone.local, Some(l_addr));
        assert_eq!(
            id.via(phone, "z9hG4bK2"),
            format!("SIP/2.0/UDP {l_addr};branch=z9hG4bK2")
        );
    }
}
