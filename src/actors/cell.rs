//! An actor without a task of its own: its state, its mailbox and its timer, and whichever
//! thread sends it a message handles it there and then.
//!
//! A transaction sees three or four messages in its life and does a few microseconds of
//! work on each. A task per transaction (spawned, polled by the runtime, woken through its
//! mailbox, its future moved and dropped) cost about 10,000 instructions per call of the
//! bench (7 % of all) and 0.7 KiB per transaction in flight. Here the sender handles the
//! message itself: at once when the actor is idle, else it queues it, and whichever thread
//! is handling the actor takes it before it lets go. Messages are handled one at a time
//! and in order, as by an actor; no thread waits for another to finish one (the state's
//! lock is only tried; the queue's is held for a push or a pop).
//!
//! What a handler must wait for (a DNS lookup, a connection to open) it hands back as a
//! future ([`Step::Suspend`]): the actor is suspended, the future runs as a task of its
//! own, and its output is the next message handled, before anything queued meanwhile (as
//! an awaiting task would). Its one timer is kept on the thread's [`timer_wheel`].
//!
//! Supervision is kept: a handler that panics ends its own actor only. Its state is
//! dropped (and with it whatever it holds in shared tables), the failure is reported to
//! the behaviour first ([`Behaviour::failed`]), what was queued is dropped, and every
//! other actor carries on.
//!
//! [`timer_wheel`]: super::timer_wheel

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError, Weak};
use std::time::Instant;

use super::timer_wheel::{self, Armed, Tick};

/// What an actor does with its messages.
pub trait Behaviour: Send + Sized + 'static {
    /// Its messages.
    type Msg: Send + 'static;

    /// The message its timer delivers.
    fn timer() -> Self::Msg;

    /// Handles one message and says what comes next.
    fn handle(&mut self, msg: Self::Msg, me: &Me<'_, Self>) -> Step<Self::Msg>;

    /// Handling a message panicked: the state is dropped after this.
    fn failed(&mut self, panic: &(dyn Any + Send));
}

/// A future whose output is the actor's next message.
pub type Suspension<M> = Pin<Box<dyn Future<Output = M> + Send>>;

/// What an actor does after a message.
pub enum Step<M> {
    /// Ends: its state is dropped, later messages are given back to their senders.
    Done,
    /// Waits for a message, or for its timer at this instant.
    WakeAt(Instant),
    /// Waits for a message (no timer).
    Wait,
    /// Waits for this future, whose output is handled next (see the module documentation).
    Suspend(Suspension<M>),
}

/// Sends messages to an actor: what the tables keep.
pub trait Deliver<M>: Send + Sync {
    /// Queues `msg` and handles the queue unless another thread is; `Err` gives the
    /// message back when the actor has ended.
    fn deliver(&self, msg: M) -> Result<(), M>;
}

/// The actor being handled, as its handler sees it.
pub struct Me<'a, B: Behaviour> {
    cell: &'a Cell<B>,
}

impl<B: Behaviour> Me<'_, B> {
    /// The actor itself (to give its address to a table). `None` only while it is being
    /// dropped.
    pub fn cell(&self) -> Option<Arc<Cell<B>>> {
        self.cell.me.upgrade()
    }
}

struct Inbox<M> {
    queue: VecDeque<M>,
    /// A suspension's output, handled before the queue.
    resumed: Option<M>,
    /// Waiting for a suspension: the queue waits.
    suspended: bool,
    /// Ended: nothing more is queued.
    closed: bool,
}

impl<M> Inbox<M> {
    /// Whether there is something a handler may take now.
    fn ready(&self) -> bool {
        !self.closed && (self.resumed.is_some() || (!self.suspended && !self.queue.is_empty()))
    }
}

struct Running<B> {
    behaviour: Option<B>,
    timer: Option<Armed>,
}

/// An actor (see the module documentation).
pub struct Cell<B: Behaviour> {
    me: Weak<Cell<B>>,
    inbox: Mutex<Inbox<B::Msg>>,
    running: Mutex<Running<B>>,
}

/// Nothing held under these locks can panic halfway (handlers run under `catch_unwind`,
/// queue operations cannot fail), so a poisoned lock still guards a consistent state.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B: Behaviour> Cell<B> {
    /// A new actor with this state and an empty mailbox.
    pub fn new(behaviour: B) -> Arc<Cell<B>> {
        Arc::new_cyclic(|me| Cell {
            me: me.clone(),
            inbox: Mutex::new(Inbox {
                queue: VecDeque::new(),
                resumed: None,
                suspended: false,
                closed: false,
            }),
            running: Mutex::new(Running {
                behaviour: Some(behaviour),
                timer: None,
            }),
        })
    }

    /// Whether the actor has ended.
    #[cfg(test)]
    pub fn is_closed(&self) -> bool {
        lock(&self.inbox).closed
    }

    /// Handles what is ready, unless another thread is handling this actor (it will take
    /// what is queued before it lets go).
    fn drain(&self) {
        if let Some(running) = self.try_running() {
            self.drain_holding(running);
        }
    }

    /// The state, unless another thread holds it.
    fn try_running(&self) -> Option<MutexGuard<'_, Running<B>>> {
        match self.running.try_lock() {
            Ok(r) => Some(r),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Handles what is ready with the state held, then lets it go.
    fn drain_holding<'a>(&'a self, mut running: MutexGuard<'a, Running<B>>) {
        loop {
            loop {
                let next = {
                    let mut inbox = lock(&self.inbox);
                    if inbox.closed {
                        None
                    } else if let Some(m) = inbox.resumed.take() {
                        inbox.suspended = false;
                        Some(m)
                    } else if inbox.suspended {
                        None
                    } else {
                        inbox.queue.pop_front()
                    }
                };
                let Some(msg) = next else { break };
                self.handle(&mut running, msg);
            }
            drop(running);
            // A message queued after the last look but before the lock was let go.
            if !lock(&self.inbox).ready() {
                return;
            }
            match self.try_running() {
                Some(r) => running = r,
                None => return,
            }
        }
    }

    fn handle(&self, running: &mut Running<B>, msg: B::Msg) {
        let Some(behaviour) = running.behaviour.as_mut() else {
            return;
        };
        let me = Me { cell: self };
        match catch_unwind(AssertUnwindSafe(|| behaviour.handle(msg, &me))) {
            Ok(Step::Wait) => timer_wheel::disarm(&mut running.timer),
            Ok(Step::WakeAt(at)) => {
                // Armed already for that instant, unless the instant has come: then its
                // entry may have fired (and left the wheel), and is armed again. (tokio's
                // clock: the one the wheel fires by, paused in tests.)
                let armed = running.timer.as_ref().map(Armed::at) == Some(at);
                if !armed || at <= tokio::time::Instant::now().into_std() {
                    let who: Weak<dyn Tick> = self.me.clone();
                    timer_wheel::arm(&mut running.timer, at, who);
                }
            }
            Ok(Step::Suspend(future)) => {
                lock(&self.inbox).suspended = true;
                let me = self.me.clone();
                tokio::spawn(async move {
                    let msg = future.await;
                    if let Some(cell) = me.upgrade() {
                        cell.resume(msg);
                    }
                });
            }
            Ok(Step::Done) => self.end(running),
            Err(panic) => {
                let reported = catch_unwind(AssertUnwindSafe(|| behaviour.failed(&*panic)));
                drop(reported);
                self.end(running);
            }
        }
    }

    /// Ends the actor: closed to new messages, its timer disarmed, its state and what was
    /// queued dropped (outside the mailbox's lock: a drop may send to other actors).
    fn end(&self, running: &mut Running<B>) {
        let queued = {
            let mut inbox = lock(&self.inbox);
            inbox.closed = true;
            inbox.resumed = None;
            std::mem::take(&mut inbox.queue)
        };
        timer_wheel::disarm(&mut running.timer);
        running.behaviour = None;
        drop(queued);
    }

    /// A suspension's output: handled next.
    fn resume(&self, msg: B::Msg) {
        {
            let mut inbox = lock(&self.inbox);
            if inbox.closed {
                return;
            }
            inbox.resumed = Some(msg);
        }
        self.drain();
    }
}

impl<B: Behaviour> Deliver<B::Msg> for Cell<B> {
    fn deliver(&self, msg: B::Msg) -> Result<(), B::Msg> {
        let mut inbox = lock(&self.inbox);
        if inbox.closed {
            return Err(msg);
        }
        // Nothing waits before it and nobody is handling the actor: handled at once, without
        // a stay in the queue (most messages; the queue is then never even allocated).
        let idle = inbox.queue.is_empty() && inbox.resumed.is_none() && !inbox.suspended;
        if idle {
            if let Some(mut running) = self.try_running() {
                drop(inbox);
                self.handle(&mut running, msg);
                self.drain_holding(running);
                return Ok(());
            }
        }
        inbox.queue.push_back(msg);
        drop(inbox);
        self.drain();
        Ok(())
    }
}

impl<B: Behaviour> Tick for Cell<B> {
    fn tick(&self) {
        let _ = self.deliver(B::timer());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[derive(Debug, PartialEq)]
    enum Msg {
        N(u64),
        Timer,
        Sleep(u64),
        Woke(u64),
        Panic,
        End,
    }

    #[derive(Default)]
    struct Log {
        seen: Mutex<Vec<Msg>>,
        failures: AtomicUsize,
        dropped: AtomicUsize,
        /// Handlers running at once (must never pass 1).
        inside: AtomicUsize,
    }

    struct Recorder {
        log: Arc<Log>,
        wake_at: Option<Instant>,
    }

    impl Drop for Recorder {
        fn drop(&mut self) {
            self.log.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Behaviour for Recorder {
        type Msg = Msg;
        fn timer() -> Msg {
            Msg::Timer
        }
        fn handle(&mut self, msg: Msg, _me: &Me<'_, Self>) -> Step<Msg> {
            assert_eq!(self.log.inside.fetch_add(1, Ordering::SeqCst), 0);
            if matches!(msg, Msg::Timer) {
                self.wake_at = None;
            }
            let step = match &msg {
                Msg::Panic => {
                    self.log.inside.fetch_sub(1, Ordering::SeqCst);
                    panic!("injected");
                }
                Msg::End => Step::Done,
                Msg::Sleep(n) => {
                    let n = *n;
                    Step::Suspend(Box::pin(async move {
                        tokio::task::yield_now().await;
                        Msg::Woke(n)
                    }))
                }
                _ => self.wake_at.map_or(Step::Wait, Step::WakeAt),
            };
            lock(&self.log.seen).push(msg);
            self.log.inside.fetch_sub(1, Ordering::SeqCst);
            step
        }
        fn failed(&mut self, _panic: &(dyn Any + Send)) {
            self.log.failures.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn recorder(wake_at: Option<Instant>) -> (Arc<Cell<Recorder>>, Arc<Log>) {
        let log = Arc::new(Log::default());
        let cell = Cell::new(Recorder {
            log: log.clone(),
            wake_at,
        });
        (cell, log)
    }

    fn seen(log: &Log) -> Vec<Msg> {
        std::mem::take(&mut *lock(&log.seen))
    }

    #[test]
    fn messages_are_handled_in_order_and_an_ended_actor_gives_them_back() {
        let (cell, log) = recorder(None);
        for n in 0..3 {
            assert!(cell.deliver(Msg::N(n)).is_ok());
        }
        assert_eq!(seen(&log), vec![Msg::N(0), Msg::N(1), Msg::N(2)]);
        assert!(cell.deliver(Msg::End).is_ok());
        assert!(cell.is_closed());
        assert_eq!(
            log.dropped.load(Ordering::SeqCst),
            1,
            "state dropped at the end"
        );
        assert_eq!(cell.deliver(Msg::N(9)), Err(Msg::N(9)));
    }

    #[test]
    fn a_panicking_handler_ends_its_own_actor_only() {
        let (a, log_a) = recorder(None);
        let (b, log_b) = recorder(None);
        assert!(a.deliver(Msg::Panic).is_ok());
        assert_eq!(log_a.failures.load(Ordering::SeqCst), 1);
        assert_eq!(log_a.dropped.load(Ordering::SeqCst), 1);
        assert!(a.deliver(Msg::N(1)).is_err());
        assert!(b.deliver(Msg::N(1)).is_ok());
        assert_eq!(seen(&log_b), vec![Msg::N(1)]);
    }

    #[tokio::test]
    async fn a_suspended_actor_handles_the_output_first_then_what_was_queued() {
        let (cell, log) = recorder(None);
        assert!(cell.deliver(Msg::Sleep(7)).is_ok());
        assert!(cell.deliver(Msg::N(1)).is_ok());
        assert!(cell.deliver(Msg::N(2)).is_ok());
        assert_eq!(seen(&log), vec![Msg::Sleep(7)], "the queue waits");
        // The suspension is a task of its own: let it run.
        for _ in 0..100 {
            if lock(&log.seen).len() == 3 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(seen(&log), vec![Msg::Woke(7), Msg::N(1), Msg::N(2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn its_timer_delivers_a_message_at_the_instant_asked() {
        let start = tokio::time::Instant::now().into_std();
        let (cell, log) = recorder(Some(start + Duration::from_secs(5)));
        assert!(cell.deliver(Msg::N(0)).is_ok());
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(seen(&log), vec![Msg::N(0)]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(seen(&log), vec![Msg::Timer]);
        // An ended actor's timer is disarmed with it.
        let (ended, log) = recorder(Some(start + Duration::from_secs(10)));
        assert!(ended.deliver(Msg::N(0)).is_ok());
        assert!(ended.deliver(Msg::End).is_ok());
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(seen(&log), vec![Msg::N(0), Msg::End]);
        drop(cell);
    }

    /// A handler that asks for the same instant again after its timer fired (a timer it
    /// did not clear) is woken again, not left waiting on an entry that is gone.
    struct Stubborn {
        at: Instant,
        woken: Arc<AtomicUsize>,
    }

    impl Behaviour for Stubborn {
        type Msg = Msg;
        fn timer() -> Msg {
            Msg::Timer
        }
        fn handle(&mut self, msg: Msg, _me: &Me<'_, Self>) -> Step<Msg> {
            if msg == Msg::Timer && self.woken.fetch_add(1, Ordering::SeqCst) + 1 >= 3 {
                return Step::Wait;
            }
            Step::WakeAt(self.at)
        }
        fn failed(&mut self, _panic: &(dyn Any + Send)) {}
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_asked_again_for_an_instant_that_has_come_fires_again() {
        let woken = Arc::new(AtomicUsize::new(0));
        let at = Instant::now() + Duration::from_secs(1);
        let cell = Cell::new(Stubborn {
            at,
            woken: woken.clone(),
        });
        assert!(cell.deliver(Msg::N(0)).is_ok());
        for _ in 0..100 {
            if woken.load(Ordering::SeqCst) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(woken.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn senders_on_many_threads_are_handled_one_at_a_time_and_none_is_lost() {
        let (cell, log) = recorder(None);
        let senders: Vec<_> = (0..4u64)
            .map(|t| {
                let cell = cell.clone();
                std::thread::spawn(move || {
                    for i in 0..2_500 {
                        assert!(cell.deliver(Msg::N(t * 10_000 + i)).is_ok());
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        let got = seen(&log);
        assert_eq!(got.len(), 10_000);
        // Each sender's messages in its order.
        for t in 0..4u64 {
            let mine: Vec<u64> = got
                .iter()
                .filter_map(|m| match m {
                    Msg::N(n) if n / 10_000 == t => Some(*n),
                    _ => None,
                })
                .collect();
            assert_eq!(mine, (0..2_500).map(|i| t * 10_000 + i).collect::<Vec<_>>());
        }
    }
}
