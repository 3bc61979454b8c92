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

/// An actor's state is dropped when it ends, however it ends: its pending wake-up goes
/// with it. Left sleeping, the delivery task would hold the actor's reference, and with it
/// the dead actor's mailboxes (about 5 KiB), until the deadline (Timer C: 3 minutes).
impl<M: Message> Drop for Wakeup<M> {
    fn drop(&mut self) {
        self.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::{Actor, ActorProcessingErr};
    use tokio::sync::mpsc::UnboundedSender;

    struct Echo;

    impl Actor for Echo {
        type Msg = u8;
        type State = UnboundedSender<u8>;
        type Arguments = UnboundedSender<u8>;

        async fn pre_start(
            &self,
            _myself: ActorRef<u8>,
            out: UnboundedSender<u8>,
        ) -> Result<UnboundedSender<u8>, ActorProcessingErr> {
            Ok(out)
        }

        async fn handle(
            &self,
            _myself: ActorRef<u8>,
            msg: u8,
            out: &mut UnboundedSender<u8>,
        ) -> Result<(), ActorProcessingErr> {
            let _ = out.send(msg);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_wakeup_never_arrives() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (actor, _) = Actor::spawn(None, Echo, tx).await.unwrap();
        let now = Instant::now();
        let mut dropped = Wakeup::default();
        dropped.schedule(&actor, now + std::time::Duration::from_secs(5), now, || 1);
        let mut kept = Wakeup::default();
        kept.schedule(&actor, now + std::time::Duration::from_secs(10), now, || 2);
        drop(dropped);
        // Paused time runs on to the next timer: the first message is the later one.
        assert_eq!(rx.recv().await, Some(2));
        kept.fired();
        actor.stop(None);
    }
}
