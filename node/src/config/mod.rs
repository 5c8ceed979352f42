//! One config pipeline: flags and `TESTMESH_*` environment (through clap) over an optional TOML
//! file (`deny_unknown_fields`, versioned) over defaults, validated into an immutable
//! [`NodeConfig`].

pub mod providers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use testmesh_consensus::model::GpuInfo;
use testmesh_consensus::{Bytes, MilliCpu};

use crate::error::Error;
use crate::units;
use testmesh_planner::catalogue::InstanceType;

pub const DEFAULT_DATA_DIR: &str = "testmesh-data";
pub const DEFAULT_HTTP: &str = "127.0.0.1:7070";
const CONFIG_VERSION: u32 = 1;

/// `testmesh node` flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeArgs {
    /// Where the ledger, logs, node identity and API token live [default: ./testmesh-data]
    #[arg(long, env = "TESTMESH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the HTTP API and dashboard [default: 127.0.0.1:7070]
    #[arg(long, env = "TESTMESH_HTTP")]
    pub http: Option<String>,
    /// TOML config file (flags override it)
    #[arg(long, env = "TESTMESH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Worker label KEY=VALUE that tasks can require with --constraint (repeatable)
    #[arg(long = "label", value_parser = units::parse_key_value)]
    pub labels: Vec<(String, String)>,
    /// This node's name in the dashboard and listings [default: the hostname]
    #[arg(long, env = "TESTMESH_NAME")]
    pub name: Option<String>,
    /// CPU this worker offers, e.g. 4 or 1500m [default: all cores]
    #[arg(long, value_parser = units::parse_cpu)]
    pub cpus: Option<MilliCpu>,
    /// Memory this worker offers, e.g. 8GiB [default: all memory]
    #[arg(long, value_parser = units::parse_size)]
    pub memory: Option<Bytes>,
    /// Cluster swarm key file (/key/swarm/psk/1.0.0/ format) [default: <data-dir>/swarm.key, created if missing]
    #[arg(long, env = "TESTMESH_SWARM_KEY")]
    pub swarm_key: Option<PathBuf>,
    /// Mesh address to listen on (repeatable) [default: /ip4/0.0.0.0/tcp/7071]
    #[arg(long = "listen")]
    pub listen: Vec<String>,
    /// Address of a peer to connect to, for networks without multicast (repeatable)
    #[arg(long = "join")]
    pub join: Vec<String>,
    /// Do not use mDNS discovery (then --join is the only way to find peers)
    #[arg(long)]
    pub no_mdns: bool,
    /// Wait for this many nodes (including this one) and start the cluster with all of them as voters
    #[arg(long)]
    pub bootstrap_expect: Option<usize>,
    /// Number of Raft voters the cluster grows to: 1, 3 or 5 [default: 3]
    #[arg(long)]
    pub voters: Option<usize>,
    /// A worker silent this long is marked lost and its tasks re-queued, e.g. 10s [default: 10s]
    #[arg(long, value_parser = units::parse_duration)]
    pub dead_after: Option<std::time::Duration>,
    /// How often this node samples and gossips its statistics [default: 1s]
    #[arg(long, value_parser = units::parse_duration)]
    pub stats_interval: Option<std::time::Duration>,
    /// How far back each node keeps (downsampled) statistics of every node [default: 1h]
    #[arg(long, value_parser = units::parse_duration)]
    pub stats_retention: Option<std::time::Duration>,
    /// How often open dashboard pages get a live update [default: 2s]
    #[arg(long, value_parser = units::parse_duration)]
    pub dashboard_interval: Option<std::time::Duration>,
    /// Serve the dashboard and read-only API without the token on a non-loopback --http
    /// address (writes still need it)
    #[arg(long)]
    pub public_dashboard: bool,
    /// A host name a public dashboard answers to besides its IP addresses, localhost and this
    /// host's name (repeatable; guards against DNS rebinding)
    #[arg(long = "allow-host")]
    pub allow_host: Vec<String>,
    /// Simulated GPUs instead of NVML, COUNTxMODEL:MEMORY (e.g. "2xSim A100:40GiB"); for tests
    /// and demos on hosts without NVIDIA GPUs
    #[arg(long, hide = true, value_parser = parse_simulated_gpus)]
    pub simulate_gpus: Option<SimulatedGpuList>,
    /// Indices of simulated GPUs that run someone else's process (comma-separated)
    #[arg(long, hide = true, value_delimiter = ',', requires = "simulate_gpus")]
    pub simulate_gpu_busy: Vec<u32>,
    /// On SIGTERM, how long running tasks may take to finish before they are stopped and
    /// handed back to the queue; 0s hands them back at once [default: 30s]
    #[arg(long, value_parser = units::parse_duration_or_zero)]
    pub drain_timeout: Option<std::time::Duration>,
    /// When finished tasks leave the live ledger for the on-disk archive, and how many the
    /// archive keeps: e.g. "age=24h,count=10000,archive=200000", or "forever"
    /// [default: age=24h,count=10000,archive=200000]
    #[arg(long, value_parser = parse_retention)]
    pub retention: Option<Retention>,
    /// Most bytes kept of each output stream of an attempt; beyond it the start is dropped
    /// and the tail kept [default: 64MiB]
    #[arg(long, value_parser = units::parse_size)]
    pub max_log_size: Option<Bytes>,
    /// Below this much free space in the data dir the node refuses new tasks [default: 256MiB]
    #[arg(long, value_parser = units::parse_size)]
    pub min_free_disk: Option<Bytes>,
    /// Largest working-tree archive this node takes from `testmesh run --workdir` [default:
    /// 256MiB]
    #[arg(long, value_parser = units::parse_size)]
    pub max_code_size: Option<Bytes>,
    /// Bound of the cache of shipped working trees (least recently used go first) [default:
    /// 4GiB]
    #[arg(long, value_parser = units::parse_size)]
    pub code_cache_size: Option<Bytes>,
    /// Join token (`testmesh token create --join`) that admits this node to an existing
    /// cluster; without one, a node that joins after the founding window waits for
    /// `testmesh nodes approve`
    #[arg(long, env = "TESTMESH_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// For how long after a new cluster is founded nodes holding the swarm key are admitted
    /// without a join token (trust on first use); 0s admits only by token or approval
    /// [default: 60s]
    #[arg(long, value_parser = units::parse_duration_or_zero)]
    pub founding_window: Option<std::time::Duration>,
    /// A variable of the node's environment that tasks get too: a name (CUDA_HOME) or a prefix
    /// ending in * (NCCL_*); repeatable. Besides these, tasks see only PATH, HOME, USER,
    /// LOGNAME, SHELL, LANG, LANGUAGE, LC_*, TZ, TERM and TMPDIR of the node's environment
    #[arg(long = "pass-env")]
    pub pass_env: Vec<String>,
    /// PEM certificate (chain) for HTTPS on the API and dashboard; with --tls-key
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback --http address (tokens and task data then cross the
    /// network in clear); without it such a node serves HTTPS with its self-signed certificate
    #[arg(long)]
    pub insecure_http: bool,
    /// Get the swarm key from this member's API with the --join-token (how autoscaled
    /// instances join: their launch data holds no swarm key), e.g. https://10.0.0.5:7070
    #[arg(long, env = "TESTMESH_ENROL", requires = "join_token")]
    pub enrol: Option<String>,
    /// The --enrol member's certificate fingerprint (sha256:…), for its self-signed certificate
    #[arg(long, requires = "enrol")]
    pub enrol_fingerprint: Option<String>,
    /// The URL other hosts reach this node's API at, given to instances the autoscaler
    /// launches to enrol through [default: derived from --http and the mesh addresses]
    #[arg(long)]
    pub advertise_http: Option<String>,
}

/// `--retention`: the live ledger's policy and the size of each replica's archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub policy: testmesh_consensus::retention::Policy,
    /// Archived tasks kept per replica.
    pub archive: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            policy: Default::default(),
            archive: testmesh_consensus::store::DEFAULT_ARCHIVE_KEEP,
        }
    }
}

/// Parses `age=24h,count=10000,archive=200000` (any of them; the others keep their default;
/// `age=forever` or `count=forever` turns that rule off), or `forever` for no retention.
pub fn parse_retention(s: &str) -> Result<Retention, String> {
    use testmesh_consensus::retention::Policy;
    let s = s.trim();
    let mut r = Retention::default();
    if s == "forever" {
        r.policy = Policy::FOREVER;
        return Ok(r);
    }
    let usage = "use e.g. age=24h,count=10000,archive=200000 (any of them), or forever";
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("retention {part:?}: {usage}"));
        };
        let forever = v.trim() == "forever";
        match k.trim() {
            "age" if forever => r.policy.max_age_ms = None,
            "age" => {
                let d = units::parse_duration(v).map_err(|e| format!("retention age: {e}"))?;
                r.policy.max_age_ms = Some(d.as_millis() as u64);
            }
            "count" if forever => r.policy.keep = None,
            "count" => {
                r.policy.keep = Some(v.trim().parse().map_err(|_| {
                    format!("retention count {v:?}: a number of finished tasks, e.g. 10000")
                })?);
            }
            "archive" => {
                let n: u64 = v.trim().parse().map_err(|_| {
                    format!("retention archive {v:?}: a number of tasks, e.g. 200000")
                })?;
                if n == 0 {
                    return Err("retention archive must be at least 1".into());
                }
                r.archive = n;
            }
            other => return Err(format!("retention has no {other:?}; {usage}")),
        }
    }
    Ok(r)
}

/// The parsed `--simulate-gpus` value (a newtype so that clap takes it as one value).
#[derive(Debug, Clone)]
pub struct SimulatedGpuList(pub Vec<GpuInfo>);

fn parse_simulated_gpus(s: &str) -> Result<SimulatedGpuList, String> {
    let bad = || format!("--simulate-gpus {s:?}: use COUNTxMODEL:MEMORY, e.g. 2xSim A100:40GiB");
    let (count, rest) = s.split_once('x').ok_or_else(bad)?;
    let (model, mem) = rest.rsplit_once(':').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let memory = units::parse_size(mem)?;
    if count == 0 || count > 64 || model.trim().is_empty() {
        return Err(bad());
    }
    Ok(SimulatedGpuList(
        (0..count)
            .map(|index| GpuInfo {
                index,
                uuid: format!("GPU-simulated-{index}"),
                model: model.trim().to_string(),
                memory,
            })
            .collect(),
    ))
}

/// The TOML file; every field optional, unknown fields are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    version: Option<u32>,
    data_dir: Option<PathBuf>,
    http: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    name: Option<String>,
    cpus: Option<String>,
    memory: Option<String>,
    /// Raft log entries between snapshots.
    snapshot_every: Option<u64>,
    /// Raft log entries kept after a snapshot for followers that lag a little.
    snapshot_keep_logs: Option<u64>,
    swarm_key: Option<PathBuf>,
    #[serde(default)]
    listen: Vec<String>,
    #[serde(default)]
    join: Vec<String>,
    mdns: Option<bool>,
    bootstrap_expect: Option<usize>,
    voters: Option<usize>,
    dead_after: Option<String>,
    drain_timeout: Option<String>,
    public_dashboard: Option<bool>,
    retention: Option<String>,
    max_log_size: Option<String>,
    min_free_disk: Option<String>,
    max_code_size: Option<String>,
    code_cache_size: Option<String>,
    founding_window: Option<String>,
    #[serde(default)]
    pass_env: Vec<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    insecure_http: Option<bool>,
    /// The instance catalogue (recommendations, autoscaling); the built-in one when absent.
    #[serde(default)]
    instance_types: Vec<FileInstanceType>,
    /// Where the autoscaler may get workers from.
    #[serde(default)]
    providers: Vec<crate::config::providers::FileProvider>,
    /// Reports the leader makes on a schedule.
    #[serde(default)]
    reports: Vec<crate::reports::FileReport>,
}

/// One `[[instance_types]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileInstanceType {
    provider: String,
    name: String,
    cpus: String,
    memory: String,
    #[serde(default)]
    gpus: u32,
    #[serde(default)]
    gpu_model: String,
    gpu_memory: Option<String>,
    price_per_hour: f64,
    #[serde(default = "default_boot_secs")]
    boot_secs: u32,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn default_boot_secs() -> u32 {
    90
}

fn instance_types(file: Vec<FileInstanceType>) -> Result<Vec<InstanceType>, String> {
    if file.is_empty() {
        return Ok(testmesh_planner::catalogue::default_catalogue());
    }
    let mut seen = std::collections::BTreeSet::new();
    file.into_iter()
        .map(|f| {
            let key = format!("{}/{}", f.provider, f.name);
            let t = InstanceType {
                cpu: units::parse_cpu(&f.cpus).map_err(|e| format!("{key}: cpus: {e}"))?,
                memory: units::parse_size(&f.memory).map_err(|e| format!("{key}: memory: {e}"))?,
                gpu_memory: match &f.gpu_memory {
                    Some(m) => {
                        units::parse_size(m).map_err(|e| format!("{key}: gpu_memory: {e}"))?
                    }
                    None => Bytes(0),
                },
                provider: f.provider,
                name: f.name,
                gpus: f.gpus,
                gpu_model: f.gpu_model,
                price_per_hour: f.price_per_hour,
                boot_secs: f.boot_secs,
                labels: f.labels,
            };
            t.validate()?;
            if !seen.insert(key.clone()) {
                return Err(format!("instance type {key} is listed twice"));
            }
            Ok(t)
        })
        .collect()
}

/// Validated, immutable node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Shown in the dashboard and listings; empty for the hostname.
    pub name: String,
    /// `[[reports]]`: made on the leader on their schedules.
    pub reports: Vec<crate::reports::ReportSpec>,
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub labels: BTreeMap<String, String>,
    pub cpus: Option<MilliCpu>,
    pub memory: Option<Bytes>,
    pub simulated_gpus: Option<Vec<GpuInfo>>,
    pub simulated_busy_gpus: Vec<u32>,
    pub snapshot_every: u64,
    pub snapshot_keep_logs: u64,
    pub drain_timeout: std::time::Duration,
    pub swarm_key: Option<PathBuf>,
    pub listen: Vec<libp2p::Multiaddr>,
    pub join: Vec<libp2p::Multiaddr>,
    pub mdns: bool,
    pub bootstrap_expect: Option<usize>,
    pub voters: usize,
    pub dead_after: std::time::Duration,
    pub stats_interval: std::time::Duration,
    pub stats_retention: std::time::Duration,
    pub catalogue: Vec<InstanceType>,
    pub providers: Vec<crate::config::providers::FileProvider>,
    pub public_dashboard: bool,
    pub allowed_hosts: Vec<String>,
    pub dashboard_interval: std::time::Duration,
    pub retention: Retention,
    pub max_log_size: Bytes,
    pub min_free_disk: Bytes,
    pub max_code_size: Bytes,
    pub code_cache_size: Bytes,
    /// A join token (`tmj_…`) presented when joining.
    pub join_token: Option<String>,
    pub founding_window: std::time::Duration,
    /// The node's variables passed to tasks besides the usual ones (`--pass-env`).
    pub pass_env: Vec<String>,
    pub tls: Tls,
    pub enrol: Option<Enrol>,
    pub advertise_http: Option<String>,
}

/// `--enrol`: where and with which pinned certificate this node gets the swarm key.
#[derive(Debug, Clone)]
pub struct Enrol {
    pub url: String,
    pub fingerprint: Option<String>,
}

/// How the API is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Plain HTTP: loopback without a certificate, or `--insecure-http`.
    Off,
    /// HTTPS with the data dir's self-signed certificate (made at first start).
    SelfSigned,
    /// HTTPS with the given certificate and key.
    Files { cert: PathBuf, key: PathBuf },
}

fn multiaddrs(flag: &str, v: &[String]) -> Result<Vec<libp2p::Multiaddr>, Error> {
    v.iter()
        .map(|a| {
            a.parse().map_err(|e| {
                Error::Config(format!(
                    "{flag} {a:?} is not a multiaddr ({e}): use e.g. /ip4/192.168.1.10/tcp/7071"
                ))
            })
        })
        .collect()
}

fn read_file(path: &Path) -> Result<FileConfig, Error> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::io("cannot read config file", path, e))?;
    parse_file(&text, path)
}

/// A config file's text, checked for its version (`path` names it in errors).
pub(crate) fn parse_file(text: &str, path: &Path) -> Result<FileConfig, Error> {
    let file: FileConfig =
        toml::from_str(text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    match file.version {
        Some(CONFIG_VERSION) => Ok(file),
        Some(v) => Err(Error::Config(format!(
            "{}: config version {v} is not supported; this testmesh reads version {CONFIG_VERSION}",
            path.display()
        ))),
        None => Err(Error::Config(format!(
            "{}: add `version = {CONFIG_VERSION}` at the top of the file",
            path.display()
        ))),
    }
}

impl NodeConfig {
    pub fn build(args: &NodeArgs) -> Result<NodeConfig, Error> {
        let mut file = match &args.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let in_file = |what: &str, e: String| {
            Error::Config(format!(
                "{what} in {}: {e}",
                args.config.as_deref().unwrap_or(Path::new("")).display()
            ))
        };
        let http_text = args
            .http
            .clone()
            .or(file.http)
            .unwrap_or_else(|| DEFAULT_HTTP.to_string());
        let http: SocketAddr = http_text.parse().map_err(|_| {
            Error::Config(format!(
                "--http {http_text:?} is not an address: use IP:PORT, e.g. 127.0.0.1:7070 or 0.0.0.0:7070"
            ))
        })?;
        let name = args.name.clone().or(file.name).unwrap_or_default();
        if !name.is_empty()
            && (name.chars().count() > 64
                || name.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(Error::Config(format!(
                "--name {name:?}: at most 64 characters, no spaces (e.g. gpu-a1)"
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        let reports = std::mem::take(&mut file.reports)
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let r = r.check(i).map_err(|e| in_file("reports", e))?;
                if !names.insert(r.name.clone()) {
                    return Err(in_file(
                        "reports",
                        format!("two reports are named {:?}", r.name),
                    ));
                }
                Ok(r)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let mut labels = file.labels;
        labels.extend(args.labels.iter().cloned());
        for k in labels.keys() {
            if k.is_empty() || k.len() > 128 || k.chars().any(|c| c.is_whitespace() || c == '=') {
                return Err(Error::Config(format!(
                    "label key {k:?} must be 1-128 characters without spaces or '='"
                )));
            }
        }
        let cpus = match (args.cpus, file.cpus) {
            (Some(c), _) => Some(c),
            (None, Some(s)) => Some(units::parse_cpu(&s).map_err(|e| in_file("cpus", e))?),
            _ => None,
        };
        let memory = match (args.memory, file.memory) {
            (Some(m), _) => Some(m),
            (None, Some(s)) => Some(units::parse_size(&s).map_err(|e| in_file("memory", e))?),
            _ => None,
        };
        let snapshot_every = file.snapshot_every.unwrap_or(10_000);
        if snapshot_every < 10 {
            return Err(Error::Config("snapshot_every must be at least 10".into()));
        }
        let listen = if !args.listen.is_empty() {
            &args.listen
        } else {
            &file.listen
        };
        let mut listen = multiaddrs("--listen", listen)?;
        if listen.is_empty() {
            listen.push(
                format!("/ip4/0.0.0.0/tcp/{}", crate::mesh::DEFAULT_PORT)
                    .parse()
                    .expect("valid"),
            );
        }
        let join = multiaddrs(
            "--join",
            if !args.join.is_empty() {
                &args.join
            } else {
                &file.join
            },
        )?;
        let voters = args.voters.or(file.voters).unwrap_or(3);
        if ![1, 3, 5].contains(&voters) {
            return Err(Error::Config(format!(
                "--voters {voters}: use 1, 3 or 5 (an odd number keeps a majority)"
            )));
        }
        let bootstrap_expect = args.bootstrap_expect.or(file.bootstrap_expect);
        if bootstrap_expect == Some(0) {
            return Err(Error::Config(
                "--bootstrap-expect must be at least 1".into(),
            ));
        }
        let dead_after = match (args.dead_after, &file.dead_after) {
            (Some(d), _) => d,
            (None, Some(s)) => units::parse_duration(s).map_err(|e| in_file("dead_after", e))?,
            _ => std::time::Duration::from_secs(10),
        };
        if dead_after < std::time::Duration::from_secs(1) {
            return Err(Error::Config(
                "--dead-after must be at least 1s (heartbeats are every 100ms)".into(),
            ));
        }
        let drain_timeout = match (args.drain_timeout, &file.drain_timeout) {
            (Some(d), _) => d,
            (None, Some(s)) => {
                units::parse_duration_or_zero(s).map_err(|e| in_file("drain_timeout", e))?
            }
            _ => std::time::Duration::from_secs(30),
        };
        let stats_interval = args
            .stats_interval
            .unwrap_or(std::time::Duration::from_secs(1));
        let stats_retention = args
            .stats_retention
            .unwrap_or(std::time::Duration::from_secs(3600));
        if stats_interval < std::time::Duration::from_millis(100)
            || stats_retention < stats_interval
        {
            return Err(Error::Config(
                "--stats-interval must be at least 100ms and --stats-retention at least one interval".into(),
            ));
        }
        let catalogue =
            instance_types(file.instance_types).map_err(|e| in_file("[[instance_types]]", e))?;
        crate::config::providers::validate(&file.providers)
            .map_err(|e| in_file("[[providers]]", e))?;
        let dashboard_interval = args
            .dashboard_interval
            .unwrap_or(std::time::Duration::from_secs(2));
        if dashboard_interval < std::time::Duration::from_millis(100) {
            return Err(Error::Config(
                "--dashboard-interval must be at least 100ms".into(),
            ));
        }
        let retention = match (args.retention, &file.retention) {
            (Some(r), _) => r,
            (None, Some(s)) => parse_retention(s).map_err(|e| in_file("retention", e))?,
            _ => Retention::default(),
        };
        let size = |flag: Option<Bytes>, file: &Option<String>, key: &str, default: u64| match (
            flag, file,
        ) {
            (Some(b), _) => Ok(b),
            (None, Some(s)) => units::parse_size(s).map_err(|e| in_file(key, e)),
            _ => Ok(Bytes(default)),
        };
        let max_log_size = size(
            args.max_log_size,
            &file.max_log_size,
            "max_log_size",
            64 << 20,
        )?;
        if max_log_size.0 < 4096 {
            return Err(Error::Config("--max-log-size must be at least 4KiB".into()));
        }
        let min_free_disk = size(
            args.min_free_disk,
            &file.min_free_disk,
            "min_free_disk",
            256 << 20,
        )?;
        let max_code_size = size(
            args.max_code_size,
            &file.max_code_size,
            "max_code_size",
            crate::core::code::DEFAULT_MAX_UPLOAD,
        )?;
        let code_cache_size = size(
            args.code_cache_size,
            &file.code_cache_size,
            "code_cache_size",
            crate::core::code::DEFAULT_CACHE_BYTES,
        )?;
        let join_token = match &args.join_token {
            Some(t)
                if crate::core::tokens::parse(t)
                    .is_none_or(|p| p.kind != crate::core::tokens::Kind::Join) =>
            {
                return Err(Error::Config(
                    "--join-token is not a join token: it looks like tmj_<8 hex>_<32 hex>, as \
                     printed by `testmesh token create --join`"
                        .into(),
                ));
            }
            t => t.clone(),
        };
        let founding_window = match (args.founding_window, &file.founding_window) {
            (Some(d), _) => d,
            (None, Some(s)) => {
                units::parse_duration_or_zero(s).map_err(|e| in_file("founding_window", e))?
            }
            _ => std::time::Duration::from_secs(60),
        };
        let pass_env = if args.pass_env.is_empty() {
            file.pass_env
        } else {
            args.pass_env.clone()
        };
        for p in &pass_env {
            crate::agent::env::check_pattern(p).map_err(Error::Config)?;
        }
        let insecure = args.insecure_http || file.insecure_http.unwrap_or(false);
        let tls = match (
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
        ) {
            (Some(cert), Some(key)) if !insecure => Tls::Files { cert, key },
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "--insecure-http and --tls-cert contradict each other; give one".into(),
                ));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::Config(
                    "--tls-cert and --tls-key go together (tls_cert and tls_key in the file)"
                        .into(),
                ));
            }
            (None, None) if http.ip().is_loopback() || insecure => Tls::Off,
            (None, None) => Tls::SelfSigned,
        };
        let enrol = match &args.enrol {
            Some(url) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(Error::Config(format!(
                        "--enrol {url:?}: give a member's API URL, e.g. https://10.0.0.5:7070"
                    )));
                }
                if let Some(fp) = &args.enrol_fingerprint {
                    crate::tls::parse_fingerprint(fp).map_err(Error::Config)?;
                }
                Some(Enrol {
                    url: url.clone(),
                    fingerprint: args.enrol_fingerprint.clone(),
                })
            }
            None => None,
        };
        if let Some(a) = &args.advertise_http
            && !(a.starts_with("https://") || a.starts_with("http://"))
        {
            return Err(Error::Config(format!(
                "--advertise-http {a:?}: give a URL, e.g. https://10.0.0.5:7070"
            )));
        }
        Ok(NodeConfig {
            enrol,
            advertise_http: args.advertise_http.clone(),
            tls,
            pass_env,
            join_token,
            founding_window,
            retention,
            max_log_size,
            min_free_disk,
            max_code_size,
            code_cache_size,
            dashboard_interval,
            public_dashboard: args.public_dashboard || file.public_dashboard.unwrap_or(false),
            allowed_hosts: args.allow_host.clone(),
            providers: file.providers,
            catalogue,
            stats_interval,
            stats_retention,
            dead_after,
            swarm_key: args.swarm_key.clone().or(file.swarm_key),
            listen,
            join,
            mdns: !args.no_mdns && file.mdns.unwrap_or(true),
            bootstrap_expect,
            voters,
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            http,
            name,
            reports,
            labels,
            cpus,
            memory,
            simulated_gpus: args.simulate_gpus.clone().map(|g| g.0),
            simulated_busy_gpus: args.simulate_gpu_busy.clone(),
            snapshot_every,
            snapshot_keep_logs: file
                .snapshot_keep_logs
                .unwrap_or(testmesh_consensus::raft::KEEP_LOGS_AFTER_SNAPSHOT),
            drain_timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(text: &str) -> Result<NodeConfig, Error> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(&p, text).unwrap();
        NodeConfig::build(&NodeArgs {
            config: Some(p),
            ..Default::default()
        })
    }

    #[test]
    fn defaults_and_file_values() {
        let c = NodeConfig::build(&NodeArgs::default()).unwrap();
        assert_eq!(c.http.to_string(), DEFAULT_HTTP);
        let c = with_file("version = 1\ncpus = \"1500m\"\n[labels]\nzone = \"a\"\n").unwrap();
        assert_eq!(c.cpus, Some(MilliCpu(1500)));
        assert_eq!(c.labels["zone"], "a");
    }

    #[test]
    fn unknown_fields_and_versions_are_explained() {
        let e = with_file("version = 1\nhttp_port = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `http_port`"), "{e}");
        let e = with_file("cpus = \"2\"\n").unwrap_err().to_string();
        assert!(e.contains("version = 1"), "{e}");
        let e = with_file("version = 1\nmemory = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid size"), "{e}");
    }

    #[test]
    fn bad_http_address() {
        let e = NodeConfig::build(&NodeArgs {
            http: Some("localhost".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("IP:PORT"));
    }

    #[test]
    fn instance_catalogue_from_the_file() {
        let c = NodeConfig::build(&NodeArgs::default()).unwrap();
        assert!(c.catalogue.len() > 5, "the built-in catalogue by default");
        let t = |extra: &str| {
            format!(
                "version = 1\n[[instance_types]]\nprovider = \"docker\"\nname = \"local\"\ncpus = \"2\"\nmemory = \"4GiB\"\nprice_per_hour = 0.0\n{extra}"
            )
        };
        let c = with_file(&t("")).unwrap();
        assert_eq!(c.catalogue.len(), 1);
        assert_eq!(c.catalogue[0].cpu, MilliCpu(2000));
        assert_eq!(c.catalogue[0].boot_secs, 90);
        let e = with_file(&t("gpus = 2\n")).unwrap_err().to_string();
        assert!(e.contains("docker/local") && e.contains("gpu_model"), "{e}");
        let e = with_file(&(t("") + &t("").replace("version = 1\n", "")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn the_shipped_example_config_parses_with_its_catalogue_example() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/config/node.toml");
        let text = std::fs::read_to_string(path).unwrap();
        with_file(&text).unwrap();
        let block = text
            .find("# [[instance_types]]")
            .expect("the catalogue example");
        let uncommented: String = text[block..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let c = with_file(&format!("{}{uncommented}\n", &text[..block])).unwrap();
        assert_eq!(c.catalogue.len(), 1);
        assert_eq!(c.catalogue[0].key(), "aws/g5.xlarge");
        assert_eq!(c.catalogue[0].labels["pool"], "gpu");
    }

    #[test]
    fn retention_reads_each_part_and_says_what_to_write() {
        use testmesh_consensus::retention::Policy;
        let r = parse_retention("count=500").unwrap();
        assert_eq!(r.policy.keep, Some(500));
        assert_eq!(r.policy.max_age_ms, Policy::default().max_age_ms);
        let r = parse_retention("age=1h, count=forever, archive=7").unwrap();
        assert_eq!(r.policy.max_age_ms, Some(3_600_000));
        assert_eq!(r.policy.keep, None);
        assert_eq!(r.archive, 7);
        assert_eq!(parse_retention("forever").unwrap().policy, Policy::FOREVER);
        for bad in ["ttl=1h", "count=many", "archive=0", "age"] {
            let e = parse_retention(bad).unwrap_err();
            assert!(e.contains("retention"), "{bad}: {e}");
        }
        let c =
            with_file("version = 1\nretention = \"count=3\"\nmax_log_size = \"1MiB\"\n").unwrap();
        assert_eq!(c.retention.policy.keep, Some(3));
        assert_eq!(c.max_log_size.0, 1 << 20);
        assert!(with_file("version = 1\nretention = \"nonsense\"\n").is_err());
    }
}
