//! openraft's network over the mesh: every Raft RPC is one request-response exchange.
//!
//! openraft 0.9 gives each append a heartbeat interval (100 ms) and then sends it again. A
//! large append to a follower behind a slow link takes longer than that, so every try timed
//! out while the mesh still carried it, and the copies queued up behind each other: the
//! follower never caught up. Here an append above [`DETACH_ABOVE`] bytes is sent once, by a
//! task of its own that openraft's timeout does not cancel, and the tries that follow wait for
//! that same exchange (or answer with what it matched) instead of sending it again.

use std::time::Duration;

use tokio::sync::oneshot;

use libp2p::PeerId;
use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use testmesh_consensus::NodeId;
use testmesh_consensus::raft::{LogId, TypeConfig};

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
    /// A large append still on its way (see the module's notes).
    in_flight: Option<InFlight>,
}

/// Appends whose entries come to more bytes than this are detached from openraft's deadline.
pub const DETACH_ABOVE: usize = 32 << 10;

/// How long a detached append may take: a megabyte entry over a 1 Mbit/s link, with room.
const DETACHED_TTL: Duration = Duration::from_secs(60);

type AppendResult = Result<AppendEntriesResponse<NodeId>, String>;

struct InFlight {
    vote: openraft::Vote<NodeId>,
    prev: Option<LogId>,
    last: Option<LogId>,
    result: oneshot::Receiver<AppendResult>,
}

impl RaftNetworkFactory<TypeConfig> for MeshNetwork {
    type Network = PeerConn;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConn {
        PeerConn {
            mesh: self.mesh.clone(),
            peer: self.mesh.resolve(&node.addr),
            target,
            liveness: self.liveness.clone(),
            in_flight: None,
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

/// What a finished append that covered `done` means for a try that asked for up to `want`
/// from the same point: success when it covered all of it, else the part it matched.
fn answer_for(
    r: AppendEntriesResponse<NodeId>,
    done: Option<LogId>,
    want: Option<LogId>,
) -> AppendEntriesResponse<NodeId> {
    match r {
        AppendEntriesResponse::Success if done < want => {
            AppendEntriesResponse::PartialSuccess(done)
        }
        other => other,
    }
}

fn entry_bytes(rpc: &AppendEntriesRequest<TypeConfig>) -> usize {
    rpc.entries
        .iter()
        .map(|e| match &e.payload {
            openraft::EntryPayload::Normal(c) => testmesh_consensus::limits::command_bytes(c),
            _ => 64,
        })
        .sum()
}

impl PeerConn {
    /// Sends a large append to `peer` from a task of its own and remembers it.
    fn detach(&mut self, peer: PeerId, rpc: AppendEntriesRequest<TypeConfig>) {
        let (tx, rx) = oneshot::channel();
        self.in_flight = Some(InFlight {
            vote: rpc.vote,
            prev: rpc.prev_log_id,
            last: rpc.entries.last().map(|e| e.log_id),
            result: rx,
        });
        let (mesh, liveness, target) = (self.mesh.clone(), self.liveness.clone(), self.target);
        let bytes = entry_bytes(&rpc);
        tokio::spawn(async move {
            let r = match mesh
                .request(peer, Request::AppendEntries(rpc), DETACHED_TTL)
                .await
            {
                Ok(Response::AppendEntries(r)) => {
                    liveness.seen(target);
                    r
                }
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e),
            };
            tracing::debug!("a detached append of {bytes} bytes to {target} ended: {r:?}");
            let _ = tx.send(r);
        });
    }
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, Err> {
        let want = rpc.entries.last().map(|e| e.log_id);
        // A try of entries from the same point as the append in flight waits for it.
        let reuse = want.is_some()
            && self
                .in_flight
                .as_ref()
                .is_some_and(|f| f.vote == rpc.vote && f.prev == rpc.prev_log_id);
        if !reuse {
            // A heartbeat goes on its own and leaves the append in flight be; other entries
            // mean the leader has moved on from it.
            if want.is_some() {
                self.in_flight = None;
            }
            if entry_bytes(&rpc) <= DETACH_ABOVE {
                return match self
                    .call(Request::AppendEntries(rpc), option.hard_ttl())
                    .await?
                {
                    Response::AppendEntries(r) => r.map_err(remote),
                    other => Err(remote(format!("unexpected answer {other:?}"))),
                };
            }
            let peer = self
                .peer
                .ok_or_else(|| unreachable("the member has no valid peer id".into()))?;
            self.detach(peer, rpc);
        }
        let f = self.in_flight.as_mut().expect("an append in flight");
        // openraft's timeout may drop this wait; the exchange goes on and the next try finds it.
        let r = (&mut f.result).await;
        let done = f.last;
        self.in_flight = None;
        r.map_err(|_| unreachable("the append task ended without an answer".into()))?
            .map(|r| answer_for(r, done, want))
            .map_err(unreachable)
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
