//! `testmesh scaling` (instances and decisions) and `testmesh policy show|set`.

use std::process::ExitCode;

use serde_json::{Map, Value, json};

use super::client::{Client, ClientArgs};
use super::output::table;

#[derive(Debug, clap::Args)]
pub struct ScalingArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Most decisions and ended instances shown
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print JSON instead of tables
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub cmd: PolicyCmd,
}

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCmd {
    /// Show the scaling policy
    Show {
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Change the scaling policy (only the options given change)
    Set(Box<SetArgs>),
}

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Turn autoscaling on or off
    #[arg(long)]
    pub enabled: Option<bool>,
    /// Managed workers kept at least / at most (all providers)
    #[arg(long)]
    pub min_workers: Option<u32>,
    #[arg(long)]
    pub max_workers: Option<u32>,
    /// Providers in order of preference, comma-separated (e.g. docker,aws)
    #[arg(long, value_delimiter = ',')]
    pub providers: Option<Vec<String>>,
    /// Per-provider limits, NAME=MIN:MAX (repeatable; replaces all of them)
    #[arg(long = "provider-limit", value_parser = parse_limit)]
    pub provider_limits: Vec<(String, u32, u32)>,
    #[arg(long)]
    pub scale_up_cooldown: Option<String>,
    #[arg(long)]
    pub scale_down_cooldown: Option<String>,
    /// Remove idle workers only while the rest stays at or below this reserved share (%)
    #[arg(long)]
    pub target_utilisation: Option<u32>,
    /// A managed worker with no task this long (and below --idle-cpu) is removed
    #[arg(long)]
    pub idle_timeout: Option<String>,
    #[arg(long)]
    pub idle_cpu: Option<u32>,
    /// Most instances launched or removed by one decision
    #[arg(long)]
    pub max_step: Option<u32>,
    /// Dollars per hour all managed instances may cost together, or "none"
    #[arg(long)]
    pub budget: Option<String>,
    /// An instance that has not joined this long after its launch is terminated
    #[arg(long)]
    pub registration_deadline: Option<String>,
}

fn parse_limit(s: &str) -> Result<(String, u32, u32), String> {
    let bad = || format!("{s:?}: use NAME=MIN:MAX, e.g. aws=0:10");
    let (name, range) = s.split_once('=').ok_or_else(bad)?;
    let (min, max) = range.split_once(':').ok_or_else(bad)?;
    Ok((
        name.to_string(),
        min.parse().map_err(|_| bad())?,
        max.parse().map_err(|_| bad())?,
    ))
}

pub async fn policy(a: PolicyArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        PolicyCmd::Show { client, json } => {
            let v: Value = Client::new(&client)?.get("/api/v1/policy").await?;
            print_policy(&v, json)
        }
        PolicyCmd::Set(s) => {
            let mut patch = Map::new();
            let mut put = |k: &str, v: Value| {
                patch.insert(k.to_string(), v);
            };
            if let Some(v) = s.enabled {
                put("enabled", json!(v));
            }
            if let Some(v) = s.min_workers {
                put("min_workers", json!(v));
            }
            if let Some(v) = s.max_workers {
                put("max_workers", json!(v));
            }
            if let Some(v) = &s.providers {
                put("providers", json!(v));
            }
            if !s.provider_limits.is_empty() {
                let m: Map<String, Value> = s
                    .provider_limits
                    .iter()
                    .map(|(n, min, max)| (n.clone(), json!({"min": min, "max": max})))
                    .collect();
                put("per_provider", Value::Object(m));
            }
            for (k, v) in [
                ("scale_up_cooldown", &s.scale_up_cooldown),
                ("scale_down_cooldown", &s.scale_down_cooldown),
                ("idle_timeout", &s.idle_timeout),
                ("registration_deadline", &s.registration_deadline),
            ] {
                if let Some(v) = v {
                    put(k, json!(v));
                }
            }
            if let Some(v) = s.target_utilisation {
                put("target_utilisation_pct", json!(v));
            }
            if let Some(v) = s.idle_cpu {
                put("idle_cpu_pct", json!(v));
            }
            if let Some(v) = s.max_step {
                put("max_step", json!(v));
            }
            if let Some(b) = &s.budget {
                let v = match b.as_str() {
                    "none" => json!("none"),
                    _ => json!(b.trim_start_matches('$').parse::<f64>().map_err(|_| {
                        anyhow::anyhow!("--budget {b:?}: use dollars per hour (e.g. 12.5) or none")
                    })?),
                };
                put("budget_per_hour", v);
            }
            if patch.is_empty() {
                anyhow::bail!("nothing to change: give at least one option (see --help)");
            }
            let v: Value = Client::new(&s.client)?
                .put("/api/v1/policy", &Value::Object(patch))
                .await?;
            print_policy(&v, false)
        }
    }
}

fn print_policy(v: &Value, as_json: bool) -> anyhow::Result<ExitCode> {
    if as_json {
        outln!("{}", serde_json::to_string_pretty(v)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (k, x) in v.as_object().into_iter().flatten() {
        outln!(
            "{k:<24} {}",
            if x.is_string() {
                x.as_str().unwrap_or_default().to_string()
            } else {
                x.to_string()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn scaling(a: ScalingArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&a.client)?;
    let v: Value = client
        .get(&format!("/api/v1/scaling?limit={}", a.limit.clamp(1, 1000)))
        .await?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let p = &v["policy"];
    outln!(
        "autoscaling {} · providers {} · workers {}..{} · ${:.2}/h now{}",
        if p["enabled"] == true { "on" } else { "off" },
        p["providers"],
        p["min_workers"],
        p["max_workers"],
        v["hourly_cost"].as_f64().unwrap_or(0.0),
        p["budget_per_hour"]
            .as_f64()
            .map(|b| format!(" of ${b:.2}/h budget"))
            .unwrap_or_default()
    );
    if let Some(r) = v["scaler"]["last_reason"].as_str() {
        outln!("now: {r}");
    }
    let s = |x: &Value| x.as_str().map_or_else(|| x.to_string(), str::to_string);
    let rows: Vec<Vec<String>> = v["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            vec![
                i["intent"].to_string(),
                format!("{}/{}", s(&i["provider"]), s(&i["instance_type"])),
                s(&i["state"]),
                i["provider_id"]
                    .as_str()
                    .map_or("-".into(), |x| x.chars().take(16).collect()),
                i["worker"].as_str().unwrap_or("-").to_string(),
                i["end_reason"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        outln!();
        table(
            &[
                "INTENT",
                "TYPE",
                "STATE",
                "PROVIDER ID",
                "WORKER",
                "ENDED BECAUSE",
            ],
            &rows,
        );
    }
    let rows: Vec<Vec<String>> = v["decisions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let at = d["at"].as_u64().unwrap_or(0);
            vec![
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(at),
                )
                .to_string(),
                s(&d["kind"]),
                s(&d["reason"]),
            ]
        })
        .collect();
    if !rows.is_empty() {
        outln!();
        table(&["WHEN", "DECISION", "WHY"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}
