//! The only module that reads the system clock (clippy's `disallowed-methods` bans it elsewhere).
//! Everything else receives time as an argument, which keeps the planner and ledger pure.

#![allow(clippy::disallowed_methods)]

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use testmesh_consensus::UnixMillis;

/// Wall-clock time, for timestamps that go into the ledger.
pub fn now() -> UnixMillis {
    UnixMillis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// Monotonic time, for deadlines and measuring durations.
pub fn instant() -> Instant {
    Instant::now()
}

/// Monotonic time as tokio sees it (for `sleep_until`).
pub fn tokio_instant() -> tokio::time::Instant {
    tokio::time::Instant::now()
}
