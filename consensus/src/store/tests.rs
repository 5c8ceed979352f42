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
