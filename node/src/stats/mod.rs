//! Live statistics of every node, gossiped over the mesh (never through Raft).
//!
//! Each node publishes a [`StatsMessage`] every `--stats-interval`; every node keeps, per node,
//! a ring buffer of recent samples at full resolution and a second, downsampled one (averages of
//! `DOWNSAMPLE` samples) reaching back `--stats-retention`. A malformed or mismatched message is
//! dropped and counted, never trusted.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use testmesh_consensus::{NodeId, UnixMillis, codec};

use crate::monitor::HostSample;

/// Gossip message format version; bumped with any change of [`StatsMessage`].
pub const STATS_VERSION: u32 = 2;
/// Largest accepted message (the gossipsub transmit limit is set to the same).
pub const MAX_MESSAGE: usize = 16 << 10;
/// Full-resolution samples kept per node.
const FINE: usize = 900;
/// Samples averaged into one downsampled point.
const DOWNSAMPLE: usize = 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsMessage {
    pub version: u32,
    pub node: NodeId,
    pub at: UnixMillis,
    pub sample: HostSample,
    pub running_tasks: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    pub at: UnixMillis,
    pub sample: HostSample,
    pub running_tasks: u32,
}

#[derive(Debug, Default)]
struct Series {
    fine: VecDeque<Point>,
    coarse: VecDeque<Point>,
    pending: Vec<Point>,
    /// Recent delivery delays of this node's messages, in ms.
    delays: VecDeque<u64>,
}

/// Delays kept per node for the delivery percentiles.
const DELAYS: usize = 1000;

/// Why a gossiped message was refused.
#[derive(Debug, PartialEq)]
pub enum Invalid {
    TooLarge(usize),
    Undecodable(codec::CodecError),
    Version(u32),
    WrongSender,
    Nonsense(&'static str),
}

/// Decodes and checks one gossiped message; `sender` is the node the mesh says signed it.
pub fn validate(bytes: &[u8], sender: NodeId) -> Result<StatsMessage, Invalid> {
    if bytes.len() > MAX_MESSAGE {
        return Err(Invalid::TooLarge(bytes.len()));
    }
    let m: StatsMessage = codec::decode(bytes).map_err(Invalid::Undecodable)?;
    if m.version != STATS_VERSION {
        return Err(Invalid::Version(m.version));
    }
    if m.node != sender {
        return Err(Invalid::WrongSender);
    }
    let s = &m.sample;
    if !(0.0..=100.0 * 1024.0).contains(&s.cpu_percent) || !s.load_1m.is_finite() || s.load_1m < 0.0
    {
        return Err(Invalid::Nonsense("cpu or load out of range"));
    }
    if s.memory_used > s.memory_total || s.gpus.len() > 64 {
        return Err(Invalid::Nonsense("memory or GPU count out of range"));
    }
    Ok(m)
}

fn average(points: &[Point]) -> Point {
    let n = points.len().max(1) as f64;
    let last = points.last().expect("non-empty");
    let mut sample = last.sample.clone();
    sample.cpu_percent = (points
        .iter()
        .map(|p| p.sample.cpu_percent as f64)
        .sum::<f64>()
        / n) as f32;
    sample.load_1m = points.iter().map(|p| p.sample.load_1m).sum::<f64>() / n;
    sample.memory_used.0 = (points
        .iter()
        .map(|p| p.sample.memory_used.0 as f64)
        .sum::<f64>()
        / n) as u64;
    for (i, g) in sample.gpus.iter_mut().enumerate() {
        let vals: Vec<u32> = points
            .iter()
            .filter_map(|p| p.sample.gpus.get(i).map(|x| x.utilization_percent))
            .collect();
        g.utilization_percent =
            (vals.iter().map(|v| *v as f64).sum::<f64>() / vals.len().max(1) as f64) as u32;
    }
    Point {
        at: last.at,
        sample,
        running_tasks: (points.iter().map(|p| p.running_tasks as f64).sum::<f64>() / n).round()
            as u32,
    }
}

/// Per-node ring buffers of samples.
#[derive(Debug)]
pub struct StatsStore {
    nodes: BTreeMap<NodeId, Series>,
    coarse_len: usize,
    pub malformed: u64,
}

impl StatsStore {
    /// Keeps downsampled points for `retention` given one sample per `interval`.
    pub fn new(interval: Duration, retention: Duration) -> Self {
        let per_point = interval.as_secs_f64().max(0.001) * DOWNSAMPLE as f64;
        StatsStore {
            nodes: BTreeMap::new(),
            coarse_len: ((retention.as_secs_f64() / per_point).ceil() as usize).max(1),
            malformed: 0,
        }
    }

    pub fn insert(&mut self, m: StatsMessage) {
        let s = self.nodes.entry(m.node).or_default();
        let p = Point {
            at: m.at,
            sample: m.sample,
            running_tasks: m.running_tasks,
        };
        if s.fine.back().is_some_and(|last| last.at >= p.at) {
            return; // duplicate or out of order (gossip may deliver twice)
        }
        s.pending.push(p.clone());
        if s.pending.len() >= DOWNSAMPLE {
            let avg = average(&s.pending);
            s.pending.clear();
            s.coarse.push_back(avg);
            while s.coarse.len() > self.coarse_len {
                s.coarse.pop_front();
            }
        }
        s.fine.push_back(p);
        while s.fine.len() > FINE {
            s.fine.pop_front();
        }
    }

    /// Records how long one of `node`'s messages took from sampling to arrival here.
    pub fn record_delivery(&mut self, node: NodeId, delay_ms: u64) {
        let d = &mut self.nodes.entry(node).or_default().delays;
        d.push_back(delay_ms);
        while d.len() > DELAYS {
            d.pop_front();
        }
    }

    /// Every node's latest point.
    pub fn latest_all(&self) -> impl Iterator<Item = (NodeId, &Point)> {
        self.nodes
            .iter()
            .filter_map(|(id, s)| s.fine.back().map(|p| (*id, p)))
    }

    pub fn latest(&self, node: NodeId) -> Option<&Point> {
        self.nodes.get(&node)?.fine.back()
    }

    /// When the oldest sample still held was taken.
    pub fn first_at(&self) -> Option<UnixMillis> {
        self.nodes
            .values()
            .filter_map(|s| match (s.coarse.front(), s.fine.front()) {
                (Some(c), Some(f)) => Some(c.at.min(f.at)),
                (c, f) => c.or(f).map(|p| p.at),
            })
            .min()
    }

    /// Per node: the fine samples after `since` and the downsampled history.
    pub fn view(&self, node: Option<NodeId>, since: UnixMillis) -> BTreeMap<NodeId, NodeStats> {
        self.nodes
            .iter()
            .filter(|(id, _)| node.is_none_or(|n| n == **id))
            .map(|(id, s)| {
                (
                    *id,
                    NodeStats {
                        latest: s.fine.back().cloned(),
                        samples: s.fine.iter().filter(|p| p.at > since).cloned().collect(),
                        history: s.coarse.iter().filter(|p| p.at > since).cloned().collect(),
                        delivery: Delivery::of(&s.delays),
                    },
                )
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStats {
    pub latest: Option<Point>,
    pub samples: Vec<Point>,
    /// Averages of 10 samples, reaching back `--stats-retention`.
    pub history: Vec<Point>,
    /// How long this node's recent messages took to arrive here (absent for this node itself).
    pub delivery: Option<Delivery>,
}

/// Gossip delivery delay percentiles over the last (up to) 1,000 messages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    pub count: usize,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

impl Delivery {
    fn of(delays: &VecDeque<u64>) -> Option<Delivery> {
        if delays.is_empty() {
            return None;
        }
        let mut v: Vec<u64> = delays.iter().copied().collect();
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some(Delivery {
            count: v.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: v[v.len() - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testmesh_consensus::Bytes;

    fn msg(node: u64, at: u64) -> StatsMessage {
        StatsMessage {
            version: STATS_VERSION,
            node: NodeId(node),
            at: UnixMillis(at),
            sample: HostSample {
                cpu_percent: 50.0,
                memory_used: Bytes(1),
                memory_total: Bytes(2),
                load_1m: 0.5,
                gpus: vec![],
            },
            running_tasks: 1,
        }
    }

    #[test]
    fn malformed_and_forged_messages_are_refused() {
        assert!(matches!(
            validate(b"garbage", NodeId(1)),
            Err(Invalid::Undecodable(_))
        ));
        assert_eq!(
            validate(&vec![0; MAX_MESSAGE + 1], NodeId(1)).unwrap_err(),
            Invalid::TooLarge(MAX_MESSAGE + 1)
        );
        let ok = codec::encode(&msg(1, 5)).unwrap();
        assert!(validate(&ok, NodeId(1)).is_ok());
        assert_eq!(validate(&ok, NodeId(2)).unwrap_err(), Invalid::WrongSender);
        let mut bad = msg(1, 5);
        bad.sample.memory_used = Bytes(3);
        assert!(matches!(
            validate(&codec::encode(&bad).unwrap(), NodeId(1)),
            Err(Invalid::Nonsense(_))
        ));
        let mut other = msg(1, 5);
        other.version = STATS_VERSION + 1;
        assert_eq!(
            validate(&codec::encode(&other).unwrap(), NodeId(1)).unwrap_err(),
            Invalid::Version(STATS_VERSION + 1)
        );
    }

    #[test]
    fn ring_buffers_are_bounded_and_downsampled() {
        let mut s = StatsStore::new(Duration::from_secs(1), Duration::from_secs(60));
        for t in 1..=2000 {
            s.insert(msg(1, t * 1000));
        }
        s.insert(msg(1, 5)); // out of order: ignored
        let v = s.view(None, UnixMillis(0));
        let n = &v[&NodeId(1)];
        assert_eq!(n.samples.len(), FINE);
        assert_eq!(n.history.len(), 6, "60 s of 10 s averages");
        assert_eq!(n.latest.as_ref().unwrap().at, UnixMillis(2_000_000));
    }

    #[test]
    fn delivery_percentiles_cover_the_last_thousand_messages() {
        let mut s = StatsStore::new(Duration::from_secs(1), Duration::from_secs(60));
        assert!(s.view(None, UnixMillis(0)).is_empty());
        for d in 0..1500 {
            s.record_delivery(NodeId(1), if d < 500 { 10_000 } else { d % 100 });
        }
        let v = s.view(None, UnixMillis(0));
        let d = v[&NodeId(1)].delivery.clone().unwrap();
        assert_eq!(d.count, 1000, "the 500 slow old ones have been pushed out");
        assert_eq!(d.max_ms, 99);
        assert!((49..=50).contains(&d.p50_ms), "{d:?}");
        assert!((98..=99).contains(&d.p99_ms), "{d:?}");
    }
}
