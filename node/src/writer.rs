//! Writing commands to the ledger through Raft: direct writes for the API and the control loop,
//! and a group-commit [`Batcher`] for the stream of task reports from the agent.

use std::time::Duration;

use testmesh_consensus::raft::Raft;
use testmesh_consensus::{Applied, Command, Rejected};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// Most commands folded into one log entry by the batcher.
const MAX_BATCH: usize = 2048;

#[derive(Debug, Error)]
pub enum WriteError {
    #[error("this node is not the leader{}; retry against the leader", .0.map(|l| format!(" (leader is {l})")).unwrap_or_default())]
    NotLeader(Option<testmesh_consensus::NodeId>),
    #[error("the ledger is unavailable: {0}")]
    Unavailable(String),
}

/// A cloneable handle for committing commands.
#[derive(Clone)]
pub struct Writer {
    raft: Raft,
}

impl Writer {
    pub fn new(raft: Raft) -> Self {
        Writer { raft }
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Commits `cmd` and returns the ledger's verdict on it.
    pub async fn write(&self, cmd: Command) -> Result<Result<Applied, Rejected>, WriteError> {
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok(resp.data),
            Err(openraft::error::RaftError::APIError(
                openraft::error::ClientWriteError::ForwardToLeader(f),
            )) => Err(WriteError::NotLeader(f.leader_id)),
            Err(e) => Err(WriteError::Unavailable(e.to_string())),
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
                Err(WriteError::NotLeader(_)) | Err(WriteError::Unavailable(_))
                    if replies.iter().all(Option::is_none) && delay < Duration::from_secs(5) =>
                {
                    // Reports must not be dropped because of a passing election: retry.
                    tokio::time::sleep(delay).await;
                    delay *= 2;
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
