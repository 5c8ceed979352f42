//! `testmesh run`: a whole run — a matrix from a run file, or a suite split into shards — with
//! a live progress bar, a summary table at the end, JUnit/JSON exports and an exit code that
//! says whether everything passed. `testmesh runs`: list, show, wait for, export or cancel.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use testmesh_consensus::task::TaskState;

use super::client::{Client, ClientArgs};
use super::ship;
use super::tasks::RequirementArgs;
use crate::core::dto::{RunCreated, RunView};
use crate::core::submit::RunRequest;
use crate::results::RunResults;
use crate::{runfile, units};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// A run file: a task template and a matrix of parameters (see docs/runs.md)
    #[arg(long, conflicts_with_all = ["shards", "command"])]
    pub file: Option<PathBuf>,
    /// Split the command into N shards: each task gets TESTMESH_SHARD_INDEX/COUNT and
    /// {shard} (0-based), {shard1} (1-based) and {shards} filled in its arguments
    #[arg(long)]
    pub shards: Option<usize>,
    /// Run name [default: the run file's, or the program's]
    #[arg(long)]
    pub name: Option<String>,
    /// Metadata of the run, KEY=VALUE (repeatable), e.g. commit=abc123
    #[arg(long = "meta", value_parser = units::parse_key_value)]
    pub metadata: Vec<(String, String)>,
    #[command(flatten)]
    pub req: RequirementArgs,
    /// Environment variable for every task, KEY=VALUE (repeatable)
    #[arg(long = "env", value_parser = units::parse_key_value)]
    pub env: Vec<(String, String)>,
    /// Secret environment variable for every task (also with a run file): KEY=VALUE, or KEY to
    /// take the value from this environment; no read, export, report or page shows it
    #[arg(long = "secret-env", value_parser = units::parse_secret_env)]
    pub secret_env: Vec<(String, String)>,
    /// Queue tasks that no current worker could ever run
    #[arg(long)]
    pub allow_unschedulable: bool,
    /// Print the run id and return without waiting
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub export: ExportArgs,
    #[command(flatten)]
    pub ship: ship::ShipArgs,
    /// How --shards divides the suite
    #[arg(long, value_enum, default_value = "name", requires = "shards")]
    pub split_by: ship::SplitBy,
    /// With --split-by timings: the command that lists the suite's test ids, run here in
    /// --workdir (e.g. 'pytest --collect-only -q')
    #[arg(long, value_name = "CMD")]
    pub tests_from: Option<String>,
    /// The command and its arguments (after --), with --shards or alone
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Write the results as JUnit XML (one testcase per task)
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Write the results as JSON (every attempt with its provenance, metrics)
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn plan(a: &RunArgs, lists: Option<&[Vec<String>]>) -> anyhow::Result<runfile::RunPlan> {
    let mut plan = if let Some(f) = &a.file {
        let src = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the run file {}", f.display()))?;
        runfile::parse(&src, &f.display().to_string()).map_err(anyhow::Error::msg)?
    } else {
        if a.command.is_empty() {
            bail!(
                "give a run file (--file run.toml) or a command after --, e.g. `testmesh run --shards 4 -- pytest --shard-id={{shard}} --num-shards={{shards}}`"
            );
        }
        let mut base = a.req.to_request(None, a.command.clone());
        base.env = a.env.iter().cloned().collect();
        let n = lists.map_or(a.shards.unwrap_or(1), <[_]>::len);
        let tasks = runfile::shards(&base, n, lists).map_err(anyhow::Error::msg)?;
        runfile::RunPlan {
            name: testmesh_consensus::history::program_of(&a.command),
            metadata: BTreeMap::new(),
            tasks,
            ship: None,
        }
    };
    if let Some(n) = &a.name {
        plan.name = n.clone();
    }
    for t in &mut plan.tasks {
        t.secret_env.extend(a.secret_env.iter().cloned());
    }
    plan.metadata.extend(a.metadata.iter().cloned());
    testmesh_consensus::runs::validate(&plan.name, &plan.metadata).map_err(anyhow::Error::msg)?;
    Ok(plan)
}

/// Name of a run before it is planned (the timing split reads earlier runs of that name).
fn run_name(a: &RunArgs) -> String {
    a.name
        .clone()
        .unwrap_or_else(|| testmesh_consensus::history::program_of(&a.command))
}

pub async fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&a.client)?;
    let mut split_meta = BTreeMap::new();
    let lists = if a.split_by == ship::SplitBy::Timings {
        let Some(cmd) = &a.tests_from else {
            bail!(
                "--split-by timings needs --tests-from CMD, the command that lists the test ids (e.g. 'pytest --collect-only -q')"
            );
        };
        if !a.command.iter().any(|c| c.contains("{tests_file}")) {
            bail!(
                "--split-by timings hands each shard its tests in a file: put {{tests_file}} in the command, e.g. -- sh -c 'pytest $(cat {{tests_file}})'"
            );
        }
        let Some(dir) = a.ship.workdir.clone() else {
            bail!(
                "--split-by timings hands each shard its list in the shipped tree: give --workdir DIR (the checkout the tests are in)"
            );
        };
        let c = cmd.clone();
        let tests = tokio::task::spawn_blocking(move || ship::collect_tests(&dir, &c)).await??;
        let shards = a.shards.unwrap_or(1).min(tests.len());
        let (split, runs) = ship::split_by_timings(&client, &run_name(&a), &tests, shards).await?;
        let (line, meta) = ship::describe(&split, &runs, tests.len());
        eprintln!("{line}");
        split_meta = meta;
        Some(split.shards)
    } else {
        if a.tests_from.is_some() {
            bail!("--tests-from is for --split-by timings");
        }
        None
    };
    let mut plan = plan(&a, lists.as_deref())?;
    plan.metadata.extend(split_meta);
    let mut shipping = a.ship.clone();
    if shipping.workdir.is_none()
        && let (Some(w), Some(f)) = (&plan.ship, &a.file)
    {
        // A run file's `workdir` is relative to the file.
        shipping.workdir = Some(f.parent().unwrap_or(std::path::Path::new(".")).join(w));
    }
    ship::apply(&client, &shipping, &mut plan.tasks).await?;
    let n = plan.tasks.len();
    let body = RunRequest {
        name: plan.name.clone(),
        metadata: plan.metadata,
        request_id: Some(hex::encode(rand::random::<[u8; 16]>())),
        allow_unschedulable: a.allow_unschedulable,
        tasks: plan.tasks.clone(),
    };
    let created: RunCreated = client.post("/api/v1/runs", &body).await.map_err(|e| {
        // The server numbers tasks; name the one it means.
        let msg = e.to_string();
        let named = msg
            .strip_prefix("task #")
            .and_then(|r| r.split_once(':'))
            .and_then(|(i, rest)| {
                let t = plan.tasks.get(i.parse::<usize>().ok()?)?;
                Some(format!("task {:?}:{rest}", t.name))
            });
        anyhow::anyhow!("{}; nothing was submitted", named.unwrap_or(msg))
    })?;
    eprintln!("run {} ({}): {n} tasks submitted", created.run, plan.name);
    outln!("{}", created.run);
    if a.detach {
        return Ok(ExitCode::SUCCESS);
    }
    finish(&client, created.run, &a.export).await
}

/// Waits for the run with a progress bar, prints the summary, writes the exports.
async fn finish(client: &Client, run: u64, export: &ExportArgs) -> anyhow::Result<ExitCode> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        )
        .expect("a valid template"),
    );
    let mut last = String::new();
    loop {
        let v: RunView = client.get(&format!("/api/v1/runs/{run}/summary")).await?;
        let s = &v.summary;
        let finished: usize = s
            .by_state
            .iter()
            .filter(|(st, _)| st.is_final())
            .map(|(_, n)| n)
            .sum();
        let running = s.by_state.get(&TaskState::Running).copied().unwrap_or(0);
        let msg = format!("{running} running, {} failed", s.failed);
        bar.set_length(s.total as u64);
        bar.set_position(finished as u64);
        bar.set_message(msg.clone());
        if bar.is_hidden() && msg != last {
            // No terminal: a line per change instead of a bar.
            eprintln!("run {run}: {finished}/{} done, {msg}", s.total);
            last = msg;
        }
        if s.done {
            bar.finish_and_clear();
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let r: RunResults = client.get(&format!("/api/v1/runs/{run}")).await?;
    print_summary(&r);
    write_exports(client, run, &r, export).await?;
    Ok(if r.summary.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn write_exports(
    client: &Client,
    run: u64,
    r: &RunResults,
    export: &ExportArgs,
) -> anyhow::Result<()> {
    if let Some(p) = &export.junit {
        let xml = client
            .get_bytes(&format!("/api/v1/runs/{run}/junit.xml"))
            .await?;
        std::fs::write(p, xml).with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("JUnit results in {}", p.display());
    }
    if let Some(p) = &export.json {
        let body = serde_json::to_vec_pretty(r)?;
        std::fs::write(p, body).with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("JSON results in {}", p.display());
    }
    Ok(())
}

fn secs(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |m| format!("{:.1}s", m as f64 / 1000.0))
}

/// The table at the end: every task when there are few, else the ones that did not pass.
fn print_summary(r: &RunResults) {
    let s = &r.summary;
    let show_all = r.tasks.len() <= 50;
    outln!(
        "{:<8} {:<40} {:<10} {:>8} {:<16} {:>7}",
        "task",
        "name",
        "state",
        "time",
        "host",
        "retries"
    );
    for t in r
        .tasks
        .iter()
        .filter(|t| show_all || t.state != TaskState::Succeeded || t.flaky)
    {
        let host = t
            .attempts
            .last()
            .map(|a| a.provenance.hostname.clone())
            .unwrap_or_default();
        let name: String = t.name.chars().take(40).collect();
        outln!(
            "{:<8} {:<40} {:<10} {:>8} {:<16} {:>7}{}",
            t.task,
            name,
            t.state.to_string(),
            secs(t.duration_ms),
            host,
            t.retries,
            if t.flaky { "  flaky" } else { "" }
        );
    }
    print_tests(r);
    let counts: Vec<String> = s.by_state.iter().map(|(k, v)| format!("{v} {k}")).collect();
    outln!(
        "run {} ({}): {} tasks, {}{}; {}",
        r.run,
        r.name,
        s.total,
        counts.join(", "),
        if s.flaky > 0 {
            format!(", {} flaky", s.flaky)
        } else {
            String::new()
        },
        if s.passed { "PASSED" } else { "FAILED" }
    );
}

/// Per-test results (with --junit-from): counts, then the failing and flaky tests.
fn print_tests(r: &RunResults) {
    let n = &r.test_counts;
    if n.total == 0 {
        return;
    }
    const SHOWN: usize = 50;
    let notable: Vec<_> = r
        .tests
        .iter()
        .filter(|t| t.result.is_failure() || t.flaky)
        .collect();
    if !notable.is_empty() {
        outln!(
            "{:<8} {:<64} {:<24} {:>8}",
            "result",
            "test",
            "shard",
            "time"
        );
    }
    for t in notable.iter().take(SHOWN) {
        let result = if t.flaky {
            "flaky".to_string()
        } else {
            format!("{:?}", t.result).to_lowercase()
        };
        let id: String = t.id.chars().take(64).collect();
        let shard: String = t.shard.chars().take(24).collect();
        outln!(
            "{result:<8} {id:<64} {shard:<24} {:>8}",
            secs(Some(t.time_ms))
        );
        if let Some(m) = t.message.as_ref().filter(|_| t.result.is_failure()) {
            let m: String = m.lines().next().unwrap_or("").chars().take(120).collect();
            outln!("         {m}");
        }
    }
    if notable.len() > SHOWN {
        outln!(
            "… and {} more (see --junit or --json)",
            notable.len() - SHOWN
        );
    }
    outln!(
        "tests: {} total, {} passed, {} failed, {} errors, {} skipped, {} flaky{}",
        n.total,
        n.passed,
        n.failed,
        n.errors,
        n.skipped,
        n.flaky,
        r.shard_balance
            .map(|b| format!("; slowest shard / mean {b:.2}"))
            .unwrap_or_default()
    );
}

#[derive(Debug, clap::Args)]
pub struct RunsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub cmd: Option<RunsCmd>,
}

#[derive(Debug, clap::Subcommand)]
pub enum RunsCmd {
    /// List runs, newest first (the default)
    List,
    /// Show a run's results
    Show {
        id: u64,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Wait for a run to finish (progress, summary, exit code), then export
    Wait {
        id: u64,
        #[command(flatten)]
        export: ExportArgs,
    },
    /// Write a run's results
    Export {
        id: u64,
        #[command(flatten)]
        export: ExportArgs,
    },
    /// Cancel every unfinished task of a run
    Cancel { id: u64 },
    /// Download the files a run's tasks kept (--artifacts, --junit-from) into OUT/<task>-<name>/
    Artifacts {
        id: u64,
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Compare two runs: each metric and run time of the same task name side by side
    Compare {
        /// The baseline run
        a: u64,
        /// The run to compare with it
        b: u64,
    },
}

/// Per (task name, figure): value and unit, from a run's results. Run time counts as a figure.
fn figures(r: &RunResults) -> BTreeMap<(String, String), (f64, String)> {
    let mut out = BTreeMap::new();
    for t in &r.tasks {
        if let Some(ms) = t.duration_ms {
            out.insert(
                (t.name.clone(), "run time".to_string()),
                (ms as f64 / 1000.0, "s".to_string()),
            );
        }
        for m in &t.metrics {
            out.insert((t.name.clone(), m.name.clone()), (m.value, m.unit.clone()));
        }
    }
    out
}

fn compare(a: &RunResults, b: &RunResults) {
    let (fa, fb) = (figures(a), figures(b));
    outln!(
        "{:<36} {:<20} {:>12} {:>12} {:>8}  unit",
        "task",
        "figure",
        format!("run {}", a.run),
        format!("run {}", b.run),
        "change"
    );
    let mut only = 0;
    for (k, (va, unit)) in &fa {
        let Some((vb, _)) = fb.get(k) else {
            only += 1;
            continue;
        };
        let change = if *va != 0.0 {
            format!("{:+.1}%", (vb - va) / va.abs() * 100.0)
        } else {
            "-".into()
        };
        let name: String = k.0.chars().take(36).collect();
        outln!(
            "{name:<36} {:<20} {:>12} {:>12} {change:>8}  {unit}",
            k.1,
            format!("{va:.4}"),
            format!("{vb:.4}")
        );
    }
    only += fb.keys().filter(|k| !fa.contains_key(*k)).count();
    if only > 0 {
        outln!("{only} figure(s) appear in only one of the runs");
    }
}

pub async fn runs(a: RunsArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&a.client)?;
    match a.cmd.unwrap_or(RunsCmd::List) {
        RunsCmd::List => {
            let runs: Vec<RunView> = client.get("/api/v1/runs").await?;
            outln!(
                "{:<6} {:<30} {:>6} {:>6} {:>6} {:>6}  state",
                "run",
                "name",
                "tasks",
                "done",
                "failed",
                "flaky"
            );
            for r in runs {
                let s = &r.summary;
                let done: usize = s
                    .by_state
                    .iter()
                    .filter(|(k, _)| k.is_final())
                    .map(|(_, n)| n)
                    .sum();
                let name: String = r.name.chars().take(30).collect();
                outln!(
                    "{:<6} {:<30} {:>6} {:>6} {:>6} {:>6}  {}",
                    r.run,
                    name,
                    s.total,
                    done,
                    s.failed,
                    s.flaky,
                    if s.passed {
                        "passed"
                    } else if s.done {
                        "failed"
                    } else {
                        "running"
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RunsCmd::Show { id, json } => {
            let r: RunResults = client.get(&format!("/api/v1/runs/{id}")).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_summary(&r);
            }
            Ok(ExitCode::SUCCESS)
        }
        RunsCmd::Wait { id, export } => finish(&client, id, &export).await,
        RunsCmd::Export { id, export } => {
            if export.junit.is_none() && export.json.is_none() {
                bail!("say what to write: --junit FILE.xml and/or --json FILE.json");
            }
            let r: RunResults = client.get(&format!("/api/v1/runs/{id}")).await?;
            write_exports(&client, id, &r, &export).await?;
            Ok(ExitCode::SUCCESS)
        }
        RunsCmd::Compare { a, b } => {
            let ra: RunResults = client.get(&format!("/api/v1/runs/{a}")).await?;
            let rb: RunResults = client.get(&format!("/api/v1/runs/{b}")).await?;
            compare(&ra, &rb);
            Ok(ExitCode::SUCCESS)
        }
        RunsCmd::Artifacts { id, out } => {
            ship::download(&client, id, &out).await?;
            Ok(ExitCode::SUCCESS)
        }
        RunsCmd::Cancel { id } => {
            let v: serde_json::Value = client
                .post(&format!("/api/v1/runs/{id}/cancel"), &serde_json::json!({}))
                .await?;
            outln!("run {id}: {} tasks cancelled", v["cancelled"]);
            Ok(ExitCode::SUCCESS)
        }
    }
}
