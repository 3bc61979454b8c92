//! Server transactions (RFC 3261 sections 17.2.1 and 17.2.2, RFC 6026 section 7.1).

use std::time::Instant;

use bytes::Bytes;

use super::Timers;

/// States shared by both server machines (non-INVITE uses Trying/Proceeding/Completed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE: request received, nothing sent yet.
    Trying,
    /// A provisional response has been sent (INVITE starts here after 100 Trying).
    Proceeding,
    /// INVITE only (RFC 6026): a 2xx was sent; 2xx retransmissions pass through.
    Accepted,
    /// A final response was sent; retransmissions of the request get it again.
    Completed,
    /// INVITE only: the ACK for a non-2xx final arrived.
    Confirmed,
    /// Done; the transaction can be forgotten.
    Terminated,
}

/// INVITE server transaction.
#[derive(Debug)]
pub struct ServerInvite {
    state: ServerState,
    reliable: bool,
    timers: Timers,
    last_response: Option<Bytes>,
    /// Timer G: next retransmission of a non-2xx final, and the current interval.
    timer_g: Option<(Instant, std::time::Duration)>,
    /// Timer H (Completed), I (Confirmed) or L (Accepted): when the state ends.
    end_at: Option<Instant>,
}

impl ServerInvite {
    /// A transaction for an INVITE just received.
    pub fn new(reliable: bool, timers: Timers) -> Self {
        ServerInvite {
            state: ServerState::Proceeding,
            reliable,
            timers,
            last_response: None,
            timer_g: None,
            end_at: None,
        }
    }

    /// Current state.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// The INVITE was received again: returns the response to resend, if any.
    pub fn on_retransmission(&self) -> Option<Bytes> {
        match self.state {
            ServerState::Proceeding | ServerState::Completed => self.last_response.clone(),
            _ => None,
        }
    }

    /// An ACK with this transaction's branch arrived (ACK for a non-2xx final).
    /// Returns whether it belonged here (it is then absorbed).
    pub fn on_ack(&mut self, now: Instant) -> bool {
        match self.state {
            ServerState::Completed => {
                self.state = ServerState::Confirmed;
                self.timer_g = None;
                self.end_at = Some(if self.reliable {
                    now
                } else {
                    now + self.timers.t4
                });
                true
            }
            ServerState::Confirmed => true,
            _ => false,
        }
    }

    /// The proxy core wants to send `response` with status `code`. Returns the bytes to send
    /// (`None` when the state no longer allows it, for example a 180 after the final).
    pub fn send_response(&mut self, now: Instant, code: u16, response: Bytes) -> Option<Bytes> {
        match (self.state, code) {
            (ServerState::Proceeding, 100..=199) => {
                self.last_response = Some(response.clone());
                Some(response)
            }
            (ServerState::Proceeding | ServerState::Accepted, 200..=299) => {
                if self.state == ServerState::Proceeding {
                    self.state = ServerState::Accepted;
                    self.end_at = Some(now + self.timers.t1x64());
                }
                Some(response)
            }
            (ServerState::Proceeding, 300..=699) => {
                self.state = ServerState::Completed;
                self.last_response = Some(response.clone());
                if !self.reliable {
                    self.timer_g = Some((now + self.timers.t1, self.timers.t1));
                }
                self.end_at = Some(now + self.timers.t1x64());
                Some(response)
            }
            _ => None,
        }
    }

    /// When [`ServerInvite::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let g = self.timer_g.map(|(at, _)| at);
        match (g, self.end_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires due timers. Returns a retransmission to send, if any.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Bytes> {
        if self.end_at.is_some_and(|t| t <= now) {
            self.state = ServerState::Terminated;
            self.timer_g = None;
            self.end_at = None;
            return None;
        }
        match self.timer_g {
            Some((at, interval)) if at <= now && self.state == ServerState::Completed => {
                let next = (interval * 2).min(self.timers.t2);
                self.timer_g = Some((now + next, next));
                self.last_response.clone()
            }
            _ => None,
        }
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }

    /// Ends the transaction at once (the transport failed, or the proxy is shutting it).
    pub fn terminate(&mut self) {
        self.state = ServerState::Terminated;
        self.timer_g = None;
        self.end_at = None;
    }
}

/// Non-INVITE server transaction.
#[derive(Debug)]
pub struct ServerNonInvite {
    state: ServerState,
    reliable: bool,
    timers: Timers,
    last_response: Option<Bytes>,
    /// Timer J.
    end_at: Option<Instant>,
}

impl ServerNonInvite {
    /// A transaction for a non-INVITE request just received.
    pub fn new(reliable: bool, timers: Timers) -> Self {
        ServerNonInvite {
            state: ServerState::Trying,
            reliable,
            timers,
            last_response: None,
            end_at: None,
        }
    }

    /// Current state.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// The last response sent.
    pub fn last_response(&self) -> Option<Bytes> {
        self.last_response.clone()
    }

    /// The request was received again: the response to resend, if any.
    pub fn on_retransmission(&self) -> Option<Bytes> {
        match self.state {
            ServerState::Proceeding | ServerState::Completed => self.last_response.clone(),
            _ => None,
        }
    }

    /// Sends a response; returns the bytes to send, `None` once a final was sent.
    pub fn send_response(&mut self, now: Instant, code: u16, response: Bytes) -> Option<Bytes> {
        match (self.state, code) {
            (ServerState::Trying | ServerState::Proceeding, 100..=199) => {
                self.state = ServerState::Proceeding;
                self.last_response = Some(response.clone());
                Some(response)
            }
            (ServerState::Trying | ServerState::Proceeding, 200..=699) => {
                self.state = ServerState::Completed;
                self.last_response = Some(response.clone());
                self.end_at = Some(if self.reliable {
                    now
                } else {
                    now + self.timers.t1x64()
                });
                Some(response)
            }
            _ => None,
        }
    }

    /// When [`ServerNonInvite::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.end_at
    }

    /// Fires Timer J.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.end_at.is_some_and(|t| t <= now) {
            self.state = ServerState::Terminated;
            self.end_at = None;
        }
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }

    /// Ends the transaction at once.
    pub fn terminate(&mut self) {
        self.state = ServerState::Terminated;
        self.end_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn invite_non_2xx_retransmits_with_timer_g_until_ack() {
        let t0 = Instant::now();
        let timers = Timers::default();
        let mut tx = ServerInvite::new(false, timers);
        assert_eq!(tx.send_response(t0, 100, b("100")), Some(b("100")));
        assert_eq!(tx.on_retransmission(), Some(b("100")));
        assert_eq!(tx.send_response(t0, 486, b("486")), Some(b("486")));
        assert_eq!(tx.state(), ServerState::Completed);
        // Timer G: 500 ms, 1 s, 2 s, 4 s, 4 s ...
        let mut at = tx.poll_timeout().unwrap();
        assert_eq!(at - t0, Duration::from_millis(500));
        let mut intervals = vec![];
        for _ in 0..5 {
            assert_eq!(tx.handle_timeout(at), Some(b("486")));
            let next = tx.poll_timeout().unwrap();
            intervals.push((next - at).as_millis());
            at = next;
        }
        assert_eq!(intervals, vec![1000, 2000, 4000, 4000, 4000]);
        assert!(tx.on_ack(at));
        assert_eq!(tx.state(), ServerState::Confirmed);
        // Timer I = T4 on UDP, no more retransmissions.
        let end = tx.poll_timeout().unwrap();
        assert_eq!(end - at, timers.t4);
        assert_eq!(tx.handle_timeout(end), None);
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_timer_h_ends_without_ack() {
        let t0 = Instant::now();
        let timers = Timers::default();
        let mut tx = ServerInvite::new(true, timers);
        tx.send_response(t0, 500, b("500"));
        // Reliable: no Timer G, only H.
        assert_eq!(tx.poll_timeout(), Some(t0 + timers.t1x64()));
        tx.handle_timeout(t0 + timers.t1x64());
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_2xx_accepted_state_passes_retransmitted_2xx() {
        let t0 = Instant::now();
        let timers = Timers::default();
        let mut tx = ServerInvite::new(false, timers);
        assert!(tx.send_response(t0, 200, b("200")).is_some());
        assert_eq!(tx.state(), ServerState::Accepted);
        // RFC 6026: 2xx retransmissions from the UAS are forwarded, INVITE retransmissions absorbed.
        assert!(tx.send_response(t0, 200, b("200")).is_some());
        assert_eq!(tx.on_retransmission(), None);
        assert!(tx.send_response(t0, 180, b("180")).is_none());
        assert!(!tx.on_ack(t0));
        tx.handle_timeout(t0 + timers.t1x64());
        assert!(tx.is_terminated());
    }

    #[test]
    fn non_invite_timer_j() {
        let t0 = Instant::now();
        let timers = Timers::default();
        let mut tx = ServerNonInvite::new(false, timers);
        assert_eq!(tx.on_retransmission(), None);
        tx.send_response(t0, 200, b("200"));
        assert_eq!(tx.on_retransmission(), Some(b("200")));
        assert!(tx.send_response(t0, 404, b("404")).is_none());
        tx.handle_timeout(t0 + timers.t1x64() - Duration::from_millis(1));
        assert!(!tx.is_terminated());
        tx.handle_timeout(t0 + timers.t1x64());
        assert!(tx.is_terminated());
    }
}
