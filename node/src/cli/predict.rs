//! `testmesh predict eval`: offline evaluation of the predictor on CSV files.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde::Serialize;

use testmesh_planner::predictor::eval::Metrics;
use testmesh_planner::predictor::{PredictionPath, Predictor, Sample, TrainOptions};

/// Without a subcommand: `testmesh predict [requirements] -- CMD` asks a node what it expects
/// of that task from its execution history.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct PredictArgs {
    #[command(subcommand)]
    pub cmd: Option<PredictCmd>,
    #[command(flatten)]
    pub client: super::client::ClientArgs,
    /// Task name [default: the program's file name]
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub req: super::tasks::RequirementArgs,
    /// Print the answer as JSON
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments (after --)
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `testmesh predict [requirements] -- CMD`.
pub async fn ask(a: PredictArgs) -> anyhow::Result<ExitCode> {
    let client = super::client::Client::new(&a.client)?;
    let req = a.req.to_request(a.name, a.command);
    let v: serde_json::Value = client.post("/api/v1/predict", &req).await?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let line = |what: &str, unit: &str, p: &serde_json::Value| {
        let path = p["path"].as_str().unwrap_or("");
        if path == "requested" {
            format!("{what}: no history yet (the request stands)")
        } else {
            format!(
                "{what}: {:.1} {unit} (confidence {:.2}, from {} via {path})",
                p["value"].as_f64().unwrap_or(0.0),
                p["confidence"].as_f64().unwrap_or(0.0),
                p["samples"].as_u64().unwrap_or(0),
            )
        }
    };
    outln!("{}", line("run time", "s", &v["duration_secs"]));
    outln!("{}", line("peak memory", "MiB", &v["peak_memory_mib"]));
    if !v["peak_gpu_memory_mib"].is_null() {
        outln!(
            "{}",
            line("peak GPU memory", "MiB", &v["peak_gpu_memory_mib"])
        );
    }
    outln!(
        "learned from {} finished attempt(s)",
        v["history_samples"].as_u64().unwrap_or(0)
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Subcommand)]
pub enum PredictCmd {
    /// Train on one CSV and report accuracy on another (or on a later slice of the same one)
    Eval(EvalArgs),
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Training data: a CSV file with a header row
    #[arg(long)]
    pub train: PathBuf,
    /// Test data (same columns); without it, the training file is split (see --split)
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// Without --test: the first FRACTION of the rows (after sorting by --time-column) train,
    /// the rest test
    #[arg(long, default_value_t = 0.8)]
    pub split: f64,
    /// Column to sort rows by before splitting (e.g. a timestamp), so the test rows are later
    /// than every training row
    #[arg(long)]
    pub time_column: Option<String>,
    /// Column to predict (numeric; rows where it is empty or not a number are skipped)
    #[arg(long)]
    pub target: String,
    /// Feature columns, comma-separated [default: every column but the target and time]
    #[arg(long, value_delimiter = ',')]
    pub features: Vec<String>,
    /// Columns forming the key of the per-key median baseline [default: the features with at
    /// most 100 distinct values in the training rows]
    #[arg(long, value_delimiter = ',')]
    pub key: Vec<String>,
    /// Ridge penalty of the linear model
    #[arg(long, default_value_t = 1.0)]
    pub lambda: f64,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

type Row = BTreeMap<String, String>;

fn read_csv(path: &Path) -> anyhow::Result<(Vec<String>, Vec<Row>)> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("cannot open {}", path.display()))?;
    let header: Vec<String> = r
        .headers()
        .with_context(|| format!("{}: cannot read the header row", path.display()))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut rows = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: line {}", path.display(), i + 2))?;
        rows.push(
            header
                .iter()
                .cloned()
                .zip(rec.iter().map(str::to_string))
                .collect(),
        );
    }
    Ok((header, rows))
}

/// Rows with a numeric target become samples; the rest are counted as skipped.
fn samples(rows: &[Row], target: &str, features: &[String]) -> (Vec<Sample>, usize) {
    let mut out = Vec::new();
    let mut skipped = 0;
    for r in rows {
        match r.get(target).and_then(|v| v.trim().parse::<f64>().ok()) {
            Some(t) if t.is_finite() => out.push(Sample {
                features: features
                    .iter()
                    .map(|f| (f.clone(), r.get(f).cloned().unwrap_or_default()))
                    .collect(),
                target: t,
            }),
            _ => skipped += 1,
        }
    }
    (out, skipped)
}

fn sort_by_time(rows: &mut [Row], col: &str) {
    let numeric = rows
        .iter()
        .all(|r| r.get(col).is_some_and(|v| v.trim().parse::<f64>().is_ok()));
    if numeric {
        rows.sort_by(|a, b| {
            let x = |r: &Row| r[col].trim().parse::<f64>().unwrap_or(0.0);
            x(a).total_cmp(&x(b))
        });
    } else {
        // ISO timestamps sort as text.
        rows.sort_by(|a, b| a.get(col).cmp(&b.get(col)));
    }
}

#[derive(Debug, Serialize)]
struct Report {
    target: String,
    features: Vec<String>,
    key: Vec<String>,
    train_rows: usize,
    test_rows: usize,
    skipped_rows: usize,
    model: Metrics,
    baseline: Metrics,
    /// How many test predictions each path answered.
    paths: BTreeMap<String, usize>,
    /// Relative MAE improvement of the model over the baseline (0.25 = 25 % lower).
    mae_improvement: f64,
}

pub fn eval(a: EvalArgs) -> anyhow::Result<ExitCode> {
    if !(a.split > 0.0 && a.split < 1.0) {
        bail!(
            "--split {}: use a fraction between 0 and 1, e.g. 0.8",
            a.split
        );
    }
    let (header, mut train_rows) = read_csv(&a.train)?;
    let has = |c: &str| header.iter().any(|h| h == c);
    let known = || header.join(", ");
    if !has(&a.target) {
        bail!(
            "--target {:?} is not a column of {}; its columns are: {}",
            a.target,
            a.train.display(),
            known()
        );
    }
    if let Some(t) = &a.time_column
        && !has(t)
    {
        bail!(
            "--time-column {t:?} is not a column; the columns are: {}",
            known()
        );
    }
    let features: Vec<String> = if a.features.is_empty() {
        header
            .iter()
            .filter(|h| **h != a.target && Some(*h) != a.time_column.as_ref())
            .cloned()
            .collect()
    } else {
        a.features.clone()
    };
    for f in features.iter().chain(&a.key) {
        if !has(f) {
            bail!("{f:?} is not a column; the columns are: {}", known());
        }
        if *f == a.target {
            bail!("the target {f:?} cannot also be a feature or key column");
        }
    }
    let mut unusable = 0;
    let test_rows = match &a.test {
        Some(p) => {
            let (h, rows) = read_csv(p)?;
            if let Some(missing) = features.iter().chain([&a.target]).find(|f| !h.contains(f)) {
                bail!("{} has no column {missing:?}", p.display());
            }
            rows
        }
        None => {
            // Split the usable rows (those with a target), later ones for testing.
            let usable = |r: &Row| {
                r.get(&a.target)
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            };
            let before = train_rows.len();
            train_rows.retain(usable);
            unusable = before - train_rows.len();
            if let Some(t) = &a.time_column {
                sort_by_time(&mut train_rows, t);
            }
            let cut = (train_rows.len() as f64 * a.split).round() as usize;
            train_rows.split_off(cut)
        }
    };
    let (train, skipped_train) = samples(&train_rows, &a.target, &features);
    let (test, skipped_test) = samples(&test_rows, &a.target, &features);
    if train.len() < 2 || test.is_empty() {
        bail!(
            "too few usable rows: {} to train, {} to test (rows need a numeric {:?})",
            train.len(),
            test.len(),
            a.target
        );
    }
    let key: Vec<String> = if a.key.is_empty() {
        features
            .iter()
            .filter(|f| {
                let distinct: BTreeSet<&str> =
                    train.iter().map(|s| s.features[*f].as_str()).collect();
                distinct.len() <= 100
            })
            .cloned()
            .collect()
    } else {
        a.key.clone()
    };
    let mut opts = TrainOptions::new(features.clone(), key.clone());
    opts.lambda = a.lambda;
    let p = Predictor::train(&train, &opts)?;
    let truth: Vec<f64> = test.iter().map(|s| s.target).collect();
    let mut paths: HashMap<PredictionPath, usize> = HashMap::new();
    let model: Vec<f64> = test
        .iter()
        .map(|s| {
            let pr = p.predict(&s.features);
            *paths.entry(pr.path).or_default() += 1;
            pr.value
        })
        .collect();
    let base: Vec<f64> = test
        .iter()
        .map(|s| p.baseline().predict(&s.features).value)
        .collect();
    let m = Metrics::of(&model, &truth);
    let b = Metrics::of(&base, &truth);
    let report = Report {
        target: a.target.clone(),
        features,
        key,
        train_rows: train.len(),
        test_rows: test.len(),
        skipped_rows: skipped_train + skipped_test + unusable,
        mae_improvement: if b.mae > 0.0 {
            1.0 - m.mae / b.mae
        } else {
            0.0
        },
        model: m,
        baseline: b,
        paths: paths
            .into_iter()
            .map(|(k, v)| {
                (
                    serde_json::to_value(k)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    v,
                )
            })
            .collect(),
    };
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!(
            "{} rows to train, {} to test ({} skipped without a numeric {})",
            report.train_rows,
            report.test_rows,
            report.skipped_rows,
            report.target
        );
        outln!("features: {}", report.features.join(", "));
        outln!("baseline key: {}", report.key.join(", "));
        outln!("{:<28} {:>10} {:>8} {:>8}", "", "MAE", "MAPE", "R²");
        for (name, x) in [
            ("model (ridge, log target)", &report.model),
            ("baseline (per-key median)", &report.baseline),
        ] {
            outln!(
                "{name:<28} {:>10.3} {:>7.1}% {:>8.3}",
                x.mae,
                x.mape * 100.0,
                x.r2
            );
        }
        outln!(
            "the model's MAE is {:.1} % {} than the baseline's",
            report.mae_improvement.abs() * 100.0,
            if report.mae_improvement >= 0.0 {
                "lower"
            } else {
                "higher"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
