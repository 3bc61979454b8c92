//! The forwarding core shared by every actor: configuration, tables and the dispatch of each
//! received message to the transaction that owns it.
//!
//! [`Core::dispatch`] is the hot path. It matches responses to client transactions by branch
//! and requests to server transactions by key (RFC 3261 section 17.2.3), forwards ACK for 2xx
//! and stray responses statelessly, applies admission control (transaction cap, INVITE
//! rate), and spawns one transaction actor per new server transaction. It never blocks.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use dashmap::DashMap;
use ractor::{ActorCell, ActorRef};

use crate::config::{HostPort, Settings};
use crate::health::messages::PROBE_BRANCH_PREFIX;
use crate::health::upstreams::Upstreams;
use crate::metrics::Metrics;
use crate::sip::builder;
use crate::sip::dispatch::{dispatch, Dispatch, TransactionTables};
use crate::sip::message::{HeaderName, Limits, Message, Method};
use crate::sip::proxy::{self, Decision, LocalIdentity, Received, Router};
use crate::sip::transaction::{ClientKey, ServerKey};
use crate::sip::transport::Transport;
use crate::sip::via::Via;

use super::transaction::{TransactionActor, TxMsg};
use super::transport::{send_reply, send_udp, Inbound, ReplyPath, Transports};

/// Everything the actors share. Read-mostly; the tables are concurrent maps.
pub struct Core {
    /// Validated settings (listen addresses are the bound ones).
    pub settings: Settings,
    /// Our host and ports.
    pub identity: LocalIdentity,
    /// Pairs and static routes.
    pub router: Router,
    /// The upstream servers and their health, shared with the health actors.
    pub upstreams: Arc<Upstreams>,
    /// When the proxy started.
    pub started: std::time::SystemTime,
    /// Sockets and connections.
    pub transports: Transports,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Size and header caps.
    pub limits: Limits,
    /// DNS (RFC 3263) for upstream and route names.
    pub locator: crate::dns::Locator,
    /// Flow tokens (Path, Record-Route).
    pub flows: crate::sip::flow::FlowKeys,
    /// Server transactions by key.
    pub server_txns: DashMap<ServerKey, ActorRef<TxMsg>>,
    /// Transactions whose actor has ended but whose request retransmissions must still be
    /// absorbed until their Timer L or J runs out.
    pub lingering: DashMap<ServerKey, Lingering>,
    /// Client transactions by our branch, pointing at the owning server transaction.
    pub client_txns: DashMap<ClientKey, ActorRef<TxMsg>>,
    tx_supervisor: OnceLock<ActorCell>,
    conn_supervisor: OnceLock<ActorCell>,
    invite_bucket: Mutex<TokenBucket>,
    overload: Mutex<OverloadEpisode>,
    draining: std::sync::atomic::AtomicBool,
    tls_handshakes: Arc<tokio::sync::Semaphore>,
    /// TLS configurations (listeners, connections toward servers), reloadable.
    pub tls: Option<super::tls::TlsContext>,
    /// The host each TLS server address was located by: the name its certificate must carry.
    tls_names: DashMap<SocketAddr, Arc<str>>,
}

/// An episode of INVITE-rate overload, for the `overload_started` / `overload_ended` events.
#[derive(Debug, Default)]
struct OverloadEpisode {
    /// When it started, and the last rejection.
    since: Option<(Instant, Instant)>,
    rejected: u64,
    admitted: u64,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("name", &self.settings.name)
            .finish()
    }
}

impl Core {
    /// Builds the core from settings whose listen addresses are already bound.
    pub fn new(
        settings: Settings,
        tls: Option<super::tls::TlsContext>,
    ) -> Result<Core, crate::dns::LocatorError> {
        let locator = crate::dns::Locator::new(&settings.dns_servers, settings.dns_timeout)?;
        let secret = settings
            .flow_key
            .clone()
            .unwrap_or_else(|| (0..32).map(|_| rand::random::<u8>()).collect());
        Ok(Core {
            tls,
            tls_names: DashMap::new(),
            flows: crate::sip::flow::FlowKeys::new(&secret, rand::random::<u32>()),
            locator,
            identity: super::host::complete_identity(settings.identity()),
            router: settings.router(),
            upstreams: Arc::new(Upstreams::new(&settings.pairs)),
            started: std::time::SystemTime::now(),
            transports: Transports::default(),
            metrics: Arc::new(Metrics::new()),
            limits: Limits {
                max_size: settings.limits.max_message_size,
                max_headers: settings.limits.max_headers,
            },
            server_txns: DashMap::new(),
            lingering: DashMap::new(),
            client_txns: DashMap::new(),
            tx_supervisor: OnceLock::new(),
            conn_supervisor: OnceLock::new(),
            invite_bucket: Mutex::new(TokenBucket::new(settings.invite_rate)),
            overload: Mutex::new(OverloadEpisode::default()),
            draining: std::sync::atomic::AtomicBool::new(false),
            tls_handshakes: Arc::new(tokio::sync::Semaphore::new(
                settings.limits.max_tls_handshakes,
            )),
            settings,
        })
    }

    /// Sets the supervisors new actors are linked to (once, at start-up).
    pub fn set_supervisors(&self, tx: ActorCell, conn: ActorCell) {
        let _ = self.tx_supervisor.set(tx);
        let _ = self.conn_supervisor.set(conn);
    }

    /// The supervisor of connection actors.
    pub fn conn_supervisor(&self) -> Option<&ActorCell> {
        self.conn_supervisor.get()
    }

    /// Routes one received message (see the module documentation): the sans-IO
    /// dispatcher says where it belongs, this does it.
    pub fn dispatch(self: &Arc<Self>, inbound: Inbound) {
        if inbound.msg.is_response() {
            self.upstreams.note_heard(inbound.source);
        } else {
            let method = inbound.msg.method().map_or("", Method::as_str);
            self.metrics.request(method);
            self.upstreams.note_request_source(inbound.source);
        }
        self.route(inbound);
    }

    fn route(self: &Arc<Self>, inbound: Inbound) {
        match dispatch(&inbound.msg, self.as_ref(), Instant::now()) {
            Dispatch::Probe(key) => self.to_probe(&key, &inbound.msg),
            Dispatch::ClientTransaction(key) => {
                let Some(tx) = self.client_txns.get(&key).map(|r| r.clone()) else {
                    return self.forward_stray_response(&inbound.msg);
                };
                if let Err(ractor::MessagingErr::SendErr(TxMsg::Response(back))) =
                    tx.send_message(TxMsg::Response(Box::new(inbound)))
                {
                    self.forward_stray_response(&back.msg);
                }
            }
            Dispatch::StrayResponse => self.forward_stray_response(&inbound.msg),
            Dispatch::Cancel(invite) => {
                if let Some(tx) = self.server_txns.get(&invite).map(|r| r.clone()) {
                    let _ = tx.send_message(TxMsg::Cancel(Box::new(inbound)));
                }
            }
            Dispatch::ServerTransaction(key) => {
                let Some(tx) = self.server_txns.get(&key).map(|r| r.clone()) else {
                    return self.route(inbound);
                };
                if let Err(ractor::MessagingErr::SendErr(TxMsg::Request(inbound))) =
                    tx.send_message(TxMsg::Request(Box::new(inbound)))
                {
                    // The transaction just ended: it lingers, or this is a new one.
                    self.server_txns
                        .remove_if(&key, |_, v| v.get_id() == tx.get_id());
                    self.route(*inbound);
                }
            }
            Dispatch::Absorb(key) => self.absorb_lingering(&key),
            Dispatch::AckStateless => self.dispatch_ack_stateless(inbound),
            Dispatch::New(key) => self.new_transaction(key, inbound),
            Dispatch::Respond(code, reason) => self.respond_stateless(&inbound, code, reason, &[]),
            Dispatch::Drop(reason) => self.metrics.message_dropped(reason),
        }
    }

    /// A response to one of our OPTIONS probes, to the probe actor that sent it.
    fn to_probe(&self, key: &ClientKey, msg: &Message) {
        let Some(code) = msg.status() else {
            return;
        };
        let retry_after = msg
            .header_value("Retry-After")
            .and_then(|v| {
                crate::sip::syntax::parse_u32(
                    crate::sip::syntax::trim(
                        v.split(|&c| c == b';' || c == b'(')
                            .next()
                            .unwrap_or_default(),
                    ),
                    86_400,
                )
            })
            .map(|s| std::time::Duration::from_secs(u64::from(s)));
        self.upstreams
            .probe_response(key.branch(), code, retry_after);
    }

    /// Forwards a response that matches no transaction along its Via (RFC 3261 section
    /// 18.2.2), when the top Via is ours. 100 Trying is hop-by-hop and dropped.
    fn forward_stray_response(&self, msg: &Message) {
        let ours = match msg.top_via() {
            Some(Ok(v)) => {
                let t = v.transport.parse().unwrap_or(Transport::Udp);
                self.identity.is_local(v.host, v.port, t)
            }
            _ => false,
        };
        if !ours || msg.status() == Some(100) {
            self.metrics.message_dropped("stray_response");
            return;
        }
        let vias = msg.list_values(HeaderName::Via);
        let Some(next) = vias
            .get(1)
            .and_then(|r| Via::parse(msg.slice(r.clone())).ok())
        else {
            self.metrics.message_dropped("stray_response");
            return;
        };
        let Some(dest) = next.response_address().filter(|a| is_unicast(a.ip())) else {
            self.metrics.message_dropped("stray_response");
            return;
        };
        let bytes = builder::forward_response(msg);
        let t = next.transport.parse().unwrap_or(Transport::Udp);
        let sent = match t {
            Transport::Udp => self
                .transports
                .udp_for(&dest)
                .is_some_and(|s| send_udp(&s, dest, bytes).is_ok()),
            _ => self
                .transports
                .conn_to(t, dest)
                .is_some_and(|c| c.send(bytes)),
        };
        if !sent {
            self.metrics.message_dropped("stray_response");
        }
    }

    /// A retransmitted request of a lingering transaction gets the last response again.
    fn absorb_lingering(&self, key: &ServerKey) {
        let resend = self
            .lingering
            .get(key)
            .and_then(|l| Some((l.response.clone()?, l.reply.clone(), l.dest)));
        if let Some((bytes, reply, dest)) = resend {
            let _ = send_reply(&reply, dest, bytes);
        }
    }

    /// Drops lingering transactions whose time is up.
    pub fn sweep_lingering(&self, now: Instant) {
        self.lingering.retain(|_, l| l.until > now);
    }

    fn new_transaction(self: &Arc<Self>, key: ServerKey, inbound: Inbound) {
        let msg = &inbound.msg;
        let initial_invite = msg.method() == Some(&Method::Invite) && msg.to_tag().is_none();
        let out_of_dialog =
            msg.to_tag().is_none() && !matches!(msg.method(), Some(Method::Ack | Method::Cancel));
        if out_of_dialog && self.is_draining() {
            Metrics::count(&self.metrics.overload_rejections, "draining");
            self.respond_stateless(&inbound, 503, "Service Unavailable", &["Retry-After: 30"]);
            return;
        }
        if self.server_txns.len() >= self.settings.limits.max_transactions {
            Metrics::count(&self.metrics.overload_rejections, "transactions");
            self.respond_stateless(&inbound, 503, "Service Unavailable", &["Retry-After: 5"]);
            return;
        }
        if initial_invite && msg.defect().is_none() && !self.admit_invite() {
            Metrics::count(&self.metrics.overload_rejections, "invite_rate");
            self.respond_stateless(&inbound, 503, "Service Unavailable", &["Retry-After: 1"]);
            return;
        }
        let Some(sup) = self.tx_supervisor.get() else {
            return;
        };
        match ractor::ActorRuntime::spawn_linked_instant(
            None,
            TransactionActor,
            (self.clone(), key.clone()),
            sup.clone(),
        ) {
            Ok((actor, _)) => {
                self.metrics.transactions.inc();
                self.server_txns.insert(key, actor.clone());
                let _ = actor.send_message(TxMsg::Request(Box::new(inbound)));
            }
            Err(e) => {
                tracing::error!(event = "transaction_spawn_failed", error = %e);
                self.respond_stateless(&inbound, 500, "Server Internal Error", &[]);
            }
        }
    }

    fn admit_invite(&self) -> bool {
        let now = Instant::now();
        let admitted = match self.invite_bucket.lock() {
            Ok(mut b) => b.take(now),
            Err(_) => true,
        };
        if let Ok(mut o) = self.overload.lock() {
            if admitted {
                o.admitted += 1;
            } else {
                o.rejected += 1;
                match &mut o.since {
                    Some((_, last)) => *last = now,
                    None => {
                        o.since = Some((now, now));
                        o.rejected = 1;
                        o.admitted = 0;
                        tracing::warn!(
                            event = "overload_started",
                            invite_rate = self.invite_rate()
                        );
                    }
                }
            }
        }
        self.end_overload_if_quiet(now);
        admitted
    }

    /// Ends an overload episode after a second without a rejection (called on every
    /// INVITE and by the once-a-second sweeper).
    pub fn end_overload_if_quiet(&self, now: Instant) {
        let Ok(mut o) = self.overload.lock() else {
            return;
        };
        if let Some((start, last)) = o.since {
            if now.saturating_duration_since(last) >= std::time::Duration::from_secs(1) {
                tracing::info!(
                    event = "overload_ended",
                    seconds = now.saturating_duration_since(start).as_secs_f64(),
                    rejected = o.rejected,
                    admitted = o.admitted,
                );
                *o = OverloadEpisode::default();
            }
        }
    }

    /// The INVITE rate in force (0 = off).
    pub fn invite_rate(&self) -> u32 {
        self.invite_bucket.lock().map_or(0, |b| b.rate as u32)
    }

    /// Changes the INVITE rate at runtime (config reload).
    pub fn set_invite_rate(&self, rate: u32) {
        if let Ok(mut b) = self.invite_bucket.lock() {
            *b = TokenBucket::new(rate);
        }
    }

    /// The flow token of the flow a request arrived on, when requests can be sent back over
    /// it: its connection, or its UDP source when the sender asked for rport (behind NAT).
    pub fn flow_token_for(&self, inbound: &Inbound) -> Option<String> {
        match &inbound.reply {
            ReplyPath::Stream(c) => Some(self.flows.token(c.transport, c.id, c.peer)),
            ReplyPath::Udp(_) => {
                let rport = matches!(inbound.msg.top_via(), Some(Ok(v)) if v.rport().is_some());
                rport.then(|| self.flows.token(Transport::Udp, 0, inbound.source))
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

    /// Where a flow token leads: the target, and the connection for a stream flow.
    /// `Err(403)` for a token that is not ours, `Err(430)` for a flow that is gone.
    pub fn flow_target(
        &self,
        token: &str,
    ) -> Result<
        (
            super::transport::Target,
            Option<super::transport::ConnHandle>,
        ),
        u16,
    > {
        let flow = self.flows.verify(token).map_err(|_| 403u16)?;
        if flow.epoch != self.flows.epoch() {
            return Err(430);
        }
        let target = super::transport::Target {
            transport: flow.transport,
            addr: flow.peer,
        };
        if flow.transport == Transport::Udp {
            return Ok((target, None));
        }
        match self.transports.conn_by_id(flow.conn) {
            Some(c) if c.peer == flow.peer => Ok((target, Some(c))),
            _ => Err(430),
        }
    }

    /// Resolves an upstream host (RFC 3263); for a TLS one, remembers the host as the name
    /// its certificate must carry.
    pub async fn locate(&self, hp: &HostPort) -> Option<super::transport::Target> {
        let target = self.locator.locate(hp).await?;
        if target.transport == Transport::Tls
            && self
                .tls_names
                .get(&target.addr)
                .is_none_or(|n| **n != *hp.host)
        {
            self.tls_names.insert(target.addr, hp.host.as_str().into());
        }
        Some(target)
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
                tracing::info!(event = "tls_reloaded", trigger = why);
                "ok"
            }
            Err(e) => {
                tracing::error!(event = "tls_reload_failed", trigger = why, key = %e.key, problem = %e.problem);
                "error"
            }
        };
        Metrics::count(&self.metrics.tls_reloads, outcome);
    }

    /// A connection that transactions may be using closed: each transaction with a client
    /// branch hears of it and checks whether the branch used that connection.
    pub fn connection_lost(&self, conn: u64) {
        let mut told = HashSet::new();
        for e in self.client_txns.iter() {
            if told.insert(e.value().get_id()) {
                let _ = e.value().send_message(TxMsg::ConnectionLost(conn));
            }
        }
    }

    /// A place for one more TLS handshake, if the cap allows.
    pub fn tls_handshake_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.tls_handshakes.clone().try_acquire_owned().ok()
    }

    /// Stops taking new dialogs: new out-of-dialog requests get 503 from now on.
    pub fn start_drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// ACK that matches no server transaction: the ACK for a 2xx, forwarded statelessly
    /// (RFC 3261 section 16.11) with a branch that is the same for its retransmissions. An
    /// ACK for a response this proxy generated statelessly carries our To tag: absorbed.
    pub fn dispatch_ack_stateless(self: &Arc<Self>, inbound: Inbound) {
        let msg = &inbound.msg;
        if msg
            .to_tag()
            .is_some_and(|t| t == proxy::local_tag(msg).as_bytes())
        {
            return;
        }
        let token = self.flow_token_for(&inbound);
        let rx = Received {
            msg,
            transport: inbound.transport,
            source: inbound.source,
            from_upstream: self.upstreams.is_upstream(inbound.source.ip()),
            flow_token: token.as_deref(),
        };
        let plan = match proxy::decide(rx, &self.identity, &self.router) {
            Decision::Forward(plan) => plan,
            // An ACK is never answered: what would have been the response is the reason.
            Decision::Respond(r) => {
                tracing::debug!(event = "ack_not_routable", source = %inbound.source, code = r.code, reason = %r.reason);
                self.metrics.message_dropped("ack_not_routable");
                return;
            }
            Decision::Drop(why) => {
                tracing::debug!(event = "ack_not_routable", source = %inbound.source, reason = why);
                self.metrics.message_dropped("ack_not_routable");
                return;
            }
        };
        let received_branch = msg
            .top_via()
            .and_then(Result::ok)
            .and_then(|v| v.branch().map(|b| b.as_bytes().to_vec()))
            .unwrap_or_default();
        let branch = proxy::stateless_branch(plan.loop_hash, &received_branch);
        let hp = match &plan.destination {
            proxy::Destination::Pair(i) => self.upstreams.active_member(*i).cloned(),
            proxy::Destination::Host(hp) => Some(hp.clone()),
            proxy::Destination::Flow(token) => {
                // An ACK for a 2xx toward a phone: over its flow, if it is still there.
                if let Ok(target) = self.flow_target(token) {
                    let bytes = plan.build(msg, &self.identity, target.0.transport, &branch);
                    let _ = match target.1 {
                        Some(conn) => conn.send(bytes),
                        None => self
                            .transports
                            .udp_for(&target.0.addr)
                            .is_some_and(|s| send_udp(&s, target.0.addr, bytes).is_ok()),
                    };
                }
                return;
            }
        };
        let Some(hp) = hp else {
            return;
        };
        if let (Some(addr), Transport::Udp) = (hp.socket_addr(), hp.transport) {
            let bytes = plan.build(msg, &self.identity, Transport::Udp, &branch);
            match self.transports.udp_for(&addr) {
                Some(sock) => {
                    let _ = send_udp(&sock, addr, bytes);
                }
                None => self.metrics.message_dropped("no_transport"),
            }
            return;
        }
        let core = self.clone();
        tokio::spawn(async move {
            if let Some(target) = core.locate(&hp).await {
                let bytes = plan.build(&inbound.msg, &core.identity, target.transport, &branch);
                let _ = super::connection::send(&core, target, bytes).await;
            }
        });
    }

    /// Answers a request without a transaction (errors found before one exists).
    pub fn respond_stateless(&self, inbound: &Inbound, code: u16, reason: &str, extra: &[&str]) {
        let tag = proxy::local_tag(&inbound.msg);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let bytes = builder::response(&inbound.msg, code, reason, &tag, &extra);
        let dest = response_destination(&inbound.msg, inbound.source, &inbound.reply);
        if send_reply(&inbound.reply, dest, bytes).is_ok() {
            self.metrics.response(code, "local");
        }
    }

    /// Forgets every table entry of a transaction actor that failed.
    pub fn forget_transaction(&self, id: ractor::ActorId) {
        self.server_txns.retain(|_, v| v.get_id() != id);
        self.client_txns.retain(|_, v| v.get_id() != id);
    }
}

fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_broadcast() || v4.is_multicast() || v4.is_unspecified()),
        IpAddr::V6(v6) => !(v6.is_multicast() || v6.is_unspecified()),
    }
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

impl TransactionTables for Core {
    fn has_server(&self, key: &ServerKey) -> bool {
        self.server_txns.contains_key(key)
    }

    fn has_client(&self, key: &ClientKey) -> bool {
        self.client_txns.contains_key(key)
    }

    fn is_lingering(&self, key: &ServerKey, now: Instant) -> bool {
        let alive = match self.lingering.get(key) {
            None => return false,
            Some(l) => l.until > now,
        };
        if !alive {
            self.lingering.remove(key);
        }
        alive
    }

    fn is_probe(&self, key: &ClientKey) -> bool {
        key.branch().starts_with(PROBE_BRANCH_PREFIX)
    }
}

/// What is kept of a transaction after its actor ended (see [`Core::lingering`]).
#[derive(Debug)]
pub struct Lingering {
    /// The final response to resend on a retransmitted request (non-INVITE).
    pub response: Option<bytes::Bytes>,
    /// Where it goes.
    pub reply: ReplyPath,
    /// Its destination.
    pub dest: SocketAddr,
    /// When the transaction's last timer would have fired.
    pub until: Instant,
}

/// Admits at most `rate` per second with a burst of a tenth of a second.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A bucket for `rate` per second; 0 admits everything.
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate);
        let capacity = (rate / 10.0).max(1.0);
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            last: None,
        }
    }

    /// Takes a token if one is there.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_bucket_rate_is_accurate() {
        let mut b = TokenBucket::new(100);
        let t0 = Instant::now();
        let mut admitted = 0;
        // Offer 300/s for 20 s.
        for i in 0..6000u64 {
            if b.take(t0 + Duration::from_micros(i * 3333)) {
                admitted += 1;
            }
        }
        assert!((1990..=2020).contains(&admitted), "{admitted}");
        assert!(TokenBucket::new(0).take(t0));
    }
}
