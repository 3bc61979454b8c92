//! The SIP protocol layer, sans-IO: bytes and time in, decisions out.
//!
//! `framing` cuts streams into messages, `message` indexes them without copying, `via` and
//! `uri` give typed views of the few headers a proxy reads, `transaction` holds the RFC 3261
//! section 17 state machines, `proxy` the section 16 rules and `builder` writes what goes
//! out. Nothing here opens a socket or reads a clock.

// No unwrap/expect/indexing/panic here: denied crate-wide in `lib.rs`.

pub mod addr;
pub mod builder;
pub mod dispatch;
pub mod flow;
pub mod framing;
pub mod message;
pub mod method;
pub mod name_addr;
pub mod proxy;
pub mod stun;
pub mod syntax;
pub mod transaction;
pub mod transport;
pub mod uri;
pub mod via;
