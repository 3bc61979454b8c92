//! Transactions (RFC 3261 section 17, with the RFC 6026 Accepted state), sans-IO.
//!
//! Each state machine is fed messages and the current time and says what to send and when
//! it next needs to be woken ([`ServerInvite::poll_timeout`] and friends), in the style of
//! quinn-proto: no sockets, no clocks, no tasks. `actors::transaction` drives them.
//! What a proxy does with responses (which to forward, 503 -> 500, retry) is not here but in
//! `sip::proxy`; these machines own only retransmission, absorption and lifetimes.

mod client;
mod key;
mod server;

use std::time::Duration;

pub use client::{ClientInvite, ClientNonInvite, ClientState, ClientTimeout, ResponseDisposition};
pub use key::{ClientKey, KeyMethod, ServerKey};
pub use server::{ServerInvite, ServerNonInvite, ServerState};

/// RFC 3261 timer base values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// T1: RTT estimate, 500 ms.
    pub t1: Duration,
    /// T2: maximum non-INVITE retransmit interval, 4 s.
    pub t2: Duration,
    /// T4: maximum time a message stays in the network, 5 s.
    pub t4: Duration,
    /// Timer C: proxy INVITE timeout after a provisional response (> 3 min).
    pub timer_c: Duration,
    /// How long an INVITE server transaction waits for a response from its TU before it
    /// sends 100 Trying itself (section 17.2.1: "send 100 if TU won't in 200ms"); zero
    /// sends it at once.
    pub trying: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            timer_c: Duration::from_secs(180),
            trying: Duration::from_millis(200),
        }
    }
}

impl Timers {
    /// 64*T1: Timers B, F, H, J, L, M.
    pub fn t1x64(&self) -> Duration {
        self.t1 * 64
    }
}
