//! A transaction's mailbox: many senders (the tables, the dispatcher on any worker), one
//! receiver (the transaction's task), unbounded (admission control is explicit).
//!
//! tokio's unbounded channel did this with a 0.5 KiB channel header and a first block of
//! 32 slots (0.5 KiB more) per transaction, for a mailbox that sees three or four messages
//! in its life. This one is a queue under a mutex with the receiver's waker beside it: about
//! 80 bytes, and 64 more on the first message. The lock is held only to push, pop or swap
//! the waker; the waker is woken after it is released.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};

struct Slot<T> {
    queue: VecDeque<T>,
    /// The receiver's task while it waits for a message.
    waker: Option<Waker>,
    /// The receiver is gone: sending gives the message back.
    closed: bool,
}

type Shared<T> = Arc<Mutex<Slot<T>>>;

/// Nothing held under the lock can panic halfway (a push, a pop, a swap), so a poisoned
/// lock still guards a consistent queue.
fn lock<T>(s: &Shared<T>) -> MutexGuard<'_, Slot<T>> {
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A new mailbox: its sending side (cheap to clone) and its receiving side.
pub fn mailbox<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Mutex::new(Slot {
        queue: VecDeque::new(),
        waker: None,
        closed: false,
    }));
    (Sender(shared.clone()), Receiver(shared))
}

/// The sending side.
pub struct Sender<T>(Shared<T>);

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender(self.0.clone())
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sender")
    }
}

impl<T> Sender<T> {
    /// Queues `msg` and wakes the receiver; `Err` gives it back when the receiver is gone.
    pub fn send(&self, msg: T) -> Result<(), T> {
        let waker = {
            let mut slot = lock(&self.0);
            if slot.closed {
                return Err(msg);
            }
            slot.queue.push_back(msg);
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

/// The receiving side; dropping it closes the mailbox and drops what is queued.
pub struct Receiver<T>(Shared<T>);

impl<T> Receiver<T> {
    /// The next message, waiting for one. Cancel-safe: a message is taken only when this
    /// returns it.
    pub async fn recv(&mut self) -> T {
        std::future::poll_fn(|cx| {
            let mut slot = lock(&self.0);
            if let Some(msg) = slot.queue.pop_front() {
                return Poll::Ready(msg);
            }
            if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                slot.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// The next message if one is queued (tests).
    #[cfg(test)]
    pub fn try_recv(&mut self) -> Option<T> {
        lock(&self.0).queue.pop_front()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let queued = {
            let mut slot = lock(&self.0);
            slot.closed = true;
            slot.waker = None;
            std::mem::take(&mut slot.queue)
        };
        // Dropped after the lock is released: a message's drop may touch other mailboxes.
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_arrive_in_order_and_wake_the_receiver() {
        let (tx, mut rx) = mailbox::<u32>();
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(rx.recv().await);
            }
            got
        });
        tokio::task::yield_now().await;
        let other = tx.clone();
        assert!(tx.send(1).is_ok());
        assert!(other.send(2).is_ok());
        assert!(tx.send(3).is_ok());
        assert_eq!(waiting.await.unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn a_closed_mailbox_gives_the_message_back() {
        let (tx, rx) = mailbox::<String>();
        assert!(tx.send("queued".into()).is_ok());
        drop(rx);
        assert_eq!(tx.send("late".into()), Err("late".to_string()));
    }

    #[test]
    fn senders_on_other_threads_wake_a_waiting_receiver() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, mut rx) = mailbox::<u64>();
        let senders: Vec<_> = (0..4)
            .map(|t| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..2_500 {
                        assert!(tx.send(t * 10_000 + i).is_ok());
                    }
                })
            })
            .collect();
        let sum = rt.block_on(async {
            let mut sum = 0u64;
            for _ in 0..10_000 {
                sum += tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
                    .await
                    .expect("a message was sent but the receiver was not woken");
            }
            sum
        });
        for s in senders {
            s.join().unwrap();
        }
        let want: u64 = (0..4u64)
            .flat_map(|t| (0..2_500u64).map(move |i| t * 10_000 + i))
            .sum();
        assert_eq!(sum, want);
        assert_eq!(rx.try_recv(), None);
    }
}
