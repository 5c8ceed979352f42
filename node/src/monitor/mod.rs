//! Local resource sampling: sysinfo for CPU, memory and disk, NVML for GPUs (behind
//! [`GpuProbe`]; a host without the NVIDIA driver simply has no GPUs).

mod gpu;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use testmesh_consensus::model::{Capacity, GpuInfo, Hardware};
use testmesh_consensus::{Bytes, MilliCpu, TaskId};

pub use gpu::{GpuProbe, GpuProcess, GpuSample, NoGpus, NvmlProbe, SimulatedGpus};

/// Tells which of this node's task attempts a process belongs to (`None`: not ours).
pub type Owner = Box<dyn Fn(u32) -> Option<(TaskId, u32)> + Send>;

/// Peak GPU memory of each running task attempt on this node: the monitor raises it on every
/// sample, the agent takes it when the attempt ends.
#[derive(Clone, Default)]
pub struct GpuMemoryPeaks(Arc<Mutex<HashMap<(TaskId, u32), u64>>>);

impl GpuMemoryPeaks {
    fn raise(&self, usage: &HashMap<(TaskId, u32), u64>) {
        let mut peaks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in usage {
            let p = peaks.entry(*k).or_default();
            *p = (*p).max(*v);
        }
    }

    /// The attempt's peak, forgetting it.
    pub fn take(&self, task: TaskId, attempt: u32) -> Bytes {
        let mut peaks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Bytes(peaks.remove(&(task, attempt)).unwrap_or(0))
    }
}

/// Counts each GPU's foreign processes and sums, per task attempt, the GPU memory its
/// processes hold across all GPUs. Pure apart from `owner`.
pub fn attribute(
    gpus: &mut [GpuSample],
    owner: impl Fn(u32) -> Option<(TaskId, u32)>,
) -> HashMap<(TaskId, u32), u64> {
    let mut usage = HashMap::new();
    for g in gpus.iter_mut() {
        let mut foreign = 0;
        for p in &g.procs {
            match owner(p.pid) {
                Some(key) => *usage.entry(key).or_default() += p.memory.0,
                None => foreign += 1,
            }
        }
        // A probe may report foreign processes it has no pid for (the simulated busy GPUs).
        g.foreign_processes = g.foreign_processes.max(foreign);
    }
    usage
}

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
    /// Tells which task attempt a process belongs to (see `agent::task_of`).
    owner: Owner,
    peaks: GpuMemoryPeaks,
}

impl Monitor {
    /// Starts sampling; `gpus` is usually [`NvmlProbe::open`].
    pub fn new(gpus: Box<dyn GpuProbe>, owner: Owner) -> Self {
        let mut sys = sysinfo::System::new().unwrap_or_else(|_| {
            sysinfo::System::new_with_specifics(sysinfo::RefreshKind::nothing())
                .expect("sysinfo without refreshes")
        });
        sys.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
        sys.refresh_memory();
        Monitor {
            sys,
            gpus,
            owner,
            peaks: GpuMemoryPeaks::default(),
        }
    }

    pub fn hardware(&self) -> Hardware {
        let (gpu_driver, cuda_version) = self.gpus.driver().unwrap_or_default();
        Hardware {
            gpu_driver,
            cuda_version,
            hostname: sysinfo::System::host_name().unwrap_or_else(|_| "unknown".into()),
            cpu_model: self
                .sys
                .cpus()
                .first()
                .map(|c| c.brand().trim().to_string())
                .unwrap_or_default(),
            cores: self.sys.cpus().len() as u32,
            name: String::new(),
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

    /// Where the per-task GPU memory peaks go (for the agent).
    pub fn gpu_memory_peaks(&self) -> GpuMemoryPeaks {
        self.peaks.clone()
    }

    pub fn gpu_inventory(&self) -> Vec<GpuInfo> {
        self.gpus.inventory()
    }

    pub fn sample(&mut self) -> HostSample {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        let mut gpus = self.gpus.sample();
        let usage = attribute(&mut gpus, &self.owner);
        self.peaks.raise(&usage);
        HostSample {
            cpu_percent: self.sys.global_cpu_usage(),
            memory_used: Bytes(self.sys.used_memory()),
            memory_total: Bytes(self.sys.total_memory()),
            load_1m: sysinfo::System::load_average()
                .map(|l| l.one)
                .unwrap_or(0.0),
            gpus,
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
        let mut m = Monitor::new(Box::new(gpu::NoGpus), Box::new(|_| None));
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

    #[test]
    fn gpu_memory_is_summed_per_attempt_and_strangers_are_foreign() {
        let proc_ = |pid, mib: u64| GpuProcess {
            pid,
            memory: Bytes(mib << 20),
        };
        let mut gpus = vec![
            GpuSample {
                index: 0,
                procs: vec![proc_(10, 100), proc_(11, 50), proc_(99, 4000)],
                ..Default::default()
            },
            GpuSample {
                index: 1,
                procs: vec![proc_(10, 300)],
                foreign_processes: 1,
                ..Default::default()
            },
        ];
        let owner = |pid| match pid {
            10 | 11 => Some((TaskId(7), 1)),
            _ => None,
        };
        let usage = attribute(&mut gpus, owner);
        assert_eq!(usage[&(TaskId(7), 1)], 450 << 20);
        assert_eq!(gpus[0].foreign_processes, 1);
        assert_eq!(gpus[1].foreign_processes, 1, "a probe's own count is kept");

        let peaks = GpuMemoryPeaks::default();
        peaks.raise(&usage);
        peaks.raise(&HashMap::from([((TaskId(7), 1), 10)]));
        assert_eq!(
            peaks.take(TaskId(7), 1),
            Bytes(450 << 20),
            "the peak, not the last"
        );
        assert_eq!(peaks.take(TaskId(7), 1), Bytes(0), "taken once");
    }
}
