//! Tasks, their attempts and their lifecycle.
//!
//! ```text
//! Pending -> Assigned -> Running -> Succeeded | Failed | TimedOut | Cancelled | Lost
//!    ^                                  |        (attempt ends; retries left?)
//!    +----------- attempt + 1 ----------+
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{Bytes, NodeId, TaskId, UnixMillis};
use crate::resources::{GpuGrant, Requirements};
use crate::suite::{ArtifactFile, SuiteSpec, TestCase};

/// What the user asked to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub name: String,
    /// Program and arguments, run directly (no shell).
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub requirements: Requirements,
    /// The task's own labels (for filtering and, later, prediction).
    pub labels: BTreeMap<String, String>,
    /// Wall-clock limit of one attempt, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Further attempts after the first one fails, times out or is lost.
    pub retries: u32,
    /// Higher runs first.
    pub priority: i32,
    /// Variables whose values no read returns (see [`Secret`]); set for the task like `env`.
    /// (Never skipped when empty: the binary encoding is positional.)
    #[serde(default)]
    pub secret_env: BTreeMap<String, Secret>,
    /// Shipped code, input files, artifacts, JUnit results (see [`SuiteSpec`]). Boxed: most
    /// tasks have none, and every live task carries the field.
    #[serde(default)]
    pub suite: Option<Box<SuiteSpec>>,
}

static NO_SUITE: SuiteSpec = SuiteSpec {
    code: None,
    files: Vec::new(),
    artifacts: Vec::new(),
    junit_from: None,
};

impl TaskSpec {
    /// The suite parts, empty when there are none.
    pub fn suite(&self) -> &SuiteSpec {
        self.suite.as_deref().unwrap_or(&NO_SUITE)
    }
}

/// What every human-readable form of a secret value shows.
pub const REDACTED: &str = "<redacted>";

/// A value that is never shown. It is encoded as itself where the ledger stores and replicates
/// it (the binary codec: the Raft log, snapshots, the archive, mesh messages), and as
/// [`REDACTED`] in every human-readable form — JSON (the API, exports, reports, the dashboard)
/// and `Debug` (logs). The rule sits in the type, so no read path can forget it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for the one place that needs it: the environment of the task's process.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(REDACTED)
        } else {
            s.serialize_str(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Read back from an API answer (JSON), the value is [`REDACTED`]: the real one was never
    /// in it. Submits take plain strings (`TaskRequest::secret_env`), never this type.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Pending,
    Assigned,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Lost,
}

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::TimedOut,
        TaskState::Cancelled,
        TaskState::Lost,
    ];

    pub fn is_final(self) -> bool {
        !matches!(
            self,
            TaskState::Pending | TaskState::Assigned | TaskState::Running
        )
    }

    /// Holds a reservation on a worker.
    pub fn is_active(self) -> bool {
        matches!(self, TaskState::Assigned | TaskState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::TimedOut => "timed_out",
            TaskState::Cancelled => "cancelled",
            TaskState::Lost => "lost",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|t| t.as_str() == s.to_ascii_lowercase().replace('-', "_"))
            .ok_or_else(|| {
                format!(
                    "unknown task state {s:?}; use one of: {}",
                    TaskState::ALL.map(|t| t.as_str()).join(", ")
                )
            })
    }
}

/// How one attempt ended, as measured by the worker that ran it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// One of the final states.
    pub state: TaskState,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub peak_rss: Bytes,
    pub cpu_time_ms: u64,
    /// Highest GPU memory the attempt's processes held at once, summed over its GPUs, as NVML
    /// attributes it per process (sampled with the node's stats; 0 without GPUs).
    pub peak_gpu_memory: Bytes,
    /// Why, in words, when the exit code does not say it (spawn error, timeout, lost worker).
    pub message: Option<String>,
    /// The last bytes of the attempt's output, kept in the ledger so they outlive the worker
    /// (at most [`TAIL_BYTES`] each).
    pub stdout_tail: String,
    pub stderr_tail: String,
    /// What the task reported on its output as `TESTMESH_METRIC name=value unit` lines.
    pub metrics: Vec<BenchMetric>,
    /// Artifacts and test cases the attempt left (see [`Kept`]); boxed, as most have none.
    #[serde(default)]
    pub kept: Option<Box<Kept>>,
}

/// What an attempt of a suite task left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// Files kept on the worker that matched the task's artifact globs.
    pub artifacts: Vec<ArtifactFile>,
    /// Test cases read from the attempt's JUnit XML (`junit_from`).
    pub tests: Vec<TestCase>,
}

/// One figure a benchmark reported, e.g. `TESTMESH_METRIC throughput=1532.5 samples/s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchMetric {
    pub name: String,
    /// Always finite (lines with anything else are not taken).
    pub value: f64,
    pub unit: String,
}

// Values are finite, so equality of their bits is equality of the numbers.
impl Eq for BenchMetric {}

/// Most metrics kept per attempt.
pub const MAX_METRICS: usize = 100;
/// The prefix of a metric line on a task's standard output.
pub const METRIC_PREFIX: &str = "TESTMESH_METRIC ";

impl BenchMetric {
    /// Reads one output line: None when it is not a metric line, an error when it is one but
    /// malformed (so the task's author can be told).
    pub fn parse_line(line: &str) -> Option<Result<BenchMetric, String>> {
        let rest = line.trim_end().strip_prefix(METRIC_PREFIX)?;
        // Quote at most the start of a bad line: a task may print megabytes on one line.
        let line = crate::limits::cut(line.trim_end(), 120);
        let (pair, unit) = match rest.trim().split_once(char::is_whitespace) {
            Some((p, u)) => (p, u.trim()),
            None => (rest.trim(), ""),
        };
        let Some((name, value)) = pair.split_once('=') else {
            return Some(Err(format!(
                "{line:?}: write TESTMESH_METRIC name=value [unit]"
            )));
        };
        let name_ok = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-/:".contains(c));
        if !name_ok {
            return Some(Err(format!(
                "{line:?}: a metric name is 1 to 128 of A-Z a-z 0-9 _ . - / :"
            )));
        }
        match value.parse::<f64>() {
            Ok(v) if v.is_finite() && unit.len() <= 32 => Some(Ok(BenchMetric {
                name: name.to_string(),
                value: v,
                unit: unit.to_string(),
            })),
            Ok(_) if unit.len() > 32 => {
                Some(Err(format!("{line:?}: the unit is at most 32 bytes")))
            }
            _ => Some(Err(format!("{line:?}: {value:?} is not a finite number"))),
        }
    }
}

/// Where and with what an attempt ran, as the ledger knew its worker when it was placed there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub hostname: String,
    pub cpu_model: String,
    /// Models of the GPUs granted, in grant order.
    pub gpu_models: Vec<String>,
    pub gpu_driver: String,
    pub cuda_version: String,
    /// testmesh version of the worker.
    pub version: String,
}

/// Most bytes of each output stream kept in the ledger per attempt.
pub const TAIL_BYTES: usize = 2048;

/// The end of `bytes`, at most [`TAIL_BYTES`] long, cut at a line start where one is near.
pub fn tail_of(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(TAIL_BYTES);
    let mut cut = &bytes[start..];
    if start > 0
        && let Some(nl) = cut.iter().position(|&b| b == b'\n')
        && nl < 256
    {
        cut = &cut[nl + 1..];
    }
    String::from_utf8_lossy(cut).into_owned()
}

impl Outcome {
    /// An ending in `state` with nothing measured (no exit code, no usage, no output).
    pub fn bare(state: TaskState) -> Self {
        Outcome {
            state,
            exit_code: None,
            signal: None,
            peak_rss: Bytes(0),
            cpu_time_ms: 0,
            peak_gpu_memory: Bytes(0),
            message: None,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            metrics: Vec::new(),
            kept: None,
        }
    }

    pub fn artifacts(&self) -> &[ArtifactFile] {
        self.kept.as_ref().map_or(&[], |k| &k.artifacts)
    }

    pub fn tests(&self) -> &[TestCase] {
        self.kept.as_ref().map_or(&[], |k| &k.tests)
    }

    /// What ended the attempt, for retries and flakiness: `lost` is the infrastructure's doing
    /// (a worker lost or leaving, a fenced worker, code that could not be fetched) and never
    /// uses a retry or makes a task flaky; `failed` and `timed_out` are the test's.
    pub fn kind(&self) -> &'static str {
        match self.state {
            TaskState::Lost => "infrastructure",
            TaskState::Failed | TaskState::TimedOut => "test",
            TaskState::Cancelled => "cancelled",
            _ => "none",
        }
    }

    pub fn lost(message: impl Into<String>) -> Self {
        Outcome {
            message: Some(message.into()),
            ..Outcome::bare(TaskState::Lost)
        }
    }
}

/// One try at running a task on one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Counts from 1.
    pub number: u32,
    pub worker: NodeId,
    pub gpus: Vec<GpuGrant>,
    pub assigned_at: UnixMillis,
    pub started_at: Option<UnixMillis>,
    pub pid: Option<u32>,
    pub finished_at: Option<UnixMillis>,
    pub outcome: Option<Outcome>,
    /// Shared by the attempts placed on one worker (the ledger reuses it while the worker's
    /// description is unchanged); encoded as the record itself.
    pub provenance: Arc<Provenance>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub spec: TaskSpec,
    /// The client request that submitted it (submits are idempotent per request id).
    pub request_id: String,
    pub state: TaskState,
    /// Number of the current (or last) attempt; 0 until first assigned.
    pub attempt: u32,
    pub attempts: Vec<Attempt>,
    pub submitted_at: UnixMillis,
    pub finished_at: Option<UnixMillis>,
    pub cancel_requested: bool,
    /// Attempts ended by infrastructure (a worker that left, or was lost before starting the
    /// task or within `ledger::FREE_LOSSES`); they do not count as retries.
    pub handed_back: u32,
    /// Raft log index of the last change, for watching (`?since=`).
    pub rev: u64,
    /// The run it belongs to, if any.
    pub run: Option<u64>,
}

impl Task {
    pub fn current_attempt(&self) -> Option<&Attempt> {
        self.attempts.last().filter(|a| a.number == self.attempt)
    }

    /// Failed at least once and then succeeded.
    pub fn retried(&self) -> bool {
        self.attempts.len() > 1
    }
}

#[cfg(test)]
mod metric_tests {
    use super::*;

    #[test]
    fn metric_lines_parse_and_bad_ones_say_why() {
        let m = BenchMetric::parse_line("TESTMESH_METRIC throughput=1532.5 samples/s")
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.name.as_str(), m.value, m.unit.as_str()),
            ("throughput", 1532.5, "samples/s")
        );
        let m = BenchMetric::parse_line("TESTMESH_METRIC loss=0.25")
            .unwrap()
            .unwrap();
        assert_eq!(m.unit, "");
        assert!(BenchMetric::parse_line("hello").is_none());
        assert!(
            BenchMetric::parse_line("TESTMESH_METRIC x=NaN")
                .unwrap()
                .is_err()
        );
        assert!(
            BenchMetric::parse_line("TESTMESH_METRIC x=inf s")
                .unwrap()
                .is_err()
        );
        assert!(
            BenchMetric::parse_line("TESTMESH_METRIC novalue")
                .unwrap()
                .is_err()
        );
        assert!(
            BenchMetric::parse_line("TESTMESH_METRIC a b=1")
                .unwrap()
                .is_err()
        );
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn a_secret_is_itself_in_the_log_and_redacted_everywhere_people_read() {
        let mut spec = TaskSpec {
            argv: vec!["true".into()],
            ..Default::default()
        };
        spec.secret_env
            .insert("TOKEN".into(), Secret::new("s3cr3t".into()));
        let bytes = crate::codec::encode(&spec).unwrap();
        let back: TaskSpec = crate::codec::decode(&bytes).unwrap();
        assert_eq!(back.secret_env["TOKEN"].expose(), "s3cr3t");
        let json = serde_json::to_string(&spec).unwrap();
        assert!(
            !json.contains("s3cr3t") && json.contains(REDACTED),
            "{json}"
        );
        let debug = format!("{spec:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        // An empty map is encoded too (the binary encoding is positional).
        let plain = TaskSpec::default();
        let back: TaskSpec = crate::codec::decode(&crate::codec::encode(&plain).unwrap()).unwrap();
        assert_eq!(back, plain);
    }
}
