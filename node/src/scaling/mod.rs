//! The autoscaler's edge, on the leader: builds the snapshot, asks the pure autoscaler
//! (`planner::autoscaler`), writes what it decided to the ledger BEFORE calling any provider,
//! and carries it out — launches, drains, terminations — in background tasks. It also keeps the
//! providers honest: instances that never join are terminated at their deadline, and on every
//! leadership change (and every 30 s) the providers' listings are reconciled with the ledger:
//! lost launches are redone under the same intent (idempotent), orphans are terminated.

pub mod config;
mod ops;
pub mod snapshot;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use testmesh_consensus::scaling::{DecisionKind, DecisionRecord, ScalingCommand};
use testmesh_consensus::store::LedgerReader;
use testmesh_consensus::{Applied, Command, NodeId, UnixMillis};
use testmesh_providers::Provider;
use tokio::sync::watch;

use crate::clock;
use crate::control::SharedPredictor;
use crate::stats::SharedStats;
use crate::writer::Writer;
use testmesh_planner::autoscaler::{self, Action};
use testmesh_planner::catalogue::InstanceType;

/// How often the leader reconsiders.
const TICK: Duration = Duration::from_millis(500);
/// How often providers' listings are reconciled with the ledger besides leadership changes.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// A hold is recorded again after this long (holds are frequent; their history need not be).
const HOLD_RECORD_EVERY: Duration = Duration::from_secs(60);

/// A configured provider, connected once it first answers.
pub struct ProviderEntry {
    pub spec: config::FileProvider,
    pub connected: Option<Arc<dyn Provider>>,
    pub error: Option<String>,
    failures: u32,
    /// Failures ever (for the metrics; `failures` counts the current run of them).
    errors_total: u64,
    backoff_until: Option<Instant>,
}

impl ProviderEntry {
    pub fn new(spec: config::FileProvider) -> Self {
        ProviderEntry {
            spec,
            connected: None,
            error: None,
            failures: 0,
            errors_total: 0,
            backoff_until: None,
        }
    }
}

/// What the API shows of the scaler on this node.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScalerView {
    pub leading: bool,
    pub last_reason: Option<String>,
    pub providers: Vec<ProviderView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProviderView {
    pub name: String,
    pub kind: String,
    pub connected: bool,
    pub failures: u32,
    pub errors_total: u64,
    pub backoff_secs: Option<f64>,
    pub error: Option<String>,
}

/// State shared between the loop and the operations it spawns.
pub struct Shared {
    pub providers: BTreeMap<String, ProviderEntry>,
    /// Intents with a launch or termination under way on this node.
    pub busy: HashSet<u64>,
    pub view: ScalerView,
}

pub type SharedScaler = Arc<Mutex<Shared>>;

pub fn shared(providers: Vec<config::FileProvider>) -> SharedScaler {
    Arc::new(Mutex::new(Shared {
        providers: providers
            .into_iter()
            .map(|p| (p.name(), ProviderEntry::new(p)))
            .collect(),
        busy: HashSet::new(),
        view: ScalerView::default(),
    }))
}

pub(crate) fn lock(s: &SharedScaler) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Scaler {
    pub node: NodeId,
    pub reader: LedgerReader,
    pub writer: Writer,
    pub stats: SharedStats,
    pub predictor: SharedPredictor,
    pub catalogue: Vec<InstanceType>,
    pub shared: SharedScaler,
    /// This node's mesh addresses (with `/p2p/ID`), the default join addresses.
    pub own_addrs: Vec<String>,
    pub swarm_key: String,
    pub data_dir: PathBuf,
}

impl Scaler {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut term: Option<u64> = None;
        let mut last_reconcile = clock::instant();
        let mut last_hold: Option<Instant> = None;
        let mut idle_since: HashMap<NodeId, UnixMillis> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let (leader, current) = {
                let m = this.writer.raft().metrics();
                let m = m.borrow();
                (m.current_leader, m.current_term)
            };
            if leader != Some(this.node) {
                term = None;
                lock(&this.shared).view.leading = false;
                continue;
            }
            if term != Some(current) {
                term = Some(current);
                lock(&this.shared).view.leading = true;
                this.ensure_cluster_id().await;
                this.connect_providers().await;
                ops::reconcile(this.clone()).await;
                last_reconcile = clock::instant();
            } else if clock::instant().duration_since(last_reconcile) >= RECONCILE_EVERY {
                this.connect_providers().await;
                ops::reconcile(this.clone()).await;
                last_reconcile = clock::instant();
            }
            let now = clock::now();
            track(&this, now, &mut idle_since);
            let Some((decision, record)) = this.decide(now, &idle_since) else {
                continue;
            };
            lock(&this.shared).view.last_reason = Some(decision.reason.clone());
            match decision.action {
                Action::Hold => {
                    let due = last_hold
                        .is_none_or(|t| clock::instant().duration_since(t) >= HOLD_RECORD_EVERY);
                    if due {
                        last_hold = Some(clock::instant());
                        let _ = this.write(ScalingCommand::Decide { record }).await;
                    }
                }
                Action::Up(_) => {
                    last_hold = None;
                    tracing::info!("scale up: {}", record.reason);
                    if let Ok(Applied::Scaling(
                        testmesh_consensus::scaling::ScalingApplied::Intents(ids),
                    )) = this.write(ScalingCommand::Decide { record }).await
                    {
                        for intent in ids {
                            ops::spawn_launch(this.clone(), intent);
                        }
                    }
                }
                Action::Down(nodes) => {
                    last_hold = None;
                    tracing::info!("scale down: {}", record.reason);
                    if this.write(ScalingCommand::Decide { record }).await.is_ok() {
                        ops::drain(&this, &nodes).await;
                    }
                }
            }
            ops::maintain(this.clone(), now).await;
        }
    }

    /// The autoscaler's decision now and its record (None when scaling is off).
    fn decide(
        &self,
        now: UnixMillis,
        idle_since: &HashMap<NodeId, UnixMillis>,
    ) -> Option<(autoscaler::Decision, DecisionRecord)> {
        let predictor = self
            .predictor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone();
        let unavailable = self.unavailable();
        let ledger = self.reader.read();
        let stats = self.stats.read().unwrap_or_else(|e| e.into_inner());
        let snap = snapshot::build(&snapshot::Inputs {
            now,
            ledger: &ledger,
            stats: &stats,
            predictor: predictor.as_deref(),
            catalogue: &self.catalogue,
            idle_since,
            unavailable,
        });
        if !snap.policy.enabled {
            return None;
        }
        let d = autoscaler::decide(&snap);
        let (kind, launches, remove) = match &d.action {
            Action::Up(l) => (DecisionKind::Up, l.clone(), Vec::new()),
            Action::Down(n) => (DecisionKind::Down, Vec::new(), n.clone()),
            Action::Hold => (DecisionKind::Hold, Vec::new(), Vec::new()),
        };
        let record = DecisionRecord {
            at: now,
            kind,
            launches,
            remove,
            reason: d.reason.clone(),
            pending_tasks: snap.pending_tasks,
            unschedulable_tasks: snap.unschedulable.len() as u32,
            managed_workers: d.managed_workers,
            in_flight: d.in_flight,
            hourly_cost_micros: d.hourly_cost_micros,
        };
        Some((d, record))
    }

    /// Providers that may not be used now: not configured here, not connected, or backing off.
    fn unavailable(&self) -> BTreeSet<String> {
        let s = lock(&self.shared);
        let policy = self.reader.read().scaling().policy().providers.clone();
        let now = clock::instant();
        policy
            .into_iter()
            .filter(|name| match s.providers.get(name) {
                None => true,
                Some(p) => p.connected.is_none() || p.backoff_until.is_some_and(|t| t > now),
            })
            .collect()
    }

    async fn ensure_cluster_id(&self) {
        if self.reader.read().scaling().cluster_id().is_some() {
            return;
        }
        // Lowercase hex: valid in every provider's names, tags and labels.
        let id = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let _ = self.write(ScalingCommand::SetClusterId { id }).await;
    }

    async fn connect_providers(&self) {
        let todo: Vec<(String, config::FileProvider)> = lock(&self.shared)
            .providers
            .iter()
            .filter(|(_, p)| p.connected.is_none())
            .map(|(n, p)| (n.clone(), p.spec.clone()))
            .collect();
        for (name, spec) in todo {
            let r = spec.connect(&self.data_dir).await;
            let mut s = lock(&self.shared);
            let Some(p) = s.providers.get_mut(&name) else {
                continue;
            };
            match r {
                Ok(c) => {
                    p.connected = Some(c);
                    p.error = None;
                }
                Err(e) => {
                    tracing::warn!("provider {name}: {e}");
                    p.error = Some(e.to_string());
                }
            }
        }
    }

    /// Writes a scaling command; the applied result, or None when it did not commit.
    pub(crate) async fn write(&self, cmd: ScalingCommand) -> Result<Applied, ()> {
        match self
            .writer
            .write(Command::Scaling {
                cmd,
                at: clock::now(),
            })
            .await
        {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(r)) => {
                tracing::debug!("scaling command refused: {r}");
                Err(())
            }
            Err(e) => {
                tracing::debug!("scaling command not committed: {e}");
                Err(())
            }
        }
    }

    /// Records a provider failure and backs it off exponentially (5 s, 10 s, ... 10 min).
    pub(crate) fn failed(&self, provider: &str, error: &str) {
        let mut s = lock(&self.shared);
        if let Some(p) = s.providers.get_mut(provider) {
            p.failures += 1;
            p.errors_total += 1;
            let secs = (5u64 << p.failures.min(7)).min(600) / 2;
            p.backoff_until = Some(clock::instant() + Duration::from_secs(secs));
            p.error = Some(error.to_string());
        }
    }

    pub(crate) fn succeeded(&self, provider: &str) {
        let mut s = lock(&self.shared);
        if let Some(p) = s.providers.get_mut(provider) {
            p.failures = 0;
            p.backoff_until = None;
            p.error = None;
        }
    }

    pub(crate) fn provider(&self, name: &str) -> Option<Arc<dyn Provider>> {
        lock(&self.shared).providers.get(name)?.connected.clone()
    }
}

fn track(this: &Scaler, now: UnixMillis, idle_since: &mut HashMap<NodeId, UnixMillis>) {
    snapshot::track_idle(&this.reader.read(), now, idle_since);
}

/// The API's view: what this node's scaler knows (only the leader's is active).
pub fn view(shared: &SharedScaler) -> ScalerView {
    let s = lock(shared);
    let now = clock::instant();
    let mut v = s.view.clone();
    v.providers = s
        .providers
        .iter()
        .map(|(name, p)| ProviderView {
            name: name.clone(),
            kind: p.spec.kind().to_string(),
            connected: p.connected.is_some(),
            failures: p.failures,
            errors_total: p.errors_total,
            backoff_secs: p
                .backoff_until
                .filter(|t| *t > now)
                .map(|t| (t - now).as_secs_f64()),
            error: p.error.clone(),
        })
        .collect();
    v
}
