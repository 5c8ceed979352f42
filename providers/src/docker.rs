//! Containers on a Docker engine, through bollard. The image is the project's (built from
//! scratch by deploy/docker/build-image.sh: its entrypoint is `testmesh`); each container runs
//! `testmesh node` on the configured network, with the swarm key copied in before it starts
//! (an archive upload, so it works against remote engines and never shows in `docker inspect`).

use std::collections::HashMap;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, ContainerSummaryStateEnum, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};

use crate::{CLUSTER_TAG, Error, Instance, LaunchSpec, intent_of};

/// Where the swarm key goes inside the container.
const KEY_PATH: &str = "/etc/testmesh/swarm.key";
/// Seconds a stopping container gets to leave the cluster before it is killed.
const STOP_GRACE_SECS: i32 = 40;

#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Name in the policy and the ledger.
    pub name: String,
    /// Engine address (`unix:///var/run/docker.sock`, `tcp://host:2375`); None: `DOCKER_HOST`
    /// or the local socket.
    pub host: Option<String>,
    pub image: String,
    /// Network to attach containers to (must exist); None: the engine's default bridge.
    pub network: Option<String>,
}

pub struct DockerProvider {
    config: DockerConfig,
    docker: Docker,
}

impl DockerProvider {
    /// Connects and agrees on an API version with the engine (engines in use speak older
    /// versions than bollard's default).
    pub async fn connect(config: DockerConfig) -> Result<Self, Error> {
        let name = config.name.clone();
        let docker = match &config.host {
            Some(h) => Docker::connect_with_host(h),
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(|e| Error::config(&name, format!("cannot connect to the Docker engine: {e}")))?;
        let docker = docker.negotiate_version().await.map_err(|e| {
            Error::api(
                &name,
                format!("the Docker engine does not answer: {e}"),
                true,
            )
        })?;
        Ok(DockerProvider { config, docker })
    }

    fn err(&self, what: &str, e: DockerError) -> Error {
        let retry = !matches!(
            e,
            DockerError::DockerResponseServerError {
                status_code: 400..=499,
                ..
            }
        );
        Error::api(&self.config.name, format!("{what}: {e}"), retry)
    }

    /// A tar archive holding `testmesh/swarm.key` (mode 0600), to unpack under /etc.
    fn key_archive(key: &str) -> Result<Vec<u8>, std::io::Error> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o755);
        dir.set_size(0);
        b.append_data(&mut dir, "testmesh/", std::io::empty())?;
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o600);
        h.set_size(key.len() as u64);
        b.append_data(&mut h, "testmesh/swarm.key", key.as_bytes())?;
        b.into_inner()
    }

    async fn launch_one(&self, spec: &LaunchSpec) -> Result<String, Error> {
        let name = spec.name();
        let mut cmd = vec!["node".to_string()];
        cmd.extend(spec.node_args.iter().cloned());
        cmd.extend(["--swarm-key".to_string(), KEY_PATH.to_string()]);
        let body = ContainerCreateBody {
            image: Some(self.config.image.clone()),
            cmd: Some(cmd),
            hostname: Some(name.clone()),
            labels: Some(spec.tags().into_iter().collect::<HashMap<_, _>>()),
            host_config: Some(HostConfig {
                network_mode: self.config.network.clone(),
                nano_cpus: Some((spec.cpu_milli * 1_000_000) as i64),
                memory: Some(spec.memory_bytes as i64),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let id = match self.docker.create_container(Some(options), body).await {
            Ok(r) => r.id,
            // The same intent launched again (a retry, or a new leader redoing a launch):
            // that container is the instance.
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => {
                let c = self
                    .docker
                    .inspect_container(&name, None)
                    .await
                    .map_err(|e| self.err("inspect after a name conflict", e))?;
                let id = c.id.unwrap_or_default();
                if c.state.and_then(|s| s.running) == Some(true) {
                    return Ok(id);
                }
                id
            }
            Err(e) => return Err(self.err("create container", e)),
        };
        // Without a key the node enrols (`--enrol` in its arguments) and writes it there itself.
        if !spec.swarm_key.is_empty() {
            let archive = Self::key_archive(&spec.swarm_key)
                .map_err(|e| Error::api(&self.config.name, format!("key archive: {e}"), false))?;
            let upload = UploadToContainerOptionsBuilder::default()
                .path("/etc")
                .build();
            self.docker
                .upload_to_container(&id, Some(upload), bollard::body_full(archive.into()))
                .await
                .map_err(|e| self.err("copy the swarm key in", e))?;
        }
        match self.docker.start_container(&id, None).await {
            Ok(()) => Ok(id),
            // Already started.
            Err(DockerError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(id),
            Err(e) => Err(self.err("start container", e)),
        }
    }

    async fn list_all(&self, cluster_id: &str) -> Result<Vec<Instance>, Error> {
        let filters = HashMap::from([("label", vec![format!("{CLUSTER_TAG}={cluster_id}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.err("list containers", e))?;
        Ok(list
            .into_iter()
            .map(|c| {
                let tags = c.labels.unwrap_or_default().into_iter().collect();
                Instance {
                    provider_id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .and_then(|n| n.first().cloned())
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_string(),
                    intent: intent_of(&tags),
                    alive: matches!(
                        c.state,
                        Some(
                            ContainerSummaryStateEnum::CREATED
                                | ContainerSummaryStateEnum::RUNNING
                                | ContainerSummaryStateEnum::RESTARTING
                                | ContainerSummaryStateEnum::PAUSED
                        )
                    ),
                    // An exited container keeps its writable layer until it is removed.
                    stopped: matches!(
                        c.state,
                        Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD)
                    ),
                }
            })
            .collect())
    }

    async fn terminate_one(&self, id: &str) -> Result<(), Error> {
        let stop = StopContainerOptionsBuilder::default()
            .t(STOP_GRACE_SECS)
            .build();
        match self.docker.stop_container(id, Some(stop)).await {
            Ok(())
            | Err(DockerError::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => {}
            Err(e) => return Err(self.err("stop container", e)),
        }
        let rm = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(id, Some(rm)).await {
            Ok(())
            | Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.err("remove container", e)),
        }
    }
}

provider_impl!(DockerProvider);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_archive_holds_the_key_readable_by_root_only() {
        let a = DockerProvider::key_archive("KEY").unwrap();
        let mut ar = tar::Archive::new(a.as_slice());
        let entries: Vec<(String, u32, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                    e.size(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("testmesh/".into(), 0o755, 0),
                ("testmesh/swarm.key".into(), 0o600, 3)
            ]
        );
    }
}
