//! Upstream health and pair state.
//!
//! Holds, per pair, which member is active, published to the forwarding path through atomics
//! (no locks). Probing with OPTIONS and the switching rules arrive with the failover work
//! (issue 3); until then the primary is always active.

use std::sync::atomic::{AtomicU8, Ordering};

/// A member of a primary/backup pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    /// The primary server.
    Primary,
    /// The backup server.
    Backup,
}

/// The active member of every pair, readable without locks.
#[derive(Debug)]
pub struct PairStates {
    active: Vec<AtomicU8>,
}

const PRIMARY: u8 = 0;
const BACKUP: u8 = 1;
const OUT_OF_SERVICE: u8 = 2;

impl PairStates {
    /// `n` pairs, each with its primary active.
    pub fn new(n: usize) -> Self {
        PairStates {
            active: (0..n).map(|_| AtomicU8::new(PRIMARY)).collect(),
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
