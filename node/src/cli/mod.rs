//! The command line: one `testmesh` binary for the node and every client command.

/// `println!` that ends the process quietly when stdout is closed (`testmesh tasks | head`)
/// instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($t)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod bench;
mod bench_raft;
pub(crate) mod bench_replay;
mod bench_replay_scaling;
mod chaos;
mod client;
mod demo;
mod insights;
mod output;
mod predict;
mod report;
mod run;
mod scaling;
mod security;
mod ship;
mod tasks;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub use client::{Client, ClientArgs};

use crate::config::{NodeArgs, NodeConfig};

#[derive(Debug, Parser)]
#[command(
    name = "testmesh",
    version,
    about = "A self-organising pool of GPU/CPU hosts for test and benchmark jobs"
)]
pub struct Cli {
    /// Log format
    #[arg(
        long,
        value_enum,
        default_value = "text",
        global = true,
        env = "TESTMESH_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run a node: worker, ledger replica, API and dashboard
    Node(NodeArgs),
    /// Submit a command as a task; prints its id
    Submit(tasks::SubmitArgs),
    /// List tasks
    Tasks(tasks::TasksArgs),
    /// Show one task
    Task(tasks::TaskArgs),
    /// Print a task's output
    Logs(tasks::LogsArgs),
    /// Cancel a task
    Cancel(tasks::CancelArgs),
    /// List workers
    Workers(tasks::JsonArgs),
    /// Stop placing new tasks on a worker; its running tasks finish
    Drain(tasks::WorkerArgs),
    /// Let a drained worker take tasks again
    Undrain(tasks::WorkerArgs),
    /// Clear a quarantined worker (its track record starts afresh)
    Unquarantine(tasks::WorkerArgs),
    /// Show the node's and the cluster's status
    Status(tasks::JsonArgs),
    /// End-to-end load generator through the API
    Bench(bench::BenchArgs),
    /// Predictions from history; `predict eval` measures them offline on CSV files
    Predict(predict::PredictArgs),
    /// Workload patterns, reserved-vs-used efficiency and worker-type recommendations
    Insights(insights::InsightsArgs),
    /// A local demo cluster: simulated workers, autoscaling, a bursty workload, the dashboard
    /// and a report
    Demo(demo::DemoArgs),
    /// Write a report (charts, utilisation, efficiency, scaling, outcomes, recommendations)
    Report(report::ReportArgs),
    /// Autoscaling: instances, decisions and why
    Scaling(scaling::ScalingArgs),
    /// Show or change the autoscaling policy
    Policy(scaling::PolicyArgs),
    /// Run a whole suite: a matrix from a run file, or a command split into shards; waits with
    /// a progress bar and exits non-zero if any task failed
    Run(run::RunArgs),
    /// Runs: list, show, wait, export (JUnit, JSON), cancel
    Runs(run::RunsArgs),
    /// Fault injection: a local cluster under a recorded client workload and seeded faults
    /// (kills, pauses, partitions), checked for lost, duplicated or doubly run work
    Chaos(chaos::ChaosArgs),
    /// The fencing watchdog a node starts for itself (reads its lease on stdin)
    #[command(name = "__watchdog", hide = true)]
    Watchdog,
    /// Write a new cluster swarm key (give the same file to every node with --swarm-key)
    Keygen(KeygenArgs),
    /// Cluster-wide API tokens (read, submit, admin) and join tokens: create, list, revoke
    Token(security::TokenArgs),
    /// Cluster members and nodes waiting to join: list, approve, remove
    Nodes(security::NodesArgs),
    /// What each token changed, newest first
    Audit(security::AuditArgs),
}

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// File to write (mode 0600; never overwritten) [default: print to stdout]
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

fn init_tracing(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TESTMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

/// Parses the command line and runs it; the process exit code is the result.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_node = matches!(cli.command, Cmd::Node(_));
    init_tracing(
        cli.log_format,
        if is_node {
            "info,openraft=error"
        } else {
            "warn,openraft=error"
        },
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Node(args) => {
            let cfg = NodeConfig::build(&args)?;
            crate::runtime::run(cfg).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Submit(a) => tasks::submit(a).await,
        Cmd::Run(a) => run::run(a).await,
        Cmd::Runs(a) => run::runs(a).await,
        Cmd::Tasks(a) => tasks::list(a).await,
        Cmd::Task(a) => tasks::show(a).await,
        Cmd::Logs(a) => tasks::logs(a).await,
        Cmd::Cancel(a) => tasks::cancel(a).await,
        Cmd::Workers(a) => tasks::workers(a).await,
        Cmd::Drain(a) => tasks::set_worker_state(a, "drain").await,
        Cmd::Undrain(a) => tasks::set_worker_state(a, "undrain").await,
        Cmd::Unquarantine(a) => tasks::set_worker_state(a, "unquarantine").await,
        Cmd::Status(a) => tasks::status(a).await,
        Cmd::Bench(a) => bench::run(a).await,
        Cmd::Chaos(a) => chaos::run(a).await,
        Cmd::Watchdog => {
            crate::agent::watchdog::serve();
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Predict(a) => match a.cmd {
            Some(predict::PredictCmd::Eval(e)) => predict::eval(e),
            None => predict::ask(a).await,
        },
        Cmd::Insights(a) => insights::run(a).await,
        Cmd::Scaling(a) => scaling::scaling(a).await,
        Cmd::Report(a) => report::run(a).await,
        Cmd::Demo(a) => demo::run(a).await,
        Cmd::Policy(a) => scaling::policy(a).await,
        Cmd::Token(a) => security::token(a).await,
        Cmd::Nodes(a) => security::nodes(a).await,
        Cmd::Audit(a) => security::audit(a).await,
        Cmd::Keygen(a) => {
            match a.out {
                Some(p) => {
                    crate::mesh::key::write_new_swarm_key(&p)?;
                    eprintln!(
                        "wrote a new swarm key to {}; start every node with --swarm-key {}",
                        p.display(),
                        p.display()
                    );
                }
                None => outln!("{}", crate::mesh::key::generate_swarm_key().trim_end()),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
