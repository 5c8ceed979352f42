//! The core of a node: the services the composition root builds once and hands to every edge.
//!
//! Edges — the HTTP API and the dashboard's source, the cluster (Raft over the mesh), the
//! agent, the control loop, the scaling loop and the CLI — depend on the core and never on each
//! other. The core owns:
//! - the ledger: this node's replica ([`LedgerReader`]) and the [`Writer`] with its one
//!   group-commit batcher;
//! - [`Leadership`], the only reader of Raft's metrics;
//! - [`Stats`], the handle of the statistics store's owner task;
//! - [`Models`], the predictors with their one retrain rule;
//! - [`Logs`], task output wherever it lives;
//! - submissions ([`submit`]): request types and validation into ledger specs;
//! - the scaler handle ([`scaler`]);
//! - the [`Clock`](clock::Clock) every loop reads time from.

pub mod archive;
pub mod artifacts;
pub mod clock;
pub mod code;
pub mod disk;
pub mod dto;
pub mod eta;
pub mod insights;
pub mod leadership;
pub mod logs;
pub mod membership;
pub mod memory;
pub mod models;
pub mod reports;
pub mod scaler;
pub mod stats;
pub mod submit;
#[cfg(test)]
pub mod testing;
pub mod tokens;
pub mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use testmesh_consensus::raft::Raft;
use testmesh_consensus::store::LedgerReader;
use testmesh_consensus::task::TaskSpec;
use testmesh_consensus::{NodeId, UnixMillis};
use testmesh_planner::catalogue::InstanceType;
use tokio::sync::watch;

pub use clock::{Clock, SharedClock};
pub use leadership::Leadership;
pub use logs::Logs;
pub use models::Models;
pub use stats::Stats;
pub use writer::Writer;

use crate::mesh::MeshClient;

/// Every shared service of a node; cheap to clone.
#[derive(Clone)]
pub struct Core {
    pub node: NodeId,
    pub clock: SharedClock,
    pub ledger: LedgerReader,
    pub writer: Writer,
    pub leadership: Leadership,
    pub stats: Stats,
    pub models: Models,
    pub logs: Logs,
    /// Shipped working trees (see [`code`]).
    pub code: code::CodeStore,
    pub scaler: scaler::SharedScaler,
    pub data_dir: PathBuf,
    /// Instance types the recommendations and the autoscaler choose from.
    pub catalogue: Arc<[InstanceType]>,
    /// The data dir's footprint and free space.
    pub disk: disk::Disk,
    /// Connected peers that belong to another cluster, with its id (see
    /// `cluster::watch_foreign`).
    pub foreign_clusters: Arc<std::sync::Mutex<std::collections::BTreeMap<NodeId, String>>>,
    /// Scheduled reports and their deliveries (see `crate::reports`).
    pub reports: reports::Reports,
}

/// What the composition root brings to build a [`Core`].
pub struct Parts {
    pub node: NodeId,
    pub clock: SharedClock,
    pub raft: Raft,
    pub mesh: Option<MeshClient>,
    pub ledger: LedgerReader,
    pub data_dir: PathBuf,
    pub stats: Stats,
    pub scaler: scaler::SharedScaler,
    pub catalogue: Vec<InstanceType>,
}

impl Core {
    /// Builds the core; the caller runs the returned batcher (every write goes through it).
    pub fn assemble(p: Parts) -> (Core, writer::Batcher) {
        let leadership = Leadership::new(p.node, &p.raft);
        let (writer, batcher) = Writer::new(p.raft, leadership.clone(), p.mesh.clone());
        let writer = writer.with_ledger(p.ledger.clone());
        let logs = Logs::new(
            p.node,
            p.data_dir.clone(),
            p.ledger.clone(),
            writer.clone(),
            p.mesh.clone(),
        );
        let code = code::CodeStore::new(&p.data_dir, writer.clone(), p.mesh, p.clock.clone())
            .with_peers(p.ledger.clone(), p.node);
        let core = Core {
            code,
            node: p.node,
            clock: p.clock,
            models: Models::new(p.ledger.clone()),
            ledger: p.ledger,
            writer,
            leadership,
            stats: p.stats,
            logs,
            scaler: p.scaler,
            data_dir: p.data_dir,
            catalogue: p.catalogue.into(),
            disk: Default::default(),
            foreign_clusters: Default::default(),
            reports: Default::default(),
        };
        (core, batcher)
    }

    /// Wall-clock time, for what goes into the ledger.
    pub fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    /// The insights of the last `window_ms` (see [`insights::compute`]).
    pub async fn insights(
        &self,
        window_ms: u64,
    ) -> Result<
        (
            testmesh_planner::insights::Insights,
            Option<Arc<models::ModelSet>>,
            usize,
        ),
        insights::InsightsError,
    > {
        insights::compute(self, window_ms).await
    }

    /// Requests → specs the ledger will take (see [`submit::prepare`]).
    pub async fn prepare(
        &self,
        tasks: &[submit::TaskRequest],
        allow_unschedulable: bool,
    ) -> Result<Vec<TaskSpec>, submit::SubmitError> {
        self.disk.check(&self.data_dir)?;
        let mut specs =
            submit::prepare(&self.ledger, &self.models, tasks, allow_unschedulable).await?;
        // Shipped code: this node must hold the archive; workers fetch it from here.
        for (i, s) in specs.iter_mut().enumerate() {
            if let Some(c) = s.suite.as_mut().and_then(|x| x.code.as_mut()) {
                let Some(size) = self.code.has(&c.hash) else {
                    return Err(submit::SubmitError::Invalid(format!(
                        "task #{i}: code {} is not on this node: upload it first (PUT /api/v1/code/{}); `testmesh run --workdir` does it for you",
                        c.hash, c.hash
                    )));
                };
                c.size = size;
                c.origin = self.node;
            }
        }
        Ok(specs)
    }
}

/// After a training that took T, the leader's loop trains again no sooner than this many T.
const TRAINING_IDLE_FACTOR: u32 = 19;

/// How often the leader checks whether its models are due for retraining.
const MODELS_EVERY: Duration = Duration::from_secs(1);

/// On the leader: keeps the models fresh, so that the control and scaling loops (which only
/// read [`Models::current`]) see predictions as history grows.
pub async fn keep_models_fresh(core: Core, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(MODELS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut not_before = core.clock.instant();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        if !core.leadership.is_leader() || core.clock.instant() < not_before {
            continue;
        }
        // Nothing to learn from yet: no need to train an empty model every second.
        if core.models.current().is_none() && core.ledger.read().history_total() == 0 {
            continue;
        }
        let generation = core.models.current().map(|m| m.generation);
        let started = core.clock.instant();
        if let Err(e) = core.models.refresh().await {
            tracing::warn!("{e}");
        }
        if core.models.current().map(|m| m.generation) != generation {
            // Training reads the whole history: keep it to a twentieth of one core however
            // long the history and however fast tasks finish.
            let took = core.clock.instant().duration_since(started);
            not_before = core.clock.instant() + took * TRAINING_IDLE_FACTOR;
        }
    }
}
