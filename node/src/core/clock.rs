//! The one place that reads the system clock (clippy's `disallowed-methods` bans it elsewhere).
//! Loops receive a [`Clock`]: [`SystemClock`] in a node, [`ManualClock`] in tests, which move
//! time by hand instead of sleeping.

#![allow(clippy::disallowed_methods)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use testmesh_consensus::UnixMillis;

/// Wall-clock and monotonic time.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time, for timestamps that go into the ledger.
    fn now(&self) -> UnixMillis;
    /// Monotonic time, for deadlines and measuring durations.
    fn instant(&self) -> Instant;
}

/// The clock every component of a node shares.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        )
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// The real clock, shared.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to ([`ManualClock::advance`]); both readings move together.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<Mutex<(UnixMillis, Instant)>>,
}

impl ManualClock {
    /// Starts at `wall` (its monotonic reading starts at the moment of creation).
    pub fn new(wall: UnixMillis) -> Self {
        ManualClock {
            inner: Arc::new(Mutex::new((wall, Instant::now()))),
        }
    }

    pub fn advance(&self, by: Duration) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = UnixMillis(g.0.0 + by.as_millis() as u64);
        g.1 += by;
    }

    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn instant(&self) -> Instant {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_both_readings_together() {
        let c = ManualClock::new(UnixMillis(1_000));
        let (w, i) = (c.now(), c.instant());
        assert_eq!((c.now(), c.instant()), (w, i));
        c.advance(Duration::from_millis(250));
        assert_eq!(c.now(), UnixMillis(1_250));
        assert_eq!(c.instant() - i, Duration::from_millis(250));
        // Clones share the time.
        let shared = c.shared();
        c.advance(Duration::from_secs(1));
        assert_eq!(shared.now(), UnixMillis(2_250));
    }
}
