//! The response context of a stateful proxy (RFC 3261 section 16.7), sans-IO, in the style
//! of quinn-proto: `handle_*` in, [`ResponseContext::poll_action`] and
//! [`ResponseContext::poll_timeout`] out.
//!
//! One context per server transaction. It owns the server transaction, the branch the
//! request was forwarded on (its client transaction, and the CANCEL's), and every rule of
//! section 16 about what happens next: 100 Trying (when the server has sent nothing back
//! within 200 ms, section 17.2.1), relaying provisionals, the final
//! response (503 never relayed: the other pair member is tried, else 500), CANCEL (not
//! before a provisional, section 9.1), Timer C (section 16.8), the failover timer and the
//! retry on the other member of a pair, 430 when a phone's flow fails (here, or at the
//! instance of the pool a request is relayed to), and what is left to linger after the
//! final answer (the response bytes and a deadline).
//!
//! It sends nothing and resolves nothing: it asks the shell to [`Action::Locate`] a server
//! or open a [`Action::Flow`], to send bytes to the client or on the branch, and it reports
//! health [`Evidence`]. Pair state is read through [`PairView`]. Time is passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::sip::addr::HostPort;
use crate::sip::builder;
use crate::sip::message::{Message, Method};
use crate::sip::transaction::{
    ClientInvite, ClientKey, ClientNonInvite, ClientTimeout, ResponseDisposition, ServerInvite,
    ServerNonInvite, ServerState, Timers,
};

use super::{local_tag, Decision, Destination, LocalIdentity, Member, Plan, Reject, Through};

mod actions;
mod branch;
mod failover;
mod ghost;
#[cfg(test)]
mod relay_tests;
#[cfg(test)]
mod tests;

pub use actions::{Action, Evidence, Linger, Origin, PairView};
pub use ghost::GhostOutcome;

use branch::{Branch, Client};
use failover::GiveUp;
use ghost::Ghost;

enum Server {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

/// The response context of one server transaction (see the module documentation).
pub struct ResponseContext {
    timers: Timers,
    failover_timeout: Duration,
    request: Message,
    server: Server,
    plan: Option<Plan>,
    branch: Option<Branch>,
    cancelled: bool,
    final_sent: bool,
    timer_c: Option<Instant>,
    timer_c_fired: bool,
    /// INVITE: when to send 100 Trying unless a response has gone to the client by then
    /// (section 17.2.1, [`Timers::trying`]).
    trying_at: Option<Instant>,
    /// The pair member the request went to.
    member: Option<(usize, Member)>,
    /// Whether the other member was tried already.
    retried: bool,
    /// When to give up on a member that has not answered at all.
    failover_at: Option<Instant>,
    /// INVITE branches given up for the other member, still ours until they end.
    ghosts: Vec<Ghost>,
    /// The best failure of the members tried so far (a local code: 408 or 500).
    failure: Option<u16>,
    /// The request is relayed to the instance of the pool holding a phone's flow: when
    /// that instance cannot be reached or is silent, the flow is as good as failed (430).
    relay: bool,
    /// How long a relayed request waits for a first answer from that instance.
    relay_timeout: Duration,
    actions: VecDeque<Action>,
}

/// The actions a context makes room for at once (see `ResponseContext::new`).
const ACTIONS_ROOM: usize = 6;

/// How long a relayed request waits for a first answer, unless set otherwise.
pub const DEFAULT_RELAY_TIMEOUT: Duration = Duration::from_secs(2);

impl ResponseContext {
    /// A context for a received request; `reliable` when it came over a stream.
    pub fn new(
        mut request: Message,
        reliable: bool,
        timers: Timers,
        failover_timeout: Duration,
    ) -> ResponseContext {
        request.shrink_to_fit(); // kept for the transaction's life
        let server = if request.method() == Some(&Method::Invite) {
            Server::Invite(ServerInvite::new(reliable, timers))
        } else {
            Server::NonInvite(ServerNonInvite::new(reliable, timers))
        };
        ResponseContext {
            timers,
            failover_timeout,
            request,
            server,
            plan: None,
            branch: None,
            cancelled: false,
            final_sent: false,
            timer_c: None,
            timer_c_fired: false,
            trying_at: None,
            member: None,
            retried: false,
            failover_at: None,
            ghosts: Vec::new(),
            failure: None,
            relay: false,
            relay_timeout: DEFAULT_RELAY_TIMEOUT,
            // Room for what one message asks at most in the common case (a response, its
            // evidence, a branch): one allocation, not one and then a growth.
            actions: VecDeque::with_capacity(ACTIONS_ROOM),
        }
    }

    /// How long a request relayed to another instance of the pool waits for its first
    /// answer before the client gets 430 Flow Failed.
    pub fn with_relay_timeout(mut self, d: Duration) -> Self {
        self.relay_timeout = d;
        self
    }

    /// The request this context serves.
    pub fn request(&self) -> &Message {
        &self.request
    }

    /// The next thing the shell must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The key of the current branch's client transaction.
    pub fn branch_key(&self) -> Option<&ClientKey> {
        self.branch.as_ref().map(|b| &b.key)
    }

    fn is_invite(&self) -> bool {
        matches!(self.server, Server::Invite(_))
    }

    /// What [`super::decide`] said about the request: answer it, or forward it.
    /// A [`Decision::Drop`] ends the transaction without a word.
    ///
    /// A forwarded INVITE gets 100 Trying only when the server has sent nothing back within
    /// [`Timers::trying`] (section 17.2.1: the server transaction must send it "unless it
    /// knows that the TU will generate a provisional or final response within 200 ms"; a
    /// proxy cannot know, so it waits that long). Its purpose, quenching the client's
    /// retransmissions, is served as well by the server's own provisional or final
    /// response relayed before T1, and one message per call is saved. An INVITE answered
    /// here gets its final response at once, with no 100 before it.
    pub fn handle_request(&mut self, decision: Decision, pairs: &impl PairView, now: Instant) {
        if self.is_invite() && matches!(decision, Decision::Forward(_)) {
            if self.timers.trying.is_zero() {
                self.send_trying(now);
            } else {
                self.trying_at = Some(now + self.timers.trying);
            }
        }
        match decision {
            Decision::Respond(r) => self.respond(now, &r),
            Decision::OptionsToUs { serving } => {
                let r = if pairs.active(serving).is_some() {
                    let mut r = Reject::new(200, "OK");
                    r.extra.push(super::ALLOW.into());
                    r
                } else {
                    let mut r = Reject::new(503, "Service Unavailable");
                    r.extra.push("Retry-After: 5".into());
                    r
                };
                self.respond(now, &r);
            }
            Decision::Drop(_) => self.terminate_server(),
            Decision::Forward(plan) => self.forward(plan, pairs, now),
        }
    }

    fn forward(&mut self, plan: Plan, pairs: &impl PairView, now: Instant) {
        let hp = match &plan.destination {
            Destination::Pair(i) => match pairs.active(*i) {
                Some(m) => {
                    self.member = Some((*i, m));
                    pairs.server(*i, m)
                }
                None => {
                    let mut r = Reject::new(503, "Service Unavailable");
                    r.extra.push("Retry-After: 5".into());
                    return self.respond(now, &r);
                }
            },
            Destination::Host(hp) => match hp.socket_addr().and_then(|a| pairs.member_at(a)) {
                // An in-dialog request toward a pair member (its Contact): the members are
                // HA peers sharing call state, so when that member is down the request goes
                // to the other one, and a member that does not answer is retried on it.
                Some((pair, m)) => {
                    if !pairs.is_up(pair, m) && pairs.is_up(pair, m.other()) {
                        self.member = Some((pair, m.other()));
                        pairs.server(pair, m.other())
                    } else {
                        self.member = Some((pair, m));
                        Some(hp.clone())
                    }
                }
                None => Some(hp.clone()),
            },
            Destination::Flow { flow, .. } => {
                let flow = *flow;
                self.plan = Some(plan);
                self.actions.push_back(Action::Flow(Box::new(flow)));
                return;
            }
            Destination::Relay { instance, .. } => {
                self.relay = true;
                Some(HostPort::from(*instance))
            }
        };
        self.plan = Some(plan);
        match hp {
            Some(hp) => self.actions.push_back(Action::Locate(hp)),
            None => self.respond(now, &Reject::new(500, "Server Internal Error")),
        }
    }

    /// The branch's target is known (a located server, or a flow): writes the request for
    /// the listener it goes `through` on a new branch and returns the client transaction key and the bytes to
    /// send. When sending fails, the shell calls [`Self::handle_branch_failed`] (or, for a
    /// flow, [`Self::handle_flow_refused`]). `None` when nothing is to be sent any more.
    pub fn start_branch(
        &mut self,
        through: Through,
        identity: &LocalIdentity,
        pairs: &impl PairView,
        now: Instant,
    ) -> Option<(ClientKey, Bytes)> {
        if self.final_sent || self.cancelled {
            return None;
        }
        let plan = self.plan.as_ref()?;
        let branch_id = plan.new_branch();
        let via = identity.via(through, &branch_id);
        let bytes = plan.build_with_via(&self.request, identity, through, &via);
        let reliable = through.transport.is_reliable();
        let client = if self.is_invite() {
            Client::Invite(ClientInvite::new(now, reliable, self.timers, bytes.clone()))
        } else {
            Client::NonInvite(ClientNonInvite::new(
                now,
                reliable,
                self.timers,
                bytes.clone(),
            ))
        };
        let key = ClientKey::new(&branch_id);
        let rr_sent = self
            .request
            .list(crate::sip::message::HeaderName::RecordRoute)
            .count()
            + plan.record_route_count(identity, through);
        self.branch = Some(Branch {
            key: key.clone(),
            client,
            via,
            provisional: false,
            answered: false,
            cancel: None,
            reliable,
            sent_at: now,
            rr_sent,
        });
        if let Some((pair, member)) = self.member {
            let wait = pairs
                .failover_timeout(pair, member)
                .unwrap_or(self.failover_timeout);
            self.failover_at = Some(now + wait);
        } else if self.relay {
            self.failover_at = Some(now + self.relay_timeout);
        }
        Some((key, bytes))
    }

    /// The branch could not be started or its first send failed (no address, no route, a
    /// refused connection): a transport error counts as a 503 (sections 16.9 and 16.7), so
    /// the other pair member is tried when it may be, else the client gets 500.
    pub fn handle_branch_failed(&mut self, pairs: &impl PairView, now: Instant) {
        if let Some(b) = &mut self.branch {
            b.client.terminate();
        }
        if self.relay {
            return self.relay_gone(false, now);
        }
        self.note_failure(500);
        match self.failover_target(GiveUp::Failed, pairs, now) {
            Some(hp) => self.actions.push_back(Action::Locate(hp)),
            None => self.respond_failure(now),
        }
    }

    /// The flow a Route token named is gone (its connection closed): 430 Flow Failed (RFC
    /// 5626 section 5.3), so the server tries another registration.
    pub fn handle_flow_refused(&mut self, now: Instant) {
        if let Some(b) = &mut self.branch {
            b.client.terminate();
        }
        self.respond(now, &Reject::new(430, "Flow Failed"));
    }

    /// The request's bytes on the current branch, while its client transaction still
    /// waits for a final response and none has gone to the client: what the shell resends
    /// over a reopened connection.
    pub fn branch_request_in_progress(&self) -> Option<Bytes> {
        let b = self.branch.as_ref()?;
        if self.final_sent || !b.client.in_progress() {
            return None;
        }
        Some(match &b.client {
            Client::Invite(c) => c.request().clone(),
            Client::NonInvite(c) => c.request().clone(),
        })
    }

    /// A retransmission of the request, or an ACK for it. Returns true when the message is
    /// an ACK that is not this transaction's (the ACK of a 2xx that reused the INVITE's
    /// branch): the shell forwards it statelessly.
    ///
    /// An INVITE retransmitted before anything was sent back gets 100 Trying at once: the
    /// client is retransmitting already.
    pub fn handle_retransmission(&mut self, msg: &Message, now: Instant) -> bool {
        let is_ack = msg.method() == Some(&Method::Ack);
        if !is_ack && self.trying_at.is_some() {
            self.send_trying(now);
            return false;
        }
        let resend = match &mut self.server {
            Server::Invite(s) if is_ack => return !s.on_ack(now),
            Server::Invite(s) => s.on_retransmission(),
            Server::NonInvite(s) => s.on_retransmission(),
        };
        if let Some(bytes) = resend {
            self.actions.push_back(Action::ResendToClient(bytes));
        }
        false
    }

    /// A CANCEL for this transaction arrived (and was answered 200 by the shell, section
    /// 16.10): cancel the branch once it has sent a provisional (section 9.1), or answer 487
    /// at once when no branch exists yet.
    pub fn handle_cancel(&mut self, now: Instant) {
        if self.final_sent || self.cancelled {
            return;
        }
        self.cancelled = true;
        match &self.branch {
            Some(b) if b.provisional => self.send_cancel(now),
            Some(_) => {} // CANCEL goes out once a provisional arrives (section 9.1).
            None => self.respond(now, &Reject::new(487, "Request Terminated")),
        }
    }

    fn send_cancel(&mut self, now: Instant) {
        let timers = self.timers;
        let (Some(b), Some(plan)) = (&mut self.branch, &self.plan) else {
            return;
        };
        if b.cancel.is_some() {
            return;
        }
        let bytes = plan.cancel(&self.request, &b.via);
        b.cancel = Some(ClientNonInvite::new(now, b.reliable, timers, bytes.clone()));
        self.actions.push_back(Action::ToBranch {
            key: b.key.clone(),
            bytes,
        });
    }

    /// A response on one of this context's client transactions (matched by its key).
    /// `key` is the client key the response was matched by ([`ClientKey::of_response`]).
    pub fn handle_response(
        &mut self,
        key: &ClientKey,
        msg: &Message,
        pairs: &impl PairView,
        now: Instant,
    ) {
        let Some(code) = msg.status() else {
            return;
        };
        if let Some(g) = self.ghosts.iter_mut().find(|g| g.owns(key)) {
            // A late answer on a branch given up for the other member: still ours.
            let plan = self.plan.as_ref();
            g.handle_response(
                msg,
                &self.request,
                plan,
                self.timers,
                now,
                &mut self.actions,
            );
            return;
        }
        let Some(b) = &mut self.branch else {
            return;
        };
        if *key != b.key {
            return;
        }
        if !b.answered {
            if let Some((pair, member)) = self.member {
                self.actions.push_back(Action::Evidence {
                    pair,
                    member,
                    evidence: Evidence::Responded {
                        rtt: now.saturating_duration_since(b.sent_at),
                    },
                });
            }
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
                let (plan, request, via) = (&self.plan, &self.request, &b.via);
                c.on_response(now, code, || {
                    plan.as_ref().map(|p| p.ack(request, via, msg))
                })
            }
            Client::NonInvite(c) => (c.on_response(now, code), None),
        };
        if let Some(ack) = ack {
            self.actions.push_back(Action::ToBranch {
                key: b.key.clone(),
                bytes: ack,
            });
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
                self.send_cancel(now);
            }
            self.send_to_client(now, code, builder::forward_response(msg), Origin::Relayed);
            return;
        }
        self.timer_c = None;
        self.evidence(if code >= 500 {
            Evidence::Failed
        } else {
            Evidence::Served
        });
        if code == 503 {
            // The member is unavailable: the other one gets the request, if it may.
            // Section 16.7 step 6: never relay a 503 (it counts as a 500).
            self.note_failure(500);
            if let Some(hp) = self.failover_target(GiveUp::Failed, pairs, now) {
                self.actions.push_back(Action::Locate(hp));
                return;
            }
            self.respond_failure(now);
            return;
        }
        self.send_to_client(now, code, builder::forward_response(msg), Origin::Relayed);
    }

    /// The connection the branch used is gone before a final response came back and could
    /// not be reopened: as any transport error (see [`Self::handle_branch_failed`]).
    /// `phone_flow` when it was a phone's own flow, which cannot be reopened from here:
    /// then 430 Flow Failed (RFC 5626 section 5.3), as when the instance a request was
    /// relayed to cannot be reached.
    pub fn handle_transport_error(
        &mut self,
        phone_flow: bool,
        pairs: &impl PairView,
        now: Instant,
    ) {
        if self.branch_request_in_progress().is_none() {
            return;
        }
        if self.relay {
            self.relay_gone(false, now);
        } else if phone_flow {
            if let Some(b) = &mut self.branch {
                b.client.terminate();
            }
            self.respond(now, &Reject::new(430, "Flow Failed"));
        } else {
            self.handle_branch_failed(pairs, now);
        }
    }

    /// Timers: 100 Trying, the failover timer, the server and client transactions' timers,
    /// Timer C.
    pub fn handle_timeout(&mut self, pairs: &impl PairView, now: Instant) {
        if self.trying_at.is_some_and(|t| t <= now) {
            self.send_trying(now);
        }
        for g in &mut self.ghosts {
            g.handle_timeout(now, &mut self.actions);
        }
        let (over, live): (Vec<Ghost>, Vec<Ghost>) = std::mem::take(&mut self.ghosts)
            .into_iter()
            .partition(|g| g.is_over(now));
        self.ghosts = live;
        for key in over.iter().flat_map(Ghost::keys) {
            self.actions.push_back(Action::BranchGone(key));
        }
        if self.failover_at.is_some_and(|t| t <= now) {
            self.failover_at = None;
            if self.relay && self.branch.as_ref().is_some_and(|b| !b.answered) {
                self.relay_gone(true, now);
            } else if self.branch.as_ref().is_some_and(|b| !b.answered) {
                self.evidence(Evidence::Failed);
                if let Some(hp) = self.failover_target(GiveUp::Silent, pairs, now) {
                    self.actions.push_back(Action::Locate(hp));
                    return;
                }
            }
        }
        let resend = match &mut self.server {
            Server::Invite(s) => s.handle_timeout(now),
            Server::NonInvite(s) => {
                s.handle_timeout(now);
                None
            }
        };
        if let Some(bytes) = resend {
            self.actions.push_back(Action::ResendToClient(bytes));
        }
        let mut timed_out = false;
        if let Some(b) = &mut self.branch {
            let outcome = match &mut b.client {
                Client::Invite(c) => c.handle_timeout(now),
                Client::NonInvite(c) => c.handle_timeout(now),
            };
            match outcome {
                ClientTimeout::Retransmit(bytes) => self.actions.push_back(Action::ToBranch {
                    key: b.key.clone(),
                    bytes,
                }),
                ClientTimeout::TimedOut => timed_out = true,
                ClientTimeout::None => {}
            }
            if let Some(c) = &mut b.cancel {
                if let ClientTimeout::Retransmit(bytes) = c.handle_timeout(now) {
                    self.actions.push_back(Action::ToBranch {
                        key: b.key.clone(),
                        bytes,
                    });
                }
            }
        }
        if timed_out {
            self.actions.push_back(Action::UpstreamTimeout);
            self.note_failure(408);
            self.evidence(Evidence::Failed);
            if let Some(hp) = self.failover_target(GiveUp::TimedOut, pairs, now) {
                self.actions.push_back(Action::Locate(hp));
                return;
            }
            self.respond_failure(now);
        }
        if self.timer_c.is_some_and(|t| t <= now) {
            self.on_timer_c(now);
        }
    }

    /// Timer C (section 16.8): CANCEL the branch; if it still gives no final response
    /// within 64*T1, answer 408 and let the branch go.
    fn on_timer_c(&mut self, now: Instant) {
        if self.final_sent {
            self.timer_c = None;
            return;
        }
        if !self.timer_c_fired {
            self.timer_c_fired = true;
            self.timer_c = Some(now + self.timers.t1x64());
            self.send_cancel(now);
            return;
        }
        self.timer_c = None;
        if let Some(b) = &mut self.branch {
            b.client.terminate();
        }
        self.respond(now, &Reject::new(408, "Request Timeout"));
    }

    fn send_trying(&mut self, now: Instant) {
        self.respond(now, &Reject::new(100, "Trying"));
    }

    /// Answers the client with a response generated here.
    pub fn respond(&mut self, now: Instant, r: &Reject) {
        let tag = local_tag(&self.request);
        let bytes = builder::response(&self.request, r.code, &r.reason, &tag, &r.extra);
        self.send_to_client(now, r.code, bytes, Origin::Local);
    }

    fn send_to_client(&mut self, now: Instant, code: u16, bytes: Bytes, origin: Origin) {
        // Any response quenches the client's retransmissions: no 100 Trying after it.
        self.trying_at = None;
        let out = match &mut self.server {
            Server::Invite(s) => s.send_response(now, code, bytes),
            Server::NonInvite(s) => s.send_response(now, code, bytes),
        };
        if code >= 200 {
            self.final_sent = true;
        }
        if let Some(bytes) = out {
            self.actions.push_back(Action::ToClient {
                code,
                bytes,
                origin,
            });
        }
    }

    fn terminate_server(&mut self) {
        match &mut self.server {
            Server::Invite(s) => s.terminate(),
            Server::NonInvite(s) => s.terminate(),
        }
    }

    /// Whether every transaction this context owns has ended.
    pub fn is_done(&self) -> bool {
        let server_done = match &self.server {
            Server::Invite(s) => s.is_terminated(),
            Server::NonInvite(s) => s.is_terminated(),
        };
        let branch_done = self.branch.as_ref().is_none_or(|b| {
            b.client.is_terminated() && b.cancel.as_ref().is_none_or(ClientNonInvite::is_terminated)
        });
        server_done && branch_done && self.ghosts.is_empty()
    }

    /// When all that is left is absorbing retransmissions of the request (an INVITE
    /// answered 2xx, a non-INVITE answered), what to keep for that; the context can then
    /// be dropped. Retransmitted 2xx and late responses are forwarded statelessly.
    pub fn poll_linger(&self, now: Instant) -> Option<Linger> {
        let client_idle = self.branch.as_ref().is_none_or(|b| {
            !b.client.in_progress() && b.cancel.as_ref().is_none_or(ClientNonInvite::is_terminated)
        });
        if !client_idle || self.timer_c.is_some() || !self.ghosts.is_empty() {
            return None;
        }
        let (response, until) = match &self.server {
            Server::Invite(s) if s.state() == ServerState::Accepted => (None, s.poll_timeout()),
            Server::NonInvite(s) if s.state() == ServerState::Completed => {
                (s.last_response(), s.poll_timeout())
            }
            _ => return None,
        };
        let until = until.filter(|u| *u > now)?;
        Some(Linger { response, until })
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let server = match &self.server {
            Server::Invite(s) => s.poll_timeout(),
            Server::NonInvite(s) => s.poll_timeout(),
        };
        let (client, cancel) = match &self.branch {
            Some(b) => (
                match &b.client {
                    Client::Invite(c) => c.poll_timeout(),
                    Client::NonInvite(c) => c.poll_timeout(),
                },
                b.cancel.as_ref().and_then(ClientNonInvite::poll_timeout),
            ),
            None => (None, None),
        };
        [
            self.trying_at,
            self.timer_c,
            self.failover_at,
            server,
            client,
            cancel,
        ]
        .into_iter()
        .flatten()
        .chain(self.ghosts.iter().filter_map(Ghost::poll_timeout))
        .min()
    }
}
