//! openraft's network over the mesh: every Raft RPC is one request-response exchange.

use std::time::Duration;

use libp2p::PeerId;
use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use testmesh_consensus::NodeId;
use testmesh_consensus::raft::TypeConfig;

use crate::core::membership::Liveness;
use crate::mesh::MeshClient;
use crate::mesh::rpc::{Request, Response};

#[derive(Clone)]
pub struct MeshNetwork {
    pub mesh: MeshClient,
    pub liveness: Liveness,
}

pub struct PeerConn {
    mesh: MeshClient,
    peer: Option<PeerId>,
    target: NodeId,
    liveness: Liveness,
}

impl RaftNetworkFactory<TypeConfig> for MeshNetwork {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConn {
        PeerConn {
            mesh: self.mesh.clone(),
            peer: self.mesh.resolve(&node.addr),
            target,
            liveness: self.liveness.clone(),
        }
    }
}

type Err<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

fn unreachable<E: std::error::Error>(msg: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(msg)))
}

fn remote<E: std::error::Error>(msg: String) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(msg)))
}

impl PeerConn {
    async fn call<E: std::error::Error>(
        &self,
        req: Request,
        ttl: Duration,
    ) -> Result<Response, RPCError<NodeId, BasicNode, E>> {
        let peer = self
            .peer
            .ok_or_else(|| unreachable("the member has no valid peer id".into()))?;
        let r = self
            .mesh
            .request(peer, req, ttl)
            .await
            .map_err(unreachable)?;
        self.liveness.seen(self.target);
        Ok(r)
    }
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, Err> {
        match self
            .call(Request::AppendEntries(rpc), option.hard_ttl())
            .await?
        {
            Response::AppendEntries(r) => r.map_err(remote),
            other => Err(remote(format!("unexpected answer {other:?}"))),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, Err<InstallSnapshotError>> {
        match self
            .call(Request::InstallSnapshot(rpc), option.hard_ttl())
            .await?
        {
            Response::InstallSnapshot(r) => r.map_err(remote),
            other => Err(remote(format!("unexpected answer {other:?}"))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, Err> {
        match self.call(Request::Vote(rpc), option.hard_ttl()).await? {
            Response::Vote(r) => r.map_err(remote),
            other => Err(remote(format!("unexpected answer {other:?}"))),
        }
    }
}
