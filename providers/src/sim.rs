//! Simulated workers, for the demo and for trying scaling on one machine: each "instance" is a
//! real `testmesh node` process on this host, on loopback, that offers the capacity of the
//! instance type it stands for (`--cpus`, `--memory`, and simulated GPUs when the type has
//! GPUs). What it offers is therefore made up — named as such — while joining, scheduling,
//! draining and leaving are the real thing. Instances live in `<dir>/<name>/` (data dir, key,
//! log, pid file), so a new leader on the same host finds them again.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{CLUSTER_TAG, Error, INTENT_TAG, Instance, LaunchSpec};

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub name: String,
    /// The `testmesh` binary to start.
    pub binary: PathBuf,
    /// Where instances keep their data dirs.
    pub dir: PathBuf,
}

pub struct SimProvider {
    config: SimConfig,
}

/// Seconds a stopping instance gets to leave the cluster before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(40);

impl SimProvider {
    pub fn new(config: SimConfig) -> Result<Self, Error> {
        std::fs::create_dir_all(&config.dir).map_err(|e| {
            Error::config(
                &config.name,
                format!("cannot create {}: {e}", config.dir.display()),
            )
        })?;
        Ok(SimProvider { config })
    }

    fn io(&self, what: &str, e: std::io::Error) -> Error {
        Error::api(&self.config.name, format!("{what}: {e}"), true)
    }

    fn pid_of(dir: &Path) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // The pid is ours only while its command line names this instance's directory.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let dir = dir.to_string_lossy();
        String::from_utf8_lossy(&cmdline)
            .contains(dir.as_ref())
            .then_some(pid)
    }

    async fn launch_one(&self, spec: &LaunchSpec) -> Result<String, Error> {
        let name = spec.name();
        let dir = self.config.dir.join(&name);
        if Self::pid_of(&dir).is_some() {
            return Ok(name);
        }
        std::fs::create_dir_all(&dir).map_err(|e| self.io("create the instance dir", e))?;
        let key = dir.join("swarm.key");
        // Without a key the node enrols (`--enrol` in its arguments) and writes it there itself.
        if !spec.swarm_key.is_empty() {
            write_private(&key, &spec.swarm_key).map_err(|e| self.io("write the swarm key", e))?;
        }
        let tags =
            serde_json::json!({CLUSTER_TAG: spec.cluster_id, INTENT_TAG: spec.intent.to_string()});
        std::fs::write(dir.join("tags.json"), tags.to_string())
            .map_err(|e| self.io("write tags", e))?;
        let log = std::fs::File::create(dir.join("node.log"))
            .map_err(|e| self.io("create the log", e))?;
        let log2 = log.try_clone().map_err(|e| self.io("open the log", e))?;
        let mut cmd = Command::new(&self.config.binary);
        cmd.arg("node")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--swarm-key")
            .arg(&key)
            .args([
                "--http",
                "127.0.0.1:0",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--no-mdns",
            ])
            // Every simulated worker has this host's hostname: a name tells them apart.
            .arg("--name")
            .arg(format!("sim-{}", spec.intent))
            .arg("--cpus")
            .arg(format!("{}m", spec.cpu_milli))
            .arg("--memory")
            .arg(spec.memory_bytes.to_string());
        if spec.gpus > 0 {
            cmd.arg("--simulate-gpus").arg(format!(
                "{}x{}:{}",
                spec.gpus, spec.gpu_model, spec.gpu_memory_bytes
            ));
        }
        // Its own process group: a signal to the leader's group does not reach it.
        use std::os::unix::process::CommandExt;
        let child = cmd
            .args(&spec.node_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                Error::config(
                    &self.config.name,
                    format!("cannot start {}: {e}", self.config.binary.display()),
                )
            })?;
        std::fs::write(dir.join("pid"), child.id().to_string())
            .map_err(|e| self.io("write the pid file", e))?;
        // Reap it when it exits, so it does not linger as a zombie of the leader.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(name)
    }

    async fn list_all(&self, cluster_id: &str) -> Result<Vec<Instance>, Error> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.config.dir).map_err(|e| self.io("list", e))?;
        for e in entries.flatten() {
            let dir = e.path();
            let Ok(text) = std::fs::read_to_string(dir.join("tags.json")) else {
                continue;
            };
            let Ok(tags) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            if tags[CLUSTER_TAG] != cluster_id {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            out.push(Instance {
                provider_id: name.clone(),
                name,
                intent: tags[INTENT_TAG].as_str().and_then(|s| s.parse().ok()),
                alive: Self::pid_of(&dir).is_some(),
                stopped: false,
            });
        }
        Ok(out)
    }

    async fn terminate_one(&self, id: &str) -> Result<(), Error> {
        if id.contains('/') || id.starts_with('.') {
            return Err(Error::api(
                &self.config.name,
                format!("bad instance id {id:?}"),
                false,
            ));
        }
        let dir = self.config.dir.join(id);
        if let Some(pid) = Self::pid_of(&dir) {
            // SIGTERM: the node drains, hands back what it runs and leaves the cluster.
            signal(pid, "TERM");
            // Counted in polls rather than read from a clock (this crate has none of its own).
            let polls = STOP_GRACE.as_millis() / 100;
            for _ in 0..polls {
                if Self::pid_of(&dir).is_none() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if let Some(pid) = Self::pid_of(&dir) {
                signal(pid, "KILL");
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io("remove the instance dir", e)),
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

provider_impl!(SimProvider);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Provider;

    fn spec(intent: u64, node_args: Vec<String>) -> LaunchSpec {
        LaunchSpec {
            cluster_id: "c".into(),
            intent,
            instance_type: "sim".into(),
            cpu_milli: 2000,
            memory_bytes: 1 << 30,
            gpus: 0,
            gpu_model: String::new(),
            gpu_memory_bytes: 0,
            node_args,
            swarm_key: "k".into(),
        }
    }

    /// A stand-in binary (`sleep`) shows the bookkeeping: idempotent launch, listing by
    /// cluster, terminate. The full path with real nodes is in tests/scaling.rs.
    #[tokio::test]
    async fn launch_is_idempotent_and_terminate_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-node");
        std::fs::write(&fake, "#!/bin/sh\nsleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = SimProvider::new(SimConfig {
            name: "sim".into(),
            binary: fake,
            dir: dir.path().join("instances"),
        })
        .unwrap();
        let s = spec(1, vec![]);
        let id = p.launch(&s).await.unwrap();
        assert_eq!(id, "testmesh-c-1");
        assert_eq!(
            p.launch(&s).await.unwrap(),
            id,
            "same intent, same instance"
        );
        // Alive once the child has exec'd (until then its command line is still ours).
        let mut l = p.list("c").await.unwrap();
        for _ in 0..100 {
            if l.first().is_some_and(|i| i.alive) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            l = p.list("c").await.unwrap();
        }
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].intent, Some(1));
        assert!(l[0].alive);
        assert!(p.list("other").await.unwrap().is_empty());
        let key = dir.path().join("instances").join(&id).join("swarm.key");
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        p.terminate(&id).await.unwrap();
        assert!(p.list("c").await.unwrap().is_empty());
        p.terminate(&id).await.unwrap();
        assert!(p.terminate("../x").await.is_err());
    }
}
