//! Real containers on the machine's Docker engine: the image is built from scratch with
//! deploy/docker/build-image.sh (no registry), three containers on a private network find each
//! other by mDNS alone (no --join), form one cluster and run tasks; cutting the leader off lets
//! the majority elect a new one and keep scheduling while the isolated node grants nothing; on
//! reconnection it rejoins and catches up.

// Tests measure their own deadlines; the one-clock rule is for the product code.
#![allow(clippy::disallowed_methods)]

#[path = "support/mod.rs"]
mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use support::{BIN, TaskViewExt, docker};
use testmesh::core::dto::{StatusView, TaskView, WorkerStatus};
use testmesh_consensus::task::TaskState;

fn docker_ok(args: &[&str]) -> String {
    let o = docker(args);
    assert!(
        o.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs the testmesh CLI inside a container against its own node.
fn cli(container: &str, args: &[&str]) -> Output {
    // Client options go right after the subcommand (anything after `--` is the task's command).
    let mut a = vec!["exec", container, "testmesh", args[0]];
    a.extend_from_slice(&["--server", "http://127.0.0.1:7070", "--data-dir", "/data"]);
    a.extend_from_slice(&args[1..]);
    docker(&a)
}

/// The CLI's `--json` answer read into `T`; None when the command fails (the node does not
/// answer yet, or cannot). Output that is not a `T` fails the test with the output.
fn json<T: DeserializeOwned>(container: &str, args: &[&str]) -> Option<T> {
    let o = cli(container, args);
    o.status.success().then(|| support::parse_output(&o))
}

fn wait_until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

struct Env {
    tag: String,
    network: String,
    containers: Vec<String>,
    dir: tempfile::TempDir,
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in &self.containers {
                let o = docker(&["logs", "--tail", "60", c]);
                eprintln!(
                    "----- {c} -----\n{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
        for c in &self.containers {
            docker(&["rm", "-f", c]);
        }
        docker(&["network", "rm", &self.network]);
        docker(&["rmi", "-f", &self.tag]);
    }
}

#[test]
fn containers_discover_each_other_by_mdns_and_survive_a_partition() {
    if !support::docker_or_skip() {
        return;
    }
    let id = std::process::id();
    let env = Env {
        tag: format!("testmesh:test-{id}"),
        network: format!("testmesh-test-{id}"),
        containers: (1..=3).map(|i| format!("testmesh-test-{id}-{i}")).collect(),
        dir: tempfile::tempdir().unwrap(),
    };
    support::build_image(&env.tag);
    let key = env.dir.path().join("swarm.key");
    let o = Command::new(BIN)
        .args(["keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    // Containers run as root; the key only needs to be readable inside them.
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    docker_ok(&["network", "create", &env.network]);
    let mount = format!("{}:/etc/testmesh/swarm.key:ro", key.display());
    for c in &env.containers {
        docker_ok(&[
            "run",
            "-d",
            "--name",
            c,
            "--hostname",
            c,
            "--network",
            &env.network,
            "-v",
            &mount,
            &env.tag,
            "node",
            "--data-dir",
            "/data",
            "--http",
            "127.0.0.1:7070",
            "--swarm-key",
            "/etc/testmesh/swarm.key",
            "--dead-after",
            "4s",
        ]);
    }
    // No --join anywhere: mDNS alone makes one cluster of three.
    for c in &env.containers {
        wait_until(60, "three workers everywhere", || {
            json::<Vec<WorkerStatus>>(c, &["workers", "--json"]).filter(|w| w.len() == 3)
        });
    }
    let leader = wait_until(30, "a leader", || {
        json::<StatusView>(&env.containers[0], &["status", "--json"]).and_then(|s| s.leader)
    });
    // Tasks run on all three: six 1-cpu tasks on three 2-cpu workers.
    let mut ids = Vec::new();
    for _ in 0..6 {
        let o = cli(
            &env.containers[1],
            &[
                "submit",
                "--cpu",
                "1",
                "--",
                "sh",
                "-c",
                "sleep 3; hostname",
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        ids.push(String::from_utf8_lossy(&o.stdout).trim().to_string());
    }
    let mut hosts = std::collections::BTreeSet::new();
    for id in &ids {
        let t = wait_until(60, "task success", || {
            json::<TaskView>(&env.containers[2], &["task", id, "--json"])
                .filter(|t| t.task.state == TaskState::Succeeded)
        });
        hosts.insert(t.attempt(0).worker);
    }
    assert_eq!(hosts.len(), 3, "tasks ran on {hosts:?}");

    // Cut the leader off. Find its container by node id.
    let leader_c = env
        .containers
        .iter()
        .find(|c| json::<StatusView>(c, &["status", "--json"]).is_some_and(|s| s.node_id == leader))
        .unwrap()
        .clone();
    let majority: Vec<&String> = env.containers.iter().filter(|c| **c != leader_c).collect();
    docker_ok(&["network", "disconnect", &env.network, &leader_c]);
    let new_leader = wait_until(30, "a new leader in the majority", || {
        json::<StatusView>(majority[0], &["status", "--json"])
            .and_then(|s| s.leader)
            .filter(|l| *l != leader)
    });
    // The majority keeps scheduling (a task placed on the cut-off worker is re-run once that
    // worker is declared lost); the isolated node cannot commit anything.
    let submit = [
        "submit",
        "--cpu",
        "10m",
        "--retries",
        "2",
        "--wait",
        "--",
        "true",
    ];
    let o = cli(majority[0], &submit);
    let during = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        o.status.success(),
        "majority submit: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        json::<TaskView>(majority[0], &["task", &during, "--json"])
            .map(|t| support::show(&t))
            .unwrap_or_default()
    );
    let o = cli(&leader_c, &["submit", "--cpu", "10m", "--", "true"]);
    assert!(
        !o.status.success(),
        "the isolated node must not grant writes: {}",
        String::from_utf8_lossy(&o.stdout)
    );

    // Reconnect: it rejoins, follows the new leader and catches up.
    docker_ok(&["network", "connect", &env.network, &leader_c]);
    wait_until(60, "the old leader to rejoin and catch up", || {
        let s = json::<StatusView>(&leader_c, &["status", "--json"])?;
        let t = json::<TaskView>(&leader_c, &["task", &during, "--json"])?;
        (s.leader.as_deref() == Some(new_leader.as_str()) && t.task.state == TaskState::Succeeded)
            .then_some(())
    });
}
