//! The branch a response context forwarded its request on (RFC 3261 section 16.6 step 8
//! and section 16.7): its client transaction (INVITE or non-INVITE, section 17.1), the
//! CANCEL sent on it, and what the context needs to remember about it.

use std::time::Instant;

use crate::sip::transaction::{ClientInvite, ClientKey, ClientNonInvite, ClientState};

/// The client transaction of a branch.
pub(super) enum Client {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

impl Client {
    pub(super) fn state(&self) -> ClientState {
        match self {
            Client::Invite(c) => c.state(),
            Client::NonInvite(c) => c.state(),
        }
    }

    pub(super) fn in_progress(&self) -> bool {
        matches!(self.state(), ClientState::Calling | ClientState::Proceeding)
    }

    pub(super) fn is_terminated(&self) -> bool {
        match self {
            Client::Invite(c) => c.is_terminated(),
            Client::NonInvite(c) => c.is_terminated(),
        }
    }

    /// Ends an INVITE client transaction given up; a non-INVITE one ends by its own timers.
    pub(super) fn terminate(&mut self) {
        if let Client::Invite(c) = self {
            c.terminate();
        }
    }
}

/// The request as forwarded on one branch.
pub(super) struct Branch {
    pub(super) key: ClientKey,
    pub(super) client: Client,
    /// Our Via on this branch, to write its CANCEL and ACK.
    pub(super) via: String,
    pub(super) provisional: bool,
    /// Any response at all arrived on this branch.
    pub(super) answered: bool,
    pub(super) cancel: Option<ClientNonInvite>,
    pub(super) reliable: bool,
    pub(super) sent_at: Instant,
    /// Record-Route entries the request carried as sent.
    pub(super) rr_sent: usize,
}
