//! The autoscaler's edge, on the leader: builds the snapshot, asks the pure autoscaler
//! (`planner::autoscaler`), writes what it decided to the ledger BEFORE calling any provider,
//! and carries it out — launches, drains, terminations — in background tasks. It also keeps the
//! providers honest: instances that never join are terminated at their deadline, and on every
//! leadership change (and every 30 s) the providers' listings are reconciled with the ledger:
//! lost launches are redone under the same intent (idempotent), orphans are terminated.
//!
//! Provider operations run in a `JoinSet` the loop owns (one per intent at a time, see
//! `Shared::busy`), so they stop with it.

mod ops;
pub mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testmesh_consensus::scaling::{DecisionKind, DecisionRecord, ScalingCommand};
use testmesh_consensus::{Applied, Command, NodeId, UnixMillis};
use testmesh_planner::autoscaler::{self, Action};
use testmesh_providers::Provider;
use thiserror::Error;
use tokio::sync::watch;

use crate::core::Core;
use crate::core::leadership::Term;
use crate::core::scaler::lock;

/// Provider operations under way (launches, terminations).
type Ops = tokio::task::JoinSet<()>;

/// Why a scaling command did not take effect (already logged where it happened).
#[derive(Debug, Error)]
pub enum ScalingWriteError {
    #[error("refused by the ledger: {0}")]
    Refused(testmesh_consensus::Rejected),
    #[error("not committed: {0}")]
    NotCommitted(crate::core::writer::WriteError),
}

/// How often the leader reconsiders.
const TICK: Duration = Duration::from_millis(500);
/// How often providers' listings are reconciled with the ledger besides leadership changes.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// A hold is recorded again after this long (holds are frequent; their history need not be).
const HOLD_RECORD_EVERY: Duration = Duration::from_secs(60);

pub struct Scaler {
    pub core: Core,
    /// This node's mesh addresses (with `/p2p/ID`), the default join addresses.
    pub own_addrs: Vec<String>,
    /// Given to new instances only when they cannot enrol (no API address they can reach).
    pub swarm_key: String,
    /// Where new instances enrol (`--enrol`): this node's API as they can reach it, and its
    /// certificate's fingerprint when it serves HTTPS.
    pub enrol: EnrolPoint,
}

/// This node's API as new instances would reach it (see [`EnrolPoint::url_for`]).
#[derive(Debug, Clone, Default)]
pub struct EnrolPoint {
    /// `http(s)://ADDR:PORT` as bound (may be 0.0.0.0 or loopback).
    pub bound: String,
    /// `--advertise-http`: the URL others reach this node's API at.
    pub advertised: Option<String>,
    pub fingerprint: Option<String>,
}

impl EnrolPoint {
    /// The URL an instance of a local (same host) or remote provider can enrol at, if any: the
    /// advertised one; else the bound one when it is a routable address, or the address of this
    /// node's first routable mesh address when bound to every address; a loopback API serves
    /// only instances on this host. `None`: the instance must be given the swarm key instead.
    pub fn url_for(&self, local: bool, own_addrs: &[String]) -> Option<String> {
        if let Some(a) = &self.advertised {
            return Some(a.clone());
        }
        let (scheme, rest) = self.bound.split_once("://")?;
        let addr: std::net::SocketAddr = rest.parse().ok()?;
        let ip = addr.ip();
        if ip.is_loopback() {
            return local.then(|| self.bound.clone());
        }
        if !ip.is_unspecified() {
            return Some(self.bound.clone());
        }
        own_addrs.iter().find_map(|a| {
            let m: libp2p::Multiaddr = a.parse().ok()?;
            m.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::Ip4(v4) if !v4.is_loopback() => {
                    Some(format!("{scheme}://{v4}:{}", addr.port()))
                }
                _ => None,
            })
        })
    }
}

impl Scaler {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let clock = this.core.clock.clone();
        let mut ops = Ops::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut term: Option<u64> = None;
        let mut last_reconcile = clock.instant();
        let mut last_hold: Option<Instant> = None;
        let mut idle_since: HashMap<NodeId, UnixMillis> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    ops.abort_all();
                    return;
                }
                Some(_) = ops.join_next(), if !ops.is_empty() => continue,
                _ = tick.tick() => {}
            }
            let Term {
                leader,
                term: current,
            } = this.core.leadership.term();
            if leader != Some(this.core.node) {
                term = None;
                lock(&this.core.scaler).view.leading = false;
                continue;
            }
            if term != Some(current) {
                term = Some(current);
                lock(&this.core.scaler).view.leading = true;
                this.ensure_cluster_id().await;
                this.connect_providers().await;
                ops::reconcile(this.clone(), &mut ops).await;
                last_reconcile = clock.instant();
            } else if clock.instant().duration_since(last_reconcile) >= RECONCILE_EVERY {
                this.connect_providers().await;
                ops::reconcile(this.clone(), &mut ops).await;
                last_reconcile = clock.instant();
            }
            let now = clock.now();
            track(&this, now, &mut idle_since);
            let latest = this.core.stats.latest_all().await;
            let Some((decision, record)) = this.decide(now, &idle_since, &latest) else {
                continue;
            };
            lock(&this.core.scaler).view.last_reason = Some(decision.reason.clone());
            match decision.action {
                Action::Hold => {
                    let due = last_hold
                        .is_none_or(|t| clock.instant().duration_since(t) >= HOLD_RECORD_EVERY);
                    if due {
                        last_hold = Some(clock.instant());
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
                            ops::spawn_launch(this.clone(), intent, &mut ops);
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
            ops::maintain(this.clone(), now, &mut ops).await;
        }
    }

    /// The autoscaler's decision now and its record (None when scaling is off).
    fn decide(
        &self,
        now: UnixMillis,
        idle_since: &HashMap<NodeId, UnixMillis>,
        latest: &HashMap<NodeId, crate::stats::Point>,
    ) -> Option<(autoscaler::Decision, DecisionRecord)> {
        let models = self.core.models.current();
        let unavailable = self.unavailable();
        let ledger = self.core.ledger.read();
        let snap = snapshot::build(&snapshot::Inputs {
            now,
            ledger: &ledger,
            latest,
            predictor: models.as_deref().map(|m| &m.duration),
            catalogue: &self.core.catalogue,
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
        let s = lock(&self.core.scaler);
        let policy = self.core.ledger.read().scaling().policy().providers.clone();
        let now = self.core.clock.instant();
        policy
            .into_iter()
            .filter(|name| match s.providers.get(name) {
                None => true,
                Some(p) => p.connected.is_none() || p.backoff_until.is_some_and(|t| t > now),
            })
            .collect()
    }

    async fn ensure_cluster_id(&self) {
        if self.core.ledger.read().scaling().cluster_id().is_some() {
            return;
        }
        // Lowercase hex: valid in every provider's names, tags and labels.
        let id = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let _ = self.write(ScalingCommand::SetClusterId { id }).await;
    }

    async fn connect_providers(&self) {
        let todo: Vec<(String, crate::config::providers::FileProvider)> = lock(&self.core.scaler)
            .providers
            .iter()
            .filter(|(_, p)| p.connected.is_none())
            .map(|(n, p)| (n.clone(), p.spec.clone()))
            .collect();
        for (name, spec) in todo {
            let r = spec.connect(&self.core.data_dir).await;
            let mut s = lock(&self.core.scaler);
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

    /// Writes a scaling command and returns what it applied.
    pub(crate) async fn write(&self, cmd: ScalingCommand) -> Result<Applied, ScalingWriteError> {
        let cmd = Command::Scaling {
            cmd,
            at: self.core.now(),
        };
        let r = match self.core.writer.write(cmd).await {
            Ok(Ok(a)) => return Ok(a),
            Ok(Err(r)) => ScalingWriteError::Refused(r),
            Err(e) => ScalingWriteError::NotCommitted(e),
        };
        tracing::debug!("scaling command: {r}");
        Err(r)
    }

    /// Records a provider failure and backs it off exponentially (5 s, 10 s, ... 10 min).
    pub(crate) fn failed(&self, provider: &str, error: &str) {
        let mut s = lock(&self.core.scaler);
        if let Some(p) = s.providers.get_mut(provider) {
            p.failures += 1;
            p.errors_total += 1;
            let secs = (5u64 << p.failures.min(7)).min(600) / 2;
            p.backoff_until = Some(self.core.clock.instant() + Duration::from_secs(secs));
            p.error = Some(error.to_string());
        }
    }

    pub(crate) fn succeeded(&self, provider: &str) {
        let mut s = lock(&self.core.scaler);
        if let Some(p) = s.providers.get_mut(provider) {
            p.failures = 0;
            p.backoff_until = None;
            p.error = None;
        }
    }

    pub(crate) fn provider(&self, name: &str) -> Option<Arc<dyn Provider>> {
        lock(&self.core.scaler)
            .providers
            .get(name)?
            .connected
            .clone()
    }
}

fn track(this: &Scaler, now: UnixMillis, idle_since: &mut HashMap<NodeId, UnixMillis>) {
    snapshot::track_idle(&this.core.ledger.read(), now, idle_since);
}
