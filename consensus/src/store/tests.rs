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
