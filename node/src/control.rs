//! The leader's loop: snapshot the ledger, ask the planner, commit what it proposes.
//!
//! It wakes on every applied change and on a slow tick; one round runs at a time, so a proposal
//! is committed (or refused) before the next round looks at the ledger again.

use std::time::Duration;

use testmesh_consensus::store::LedgerReader;
use testmesh_consensus::{Applied, Command, NodeId};
use tokio::sync::watch;

use crate::clock;
use crate::planner::{self, Options};
use crate::writer::Writer;

/// Most pending tasks considered per round (the rest wait for the next round).
const MAX_PENDING_PER_ROUND: usize = 20_000;

pub struct Control {
    pub node: NodeId,
    pub reader: LedgerReader,
    pub writer: Writer,
    pub options: Options,
}

impl Control {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut applied = self.reader.watch();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                r = applied.changed() => if r.is_err() { return },
                _ = tick.tick() => {}
            }
            applied.mark_unchanged();
            if self.writer.raft().metrics().borrow().current_leader != Some(self.node) {
                continue;
            }
            self.round().await;
        }
    }

    async fn round(&self) {
        let plan = {
            let ledger = self.reader.read();
            if ledger.pending_count() == 0 {
                return;
            }
            let mut workers = planner::workers_of(&ledger);
            let queue = planner::pending_of(&ledger).take(MAX_PENDING_PER_ROUND);
            planner::schedule_from(&mut workers, queue, &self.options)
        };
        if plan.assignments.is_empty() {
            return;
        }
        let n = plan.assignments.len();
        match self
            .writer
            .write(Command::Assign {
                assignments: plan.assignments,
                at: clock::now(),
            })
            .await
        {
            Ok(Ok(Applied::Assigned { results })) => {
                let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
                if !refused.is_empty() {
                    // The ledger re-checks every proposal; a refusal means the view was stale.
                    tracing::debug!(
                        "{} of {n} assignments refused, first: {}",
                        refused.len(),
                        refused[0]
                    );
                }
            }
            Ok(other) => tracing::warn!("unexpected assign result {other:?}"),
            Err(e) => tracing::debug!("could not commit assignments: {e}"),
        }
    }
}
