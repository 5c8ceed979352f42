use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder,
    StorageIOError, StoredMembership,
};
use redb::{Database, Durability, ReadableDatabase};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::archive::Archive;
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
#[derive(Deserialize)]
struct Envelope {
    format: u32,
    ledger: Ledger,
}

/// The same, encoded from a borrowed ledger (building a snapshot clones nothing).
#[derive(Serialize)]
struct EnvelopeRef<'a> {
    format: u32,
    ledger: &'a Ledger,
}

/// A snapshot as persisted: its meta and its bytes.
#[derive(Deserialize)]
struct Stored {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The same, encoded from borrowed parts (a slice encodes as a Vec does).
#[derive(Serialize)]
struct StoredRef<'a> {
    meta: &'a SnapshotMeta<NodeId, BasicNode>,
    data: &'a [u8],
}

/// Room kept for a snapshot's meta within the codec's limit, so that a snapshot that encodes
/// can also be stored and sent.
const META_ROOM: usize = 1 << 20;

/// Read access to the applied ledger for the API, the planner and the agent, plus a watch of the
/// last applied log index to wake up on changes. Never hold the guard across an `.await`.
#[derive(Clone)]
pub struct LedgerReader {
    state: Arc<RwLock<AppliedState>>,
    applied: watch::Receiver<u64>,
    archive: Archive,
    snapshot_bytes: Arc<AtomicU64>,
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

    /// Finished work that retention moved out of the live ledger.
    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// Size of the last snapshot built or installed here, in bytes.
    pub fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes.load(Ordering::Relaxed)
    }
}

pub struct LedgerGuard<'a>(RwLockReadGuard<'a, AppliedState>);

impl LedgerGuard<'_> {
    /// Index of the last entry applied to the ledger this guard reads: the revision it
    /// reflects (unlike [`LedgerReader::applied_index`], never behind or ahead of it).
    pub fn applied_index(&self) -> u64 {
        self.0.last_applied.map_or(0, |l| l.index)
    }
}

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
    archive: Archive,
    snapshot_bytes: Arc<AtomicU64>,
    /// Largest snapshot payload built or accepted (the codec's limit less room for the meta).
    snapshot_limit: usize,
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

fn decode_snapshot(data: &[u8], limit: usize) -> Result<Ledger, Error> {
    let env: Envelope = codec::decode_within(data, limit).map_err(|error| Error::Decode {
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
        let mut snapshot_bytes = 0;
        {
            let tx = db.begin_read()?;
            let table = tx.open_table(SNAPSHOT)?;
            if let Some(v) = table.get("current")? {
                let stored: Stored = codec::decode(v.value()).map_err(|error| Error::Decode {
                    what: "snapshot record",
                    error,
                })?;
                snapshot_bytes = stored.data.len() as u64;
                state.ledger = decode_snapshot(&stored.data, codec::LIMIT - META_ROOM)?;
                state.last_applied = stored.meta.last_log_id;
                state.membership = stored.meta.last_membership;
            }
        }
        let index = state.last_applied.map_or(0, |l| l.index);
        let (notify, applied) = watch::channel(index);
        let state = Arc::new(RwLock::new(state));
        let archive = Archive::open(db.clone())?;
        let snapshot_bytes = Arc::new(AtomicU64::new(snapshot_bytes));
        let reader = LedgerReader {
            state: state.clone(),
            applied,
            archive: archive.clone(),
            snapshot_bytes: snapshot_bytes.clone(),
        };
        Ok((
            StateMachine {
                db,
                state,
                notify,
                snapshot_seq: 0,
                archive,
                snapshot_bytes,
                snapshot_limit: codec::LIMIT - META_ROOM,
            },
            reader,
        ))
    }

    /// Lowers the largest snapshot this node builds or accepts (tests use a small one).
    pub fn set_snapshot_limit(&mut self, limit: usize) {
        self.snapshot_limit = limit.min(codec::LIMIT - META_ROOM);
    }

    fn persist(&self, stored: StoredRef<'_>) -> Result<(), StorageError> {
        // A snapshot built in the background may finish after a newer one was installed from
        // the leader; never replace the newer one (the log before it may be purged already).
        if self
            .current_meta()?
            .is_some_and(|m| m.last_log_id > stored.meta.last_log_id)
        {
            return Ok(());
        }
        let w = |e: &dyn ToString| sm_err(ErrorVerb::Write, e.to_string());
        let bytes = codec::encode(&stored).map_err(|e| w(&e))?;
        let mut tx = self.db.begin_write().map_err(|e| w(&e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| w(&e))?;
        {
            let mut t = tx.open_table(SNAPSHOT).map_err(|e| w(&e))?;
            t.insert("current", bytes.as_slice()).map_err(|e| w(&e))?;
            let meta = codec::encode(stored.meta).map_err(|e| w(&e))?;
            t.insert("current_meta", meta.as_slice())
                .map_err(|e| w(&e))?;
        }
        tx.commit().map_err(|e| w(&e))
    }

    /// The stored snapshot's meta, without reading its data.
    fn current_meta(&self) -> Result<Option<SnapshotMeta<NodeId, BasicNode>>, StorageError> {
        let r = |e: &dyn ToString| sm_err(ErrorVerb::Read, e.to_string());
        {
            let tx = self.db.begin_read().map_err(|e| r(&e))?;
            let t = tx.open_table(SNAPSHOT).map_err(|e| r(&e))?;
            if let Some(v) = t.get("current_meta").map_err(|e| r(&e))? {
                return Ok(Some(codec::decode(v.value()).map_err(|e| r(&e))?));
            }
        }
        // Written before metas were kept apart.
        Ok(self.current()?.map(|s| s.meta))
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
            // Encoded straight from the guard: no copy of the ledger. Retention keeps it small,
            // so the read lock is held briefly.
            let env = EnvelopeRef {
                format: SNAPSHOT_FORMAT,
                ledger: &st.ledger,
            };
            let data = codec::encode_within(&env, self.snapshot_limit).map_err(|e| {
                tracing::error!(
                    "cannot build a snapshot: {e}; tighten --retention so the live ledger shrinks"
                );
                sm_err(ErrorVerb::Write, e)
            })?;
            (meta, data)
        };
        self.persist(StoredRef {
            meta: &meta,
            data: &data,
        })?;
        self.snapshot_bytes
            .store(data.len() as u64, Ordering::Relaxed);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
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
            // Written before the apply returns and under the lock, so a reader finds an
            // archived task either live or in the archive, never in neither.
            let retired = st.ledger.take_retired();
            if !retired.is_empty() {
                self.archive
                    .write(&retired)
                    .map_err(|e| sm_err(ErrorVerb::Write, e))?;
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
            archive: self.archive.clone(),
            snapshot_bytes: self.snapshot_bytes.clone(),
            snapshot_limit: self.snapshot_limit,
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
        let ledger =
            decode_snapshot(&data, self.snapshot_limit).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        self.persist(StoredRef { meta, data: &data })?;
        self.snapshot_bytes
            .store(data.len() as u64, Ordering::Relaxed);
        drop(data);
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
