//! How long a server takes to answer, smoothed as TCP does (RFC 6298): the failover timer
//! of a transaction is SRTT + 4 * RTTVAR of the member it went to, within configured
//! bounds, instead of one fixed second. Samples are the member's OPTIONS probe round trips
//! and the time to the first response of each request sent to it.
//!
//! Sans-IO; the estimate is kept in atomics so the forwarding path reads it without locks
//! (a lost update under a race costs one sample, nothing more).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Failover timer bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverBounds {
    /// Never shorter than this (a fast server can still be slow once).
    pub min: Duration,
    /// Never longer than this; also the timer before any sample.
    pub max: Duration,
}

/// A smoothed round-trip time (see the module documentation).
#[derive(Debug, Default)]
pub struct Rtt {
    /// Smoothed RTT in microseconds; 0: no sample yet.
    srtt_us: AtomicU64,
    /// RTT variation in microseconds.
    rttvar_us: AtomicU64,
}

impl Rtt {
    /// Adds a sample (RFC 6298 section 2: alpha 1/8, beta 1/4).
    pub fn observe(&self, sample: Duration) {
        let r = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX).max(1);
        let srtt = self.srtt_us.load(Ordering::Relaxed);
        if srtt == 0 {
            self.srtt_us.store(r, Ordering::Relaxed);
            self.rttvar_us.store(r / 2, Ordering::Relaxed);
            return;
        }
        let rttvar = self.rttvar_us.load(Ordering::Relaxed);
        let rttvar = (3 * rttvar + srtt.abs_diff(r)) / 4;
        let srtt = (7 * srtt + r) / 8;
        self.rttvar_us.store(rttvar, Ordering::Relaxed);
        self.srtt_us.store(srtt.max(1), Ordering::Relaxed);
    }

    /// Takes over another estimate (the same server's, before a reload).
    pub fn copy_from(&self, other: &Rtt) {
        self.srtt_us
            .store(other.srtt_us.load(Ordering::Relaxed), Ordering::Relaxed);
        self.rttvar_us
            .store(other.rttvar_us.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// The smoothed RTT, when there is a sample.
    pub fn srtt(&self) -> Option<Duration> {
        match self.srtt_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// The failover timer: SRTT + 4 * RTTVAR within `bounds`; `bounds.max` before any sample.
    pub fn failover_timeout(&self, bounds: FailoverBounds) -> Duration {
        let srtt = self.srtt_us.load(Ordering::Relaxed);
        if srtt == 0 {
            return bounds.max;
        }
        let rttvar = self.rttvar_us.load(Ordering::Relaxed);
        Duration::from_micros(srtt.saturating_add(rttvar.saturating_mul(4)))
            .clamp(bounds.min, bounds.max.max(bounds.min))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: FailoverBounds = FailoverBounds {
        min: Duration::from_millis(200),
        max: Duration::from_millis(1000),
    };

    #[test]
    fn no_sample_means_the_upper_bound() {
        assert_eq!(Rtt::default().failover_timeout(B), B.max);
    }

    #[test]
    fn a_fast_steady_server_gets_the_lower_bound() {
        let r = Rtt::default();
        for _ in 0..20 {
            r.observe(Duration::from_millis(3));
        }
        assert_eq!(r.srtt(), Some(Duration::from_millis(3)));
        assert_eq!(r.failover_timeout(B), B.min);
    }

    #[test]
    fn a_slow_or_jittery_server_gets_more_time_up_to_the_upper_bound() {
        let r = Rtt::default();
        for ms in [150, 250, 120, 300, 180, 260] {
            r.observe(Duration::from_millis(ms));
        }
        let t = r.failover_timeout(B);
        assert!(t > Duration::from_millis(400) && t <= B.max, "{t:?}");
        let very_slow = Rtt::default();
        very_slow.observe(Duration::from_secs(3));
        assert_eq!(very_slow.failover_timeout(B), B.max);
    }

    #[test]
    fn it_follows_rfc_6298_arithmetic() {
        let r = Rtt::default();
        r.observe(Duration::from_millis(100));
        // First sample: SRTT = R, RTTVAR = R/2: 100 + 4 * 50 = 300 ms.
        assert_eq!(r.failover_timeout(B), Duration::from_millis(300));
        r.observe(Duration::from_millis(20));
        // RTTVAR = 3/4 * 50 + 1/4 * 80 = 57.5; SRTT = 7/8 * 100 + 1/8 * 20 = 90.
        assert_eq!(r.srtt(), Some(Duration::from_millis(90)));
        assert_eq!(
            r.failover_timeout(B),
            Duration::from_micros(90_000 + 4 * 57_500)
        );
    }
}
