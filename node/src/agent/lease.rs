//! A worker's lease on its attempts (fencing).
//!
//! The leader marks a worker lost after `--dead-after` without an answer and runs its attempts
//! elsewhere. A worker that is cut off (or was paused) must not go on running them meanwhile:
//! it asks the leader every `fence_after / 4` whether a quorum still follows it and whether
//! the worker itself is still in good standing, and once it has had no such confirmation for
//! `fence_after` (half of `--dead-after`), or hears that it was marked lost, it stops its
//! attempts and starts nothing until it is confirmed again. A boot starts in bad standing, so
//! a restarted node starts nothing before the leader has confirmed it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::core::Core;
use crate::mesh::rpc::Standing;

/// The watchdog's lease, in units of `fence_after` (half of `--dead-after`): 0.9 of
/// `--dead-after`. Past this process's own bound (it fences after `fence_after` and one more
/// question of up to half of it), so that the watchdog acts only when this process cannot;
/// short of `--dead-after`, after which the leader may run the attempts elsewhere.
pub const WATCHDOG_LEASE: f64 = 1.8;

/// When the standing was last confirmed (the time of asking), shared with the agent: an attempt
/// SIGKILLed once the watchdog's lease had run out was fenced, not failed.
#[derive(Clone, Default)]
pub struct LeaseView(Arc<Mutex<Option<Instant>>>);

impl LeaseView {
    fn confirm(&self, at: Instant) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
    }

    /// Whether the watchdog's lease (`lease` long) may have run out at `now`; a small margin
    /// covers the two processes' timing.
    pub fn lapsed(&self, now: Instant, lease: Duration) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|c| now.duration_since(c) >= lease.mul_f64(0.95))
    }
}

/// Keeps `good` true while this node is in good standing with the leader, until shutdown.
/// Each confirmation also renews the watchdog's lease (see [`super::watchdog`]) for
/// [`WATCHDOG_LEASE`] of `fence_after` from the time of asking.
pub async fn keep_lease(
    core: Core,
    fence_after: Duration,
    good: watch::Sender<bool>,
    watchdog: Option<super::Watchdog>,
    view: LeaseView,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = (fence_after / 4).max(Duration::from_millis(100));
    let mut confirmed: Option<Instant> = None;
    loop {
        // The time of asking, not of the answer: an answer delayed by a pause proves nothing
        // about the time in between.
        let (mut asked, mut answer) = ask(&core, every).await;
        if matches!(answer, Standing::Unsure(_))
            && confirmed.is_none_or(|c| core.clock.instant().duration_since(c) >= fence_after)
        {
            // About to fence: ask once more first, with more patience (a quarter of
            // --dead-after: still inside it). After this process was paused the question in
            // flight timed out at once, and a loaded machine may be slow to answer a fresh one.
            (asked, answer) = ask(&core, fence_after / 2).await;
        }
        let now = core.clock.instant();
        let was_good = *good.borrow();
        let standing = match answer {
            Standing::Good => {
                confirmed = Some(asked);
                view.confirm(asked);
                if let Some(w) = &watchdog {
                    let lease = fence_after.mul_f64(WATCHDOG_LEASE);
                    w.lease(lease.saturating_sub(now.duration_since(asked)));
                }
                true
            }
            Standing::Lost => {
                confirmed = None;
                if was_good {
                    tracing::warn!(
                        "the leader has marked this worker lost (its attempts run elsewhere): \
                         stopping them"
                    );
                }
                false
            }
            Standing::Unsure(why) => {
                let ok = confirmed.is_some_and(|c| now.duration_since(c) < fence_after);
                if was_good && !ok {
                    tracing::warn!(
                        "fencing: no confirmation from a leader for {fence_after:?} ({why}); \
                         stopping this node's task attempts so that none can run twice"
                    );
                }
                ok
            }
        };
        if standing && !was_good {
            tracing::debug!("in good standing with the leader");
        }
        good.send_if_modified(|g| std::mem::replace(g, standing) != standing);
        // Out of standing (a boot, a cluster forming, a partition) nothing runs here: ask
        // again soon rather than a quarter of the bound later.
        let next = if standing {
            every
        } else {
            Duration::from_millis(100)
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(next) => {}
        }
    }
}

/// One standing check, bounded by `limit`, and when it was asked.
async fn ask(core: &Core, limit: Duration) -> (Instant, Standing) {
    let asked = core.clock.instant();
    let answer = tokio::time::timeout(limit, core.writer.confirm_standing())
        .await
        .unwrap_or_else(|_| Standing::Unsure("no answer in time".into()));
    (asked, answer)
}
