//! `testmesh bench raft`: the consensus layer alone, as a node runs it — N voters in this
//! process, each with its own redb ledger (fsync on every append) in `--dir`, talking over a
//! real libp2p mesh on loopback with a fresh swarm key. It measures no-op writes through the
//! node's write path (group commit included): first one client alone (latency), then many at
//! once (throughput). A write is acknowledged once committed by a majority and applied.
//! Point `--dir` at the disk the nodes will use: the fsync is most of the cost.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use openraft::BasicNode;
use serde::Serialize;
use testmesh_consensus::raft::{self, Raft};
use testmesh_consensus::{Command, NodeId};
use tokio::sync::watch;

use super::bench::percentile;
use crate::cluster::network::MeshNetwork;
use crate::core::clock::{Clock, SystemClock};
use crate::core::membership::Liveness;
use crate::core::{Core, Parts, Stats, Writer};
use crate::mesh::{self, MeshConfig, key};
use crate::stats::StatsStore;

#[derive(Debug, clap::Args)]
pub struct RaftBenchArgs {
    /// Voters in the cluster (1, 3 or 5)
    #[arg(long, default_value_t = 3)]
    pub voters: usize,
    /// Commits in the concurrent phase
    #[arg(long, default_value_t = 20_000)]
    pub writes: usize,
    /// Concurrent writers in the concurrent phase
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Commits by the single writer of the latency phase
    #[arg(long, default_value_t = 2_000)]
    pub single: usize,
    /// Where the voters keep their ledgers [default: a temporary directory]
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct RaftReport {
    pub voters: usize,
    pub single_writes: usize,
    pub single_p50_ms: f64,
    pub single_p99_ms: f64,
    pub writes: usize,
    pub concurrency: usize,
    pub commits_per_sec: f64,
    pub concurrent_p50_ms: f64,
    pub concurrent_p99_ms: f64,
}

struct Member {
    raft: Raft,
    core: Core,
    addr: String,
    _stop: watch::Sender<bool>,
    _loops: tokio::task::JoinSet<()>,
}

async fn start_member(dir: &std::path::Path, psk_file: &std::path::Path) -> anyhow::Result<Member> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let node = key::node_id_of(&keypair.public().to_peer_id());
    let clock = crate::core::clock::system();
    let (stats, stats_task) = Stats::new(
        StatsStore::new(Duration::from_secs(1), Duration::from_secs(60)),
        clock.clone(),
    );
    let (mesh, inbound, mesh_loop) = mesh::start(MeshConfig {
        keypair,
        swarm_key: key::read_swarm_key(psk_file)?,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        join: Vec::new(),
        mdns: false,
        stats: stats.gossip_sink(),
    })?;
    let (log, sm, ledger) = testmesh_consensus::store::open(&dir.join("ledger.redb"))?;
    let config = raft::config("testmesh-bench", 10_000).map_err(anyhow::Error::msg)?;
    let network = MeshNetwork {
        mesh: mesh.clone(),
        liveness: Liveness::new(clock.clone()),
    };
    let raft = Raft::new(node, Arc::new(config), network, log, sm).await?;
    let (core, batcher) = Core::assemble(Parts {
        node,
        clock,
        raft: raft.clone(),
        mesh: Some(mesh.clone()),
        ledger,
        data_dir: dir.to_path_buf(),
        stats,
        scaler: crate::core::scaler::shared(Vec::new()),
        catalogue: Vec::new(),
    });
    let (stop, stopped) = watch::channel(false);
    let mut loops = tokio::task::JoinSet::new();
    loops.spawn(mesh_loop.run(stopped.clone()));
    loops.spawn(stats_task.run(stopped.clone()));
    loops.spawn(batcher.run(stopped.clone()));
    loops.spawn(crate::cluster::serve(
        inbound,
        core.clone(),
        mesh.clone(),
        true,
        stopped,
    ));
    let mut addr = String::new();
    for _ in 0..100 {
        if !mesh.listen_addrs().await.is_empty() {
            addr = mesh.member_addr().await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if addr.is_empty() {
        bail!("the mesh of a bench voter did not start listening");
    }
    Ok(Member {
        raft,
        core,
        addr,
        _stop: stop,
        _loops: loops,
    })
}

/// One no-op write through the node's write path (group commit included).
async fn commit(writer: &Writer) -> anyhow::Result<Duration> {
    let t = SystemClock.instant();
    let noop = Command::SetWorkerState {
        worker: NodeId(0),
        state: testmesh_consensus::model::WorkerState::Active,
        at: SystemClock.now(),
    };
    // Refused by the ledger (no such worker) but committed all the same: a no-op entry.
    writer
        .write_here(noop)
        .await
        .map_err(|e| anyhow::anyhow!("commit failed: {e}"))?
        .0
        .err()
        .context("the no-op write unexpectedly changed the ledger")?;
    Ok(t.elapsed())
}

pub async fn run(a: RaftBenchArgs) -> anyhow::Result<ExitCode> {
    if ![1, 3, 5].contains(&a.voters) {
        bail!("--voters {}: use 1, 3 or 5", a.voters);
    }
    if a.writes == 0 || a.concurrency == 0 || a.single == 0 {
        bail!("--writes, --concurrency and --single must all be at least 1");
    }
    let tmp;
    let dir = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            tempfile::tempdir_in(d)?
        }
        None => {
            tmp = tempfile::tempdir()?;
            tempfile::tempdir_in(tmp.path())?
        }
    };
    let psk = dir.path().join("swarm.key");
    key::write_new_swarm_key(&psk)?;
    let mut members = Vec::new();
    for i in 0..a.voters {
        members.push(start_member(&dir.path().join(format!("voter-{i}")), &psk).await?);
    }
    let all: BTreeMap<NodeId, BasicNode> = members
        .iter()
        .map(|m| {
            let id = m.core.node;
            (
                id,
                BasicNode {
                    addr: m.addr.clone(),
                },
            )
        })
        .collect();
    members[0].raft.initialize(all).await?;
    let leader = loop {
        let l = members[0].core.leadership.leader();
        if let Some(l) = l {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let writer = members
        .iter()
        .find(|m| m.core.node == leader)
        .map(|m| m.core.writer.clone())
        .context("the leader is not one of the bench voters")?;
    // Let every follower's replication stream settle before timing anything.
    for _ in 0..50 {
        commit(&writer).await?;
    }

    let mut single = Vec::with_capacity(a.single);
    for _ in 0..a.single {
        single.push(commit(&writer).await?);
    }
    single.sort();

    let per = a.writes.div_ceil(a.concurrency);
    let started = SystemClock.instant();
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..a.concurrency {
        let writer = writer.clone();
        let n = per.min(a.writes.saturating_sub(c * per));
        clients.spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                lat.push(commit(&writer).await?);
            }
            anyhow::Ok(lat)
        });
    }
    let mut all_lat = Vec::with_capacity(a.writes);
    while let Some(r) = clients.join_next().await {
        all_lat.extend(r??);
    }
    let elapsed = started.elapsed();
    all_lat.sort();
    let report = RaftReport {
        voters: a.voters,
        single_writes: single.len(),
        single_p50_ms: percentile(&single, 0.5),
        single_p99_ms: percentile(&single, 0.99),
        writes: all_lat.len(),
        concurrency: a.concurrency,
        commits_per_sec: all_lat.len() as f64 / elapsed.as_secs_f64(),
        concurrent_p50_ms: percentile(&all_lat, 0.5),
        concurrent_p99_ms: percentile(&all_lat, 0.99),
    };
    for m in &members {
        let _ = m.raft.shutdown().await;
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!(
            "{} voter(s), durable ledgers in {}\n  one writer:  {} commits, p50 {:.2} ms, p99 {:.2} ms\n  {} writers: {} commits, {:.0} commits/s, p50 {:.2} ms, p99 {:.2} ms",
            report.voters,
            dir.path().display(),
            report.single_writes,
            report.single_p50_ms,
            report.single_p99_ms,
            report.concurrency,
            report.writes,
            report.commits_per_sec,
            report.concurrent_p50_ms,
            report.concurrent_p99_ms
        );
    }
    Ok(ExitCode::SUCCESS)
}
