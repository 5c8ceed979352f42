//! The replicated ledger of testmesh.
//!
//! Vocabulary: a *worker* is a node that runs tasks; a *task* is a command with resource
//! *requirements*; a *reservation* is the share of one worker's capacity held by one attempt of
//! one task. Every change is a [`Command`] that goes through the Raft log and is applied by
//! [`Ledger::apply`], which is deterministic (no clock, no randomness, no I/O) and re-checks every
//! invariant whatever the caller sends.
//!
//! This crate knows nothing of libp2p or HTTP: [`raft`] exposes a transport-agnostic network
//! trait that the node implements.

pub mod codec;
pub mod command;
mod error;
pub mod history;
pub mod ledger;
pub mod limits;
pub mod model;
pub mod raft;
pub mod resources;
pub mod retention;
pub mod runs;
pub mod scaling;
pub mod security;
pub mod store;
pub mod suite;
pub mod task;

pub use command::{Applied, Assignment, Command, Rejected};
pub use error::Error;
pub use ledger::Ledger;
pub use model::{Bytes, MilliCpu, NodeId, TaskId, UnixMillis};
