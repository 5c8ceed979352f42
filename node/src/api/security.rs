//! Tokens, nodes and the audit trail (docs/security.md):
//! - `POST /api/v1/tokens`, `GET /api/v1/tokens`, `DELETE /api/v1/tokens/{id}` (admin): API
//!   tokens with a scope and join tokens, stored hashed in the ledger so they work on every node;
//!   a token's secret is in the answer to its creation and nowhere else;
//! - `GET /api/v1/nodes`: members, nodes waiting for approval, removed nodes;
//!   `POST /api/v1/nodes/{id}/approve` and `/remove` (admin);
//! - `GET /api/v1/audit` (admin): what each token changed, newest first.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use testmesh_consensus::security::{
    AdmittedVia, ApiToken, AuditRecord, JoinToken, Scope, SecurityCommand,
};
use testmesh_consensus::{Command, NodeId, UnixMillis};

use super::error::{ApiError, ApiJson, ApiQuery};
use super::{Admin, AppState};
use crate::core::tokens;

/// Longest a join token may live: it is meant for the next few joins, not a standing secret.
const MAX_JOIN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_JOIN_TTL: Duration = Duration::from_secs(15 * 60);
const MAX_USES: u32 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    #[default]
    Api,
    Join,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    #[serde(default)]
    pub kind: TokenKind,
    /// API tokens: read, submit or admin (default read).
    pub scope: Option<String>,
    /// A label to recognise it by (API tokens) or what it is for (join tokens).
    #[serde(default)]
    pub name: String,
    /// e.g. "15m"; API tokens live until revoked without one, join tokens 15 minutes.
    pub ttl: Option<String>,
    /// Join tokens: how many nodes it admits (default 1).
    pub uses: Option<u32>,
}

/// A token as listed (never its secret or hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub kind: TokenKind,
    pub name: String,
    pub scope: Option<Scope>,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub uses_left: Option<u32>,
}

/// The answer to a creation: the only time the token's secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    #[serde(flatten)]
    pub view: TokenView,
}

fn api_view(t: &ApiToken) -> TokenView {
    TokenView {
        id: t.id.clone(),
        kind: TokenKind::Api,
        name: t.name.clone(),
        scope: Some(t.scope),
        created_at: t.created_at.0,
        expires_at: t.expires_at.map(|e| e.0),
        uses_left: None,
    }
}

fn join_view(t: &JoinToken) -> TokenView {
    TokenView {
        id: t.id.clone(),
        kind: TokenKind::Join,
        name: t.note.clone(),
        scope: None,
        created_at: t.created_at.0,
        expires_at: Some(t.expires_at.0),
        uses_left: Some(t.uses_left),
    }
}

async fn security_write(st: &AppState, cmd: SecurityCommand) -> Result<(), ApiError> {
    let at = st.core.now();
    st.core
        .writer
        .write(Command::Security { cmd, at })
        .await??;
    Ok(())
}

fn later(now: UnixMillis, ttl: Duration) -> UnixMillis {
    UnixMillis(now.0.saturating_add(ttl.as_millis() as u64))
}

/// Makes a join token (for `testmesh token create --join`, and for autoscaled instances).
pub async fn create_join_token(
    st: &AppState,
    note: String,
    ttl: Duration,
    uses: u32,
) -> Result<CreatedToken, ApiError> {
    let m = tokens::mint(tokens::Kind::Join);
    let now = st.core.now();
    let t = JoinToken {
        id: m.id,
        hash: m.hash,
        created_at: now,
        expires_at: later(now, ttl),
        uses_left: uses,
        note,
    };
    let view = join_view(&t);
    security_write(st, SecurityCommand::CreateJoinToken(t)).await?;
    Ok(CreatedToken {
        token: m.token,
        view,
    })
}

pub async fn create(
    State(st): State<AppState>,
    Admin(by): Admin,
    ApiJson(req): ApiJson<CreateToken>,
) -> Result<(axum::http::StatusCode, Json<CreatedToken>), ApiError> {
    let ttl = req
        .ttl
        .as_deref()
        .map(crate::units::parse_duration)
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("ttl: {e}")))?;
    let created = match req.kind {
        TokenKind::Join => {
            if req.scope.is_some() {
                return Err(ApiError::BadRequest(
                    "a join token has no scope: it only admits a node".into(),
                ));
            }
            let ttl = ttl.unwrap_or(DEFAULT_JOIN_TTL);
            if ttl > MAX_JOIN_TTL {
                return Err(ApiError::BadRequest(
                    "a join token lives at most 7 days (ttl): make a new one when you need it"
                        .into(),
                ));
            }
            let uses = req.uses.unwrap_or(1);
            if uses == 0 || uses > MAX_USES {
                return Err(ApiError::BadRequest(format!(
                    "uses must be 1 to {MAX_USES}"
                )));
            }
            create_join_token(&st, req.name, ttl, uses).await?
        }
        TokenKind::Api => {
            if req.uses.is_some() {
                return Err(ApiError::BadRequest(
                    "uses is for join tokens; an API token works until it expires or is revoked"
                        .into(),
                ));
            }
            let scope = match req.scope.as_deref() {
                None => Scope::Read,
                Some(s) => Scope::parse(s).ok_or_else(|| {
                    ApiError::BadRequest(format!("scope {s:?} is not one of read, submit, admin"))
                })?,
            };
            let m = tokens::mint(tokens::Kind::Api);
            let now = st.core.now();
            let t = ApiToken {
                id: m.id,
                name: req.name,
                scope,
                hash: m.hash,
                created_at: now,
                expires_at: ttl.map(|d| later(now, d)),
            };
            let view = api_view(&t);
            security_write(&st, SecurityCommand::CreateApiToken(t)).await?;
            CreatedToken {
                token: m.token,
                view,
            }
        }
    };
    tracing::info!(
        "{} created {:?} token {}",
        by.actor,
        created.view.kind,
        created.view.id
    );
    Ok((axum::http::StatusCode::CREATED, Json(created)))
}

pub async fn list(
    State(st): State<AppState>,
    _auth: Admin,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let ledger = st.core.ledger.read();
    let s = ledger.security();
    Ok(Json(
        s.api_tokens()
            .map(api_view)
            .chain(s.join_tokens().map(join_view))
            .collect(),
    ))
}

pub async fn revoke(
    State(st): State<AppState>,
    _auth: Admin,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (api, join) = {
        let ledger = st.core.ledger.read();
        let s = ledger.security();
        (s.api_token(&id).is_some(), s.join_token(&id).is_some())
    };
    let cmd = match (api, join) {
        (true, _) => SecurityCommand::RevokeApiToken { id: id.clone() },
        (_, true) => SecurityCommand::RevokeJoinToken { id: id.clone() },
        _ => {
            return Err(ApiError::NotFound(format!(
                "no token {id:?}; see `testmesh token list`"
            )));
        }
    };
    security_write(&st, cmd).await?;
    Ok(Json(serde_json::json!({ "revoked": id })))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    pub id: String,
    pub addr: String,
    pub voter: bool,
    /// How it was admitted (null: a member from before admissions were recorded).
    pub admitted: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingView {
    pub id: String,
    pub addr: String,
    pub first_at: u64,
    pub last_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodesView {
    pub members: Vec<MemberView>,
    pub pending: Vec<PendingView>,
    /// Admitted nodes that are not members now (left, or not joined yet).
    pub admitted: Vec<String>,
    pub removed: Vec<String>,
    /// Joins are admitted without a token until then (Unix ms); 0 once closed.
    pub founding_window_until: u64,
}

fn via_name(v: &AdmittedVia) -> String {
    match v {
        AdmittedVia::Founder => "founder".into(),
        AdmittedVia::FoundingWindow => "founding window".into(),
        AdmittedVia::Token(id) => format!("join token {id}"),
        AdmittedVia::Approval => "approval".into(),
    }
}

pub async fn nodes(State(st): State<AppState>) -> Json<NodesView> {
    let m = st.core.leadership.metrics();
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
    let ledger = st.core.ledger.read();
    let s = ledger.security();
    let members: Vec<MemberView> = membership
        .nodes()
        .map(|(id, n)| MemberView {
            id: id.to_string(),
            addr: n.addr.clone(),
            voter: voters.contains(id),
            admitted: s.admitted().get(id).map(|a| via_name(&a.via)),
        })
        .collect();
    let now = st.core.now();
    Json(NodesView {
        pending: s
            .pending()
            .iter()
            .map(|(id, p)| PendingView {
                id: id.to_string(),
                addr: p.addr.clone(),
                first_at: p.first_at.0,
                last_at: p.last_at.0,
            })
            .collect(),
        admitted: s
            .admitted()
            .keys()
            .filter(|id| membership.get_node(id).is_none())
            .map(ToString::to_string)
            .collect(),
        removed: s.removed().keys().map(ToString::to_string).collect(),
        founding_window_until: if s.open_until() > now {
            s.open_until().0
        } else {
            0
        },
        members,
    })
}

fn node_id(id: &str) -> Result<NodeId, ApiError> {
    id.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "node id {id:?} is not 16 hex digits; see `testmesh nodes`"
        ))
    })
}

pub async fn approve(
    State(st): State<AppState>,
    Admin(by): Admin,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let node = node_id(&id)?;
    security_write(
        &st,
        SecurityCommand::Admit {
            node,
            via: AdmittedVia::Approval,
        },
    )
    .await?;
    tracing::info!("{} approved node {node}", by.actor);
    Ok(Json(serde_json::json!({ "approved": node })))
}

/// Revokes the node's admission, hands its tasks back and takes it out of the membership (the
/// leader does that part as soon as it sees the removal).
pub async fn remove(
    State(st): State<AppState>,
    Admin(by): Admin,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let node = node_id(&id)?;
    if node == st.core.node && st.core.leadership.is_member(node) {
        return Err(ApiError::BadRequest(
            "a node cannot remove itself through its own API: ask another member (or stop it \
             with SIGTERM, which leaves the cluster cleanly)"
                .into(),
        ));
    }
    security_write(&st, SecurityCommand::Remove { node }).await?;
    if st.core.ledger.read().worker(node).is_some() {
        let at = st.core.now();
        st.core
            .writer
            .write(Command::WorkerLeft { worker: node, at })
            .await??;
    }
    tracing::info!("{} removed node {node}", by.actor);
    Ok(Json(serde_json::json!({ "removed": node })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Newest records first, at most this many (default 100).
    limit: Option<usize>,
}

pub async fn audit(
    State(st): State<AppState>,
    _auth: Admin,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Json<Vec<AuditRecord>> {
    let ledger = st.core.ledger.read();
    let limit = q.limit.unwrap_or(100).min(10_000);
    Json(
        ledger
            .security()
            .audit()
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect(),
    )
}

/// `POST /api/v1/enrol` (no API token: the join token is the credential): admits the node the
/// request names with a join token, using the token up, and answers with the swarm key and the
/// members' mesh addresses. Served only over HTTPS or on loopback: the answer is the cluster's
/// key.
pub async fn enrol(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<crate::enrol::EnrolRequest>,
) -> Result<Json<crate::enrol::Enrolled>, ApiError> {
    if !st.enrol_allowed {
        return Err(ApiError::Forbidden(
            "enrolment hands out the swarm key, so this node serves it only over HTTPS or on \
             loopback (it runs with --insecure-http)"
                .into(),
        ));
    }
    let node = node_id(&req.node)?;
    let p = tokens::parse(&req.token)
        .filter(|p| p.kind == tokens::Kind::Join)
        .ok_or_else(|| ApiError::BadRequest("token: not a join token (tmj_…)".into()))?;
    let refused = |why: String| ApiError::Unauthorized(format!("enrolment refused: {why}"));
    {
        let now = st.core.now();
        let ledger = st.core.ledger.read();
        let sec = ledger.security();
        let t = sec.join_token_usable(&p.id, now).map_err(refused)?;
        if !tokens::matches(&p.secret, &t.hash) {
            return Err(refused(format!("wrong secret for join token {}", p.id)));
        }
    }
    // The ledger re-checks expiry and uses, so two racing enrolments cannot both use the last.
    let at = st.core.now();
    let cmd = SecurityCommand::Admit {
        node,
        via: AdmittedVia::Token(p.id.clone()),
    };
    match st.core.writer.write(Command::Security { cmd, at }).await? {
        Ok(_) => {}
        Err(r) => return Err(refused(r.to_string())),
    }
    let members: Vec<String> = st
        .core
        .leadership
        .metrics()
        .membership_config
        .membership()
        .nodes()
        .map(|(_, n)| n.addr.clone())
        .collect();
    tracing::info!("enrolled node {node} with join token {}", p.id);
    Ok(Json(crate::enrol::Enrolled {
        swarm_key: st.swarm_key.clone(),
        join: crate::enrol::dial_addrs(members),
    }))
}
