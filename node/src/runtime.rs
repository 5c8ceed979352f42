//! The composition root: builds every component of a node in a logged order, starts its loops
//! and stops them on one shutdown signal (SIGINT or SIGTERM).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use testmesh_consensus::command::WorkerRegistration;
use testmesh_consensus::raft::{self, Raft};
use testmesh_consensus::{Applied, Command, NodeId};
use tokio::sync::watch;

use crate::agent::{self, Agent, SystemProcesses};
use crate::api;
use crate::cluster::network::MeshNetwork;
use crate::cluster::{self, FormationOptions};
use crate::config::NodeConfig;
use crate::control::Control;
use crate::core::membership::Liveness;
use crate::core::{Core, Parts, Stats, clock, scaler};
use crate::error::Error;
use crate::mesh::{self, MeshConfig, key};
use crate::monitor::{Monitor, NvmlProbe, SimulatedGpus};
use crate::stats::{STATS_VERSION, StatsMessage, StatsStore};

/// Reads a small file, or creates it with `make()` (mode 0600) if it does not exist.
fn read_or_create(path: &Path, make: impl FnOnce() -> String) -> Result<String, Error> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = make();
            key::write_private(path, format!("{value}\n").as_bytes())?;
            Ok(value)
        }
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}

/// What a node's data directory holds about its identity.
struct Identity {
    keypair: libp2p::identity::Keypair,
    token: String,
    swarm_key_path: std::path::PathBuf,
}

/// Creates the data directory and reads (or makes) the node's keys and API token; a node
/// that left its cluster last time starts with a fresh replica.
fn prepare_data_dir(cfg: &NodeConfig) -> Result<Identity, Error> {
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create data dir", dir, e))?;
    let keypair = key::load_or_create_identity(&dir.join("node-key"))?;
    let token = read_or_create(&dir.join("api-token"), || {
        hex::encode(rand::random::<[u8; 24]>())
    })?;
    let swarm_key_path = match &cfg.swarm_key {
        Some(p) => p.clone(),
        None => {
            let p = dir.join("swarm.key");
            // A node that enrols gets the cluster's key instead of making one.
            if !p.exists() && cfg.enrol.is_none() {
                key::write_new_swarm_key(&p)?;
                tracing::info!("generated a new swarm key in {}", p.display());
            }
            p
        }
    };
    let left_marker = dir.join(LEFT_MARKER);
    if left_marker.exists() {
        // This node left its cluster on purpose: its old replica must not make it act as a
        // member (it is not one). Start empty and join again as a new learner.
        tracing::info!("this node left its cluster last time; starting with a fresh replica");
        let ledger = dir.join("ledger.redb");
        if ledger.exists() {
            std::fs::remove_file(&ledger).map_err(|e| Error::io("cannot remove", &ledger, e))?;
        }
        std::fs::remove_file(&left_marker)
            .map_err(|e| Error::io("cannot remove", &left_marker, e))?;
    }
    Ok(Identity {
        keypair,
        token,
        swarm_key_path,
    })
}

/// The node's background components, started in order under one shutdown signal.
struct Components {
    set: tokio::task::JoinSet<()>,
    shutdown: watch::Receiver<bool>,
}

impl Components {
    /// Starts a component; it must return once `shutdown` flips.
    fn start<F, Fut>(&mut self, name: &'static str, component: F)
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        tracing::debug!("starting {name}");
        let run = component(self.shutdown.clone());
        self.set.spawn(async move {
            run.await;
            tracing::debug!("{name} stopped");
        });
    }

    /// Waits up to `grace` for every component to stop, then aborts the rest.
    async fn stop(mut self, grace: Duration) {
        let drained = tokio::time::timeout(grace, async {
            while self.set.join_next().await.is_some() {}
        });
        if drained.await.is_err() {
            tracing::warn!("some components did not stop in time");
            self.set.abort_all();
        }
    }
}

/// Runs a node until SIGINT/SIGTERM.
pub async fn run(cfg: NodeConfig) -> Result<(), Error> {
    let dir = &cfg.data_dir;
    let clock = clock::system();
    let id = prepare_data_dir(&cfg)?;
    let peer = id.keypair.public().to_peer_id();
    let node = key::node_id_of(&peer);
    let mut join = cfg.join.clone();
    if let (Some(e), false) = (&cfg.enrol, id.swarm_key_path.exists()) {
        let token = cfg.join_token.as_deref().unwrap_or_default();
        join.extend(
            crate::enrol::enrol(
                &e.url,
                token,
                e.fingerprint.as_deref(),
                node,
                &id.swarm_key_path,
            )
            .await?,
        );
    }
    let swarm_key = key::read_swarm_key(&id.swarm_key_path)?;
    let swarm_key_text = std::fs::read_to_string(&id.swarm_key_path)
        .map_err(|e| Error::io("cannot read the swarm key", &id.swarm_key_path, e))?;
    tracing::info!(%node, %peer, data_dir = %dir.display(), "starting testmesh node");
    let orphans = agent::kill_orphans(&node.to_string());
    if orphans > 0 {
        tracing::warn!(
            "killed {orphans} task process group(s) left by an earlier run of this node"
        );
    }

    // Parts, in the order they depend on each other.
    let (stats, stats_task) = Stats::new(
        StatsStore::new(cfg.stats_interval, cfg.stats_retention),
        clock.clone(),
    );
    let (mesh, inbound, mesh_loop) = mesh::start(MeshConfig {
        stats: stats.gossip_sink(),
        keypair: id.keypair,
        swarm_key,
        listen: cfg.listen.clone(),
        join: join.clone(),
        mdns: cfg.mdns,
    })?;
    let (log_store, state_machine, ledger) =
        testmesh_consensus::store::open(&dir.join("ledger.redb"))?;
    ledger.archive().set_keep(cfg.retention.archive);
    let raft_config = raft::config_keeping("testmesh", cfg.snapshot_every, cfg.snapshot_keep_logs)
        .map_err(Error::Raft)?;
    let liveness = Liveness::new(clock.clone());
    let network = MeshNetwork {
        mesh: mesh.clone(),
        liveness: liveness.clone(),
    };
    let raft = Raft::new(
        node,
        Arc::new(raft_config),
        network,
        log_store,
        state_machine,
    )
    .await
    .map_err(|e| Error::Raft(e.to_string()))?;
    let (core, batcher) = Core::assemble(Parts {
        node,
        clock: clock.clone(),
        raft: raft.clone(),
        mesh: Some(mesh.clone()),
        ledger,
        data_dir: dir.clone(),
        stats,
        scaler: scaler::shared(cfg.providers.clone()),
        catalogue: cfg.catalogue.clone(),
    });
    core.disk.set_min_free(cfg.min_free_disk.0);
    core.code.set_max_upload(cfg.max_code_size.0);
    core.code.set_max_bytes(cfg.code_cache_size.0);
    let mut monitor = monitor_of(&cfg, node);
    let registration = registration_of(&cfg, &monitor, node);
    let gpu_peaks = monitor.gpu_memory_peaks();
    let (host_tx, host_rx) = watch::channel(monitor.sample());
    let listener = tokio::net::TcpListener::bind(cfg.http)
        .await
        .map_err(|source| Error::Bind {
            addr: cfg.http.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| Error::Bind {
        addr: cfg.http.to_string(),
        source,
    })?;
    let tls = match &cfg.tls {
        crate::config::Tls::Off => None,
        crate::config::Tls::SelfSigned => Some(crate::tls::identity(
            None,
            &cfg.data_dir,
            crate::tls::names_for(local),
        )?),
        crate::config::Tls::Files { cert, key } => Some(crate::tls::identity(
            Some((cert, key)),
            &cfg.data_dir,
            vec![],
        )?),
    };
    let tls_config = tls.as_ref().map(crate::tls::server_config).transpose()?;
    let app = http_app(
        &cfg,
        &core,
        (id.token, swarm_key_text.clone()),
        host_rx,
        local,
        tls.is_some(),
    );
    if tls.is_none() && !local.ip().is_loopback() {
        tracing::warn!(
            "serving plain HTTP on {local} (--insecure-http): API tokens and task data cross the \
             network in clear; prefer HTTPS (drop --insecure-http, or give --tls-cert/--tls-key)"
        );
    }

    let (shutdown_tx, shutdown) = watch::channel(false);
    let mut c = Components {
        set: tokio::task::JoinSet::new(),
        shutdown,
    };
    c.start("mesh", |s| mesh_loop.run(s));
    c.start("stats store", |s| stats_task.run(s));
    c.start("batcher", |s| batcher.run(s));
    // A node given --join seeds joins a cluster and never starts its own (unless it was told
    // to bootstrap with N others).
    let may_initialise = (join.is_empty() && cfg.enrol.is_none()) || cfg.bootstrap_expect.is_some();
    c.start("cluster rpc", |s| {
        cluster::serve(inbound, core.clone(), mesh.clone(), may_initialise, s)
    });
    let formation = FormationOptions {
        window: Duration::from_secs(2),
        bootstrap_expect: cfg.bootstrap_expect,
        may_initialise,
        join_token: cfg.join_token.clone(),
    };
    c.start("cluster formation", |s| {
        cluster::form(core.clone(), mesh.clone(), formation, s)
    });
    c.start("foreign clusters", |s| {
        cluster::watch_foreign(core.clone(), mesh.clone(), s)
    });
    c.start("failover", |s| {
        cluster::failover::campaign_when_leader_leaves(core.clone(), mesh.clone(), s)
    });
    c.start("voter promotion", |s| {
        cluster::grow(core.clone(), cfg.voters, cfg.founding_window, s)
    });
    let boot_id = registration.boot_id;
    c.start("registration", |s| register(core.clone(), registration, s));
    // Fencing: a worker with no confirmation from the leader for half of --dead-after stops
    // its attempts, well before the leader may run them elsewhere.
    let fence_after = cfg.dead_after / 2;
    let (standing_tx, standing_rx) = watch::channel(false);
    // A process apart that kills the attempts should this one be paused or die.
    let watchdog = match crate::agent::Watchdog::spawn() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                "cannot start the fencing watchdog ({e}): a paused or killed node's tasks would run on"
            );
            None
        }
    };
    let processes = watchdog
        .clone()
        .map_or_else(SystemProcesses::default, SystemProcesses::with_watchdog);
    let lease_view = crate::agent::LeaseView::default();
    let watchdog_lease = fence_after.mul_f64(crate::agent::WATCHDOG_LEASE);
    let has_watchdog = watchdog.is_some();
    c.start("lease", |s| {
        let view = lease_view.clone();
        crate::agent::keep_lease(core.clone(), fence_after, standing_tx, watchdog, view, s)
    });
    c.start("sampler", |s| {
        sample(
            core.clone(),
            mesh.clone(),
            monitor,
            host_tx,
            cfg.stats_interval,
            s,
        )
    });
    c.start("agent", |s| {
        let agent = Agent::new(core.clone(), processes);
        let agent = if has_watchdog {
            agent.with_lease(lease_view, watchdog_lease)
        } else {
            agent
        };
        agent
            .with_fencing(standing_rx, fence_after)
            .with_boot_id(boot_id)
            .with_gpu_memory(gpu_peaks)
            .with_max_log_size(cfg.max_log_size.0)
            .with_base_env(crate::agent::env::for_tasks(
                std::env::vars(),
                &cfg.pass_env,
            ))
            .run(s)
    });
    c.start("disk", |s| {
        crate::core::disk::watch_disk(
            core.disk.clone(),
            dir.clone(),
            core.ledger.clone(),
            Duration::from_secs(5),
            s,
        )
    });
    c.start("models", |s| {
        crate::core::keep_models_fresh(core.clone(), s)
    });
    c.start("control", |s| {
        Control {
            core: core.clone(),
            options: crate::core::eta::scheduling_options(),
            liveness,
            dead_after: cfg.dead_after,
            stats_fresh: (cfg.stats_interval * 3).max(Duration::from_secs(3)),
            predicted: Default::default(),
            retention: cfg.retention.policy,
        }
        .run(s)
    });

    // Tests and scripts that bind port 0 read the real addresses from these files, and the
    // autoscaler tells new workers to join them: wait until every listener has reported and a
    // wildcard one has listed every interface (the list stops changing).
    let mut mesh_addrs = Vec::new();
    for _ in 0..100 {
        let now = mesh.listen_addrs().await;
        let settled = !now.is_empty() && now == mesh_addrs;
        mesh_addrs = now;
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mesh_addrs: Vec<String> = mesh_addrs
        .iter()
        .map(|a| format!("{a}/p2p/{peer}"))
        .collect();
    write_file(&dir.join("mesh.addr"), &(mesh_addrs.join("\n") + "\n"))?;
    let scheme = if tls_config.is_some() {
        "https"
    } else {
        "http"
    };
    let scaler = crate::scaling::Scaler {
        core: core.clone(),
        own_addrs: mesh_addrs.clone(),
        swarm_key: swarm_key_text,
        enrol: crate::scaling::EnrolPoint {
            bound: format!("{scheme}://{local}"),
            advertised: cfg.advertise_http.clone(),
            fingerprint: tls.as_ref().map(|t| t.fingerprint.clone()),
        },
    };
    c.start("scaler", |s| scaler.run(s));
    c.start("reports", |s| {
        crate::reports::run(core.clone(), cfg.reports.clone(), s)
    });
    let scheme = if tls_config.is_some() {
        "https"
    } else {
        "http"
    };
    c.start("http", |s| serve_http(listener, app, tls_config, s));
    // The fingerprint and the URL first: scripts wait for http.addr, then read them.
    let fp_file = dir.join(crate::tls::FINGERPRINT_FILE);
    match &tls {
        Some(t) => write_file(&fp_file, &t.fingerprint)?,
        None => {
            let _ = std::fs::remove_file(&fp_file);
        }
    }
    write_file(&dir.join("http.url"), &format!("{scheme}://{local}"))?;
    write_file(&dir.join("http.addr"), &local.to_string())?;
    write_file(&dir.join("node.id"), &node.to_string())?;
    println!(
        "testmesh node {node} serving {scheme}://{local} (dashboard at /, API at /api/v1); API token in {}",
        dir.join("api-token").display()
    );
    if let Some(t) = &tls {
        println!(
            "TLS certificate {}{}: clients pin it with --tls-fingerprint {} (TESTMESH_TLS_FINGERPRINT)",
            t.fingerprint,
            if t.self_signed { " (self-signed)" } else { "" },
            t.fingerprint
        );
    }
    println!(
        "other hosts join with: testmesh node --swarm-key <copy of {}> --join-token <from \
         `testmesh token create --join`>{} (within a new cluster's founding window the key alone \
         admits them; later, without a token, they wait for `testmesh nodes approve`)",
        id.swarm_key_path.display(),
        mesh_addrs
            .iter()
            .find(|a| !a.starts_with("/ip4/127.") && !a.starts_with("/ip6/::1/"))
            .or(mesh_addrs.first())
            .map(|a| format!(" [--join {a} where multicast does not reach]"))
            .unwrap_or_default()
    );

    wait_for_signal().await;
    tokio::select! {
        _ = leave(&core, cfg.drain_timeout, dir) => {}
        _ = wait_for_signal() => tracing::warn!("second signal: stopping now without leaving cleanly"),
    }
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    // Every component watches the shutdown signal; the agent kills its tasks on the way out.
    c.stop(Duration::from_secs(10)).await;
    let _ = raft.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// The resource monitor, with simulated GPUs when configured (tests and demos).
fn monitor_of(cfg: &NodeConfig, node: NodeId) -> Monitor {
    let probe: Box<dyn crate::monitor::GpuProbe> = match &cfg.simulated_gpus {
        Some(gpus) => {
            tracing::warn!("using {} simulated GPU(s) instead of NVML", gpus.len());
            Box::new(SimulatedGpus {
                gpus: gpus.clone(),
                busy: cfg.simulated_busy_gpus.clone(),
            })
        }
        None => NvmlProbe::open(),
    };
    let node_str = node.to_string();
    Monitor::new(probe, Box::new(move |pid| agent::task_of(pid, &node_str)))
}

/// What this node registers as a worker: its hardware and capacity (overridden by flags).
fn registration_of(cfg: &NodeConfig, monitor: &Monitor, node: NodeId) -> WorkerRegistration {
    let mut capacity = monitor.capacity(&cfg.data_dir);
    if let Some(c) = cfg.cpus {
        capacity.cpu = c;
    }
    if let Some(m) = cfg.memory {
        capacity.memory = m;
    }
    let mut hardware = monitor.hardware();
    hardware.name = if cfg.name.is_empty() {
        hardware.hostname.clone()
    } else {
        cfg.name.clone()
    };
    WorkerRegistration {
        id: node,
        hardware,
        capacity,
        labels: cfg.labels.clone(),
        boot_id: rand::random(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// The API and the dashboard behind the access guard.
fn http_app(
    cfg: &NodeConfig,
    core: &Core,
    (token, swarm_key): (String, String),
    host: watch::Receiver<crate::monitor::HostSample>,
    local: std::net::SocketAddr,
    tls: bool,
) -> axum::Router {
    let state = Arc::new(api::Inner {
        core: core.clone(),
        token,
        swarm_key,
        enrol_allowed: tls || local.ip().is_loopback(),
        started: core.clock.instant(),
        host,
    });
    let access = api::access::Access {
        bound: local,
        token: state.token.clone(),
        public: cfg.public_dashboard,
        allowed_hosts: cfg.allowed_hosts.clone(),
        core: core.clone(),
        sessions: Default::default(),
    };
    api::router(state.clone())
        .merge(testmesh_dashboard::router(
            Arc::new(crate::dashboard::DashboardSource(core.clone())),
            cfg.dashboard_interval,
        ))
        .layer(axum::middleware::from_fn_with_state(
            access,
            api::access::guard,
        ))
}

/// Serves HTTP until shutdown (in-flight requests finish).
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    let served = match tls {
        Some(config) => match crate::tls::TlsListener::new(listener, config) {
            Ok(l) => axum::serve(l, app).with_graceful_shutdown(stop).await,
            Err(e) => Err(e),
        },
        None => {
            // Small request/response pairs: do not let Nagle's algorithm hold them back.
            use axum::serve::ListenerExt;
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
    };
    if let Err(e) = served {
        tracing::error!("http server: {e}");
    }
}

/// Samples this host every `interval`, keeps its own point and gossips it. Statistics never
/// go through Raft.
async fn sample(
    core: Core,
    mesh: crate::mesh::MeshClient,
    mut monitor: Monitor,
    host: watch::Sender<crate::monitor::HostSample>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let sample = monitor.sample();
        let running = core.ledger.read().active_on(core.node).count() as u32;
        let msg = StatsMessage {
            version: STATS_VERSION,
            node: core.node,
            at: core.now(),
            sample: sample.clone(),
            running_tasks: running,
        };
        if let Ok(bytes) = testmesh_consensus::codec::encode(&msg) {
            mesh.publish_stats(bytes);
        }
        core.stats.insert(msg).await;
        host.send_replace(sample);
    }
}

/// Written once this node has left its cluster's membership (see `run`).
const LEFT_MARKER: &str = "left-cluster";

/// Leaves the cluster gracefully: no new placements, running tasks get `drain_timeout` to
/// finish, what is still running is handed back to the queue, and the node leaves the
/// membership (a leader hands over by removing itself; it steps down once that commits).
async fn leave(core: &Core, drain_timeout: Duration, dir: &Path) {
    use testmesh_consensus::model::WorkerState;
    let (writer, reader, node) = (&core.writer, &core.ledger, core.node);
    const STEP: Duration = Duration::from_secs(5);
    let registered = reader.read().worker(node).map(|w| w.state);
    if registered.is_none() {
        return; // never joined a cluster: nothing to hand over
    }
    if registered == Some(WorkerState::Active) {
        let cmd = Command::SetWorkerState {
            worker: node,
            state: WorkerState::Draining,
            at: core.now(),
        };
        if let Err(e) | Ok(Err(e)) = tokio::time::timeout(STEP, writer.write(cmd))
            .await
            .map_err(|_| "timed out".to_string())
            .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
        {
            tracing::warn!("could not stop new placements here: {e}");
        }
    }
    let running = reader.read().active_on(node).count();
    if running > 0 && !drain_timeout.is_zero() {
        tracing::info!(
            "draining: waiting up to {drain_timeout:?} for {running} running task(s); signal again to stop now"
        );
        let mut applied = reader.watch();
        let _ = tokio::time::timeout(drain_timeout, async {
            while reader.read().active_on(node).count() > 0 {
                if applied.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    }
    let left = reader.read().active_on(node).count();
    let cmd = Command::WorkerLeft {
        worker: node,
        at: core.now(),
    };
    match tokio::time::timeout(STEP, writer.write(cmd)).await {
        Ok(Ok(Ok(_))) if left > 0 => {
            tracing::warn!("handed {left} unfinished task(s) back to the queue")
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("could not hand back running tasks: {e}"),
        Err(_) => tracing::warn!("could not hand back running tasks: no answer in {STEP:?}"),
    }
    let members = core
        .leadership
        .metrics()
        .membership_config
        .membership()
        .nodes()
        .count();
    if members <= 1 {
        return; // a one-node cluster keeps its ledger for its next start
    }
    match tokio::time::timeout(STEP, cluster::remove_member(writer, node)).await {
        Ok(Ok(())) => {
            tracing::info!("left the cluster's membership");
            if let Err(e) = write_file(&dir.join(LEFT_MARKER), "left\n") {
                tracing::warn!("{e}");
            }
        }
        Ok(Err(e)) => tracing::warn!("could not leave the membership: {e:?}"),
        Err(_) => tracing::warn!("could not leave the membership: no answer in {STEP:?}"),
    }
}

/// Writes through a temporary file and a rename, so a reader (a script waiting for the address)
/// never sees it half written.
fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("cannot write", path, e))
}

/// Registers this node as a worker once a leader is reachable (at first start, after the
/// cluster has formed), and again whenever the ledger has marked it lost (after a partition).
async fn register(
    core: Core,
    registration: WorkerRegistration,
    mut shutdown: watch::Receiver<bool>,
) {
    use testmesh_consensus::model::WorkerState;
    let (writer, reader) = (&core.writer, &core.ledger);
    let me = registration.id;
    loop {
        let needed = reader
            .read()
            .worker(me)
            .is_none_or(|w| w.boot_id != registration.boot_id || w.state == WorkerState::Lost);
        if needed {
            let cmd = Command::RegisterWorker {
                worker: registration.clone(),
                at: core.now(),
            };
            match writer.write(cmd).await {
                Ok(Ok(Applied::WorkerRegistered { lost })) => {
                    if !lost.is_empty() {
                        tracing::warn!(
                            "{} task(s) were running when this node stopped; marked lost and re-queued where retries allow",
                            lost.len()
                        );
                    }
                    tracing::info!("registered as a worker");
                }
                Ok(Ok(_)) => {}
                Ok(Err(r)) => tracing::error!("worker registration refused: {r}"),
                Err(e) => tracing::debug!("registration: {e}; retrying"),
            }
        }
        let pause = if needed {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
