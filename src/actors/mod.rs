//! Actors: sockets, lifetimes and supervision (ractor).
//!
//! ```text
//! Root supervisor
//!  |- UDP listener (one per UDP socket)          owns the socket and its receive loop
//!  |- TCP listener (one per TCP socket)          owns the accept loop
//!  '- Health supervisor --> Pair (one per pair), Probe (one per upstream server);
//!                               replaced whole by a reload that changes the pairs
//! ```
//!
//! Beside the tree, one transaction per server transaction (`transaction`) and one
//! connection per TCP or TLS connection (`connection`): tasks that contain their own
//! failure (logged, counted, their table entries released), tens of thousands at once.
//!
//! The protocol itself stays in `sip` (sans-IO); actors feed it messages and time.

pub(crate) mod admission;
pub(crate) mod cell;
pub(crate) mod connection;
pub(crate) mod core;
pub(crate) mod dispatcher;
pub(crate) mod egress;
#[cfg(feature = "fault-injection")]
pub(crate) mod fault;
pub(crate) mod host;
pub(crate) mod icmp;
pub(crate) mod live;
mod probe_net;
pub(crate) mod proxy_protocol;
pub(crate) mod reload;
pub(crate) mod sampler;
pub(crate) mod sockopt;
pub(crate) mod stateless;
pub(crate) mod status;
pub(crate) mod tables;
pub(crate) mod tcp;
pub(crate) mod timer_wheel;
pub(crate) mod tls;
pub(crate) mod transaction;
pub(crate) mod transport;
pub(crate) mod udp;
pub(crate) mod workers;

use std::net::SocketAddr;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::net::{TcpListener, UdpSocket};

use crate::config::{Listener, Settings};
use crate::sip::transport::Transport;

pub use self::admission::Admission;
pub use self::core::Core;
pub use self::live::Live;
pub use self::reload::Reload;
pub use self::tables::{Lingering, Transactions, TxMsg};
pub use self::tls::TlsContext;
pub use self::transport::{ConnHandle, Inbound, ReplyPath, Target, Transports};

/// A running proxy.
pub struct Proxy {
    core: Arc<Core>,
    root: ActorRef<()>,
    health: reload::HealthTree,
    workers: Option<workers::Workers>,
    bound: Vec<(Transport, SocketAddr)>,
    http: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
}

/// Start-up failed.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

enum Bound {
    Udp(Arc<UdpSocket>),
    /// A stream listener: TCP, or TLS over TCP, with its options.
    Tcp(TcpListener, Listener),
}

impl Proxy {
    /// Binds every listen socket, then starts the actor tree. A socket that cannot be bound
    /// is the event `sip_listener_cannot_start` and an error.
    pub async fn start(mut settings: Settings) -> Result<Proxy, StartError> {
        let tls = match &settings.tls {
            Some(t) => Some(
                tls::TlsContext::load(t.clone()).map_err(|e| StartError(format!("TLS: {e}")))?,
            ),
            None => None,
        };
        let can_accept_tls = tls.as_ref().is_some_and(|t| t.acceptor().is_some());
        let mut sockets = Vec::with_capacity(settings.listeners.len());
        for l in settings.listeners.iter_mut() {
            let bound = match l.transport {
                Transport::Udp => bind_udp(l.address, l.dscp, settings.workers > 1)
                    .and_then(UdpSocket::from_std)
                    .map(|s| Bound::Udp(Arc::new(s))),
                Transport::Tcp => bind_tcp(l.address, l.dscp).map(|s| Bound::Tcp(s, l.clone())),
                Transport::Tls if can_accept_tls => {
                    bind_tcp(l.address, l.dscp).map(|s| Bound::Tcp(s, l.clone()))
                }
                Transport::Tls => Err(std::io::Error::other("no tls.cert and tls.key")),
            };
            let mut bound = bound.map_err(|e| cannot_start(l, "", &e))?;
            let actual = match &bound {
                Bound::Udp(s) => s.local_addr(),
                Bound::Tcp(s, _) => s.local_addr(),
            }
            .map_err(|e| StartError(e.to_string()))?;
            l.address = actual;
            if let Bound::Tcp(_, opts) = &mut bound {
                opts.address = actual;
            }
            sockets.push(bound);
        }
        let extra = bind_worker_sockets(&mut settings)?;
        let http_listener = match settings.http {
            None => None,
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                tracing::error!(event = "http_listener_cannot_start", address = %addr, error = %e);
                StartError(format!("HTTP listener {addr} cannot start: {e}"))
            })?),
        };
        let bound: Vec<(Transport, SocketAddr)> = settings
            .listeners
            .iter()
            .map(|l| (l.transport, l.address))
            .collect();
        let core = Arc::new(
            Core::new(settings, tls)
                .map_err(|e| StartError(format!("DNS resolver cannot start: {}", e.0)))?,
        );
        crate::memory::fix_mmap_threshold();
        spawn_sweeper(Arc::downgrade(&core));
        sampler::spawn(Arc::downgrade(&core));
        if let Some(every) = core.tls.as_ref().and_then(|t| t.settings().watch) {
            spawn_tls_watcher(Arc::downgrade(&core), every);
        }
        let (root, _) = Actor::spawn(None, RootSupervisor, (core.clone(), sockets))
            .await
            .map_err(|e| StartError(format!("actor tree cannot start: {e}")))?;
        // Health last: probes go out through the listeners' sockets.
        let health = reload::HealthTree::start(&core, root.get_cell())
            .await
            .map_err(|e| StartError(format!("health actors cannot start: {e}")))?;
        let workers = match extra.len() > 1 {
            false => None,
            true => Some(
                workers::Workers::start(&core, extra)
                    .map_err(|e| StartError(format!("workers cannot start: {e}")))?,
            ),
        };
        let http = match http_listener {
            Some(l) => {
                let addr = l.local_addr().map_err(|e| StartError(e.to_string()))?;
                let task = tokio::spawn(crate::metrics::http::serve(core.clone(), l));
                Some((addr, task))
            }
            None => None,
        };
        tracing::info!(
            event = "proxy_initialised",
            http = ?http.as_ref().map(|(a, _)| *a),
            instance = %core.live().settings.name,
            listeners = ?bound,
            pairs = core.live().settings.pairs.len(),
            workers = core.live().settings.workers,
        );
        Ok(Proxy {
            core,
            root,
            health,
            workers,
            bound,
            http,
        })
    }

    /// The shared core (tables, metrics).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The bound listen addresses (port 0 resolved).
    pub fn local_addrs(&self) -> &[(Transport, SocketAddr)] {
        &self.bound
    }

    /// The first bound address of a transport.
    pub fn local_addr(&self, t: Transport) -> Option<SocketAddr> {
        self.bound.iter().find(|(bt, _)| *bt == t).map(|(_, a)| *a)
    }

    /// The bound HTTP address, if the endpoint is configured.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(a, _)| *a)
    }

    /// Makes `settings` the running configuration (SIGHUP): everything but the listen
    /// sockets, the HTTP socket, the threads, the flow key and `[tls]` changes at once for
    /// new transactions; those in flight finish on the configuration they started with.
    /// Health carries over for every server still configured the same. The report lists
    /// what changed; the caller applies [`Reload::log_filter`].
    pub async fn reload(&self, settings: Settings) -> Reload {
        reload::reload(&self.core, &self.health, settings).await
    }

    /// Stops every actor and worker, and closes every socket.
    pub async fn stop(mut self) {
        if let Some(w) = self.workers.take() {
            w.stop().await;
        }
        if let Some((_, task)) = &self.http {
            task.abort();
        }
        self.root.stop(None);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while self.root.get_status() != ractor::ActorStatus::Stopped {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// Waits until the actor tree ends.
    pub async fn wait(&self) {
        while self.root.get_status() != ractor::ActorStatus::Stopped {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Graceful drain: stops taking new dialogs (new out-of-dialog requests get 503 with
    /// Retry-After, `/readyz` turns 503), then waits until no server transaction is in
    /// flight or `timeout` has passed, and says which. The first call logs the event
    /// `drain_started`; a later call (e.g. with `Duration::ZERO`) reports what is still in
    /// flight. Dropping the future (a second signal) leaves the proxy draining. It does not
    /// stop the proxy: [`Proxy::stop`] does.
    pub async fn drain(&self, timeout: std::time::Duration) -> DrainOutcome {
        let deadline = tokio::time::Instant::now() + timeout;
        if !self.core.admission.is_draining() {
            self.core.admission.start_drain();
            tracing::info!(
                event = "drain_started",
                in_flight = self.core.txns.server.len(),
                timeout_s = timeout.as_secs()
            );
        }
        loop {
            let in_flight = self.core.txns.server.len();
            if in_flight == 0 {
                return DrainOutcome::Drained;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return DrainOutcome::TimedOut { in_flight };
            }
            let step = std::time::Duration::from_millis(50);
            tokio::time::sleep(step.min(deadline - now)).await;
        }
    }
}

/// How a [`Proxy::drain`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// No server transaction was left in flight.
    Drained,
    /// The timeout passed with this many server transactions still in flight.
    TimedOut {
        /// Server transactions still in flight.
        in_flight: usize,
    },
}

/// Drops lingering transactions once a second, until the core is gone, and keeps the
/// transaction tables at the size their entries need (see below); once a burst of
/// transactions has drained, gives the memory it took back to the system.
///
/// The tables are rebuilt at their size every sweep because of how a hash table churned at
/// a steady size behaves (hashbrown, under `DashMap`): a removal leaves a tombstone where
/// the slot's neighbourhood was full, tombstones use up the room left for inserts, and when
/// it runs out a table more than half full doubles instead of rehashing in place. At 500
/// calls/s the 32,000 lingering transactions (8 shards of about 4,000 in 8,192 slots) had
/// every shard double between 300 and 360 s: +6.2 MiB, the soak's step (README, "Memory").
/// `shrink_to_fit` is a no-op on a table at its size, and otherwise rebuilds it at that
/// size without tombstones: a doubled shard is back within a second. Its cost is bounded
/// by one rehash of each table per second; at 500 calls/s a shard doubles every few minutes.
fn spawn_sweeper(core: std::sync::Weak<Core>) {
    /// Seconds between two readings of the allocator's free memory (see below).
    const HEAP_CHECK_EVERY: u64 = 10;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut release = crate::memory::Release::default();
        let mut ticks: u64 = 0;
        loop {
            tick.tick().await;
            let Some(c) = core.upgrade() else { return };
            let now = std::time::Instant::now();
            c.txns.sweep_lingering(now);
            c.admission.end_overload_if_quiet(now);
            c.txns.shrink();
            let live = c.txns.live();
            let drained = release.observe(live);
            // Reading the allocator's free memory walks its free lists (`mallinfo2`): 1.3 %
            // of the CPU at 6000 calls/s when read every second. A passing spike is given
            // back within HEAP_CHECK_EVERY seconds; a drained burst at once (`drained`).
            let free = ticks
                .is_multiple_of(HEAP_CHECK_EVERY)
                .then(crate::memory::free_heap_bytes)
                .flatten();
            if free.is_some_and(|f| release.heap_freed(f)) || drained {
                crate::memory::release_free_memory();
                tracing::debug!(event = "memory_released", live, ?free, resident = ?crate::memory::resident_bytes());
            }
            ticks = ticks.wrapping_add(1);
            if ticks.is_multiple_of(10) {
                tracing::debug!(
                    event = "memory_sample",
                    live,
                    lingering = c.txns.lingering.len(),
                    lingering_capacity = c.txns.lingering.capacity(),
                    resident = ?crate::memory::resident_bytes(),
                    heap = ?crate::memory::heap_stats(),
                );
            }
        }
    });
}

/// Reloads the TLS files when one of them changes, until the core is gone.
fn spawn_tls_watcher(core: std::sync::Weak<Core>, every: std::time::Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(c) = core.upgrade() else { return };
            if c.tls.as_ref().is_some_and(|t| t.files_changed()) {
                c.reload_tls("file change");
            }
        }
    });
}

/// A listen socket (or a worker's socket, `what`) that cannot be bound: the event
/// `sip_listener_cannot_start` and the error.
fn cannot_start(l: &Listener, what: &str, e: &std::io::Error) -> StartError {
    tracing::error!(event = "sip_listener_cannot_start", transport = %l.transport, address = %l.address, error = %e);
    StartError(format!(
        "SIP listener {} {} cannot start{what}: {e}",
        l.transport, l.address
    ))
}

/// The sockets of every worker (none with one worker): for each UDP listener, one more
/// socket on its address for every worker beyond the first (`SO_REUSEPORT`), and one of
/// each worker's own on the listener's IP address, whose port goes into the listener's
/// [`Listener::worker_ports`].
fn bind_worker_sockets(settings: &mut Settings) -> Result<Vec<workers::WorkerSockets>, StartError> {
    let mut all = Vec::new();
    if settings.workers < 2 {
        return Ok(all);
    }
    for worker in 0..settings.workers {
        let mut mine = workers::WorkerSockets {
            listen: Vec::new(),
            own: Vec::new(),
        };
        for l in settings
            .listeners
            .iter_mut()
            .filter(|l| l.transport == Transport::Udp)
        {
            if worker > 0 {
                mine.listen.push(
                    bind_udp(l.address, l.dscp, true)
                        .map_err(|e| cannot_start(l, " a worker's socket", &e))?,
                );
            }
            let own = bind_udp(SocketAddr::new(l.address.ip(), 0), l.dscp, false)
                .map_err(|e| cannot_start(l, " a worker's own socket", &e))?;
            let port = own
                .local_addr()
                .map_err(|e| StartError(e.to_string()))?
                .port();
            l.worker_ports.push(port);
            mine.own.push((l.address, own));
        }
        all.push(mine);
    }
    Ok(all)
}

/// A UDP listen socket; `reuse_port` when several workers each bind one to the address.
fn bind_udp(
    addr: SocketAddr,
    dscp: Option<u8>,
    reuse_port: bool,
) -> std::io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // Room for bursts: a proxy under load should queue, not drop.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    // ICMP errors toward servers (port or host unreachable) queued on the socket: the
    // transactions sent there fail over at once instead of waiting for their timer.
    if let Err(e) = icmp::enable(&s, addr.is_ipv6()) {
        tracing::warn!(event = "icmp_errors_unavailable", %addr, error = %e);
    }
    if let Some(d) = dscp {
        sockopt::set_dscp(socket2::SockRef::from(&s), addr, d)?;
    }
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn bind_tcp(addr: SocketAddr, dscp: Option<u8>) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    // Accepted connections inherit it.
    if let Some(d) = dscp {
        sockopt::set_dscp(socket2::SockRef::from(&s), addr, d)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// The root of the actor tree.
struct RootSupervisor;

impl Actor for RootSupervisor {
    type Msg = ();
    type State = Arc<Core>;
    type Arguments = (Arc<Core>, Vec<Bound>);

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        (core, sockets): Self::Arguments,
    ) -> Result<Arc<Core>, ActorProcessingErr> {
        let cell = myself.get_cell();
        core.set_inbound(dispatcher::sink(&core));
        for s in sockets {
            match s {
                Bound::Udp(sock) => {
                    Actor::spawn_linked(None, udp::UdpListener, (core.clone(), sock), cell.clone())
                        .await?;
                }
                Bound::Tcp(listener, opts) => {
                    Actor::spawn_linked(
                        None,
                        tcp::TcpListenerActor,
                        (core.clone(), listener, opts),
                        cell.clone(),
                    )
                    .await?;
                }
            }
        }
        Ok(core)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        evt: SupervisionEvent,
        _core: &mut Arc<Core>,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                // A supervisor or listener failing leaves the proxy unable to do its job:
                // stop everything so the process exits and is restarted.
                tracing::error!(event = "supervisor_child_failed", actor = %cell.get_id(), error = %err);
                myself.stop(Some(format!("child failed: {err}")));
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                tracing::debug!(actor = %cell.get_id(), ?reason, "child terminated");
            }
            _ => {}
        }
        Ok(())
    }
}
