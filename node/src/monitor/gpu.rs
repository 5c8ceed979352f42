use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use serde::{Deserialize, Serialize};
use testmesh_consensus::Bytes;
use testmesh_consensus::model::GpuInfo;

/// One GPU's live state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GpuSample {
    pub index: u32,
    pub utilization_percent: u32,
    pub memory_used: Bytes,
    pub memory_total: Bytes,
    pub temperature_c: u32,
    pub power_mw: u32,
    /// Compute processes on this GPU.
    pub processes: u32,
    /// Of those, the ones testmesh did not start on this node (someone else's job): such a
    /// GPU is not free even when the ledger has nothing reserved on it.
    pub foreign_processes: u32,
    /// The compute processes with the memory NVML attributes to each, for classifying and
    /// attributing on this host only; never gossiped.
    #[serde(skip)]
    pub procs: Vec<GpuProcess>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuProcess {
    pub pid: u32,
    /// 0 where the driver cannot tell (e.g. some MIG and Windows modes).
    pub memory: Bytes,
}

/// Where GPU information comes from (NVML on real hosts; nothing elsewhere).
pub trait GpuProbe: Send {
    fn inventory(&self) -> Vec<GpuInfo>;
    fn sample(&self) -> Vec<GpuSample>;
    /// Driver version and the highest CUDA version it supports, where known.
    fn driver(&self) -> Option<(String, String)>;
}

/// A host without GPUs (or without the NVIDIA driver).
pub struct NoGpus;

impl GpuProbe for NoGpus {
    fn inventory(&self) -> Vec<GpuInfo> {
        Vec::new()
    }
    fn sample(&self) -> Vec<GpuSample> {
        Vec::new()
    }
    fn driver(&self) -> Option<(String, String)> {
        None
    }
}

/// Simulated GPUs (a fake, named as such): for tests of GPU placement and
/// `CUDA_VISIBLE_DEVICES` on hosts without NVIDIA hardware, and for demos. Never used unless
/// `--simulate-gpus` is given; `--simulate-gpu-busy` marks GPUs as running someone else's
/// process. A process whose environment holds `TESTMESH_SIMULATED_GPU_MIB=N` shows up as a
/// compute process holding N MiB on each GPU it was granted (`TESTMESH_GPU_INDICES`), as NVML
/// would list a real one.
pub struct SimulatedGpus {
    pub gpus: Vec<GpuInfo>,
    pub busy: Vec<u32>,
}

impl GpuProbe for SimulatedGpus {
    fn inventory(&self) -> Vec<GpuInfo> {
        self.gpus.clone()
    }
    fn sample(&self) -> Vec<GpuSample> {
        let simulated = simulated_processes();
        self.gpus
            .iter()
            .map(|g| {
                let busy = self.busy.contains(&g.index);
                let procs: Vec<GpuProcess> = simulated
                    .iter()
                    .filter(|(_, gpus, _)| gpus.contains(&g.index))
                    .map(|&(pid, _, memory)| GpuProcess { pid, memory })
                    .collect();
                GpuSample {
                    index: g.index,
                    memory_total: g.memory,
                    memory_used: Bytes(procs.iter().map(|p| p.memory.0).sum()),
                    utilization_percent: if busy || !procs.is_empty() { 100 } else { 0 },
                    processes: busy as u32 + procs.len() as u32,
                    // Someone else's process has no pid here; the monitor adds ours.
                    foreign_processes: busy as u32,
                    procs,
                    ..Default::default()
                }
            })
            .collect()
    }
    fn driver(&self) -> Option<(String, String)> {
        Some(("simulated".into(), "simulated".into()))
    }
}

/// NVML through nvml-wrapper. `Nvml` is kept for the life of the probe; devices are looked up
/// by index on every call because `Device` borrows `Nvml`.
pub struct NvmlProbe {
    nvml: Nvml,
}

impl NvmlProbe {
    /// NVML if the driver is present, otherwise a probe with no GPUs. No driver is normal.
    pub fn open() -> Box<dyn GpuProbe> {
        match Nvml::init() {
            Ok(nvml) => Box::new(NvmlProbe { nvml }),
            Err(e) => {
                tracing::debug!("no NVIDIA GPUs: NVML is not available ({e})");
                Box::new(NoGpus)
            }
        }
    }
}

impl GpuProbe for NvmlProbe {
    fn inventory(&self) -> Vec<GpuInfo> {
        let n = self.nvml.device_count().unwrap_or(0);
        (0..n)
            .filter_map(|i| {
                let d = self.nvml.device_by_index(i).ok()?;
                Some(GpuInfo {
                    index: i,
                    uuid: d.uuid().unwrap_or_default(),
                    model: d.name().unwrap_or_default(),
                    memory: Bytes(d.memory_info().map(|m| m.total).unwrap_or(0)),
                })
            })
            .collect()
    }

    fn sample(&self) -> Vec<GpuSample> {
        let n = self.nvml.device_count().unwrap_or(0);
        (0..n)
            .filter_map(|i| {
                let d = self.nvml.device_by_index(i).ok()?;
                let mem = d.memory_info().ok();
                let procs: Vec<GpuProcess> = d
                    .running_compute_processes()
                    .map(|ps| {
                        ps.into_iter()
                            .map(|p| GpuProcess {
                                pid: p.pid,
                                memory: Bytes(match p.used_gpu_memory {
                                    UsedGpuMemory::Used(b) => b,
                                    UsedGpuMemory::Unavailable => 0,
                                }),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Some(GpuSample {
                    processes: procs.len() as u32,
                    // Classified by the monitor, which knows this node's tasks.
                    foreign_processes: 0,
                    procs,
                    index: i,
                    utilization_percent: d.utilization_rates().map(|u| u.gpu).unwrap_or(0),
                    memory_used: Bytes(mem.as_ref().map_or(0, |m| m.used)),
                    memory_total: Bytes(mem.as_ref().map_or(0, |m| m.total)),
                    temperature_c: d.temperature(TemperatureSensor::Gpu).unwrap_or(0),
                    power_mw: d.power_usage().unwrap_or(0),
                })
            })
            .collect()
    }

    fn driver(&self) -> Option<(String, String)> {
        let driver = self.nvml.sys_driver_version().ok()?;
        // NVML gives CUDA as 1000 × major + 10 × minor.
        let cuda = self
            .nvml
            .sys_cuda_driver_version()
            .map(|c| format!("{}.{}", c / 1000, (c % 1000) / 10))
            .unwrap_or_default();
        Some((driver, cuda))
    }
}

/// Processes asking the simulated GPUs for memory: (pid, visible GPU indices, memory).
fn simulated_processes() -> Vec<(u32, Vec<u32>, Bytes)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let env = std::fs::read(e.path().join("environ")).ok()?;
            let (mut mib, mut visible) = (None, Vec::new());
            for v in env.split(|b| *b == 0) {
                let Ok(v) = std::str::from_utf8(v) else {
                    continue;
                };
                if let Some(n) = v.strip_prefix("TESTMESH_SIMULATED_GPU_MIB=") {
                    mib = n.parse::<u64>().ok();
                } else if let Some(l) = v.strip_prefix("TESTMESH_GPU_INDICES=") {
                    visible = l.split(',').filter_map(|i| i.parse().ok()).collect();
                }
            }
            Some((pid, visible, Bytes(mib? << 20)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_driver_means_no_gpus_and_no_error() {
        let probe = NvmlProbe::open();
        if !std::path::Path::new("/dev/nvidiactl").exists() {
            assert!(probe.inventory().is_empty());
            assert!(probe.sample().is_empty());
        } else {
            // On a GPU host every GPU has a model and memory.
            assert!(
                probe
                    .inventory()
                    .iter()
                    .all(|g| !g.model.is_empty() && g.memory.0 > 0)
            );
        }
    }
}
