//! The instance catalogue: machine types a provider can start, with their resources and price.
//! Used by the worker-type recommendations (insights) and by the autoscaler.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use testmesh_consensus::model::{Capacity, GpuInfo};
use testmesh_consensus::{Bytes, MilliCpu};

/// One machine type of one provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceType {
    pub provider: String,
    pub name: String,
    pub cpu: MilliCpu,
    pub memory: Bytes,
    pub gpus: u32,
    /// Model name of its GPUs (matched by `--gpu-model` like a worker's), empty without GPUs.
    pub gpu_model: String,
    /// Memory of each GPU.
    pub gpu_memory: Bytes,
    /// On-demand price in dollars per hour.
    pub price_per_hour: f64,
    /// Typical seconds from launch request to a joined worker.
    pub boot_secs: u32,
    /// Labels its workers carry (constraints of queued tasks are matched against them).
    pub labels: BTreeMap<String, String>,
}

impl InstanceType {
    /// What one instance offers the scheduler (its disk is not modelled: taken as unlimited).
    pub fn capacity(&self) -> Capacity {
        Capacity {
            cpu: self.cpu,
            memory: self.memory,
            disk: Bytes(u64::MAX / 4),
            gpus: (0..self.gpus)
                .map(|index| GpuInfo {
                    index,
                    uuid: String::new(),
                    model: self.gpu_model.clone(),
                    memory: self.gpu_memory,
                })
                .collect(),
        }
    }

    /// `provider/name`, the way it is shown and configured.
    pub fn key(&self) -> String {
        format!("{}/{}", self.provider, self.name)
    }

    /// Checks that the type is usable; says what is wrong otherwise.
    pub fn validate(&self) -> Result<(), String> {
        let what = self.key();
        if self.provider.is_empty() || self.name.is_empty() {
            return Err(format!(
                "instance type {what:?}: provider and name are required"
            ));
        }
        if self.cpu.0 == 0 || self.memory.0 == 0 {
            return Err(format!(
                "instance type {what}: cpus and memory must be above zero"
            ));
        }
        if self.gpus > 0 && (self.gpu_model.is_empty() || self.gpu_memory.0 == 0) {
            return Err(format!(
                "instance type {what}: a type with GPUs needs gpu_model and gpu_memory"
            ));
        }
        if !self.price_per_hour.is_finite() || self.price_per_hour < 0.0 {
            return Err(format!(
                "instance type {what}: price_per_hour must be a number ≥ 0"
            ));
        }
        Ok(())
    }
}

const GIB: u64 = 1 << 30;

#[allow(clippy::too_many_arguments)]
fn t(
    provider: &str,
    name: &str,
    vcpus: u64,
    mem_gib: u64,
    gpus: u32,
    gpu_model: &str,
    gpu_gib: u64,
    price: f64,
    boot_secs: u32,
) -> InstanceType {
    InstanceType {
        provider: provider.into(),
        name: name.into(),
        cpu: MilliCpu(vcpus * 1000),
        memory: Bytes(mem_gib * GIB),
        gpus,
        gpu_model: gpu_model.into(),
        gpu_memory: Bytes(gpu_gib * GIB),
        price_per_hour: price,
        boot_secs,
        labels: BTreeMap::new(),
    }
}

/// The catalogue used when the configuration names none: common AWS and GCP types at their
/// approximate on-demand list prices (us-east-1 / us-central1). Real prices vary by region and
/// discount; put yours in the config file (`[[instance_types]]`).
pub fn default_catalogue() -> Vec<InstanceType> {
    vec![
        t("aws", "m7i.large", 2, 8, 0, "", 0, 0.1008, 60),
        t("aws", "m7i.2xlarge", 8, 32, 0, "", 0, 0.4032, 60),
        t("aws", "c7i.4xlarge", 16, 32, 0, "", 0, 0.714, 60),
        t("aws", "r7i.2xlarge", 8, 64, 0, "", 0, 0.5292, 60),
        t("aws", "g6.xlarge", 4, 16, 1, "NVIDIA L4", 24, 0.8048, 120),
        t("aws", "g5.xlarge", 4, 16, 1, "NVIDIA A10G", 24, 1.006, 120),
        t(
            "aws",
            "g5.12xlarge",
            48,
            192,
            4,
            "NVIDIA A10G",
            24,
            5.672,
            150,
        ),
        t(
            "aws",
            "p4d.24xlarge",
            96,
            1152,
            8,
            "NVIDIA A100-SXM4-40GB",
            40,
            32.7726,
            300,
        ),
        t("gcp", "n2-standard-8", 8, 32, 0, "", 0, 0.3885, 45),
        t(
            "gcp",
            "g2-standard-8",
            8,
            32,
            1,
            "NVIDIA L4",
            24,
            0.8536,
            90,
        ),
        t(
            "gcp",
            "a2-highgpu-1g",
            12,
            85,
            1,
            "NVIDIA A100-SXM4-40GB",
            40,
            3.673,
            120,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_catalogue_is_valid_and_unique() {
        let c = default_catalogue();
        let mut keys: Vec<String> = c.iter().map(InstanceType::key).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), c.len());
        for t in &c {
            t.validate().unwrap();
            assert_eq!(t.capacity().gpus.len() as u32, t.gpus);
        }
    }

    #[test]
    fn bad_types_are_explained() {
        let mut g = default_catalogue()[5].clone();
        g.gpu_model.clear();
        assert!(g.validate().unwrap_err().contains("gpu_model"));
        g = default_catalogue()[0].clone();
        g.price_per_hour = -1.0;
        assert!(g.validate().unwrap_err().contains("price_per_hour"));
    }
}
