//! testmesh: one binary per host that turns GPU/CPU hosts into one pool for test and benchmark
//! jobs. This library holds every part of the node and the CLI.
//!
//! Layout (docs/architecture.md): `runtime` is the composition root; it builds the [`core`]
//! (ledger reader and writer, leadership, statistics, models, logs, submissions, scaler handle,
//! clock) and hands it to the edges — `api`, `dashboard`, `cluster`, `agent`, `control`,
//! `scaling` — which depend on the core and never on each other. `mesh`, `monitor`, `stats`,
//! `config`, `units` and `results` are the layers below; `cli` is the client and the front door.

pub mod agent;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod core;
pub mod dashboard;
pub mod enrol;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod mesh;
pub mod monitor;
pub mod pack;
pub mod reports;
pub mod results;
pub mod runfile;
pub mod runtime;
pub mod scaling;
pub mod stats;
pub mod tls;
pub mod units;

pub use error::Error;
