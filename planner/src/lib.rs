//! Pure decision logic: functions over a snapshot of the cluster that return actions. No I/O,
//! no clock, no async runtime — Cargo enforces it: this crate depends only on the ledger's types
//! and pure libraries. The node's control and scaling loops feed these functions and carry out
//! what they return. See README.md beside this file for the problem statement and invariants.
//!
//! Vocabulary: a *view* is what a placement sees of the cluster (borrowed from a ledger
//! snapshot); a *plan* is the assignments it proposes, which the ledger re-checks on apply.

mod error;

pub mod autoscaler;
pub mod catalogue;
pub mod eta;
pub mod insights;
pub mod optimizer;
pub mod predictor;
pub mod quarantine;
pub mod replay;
pub mod replay_eta;
pub mod replay_scaling;
pub mod scheduler;
pub mod split;
pub mod view;

pub use error::Error;

pub use scheduler::{
    ClusterView, Options, PendingView, Plan, Policy, WorkerView, could_ever_fit, occupy_busy_gpus,
    pending_of, place, schedule, schedule_from, shortest_first, why_pending, workers_of,
};
