//! Enrolment: how a new node that was given only a join token (an autoscaled instance) gets the
//! swarm key. It asks a member's API over HTTPS, pinning that member's certificate
//! (`--enrol URL --join-token tmj_… --tls-fingerprint sha256:…`); the member checks the token,
//! admits the node (using the token up) and answers with the swarm key and where the members
//! listen. The launch data therefore holds no long-lived secret: once the instance has enrolled,
//! or once the token has expired, a copy of it gets nobody anything.

use std::path::Path;
use std::time::Duration;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};
use testmesh_consensus::NodeId;

use crate::error::Error;

/// `POST /api/v1/enrol`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// The join token (`tmj_…`).
    pub token: String,
    /// The node id the joiner's identity key gives (16 hex digits); only that node is admitted.
    pub node: String,
}

/// The answer: the swarm key file and the members' mesh addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrolled {
    pub swarm_key: String,
    pub join: Vec<String>,
}

/// How long a new node keeps asking (the member may still be starting, or a leader may be being
/// elected): every 2 s for up to 2 minutes.
const TRIES: u32 = 60;

/// Asks `url` to enrol `node` with `token`, writes the swarm key to `key_path` (0600) and
/// returns the members' addresses to join.
pub async fn enrol(
    url: &str,
    token: &str,
    fingerprint: Option<&str>,
    node: NodeId,
    key_path: &Path,
) -> Result<Vec<Multiaddr>, Error> {
    let base = url.trim_end_matches('/');
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if base.starts_with("https://") {
        let tls = crate::tls::client_config(fingerprint, None).map_err(Error::Config)?;
        builder = builder.use_preconfigured_tls(tls);
    } else if !is_loopback_url(base) {
        return Err(Error::Config(format!(
            "--enrol {url}: the swarm key must not cross a network in clear; use the member's \
             https:// address (with --tls-fingerprint)"
        )));
    }
    let http = builder
        .build()
        .map_err(|e| Error::Config(format!("enrolment client: {e}")))?;
    let body = EnrolRequest {
        token: token.to_string(),
        node: node.to_string(),
    };
    let mut last = String::new();
    for attempt in 0..TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let resp = match http
            .post(format!("{base}/api/v1/enrol"))
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => {
                last = format!("{e}");
                continue;
            }
        };
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            let e: Enrolled = serde_json::from_str(&text)
                .map_err(|e| Error::Config(format!("enrolment answer: {e}")))?;
            crate::mesh::key::parse_swarm_key(&e.swarm_key).map_err(|m| {
                Error::Config(format!("enrolment answered with a bad swarm key: {m}"))
            })?;
            if let Some(parent) = key_path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|err| Error::io("cannot create", parent, err))?;
            }
            crate::mesh::key::write_private(key_path, e.swarm_key.as_bytes())?;
            tracing::info!(
                "enrolled through {base}; swarm key in {}",
                key_path.display()
            );
            return Ok(e.join.iter().filter_map(|a| a.parse().ok()).collect());
        }
        // A refused token will not get better by asking again.
        if status.as_u16() == 401 || status.as_u16() == 403 || status.as_u16() == 400 {
            return Err(Error::Config(format!(
                "enrolment through {base} refused: {text}"
            )));
        }
        last = format!("HTTP {status}: {text}");
    }
    Err(Error::Config(format!(
        "enrolment through {base} did not succeed in {} s: {last}",
        TRIES * 2
    )))
}

fn is_loopback_url(u: &str) -> bool {
    let host = u
        .split("://")
        .nth(1)
        .unwrap_or(u)
        .split('/')
        .next()
        .unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The mesh addresses to dial for each member, from the membership's member addresses
/// (`PEER ADDR…`): `ADDR/p2p/PEER`.
pub fn dial_addrs(members: impl IntoIterator<Item = String>) -> Vec<String> {
    members
        .into_iter()
        .filter_map(|m| crate::mesh::parse_member_addr(&m))
        .flat_map(|(peer, addrs)| addrs.into_iter().map(move |a| format!("{a}/p2p/{peer}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_never_goes_to_a_remote_plain_http_address() {
        assert!(is_loopback_url("http://127.0.0.1:7070"));
        assert!(is_loopback_url("http://localhost:7070/"));
        assert!(is_loopback_url("http://[::1]:7070"));
        assert!(!is_loopback_url("http://10.0.0.5:7070"));
        assert!(!is_loopback_url("http://127.0.0.1.evil.example:7070"));
    }
}
