//! The process's memory: its resident size, shown by `/status` and the metrics next to the
//! transaction and connection counts, and giving freed memory back to the system once a
//! burst of transactions has ended (issue 17).
//!
//! glibc's malloc keeps what the program frees: a burst of transactions grows its heap, and
//! the few long-lived allocations made meanwhile (table slots, a connection) pin it, so the
//! heap never shrinks by itself. `malloc_trim` hands every whole free page back
//! (`madvise(MADV_DONTNEED)`), wherever it lies. [`Release`] decides when that is worth it:
//! when the live transactions have fallen well below the peak they reached since the last
//! time. README, "Memory", has the measurements behind this choice.
//!
//! Under a steady load nothing need be trimmed if the large blocks keep mappings of their
//! own ([`fix_mmap_threshold`]) and the transaction tables stay at the size their entries
//! need (the sweeper rebuilds them every second: `actors::spawn_sweeper`).

/// The resident set size of this process in bytes, from `/proc/self/statm`; `None` where
/// that file cannot be read (not Linux).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096);
    Some(pages.saturating_mul(page))
}

/// The size from which glibc gives an allocation a mapping of its own (its default
/// starting value): such a block goes back to the system the moment it is freed.
pub const MMAP_THRESHOLD: usize = 128 << 10;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`]. By default glibc raises it to the
/// size of every mapped block freed (up to 32 MiB): once a transaction table had been
/// rebuilt smaller, the next tables of that size were put in the heap, and a freed one
/// stayed there, resident (+1.6 MiB in the soak). Fixed, large tables and buffers keep
/// their own mappings. Call once at start; a no-op with another allocator.
pub fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes two integers and only sets the allocator's parameters under its
    // lock; it is safe to call from any thread at any time.
    unsafe {
        libc::mallopt(
            libc::M_MMAP_THRESHOLD,
            libc::c_int::try_from(MMAP_THRESHOLD).unwrap_or(libc::c_int::MAX),
        );
    }
}

/// Gives the allocator's free memory back to the system (glibc: `malloc_trim(0)`, every
/// arena). Costs a walk over the free lists: call it after a burst, not per message.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only reorganises the allocator's own free
    // lists under its locks; it is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// glibc's heap at one moment (`mallinfo2`, every arena), for the debug log beside the
/// resident size: what is live, what is free but kept, and where it lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes of the heaps grown with `brk`/`sbrk` and the arenas' heaps (`arena`).
    pub heap: usize,
    /// Bytes in chunks of their own mapping (`hblkhd`): allocations above the mmap
    /// threshold, such as large hash tables; given back as soon as they are freed.
    pub mmapped: usize,
    /// Bytes allocated and not freed, in the heaps (`uordblks`).
    pub in_use: usize,
    /// Bytes free in the heaps, kept by the allocator (`fordblks`), pages already returned
    /// by a trim included.
    pub free: usize,
}

/// The allocator's figures now; `None` with another allocator than glibc's.
pub fn heap_stats() -> Option<HeapStats> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no argument and reads the allocator's statistics under
        // its locks; it is safe to call from any thread at any time.
        let m = unsafe { libc::mallinfo2() };
        Some(HeapStats {
            heap: m.arena,
            mmapped: m.hblkhd,
            in_use: m.uordblks,
            free: m.fordblks,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Bytes the allocator holds free, not given back (glibc: `mallinfo2().fordblks`, pages
/// already returned by a trim included); `None` with another allocator.
pub fn free_heap_bytes() -> Option<usize> {
    heap_stats().map(|h| h.free)
}

/// When to give memory back: the count of live transactions fell to half the peak it
/// reached since the last release, and by at least [`Release::MIN_DROP`] transactions (a
/// burst has drained: the tables shrink too); or, under a steady load, the allocator's free
/// memory grew by [`Release::FREED_STEP`] since the last release (a passing spike).
#[derive(Debug, Default)]
pub struct Release {
    peak: usize,
    free_at_release: usize,
}

impl Release {
    /// A drop smaller than this is not worth a trim (a few MiB at most).
    pub const MIN_DROP: usize = 1000;
    /// Free memory that grew by less than this is left to the allocator.
    pub const FREED_STEP: usize = 8 << 20;

    /// Takes the allocator's free bytes now; true when they grew by [`Self::FREED_STEP`]
    /// since the last release (then they count from here). Memory reused since lowers the
    /// mark: what is freed again counts.
    pub fn heap_freed(&mut self, free: usize) -> bool {
        if free >= self.free_at_release.saturating_add(Self::FREED_STEP) {
            self.free_at_release = free;
            true
        } else {
            self.free_at_release = self.free_at_release.min(free);
            false
        }
    }

    /// Takes the count of live transactions now; true when memory should be released now:
    /// half of the peak since the last release is gone (by [`Self::MIN_DROP`] or more), or
    /// everything is, after any transaction at all (the last of a burst may be fewer than
    /// `MIN_DROP`, and what they leave free fewer than [`Self::FREED_STEP`]).
    pub fn observe(&mut self, live: usize) -> bool {
        self.peak = self.peak.max(live);
        if live == 0 && self.peak > 0 {
            self.peak = 0;
            return true;
        }
        if self.peak - live >= Self::MIN_DROP && live <= self.peak / 2 {
            self.peak = live;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_size_is_read() {
        let rss = resident_bytes();
        assert!(rss.is_some_and(|b| b > 1 << 20), "{rss:?}");
    }

    #[test]
    fn releases_once_after_a_burst_has_drained() {
        let mut r = Release::default();
        // A burst builds up: nothing to release while it grows.
        assert!((0..=10_000).step_by(500).all(|n| !r.observe(n)));
        // Still most of it live.
        assert!(!r.observe(8000));
        assert!(!r.observe(5001));
        // Half gone: release, once.
        assert!(r.observe(5000));
        assert!(!r.observe(4000));
        assert!(!r.observe(3001));
        // Half of what was left at the release is gone too.
        assert!(r.observe(2500));
        // And the rest, once.
        assert!(r.observe(0));
        assert!(!r.observe(0));
        // A release left 600 live: when they are gone too (a drop under MIN_DROP), once more.
        assert!((0..=2000).step_by(100).all(|n| !r.observe(n)));
        assert!(r.observe(600));
        assert!(!r.observe(300));
        assert!(r.observe(0));
        assert!(!r.observe(0));
    }

    #[test]
    fn a_spike_under_steady_load_is_given_back_once() {
        let mut r = Release::default();
        assert!(!r.heap_freed(1 << 20));
        // A spike came and went: 10 MiB more free than at the last release.
        assert!(r.heap_freed(11 << 20));
        // Still as much free (a trim does not change the allocator's count): nothing more.
        assert!(!r.heap_freed(11 << 20));
        assert!(!r.heap_freed(18 << 20));
        // Reused by the next spike, freed again: released again.
        assert!(!r.heap_freed(2 << 20));
        assert!(r.heap_freed(10 << 20));
    }

    /// The soak's step (README, "Memory"): a hash table churned at a steady size (here
    /// 250 inserts a second, each entry removed 32 s later, like the lingering table at 125
    /// calls/s: 8 shards of about 1,000 entries in 2,048 slots) doubles once the tombstones
    /// of its removals have used up its room, unless it is rebuilt at its size every sweep
    /// as the sweeper does (`shrink_to_fit`).
    #[test]
    fn a_churned_table_doubles_unless_rebuilt_every_sweep() {
        /// The table's capacity at each second after the first minute.
        fn churn(rebuild: bool) -> Vec<usize> {
            // A fixed seed: whether and when a shard fills with tombstones depends on where
            // the keys hash, and a random seed left it undoubled in one run of five.
            let table: dashmap::DashMap<u64, Box<u64>, foldhash::fast::FixedState> =
                dashmap::DashMap::with_hasher_and_shard_amount(
                    foldhash::fast::FixedState::with_seed(0x5eed),
                    8,
                );
            let mut next = 0u64;
            let mut capacities = Vec::new();
            for second in 0..600u64 {
                for _ in 0..250 {
                    table.insert(next, Box::new(second + 32));
                    next += 1;
                }
                table.retain(|_, until| **until > second);
                if rebuild {
                    table.shrink_to_fit();
                }
                if second >= 60 {
                    capacities.push(table.capacity());
                }
            }
            capacities
        }
        // 8,000 entries: each shard needs 2,048 slots, room for 1,792 entries.
        let at_size = 8 * 1792;
        let kept = churn(true);
        assert!(kept.iter().all(|&c| c <= at_size), "{kept:?}");
        // Left alone, shards double (hashbrown 0.14); if this fails, the rebuild may no
        // longer be needed.
        let left = churn(false);
        assert!(left.last().is_some_and(|&c| c > at_size), "{left:?}");
    }

    /// With the threshold fixed, a large block freed does not send the next, smaller
    /// ones into the heap: each keeps a mapping of its own (`hblkhd` grows by its size).
    /// The allocator's counts are the process's, shared with tests running meanwhile:
    /// one try in five seeing it is enough.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn large_blocks_keep_their_own_mapping_after_a_larger_one_was_freed() {
        fix_mmap_threshold();
        let mapped = || heap_stats().map_or(0, |h| h.mmapped);
        let seen = (0..5).any(|_| {
            drop(std::hint::black_box(vec![1u8; 4 << 20]));
            let before = mapped();
            let block = std::hint::black_box(vec![1u8; 512 << 10]);
            let grown = mapped().saturating_sub(before);
            drop(block);
            grown >= 512 << 10
        });
        assert!(seen);
    }

    #[test]
    fn small_swings_release_nothing() {
        let mut r = Release::default();
        for _ in 0..100 {
            assert!(!r.observe(900));
            assert!(!r.observe(10));
        }
    }
}
