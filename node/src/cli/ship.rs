//! Shipping a checkout with a run (`--workdir`), artifacts and JUnit results (`--artifacts`,
//! `--junit-from`), and the timing split (`--split-by timings --tests-from CMD`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use testmesh_planner::split::{Split, by_timings};

use super::client::Client;
use crate::api::code::{ArtifactView, CodeInfo, Durations};
use crate::core::submit::TaskRequest;

/// Largest packed tree `submit --upload` ships.
pub const DEFAULT_MAX_CODE: u64 = 256 << 20;

#[derive(Debug, Clone, clap::Args)]
pub struct ShipArgs {
    /// Ship this directory (a checkout) to the workers: packed honouring .gitignore and
    /// .testmeshignore, uploaded once (content-addressed), and unpacked into a directory of
    /// each attempt's own where the task runs
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Largest packed tree (compressed)
    #[arg(long, default_value = "256MiB", value_parser = crate::units::parse_size)]
    pub max_code_size: testmesh_consensus::Bytes,
    /// Keep files matching GLOB (relative to the task's directory) after each attempt
    /// (repeatable); fetch them with `testmesh runs artifacts ID`
    #[arg(long = "artifacts", value_name = "GLOB")]
    pub artifacts: Vec<String>,
    /// JUnit XML files the tasks write (e.g. 'junit-*.xml'): kept as artifacts, and their test
    /// cases become the run's per-test results
    #[arg(long, value_name = "GLOB")]
    pub junit_from: Option<String>,
}

/// How a sharded run divides its tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitBy {
    /// Each shard selects its own tests from {shard}/{shards} (e.g. pytest-shard's hashing)
    Name,
    /// testmesh assigns the tests collected by --tests-from to shards by the durations of
    /// earlier runs of the same name, and hands each its list as {tests_file}
    Timings,
}

/// Packs `dir` and makes sure the node holds it; returns the archive's hash.
pub async fn upload(client: &Client, dir: &Path, max: u64) -> anyhow::Result<String> {
    let d = dir.to_path_buf();
    let packed = tokio::task::spawn_blocking(move || crate::pack::pack(&d, max))
        .await?
        .map_err(anyhow::Error::msg)?;
    let short = &packed.hash[..12];
    match client
        .get::<CodeInfo>(&format!("/api/v1/code/{}", packed.hash))
        .await
    {
        Ok(_) => eprintln!(
            "code {short}: {} files, {} ({} packed), already on the node: nothing to upload",
            packed.files,
            bytesize::ByteSize(packed.raw_bytes),
            bytesize::ByteSize(packed.bytes.len() as u64)
        ),
        Err(_) => {
            let n = packed.bytes.len() as u64;
            let _: CodeInfo = client
                .put_bytes(&format!("/api/v1/code/{}", packed.hash), packed.bytes)
                .await
                .context("uploading the working tree")?;
            eprintln!(
                "code {short}: {} files, {} ({} packed) uploaded",
                packed.files,
                bytesize::ByteSize(packed.raw_bytes),
                bytesize::ByteSize(n)
            );
        }
    }
    Ok(packed.hash)
}

/// Applies the shipping options to every task of a run.
pub async fn apply(
    client: &Client,
    a: &ShipArgs,
    tasks: &mut [TaskRequest],
) -> anyhow::Result<Option<String>> {
    let hash = match &a.workdir {
        Some(dir) => Some(upload(client, dir, a.max_code_size.0).await?),
        None => None,
    };
    for t in tasks.iter_mut() {
        if hash.is_some() {
            t.code = hash.clone();
        }
        t.artifacts.extend(a.artifacts.iter().cloned());
        if a.junit_from.is_some() {
            t.junit_from = a.junit_from.clone();
        }
    }
    Ok(hash)
}

/// Runs `cmd` (through `sh -c`) in `dir` and takes the test ids it prints: the lines with `::`
/// (pytest's `--collect-only -q`), or else every line that is one word.
pub fn collect_tests(dir: &Path, cmd: &str) -> anyhow::Result<Vec<String>> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run --tests-from {cmd:?}"))?;
    // pytest exits 5 when it collects nothing; anything else non-zero is a failure to collect.
    if !out.status.success() {
        bail!(
            "--tests-from {cmd:?} failed ({}) in {}; it must print the suite's test ids, e.g. 'pytest --collect-only -q'",
            out.status,
            dir.display()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && !l.starts_with(char::is_whitespace))
        .collect();
    let with_colons: Vec<String> = lines
        .iter()
        .filter(|l| l.contains("::"))
        .map(|l| l.to_string())
        .collect();
    let ids = if with_colons.is_empty() {
        lines
            .iter()
            .filter(|l| !l.contains(char::is_whitespace))
            .map(|l| l.to_string())
            .collect()
    } else {
        with_colons
    };
    if ids.is_empty() {
        bail!("--tests-from {cmd:?} printed no test ids");
    }
    Ok(ids)
}

/// Splits the collected tests by the durations of the newest runs named `name`.
pub async fn split_by_timings(
    client: &Client,
    name: &str,
    tests: &[String],
    shards: usize,
) -> anyhow::Result<(Split, Vec<u64>)> {
    let d: Durations = client
        .get(&format!("/api/v1/tests/durations?name={}", urlencode(name)))
        .await?;
    let split = by_timings(
        tests,
        &d.tests,
        testmesh_consensus::suite::test_id_of_node_id,
        shards,
    );
    Ok((split, d.runs))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The line a run prints about its split, and the metadata it records.
pub fn describe(split: &Split, runs: &[u64], tests: usize) -> (String, BTreeMap<String, String>) {
    let from = if runs.is_empty() {
        "no earlier run of this name".to_string()
    } else {
        format!(
            "durations of run(s) {}",
            runs.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let fallback = if split.estimated > 0 {
        format!(
            "; {} of {tests} tests had no recorded duration and were estimated at {} ms each",
            split.estimated, split.estimate_ms
        )
    } else {
        String::new()
    };
    let line = format!(
        "split {tests} tests into {} shards by timings ({from}): predicted slowest shard / mean {:.2}{fallback}",
        split.shards.len(),
        split.balance()
    );
    let meta = [
        ("split", "timings".to_string()),
        ("split.tests", tests.to_string()),
        ("split.predicted_balance", format!("{:.3}", split.balance())),
        ("split.estimated_tests", split.estimated.to_string()),
        (
            "split.history_runs",
            runs.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    (line, meta)
}

/// `testmesh runs artifacts ID`: downloads each task's kept files into `out/<task name>/`.
pub async fn download(client: &Client, run: u64, out: &Path) -> anyhow::Result<usize> {
    let list: Vec<ArtifactView> = client.get(&format!("/api/v1/runs/{run}/artifacts")).await?;
    if list.is_empty() {
        eprintln!("run {run} kept no artifacts (give --artifacts GLOB or --junit-from GLOB)");
        return Ok(0);
    }
    let mut n = 0;
    for a in &list {
        testmesh_consensus::suite::check_relative("artifact", &a.path)
            .map_err(anyhow::Error::msg)?;
        let dir_name: String = a
            .name
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let to = out.join(format!("{}-{dir_name}", a.task)).join(&a.path);
        let bytes = client
            .get_bytes(&format!(
                "/api/v1/tasks/{}/artifacts/{}/{}",
                a.task,
                a.attempt,
                a.path
                    .split('/')
                    .map(urlencode)
                    .collect::<Vec<_>>()
                    .join("/")
            ))
            .await
            .with_context(|| format!("task {} {}", a.task, a.path))?;
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))?;
        }
        std::fs::write(&to, bytes).with_context(|| format!("cannot write {}", to.display()))?;
        n += 1;
    }
    eprintln!("{n} artifact file(s) of run {run} in {}", out.display());
    Ok(n)
}
