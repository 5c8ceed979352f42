//! Samples for the predictor from the ledger's execution history.

use std::collections::BTreeMap;

use testmesh_consensus::history::{HistoryRecord, program_of};
use testmesh_consensus::resources::{GpuRequest, Requirements};
use testmesh_consensus::task::TaskSpec;

use super::{Sample, TrainOptions};

/// What to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Run time in seconds.
    DurationSecs,
    /// Peak resident memory in MiB.
    PeakRssMib,
    /// Peak GPU memory in MiB, learned from attempts that had GPUs only.
    PeakGpuMemoryMib,
}

const FEATURES: [&str; 5] = ["name", "program", "cpu_milli", "memory_mib", "gpu"];

fn gpu_feature(g: &GpuRequest) -> String {
    match g {
        GpuRequest::None => "none".into(),
        GpuRequest::Whole { count } => format!("whole:{count}"),
        GpuRequest::Shared { milli, .. } => format!("shared:{milli}"),
    }
}

/// The features of a task as the predictor sees them (before it is placed: no hardware yet).
pub fn features_of(name: &str, argv: &[String], req: &Requirements) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("name".to_string(), name.to_string()),
        ("program".to_string(), program_of(argv)),
        ("cpu_milli".to_string(), req.cpu.0.to_string()),
        ("memory_mib".to_string(), (req.memory.0 >> 20).to_string()),
        ("gpu".to_string(), gpu_feature(&req.gpu)),
    ])
}

pub fn spec_features(spec: &TaskSpec) -> BTreeMap<String, String> {
    features_of(&spec.name, &spec.argv, &spec.requirements)
}

/// Training samples for `target` from history records.
pub fn samples<'a>(
    records: impl Iterator<Item = &'a HistoryRecord>,
    target: Target,
) -> Vec<Sample> {
    records
        .filter(|r| target != Target::PeakGpuMemoryMib || r.requirements.gpu != GpuRequest::None)
        .map(|r| Sample {
            features: {
                let program = r.program.to_string();
                let mut f = features_of(&r.name, std::slice::from_ref(&program), &r.requirements);
                f.insert("program".into(), program);
                f
            },
            target: match target {
                Target::DurationSecs => r.duration_ms as f64 / 1000.0,
                Target::PeakRssMib => r.peak_rss.0 as f64 / (1 << 20) as f64,
                Target::PeakGpuMemoryMib => r.peak_gpu_memory.0 as f64 / (1 << 20) as f64,
            },
        })
        .collect()
}

/// Features and baseline key used for predictions from history.
pub fn options() -> TrainOptions {
    TrainOptions::new(
        FEATURES.iter().map(|s| s.to_string()).collect(),
        vec!["name".into(), "program".into()],
    )
}
