//! One pending timer message per actor: the sans-IO machines say when they next need to be
//! woken (`poll_timeout`), and a [`Wakeup`] keeps exactly one delayed message on its way for
//! the earliest such instant, cancelling a later one when an earlier one is asked for.

use std::time::Instant;

use ractor::{ActorRef, Message, MessagingErr};
use tokio::task::JoinHandle;

/// The task that delivers a delayed message.
type Delivery<M> = JoinHandle<Result<(), MessagingErr<M>>>;

/// The pending wake-up of one actor.
pub struct Wakeup<M: Message> {
    pending: Option<(Instant, Delivery<M>)>,
}

impl<M: Message> Default for Wakeup<M> {
    fn default() -> Self {
        Wakeup { pending: None }
    }
}

impl<M: Message> Wakeup<M> {
    /// The wake-up message has arrived.
    pub fn fired(&mut self) {
        self.pending = None;
    }

    /// Makes sure `actor` gets `msg()` at `next` (or earlier).
    pub fn schedule(&mut self, actor: &ActorRef<M>, next: Instant, now: Instant, msg: fn() -> M) {
        if self.pending.as_ref().is_some_and(|(at, _)| *at <= next) {
            return;
        }
        self.cancel();
        let task = actor.send_after(next.saturating_duration_since(now), msg);
        self.pending = Some((next, task));
    }

    /// Drops the pending wake-up (the actor is ending).
    pub fn cancel(&mut self) {
        if let Some((_, task)) = self.pending.take() {
            task.abort();
        }
    }
}
