//! Entry points for the fuzzers (`fuzz/`, `cargo fuzz`): every decoder of input that comes
//! from outside the process, each behind a function that takes raw bytes. A decoder may refuse
//! its input; it must never panic, hang or allocate without bound. The unit test below replays
//! the seed corpora and every crash ever found, so a regression fails `cargo test` too.

use std::path::Path;

use testmesh_consensus::NodeId;

/// Raft RPCs, forwarded writes and joins: a frame from a mesh peer.
pub fn mesh_frame(data: &[u8]) {
    let _ = testmesh_consensus::codec::decode::<crate::mesh::rpc::Request>(data);
    let _ = testmesh_consensus::codec::decode::<crate::mesh::rpc::Response>(data);
}

/// A gossiped statistics message, decoded and checked as the mesh does.
pub fn gossip_stats(data: &[u8]) {
    let _ = crate::stats::validate(data, NodeId(1));
}

/// A ledger command as a log entry carries it.
pub fn ledger_command(data: &[u8]) {
    let _ = testmesh_consensus::codec::decode::<testmesh_consensus::Command>(data);
}

/// The body of `POST /api/v1/tasks`, validated task by task.
pub fn api_submit(data: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<crate::core::submit::SubmitRequest>(data) {
        for t in &r.tasks {
            let _ = crate::core::submit::to_spec(t);
        }
    }
}

/// Query strings: a watch cursor (`since=`), durations, sizes, CPU and GPU amounts, labels.
pub fn query_values(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = s.parse::<crate::api::tasks::Cursor>() {
        // What a list says as `next` reads back as the same position.
        let again: crate::api::tasks::Cursor = c.to_string().parse().expect("cursor round trip");
        assert_eq!(again, c, "{s:?}");
    }
    let _ = crate::units::parse_cpu(s);
    let _ = crate::units::parse_size(s);
    let _ = crate::units::parse_duration(s);
    let _ = crate::units::parse_gpus(s, testmesh_consensus::model::Bytes(1 << 30));
    let _ = crate::units::parse_key_value(s);
    let _ = crate::config::parse_retention(s);
}

/// A node's config file.
pub fn config_toml(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::config::parse_file(s, Path::new("fuzz.toml"));
    }
}

/// A run file (`testmesh run FILE`).
pub fn run_file(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::runfile::parse(s, "fuzz.toml");
    }
}

/// The swarm key file.
pub fn swarm_key(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::mesh::key::parse_swarm_key(s);
    }
}

/// A `TESTMESH_METRIC` line from a task's output.
pub fn metric_line(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = testmesh_consensus::task::BenchMetric::parse_line(s);
    }
}

/// A workload trace (the Alibaba GPU trace's CSV format), as nodes and as pods.
pub fn trace_csv(data: &[u8]) {
    thread_local! {
        static FILE: tempfile::NamedTempFile = tempfile::NamedTempFile::new().expect("temp file");
    }
    FILE.with(|f| {
        if std::fs::write(f.path(), data).is_ok() {
            let _ = crate::cli::bench_replay::load_nodes(f.path());
            let _ = crate::cli::bench_replay::load_pods(f.path(), 1.0, 1.0);
        }
    });
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its directory under `fuzz/`.
pub const TARGETS: [(&str, Target); 10] = [
    ("mesh_frame", mesh_frame),
    ("gossip_stats", gossip_stats),
    ("ledger_command", ledger_command),
    ("api_submit", api_submit),
    ("query_values", query_values),
    ("config_toml", config_toml),
    ("run_file", run_file),
    ("swarm_key", swarm_key),
    ("metric_line", metric_line),
    ("trace_csv", trace_csv),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds and every input that ever crashed a target still decode without a panic.
    #[test]
    fn seed_corpora_and_past_crashes_replay_cleanly() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut replayed = 0;
        for (name, f) in TARGETS {
            for kind in ["seeds", "regressions"] {
                let Ok(dir) = std::fs::read_dir(root.join(kind).join(name)) else {
                    continue;
                };
                for e in dir.flatten() {
                    let data = std::fs::read(e.path()).unwrap();
                    f(&data);
                    replayed += 1;
                }
            }
        }
        assert!(replayed >= TARGETS.len(), "only {replayed} inputs replayed");
    }
}

/// Writes the binary seeds (`cargo test -p testmesh --lib write_binary_seeds -- --ignored`);
/// the text seeds are plain files.
#[cfg(test)]
mod seeds {
    use testmesh_consensus::codec::encode;
    use testmesh_consensus::{Command, TaskId, UnixMillis};

    use super::*;
    use crate::mesh::rpc::{Request, Response, Standing};

    #[test]
    #[ignore]
    fn write_binary_seeds() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
        let put = |target: &str, name: &str, bytes: Vec<u8>| {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        };
        let lost = Command::WorkerLost {
            worker: NodeId(7),
            at: UnixMillis(1_700_000_000_000),
        };
        let give = Command::GiveBack {
            attempts: vec![(TaskId(3), 1), (TaskId(4), 2)],
            at: UnixMillis(5),
        };
        put("ledger_command", "worker_lost", encode(&lost).unwrap());
        put("ledger_command", "give_back", encode(&give).unwrap());
        put("mesh_frame", "hello", encode(&Request::Hello).unwrap());
        put(
            "mesh_frame",
            "standing",
            encode(&Request::Standing).unwrap(),
        );
        put(
            "mesh_frame",
            "write",
            encode(&Request::Write(lost)).unwrap(),
        );
        put(
            "mesh_frame",
            "join",
            encode(&Request::Join {
                node: NodeId(9),
                addr: "/ip4/10.0.0.9/tcp/7071".into(),
                token: Some("tmj_00000000_00000000000000000000000000000000".into()),
            })
            .unwrap(),
        );
        put(
            "mesh_frame",
            "standing_answer",
            encode(&Response::Standing(Standing::Unsure("no leader".into()))).unwrap(),
        );
        let m = crate::stats::StatsMessage {
            version: crate::stats::STATS_VERSION,
            node: NodeId(1),
            at: UnixMillis(1_700_000_000_000),
            sample: Default::default(),
            running_tasks: 2,
        };
        put("gossip_stats", "sample", encode(&m).unwrap());
    }
}
