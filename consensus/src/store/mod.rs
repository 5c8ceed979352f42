//! openraft log storage and state machine on one redb file.
//!
//! The log (and vote, committed index, purge point) is durable on every append: each append is
//! one redb transaction with immediate durability. The state machine lives in memory and its
//! snapshots are durable; at start it is rebuilt from the last snapshot plus the committed log,
//! which openraft re-applies because the committed index is saved too.

// openraft's trait methods return its (large) `StorageError`; our helpers return the same type.
#![allow(clippy::result_large_err)]

mod log;
mod sm;

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, TableDefinition};

pub use log::LogStore;
pub use sm::{LedgerReader, StateMachine};

use crate::error::Error;

pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

/// Format marker of persisted snapshots; bump it with a migration when the ledger changes shape.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// Opens (or creates) the ledger database and returns its log store, state machine and a
/// read handle for everyone else.
pub fn open(path: &Path) -> Result<(LogStore, StateMachine, LedgerReader), Error> {
    let db = Database::builder()
        // The log is read back rarely (followers catching up, restarts); keep the cache small so
        // an idle node stays small.
        .set_cache_size(16 << 20)
        .create(path)
        .map_err(|source| Error::Open {
            path: path.display().to_string(),
            source,
        })?;
    {
        // Reading a table no write has created is an error in redb: create all of them now.
        let tx = db.begin_write()?;
        tx.open_table(LOG)?;
        tx.open_table(META)?;
        tx.open_table(SNAPSHOT)?;
        tx.commit()?;
    }
    let _ = db.begin_read()?;
    let db = Arc::new(db);
    let (sm, reader) = StateMachine::load(db.clone())?;
    Ok((LogStore::new(db), sm, reader))
}

#[cfg(test)]
mod tests;
