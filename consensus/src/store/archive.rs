//! The archive: finished tasks and runs that retention moved out of the live ledger, kept on
//! disk in the same redb file, one record per task, so that they stay readable without
//! costing memory or snapshot size.
//!
//! Each replica writes its own archive as it applies `Command::Archive` (the same commands,
//! so the same content). It is not part of snapshots: a node that joined by snapshot holds
//! only what was archived after it joined, and the archive keeps the newest `keep` tasks
//! (the oldest are dropped, with their ids remembered as "dropped up to").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::codec;
use crate::error::Error;
use crate::ledger::Retired;
use crate::runs::{Run, RunSummary, summarise};
use crate::task::Task;

pub(crate) const TASKS: TableDefinition<u64, &[u8]> = TableDefinition::new("archive_tasks");
pub(crate) const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("archive_runs");
const META: TableDefinition<&str, u64> = TableDefinition::new("archive_meta");
const DROPPED_UPTO: &str = "dropped_upto";

/// Archived tasks kept per replica by default.
pub const DEFAULT_KEEP: u64 = 200_000;

fn decoded_task(bytes: &[u8]) -> Result<Task, Error> {
    codec::decode(bytes).map_err(|error| Error::Decode {
        what: "archived task",
        error,
    })
}

fn decoded_run(bytes: &[u8]) -> Result<(Run, RunSummary), Error> {
    codec::decode(bytes).map_err(|error| Error::Decode {
        what: "archived run",
        error,
    })
}

/// Where an id stands in this replica's archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    Found(T),
    /// It was archived here and later dropped (the archive keeps the newest tasks).
    Dropped,
    NotHere,
}

/// Handle on the archive tables; shared by the state machine (writes) and readers.
#[derive(Clone)]
pub struct Archive {
    db: Arc<Database>,
    keep: Arc<AtomicU64>,
    dropped_upto: Arc<AtomicU64>,
}

impl Archive {
    pub(crate) fn open(db: Arc<Database>) -> Result<Self, Error> {
        let tx = db.begin_write()?;
        tx.open_table(TASKS)?;
        tx.open_table(RUNS)?;
        let dropped = tx
            .open_table(META)?
            .get(DROPPED_UPTO)?
            .map_or(0, |v| v.value());
        tx.commit()?;
        Ok(Archive {
            db,
            keep: Arc::new(AtomicU64::new(DEFAULT_KEEP)),
            dropped_upto: Arc::new(AtomicU64::new(dropped)),
        })
    }

    /// How many archived tasks this replica keeps (the oldest beyond are dropped).
    pub fn set_keep(&self, keep: u64) {
        self.keep.store(keep.max(1), Ordering::Relaxed);
    }

    pub fn keep(&self) -> u64 {
        self.keep.load(Ordering::Relaxed)
    }

    /// Tasks up to this id that were archived here and dropped since.
    pub fn dropped_upto(&self) -> u64 {
        self.dropped_upto.load(Ordering::Relaxed)
    }

    /// Writes what retention moved out, then drops the oldest tasks beyond `keep`. One durable
    /// transaction, committed before the apply that archived them returns.
    pub(crate) fn write(&self, retired: &Retired) -> Result<(), Error> {
        let encode = |what: &'static str, bytes: Result<Vec<u8>, codec::CodecError>| {
            bytes.map_err(|error| Error::Encode { what, error })
        };
        let tx = self.db.begin_write()?;
        let mut dropped = None;
        {
            let mut tasks = tx.open_table(TASKS)?;
            for t in &retired.tasks {
                tasks.insert(
                    t.id.0,
                    encode("archived task", codec::encode(t))?.as_slice(),
                )?;
            }
            let mut runs = tx.open_table(RUNS)?;
            for r in &retired.runs {
                // The summary is kept with the run, so listing archived runs reads no tasks.
                // Its tasks went in above (or with an earlier archive).
                let mut of_run = Vec::with_capacity(r.tasks.len());
                for id in &r.tasks {
                    if let Some(v) = tasks.get(id.0)? {
                        of_run.push(decoded_task(v.value())?);
                    }
                }
                let summary = summarise(of_run.iter());
                let bytes = encode("archived run", codec::encode(&(r, &summary)))?;
                runs.insert(r.id, bytes.as_slice())?;
            }
            let keep = self.keep.load(Ordering::Relaxed);
            let mut len = tasks.len()?;
            while len > keep {
                let Some((id, _)) = tasks.pop_first()? else {
                    break;
                };
                dropped = Some(id.value());
                len -= 1;
            }
            // Runs whose first task was dropped go with it (their results are gone). Run ids
            // grow with task ids, so the stale ones are the oldest.
            if let Some(upto) = dropped {
                let mut stale = Vec::new();
                for entry in runs.iter()? {
                    let (k, v) = entry?;
                    let first = codec::decode::<(Run, RunSummary)>(v.value())
                        .ok()
                        .and_then(|(r, _)| r.tasks.first().map(|t| t.0));
                    if first.is_some_and(|f| f > upto) {
                        break;
                    }
                    stale.push(k.value());
                }
                for k in stale {
                    runs.remove(k)?;
                }
                tx.open_table(META)?.insert(DROPPED_UPTO, upto)?;
            }
        }
        tx.commit()?;
        if let Some(upto) = dropped {
            self.dropped_upto.store(upto, Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn task(&self, id: u64) -> Result<Lookup<Task>, Error> {
        let tx = self.db.begin_read()?;
        match tx.open_table(TASKS)?.get(id)? {
            Some(v) => Ok(Lookup::Found(decoded_task(v.value())?)),
            None if id <= self.dropped_upto() => Ok(Lookup::Dropped),
            None => Ok(Lookup::NotHere),
        }
    }

    pub fn run(&self, id: u64) -> Result<Option<Run>, Error> {
        let tx = self.db.begin_read()?;
        let Some(v) = tx.open_table(RUNS)?.get(id)? else {
            return Ok(None);
        };
        decoded_run(v.value()).map(|(r, _)| Some(r))
    }

    /// The tasks of an archived run that this replica still has, in the run's order.
    pub fn tasks_of(&self, run: &Run) -> Result<Vec<Task>, Error> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TASKS)?;
        let mut out = Vec::with_capacity(run.tasks.len());
        for id in &run.tasks {
            if let Some(v) = table.get(id.0)? {
                out.push(decoded_task(v.value())?);
            }
        }
        Ok(out)
    }

    /// Archived runs with their summaries, newest first, at most `limit`.
    pub fn runs(&self, limit: usize) -> Result<Vec<(Run, RunSummary)>, Error> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(RUNS)?;
        let mut out = Vec::new();
        for entry in table.iter()?.rev().take(limit) {
            let (_, v) = entry?;
            out.push(decoded_run(v.value())?);
        }
        Ok(out)
    }

    /// How many tasks and runs the archive holds.
    pub fn len(&self) -> Result<(u64, u64), Error> {
        let tx = self.db.begin_read()?;
        Ok((tx.open_table(TASKS)?.len()?, tx.open_table(RUNS)?.len()?))
    }
}
