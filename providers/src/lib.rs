//! Where the autoscaler gets workers from. Every provider starts the same `testmesh node`
//! binary with arguments that make it join the mesh by itself, tags what it starts with the
//! cluster id and the launch intent id (which is also the idempotency token), lists what carries
//! the cluster's tag, and terminates by id.
//!
//! - [`docker::DockerProvider`]: containers on a local or remote Docker engine (bollard).
//! - [`aws::AwsProvider`]: EC2 instances (aws-sdk-ec2) with cloud-init user data.
//! - [`gcp::GcpProvider`]: Compute Engine instances over its REST API, with a startup script.
//! - [`sim::SimProvider`]: simulated workers for demos and benchmarks — real `testmesh node`
//!   processes on this host that offer the capacity of the instance type they stand for.

/// Implements [`Provider`] for a provider type with a `config.name` and inherent async
/// `launch_one`, `list_all` and `terminate_one` methods.
macro_rules! provider_impl {
    ($t:ty) => {
        impl $crate::Provider for $t {
            fn name(&self) -> &str {
                &self.config.name
            }

            fn launch<'a>(
                &'a self,
                spec: &'a $crate::LaunchSpec,
            ) -> futures::future::BoxFuture<'a, Result<String, $crate::Error>> {
                Box::pin(self.launch_one(spec))
            }

            fn list<'a>(
                &'a self,
                cluster_id: &'a str,
            ) -> futures::future::BoxFuture<'a, Result<Vec<$crate::Instance>, $crate::Error>> {
                Box::pin(self.list_all(cluster_id))
            }

            fn terminate<'a>(
                &'a self,
                provider_id: &'a str,
            ) -> futures::future::BoxFuture<'a, Result<(), $crate::Error>> {
                Box::pin(self.terminate_one(provider_id))
            }
        }
    };
}

pub mod aws;
pub mod docker;
mod error;
pub mod gcp;
pub mod sim;

use std::collections::BTreeMap;

use futures::future::BoxFuture;

pub use error::Error;

/// Tag (label) naming the cluster an instance belongs to.
pub const CLUSTER_TAG: &str = "testmesh.cluster";
/// Tag naming the launch intent an instance was started for.
pub const INTENT_TAG: &str = "testmesh.intent";

/// What to start.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub cluster_id: String,
    /// The launch intent: idempotency token and tag.
    pub intent: u64,
    /// The provider's machine type (ignored by providers without types).
    pub instance_type: String,
    /// The resources of the type, for providers that size what they start (Docker, sim).
    pub cpu_milli: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
    pub gpu_model: String,
    pub gpu_memory_bytes: u64,
    /// Arguments of `testmesh node` for the new worker (join addresses, labels, ...), without
    /// `--swarm-key` (each provider puts the key where the node reads it).
    pub node_args: Vec<String>,
    /// Contents of the cluster's swarm key file.
    pub swarm_key: String,
}

impl LaunchSpec {
    /// The instance's name: the same for the same intent, so a retried launch finds the first.
    pub fn name(&self) -> String {
        format!("testmesh-{}-{}", self.cluster_id, self.intent)
    }

    pub fn tags(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (CLUSTER_TAG.to_string(), self.cluster_id.clone()),
            (INTENT_TAG.to_string(), self.intent.to_string()),
        ])
    }
}

/// An instance as its provider lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub provider_id: String,
    pub name: String,
    /// From its intent tag.
    pub intent: Option<u64>,
    /// Running or about to (not stopped, terminated or being deleted).
    pub alive: bool,
    /// Stopped but not deleted: it still holds its disk (and is billed for it) until it is
    /// terminated.
    pub stopped: bool,
}

pub trait Provider: Send + Sync {
    /// The name the policy and the ledger use for it.
    fn name(&self) -> &str;

    /// Starts one instance; returns its provider id. Launching the same intent again returns
    /// the same instance rather than a second one.
    fn launch<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, Result<String, Error>>;

    /// Every instance tagged with `cluster_id`, alive or not.
    fn list<'a>(&'a self, cluster_id: &'a str) -> BoxFuture<'a, Result<Vec<Instance>, Error>>;

    /// Stops and removes an instance (a node inside gets SIGTERM first and leaves the cluster).
    /// Terminating one that is already gone succeeds.
    fn terminate<'a>(&'a self, provider_id: &'a str) -> BoxFuture<'a, Result<(), Error>>;
}

/// Parses an intent tag value.
pub(crate) fn intent_of(tags: &BTreeMap<String, String>) -> Option<u64> {
    tags.get(INTENT_TAG).and_then(|v| v.parse().ok())
}

/// The shell line that starts a node from the given arguments (for cloud-init and startup
/// scripts), every argument single-quoted.
pub(crate) fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tags_and_quoting() {
        let spec = LaunchSpec {
            cluster_id: "c1".into(),
            intent: 7,
            instance_type: "small".into(),
            cpu_milli: 2000,
            memory_bytes: 1 << 30,
            gpus: 0,
            gpu_model: String::new(),
            gpu_memory_bytes: 0,
            node_args: vec![],
            swarm_key: String::new(),
        };
        assert_eq!(spec.name(), "testmesh-c1-7");
        assert_eq!(intent_of(&spec.tags()), Some(7));
        assert_eq!(
            shell_words(&["a b".into(), "it's".into()]),
            r"'a b' 'it'\''s'"
        );
    }
}
