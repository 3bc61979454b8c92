//! Which member gets a retry (the failover half of section 16.7 for a primary/backup
//! pair): evidence about the member a branch went to, giving a branch up for the other
//! member (kept as a ghost when it was only silent), waiting again for a slow member when
//! the other failed too, and the best failure to answer when every member failed
//! (section 16.7 step 6).

use std::time::Instant;

use crate::sip::addr::HostPort;

use super::{
    Action, Client, Destination, Evidence, Ghost, PairView, Plan, Reject, ResponseContext,
};

/// Why a branch is given up for the other member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GiveUp {
    /// Nothing came back before the failover timer: it may still answer.
    Silent,
    /// Its client transaction timed out (Timer B or F): nothing more will come.
    TimedOut,
    /// It refused (503) or could not be reached: nothing more will come.
    Failed,
}

impl ResponseContext {
    /// The other member of the pair, when the request went to a pair member, has not been
    /// retried yet, no final answer went to the client, and the other member is up.
    /// Reports the evidence against the member either way, and gives the branch up: an
    /// INVITE branch that was only silent may still answer and is kept as a ghost; any
    /// other is forgotten.
    pub(super) fn failover_target(
        &mut self,
        why: GiveUp,
        pairs: &impl PairView,
        now: Instant,
    ) -> Option<HostPort> {
        let (pair, member) = self.member?;
        let unanswered = matches!(why, GiveUp::Silent | GiveUp::TimedOut);
        let evidence = if unanswered && self.is_invite() {
            // Only INVITE: one stray request a server ignores must not take it out.
            Evidence::Unanswered {
                sent_at: self.branch.as_ref().map_or(now, |b| b.sent_at),
            }
        } else {
            Evidence::Suspect
        };
        self.evidence(evidence);
        if self.retried || self.final_sent || self.cancelled {
            return None;
        }
        let other = member.other();
        if !pairs.is_up(pair, other) {
            return None;
        }
        let hp = pairs.server(pair, other)?;
        self.retried = true;
        self.member = Some((pair, other));
        self.failover_at = None;
        self.actions.push_back(Action::Retried(hp.clone()));
        if let Some(b) = self.branch.take() {
            if why == GiveUp::Silent && matches!(b.client, Client::Invite(_)) {
                // Its key stays mapped to this transaction: what it sends late is ours.
                self.ghosts.push(Ghost::new(b, self.timers));
            } else {
                self.actions.push_back(Action::BranchGone(b.key));
            }
        }
        Some(hp)
    }

    /// The instance a request was relayed to cannot be reached, or (`silent`) gave no
    /// answer in time. A UDP flow is then sent to from here (see [`Plan::relay_failed`]);
    /// for a connection the client gets 430 Flow Failed at once. A silent INVITE branch may
    /// still answer and stays ours as a ghost (late provisional: CANCEL; late 2xx: ACK and
    /// BYE); any other branch is forgotten.
    pub(super) fn relay_gone(&mut self, silent: bool, now: Instant) {
        self.failover_at = None;
        if let Some(Destination::Relay { instance, .. }) =
            self.plan.as_ref().map(|p| &p.destination)
        {
            self.actions.push_back(Action::RelayFailed(*instance));
        }
        if let Some(mut b) = self.branch.take() {
            if silent && matches!(b.client, Client::Invite(_)) {
                self.ghosts.push(Ghost::new(b, self.timers));
            } else {
                b.client.terminate();
                self.actions.push_back(Action::BranchGone(b.key));
            }
        }
        if let Some(flow) = self.plan.as_mut().and_then(Plan::relay_failed) {
            self.relay = false;
            self.actions.push_back(Action::Flow(Box::new(flow)));
            return;
        }
        self.respond(now, &Reject::new(430, "Flow Failed"));
    }

    /// Evidence about the member the current branch went to, if it went to one.
    pub(super) fn evidence(&mut self, evidence: Evidence) {
        if let Some((pair, member)) = self.member {
            self.actions.push_back(Action::Evidence {
                pair,
                member,
                evidence,
            });
        }
    }

    /// Keeps the best failure seen across the members tried (section 16.7 step 6: the
    /// lowest class wins; among equals, the first).
    pub(super) fn note_failure(&mut self, code: u16) {
        self.failure = Some(match self.failure {
            Some(f) if f / 100 <= code / 100 => f,
            _ => code,
        });
    }

    /// Every member tried has failed: when the one given up for being slow is still
    /// silent, the transaction waits for it again (it may yet answer; its own Timer B ends
    /// the wait); else the best failure is answered (408 when one timed out, else 500).
    pub(super) fn respond_failure(&mut self, now: Instant) {
        if let Some(i) = self.ghosts.iter().position(Ghost::is_silent) {
            let revived = self.ghosts.remove(i).into_branch();
            if let Some(failed) = self.branch.replace(revived) {
                self.actions.push_back(Action::BranchGone(failed.key));
            }
            if let Some((pair, member)) = self.member {
                self.member = Some((pair, member.other()));
            }
            return;
        }
        let r = match self.failure {
            Some(408) => Reject::new(408, "Request Timeout"),
            _ => Reject::new(500, "Server Internal Error"),
        };
        self.respond(now, &r);
    }
}
