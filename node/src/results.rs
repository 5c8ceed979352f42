//! A run's results with their provenance, as JSON, JUnit XML and a status badge. Pure: ledger
//! records in, documents out.

use std::fmt::Write;

use serde::{Deserialize, Serialize};
use testmesh_consensus::runs::{Run, RunSummary, is_flaky, summarise};
use testmesh_consensus::suite::{MergedTest, TestCounts, TestResult, merge};
use testmesh_consensus::task::{BenchMetric, Provenance, Task, TaskState};

/// One attempt as the results show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptResult {
    pub number: u32,
    pub worker: String,
    #[serde(flatten)]
    pub provenance: Provenance,
    pub state: Option<TaskState>,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    /// Unix milliseconds.
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub duration_ms: Option<u64>,
    /// What ended it: `test` (failed or timed out: uses a retry, can make a test flaky),
    /// `infrastructure` (worker lost or leaving, code fetch failed: retried without using a
    /// retry, never flaky), `cancelled`, or `none` (passed or not ended).
    #[serde(default)]
    pub kind: String,
    /// Files it kept (`--artifacts`, `--junit-from`).
    #[serde(default)]
    pub artifacts: usize,
}

/// One task of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: u64,
    pub name: String,
    pub command: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub state: TaskState,
    pub flaky: bool,
    /// Attempts beyond the first.
    pub retries: u32,
    pub duration_ms: Option<u64>,
    /// From the last attempt's output.
    pub metrics: Vec<BenchMetric>,
    pub attempts: Vec<AttemptResult>,
    pub stdout_tail: String,
    pub stderr_tail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResults {
    pub run: u64,
    pub name: String,
    pub metadata: std::collections::BTreeMap<String, String>,
    pub created_at: u64,
    pub summary: RunSummary,
    pub tasks: Vec<TaskResult>,
    /// Every test case the tasks' JUnit XML reported, failures first (see `suite::merge`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<MergedTest>,
    #[serde(default)]
    pub test_counts: TestCounts,
    /// Slowest task's run time over the mean (how even the shards were); None until done.
    #[serde(default)]
    pub shard_balance: Option<f64>,
}

fn attempt_result(a: &testmesh_consensus::task::Attempt) -> AttemptResult {
    let o = a.outcome.as_ref();
    AttemptResult {
        number: a.number,
        worker: a.worker.to_string(),
        provenance: (*a.provenance).clone(),
        state: o.map(|o| o.state),
        exit_code: o.and_then(|o| o.exit_code),
        message: o.and_then(|o| o.message.clone()),
        started_at: a.started_at.map(|t| t.0),
        finished_at: a.finished_at.map(|t| t.0),
        duration_ms: match (a.started_at, a.finished_at) {
            (Some(s), Some(f)) => Some(f.0.saturating_sub(s.0)),
            _ => None,
        },
        kind: o.map_or("none", |o| o.kind()).to_string(),
        artifacts: o.map_or(0, |o| o.artifacts().len()),
    }
}

pub fn task_result(t: &Task) -> TaskResult {
    let last = t.attempts.last();
    let outcome = last.and_then(|a| a.outcome.as_ref());
    TaskResult {
        task: t.id.0,
        name: t.spec.name.clone(),
        command: t.spec.argv.clone(),
        labels: t.spec.labels.clone(),
        state: t.state,
        flaky: is_flaky(t),
        retries: (t.attempts.len() as u32).saturating_sub(1),
        duration_ms: last.and_then(|a| attempt_result(a).duration_ms),
        metrics: outcome.map(|o| o.metrics.clone()).unwrap_or_default(),
        attempts: t.attempts.iter().map(attempt_result).collect(),
        stdout_tail: outcome.map(|o| o.stdout_tail.clone()).unwrap_or_default(),
        stderr_tail: outcome.map(|o| o.stderr_tail.clone()).unwrap_or_default(),
    }
}

pub fn results(run: &Run, tasks: &[&Task]) -> RunResults {
    let summary = summarise(tasks.iter().copied());
    let tasks_out: Vec<TaskResult> = tasks.iter().map(|t| task_result(t)).collect();
    let (tests, test_counts) = merge(tasks.iter().copied());
    let shard_balance = (summary.done && tasks_out.len() > 1).then(|| {
        let times: Vec<u64> = tasks_out.iter().filter_map(|t| t.duration_ms).collect();
        testmesh_planner::split::balance(&times)
    });
    RunResults {
        run: run.id,
        name: run.name.clone(),
        metadata: run.metadata.clone(),
        created_at: run.created_at.0,
        summary,
        tasks: tasks_out,
        tests,
        test_counts,
        shard_balance,
    }
}

/// XML text and attribute escaping; characters XML 1.0 cannot carry become U+FFFD.
fn x(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn secs(ms: Option<u64>) -> String {
    format!("{:.3}", ms.unwrap_or(0) as f64 / 1000.0)
}

/// ISO 8601 UTC from Unix milliseconds (JUnit's `timestamp`).
pub fn iso8601(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Where an attempt ran, for the test report's output.
fn provenance_lines(a: &AttemptResult) -> String {
    let p = &a.provenance;
    format!(
        "attempt {} on worker {} ({}), cpu {:?}, gpus {:?}, driver {:?}, cuda {:?}, testmesh {}, {} → {}, exit {:?}\n",
        a.number,
        a.worker,
        p.hostname,
        p.cpu_model,
        p.gpu_models,
        p.gpu_driver,
        p.cuda_version,
        p.version,
        a.started_at.map_or("-".into(), iso8601),
        a.finished_at.map_or("-".into(), iso8601),
        a.exit_code
    )
}

/// The run as JUnit XML. Without per-test results: one testsuite, one testcase per task. A
/// failed or timed-out task is a `failure` or an `error`; a flaky one passes with its failed
/// attempts as `flakyFailure` (Surefire's convention); a cancelled or never-run one is
/// `skipped`. With them (`--junit-from`): every test case the shards reported, each with its
/// shard, worker and attempt in `system-out`; a task that failed without a failing test (it
/// crashed, or wrote no JUnit) is a testcase of its own.
pub fn junit(r: &RunResults) -> String {
    let mut cases = String::new();
    let (mut total, mut failures, mut errors, mut skipped) = (0usize, 0usize, 0usize, 0usize);
    for t in &r.tasks {
        let tests: Vec<&MergedTest> = r.tests.iter().filter(|m| m.task == t.task).collect();
        for m in &tests {
            total += 1;
            match m.result {
                TestResult::Failed => failures += 1,
                TestResult::Error => errors += 1,
                TestResult::Skipped => skipped += 1,
                TestResult::Passed => {}
            }
            test_case(&mut cases, m);
        }
        let failing_test = tests.iter().any(|m| m.result.is_failure());
        if tests.is_empty() || (t.state != TaskState::Succeeded && !failing_test) {
            total += 1;
            match t.state {
                TaskState::Failed => failures += 1,
                TaskState::TimedOut | TaskState::Lost => errors += 1,
                TaskState::Succeeded => {}
                _ => skipped += 1,
            }
            task_case(&mut cases, r, t);
        }
    }
    let time: u64 = r.tasks.iter().filter_map(|t| t.duration_ms).sum();
    let mut h = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        h,
        "<testsuites name=\"{}\" tests=\"{total}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{}\">",
        x(&r.name),
        secs(Some(time))
    );
    let _ = writeln!(
        h,
        "  <testsuite name=\"{}\" id=\"{}\" tests=\"{total}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{}\" timestamp=\"{}\" hostname=\"testmesh\">",
        x(&r.name),
        r.run,
        secs(Some(time)),
        iso8601(r.created_at)
    );
    h.push_str("    <properties>\n");
    let _ = writeln!(
        h,
        "      <property name=\"testmesh.run\" value=\"{}\"/>",
        r.run
    );
    for (k, v) in &r.metadata {
        let _ = writeln!(h, "      <property name=\"{}\" value=\"{}\"/>", x(k), x(v));
    }
    h.push_str("    </properties>\n");
    h.push_str(&cases);
    h.push_str("  </testsuite>\n</testsuites>\n");
    h
}

/// One test case a shard reported.
fn test_case(h: &mut String, m: &MergedTest) {
    let _ = write!(
        h,
        "    <testcase name=\"{}\" classname=\"{}\" time=\"{}\">",
        x(&m.name),
        x(&m.classname),
        secs(Some(m.time_ms))
    );
    let why = m.message.as_deref().unwrap_or("");
    match m.result {
        TestResult::Failed => {
            let _ = write!(h, "<failure message=\"{}\"/>", x(why));
        }
        TestResult::Error => {
            let _ = write!(h, "<error message=\"{}\"/>", x(why));
        }
        TestResult::Skipped => {
            let _ = write!(h, "<skipped message=\"{}\"/>", x(why));
        }
        TestResult::Passed => {
            for f in &m.earlier_failures {
                let _ = write!(h, "<flakyFailure type=\"failed\" message=\"{}\"/>", x(f));
            }
        }
    }
    let _ = writeln!(
        h,
        "<system-out>{}</system-out></testcase>",
        x(&format!(
            "shard {:?} (task {}), attempt {} on worker {} ({}){}\n",
            m.shard,
            m.task,
            m.attempt,
            m.worker,
            m.hostname,
            if m.flaky {
                "; flaky: failed in an earlier attempt, passed on a retry"
            } else {
                ""
            }
        ))
    );
}

/// A task as one test case (runs without per-test results, or a task that failed by itself).
fn task_case(h: &mut String, r: &RunResults, t: &TaskResult) {
    let _ = write!(
        h,
        "    <testcase name=\"{}\" classname=\"{}\" time=\"{}\">",
        x(&t.name),
        x(&r.name),
        secs(t.duration_ms)
    );
    let last = t.attempts.last();
    let why = last
        .and_then(|a| a.message.clone())
        .unwrap_or_else(|| t.state.to_string());
    match t.state {
        TaskState::Succeeded => {
            for a in t
                .attempts
                .iter()
                .filter(|a| matches!(a.state, Some(TaskState::Failed | TaskState::TimedOut)))
            {
                let _ = write!(
                    h,
                    "<flakyFailure type=\"{}\" message=\"{}\"/>",
                    a.state.map_or("failed".into(), |s| s.to_string()),
                    x(a.message.as_deref().unwrap_or("failed"))
                );
            }
        }
        TaskState::Failed => {
            let _ = write!(
                h,
                "<failure type=\"failed\" message=\"{}\">{}</failure>",
                x(&why),
                x(&t.stderr_tail)
            );
        }
        TaskState::TimedOut | TaskState::Lost => {
            let _ = write!(h, "<error type=\"{}\" message=\"{}\"/>", t.state, x(&why));
        }
        _ => {
            let _ = write!(h, "<skipped message=\"{}\"/>", x(&why));
        }
    }
    let mut out: String = t.attempts.iter().map(provenance_lines).collect();
    if t.flaky {
        out.push_str("flaky: failed, then passed on a retry\n");
    }
    for m in &t.metrics {
        let _ = writeln!(out, "metric {}={} {}", m.name, m.value, m.unit);
    }
    out.push_str(&t.stdout_tail);
    let _ = write!(h, "<system-out>{}</system-out>", x(&out));
    if !t.stderr_tail.is_empty() {
        let _ = write!(h, "<system-err>{}</system-err>", x(&t.stderr_tail));
    }
    h.push_str("</testcase>\n");
}

/// A shields-style SVG badge: "testmesh | passed" (green), "failed 3/40" (red), "running 5/40".
pub fn badge(s: &RunSummary) -> String {
    let finished: usize = s
        .by_state
        .iter()
        .filter(|(st, _)| st.is_final())
        .map(|(_, n)| n)
        .sum();
    let (text, colour) = if s.passed {
        (
            if s.flaky > 0 {
                format!("passed, {} flaky", s.flaky)
            } else {
                "passed".to_string()
            },
            "#4c1",
        )
    } else if s.failed > 0 {
        (format!("failed {}/{}", s.failed, s.total), "#e05d44")
    } else {
        (format!("running {finished}/{}", s.total), "#dfb317")
    };
    let (lw, rw) = (62, 12 + 7 * text.chars().count() as u32);
    let w = lw + rw;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="20" role="img" aria-label="testmesh: {t}"><title>testmesh: {t}</title><rect width="{lw}" height="20" fill="#555"/><rect x="{lw}" width="{rw}" height="20" fill="{colour}"/><g fill="#fff" font-family="DejaVu Sans,Verdana,sans-serif" font-size="11"><text x="6" y="14">testmesh</text><text x="{tx}" y="14">{t}</text></g></svg>"##,
        t = x(&text),
        tx = lw + 6
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_iso_8601_utc() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00");
        assert_eq!(iso8601(1_795_000_000_000), "2026-11-18T11:06:40");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00");
    }

    #[test]
    fn xml_escapes_and_drops_what_xml_cannot_carry() {
        assert_eq!(x("a<b>&\"'\u{1}"), "a&lt;b&gt;&amp;&quot;&apos;\u{FFFD}");
    }

    #[test]
    fn the_badge_says_how_the_run_stands() {
        let mut s = RunSummary {
            total: 4,
            ..Default::default()
        };
        s.by_state.insert(TaskState::Running, 4);
        assert!(badge(&s).contains("running 0/4"));
        s.failed = 1;
        assert!(badge(&s).contains("failed 1/4") && badge(&s).contains("#e05d44"));
        s.failed = 0;
        s.passed = true;
        s.flaky = 1;
        assert!(badge(&s).contains("passed, 1 flaky"));
        roxmltree::Document::parse(&badge(&s)).unwrap();
    }
}
