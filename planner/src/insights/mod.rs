//! Workload insights: what the cluster has been running (patterns), how much of what it
//! reserved it used (efficiency), and which machine type would suit the queued work best
//! (recommendations). Pure functions over [`Observations`]; the node builds them from the
//! replica, the gossip statistics and the predictor.

pub mod efficiency;
pub mod patterns;
pub mod recommend;

use std::collections::BTreeMap;

use serde::Serialize;
use testmesh_consensus::history::HistoryRecord;
use testmesh_consensus::model::{Capacity, WorkerState};
use testmesh_consensus::resources::{Allocated, Requirements};
use testmesh_consensus::{Bytes, NodeId, UnixMillis};

use super::catalogue::InstanceType;

/// Everything the insights look at, read at one moment.
pub struct Observations<'a> {
    pub now: UnixMillis,
    /// How far back patterns and efficiency look.
    pub window_ms: u64,
    /// Attempts that finished inside the window.
    pub history: Vec<&'a HistoryRecord>,
    /// Tasks submitted inside the window: when, and what they asked for.
    pub submitted: Vec<(UnixMillis, &'a Requirements)>,
    /// The pending queue.
    pub queued: Vec<Demand>,
    pub workers: Vec<WorkerUse>,
}

/// A queued task as the recommendations see it.
#[derive(Debug, Clone)]
pub struct Demand {
    pub name: String,
    pub requirements: Requirements,
    /// Predicted run time, when the predictor has one.
    pub predicted_secs: Option<f64>,
}

/// A worker: what it offers, what is reserved on it and, from its latest gossiped sample,
/// what it really uses.
#[derive(Debug, Clone)]
pub struct WorkerUse {
    pub id: NodeId,
    pub hostname: String,
    pub state: WorkerState,
    pub capacity: Capacity,
    pub allocated: Allocated,
    pub live: Option<LiveUse>,
}

#[derive(Debug, Clone, Default)]
pub struct LiveUse {
    pub cpu_cores: f64,
    pub memory: Bytes,
    /// GPU index → utilisation in percent.
    pub gpu_utilisation: BTreeMap<u32, u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Insights {
    pub window_secs: u64,
    pub patterns: patterns::Patterns,
    pub efficiency: efficiency::Efficiency,
    pub recommendations: recommend::Recommendations,
}

/// All three analyses.
pub fn analyse(s: &Observations, catalogue: &[InstanceType]) -> Insights {
    Insights {
        window_secs: s.window_ms / 1000,
        patterns: patterns::patterns(s),
        efficiency: efficiency::efficiency(s),
        recommendations: recommend::recommend(s, catalogue),
    }
}

/// The `q` quantile (0..=1) of sorted values, nearest rank; 0 for none.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Values sorted ascending (NaN-free input assumed: every caller feeds measured figures).
pub(crate) fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Rounds for display and JSON: 3 decimals are plenty for ratios, seconds and dollars.
pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// 6 decimals, for hour figures (a second is 0.000278 h).
pub(crate) fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[cfg(test)]
pub(crate) mod test_support;
