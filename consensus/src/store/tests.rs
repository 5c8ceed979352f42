use openraft::testing::{StoreBuilder, Suite};

use super::*;
use crate::raft::{StorageError, TypeConfig};

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        // The suite builds twice at once: every build gets its own directory and file.
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm, _reader) = open(&dir.path().join("ledger.redb")).expect("open store");
        Ok((dir, log, sm))
    }
}

#[test]
fn passes_openraft_storage_suite() {
    Suite::test_all(RedbBuilder).unwrap();
}

#[test]
fn refuses_a_database_of_another_storage_format() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ledger.redb");
    drop(open(&path).expect("a new database opens"));
    // Reopening the same format works.
    drop(open(&path).expect("the same format reopens"));
    {
        let db = Database::create(&path).expect("raw open");
        let tx = db.begin_write().expect("tx");
        let old = crate::codec::encode(&1u32).expect("encode");
        tx.open_table(META)
            .expect("meta")
            .insert(FORMAT_KEY, old.as_slice())
            .expect("insert");
        tx.commit().expect("commit");
    }
    let err = open(&path).err().expect("an old format is refused");
    assert!(
        matches!(err, Error::StorageFormat { found: 1, .. }),
        "unexpected error: {err}"
    );
    assert!(err.to_string().contains("move the data dir away"), "{err}");
}

mod retention {
    use std::collections::BTreeMap;

    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, RaftSnapshotBuilder};

    use super::*;
    use crate::command::{Assignment, Command, WorkerRegistration};
    use crate::model::{Bytes, Capacity, Hardware, MilliCpu, NodeId, TaskId, UnixMillis};
    use crate::resources::Requirements;
    use crate::task::{Outcome, TaskSpec, TaskState};

    fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: crate::raft::LogId::new(CommittedLeaderId::new(1, NodeId(1)), index),
            payload: EntryPayload::Normal(cmd),
        }
    }

    /// Commands that register a worker and run `n` tasks to success.
    fn ran(n: u64) -> Vec<Command> {
        let at = UnixMillis(1);
        let mut cmds = vec![
            Command::RegisterWorker {
                worker: WorkerRegistration {
                    id: NodeId(1),
                    hardware: Hardware::default(),
                    capacity: Capacity {
                        cpu: MilliCpu(1 << 40),
                        memory: Bytes(1 << 40),
                        disk: Bytes(0),
                        gpus: Vec::new(),
                    },
                    labels: BTreeMap::new(),
                    boot_id: 1,
                    version: "test".into(),
                },
                at,
            },
            Command::Submit {
                request_id: "r".into(),
                tasks: vec![
                    TaskSpec {
                        argv: vec!["true".into()],
                        requirements: Requirements {
                            cpu: MilliCpu(1),
                            ..Default::default()
                        },
                        ..Default::default()
                    };
                    n as usize
                ],
                at,
            },
        ];
        for id in 1..=n {
            cmds.push(Command::Assign {
                assignments: vec![Assignment {
                    task: TaskId(id),
                    attempt: 1,
                    worker: NodeId(1),
                    gpus: Vec::new(),
                }],
                at,
            });
            cmds.push(Command::TaskFinished {
                task: TaskId(id),
                attempt: 1,
                worker: NodeId(1),
                outcome: Outcome {
                    stdout_tail: format!("output of {id}"),
                    ..Outcome::bare(TaskState::Succeeded)
                },
                at,
            });
        }
        cmds
    }

    async fn apply_all(sm: &mut StateMachine, cmds: Vec<Command>) {
        let entries: Vec<_> = cmds
            .into_iter()
            .enumerate()
            .map(|(i, c)| entry(i as u64 + 1, c))
            .collect();
        sm.apply(entries).await.unwrap();
    }

    #[tokio::test]
    async fn archived_tasks_leave_memory_and_stay_readable_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let (_log, mut sm, reader) = open(&path).unwrap();
        reader.archive().set_keep(3);
        let mut cmds = ran(5);
        cmds.push(Command::Archive {
            tasks: (1..=5).map(TaskId).collect(),
            at: UnixMillis(2),
        });
        apply_all(&mut sm, cmds).await;
        assert_eq!(reader.read().task_count(), 0);
        // The newest three stay in the archive; the two oldest were dropped, and it says so.
        let a = reader.archive();
        assert_eq!(a.len().unwrap().0, 3);
        match a.task(5).unwrap() {
            Lookup::Found(t) => {
                assert_eq!(t.state, TaskState::Succeeded);
                assert_eq!(
                    t.attempts[0].outcome.as_ref().unwrap().stdout_tail,
                    "output of 5"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.task(1).unwrap(), Lookup::Dropped);
        assert_eq!(a.task(99).unwrap(), Lookup::NotHere);
        drop((_log, sm, reader));
        // Still there after a restart.
        let (_log, _sm, reader) = open(&path).unwrap();
        assert!(matches!(
            reader.archive().task(4).unwrap(),
            Lookup::Found(_)
        ));
        assert_eq!(reader.archive().task(2).unwrap(), Lookup::Dropped);
    }

    #[tokio::test]
    async fn a_snapshot_over_the_limit_is_refused_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm, _reader) = open(&dir.path().join("a.redb")).unwrap();
        apply_all(&mut sm, ran(50)).await;
        let full = sm.build_snapshot().await.unwrap();
        let size = full.snapshot.get_ref().len();
        // Building: a ledger larger than the limit cannot be snapshotted silently.
        sm.set_snapshot_limit(size / 2);
        let e = sm.build_snapshot().await.unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        // Installing: a node with a lower limit refuses the same snapshot, whole.
        let dir2 = tempfile::tempdir().unwrap();
        let (_log2, mut other, reader2) = open(&dir2.path().join("b.redb")).unwrap();
        other.set_snapshot_limit(size / 2);
        let e = other
            .install_snapshot(&full.meta, full.snapshot.clone())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        assert_eq!(reader2.read().task_count(), 0);
        // Within the limit both ways it goes through.
        other.set_snapshot_limit(size);
        other
            .install_snapshot(&full.meta, full.snapshot)
            .await
            .unwrap();
        assert_eq!(reader2.read().task_count(), 50);
        assert_eq!(reader2.snapshot_bytes(), size as u64);
    }
}
