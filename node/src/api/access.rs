//! Who may use the HTTP server. Writes always need a token with the right scope (see
//! [`super::Authorized`] and [`super::Admin`]). On top of that, for every request:
//! - the `Host` header must name this node — a loopback host when bound to loopback; with
//!   `--public-dashboard`, an IP address, `localhost`, this host's name or an `--allow-host`
//!   name — so a web page cannot reach the node through DNS rebinding;
//! - a request a browser marks as cross-origin (`Origin` not this server) may not change
//!   anything — nor open a live stream — so a page elsewhere cannot drive the API;
//! - bound to another address, reads (API and dashboard) need a token of any scope, unless the
//!   node runs with `--public-dashboard`; a browser passes it once as `?token=` and gets a
//!   read-only session cookie (never the token itself). `/healthz` and `/readyz` stay open.
//! - every request that changes something is recorded in the audit trail with its token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use testmesh_consensus::Command;
use testmesh_consensus::security::{AuditRecord, Scope, SecurityCommand};

use super::error::ApiError;
use super::{Caller, bearer, caller_of};
use crate::core::Core;

/// Name of the cookie a browser keeps its read-only session in.
pub const COOKIE: &str = "testmesh_session";
/// How long a dashboard session lasts, and how many are kept (oldest dropped first).
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
const MAX_SESSIONS: usize = 1_000;

#[derive(Clone)]
pub struct Access {
    pub bound: SocketAddr,
    /// The node's own token (`<data-dir>/api-token`).
    pub token: String,
    /// `--public-dashboard`: reads open to anyone who can reach the address.
    pub public: bool,
    /// Host names besides IP addresses, localhost and this host's name that a public
    /// dashboard answers to (`--allow-host`).
    pub allowed_hosts: Vec<String>,
    pub core: Core,
    pub sessions: Sessions,
}

/// Read-only dashboard sessions: random ids handed out as cookies, so the browser never keeps
/// a token that could change anything.
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<String, Instant>>>);

impl Sessions {
    fn open(&self, now: Instant) -> String {
        let id = hex::encode(rand::random::<[u8; 24]>());
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, t| now.duration_since(*t) < SESSION_TTL);
        if m.len() >= MAX_SESSIONS
            && let Some(oldest) = m.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone())
        {
            m.remove(&oldest);
        }
        m.insert(id.clone(), now);
        id
    }

    fn valid(&self, id: &str, now: Instant) -> bool {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter()
            .any(|(k, t)| crate::core::tokens::same(k, id) && now.duration_since(*t) < SESSION_TTL)
    }
}

impl Access {
    fn loopback(&self) -> bool {
        self.bound.ip().is_loopback()
    }

    /// Whether a public dashboard answers to this Host (DNS rebinding: a page on another
    /// site whose name was made to resolve here sends its own name).
    fn public_host_ok(&self, host: &str) -> bool {
        let h = host_of(host).to_ascii_lowercase();
        is_loopback_host(&h)
            || h.parse::<std::net::IpAddr>().is_ok()
            || this_host().is_some_and(|me| me.eq_ignore_ascii_case(&h))
            || self
                .allowed_hosts
                .iter()
                .any(|a| a.eq_ignore_ascii_case(&h))
    }
}

fn this_host() -> Option<String> {
    sysinfo::System::host_name().ok()
}

fn host_of(h: &str) -> &str {
    // [::1]:7070, 127.0.0.1:7070, localhost:7070, localhost
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    h.rsplit_once(':').map_or(h, |(host, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            host
        } else {
            h
        }
    })
}

fn is_loopback_host(h: &str) -> bool {
    let h = host_of(h).to_ascii_lowercase();
    h == "localhost"
        || h.ends_with(".localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A `?token=` in the query, if any.
fn query_token(req: &Request) -> Option<String> {
    req.uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("token="))
        .map(str::to_string)
}

fn session_cookie(h: &HeaderMap) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_string)
        })
}

/// Whether the browser says this request comes from another site.
fn cross_origin(h: &HeaderMap) -> bool {
    let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split("://").nth(1).unwrap_or(origin);
    origin == "null" || !origin_host.eq_ignore_ascii_case(host)
}

pub async fn guard(State(a): State<Access>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if a.loopback() && !is_loopback_host(&host) {
        return ApiError::Forbidden(format!(
            "Host {host:?} is not this node's: it serves loopback only (use http://127.0.0.1:{}/)",
            a.bound.port()
        ))
        .into_response();
    }
    if !a.loopback() && a.public && !a.public_host_ok(&host) {
        return ApiError::Forbidden(format!(
            "Host {host:?} is not a name of this node: use its IP address or host name, or \
             start it with --allow-host {}",
            host_of(&host)
        ))
        .into_response();
    }
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let upgrade = req.headers().contains_key(header::UPGRADE);
    if (changes || upgrade) && cross_origin(req.headers()) {
        return ApiError::Forbidden(
            "cross-origin request refused: use the API from the CLI or the node's own pages".into(),
        )
        .into_response();
    }
    let now = a.core.clock.instant();
    // Who is asking: a bearer token (any scope), a `?token=` (reads; opens a session), or a
    // session cookie (reads only).
    let from_query = query_token(&req);
    let caller: Option<Caller> = bearer(req.headers())
        .map(str::to_string)
        .or(from_query.clone())
        .and_then(|t| caller_of(&a.core, &a.token, &t))
        .or_else(|| {
            session_cookie(req.headers())
                .filter(|s| a.sessions.valid(s, now))
                .map(|_| Caller {
                    actor: "dashboard session".into(),
                    scope: Scope::Read,
                })
        });
    // Enrolment carries its own credential (a join token).
    let open = path == "/healthz"
        || path == "/readyz"
        || path == "/api/v1/enrol"
        || a.loopback()
        || a.public;
    if !open && caller.is_none() {
        return ApiError::Unauthorized(format!(
            "this node serves {} beyond loopback: reads need an API token too (Authorization: \
             Bearer <token>, or open the dashboard once with ?token=<token>; `testmesh token \
             create --scope read` makes a read-only one); start it with --public-dashboard to \
             open reads",
            a.bound
        ))
        .into_response();
    }
    let action = format!("{} {path}", req.method());
    let opens_session = from_query.is_some() && caller.is_some() && !path.starts_with("/api/");
    let mut resp = next.run(req).await;
    if opens_session {
        let cookie = format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            a.sessions.open(now),
            SESSION_TTL.as_secs()
        );
        if let Ok(v) = cookie.parse() {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    // Requests without a valid token changed nothing; recording them would let anyone fill
    // the replicated trail.
    if changes && caller.is_some() {
        audit(&a, caller, action, resp.status());
    }
    resp
}

/// Records a request that asked to change something, whatever its answer, with the token that
/// made it (off the request's path: the answer does not wait for the audit write).
fn audit(a: &Access, caller: Option<Caller>, action: String, status: axum::http::StatusCode) {
    let core = a.core.clone();
    let actor = caller.map_or_else(|| "no valid token".to_string(), |c| c.actor);
    let rec = AuditRecord {
        at: core.now(),
        actor,
        node: core.node,
        action: truncate(action, 300),
        detail: status.as_u16().to_string(),
    };
    tokio::spawn(async move {
        let at = rec.at;
        let cmd = Command::Security {
            cmd: SecurityCommand::Audit(vec![rec]),
            at,
        };
        if let Err(e) = core.writer.write(cmd).await {
            tracing::debug!("audit record not written: {e}");
        }
    });
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_and_origins() {
        for h in [
            "localhost",
            "localhost:7070",
            "127.0.0.1:7070",
            "[::1]:7070",
            "a.localhost",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "evil.example:7070",
            "10.0.0.5:7070",
            "",
            "127.0.0.1.evil.example",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:7070".parse().unwrap());
        assert!(
            !cross_origin(&h),
            "no Origin: not a browser's cross-site request"
        );
        h.insert(header::ORIGIN, "http://127.0.0.1:7070".parse().unwrap());
        assert!(!cross_origin(&h));
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(cross_origin(&h));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(cross_origin(&h));
    }
}
