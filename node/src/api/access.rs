//! Who may use the HTTP server. Writes always need the token (see [`super::Authorized`]). On
//! top of that, for every request:
//! - bound to loopback, the `Host` header must name a loopback host, so a web page cannot reach
//!   the node through DNS rebinding;
//! - a request a browser marks as cross-origin (`Origin` not this server) may not change
//!   anything — nor open a live stream — so a page elsewhere cannot drive the API;
//! - bound to another address, reads (API and dashboard) need the token too, unless the node
//!   runs with `--public-dashboard`; a browser passes it once as `?token=` and keeps it in a
//!   same-site cookie. `/healthz` and `/readyz` stay open for probes.

use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Name of the cookie a browser keeps the token in.
pub const COOKIE: &str = "testmesh_token";

#[derive(Clone)]
pub struct Access {
    pub bound: SocketAddr,
    pub token: String,
    /// `--public-dashboard`: reads open to anyone who can reach the address.
    pub public: bool,
}

impl Access {
    fn loopback(&self) -> bool {
        self.bound.ip().is_loopback()
    }
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

/// The token a request carries: bearer header, `?token=`, or the cookie.
fn token_of(req: &Request) -> Option<String> {
    let h = req.headers();
    if let Some(t) = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim().to_string());
    }
    if let Some(t) = req
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("token="))
    {
        return Some(t.to_string());
    }
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
        .unwrap_or("");
    if a.loopback() && !is_loopback_host(host) {
        return ApiError::Forbidden(format!(
            "Host {host:?} is not this node's: it serves loopback only (use http://127.0.0.1:{}/)",
            a.bound.port()
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
    if path == "/healthz" || path == "/readyz" || a.loopback() || a.public {
        return next.run(req).await;
    }
    match token_of(&req) {
        Some(t) if super::token_matches(&t, &a.token) => {
            let from_query = req.uri().query().is_some_and(|q| q.contains("token="));
            let mut resp = next.run(req).await;
            if from_query && !path.starts_with("/api/") {
                // Keep it for the dashboard's next requests (not readable by scripts).
                let cookie = format!("{COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict");
                if let Ok(v) = cookie.parse() {
                    resp.headers_mut().insert(header::SET_COOKIE, v);
                }
            }
            resp
        }
        _ => ApiError::Unauthorized(format!(
            "this node serves {} beyond loopback: reads need the API token too (Authorization: Bearer <token>, or open the dashboard once with ?token=<token>); start it with --public-dashboard to open reads",
            a.bound
        ))
        .into_response(),
    }
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
