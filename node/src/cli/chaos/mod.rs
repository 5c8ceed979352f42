//! `testmesh chaos`: a cluster of real nodes, a client workload recorded as a history, faults
//! on a seeded schedule, and a checker over the history and the final ledger (Jepsen's
//! approach, on one machine). Exits non-zero when any promise was broken.

mod check;
mod fleet;
mod history;
mod sampler;
mod schedule;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use testmesh_consensus::model::Worker;
use testmesh_consensus::task::Task;

use self::fleet::Fleet;
use self::history::{FAULTS, Kind, Op, Recorder};
use self::schedule::{FaultKind, Planned};
use self::workload::{Endpoint, Shared};
use crate::core::dto::{StatusView, TaskList};

#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// Nodes in the cluster (3 or more)
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// How long faults are injected under load (then everything is healed and checked)
    #[arg(long, default_value = "120s", value_parser = crate::units::parse_duration)]
    pub duration: Duration,
    /// Seed of the fault schedule and the workload [default: random, printed]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Faults to draw from [default: every kind that fits --netns]
    #[arg(long, value_delimiter = ',')]
    pub faults: Vec<FaultKind>,
    /// Put each node in its own network namespace (needs root and iproute2) so that links can
    /// be cut and slowed
    #[arg(long)]
    pub netns: bool,
    /// Concurrent clients
    #[arg(long, default_value_t = 3)]
    pub clients: u32,
    /// The nodes' --dead-after
    #[arg(long, default_value = "4s", value_parser = crate::units::parse_duration)]
    pub dead_after: Duration,
    /// How long every task has, after the faults are healed, to finish
    #[arg(long, default_value = "180s", value_parser = crate::units::parse_duration)]
    pub settle: Duration,
    /// Directory for the nodes, the history and the report [default: ./chaos-SEED]
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Quiet time between two faults (plus up to 5 s more); e.g. 150s for a soak with a
    /// leader kill every few minutes
    #[arg(long, default_value = "3s", value_parser = crate::units::parse_duration_or_zero)]
    pub gap: Duration,
    /// Every this often, write each node's memory, open files and data dir size and the
    /// window's submit latency to samples.csv (0s: never)
    #[arg(long, default_value = "0s", value_parser = crate::units::parse_duration_or_zero)]
    pub sample_every: Duration,
    /// Check the saved results of an earlier run in this directory again (no cluster is
    /// started)
    #[arg(long, value_name = "DIR")]
    pub check: Option<PathBuf>,
    /// One more argument for every `testmesh node` (repeatable), e.g.
    /// `--node-arg=--retention --node-arg=count=500` for a soak that reaches its steady state
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    pub node_args: Vec<String>,
    /// The testmesh binary the nodes run [default: this one] (to check an older build)
    #[arg(long)]
    pub node_bin: Option<PathBuf>,
}

#[derive(Serialize)]
struct Summary {
    seed: u64,
    nodes: usize,
    duration_secs: f64,
    operations: BTreeMap<String, usize>,
    faults: BTreeMap<String, usize>,
    tasks: usize,
    task_states: BTreeMap<String, usize>,
    attempts: usize,
    settle_secs: f64,
    violations: Vec<check::Violation>,
}

/// Reads what a run saved and checks it again.
fn recheck(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let read = |name: &str| {
        std::fs::read(dir.join(name))
            .with_context(|| format!("reading {}", dir.join(name).display()))
    };
    let events: Vec<history::Event> = String::from_utf8_lossy(&read("history.jsonl")?)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let tasks: Vec<Task> = serde_json::from_slice(&read("final.json")?)?;
    let workers: Vec<Worker> = serde_json::from_slice(&read("workers.json")?)?;
    let watches: Vec<check::WatchLog> = serde_json::from_slice(&read("watches.json")?)?;
    let archived: std::collections::BTreeSet<testmesh_consensus::TaskId> = read("archived.json")
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut probe_violations = Vec::new();
    for e in std::fs::read_dir(dir.join("violations"))?.flatten() {
        probe_violations.push(std::fs::read_to_string(e.path())?.trim().to_string());
    }
    let ops = history::completed(&events);
    // What the nemesis found itself (absent from runs of older versions).
    let mut v: Vec<check::Violation> = read("nemesis.json")
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    v.extend(check::check(&check::Observed {
        ops: &ops,
        tasks: &tasks,
        workers: &workers,
        probe_violations: &probe_violations,
        watches: &watches,
        archived: &archived,
    }));
    println!(
        "chaos: {} operations, {} tasks re-checked",
        ops.len(),
        tasks.len()
    );
    for x in &v {
        println!("- {}: {}", x.check, x.detail);
        for t in &x.trace {
            println!("    {t}");
        }
    }
    println!("chaos: {} violation(s)", v.len());
    Ok(if v.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub async fn run(a: ChaosArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &a.check {
        return recheck(dir);
    }
    if a.nodes < 3 {
        bail!("--nodes must be at least 3 (a quorum that survives one fault)");
    }
    let seed = a.seed.unwrap_or_else(rand::random);
    let mut kinds = if a.faults.is_empty() {
        FaultKind::ALL
            .into_iter()
            .filter(|k| a.netns || !k.needs_netns())
            .collect()
    } else {
        a.faults.clone()
    };
    if let Some(k) = kinds.iter().find(|k| k.needs_netns() && !a.netns) {
        bail!(
            "fault {} cuts or slows links: add --netns (root and iproute2 needed)",
            k.name()
        );
    }
    kinds.dedup();
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("chaos-{seed}")));
    std::fs::create_dir_all(out.join("locks"))?;
    std::fs::create_dir_all(out.join("violations"))?;
    let out = out.canonicalize()?;
    let probe = out.join("probe.sh");
    std::fs::write(&probe, workload::PROBE)?;
    println!(
        "chaos: seed {seed}, {} nodes, {:?} of faults ({}), results in {}",
        a.nodes,
        a.duration,
        kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", "),
        out.display()
    );

    let extra: Vec<String> = [
        "--cpus",
        "2",
        "--memory",
        "4GiB",
        "--simulate-gpus",
        "2xSim A100:40GiB",
        "--dead-after",
        &format!("{}ms", a.dead_after.as_millis()),
        "--drain-timeout",
        "0s",
    ]
    .map(String::from)
    .to_vec();
    let extra = [extra, a.node_args.clone()].concat();
    let mut fleet = Fleet::new(&out, a.nodes, a.netns, extra, a.node_bin.clone())?;
    for i in 0..a.nodes {
        fleet.start(i)?;
        fleet.wait_files(i).await?;
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .build()?;
    let endpoints: Vec<Endpoint> = fleet
        .nodes
        .iter()
        .map(|n| Endpoint {
            url: n.url(),
            token: n.token.clone(),
        })
        .collect();
    wait_formed(&http, &endpoints, a.nodes).await?;
    println!(
        "chaos: the cluster has {} workers; starting the workload",
        a.nodes
    );

    let shared = Arc::new(Shared {
        rec: Recorder::new(),
        nodes: endpoints.clone(),
        http: http.clone(),
        stop: Default::default(),
        known: Mutex::default(),
        probe: probe.display().to_string(),
        dir: out.display().to_string(),
        final_rev: Default::default(),
    });
    let mut watch_logs = Vec::new();
    let mut watchers = tokio::task::JoinSet::new();
    for i in 0..a.nodes {
        let log = Arc::new(Mutex::new(Vec::new()));
        watch_logs.push(log.clone());
        watchers.spawn(workload::watcher(shared.clone(), i, log));
    }
    let mut clients = tokio::task::JoinSet::new();
    let mut rng = StdRng::seed_from_u64(seed);
    for c in 0..a.clients {
        clients.spawn(workload::client(shared.clone(), c, rng.random()));
    }

    if !a.sample_every.is_zero() {
        let dirs = fleet.nodes.iter().map(|n| n.data_dir()).collect();
        tokio::spawn(sampler::run(
            shared.clone(),
            dirs,
            a.sample_every,
            out.join("samples.csv"),
        ));
    }
    let plan = schedule::plan(seed, a.duration, &kinds, a.dead_after, a.gap);
    let mut applied: BTreeMap<String, usize> = BTreeMap::new();
    // What the nemesis saw itself (a follower that never caught up behind a slow link).
    let mut found = Vec::new();
    for p in &plan {
        let now = Duration::from_millis(shared.rec.elapsed_ms());
        if p.at > now {
            tokio::time::sleep(p.at - now).await;
        }
        match nemesis(&mut fleet, &http, &endpoints, &shared.rec, p, &mut found).await {
            Ok(()) => *applied.entry(format!("{:?}", p.kind)).or_default() += 1,
            Err(e) => println!("chaos: could not apply {:?}: {e:#}", p.kind),
        }
    }
    let now = Duration::from_millis(shared.rec.elapsed_ms());
    if a.duration > now {
        tokio::time::sleep(a.duration - now).await;
    }

    // Heal, let every task finish, then read the final state.
    shared.stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}
    fleet.heal_all().await?;
    let settle_start = shared.rec.elapsed_ms();
    wait_formed(&http, &endpoints, a.nodes).await?;
    let acked: std::collections::BTreeSet<testmesh_consensus::TaskId> =
        history::completed(&shared.rec.events())
            .into_iter()
            .filter(|c| c.kind == Kind::Ok)
            .flat_map(|c| match c.op {
                Op::Submit { ids, .. } => ids,
                _ => vec![],
            })
            .collect();
    let (tasks, workers, archived) = settle(&http, &endpoints, a.settle, &acked).await?;
    let settle_secs = (shared.rec.elapsed_ms() - settle_start) as f64 / 1000.0;
    let final_rev = tasks
        .iter()
        .filter(|t| !archived.contains(&t.id))
        .map(|t| t.rev)
        .max()
        .unwrap_or(0)
        .max(1);
    shared.final_rev.store(final_rev, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while watchers.join_next().await.is_some() {}
    })
    .await;
    watchers.abort_all();

    let events = shared.rec.events();
    let ops = history::completed(&events);
    let watches: Vec<check::WatchLog> = watch_logs
        .iter()
        .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .collect();
    let mut probe_violations = Vec::new();
    for e in std::fs::read_dir(out.join("violations"))?.flatten() {
        probe_violations.push(std::fs::read_to_string(e.path())?.trim().to_string());
    }
    std::fs::write(out.join("nemesis.json"), serde_json::to_vec(&found)?)?;
    let mut violations = found;
    violations.extend(check::check(&check::Observed {
        ops: &ops,
        tasks: &tasks,
        workers: &workers,
        probe_violations: &probe_violations,
        watches: &watches,
        archived: &archived,
    }));

    let mut operations = BTreeMap::new();
    for o in ops.iter().filter(|o| o.process != FAULTS) {
        let name = match o.op {
            Op::Submit { .. } => "submit",
            Op::Cancel { .. } => "cancel",
            Op::Read { .. } => "read",
            Op::Fault { .. } => "fault",
        };
        *operations
            .entry(format!("{name} {:?}", o.kind).to_lowercase())
            .or_default() += 1;
    }
    let mut task_states = BTreeMap::new();
    for t in &tasks {
        *task_states
            .entry(format!("{:?}", t.state).to_lowercase())
            .or_default() += 1;
    }
    let summary = Summary {
        seed,
        nodes: a.nodes,
        duration_secs: a.duration.as_secs_f64(),
        operations,
        faults: applied,
        tasks: tasks.len(),
        task_states,
        attempts: tasks.iter().map(|t| t.attempts.len()).sum(),
        settle_secs,
        violations,
    };
    let mut lines = String::new();
    for e in &events {
        lines.push_str(&serde_json::to_string(e)?);
        lines.push('\n');
    }
    std::fs::write(out.join("history.jsonl"), lines)?;
    std::fs::write(out.join("final.json"), serde_json::to_vec(&tasks)?)?;
    std::fs::write(out.join("workers.json"), serde_json::to_vec(&workers)?)?;
    std::fs::write(out.join("watches.json"), serde_json::to_vec(&watches)?)?;
    std::fs::write(out.join("archived.json"), serde_json::to_vec(&archived)?)?;
    std::fs::write(out.join("plan.json"), serde_json::to_vec_pretty(&plan)?)?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    fleet.stop_all();

    println!("chaos: {} operations {:?}", ops.len(), summary.operations);
    println!("chaos: faults {:?}", summary.faults);
    println!(
        "chaos: {} tasks {:?}, {} attempts; settled in {:.1} s",
        summary.tasks, summary.task_states, summary.attempts, settle_secs
    );
    if summary.violations.is_empty() {
        println!("chaos: no violations (seed {seed})");
        return Ok(ExitCode::SUCCESS);
    }
    println!("chaos: {} VIOLATION(S)", summary.violations.len());
    for v in summary.violations.iter().take(20) {
        println!("- {}: {}", v.check, v.detail);
        for t in &v.trace {
            println!("    {t}");
        }
    }
    println!(
        "chaos: replay with: testmesh chaos --seed {seed} --nodes {} --duration {}s{}; history in {}",
        a.nodes,
        a.duration.as_secs(),
        if a.netns { " --netns" } else { "" },
        out.join("history.jsonl").display()
    );
    Ok(ExitCode::from(1))
}

async fn status(http: &reqwest::Client, e: &Endpoint) -> Option<StatusView> {
    let r = http
        .get(format!("{}/api/v1/status", e.url))
        .bearer_auth(&e.token)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// Waits until every node is ready and one of them leads with all of them as workers.
async fn wait_formed(http: &reqwest::Client, nodes: &[Endpoint], n: usize) -> anyhow::Result<()> {
    for _ in 0..600 {
        let mut ready = 0;
        for e in nodes {
            let ok = http
                .get(format!("{}/readyz", e.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            ready += ok as usize;
        }
        if ready == n
            && let Some(s) = status(http, &nodes[0]).await
            && s.leader.is_some()
            && s.workers >= n
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the cluster did not form (or re-form) within 120 s; see the node logs")
}

/// The node that leads, as the leader itself says (the highest term wins).
async fn leader(http: &reqwest::Client, fleet: &Fleet, nodes: &[Endpoint]) -> Option<usize> {
    let mut best: Option<(u64, usize)> = None;
    for (i, n) in fleet.nodes.iter().enumerate() {
        if !n.up() || n.paused {
            continue;
        }
        if let Some(s) = status(http, &nodes[i]).await
            && s.role == "leader"
            && best.is_none_or(|(t, _)| s.term > t)
        {
            best = Some((s.term, i));
        }
    }
    best.map(|(_, i)| i)
}

async fn nemesis(
    fleet: &mut Fleet,
    http: &reqwest::Client,
    nodes: &[Endpoint],
    rec: &Recorder,
    p: &Planned,
    found: &mut Vec<check::Violation>,
) -> anyhow::Result<()> {
    let n = fleet.nodes.len();
    let pick = |k: u64| (p.pick.wrapping_add(k) % n as u64) as usize;
    let lead = leader(http, fleet, nodes).await.unwrap_or_else(|| pick(0));
    let what = |s: String| Op::Fault { what: s };
    let victims: Vec<usize> = match p.kind {
        FaultKind::KillLeader | FaultKind::IsolateLeader => vec![lead],
        FaultKind::KillTwo => vec![pick(0), pick(1)],
        // A follower: the leader's own link slowed is an election, not a catch-up.
        FaultKind::SlowLink => vec![(lead + 1 + (p.pick % (n as u64 - 1)) as usize) % n],
        _ => vec![pick(0)],
    };
    let desc = format!("{:?} of node(s) {victims:?} for {:?}", p.kind, p.hold);
    let id = rec.invoke(FAULTS, what(desc.clone()), "");
    match p.kind {
        FaultKind::KillLeader | FaultKind::KillNode | FaultKind::KillTwo => {
            for v in &victims {
                fleet.kill9(*v);
            }
            tokio::time::sleep(p.hold).await;
            for v in &victims {
                fleet.start(*v)?;
            }
        }
        FaultKind::PauseShort | FaultKind::PauseLong => {
            fleet.pause(victims[0]);
            tokio::time::sleep(p.hold).await;
            fleet.resume(victims[0]);
        }
        FaultKind::IsolateLeader | FaultKind::Partition | FaultKind::Bridge => {
            let ns = fleet.net.as_ref().context("no network namespaces")?;
            let cuts: Vec<(usize, usize)> = match p.kind {
                FaultKind::IsolateLeader => {
                    (0..n).filter(|j| *j != lead).map(|j| (lead, j)).collect()
                }
                FaultKind::Partition => {
                    let minority: Vec<usize> = (0..(n - 1) / 2).map(|k| pick(k as u64)).collect();
                    let mut c = Vec::new();
                    for m in &minority {
                        for j in (0..n).filter(|j| !minority.contains(j)) {
                            c.push((*m, j));
                        }
                    }
                    c
                }
                _ => {
                    // Node `bridge` reaches everyone; the rest split in two halves that do not.
                    let bridge = pick(0);
                    let rest: Vec<usize> = (0..n).filter(|j| *j != bridge).collect();
                    let (a, b) = rest.split_at(rest.len() / 2);
                    a.iter()
                        .flat_map(|x| b.iter().map(move |y| (*x, *y)))
                        .collect()
                }
            };
            for (x, y) in &cuts {
                ns.cut(*x, *y)?;
            }
            tokio::time::sleep(p.hold).await;
            ns.heal(n)?;
        }
        FaultKind::SlowLink => {
            let ns = fleet.net.as_ref().context("no network namespaces")?;
            let slow = victims[0];
            ns.slow(slow, n)?;
            // A large entry while the link is slow: Raft gives each append only a heartbeat
            // interval, yet the follower must take it before the link is healed.
            let started = rec.elapsed_ms();
            let big = big_submit(http, nodes, lead, rec, p.pick).await;
            if let Some(rev) = big {
                let mut applied = None;
                while rec.elapsed_ms() - started < p.hold.as_millis() as u64 {
                    applied = status(http, &nodes[slow]).await.map(|s| s.last_applied);
                    if applied.is_some_and(|a| a >= rev) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                let took = rec.elapsed_ms() - started;
                println!(
                    "chaos: node {slow} behind a 2 Mbit/s link {} the ~1 MB entry at {rev} after {took} ms",
                    if applied.is_some_and(|a| a >= rev) {
                        "applied"
                    } else {
                        "had not applied"
                    }
                );
                if applied.is_none_or(|a| a < rev) {
                    found.push(check::Violation {
                        check: "a slow follower catches up".into(),
                        detail: format!(
                            "node {slow} behind a 2 Mbit/s link had applied {applied:?} after {:?}; a 1,500-task submit was committed at {rev}",
                            p.hold
                        ),
                        trace: vec![],
                    });
                }
            }
            let left = p.hold.as_millis() as u64
                - (rec.elapsed_ms() - started).min(p.hold.as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(left)).await;
            ns.heal(n)?;
        }
    }
    rec.complete(FAULTS, id, Kind::Ok, what(desc), String::new());
    Ok(())
}

/// Submits 1,500 tasks of about 600 bytes each (one entry of about 1 MB, near the ledger's
/// cap) in one request through the leader (recorded like any submit);
/// returns the revision the last of them was at once acknowledged.
async fn big_submit(
    http: &reqwest::Client,
    nodes: &[Endpoint],
    lead: usize,
    rec: &Recorder,
    pick: u64,
) -> Option<u64> {
    let rid = format!("big-{pick}");
    let tasks: Vec<serde_json::Value> = (0..1500)
        .map(|i| {
            serde_json::json!({"command": ["true"], "name": "chaos-big", "cpu": "1m",
            "labels": {"i": i.to_string()}, "env": {"PAD": "x".repeat(560)}})
        })
        .collect();
    let op = |ids| Op::Submit {
        request_id: rid.clone(),
        tasks: 1500,
        ids,
    };
    let id = rec.invoke(FAULTS, op(vec![]), &nodes[lead].url);
    let r = http
        .post(format!("{}/api/v1/tasks", nodes[lead].url))
        .bearer_auth(&nodes[lead].token)
        .json(&serde_json::json!({"request_id": rid, "tasks": tasks}))
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    let ids = match r {
        Ok(r) if r.status().is_success() => r
            .json::<crate::core::dto::SubmitResponse>()
            .await
            .ok()
            .map(|s| s.tasks),
        _ => None,
    };
    let Some(ids) = ids else {
        rec.complete(FAULTS, id, Kind::Unknown, op(vec![]), "no answer".into());
        return None;
    };
    rec.complete(FAULTS, id, Kind::Ok, op(ids.clone()), String::new());
    let last = *ids.last()?;
    let t: crate::core::dto::TaskView = http
        .get(format!("{}/api/v1/tasks/{last}", nodes[lead].url))
        .bearer_auth(&nodes[lead].token)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(t.task.rev)
}

/// After healing: waits until no task is unfinished (or `limit`), then reads every task
/// (linearizable) and the workers.
#[allow(clippy::type_complexity)]
async fn settle(
    http: &reqwest::Client,
    nodes: &[Endpoint],
    limit: Duration,
    acked: &std::collections::BTreeSet<testmesh_consensus::TaskId>,
) -> anyhow::Result<(
    Vec<Task>,
    Vec<Worker>,
    std::collections::BTreeSet<testmesh_consensus::TaskId>,
)> {
    let get = async |path: &str| -> Option<reqwest::Response> {
        for e in nodes {
            if let Ok(r) = http
                .get(format!("{}{path}", e.url))
                .bearer_auth(&e.token)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                && r.status().is_success()
            {
                return Some(r);
            }
        }
        None
    };
    let steps = (limit.as_millis() / 500).max(1);
    for _ in 0..steps {
        let open = match get("/api/v1/tasks?state=pending,assigned,running&limit=1&consistent=true")
            .await
        {
            Some(r) => r
                .json::<TaskList>()
                .await
                .map(|l| l.tasks.len())
                .unwrap_or(1),
            None => 1,
        };
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let list: TaskList = get("/api/v1/tasks?limit=100000&consistent=true")
        .await
        .context("no node answered the final read")?
        .json()
        .await?;
    // The worker records (capacity) inside each listed worker.
    let workers: Vec<Worker> = get("/api/v1/workers")
        .await
        .context("no node answered the workers read")?
        .json()
        .await?;
    let mut tasks: Vec<Task> = list.tasks.into_iter().map(|t| t.task).collect();
    // Acknowledged tasks that retention moved to the archive: the list covers the live ledger
    // only, a read by id finds them too.
    let live: std::collections::BTreeSet<_> = tasks.iter().map(|t| t.id).collect();
    let mut archived = std::collections::BTreeSet::new();
    for id in acked.difference(&live) {
        if let Some(r) = get(&format!("/api/v1/tasks/{id}")).await
            && let Ok(t) = r.json::<crate::core::dto::TaskView>().await
        {
            archived.insert(t.task.id);
            tasks.push(t.task);
        }
    }
    Ok((tasks, workers, archived))
}
