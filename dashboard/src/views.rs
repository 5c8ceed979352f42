//! Plain data the node hands to the dashboard: what the pages, charts and reports show, already
//! taken from the replica, the gossip statistics and the planner's analysis.

use testmesh_consensus::scaling::{CloudInstance, DecisionRecord, Micros};

/// One worker's use right now, from its latest gossiped sample.
#[derive(Debug, Clone, Default)]
pub struct WorkerUsage {
    pub id: String,
    pub cpu_cores: f64,
    pub memory_bytes: u64,
    /// GPU indexes doing work (utilisation at or above [`BUSY_GPU_PCT`]).
    pub busy_gpus: Vec<u32>,
}

/// A pending task's place in the queue and its estimated start and finish.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueEta {
    pub position: usize,
    pub start_ms: u64,
    pub finish_ms: u64,
    /// 0–1.
    pub confidence: f64,
}

/// A GPU below this utilisation counts as idle.
pub const BUSY_GPU_PCT: u32 = 5;

/// What was reserved for one attempt, and when.
#[derive(Debug, Clone, Default)]
pub struct ReservedSpan {
    pub start_ms: u64,
    /// None while it runs.
    pub end_ms: Option<u64>,
    pub cpu_cores: f64,
    /// GPUs granted (shares count as fractions).
    pub gpus: f64,
    /// The worker's node id and the task's name, for filters.
    pub worker: String,
    pub task_name: String,
}

/// The scaling ledger as the dashboard shows it.
#[derive(Debug, Clone, Default)]
pub struct ScalingView {
    pub enabled: bool,
    /// Oldest first.
    pub decisions: Vec<DecisionRecord>,
    pub instances: Vec<CloudInstance>,
    pub budget_micros_per_hour: Option<Micros>,
}

/// Which way an efficiency row is grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    TaskName,
    Worker,
}

/// Reserved against used over the analysis window, for one task name or one worker.
#[derive(Debug, Clone)]
pub struct EfficiencyRow {
    pub by: By,
    pub key: String,
    pub attempts: usize,
    pub cpu_reserved_core_hours: f64,
    pub cpu_used_core_hours: f64,
    pub memory_reserved_gib_hours: f64,
    pub memory_peak_gib_hours: f64,
    pub gpu_reserved_hours: f64,
}

/// A table ready to show: cells are text.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// The HTML id, also how tests and scripts find it.
    pub id: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(id: &str, columns: &[&str]) -> Table {
        Table {
            id: id.to_string(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

/// The planner's analysis of a window: patterns, efficiency, predictions, recommendations.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    pub window_ms: u64,
    /// Findings in words.
    pub summary: Vec<String>,
    pub efficiency: Vec<EfficiencyRow>,
    /// Right-sizing suggestions.
    pub suggestions: Table,
    /// Reserved, used and free per worker now, with allocated-but-idle GPUs.
    pub workers_now: Table,
    /// Arrival and run-time patterns.
    pub patterns: Table,
    /// The head of the queue with what the predictor expects of each task.
    pub predictions: Table,
    /// How the predictor stands (trained on what, how well).
    pub predictor: Vec<String>,
    /// Which worker types would hold the queue, cheapest first, and why.
    pub recommendation: String,
    pub instance_types: Table,
}
