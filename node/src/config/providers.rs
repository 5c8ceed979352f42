//! `[[providers]]` in the node's TOML: where the autoscaler may get workers from.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use testmesh_providers::Provider;
use testmesh_providers::aws::{AwsConfig, AwsProvider};
use testmesh_providers::docker::{DockerConfig, DockerProvider};
use testmesh_providers::gcp::{GcpConfig, GcpProvider};
use testmesh_providers::sim::{SimConfig, SimProvider};

/// One `[[providers]]` block, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FileProvider {
    Docker(FileDocker),
    Aws(FileAws),
    Gcp(FileGcp),
    Sim(FileSim),
}

/// What every provider block may carry besides its own fields (repeated in each block's
/// struct: serde cannot deny unknown fields through `flatten`).
#[derive(Debug, Clone, Copy)]
pub struct Common<'a> {
    pub name: &'a Option<String>,
    pub join: &'a [String],
    pub labels: &'a BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDocker {
    /// Name in the policy and the catalogue (`provider = ...`); default: the kind.
    pub name: Option<String>,
    /// Mesh addresses the new workers join; default: this node's own (non-loopback) ones.
    #[serde(default)]
    pub join: Vec<String>,
    /// Extra labels for the workers it starts.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub host: Option<String>,
    pub image: String,
    pub network: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAws {
    /// Name in the policy and the catalogue (`provider = ...`); default: the kind.
    pub name: Option<String>,
    /// Mesh addresses the new workers join; default: this node's own (non-loopback) ones.
    #[serde(default)]
    pub join: Vec<String>,
    /// Extra labels for the workers it starts.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub region: String,
    pub image_id: String,
    pub subnet_id: Option<String>,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    pub key_name: Option<String>,
    pub instance_profile: Option<String>,
    pub install_url: Option<String>,
    pub endpoint_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGcp {
    /// Name in the policy and the catalogue (`provider = ...`); default: the kind.
    pub name: Option<String>,
    /// Mesh addresses the new workers join; default: this node's own (non-loopback) ones.
    #[serde(default)]
    pub join: Vec<String>,
    /// Extra labels for the workers it starts.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub project: String,
    pub zone: String,
    pub image: String,
    #[serde(default = "default_network")]
    pub network: String,
    pub service_account: Option<String>,
    pub install_url: Option<String>,
    pub endpoint: Option<String>,
}

fn default_network() -> String {
    "global/networks/default".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSim {
    /// Name in the policy and the catalogue (`provider = ...`); default: the kind.
    pub name: Option<String>,
    /// Mesh addresses the new workers join; default: this node's own (non-loopback) ones.
    #[serde(default)]
    pub join: Vec<String>,
    /// Extra labels for the workers it starts.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where simulated workers keep their data dirs; default `<data-dir>/sim`.
    pub dir: Option<std::path::PathBuf>,
}

impl FileProvider {
    pub fn kind(&self) -> &'static str {
        match self {
            FileProvider::Docker(_) => "docker",
            FileProvider::Aws(_) => "aws",
            FileProvider::Gcp(_) => "gcp",
            FileProvider::Sim(_) => "sim",
        }
    }

    pub fn common(&self) -> Common<'_> {
        macro_rules! common {
            ($p:expr) => {
                Common {
                    name: &$p.name,
                    join: &$p.join,
                    labels: &$p.labels,
                }
            };
        }
        match self {
            FileProvider::Docker(p) => common!(p),
            FileProvider::Aws(p) => common!(p),
            FileProvider::Gcp(p) => common!(p),
            FileProvider::Sim(p) => common!(p),
        }
    }

    pub fn name(&self) -> String {
        self.common()
            .name
            .clone()
            .unwrap_or_else(|| self.kind().to_string())
    }

    /// Whether its workers run on this host and reach it on loopback.
    pub fn is_local(&self) -> bool {
        matches!(self, FileProvider::Sim(_))
    }

    /// Whether the node inside should be told its size (a container sees the whole host).
    pub fn sizes_its_nodes(&self) -> bool {
        matches!(self, FileProvider::Docker(_))
    }

    /// Connects to the provider's API.
    pub async fn connect(
        &self,
        data_dir: &Path,
    ) -> Result<Arc<dyn Provider>, testmesh_providers::Error> {
        let name = self.name();
        Ok(match self {
            FileProvider::Docker(d) => Arc::new(
                DockerProvider::connect(DockerConfig {
                    name,
                    host: d.host.clone(),
                    image: d.image.clone(),
                    network: d.network.clone(),
                })
                .await?,
            ),
            FileProvider::Aws(a) => Arc::new(
                AwsProvider::connect(AwsConfig {
                    name,
                    region: a.region.clone(),
                    image_id: a.image_id.clone(),
                    subnet_id: a.subnet_id.clone(),
                    security_group_ids: a.security_group_ids.clone(),
                    key_name: a.key_name.clone(),
                    instance_profile: a.instance_profile.clone(),
                    install_url: a.install_url.clone(),
                    endpoint_url: a.endpoint_url.clone(),
                })
                .await?,
            ),
            FileProvider::Gcp(g) => Arc::new(GcpProvider::new(GcpConfig {
                name,
                project: g.project.clone(),
                zone: g.zone.clone(),
                image: g.image.clone(),
                network: g.network.clone(),
                install_url: g.install_url.clone(),
                service_account: g.service_account.clone(),
                endpoint: g.endpoint.clone(),
                access_token: None,
            })?),
            FileProvider::Sim(s) => Arc::new(SimProvider::new(SimConfig {
                name,
                binary: std::env::current_exe().map_err(|e| {
                    testmesh_providers::Error::config(
                        "sim",
                        format!("cannot find this binary: {e}"),
                    )
                })?,
                dir: s.dir.clone().unwrap_or_else(|| data_dir.join("sim")),
            })?),
        })
    }
}

/// Checks names are unique and join addresses parse; says what is wrong otherwise.
pub fn validate(providers: &[FileProvider]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for p in providers {
        let name = p.name();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "provider name {name:?}: use letters, digits, - and _"
            ));
        }
        if !seen.insert(name.clone()) {
            return Err(format!(
                "provider {name} is configured twice; give one a `name`"
            ));
        }
        for a in p.common().join {
            a.parse::<libp2p::Multiaddr>()
                .map_err(|e| format!("provider {name}: join address {a:?}: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct F {
        providers: Vec<FileProvider>,
    }

    fn parse(text: &str) -> Result<Vec<FileProvider>, String> {
        toml::from_str::<F>(text)
            .map(|f| f.providers)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_kind_parses_and_bad_blocks_are_explained() {
        let p = parse(
            r#"
            [[providers]]
            kind = "docker"
            image = "testmesh:dev"
            network = "net"
            [[providers]]
            kind = "aws"
            region = "us-east-1"
            image_id = "ami-1"
            endpoint_url = "http://127.0.0.1:5000"
            [[providers]]
            kind = "gcp"
            project = "p"
            zone = "z"
            image = "i"
            [[providers]]
            kind = "sim"
            name = "local"
            join = ["/ip4/127.0.0.1/tcp/7071"]
            "#,
        )
        .unwrap();
        assert_eq!(
            p.iter().map(FileProvider::name).collect::<Vec<_>>(),
            vec!["docker", "aws", "gcp", "local"]
        );
        validate(&p).unwrap();
        let e =
            parse("[[providers]]\nkind = \"docker\"\nimage = \"x\"\nimagee = \"y\"\n").unwrap_err();
        assert!(e.contains("imagee"), "{e}");
        let e = parse("[[providers]]\nkind = \"azure\"\n").unwrap_err();
        assert!(e.contains("azure"), "{e}");
        let twice =
            parse("[[providers]]\nkind = \"sim\"\n[[providers]]\nkind = \"sim\"\n").unwrap();
        assert!(validate(&twice).unwrap_err().contains("configured twice"));
        let bad = parse("[[providers]]\nkind = \"sim\"\njoin = [\"nope\"]\n").unwrap();
        assert!(validate(&bad).unwrap_err().contains("join address"));
    }
}
