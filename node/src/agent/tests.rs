//! The agent against a scripted fake of the operating system (named as such: `FakeProcesses`)
//! and a real one-node ledger; the real-process behaviour is tested end to end in tests/.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use testmesh_consensus::command::Assignment;
use testmesh_consensus::task::{TaskSpec, TaskState};
use testmesh_consensus::{Applied, Command, NodeId, TaskId};
use tokio::sync::mpsc;

use super::*;
use crate::core::submit::{Amount, TaskRequest, to_spec};
use crate::core::testing::TestNode;

/// One spawn the fake saw: pid, argv and environment.
type Spawned = (u32, Vec<String>, Vec<(String, String)>);

/// What the fake saw, shared with the test.
#[derive(Default)]
struct Script {
    spawned: Vec<Spawned>,
    signals: Vec<(u32, Signal)>,
    exits: Option<mpsc::Sender<Exit>>,
}

/// A FAKE of the operating system: records spawns and signals; exits come from the test.
#[derive(Clone, Default)]
struct FakeProcesses(Arc<Mutex<Script>>);

impl Processes for FakeProcesses {
    fn exits(&mut self) -> mpsc::Receiver<Exit> {
        let (tx, rx) = mpsc::channel(16);
        self.0.lock().unwrap().exits = Some(tx);
        rx
    }

    fn spawn(&mut self, l: Launch<'_>) -> Result<u32, SpawnError> {
        let mut s = self.0.lock().unwrap();
        let pid = 100 + s.spawned.len() as u32;
        s.spawned.push((pid, l.argv.to_vec(), l.env));
        Ok(pid)
    }

    fn signal(&mut self, pid: u32, signal: Signal) {
        self.0.lock().unwrap().signals.push((pid, signal));
    }
}

fn exit(pid: u32, code: Option<i32>, signal: Option<i32>) -> Exit {
    Exit {
        pid,
        code,
        signal,
        max_rss_bytes: 1 << 20,
        cpu_time: Duration::from_millis(5),
    }
}

/// A task submitted and assigned to this node (the agent's own worker, 1).
async fn assigned(node: &TestNode, timeout: Option<&str>) -> TaskId {
    std::fs::create_dir_all(node.core.data_dir.join("logs")).unwrap();
    let spec: TaskSpec = to_spec(&TaskRequest {
        command: vec!["train".into(), "--fast".into()],
        cpu: Some(Amount::Number(1.0)),
        timeout: timeout.map(str::to_string),
        env: [("SEED".to_string(), "7".to_string())].into(),
        ..Default::default()
    })
    .unwrap();
    let task = match node
        .write(Command::Submit {
            request_id: "r".into(),
            tasks: vec![spec],
            at: node.core.now(),
        })
        .await
    {
        Applied::Submitted { tasks, .. } => tasks[0],
        other => panic!("{other:?}"),
    };
    node.write(Command::Assign {
        assignments: vec![Assignment {
            task,
            worker: NodeId(1),
            attempt: 1,
            gpus: Vec::new(),
        }],
        at: node.core.now(),
    })
    .await;
    task
}

fn state(node: &TestNode, task: TaskId) -> TaskState {
    node.core.ledger.read().task(task).unwrap().state
}

/// A node whose agent (on the fake) has started one assigned task: the pieces a test drives.
struct Started {
    node: TestNode,
    fake: FakeProcesses,
    agent: Agent<FakeProcesses>,
    _exits: mpsc::Receiver<Exit>,
    task: TaskId,
    pid: u32,
}

async fn started(timeout: Option<&str>) -> Started {
    let node = TestNode::start().await;
    node.register(NodeId(1), 4, 0).await;
    let fake = FakeProcesses::default();
    let mut agent = Agent::new(node.core.clone(), fake.clone());
    let exits = agent.processes.exits();
    let task = assigned(&node, timeout).await;
    agent.sync().await;
    let pid = fake.0.lock().unwrap().spawned[0].0;
    Started {
        node,
        fake,
        agent,
        _exits: exits,
        task,
        pid,
    }
}

#[tokio::test]
async fn an_assigned_task_is_started_with_its_environment_and_its_exit_reported() {
    let Started {
        node,
        fake,
        mut agent,
        task,
        pid,
        ..
    } = started(None).await;
    let (_, argv, env) = fake.0.lock().unwrap().spawned[0].clone();
    assert_eq!(argv, ["train", "--fast"]);
    let var = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(var("SEED").as_deref(), Some("7"));
    assert_eq!(var("TESTMESH_TASK_ID"), Some(task.to_string()));
    assert_eq!(var("TESTMESH_ATTEMPT").as_deref(), Some("1"));
    // No GPUs reserved: the task must see none rather than all.
    assert_eq!(var("CUDA_VISIBLE_DEVICES").as_deref(), Some(""));
    node.wait_for("the start to be reported", |l| {
        l.task(task).unwrap().state == TaskState::Running
    })
    .await;
    // A second look at the same assignment starts nothing more.
    agent.sync().await;
    assert_eq!(fake.0.lock().unwrap().spawned.len(), 1);

    agent.on_exit(exit(pid, Some(3), None)).await;
    node.wait_for("the failure to be reported", |l| {
        l.task(task).unwrap().state.is_final()
    })
    .await;
    let l = node.core.ledger.read();
    let outcome = l.task(task).unwrap().attempts[0].outcome.clone().unwrap();
    assert_eq!(outcome.state, TaskState::Failed);
    assert_eq!(outcome.message.as_deref(), Some("exited with code 3"));
    drop(l);
    node.stop().await;
}

#[tokio::test]
async fn a_timeout_sends_term_then_kill_after_the_grace_period() {
    let Started {
        node,
        fake,
        mut agent,
        task,
        pid,
        ..
    } = started(Some("2s")).await;

    node.clock.advance(Duration::from_millis(1_999));
    agent.on_deadlines();
    assert!(fake.0.lock().unwrap().signals.is_empty());
    node.clock.advance(Duration::from_millis(2));
    agent.on_deadlines();
    assert_eq!(fake.0.lock().unwrap().signals, [(pid, Signal::Term)]);
    // Ignored SIGTERM: SIGKILL once the grace period is over, not before.
    node.clock
        .advance(agent.kill_grace - Duration::from_millis(1));
    agent.on_deadlines();
    assert_eq!(fake.0.lock().unwrap().signals.len(), 1);
    node.clock.advance(Duration::from_millis(2));
    agent.on_deadlines();
    assert_eq!(
        fake.0.lock().unwrap().signals,
        [(pid, Signal::Term), (pid, Signal::Kill)]
    );
    agent.on_exit(exit(pid, None, Some(9))).await;
    node.wait_for("the timeout to be reported", |l| {
        l.task(task).unwrap().state.is_final()
    })
    .await;
    assert_eq!(state(&node, task), TaskState::TimedOut);
    node.stop().await;
}

#[tokio::test]
async fn a_cancelled_task_is_stopped_and_reported_cancelled() {
    let Started {
        node,
        fake,
        mut agent,
        task,
        pid,
        ..
    } = started(None).await;
    node.write(Command::Cancel {
        task,
        at: node.core.now(),
    })
    .await;
    agent.sync().await;
    assert_eq!(fake.0.lock().unwrap().signals, [(pid, Signal::Term)]);
    agent.on_exit(exit(pid, None, Some(15))).await;
    node.wait_for("the cancel to be reported", |l| {
        l.task(task).unwrap().state.is_final()
    })
    .await;
    assert_eq!(state(&node, task), TaskState::Cancelled);
    node.stop().await;
}

/// Fencing: out of standing nothing starts and what runs is killed and reported lost; a boot
/// whose registration the ledger does not show yet starts nothing either.
#[tokio::test]
async fn out_of_standing_nothing_starts_and_running_attempts_are_killed() {
    let node = TestNode::start().await;
    node.register(NodeId(1), 4, 0).await; // boot id 1
    let task = assigned(&node, None).await;
    let spawned = |f: &FakeProcesses| f.0.lock().unwrap().spawned.len();

    // A later boot of this node: the ledger's assignment is not its own yet.
    let fake = FakeProcesses::default();
    let mut agent = Agent::new(node.core.clone(), fake.clone()).with_boot_id(2);
    let _exits = agent.processes.exits();
    agent.sync().await;
    assert_eq!(spawned(&fake), 0, "nothing before this boot is registered");

    let fake = FakeProcesses::default();
    let (good, standing) = tokio::sync::watch::channel(false);
    let mut agent = Agent::new(node.core.clone(), fake.clone())
        .with_boot_id(1)
        .with_fencing(standing, Duration::from_secs(5));
    let _exits = agent.processes.exits();
    agent.sync().await;
    assert_eq!(spawned(&fake), 0, "nothing before the leader confirms");
    good.send_replace(true);
    agent.sync().await;
    assert_eq!(spawned(&fake), 1);
    let pid = fake.0.lock().unwrap().spawned[0].0;
    // The lease runs out: killed at once, no grace period.
    good.send_replace(false);
    agent.fence();
    assert_eq!(fake.0.lock().unwrap().signals, [(pid, Signal::Kill)]);
    agent.on_exit(exit(pid, None, Some(9))).await;
    node.wait_for("the fenced attempt to be reported", |l| {
        l.task(task).unwrap().attempt == 1 && l.task(task).unwrap().state == TaskState::Pending
    })
    .await;
    let l = node.core.ledger.read();
    let t = l.task(task).unwrap();
    let outcome = t.attempts[0].outcome.clone().unwrap();
    assert_eq!(outcome.state, TaskState::Lost);
    assert!(outcome.message.unwrap().starts_with("fenced"));
    assert_eq!(t.handed_back, 1, "not the task's failure: no retry used");
    drop(l);
    node.stop().await;
}

#[test]
fn input_files_stay_inside_the_task_directory() {
    use testmesh_consensus::suite::InputFile;
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = |path: &str| InputFile {
        path: path.into(),
        content: "a\n".into(),
    };
    super::write_inputs(d, &[file(".testmesh/tests.txt")]).unwrap();
    assert_eq!(
        std::fs::read_to_string(d.join(".testmesh/tests.txt")).unwrap(),
        "a\n"
    );
    // A shipped tree may hold symbolic links: nothing is written through them.
    std::os::unix::fs::symlink(outside.path(), d.join("out")).unwrap();
    let e = super::write_inputs(d, &[file("out/tests.txt")]).unwrap_err();
    assert!(e.contains("outside"), "{e}");
    std::os::unix::fs::symlink(outside.path().join("f"), d.join("link.txt")).unwrap();
    let e = super::write_inputs(d, &[file("link.txt")]).unwrap_err();
    assert!(e.contains("symbolic link"), "{e}");
    assert!(super::write_inputs(d, &[file("../escape")]).is_err());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}
