//! Giving memory back to the system after a crowd leaves.
//!
//! Thousands of connections allocate and free small blocks on every worker thread;
//! glibc's allocator keeps freed memory in its per-thread arenas, so after a mass
//! departure the server's resident size stays near its peak. [`MemoryKeeper`] watches
//! how many connections and sessions the registry holds; after a large drop, once the
//! count has stopped falling (the departed sessions are forgotten a little later than
//! their connections), it asks the allocator to return what it can (`malloc_trim`), off
//! the async threads, and once more a few seconds later for what the departed tasks
//! freed after that. [`tune_allocator`] fixes glibc's mmap threshold at start-up, so that
//! large blocks (the history's chunks, a big user list, a busy writer's round) are mapped
//! on their own and returned when freed, instead of landing in the arenas once glibc's
//! dynamic threshold has risen, where long-lived ones pin the memory around them.
//! Elsewhere both do nothing.

/// Watches the registry's load and trims the allocator after large drops.
#[derive(Debug, Default)]
pub struct MemoryKeeper {
    /// The highest load since the last trim.
    high_water: usize,
    /// The load at the previous observation.
    last: usize,
    /// Observations left before the follow-up trim, after a trim: what the departed
    /// members' tasks free after the first one (their writers and lingering closes end
    /// a little later) would otherwise stay with the allocator.
    trim_again_in: Option<u8>,
}

/// Observations (seconds, at the registry's sweep) between a trim and its follow-up.
const TRIM_AGAIN_AFTER: u8 = 5;

/// A drop of at least this many (connections plus sessions) triggers a trim.
const TRIM_AFTER: usize = 256;

impl MemoryKeeper {
    /// Called with the current load (connections plus sessions), e.g. once a second.
    pub fn observe(&mut self, load: usize) {
        if let Some(left) = self.trim_again_in.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.trim_again_in = None;
                release_free_memory();
            }
        }
        let settled = load >= self.last;
        self.last = load;
        if load > self.high_water {
            self.high_water = load;
            return;
        }
        let dropped = self.high_water - load;
        if settled && dropped >= TRIM_AFTER && load <= self.high_water / 2 {
            self.high_water = load;
            self.trim_again_in = Some(TRIM_AGAIN_AFTER);
            release_free_memory();
        }
    }
}

/// Blocks at least this large are mapped on their own (glibc's default, made fixed).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Sets the allocator up for a server whose connections come and go by the thousand.
/// Call once at start-up, before the runtime starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters; called before any thread
    // of ours allocates concurrently.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Asks the allocator to return free memory to the system, on a blocking thread.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        // Not awaited: the trim runs on its own and reports in the log.
        drop(runtime.spawn_blocking(|| {
            // SAFETY: malloc_trim only walks the allocator's own free lists.
            let released = unsafe { libc::malloc_trim(0) };
            tracing::debug!(released, "returned free memory to the system");
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_the_drop_has_settled() {
        let mut keeper = MemoryKeeper::default();
        keeper.observe(10_000);
        keeper.observe(4_000);
        assert_eq!(keeper.high_water, 10_000, "still falling: no trim yet");
        keeper.observe(4_000);
        assert_eq!(keeper.high_water, 4_000, "settled: trimmed");
        keeper.observe(3_900);
        keeper.observe(3_900);
        assert_eq!(keeper.high_water, 4_000, "a small drop is not worth a trim");
    }

    #[test]
    fn a_trim_is_followed_up_a_few_observations_later() {
        let mut keeper = MemoryKeeper::default();
        keeper.observe(10_000);
        keeper.observe(100);
        keeper.observe(100);
        assert_eq!(keeper.trim_again_in, Some(TRIM_AGAIN_AFTER), "trimmed");
        for _ in 0..TRIM_AGAIN_AFTER {
            keeper.observe(100);
        }
        assert_eq!(keeper.trim_again_in, None, "followed up, once");
    }
}
