//! Local resource sampling: sysinfo for CPU, memory and disk, NVML for GPUs (behind
//! [`GpuProbe`]; a host without the NVIDIA driver simply has no GPUs).

mod gpu;

use std::path::Path;

use serde::{Deserialize, Serialize};
use testmesh_consensus::model::{Capacity, GpuInfo, Hardware};
use testmesh_consensus::{Bytes, MilliCpu};

pub use gpu::{GpuProbe, GpuSample, NoGpus, NvmlProbe, SimulatedGpus};

/// Live measurements of this host (for status now; gossiped to the mesh later).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostSample {
    pub cpu_percent: f32,
    pub memory_used: Bytes,
    pub memory_total: Bytes,
    pub load_1m: f64,
    pub gpus: Vec<GpuSample>,
}

pub struct Monitor {
    sys: sysinfo::System,
    gpus: Box<dyn GpuProbe>,
    /// Tells whether a process was started by testmesh on this node (see `agent::is_ours`).
    ours: Box<dyn Fn(u32) -> bool + Send>,
}

impl Monitor {
    /// Starts sampling; `gpus` is usually [`NvmlProbe::open`].
    pub fn new(gpus: Box<dyn GpuProbe>, ours: Box<dyn Fn(u32) -> bool + Send>) -> Self {
        let mut sys = sysinfo::System::new().unwrap_or_else(|_| {
            sysinfo::System::new_with_specifics(sysinfo::RefreshKind::nothing())
                .expect("sysinfo without refreshes")
        });
        sys.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
        sys.refresh_memory();
        Monitor { sys, gpus, ours }
    }

    pub fn hardware(&self) -> Hardware {
        Hardware {
            hostname: sysinfo::System::host_name().unwrap_or_else(|_| "unknown".into()),
            cpu_model: self
                .sys
                .cpus()
                .first()
                .map(|c| c.brand().trim().to_string())
                .unwrap_or_default(),
            cores: self.sys.cpus().len() as u32,
        }
    }

    /// What this host can offer: all cores, all memory, the disk holding `data_dir`, all GPUs.
    pub fn capacity(&self, data_dir: &Path) -> Capacity {
        Capacity {
            cpu: MilliCpu(self.sys.cpus().len().max(1) as u64 * 1000),
            memory: Bytes(self.sys.total_memory()),
            disk: Bytes(disk_of(data_dir)),
            gpus: self.gpus.inventory(),
        }
    }

    pub fn gpu_inventory(&self) -> Vec<GpuInfo> {
        self.gpus.inventory()
    }

    pub fn sample(&mut self) -> HostSample {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        HostSample {
            cpu_percent: self.sys.global_cpu_usage(),
            memory_used: Bytes(self.sys.used_memory()),
            memory_total: Bytes(self.sys.total_memory()),
            load_1m: sysinfo::System::load_average()
                .map(|l| l.one)
                .unwrap_or(0.0),
            gpus: self
                .gpus
                .sample()
                .into_iter()
                .map(|mut g| {
                    if !g.pids.is_empty() {
                        g.foreign_processes =
                            g.pids.iter().filter(|p| !(self.ours)(**p)).count() as u32;
                    }
                    g
                })
                .collect(),
        }
    }
}

/// Available space of the file system holding `dir` (the longest matching mount point).
fn disk_of(dir: &Path) -> u64 {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Ok(disks) = sysinfo::Disks::new_with_refreshed_list() else {
        return 0;
    };
    disks
        .iter()
        .filter(|d| dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map_or(0, |d| d.available_space())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_has_cpu_memory_and_disk() {
        let mut m = Monitor::new(Box::new(gpu::NoGpus), Box::new(|_| false));
        let c = m.capacity(Path::new("."));
        assert!(c.cpu.0 >= 1000);
        assert!(c.memory.0 > 0);
        assert!(
            c.disk.0 > 0,
            "the disk holding the working dir has free space"
        );
        assert!(!m.hardware().hostname.is_empty());
        assert!(m.sample().memory_total.0 > 0);
    }
}
