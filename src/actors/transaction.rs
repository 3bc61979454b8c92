//! One actor per server transaction: the shell that drives its response context.
//!
//! Every rule of RFC 3261 section 16 about the transaction (100 Trying, relaying, 503 -> 500,
//! CANCEL, Timer C, failover to the other pair member, 430) lives in the sans-IO
//! [`ResponseContext`]. This actor owns what the context must not: the reply path to the
//! client, the branch's connection, the tables, DNS, timers and metrics. It feeds the
//! context messages and time and performs its actions, and lives until the context is done
//! or only absorbing retransmissions is left (then a table entry lingers in its place).
//!
//! The actor has no task of its own ([`super::cell`]): the thread that receives one of its
//! messages handles it there and then, its timer is on the thread's wheel, and what it
//! must wait for (a DNS lookup, a connection to open) runs as a task that hands the
//! outcome back ([`Resumed`]). Tens of thousands run at once, and a task each (spawned,
//! woken through a mailbox, polled, dropped) cost as much as the transaction's own work
//! (issue 18); ractor's actors cost more still (issue 17). Supervision is kept: a panic in
//! one transaction ends that transaction only; it is logged (`transaction_failed`) and
//! counted, its table entries go with its state, and every other transaction carries on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::metrics::KindLabels;
use crate::sip::builder;
use crate::sip::proxy::response_context::{Action, Evidence, Origin, ResponseContext};
use crate::sip::proxy::{self, Decision, Received};
use crate::sip::transaction::{ClientKey, ServerKey};

use super::cell::{Behaviour, Cell, Me, Step, Suspension};
use super::connection::{self, ConnOrUdp};
use super::core::Core;
use super::live::Live;
use super::stateless::forward_ack;
use super::tables::{Connect, Lingering, Resumed, TxHandle, TxMsg};
use super::transport::{
    response_destination, send_reply, send_udp, ConnHandle, Inbound, ReplyPath, Target,
};

/// Where the current branch goes: what the shell needs to send on it.
struct Link {
    key: ClientKey,
    target: Target,
    conn: Option<ConnHandle>,
}

/// State of one transaction.
pub struct TxState {
    core: Arc<Core>,
    /// The configuration this transaction started on, kept to its end (a reload does not
    /// change the pairs, timers or upstreams under it).
    live: Arc<Live>,
    key: ServerKey,
    /// Its id (what its table entries carry).
    id: u64,
    /// Boxed: the context is 1.5 KiB, and a transaction's state is moved a few times
    /// before it settles in its cell (each move a copy of it all).
    ctx: Option<Box<ResponseContext>>,
    /// How responses reach the client, and where.
    reply: Option<ReplyPath>,
    dest: SocketAddr,
    /// When the request arrived (latency).
    received: Instant,
    /// The branches: the current one, and any given up that are still ours.
    links: Vec<Link>,
    /// Client keys this transaction put in the table (removed when it ends).
    keys: Vec<ClientKey>,
    /// When the response being relayed arrived, while its actions are performed (latency;
    /// kept over a suspension).
    relayed_from: Option<Instant>,
}

/// Starts the transaction of `key` for its first request (see the module documentation).
pub fn spawn(core: &Arc<Core>, key: ServerKey, first: Box<Inbound>) {
    let id = TxHandle::next_id();
    core.metrics.transactions.inc();
    let cell = Cell::new(TxState {
        live: core.snapshot(),
        core: core.clone(),
        key: key.clone(),
        id,
        ctx: None,
        reply: None,
        dest: SocketAddr::from(([0, 0, 0, 0], 0)),
        received: Instant::now(),
        links: Vec::new(),
        keys: Vec::new(),
        relayed_from: None,
    });
    let handle = TxHandle::new(id, cell);
    core.txns.server.insert(key, handle.clone());
    let _ = handle.send(TxMsg::Request(first));
}

impl Behaviour for TxState {
    type Msg = TxMsg;

    fn timer() -> TxMsg {
        TxMsg::Timer
    }

    fn handle(&mut self, msg: TxMsg, me: &Me<'_, Self>) -> Step<TxMsg> {
        self.on_message(msg, me)
    }

    /// A panic ends this transaction only; its state, dropped next, takes its table
    /// entries and its count with it (`Drop for TxState`).
    fn failed(&mut self, panic: &(dyn std::any::Any + Send)) {
        self.core
            .metrics
            .actor_failures
            .get_or_create(&KindLabels {
                kind: "transaction",
            })
            .inc();
        let error = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(event = "transaction_failed", id = self.id, %error);
    }
}

/// How far [`TxState::open_branch`] got without waiting.
enum Opened {
    /// The request was sent (true) or could not be (false).
    Sent(bool),
    /// The transaction was answered meanwhile: nothing to send.
    Nothing,
    /// A connection must be opened first; these are the bytes to send on it.
    Connect(Bytes),
}

/// However the transaction ends (done, handed to a lingering entry, or failed), its table
/// entries go and it is no longer counted.
impl Drop for TxState {
    fn drop(&mut self) {
        let id = self.id;
        let txns = &self.core.txns;
        txns.server.remove_if(&self.key, |_, v| v.id() == id);
        for k in &self.keys {
            txns.client.remove_if(k, |_, v| v.id() == id);
        }
        self.core.metrics.transactions.dec();
    }
}

impl TxState {
    /// One message: feeds the context, performs its actions, and says what comes next.
    fn on_message(&mut self, msg: TxMsg, me: &Me<'_, Self>) -> Step<TxMsg> {
        let now = Instant::now();
        match msg {
            TxMsg::Request(inbound) if self.ctx.is_none() => {
                self.relayed_from = None;
                self.start(*inbound, now);
            }
            TxMsg::Request(inbound) => {
                let stray_ack = self
                    .ctx
                    .as_mut()
                    .is_some_and(|c| c.handle_retransmission(&inbound.msg, now));
                if stray_ack {
                    // An ACK for a 2xx that reused the INVITE's branch: not ours to absorb.
                    forward_ack(&self.core, inbound);
                }
            }
            TxMsg::Cancel(inbound) => self.on_cancel(&inbound, now),
            TxMsg::Response(inbound, key) => {
                self.relayed_from = Some(inbound.received);
                if let Some(c) = &mut self.ctx {
                    c.handle_response(&key, &inbound.msg, self.live.upstreams.as_ref(), now);
                }
            }
            TxMsg::Timer => {
                if let Some(c) = &mut self.ctx {
                    c.handle_timeout(self.live.upstreams.as_ref(), now);
                }
            }
            TxMsg::Resumed(r) => {
                if let Some(s) = self.resumed(*r, me, now) {
                    return Step::Suspend(s);
                }
            }
            TxMsg::ConnectionLost(conn) => {
                if let Some(s) = self.on_connection_lost(conn, now) {
                    return Step::Suspend(s);
                }
            }
            TxMsg::Unreachable(dest) => self.on_unreachable(*dest, now),
        }
        if let Some(s) = self.drive(me, now) {
            return Step::Suspend(s);
        }
        self.relayed_from = None;
        let Some(ctx) = &self.ctx else {
            return Step::Wait;
        };
        if ctx.is_done() {
            return Step::Done;
        }
        if let Some(linger) = ctx.poll_linger(now) {
            // What is left is absorbing retransmissions: a table entry does that.
            if let Some(reply) = self.reply.clone() {
                self.core.txns.lingering.insert(
                    self.key.clone(),
                    Box::new(Lingering {
                        response: linger.response,
                        reply,
                        dest: self.dest,
                        until: linger.until,
                    }),
                );
                return Step::Done;
            }
        }
        ctx.poll_timeout().map_or(Step::Wait, Step::WakeAt)
    }

    fn start(&mut self, inbound: Inbound, now: Instant) {
        #[cfg(feature = "fault-injection")]
        if inbound.msg.headers().iter().any(|h| {
            inbound
                .msg
                .slice(h.line.clone())
                .starts_with(b"X-Sippool-Fault: panic-transaction")
        }) {
            super::fault::injected("transaction");
        }
        let core = self.core.clone();
        let live = self.live.clone();
        self.dest = response_destination(&inbound.msg, inbound.source, &inbound.reply);
        let token = core.flow_token_for(&inbound);
        let rx = Received {
            msg: &inbound.msg,
            transport: inbound.transport,
            source: inbound.source,
            from_upstream: live.upstreams.is_upstream(inbound.source.ip()),
            local: inbound.reply.through().local,
            flow_token: token.as_deref(),
        };
        let decision = core.decide(&live, rx);
        match &decision {
            Decision::Drop(reason) => core.metrics.message_dropped(reason_label(reason)),
            Decision::Forward(plan) if plan.issues_flow_token() => core.flow_issued(&inbound.reply),
            _ => {}
        }
        let reliable = inbound.transport.is_reliable();
        let Inbound {
            msg,
            reply,
            received,
            ..
        } = inbound;
        self.reply = Some(reply);
        self.received = received;
        let settings = &live.settings;
        let relay_timeout = settings
            .pool
            .as_ref()
            .map_or(proxy::response_context::DEFAULT_RELAY_TIMEOUT, |p| {
                p.relay_timeout
            });
        let ctx = self.ctx.insert(Box::new(
            ResponseContext::new(msg, reliable, settings.timers, settings.failover_timeout)
                .with_relay_timeout(relay_timeout),
        ));
        ctx.handle_request(decision, live.upstreams.as_ref(), now);
    }

    /// The CANCEL itself is answered at once (RFC 3261 section 16.10); the context decides
    /// what becomes of the branch.
    fn on_cancel(&mut self, cancel: &Inbound, now: Instant) {
        let tag = proxy::local_tag(&cancel.msg);
        let ok = builder::response(&cancel.msg, 200, "OK", &tag, &[]);
        let dest = response_destination(&cancel.msg, cancel.source, &cancel.reply);
        if send_reply(&cancel.reply, dest, ok).is_ok() {
            self.core.metrics.response(200, Origin::Local);
        }
        if let Some(c) = &mut self.ctx {
            c.handle_cancel(now);
        }
    }

    /// The connection the branch used closed before a final response came back. One we
    /// opened toward a server is reopened and the request sent again (the server matches
    /// it to its transaction by branch); when that fails, the context treats it as any
    /// transport error. A phone's flow cannot be reopened from here (430).
    fn on_connection_lost(&mut self, conn: u64, now: Instant) -> Option<Suspension<TxMsg>> {
        let ctx = self.ctx.as_mut()?;
        let link = self
            .links
            .iter_mut()
            .find(|l| l.conn.as_ref().is_some_and(|c| c.id == conn))?;
        let lost = link.conn.take()?;
        if ctx.branch_key() != Some(&link.key) {
            // A branch given up: a new connection is opened if it must send again.
            return None;
        }
        let request = ctx.branch_request_in_progress()?;
        if lost.outbound {
            return match send_now(&self.core, link, request) {
                Ok(true) => {
                    reconnected(&self.core, link);
                    None
                }
                Ok(false) => {
                    ctx.handle_transport_error(false, self.live.upstreams.as_ref(), now);
                    None
                }
                Err(bytes) => Some(connect(&self.core, link, bytes, Connect::Reopen)),
            };
        }
        ctx.handle_transport_error(true, self.live.upstreams.as_ref(), now);
        None
    }

    /// The network refused a datagram to `dest`: when the current branch went there by
    /// UDP and still waits, it failed as any transport error does (the other member, at
    /// once).
    fn on_unreachable(&mut self, dest: SocketAddr, now: Instant) {
        let Some(ctx) = &mut self.ctx else { return };
        let current = self.links.iter().find(|l| {
            Some(&l.key) == ctx.branch_key()
                && l.target.addr == dest
                && l.target.transport == crate::sip::transport::Transport::Udp
        });
        if current.is_some() {
            ctx.handle_transport_error(false, self.live.upstreams.as_ref(), now);
        }
    }

    /// Performs the context's actions until it has none left, or until one must wait (a
    /// lookup, a connection): the rest are performed when its outcome comes back.
    fn drive(&mut self, me: &Me<'_, Self>, now: Instant) -> Option<Suspension<TxMsg>> {
        let core = self.core.clone();
        let live = self.live.clone();
        loop {
            let action = self.ctx.as_mut().and_then(|c| c.poll_action())?;
            match action {
                Action::ToClient {
                    code,
                    bytes,
                    origin,
                } => {
                    let Some(reply) = &self.reply else { continue };
                    if send_reply(reply, self.dest, bytes).is_ok() {
                        core.metrics.response(code, origin);
                        if let (proxy::response_context::Origin::Relayed, Some(at)) =
                            (origin, self.relayed_from)
                        {
                            core.metrics.latency.observe(at.elapsed().as_secs_f64());
                        }
                    } else {
                        core.metrics.message_dropped("response_not_sent");
                    }
                }
                Action::ResendToClient(bytes) => {
                    if let Some(reply) = &self.reply {
                        let _ = send_reply(reply, self.dest, bytes);
                    }
                }
                Action::Locate(hp) => {
                    // An address or a cached answer needs no lookup; a lookup is waited for.
                    let Some(target) = core.locate_now(&live, &hp) else {
                        let (core, live) = (core.clone(), live.clone());
                        return Some(Box::pin(async move {
                            let found = core.locate(&live, &hp).await;
                            if found.is_none() {
                                tracing::warn!(event = "host_not_resolved", host = %hp.host);
                            }
                            TxMsg::Resumed(Box::new(Resumed::Located(found)))
                        }));
                    };
                    let opened = self.open_branch(target, None, me, now);
                    if let Some(s) = self.branch_sent(opened, false, now) {
                        return Some(s);
                    }
                }
                Action::Flow(flow) => {
                    let opened = match core.flow_target(&flow) {
                        Some((target, conn)) => self.open_branch(target, conn, me, now),
                        None => Opened::Sent(false),
                    };
                    if let Some(s) = self.branch_sent(opened, true, now) {
                        return Some(s);
                    }
                }
                Action::ToBranch { key, bytes } => {
                    if let Some(link) = self.links.iter_mut().find(|l| l.key == key) {
                        if let Err(bytes) = send_now(&core, link, bytes) {
                            return Some(connect(&core, link, bytes, Connect::Again));
                        }
                    }
                }
                Action::Track(key) => {
                    if let Some(handle) = self.address(me) {
                        core.txns.client.insert(key.clone(), handle);
                        self.keys.push(key);
                    }
                }
                Action::Ghost(outcome) => {
                    core.metrics
                        .ghost_branches
                        .get_or_create(&crate::metrics::OutcomeLabels {
                            outcome: outcome.as_str(),
                        })
                        .inc();
                    let call_id = self
                        .ctx
                        .as_ref()
                        .and_then(|c| c.request().call_id())
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default()
                        .into_owned();
                    tracing::info!(event = "ghost_branch", outcome = outcome.as_str(), %call_id);
                }
                Action::BranchGone(key) => {
                    core.txns.client.remove(&key);
                    self.links.retain(|l| l.key != key);
                    self.keys.retain(|k| *k != key);
                }
                Action::RelayFailed(to) => core.relay_failed(to.addr),
                Action::Evidence {
                    pair,
                    member,
                    evidence,
                } => match evidence {
                    Evidence::Unanswered { sent_at } => {
                        live.upstreams.report_unanswered(pair, member, sent_at)
                    }
                    Evidence::Suspect => live.upstreams.suspect(pair, member),
                    Evidence::Responded { rtt } => live.upstreams.observe_rtt(pair, member, rtt),
                    Evidence::Served => live.upstreams.transaction_outcome(pair, member, true),
                    Evidence::Failed => live.upstreams.transaction_outcome(pair, member, false),
                },
                Action::Retried(hp) => {
                    core.metrics.retries.inc();
                    tracing::info!(event = "transaction_retried", to = %hp, key = %self.key);
                }
                Action::UpstreamTimeout => {
                    core.metrics.upstream_timeouts.inc();
                }
            }
        }
    }

    /// This transaction's address, for a table.
    fn address(&self, me: &Me<'_, Self>) -> Option<TxHandle> {
        Some(TxHandle::new(self.id, me.cell()?))
    }

    /// What the transaction waited for came back: the branch is opened on the located
    /// server, or the connection it waited for is noted and the branch goes on.
    fn resumed(
        &mut self,
        r: Resumed,
        me: &Me<'_, Self>,
        now: Instant,
    ) -> Option<Suspension<TxMsg>> {
        match r {
            Resumed::Located(Some(target)) => {
                let opened = self.open_branch(target, None, me, now);
                self.branch_sent(opened, false, now)
            }
            Resumed::Located(None) => {
                self.branch_failed(false, now);
                None
            }
            Resumed::Connected { key, conn, why } => {
                let ok = conn.is_some();
                let link = self.links.iter_mut().find(|l| l.key == key);
                if let Some(link) = link {
                    if let Some(Some(c)) = conn {
                        link.conn = Some(c);
                    }
                    if ok && why == Connect::Reopen {
                        reconnected(&self.core, link);
                    }
                }
                match why {
                    Connect::First { flow } => {
                        if ok {
                            self.forwarded();
                        } else {
                            self.branch_failed(flow, now);
                        }
                    }
                    Connect::Reopen if !ok => {
                        if let Some(c) = &mut self.ctx {
                            c.handle_transport_error(false, self.live.upstreams.as_ref(), now);
                        }
                    }
                    Connect::Again | Connect::Reopen => {}
                }
                None
            }
        }
    }

    /// Starts the context's branch toward `target` (over `conn` when a flow names one) and
    /// sends the request when that needs no wait ([`Self::branch_sent`] finishes).
    fn open_branch(
        &mut self,
        target: Target,
        conn: Option<ConnHandle>,
        me: &Me<'_, Self>,
        now: Instant,
    ) -> Opened {
        let Some(handle) = self.address(me) else {
            return Opened::Sent(false);
        };
        let Some(ctx) = &mut self.ctx else {
            return Opened::Sent(false);
        };
        // The listener it leaves by: a flow's own, else the one routing picks.
        let through = match &conn {
            Some(c) if c.local.is_some() => {
                super::transport::ReplyPath::Stream(c.clone()).through()
            }
            _ => self.core.through(&self.live, target),
        };
        let Some((key, bytes)) = ctx.start_branch(
            through,
            &self.live.identity,
            self.live.upstreams.as_ref(),
            now,
        ) else {
            return Opened::Nothing;
        };
        self.core.txns.client.insert(key.clone(), handle);
        self.keys.push(key.clone());
        if self.links.capacity() == 0 {
            // Most transactions have one branch: no room for four.
            self.links.reserve_exact(1);
        }
        self.links.push(Link { key, target, conn });
        match self
            .links
            .last()
            .map(|link| send_now(&self.core, link, bytes))
        {
            Some(Ok(sent)) => Opened::Sent(sent),
            Some(Err(bytes)) => Opened::Connect(bytes),
            None => Opened::Sent(false),
        }
    }

    /// Finishes sending a branch's first request ([`Self::open_branch`]): notes the
    /// latency, tells the context when it failed, or opens the connection it needs (a
    /// suspension). `flow`: the branch goes over a phone's flow.
    fn branch_sent(
        &mut self,
        opened: Opened,
        flow: bool,
        now: Instant,
    ) -> Option<Suspension<TxMsg>> {
        match opened {
            // Answered meanwhile: nothing to send, nothing failed, nothing forwarded.
            Opened::Nothing => {}
            Opened::Sent(true) => self.forwarded(),
            Opened::Sent(false) => self.branch_failed(flow, now),
            Opened::Connect(bytes) => {
                let link = self.links.last_mut()?;
                return Some(connect(&self.core, link, bytes, Connect::First { flow }));
            }
        }
        None
    }

    /// The request went out on its branch: the forwarding latency.
    fn forwarded(&self) {
        self.core
            .metrics
            .latency
            .observe(self.received.elapsed().as_secs_f64());
    }

    /// The branch could not be started or its first send failed.
    fn branch_failed(&mut self, flow: bool, now: Instant) {
        if let Some(c) = &mut self.ctx {
            if flow {
                c.handle_flow_refused(now);
            } else {
                c.handle_branch_failed(self.live.upstreams.as_ref(), now);
            }
        }
    }
}

/// Opens (or finds) a connection toward the branch's target and sends on it, as a
/// suspension of the transaction: the outcome comes back as [`Resumed::Connected`].
fn connect(core: &Arc<Core>, b: &Link, bytes: Bytes, why: Connect) -> Suspension<TxMsg> {
    let core = core.clone();
    let (key, target) = (b.key.clone(), b.target);
    Box::pin(async move {
        let conn = match connection::send(&core, target, bytes).await {
            Ok(ConnOrUdp::Conn(h)) => Some(Some(h)),
            Ok(ConnOrUdp::Udp) => Some(None),
            Err(e) => {
                tracing::info!(event = "upstream_send_failed", target = %target.addr, error = ?e);
                None
            }
        };
        TxMsg::Resumed(Box::new(Resumed::Connected { key, conn, why }))
    })
}

/// The branch's connection was reopened and its request sent again.
fn reconnected(core: &Core, link: &Link) {
    core.metrics.reconnects.inc();
    tracing::info!(event = "upstream_reconnected", target = %link.target.addr, branch = %link.key.branch());
}

/// Sends on a branch without waiting: over its connection, or by UDP. `Err` gives the
/// bytes back when a connection must be opened first.
fn send_now(core: &Core, b: &Link, bytes: Bytes) -> Result<bool, Bytes> {
    if let Some(c) = &b.conn {
        if c.send(bytes.clone()) {
            return Ok(true);
        }
    }
    if b.target.transport != crate::sip::transport::Transport::Udp {
        return Err(bytes);
    }
    let server = |ip| core.live().upstreams.is_upstream(ip);
    Ok(core
        .transports
        .udp_toward(&b.target.addr, server)
        .is_some_and(|sock| send_udp(&sock, b.target.addr, bytes).is_ok()))
}

fn reason_label(reason: &'static str) -> &'static str {
    match reason {
        "no Via" => "no_via",
        _ => "unanswerable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every transaction in flight is one cell: its state, and beside it only its
    /// mailbox, its locks and its timer's place (a task of its own cost 1-2 KiB more).
    #[test]
    fn a_transaction_costs_little_more_than_its_state() {
        let state = std::mem::size_of::<TxState>();
        let cell = std::mem::size_of::<Cell<TxState>>();
        assert!(cell - state <= 160, "{cell} bytes for a state of {state}");
    }
}
