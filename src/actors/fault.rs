//! Fault injection for tests (feature `fault-injection`): a marked message makes the actor
//! that handles it panic, so tests can show that the failure is contained.

/// Panics on purpose.
#[allow(clippy::panic)]
pub fn injected(what: &str) -> ! {
    panic!("injected fault in {what} actor")
}
