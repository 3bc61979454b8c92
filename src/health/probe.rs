//! The health of one upstream server as seen through OPTIONS probes, sans-IO.
//!
//! A [`ProbeState`] says when the next probe is due (`oos_check` apart while the server is
//! in service, `oos_force` apart while it is out), takes the outcome of each probe, and
//! reports a [`Change`] when the server goes down or comes back. Any final response means
//! the server is alive, except 503, which counts as down for its Retry-After (or
//! `oos_force`) seconds. An answer to a probe other than the outstanding one (a late answer)
//! never changes the state.

use std::time::{Duration, Instant};

/// Probe timing and thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Interval between probes of an in-service server; `None` disables probing.
    pub oos_check: Option<Duration>,
    /// Interval between probes of an out-of-service server.
    pub oos_force: Duration,
    /// How long a probe may go unanswered.
    pub timeout: Duration,
    /// Missed probes before the server is down.
    pub down_after: u32,
    /// Answered probes before a down server is up again.
    pub up_after: u32,
    /// Transactions failed in a row (timed out, 5xx) that take a server answering its
    /// probes out of service anyway (the circuit breaker); 0: off.
    pub breaker_failures: u32,
    /// How long a server the breaker took out stays out (on probation) even when it
    /// answers its probes; after that the probes bring it back as usual.
    pub breaker_probation: Duration,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            oos_check: Some(Duration::from_secs(5)),
            oos_force: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            down_after: 1,
            up_after: 1,
            breaker_failures: 5,
            breaker_probation: Duration::from_secs(30),
        }
    }
}

/// A change of a server's state, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The server stopped answering (or answered 503).
    Down(String),
    /// The server answers again.
    Up(String),
}

/// The state of one server.
#[derive(Debug, Clone)]
pub struct ProbeState {
    cfg: ProbeConfig,
    up: bool,
    ok_in_a_row: u32,
    missed_in_a_row: u32,
    /// The outstanding probe: its number and when it was sent.
    outstanding: Option<(u64, Instant)>,
    next_seq: u64,
    next_probe: Instant,
    /// A 503, or the circuit breaker, keeps the server down at least until then.
    held_down_until: Option<Instant>,
    /// Transactions sent to it that failed in a row (the circuit breaker's count).
    failed_in_a_row: u32,
    /// Round-trip time of the last answered probe.
    pub last_rtt: Option<Duration>,
    /// When the last probe was answered or timed out.
    pub last_probe: Option<Instant>,
    /// Why the state last changed.
    pub last_reason: String,
    /// When the state last changed.
    pub since: Instant,
}

impl ProbeState {
    /// A server assumed up at `now`, first probe due at once.
    pub fn new(cfg: ProbeConfig, now: Instant) -> Self {
        ProbeState {
            cfg,
            up: true,
            ok_in_a_row: 0,
            missed_in_a_row: 0,
            outstanding: None,
            next_seq: 1,
            next_probe: now,
            held_down_until: None,
            failed_in_a_row: 0,
            last_rtt: None,
            last_probe: None,
            last_reason: "initial".into(),
            since: now,
        }
    }

    /// A server known to be down at `now` (a reload restarting its probe): it needs
    /// `up_after` answered probes, the first at once, to come back.
    pub fn down(cfg: ProbeConfig, now: Instant, reason: String) -> Self {
        ProbeState {
            up: false,
            last_reason: reason,
            ..ProbeState::new(cfg, now)
        }
    }

    /// Whether the server is in service.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The next instant something must happen: a probe is due or the outstanding one times
    /// out. `None` when probing is disabled and nothing is outstanding.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if let Some((_, sent)) = self.outstanding {
            return Some(sent + self.cfg.timeout);
        }
        if self.up && self.cfg.oos_check.is_none() {
            return None;
        }
        Some(self.next_probe)
    }

    /// Whether a probe should be sent now; if so, returns its number and marks it sent.
    pub fn poll_probe(&mut self, now: Instant) -> Option<u64> {
        if self.outstanding.is_some() || now < self.next_probe {
            return None;
        }
        if self.up && self.cfg.oos_check.is_none() {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.outstanding = Some((seq, now));
        Some(seq)
    }

    fn interval(&self) -> Duration {
        if self.up {
            self.cfg.oos_check.unwrap_or(self.cfg.oos_force)
        } else {
            self.cfg.oos_force
        }
    }

    /// The round trip of probe `seq` if it is the one outstanding.
    pub fn rtt_of(&self, seq: u64, now: Instant) -> Option<Duration> {
        match self.outstanding {
            Some((s, sent)) if s == seq => Some(now.saturating_duration_since(sent)),
            _ => None,
        }
    }

    /// A final response to probe `seq`. `retry_after` is the 503's Retry-After, if any.
    pub fn on_response(
        &mut self,
        now: Instant,
        seq: u64,
        code: u16,
        retry_after: Option<Duration>,
    ) -> Option<Change> {
        match self.outstanding {
            // Provisional: keep waiting for the final response.
            Some((s, _)) if s == seq && code < 200 => return None,
            Some((s, sent)) if s == seq => {
                self.outstanding = None;
                self.last_probe = Some(now);
                self.last_rtt = Some(now.saturating_duration_since(sent));
            }
            // A late answer to an older probe, or none outstanding: ignored.
            _ => return None,
        }
        if code == 503 {
            let hold = retry_after.unwrap_or(self.cfg.oos_force);
            self.held_down_until = Some(now + hold);
            self.next_probe = now + hold;
            self.ok_in_a_row = 0;
            return self.go_down(now, "answered 503 Service Unavailable".into());
        }
        self.missed_in_a_row = 0;
        self.ok_in_a_row = self.ok_in_a_row.saturating_add(1);
        if self.up {
            self.last_reason = format!("answered OPTIONS with {code}");
        }
        let change = if !self.up
            && self.ok_in_a_row >= self.cfg.up_after
            && self.held_down_until.is_none_or(|t| now >= t)
        {
            self.up = true;
            self.held_down_until = None;
            self.since = now;
            self.last_reason = format!("answered OPTIONS with {code}");
            Some(Change::Up(self.last_reason.clone()))
        } else {
            None
        };
        self.next_probe = now + self.interval();
        change
    }

    /// Brings the next probe forward to `now` (a transaction toward the server failed).
    pub fn probe_soon(&mut self, now: Instant) {
        if self.outstanding.is_none() && self.next_probe > now {
            self.next_probe = now;
        }
    }

    /// Checks the outstanding probe's timeout.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Change> {
        let (_, sent) = self.outstanding?;
        if now < sent + self.cfg.timeout {
            return None;
        }
        self.outstanding = None;
        self.last_probe = Some(now);
        self.ok_in_a_row = 0;
        self.missed_in_a_row = self.missed_in_a_row.saturating_add(1);
        let change = if self.up && self.missed_in_a_row >= self.cfg.down_after {
            self.go_down(
                now,
                format!("no answer to {} OPTIONS probe(s)", self.missed_in_a_row),
            )
        } else {
            None
        };
        self.next_probe = now + self.interval();
        change
    }

    /// A request other than a probe went unanswered: counts like a missed probe, and the
    /// probe outstanding, if any, is abandoned.
    pub fn missed(&mut self, now: Instant, what: &str) -> Option<Change> {
        self.outstanding = None;
        self.ok_in_a_row = 0;
        self.missed_in_a_row = self.missed_in_a_row.saturating_add(1);
        let change = if self.up && self.missed_in_a_row >= self.cfg.down_after {
            self.go_down(now, what.to_string())
        } else {
            None
        };
        self.next_probe = now + self.interval();
        change
    }

    /// What became of a transaction sent to the server: `served` when it gave a final
    /// answer below 500, not when it timed out or answered 5xx. After
    /// `breaker_failures` failures in a row the circuit breaker opens: the server is taken
    /// out of service even though it answers its probes, and kept out for
    /// `breaker_probation` (a member still on probation is never failed over to); then its
    /// probes bring it back as usual.
    pub fn transaction_outcome(&mut self, now: Instant, served: bool) -> Option<Change> {
        if served || !self.up {
            // Only a member that is up counts: a silent one is the probe's business (and
            // needs no probation once it answers again).
            self.failed_in_a_row = 0;
            return None;
        }
        self.failed_in_a_row = self.failed_in_a_row.saturating_add(1);
        if self.cfg.breaker_failures == 0 || self.failed_in_a_row < self.cfg.breaker_failures {
            return None;
        }
        self.failed_in_a_row = 0;
        self.held_down_until = Some(now + self.cfg.breaker_probation);
        self.ok_in_a_row = 0;
        self.go_down(
            now,
            format!(
                "circuit breaker: {} transactions failed in a row",
                self.cfg.breaker_failures
            ),
        )
    }

    /// The server cannot be reached at all (its name does not resolve, or no transport).
    pub fn unreachable(&mut self, now: Instant, why: &str) -> Option<Change> {
        self.outstanding = None;
        self.last_probe = Some(now);
        self.ok_in_a_row = 0;
        let change = self.go_down(now, why.to_string());
        self.next_probe = now + self.interval();
        change
    }

    fn go_down(&mut self, now: Instant, reason: String) -> Option<Change> {
        self.failed_in_a_row = 0;
        if !self.up {
            return None;
        }
        self.up = false;
        self.since = now;
        self.last_reason = reason.clone();
        Some(Change::Down(reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn cfg() -> ProbeConfig {
        ProbeConfig {
            oos_check: Some(Duration::from_secs(5)),
            oos_force: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            down_after: 1,
            up_after: 1,
            breaker_failures: 3,
            breaker_probation: Duration::from_secs(20),
        }
    }

    #[test]
    fn a_server_restarted_down_is_probed_at_once_and_comes_back_after_up_after() {
        let t0 = Instant::now();
        let mut p = ProbeState::down(cfg(), t0, "no answer".into());
        assert!(!p.is_up());
        assert_eq!(p.last_reason, "no answer");
        let seq = p.poll_probe(t0).unwrap();
        let back = p.on_response(t0 + Duration::from_millis(5), seq, 200, None);
        assert!(matches!(back, Some(Change::Up(_))), "{back:?}");
        assert!(p.is_up());
    }

    #[test]
    fn probes_every_oos_check_while_up() {
        let t0 = Instant::now();
        let mut p = ProbeState::new(cfg(), t0);
        let seq = p.poll_probe(t0).unwrap();
        assert!(p.poll_probe(t0).is_none(), "one probe at a time");
        assert_eq!(
            p.on_response(t0 + Duration::from_millis(20), seq, 200, None),
            None
        );
        assert_eq!(p.last_rtt, Some(Duration::from_millis(20)));
        assert_eq!(
            p.poll_timeout(),
            Some(t0 + Duration::from_millis(20) + Duration::from_secs(5))
        );
    }

    #[test]
    fn silent_server_goes_down_then_is_probed_every_oos_force() {
        let t0 = Instant::now();
        let mut p = ProbeState::new(cfg(), t0);
        p.poll_probe(t0).unwrap();
        let t1 = p.poll_timeout().unwrap();
        assert_eq!(t1, t0 + Duration::from_secs(1));
        assert!(matches!(p.handle_timeout(t1), Some(Change::Down(_))));
        assert!(!p.is_up());
        assert_eq!(p.poll_timeout(), Some(t1 + Duration::from_secs(2)));
        let t2 = t1 + Duration::from_secs(2);
        let seq = p.poll_probe(t2).unwrap();
        assert!(matches!(
            p.on_response(t2, seq, 404, None),
            Some(Change::Up(_))
        ));
    }

    #[test]
    fn late_answer_is_ignored() {
        let t0 = Instant::now();
        let mut p = ProbeState::new(cfg(), t0);
        let old = p.poll_probe(t0).unwrap();
        p.handle_timeout(t0 + Duration::from_secs(1));
        assert!(!p.is_up());
        // The old probe's answer arrives late: nothing changes.
        assert_eq!(
            p.on_response(t0 + Duration::from_millis(1500), old, 200, None),
            None
        );
        assert!(!p.is_up());
    }

    #[test]
    fn answer_503_holds_down_for_retry_after() {
        let t0 = Instant::now();
        let mut p = ProbeState::new(cfg(), t0);
        let seq = p.poll_probe(t0).unwrap();
        assert!(matches!(
            p.on_response(t0, seq, 503, Some(Duration::from_secs(30))),
            Some(Change::Down(_))
        ));
        assert_eq!(p.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        let t1 = t0 + Duration::from_secs(30);
        let seq = p.poll_probe(t1).unwrap();
        assert!(matches!(
            p.on_response(t1, seq, 200, None),
            Some(Change::Up(_))
        ));
    }

    #[test]
    fn thresholds() {
        let t0 = Instant::now();
        let mut p = ProbeState::new(
            ProbeConfig {
                down_after: 2,
                up_after: 2,
                ..cfg()
            },
            t0,
        );
        let mut now = t0;
        p.poll_probe(now).unwrap();
        now += Duration::from_secs(1);
        assert_eq!(p.handle_timeout(now), None, "one miss is not enough");
        now = p.poll_timeout().unwrap();
        p.poll_probe(now).unwrap();
        now += Duration::from_secs(1);
        assert!(matches!(p.handle_timeout(now), Some(Change::Down(_))));
        now = p.poll_timeout().unwrap();
        let s = p.poll_probe(now).unwrap();
        assert_eq!(
            p.on_response(now, s, 200, None),
            None,
            "one answer is not enough"
        );
        now = p.poll_timeout().unwrap();
        let s = p.poll_probe(now).unwrap();
        assert!(matches!(
            p.on_response(now, s, 200, None),
            Some(Change::Up(_))
        ));
    }

    #[test]
    fn an_unanswered_invite_counts_as_a_missed_probe() {
        let t0 = Instant::now();
        let mut p = ProbeState::new(cfg(), t0);
        let seq = p.poll_probe(t0).unwrap();
        assert!(matches!(
            p.missed(t0, "no answer to an INVITE"),
            Some(Change::Down(_))
        ));
        // The abandoned probe's answer is late now.
        assert_eq!(p.on_response(t0, seq, 200, None), None);
        assert!(!p.is_up());
    }

    #[test]
    fn disabled_probing_never_probes_an_up_server() {
        let t0 = Instant::now();
        let mut p = ProbeState::new(
            ProbeConfig {
                oos_check: None,
                ..cfg()
            },
            t0,
        );
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(p.poll_probe(t0), None);
    }
}

#[cfg(test)]
mod breaker_tests {
    use super::tests::cfg;
    use super::*;

    /// Answers the probe due at `now`.
    fn answer(p: &mut ProbeState, now: Instant) -> Option<Change> {
        let seq = p.poll_probe(now)?;
        p.on_response(now, seq, 200, None)
    }

    #[test]
    fn failed_transactions_open_the_breaker_though_probes_answer() {
        let t0 = Instant::now();
        let mut p = ProbeState::new(cfg(), t0);
        assert_eq!(answer(&mut p, t0), None);
        assert_eq!(p.transaction_outcome(t0, false), None);
        assert_eq!(p.transaction_outcome(t0, false), None);
        // A success in between starts the count again.
        assert_eq!(p.transaction_outcome(t0, true), None);
        assert_eq!(p.transaction_outcome(t0, false), None);
        assert_eq!(p.transaction_outcome(t0, false), None);
        let c = p.transaction_outcome(t0, false);
        assert!(
            matches!(&c, Some(Change::Down(r)) if r.contains("circuit breaker")),
            "{c:?}"
        );
        assert!(!p.is_up());
        // On probation: probes answer, it stays out until the probation is over.
        let mut t = t0;
        while t < t0 + Duration::from_secs(19) {
            t = p.poll_timeout().unwrap();
            assert_eq!(
                answer(&mut p, t),
                None,
                "still on probation at {:?}",
                t - t0
            );
        }
        let mut back = None;
        while back.is_none() && t < t0 + Duration::from_secs(30) {
            t = p.poll_timeout().unwrap();
            back = answer(&mut p, t);
        }
        assert!(matches!(back, Some(Change::Up(_))));
        assert!(t >= t0 + Duration::from_secs(20));
    }

    #[test]
    fn a_breaker_set_to_zero_never_opens() {
        let t0 = Instant::now();
        let mut p = ProbeState::new(
            ProbeConfig {
                breaker_failures: 0,
                ..cfg()
            },
            t0,
        );
        for _ in 0..100 {
            assert_eq!(p.transaction_outcome(t0, false), None);
        }
        assert!(p.is_up());
    }
}
