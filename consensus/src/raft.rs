//! openraft type configuration and construction. The network is transport-agnostic: the node
//! provides a [`RaftNetworkFactory`] (a single node needs none, see [`NoPeers`]).

use std::io::Cursor;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Config, SnapshotPolicy};

use crate::command::{Applied, Command, Rejected};
use crate::model::NodeId;

openraft::declare_raft_types!(
    /// testmesh's Raft types: log entries carry [`Command`]s, responses are apply results.
    pub TypeConfig:
        D = Command,
        R = Result<Applied, Rejected>,
        NodeId = NodeId,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;

/// Log entries kept after a snapshot for followers that lag a little (beyond them a follower
/// gets the snapshot).
pub const KEEP_LOGS_AFTER_SNAPSHOT: u64 = 1000;

/// Raft timing and compaction for testmesh, validated.
pub fn config(cluster_name: &str, snapshot_every: u64) -> Result<Config, String> {
    config_keeping(cluster_name, snapshot_every, KEEP_LOGS_AFTER_SNAPSHOT)
}

/// [`config`] keeping `keep_logs` entries after each snapshot.
pub fn config_keeping(
    cluster_name: &str,
    snapshot_every: u64,
    keep_logs: u64,
) -> Result<Config, String> {
    Config {
        cluster_name: cluster_name.to_string(),
        // Also each append's deadline in openraft 0.9, so not shorter on a busy machine.
        heartbeat_interval: 100,
        // The longest timeout is also the leader lease: a follower that loses the leader's
        // connection campaigns right after it (node::cluster::failover); one that loses the
        // leader without that (a partition) after the lease and one more timeout, 500-600 ms.
        election_timeout_min: 200,
        election_timeout_max: 300,
        install_snapshot_timeout: Duration::from_secs(10).as_millis() as u64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: keep_logs,
        purge_batch_size: 1000,
        // With entries of at most MAX_ENTRY_BYTES, one append fits a mesh frame.
        max_payload_entries: crate::limits::MAX_PAYLOAD_ENTRIES,
        ..Default::default()
    }
    .validate()
    .map_err(|e| e.to_string())
}

/// The network of a cluster of one: there is nobody to talk to.
#[derive(Debug, Clone, Default)]
pub struct NoPeers;

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeers;
    async fn new_client(&mut self, _target: NodeId, _node: &BasicNode) -> NoPeers {
        NoPeers
    }
}

fn unreachable<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
        "this node has no mesh transport",
    )))
}

impl RaftNetwork<TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(unreachable())
    }
}
