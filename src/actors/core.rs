//! What every actor shares: the running configuration (a [`Live`] snapshot that a reload
//! replaces), the transports, the transaction tables, admission state (INVITE rate, drain),
//! TLS state and metrics. Read-mostly; the tables are concurrent maps.
//!
//! It imports no actor: received messages reach the dispatcher through [`Core::deliver`],
//! installed at start-up, so listeners and connections do not depend on what is above them.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::config::{HostPort, Settings};
use crate::health::upstreams::Upstreams;
use crate::metrics::Metrics;
use crate::sip::transport::Transport;

use super::admission::Admission;
use super::live::Live;
use super::tables::Transactions;
use super::transport::{Inbound, ReplyPath, Transports};

/// How long an instance of the pool that did not take a relayed request is skipped.
pub const RELAY_DOWN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Everything the actors share. Read-mostly; the tables are concurrent maps.
pub struct Core {
    /// The running configuration: settings, identity, routing table, upstreams (see
    /// [`Core::live`]).
    live: ArcSwap<Live>,
    /// When the proxy started.
    pub started: std::time::SystemTime,
    /// Sockets and connections.
    pub transports: Transports,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The transaction tables.
    pub txns: Transactions,
    /// Instances of the pool that did not take a request relayed to them, and until when
    /// they are skipped (requests for their UDP flows go straight to the phone, for their
    /// connections 430 at once).
    relay_down: DashMap<SocketAddr, std::time::Instant>,
    /// Where received messages go (the dispatcher, installed at start-up).
    inbound: OnceLock<Box<dyn Fn(Box<Inbound>) + Send + Sync>>,
    /// Admission control: the INVITE rate, overload episodes, the drain.
    pub admission: Admission,
    /// The dashboard's history (rates and round trips of the last minutes, switches).
    pub history: std::sync::Mutex<crate::metrics::history::History>,
    tls_handshakes: Arc<tokio::sync::Semaphore>,
    /// How many permits `tls_handshakes` was given (`limits.max_tls_handshakes`).
    tls_handshake_cap: std::sync::atomic::AtomicUsize,
    /// TLS configurations (listeners, connections toward servers), reloadable.
    pub tls: Option<super::tls::TlsContext>,
    /// The host each TLS server address was located by: the name its certificate must carry.
    tls_names: DashMap<SocketAddr, Arc<str>>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("live", &**self.live.load())
            .finish()
    }
}

impl Core {
    /// Builds the core from settings whose listen addresses are already bound.
    pub fn new(
        settings: Settings,
        tls: Option<super::tls::TlsContext>,
    ) -> Result<Core, crate::dns::LocatorError> {
        let locator = Arc::new(crate::dns::Locator::new(
            &settings.dns_servers,
            settings.dns_timeout,
        )?);
        let secret = settings
            .flow_key
            .clone()
            .unwrap_or_else(|| (0..32).map(|_| rand::random::<u8>()).collect());
        let flows = crate::sip::FlowKeys::new(&secret, rand::random::<u32>());
        let upstreams = Arc::new(Upstreams::new(&settings.pairs, settings.failover_bounds));
        let handshakes = settings.limits.max_tls_handshakes;
        let invite_rate = settings.invite_rate;
        let core = Core {
            tls,
            tls_names: DashMap::new(),
            live: ArcSwap::from_pointee(Live::new(settings, flows, upstreams, locator)),
            started: std::time::SystemTime::now(),
            transports: Transports::default(),
            metrics: Arc::new(Metrics::new()),
            txns: Transactions::default(),
            relay_down: DashMap::new(),
            inbound: OnceLock::new(),
            admission: Admission::new(invite_rate),
            history: Default::default(),
            tls_handshakes: Arc::new(tokio::sync::Semaphore::new(handshakes)),
            tls_handshake_cap: std::sync::atomic::AtomicUsize::new(handshakes),
        };
        core.metrics.start_time.set(
            core.started
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        );
        // Series that alerts take the increase or the fall of exist from the start, at zero:
        // the first event is then a change, not a new series.
        for reason in crate::metrics::OVERLOAD_REASONS {
            let _ = Metrics::reason_value(&core.metrics.overload_rejections, reason);
        }
        for kind in ["tcp", "tls"] {
            let _ = core
                .metrics
                .flows
                .get_or_create(&crate::metrics::KindLabels { kind });
        }
        if core.tls.is_some() {
            for outcome in ["ok", "error"] {
                let _ = Metrics::reason_value(&core.metrics.tls_reloads, outcome);
            }
        }
        core.publish_tls_expiry();
        Ok(core)
    }

    /// Sets the certificate expiry gauge of every TLS listener from the chain in use (or
    /// of `upstream` when the certificate is only offered to servers).
    fn publish_tls_expiry(&self) {
        let Some(not_after) = self.tls.as_ref().and_then(|t| t.not_after()) else {
            return;
        };
        let mut listeners: Vec<String> = self
            .live()
            .settings
            .listeners
            .iter()
            .filter(|l| l.transport == Transport::Tls)
            .map(|l| l.address.to_string())
            .collect();
        if listeners.is_empty() {
            listeners.push("upstream".into());
        }
        for listener in listeners {
            self.metrics
                .tls_certificate_expiry
                .get_or_create(&crate::metrics::ListenerLabels { listener })
                .set(not_after);
        }
    }

    /// The running configuration, for a moment's use (a message, a request): cheap, and
    /// not to be held across an await or for a transaction's life ([`Core::snapshot`]).
    pub fn live(&self) -> arc_swap::Guard<Arc<Live>> {
        self.live.load()
    }

    /// The running configuration, to keep: a transaction holds the one it started on.
    pub fn snapshot(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Makes `live` the running configuration (a reload); returns the one it replaces.
    /// Work that took a snapshot before carries on with it.
    pub(super) fn replace_live(&self, live: Live) -> Arc<Live> {
        let cap = live.settings.limits.max_tls_handshakes;
        let was = self
            .tls_handshake_cap
            .swap(cap, std::sync::atomic::Ordering::Relaxed);
        if cap > was {
            self.tls_handshakes.add_permits(cap - was);
        } else if cap < was {
            // Only free permits can be taken back: with handshakes in progress the cap
            // comes down by what was free now (the rest at the next reload).
            let taken = self.tls_handshakes.forget_permits(was - cap);
            self.tls_handshake_cap
                .store(was - taken, std::sync::atomic::Ordering::Relaxed);
        }
        self.live.swap(Arc::new(live))
    }

    /// Sets where received messages go (once, at start-up).
    pub fn set_inbound(&self, sink: Box<dyn Fn(Box<Inbound>) + Send + Sync>) {
        let _ = self.inbound.set(sink);
    }

    /// Hands a received message to the dispatcher (dropped before start-up finished).
    /// Boxed once here: the message (about 450 bytes with its context) then moves by
    /// pointer to the transaction that takes it, instead of being copied at every step.
    pub fn deliver(&self, inbound: Box<Inbound>) {
        if let Some(sink) = self.inbound.get() {
            sink(inbound);
        }
    }

    /// The network refused a datagram sent to `dest` (ICMP port or host unreachable): the
    /// transactions sent there fail over at once, and when `dest` is a pair member its
    /// probe counts it as a missed probe.
    /// Every error is counted; a burst about one destination is told to the transactions
    /// (and logged) once per quarter second.
    pub fn unreachable(&self, dest: SocketAddr, reason: &'static str) {
        crate::metrics::Metrics::count(&self.metrics.unreachable, reason);
        self.live().upstreams.report_unreachable(dest, reason);
        if self.txns.unreachable(dest, std::time::Instant::now()) {
            tracing::info!(event = "destination_unreachable", %dest, reason);
        }
    }

    /// Whether the proxy is up: its dispatcher is installed (connections start only then).
    pub fn is_started(&self) -> bool {
        self.inbound.get().is_some()
    }

    /// The flow token of the flow a request arrived on, when requests can be sent back over
    /// it: its connection, or its UDP source when the sender asked for rport (behind NAT).
    pub fn flow_token_for(&self, inbound: &Inbound) -> Option<String> {
        match &inbound.reply {
            ReplyPath::Stream(c) => Some(self.live().identity.flows().token(
                c.transport,
                c.id,
                c.peer,
            )),
            ReplyPath::Udp(..) => {
                let rport = matches!(inbound.msg.top_via(), Some(Ok(v)) if v.rport().is_some());
                rport.then(|| {
                    self.live()
                        .identity
                        .flows()
                        .token(Transport::Udp, 0, inbound.source)
                })
            }
        }
    }

    /// The token of the connection `reply` names was handed out: the connection now
    /// carries a flow (counted, and no longer closed for being idle).
    pub fn flow_issued(&self, reply: &ReplyPath) {
        if let ReplyPath::Stream(c) = reply {
            if c.mark_flow() {
                self.metrics
                    .flows
                    .get_or_create(&crate::metrics::KindLabels {
                        kind: c.transport.uri_param(),
                    })
                    .inc();
            }
        }
    }

    /// [`crate::sip::proxy::decide`] for a received request, with what this instance has
    /// learnt about the other instances of its pool: one that did not take a relayed
    /// request lately is not relayed to again for a while (`RELAY_DOWN_FOR`, 10 s).
    pub fn decide(
        &self,
        live: &Live,
        rx: crate::sip::proxy::Received<'_>,
    ) -> crate::sip::proxy::Decision {
        let d = crate::sip::proxy::decide(rx, &live.identity, &live.router);
        let Some(to) = d.relay_target() else { return d };
        let down = self
            .relay_down
            .get(&to.addr)
            .is_some_and(|until| *until > std::time::Instant::now());
        let outcome = if down { "skipped" } else { "relayed" };
        self.count_relay(outcome);
        if down {
            d.relay_unreachable()
        } else {
            d
        }
    }

    /// An instance of the pool did not take a relayed request: skipped for a while.
    pub fn relay_failed(&self, to: SocketAddr) {
        tracing::warn!(event = "relay_failed", instance = %to);
        self.count_relay("failed");
        self.relay_down
            .insert(to, std::time::Instant::now() + RELAY_DOWN_FOR);
    }

    fn count_relay(&self, outcome: &'static str) {
        self.metrics
            .relays
            .get_or_create(&crate::metrics::OutcomeLabels { outcome })
            .inc();
    }

    /// The listener a message to `target` leaves by (see [`Transports::through`]).
    pub fn through(
        &self,
        live: &Live,
        target: super::transport::Target,
    ) -> crate::sip::proxy::Through {
        self.transports.through(
            live.identity.listeners(),
            target.transport,
            target.addr,
            |ip| live.upstreams.is_upstream(ip),
        )
    }

    /// Where a flow of this process leads (the token was checked by
    /// [`crate::sip::proxy::decide`]): the target, and the connection for a stream flow;
    /// `None` when that connection is gone.
    pub fn flow_target(
        &self,
        flow: &crate::sip::Flow,
    ) -> Option<(
        super::transport::Target,
        Option<super::transport::ConnHandle>,
    )> {
        let target = super::transport::Target {
            transport: flow.transport,
            addr: flow.peer,
        };
        if flow.transport == Transport::Udp {
            return Some((target, None));
        }
        match self.transports.conn_by_id(flow.conn) {
            Some(c) if c.peer == flow.peer => Some((target, Some(c))),
            _ => None,
        }
    }

    /// Resolves an upstream host (RFC 3263); for a TLS one, remembers the host as the name
    /// its certificate must carry.
    pub async fn locate(&self, live: &Live, hp: &HostPort) -> Option<super::transport::Target> {
        let target = live.locator.locate(hp).await?;
        Some(self.located(hp, target))
    }

    /// What [`Self::locate`] answers without a DNS lookup (an IP literal, a cached answer),
    /// `None` when it must ask.
    pub fn locate_now(&self, live: &Live, hp: &HostPort) -> Option<super::transport::Target> {
        let target = live.locator.locate_now(hp)?;
        Some(self.located(hp, target))
    }

    /// Notes the name a TLS server located for `hp` must prove.
    fn located(&self, hp: &HostPort, target: super::transport::Target) -> super::transport::Target {
        if target.transport == Transport::Tls
            && self
                .tls_names
                .get(&target.addr)
                .is_none_or(|n| **n != *hp.host)
        {
            self.tls_names.insert(target.addr, hp.host.as_str().into());
        }
        target
    }

    /// The name a TLS server at `addr` must prove, from the host it was located by.
    pub fn tls_name(&self, addr: SocketAddr) -> Option<Arc<str>> {
        self.tls_names.get(&addr).map(|n| n.clone())
    }

    /// Re-reads the TLS files; open connections keep their session, new ones use the new
    /// files. A file that does not load leaves the running configuration in place.
    pub fn reload_tls(&self, why: &'static str) {
        let Some(tls) = &self.tls else { return };
        let outcome = match tls.reload() {
            Ok(()) => {
                self.publish_tls_expiry();
                tracing::info!(
                    event = "tls_reloaded",
                    trigger = why,
                    not_after = tls.not_after()
                );
                "ok"
            }
            Err(e) => {
                tracing::error!(event = "tls_reload_failed", trigger = why, key = %e.key, problem = %e.problem);
                "error"
            }
        };
        Metrics::count(&self.metrics.tls_reloads, outcome);
    }

    /// A place for one more TLS handshake, if the cap allows.
    pub fn tls_handshake_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.tls_handshakes.clone().try_acquire_owned().ok()
    }

    /// TLS handshakes holding a place now (at most `limits.max_tls_handshakes`).
    pub fn tls_handshakes_in_progress(&self) -> usize {
        let cap = self
            .tls_handshake_cap
            .load(std::sync::atomic::Ordering::Relaxed);
        cap.saturating_sub(self.tls_handshakes.available_permits())
    }
}
