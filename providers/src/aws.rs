//! EC2 instances through aws-sdk-ec2. Credentials come from the standard AWS chain
//! (environment, profile files, credential process, web identity, instance role; not SSO) and
//! are only used on the leader. Every launch
//! carries the intent id as its ClientToken (EC2 returns the first instance for a repeated
//! token) and as a tag; the listing is by the cluster tag, so reconcile also finds instances a
//! token could not de-duplicate (emulators ignore tokens).

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, InstanceStateName, InstanceType, ResourceType, Tag,
    TagSpecification,
};
use base64::Engine;

use crate::{CLUSTER_TAG, Error, Instance, LaunchSpec, shell_words};

/// The bootstrap script every instance runs at first boot (deploy/cloud/bootstrap.sh).
pub const BOOTSTRAP: &str = include_str!("../../deploy/cloud/bootstrap.sh");

#[derive(Debug, Clone)]
pub struct AwsConfig {
    pub name: String,
    pub region: String,
    /// The AMI: any Linux with systemd (and curl, when testmesh is not baked in).
    pub image_id: String,
    pub subnet_id: Option<String>,
    pub security_group_ids: Vec<String>,
    pub key_name: Option<String>,
    pub instance_profile: Option<String>,
    /// Where instances download the testmesh binary when the AMI lacks it.
    pub install_url: Option<String>,
    /// A different EC2 endpoint (an emulator, a VPC endpoint).
    pub endpoint_url: Option<String>,
}

pub struct AwsProvider {
    config: AwsConfig,
    client: Client,
}

/// The bootstrap script with the key, the node arguments and the install URL filled in, each
/// shell-quoted. A control character (a line break could end a here-document early) is refused.
pub fn bootstrap_script(spec: &LaunchSpec, install_url: Option<&str>) -> Result<String, String> {
    let url = install_url.unwrap_or("");
    for a in spec.node_args.iter().map(String::as_str).chain([url]) {
        if a.chars().any(char::is_control) {
            return Err(format!(
                "{a:?} contains a control character and cannot go into the bootstrap script"
            ));
        }
    }
    let key = spec.swarm_key.trim_end();
    if key.lines().any(|l| l == "TESTMESH_SWARM_KEY") {
        return Err("the swarm key file is malformed".into());
    }
    let key_block = if key.is_empty() {
        String::new()
    } else {
        format!(
            "umask 077\ncat > /etc/testmesh/swarm.key <<'TESTMESH_SWARM_KEY'\n{key}\nTESTMESH_SWARM_KEY\numask 022"
        )
    };
    Ok(BOOTSTRAP
        .replace("{{SWARM_KEY_BLOCK}}", &key_block)
        .replace("{{NODE_ARGS}}", &shell_words(&spec.node_args))
        .replace("{{INSTALL_URL}}", &shell_words(&[url.to_string()])))
}

/// The SDK's HTTPS client: rustls with ring, trusting the platform's root certificates.
pub fn https_client() -> aws_sdk_ec2::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

impl AwsProvider {
    pub async fn connect(config: AwsConfig) -> Result<Self, Error> {
        if config.image_id.is_empty() {
            return Err(Error::config(
                &config.name,
                "image_id (an AMI id) is required",
            ));
        }
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()))
            .http_client(https_client())
            .load()
            .await;
        let mut b = aws_sdk_ec2::config::Builder::from(&shared);
        if let Some(url) = &config.endpoint_url {
            b = b.endpoint_url(url);
        }
        Ok(AwsProvider {
            client: Client::from_conf(b.build()),
            config,
        })
    }

    /// With a client built elsewhere (static credentials for an emulator, a custom retry
    /// policy).
    pub fn with_client(config: AwsConfig, client: Client) -> Self {
        AwsProvider { config, client }
    }

    /// An instance already started for this intent (pending or running), if any: EC2 honours
    /// the ClientToken, but emulators and some partitions do not, so look first.
    async fn existing(&self, spec: &LaunchSpec) -> Result<Option<String>, Error> {
        let out = self
            .client
            .describe_instances()
            .filters(
                Filter::builder()
                    .name(format!("tag:{CLUSTER_TAG}"))
                    .values(&spec.cluster_id)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name(format!("tag:{}", crate::INTENT_TAG))
                    .values(spec.intent.to_string())
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.err("DescribeInstances", e.into_service_error()))?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|i| i.instance_id().map(str::to_string)))
    }

    fn err<E: ProvideErrorMetadata + std::fmt::Display>(&self, what: &str, e: E) -> Error {
        let code = e.code().unwrap_or("").to_string();
        // Capacity and throttling pass; permissions, bad AMIs and bad parameters do not.
        let retry = code.is_empty()
            || code.contains("Capacity")
            || code.contains("Throttl")
            || code.contains("RequestLimitExceeded")
            || code.contains("Unavailable")
            || code.contains("InternalError");
        let detail = e
            .message()
            .map(str::to_string)
            .unwrap_or_else(|| e.to_string());
        Error::api(&self.config.name, format!("{what}: {code} {detail}"), retry)
    }

    async fn launch_one(&self, spec: &LaunchSpec) -> Result<String, Error> {
        if let Some(id) = self.existing(spec).await? {
            return Ok(id);
        }
        let mut tags = TagSpecification::builder().resource_type(ResourceType::Instance);
        for (k, v) in spec.tags() {
            tags = tags.tags(Tag::builder().key(k).value(v).build());
        }
        tags = tags.tags(Tag::builder().key("Name").value(spec.name()).build());
        let script = bootstrap_script(spec, self.config.install_url.as_deref())
            .map_err(|m| Error::config(&self.config.name, m))?;
        let user_data = base64::engine::general_purpose::STANDARD.encode(script);
        let mut req = self
            .client
            .run_instances()
            .image_id(&self.config.image_id)
            .instance_type(InstanceType::from(spec.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .client_token(format!("{}-{}", spec.cluster_id, spec.intent))
            .user_data(user_data)
            .tag_specifications(tags.build());
        if let Some(s) = &self.config.subnet_id {
            req = req.subnet_id(s);
        }
        for g in &self.config.security_group_ids {
            req = req.security_group_ids(g);
        }
        if let Some(k) = &self.config.key_name {
            req = req.key_name(k);
        }
        if let Some(p) = &self.config.instance_profile {
            req = req
                .iam_instance_profile(IamInstanceProfileSpecification::builder().name(p).build());
        }
        let out = req
            .send()
            .await
            .map_err(|e| self.err("RunInstances", e.into_service_error()))?;
        out.instances()
            .first()
            .and_then(|i| i.instance_id())
            .map(str::to_string)
            .ok_or_else(|| Error::api(&self.config.name, "RunInstances returned no instance", true))
    }

    async fn list_all(&self, cluster_id: &str) -> Result<Vec<Instance>, Error> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self
                .client
                .describe_instances()
                .filters(
                    Filter::builder()
                        .name(format!("tag:{CLUSTER_TAG}"))
                        .values(cluster_id)
                        .build(),
                )
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| self.err("DescribeInstances", e.into_service_error()))?;
            for r in page.reservations() {
                for i in r.instances() {
                    let tags: std::collections::BTreeMap<String, String> = i
                        .tags()
                        .iter()
                        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                        .collect();
                    let state = i.state().and_then(|s| s.name()).cloned();
                    out.push(Instance {
                        provider_id: i.instance_id().unwrap_or_default().to_string(),
                        name: tags.get("Name").cloned().unwrap_or_default(),
                        intent: crate::intent_of(&tags),
                        alive: matches!(
                            state,
                            Some(InstanceStateName::Pending | InstanceStateName::Running)
                        ),
                        stopped: matches!(
                            state,
                            Some(InstanceStateName::Stopping | InstanceStateName::Stopped)
                        ),
                    });
                }
            }
            next = page.next_token().map(str::to_string);
            if next.is_none() {
                return Ok(out);
            }
        }
    }

    async fn terminate_one(&self, id: &str) -> Result<(), Error> {
        match self
            .client
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = e.into_service_error();
                if e.code() == Some("InvalidInstanceID.NotFound") {
                    return Ok(());
                }
                Err(self.err("TerminateInstances", e))
            }
        }
    }
}

provider_impl!(AwsProvider);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_script_carries_key_args_and_url() {
        let spec = LaunchSpec {
            cluster_id: "c".into(),
            intent: 3,
            instance_type: "m7i.large".into(),
            cpu_milli: 2000,
            memory_bytes: 8 << 30,
            gpus: 0,
            gpu_model: String::new(),
            gpu_memory_bytes: 0,
            node_args: vec!["--join".into(), "/ip4/10.0.0.1/tcp/7071".into()],
            swarm_key: "/key/swarm/psk/1.0.0/\n/base16/\nabcd\n".into(),
        };
        let s = bootstrap_script(&spec, Some("https://example.org/testmesh")).unwrap();
        assert!(s.contains("/base16/\nabcd\nTESTMESH_SWARM_KEY"), "{s}");
        assert!(s.contains("'--join' '/ip4/10.0.0.1/tcp/7071'"));
        assert!(s.contains("url='https://example.org/testmesh'"));
        assert!(!s.contains("{{"), "every placeholder filled");
        let mut evil = spec.clone();
        evil.node_args = vec!["x\nTESTMESH_RUN\nreboot".into()];
        assert!(bootstrap_script(&evil, None).is_err());
        evil.node_args = vec!["$(reboot) `reboot` 'q'".into()];
        let s = bootstrap_script(&evil, None).unwrap();
        assert!(s.contains(r"'$(reboot) `reboot` '\''q'\'''"), "{s}");
        assert!(s.contains("<<'TESTMESH_RUN'") && s.contains("<<'UNIT'"));
        // An instance that enrols gets no swarm key in its launch data.
        let mut enrolling = spec.clone();
        enrolling.swarm_key = String::new();
        enrolling.node_args = vec!["--enrol".into(), "https://10.0.0.1:7070".into()];
        let s = bootstrap_script(&enrolling, None).unwrap();
        assert!(
            !s.contains("TESTMESH_SWARM_KEY") && !s.contains("/base16/"),
            "{s}"
        );
        assert!(s.contains("'--enrol' 'https://10.0.0.1:7070'"), "{s}");
    }
}
