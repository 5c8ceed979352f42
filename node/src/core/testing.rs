//! A one-node core for in-process unit tests of the edges: a real Raft over a real redb ledger
//! in a temporary directory (a cluster of one needs no network), the real batcher and
//! statistics store, and a [`ManualClock`] the test moves by hand.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use testmesh_consensus::command::WorkerRegistration;
use testmesh_consensus::ledger::Ledger;
use testmesh_consensus::model::{Capacity, GpuInfo, Hardware};
use testmesh_consensus::raft::{self, NoPeers, Raft};
use testmesh_consensus::{Applied, Bytes, Command, MilliCpu, NodeId, UnixMillis};
use tokio::sync::watch;

use super::clock::ManualClock;
use super::{Core, Parts, Stats};
use crate::stats::StatsStore;

/// Longest a test waits for the ledger to reach a state.
const PATIENCE: Duration = Duration::from_secs(10);

pub struct TestNode {
    pub core: Core,
    pub clock: ManualClock,
    pub raft: Raft,
    pub dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
    loops: tokio::task::JoinSet<()>,
}

impl TestNode {
    /// A node that leads its own one-node cluster.
    pub async fn start() -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = NodeId(1);
        let clock = ManualClock::new(UnixMillis(1_000_000));
        let (stats, stats_task) = Stats::new(
            StatsStore::new(Duration::from_secs(1), Duration::from_secs(60)),
            clock.shared(),
        );
        let (log, sm, ledger) =
            testmesh_consensus::store::open(&dir.path().join("ledger.redb")).expect("ledger");
        let config = raft::config("test", 10_000).expect("raft config");
        let raft = Raft::new(node, Arc::new(config), NoPeers, log, sm)
            .await
            .expect("raft");
        raft.initialize(BTreeMap::from([(node, BasicNode::default())]))
            .await
            .expect("initialise");
        let (core, batcher) = Core::assemble(Parts {
            node,
            clock: clock.shared(),
            raft: raft.clone(),
            mesh: None,
            ledger,
            data_dir: dir.path().to_path_buf(),
            stats,
            scaler: super::scaler::shared(Vec::new()),
            catalogue: testmesh_planner::catalogue::default_catalogue(),
        });
        let (stop, shutdown) = watch::channel(false);
        let mut loops = tokio::task::JoinSet::new();
        loops.spawn(batcher.run(shutdown.clone()));
        loops.spawn(stats_task.run(shutdown));
        let mut leadership = core.leadership.clone();
        tokio::time::timeout(PATIENCE, async {
            while !leadership.is_leader() {
                leadership.changed().await.expect("raft running");
            }
        })
        .await
        .expect("a one-node cluster elects itself");
        TestNode {
            core,
            clock,
            raft,
            dir,
            stop,
            loops,
        }
    }

    /// Registers worker `id` with `cpus` cores, 8 GiB and `gpus` GPUs of 16 GiB.
    pub async fn register(&self, id: NodeId, cpus: u64, gpus: u32) {
        let worker = WorkerRegistration {
            id,
            hardware: Hardware {
                hostname: format!("host-{id}"),
                ..Default::default()
            },
            capacity: Capacity {
                cpu: MilliCpu(cpus * 1000),
                memory: Bytes(8 << 30),
                disk: Bytes(100 << 30),
                gpus: (0..gpus)
                    .map(|index| GpuInfo {
                        index,
                        uuid: format!("GPU-{id}-{index}"),
                        model: "Test GPU".into(),
                        memory: Bytes(16 << 30),
                    })
                    .collect(),
            },
            labels: BTreeMap::new(),
            boot_id: id.0,
            version: "test".into(),
        };
        let r = self
            .write(Command::RegisterWorker {
                worker,
                at: self.core.now(),
            })
            .await;
        assert!(
            matches!(r, Applied::WorkerRegistered { .. }),
            "registered: {r:?}"
        );
    }

    /// Commits `cmd` and returns what the ledger applied (panics when refused).
    pub async fn write(&self, cmd: Command) -> Applied {
        self.core
            .writer
            .write(cmd)
            .await
            .expect("committed")
            .expect("accepted")
    }

    /// Waits until `f` holds on the replica (re-checked on every applied change).
    pub async fn wait_for(&self, what: &str, f: impl Fn(&Ledger) -> bool) {
        let mut changes = self.core.ledger.watch();
        let reached = tokio::time::timeout(PATIENCE, async {
            loop {
                changes.mark_unchanged();
                if f(&self.core.ledger.read()) {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(reached.is_ok(), "timed out waiting for {what}");
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.loops.join_next().await.is_some() {}
        let _ = self.raft.shutdown().await;
    }
}
