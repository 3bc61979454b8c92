//! One actor per server transaction: the shell that drives its response context.
//!
//! Every rule of RFC 3261 section 16 about the transaction (100 Trying, relaying, 503 -> 500,
//! CANCEL, Timer C, failover to the other pair member, 430) lives in the sans-IO
//! [`ResponseContext`]. This actor owns what the context must not: the reply path to the
//! client, the branch's connection, the tables, DNS, timers and metrics. It feeds the
//! context messages and time and performs its actions, and lives until the context is done
//! or only absorbing retransmissions is left (then a table entry lingers in its place).
//!
//! The actor is a plain task with one mailbox ([`TxHandle`]) and one timer, not a ractor
//! actor: tens of thousands run at once, and ractor's four channels, its supervision
//! mailbox and its delayed-message task per timer cost more than the transaction itself
//! (issue 17). Supervision is kept: a panic in one transaction ends that task only; it is
//! logged (`transaction_failed`) and counted, its table entries go with its state, and
//! every other transaction carries on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;

use crate::metrics::KindLabels;
use crate::sip::builder;
use crate::sip::proxy::response_context::{Action, Evidence, Origin, ResponseContext};
use crate::sip::proxy::{self, Decision, Received};
use crate::sip::transaction::{ClientKey, ServerKey};

use super::connection::{self, ConnOrUdp};
use super::core::Core;
use super::live::Live;
use super::mailbox::Receiver;
use super::stateless::forward_ack;
use super::tables::{Lingering, TxHandle, TxMsg};
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
    /// Its own mailbox's address (what the client table points at for its branches).
    handle: TxHandle,
    ctx: Option<ResponseContext>,
    /// How responses reach the client, and where.
    reply: Option<ReplyPath>,
    dest: SocketAddr,
    /// When the request arrived (latency).
    received: Instant,
    /// The branches: the current one, and any given up that are still ours.
    links: Vec<Link>,
    /// Client keys this transaction put in the table (removed when it ends).
    keys: Vec<ClientKey>,
}

/// Starts the transaction of `key` for its first request, as a task of its own fed by a
/// mailbox that the tables point at (see the module documentation).
pub fn spawn(core: &Arc<Core>, key: ServerKey, first: Box<Inbound>) {
    let (handle, mailbox) = TxHandle::new();
    core.metrics.transactions.inc();
    core.txns.server.insert(key.clone(), handle.clone());
    let _ = handle.send(TxMsg::Request(first));
    let id = handle.id();
    // Boxed: an async fn's future keeps its arguments apart from its locals, so a state
    // passed inline would be carried twice by every transaction's task (4.3 KiB instead
    // of 0.7 KiB plus the state).
    let state = Box::new(TxState {
        live: core.snapshot(),
        core: core.clone(),
        key,
        handle,
        ctx: None,
        reply: None,
        dest: SocketAddr::from(([0, 0, 0, 0], 0)),
        received: Instant::now(),
        links: Vec::new(),
        keys: Vec::new(),
    });
    let core = core.clone();
    tokio::spawn(async move {
        let outcome = AssertUnwindSafe(run(state, mailbox)).catch_unwind().await;
        // A panic ends this transaction only; its state, dropped with the failed future,
        // has taken its table entries and its count with it (`Drop for TxState`).
        if let Err(panic) = outcome {
            core.metrics
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
            tracing::error!(event = "transaction_failed", id, %error);
        }
    });
}

/// The transaction's life: one message at a time from its mailbox, and its one timer (the
/// earliest instant its context asks to be woken), until it is done or only absorbing
/// retransmissions is left.
async fn run(mut state: Box<TxState>, mut mailbox: Receiver<TxMsg>) {
    let timer = tokio::time::sleep(std::time::Duration::ZERO);
    tokio::pin!(timer);
    let mut armed = false;
    loop {
        let msg = tokio::select! {
            biased;
            m = mailbox.recv() => m,
            // Re-armed (or not) below, from what the context asks after this message.
            () = &mut timer, if armed => TxMsg::Timer,
        };
        match state.handle(msg).await {
            Next::Done => return,
            Next::WakeAt(at) => {
                timer.as_mut().reset(tokio::time::Instant::from_std(at));
                armed = true;
            }
            Next::Wait => armed = false,
        }
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

/// What a transaction does after a message.
enum Next {
    /// Ends (done, or a lingering entry absorbs what is left).
    Done,
    /// Waits for a message, or for its timer at this instant.
    WakeAt(Instant),
    /// Waits for a message.
    Wait,
}

/// However the transaction ends (done, handed to a lingering entry, or failed), its table
/// entries go and it is no longer counted.
impl Drop for TxState {
    fn drop(&mut self) {
        let id = self.handle.id();
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
    async fn handle(&mut self, msg: TxMsg) -> Next {
        let now = Instant::now();
        let mut relayed_from = None;
        match msg {
            TxMsg::Request(inbound) if self.ctx.is_none() => self.start(*inbound, now),
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
            TxMsg::Response(inbound) => {
                relayed_from = Some(inbound.received);
                let key = ClientKey::of_response(&inbound.msg);
                if let (Some(c), Some(key)) = (&mut self.ctx, key) {
                    c.handle_response(&key, &inbound.msg, self.live.upstreams.as_ref(), now);
                }
            }
            TxMsg::Timer => {
                if let Some(c) = &mut self.ctx {
                    c.handle_timeout(self.live.upstreams.as_ref(), now);
                }
            }
            // Boxed, as the awaits below: rare or once per branch, and an unboxed future
            // would be carried by every transaction's task for its whole life.
            TxMsg::ConnectionLost(conn) => Box::pin(self.on_connection_lost(conn, now)).await,
            TxMsg::Unreachable(dest) => self.on_unreachable(*dest, now),
        }
        self.drive(relayed_from, now).await;
        let Some(ctx) = &self.ctx else {
            return Next::Wait;
        };
        if ctx.is_done() {
            return Next::Done;
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
                return Next::Done;
            }
        }
        ctx.poll_timeout().map_or(Next::Wait, Next::WakeAt)
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
        let mut ctx =
            ResponseContext::new(msg, reliable, settings.timers, settings.failover_timeout)
                .with_relay_timeout(
                    settings
                        .pool
                        .as_ref()
                        .map_or(proxy::response_context::DEFAULT_RELAY_TIMEOUT, |p| {
                            p.relay_timeout
                        }),
                );
        ctx.handle_request(decision, live.upstreams.as_ref(), now);
        self.ctx = Some(ctx);
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
    async fn on_connection_lost(&mut self, conn: u64, now: Instant) {
        let Some(ctx) = &mut self.ctx else { return };
        let Some(link) = self
            .links
            .iter_mut()
            .find(|l| l.conn.as_ref().is_some_and(|c| c.id == conn))
        else {
            return;
        };
        let Some(lost) = link.conn.take() else { return };
        if ctx.branch_key() != Some(&link.key) {
            // A branch given up: a new connection is opened if it must send again.
            return;
        }
        let Some(request) = ctx.branch_request_in_progress() else {
            return;
        };
        if lost.outbound && send_on(&self.core, link, request).await {
            self.core.metrics.reconnects.inc();
            tracing::info!(event = "upstream_reconnected", target = %link.target.addr, branch = %link.key.branch());
            return;
        }
        ctx.handle_transport_error(!lost.outbound, self.live.upstreams.as_ref(), now);
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

    /// Performs the context's actions until it has none left. `relayed_from`: when the
    /// response being relayed arrived (latency).
    async fn drive(&mut self, relayed_from: Option<Instant>, now: Instant) {
        let core = self.core.clone();
        let live = self.live.clone();
        loop {
            let Some(action) = self.ctx.as_mut().and_then(ResponseContext::poll_action) else {
                return;
            };
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
                            (origin, relayed_from)
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
                    // An address or a cached answer needs no lookup. The lookup is boxed:
                    // resolving is a large future (DNS), and an unboxed one would make
                    // every transaction's task carry it for its whole life.
                    let target = match core.locate_now(&live, &hp) {
                        Some(target) => Some(target),
                        None => Box::pin(core.locate(&live, &hp)).await,
                    };
                    let sent = match target {
                        Some(target) => {
                            let opened = self.open_branch(target, None, now);
                            self.branch_sent(opened).await
                        }
                        None => {
                            tracing::warn!(event = "host_not_resolved", host = %hp.host);
                            false
                        }
                    };
                    if !sent {
                        if let Some(c) = &mut self.ctx {
                            c.handle_branch_failed(live.upstreams.as_ref(), now);
                        }
                    }
                }
                Action::Flow(flow) => {
                    let opened = match core.flow_target(&flow) {
                        Some((target, conn)) => {
                            let opened = self.open_branch(target, conn, now);
                            self.branch_sent(opened).await
                        }
                        None => false,
                    };
                    if let (false, Some(c)) = (opened, &mut self.ctx) {
                        c.handle_flow_refused(now);
                    }
                }
                Action::ToBranch { key, bytes } => {
                    if let Some(link) = self.links.iter_mut().find(|l| l.key == key) {
                        send_on(&core, link, bytes).await;
                    }
                }
                Action::Track(key) => {
                    core.txns.client.insert(key.clone(), self.handle.clone());
                    self.keys.push(key);
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

    /// Starts the context's branch toward `target` (over `conn` when a flow names one) and
    /// sends the request when that needs no wait ([`Self::branch_sent`] finishes).
    fn open_branch(&mut self, target: Target, conn: Option<ConnHandle>, now: Instant) -> Opened {
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
        self.core
            .txns
            .client
            .insert(key.clone(), self.handle.clone());
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

    /// Finishes sending a branch's first request ([`Self::open_branch`]): opens its
    /// connection when it needs one, and notes the latency; false when it failed.
    async fn branch_sent(&mut self, opened: Opened) -> bool {
        let ok = match (opened, self.links.last_mut()) {
            // Answered meanwhile: nothing to send, nothing failed, nothing forwarded.
            (Opened::Nothing, _) => return true,
            (Opened::Sent(sent), _) => sent,
            // Boxed, as in `send_on`: only a branch that must open a connection pays.
            (Opened::Connect(bytes), Some(link)) => {
                Box::pin(connect_and_send(&self.core, link, bytes)).await
            }
            (Opened::Connect(_), None) => false,
        };
        if ok {
            self.core
                .metrics
                .latency
                .observe(self.received.elapsed().as_secs_f64());
        }
        ok
    }
}

/// Sends on a branch, over the connection it already uses when it has one. Only opening a
/// connection awaits.
async fn send_on(core: &Arc<Core>, b: &mut Link, bytes: Bytes) -> bool {
    match send_now(core, b, bytes) {
        Ok(sent) => sent,
        // Boxed: opening a connection (TLS included) is a large future, and an unboxed
        // one would make every transaction's task carry and move it.
        Err(bytes) => Box::pin(connect_and_send(core, b, bytes)).await,
    }
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

/// Opens (or finds) a connection toward the branch's target and sends on it.
async fn connect_and_send(core: &Arc<Core>, b: &mut Link, bytes: Bytes) -> bool {
    match connection::send(core, b.target, bytes).await {
        Ok(ConnOrUdp::Conn(h)) => {
            b.conn = Some(h);
            true
        }
        Ok(ConnOrUdp::Udp) => true,
        Err(e) => {
            tracing::info!(event = "upstream_send_failed", target = %b.target.addr, error = ?e);
            false
        }
    }
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

    /// The size of the future a function returns, without calling it.
    fn returned_size<A, F>(_f: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every transaction's task carries the future of `handle` while a message is being
    /// handled: a large await inside it (DNS, a connection with its TLS handshake) must be
    /// boxed, or every transaction in flight pays for it.
    #[test]
    fn the_message_handler_future_stays_small() {
        type Args = (&'static mut TxState, TxMsg);
        let handle = returned_size(|(s, m): Args| s.handle(m));
        type LocateArgs = (
            &'static Core,
            &'static Live,
            &'static crate::sip::addr::HostPort,
        );
        let locate = returned_size(|(c, l, h): LocateArgs| c.locate(l, h));
        assert!(handle < 600, "handle's future is {handle} bytes");
        assert!(
            locate > handle,
            "locate ({locate} bytes) is no longer worth boxing: {handle}"
        );
        // The whole task: the state, the mailbox, the timer and the handler's future.
        type RunArgs = (Box<TxState>, Receiver<TxMsg>);
        let task = returned_size(|(s, r): RunArgs| run(s, r));
        assert!(task < 1000, "the transaction's task future is {task} bytes");
    }
}
