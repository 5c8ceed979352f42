//! `testmesh token ...`, `testmesh nodes ...` and `testmesh audit`: cluster-wide tokens,
//! admission of nodes, and what tokens changed.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;

use super::client::{Client, ClientArgs};
use crate::api::security::{CreatedToken, NodesView, TokenView};
use testmesh_consensus::security::AuditRecord;

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub cmd: TokenCmd,
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Make a token; its secret is printed once and stored only hashed
    Create {
        /// A join token (admits nodes) instead of an API token
        #[arg(long)]
        join: bool,
        /// API token scope: read, submit or admin
        #[arg(long, conflicts_with = "join")]
        scope: Option<String>,
        /// A label to recognise it by
        #[arg(long, default_value = "")]
        name: String,
        /// How long it lives, e.g. 15m or 30d [join tokens: 15m; API tokens: until revoked]
        #[arg(long)]
        ttl: Option<String>,
        /// How many nodes a join token admits
        #[arg(long, requires = "join")]
        uses: Option<u32>,
        /// Print the whole answer as JSON
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List tokens (never their secrets)
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token by its id
    Revoke {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    #[command(subcommand)]
    pub cmd: Option<NodesCmd>,
    /// Print JSON
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum NodesCmd {
    /// Nodes that asked to join without a token and wait for approval
    Pending,
    /// Admit a pending node
    Approve { id: String },
    /// Take a node out of the cluster and revoke its admission; its tasks go back to the queue
    Remove { id: String },
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Newest records first, at most this many
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn when(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

pub async fn token(a: TokenArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        TokenCmd::Create {
            join,
            scope,
            name,
            ttl,
            uses,
            json,
            client,
        } => {
            let body = json!({
                "kind": if join { "join" } else { "api" },
                "scope": scope,
                "name": name,
                "ttl": ttl,
                "uses": uses,
            });
            let c: CreatedToken = Client::new(&client)?.post("/api/v1/tokens", &body).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                println!("{}", c.token);
                let what = match (c.view.scope, c.view.uses_left) {
                    (Some(s), _) => format!("API token {} ({s} scope)", c.view.id),
                    (None, u) => format!("join token {} for {} node(s)", c.view.id, u.unwrap_or(1)),
                };
                let until = c.view.expires_at.map_or("until revoked".to_string(), |e| {
                    format!("until {}", when(e))
                });
                eprintln!("{what}, valid {until}; this is the only time it is shown");
            }
        }
        TokenCmd::List { json, client } => {
            let ts: Vec<TokenView> = Client::new(&client)?.get("/api/v1/tokens").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ts)?);
            } else {
                println!(
                    "{:<9} {:<5} {:<7} {:<21} {:<5} NAME",
                    "ID", "KIND", "SCOPE", "EXPIRES", "USES"
                );
                for t in ts {
                    println!(
                        "{:<9} {:<5} {:<7} {:<21} {:<5} {}",
                        t.id,
                        format!("{:?}", t.kind).to_lowercase(),
                        t.scope.map_or("-".into(), |s| s.to_string()),
                        t.expires_at.map_or("never".into(), when),
                        t.uses_left.map_or("-".into(), |u| u.to_string()),
                        t.name
                    );
                }
            }
        }
        TokenCmd::Revoke { id, client } => {
            let _: serde_json::Value = Client::new(&client)?
                .delete(&format!("/api/v1/tokens/{id}"))
                .await?;
            println!("revoked {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn nodes(a: NodesArgs) -> anyhow::Result<ExitCode> {
    match a.cmd {
        None => {
            let v: NodesView = Client::new(&a.client)?.get("/api/v1/nodes").await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{:<17} {:<8} {:<18} ADDRESS", "ID", "ROLE", "ADMITTED BY");
            for m in &v.members {
                let role = if m.voter { "voter" } else { "learner" };
                let by = m.admitted.as_deref().unwrap_or("-");
                println!("{:<17} {role:<8} {by:<18} {}", m.id, m.addr);
            }
            for p in &v.pending {
                println!("{:<17} {:<8} {:<18} {}", p.id, "pending", "-", p.addr);
            }
            if v.founding_window_until > 0 {
                eprintln!(
                    "the founding window is open until {}: nodes with the swarm key join without a token",
                    when(v.founding_window_until)
                );
            }
            if !v.pending.is_empty() {
                eprintln!("approve a pending node with `testmesh nodes approve ID`");
            }
        }
        Some(NodesCmd::Pending) => {
            let v: NodesView = Client::new(&a.client)?.get("/api/v1/nodes").await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&v.pending)?);
            } else {
                println!("{:<17} {:<21} ADDRESS", "ID", "LAST ASKED");
                for p in &v.pending {
                    println!("{:<17} {:<21} {}", p.id, when(p.last_at), p.addr);
                }
            }
        }
        Some(NodesCmd::Approve { id }) => {
            let _: serde_json::Value = Client::new(&a.client)?
                .post(&format!("/api/v1/nodes/{id}/approve"), &json!({}))
                .await?;
            println!("approved {id}: it joins at its next attempt");
        }
        Some(NodesCmd::Remove { id }) => {
            let _: serde_json::Value = Client::new(&a.client)?
                .post(&format!("/api/v1/nodes/{id}/remove"), &json!({}))
                .await?;
            println!("removed {id}: its admission is revoked and its tasks go back to the queue");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(a: AuditArgs) -> anyhow::Result<ExitCode> {
    let recs: Vec<AuditRecord> = Client::new(&a.client)?
        .get(&format!("/api/v1/audit?limit={}", a.limit))
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&recs)?);
    } else {
        println!(
            "{:<21} {:<17} {:<5} {:<40} ACTOR",
            "AT", "NODE", "CODE", "ACTION"
        );
        for r in recs {
            println!(
                "{:<21} {:<17} {:<5} {:<40} {}",
                when(r.at.0),
                r.node,
                r.detail,
                r.action,
                r.actor
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
