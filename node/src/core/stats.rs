//! The statistics store, owned by one task ([`StatsTask`]) and reached through a cloneable
//! [`Stats`] handle. The mesh's event loop hands each gossiped message over without waiting
//! (it must never block on a reader); readers send a closure that runs on the owner's side and
//! gets a copy of what they need.

use std::collections::HashMap;

use testmesh_consensus::NodeId;
use tokio::sync::{mpsc, oneshot, watch};

use super::clock::SharedClock;
use crate::stats::{self, Point, StatsMessage, StatsStore};

/// Operations waiting for the owner at most; gossip beyond that is dropped and counted.
const QUEUE: usize = 4096;

type Reader = Box<dyn FnOnce(&StatsStore) + Send>;

enum Op {
    /// This node's own sample.
    Local(StatsMessage),
    /// A gossiped message as it arrived: who the mesh says signed it, and its bytes.
    Gossip {
        sender: Option<NodeId>,
        data: Vec<u8>,
    },
    Read(Reader),
}

/// A cloneable handle to the statistics store.
#[derive(Clone)]
pub struct Stats {
    tx: mpsc::Sender<Op>,
}

/// The task that owns the store; run it with [`StatsTask::run`].
pub struct StatsTask {
    store: StatsStore,
    rx: mpsc::Receiver<Op>,
    clock: SharedClock,
}

impl Stats {
    pub fn new(store: StatsStore, clock: SharedClock) -> (Stats, StatsTask) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Stats { tx }, StatsTask { store, rx, clock })
    }

    /// Hands over a gossiped message without waiting (for the mesh's event loop); a full
    /// queue drops it — statistics are sampled again a moment later.
    pub fn gossiped(&self, sender: Option<NodeId>, data: Vec<u8>) {
        if self.tx.try_send(Op::Gossip { sender, data }).is_err() {
            tracing::debug!("statistics store busy; dropped a gossiped sample");
        }
    }

    /// The mesh's sink for gossiped messages.
    pub fn gossip_sink(&self) -> crate::mesh::GossipSink {
        let this = self.clone();
        Box::new(move |sender, data| this.gossiped(sender, data))
    }

    /// Keeps this node's own sample.
    pub async fn insert(&self, m: StatsMessage) {
        let _ = self.tx.send(Op::Local(m)).await;
    }

    /// Runs `f` on the store and returns what it returns (None once the owner has stopped).
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&StatsStore) -> R + Send + 'static,
    ) -> Option<R> {
        let (reply, rx) = oneshot::channel();
        let op = Op::Read(Box::new(move |s| {
            let _ = reply.send(f(s));
        }));
        self.tx.send(op).await.ok()?;
        rx.await.ok()
    }

    /// Every node's latest point (empty once the owner has stopped).
    pub async fn latest_all(&self) -> HashMap<NodeId, Point> {
        self.read(|s| s.latest_all().map(|(n, p)| (n, p.clone())).collect())
            .await
            .unwrap_or_default()
    }
}

impl StatsTask {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let op = tokio::select! {
                _ = shutdown.changed() => return,
                op = self.rx.recv() => match op { Some(op) => op, None => return },
            };
            self.apply(op);
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Local(m) => self.store.insert(m),
            Op::Gossip { sender, data } => {
                match sender
                    .ok_or(stats::Invalid::WrongSender)
                    .and_then(|s| stats::validate(&data, s))
                {
                    Ok(m) => {
                        // Sender and receiver clocks agree on one host and are NTP-close
                        // across hosts: this measures gossip latency (and, across hosts, skew).
                        let delay = self.clock.now().0.saturating_sub(m.at.0);
                        self.store.record_delivery(m.node, delay);
                        self.store.insert(m)
                    }
                    Err(e) => {
                        self.store.malformed += 1;
                        tracing::debug!("dropped a stats message from {sender:?}: {e:?}");
                    }
                }
            }
            Op::Read(f) => f(&self.store),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::core::clock::ManualClock;
    use testmesh_consensus::UnixMillis;

    #[tokio::test]
    async fn gossip_is_validated_by_the_owner_and_reads_see_it() {
        let clock = ManualClock::new(UnixMillis(10_000));
        let store = StatsStore::new(Duration::from_secs(1), Duration::from_secs(60));
        let (stats, task) = Stats::new(store, clock.shared());
        let (_stop, shutdown) = watch::channel(false);
        let owner = tokio::spawn(task.run(shutdown));
        let msg = StatsMessage {
            version: stats::STATS_VERSION,
            node: NodeId(7),
            at: UnixMillis(9_900),
            sample: Default::default(),
            running_tasks: 2,
        };
        let bytes = testmesh_consensus::codec::encode(&msg).unwrap();
        stats.gossiped(Some(NodeId(7)), bytes.clone());
        // Signed by someone else than the node it claims to be: dropped and counted.
        stats.gossiped(Some(NodeId(8)), bytes);
        let (latest, malformed) = stats
            .read(|s| (s.latest(NodeId(7)).map(|p| p.running_tasks), s.malformed))
            .await
            .unwrap();
        assert_eq!(latest, Some(2));
        assert_eq!(malformed, 1);
        let delivery = stats
            .read(|s| s.view(Some(NodeId(7)), UnixMillis(0)))
            .await
            .unwrap();
        assert_eq!(delivery[&NodeId(7)].delivery.as_ref().unwrap().max_ms, 100);
        drop(stats);
        owner.await.unwrap();
    }
}
