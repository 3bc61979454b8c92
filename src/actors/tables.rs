//! The concurrent transaction tables: running server transactions by key, client
//! transactions by branch (both pointing at the transaction that owns them), and the
//! transactions that have ended but still absorb retransmissions of their request.
//!
//! The tables answer the sans-IO dispatcher's questions ([`TransactionTables`]); what a
//! message then becomes is decided in `sip::dispatch` and done in `actors::dispatcher`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;

use crate::health::messages::PROBE_BRANCH_PREFIX;
use crate::sip::dispatch::TransactionTables;
use crate::sip::transaction::{ClientKey, ServerKey};

use super::cell::Deliver;
use super::transport::{send_reply, ConnHandle, Inbound, ReplyPath, Target};

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
    /// A response to our client transaction (or to its CANCEL), with the client key the
    /// dispatcher matched it by (its top Via's branch).
    Response(Box<Inbound>, ClientKey),
    /// A timer may be due.
    Timer,
    /// What the transaction waited for.
    Resumed(Box<Resumed>),
    /// This stream connection closed; the transaction checks whether its branch used it.
    ConnectionLost(u64),
    /// The network refused a datagram sent to this address (ICMP unreachable); the
    /// transaction checks whether its branch went there. Boxed: rare.
    Unreachable(Box<SocketAddr>),
}

/// What a transaction waited for (a suspension, see `actors::cell`), handed back to it.
#[derive(Debug)]
pub enum Resumed {
    /// The server's address was looked up (`None`: not found).
    Located(Option<Target>),
    /// A connection was opened (or found) toward the branch's target and the bytes were
    /// sent on it: `None` when that failed, `Some(None)` when it went by UDP.
    Connected {
        /// The branch.
        key: ClientKey,
        /// The connection, if any.
        conn: Option<Option<ConnHandle>>,
        /// Why it was opened.
        why: Connect,
    },
}

/// Why a transaction opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connect {
    /// To send a branch's first request; `flow`: the branch goes over a phone's flow.
    First {
        /// The branch goes over a phone's flow (a failure is 430, not the other member).
        flow: bool,
    },
    /// To send on a branch again (its CANCEL or ACK).
    Again,
    /// The branch's connection closed; it was reopened to send the request again.
    Reopen,
}

/// The address of a running transaction, which the tables point at: cheap to clone, and
/// sending fails (giving the message back) once the transaction has ended. The message is
/// handled by the sending thread unless another is handling the transaction already
/// (`actors::cell`).
#[derive(Clone)]
pub struct TxHandle {
    id: u64,
    cell: Arc<dyn Deliver<TxMsg>>,
}

impl std::fmt::Debug for TxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxHandle").field("id", &self.id).finish()
    }
}

impl TxHandle {
    /// A new transaction's id, unique in the process, naming the calling worker.
    pub fn next_id() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & COUNT_MASK;
        let worker = u64::from(super::workers::current().min(0xffff));
        (worker << WORKER_SHIFT) | n
    }

    /// The address of transaction `id`, which `cell` runs.
    pub fn new(id: u64, cell: Arc<dyn Deliver<TxMsg>>) -> TxHandle {
        TxHandle { id, cell }
    }

    /// Which transaction this is (unique in the process).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The worker that started the transaction (kept in the top bits of its id).
    pub fn worker(&self) -> u32 {
        u32::try_from(self.id >> WORKER_SHIFT).unwrap_or(u32::MAX)
    }

    /// Hands a message to the transaction; `Err` gives it back when it has ended.
    pub fn send(&self, msg: TxMsg) -> Result<(), TxMsg> {
        self.cell.deliver(msg)
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
    /// When each destination's unreachability was last told to the transactions (see
    /// [`Transactions::unreachable`]).
    unreachable_told: DashMap<SocketAddr, Instant, Hasher>,
}

/// How long an ICMP error about a destination is not told again to every transaction: a
/// burst of them (a phone gone while thousands of transactions are in flight, a server
/// down while requests still go to it) would otherwise tell each transaction once per
/// error, errors times transactions messages (11 GB of mailboxes in a 30,000-INVITE run).
/// A transaction that starts a branch there after the first is told by the next error
/// past this, or by its own timers.
const UNREACHABLE_COALESCE: std::time::Duration = std::time::Duration::from_millis(250);

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
        self.unreachable_told
            .retain(|_, at| now.saturating_duration_since(*at) < UNREACHABLE_COALESCE);
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

    /// A destination is unreachable: each transaction with a client branch hears of it,
    /// once per 250 ms (`UNREACHABLE_COALESCE`) for the same destination however many errors
    /// come. False when it was told too recently to tell again.
    pub fn unreachable(&self, dest: SocketAddr, now: Instant) -> bool {
        let recent = self
            .unreachable_told
            .get(&dest)
            .is_some_and(|at| now.saturating_duration_since(*at) < UNREACHABLE_COALESCE);
        if recent {
            return false;
        }
        self.unreachable_told.insert(dest, now);
        self.tell_branches(|| TxMsg::Unreachable(Box::new(dest)));
        true
    }

    /// Sends a message, once each, to every transaction with a client branch.
    /// The handles are taken out of the table first: a transaction handles the message
    /// there and then, and may change the table.
    fn tell_branches(&self, msg: impl Fn() -> TxMsg) {
        let mut told = HashSet::new();
        let handles: Vec<TxHandle> = self
            .client
            .iter()
            .filter(|e| told.insert(e.value().id()))
            .map(|e| e.value().clone())
            .collect();
        for h in handles {
            let _ = h.send(msg());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A transaction that counts the unreachability it is told of.
    #[derive(Default)]
    struct Counter(std::sync::atomic::AtomicUsize);

    impl Deliver<TxMsg> for Counter {
        fn deliver(&self, msg: TxMsg) -> Result<(), TxMsg> {
            if matches!(msg, TxMsg::Unreachable(_)) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Ok(())
        }
    }

    fn client(t: &Transactions, branch: &str) -> Arc<Counter> {
        let counter = Arc::new(Counter::default());
        let handle = TxHandle::new(TxHandle::next_id(), counter.clone());
        t.client.insert(ClientKey::new(branch), handle);
        counter
    }

    fn told(c: &Counter) -> usize {
        c.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn a_burst_of_icmp_errors_tells_each_transaction_once() {
        let t = Transactions::default();
        let a = client(&t, "z9hG4bKspa");
        let b = client(&t, "z9hG4bKspb");
        let gone: SocketAddr = "192.0.2.7:5062".parse().unwrap();
        let other: SocketAddr = "192.0.2.8:5060".parse().unwrap();
        let now = Instant::now();
        assert!(t.unreachable(gone, now));
        for i in 0..1000 {
            let later = now + std::time::Duration::from_micros(i * 100);
            assert!(!t.unreachable(gone, later), "told again {i}");
        }
        assert_eq!((told(&a), told(&b)), (1, 1));
        // Another destination is told at once; the same one again once the time is past.
        assert!(t.unreachable(other, now));
        assert!(t.unreachable(gone, now + UNREACHABLE_COALESCE));
        assert_eq!((told(&a), told(&b)), (3, 3));
        // The sweep forgets what is past.
        t.sweep_lingering(now + 2 * UNREACHABLE_COALESCE);
        assert!(t.unreachable_told.is_empty());
    }
}
