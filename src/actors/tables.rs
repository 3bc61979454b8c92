//! The concurrent transaction tables: running server transactions by key, client
//! transactions by branch (both pointing at the mailbox of the transaction that owns
//! them), and the
//! transactions that have ended but still absorb retransmissions of their request.
//!
//! The tables answer the sans-IO dispatcher's questions ([`TransactionTables`]); what a
//! message then becomes is decided in `sip::dispatch` and done in `actors::dispatcher`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Instant;

use dashmap::DashMap;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::health::messages::PROBE_BRANCH_PREFIX;
use crate::sip::dispatch::TransactionTables;
use crate::sip::transaction::{ClientKey, ServerKey};

use super::transport::{send_reply, Inbound, ReplyPath};

/// The tables' hasher: foldhash, seeded per process. SipHash (the std default) cost a few
/// thousand instructions per call over the many small writes of a transaction key;
/// foldhash is as fast as FxHash on short keys and, being randomly seeded, keeps keys an
/// attacker chooses (branches) from colliding on purpose.
pub type Hasher = foldhash::fast::RandomState;

/// Messages of a transaction actor.
#[derive(Debug)]
pub enum TxMsg {
    /// The request that created the transaction, a retransmission of it, or its ACK.
    Request(Box<Inbound>),
    /// A CANCEL for this (INVITE) transaction.
    Cancel(Box<Inbound>),
    /// A response to our client transaction (or to its CANCEL); its client key is its top
    /// Via's branch, as the dispatcher matched it.
    Response(Box<Inbound>),
    /// A timer may be due.
    Timer,
    /// This stream connection closed; the transaction checks whether its branch used it.
    ConnectionLost(u64),
    /// The network refused a datagram sent to this address (ICMP unreachable); the
    /// transaction checks whether its branch went there. Boxed: rare, and the largest
    /// payload would make every mailbox slot 40 bytes instead of 16.
    Unreachable(Box<SocketAddr>),
}

/// The mailbox of a running transaction, which the tables point at: cheap to clone, and
/// sending fails (giving the message back) once the transaction has ended.
#[derive(Debug, Clone)]
pub struct TxHandle {
    id: u64,
    tx: UnboundedSender<TxMsg>,
}

impl TxHandle {
    /// A new mailbox: its address, and the receiving end for the transaction's task,
    /// which runs on the calling worker.
    pub fn new() -> (TxHandle, UnboundedReceiver<TxMsg>) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let (tx, rx) = unbounded_channel();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & COUNT_MASK;
        let worker = u64::from(super::workers::current().min(0xffff));
        let id = (worker << WORKER_SHIFT) | n;
        (TxHandle { id, tx }, rx)
    }

    /// Which transaction this is (unique in the process).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The worker whose runtime runs the transaction (kept in the top bits of its id).
    pub fn worker(&self) -> u32 {
        u32::try_from(self.id >> WORKER_SHIFT).unwrap_or(u32::MAX)
    }

    /// Hands a message to the transaction; `Err` gives it back when it has ended.
    pub fn send(&self, msg: TxMsg) -> Result<(), TxMsg> {
        self.tx.send(msg).map_err(|e| e.0)
    }
}

/// A transaction's id: its worker in the top 16 bits, a process-wide count below.
const WORKER_SHIFT: u32 = 48;
const COUNT_MASK: u64 = (1 << WORKER_SHIFT) - 1;

/// What is kept of a transaction after its actor ended (see [`Transactions::lingering`]).
#[derive(Debug)]
pub struct Lingering {
    /// The final response to resend on a retransmitted request (non-INVITE).
    pub response: Option<bytes::Bytes>,
    /// Where it goes.
    pub reply: ReplyPath,
    /// Its destination.
    pub dest: SocketAddr,
    /// When the transaction's last timer would have fired.
    pub until: Instant,
}

/// The transaction tables (see the module documentation).
#[derive(Debug, Default)]
pub struct Transactions {
    /// Server transactions by key.
    pub server: DashMap<ServerKey, TxHandle, Hasher>,
    /// Client transactions by our branch, pointing at the owning server transaction.
    pub client: DashMap<ClientKey, TxHandle, Hasher>,
    /// Transactions whose actor has ended but whose request retransmissions must still be
    /// absorbed until their Timer L or J runs out. Boxed: the table has room for up to
    /// twice its entries, and an empty slot then costs a key and a pointer, not a
    /// `Lingering` (tens of thousands of them at a few hundred calls per second).
    pub lingering: DashMap<ServerKey, Box<Lingering>, Hasher>,
}

impl Transactions {
    /// A retransmitted request of a lingering transaction gets the last response again.
    pub fn absorb(&self, key: &ServerKey) {
        let resend = self
            .lingering
            .get(key)
            .and_then(|l| Some((l.response.clone()?, l.reply.clone(), l.dest)));
        if let Some((bytes, reply, dest)) = resend {
            let _ = send_reply(&reply, dest, bytes);
        }
    }

    /// Drops lingering transactions whose time is up.
    pub fn sweep_lingering(&self, now: Instant) {
        self.lingering.retain(|_, l| l.until > now);
    }

    /// Transactions that hold memory: in flight, and lingering.
    pub fn live(&self) -> usize {
        self.server.len() + self.lingering.len()
    }

    /// Gives back the tables' room left over from a burst: a map keeps the capacity of its
    /// largest size until told otherwise.
    pub fn shrink(&self) {
        self.server.shrink_to_fit();
        self.client.shrink_to_fit();
        self.lingering.shrink_to_fit();
    }

    /// A connection that transactions may be using closed: each transaction with a client
    /// branch hears of it and checks whether the branch used that connection.
    pub fn connection_lost(&self, conn: u64) {
        self.tell_branches(|| TxMsg::ConnectionLost(conn));
    }

    /// A destination is unreachable: each transaction with a client branch hears of it.
    pub fn unreachable(&self, dest: SocketAddr) {
        self.tell_branches(|| TxMsg::Unreachable(Box::new(dest)));
    }

    /// Sends a message, once each, to every transaction with a client branch.
    fn tell_branches(&self, msg: impl Fn() -> TxMsg) {
        let mut told = HashSet::new();
        for e in self.client.iter() {
            if told.insert(e.value().id()) {
                let _ = e.value().send(msg());
            }
        }
    }
}

impl TransactionTables for Transactions {
    fn has_server(&self, key: &ServerKey) -> bool {
        self.server.contains_key(key)
    }

    fn has_client(&self, key: &ClientKey) -> bool {
        self.client.contains_key(key)
    }

    fn is_lingering(&self, key: &ServerKey, now: Instant) -> bool {
        let alive = match self.lingering.get(key) {
            None => return false,
            Some(l) => l.until > now,
        };
        if !alive {
            self.lingering.remove(key);
        }
        alive
    }

    fn is_probe(&self, key: &ClientKey) -> bool {
        key.branch().starts_with(PROBE_BRANCH_PREFIX)
    }
}
