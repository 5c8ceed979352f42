//! What the scaler carries out: launches, drains, terminations, deadlines and reconciliation.
//! Provider calls run in background tasks (a Docker stop waits for the node inside to leave);
//! an intent has at most one operation under way on this node (`Shared::busy`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use testmesh_consensus::model::WorkerState;
use testmesh_consensus::scaling::{CloudInstance, INTENT_LABEL, InstanceState, ScalingCommand};
use testmesh_consensus::{Command, NodeId, UnixMillis};
use testmesh_providers::LaunchSpec;

use super::{Ops, Scaler};
use crate::core::scaler::lock;

const LAUNCH_TIMEOUT: Duration = Duration::from_secs(120);
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(90);
/// A `Requested` intent that no launch on this node is working on is relaunched after this
/// long (the leader that wrote it is gone); the launch is idempotent per intent.
const ORPHANED_INTENT_AFTER_MS: u64 = 10_000;
/// A launch this recent that a listing does not show yet is not taken for vanished: cloud
/// listings lag behind launches (EC2's are eventually consistent).
const VANISHED_AFTER_LAUNCH_MS: u64 = 60_000;

/// Claims `intent` for one operation; false when one is already under way.
fn claim(this: &Scaler, intent: u64) -> bool {
    lock(&this.core.scaler).busy.insert(intent)
}

fn release(this: &Scaler, intent: u64) {
    lock(&this.core.scaler).busy.remove(&intent);
}

pub fn spawn_launch(this: Arc<Scaler>, intent: u64, ops: &mut Ops) {
    if !claim(&this, intent) {
        return;
    }
    ops.spawn(async move {
        launch(&this, intent).await;
        release(&this, intent);
    });
}

async fn launch(this: &Scaler, intent: u64) {
    let (inst, cluster) = {
        let l = this.core.ledger.read();
        let s = l.scaling();
        match (s.instance(intent), s.cluster_id()) {
            (Some(i), Some(c)) if i.state == InstanceState::Requested => (i.clone(), c.to_string()),
            _ => return,
        }
    };
    let fail = |reason: String| async move {
        let _ = this.write(ScalingCommand::Failed { intent, reason }).await;
    };
    let Some(provider) = this.provider(&inst.provider) else {
        this.failed(&inst.provider, "not connected");
        return fail(format!(
            "provider {} is not configured or not reachable on the leader",
            inst.provider
        ))
        .await;
    };
    let Some(t) = this
        .core
        .catalogue
        .iter()
        .find(|t| t.provider == inst.provider && t.name == inst.instance_type)
    else {
        return fail(format!(
            "{}/{} is not in the leader's catalogue",
            inst.provider, inst.instance_type
        ))
        .await;
    };
    let token = match join_token_for(this, &inst).await {
        Ok(t) => t,
        Err(e) => return fail(format!("cannot make its join token: {e}")).await,
    };
    let mut node_args = node_args(this, &inst, t);
    node_args.extend(["--join-token".to_string(), token]);
    // Enrolment when the instance can reach this node's API: then the launch data carries no
    // swarm key, only the single-use token.
    let local = lock(&this.core.scaler)
        .providers
        .get(&inst.provider)
        .is_some_and(|p| p.spec.is_local());
    let swarm_key = match this.enrol.url_for(local, &this.own_addrs) {
        Some(url) => {
            node_args.extend(["--enrol".to_string(), url]);
            if let Some(fp) = &this.enrol.fingerprint {
                node_args.extend(["--enrol-fingerprint".to_string(), fp.clone()]);
            }
            String::new()
        }
        None => {
            tracing::warn!(
                "intent {intent}: no API address the instance can reach (this node serves \
                 loopback only; bind --http beyond loopback or set --advertise-http), so its \
                 launch data carries the swarm key"
            );
            this.swarm_key.clone()
        }
    };
    let spec = LaunchSpec {
        cluster_id: cluster,
        intent,
        instance_type: t.name.clone(),
        cpu_milli: t.cpu.0,
        memory_bytes: t.memory.0,
        gpus: t.gpus,
        gpu_model: t.gpu_model.clone(),
        gpu_memory_bytes: t.gpu_memory.0,
        node_args,
        swarm_key,
    };
    match tokio::time::timeout(LAUNCH_TIMEOUT, provider.launch(&spec)).await {
        Ok(Ok(provider_id)) => {
            this.succeeded(&inst.provider);
            tracing::info!("launched {} for intent {intent}: {provider_id}", t.key());
            let _ = this
                .write(ScalingCommand::Launched {
                    intent,
                    provider_id,
                })
                .await;
        }
        Ok(Err(e)) => {
            tracing::warn!("launch of intent {intent} failed: {e}");
            this.failed(&inst.provider, &e.to_string());
            fail(format!("launch failed: {e}")).await;
        }
        Err(_) => {
            this.failed(&inst.provider, "launch timed out");
            // Whatever it started is an orphan now: reconcile terminates it.
            fail(format!(
                "launch did not answer within {} s",
                LAUNCH_TIMEOUT.as_secs()
            ))
            .await;
        }
    }
}

/// A join token for the instance of one launch intent: one use, expiring at its registration
/// deadline, so a copy of the launch data read after the instance joined (or after the deadline)
/// admits nobody.
async fn join_token_for(this: &Scaler, inst: &CloudInstance) -> Result<String, String> {
    use testmesh_consensus::security::{JoinToken, SecurityCommand};
    let deadline = this
        .core
        .ledger
        .read()
        .scaling()
        .policy()
        .registration_deadline_ms;
    let m = crate::core::tokens::mint(crate::core::tokens::Kind::Join);
    let at = this.core.now();
    let cmd = SecurityCommand::CreateJoinToken(JoinToken {
        id: m.id,
        hash: m.hash,
        created_at: at,
        expires_at: UnixMillis(inst.requested_at.0.max(at.0) + deadline),
        uses_left: 1,
        note: format!("instance of launch intent {}", inst.intent),
    });
    match this.core.writer.write(Command::Security { cmd, at }).await {
        Ok(Ok(_)) => Ok(m.token),
        Ok(Err(r)) => Err(r.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The `testmesh node` arguments of a new worker: where to join and the labels that tie it to
/// its intent (and, for containers, its size).
fn node_args(
    this: &Scaler,
    inst: &CloudInstance,
    t: &testmesh_planner::catalogue::InstanceType,
) -> Vec<String> {
    let spec = lock(&this.core.scaler)
        .providers
        .get(&inst.provider)
        .map(|p| p.spec.clone());
    let mut args = Vec::new();
    let mut labels: BTreeMap<String, String> = BTreeMap::from([
        (INTENT_LABEL.to_string(), inst.intent.to_string()),
        ("testmesh.provider".to_string(), inst.provider.clone()),
        (
            "testmesh.instance_type".to_string(),
            inst.instance_type.clone(),
        ),
    ]);
    labels.extend(t.labels.clone());
    if let Some(spec) = &spec {
        labels.extend(spec.common().labels.clone());
        let join: Vec<String> = if spec.common().join.is_empty() {
            let local = spec.is_local();
            this.own_addrs
                .iter()
                .filter(|a| local || !(a.starts_with("/ip4/127.") || a.starts_with("/ip6/::1/")))
                .cloned()
                .collect()
        } else {
            spec.common().join.to_vec()
        };
        for a in join {
            args.extend(["--join".to_string(), a]);
        }
        if spec.sizes_its_nodes() {
            args.extend([
                "--data-dir".to_string(),
                "/data".to_string(),
                "--http".to_string(),
                "0.0.0.0:7070".to_string(),
                "--cpus".to_string(),
                format!("{}m", t.cpu.0),
                "--memory".to_string(),
                t.memory.0.to_string(),
            ]);
        }
    }
    for (k, v) in labels {
        args.extend(["--label".to_string(), format!("{k}={v}")]);
    }
    args
}

/// Scale-down, step one: drain the workers (no new tasks), and mark their instances.
pub async fn drain(this: &Scaler, nodes: &[NodeId]) {
    for n in nodes {
        let _ = this
            .core
            .writer
            .write(Command::SetWorkerState {
                worker: *n,
                state: WorkerState::Draining,
                at: this.core.now(),
            })
            .await;
        let intent = this
            .core
            .ledger
            .read()
            .scaling()
            .instance_of(*n)
            .map(|i| i.intent);
        if let Some(intent) = intent {
            let _ = this.write(ScalingCommand::Draining { intent }).await;
        }
    }
}

/// Ends `intent`: terminates its instance (if it was ever launched) and records the end.
fn spawn_end(this: Arc<Scaler>, inst: CloudInstance, failed: bool, reason: String, ops: &mut Ops) {
    if !claim(&this, inst.intent) {
        return;
    }
    ops.spawn(async move {
        let intent = inst.intent;
        let mut ok = true;
        // Without a connection to its provider nothing can be terminated: ending the intent
        // now would leave the instance running (and billed) with no record of it. Later.
        let Some(p) = this.provider(&inst.provider) else {
            let configured = lock(&this.core.scaler)
                .providers
                .contains_key(&inst.provider);
            if configured {
                tracing::debug!(
                    "cannot end intent {intent} yet: provider {} is not connected",
                    inst.provider
                );
            } else {
                // Nobody here can ever reach it: record the end (so it stops counting against
                // the caps and the budget) and say loudly what may be left behind.
                tracing::error!(
                    "ending intent {intent} without terminating anything: provider {} is not \
                     configured on this leader; its instance {} may still exist: check and \
                     delete it by hand",
                    inst.provider,
                    inst.provider_id.as_deref().unwrap_or("(never confirmed)")
                );
                let reason = format!(
                    "{reason} (provider {} not configured here: not terminated)",
                    inst.provider
                );
                let _ = this.write(end_of(intent, failed, reason)).await;
            }
            release(&this, intent);
            return;
        };
        let provider_id = match inst.provider_id.clone() {
            Some(id) => Some(id),
            // Never confirmed: it may still exist under its intent tag.
            None => match find(&this, &inst).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::debug!("cannot end intent {intent} yet: {e}");
                    release(&this, intent);
                    return;
                }
            },
        };
        if let Some(id) = provider_id {
            match tokio::time::timeout(TERMINATE_TIMEOUT, p.terminate(&id)).await {
                Ok(Ok(())) => tracing::info!("terminated {id} (intent {intent}): {reason}"),
                Ok(Err(e)) => {
                    tracing::warn!("terminating {id}: {e}");
                    ok = false;
                }
                Err(_) => ok = false,
            }
        }
        if ok {
            let _ = this.write(end_of(intent, failed, reason)).await;
        }
        release(&this, intent);
    });
}

/// The ledger record of an instance's end.
fn end_of(intent: u64, failed: bool, reason: String) -> ScalingCommand {
    if failed {
        ScalingCommand::Failed { intent, reason }
    } else {
        ScalingCommand::Terminated { intent, reason }
    }
}

/// The provider id of the instance launched for `inst`'s intent, if there is one; an error
/// when the provider cannot be asked (then nobody knows).
async fn find(this: &Scaler, inst: &CloudInstance) -> Result<Option<String>, String> {
    let cluster = this
        .core
        .ledger
        .read()
        .scaling()
        .cluster_id()
        .ok_or("no cluster id yet")?
        .to_string();
    let p = this
        .provider(&inst.provider)
        .ok_or_else(|| format!("provider {} is not connected", inst.provider))?;
    let list = p
        .list(&cluster)
        .await
        .map_err(|e| format!("listing {}: {e}", inst.provider))?;
    Ok(list
        .into_iter()
        .find(|i| i.intent == Some(inst.intent) && i.alive)
        .map(|i| i.provider_id))
}

/// Deadlines and clean-ups, every tick.
pub async fn maintain(this: Arc<Scaler>, now: UnixMillis, ops: &mut Ops) {
    let (instances, deadline, workers) = {
        let l = this.core.ledger.read();
        let s = l.scaling();
        let instances: Vec<CloudInstance> = s
            .instances()
            .filter(|i| !i.state.is_ended())
            .cloned()
            .collect();
        let workers: BTreeMap<NodeId, (WorkerState, bool)> = l
            .workers()
            .map(|w| (w.id, (w.state, l.active_on(w.id).next().is_some())))
            .collect();
        (instances, s.policy().registration_deadline_ms, workers)
    };
    let busy = lock(&this.core.scaler).busy.clone();
    for i in instances {
        if busy.contains(&i.intent) {
            continue;
        }
        let age = now.0.saturating_sub(i.requested_at.0);
        let worker = i.worker.and_then(|w| workers.get(&w).copied());
        match i.state {
            InstanceState::Requested | InstanceState::Launched if age > deadline => {
                let reason = format!("did not join within {} s", deadline / 1000);
                // Counted against the provider once it can be ended (not on every tick while
                // the provider is unreachable).
                if this.provider(&i.provider).is_some() {
                    this.failed(&i.provider, &reason);
                }
                spawn_end(this.clone(), i, true, reason, ops);
            }
            InstanceState::Requested if age > ORPHANED_INTENT_AFTER_MS => {
                spawn_launch(this.clone(), i.intent, ops);
            }
            InstanceState::Draining if worker.is_none_or(|(_, active)| !active) => {
                spawn_end(this.clone(), i, false, "scaled down: idle".into(), ops);
            }
            InstanceState::Joined | InstanceState::Draining => match worker {
                Some((WorkerState::Lost, _)) => spawn_end(
                    this.clone(),
                    i,
                    true,
                    "its worker stopped responding".into(),
                    ops,
                ),
                Some((WorkerState::Left, _)) => spawn_end(
                    this.clone(),
                    i,
                    false,
                    "its worker left the cluster".into(),
                    ops,
                ),
                _ => {}
            },
            _ => {}
        }
    }
}

/// Compares every provider's listing with the ledger: adopts launches the ledger has not
/// heard of yet, redoes launches that never happened, terminates orphans, and marks instances
/// that vanished.
pub async fn reconcile(this: Arc<Scaler>, ops: &mut Ops) {
    let Some(cluster) = this
        .core
        .ledger
        .read()
        .scaling()
        .cluster_id()
        .map(str::to_string)
    else {
        return;
    };
    let names: Vec<String> = lock(&this.core.scaler).providers.keys().cloned().collect();
    for name in names {
        let Some(p) = this.provider(&name) else {
            continue;
        };
        // Every instance of the ledger: providers may share an account or an engine and list
        // each other's instances. Read BEFORE listing for what the listing is to confirm: an
        // instance launched while the listing ran is missing from it but must not be taken
        // for vanished. Read again AFTER listing for what the listing may show: an instance
        // whose intent was written meanwhile is no orphan.
        let read = || -> (Vec<CloudInstance>, std::collections::HashSet<u64>) {
            let all = this
                .core
                .ledger
                .read()
                .scaling()
                .instances()
                .cloned()
                .collect();
            (all, lock(&this.core.scaler).busy.clone())
        };
        let (before, busy_before) = read();
        let listed = match p.list(&cluster).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("reconcile: listing {name}: {e}");
                continue;
            }
        };
        let (all, busy) = read();
        let ledger: Vec<&CloudInstance> = before
            .iter()
            .filter(|i| i.provider == name && !busy_before.contains(&i.intent))
            // Unchanged since before the listing: a change meanwhile (a launch confirmed, an
            // end recorded) is newer than what the listing can say.
            .filter(|i| all.iter().any(|now| now == *i))
            .collect();
        for inst in listed.iter().filter(|i| i.alive) {
            let known = inst.intent.and_then(|n| all.iter().find(|l| l.intent == n));
            match known {
                Some(l) if l.provider != name => {}
                Some(l) if l.state == InstanceState::Requested => {
                    tracing::info!(
                        "reconcile: adopting {} for intent {}",
                        inst.provider_id,
                        l.intent
                    );
                    let _ = this
                        .write(ScalingCommand::Launched {
                            intent: l.intent,
                            provider_id: inst.provider_id.clone(),
                        })
                        .await;
                }
                Some(l) if !l.state.is_ended() => {}
                _ if inst.intent.is_some_and(|n| busy.contains(&n)) => {}
                _ => {
                    tracing::warn!(
                        "reconcile: terminating orphan {} ({}): no live intent in the ledger",
                        inst.provider_id,
                        inst.name
                    );
                    if let Err(e) = p.terminate(&inst.provider_id).await {
                        tracing::warn!("reconcile: terminating {}: {e}", inst.provider_id);
                    }
                }
            }
        }
        // A stopped instance holds its disk (and its bill) until it is deleted: one that no
        // live intent of the ledger accounts for is reclaimed.
        for inst in listed.iter().filter(|i| i.stopped && !i.alive) {
            let known = inst.intent.and_then(|n| all.iter().find(|l| l.intent == n));
            let keep = known.is_some_and(|l| l.provider != name || !l.state.is_ended())
                || inst.intent.is_some_and(|n| busy.contains(&n));
            if keep {
                continue;
            }
            tracing::warn!(
                "reconcile: terminating stopped instance {} ({}): no live intent in the ledger",
                inst.provider_id,
                inst.name
            );
            if let Err(e) = p.terminate(&inst.provider_id).await {
                tracing::warn!("reconcile: terminating {}: {e}", inst.provider_id);
            }
        }
        for l in ledger.iter().filter(|l| !busy.contains(&l.intent)) {
            let present = listed.iter().any(|i| i.alive && i.intent == Some(l.intent));
            match l.state {
                InstanceState::Requested if !present => spawn_launch(this.clone(), l.intent, ops),
                InstanceState::Launched | InstanceState::Joined | InstanceState::Draining
                    if !present
                        && l.launched_at.is_none_or(|t| {
                            this.core.now().0.saturating_sub(t.0) >= VANISHED_AFTER_LAUNCH_MS
                        }) =>
                {
                    let _ = this
                        .write(ScalingCommand::Failed {
                            intent: l.intent,
                            reason: format!("vanished from {name}"),
                        })
                        .await;
                }
                _ => {}
            }
        }
    }
}
