//! Resource requirements, grants and the one fit check shared by the ledger (which verifies) and
//! the planner (which chooses). Keeping both on the same function is what makes "the planner
//! proposed it" and "the ledger accepts it" agree.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{Bytes, Capacity, GpuInfo, MilliCpu};

/// Thousandths of one GPU; 1000 is a whole GPU.
pub const WHOLE_GPU_MILLI: u32 = 1000;

/// How much GPU a task needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuRequest {
    #[default]
    None,
    /// `count` whole GPUs, each exclusive to the task.
    Whole { count: u32 },
    /// A share of one GPU (`milli` in 1..=999) plus this much of its memory, like Ray's
    /// `num_gpus=0.5`. Shares of one GPU may be packed together; never onto an exclusive GPU.
    Shared { milli: u32, memory: Bytes },
}

/// Everything a task needs from a worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Requirements {
    pub cpu: MilliCpu,
    pub memory: Bytes,
    pub disk: Bytes,
    pub gpu: GpuRequest,
    /// Every GPU granted must have at least this much memory in total.
    pub gpu_min_memory: Bytes,
    /// Every GPU granted must have a model name containing this (case-insensitive).
    pub gpu_model: Option<String>,
    /// Worker labels that must be present with these values.
    pub constraints: BTreeMap<String, String>,
}

/// One GPU (or a share of it) granted to an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GpuGrant {
    pub index: u32,
    pub milli: u32,
    pub memory: Bytes,
    pub exclusive: bool,
}

/// Use of one GPU by all reservations on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuUse {
    pub milli: u32,
    pub memory: Bytes,
    pub exclusive: bool,
}

/// The sum of a worker's reservations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocated {
    pub cpu: MilliCpu,
    pub memory: Bytes,
    pub disk: Bytes,
    pub gpus: BTreeMap<u32, GpuUse>,
}

impl Allocated {
    pub fn add(&mut self, req: &Requirements, grants: &[GpuGrant]) {
        self.cpu.0 += req.cpu.0;
        self.memory.0 += req.memory.0;
        self.disk.0 += req.disk.0;
        for g in grants {
            let u = self.gpus.entry(g.index).or_default();
            u.milli += g.milli;
            u.memory.0 += g.memory.0;
            u.exclusive |= g.exclusive;
        }
    }

    pub fn remove(&mut self, req: &Requirements, grants: &[GpuGrant]) {
        debug_assert!(self.cpu >= req.cpu && self.memory >= req.memory);
        self.cpu.0 = self.cpu.0.saturating_sub(req.cpu.0);
        self.memory.0 = self.memory.0.saturating_sub(req.memory.0);
        self.disk.0 = self.disk.0.saturating_sub(req.disk.0);
        for g in grants {
            if let Some(u) = self.gpus.get_mut(&g.index) {
                u.milli = u.milli.saturating_sub(g.milli);
                u.memory.0 = u.memory.0.saturating_sub(g.memory.0);
                if g.exclusive {
                    u.exclusive = false;
                }
                if u.milli == 0 && u.memory.0 == 0 && !u.exclusive {
                    self.gpus.remove(&g.index);
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.cpu.0 == 0 && self.memory.0 == 0 && self.disk.0 == 0 && self.gpus.is_empty()
    }
}

/// Why a task does not fit a worker, phrased for the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shortfall {
    Cpu {
        need: MilliCpu,
        free: MilliCpu,
    },
    Memory {
        need: Bytes,
        free: Bytes,
    },
    Disk {
        need: Bytes,
        free: Bytes,
    },
    /// Not enough matching GPUs free (`usable` counts those matching model and memory limits).
    Gpu {
        need: GpuRequest,
        usable: u32,
    },
    Label {
        key: String,
        want: String,
    },
    /// The grants sent with an assignment do not match what the worker has free.
    BadGrant,
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shortfall::Cpu { need, free } => write!(f, "needs {need} cpu, {free} free"),
            Shortfall::Memory { need, free } => write!(f, "needs {need} memory, {free} free"),
            Shortfall::Disk { need, free } => write!(f, "needs {need} disk, {free} free"),
            Shortfall::Gpu { need, usable } => match need {
                GpuRequest::Whole { count } => {
                    write!(f, "needs {count} whole GPU(s), {usable} matching free")
                }
                GpuRequest::Shared { milli, memory } => write!(
                    f,
                    "needs {:.3} of a GPU with {memory} GPU memory, {usable} matching GPU(s) with room",
                    *milli as f64 / 1000.0
                ),
                GpuRequest::None => write!(f, "no GPU needed"),
            },
            Shortfall::Label { key, want } => write!(f, "needs label {key}={want}"),
            Shortfall::BadGrant => write!(f, "the proposed GPU grant is not free"),
        }
    }
}

fn gpu_matches(gpu: &GpuInfo, req: &Requirements) -> bool {
    if gpu.memory < req.gpu_min_memory {
        return false;
    }
    match &req.gpu_model {
        Some(m) => gpu.model.to_lowercase().contains(&m.to_lowercase()),
        None => true,
    }
}

fn scalar_fit(
    cap: &Capacity,
    alloc: &Allocated,
    req: &Requirements,
    labels: &BTreeMap<String, String>,
) -> Result<(), Shortfall> {
    for (k, v) in &req.constraints {
        if labels.get(k) != Some(v) {
            return Err(Shortfall::Label {
                key: k.clone(),
                want: v.clone(),
            });
        }
    }
    let free_cpu = MilliCpu(cap.cpu.0.saturating_sub(alloc.cpu.0));
    if req.cpu > free_cpu {
        return Err(Shortfall::Cpu {
            need: req.cpu,
            free: free_cpu,
        });
    }
    let free_mem = Bytes(cap.memory.0.saturating_sub(alloc.memory.0));
    if req.memory > free_mem {
        return Err(Shortfall::Memory {
            need: req.memory,
            free: free_mem,
        });
    }
    let free_disk = Bytes(cap.disk.0.saturating_sub(alloc.disk.0));
    if req.disk > free_disk {
        return Err(Shortfall::Disk {
            need: req.disk,
            free: free_disk,
        });
    }
    Ok(())
}

/// Chooses GPU grants for `req` on a worker, or says why it does not fit.
///
/// Whole GPUs take the lowest free indices; shares go best-fit onto the GPU with the least room
/// left that still takes them, so that shares pack together and whole GPUs stay free.
pub fn fit(
    cap: &Capacity,
    alloc: &Allocated,
    labels: &BTreeMap<String, String>,
    req: &Requirements,
) -> Result<Vec<GpuGrant>, Shortfall> {
    scalar_fit(cap, alloc, req, labels)?;
    match req.gpu {
        GpuRequest::None => Ok(Vec::new()),
        GpuRequest::Whole { count } => {
            let free: Vec<&GpuInfo> = cap
                .gpus
                .iter()
                .filter(|g| gpu_matches(g, req) && !alloc.gpus.contains_key(&g.index))
                .collect();
            if (free.len() as u32) < count {
                return Err(Shortfall::Gpu {
                    need: req.gpu,
                    usable: free.len() as u32,
                });
            }
            Ok(free
                .into_iter()
                .take(count as usize)
                .map(|g| GpuGrant {
                    index: g.index,
                    milli: WHOLE_GPU_MILLI,
                    memory: g.memory,
                    exclusive: true,
                })
                .collect())
        }
        GpuRequest::Shared { milli, memory } => {
            let mut best: Option<(u32, &GpuInfo)> = None;
            let mut usable = 0;
            for g in cap.gpus.iter().filter(|g| gpu_matches(g, req)) {
                let used = alloc.gpus.get(&g.index).copied().unwrap_or_default();
                if used.exclusive {
                    continue;
                }
                let room = WHOLE_GPU_MILLI.saturating_sub(used.milli);
                let mem_room = g.memory.0.saturating_sub(used.memory.0);
                if room >= milli && mem_room >= memory.0 {
                    usable += 1;
                    if best.is_none_or(|(r, _)| room < r) {
                        best = Some((room, g));
                    }
                }
            }
            match best {
                Some((_, g)) => Ok(vec![GpuGrant {
                    index: g.index,
                    milli,
                    memory,
                    exclusive: false,
                }]),
                None => Err(Shortfall::Gpu {
                    need: req.gpu,
                    usable,
                }),
            }
        }
    }
}

/// Verifies that `grants` (chosen by someone else) satisfy `req` on this worker right now.
pub fn verify(
    cap: &Capacity,
    alloc: &Allocated,
    labels: &BTreeMap<String, String>,
    req: &Requirements,
    grants: &[GpuGrant],
) -> Result<(), Shortfall> {
    scalar_fit(cap, alloc, req, labels)?;
    let mut seen = std::collections::BTreeSet::new();
    let wanted = match req.gpu {
        GpuRequest::None => 0,
        GpuRequest::Whole { count } => count as usize,
        GpuRequest::Shared { .. } => 1,
    };
    if grants.len() != wanted {
        return Err(Shortfall::BadGrant);
    }
    for g in grants {
        if !seen.insert(g.index) {
            return Err(Shortfall::BadGrant);
        }
        let Some(info) = cap.gpus.iter().find(|i| i.index == g.index) else {
            return Err(Shortfall::BadGrant);
        };
        if !gpu_matches(info, req) {
            return Err(Shortfall::BadGrant);
        }
        let used = alloc.gpus.get(&g.index).copied().unwrap_or_default();
        let ok = match req.gpu {
            GpuRequest::Whole { .. } => {
                g.exclusive
                    && g.milli == WHOLE_GPU_MILLI
                    && g.memory == info.memory
                    && used == GpuUse::default()
            }
            GpuRequest::Shared { milli, memory } => {
                !g.exclusive
                    && g.milli == milli
                    && g.memory == memory
                    && !used.exclusive
                    && used.milli + milli <= WHOLE_GPU_MILLI
                    && used.memory.0 + memory.0 <= info.memory.0
            }
            GpuRequest::None => false,
        };
        if !ok {
            return Err(Shortfall::BadGrant);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, model: &str, gib: u64) -> GpuInfo {
        GpuInfo {
            index,
            uuid: format!("GPU-{index}"),
            model: model.into(),
            memory: Bytes(gib << 30),
        }
    }

    fn cap() -> Capacity {
        Capacity {
            cpu: MilliCpu(4000),
            memory: Bytes(16 << 30),
            disk: Bytes(100 << 30),
            gpus: vec![
                gpu(0, "NVIDIA A10", 24),
                gpu(1, "NVIDIA H100 80GB HBM3", 80),
            ],
        }
    }

    #[test]
    fn whole_gpus_are_exclusive_and_shares_never_land_on_them() {
        let c = cap();
        let mut a = Allocated::default();
        let whole = Requirements {
            gpu: GpuRequest::Whole { count: 1 },
            ..Default::default()
        };
        let g = fit(&c, &a, &BTreeMap::new(), &whole).unwrap();
        assert_eq!(g[0].index, 0);
        a.add(&whole, &g);
        let share = Requirements {
            gpu: GpuRequest::Shared {
                milli: 500,
                memory: Bytes(1 << 30),
            },
            ..Default::default()
        };
        let s = fit(&c, &a, &BTreeMap::new(), &share).unwrap();
        assert_eq!(
            s[0].index, 1,
            "a share must not go onto the exclusive GPU 0"
        );
        a.add(&share, &s);
        // GPU 1 is now shared, GPU 0 exclusive: no whole GPU is left.
        assert!(matches!(
            fit(&c, &a, &BTreeMap::new(), &whole),
            Err(Shortfall::Gpu { usable: 0, .. })
        ));
        assert_eq!(
            verify(&c, &a, &BTreeMap::new(), &whole, &g),
            Err(Shortfall::BadGrant)
        );
    }

    #[test]
    fn model_and_memory_constraints_filter_gpus() {
        let c = cap();
        let a = Allocated::default();
        let req = Requirements {
            gpu: GpuRequest::Whole { count: 1 },
            gpu_model: Some("h100".into()),
            ..Default::default()
        };
        assert_eq!(fit(&c, &a, &BTreeMap::new(), &req).unwrap()[0].index, 1);
        let big = Requirements {
            gpu: GpuRequest::Whole { count: 1 },
            gpu_min_memory: Bytes(100 << 30),
            ..Default::default()
        };
        assert!(fit(&c, &a, &BTreeMap::new(), &big).is_err());
    }

    #[test]
    fn shares_pack_best_fit_and_respect_gpu_memory() {
        let c = cap();
        let mut a = Allocated::default();
        let share = |milli, gib: u64| Requirements {
            gpu: GpuRequest::Shared {
                milli,
                memory: Bytes(gib << 30),
            },
            ..Default::default()
        };
        let first = fit(&c, &a, &BTreeMap::new(), &share(300, 1)).unwrap();
        a.add(&share(300, 1), &first);
        let second = fit(&c, &a, &BTreeMap::new(), &share(300, 1)).unwrap();
        assert_eq!(first[0].index, second[0].index, "shares pack onto one GPU");
        // 30 GiB does not fit on the 24 GiB A10 even though compute share does.
        let g = fit(&c, &Allocated::default(), &BTreeMap::new(), &share(100, 30)).unwrap();
        assert_eq!(g[0].index, 1);
    }

    #[test]
    fn labels_cpu_and_memory_shortfalls_are_named() {
        let c = cap();
        let a = Allocated::default();
        let req = Requirements {
            cpu: MilliCpu(8000),
            ..Default::default()
        };
        assert_eq!(
            fit(&c, &a, &BTreeMap::new(), &req).unwrap_err().to_string(),
            "needs 8 cpu, 4 free"
        );
        let req = Requirements {
            constraints: [("zone".to_string(), "a".to_string())].into(),
            ..Default::default()
        };
        assert!(matches!(
            fit(&c, &a, &BTreeMap::new(), &req),
            Err(Shortfall::Label { .. })
        ));
    }
}
