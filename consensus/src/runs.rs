//! Runs: tasks submitted together under one id (a matrix, a sharded suite), with a name and
//! metadata, and what their results add up to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{TaskId, UnixMillis};
use crate::task::{Task, TaskState};

/// Most metadata entries on a run, and longest key or value.
pub const MAX_METADATA: usize = 64;
pub const MAX_METADATA_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub id: u64,
    pub name: String,
    /// Free-form: commit, branch, pipeline URL, matrix parameters…
    pub metadata: BTreeMap<String, String>,
    pub request_id: String,
    pub created_at: UnixMillis,
    /// In submission order.
    pub tasks: Vec<TaskId>,
}

/// Where a run stands, from its tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub total: usize,
    pub by_state: BTreeMap<TaskState, usize>,
    /// Every task reached a final state.
    pub done: bool,
    /// Tasks that ended in anything but success.
    pub failed: usize,
    /// Tasks that failed at least once and then succeeded.
    pub flaky: usize,
    /// All done and none failed.
    pub passed: bool,
}

/// A task that ended well only after an attempt of it failed.
pub fn is_flaky(t: &Task) -> bool {
    t.state == TaskState::Succeeded
        && t.attempts.iter().any(|a| {
            a.outcome
                .as_ref()
                .is_some_and(|o| matches!(o.state, TaskState::Failed | TaskState::TimedOut))
        })
}

pub fn summarise<'a>(tasks: impl IntoIterator<Item = &'a Task>) -> RunSummary {
    let mut s = RunSummary::default();
    for t in tasks {
        s.total += 1;
        *s.by_state.entry(t.state).or_default() += 1;
        if t.state.is_final() && t.state != TaskState::Succeeded {
            s.failed += 1;
        }
        if is_flaky(t) {
            s.flaky += 1;
        }
    }
    s.done = s.total > 0 && s.by_state.iter().all(|(state, _)| state.is_final());
    s.passed = s.done && s.failed == 0;
    s
}

/// Checks a run's name and metadata (the tasks are checked as any submit).
pub fn validate(name: &str, metadata: &BTreeMap<String, String>) -> Result<(), String> {
    if name.is_empty() || name.len() > 256 {
        return Err("the run name must have 1 to 256 bytes".into());
    }
    if metadata.len() > MAX_METADATA {
        return Err(format!(
            "{} metadata entries; at most {MAX_METADATA}",
            metadata.len()
        ));
    }
    if let Some((k, _)) = metadata
        .iter()
        .find(|(k, v)| k.is_empty() || k.len() > MAX_METADATA_LEN || v.len() > MAX_METADATA_LEN)
    {
        return Err(format!(
            "metadata {k:?}: keys need 1 to {MAX_METADATA_LEN} bytes, values at most {MAX_METADATA_LEN}"
        ));
    }
    Ok(())
}
