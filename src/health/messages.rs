//! The messages health actors take: from the proxy (responses to probes, evidence from
//! transactions, a request from a backup) and from probe actors to their pair actor.

use std::time::{Duration, Instant};

use super::Member;

/// Every probe branch starts with this, so responses find their probe actor.
pub const PROBE_BRANCH_PREFIX: &str = "z9hG4bKspprobe";

/// Messages of a probe actor.
#[derive(Debug)]
pub enum ProbeMsg {
    /// Something may be due.
    Tick,
    /// A response to probe `seq`.
    Response {
        /// Probe number.
        seq: u64,
        /// Status code.
        code: u16,
        /// Retry-After of a 503.
        retry_after: Option<Duration>,
    },
    /// A transaction toward this server failed: probe now.
    Suspect,
    /// The network refused a datagram sent to this server (ICMP port or host
    /// unreachable): as good as a missed probe, and known at once.
    Unreachable {
        /// Which ICMP error.
        reason: &'static str,
    },
    /// What became of a transaction sent to this server: a final answer below 500
    /// (`served`), or a timeout or 5xx (the circuit breaker counts those).
    Outcome {
        /// Whether it was served.
        served: bool,
    },
    /// An INVITE sent to this server at `sent_at` got no answer at all.
    Unanswered {
        /// When it was sent.
        sent_at: Instant,
    },
}

/// Messages of a pair actor.
#[derive(Debug)]
pub enum PairMsg {
    /// A member's probe state changed.
    Server {
        /// Which member.
        member: Member,
        /// Up or down.
        up: bool,
        /// Why.
        reason: String,
    },
    /// A request arrived from the backup server.
    FromBackup,
    /// An operator asks for this member to be active (manual switchover).
    Manual {
        /// The member to make active.
        to: Member,
        /// Why, and who asked (logged and shown in `/status`).
        why: String,
        /// The answer: the switch made (`None`: already active), or why not.
        reply: tokio::sync::oneshot::Sender<Result<Option<Member>, String>>,
    },
}
