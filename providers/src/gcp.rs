//! Compute Engine instances over its REST API (instances insert / list / delete), with the
//! bootstrap script as the `startup-script` metadata. The launch intent gives both the instance
//! name and the `requestId` (GCE ignores a repeated request within an hour), and a label; the
//! listing is by the cluster label.
//!
//! Tests run it against a local fake of these three endpoints (tests/scaling.rs, named as a
//! fake): no real GCE API can be reached from here.

use serde_json::{Value, json};

use crate::{Error, Instance, LaunchSpec};

/// GCE labels allow no dots: the tags go in as these keys.
pub const CLUSTER_LABEL: &str = "testmesh-cluster";
pub const INTENT_LABEL: &str = "testmesh-intent";

#[derive(Debug, Clone)]
pub struct GcpConfig {
    pub name: String,
    pub project: String,
    pub zone: String,
    /// Boot image, e.g. `projects/debian-cloud/global/images/family/debian-12`.
    pub image: String,
    /// Network, e.g. `global/networks/default`.
    pub network: String,
    pub install_url: Option<String>,
    /// Service account for the instances (optional).
    pub service_account: Option<String>,
    /// API base; default `https://compute.googleapis.com/compute/v1`.
    pub endpoint: Option<String>,
    /// A fixed OAuth token (tests, short runs); None: `GOOGLE_OAUTH_ACCESS_TOKEN` or the GCE
    /// metadata server.
    pub access_token: Option<String>,
}

pub struct GcpProvider {
    config: GcpConfig,
    http: reqwest::Client,
}

/// A request id (a UUID, as GCE wants) that is the same for the same cluster and intent.
pub fn request_id(cluster_id: &str, intent: u64) -> String {
    // FNV-1a of the cluster id: stable across releases, unlike std's hasher.
    let h = cluster_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        (intent >> 48) & 0xfff,
        intent & 0xffff_ffff_ffff
    )
}

impl GcpProvider {
    pub fn new(config: GcpConfig) -> Result<Self, Error> {
        for (what, v) in [
            ("project", &config.project),
            ("zone", &config.zone),
            ("image", &config.image),
        ] {
            if v.is_empty() {
                return Err(Error::config(&config.name, format!("{what} is required")));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| Error::config(&config.name, e.to_string()))?;
        Ok(GcpProvider { config, http })
    }

    fn base(&self) -> String {
        format!(
            "{}/projects/{}/zones/{}/instances",
            self.config
                .endpoint
                .as_deref()
                .unwrap_or("https://compute.googleapis.com/compute/v1")
                .trim_end_matches('/'),
            self.config.project,
            self.config.zone
        )
    }

    /// An OAuth access token: `GOOGLE_OAUTH_ACCESS_TOKEN` when set (e.g. from
    /// `gcloud auth print-access-token`), else the metadata server of the GCE instance the
    /// leader runs on.
    async fn token(&self) -> Result<String, Error> {
        if let Some(t) = &self.config.access_token {
            return Ok(t.clone());
        }
        if let Ok(t) = std::env::var("GOOGLE_OAUTH_ACCESS_TOKEN") {
            return Ok(t);
        }
        let url = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token";
        let r = self
            .http
            .get(url)
            .header("Metadata-Flavor", "Google")
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| {
                Error::config(
                    &self.config.name,
                    format!("no credentials: set GOOGLE_OAUTH_ACCESS_TOKEN or run the leader on GCE with a service account ({e})"),
                )
            })?;
        let v: Value = r
            .json()
            .await
            .map_err(|e| Error::api(&self.config.name, format!("metadata token: {e}"), true))?;
        v["access_token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::api(&self.config.name, "metadata server gave no token", true))
    }

    async fn call(&self, req: reqwest::RequestBuilder, what: &str) -> Result<(u16, Value), Error> {
        let token = self.token().await?;
        let r = req
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| Error::api(&self.config.name, format!("{what}: {e}"), true))?;
        let code = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        Ok((code, v))
    }

    fn fail(&self, what: &str, code: u16, v: &Value) -> Error {
        let msg = v["error"]["message"].as_str().unwrap_or("no message");
        Error::api(
            &self.config.name,
            format!("{what}: HTTP {code}: {msg}"),
            code == 429 || code >= 500,
        )
    }

    async fn launch_one(&self, spec: &LaunchSpec) -> Result<String, Error> {
        let name = spec.name();
        let script = crate::aws::bootstrap_script(spec, self.config.install_url.as_deref())
            .map_err(|m| Error::config(&self.config.name, m))?;
        let zone = &self.config.zone;
        let mut body = json!({
            "name": name,
            "machineType": format!("zones/{zone}/machineTypes/{}", spec.instance_type),
            "labels": {CLUSTER_LABEL: spec.cluster_id, INTENT_LABEL: spec.intent.to_string()},
            "disks": [{"boot": true, "autoDelete": true,
                       "initializeParams": {"sourceImage": self.config.image}}],
            "networkInterfaces": [{"network": self.config.network,
                                   "accessConfigs": [{"type": "ONE_TO_ONE_NAT", "name": "External NAT"}]}],
            "metadata": {"items": [{"key": "startup-script",
                "value": script}]},
        });
        if let Some(sa) = &self.config.service_account {
            body["serviceAccounts"] = json!([{"email": sa,
                "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}]);
        }
        let url = format!(
            "{}?requestId={}",
            self.base(),
            request_id(&spec.cluster_id, spec.intent)
        );
        let (code, v) = self
            .call(self.http.post(url).json(&body), "instances.insert")
            .await?;
        match code {
            200..=299 => Ok(name),
            // The same intent launched again: that instance is the one.
            409 => Ok(name),
            _ => Err(self.fail("instances.insert", code, &v)),
        }
    }

    async fn list_all(&self, cluster_id: &str) -> Result<Vec<Instance>, Error> {
        let mut out = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let mut req = self
                .http
                .get(self.base())
                .query(&[("filter", format!("labels.{CLUSTER_LABEL}={cluster_id}"))]);
            if let Some(p) = &page {
                req = req.query(&[("pageToken", p)]);
            }
            let (code, v) = self.call(req, "instances.list").await?;
            if !(200..300).contains(&code) {
                return Err(self.fail("instances.list", code, &v));
            }
            for i in v["items"].as_array().into_iter().flatten() {
                let name = i["name"].as_str().unwrap_or_default().to_string();
                out.push(Instance {
                    provider_id: name.clone(),
                    name,
                    intent: i["labels"][INTENT_LABEL]
                        .as_str()
                        .and_then(|s| s.parse().ok()),
                    alive: matches!(
                        i["status"].as_str(),
                        Some("PROVISIONING" | "STAGING" | "RUNNING" | "REPAIRING")
                    ),
                    // GCE's TERMINATED is a stopped VM: its disks stay (and are billed).
                    stopped: matches!(
                        i["status"].as_str(),
                        Some("STOPPING" | "TERMINATED" | "SUSPENDING" | "SUSPENDED")
                    ),
                });
            }
            page = v["nextPageToken"].as_str().map(str::to_string);
            if page.is_none() {
                return Ok(out);
            }
        }
    }

    async fn terminate_one(&self, name: &str) -> Result<(), Error> {
        let url = format!("{}/{name}", self.base());
        let (code, v) = self.call(self.http.delete(url), "instances.delete").await?;
        match code {
            200..=299 | 404 => Ok(()),
            _ => Err(self.fail("instances.delete", code, &v)),
        }
    }
}

provider_impl!(GcpProvider);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_stable_uuids_per_intent() {
        let a = request_id("0123abcd", 7);
        assert_eq!(a, request_id("0123abcd", 7));
        assert_ne!(a, request_id("0123abcd", 8));
        assert_ne!(a, request_id("0123abce", 7));
        let parts: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(parts, vec![8, 4, 4, 4, 12], "{a}");
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }
}
