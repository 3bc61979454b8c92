//! Upstream health and pair state.
//!
//! `probe` (one server's health from OPTIONS probes) and `pair` (which member is active)
//! are sans-IO; `actors` drives them. [`PairStates`] publishes, per pair, the active member
//! and whether each member is up to the forwarding path through atomics (no locks).

pub mod actors;
pub mod pair;
pub mod probe;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// A member of a primary/backup pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Member {
    /// The primary server.
    Primary = 0,
    /// The backup server.
    Backup = 1,
}

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
