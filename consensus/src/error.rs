use thiserror::Error;

/// Errors of the storage layer; ledger rejections are [`crate::Rejected`] values, not errors.
#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "cannot open the ledger database {path}: {source}; is another testmesh node using this data dir?"
    )]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("ledger database error: {0}")]
    Db(String),
    #[error(
        "cannot decode stored {what}: {error}; the data dir may be from an incompatible version"
    )]
    Decode {
        what: &'static str,
        error: crate::codec::CodecError,
    },
    #[error("cannot encode {what}: {error}")]
    Encode {
        what: &'static str,
        error: crate::codec::CodecError,
    },
    #[error("stored snapshot has format {found}, this build reads format {expected}")]
    SnapshotFormat { found: u32, expected: u32 },
    #[error(
        "the ledger database {path} has storage format {found}, this build reads format {expected}; \
         move the data dir away and start afresh (other members re-replicate the cluster's ledger)"
    )]
    StorageFormat {
        path: String,
        found: u32,
        expected: u32,
    },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self { Error::Db(e.to_string()) }
        }
    )*};
}
db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
