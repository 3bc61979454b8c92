//! Client transactions (RFC 3261 sections 17.1.1 and 17.1.2, RFC 6026 section 7.2).

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Timers;

/// States of a client transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE sent, no response yet (non-INVITE: Trying).
    Calling,
    /// A provisional response arrived.
    Proceeding,
    /// INVITE only (RFC 6026): a 2xx arrived; further 2xx pass up until Timer M.
    Accepted,
    /// A final response arrived; retransmissions of it are absorbed.
    Completed,
    /// Done.
    Terminated,
}

/// What to do with a response that matched this transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseDisposition {
    /// Hand it to the proxy core (first of its kind, or a 2xx in Accepted).
    PassUp,
    /// A retransmission: absorb it (the ACK, if any, has been resent).
    Absorb,
}

/// What a timer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientTimeout {
    /// Nothing to report.
    None,
    /// Retransmit this request (Timer A or E).
    Retransmit(Bytes),
    /// Timer B or F: no final response in time. The transaction is terminated.
    TimedOut,
}

/// INVITE client transaction.
#[derive(Debug)]
pub struct ClientInvite {
    state: ClientState,
    reliable: bool,
    timers: Timers,
    request: Bytes,
    ack: Option<Bytes>,
    /// Timer A: next retransmission and current interval.
    timer_a: Option<(Instant, Duration)>,
    /// Timer B (Calling), D (Completed) or M (Accepted).
    end_at: Option<Instant>,
}

impl ClientInvite {
    /// Starts the transaction; the caller sends `request` now.
    pub fn new(now: Instant, reliable: bool, timers: Timers, request: Bytes) -> Self {
        ClientInvite {
            state: ClientState::Calling,
            reliable,
            timers,
            request,
            ack: None,
            timer_a: (!reliable).then_some((now + timers.t1, timers.t1)),
            end_at: Some(now + timers.t1x64()),
        }
    }

    /// Current state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// The request as sent (for building CANCEL and ACK).
    pub fn request(&self) -> &Bytes {
        &self.request
    }

    /// A response with this transaction's branch arrived. For a 300-699 final, `build_ack`
    /// is called once to make the hop-by-hop ACK; returns the ACK to send now, if any.
    pub fn on_response(
        &mut self,
        now: Instant,
        code: u16,
        build_ack: impl FnOnce() -> Option<Bytes>,
    ) -> (ResponseDisposition, Option<Bytes>) {
        use ClientState::*;
        match (self.state, code) {
            (Calling | Proceeding, 100..=199) => {
                self.state = Proceeding;
                self.timer_a = None;
                // Timer B only guards Calling; a proxy guards Proceeding with Timer C.
                self.end_at = None;
                (ResponseDisposition::PassUp, None)
            }
            (Calling | Proceeding, 200..=299) => {
                self.state = Accepted;
                self.timer_a = None;
                self.end_at = Some(now + self.timers.t1x64());
                (ResponseDisposition::PassUp, None)
            }
            (Accepted, 200..=299) => (ResponseDisposition::PassUp, None),
            (Calling | Proceeding, 300..=699) => {
                self.state = Completed;
                self.timer_a = None;
                self.ack = build_ack();
                self.end_at = Some(if self.reliable {
                    now
                } else {
                    now + Duration::from_secs(32)
                });
                (ResponseDisposition::PassUp, self.ack.clone())
            }
            (Completed, 300..=699) => (ResponseDisposition::Absorb, self.ack.clone()),
            _ => (ResponseDisposition::Absorb, None),
        }
    }

    /// When [`ClientInvite::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        earliest(self.timer_a.map(|(t, _)| t), self.end_at)
    }

    /// Fires due timers.
    pub fn handle_timeout(&mut self, now: Instant) -> ClientTimeout {
        if self.end_at.is_some_and(|t| t <= now) {
            let timed_out = self.state == ClientState::Calling;
            self.terminate();
            return if timed_out {
                ClientTimeout::TimedOut
            } else {
                ClientTimeout::None
            };
        }
        match self.timer_a {
            Some((at, interval)) if at <= now && self.state == ClientState::Calling => {
                let next = interval * 2;
                self.timer_a = Some((now + next, next));
                ClientTimeout::Retransmit(self.request.clone())
            }
            _ => ClientTimeout::None,
        }
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }

    /// Ends the transaction at once.
    pub fn terminate(&mut self) {
        self.state = ClientState::Terminated;
        self.timer_a = None;
        self.end_at = None;
    }
}

/// Non-INVITE client transaction.
#[derive(Debug)]
pub struct ClientNonInvite {
    state: ClientState,
    reliable: bool,
    timers: Timers,
    request: Bytes,
    /// Timer E.
    timer_e: Option<(Instant, Duration)>,
    /// Timer F (Trying/Proceeding) or K (Completed).
    end_at: Option<Instant>,
}

impl ClientNonInvite {
    /// Starts the transaction; the caller sends `request` now.
    pub fn new(now: Instant, reliable: bool, timers: Timers, request: Bytes) -> Self {
        ClientNonInvite {
            state: ClientState::Calling,
            reliable,
            timers,
            request,
            timer_e: (!reliable).then_some((now + timers.t1, timers.t1)),
            end_at: Some(now + timers.t1x64()),
        }
    }

    /// The request as sent (to resend it over a new connection).
    pub fn request(&self) -> &Bytes {
        &self.request
    }

    /// Current state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// A response with this transaction's branch arrived.
    pub fn on_response(&mut self, now: Instant, code: u16) -> ResponseDisposition {
        use ClientState::*;
        match (self.state, code) {
            (Calling | Proceeding, 100..=199) => {
                self.state = Proceeding;
                ResponseDisposition::PassUp
            }
            (Calling | Proceeding, 200..=699) => {
                self.state = Completed;
                self.timer_e = None;
                self.end_at = Some(if self.reliable {
                    now
                } else {
                    now + self.timers.t4
                });
                ResponseDisposition::PassUp
            }
            _ => ResponseDisposition::Absorb,
        }
    }

    /// When [`ClientNonInvite::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        earliest(self.timer_e.map(|(t, _)| t), self.end_at)
    }

    /// Fires due timers.
    pub fn handle_timeout(&mut self, now: Instant) -> ClientTimeout {
        if self.end_at.is_some_and(|t| t <= now) {
            let timed_out = matches!(self.state, ClientState::Calling | ClientState::Proceeding);
            self.state = ClientState::Terminated;
            self.timer_e = None;
            self.end_at = None;
            return if timed_out {
                ClientTimeout::TimedOut
            } else {
                ClientTimeout::None
            };
        }
        match self.timer_e {
            Some((at, interval)) if at <= now => {
                // Trying doubles up to T2; Proceeding retransmits every T2.
                let next = if self.state == ClientState::Proceeding {
                    self.timers.t2
                } else {
                    (interval * 2).min(self.timers.t2)
                };
                self.timer_e = Some((now + next, next));
                ClientTimeout::Retransmit(self.request.clone())
            }
            _ => ClientTimeout::None,
        }
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn invite_timer_a_doubles_and_timer_b_times_out() {
        let t0 = Instant::now();
        let timers = Timers::default();
        let mut tx = ClientInvite::new(t0, false, timers, b("INVITE"));
        let mut sends = 0;
        let mut last = t0;
        let mut gaps = vec![];
        loop {
            let at = tx.poll_timeout().unwrap();
            match tx.handle_timeout(at) {
                ClientTimeout::Retransmit(_) => {
                    sends += 1;
                    gaps.push((at - last).as_millis());
                    last = at;
                }
                ClientTimeout::TimedOut => {
                    assert_eq!(at - t0, timers.t1x64());
                    break;
                }
                ClientTimeout::None => panic!("unexpected wake-up"),
            }
        }
        assert_eq!(gaps, vec![500, 1000, 2000, 4000, 8000, 16000]);
        assert_eq!(sends, 6);
        assert!(tx.is_terminated());
    }

    #[test]
    fn invite_provisional_stops_retransmissions_and_timer_b() {
        let t0 = Instant::now();
        let mut tx = ClientInvite::new(t0, false, Timers::default(), b("INVITE"));
        assert_eq!(
            tx.on_response(t0, 180, || None).0,
            ResponseDisposition::PassUp
        );
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn invite_non_2xx_acks_and_absorbs_retransmissions() {
        let t0 = Instant::now();
        let mut tx = ClientInvite::new(t0, false, Timers::default(), b("INVITE"));
        let (d, ack) = tx.on_response(t0, 486, || Some(b("ACK")));
        assert_eq!(d, ResponseDisposition::PassUp);
        assert_eq!(ack, Some(b("ACK")));
        let (d, ack) = tx.on_response(t0, 486, || panic!("ACK built twice"));
        assert_eq!(d, ResponseDisposition::Absorb);
        assert_eq!(ack, Some(b("ACK")));
        // Timer D: 32 s on UDP.
        assert_eq!(tx.poll_timeout(), Some(t0 + Duration::from_secs(32)));
    }

    #[test]
    fn invite_2xx_accepted_passes_every_2xx() {
        let t0 = Instant::now();
        let timers = Timers::default();
        let mut tx = ClientInvite::new(t0, true, timers, b("INVITE"));
        assert_eq!(
            tx.on_response(t0, 200, || None).0,
            ResponseDisposition::PassUp
        );
        assert_eq!(
            tx.on_response(t0, 200, || None).0,
            ResponseDisposition::PassUp
        );
        assert_eq!(
            tx.on_response(t0, 486, || None).0,
            ResponseDisposition::Absorb
        );
        assert_eq!(tx.handle_timeout(t0 + timers.t1x64()), ClientTimeout::None);
        assert!(tx.is_terminated());
    }

    #[test]
    fn non_invite_timer_e_caps_at_t2_and_f_times_out() {
        let t0 = Instant::now();
        let timers = Timers::default();
        let mut tx = ClientNonInvite::new(t0, false, timers, b("BYE"));
        let mut gaps = vec![];
        let mut last = t0;
        loop {
            let at = tx.poll_timeout().unwrap();
            match tx.handle_timeout(at) {
                ClientTimeout::Retransmit(_) => {
                    gaps.push((at - last).as_millis());
                    last = at;
                }
                ClientTimeout::TimedOut => break,
                ClientTimeout::None => panic!("unexpected"),
            }
        }
        assert_eq!(&gaps[..5], &[500, 1000, 2000, 4000, 4000]);
        assert!(tx.is_terminated());
    }

    #[test]
    fn non_invite_final_then_timer_k() {
        let t0 = Instant::now();
        let timers = Timers::default();
        let mut tx = ClientNonInvite::new(t0, false, timers, b("BYE"));
        assert_eq!(tx.on_response(t0, 200), ResponseDisposition::PassUp);
        assert_eq!(tx.on_response(t0, 200), ResponseDisposition::Absorb);
        assert_eq!(tx.poll_timeout(), Some(t0 + timers.t4));
        assert_eq!(tx.handle_timeout(t0 + timers.t4), ClientTimeout::None);
        assert!(tx.is_terminated());
    }

    #[test]
    fn reliable_has_no_retransmissions() {
        let t0 = Instant::now();
        let timers = Timers::default();
        let tx = ClientNonInvite::new(t0, true, timers, b("BYE"));
        assert_eq!(tx.poll_timeout(), Some(t0 + timers.t1x64()));
    }
}
