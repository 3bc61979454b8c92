//! A branch given up for the other pair member is still ours until it ends: no ghost calls.
//!
//! When a member answers after the failover timer has sent the call to its peer, nobody
//! else will end what it started: the caller's call is on the peer, the member's agent
//! phone would ring for nobody, or the member would keep an answered call nobody ACKs or
//! ends. So a late provisional gets a CANCEL (RFC 3261 section 9.1: not before one), a late
//! non-2xx final the hop-by-hop ACK, and a late 2xx its ACK and a BYE, sent from this
//! proxy's place in the dialog (section 13.2.2.4: a 2xx beyond the first is ACKed and
//! ended). The given-up branch keeps its client key for 64*T1 from when the INVITE was
//! sent (Timer B), and as long as its CANCEL or BYE is under way.

use std::collections::VecDeque;
use std::time::Instant;

use crate::sip::builder;
use crate::sip::message::{Message, Method};
use crate::sip::transaction::{ClientKey, ClientNonInvite, Timers};

use super::{Action, Branch, Plan};

/// What became of a given-up branch that answered late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GhostOutcome {
    /// It sent a provisional: CANCELed.
    Cancelled,
    /// It answered 2xx: ACKed and ended with a BYE.
    Ended,
}

impl GhostOutcome {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            GhostOutcome::Cancelled => "cancelled",
            GhostOutcome::Ended => "ended",
        }
    }
}

/// A given-up INVITE branch (see the module documentation).
pub(super) struct Ghost {
    /// The branch as it was when given up (its client transaction no longer driven), to
    /// take it back when the other member fails too and it is still silent.
    /// Its key, Via, Record-Route count and the CANCEL sent on it are the branch's.
    branch: Branch,
    /// Until when late answers are expected (Timer B of the INVITE).
    until: Instant,
    bye: Option<ClientNonInvite>,
    /// The BYE's own client key (a transaction of its own, so a branch of its own).
    bye_key: Option<ClientKey>,
    final_seen: bool,
}

impl Ghost {
    pub(super) fn new(branch: Branch, timers: Timers) -> Ghost {
        Ghost {
            until: branch.sent_at + timers.t1x64(),
            branch,
            bye: None,
            bye_key: None,
            final_seen: false,
        }
    }

    /// A response on this branch; pushes what to send on it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn handle_response(
        &mut self,
        msg: &Message,
        request: &Message,
        plan: Option<&Plan>,
        timers: Timers,
        now: Instant,
        actions: &mut VecDeque<Action>,
    ) {
        let Some(code) = msg.status() else { return };
        self.branch.answered = true;
        match msg.cseq() {
            Some((_, Method::Cancel)) => {
                if let Some(c) = &mut self.branch.cancel {
                    c.on_response(now, code);
                }
                return;
            }
            Some((_, Method::Bye)) => {
                if let Some(b) = &mut self.bye {
                    b.on_response(now, code);
                }
                return;
            }
            _ => {}
        }
        let to_branch = |bytes| Action::ToBranch {
            key: self.branch.key.clone(),
            bytes,
        };
        match code {
            100..=199 if self.branch.cancel.is_none() && !self.final_seen => {
                let Some(plan) = plan else { return };
                let bytes = plan.cancel(request, &self.branch.via);
                self.branch.cancel = Some(ClientNonInvite::new(
                    now,
                    self.branch.reliable,
                    timers,
                    bytes.clone(),
                ));
                actions.push_back(to_branch(bytes));
                actions.push_back(Action::Ghost(GhostOutcome::Cancelled));
            }
            100..=199 => {}
            200..=299 => {
                self.final_seen = true;
                let cseq = request.cseq().map_or(1, |(n, _)| n);
                // A fresh branch for each: the ACK of a 2xx and the BYE are transactions of
                // their own (section 17.1.1.3).
                let via = |tag: &str| {
                    self.branch.via.replace(
                        self.branch.key.branch(),
                        &format!("{}{tag}", self.branch.key.branch()),
                    )
                };
                let ack = builder::in_dialog_after_2xx(
                    request,
                    msg,
                    &via("a"),
                    "ACK",
                    cseq,
                    self.branch.rr_sent,
                );
                actions.push_back(to_branch(ack));
                if self.bye.is_none() {
                    let bye_key = ClientKey::new(&format!("{}b", self.branch.key.branch()));
                    actions.push_back(Action::Track(bye_key.clone()));
                    self.bye_key = Some(bye_key);
                    let bye = builder::in_dialog_after_2xx(
                        request,
                        msg,
                        &via("b"),
                        "BYE",
                        cseq.saturating_add(1),
                        self.branch.rr_sent,
                    );
                    self.bye = Some(ClientNonInvite::new(
                        now,
                        self.branch.reliable,
                        timers,
                        bye.clone(),
                    ));
                    actions.push_back(to_branch(bye));
                    actions.push_back(Action::Ghost(GhostOutcome::Ended));
                }
            }
            _ => {
                self.final_seen = true;
                if let Some(plan) = plan {
                    actions.push_back(to_branch(plan.ack(request, &self.branch.via, msg)));
                }
            }
        }
    }

    /// Whether nothing at all came back on it yet (it may still answer).
    pub(super) fn is_silent(&self) -> bool {
        !self.branch.answered
            && self.branch.cancel.is_none()
            && self.bye.is_none()
            && !self.final_seen
    }

    /// The branch, taken back as the one the transaction waits for.
    pub(super) fn into_branch(self) -> Branch {
        self.branch
    }

    /// Whether a response with this key is for this branch (its INVITE, CANCEL or BYE).
    pub(super) fn owns(&self, key: &ClientKey) -> bool {
        self.branch.key == *key || self.bye_key.as_ref() == Some(key)
    }

    /// Its client keys, to forget when it is over.
    pub(super) fn keys(&self) -> impl Iterator<Item = ClientKey> + '_ {
        std::iter::once(self.branch.key.clone()).chain(self.bye_key.clone())
    }

    /// Retransmits its CANCEL or BYE when due.
    pub(super) fn handle_timeout(&mut self, now: Instant, actions: &mut VecDeque<Action>) {
        for t in [&mut self.branch.cancel, &mut self.bye]
            .into_iter()
            .flatten()
        {
            if let crate::sip::transaction::ClientTimeout::Retransmit(bytes) = t.handle_timeout(now)
            {
                actions.push_back(Action::ToBranch {
                    key: self.branch.key.clone(),
                    bytes,
                });
            }
        }
    }

    /// When it next needs [`Self::handle_timeout`] (or to be dropped).
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        [&self.branch.cancel, &self.bye]
            .into_iter()
            .flatten()
            .filter_map(ClientNonInvite::poll_timeout)
            .chain(std::iter::once(self.until))
            .min()
    }

    /// Whether nothing more is expected on it at `now`.
    pub(super) fn is_over(&self, now: Instant) -> bool {
        now >= self.until
            && [&self.branch.cancel, &self.bye]
                .into_iter()
                .flatten()
                .all(ClientNonInvite::is_terminated)
    }
}
