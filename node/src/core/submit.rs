//! Submissions: what users send to run tasks, and what turns a request into specs the ledger
//! will take — each field checked with a message that names it, `mem: auto` predicted from
//! history, and (unless allowed) each task able to run on some worker. The API, run files and
//! the CLI share these request types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use testmesh_consensus::command::MAX_SUBMIT_BATCH;
use testmesh_consensus::resources::{GpuRequest, Requirements};
use testmesh_consensus::suite::{CodeRef, InputFile, SuiteSpec};
use testmesh_consensus::task::{Secret, TaskSpec};
use testmesh_consensus::{Bytes, MilliCpu, NodeId};
use thiserror::Error;

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
    /// Like `env`, but no read, export, report, log or dashboard page ever shows the values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
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
    /// SHA-256 of a working-tree archive uploaded to the node that takes the submit
    /// (`PUT /api/v1/code/HASH`; `testmesh run --workdir` does both): the task runs in its own
    /// unpacked copy, `workdir` then being relative to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Small files (path relative to the task's directory → content) written before it starts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// Globs of files to keep after each attempt, relative to the task's directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
    /// Glob of the JUnit XML files (kept as artifacts too) whose test cases are the results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub junit_from: Option<String>,
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

pub fn to_spec(r: &TaskRequest) -> Result<TaskSpec, InvalidTask> {
    validate(r).map_err(InvalidTask)
}

fn validate(r: &TaskRequest) -> Result<TaskSpec, String> {
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
    for k in r.secret_env.keys() {
        check_key("secret_env", k)?;
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
    let spec = TaskSpec {
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
        secret_env: r
            .secret_env
            .iter()
            .map(|(k, v)| (k.clone(), Secret::new(v.clone())))
            .collect(),
        suite: None,
    };
    let suite = SuiteSpec {
        // Size and origin are filled in by the node that takes the submit (it must hold it).
        code: r.code.as_ref().map(|hash| CodeRef {
            hash: hash.clone(),
            size: 0,
            origin: NodeId(0),
        }),
        files: r
            .files
            .iter()
            .map(|(path, content)| InputFile {
                path: path.clone(),
                content: content.clone(),
            })
            .collect(),
        artifacts: r.artifacts.clone(),
        junit_from: r.junit_from.clone(),
    };
    let mut spec = spec;
    if !suite.is_empty() {
        spec.suite = Some(Box::new(suite));
    }
    let own_dir = spec.suite().code.is_some() || !spec.suite().files.is_empty();
    if !own_dir && (!spec.suite().artifacts.is_empty() || spec.suite().junit_from.is_some()) {
        return Err("artifacts and junit_from are collected from a directory of the task's own: ship the tree with it (`testmesh run --workdir DIR`, `submit --upload DIR`, or `code` in the API)".into());
    }
    if spec.suite().code.is_none() && !spec.suite().files.is_empty() && spec.workdir.is_some() {
        return Err("files: without shipped code the files go into a fresh directory where the task runs; drop workdir, or ship the tree with code".into());
    }
    if spec.suite().code.is_some()
        && spec
            .workdir
            .as_deref()
            .is_some_and(|w| testmesh_consensus::suite::check_relative("workdir", w).is_err())
    {
        return Err(
            "workdir: with shipped code it is a directory inside the checkout (relative, no ..)"
                .into(),
        );
    }
    // Sizes: argv, env, labels, constraints (see `limits`).
    testmesh_consensus::limits::check_spec(&spec)?;
    Ok(spec)
}

/// `POST /api/v1/runs`: tasks submitted together under one run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub name: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Makes the submit idempotent; generated when absent.
    #[serde(default)]
    pub request_id: Option<String>,
    pub tasks: Vec<TaskRequest>,
    #[serde(default)]
    pub allow_unschedulable: bool,
}

/// A task request that cannot become a spec; the message names the field.
#[derive(Debug, Clone, Error)]
#[error("{0}")]
pub struct InvalidTask(pub String);

/// Why a submission was refused; nothing of it was submitted.
#[derive(Debug, Clone, Error)]
pub enum SubmitError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
    /// No worker of the pool could ever run it (and the caller did not allow that).
    #[error("{0}")]
    Unschedulable(String),
    #[error("mem: auto: {0}")]
    Models(#[from] super::models::ModelError),
    #[error("{0}")]
    DiskFull(#[from] super::disk::DiskFull),
}

/// Headroom over the predicted peak when `mem: "auto"` reserves it.
const AUTO_MEMORY_HEADROOM: f64 = 1.25;
/// Label on a task whose memory was reserved by prediction, saying what was predicted.
pub const MEM_AUTO_LABEL: &str = "testmesh.mem_auto";

/// `mem: "auto"`: reserves the predicted peak memory plus 25 % (nothing when there is no
/// history yet), and labels the task with what was predicted and how.
pub fn reserve_predicted_memory(models: &super::models::ModelSet, spec: &mut TaskSpec) {
    use testmesh_planner::predictor::PredictionPath;
    use testmesh_planner::predictor::history::spec_features;
    let p = models.memory.predict(&spec_features(spec));
    let note = if p.path == PredictionPath::Requested {
        "no history yet: nothing reserved".to_string()
    } else {
        let mib = (p.value * AUTO_MEMORY_HEADROOM).ceil().max(1.0) as u64;
        spec.requirements.memory = Bytes(mib << 20);
        format!(
            "{mib} MiB reserved: predicted peak {:.0} MiB + 25 % ({:?}, confidence {:.2}, {} samples)",
            p.value, p.path, p.confidence, p.samples
        )
    };
    spec.labels.insert(MEM_AUTO_LABEL.to_string(), note);
}

/// The client's request id, checked, or a fresh one.
pub fn request_id_of(r: Option<String>) -> Result<String, SubmitError> {
    match r {
        Some(r) if r.is_empty() || r.len() > 128 => Err(SubmitError::Invalid(
            "request_id must be 1-128 characters".into(),
        )),
        Some(r) => Ok(r),
        None => Ok(hex::encode(rand::random::<[u8; 16]>())),
    }
}

/// Turns requests into specs the ledger will take: each checked, `mem: auto` predicted, and
/// (unless allowed) each able to run on some worker of `ledger`.
pub async fn prepare(
    ledger: &testmesh_consensus::store::LedgerReader,
    models: &super::models::Models,
    tasks: &[TaskRequest],
    allow_unschedulable: bool,
) -> Result<Vec<TaskSpec>, SubmitError> {
    if tasks.is_empty() {
        return Err(SubmitError::Invalid(
            "tasks is empty: submit at least one task".into(),
        ));
    }
    if tasks.len() > MAX_SUBMIT_BATCH {
        return Err(SubmitError::TooLarge(format!(
            "{} tasks in one request; split them into requests of at most {MAX_SUBMIT_BATCH}",
            tasks.len()
        )));
    }
    let many = tasks.len() > 1;
    let numbered = |i: usize, e: String| if many { format!("task #{i}: {e}") } else { e };
    let mut specs = Vec::with_capacity(tasks.len());
    let mut trained = None;
    for (i, t) in tasks.iter().enumerate() {
        let mut spec = validate(t).map_err(|e| SubmitError::Invalid(numbered(i, e)))?;
        if mem_is_auto(t) {
            if trained.is_none() {
                trained = Some(models.fresh().await?);
            }
            if let Some(m) = &trained {
                reserve_predicted_memory(m, &mut spec);
            }
        }
        specs.push(spec);
    }
    // One request is one log entry: keep it within the entry cap.
    use testmesh_consensus::limits::{MAX_ENTRY_BYTES, spec_bytes};
    let bytes: usize = specs.iter().map(spec_bytes).sum();
    if bytes > MAX_ENTRY_BYTES {
        return Err(SubmitError::TooLarge(format!(
            "the request's tasks take about {bytes} bytes; one request carries at most \
             {MAX_ENTRY_BYTES}: split it into smaller requests (the CLI does this for you)"
        )));
    }
    if !allow_unschedulable {
        let ledger = ledger.read();
        // Specs repeat in big batches: check each distinct requirement once.
        let mut checked = std::collections::HashSet::new();
        for (i, s) in specs.iter().enumerate() {
            if checked.insert(&s.requirements) {
                testmesh_planner::could_ever_fit(
                    ledger.workers().map(|w| (&w.capacity, &w.labels)),
                    &s.requirements,
                )
                .map_err(|e| SubmitError::Unschedulable(numbered(i, e)))?;
            }
        }
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<TaskSpec, String> {
        let r: TaskRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
        to_spec(&r).map_err(|e| e.to_string())
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
        // Artifacts only from a directory of the task's own.
        assert!(
            req(r#"{"command":["x"],"artifacts":["*.xml"]}"#)
                .unwrap_err()
                .contains("of the task's own")
        );
        let code = "0".repeat(64);
        assert!(
            req(&format!(
                r#"{{"command":["x"],"code":"{code}","artifacts":["*.xml"],"junit_from":"j.xml"}}"#
            ))
            .is_ok()
        );
        assert!(
            req(&format!(
                r#"{{"command":["x"],"code":"{code}","artifacts":["../x"]}}"#
            ))
            .unwrap_err()
            .contains("relative path")
        );
        assert!(
            req(r#"{"command":["x"],"code":"abc"}"#)
                .unwrap_err()
                .contains("64 lowercase hex")
        );
    }
}
