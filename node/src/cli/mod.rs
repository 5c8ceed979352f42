//! The command line: one `testmesh` binary for the node and every client command.

mod bench;
mod client;
mod output;
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
    /// Show the node's and the cluster's status
    Status(tasks::JsonArgs),
    /// End-to-end load generator through the API
    Bench(bench::BenchArgs),
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
            "info,openraft=warn"
        } else {
            "warn"
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
        Cmd::Tasks(a) => tasks::list(a).await,
        Cmd::Task(a) => tasks::show(a).await,
        Cmd::Logs(a) => tasks::logs(a).await,
        Cmd::Cancel(a) => tasks::cancel(a).await,
        Cmd::Workers(a) => tasks::workers(a).await,
        Cmd::Status(a) => tasks::status(a).await,
        Cmd::Bench(a) => bench::run(a).await,
    }
}
