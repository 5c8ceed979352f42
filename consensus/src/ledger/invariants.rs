//! [`Ledger::check_invariants`]: re-derives every index and sum from the tasks and
//! reservations and compares (used by tests and property tests).

use std::collections::{BTreeMap, BTreeSet};

use super::{Ledger, pending_key};
use crate::TaskId;
use crate::model::NodeId;
use crate::resources::{Allocated, WHOLE_GPU_MILLI};
use crate::task::TaskState;

impl Ledger {
    /// Re-derives every index and sum and compares; `Err` names the first broken invariant.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut alloc: BTreeMap<NodeId, Allocated> = BTreeMap::new();
        for r in self.reservations.values() {
            let t = self
                .tasks
                .get(&r.task)
                .ok_or(format!("reservation for unknown task {}", r.task))?;
            if !t.state.is_active() || t.attempt != r.attempt {
                return Err(format!(
                    "task {} is {} but holds a reservation",
                    t.id, t.state
                ));
            }
            alloc
                .entry(r.worker)
                .or_default()
                .add(&r.requirements, &r.gpus);
            for g in &r.gpus {
                if g.exclusive
                    && self.reservations.values().any(|o| {
                        o.task != r.task
                            && o.worker == r.worker
                            && o.gpus.iter().any(|x| x.index == g.index)
                    })
                {
                    return Err(format!(
                        "exclusive GPU {} of {} is shared",
                        g.index, r.worker
                    ));
                }
            }
        }
        for t in self.tasks.values() {
            if t.state.is_active() != self.reservations.contains_key(&t.id) {
                return Err(format!(
                    "task {} is {} and reservation mismatch",
                    t.id, t.state
                ));
            }
            if (t.state == TaskState::Pending) != self.pending.contains(&pending_key(t)) {
                return Err(format!("pending index disagrees for task {}", t.id));
            }
        }
        let revs: BTreeSet<(u64, TaskId)> = self.tasks.values().map(|t| (t.rev, t.id)).collect();
        if revs != self.by_rev {
            return Err("change index disagrees with task revisions".into());
        }
        if self.pending.len()
            != self
                .tasks
                .values()
                .filter(|t| t.state == TaskState::Pending)
                .count()
        {
            return Err("pending index has extra entries".into());
        }
        for w in self.workers.values() {
            let want = alloc.remove(&w.id).unwrap_or_default();
            if w.allocated != want {
                return Err(format!(
                    "allocation sum of {} is {:?}, reservations say {:?}",
                    w.id, w.allocated, want
                ));
            }
            let c = &w.capacity;
            if want.cpu > c.cpu || want.memory > c.memory || want.disk > c.disk {
                return Err(format!("worker {} is over-committed", w.id));
            }
            for (i, u) in &want.gpus {
                let g = c
                    .gpus
                    .iter()
                    .find(|g| g.index == *i)
                    .ok_or(format!("grant on missing GPU {i}"))?;
                if u.milli > WHOLE_GPU_MILLI || u.memory > g.memory {
                    return Err(format!("GPU {i} of {} is over-committed", w.id));
                }
            }
            let on: BTreeSet<TaskId> = self
                .reservations
                .values()
                .filter(|r| r.worker == w.id)
                .map(|r| r.task)
                .collect();
            if on != self.worker_tasks.get(&w.id).cloned().unwrap_or_default() {
                return Err(format!("per-worker task index of {} disagrees", w.id));
            }
        }
        if let Some((id, _)) = alloc.into_iter().next() {
            return Err(format!("reservation on unregistered worker {id}"));
        }
        Ok(())
    }
}
