//! The scaler's operations against a scripted FAKE provider (named as such: `FakeProvider`)
//! and a real one-node ledger, with a manual clock; the real providers have their own tests
//! (Docker engine, EC2 emulator) in tests/.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use testmesh_consensus::scaling::{
    DecisionKind, DecisionRecord, InstanceState, LaunchRequest, ScalingApplied, ScalingCommand,
};
use testmesh_consensus::{Applied, Bytes, Command, MilliCpu};
use testmesh_planner::catalogue::InstanceType;
use testmesh_providers::{Instance, LaunchSpec, Provider};

use super::*;
use crate::config::providers::{FileDocker, FileProvider};
use crate::core::scaler::ProviderEntry;
use crate::core::testing::TestNode;

/// A FAKE cloud: launches get ids `i-N`; what it was asked is recorded.
#[derive(Default)]
struct FakeProvider {
    launched: Mutex<Vec<LaunchSpec>>,
    terminated: Mutex<Vec<String>>,
    /// What `list` answers.
    listing: Mutex<Vec<Instance>>,
}

impl Provider for FakeProvider {
    fn name(&self) -> &str {
        "fake"
    }

    fn launch<'a>(
        &'a self,
        spec: &'a LaunchSpec,
    ) -> BoxFuture<'a, Result<String, testmesh_providers::Error>> {
        let mut l = self.launched.lock().unwrap();
        l.push(spec.clone());
        let id = format!("i-{}", l.len());
        Box::pin(async move { Ok(id) })
    }

    fn list<'a>(
        &'a self,
        _cluster_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Instance>, testmesh_providers::Error>> {
        let listing = self.listing.lock().unwrap().clone();
        Box::pin(async move { Ok(listing) })
    }

    fn terminate<'a>(
        &'a self,
        provider_id: &'a str,
    ) -> BoxFuture<'a, Result<(), testmesh_providers::Error>> {
        self.terminated
            .lock()
            .unwrap()
            .push(provider_id.to_string());
        Box::pin(async { Ok(()) })
    }
}

/// A scaler on `node` whose only provider is `fake`, offering one type, `small`.
fn scaler(node: &TestNode, fake: Arc<FakeProvider>) -> Arc<Scaler> {
    let mut core = node.core.clone();
    core.catalogue = vec![InstanceType {
        provider: "fake".into(),
        name: "small".into(),
        cpu: MilliCpu(2000),
        memory: Bytes(4 << 30),
        gpus: 0,
        gpu_model: String::new(),
        gpu_memory: Bytes(0),
        price_per_hour: 0.1,
        boot_secs: 30,
        labels: BTreeMap::new(),
    }]
    .into();
    let mut entry = ProviderEntry::new(FileProvider::Docker(FileDocker {
        name: Some("fake".into()),
        join: Vec::new(),
        labels: BTreeMap::new(),
        host: None,
        image: "unused".into(),
        network: None,
    }));
    entry.connected = Some(fake);
    lock(&core.scaler).providers.insert("fake".into(), entry);
    Arc::new(Scaler {
        core,
        own_addrs: vec!["/ip4/10.0.0.1/tcp/7071/p2p/12D3KooWtest".into()],
        swarm_key: "the swarm key".into(),
        enrol: Default::default(),
    })
}

/// Writes a scale-up of one `fake/small` instance; returns its intent.
async fn intend(node: &TestNode) -> u64 {
    node.write(Command::Scaling {
        cmd: ScalingCommand::SetClusterId { id: "c1".into() },
        at: node.core.now(),
    })
    .await;
    let record = DecisionRecord {
        at: node.core.now(),
        kind: DecisionKind::Up,
        launches: vec![LaunchRequest {
            provider: "fake".into(),
            instance_type: "small".into(),
            count: 1,
            price_micros_per_hour: 100_000,
        }],
        remove: Vec::new(),
        reason: "backlog".into(),
        pending_tasks: 1,
        unschedulable_tasks: 1,
        managed_workers: 0,
        in_flight: 0,
        hourly_cost_micros: 0,
    };
    match node
        .write(Command::Scaling {
            cmd: ScalingCommand::Decide { record },
            at: node.core.now(),
        })
        .await
    {
        Applied::Scaling(ScalingApplied::Intents(ids)) => ids[0],
        other => panic!("{other:?}"),
    }
}

fn instance(node: &TestNode, intent: u64) -> testmesh_consensus::scaling::CloudInstance {
    node.core
        .ledger
        .read()
        .scaling()
        .instance(intent)
        .cloned()
        .unwrap()
}

/// Records `intent` as launched as `provider_id`.
async fn launched(node: &TestNode, intent: u64, provider_id: &str) {
    node.write(Command::Scaling {
        cmd: ScalingCommand::Launched {
            intent,
            provider_id: provider_id.into(),
        },
        at: node.core.now(),
    })
    .await;
}

async fn settle(ops: &mut Ops) {
    while ops.join_next().await.is_some() {}
}

#[tokio::test]
async fn a_launch_carries_the_intent_and_is_recorded_with_the_provider_id() {
    let node = TestNode::start().await;
    let fake = Arc::new(FakeProvider::default());
    let this = scaler(&node, fake.clone());
    let intent = intend(&node).await;
    let mut ops = Ops::new();
    ops::spawn_launch(this.clone(), intent, &mut ops);
    // One operation per intent at a time: a second launch of it is not started.
    ops::spawn_launch(this.clone(), intent, &mut ops);
    settle(&mut ops).await;
    let launched = fake.launched.lock().unwrap().clone();
    assert_eq!(launched.len(), 1);
    assert_eq!(launched[0].intent, intent);
    assert_eq!(launched[0].cluster_id, "c1");
    assert_eq!(launched[0].instance_type, "small");
    let i = instance(&node, intent);
    assert_eq!(i.state, InstanceState::Launched);
    assert_eq!(i.provider_id.as_deref(), Some("i-1"));
    node.stop().await;
}

#[tokio::test]
async fn an_instance_that_never_joins_is_terminated_at_its_deadline_and_not_before() {
    let node = TestNode::start().await;
    let fake = Arc::new(FakeProvider::default());
    let this = scaler(&node, fake.clone());
    let intent = intend(&node).await;
    launched(&node, intent, "i-7").await;
    let deadline = node
        .core
        .ledger
        .read()
        .scaling()
        .policy()
        .registration_deadline_ms;
    let mut ops = Ops::new();
    node.clock.advance(Duration::from_millis(deadline));
    ops::maintain(this.clone(), node.core.now(), &mut ops).await;
    settle(&mut ops).await;
    assert!(fake.terminated.lock().unwrap().is_empty());
    assert_eq!(instance(&node, intent).state, InstanceState::Launched);

    node.clock.advance(Duration::from_millis(1));
    ops::maintain(this.clone(), node.core.now(), &mut ops).await;
    settle(&mut ops).await;
    assert_eq!(*fake.terminated.lock().unwrap(), ["i-7"]);
    let i = instance(&node, intent);
    assert_eq!(i.state, InstanceState::Failed);
    assert!(
        i.end_reason
            .as_deref()
            .unwrap_or("")
            .contains("did not join"),
        "{:?}",
        i.end_reason
    );
    // The provider is backed off after the failure.
    let view = crate::core::scaler::view(&this.core.scaler, node.core.clock.instant());
    let p = view.providers.iter().find(|p| p.name == "fake").unwrap();
    assert_eq!(p.failures, 1);
    assert!(p.backoff_secs.is_some());
    node.stop().await;
}

/// Regression: a launch confirmed just before (or while) the provider was listed, and not yet
/// in the listing, was marked vanished and later terminated as an orphan.
#[tokio::test]
async fn a_fresh_launch_missing_from_a_listing_is_not_taken_for_vanished() {
    let node = TestNode::start().await;
    let fake = Arc::new(FakeProvider::default()); // lists nothing
    let this = scaler(&node, fake.clone());
    let intent = intend(&node).await;
    launched(&node, intent, "i-9").await;
    let mut ops = Ops::new();
    ops::reconcile(this.clone(), &mut ops).await;
    settle(&mut ops).await;
    assert_eq!(instance(&node, intent).state, InstanceState::Launched);
    // Still missing a minute after its launch: it did vanish.
    node.clock.advance(Duration::from_secs(61));
    ops::reconcile(this.clone(), &mut ops).await;
    settle(&mut ops).await;
    let i = instance(&node, intent);
    assert_eq!(i.state, InstanceState::Failed);
    assert!(i.end_reason.unwrap_or_default().contains("vanished"));
    node.stop().await;
}

/// Regression: ending an instance while its provider was not connected recorded the end
/// without terminating anything, leaving the instance running unrecorded.
#[tokio::test]
async fn an_instance_is_not_ended_while_its_provider_cannot_be_reached() {
    let node = TestNode::start().await;
    let fake = Arc::new(FakeProvider::default());
    let this = scaler(&node, fake.clone());
    let intent = intend(&node).await;
    launched(&node, intent, "i-7").await;
    lock(&this.core.scaler)
        .providers
        .get_mut("fake")
        .unwrap()
        .connected = None;
    let deadline = node
        .core
        .ledger
        .read()
        .scaling()
        .policy()
        .registration_deadline_ms;
    node.clock.advance(Duration::from_millis(deadline + 1));
    let mut ops = Ops::new();
    ops::maintain(this.clone(), node.core.now(), &mut ops).await;
    settle(&mut ops).await;
    assert_eq!(
        instance(&node, intent).state,
        InstanceState::Launched,
        "kept until it can be terminated"
    );
    // Connected again: terminated, then recorded.
    lock(&this.core.scaler)
        .providers
        .get_mut("fake")
        .unwrap()
        .connected = Some(fake.clone());
    ops::maintain(this.clone(), node.core.now(), &mut ops).await;
    settle(&mut ops).await;
    assert_eq!(*fake.terminated.lock().unwrap(), ["i-7"]);
    assert_eq!(instance(&node, intent).state, InstanceState::Failed);
    node.stop().await;
}

/// Regression: stopped instances were never reclaimed and kept billing for their disks. One
/// that no live intent accounts for is terminated; one of a live intent is left to its intent.
#[tokio::test]
async fn stopped_instances_without_a_live_intent_are_reclaimed() {
    let node = TestNode::start().await;
    let fake = Arc::new(FakeProvider::default());
    let this = scaler(&node, fake.clone());
    let intent = intend(&node).await;
    let stopped = |id: &str, intent| Instance {
        provider_id: id.into(),
        name: format!("testmesh-c1-{intent}"),
        intent: Some(intent),
        alive: false,
        stopped: true,
    };
    *fake.listing.lock().unwrap() = vec![stopped("i-live", intent), stopped("i-gone", 999)];
    let mut ops = Ops::new();
    ops::reconcile(this.clone(), &mut ops).await;
    settle(&mut ops).await;
    assert_eq!(*fake.terminated.lock().unwrap(), ["i-gone"]);
    node.stop().await;
}
