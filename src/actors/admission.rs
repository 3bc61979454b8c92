//! Admission control: which new work the proxy takes. New INVITEs beyond `invite_rate`
//! (a token bucket) are refused, with `overload_started` / `overload_ended` events for each
//! episode; while draining (SIGTERM), no new dialog is taken. The cap on transactions in
//! flight is checked by the dispatcher against the tables.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// An episode of INVITE-rate overload, for the `overload_started` / `overload_ended` events.
#[derive(Debug, Default)]
struct OverloadEpisode {
    /// When it started, and the last rejection.
    since: Option<(Instant, Instant)>,
    rejected: u64,
    admitted: u64,
}

/// Admission state (see the module documentation).
#[derive(Debug)]
pub struct Admission {
    invite_bucket: Mutex<TokenBucket>,
    overload: Mutex<OverloadEpisode>,
    draining: AtomicBool,
}

impl Admission {
    /// Admission for at most `invite_rate` new INVITEs per second (0: no limit).
    pub fn new(invite_rate: u32) -> Admission {
        Admission {
            invite_bucket: Mutex::new(TokenBucket::new(invite_rate)),
            overload: Mutex::new(OverloadEpisode::default()),
            draining: AtomicBool::new(false),
        }
    }

    /// Whether one more new INVITE may be taken now (the token bucket); counts the
    /// overload episode either way.
    pub fn admit_invite(&self) -> bool {
        let now = Instant::now();
        let admitted = match self.invite_bucket.lock() {
            Ok(mut b) => b.take(now),
            Err(_) => true,
        };
        if let Ok(mut o) = self.overload.lock() {
            if admitted {
                o.admitted += 1;
            } else {
                o.rejected += 1;
                match &mut o.since {
                    Some((_, last)) => *last = now,
                    None => {
                        o.since = Some((now, now));
                        o.rejected = 1;
                        o.admitted = 0;
                        tracing::warn!(
                            event = "overload_started",
                            invite_rate = self.invite_rate()
                        );
                    }
                }
            }
        }
        self.end_overload_if_quiet(now);
        admitted
    }

    /// Ends an overload episode after a second without a rejection (called on every
    /// INVITE and by the once-a-second sweeper).
    pub fn end_overload_if_quiet(&self, now: Instant) {
        let Ok(mut o) = self.overload.lock() else {
            return;
        };
        if let Some((start, last)) = o.since {
            if now.saturating_duration_since(last) >= std::time::Duration::from_secs(1) {
                tracing::info!(
                    event = "overload_ended",
                    seconds = now.saturating_duration_since(start).as_secs_f64(),
                    rejected = o.rejected,
                    admitted = o.admitted,
                );
                *o = OverloadEpisode::default();
            }
        }
    }

    /// The INVITE rate in force (0 = off).
    pub fn invite_rate(&self) -> u32 {
        self.invite_bucket.lock().map_or(0, |b| b.rate as u32)
    }

    /// Changes the INVITE rate at runtime (config reload).
    pub fn set_invite_rate(&self, rate: u32) {
        if let Ok(mut b) = self.invite_bucket.lock() {
            *b = TokenBucket::new(rate);
        }
    }

    /// Stops taking new dialogs: new out-of-dialog requests get 503 from now on.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// Admits at most `rate` per second with a burst of a tenth of a second.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A bucket for `rate` per second; 0 admits everything.
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate);
        let capacity = (rate / 10.0).max(1.0);
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            last: None,
        }
    }

    /// Takes a token if one is there.
    pub fn take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_bucket_rate_is_accurate() {
        let mut b = TokenBucket::new(100);
        let t0 = Instant::now();
        let mut admitted = 0;
        // Offer 300/s for 20 s.
        for i in 0..6000u64 {
            if b.take(t0 + Duration::from_micros(i * 3333)) {
                admitted += 1;
            }
        }
        assert!((1990..=2020).contains(&admitted), "{admitted}");
        assert!(TokenBucket::new(0).take(t0));
    }
}
