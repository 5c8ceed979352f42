//! openraft log storage and state machine on one redb file.
//!
//! The log (and vote, committed index, purge point) is durable on every append: each append is
//! one redb transaction with immediate durability. The state machine lives in memory and its
//! snapshots are durable; at start it is rebuilt from the last snapshot plus the committed log,
//! which openraft re-applies because the committed index is saved too.

// openraft's trait methods return its (large) `StorageError`; our helpers return the same type.
#![allow(clippy::result_large_err)]

mod archive;
mod log;
mod sm;

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, TableDefinition};

pub use archive::{Archive, DEFAULT_KEEP as DEFAULT_ARCHIVE_KEEP, Lookup};
pub use log::LogStore;
pub use sm::{LedgerReader, StateMachine};

use crate::error::Error;

pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

/// Format marker of persisted snapshots; bump it with a migration when the ledger changes shape.
pub const SNAPSHOT_FORMAT: u32 = 5;

/// Format of the whole database (log entries and snapshots), kept under this meta key. A
/// database from another format is refused at open rather than misread.
pub const STORAGE_FORMAT: u32 = 5;
const FORMAT_KEY: &str = "storage_format";

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
    check_format(&db, path)?;
    let _ = db.begin_read()?;
    let db = Arc::new(db);
    let (sm, reader) = StateMachine::load(db.clone())?;
    Ok((LogStore::new(db), sm, reader))
}

/// Stamps a new database with [`STORAGE_FORMAT`]; refuses one written in another format.
fn check_format(db: &Database, path: &Path) -> Result<(), Error> {
    use redb::ReadableTableMetadata;
    let found = {
        let tx = db.begin_read()?;
        let meta = tx.open_table(META)?;
        match meta.get(FORMAT_KEY)? {
            Some(v) => {
                Some(
                    crate::codec::decode::<u32>(v.value()).map_err(|error| Error::Decode {
                        what: "storage format",
                        error,
                    })?,
                )
            }
            // Data without a stamp was written before formats were stamped: format 1.
            None if !tx.open_table(LOG)?.is_empty()? || !tx.open_table(SNAPSHOT)?.is_empty()? => {
                Some(1)
            }
            None => None,
        }
    };
    match found {
        Some(f) if f == STORAGE_FORMAT => Ok(()),
        Some(found) => Err(Error::StorageFormat {
            path: path.display().to_string(),
            found,
            expected: STORAGE_FORMAT,
        }),
        None => {
            let bytes = crate::codec::encode(&STORAGE_FORMAT).map_err(|error| Error::Decode {
                what: "storage format",
                error,
            })?;
            let tx = db.begin_write()?;
            tx.open_table(META)?.insert(FORMAT_KEY, bytes.as_slice())?;
            tx.commit()?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
