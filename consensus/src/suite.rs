//! Test suites run from a checkout: the shipped working tree ([`CodeRef`]), small input files
//! (a shard's test list), the artifacts an attempt leaves behind and the per-test results read
//! from its JUnit XML — with their caps, and the pure merge of a run's per-test results.

use serde::{Deserialize, Serialize};

use crate::limits::cut;
use crate::model::NodeId;
use crate::task::{Task, TaskState};

/// A working tree packed by the submitter (`testmesh run --workdir`): a gzipped tar, named by
/// the SHA-256 of its bytes, kept by the node it was uploaded to. Workers fetch it from there
/// over the mesh and unpack it into a directory of the attempt's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRef {
    /// Lowercase hex SHA-256 of the archive.
    pub hash: String,
    pub size: u64,
    /// The node that holds it.
    pub origin: NodeId,
}

/// The parts of a task that run a suite from a checkout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuiteSpec {
    /// The working tree shipped with the task (`--workdir`); it runs in its own unpacked copy.
    pub code: Option<CodeRef>,
    /// Small files written into the task's directory before it starts (a shard's test list).
    pub files: Vec<InputFile>,
    /// Globs (relative to the task's directory) of files kept after each attempt.
    pub artifacts: Vec<String>,
    /// Glob of the JUnit XML files among them whose test cases become the attempt's results.
    pub junit_from: Option<String>,
}

impl SuiteSpec {
    pub fn is_empty(&self) -> bool {
        self.code.is_none()
            && self.files.is_empty()
            && self.artifacts.is_empty()
            && self.junit_from.is_none()
    }
}

/// A small file written into the task's directory before it starts (e.g. `.testmesh/tests.txt`
/// with a shard's test ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// Relative, without `..`.
    pub path: String,
    pub content: String,
}

/// A file an attempt left that matched one of the task's artifact globs; the worker that ran
/// the attempt keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactFile {
    /// Relative to the task's directory.
    pub path: String,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestResult {
    Passed,
    Failed,
    Error,
    Skipped,
}

impl TestResult {
    pub fn is_failure(self) -> bool {
        matches!(self, TestResult::Failed | TestResult::Error)
    }
}

/// One test case of one attempt, from the JUnit XML it wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCase {
    /// JUnit `classname` (pytest: the module path and class, dotted).
    pub classname: String,
    pub name: String,
    pub time_ms: u64,
    pub result: TestResult,
    /// The failure's or error's message (cut to [`MAX_TEST_MESSAGE`]).
    pub message: Option<String>,
}

impl TestCase {
    /// The id runs compare tests by: `classname.name`.
    pub fn id(&self) -> String {
        if self.classname.is_empty() {
            self.name.clone()
        } else {
            format!("{}.{}", self.classname, self.name)
        }
    }
}

/// The id of a pytest node id (`tests/test_a.py::TestX::test_y[1]`) in the form its JUnit XML
/// gives (`tests.test_a.TestX.test_y[1]`), so collected ids and results can be matched.
pub fn test_id_of_node_id(node_id: &str) -> String {
    let (path, rest) = match node_id.find("::") {
        Some(i) => (&node_id[..i], Some(&node_id[i + 2..])),
        None => (node_id, None),
    };
    let module = path
        .strip_suffix(".py")
        .unwrap_or(path)
        .replace(['/', '\\'], ".");
    match rest {
        Some(r) => {
            // Only the part before a parameter list is a path; `::` inside `[...]` stays.
            let (head, params) = match r.find('[') {
                Some(i) => (&r[..i], &r[i..]),
                None => (r, ""),
            };
            format!("{module}.{}{params}", head.replace("::", "."))
        }
        None => module,
    }
}

/// Most input files per task, and bytes of them together.
pub const MAX_INPUT_FILES: usize = 16;
pub const MAX_INPUT_BYTES: usize = 512 << 10;
/// Most artifact globs per task, and longest glob.
pub const MAX_ARTIFACT_GLOBS: usize = 32;
pub const MAX_GLOB_LEN: usize = 512;
/// Most artifact files recorded per attempt (more are left where they are, and said so).
pub const MAX_ARTIFACTS: usize = 1000;
/// Most test cases kept per attempt, bytes of them together (one attempt's report must fit a
/// log entry), and longest failure message of one.
pub const MAX_TESTS: usize = 20_000;
pub const MAX_TESTS_BYTES: usize = 768 << 10;
/// Messages beyond this many bytes in one attempt are dropped (the test case stays).
pub const MAX_TEST_MESSAGES_BYTES: usize = 128 << 10;
pub const MAX_TEST_MESSAGE: usize = 512;
/// Longest classname or name kept.
pub const MAX_TEST_NAME: usize = 1024;

/// Checks the suite parts of a spec (code, input files, artifact globs).
pub fn check(spec: &crate::task::TaskSpec) -> Result<(), String> {
    let spec = spec.suite();
    if let Some(c) = &spec.code
        && (c.hash.len() != 64
            || !c
                .hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    {
        return Err(format!(
            "code hash {:?} is not 64 lowercase hex digits (a SHA-256)",
            cut(&c.hash, 80)
        ));
    }
    if spec.files.len() > MAX_INPUT_FILES {
        return Err(format!(
            "{} input files; at most {MAX_INPUT_FILES}",
            spec.files.len()
        ));
    }
    let bytes: usize = spec
        .files
        .iter()
        .map(|f| f.path.len() + f.content.len())
        .sum();
    if bytes > MAX_INPUT_BYTES {
        return Err(format!(
            "the input files are {bytes} bytes; at most {MAX_INPUT_BYTES} together"
        ));
    }
    for f in &spec.files {
        check_relative("input file", &f.path)?;
    }
    if spec.artifacts.len() > MAX_ARTIFACT_GLOBS {
        return Err(format!(
            "{} artifact globs; at most {MAX_ARTIFACT_GLOBS}",
            spec.artifacts.len()
        ));
    }
    for g in spec.artifacts.iter().chain(spec.junit_from.iter()) {
        if g.is_empty() || g.len() > MAX_GLOB_LEN {
            return Err(format!(
                "artifact glob {:?} must be 1 to {MAX_GLOB_LEN} bytes",
                cut(g, 80)
            ));
        }
        check_relative("artifact glob", g)?;
    }
    Ok(())
}

/// A path that stays inside the task's directory.
pub fn check_relative(what: &str, p: &str) -> Result<(), String> {
    if p.is_empty()
        || p.starts_with('/')
        || p.split(['/', '\\']).any(|part| part == "..")
        || p.contains('\0')
    {
        return Err(format!(
            "{what} {:?} must be a relative path inside the task's directory (no leading / and no ..)",
            cut(p, 80)
        ));
    }
    Ok(())
}

/// Brings per-attempt suite data within the caps (the ledger keeps no more whatever a worker
/// sends). Deterministic.
pub fn clamp(artifacts: &mut Vec<ArtifactFile>, tests: &mut Vec<TestCase>) {
    artifacts.truncate(MAX_ARTIFACTS);
    artifacts.retain(|a| a.path.len() <= crate::limits::MAX_WORKDIR);
    tests.truncate(MAX_TESTS);
    let (mut bytes, mut messages, mut keep) = (0usize, 0usize, tests.len());
    for (i, t) in tests.iter_mut().enumerate() {
        if t.classname.len() > MAX_TEST_NAME {
            t.classname = cut(&t.classname, MAX_TEST_NAME);
        }
        if t.name.len() > MAX_TEST_NAME {
            t.name = cut(&t.name, MAX_TEST_NAME);
        }
        if let Some(m) = &mut t.message
            && m.len() > MAX_TEST_MESSAGE
        {
            *m = cut(m, MAX_TEST_MESSAGE);
        }
        let m = t.message.as_ref().map_or(0, String::len);
        if messages + m > MAX_TEST_MESSAGES_BYTES {
            t.message = None;
        } else {
            messages += m;
        }
        bytes += 24 + t.classname.len() + t.name.len() + t.message.as_ref().map_or(0, String::len);
        if bytes > MAX_TESTS_BYTES {
            keep = i;
            break;
        }
    }
    tests.truncate(keep);
}

/// One test of a run, merged over its shards and attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergedTest {
    pub id: String,
    pub classname: String,
    pub name: String,
    /// The task (shard) that ran it, and its name.
    pub task: u64,
    pub shard: String,
    /// The attempt whose result counts (the task's last that reported tests).
    pub attempt: u32,
    pub worker: NodeId,
    pub hostname: String,
    pub time_ms: u64,
    pub result: TestResult,
    pub message: Option<String>,
    /// Failed in an earlier attempt of its shard, passed in the one that counts.
    pub flaky: bool,
    /// Messages of the earlier failures (for `flakyFailure`).
    pub earlier_failures: Vec<String>,
}

/// Counts over a run's merged tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCounts {
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
    pub errors: usize,
    pub skipped: usize,
    pub flaky: usize,
}

/// Every test of a run's tasks: per task, the results of its last attempt that reported any;
/// a test that failed in an earlier attempt of the task and passed in that one is flaky.
/// Attempts ended by the infrastructure (lost) report nothing and count for nothing.
pub fn merge<'a>(tasks: impl IntoIterator<Item = &'a Task>) -> (Vec<MergedTest>, TestCounts) {
    let mut out = Vec::new();
    for t in tasks {
        let with_tests: Vec<_> = t
            .attempts
            .iter()
            .filter_map(|a| a.outcome.as_ref().map(|o| (a, o)))
            .filter(|(_, o)| o.state != TaskState::Lost && !o.tests().is_empty())
            .collect();
        let Some(((last, outcome), earlier)) = with_tests.split_last() else {
            continue;
        };
        for c in outcome.tests() {
            let id = c.id();
            let earlier_failures: Vec<String> = earlier
                .iter()
                .filter_map(|(_, o)| o.tests().iter().find(|e| e.id() == id))
                .filter(|e| e.result.is_failure())
                .map(|e| e.message.clone().unwrap_or_else(|| "failed".into()))
                .collect();
            out.push(MergedTest {
                id,
                classname: c.classname.clone(),
                name: c.name.clone(),
                task: t.id.0,
                shard: t.spec.name.clone(),
                attempt: last.number,
                worker: last.worker,
                hostname: last.provenance.hostname.clone(),
                time_ms: c.time_ms,
                result: c.result,
                message: c.message.clone(),
                flaky: c.result == TestResult::Passed && !earlier_failures.is_empty(),
                earlier_failures,
            });
        }
    }
    // Failures first, then by id: what a reader looks for first.
    out.sort_by(|a, b| {
        (!a.result.is_failure(), !a.flaky, &a.id).cmp(&(!b.result.is_failure(), !b.flaky, &b.id))
    });
    let mut n = TestCounts {
        total: out.len(),
        ..Default::default()
    };
    for t in &out {
        match t.result {
            TestResult::Passed => n.passed += 1,
            TestResult::Failed => n.failed += 1,
            TestResult::Error => n.errors += 1,
            TestResult::Skipped => n.skipped += 1,
        }
        n.flaky += t.flaky as usize;
    }
    (out, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_map_to_junit_ids() {
        assert_eq!(
            test_id_of_node_id("tests/test_a.py::TestX::test_y[1::2]"),
            "tests.test_a.TestX.test_y[1::2]"
        );
        assert_eq!(test_id_of_node_id("test_b.py::test_z"), "test_b.test_z");
        let c = TestCase {
            classname: "tests.test_a.TestX".into(),
            name: "test_y[1::2]".into(),
            time_ms: 1,
            result: TestResult::Passed,
            message: None,
        };
        assert_eq!(c.id(), "tests.test_a.TestX.test_y[1::2]");
    }

    #[test]
    fn an_oversized_report_is_cut_to_fit_one_entry() {
        let long = "x".repeat(MAX_TEST_NAME * 2);
        let mut tests: Vec<TestCase> = (0..MAX_TESTS + 5)
            .map(|i| TestCase {
                classname: long.clone(),
                name: format!("t{i}"),
                time_ms: 1,
                result: TestResult::Failed,
                message: Some(long.clone()),
            })
            .collect();
        clamp(&mut Vec::new(), &mut tests);
        let bytes: usize = tests
            .iter()
            .map(|t| {
                24 + t.classname.len() + t.name.len() + t.message.as_ref().map_or(0, String::len)
            })
            .sum();
        assert!(bytes <= MAX_TESTS_BYTES && !tests.is_empty(), "{bytes}");
        assert!(tests.iter().all(|t| t.classname.len() < MAX_TEST_NAME + 40));
    }

    #[test]
    fn paths_must_stay_inside() {
        for bad in ["/etc/passwd", "../x", "a/../../b", ""] {
            assert!(check_relative("f", bad).is_err(), "{bad}");
        }
        for good in ["a.txt", ".testmesh/tests.txt", "reports/**/*.xml"] {
            assert!(check_relative("f", good).is_ok(), "{good}");
        }
    }
}
