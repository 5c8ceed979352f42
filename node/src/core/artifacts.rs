//! Artifacts: files an attempt leaves in its directory that match the task's globs, kept by the
//! worker that ran it in `<data-dir>/artifacts/<task>.<attempt>/` (deleted with the task's
//! output when retention drops it), served over the mesh and the API; and the test cases of
//! the JUnit XML files among them.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use testmesh_consensus::TaskId;
use testmesh_consensus::suite::{
    ArtifactFile, MAX_ARTIFACTS, TestCase, TestResult, check_relative,
};

/// Largest artifact file kept, and most bytes kept per attempt.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
pub const MAX_ATTEMPT_BYTES: u64 = 256 << 20;
/// Largest JUnit file read.
const MAX_JUNIT_BYTES: u64 = 32 << 20;

/// Where a worker keeps an attempt's artifacts.
pub fn dir_of(data_dir: &Path, task: TaskId, attempt: u32) -> PathBuf {
    data_dir
        .join("artifacts")
        .join(format!("{}.{attempt}", task.0))
}

/// What an attempt left behind.
#[derive(Debug, Default)]
pub struct Collected {
    pub files: Vec<ArtifactFile>,
    pub tests: Vec<TestCase>,
    /// What was left out or could not be read, in words (goes into the attempt's message).
    pub notes: Vec<String>,
}

fn globs(patterns: &[&str]) -> Result<globset::GlobSet, String> {
    let mut b = globset::GlobSetBuilder::new();
    for p in patterns {
        b.add(
            globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("artifact glob {p:?}: {e}"))?,
        );
    }
    b.build().map_err(|e| e.to_string())
}

/// Copies the files of `work` matching `patterns` (and `junit_from`) into `dest`, within the
/// caps, and reads the test cases of those matching `junit_from`. Blocking.
pub fn collect(
    work: &Path,
    patterns: &[String],
    junit_from: Option<&str>,
    dest: &Path,
) -> Collected {
    let mut c = Collected::default();
    let mut all: Vec<&str> = patterns.iter().map(String::as_str).collect();
    all.extend(junit_from);
    if all.is_empty() {
        return c;
    }
    let set = match globs(&all) {
        Ok(s) => s,
        Err(e) => {
            c.notes.push(e);
            return c;
        }
    };
    let junit = junit_from.and_then(|j| globs(&[j]).ok());
    let (mut total, mut skipped) = (0u64, 0usize);
    let walk = walkdir::WalkDir::new(work)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file());
    for e in walk {
        let Ok(rel) = e.path().strip_prefix(work) else {
            continue;
        };
        if !set.is_match(rel) {
            continue;
        }
        let size = e.metadata().map_or(0, |m| m.len());
        let name = rel.to_string_lossy().into_owned();
        if junit.as_ref().is_some_and(|j| j.is_match(rel)) {
            if size > MAX_JUNIT_BYTES {
                c.notes.push(format!(
                    "{name}: over {MAX_JUNIT_BYTES} bytes, not read as JUnit"
                ));
            } else {
                match std::fs::read_to_string(e.path()) {
                    Ok(xml) => match parse_junit(&xml) {
                        Ok(t) => c.tests.extend(t),
                        Err(why) => c.notes.push(format!("{name}: not JUnit XML ({why})")),
                    },
                    Err(why) => c.notes.push(format!("{name}: {why}")),
                }
            }
        }
        if c.files.len() >= MAX_ARTIFACTS
            || size > MAX_FILE_BYTES
            || total + size > MAX_ATTEMPT_BYTES
        {
            skipped += 1;
            continue;
        }
        let to = dest.join(rel);
        let copied = to
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::copy(e.path(), &to));
        match copied {
            Ok(n) => {
                total += n;
                c.files.push(ArtifactFile {
                    path: name,
                    size: n,
                });
            }
            Err(why) => c.notes.push(format!("{name}: cannot keep it: {why}")),
        }
    }
    if skipped > 0 {
        c.notes.push(format!(
            "{skipped} artifact file(s) not kept: at most {MAX_ARTIFACTS} files, {MAX_FILE_BYTES} bytes each and {MAX_ATTEMPT_BYTES} per attempt"
        ));
    }
    c
}

/// The test cases of a JUnit XML document (`<testsuites>`, `<testsuite>` or pytest's form).
pub fn parse_junit(xml: &str) -> Result<Vec<TestCase>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let root = doc.root_element().tag_name().name();
    if root != "testsuites" && root != "testsuite" {
        return Err(format!(
            "the root element is <{root}>, not <testsuites> or <testsuite>"
        ));
    }
    let mut out = Vec::new();
    for tc in doc.descendants().filter(|n| n.has_tag_name("testcase")) {
        let secs: f64 = tc
            .attribute("time")
            .and_then(|t| t.trim().parse().ok())
            .filter(|t: &f64| t.is_finite() && *t >= 0.0)
            .unwrap_or(0.0);
        let mut result = TestResult::Passed;
        let mut message = None;
        for child in tc.children().filter(|n| n.is_element()) {
            let r = match child.tag_name().name() {
                "failure" => TestResult::Failed,
                "error" => TestResult::Error,
                "skipped" => TestResult::Skipped,
                _ => continue,
            };
            // A failure outranks a skip; the first failure's message is kept.
            if result == TestResult::Passed || (r.is_failure() && !result.is_failure()) {
                result = r;
                message = child
                    .attribute("message")
                    .map(str::to_string)
                    .or_else(|| {
                        child
                            .text()
                            .map(|t| t.trim().lines().next().unwrap_or("").to_string())
                    })
                    .filter(|m| !m.is_empty());
            }
        }
        out.push(TestCase {
            classname: tc.attribute("classname").unwrap_or("").to_string(),
            name: tc.attribute("name").unwrap_or("").to_string(),
            time_ms: (secs * 1000.0).round() as u64,
            result,
            message,
        });
    }
    Ok(out)
}

/// Part of an artifact this node keeps (what another node asks for over the mesh).
pub fn read_local(
    data_dir: &Path,
    task: TaskId,
    attempt: u32,
    path: &str,
    offset: u64,
    limit: u64,
) -> Result<(Vec<u8>, u64), String> {
    check_relative("artifact", path)?;
    let p = dir_of(data_dir, task, attempt).join(path);
    let mut f = std::fs::File::open(&p).map_err(|_| {
        format!("this node keeps no artifact {path:?} of task {task} attempt {attempt}")
    })?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    f.seek(SeekFrom::Start(offset.min(len)))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    f.take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    Ok((buf, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PYTEST: &str = r#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="0.5"><testcase classname="tests.test_a" name="test_ok" time="0.101" /><testcase classname="tests.test_a.TestB" name="test_bad[1]" time="0.2"><failure message="assert 1 == 2">def test_bad(): ...</failure></testcase><testcase classname="tests.test_a" name="test_skip" time="0.000"><skipped type="pytest.skip" message="not here">skip</skipped></testcase><testcase classname="tests.test_a" name="test_err" time="0"><error message="fixture blew up" /></testcase></testsuite></testsuites>"#;

    #[test]
    fn pytest_junit_reads_into_test_cases() {
        let t = parse_junit(PYTEST).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].result, TestResult::Passed);
        assert_eq!(t[0].time_ms, 101);
        assert_eq!(t[1].id(), "tests.test_a.TestB.test_bad[1]");
        assert_eq!(t[1].result, TestResult::Failed);
        assert_eq!(t[1].message.as_deref(), Some("assert 1 == 2"));
        assert_eq!(t[2].result, TestResult::Skipped);
        assert_eq!(t[3].result, TestResult::Error);
        assert!(parse_junit("<html/>").unwrap_err().contains("<html>"));
        assert!(parse_junit("not xml").is_err());
    }

    #[test]
    fn artifacts_are_collected_within_the_tree() {
        let work = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let dest = dir_of(data.path(), TaskId(7), 1);
        std::fs::create_dir_all(work.path().join("reports/deep")).unwrap();
        std::fs::write(work.path().join("reports/junit.xml"), PYTEST).unwrap();
        std::fs::write(work.path().join("reports/deep/log.txt"), "x").unwrap();
        std::fs::write(work.path().join("other.txt"), "y").unwrap();
        let c = collect(
            work.path(),
            &["reports/**/*.txt".into()],
            Some("reports/*.xml"),
            &dest,
        );
        let names: Vec<&str> = c.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["reports/deep/log.txt", "reports/junit.xml"]);
        assert_eq!(c.tests.len(), 4);
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        assert_eq!(
            read_local(data.path(), TaskId(7), 1, "reports/deep/log.txt", 0, 10).unwrap(),
            (b"x".to_vec(), 1)
        );
        assert!(read_local(data.path(), TaskId(7), 1, "../../etc/passwd", 0, 10).is_err());
        assert!(read_local(data.path(), TaskId(7), 1, "other.txt", 0, 10).is_err());
    }
}
