//! What the API accepts and returns, and the validation that turns a request into a
//! [`TaskSpec`]. The CLI builds the same request types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use testmesh_consensus::model::Worker;
use testmesh_consensus::resources::{GpuRequest, Requirements};
use testmesh_consensus::task::{Task, TaskSpec};
use testmesh_consensus::{Bytes, MilliCpu};

use crate::units;

/// A number or a string with a unit: `"cpu": 2`, `"cpu": "500m"`, `"mem": "4GiB"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Amount {
    Number(f64),
    Text(String),
}

impl Amount {
    fn text(&self) -> String {
        match self {
            Amount::Number(n) => n.to_string(),
            Amount::Text(s) => s.clone(),
        }
    }
}

/// One task as users describe it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// Defaults to the program's file name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Program and arguments (no shell; use `["sh", "-c", "..."]` for one).
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Cores (`2`, `0.5`) or millicores (`"500m"`); default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Amount>,
    /// Whole GPUs (`1`, `2`) or a share of one GPU (`0.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Amount>,
    /// For a GPU share: the GPU memory it reserves. For whole GPUs: the least memory each must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_mem: Option<Amount>,
    /// Substring of the GPU model name, e.g. `"H100"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Worker labels required, e.g. `{"zone": "a"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub constraints: BTreeMap<String, String>,
    /// `"30s"`, `"2h"`; no limit by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub priority: i32,
}

/// `POST /api/v1/tasks`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// Makes the submit idempotent: the same id returns the same tasks. Generated when absent.
    #[serde(default)]
    pub request_id: Option<String>,
    pub tasks: Vec<TaskRequest>,
    /// Queue tasks that no current worker could ever run (for capacity still to come).
    #[serde(default)]
    pub allow_unschedulable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitResponse {
    pub tasks: Vec<testmesh_consensus::TaskId>,
    pub duplicate: bool,
}

/// A task with what the user wants to know beside the ledger record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskView {
    #[serde(flatten)]
    pub task: Task,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskList {
    /// The ledger revision this list reflects; pass it as `since` to wait for changes.
    pub rev: u64,
    pub tasks: Vec<TaskView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerView {
    #[serde(flatten)]
    pub worker: Worker,
    pub active_tasks: usize,
    /// Its run time over the typical run time of the same tasks (1.0 typical), from recent
    /// history; absent without comparable attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_vs_peers: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogChunk {
    pub task: testmesh_consensus::TaskId,
    pub attempt: u32,
    pub stream: String,
    pub offset: u64,
    pub next_offset: u64,
    pub data: String,
    /// The attempt has ended and everything up to `next_offset` is all there is.
    pub complete: bool,
    /// The worker's log file could not be read (the worker is gone or unreachable): `data` is
    /// the tail of the output kept in the ledger instead, at most 2 KiB.
    #[serde(default)]
    pub ledger_tail: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub node_id: String,
    pub version: String,
    pub role: String,
    pub leader: Option<String>,
    pub term: u64,
    pub last_applied: u64,
    /// Raft voters and learners, as this node's replica has them.
    #[serde(default)]
    pub voters: Vec<String>,
    #[serde(default)]
    pub learners: Vec<String>,
    /// A membership change is half done (joint consensus): both the old and the new voter
    /// sets need a majority until it completes.
    #[serde(default)]
    pub membership_changing: bool,
    pub workers: usize,
    pub tasks: BTreeMap<String, usize>,
    pub uptime_secs: u64,
    pub host: crate::monitor::HostSample,
}

fn check_key(what: &str, k: &str) -> Result<(), String> {
    if k.is_empty() || k.len() > 128 || k.contains('=') || k.contains('\0') {
        return Err(format!(
            "{what} key {k:?} must be 1-128 characters without '=' or NUL"
        ));
    }
    Ok(())
}

/// Validates a request into a spec, with messages that name the field.
/// `mem: "auto"`: reserve the memory history predicts.
pub fn mem_is_auto(r: &TaskRequest) -> bool {
    matches!(&r.mem, Some(Amount::Text(m)) if m.trim().eq_ignore_ascii_case("auto"))
}

pub fn to_spec(r: &TaskRequest) -> Result<TaskSpec, String> {
    if r.command.is_empty() || r.command[0].trim().is_empty() {
        return Err(
            "command is empty: give the program and its arguments, e.g. [\"echo\", \"hi\"]".into(),
        );
    }
    if r.command.iter().any(|a| a.contains('\0')) {
        return Err("command contains a NUL byte".into());
    }
    let name = if r.name.is_empty() {
        std::path::Path::new(&r.command[0])
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| r.command[0].clone())
    } else {
        r.name.clone()
    };
    if name.len() > 256 {
        return Err("name is longer than 256 bytes".into());
    }
    let cpu = match &r.cpu {
        Some(a) => units::parse_cpu(&a.text()).map_err(|e| format!("cpu: {e}"))?,
        None => MilliCpu(1000),
    };
    if cpu.0 == 0 {
        return Err("cpu: request at least 1m (a thousandth of a core)".into());
    }
    let size = |what: &str, a: &Option<Amount>| match a {
        Some(a) => units::parse_size(&a.text()).map_err(|e| format!("{what}: {e}")),
        None => Ok(Bytes(0)),
    };
    // "auto" is resolved by the node that takes the submit (see `api::predict`).
    let memory = if mem_is_auto(r) {
        Bytes(0)
    } else {
        size("mem", &r.mem)?
    };
    let disk = size("disk", &r.disk)?;
    let gpu_mem = size("gpu_mem", &r.gpu_mem)?;
    let gpu = match &r.gpus {
        Some(a) => units::parse_gpus(&a.text(), gpu_mem).map_err(|e| format!("gpus: {e}"))?,
        None => GpuRequest::None,
    };
    if gpu == GpuRequest::None && (r.gpu_mem.is_some() || r.gpu_model.is_some()) {
        return Err("gpu_mem and gpu_model need gpus as well, e.g. gpus = 1 or 0.5".into());
    }
    let gpu_min_memory = match gpu {
        GpuRequest::Whole { .. } => gpu_mem,
        _ => Bytes(0),
    };
    for k in r.env.keys() {
        check_key("env", k)?;
    }
    for k in r.labels.keys() {
        check_key("label", k)?;
    }
    for k in r.constraints.keys() {
        check_key("constraint", k)?;
    }
    let timeout_ms = match &r.timeout {
        Some(t) => Some(
            units::parse_duration(t)
                .map_err(|e| format!("timeout: {e}"))?
                .as_millis() as u64,
        ),
        None => None,
    };
    if r.retries > 100 {
        return Err(format!(
            "retries: {} is too many; use at most 100",
            r.retries
        ));
    }
    Ok(TaskSpec {
        name,
        argv: r.command.clone(),
        env: r.env.clone(),
        workdir: r.workdir.clone(),
        requirements: Requirements {
            cpu,
            memory,
            disk,
            gpu,
            gpu_min_memory,
            gpu_model: r.gpu_model.clone(),
            constraints: r.constraints.clone(),
        },
        labels: r.labels.clone(),
        timeout_ms,
        retries: r.retries,
        priority: r.priority,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<TaskSpec, String> {
        let r: TaskRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        to_spec(&r)
    }

    #[test]
    fn numbers_and_units_are_both_accepted() {
        let s = req(r#"{"command":["python","train.py"],"cpu":2,"mem":"4GiB","gpus":0.5,"gpu_mem":"10GiB"}"#).unwrap();
        assert_eq!(s.name, "python");
        assert_eq!(s.requirements.cpu, MilliCpu(2000));
        assert_eq!(
            s.requirements.gpu,
            GpuRequest::Shared {
                milli: 500,
                memory: Bytes(10 << 30)
            }
        );
    }

    #[test]
    fn bad_fields_are_named() {
        assert!(
            req(r#"{"command":[]}"#)
                .unwrap_err()
                .contains("command is empty")
        );
        assert!(
            req(r#"{"command":["x"],"mem":"lots"}"#)
                .unwrap_err()
                .starts_with("mem:")
        );
        assert!(
            req(r#"{"command":["x"],"timeout":"soon"}"#)
                .unwrap_err()
                .starts_with("timeout:")
        );
        assert!(
            req(r#"{"command":["x"],"gpus":1.5}"#)
                .unwrap_err()
                .starts_with("gpus:")
        );
        assert!(
            req(r#"{"command":["x"],"cpus":1}"#)
                .unwrap_err()
                .contains("unknown field `cpus`")
        );
        assert!(
            req(r#"{"command":["x"],"gpu_model":"H100"}"#)
                .unwrap_err()
                .contains("need gpus")
        );
    }
}
