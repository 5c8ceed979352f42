//! testmesh: one binary per host that turns GPU/CPU hosts into one pool for test and benchmark
//! jobs. This library holds every part of the node (`runtime` wires them) and the CLI.

pub mod agent;
pub mod api;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod control;
pub mod dashboard_analysis;
pub mod dashboard_source;
pub mod error;
pub mod mesh;
pub mod monitor;
pub mod results;
pub mod runfile;
pub mod runtime;
pub mod scaling;
pub mod stats;
pub mod units;
pub mod writer;

pub use error::Error;
