use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder,
    StorageIOError, StoredMembership,
};
use redb::{Database, Durability, ReadableDatabase};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{SNAPSHOT, SNAPSHOT_FORMAT};
use crate::command::Applied;
use crate::error::Error;
use crate::ledger::Ledger;
use crate::model::NodeId;
use crate::raft::{LogId, StorageError, TypeConfig};
use crate::{codec, command::Rejected};

/// The ledger plus what Raft needs to know about how far it is applied.
#[derive(Debug, Default)]
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership<NodeId, BasicNode>,
    ledger: Ledger,
}

/// Snapshot payload: a format marker, then the ledger.
#[derive(Serialize, Deserialize)]
struct Envelope {
    format: u32,
    ledger: Ledger,
}

/// A snapshot as persisted: its meta and its bytes.
#[derive(Serialize, Deserialize)]
struct Stored {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// Read access to the applied ledger for the API, the planner and the agent, plus a watch of the
/// last applied log index to wake up on changes. Never hold the guard across an `.await`.
#[derive(Clone)]
pub struct LedgerReader {
    state: Arc<RwLock<AppliedState>>,
    applied: watch::Receiver<u64>,
}

impl LedgerReader {
    pub fn read(&self) -> LedgerGuard<'_> {
        LedgerGuard(self.state.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Index of the last applied log entry.
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    /// A receiver that changes whenever new entries are applied.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }
}

pub struct LedgerGuard<'a>(RwLockReadGuard<'a, AppliedState>);

impl std::ops::Deref for LedgerGuard<'_> {
    type Target = Ledger;
    fn deref(&self) -> &Ledger {
        &self.0.ledger
    }
}

pub struct StateMachine {
    db: Arc<Database>,
    state: Arc<RwLock<AppliedState>>,
    notify: watch::Sender<u64>,
    snapshot_seq: u64,
}

fn sm_err(verb: ErrorVerb, e: impl ToString) -> StorageError {
    StorageError::IO {
        source: StorageIOError::new(
            ErrorSubject::StateMachine,
            verb,
            openraft::AnyError::error(e.to_string()),
        ),
    }
}

fn decode_snapshot(data: &[u8]) -> Result<Ledger, Error> {
    let env: Envelope = codec::decode(data).map_err(|error| Error::Decode {
        what: "snapshot",
        error,
    })?;
    if env.format != SNAPSHOT_FORMAT {
        return Err(Error::SnapshotFormat {
            found: env.format,
            expected: SNAPSHOT_FORMAT,
        });
    }
    Ok(env.ledger)
}

impl StateMachine {
    /// Loads the last persisted snapshot, if any.
    pub(crate) fn load(db: Arc<Database>) -> Result<(Self, LedgerReader), Error> {
        let mut state = AppliedState::default();
        {
            let tx = db.begin_read()?;
            let table = tx.open_table(SNAPSHOT)?;
            if let Some(v) = table.get("current")? {
                let stored: Stored = codec::decode(v.value()).map_err(|error| Error::Decode {
                    what: "snapshot record",
                    error,
                })?;
                state.ledger = decode_snapshot(&stored.data)?;
                state.last_applied = stored.meta.last_log_id;
                state.membership = stored.meta.last_membership;
            }
        }
        let index = state.last_applied.map_or(0, |l| l.index);
        let (notify, applied) = watch::channel(index);
        let state = Arc::new(RwLock::new(state));
        let reader = LedgerReader {
            state: state.clone(),
            applied,
        };
        Ok((
            StateMachine {
                db,
                state,
                notify,
                snapshot_seq: 0,
            },
            reader,
        ))
    }

    fn persist(&self, stored: &Stored) -> Result<(), StorageError> {
        // A snapshot built in the background may finish after a newer one was installed from
        // the leader; never replace the newer one (the log before it may be purged already).
        if self
            .current()?
            .is_some_and(|c| c.meta.last_log_id > stored.meta.last_log_id)
        {
            return Ok(());
        }
        let w = |e: &dyn ToString| sm_err(ErrorVerb::Write, e.to_string());
        let bytes = codec::encode(stored).map_err(|e| w(&e))?;
        let mut tx = self.db.begin_write().map_err(|e| w(&e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| w(&e))?;
        {
            let mut t = tx.open_table(SNAPSHOT).map_err(|e| w(&e))?;
            t.insert("current", bytes.as_slice()).map_err(|e| w(&e))?;
        }
        tx.commit().map_err(|e| w(&e))
    }

    fn current(&self) -> Result<Option<Stored>, StorageError> {
        let r = |e: &dyn ToString| sm_err(ErrorVerb::Read, e.to_string());
        let tx = self.db.begin_read().map_err(|e| r(&e))?;
        let t = tx.open_table(SNAPSHOT).map_err(|e| r(&e))?;
        match t.get("current").map_err(|e| r(&e))? {
            Some(v) => Ok(Some(codec::decode(v.value()).map_err(|e| r(&e))?)),
            None => Ok(None),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = {
            let st = self.state.read().unwrap_or_else(|p| p.into_inner());
            self.snapshot_seq += 1;
            let last = st.last_applied;
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: st.membership.clone(),
                snapshot_id: format!(
                    "{}-{}-{}",
                    last.map_or(0, |l| l.leader_id.term),
                    last.map_or(0, |l| l.index),
                    self.snapshot_seq
                ),
            };
            let data = codec::encode(&Envelope {
                format: SNAPSHOT_FORMAT,
                ledger: st.ledger.clone(),
            })
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
            (meta, data)
        };
        let stored = Stored { meta, data };
        self.persist(&stored)?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
        let st = self.state.read().unwrap_or_else(|p| p.into_inner());
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Result<Applied, Rejected>>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let last = {
            let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
            for e in entries {
                st.last_applied = Some(e.log_id);
                let r = match e.payload {
                    EntryPayload::Blank => Ok(Applied::Noop),
                    EntryPayload::Normal(cmd) => st.ledger.apply(e.log_id.index, &cmd),
                    EntryPayload::Membership(m) => {
                        st.membership = StoredMembership::new(Some(e.log_id), m);
                        Ok(Applied::Noop)
                    }
                };
                out.push(r);
            }
            st.last_applied.map_or(0, |l| l.index)
        };
        self.notify.send_replace(last);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        StateMachine {
            db: self.db.clone(),
            state: self.state.clone(),
            notify: self.notify.clone(),
            snapshot_seq: self.snapshot_seq + 1000,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let ledger = decode_snapshot(&data).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let stored = Stored {
            meta: meta.clone(),
            data,
        };
        self.persist(&stored)?;
        let index = {
            let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
            st.ledger = ledger;
            st.last_applied = meta.last_log_id;
            st.membership = meta.last_membership.clone();
            meta.last_log_id.map_or(0, |l| l.index)
        };
        self.notify.send_replace(index);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.current()?.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
