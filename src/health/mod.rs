//! Upstream health and pair state.
//!
//! `probe` (one server's health from OPTIONS probes) and `pair` (which member is active)
//! are sans-IO; `actors` drives them. [`PairStates`] publishes, per pair, the active member
//! and whether each member is up to the forwarding path through atomics (no locks).

pub mod actors;
pub mod messages;
pub mod pair;
pub mod probe;
pub mod rtt;
pub mod upstreams;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// What the status page shows of one server, published by its probe actor.
#[derive(Debug, Clone)]
pub struct ServerStatus {
    /// In service.
    pub up: bool,
    /// When the last probe was answered or timed out.
    pub last_probe: Option<SystemTime>,
    /// Round trip of the last answered probe.
    pub last_rtt: Option<Duration>,
    /// Since when the server has been in its current state.
    pub since: SystemTime,
    /// Why it is in its current state.
    pub reason: String,
}

/// What the status page shows of one pair's last switch, published by its pair actor.
#[derive(Debug, Clone)]
pub struct SwitchStatus {
    /// When.
    pub at: SystemTime,
    /// From which member (`None`: out of service).
    pub from: Option<Member>,
    /// To which member.
    pub to: Option<Member>,
    /// Why.
    pub why: String,
}

/// How many recent switches [`HealthStatus`] keeps for [`HealthStatus::switches_after`].
const SWITCH_LOG: usize = 64;

/// The recent switches of every pair, numbered from 1.
#[derive(Debug, Default)]
struct SwitchLog {
    last_seq: u64,
    recent: VecDeque<(u64, usize, SwitchStatus)>,
}

/// Status snapshots for `/status`, written on state changes only.
#[derive(Debug)]
pub struct HealthStatus {
    servers: Vec<[Mutex<ServerStatus>; 2]>,
    switches: Vec<Mutex<Option<SwitchStatus>>>,
    log: Mutex<SwitchLog>,
}

impl HealthStatus {
    /// Snapshots for `n` pairs, every server assumed up.
    pub fn new(n: usize) -> Self {
        let fresh = || {
            Mutex::new(ServerStatus {
                up: true,
                last_probe: None,
                last_rtt: None,
                since: SystemTime::now(),
                reason: "not probed yet".into(),
            })
        };
        HealthStatus {
            servers: (0..n).map(|_| [fresh(), fresh()]).collect(),
            switches: (0..n).map(|_| Mutex::new(None)).collect(),
            log: Mutex::default(),
        }
    }

    /// Publishes a server's status.
    pub fn set_server(&self, pair: usize, m: Member, s: ServerStatus) {
        if let Some(slot) = self.servers.get(pair).and_then(|v| v.get(m as usize)) {
            if let Ok(mut g) = slot.lock() {
                *g = s;
            }
        }
    }

    /// A server's status.
    pub fn server(&self, pair: usize, m: Member) -> Option<ServerStatus> {
        let slot = self.servers.get(pair)?.get(m as usize)?;
        slot.lock().ok().map(|g| g.clone())
    }

    /// Publishes a pair's last switch (and logs it for [`HealthStatus::switches_after`]).
    pub fn set_switch(&self, pair: usize, s: SwitchStatus) {
        if let Some(slot) = self.switches.get(pair) {
            if let Ok(mut log) = self.log.lock() {
                log.last_seq += 1;
                let seq = log.last_seq;
                if log.recent.len() >= SWITCH_LOG {
                    log.recent.pop_front();
                }
                log.recent.push_back((seq, pair, s.clone()));
            }
            if let Ok(mut g) = slot.lock() {
                *g = Some(s);
            }
        }
    }

    /// The switches of every pair numbered after `seq` (numbered from 1, in the order they
    /// were published; only the last few dozen are kept), as (number, pair, switch).
    pub fn switches_after(&self, seq: u64) -> Vec<(u64, usize, SwitchStatus)> {
        self.log.lock().map_or_else(
            |_| Vec::new(),
            |log| {
                log.recent
                    .iter()
                    .filter(|(n, _, _)| *n > seq)
                    .cloned()
                    .collect()
            },
        )
    }

    /// Sets a pair's last switch without logging it as a new one (a reload carrying it
    /// over).
    pub fn keep_switch(&self, pair: usize, s: SwitchStatus) {
        if let Some(Ok(mut g)) = self.switches.get(pair).map(Mutex::lock) {
            *g = Some(s);
        }
    }

    /// Numbers the next switch after the last one `old` numbered, so that a reader of
    /// [`HealthStatus::switches_after`] misses none after a reload replaced `old`.
    pub fn continue_numbering(&self, old: &HealthStatus) {
        let last = old.log.lock().map_or(0, |l| l.last_seq);
        if let Ok(mut log) = self.log.lock() {
            log.last_seq = log.last_seq.max(last);
        }
    }

    /// A pair's last switch.
    pub fn switch(&self, pair: usize) -> Option<SwitchStatus> {
        self.switches.get(pair)?.lock().ok()?.clone()
    }
}

/// Converts a monotonic instant in the past into wall-clock time.
pub fn wall(at: Instant) -> SystemTime {
    SystemTime::now() - Instant::now().saturating_duration_since(at)
}

pub use crate::sip::proxy::Member;

/// The active member of every pair, readable without locks.
#[derive(Debug)]
pub struct PairStates {
    active: Vec<AtomicU8>,
    /// Per pair: primary up, backup up.
    up: Vec<[AtomicBool; 2]>,
}

const PRIMARY: u8 = 0;
const BACKUP: u8 = 1;
const OUT_OF_SERVICE: u8 = 2;

impl PairStates {
    /// `n` pairs, each with its primary active.
    pub fn new(n: usize) -> Self {
        PairStates {
            active: (0..n).map(|_| AtomicU8::new(PRIMARY)).collect(),
            up: (0..n)
                .map(|_| [AtomicBool::new(true), AtomicBool::new(true)])
                .collect(),
        }
    }

    /// The active member of pair `i`; `None` when the pair is out of service (or unknown).
    pub fn active(&self, i: usize) -> Option<Member> {
        match self.active.get(i)?.load(Ordering::Acquire) {
            PRIMARY => Some(Member::Primary),
            BACKUP => Some(Member::Backup),
            _ => None,
        }
    }

    /// Whether a member is up as far as probing knows.
    pub fn is_up(&self, i: usize, m: Member) -> bool {
        self.up
            .get(i)
            .and_then(|u| u.get(m as usize))
            .is_some_and(|b| b.load(Ordering::Acquire))
    }

    /// Publishes a member's probe state.
    pub fn set_up(&self, i: usize, m: Member, up: bool) {
        if let Some(b) = self.up.get(i).and_then(|u| u.get(m as usize)) {
            b.store(up, Ordering::Release);
        }
    }

    /// Publishes a new active member (or `None`: out of service).
    pub fn set_active(&self, i: usize, member: Option<Member>) {
        if let Some(a) = self.active.get(i) {
            let v = match member {
                Some(Member::Primary) => PRIMARY,
                Some(Member::Backup) => BACKUP,
                None => OUT_OF_SERVICE,
            };
            a.store(v, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_are_numbered_and_read_after_a_number() {
        let st = HealthStatus::new(2);
        assert!(st.switches_after(0).is_empty());
        let sw = |to| SwitchStatus {
            at: SystemTime::now(),
            from: None,
            to: Some(to),
            why: "t".into(),
        };
        st.set_switch(1, sw(Member::Backup));
        st.set_switch(0, sw(Member::Primary));
        st.set_switch(7, sw(Member::Primary)); // no such pair: not logged
        let all = st.switches_after(0);
        let seen: Vec<(u64, usize)> = all.iter().map(|(n, p, _)| (*n, *p)).collect();
        assert_eq!(seen, [(1, 1), (2, 0)]);
        let newer = st.switches_after(1);
        assert_eq!(newer.len(), 1);
        assert_eq!(newer[0].2.to, Some(Member::Primary));
        for _ in 0..SWITCH_LOG + 3 {
            st.set_switch(0, sw(Member::Backup));
        }
        let kept = st.switches_after(0);
        assert_eq!(kept.len(), SWITCH_LOG);
        assert_eq!(kept.last().map(|k| k.0), Some(SWITCH_LOG as u64 + 5));
    }
}
