//! One actor per server transaction, owning its client transaction (RFC 3261 section 16
//! stateful proxying).
//!
//! The actor drives the sans-IO machines of `sip::transaction` with messages and timers,
//! asks `sip::proxy` where the request goes, and sends through `actors::transport`. It lives
//! until every machine it owns has terminated, then removes itself from the tables. A panic
//! in one transaction stops that actor only: [`TransactionSupervisor`] logs and counts it
//! and cleans its table entries, and every other transaction carries on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::config::HostPort;
use crate::health::pair::other;
use crate::health::Member;
use crate::metrics::{KindLabels, Metrics};
use crate::sip::builder;
use crate::sip::message::{Framing, Message, Method};
use crate::sip::proxy::{self, Decision, Destination, Plan, Received, Reject};
use crate::sip::transaction::{
    ClientInvite, ClientNonInvite, ClientState, ClientTimeout, ResponseDisposition, ServerInvite,
    ServerNonInvite, ServerState, Timers,
};

use super::connection::{self, ConnOrUdp};
use super::core::{response_destination, Core, Lingering};
use super::transport::{send_reply, send_udp, ConnHandle, Inbound, Target};
use super::wakeup::Wakeup;

/// Messages of a transaction actor.
#[derive(Debug)]
pub enum TxMsg {
    /// The request that created the transaction, a retransmission of it, or its ACK.
    Request(Box<Inbound>),
    /// A CANCEL for this (INVITE) transaction.
    Cancel(Box<Inbound>),
    /// A response to our client transaction (or to its CANCEL).
    Response(Box<Inbound>),
    /// A timer may be due.
    Timer,
    /// This stream connection closed; the transaction checks whether its branch used it.
    ConnectionLost(u64),
}

/// The transaction actor.
pub struct TransactionActor;

enum Server {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

enum Client {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

/// The request as forwarded to one target.
struct Branch {
    id: String,
    target: Target,
    conn: Option<ConnHandle>,
    client: Client,
    /// The INVITE as sent, parsed, to build its CANCEL and ACK.
    sent: Option<Message>,
    provisional: bool,
    /// Any response at all arrived on this branch.
    answered: bool,
    cancel: Option<ClientNonInvite>,
}

/// State of one transaction actor.
pub struct TxState {
    core: Arc<Core>,
    key: String,
    timers: Timers,
    request: Option<Inbound>,
    dest: SocketAddr,
    server: Option<Server>,
    branch: Option<Branch>,
    cancelled: bool,
    final_sent: bool,
    timer_c: Option<Instant>,
    timer_c_fired: bool,
    /// The forwarding plan (kept to build a retry).
    plan: Option<Plan>,
    /// The pair member the request went to.
    member: Option<(usize, Member)>,
    /// Whether the other member was tried already.
    retried: bool,
    /// When to give up on the member that has not answered at all.
    failover_at: Option<Instant>,
    /// When the current branch was sent.
    branch_sent_at: Option<Instant>,
    /// The pending timer message.
    wakeup: Wakeup<TxMsg>,
}

impl Actor for TransactionActor {
    type Msg = TxMsg;
    type State = TxState;
    type Arguments = (Arc<Core>, String);

    async fn pre_start(
        &self,
        _myself: ActorRef<TxMsg>,
        (core, key): Self::Arguments,
    ) -> Result<TxState, ActorProcessingErr> {
        Ok(TxState {
            timers: core.settings.timers,
            core,
            key,
            request: None,
            dest: SocketAddr::from(([0, 0, 0, 0], 0)),
            server: None,
            branch: None,
            cancelled: false,
            final_sent: false,
            timer_c: None,
            timer_c_fired: false,
            plan: None,
            member: None,
            retried: false,
            failover_at: None,
            branch_sent_at: None,
            wakeup: Wakeup::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TxMsg>,
        msg: TxMsg,
        state: &mut TxState,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match msg {
            TxMsg::Request(inbound) if state.server.is_none() => {
                state.start(&myself, *inbound, now).await;
            }
            TxMsg::Request(inbound) => state.on_retransmission(*inbound, now).await,
            TxMsg::Cancel(inbound) => state.on_cancel(*inbound, now).await,
            TxMsg::Response(inbound) => state.on_response(&myself, *inbound, now).await,
            TxMsg::Timer => {
                state.wakeup.fired();
                state.on_timer(&myself, now).await;
            }
            TxMsg::ConnectionLost(conn) => state.on_connection_lost(&myself, conn, now).await,
        }
        if state.is_done() {
            myself.stop(None);
        } else if state.linger(now) {
            // What is left is absorbing retransmissions: a table entry does that.
            myself.stop(None);
        } else {
            state.schedule(&myself, now);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<TxMsg>,
        state: &mut TxState,
    ) -> Result<(), ActorProcessingErr> {
        let id = myself.get_id();
        state
            .core
            .server_txns
            .remove_if(&state.key, |_, v| v.get_id() == id);
        if let Some(b) = &state.branch {
            state
                .core
                .client_txns
                .remove_if(&b.id, |_, v| v.get_id() == id);
        }
        state.core.metrics.transactions.dec();
        Ok(())
    }
}

impl TxState {
    async fn start(&mut self, myself: &ActorRef<TxMsg>, inbound: Inbound, now: Instant) {
        #[cfg(feature = "fault-injection")]
        if inbound.msg.headers().iter().any(|h| {
            inbound
                .msg
                .slice(h.line.clone())
                .starts_with(b"X-Sippool-Fault: panic-transaction")
        }) {
            super::fault::injected("transaction");
        }
        let reliable = inbound.transport.is_reliable();
        self.dest = response_destination(&inbound.msg, inbound.source, &inbound.reply);
        let is_invite = inbound.msg.method() == Some(&Method::Invite);
        self.server = Some(if is_invite {
            Server::Invite(ServerInvite::new(reliable, self.timers))
        } else {
            Server::NonInvite(ServerNonInvite::new(reliable, self.timers))
        });
        let token = self.core.flow_token_for(&inbound);
        let rx = Received {
            msg: &inbound.msg,
            transport: inbound.transport,
            source: inbound.source,
            from_upstream: self.core.is_upstream(inbound.source.ip()),
            flow_token: token.as_deref(),
        };
        let decision = proxy::decide(rx, &self.core.identity, &self.core.router);
        self.request = Some(inbound);
        if is_invite && !matches!(decision, Decision::Drop(_)) {
            self.respond(now, &Reject::new(100, "Trying"));
        }
        match decision {
            Decision::Respond(r) => self.respond(now, &r),
            Decision::Drop(reason) => {
                Metrics::count(&self.core.metrics.dropped, reason_label(reason));
                self.terminate_server();
            }
            Decision::Forward(plan) => self.forward(myself, plan, now).await,
        }
    }

    async fn forward(&mut self, myself: &ActorRef<TxMsg>, plan: Plan, now: Instant) {
        if plan.issues_flow_token() {
            if let Some(req) = &self.request {
                self.core.flow_issued(&req.reply);
            }
        }
        let hp = match &plan.destination {
            Destination::Pair(i) => match self.core.pairs.active(*i) {
                Some(m) => {
                    self.member = Some((*i, m));
                    self.core.member_server(*i, m).cloned()
                }
                None => {
                    let mut r = Reject::new(503, "Service Unavailable");
                    r.extra.push("Retry-After: 5".into());
                    return self.respond(now, &r);
                }
            },
            Destination::Host(hp) => match hp.socket_addr().and_then(|a| self.core.member_at(a)) {
                // An in-dialog request toward a pair member (its Contact): the members are
                // HA peers sharing call state, so when that member is down the request goes
                // to the other one, and a member that does not answer is retried on it.
                Some((pair, m)) => {
                    let pairs = &self.core.pairs;
                    if !pairs.is_up(pair, m) && pairs.is_up(pair, other(m)) {
                        self.member = Some((pair, other(m)));
                        self.core.member_server(pair, other(m)).cloned()
                    } else {
                        self.member = Some((pair, m));
                        Some(hp.clone())
                    }
                }
                None => Some(hp.clone()),
            },
            Destination::Flow(token) => {
                let token = token.clone();
                self.plan = Some(plan);
                return self.forward_on_flow(myself, &token, now).await;
            }
        };
        self.plan = Some(plan);
        match hp {
            Some(hp) => self.launch(myself, hp, now).await,
            None => self.respond(now, &Reject::new(500, "Server Internal Error")),
        }
    }

    /// Sends the request over the flow a token names (RFC 5626): the phone's own connection.
    /// A flow that is gone gets 430 Flow Failed; a token that is not ours gets 403.
    async fn forward_on_flow(&mut self, myself: &ActorRef<TxMsg>, token: &str, now: Instant) {
        match self.core.flow_target(token) {
            Ok((target, conn)) => {
                if !self.start_branch_on(myself, target, conn, now).await {
                    self.respond(now, &Reject::new(430, "Flow Failed"));
                }
            }
            Err(403) => self.respond(now, &Reject::new(403, "Invalid Flow Token")),
            Err(_) => self.respond(now, &Reject::new(430, "Flow Failed")),
        }
    }

    /// Sends the request to `hp` on a new branch. When that fails at once (no route, no
    /// connection) the other member of the pair is tried; when nothing can be tried the
    /// client gets 500 (a transport error counts as a 503, RFC 3261 sections 16.9 and 16.7).
    async fn launch(&mut self, myself: &ActorRef<TxMsg>, mut hp: HostPort, now: Instant) {
        loop {
            let sent = match self.core.locate(&hp).await {
                Some(target) => self.start_branch(myself, target, now).await,
                None => {
                    tracing::warn!(event = "host_not_resolved", host = %hp.host);
                    false
                }
            };
            if sent {
                return;
            }
            if let Some(b) = &mut self.branch {
                terminate_client(&mut b.client);
            }
            match self.failover_target(false, now) {
                Some(next) => hp = next,
                None => return self.respond(now, &Reject::new(500, "Server Internal Error")),
            }
        }
    }

    /// Creates the client transaction toward `target` and sends the request.
    async fn start_branch(
        &mut self,
        myself: &ActorRef<TxMsg>,
        target: Target,
        now: Instant,
    ) -> bool {
        self.start_branch_on(myself, target, None, now).await
    }

    /// As [`TxState::start_branch`], over a given connection when there is one.
    async fn start_branch_on(
        &mut self,
        myself: &ActorRef<TxMsg>,
        target: Target,
        conn: Option<ConnHandle>,
        now: Instant,
    ) -> bool {
        let (Some(req), Some(plan)) = (self.request.as_ref(), self.plan.as_ref()) else {
            return false;
        };
        let branch_id = plan.new_branch();
        let bytes = plan.build(&req.msg, &self.core.identity, target.transport, &branch_id);
        let is_invite = req.msg.method() == Some(&Method::Invite);
        let reliable = target.transport.is_reliable();
        let (client, sent) = if is_invite {
            let limits = crate::sip::message::Limits {
                max_size: usize::MAX,
                max_headers: usize::MAX,
            };
            let sent = Message::parse(bytes.clone(), Framing::Stream, &limits).ok();
            let c = ClientInvite::new(now, reliable, self.timers, bytes.clone());
            (Client::Invite(c), sent)
        } else {
            let c = ClientNonInvite::new(now, reliable, self.timers, bytes.clone());
            (Client::NonInvite(c), None)
        };
        self.core
            .client_txns
            .insert(branch_id.clone(), myself.clone());
        let mut branch = Branch {
            id: branch_id,
            target,
            conn,
            client,
            sent,
            provisional: false,
            answered: false,
            cancel: None,
        };
        let received = req.received;
        let ok = send_on(&self.core, &mut branch, bytes).await;
        if ok {
            self.core
                .metrics
                .latency
                .observe(received.elapsed().as_secs_f64());
        }
        self.branch = Some(branch);
        self.branch_sent_at = Some(now);
        if self.member.is_some() {
            self.failover_at = Some(now + self.core.settings.failover_timeout);
        }
        ok
    }

    /// The other member of the pair, when the request went to a pair member, has not been
    /// retried yet, is still unanswered and the other member is up. Records the retry.
    fn failover_target(&mut self, unanswered: bool, now: Instant) -> Option<HostPort> {
        let (pair, member) = self.member?;
        let is_invite = self
            .request
            .as_ref()
            .is_some_and(|r| r.msg.method() == Some(&Method::Invite));
        if unanswered && is_invite {
            // Evidence for the probe actor, which weighs it (only INVITE: one stray request
            // that a server ignores must not take it out of service).
            self.core
                .report_unanswered(pair, member, self.branch_sent_at.unwrap_or(now));
        } else {
            self.core.suspect(pair, member);
        }
        if self.retried || self.final_sent || self.cancelled {
            return None;
        }
        let other = other(member);
        if !self.core.pairs.is_up(pair, other) {
            return None;
        }
        let hp = self.core.member_server(pair, other)?.clone();
        self.retried = true;
        self.member = Some((pair, other));
        self.failover_at = None;
        self.core.metrics.retries.inc();
        tracing::info!(event = "transaction_retried", to = %hp, key = %self.key);
        if let Some(b) = self.branch.take() {
            self.core.client_txns.remove(&b.id);
        }
        Some(hp)
    }

    async fn on_retransmission(&mut self, inbound: Inbound, now: Instant) {
        let is_ack = inbound.msg.method() == Some(&Method::Ack);
        let resend = match &mut self.server {
            Some(Server::Invite(s)) if is_ack => {
                if !s.on_ack(now) {
                    // An ACK for a 2xx that reused the INVITE's branch: not ours to absorb.
                    self.core.dispatch_ack_stateless(inbound);
                }
                None
            }
            Some(Server::Invite(s)) => s.on_retransmission(),
            Some(Server::NonInvite(s)) => s.on_retransmission(),
            None => None,
        };
        if let (Some(bytes), Some(req)) = (resend, &self.request) {
            let _ = send_reply(&req.reply, self.dest, bytes);
        }
    }

    async fn on_cancel(&mut self, cancel: Inbound, now: Instant) {
        // The CANCEL itself is answered at once (RFC 3261 section 16.10).
        let tag = proxy::local_tag(&cancel.msg);
        let ok = builder::response(&cancel.msg, 200, "OK", &tag, &[]);
        let dest = response_destination(&cancel.msg, cancel.source, &cancel.reply);
        if send_reply(&cancel.reply, dest, ok).is_ok() {
            self.core.metrics.response(200, "local");
        }
        if self.final_sent || self.cancelled {
            return;
        }
        self.cancelled = true;
        match &self.branch {
            Some(b) if b.provisional => self.send_cancel(now).await,
            Some(_) => {} // CANCEL goes out once a provisional arrives (section 9.1).
            None => self.respond(now, &Reject::new(487, "Request Terminated")),
        }
    }

    async fn send_cancel(&mut self, now: Instant) {
        let timers = self.timers;
        let Some(b) = &mut self.branch else {
            return;
        };
        if b.cancel.is_some() {
            return;
        }
        let Some(sent) = &b.sent else {
            return;
        };
        let bytes = builder::cancel_for(sent);
        b.cancel = Some(ClientNonInvite::new(
            now,
            b.target.transport.is_reliable(),
            timers,
            bytes.clone(),
        ));
        send_on(&self.core, b, bytes).await;
    }

    async fn on_response(&mut self, myself: &ActorRef<TxMsg>, inbound: Inbound, now: Instant) {
        let msg = &inbound.msg;
        let Some(code) = msg.status() else {
            return;
        };
        let Some(b) = &mut self.branch else {
            return;
        };
        let branch = msg
            .top_via()
            .and_then(Result::ok)
            .and_then(|v| v.branch().map(str::to_string));
        if branch.as_deref() != Some(b.id.as_str()) {
            // A late answer on a branch given up for the other member.
            return;
        }
        b.answered = true;
        self.failover_at = None;
        if matches!(msg.cseq(), Some((_, Method::Cancel))) {
            if let Some(c) = &mut b.cancel {
                c.on_response(now, code);
            }
            return;
        }
        let (disposition, ack) = match &mut b.client {
            Client::Invite(c) => {
                let sent = &b.sent;
                c.on_response(now, code, || {
                    sent.as_ref().map(|s| builder::ack_for(s, msg))
                })
            }
            Client::NonInvite(c) => (c.on_response(now, code), None),
        };
        if let Some(ack) = ack {
            send_on(&self.core, b, ack).await;
        }
        if disposition == ResponseDisposition::Absorb || code == 100 {
            return;
        }
        if code < 200 {
            let first_provisional = !b.provisional;
            b.provisional = true;
            if matches!(b.client, Client::Invite(_)) {
                self.timer_c = Some(now + self.timers.timer_c);
            }
            if first_provisional && self.cancelled {
                self.send_cancel(now).await;
            }
            let bytes = builder::forward_response(msg);
            self.send_to_client(now, code, bytes, "relayed");
            self.core
                .metrics
                .latency
                .observe(inbound.received.elapsed().as_secs_f64());
            return;
        }
        self.timer_c = None;
        if code == 503 {
            // The member is unavailable: the other one gets the request, if it may.
            if let Some(hp) = self.failover_target(false, now) {
                return self.launch(myself, hp, now).await;
            }
            // RFC 3261 section 16.7 step 6: never relay a 503.
            self.respond(now, &Reject::new(500, "Server Internal Error"));
            return;
        }
        let bytes = builder::forward_response(msg);
        self.send_to_client(now, code, bytes, "relayed");
        self.core
            .metrics
            .latency
            .observe(inbound.received.elapsed().as_secs_f64());
    }

    async fn on_timer(&mut self, myself: &ActorRef<TxMsg>, now: Instant) {
        if self.failover_at.is_some_and(|t| t <= now) {
            self.failover_at = None;
            let unanswered = self.branch.as_ref().is_some_and(|b| !b.answered);
            if unanswered {
                if let Some(hp) = self.failover_target(true, now) {
                    return self.launch(myself, hp, now).await;
                }
            }
        }
        let resend = match &mut self.server {
            Some(Server::Invite(s)) => s.handle_timeout(now),
            Some(Server::NonInvite(s)) => {
                s.handle_timeout(now);
                None
            }
            None => None,
        };
        if let (Some(bytes), Some(req)) = (resend, &self.request) {
            let _ = send_reply(&req.reply, self.dest, bytes);
        }
        let mut timed_out = false;
        if let Some(b) = &mut self.branch {
            let outcome = match &mut b.client {
                Client::Invite(c) => c.handle_timeout(now),
                Client::NonInvite(c) => c.handle_timeout(now),
            };
            match outcome {
                ClientTimeout::Retransmit(bytes) => {
                    send_on(&self.core, b, bytes).await;
                }
                ClientTimeout::TimedOut => timed_out = true,
                ClientTimeout::None => {}
            }
            if let Some(c) = &mut b.cancel {
                if let ClientTimeout::Retransmit(bytes) = c.handle_timeout(now) {
                    send_on(&self.core, b, bytes).await;
                }
            }
        }
        if timed_out {
            self.core.metrics.upstream_timeouts.inc();
            if let Some(hp) = self.failover_target(true, now) {
                return self.launch(myself, hp, now).await;
            }
            self.respond(now, &Reject::new(408, "Request Timeout"));
        }
        if self.timer_c.is_some_and(|t| t <= now) {
            self.on_timer_c(now).await;
        }
    }

    /// The connection the branch used closed before a final response came back. One we
    /// opened toward a server is reopened and the request sent again (the server matches
    /// it to its transaction by branch); when that fails, the other member is tried as for
    /// any transport error. A phone's flow cannot be reopened from here: 430 Flow Failed
    /// (RFC 5626 section 5.3), so that the server tries another registration.
    async fn on_connection_lost(&mut self, myself: &ActorRef<TxMsg>, conn: u64, now: Instant) {
        let Some(b) = &mut self.branch else { return };
        if b.conn.as_ref().is_none_or(|c| c.id != conn) {
            return;
        }
        let Some(lost) = b.conn.take() else { return };
        let (state, request) = match &b.client {
            Client::Invite(c) => (c.state(), c.request().clone()),
            Client::NonInvite(c) => (c.state(), c.request().clone()),
        };
        if self.final_sent || !matches!(state, ClientState::Calling | ClientState::Proceeding) {
            return;
        }
        if lost.outbound {
            if send_on(&self.core, b, request).await {
                self.core.metrics.reconnects.inc();
                tracing::info!(event = "upstream_reconnected", target = %b.target.addr, branch = %b.id);
                return;
            }
            terminate_client(&mut b.client);
            if let Some(hp) = self.failover_target(false, now) {
                return self.launch(myself, hp, now).await;
            }
            return self.respond(now, &Reject::new(500, "Server Internal Error"));
        }
        terminate_client(&mut b.client);
        self.respond(now, &Reject::new(430, "Flow Failed"));
    }

    /// Timer C (RFC 3261 section 16.8): CANCEL the branch; if it still gives no final
    /// response, answer 408 ourselves and let the branch go.
    async fn on_timer_c(&mut self, now: Instant) {
        if self.final_sent {
            self.timer_c = None;
            return;
        }
        if !self.timer_c_fired {
            self.timer_c_fired = true;
            self.timer_c = Some(now + self.timers.t1x64());
            self.send_cancel(now).await;
            return;
        }
        self.timer_c = None;
        if let Some(b) = &mut self.branch {
            terminate_client(&mut b.client);
        }
        self.respond(now, &Reject::new(408, "Request Timeout"));
    }

    /// Sends a response generated here.
    fn respond(&mut self, now: Instant, r: &Reject) {
        let Some(req) = &self.request else {
            return;
        };
        let tag = proxy::local_tag(&req.msg);
        let bytes = builder::response(&req.msg, r.code, &r.reason, &tag, &r.extra);
        self.send_to_client(now, r.code, bytes, "local");
    }

    fn send_to_client(&mut self, now: Instant, code: u16, bytes: Bytes, origin: &'static str) {
        let out = match &mut self.server {
            Some(Server::Invite(s)) => s.send_response(now, code, bytes),
            Some(Server::NonInvite(s)) => s.send_response(now, code, bytes),
            None => None,
        };
        if code >= 200 {
            self.final_sent = true;
        }
        let (Some(bytes), Some(req)) = (out, &self.request) else {
            return;
        };
        if send_reply(&req.reply, self.dest, bytes).is_ok() {
            self.core.metrics.response(code, origin);
        } else {
            Metrics::count(&self.core.metrics.dropped, "response_not_sent");
        }
    }

    fn terminate_server(&mut self) {
        match &mut self.server {
            Some(Server::Invite(s)) => s.terminate(),
            Some(Server::NonInvite(s)) => s.terminate(),
            None => {}
        }
    }

    fn is_done(&self) -> bool {
        let server_done = match &self.server {
            Some(Server::Invite(s)) => s.is_terminated(),
            Some(Server::NonInvite(s)) => s.is_terminated(),
            None => false,
        };
        let branch_done = self.branch.as_ref().is_none_or(|b| {
            let c = match &b.client {
                Client::Invite(c) => c.is_terminated(),
                Client::NonInvite(c) => c.is_terminated(),
            };
            c && b.cancel.as_ref().is_none_or(ClientNonInvite::is_terminated)
        });
        server_done && branch_done
    }

    /// When all that is left to do is to absorb retransmissions of the request (INVITE
    /// answered with a 2xx, non-INVITE answered), hands that over to [`Core::lingering`]
    /// and returns true: the actor can end. Retransmitted 2xx and late responses are then
    /// forwarded statelessly along their Via.
    fn linger(&self, now: Instant) -> bool {
        let Some(req) = &self.request else {
            return false;
        };
        let client_idle = self.branch.as_ref().is_none_or(|b| {
            let c = match &b.client {
                Client::Invite(c) => {
                    !matches!(c.state(), ClientState::Calling | ClientState::Proceeding)
                }
                Client::NonInvite(c) => {
                    !matches!(c.state(), ClientState::Calling | ClientState::Proceeding)
                }
            };
            c && b.cancel.as_ref().is_none_or(ClientNonInvite::is_terminated)
        });
        if !client_idle || self.timer_c.is_some() {
            return false;
        }
        let (response, until) = match &self.server {
            Some(Server::Invite(s)) if s.state() == ServerState::Accepted => {
                (None, s.poll_timeout())
            }
            Some(Server::NonInvite(s)) if s.state() == ServerState::Completed => {
                (s.last_response(), s.poll_timeout())
            }
            _ => return false,
        };
        let Some(until) = until.filter(|u| *u > now) else {
            return false;
        };
        self.core.lingering.insert(
            self.key.clone(),
            Lingering {
                response,
                reply: req.reply.clone(),
                dest: self.dest,
                until,
            },
        );
        true
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut all: Vec<Option<Instant>> = vec![self.timer_c, self.failover_at];
        match &self.server {
            Some(Server::Invite(s)) => all.push(s.poll_timeout()),
            Some(Server::NonInvite(s)) => all.push(s.poll_timeout()),
            None => {}
        }
        if let Some(b) = &self.branch {
            all.push(match &b.client {
                Client::Invite(c) => c.poll_timeout(),
                Client::NonInvite(c) => c.poll_timeout(),
            });
            all.push(b.cancel.as_ref().and_then(ClientNonInvite::poll_timeout));
        }
        all.into_iter().flatten().min()
    }

    fn schedule(&mut self, myself: &ActorRef<TxMsg>, now: Instant) {
        let Some(next) = self.next_deadline() else {
            return;
        };
        self.wakeup.schedule(myself, next, now, || TxMsg::Timer);
    }
}

fn terminate_client(c: &mut Client) {
    match c {
        Client::Invite(c) => c.terminate(),
        Client::NonInvite(c) => {
            // A non-INVITE client transaction ends by its own timers; nothing to cut short.
            let _ = c;
        }
    }
}

/// Sends on a branch, over the connection it already uses when it has one.
async fn send_on(core: &Arc<Core>, b: &mut Branch, bytes: Bytes) -> bool {
    if let Some(c) = &b.conn {
        if c.send(bytes.clone()) {
            return true;
        }
    }
    if b.target.transport == crate::sip::transport::Transport::Udp {
        if let Some(sock) = core.transports.udp_for(&b.target.addr) {
            return send_udp(&sock, b.target.addr, bytes).is_ok();
        }
        return false;
    }
    // Boxed: opening a connection (TLS included) is a large future, and an unboxed one
    // would make every transaction actor carry and move it.
    match Box::pin(connection::send(core, b.target, bytes)).await {
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

/// Supervises every transaction actor: a failed one is logged, counted and forgotten.
pub struct TransactionSupervisor;

impl Actor for TransactionSupervisor {
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
                .get_or_create(&KindLabels {
                    kind: "transaction",
                })
                .inc();
            core.metrics.transactions.dec();
            tracing::error!(event = "transaction_failed", actor = %cell.get_id(), error = %err);
            core.forget_transaction(cell.get_id());
        }
        Ok(())
    }
}
