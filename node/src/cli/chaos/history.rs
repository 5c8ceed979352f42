//! What the chaos clients did and saw: invoke / ok / fail / unknown events with monotonic
//! times, written as JSON lines so that a failed run can be read and checked again.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use testmesh_consensus::TaskId;
use testmesh_consensus::task::TaskState;

use crate::core::clock::{Clock, SystemClock};

/// How an operation ended. `Unknown`: no answer (timeout, dropped connection, a 5xx after the
/// request may have reached the leader) — the write may or may not have happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A submit of `tasks` tasks under `request_id`; `ids` on ok.
    Submit {
        request_id: String,
        tasks: usize,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ids: Vec<TaskId>,
    },
    /// A cancel; on ok, the state the node answered with.
    Cancel {
        task: TaskId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<TaskState>,
    },
    /// A consistent read of one task: on ok, its state, or `None` when the node said 404.
    Read {
        task: TaskId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<TaskState>,
    },
    /// A fault began (`Invoke`) or was healed (`Ok`).
    Fault { what: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the run started (monotonic).
    pub t: u64,
    /// The client (or `FAULTS` for the nemesis).
    pub process: u32,
    /// Pairs an invocation with its completion.
    pub id: u64,
    pub kind: Kind,
    #[serde(flatten)]
    pub op: Op,
    /// The node asked, and on failure what it said.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

pub const FAULTS: u32 = u32::MAX;

/// Shared, append-only history of one run.
#[derive(Clone)]
pub struct Recorder {
    start: std::time::Instant,
    inner: Arc<Mutex<(u64, Vec<Event>)>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            start: SystemClock.instant(),
            inner: Arc::default(),
        }
    }

    fn now(&self) -> u64 {
        SystemClock.instant().duration_since(self.start).as_millis() as u64
    }

    /// Records an invocation; returns its id for the completion.
    pub fn invoke(&self, process: u32, op: Op, note: &str) -> u64 {
        let t = self.now();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        let id = g.0;
        g.1.push(Event {
            t,
            process,
            id,
            kind: Kind::Invoke,
            op,
            note: note.to_string(),
        });
        id
    }

    pub fn complete(&self, process: u32, id: u64, kind: Kind, op: Op, note: String) {
        let t = self.now();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.1.push(Event {
            t,
            process,
            id,
            kind,
            op,
            note,
        });
    }

    pub fn events(&self) -> Vec<Event> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.now()
    }
}

/// One operation with its invocation and completion joined.
#[derive(Debug, Clone)]
pub struct Completed {
    pub process: u32,
    pub invoked: u64,
    pub completed: u64,
    pub kind: Kind,
    pub op: Op,
}

/// Joins invocations with their completions; an invocation never completed (the run ended
/// first) counts as unknown.
pub fn completed(events: &[Event]) -> Vec<Completed> {
    let mut open: std::collections::HashMap<u64, &Event> = Default::default();
    let mut out = Vec::new();
    for e in events {
        if e.kind == Kind::Invoke {
            open.insert(e.id, e);
        } else if let Some(inv) = open.remove(&e.id) {
            out.push(Completed {
                process: e.process,
                invoked: inv.t,
                completed: e.t,
                kind: e.kind,
                op: e.op.clone(),
            });
        }
    }
    for inv in open.into_values() {
        out.push(Completed {
            process: inv.process,
            invoked: inv.t,
            completed: u64::MAX,
            kind: Kind::Unknown,
            op: inv.op.clone(),
        });
    }
    out.sort_by_key(|c| (c.invoked, c.completed));
    out
}
