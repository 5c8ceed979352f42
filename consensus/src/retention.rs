//! Retention of finished work: which finished tasks leave the live replicated state.
//!
//! The leader picks them with [`select`] (pure, over the ledger) and commits a
//! `Command::Archive`; applying it moves them out of the in-memory ledger into each replica's
//! on-disk archive (see `store`), where `task`, run results and exports still find them. A run
//! leaves only whole, and only once every task of it has finished.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::ledger::Ledger;
use crate::model::{TaskId, UnixMillis};
use crate::task::Task;

/// How long finished tasks stay live, and how many at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Finished longer ago than this: archived.
    pub max_age_ms: Option<u64>,
    /// More finished tasks than this live: the oldest are archived.
    pub keep: Option<usize>,
}

impl Default for Policy {
    /// A day, or the newest 10,000 finished tasks, whichever is fewer.
    fn default() -> Self {
        Policy {
            max_age_ms: Some(24 * 3600 * 1000),
            keep: Some(10_000),
        }
    }
}

impl Policy {
    /// Keeps everything (the behaviour before retention existed).
    pub const FOREVER: Policy = Policy {
        max_age_ms: None,
        keep: None,
    };
}

/// Most tasks one archive command carries (one log entry stays small).
pub const MAX_ARCHIVE_BATCH: usize = 5_000;
/// Most live tasks one selection looks at (a huge pending queue does not make it slow).
const MAX_SCAN: usize = 200_000;

/// The finished tasks that should leave the live state now under `policy`, oldest first, at
/// most [`MAX_ARCHIVE_BATCH`]. A task of a run is picked only with every other task of that
/// run, once the run is done; the run's age is that of its last task to finish.
pub fn select(ledger: &Ledger, policy: &Policy, now: UnixMillis) -> Vec<TaskId> {
    if *policy == Policy::FOREVER {
        return Vec::new();
    }
    let finished = ledger
        .task_count()
        .saturating_sub(ledger.pending_count() + ledger.reservations().count());
    let mut excess = policy.keep.map_or(0, |keep| finished.saturating_sub(keep));
    let old = |t: &Task| match (policy.max_age_ms, t.finished_at) {
        (Some(age), Some(f)) => now.0.saturating_sub(f.0) >= age,
        _ => false,
    };
    // Per run: Some(ids) when it is done and may go, None when it must stay.
    let mut runs: HashMap<u64, Option<Vec<TaskId>>> = HashMap::new();
    let mut out = Vec::new();
    for t in ledger.tasks().take(MAX_SCAN) {
        if out.len() >= MAX_ARCHIVE_BATCH {
            break;
        }
        if !t.state.is_final() {
            continue;
        }
        match t.run {
            None => {
                if excess > 0 || old(t) {
                    excess = excess.saturating_sub(1);
                    out.push(t.id);
                }
            }
            Some(r) => {
                if runs.contains_key(&r) {
                    continue;
                }
                if ledger.newest_run() == Some(r) {
                    // It stays (see `Ledger::newest_run`).
                    runs.insert(r, None);
                    continue;
                }
                let whole = ledger.run(r).and_then(|run| {
                    let tasks: Vec<&Task> =
                        run.tasks.iter().filter_map(|id| ledger.task(*id)).collect();
                    let done = tasks.iter().all(|t| t.state.is_final());
                    let last = tasks.iter().filter_map(|t| t.finished_at).max();
                    let aged = match (policy.max_age_ms, last) {
                        (Some(age), Some(f)) => now.0.saturating_sub(f.0) >= age,
                        _ => false,
                    };
                    (done && (excess > 0 || aged)).then(|| tasks.iter().map(|t| t.id).collect())
                });
                if let Some(ids) = &whole {
                    let ids: &Vec<TaskId> = ids;
                    // A run bigger than what is left of the batch waits for the next one,
                    // unless the batch is empty: a run is never split.
                    if !out.is_empty() && out.len() + ids.len() > MAX_ARCHIVE_BATCH {
                        break;
                    }
                    excess = excess.saturating_sub(ids.len());
                    out.extend(ids.iter().copied());
                }
                runs.insert(r, whole);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
