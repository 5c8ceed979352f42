//! Builders for the insights tests.

use testmesh_consensus::history::HistoryRecord;
use testmesh_consensus::model::WorkerState;
use testmesh_consensus::resources::{Allocated, GpuRequest, Requirements};
use testmesh_consensus::task::TaskState;
use testmesh_consensus::{Bytes, MilliCpu, NodeId, TaskId, UnixMillis};

use super::{Observations, WorkerUse};

pub const NOW: u64 = 10_000_000;

/// `ms` after the start of a one-hour window ending at [`NOW`].
pub fn at(ms: u64) -> UnixMillis {
    UnixMillis(NOW - 3_600_000 + ms)
}

pub fn cpu_req(milli: u64) -> Requirements {
    Requirements {
        cpu: MilliCpu(milli),
        memory: Bytes(256 << 20),
        ..Default::default()
    }
}

pub fn gpu_req(count: u32) -> Requirements {
    Requirements {
        gpu: GpuRequest::Whole { count },
        ..cpu_req(1000)
    }
}

pub fn share_req() -> Requirements {
    Requirements {
        gpu: GpuRequest::Shared {
            milli: 500,
            memory: Bytes(8 << 30),
        },
        ..cpu_req(1000)
    }
}

/// A succeeded attempt of `name` that ran `duration_ms`, using half a core of its 1-core,
/// 1 GiB request and 200 MiB of memory.
pub fn record(name: &str, duration_ms: u64) -> HistoryRecord {
    HistoryRecord {
        task: TaskId(1),
        attempt: 1,
        name: name.into(),
        program: "sh".into(),
        labels: Vec::new(),
        requirements: Requirements {
            cpu: MilliCpu(1000),
            memory: Bytes(1 << 30),
            ..Default::default()
        },
        worker: NodeId(1),
        cpu_model: "cpu".into(),
        cores: 4,
        gpu_model: "".into(),
        state: TaskState::Succeeded,
        started_at: UnixMillis(NOW - duration_ms),
        finished_at: UnixMillis(NOW),
        duration_ms,
        peak_rss: Bytes(200 << 20),
        cpu_time_ms: duration_ms / 2,
        peak_gpu_memory: Bytes(0),
    }
}

pub fn worker(id: u64, cores: u64, mem_gib: u64) -> WorkerUse {
    WorkerUse {
        id: NodeId(id),
        hostname: format!("host{id}"),
        state: WorkerState::Active,
        capacity: testmesh_consensus::model::Capacity {
            cpu: MilliCpu(cores * 1000),
            memory: Bytes(mem_gib << 30),
            disk: Bytes(100 << 30),
            gpus: Vec::new(),
        },
        allocated: Allocated::default(),
        live: None,
    }
}

pub fn snapshot<'a>(
    history: &'a [HistoryRecord],
    submitted: Vec<(UnixMillis, &'a Requirements)>,
    window_ms: u64,
) -> Observations<'a> {
    Observations {
        now: UnixMillis(NOW),
        window_ms,
        history: history.iter().collect(),
        submitted,
        queued: Vec::new(),
        workers: Vec::new(),
    }
}
