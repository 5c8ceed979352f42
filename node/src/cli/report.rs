//! `testmesh report --out FILE.html|FILE.pdf [--since DUR]`: the cluster's report — status,
//! every chart, utilisation and efficiency tables, scaling decisions and cost, task outcomes,
//! predictions and the optimizer's recommendations. The node renders it from its replica
//! (`/dashboard/report.html|pdf`), so any node can write it; the HTML is self-contained (charts
//! inline as SVG, no external requests) and the PDF keeps its text as text.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::client::{Client, ClientArgs};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// File to write: .html or .pdf
    #[arg(long)]
    pub out: PathBuf,
    /// How far back the charts and the analysis look, e.g. 1h, 24h
    #[arg(long, default_value = "1h", value_parser = crate::units::parse_duration)]
    pub since: std::time::Duration,
    /// Report on one run instead: per-task results, run time against prediction, metrics,
    /// where the attempts ran
    #[arg(long)]
    pub run: Option<u64>,
}

pub async fn run(a: ReportArgs) -> anyhow::Result<ExitCode> {
    let kind = match a.out.extension().and_then(|e| e.to_str()) {
        Some("html") | Some("htm") => "html",
        Some("pdf") => "pdf",
        _ => bail!(
            "{}: the file name must end in .html or .pdf (that picks the format)",
            a.out.display()
        ),
    };
    let secs = a.since.as_secs();
    if secs == 0 || secs > 30 * 86_400 {
        bail!("--since: between 1s and 30d");
    }
    let client = Client::new(&a.client)?;
    let path = match a.run {
        Some(run) => format!("/api/v1/runs/{run}/report.{kind}"),
        None => format!("/dashboard/report.{kind}?since={secs}s"),
    };
    let body = client.get_bytes(&path).await?;
    std::fs::write(&a.out, body).with_context(|| format!("cannot write {}", a.out.display()))?;
    outln!("wrote {}", a.out.display());
    Ok(ExitCode::SUCCESS)
}
