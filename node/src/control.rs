//! The leader's loop: snapshot the ledger, ask the planner, commit what it proposes.
//!
//! It wakes on every applied change and on a slow tick; one round runs at a time, so a proposal
//! is committed (or refused) before the next round looks at the ledger again.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use testmesh_consensus::model::WorkerState;
use testmesh_consensus::{Applied, Command, NodeId, TaskId};
use testmesh_planner::{self as planner, Options};
use tokio::sync::watch;

use crate::core::Core;
use crate::core::leadership::Term;
use crate::core::membership::{self, Liveness};

/// Most pending tasks considered per round (the rest wait for the next round).
const MAX_PENDING_PER_ROUND: usize = 20_000;

pub struct Control {
    pub core: Core,
    pub options: Options,
    pub liveness: Liveness,
    /// A worker silent this long is lost; a new leader waits as long before judging anyone.
    pub dead_after: Duration,
    /// Statistics older than this are not trusted for placement.
    pub stats_fresh: Duration,
    /// Predictions of pending tasks, per model generation: each task is predicted once.
    pub predicted: std::sync::Mutex<(u64, HashMap<TaskId, Option<f64>>)>,
    /// Which finished tasks leave the live ledger for the archive.
    pub retention: testmesh_consensus::retention::Policy,
}

/// Most attempts given back in one command.
const MAX_GIVE_BACK: usize = 5_000;

/// Finished attempts the quarantine check looks at (the most recent).
const QUARANTINE_LOOK_BACK: usize = 5_000;
/// Least time between two quarantine checks.
const JUDGE_EVERY: Duration = Duration::from_millis(200);

impl Control {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut applied = self.core.ledger.watch();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // (term, since when this node has been leading in it without a pause)
        let mut leading: Option<(u64, Instant)> = None;
        let mut last_turn = self.core.clock.instant();
        let mut judged = u64::MAX;
        let mut judged_at = self.core.clock.instant();
        loop {
            let ticked = tokio::select! {
                _ = shutdown.changed() => return,
                r = applied.changed() => { if r.is_err() { return } false },
                _ = tick.tick() => true,
            };
            applied.mark_unchanged();
            let now = self.core.clock.instant();
            if now.duration_since(last_turn) > Duration::from_secs(3) {
                // This process was paused or starved (SIGSTOP, a VM freeze): what it knows of
                // others' liveness is stale, so it must watch afresh before judging anyone.
                leading = None;
            }
            last_turn = now;
            let Term { leader, term } = self.core.leadership.term();
            if leader != Some(self.core.node) {
                leading = None;
                continue;
            }
            let since = match leading {
                Some((t, since)) if t == term => since,
                _ => {
                    tracing::info!("leading the cluster in term {term}");
                    let now = self.core.clock.instant();
                    leading = Some((term, now));
                    now
                }
            };
            if ticked {
                self.retire().await;
            }
            if ticked && self.core.clock.instant().duration_since(since) >= self.dead_after {
                self.find_dead().await;
                self.replace_silent_voters().await;
            }
            // Assignment times come from the clocks of whichever leaders made them: judge them
            // only after leading for the whole bound on this node's own clock.
            if ticked && self.core.clock.instant().duration_since(since) >= self.start_bound() {
                self.give_back_unstarted().await;
            }
            // Only new results can change a verdict; judge soon after them, at most 5 times a
            // second (a host failing fast must not burn many retries first).
            let total = self.core.ledger.read().history_total();
            if total != judged && self.core.clock.instant().duration_since(judged_at) >= JUDGE_EVERY
            {
                judged = total;
                judged_at = self.core.clock.instant();
                self.quarantine().await;
            }
            self.round().await;
        }
    }

    /// How long an assigned attempt may stay unstarted: well past --dead-after, so that a dead
    /// worker is handled as lost first and a slow one has time to catch up.
    fn start_bound(&self) -> Duration {
        (self.dead_after * 2).max(Duration::from_secs(10))
    }

    /// Gives back attempts whose workers answer Raft but did not start them within the bound
    /// (a wedged agent); they run elsewhere without using up a retry.
    async fn give_back_unstarted(&self) {
        let attempts = {
            let l = self.core.ledger.read();
            unstarted_for(&l, self.core.now(), self.start_bound())
        };
        if attempts.is_empty() {
            return;
        }
        match self
            .core
            .writer
            .write(Command::GiveBack {
                attempts,
                at: self.core.now(),
            })
            .await
        {
            Ok(Ok(Applied::WorkerState { lost })) if !lost.is_empty() => tracing::warn!(
                "{} assigned task(s) were not started by their workers within {:?}; given back: {:?}",
                lost.len(),
                self.start_bound(),
                &lost[..lost.len().min(10)]
            ),
            Ok(_) => {}
            Err(e) => tracing::debug!("could not give back unstarted attempts: {e}"),
        }
    }

    /// Moves finished tasks past the retention policy to the archive, a bounded batch a tick
    /// (more next tick if the batch was full).
    async fn retire(&self) {
        let now = self.core.now();
        let tasks = {
            let l = self.core.ledger.read();
            testmesh_consensus::retention::select(&l, &self.retention, now)
        };
        if tasks.is_empty() {
            return;
        }
        let n = tasks.len();
        match self
            .core
            .writer
            .write(Command::Archive { tasks, at: now })
            .await
        {
            Ok(Ok(Applied::Archived { tasks, runs })) => {
                tracing::debug!("archived {tasks} of {n} finished task(s) and {runs} run(s)")
            }
            Ok(other) => tracing::warn!("archiving was refused: {other:?}"),
            Err(e) => tracing::debug!("could not archive: {e}"),
        }
    }

    /// Quarantines workers whose failure rate stands far above their peers' (see
    /// `planner::quarantine`).
    async fn quarantine(&self) {
        let verdicts = {
            let l = self.core.ledger.read();
            let workers: Vec<_> = l.workers().collect();
            let history: Vec<_> = l.history().rev().take(QUARANTINE_LOOK_BACK).collect();
            let history: Vec<_> = history.into_iter().rev().collect();
            planner::quarantine::decide(&workers, &history)
        };
        for v in verdicts {
            tracing::warn!("quarantining worker {}: {}", v.worker, v.reason);
            let cmd = Command::SetQuarantine {
                worker: v.worker,
                reason: Some(v.reason),
                at: self.core.now(),
            };
            if let Err(e) = self.core.writer.write(cmd).await {
                tracing::debug!("could not quarantine {}: {e}", v.worker);
            }
        }
    }

    /// Marks lost every worker that has not answered the leader for `dead_after`.
    async fn find_dead(&self) {
        if self.silent_workers().is_empty() {
            return;
        }
        // Only a leader that a quorum still follows may judge: a deposed leader that has not
        // noticed yet (it was partitioned or paused) must not declare the others dead.
        if let Err(e) = self.core.writer.raft().ensure_linearizable().await {
            tracing::debug!("not judging liveness: {e}");
            return;
        }
        // Asked again: the quorum round trip took time and may have brought answers.
        let silent = self.silent_workers();
        for worker in silent {
            tracing::warn!(
                "worker {worker} has not answered for {:?}; marking it lost",
                self.dead_after
            );
            match self
                .core
                .writer
                .write(Command::WorkerLost {
                    worker,
                    at: self.core.now(),
                })
                .await
            {
                Ok(Ok(Applied::WorkerState { lost })) if !lost.is_empty() => {
                    tracing::warn!(
                        "{} task attempt(s) on {worker} lost; re-queued where retries allow",
                        lost.len()
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("could not mark {worker} lost: {e}"),
            }
        }
    }

    /// Swaps voters that have not answered for `dead_after` for live, caught-up learners, so
    /// the cluster keeps its fault tolerance. The replaced voters stay on as learners and can be
    /// promoted again when they come back and a voter is missing.
    async fn replace_silent_voters(&self) {
        let m = self.core.leadership.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let now = self.core.clock.instant();
        let silent: BTreeSet<NodeId> = voters
            .iter()
            .chain(&learners)
            .copied()
            .filter(|n| *n != self.core.node)
            .filter(|n| {
                self.liveness
                    .last_seen(*n)
                    .is_none_or(|t| now.duration_since(t) >= self.dead_after)
            })
            .collect();
        if silent.is_empty() {
            return;
        }
        let mut caught_up = membership::caught_up_learners(&m, &learners);
        caught_up.retain(|l| self.core.writer.may_vote(*l));
        let Some(new) = membership::voters_replacing_silent(&voters, &caught_up, &silent) else {
            return;
        };
        tracing::warn!("replacing silent voter(s): voters {voters:?} become {new:?}");
        if let Err(e) = self
            .core
            .writer
            .raft()
            .change_membership(openraft::ChangeMembers::ReplaceAllVoters(new), true)
            .await
        {
            tracing::warn!("voter replacement failed: {e}");
        }
    }

    /// Fills in a task's predicted run time (each task predicted once per model generation).
    fn with_prediction<'a>(
        &self,
        ledger: &'a testmesh_consensus::Ledger,
        models: Option<&crate::core::models::ModelSet>,
        cache: &mut (u64, HashMap<TaskId, Option<f64>>),
        mut p: planner::PendingView<'a>,
    ) -> planner::PendingView<'a> {
        let Some(models) = models else {
            return p;
        };
        let (generation, predictor) = (models.generation, &models.duration);
        if cache.0 != generation || cache.1.len() > 4 * MAX_PENDING_PER_ROUND {
            *cache = (generation, HashMap::new());
        }
        p.predicted_secs = *cache.1.entry(p.id).or_insert_with(|| {
            let spec = &ledger.task(p.id)?.spec;
            let pr = predictor.predict(&planner::predictor::history::spec_features(spec));
            // Only what history says; "requested" means nothing is known.
            (pr.path != planner::predictor::PredictionPath::Requested).then_some(pr.value)
        });
        p
    }

    /// GPUs that fresh statistics show busy with processes testmesh did not start.
    async fn busy_gpus(&self) -> HashMap<NodeId, Vec<u32>> {
        let now = self.core.now().0;
        let fresh = self.stats_fresh.as_millis() as u64;
        self.core
            .stats
            .latest_all()
            .await
            .into_iter()
            .filter(|(_, p)| now.saturating_sub(p.at.0) <= fresh)
            .filter_map(|(node, p)| {
                let busy: Vec<u32> = p
                    .sample
                    .gpus
                    .iter()
                    .filter(|g| g.foreign_processes > 0)
                    .map(|g| g.index)
                    .collect();
                (!busy.is_empty()).then_some((node, busy))
            })
            .collect()
    }

    /// Workers (other than this node) that have not answered a Raft RPC for `dead_after`.
    fn silent_workers(&self) -> Vec<NodeId> {
        let now = self.core.clock.instant();
        let ledger = self.core.ledger.read();
        ledger
            .workers()
            .filter(|w| w.state != WorkerState::Lost && w.id != self.core.node)
            .filter(|w| {
                self.liveness
                    .last_seen(w.id)
                    .is_none_or(|t| now.duration_since(t) >= self.dead_after)
            })
            .map(|w| w.id)
            .collect()
    }

    async fn round(&self) {
        let busy = self.busy_gpus().await;
        let plan = {
            let ledger = self.core.ledger.read();
            if ledger.pending_count() == 0 {
                return;
            }
            let mut workers = planner::workers_of(&ledger);
            // A worker this leader has not heard from lately gets nothing new: right after an
            // election the ledger still lists a dead node as active until --dead-after, and
            // work placed there would only wait to be lost.
            let now = self.core.clock.instant();
            let quiet = (self.dead_after / 3).max(Duration::from_secs(1));
            workers.retain(|w| {
                w.id == self.core.node
                    || self
                        .liveness
                        .last_seen(w.id)
                        .is_some_and(|t| now.duration_since(t) < quiet)
            });
            planner::occupy_busy_gpus(&mut workers, &busy);
            // Every task holds some cpu: with no worker that has any free, nothing can be
            // placed, and looking at the queue would cost O(queue) per applied entry.
            if !workers.iter().any(|w| w.allocated.cpu < w.capacity.cpu) {
                return;
            }
            // Lazily: the planner stops pulling the queue once every worker is full, so a
            // round costs what it places, not what waits.
            let models = self.core.models.current();
            let mut cache = self.predicted.lock().unwrap_or_else(|e| e.into_inner());
            let queue = planner::pending_of(&ledger)
                .take(MAX_PENDING_PER_ROUND)
                .map(|p| self.with_prediction(&ledger, models.as_deref(), &mut cache, p));
            planner::place(&mut workers, queue, &self.options)
        };
        if plan.assignments.is_empty() {
            return;
        }
        let n = plan.assignments.len();
        match self
            .core
            .writer
            .write(Command::Assign {
                assignments: plan.assignments,
                at: self.core.now(),
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

/// Extra time an attempt with shipped code may stay unstarted (its worker fetches the code).
pub const CODE_FETCH_MS: u64 = 120_000;

/// Attempts assigned at least `bound` before `now` and still not started (at most
/// [`MAX_GIVE_BACK`]). A pure function of the ledger.
pub fn unstarted_for(
    l: &testmesh_consensus::ledger::Ledger,
    now: testmesh_consensus::UnixMillis,
    bound: Duration,
) -> Vec<(TaskId, u32)> {
    let bound = bound.as_millis() as u64;
    l.reservations()
        .filter(|r| now.0.saturating_sub(r.since.0) >= bound)
        .filter(|r| {
            l.task(r.task).is_some_and(|t| {
                // Shipped code is fetched before the start: it gets longer.
                let bound = bound
                    + if t.spec.suite().code.is_some() {
                        CODE_FETCH_MS
                    } else {
                        0
                    };
                t.state == testmesh_consensus::task::TaskState::Assigned
                    && t.attempt == r.attempt
                    && now.0.saturating_sub(r.since.0) >= bound
            })
        })
        .map(|r| (r.task, r.attempt))
        .take(MAX_GIVE_BACK)
        .collect()
}

#[cfg(test)]
mod tests {
    use testmesh_consensus::task::TaskState;

    use super::*;
    use crate::core::submit::{Amount, TaskRequest, to_spec};
    use crate::core::testing::TestNode;

    fn control(node: &TestNode) -> Control {
        Control {
            core: node.core.clone(),
            options: Options::default(),
            liveness: Liveness::new(node.core.clock.clone()),
            dead_after: Duration::from_secs(10),
            stats_fresh: Duration::from_secs(3),
            predicted: Default::default(),
            retention: Default::default(),
        }
    }

    async fn submit(node: &TestNode, n: usize, cpus: f64) -> Vec<TaskId> {
        let spec = to_spec(&TaskRequest {
            command: vec!["true".into()],
            cpu: Some(Amount::Number(cpus)),
            ..Default::default()
        })
        .unwrap();
        match node
            .write(Command::Submit {
                request_id: format!("r{n}-{cpus}"),
                tasks: vec![spec; n],
                at: node.core.now(),
            })
            .await
        {
            Applied::Submitted { tasks, .. } => tasks,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_round_places_what_fits_and_leaves_the_rest_pending() {
        let node = TestNode::start().await;
        node.register(NodeId(2), 4, 0).await;
        let tasks = submit(&node, 6, 1.0).await;
        let c = control(&node);
        // Not heard from by this leader yet (a node that died just before an election looks
        // the same): nothing is placed there.
        c.round().await;
        assert_eq!(node.core.ledger.read().active_on(NodeId(2)).count(), 0);
        c.liveness.seen(NodeId(2));
        c.round().await;
        let l = node.core.ledger.read();
        let states: Vec<TaskState> = tasks.iter().map(|t| l.task(*t).unwrap().state).collect();
        let assigned = states.iter().filter(|s| **s == TaskState::Assigned).count();
        assert_eq!(assigned, 4, "{states:?}");
        assert!(l.active_on(NodeId(2)).count() == 4);
        drop(l);
        node.stop().await;
    }

    #[tokio::test]
    async fn a_worker_silent_for_dead_after_is_marked_lost_and_not_before() {
        let node = TestNode::start().await;
        node.register(NodeId(2), 4, 0).await;
        let c = control(&node);
        c.liveness.seen(NodeId(2));
        node.clock.advance(Duration::from_secs(9));
        c.find_dead().await;
        assert_eq!(
            node.core.ledger.read().worker(NodeId(2)).unwrap().state,
            WorkerState::Active
        );
        node.clock.advance(Duration::from_secs(2));
        c.find_dead().await;
        assert_eq!(
            node.core.ledger.read().worker(NodeId(2)).unwrap().state,
            WorkerState::Lost
        );
        node.stop().await;
    }

    #[tokio::test]
    async fn an_assignment_not_started_in_time_is_given_back() {
        let node = TestNode::start().await;
        node.register(NodeId(2), 4, 0).await;
        let task = submit(&node, 1, 1.0).await[0];
        let c = control(&node);
        c.liveness.seen(NodeId(2));
        c.round().await;
        let state = || node.core.ledger.read().task(task).unwrap().state;
        assert_eq!(state(), TaskState::Assigned);
        // Worker 2 never starts it (its agent is wedged; it still answers Raft).
        node.clock.advance(Duration::from_secs(19));
        c.give_back_unstarted().await;
        assert_eq!(
            state(),
            TaskState::Assigned,
            "not before the bound (2 x dead_after)"
        );
        node.clock.advance(Duration::from_secs(2));
        c.give_back_unstarted().await;
        assert_eq!(
            state(),
            TaskState::Pending,
            "given back, though it has no retries"
        );
        let l = node.core.ledger.read();
        let t = l.task(task).unwrap();
        let why = t.attempts[0].outcome.as_ref().unwrap().message.as_deref();
        assert!(why.unwrap().contains("did not start it in time"), "{why:?}");
        drop(l);
        node.stop().await;
    }

    fn predicted<'a>(
        c: &Control,
        l: &'a testmesh_consensus::Ledger,
    ) -> Vec<planner::PendingView<'a>> {
        let models = c.core.models.current();
        let mut cache = c.predicted.lock().unwrap();
        planner::pending_of(l)
            .map(|p| c.with_prediction(l, models.as_deref(), &mut cache, p))
            .collect()
    }

    #[tokio::test]
    async fn predictions_are_made_once_per_model_generation() {
        let node = TestNode::start().await;
        node.register(NodeId(2), 1, 0).await;
        submit(&node, 3, 1.0).await;
        let c = control(&node);
        // Without models nothing is predicted and nothing is cached.
        {
            let l = node.core.ledger.read();
            let q = predicted(&c, &l);
            assert!(q.iter().all(|p| p.predicted_secs.is_none()));
        }
        assert!(c.predicted.lock().unwrap().1.is_empty());
        node.core.models.refresh().await.unwrap();
        {
            let l = node.core.ledger.read();
            predicted(&c, &l);
        }
        let (generation, cached) = {
            let g = c.predicted.lock().unwrap();
            (g.0, g.1.len())
        };
        assert_eq!(generation, node.core.models.current().unwrap().generation);
        assert_eq!(cached, 3);
        node.stop().await;
    }
}
