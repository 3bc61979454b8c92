//! The SIP protocol layer, sans-IO: bytes and time in, decisions out.
//!
//! `framing` cuts streams into messages, `message` indexes them without copying, `via` and
//! `uri` give typed views of the few headers a proxy reads, `transaction` holds the RFC 3261
//! section 17 state machines, `proxy` the section 16 rules and `builder` writes what goes
//! out. Nothing here opens a socket or reads a clock.

// No unwrap/expect/indexing/panic here: denied crate-wide in `lib.rs`.

// The public surface: the modules a shell drives (framing, message, transaction, proxy,
// builder, stun) and the types they hand out; the helpers they are built from stay inside.
pub mod builder;
pub mod framing;
pub mod message;
pub mod proxy;
pub mod stun;
pub mod transaction;
pub mod transport;
pub mod uri;

pub(crate) mod addr;
pub(crate) mod dispatch;
pub(crate) mod flow;
pub(crate) mod method;
pub(crate) mod name_addr;
pub(crate) mod syntax;
pub(crate) mod via;

pub use addr::{HostPort, Listener, Target};
pub use dispatch::{dispatch, Dispatch, TransactionTables};
pub use flow::{Flow, FlowError, FlowKeys, Place};
pub use via::{Via, ViaError, ViaIndex};
