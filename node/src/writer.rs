//! Writing commands to the ledger through Raft: direct writes for the API and the control loop,
//! and a group-commit [`Batcher`] for the stream of task reports from the agent.

use std::time::Duration;

use libp2p::PeerId;
use testmesh_consensus::raft::Raft;
use testmesh_consensus::{Applied, Command, NodeId, Rejected};

use crate::mesh::MeshClient;
use crate::mesh::rpc::{Request, Response, WriteFailure};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// Most commands folded into one log entry by the batcher.
const MAX_BATCH: usize = 2048;

#[derive(Debug, Clone, Error)]
pub enum WriteError {
    #[error("this node is not the leader{}; retry against the leader", .0.map(|l| format!(" (leader is {l})")).unwrap_or_default())]
    NotLeader(Option<testmesh_consensus::NodeId>),
    #[error("the ledger is unavailable: {0}")]
    Unavailable(String),
}

/// A cloneable handle for committing commands: locally on the leader, forwarded to the leader
/// over the mesh elsewhere.
#[derive(Clone)]
pub struct Writer {
    raft: Raft,
    me: NodeId,
    mesh: Option<MeshClient>,
    /// The group-commit queue of this node's own commits (see [`group_commit`]).
    group: mpsc::Sender<(Command, Indexed)>,
    /// This node's replica, to tell which members may hold a Raft vote.
    ledger: Option<testmesh_consensus::store::LedgerReader>,
}

type Committed = Result<(Result<Applied, Rejected>, u64), WriteError>;
type Indexed = oneshot::Sender<Committed>;

const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a write waits to be committed.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

impl From<WriteFailure> for WriteError {
    fn from(f: WriteFailure) -> Self {
        match f {
            WriteFailure::NotLeader(l) => WriteError::NotLeader(l),
            WriteFailure::Unavailable(m) => WriteError::Unavailable(m),
        }
    }
}

impl Writer {
    /// Needs a tokio runtime: it starts the group-commit task.
    pub fn new(raft: Raft, me: NodeId, mesh: Option<MeshClient>) -> Self {
        let (group, rx) = mpsc::channel(8192);
        tokio::spawn(group_commit(raft.clone(), rx));
        Writer {
            raft,
            me,
            mesh,
            group,
            ledger: None,
        }
    }

    pub fn with_ledger(mut self, ledger: testmesh_consensus::store::LedgerReader) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// Whether `node` may become a Raft voter: only once it has registered as a worker, and
    /// never a worker an autoscaler launched — those come and go with demand (two removed at
    /// once must not cost the majority).
    pub fn may_vote(&self, node: NodeId) -> bool {
        self.ledger.as_ref().is_none_or(|l| {
            l.read().worker(node).is_some_and(|w| {
                !w.labels
                    .contains_key(testmesh_consensus::scaling::INTENT_LABEL)
            })
        })
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The mesh peer of a cluster member, from the membership.
    pub fn peer_of(&self, node: NodeId) -> Option<PeerId> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let member = m.membership().get_node(&node)?.addr.clone();
        match &self.mesh {
            Some(mesh) => mesh.resolve(&member),
            None => crate::mesh::parse_member_addr(&member).map(|(p, _)| p),
        }
    }

    fn leader_peer(&self) -> Result<PeerId, WriteError> {
        let leader = self.raft.metrics().borrow().current_leader;
        match leader {
            Some(l) => self.peer_of(l).ok_or(WriteError::NotLeader(Some(l))),
            None => Err(WriteError::Unavailable(
                "no leader is known yet; the cluster may be electing one, retry shortly".into(),
            )),
        }
    }

    /// Commits `cmd` (forwarding it to the leader if this node is not) and returns the
    /// ledger's verdict on it. When leadership moves under it (the entry was not appended),
    /// it tries again with the new leader, a few times.
    pub async fn write(&self, cmd: Command) -> Result<Result<Applied, Rejected>, WriteError> {
        let mut tries = 0;
        loop {
            match self.write_once(cmd.clone()).await {
                Err(WriteError::NotLeader(_)) if tries < 3 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200 * tries)).await;
                }
                r => return r,
            }
        }
    }

    async fn write_once(&self, cmd: Command) -> Result<Result<Applied, Rejected>, WriteError> {
        let leader = self.raft.metrics().borrow().current_leader;
        let Some(mesh) = self
            .mesh
            .as_ref()
            .filter(|_| leader.is_some() && leader != Some(self.me))
        else {
            // The leader (or nobody known): commit here; a stale guess fails with NotLeader.
            return self.write_here(cmd).await;
        };
        let peer = self.leader_peer()?;
        match mesh
            .request(peer, Request::Write(cmd), FORWARD_TIMEOUT)
            .await
        {
            Ok(Response::Write(Ok((r, index)))) => {
                // Read your writes: answer once this replica has applied the entry too.
                let _ = self
                    .raft
                    .wait(Some(FORWARD_TIMEOUT))
                    .applied_index_at_least(Some(index), "forwarded write applied here")
                    .await;
                Ok(r)
            }
            Ok(Response::Write(Err(f))) => Err(f.into()),
            Ok(other) => Err(WriteError::Unavailable(format!(
                "unexpected answer {other:?}"
            ))),
            Err(e) => Err(WriteError::Unavailable(format!(
                "cannot reach the leader: {e}"
            ))),
        }
    }

    /// On the leader: the log index a linearizable read must see (after a quorum round trip).
    pub async fn read_index_here(&self) -> Result<u64, WriteError> {
        match self.raft.ensure_linearizable().await {
            Ok(id) => Ok(id.map_or(0, |l| l.index)),
            Err(openraft::error::RaftError::APIError(
                openraft::error::CheckIsLeaderError::ForwardToLeader(f),
            )) => Err(WriteError::NotLeader(f.leader_id)),
            Err(e) => Err(WriteError::Unavailable(e.to_string())),
        }
    }

    /// Waits until this replica reflects everything committed before the call (a linearizable
    /// read point), asking the leader over the mesh when this node is not it.
    pub async fn linearize(&self) -> Result<(), WriteError> {
        let leader = self.raft.metrics().borrow().current_leader;
        let index = match (&self.mesh, leader) {
            (Some(mesh), Some(l)) if l != self.me => {
                let peer = self.leader_peer()?;
                match mesh
                    .request(peer, Request::ReadIndex, FORWARD_TIMEOUT)
                    .await
                {
                    Ok(Response::ReadIndex(r)) => r?,
                    Ok(other) => {
                        return Err(WriteError::Unavailable(format!(
                            "unexpected answer {other:?}"
                        )));
                    }
                    Err(e) => {
                        return Err(WriteError::Unavailable(format!(
                            "cannot reach the leader: {e}"
                        )));
                    }
                }
            }
            _ => self.read_index_here().await?,
        };
        self.raft
            .wait(Some(FORWARD_TIMEOUT))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|e| WriteError::Unavailable(format!("this replica is behind: {e}")))
    }

    /// Asks the leader to add `node` as a learner.
    pub async fn forward_join(&self, node: NodeId, addr: String) -> Result<(), WriteError> {
        self.forward_membership(Request::Join { node, addr }).await
    }

    /// Asks the leader to remove `node` from the membership.
    pub async fn forward_leave(&self, node: NodeId) -> Result<(), WriteError> {
        self.forward_membership(Request::Leave { node }).await
    }

    /// Sends a membership request (join or leave) to the leader and returns its verdict.
    async fn forward_membership(&self, req: Request) -> Result<(), WriteError> {
        let mesh = self
            .mesh
            .as_ref()
            .ok_or(WriteError::Unavailable("no mesh".into()))?;
        let leader = self.leader_peer()?;
        match mesh.request(leader, req, FORWARD_TIMEOUT).await {
            Ok(Response::Join(r) | Response::Leave(r)) => r.map_err(WriteError::from),
            Ok(other) => Err(WriteError::Unavailable(format!(
                "unexpected answer {other:?}"
            ))),
            Err(e) => Err(WriteError::Unavailable(e)),
        }
    }

    /// Commits `cmd` on this node only; fails with `NotLeader` elsewhere.
    pub async fn write_here(&self, cmd: Command) -> Result<Result<Applied, Rejected>, WriteError> {
        self.write_indexed(cmd).await.map(|(r, _)| r)
    }

    /// Like [`Writer::write_here`], also returning the log index the command was committed at.
    /// Commands that arrive while an earlier one is being committed go together in one log
    /// entry (group commit): concurrent writers share one fsync and one replication round.
    pub async fn write_indexed(&self, cmd: Command) -> Committed {
        if matches!(cmd, Command::Batch(_)) {
            return commit(&self.raft, cmd).await; // already a group; batches do not nest
        }
        let (reply, rx) = oneshot::channel();
        let stopped = || WriteError::Unavailable("the node is shutting down".into());
        self.group.send((cmd, reply)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// Commits one entry on this node; fails with `NotLeader` elsewhere.
async fn commit(raft: &Raft, cmd: Command) -> Committed {
    // A leader cut off from the majority cannot commit; do not wait for ever. (The entry
    // may still commit if the partition heals: submits carry a request id, so a retry of
    // the same request is idempotent.)
    let write = tokio::time::timeout(COMMIT_TIMEOUT, raft.client_write(cmd));
    let Ok(result) = write.await else {
        return Err(WriteError::Unavailable(format!(
            "not committed within {COMMIT_TIMEOUT:?}: this node may be cut off from the majority of the cluster; retry"
        )));
    };
    match result {
        Ok(resp) => Ok((resp.data, resp.log_id.index)),
        Err(openraft::error::RaftError::APIError(
            openraft::error::ClientWriteError::ForwardToLeader(f),
        )) => Err(WriteError::NotLeader(f.leader_id)),
        Err(e) => Err(WriteError::Unavailable(e.to_string())),
    }
}

/// Most tasks or assignments in one group (one submit may hold this many on its own).
const MAX_GROUP_WEIGHT: usize = testmesh_consensus::command::MAX_SUBMIT_BATCH;

fn weight_of(cmd: &Command) -> usize {
    match cmd {
        Command::Submit { tasks, .. } => tasks.len().max(1),
        Command::Assign { assignments, .. } => assignments.len().max(1),
        _ => 1,
    }
}

/// The group-commit loop: one entry in flight at a time; whatever queued up meanwhile becomes
/// the next entry (a `Command::Batch` when there is more than one). openraft 0.9 appends and
/// fsyncs every client write on its own, so this is where concurrent writes share the cost.
async fn group_commit(raft: Raft, mut rx: mpsc::Receiver<(Command, Indexed)>) {
    let mut carry = None;
    loop {
        let first = match carry.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        // Bounded by weight too, so that a group of big submits stays about the size of the
        // biggest single entry the ledger accepts.
        let mut weight = weight_of(&first.0);
        let mut items = vec![first];
        while items.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) if weight + weight_of(&item.0) > MAX_GROUP_WEIGHT => {
                    carry = Some(item);
                    break;
                }
                Ok(item) => {
                    weight += weight_of(&item.0);
                    items.push(item);
                }
                Err(_) => break,
            }
        }
        if items.len() == 1 {
            let (cmd, reply) = items.pop().expect("one item");
            let _ = reply.send(commit(&raft, cmd).await);
            continue;
        }
        let (cmds, replies): (Vec<Command>, Vec<Indexed>) = items.into_iter().unzip();
        match commit(&raft, Command::Batch(cmds)).await {
            Ok((Ok(Applied::Batch(results)), index)) => {
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok((r, index)));
                }
            }
            Ok(other) => {
                let e = WriteError::Unavailable(format!("unexpected batch result {other:?}"));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

type Reply = oneshot::Sender<Result<Result<Applied, Rejected>, WriteError>>;

/// Folds concurrent commands into one `Command::Batch` log entry: while one write is in flight,
/// the next ones queue up and go together (group commit), so a burst of reports costs one fsync.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<(Command, Option<Reply>)>,
}

impl Batcher {
    pub fn spawn(writer: Writer) -> Self {
        let (tx, rx) = mpsc::channel(8192);
        tokio::spawn(run(writer, rx));
        Batcher { tx }
    }

    /// Queues a command and does not wait for it.
    pub async fn send(&self, cmd: Command) {
        let _ = self.tx.send((cmd, None)).await;
    }

    /// Queues a command and waits for its verdict.
    pub async fn write(&self, cmd: Command) -> Result<Result<Applied, Rejected>, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((cmd, Some(reply)))
            .await
            .map_err(|_| WriteError::Unavailable("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| WriteError::Unavailable("the node is shutting down".into()))?
    }
}

async fn run(writer: Writer, mut rx: mpsc::Receiver<(Command, Option<Reply>)>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let (cmds, replies): (Vec<Command>, Vec<Option<Reply>>) = batch.into_iter().unzip();
        let mut delay = Duration::from_millis(50);
        let result = loop {
            match writer.write(Command::Batch(cmds.clone())).await {
                Err(e) if replies.iter().all(Option::is_none) => {
                    // Reports (nobody waiting on them) must never be dropped: an election or a
                    // partition only delays them. Re-sending is safe: the ledger refuses a
                    // report it has already applied.
                    tracing::debug!("reports not committed yet ({e}); retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                r => break r,
            }
        };
        match result {
            Ok(Ok(Applied::Batch(results))) => {
                for (reply, r) in replies.into_iter().zip(results) {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(r));
                    }
                }
            }
            Ok(other) => {
                tracing::error!("unexpected batch result {other:?}");
            }
            Err(e) => {
                tracing::warn!("could not commit {} command(s): {e}", replies.len());
                for reply in replies.into_iter().flatten() {
                    let _ = reply.send(Err(WriteError::Unavailable(e.to_string())));
                }
            }
        }
    }
}
