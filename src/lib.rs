//! sippool: a clustered SIP proxy that gives a primary/backup pair of SIP servers high
//! availability without a virtual IP.
//!
//! Layout: [`sip`] is the protocol, free of I/O (bytes and time in, actions out, in the
//! style of quinn-proto); [`actors`] is its shell: sockets, lifetimes and supervision, with
//! [`Proxy`] as the entry point; [`health`] holds upstream state and its probes; [`metrics`]
//! counts and serves HTTP; [`config`] loads and validates the configuration; [`dns`]
//! locates servers (RFC 3263); [`memory`] reads the process's size and gives freed memory
//! back after a burst. The README's module diagram says what each may import.

#![deny(missing_docs)]
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

pub use actors::{DrainOutcome, Proxy};
pub use config::{Config, Settings};
pub mod config;
pub mod demo;
pub mod dns;
pub mod health;
pub mod memory;
pub mod metrics;
pub mod sip;
pub(crate) mod wakeup;
