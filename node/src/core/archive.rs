//! Finished work that retention moved out of the live ledger: lookups that try the live
//! replica first and this node's archive next, and say plainly why something is not there.

use testmesh_consensus::TaskId;
use testmesh_consensus::runs::Run;
use testmesh_consensus::store::{LedgerReader, Lookup};
use testmesh_consensus::task::Task;
use thiserror::Error;

/// Why a task or run cannot be shown.
#[derive(Debug, Clone, Error)]
pub enum Gone {
    #[error("{what} {id} does not exist")]
    Never { what: &'static str, id: u64 },
    #[error(
        "{what} {id} finished long ago and was dropped from this node's archive (it keeps the newest {keep} tasks; see --retention)"
    )]
    Dropped {
        what: &'static str,
        id: u64,
        keep: u64,
    },
    #[error(
        "{what} {id} was archived before this node joined the cluster; ask a node that has been a member longer"
    )]
    NotHere { what: &'static str, id: u64 },
    #[error("the archive cannot be read: {0}")]
    Unreadable(String),
}

impl Gone {
    /// Whether the thing never existed (as opposed to no longer being here).
    pub fn is_never(&self) -> bool {
        matches!(self, Gone::Never { .. })
    }
}

/// A task, live (cloned) or archived.
pub fn task(ledger: &LedgerReader, id: TaskId) -> Result<Task, Gone> {
    let last = {
        let l = ledger.read();
        if let Some(t) = l.task(id) {
            return Ok(t.clone());
        }
        l.last_task_id()
    };
    if id.0 == 0 || id.0 > last {
        return Err(Gone::Never {
            what: "task",
            id: id.0,
        });
    }
    let archive = ledger.archive();
    match archive.task(id.0) {
        Ok(Lookup::Found(t)) => Ok(t),
        Ok(Lookup::Dropped) => Err(Gone::Dropped {
            what: "task",
            id: id.0,
            keep: archive.keep(),
        }),
        Ok(Lookup::NotHere) => Err(Gone::NotHere {
            what: "task",
            id: id.0,
        }),
        Err(e) => Err(Gone::Unreadable(e.to_string())),
    }
}

/// A run and its tasks, live or archived.
pub fn run_any(ledger: &LedgerReader, id: u64) -> Result<(Run, Vec<Task>), Gone> {
    {
        let l = ledger.read();
        if let Some(r) = l.run(id) {
            let tasks = r.tasks.iter().filter_map(|t| l.task(*t).cloned()).collect();
            return Ok((r.clone(), tasks));
        }
    }
    run(ledger, id)
}

/// An archived run with the tasks of it this node still has.
pub fn run(ledger: &LedgerReader, id: u64) -> Result<(Run, Vec<Task>), Gone> {
    let newest = ledger.read().newest_run().unwrap_or(0);
    let archive = ledger.archive();
    match archive.run(id) {
        Ok(Some(run)) => {
            let tasks = archive
                .tasks_of(&run)
                .map_err(|e| Gone::Unreadable(e.to_string()))?;
            Ok((run, tasks))
        }
        Ok(None) if id == 0 || id > newest => Err(Gone::Never { what: "run", id }),
        Ok(None) => Err(Gone::NotHere { what: "run", id }),
        Err(e) => Err(Gone::Unreadable(e.to_string())),
    }
}
