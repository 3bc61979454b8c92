//! One timer per thread for every actor that has no task of its own ([`super::cell`]).
//!
//! A transaction asks to be woken at one instant at a time (the earliest timer of its
//! response context). Its instant is kept here, in an ordered map shared by every
//! transaction that runs on the thread, and one task per thread sleeps until the earliest
//! and tells the transactions that are due. Arming, moving and disarming are a map insert
//! and remove under a lock nobody else holds for long; a transaction that ends takes its
//! entry with it, so the map holds only what is armed (no stale entry waits for a
//! three-minute Timer C that will never matter).
//!
//! The wheel of a thread is made, and its task spawned on the thread's runtime, the first
//! time the thread arms a timer. A runtime that stops takes its task with it; the next
//! timer armed on the thread then starts a new wheel on whatever runtime runs there.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What a due timer calls.
pub trait Tick: Send + Sync {
    /// The instant this was armed for has come.
    fn tick(&self);
}

/// An entry's key: its instant, then a number of its own (two entries may share an
/// instant; a number is never given twice, so removing an entry that has fired already
/// removes nothing else).
type Slot = (Instant, u64);

#[derive(Default)]
struct Entries {
    armed: BTreeMap<Slot, Weak<dyn Tick>>,
    next_number: u64,
    /// The instant the wheel's task sleeps until (`None`: nothing armed).
    sleeping_until: Option<Instant>,
}

/// A thread's timers (see the module documentation).
pub struct Wheel {
    entries: Mutex<Entries>,
    /// The wheel's task is running (false once its runtime has dropped it).
    alive: AtomicBool,
    /// Wakes the wheel's task when an entry is armed before the instant it sleeps until.
    earlier: Notify,
}

/// An armed timer: where it is, to move or disarm it.
pub struct Armed {
    wheel: Arc<Wheel>,
    slot: Slot,
}

impl Armed {
    /// The instant it is armed for.
    pub fn at(&self) -> Instant {
        self.slot.0
    }
}

thread_local! {
    static WHEEL: RefCell<Option<Arc<Wheel>>> = const { RefCell::new(None) };
}

/// Nothing held under the lock can panic halfway (map operations on plain keys), so a
/// poisoned lock still guards consistent entries.
fn lock(w: &Wheel) -> MutexGuard<'_, Entries> {
    w.entries.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Arms `who` for `at` on the calling thread's wheel, moving it from `previous` (taken)
/// when it was armed. `None` outside a runtime (nothing can run a timer there).
pub fn arm(previous: &mut Option<Armed>, at: Instant, who: Weak<dyn Tick>) {
    let Some(wheel) = this_thread() else {
        disarm(previous);
        return;
    };
    // Moved on the same wheel (the common case): one lock for both.
    if previous
        .as_ref()
        .is_some_and(|a| !Arc::ptr_eq(&a.wheel, &wheel))
    {
        disarm(previous);
    }
    let notify = {
        let mut e = lock(&wheel);
        if let Some(a) = previous.take() {
            e.armed.remove(&a.slot);
        }
        let slot = (at, e.next_number);
        e.next_number += 1;
        e.armed.insert(slot, who);
        let earlier = e.sleeping_until.is_none_or(|s| at < s);
        if earlier {
            e.sleeping_until = Some(at);
        }
        *previous = Some(Armed {
            wheel: wheel.clone(),
            slot,
        });
        earlier
    };
    if notify {
        wheel.earlier.notify_one();
    }
}

/// Disarms a timer (nothing when it has fired already).
pub fn disarm(armed: &mut Option<Armed>) {
    if let Some(a) = armed.take() {
        lock(&a.wheel).armed.remove(&a.slot);
    }
}

/// The calling thread's wheel, made (and its task spawned) when there is none or its task
/// is gone. `None` outside a tokio runtime.
fn this_thread() -> Option<Arc<Wheel>> {
    WHEEL.with(|w| {
        let mut w = w.borrow_mut();
        if let Some(wheel) = w
            .as_ref()
            .filter(|wheel| wheel.alive.load(Ordering::Acquire))
        {
            return Some(wheel.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let wheel = Arc::new(Wheel {
            entries: Mutex::new(Entries::default()),
            alive: AtomicBool::new(true),
            earlier: Notify::new(),
        });
        runtime.spawn(run(wheel.clone()));
        *w = Some(wheel.clone());
        Some(wheel)
    })
}

/// Marks the wheel dead when its task is dropped (its runtime stopped).
struct Alive(Arc<Wheel>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
        lock(&self.0).armed.clear();
    }
}

/// How long the wheel's task sleeps with nothing armed (it is woken by the first entry).
const IDLE: Duration = Duration::from_secs(3600);

/// The wheel's task: sleeps until the earliest entry, tells every entry that is due.
async fn run(wheel: Arc<Wheel>) {
    let alive = Alive(wheel);
    let wheel = &alive.0;
    let sleep = tokio::time::sleep(IDLE);
    tokio::pin!(sleep);
    let mut due: Vec<Weak<dyn Tick>> = Vec::new();
    loop {
        // tokio's clock (paused in tests), the clock the sleep below runs on
        let now = tokio::time::Instant::now().into_std();
        let next = {
            let mut e = lock(wheel);
            while let Some(entry) = e.armed.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
            let next = e.armed.first_key_value().map(|(s, _)| s.0);
            e.sleeping_until = next;
            next
        };
        // Told outside the lock: a transaction that is told may arm its timer again.
        for who in due.drain(..) {
            if let Some(who) = who.upgrade() {
                who.tick();
            }
        }
        let until = next.unwrap_or(now + IDLE);
        sleep.as_mut().reset(tokio::time::Instant::from_std(until));
        tokio::select! {
            biased;
            () = wheel.earlier.notified() => {}
            () = &mut sleep => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Count(AtomicUsize, Notify);

    impl Tick for Count {
        fn tick(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1.notify_one();
        }
    }

    fn weak(c: &Arc<Count>) -> Weak<dyn Tick> {
        let c: Arc<dyn Tick> = c.clone();
        Arc::downgrade(&c)
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_fires_once_at_its_instant_and_a_moved_one_at_its_new_one() {
        let c = Arc::new(Count::default());
        let start = tokio::time::Instant::now().into_std();
        let mut armed = None;
        arm(&mut armed, start + Duration::from_secs(10), weak(&c));
        // Moved earlier: the sleeping task is woken for it.
        arm(&mut armed, start + Duration::from_secs(2), weak(&c));
        c.1.notified().await;
        let fired_at = tokio::time::Instant::now().into_std() - start;
        assert_eq!(fired_at, Duration::from_secs(2));
        // The entry for 10 s was moved, not left behind.
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(c.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_disarmed_timer_does_not_fire_and_a_dropped_owner_is_skipped() {
        let kept = Arc::new(Count::default());
        let gone = Arc::new(Count::default());
        let start = tokio::time::Instant::now().into_std();
        let (mut a, mut b, mut c) = (None, None, None);
        arm(&mut a, start + Duration::from_secs(1), weak(&kept));
        arm(&mut b, start + Duration::from_secs(1), weak(&gone));
        arm(&mut c, start + Duration::from_secs(3), weak(&kept));
        disarm(&mut a);
        drop(gone);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(kept.0.load(Ordering::SeqCst), 1, "only the 3 s timer fires");
        // What fired is gone from the wheel: disarming it removes nothing else.
        disarm(&mut c);
        assert!(c.is_none());
        assert!(lock(&this_thread().unwrap()).armed.is_empty());
    }

    #[test]
    fn outside_a_runtime_nothing_is_armed() {
        let c = Arc::new(Count::default());
        let mut armed = None;
        arm(&mut armed, Instant::now(), weak(&c));
        assert!(armed.is_none());
    }
}
