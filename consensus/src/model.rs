//! Identifiers, units and the worker model.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A node of the mesh; also its Raft id. Shown (and written in JSON) as 16 hex digits; binary
/// encodings carry the number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(|_| {
                serde::de::Error::custom(format!("{s:?} is not a node id (16 hex digits)"))
            })
        } else {
            u64::deserialize(d).map(NodeId)
        }
    }
}

impl From<u64> for NodeId {
    fn from(v: u64) -> Self {
        NodeId(v)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(NodeId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_hex_in_json_and_numbers_in_bincode() {
        let id = NodeId(0xabc);
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"0000000000000abc\"");
        assert_eq!(
            serde_json::from_str::<NodeId>("\"0000000000000abc\"").unwrap(),
            id
        );
        let bytes = crate::codec::encode(&id).unwrap();
        assert_eq!(crate::codec::decode::<NodeId>(&bytes).unwrap(), id);
        assert!(bytes.len() <= 3);
    }
}

/// A task, numbered by the ledger in submission order.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// CPU in thousandths of a core (Kubernetes' `m`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MilliCpu(pub u64);

impl fmt::Display for MilliCpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

/// A size in bytes.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        let mut v = self.0 as f64;
        let mut unit = 0;
        while v >= 1024.0 && unit < UNITS.len() - 1 {
            v /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[unit])
        }
    }
}

/// Milliseconds since the Unix epoch. Commands carry their timestamps; apply never reads a clock.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    pub fn saturating_sub(self, earlier: UnixMillis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// One GPU of a worker, as NVML reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory: Bytes,
}

/// What a worker offers to the scheduler.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub cpu: MilliCpu,
    pub memory: Bytes,
    pub disk: Bytes,
    pub gpus: Vec<GpuInfo>,
}

/// Hardware description used for placement constraints and, later, prediction features.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    pub hostname: String,
    pub cpu_model: String,
    pub cores: u32,
    /// NVIDIA driver version as NVML reports it; empty without GPUs.
    pub gpu_driver: String,
    /// Highest CUDA version the driver supports, e.g. "12.4"; empty without GPUs.
    pub cuda_version: String,
    /// The name people know it by (`--name`, default the hostname).
    #[serde(default)]
    pub name: String,
}

/// Each worker's name as shown: its `--name` (else hostname), with the first four hex
/// digits of its id added where several workers share a name (four VMs all called "vm").
pub fn display_names<'a>(
    workers: impl IntoIterator<Item = &'a Worker>,
) -> BTreeMap<crate::NodeId, String> {
    let base: Vec<(crate::NodeId, String)> = workers
        .into_iter()
        .map(|w| {
            let h = &w.hardware;
            let n = if h.name.is_empty() {
                &h.hostname
            } else {
                &h.name
            };
            (
                w.id,
                if n.is_empty() {
                    w.id.to_string()
                } else {
                    n.clone()
                },
            )
        })
        .collect();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, n) in &base {
        *count.entry(n.as_str()).or_default() += 1;
    }
    base.iter()
        .map(|(id, n)| {
            let shown = if count[n.as_str()] > 1 {
                format!("{n}·{}", &id.to_string()[..4.min(id.to_string().len())])
            } else {
                n.clone()
            };
            (*id, shown)
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Accepts new placements.
    Active,
    /// Runs what it has, accepts nothing new.
    Draining,
    /// Stopped answering; its attempts were ended as lost. It becomes Active again when it
    /// registers (restart, or reconnection after a partition).
    Lost,
    /// Left the cluster on purpose (SIGTERM); what it still ran was handed back to the queue.
    /// It becomes Active again when it registers.
    Left,
}

/// A registered worker and what is reserved on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub id: NodeId,
    pub hardware: Hardware,
    pub capacity: Capacity,
    pub labels: BTreeMap<String, String>,
    pub state: WorkerState,
    /// Changes on every restart of the node; a new boot means its old processes are gone.
    pub boot_id: u64,
    pub version: String,
    pub registered_at: UnixMillis,
    pub allocated: crate::resources::Allocated,
    /// How its attempts ended since it joined (or since an operator last cleared it).
    pub record: WorkerRecord,
    /// Set when its failure rate stood far above its peers' on the same tasks: it takes no new
    /// placements until an operator clears it.
    pub quarantine: Option<Quarantine>,
}

/// A worker's track record: attempts that ended on their own there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    /// Run time of those attempts, summed.
    pub run_ms: u64,
    /// CPU time they used, and core-milliseconds they reserved (cores × run time).
    pub cpu_used_ms: u64,
    pub cpu_reserved_ms: u64,
}

impl WorkerRecord {
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.timed_out
    }

    /// CPU used over CPU reserved by its attempts (None before any).
    pub fn cpu_efficiency(&self) -> Option<f64> {
        (self.cpu_reserved_ms > 0).then(|| self.cpu_used_ms as f64 / self.cpu_reserved_ms as f64)
    }

    /// Share of its attempts that succeeded, smoothed towards 1 while it has few (a new worker
    /// is trusted, and one failure does not make a worker look bad).
    pub fn reliability(&self) -> f64 {
        (self.succeeded as f64 + 4.0) / (self.finished() as f64 + 4.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub reason: String,
    pub since: UnixMillis,
}
