use std::path::PathBuf;

use thiserror::Error;

/// Errors of the node library; the binary reports them through anyhow.
#[derive(Debug, Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] testmesh_consensus::Error),
    #[error("raft: {0}")]
    Raft(String),
    #[error(transparent)]
    Predict(#[from] testmesh_planner::Error),
    #[error(
        "cannot listen on {addr}: {source}; is another node using this port? choose one with --http"
    )]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
