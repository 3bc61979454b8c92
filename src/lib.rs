//! sippool: a clustered SIP proxy that gives a primary/backup pair of SIP servers high
//! availability without a virtual IP.
//!
//! Layout: [`sip`] is the protocol, free of I/O; [`actors`] owns sockets, lifetimes and
//! supervision; [`health`] holds upstream state; [`metrics`] counts; [`config`] loads and
//! validates the configuration.

// Nothing reachable from the network or the config may panic (see also `sip`'s own lints).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod actors;
pub mod config;
pub mod demo;
pub mod dns;
pub mod health;
pub mod metrics;
pub mod sip;
pub mod wakeup;
