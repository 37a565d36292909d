//! Returning memory to the system after a burst of connections closes.
//!
//! glibc's allocator keeps freed memory in its per-thread arenas: after
//! 10,000 idle connections closed, the proxy's RSS stayed 47 MiB above
//! idle (benches/RESULTS.md, memory scenarios). A sidecar's memory limit is
//! set from its peak, and a node's scheduler reads RSS, so the proxy hands
//! the memory back: once a second, if the number of open connections has
//! fallen by half (and by at least [`TRIM_AFTER_CLOSED`]) since the last
//! trim, it calls `malloc_trim(0)`, which releases free pages of every arena.
//!
//! One of the project's two audited `unsafe` calls lives here (the other
//! in `cpu.rs`). Without glibc (musl,
//! other systems) this is a no-op. Spawned by `lib.rs`; it owns no state
//! beyond the last peak.

#![allow(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Closed connections that make a trim worth its pass over the heap.
pub const TRIM_AFTER_CLOSED: usize = 1000;

/// Whether to trim now: `open` connections, `peak` since the last trim.
pub fn should_trim(peak: usize, open: usize) -> bool {
    peak >= open + TRIM_AFTER_CLOSED && open <= peak / 2
}

/// Watches the connection slots (`max` minus the free permits is the
/// number open) and trims after bursts, until `stop`.
pub async fn trim_after_bursts(slots: Arc<Semaphore>, max: usize, stop: CancellationToken) {
    let mut peak = 0usize;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let open = max.saturating_sub(slots.available_permits());
        peak = peak.max(open);
        if should_trim(peak, open) {
            let released = trim();
            debug!(peak, open, released, "returned freed memory to the system");
            peak = open;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim only walks the allocator's own free lists under
    // its locks; it takes no pointers from us and is safe to call from any
    // thread at any time (glibc documents it as MT-Safe).
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_real_burst_closed() {
        assert!(should_trim(9800, 0));
        assert!(should_trim(2000, 1000));
        assert!(!should_trim(2000, 1001), "not yet half");
        assert!(!should_trim(1500, 600), "fewer than 1,000 closed");
        assert!(!should_trim(0, 0));
        assert!(!should_trim(50_000, 40_000));
    }
}
