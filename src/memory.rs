//! Gives the heap's free memory back to the system after bursts.
//!
//! glibc's malloc keeps memory that was freed in its arenas (one per thread that allocated,
//! up to 8 per core) and returns it to the kernel only when the top of an arena is free.
//! After a burst of uploads and conversions (multipart buffers, decoder and encoder buffers
//! on the blocking threads) most of that memory is free but scattered, so the idle RSS of a
//! node ratcheted up burst after burst (issue 11: 215 → 273 MB over four rounds of 100
//! uploads; `benches/bursts.py --trim-probe` showed a `malloc_trim(0)` bringing 142 MiB back
//! to 45 MiB). Every [`PERIOD`], a task asks the allocator how much it holds free and, above
//! [`SLACK`], trims every arena (glibc ≥ 2.8 releases whole free pages inside arenas too).
//!
//! On other C libraries this is a no-op.

use std::time::Duration;

/// How often the free memory is checked.
pub const PERIOD: Duration = Duration::from_secs(5);

/// Free heap memory kept without trimming: enough to serve the next requests without page
/// faults, small next to a node's working set.
pub const SLACK: usize = 16 << 20;

/// Starts the trimming task on the current runtime; it ends with the runtime.
pub fn spawn_trimmer() {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Both calls lock every arena in turn: off the async workers.
            match tokio::task::spawn_blocking(|| trim_if_above(SLACK)).await {
                Ok(Some(free)) => tracing::debug!(free, "heap trimmed"),
                Ok(None) => {}
                Err(_) => return,
            }
        }
    });
}

/// Trims the heap when more than `slack` bytes of it are free; answers the free bytes it
/// found, or `None` when nothing was done.
pub fn trim_if_above(slack: usize) -> Option<usize> {
    let free = free_heap_bytes()?;
    if free <= slack {
        return None;
    }
    trim();
    Some(free)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn free_heap_bytes() -> Option<usize> {
    // SAFETY: mallinfo2 only reads the allocator's counters (glibc ≥ 2.33; Debian 12 has 2.36).
    let info = unsafe { libc::mallinfo2() };
    Some(info.fordblks)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim is thread-safe; it locks each arena while it releases pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn free_heap_bytes() -> Option<usize> {
    None
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * rustix::param::page_size()
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_scattered_memory_is_given_back() {
        // 64 MiB in 16 KiB blocks (below the mmap threshold: inside the heap), every other
        // one freed: 32 MiB free in the middle of the heap, which malloc never returns alone.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8 | 1; 16 << 10]).collect();
        let kept: Vec<Vec<u8>> = blocks.drain(..).step_by(2).collect();
        let resident = resident_bytes();
        let free = trim_if_above(16 << 20).expect("more than 16 MiB free");
        assert!(free >= 30 << 20, "free heap bytes: {free}");
        let given_back = resident.saturating_sub(resident_bytes());
        assert!(given_back >= 16 << 20, "only {given_back} bytes given back");
        assert_eq!(trim_if_above(usize::MAX), None);
        assert!(kept.iter().all(|b| b[0] & 1 == 1));
    }
}
