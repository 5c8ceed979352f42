//! Writing commands to the ledger through Raft, through ONE group-commit queue.
//!
//! Every write of this node — the API's, the control and scaling loops', the agent's reports —
//! goes into the [`Batcher`]'s queue. While one entry is in flight, whatever queues up meanwhile
//! becomes the next entry (a `Command::Batch` when there is more than one): concurrent writers
//! share one fsync and one replication round. On the leader the entry is committed here; on any
//! other node it is forwarded to the leader, which commits it as it is (batches do not nest).
//! Reports nobody waits on are never dropped: an election or a partition only delays them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use testmesh_consensus::limits::{MAX_ENTRY_BYTES, command_bytes};
use testmesh_consensus::raft::Raft;
use testmesh_consensus::store::LedgerReader;
use testmesh_consensus::{Applied, Command, NodeId, Rejected};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};

use super::clock::Clock;
use super::leadership::Leadership;
use crate::mesh::MeshClient;
use crate::mesh::rpc::{Request, Response, Standing, WriteFailure};

/// Most commands folded into one log entry.
const MAX_BATCH: usize = 2048;
/// Most tasks or assignments in one group (one submit may hold this many on its own).
const MAX_GROUP_WEIGHT: usize = testmesh_consensus::command::MAX_SUBMIT_BATCH;
/// Commands waiting for the batcher at most; writers wait for room beyond that.
const QUEUE: usize = 8192;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a write waits to be committed.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a write waits for a leader while the cluster forms or elects one.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// A quorum's confirmation this recent answers workers' standing checks without a new round,
/// so that many workers asking cost the leader a few rounds a second, not one each.
const QUORUM_FRESH: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Error)]
pub enum WriteError {
    #[error("{}", match .0 {
        Some(l) => format!("this node is not the leader (leader is {l}); retry against the leader"),
        None => "cluster forming: no leader is elected yet; retry in a few seconds".to_string(),
    })]
    NotLeader(Option<NodeId>),
    #[error("the ledger is unavailable: {0}")]
    Unavailable(String),
}

impl From<WriteFailure> for WriteError {
    fn from(f: WriteFailure) -> Self {
        match f {
            WriteFailure::NotLeader(l) => WriteError::NotLeader(l),
            WriteFailure::Unavailable(m) => WriteError::Unavailable(m),
        }
    }
}

impl From<WriteError> for WriteFailure {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NotLeader(l) => WriteFailure::NotLeader(l),
            WriteError::Unavailable(m) => WriteFailure::Unavailable(m),
        }
    }
}

/// The ledger's verdict on a command, and the log index it was committed at.
pub type Committed = Result<(Result<Applied, Rejected>, u64), WriteError>;
/// The ledger's verdict on a command.
pub type Verdict = Result<Result<Applied, Rejected>, WriteError>;

/// How a queued command is to be committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Here if this node leads, else forwarded to the leader.
    Anywhere,
    /// Only here (a write another node forwarded to us): forwarding it again could loop.
    HereOnly,
}

struct Item {
    cmd: Command,
    route: Route,
    /// None for reports nobody waits on: those are retried until they commit.
    reply: Option<oneshot::Sender<Committed>>,
}

/// A cloneable handle for committing commands.
#[derive(Clone)]
pub struct Writer {
    raft: Raft,
    leadership: Leadership,
    mesh: Option<MeshClient>,
    queue: mpsc::Sender<Item>,
    /// This node's replica, to tell which members may hold a Raft vote.
    ledger: Option<LedgerReader>,
    /// When a quorum last confirmed this node's leadership; held while a confirmation round
    /// runs, so that concurrent standing checks share one round.
    quorum_ok: Arc<tokio::sync::Mutex<Option<Instant>>>,
}

impl Writer {
    /// The handle and the batcher that serves it; the caller runs [`Batcher::run`].
    pub fn new(raft: Raft, leadership: Leadership, mesh: Option<MeshClient>) -> (Self, Batcher) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let writer = Writer {
            raft,
            leadership,
            mesh,
            queue,
            ledger: None,
            quorum_ok: Arc::default(),
        };
        let batcher = Batcher {
            writer: writer.clone(),
            rx,
        };
        (writer, batcher)
    }

    pub fn with_ledger(mut self, ledger: LedgerReader) -> Self {
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

    /// The Raft handle, for membership changes (the cluster edge) and linearizable reads.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    pub fn me(&self) -> NodeId {
        self.leadership.me()
    }

    /// The mesh peer of a cluster member, from the membership.
    pub fn peer_of(&self, node: NodeId) -> Option<PeerId> {
        let member = self.leadership.member_addr(node)?;
        match &self.mesh {
            Some(mesh) => mesh.resolve(&member),
            None => crate::mesh::parse_member_addr(&member).map(|(p, _)| p),
        }
    }

    fn leader_peer(&self) -> Result<PeerId, WriteError> {
        match self.leadership.leader() {
            Some(l) => self.peer_of(l).ok_or(WriteError::NotLeader(Some(l))),
            None => Err(WriteError::Unavailable(
                "no leader is known yet; the cluster may be electing one, retry shortly".into(),
            )),
        }
    }

    /// Commits `cmd` (forwarding it to the leader if this node is not) and returns the
    /// ledger's verdict on it. When there is no leader yet (a cluster forming, an election)
    /// or leadership moves under it (the entry was not appended, so trying again is safe), it
    /// waits for a leader and tries again, for at most [`LEADER_WAIT`].
    pub async fn write(&self, cmd: Command) -> Verdict {
        let clock = super::clock::SystemClock;
        let deadline = clock.instant() + LEADER_WAIT;
        let mut leadership = self.leadership.clone();
        let mut tries = 0u64;
        loop {
            match self.enqueue(cmd.clone(), Route::Anywhere).await {
                Err(WriteError::NotLeader(_)) if clock.instant() < deadline => {
                    tries += 1;
                    // Woken by the next change of leadership, or after a short back-off
                    // (the change may have come before this wait began).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let backoff = Duration::from_millis((50 * tries).min(500));
                    let _ = tokio::time::timeout(backoff, leadership.changed()).await;
                }
                r => return r.map(|(v, _)| v),
            }
        }
    }

    /// Queues a report nobody waits on; it is retried until it commits (re-sending is safe:
    /// the ledger refuses a report it has already applied).
    pub async fn send(&self, cmd: Command) {
        let item = Item {
            cmd,
            route: Route::Anywhere,
            reply: None,
        };
        let _ = self.queue.send(item).await;
    }

    /// Commits `cmd` on this node only (a write forwarded by another node); fails with
    /// `NotLeader` elsewhere. Returns the log index it was committed at too.
    pub async fn write_here(&self, cmd: Command) -> Committed {
        self.enqueue(cmd, Route::HereOnly).await
    }

    async fn enqueue(&self, cmd: Command, route: Route) -> Committed {
        let (reply, rx) = oneshot::channel();
        let stopped = || WriteError::Unavailable("the node is shutting down".into());
        let item = Item {
            cmd,
            route,
            reply: Some(reply),
        };
        self.queue.send(item).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
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
        let leader = self.leadership.leader();
        let index = match (&self.mesh, leader) {
            (Some(mesh), Some(l)) if l != self.me() => {
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
        self.applied(index, "linearizable read").await
    }

    /// Waits until this replica has applied `index`.
    async fn applied(&self, index: u64, what: &'static str) -> Result<(), WriteError> {
        self.raft
            .wait(Some(FORWARD_TIMEOUT))
            .applied_index_at_least(Some(index), what)
            .await
            .map(|_| ())
            .map_err(|e| WriteError::Unavailable(format!("this replica is behind: {e}")))
    }

    /// On the leader: whether `worker` is in good standing (a quorum follows this leader, and
    /// the ledger has not marked the worker lost).
    pub async fn standing_of(&self, worker: NodeId) -> Standing {
        let clock = super::clock::SystemClock;
        {
            let mut ok = self.quorum_ok.lock().await;
            if !ok.is_some_and(|t| clock.instant().duration_since(t) < QUORUM_FRESH) {
                let asked = clock.instant();
                // The quorum round only: unlike a linearizable read it does not wait for this
                // node's state machine to catch up, which has nothing to do with standing.
                if let Err(e) = self.raft.get_read_log_id().await {
                    return Standing::Unsure(e.to_string());
                }
                *ok = Some(asked);
            }
        }
        if !self.leadership.is_leader() {
            return Standing::Unsure("no longer the leader".into());
        }
        let lost = self.ledger.as_ref().is_some_and(|l| {
            l.read()
                .worker(worker)
                .is_some_and(|w| w.state == testmesh_consensus::model::WorkerState::Lost)
        });
        if lost { Standing::Lost } else { Standing::Good }
    }

    /// This node's standing, from the leader (or here when this node leads).
    pub async fn confirm_standing(&self) -> Standing {
        let me = self.me();
        match (&self.mesh, self.leadership.leader()) {
            (_, None) => Standing::Unsure("no leader is known".into()),
            (Some(mesh), Some(l)) if l != me => {
                let peer = match self.leader_peer() {
                    Ok(p) => p,
                    Err(e) => return Standing::Unsure(e.to_string()),
                };
                match mesh.request(peer, Request::Standing, FORWARD_TIMEOUT).await {
                    Ok(Response::Standing(s)) => s,
                    Ok(other) => Standing::Unsure(format!("unexpected answer {other:?}")),
                    Err(e) => Standing::Unsure(format!("cannot reach the leader: {e}")),
                }
            }
            _ => self.standing_of(me).await,
        }
    }

    /// Asks the leader to add `node` as a learner.
    pub async fn forward_join(
        &self,
        node: NodeId,
        addr: String,
        token: Option<String>,
    ) -> Result<(), WriteError> {
        self.forward_membership(Request::Join { node, addr, token })
            .await
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

    /// Commits one entry: here when this node leads (or no leader is known: a stale guess then
    /// fails with NotLeader), else on the leader over the mesh, answering once this replica has
    /// applied it too (read your writes).
    async fn commit(&self, cmd: Command, here_only: bool) -> Committed {
        let leader = self.leadership.leader();
        let remote = self
            .mesh
            .as_ref()
            .filter(|_| leader.is_some() && leader != Some(self.me()));
        let Some(mesh) = remote else {
            return commit_here(&self.raft, cmd).await;
        };
        if here_only {
            return Err(WriteError::NotLeader(leader));
        }
        let peer = self.leader_peer()?;
        match mesh
            .request(peer, Request::Write(cmd), FORWARD_TIMEOUT)
            .await
        {
            Ok(Response::Write(Ok((r, index)))) => {
                // An error here only means this replica is slow; the entry is committed.
                let _ = self.applied(index, "forwarded write applied here").await;
                Ok((r, index))
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
}

/// Commits one entry on this node; fails with `NotLeader` elsewhere.
async fn commit_here(raft: &Raft, cmd: Command) -> Committed {
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

fn weight_of(cmd: &Command) -> usize {
    match cmd {
        Command::Submit { tasks, .. } => tasks.len().max(1),
        Command::Assign { assignments, .. } => assignments.len().max(1),
        Command::Batch(cmds) => cmds.len().max(1),
        _ => 1,
    }
}

/// The group-commit loop behind every [`Writer`] of a node: one entry in flight at a time.
pub struct Batcher {
    writer: Writer,
    rx: mpsc::Receiver<Item>,
}

impl Batcher {
    /// Serves the queue until `shutdown` or until every writer is gone.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut carry: Option<Item> = None;
        // Reports that did not commit, with the back-off before the next try.
        let mut retry: Vec<Command> = Vec::new();
        let mut delay = Duration::from_millis(50);
        let mut leadership = self.writer.leadership.clone();
        loop {
            if !retry.is_empty() && carry.is_none() && self.rx.is_empty() {
                // Nothing new to do: wait out the back-off, or less if leadership moves.
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = tokio::time::sleep(delay) => {}
                    _ = leadership.changed() => {}
                }
            }
            let mut items: Vec<Item> = retry
                .drain(..)
                .map(|cmd| Item {
                    cmd,
                    route: Route::Anywhere,
                    reply: None,
                })
                .collect();
            if items.is_empty() {
                let first = match carry.take() {
                    Some(item) => item,
                    None => tokio::select! {
                        _ = shutdown.changed() => return,
                        item = self.rx.recv() => match item {
                            Some(item) => item,
                            None => return,
                        },
                    },
                };
                items.push(first);
            }
            self.gather(&mut items, &mut carry);
            let failed = self.commit(items).await;
            if failed.is_empty() {
                delay = Duration::from_millis(50);
            } else {
                tracing::debug!("{} report(s) not committed yet; retrying", failed.len());
                retry = failed;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }

    /// Adds what is queued to `items`, up to the group's bounds; a command that does not fit
    /// is carried to the next group. A group never mixes routes, and a batch goes alone.
    fn gather(&mut self, items: &mut Vec<Item>, carry: &mut Option<Item>) {
        let route = items[0].route;
        let alone = |i: &Item| matches!(i.cmd, Command::Batch(_));
        if items.iter().any(alone) {
            return;
        }
        let mut weight: usize = items.iter().map(|i| weight_of(&i.cmd)).sum();
        let mut bytes: usize = items.iter().map(|i| command_bytes(&i.cmd)).sum();
        if carry.is_none() {
            while items.len() < MAX_BATCH {
                let Ok(item) = self.rx.try_recv() else { break };
                let b = command_bytes(&item.cmd);
                if item.route != route
                    || alone(&item)
                    || weight + weight_of(&item.cmd) > MAX_GROUP_WEIGHT
                    || bytes + b > MAX_ENTRY_BYTES
                {
                    *carry = Some(item);
                    break;
                }
                weight += weight_of(&item.cmd);
                bytes += b;
                items.push(item);
            }
        }
    }

    /// Commits one group as one entry and answers its writers; returns the reports that did
    /// not commit (to be retried).
    async fn commit(&self, mut items: Vec<Item>) -> Vec<Command> {
        let here_only = items[0].route == Route::HereOnly;
        if items.len() == 1 {
            let item = items.pop().expect("one item");
            let r = self.writer.commit(item.cmd.clone(), here_only).await;
            return match (item.reply, r) {
                (Some(reply), r) => {
                    let _ = reply.send(r);
                    Vec::new()
                }
                (None, Ok(_)) => Vec::new(),
                (None, Err(_)) => vec![item.cmd],
            };
        }
        let cmds: Vec<Command> = items.iter().map(|i| i.cmd.clone()).collect();
        let result = self.writer.commit(Command::Batch(cmds), here_only).await;
        let mut failed = Vec::new();
        match result {
            Ok((Ok(Applied::Batch(results)), index)) => {
                for (item, r) in items.into_iter().zip(results) {
                    if let Some(reply) = item.reply {
                        let _ = reply.send(Ok((r, index)));
                    }
                }
            }
            Ok(other) => {
                let e = WriteError::Unavailable(format!("unexpected batch result {other:?}"));
                tracing::error!("{e}");
                for item in items {
                    if let Some(reply) = item.reply {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            Err(e) => {
                for item in items {
                    match item.reply {
                        Some(reply) => {
                            let _ = reply.send(Err(e.clone()));
                        }
                        None => failed.push(item.cmd),
                    }
                }
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use testmesh_consensus::model::WorkerState;

    use super::*;
    use crate::core::testing::TestNode;

    fn no_such_worker(n: u64) -> Command {
        Command::SetWorkerState {
            worker: NodeId(1000 + n),
            state: WorkerState::Draining,
            at: testmesh_consensus::UnixMillis(0),
        }
    }

    #[tokio::test]
    async fn concurrent_writes_share_one_entry_and_each_gets_its_own_verdict() {
        let node = TestNode::start().await;
        let before = node.core.ledger.applied_index();
        let writes = (0..20).map(|n| node.core.writer.write(no_such_worker(n)));
        let verdicts = futures::future::join_all(writes).await;
        for v in verdicts {
            // Each command got the ledger's own answer (the worker does not exist).
            assert!(matches!(v, Ok(Err(Rejected::UnknownWorker(_)))), "{v:?}");
        }
        // All twenty were queued while the first was taken: at most two entries.
        let entries = node.core.ledger.applied_index() - before;
        assert!(
            (1..=2).contains(&entries),
            "{entries} entries for 20 writes"
        );
        node.stop().await;
    }

    #[tokio::test]
    async fn a_report_nobody_waits_on_is_committed() {
        let node = TestNode::start().await;
        node.register(NodeId(2), 4, 0).await;
        node.core
            .writer
            .send(Command::SetWorkerState {
                worker: NodeId(2),
                state: WorkerState::Draining,
                at: node.core.now(),
            })
            .await;
        node.wait_for("the drain to be applied", |l| {
            l.worker(NodeId(2))
                .is_some_and(|w| w.state == WorkerState::Draining)
        })
        .await;
        node.stop().await;
    }

    #[tokio::test]
    async fn a_forwarded_batch_is_committed_as_it_is_with_its_index() {
        let node = TestNode::start().await;
        let batch = Command::Batch(vec![no_such_worker(1), no_such_worker(2)]);
        let (applied, index) = node.core.writer.write_here(batch).await.unwrap();
        match applied {
            Ok(Applied::Batch(results)) => assert_eq!(results.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(index, node.core.ledger.applied_index());
        node.stop().await;
    }

    #[tokio::test]
    async fn writes_fail_cleanly_once_the_batcher_has_stopped() {
        let node = TestNode::start().await;
        let writer = node.core.writer.clone();
        node.stop().await;
        let r = writer.write(no_such_worker(1)).await;
        assert!(
            matches!(&r, Err(WriteError::Unavailable(m)) if m.contains("shutting down")),
            "{r:?}"
        );
    }
}
