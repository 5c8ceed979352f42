//! The replicated side of autoscaling: the policy, every cloud instance the cluster asked for
//! (from the launch intent written BEFORE the provider is called, to its end), and the history
//! of scaling decisions. The autoscaler's logic is elsewhere (pure, in the node's planner); the
//! leader's control loop writes what it decided and what the providers answered.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::Rejected;
use crate::model::{NodeId, UnixMillis};

/// Worker label carrying the launch intent a worker was started for.
pub const INTENT_LABEL: &str = "testmesh.intent";
/// Scaling decisions kept; older ones are dropped.
pub const DECISION_LIMIT: usize = 1_000;
/// Ended instances kept; older ones are dropped (running ones are always kept).
pub const ENDED_LIMIT: usize = 1_000;

/// Dollars in millionths (the ledger holds no floats: it must compare equal on every replica).
pub type Micros = u64;

/// Limits of one provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderLimits {
    pub min: u32,
    pub max: u32,
}

/// How the cluster may scale; set with `testmesh policy set`, replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalingPolicy {
    pub enabled: bool,
    /// Managed (launched) workers, all providers together.
    pub min_workers: u32,
    pub max_workers: u32,
    pub per_provider: BTreeMap<String, ProviderLimits>,
    /// Providers in order of preference; the next is used when one keeps failing.
    pub providers: Vec<String>,
    pub scale_up_cooldown_ms: u64,
    pub scale_down_cooldown_ms: u64,
    /// A worker is removed only if the rest would stay at or below this reserved share.
    pub target_utilisation_pct: u32,
    /// A managed worker with no task for this long, and below `idle_cpu_pct`, is removed.
    pub idle_timeout_ms: u64,
    pub idle_cpu_pct: u32,
    /// Most instances launched or removed by one decision.
    pub max_step: u32,
    /// Dollars per hour the managed instances may cost together; `None`: no budget.
    pub budget_micros_per_hour: Option<Micros>,
    /// An instance that has not joined this long after its launch is terminated.
    pub registration_deadline_ms: u64,
}

impl Default for ScalingPolicy {
    fn default() -> Self {
        ScalingPolicy {
            enabled: false,
            min_workers: 0,
            max_workers: 10,
            per_provider: BTreeMap::new(),
            providers: Vec::new(),
            scale_up_cooldown_ms: 5_000,
            scale_down_cooldown_ms: 60_000,
            target_utilisation_pct: 70,
            idle_timeout_ms: 300_000,
            idle_cpu_pct: 10,
            max_step: 5,
            budget_micros_per_hour: None,
            registration_deadline_ms: 180_000,
        }
    }
}

impl ScalingPolicy {
    /// Checks the policy on its own; says what is wrong otherwise.
    pub fn validate(&self) -> Result<(), String> {
        if self.min_workers > self.max_workers {
            return Err(format!(
                "min_workers {} is above max_workers {}",
                self.min_workers, self.max_workers
            ));
        }
        for (p, l) in &self.per_provider {
            if l.min > l.max {
                return Err(format!(
                    "provider {p}: min {} is above max {}",
                    l.min, l.max
                ));
            }
        }
        if self.max_step == 0 {
            return Err("max_step must be at least 1".into());
        }
        if self.target_utilisation_pct == 0 || self.target_utilisation_pct > 100 {
            return Err("target_utilisation_pct must be 1..=100".into());
        }
        if self.idle_cpu_pct > 100 {
            return Err("idle_cpu_pct must be 0..=100".into());
        }
        if self.registration_deadline_ms < 1_000 {
            return Err("registration_deadline must be at least 1s".into());
        }
        if self.enabled && self.providers.is_empty() {
            return Err("an enabled policy needs at least one provider".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// The intent is written; the provider may or may not have been asked yet.
    Requested,
    /// The provider accepted the launch.
    Launched,
    /// Its worker registered.
    Joined,
    /// Being emptied before termination.
    Draining,
    /// Terminated on purpose.
    Terminated,
    /// The launch failed, it never joined, or it vanished.
    Failed,
}

impl InstanceState {
    pub fn is_ended(self) -> bool {
        matches!(self, InstanceState::Terminated | InstanceState::Failed)
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InstanceState::Requested => "requested",
            InstanceState::Launched => "launched",
            InstanceState::Joined => "joined",
            InstanceState::Draining => "draining",
            InstanceState::Terminated => "terminated",
            InstanceState::Failed => "failed",
        })
    }
}

/// One instance the cluster asked a provider for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudInstance {
    /// The launch intent id: also the provider's idempotency token and a tag on the instance.
    pub intent: u64,
    pub provider: String,
    pub instance_type: String,
    pub price_micros_per_hour: Micros,
    pub state: InstanceState,
    pub provider_id: Option<String>,
    pub worker: Option<NodeId>,
    pub requested_at: UnixMillis,
    pub launched_at: Option<UnixMillis>,
    pub joined_at: Option<UnixMillis>,
    pub ended_at: Option<UnixMillis>,
    /// Why it ended, in words.
    pub end_reason: Option<String>,
}

/// One instance type asked for by a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchRequest {
    pub provider: String,
    pub instance_type: String,
    pub count: u32,
    pub price_micros_per_hour: Micros,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Up,
    Down,
    Hold,
}

/// A scaling decision as recorded: what, why, and the figures it was made on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub at: UnixMillis,
    pub kind: DecisionKind,
    pub launches: Vec<LaunchRequest>,
    pub remove: Vec<NodeId>,
    pub reason: String,
    pub pending_tasks: u32,
    pub unschedulable_tasks: u32,
    pub managed_workers: u32,
    pub in_flight: u32,
    pub hourly_cost_micros: Micros,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScalingCommand {
    /// Names the cluster on its instances' tags; only the first one counts.
    SetClusterId {
        id: String,
    },
    SetPolicy {
        policy: ScalingPolicy,
    },
    /// Records a decision; for a scale-up, creates one `Requested` instance per launch (the
    /// intents), whose ids come back in [`ScalingApplied::Intents`].
    Decide {
        record: DecisionRecord,
    },
    Launched {
        intent: u64,
        provider_id: String,
    },
    Draining {
        intent: u64,
    },
    Terminated {
        intent: u64,
        reason: String,
    },
    Failed {
        intent: u64,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScalingApplied {
    Done,
    Intents(Vec<u64>),
}

/// The scaling part of the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scaling {
    cluster_id: Option<String>,
    policy: ScalingPolicy,
    instances: BTreeMap<u64, CloudInstance>,
    /// Ended instances in the order they ended, to drop the oldest.
    ended: VecDeque<u64>,
    decisions: VecDeque<DecisionRecord>,
    next_intent: u64,
}

impl Scaling {
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    pub fn policy(&self) -> &ScalingPolicy {
        &self.policy
    }

    pub fn instances(&self) -> impl DoubleEndedIterator<Item = &CloudInstance> {
        self.instances.values()
    }

    pub fn instance(&self, intent: u64) -> Option<&CloudInstance> {
        self.instances.get(&intent)
    }

    /// The instance a worker was launched for.
    pub fn instance_of(&self, worker: NodeId) -> Option<&CloudInstance> {
        self.instances
            .values()
            .rev()
            .find(|i| i.worker == Some(worker))
    }

    /// Decisions, oldest first (the last [`DECISION_LIMIT`]).
    pub fn decisions(&self) -> impl DoubleEndedIterator<Item = &DecisionRecord> {
        self.decisions.iter()
    }

    pub fn apply(
        &mut self,
        cmd: &ScalingCommand,
        at: UnixMillis,
    ) -> Result<ScalingApplied, Rejected> {
        match cmd {
            ScalingCommand::SetClusterId { id } => {
                if id.is_empty() || id.len() > 64 {
                    return Err(Rejected::InvalidScaling(
                        "cluster id must be 1-64 bytes".into(),
                    ));
                }
                self.cluster_id.get_or_insert_with(|| id.clone());
            }
            ScalingCommand::SetPolicy { policy } => {
                policy.validate().map_err(Rejected::InvalidScaling)?;
                self.policy = policy.clone();
            }
            ScalingCommand::Decide { record } => {
                let mut ids = Vec::new();
                for l in &record.launches {
                    if l.count == 0 || l.provider.is_empty() || l.instance_type.is_empty() {
                        return Err(Rejected::InvalidScaling(
                            "a launch needs a provider, a type and a count".into(),
                        ));
                    }
                }
                // A launch decided from a ledger that did not yet show instances launched since
                // (its commit stalled, and the next decision was made without it) would breach
                // the caps and the budget it was checked against: refuse it.
                let live = self
                    .instances
                    .values()
                    .filter(|i| !i.state.is_ended())
                    .count();
                if !record.launches.is_empty() && live > record.managed_workers as usize {
                    return Err(Rejected::InvalidScaling(format!(
                        "stale scale-up: decided with {} live instance(s), there are {live} now",
                        record.managed_workers
                    )));
                }
                for l in &record.launches {
                    for _ in 0..l.count {
                        self.next_intent += 1;
                        let intent = self.next_intent;
                        ids.push(intent);
                        self.instances.insert(
                            intent,
                            CloudInstance {
                                intent,
                                provider: l.provider.clone(),
                                instance_type: l.instance_type.clone(),
                                price_micros_per_hour: l.price_micros_per_hour,
                                state: InstanceState::Requested,
                                provider_id: None,
                                worker: None,
                                requested_at: at,
                                launched_at: None,
                                joined_at: None,
                                ended_at: None,
                                end_reason: None,
                            },
                        );
                    }
                }
                self.decisions.push_back(record.clone());
                while self.decisions.len() > DECISION_LIMIT {
                    self.decisions.pop_front();
                }
                return Ok(ScalingApplied::Intents(ids));
            }
            ScalingCommand::Launched {
                intent,
                provider_id,
            } => {
                let i = self.live(*intent)?;
                // A launch confirmed again (a retried call, a reconcile) keeps its state.
                if i.state == InstanceState::Requested {
                    i.state = InstanceState::Launched;
                    i.launched_at = Some(at);
                }
                i.provider_id = Some(provider_id.clone());
            }
            ScalingCommand::Draining { intent } => {
                let i = self.live(*intent)?;
                i.state = InstanceState::Draining;
            }
            ScalingCommand::Terminated { intent, reason } => {
                self.end(*intent, InstanceState::Terminated, reason, at)?;
            }
            ScalingCommand::Failed { intent, reason } => {
                self.end(*intent, InstanceState::Failed, reason, at)?;
            }
        }
        Ok(ScalingApplied::Done)
    }

    /// A worker registered: if it carries an intent label, that instance has joined.
    pub fn worker_registered(
        &mut self,
        worker: NodeId,
        labels: &BTreeMap<String, String>,
        at: UnixMillis,
    ) {
        let Some(intent) = labels.get(INTENT_LABEL).and_then(|v| v.parse::<u64>().ok()) else {
            return;
        };
        if let Some(i) = self.instances.get_mut(&intent)
            && matches!(i.state, InstanceState::Requested | InstanceState::Launched)
        {
            i.state = InstanceState::Joined;
            i.worker = Some(worker);
            i.joined_at = Some(at);
            i.launched_at.get_or_insert(at);
        }
    }

    fn live(&mut self, intent: u64) -> Result<&mut CloudInstance, Rejected> {
        let i = self
            .instances
            .get_mut(&intent)
            .ok_or(Rejected::UnknownIntent(intent))?;
        if i.state.is_ended() {
            return Err(Rejected::InstanceEnded {
                intent,
                state: i.state.to_string(),
            });
        }
        Ok(i)
    }

    fn end(
        &mut self,
        intent: u64,
        state: InstanceState,
        reason: &str,
        at: UnixMillis,
    ) -> Result<(), Rejected> {
        let i = self.live(intent)?;
        i.state = state;
        i.ended_at = Some(at);
        i.end_reason = Some(reason.to_string());
        self.ended.push_back(intent);
        while self.ended.len() > ENDED_LIMIT {
            if let Some(old) = self.ended.pop_front() {
                self.instances.remove(&old);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(s: &mut Scaling, count: u32) -> Vec<u64> {
        let live = s.instances().filter(|i| !i.state.is_ended()).count() as u32;
        let record = DecisionRecord {
            at: UnixMillis(1),
            kind: DecisionKind::Up,
            launches: vec![LaunchRequest {
                provider: "docker".into(),
                instance_type: "small".into(),
                count,
                price_micros_per_hour: 100_000,
            }],
            remove: Vec::new(),
            reason: "backlog".into(),
            pending_tasks: 3,
            unschedulable_tasks: 3,
            managed_workers: live,
            in_flight: 0,
            hourly_cost_micros: 0,
        };
        match s
            .apply(&ScalingCommand::Decide { record }, UnixMillis(1))
            .unwrap()
        {
            ScalingApplied::Intents(ids) => ids,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_instance_goes_from_intent_to_joined_to_terminated() {
        let mut s = Scaling::default();
        let ids = decide(&mut s, 2);
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(s.instance(1).unwrap().state, InstanceState::Requested);
        s.apply(
            &ScalingCommand::Launched {
                intent: 1,
                provider_id: "c-1".into(),
            },
            UnixMillis(2),
        )
        .unwrap();
        let labels = BTreeMap::from([(INTENT_LABEL.to_string(), "1".to_string())]);
        s.worker_registered(NodeId(9), &labels, UnixMillis(3));
        let i = s.instance(1).unwrap();
        assert_eq!(
            (i.state, i.worker),
            (InstanceState::Joined, Some(NodeId(9)))
        );
        assert_eq!(s.instance_of(NodeId(9)).unwrap().intent, 1);
        s.apply(&ScalingCommand::Draining { intent: 1 }, UnixMillis(4))
            .unwrap();
        s.apply(
            &ScalingCommand::Terminated {
                intent: 1,
                reason: "idle".into(),
            },
            UnixMillis(5),
        )
        .unwrap();
        // Ended is final: nothing moves it again.
        let e = s
            .apply(&ScalingCommand::Draining { intent: 1 }, UnixMillis(6))
            .unwrap_err();
        assert!(matches!(e, Rejected::InstanceEnded { .. }), "{e}");
        assert!(matches!(
            s.apply(&ScalingCommand::Draining { intent: 99 }, UnixMillis(6)),
            Err(Rejected::UnknownIntent(99))
        ));
        assert_eq!(s.decisions().count(), 1);
    }

    #[test]
    fn a_late_joiner_of_an_ended_instance_does_not_revive_it() {
        let mut s = Scaling::default();
        decide(&mut s, 1);
        s.apply(
            &ScalingCommand::Failed {
                intent: 1,
                reason: "did not join within 3m".into(),
            },
            UnixMillis(2),
        )
        .unwrap();
        let labels = BTreeMap::from([(INTENT_LABEL.to_string(), "1".to_string())]);
        s.worker_registered(NodeId(9), &labels, UnixMillis(3));
        assert_eq!(s.instance(1).unwrap().state, InstanceState::Failed);
    }

    #[test]
    fn bad_policies_and_cluster_ids_are_refused_and_the_first_id_stays() {
        let mut s = Scaling::default();
        let bad = ScalingPolicy {
            min_workers: 5,
            max_workers: 2,
            ..Default::default()
        };
        let e = s
            .apply(&ScalingCommand::SetPolicy { policy: bad }, UnixMillis(1))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("min_workers 5 is above max_workers 2"),
            "{e}"
        );
        let no_provider = ScalingPolicy {
            enabled: true,
            ..Default::default()
        };
        assert!(
            s.apply(
                &ScalingCommand::SetPolicy {
                    policy: no_provider
                },
                UnixMillis(1)
            )
            .is_err()
        );
        for id in ["a", "b"] {
            s.apply(
                &ScalingCommand::SetClusterId { id: id.into() },
                UnixMillis(1),
            )
            .unwrap();
        }
        assert_eq!(s.cluster_id(), Some("a"));
    }

    #[test]
    fn ended_instances_are_bounded() {
        let mut s = Scaling::default();
        let ids = decide(&mut s, 3);
        for _ in 0..ENDED_LIMIT {
            decide(&mut s, 1);
        }
        for id in 1..=(ENDED_LIMIT as u64 + 3) {
            s.apply(
                &ScalingCommand::Failed {
                    intent: id,
                    reason: "x".into(),
                },
                UnixMillis(2),
            )
            .unwrap();
        }
        assert_eq!(s.instances().count(), ENDED_LIMIT);
        assert!(
            s.instance(ids[0]).is_none(),
            "the oldest ended ones go first"
        );
    }

    /// Regression: scale-ups decided while an earlier one's commit stalled all launched when
    /// the stall ended, past `max_workers` and the budget.
    #[test]
    fn a_scale_up_decided_from_a_stale_view_is_refused() {
        let mut s = Scaling::default();
        let stale = |s: &Scaling| {
            let mut r = s.decisions.back().cloned().expect("a decision");
            r.managed_workers = 0;
            r
        };
        decide(&mut s, 2);
        let r = s.apply(&ScalingCommand::Decide { record: stale(&s) }, UnixMillis(2));
        assert!(
            matches!(&r, Err(Rejected::InvalidScaling(m)) if m.contains("stale")),
            "{r:?}"
        );
        assert_eq!(s.instances().count(), 2, "nothing more was requested");
        // Decided from what the ledger shows: taken.
        assert_eq!(decide(&mut s, 1).len(), 1);
    }
}
