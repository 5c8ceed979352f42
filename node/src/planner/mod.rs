//! Pure decision logic: functions over a snapshot of the cluster that return actions. No I/O,
//! no clock, no tokio. The control loop (`crate::control`) feeds them and carries out what they
//! return. See README.md beside this file for the problem statement and invariants.

pub mod autoscaler;
pub mod catalogue;
pub mod insights;
pub mod optimizer;
pub mod predictor;
pub mod quarantine;
pub mod replay;
pub mod replay_scaling;
pub mod scheduler;

pub use scheduler::{
    ClusterView, Options, PendingView, Plan, Policy, WorkerView, could_ever_fit, occupy_busy_gpus,
    pending_of, place, schedule, schedule_from, shortest_first, why_pending, workers_of,
};
