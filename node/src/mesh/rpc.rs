//! What nodes ask each other over `/testmesh/rpc/4` (2: the log stream became an enum; 3: `Hello`
//! says whether the node may start a cluster; 4: a join carries a join token; 5: code and artifact
//! fetches): Raft RPCs,
//! forwarded writes, joins, and cluster status for formation. Encoded with bincode through a size-limited codec.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use testmesh_consensus::raft::TypeConfig;
use testmesh_consensus::{Applied, Command, NodeId, Rejected, codec};

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/testmesh/rpc/5");
/// Largest frame read; snapshot chunks are far smaller (openraft sends 3 MiB chunks).
const MAX_FRAME: u64 = 64 << 20;

/// Which output of a task attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// A node's view of the cluster, for formation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub node: NodeId,
    /// The member address (peer id and listen addresses) of the node that answers.
    pub addr: String,
    pub initialized: bool,
    pub leader: Option<NodeId>,
    /// Whether it may start a cluster (no `--join`, or `--bootstrap-expect`): only candidates
    /// count when the lowest id is chosen, so a node waiting for its seed is never waited for.
    pub candidate: bool,
    /// The cluster it belongs to (the ledger's cluster id), once it has one.
    pub cluster: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Hello,
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A write forwarded to the leader.
    Write(Command),
    /// Add a node to the cluster (as a learner); `addr` is its member address. A node that is
    /// not admitted yet is admitted by a valid join token, the founding window, or an
    /// operator's approval; otherwise it is recorded as pending.
    Join {
        node: NodeId,
        addr: String,
        token: Option<String>,
    },
    /// Leader: confirm leadership with a quorum and return the index a linearizable read must
    /// wait for.
    ReadIndex,
    /// Read part of a task's log file on the worker that ran it.
    Logs {
        task: u64,
        attempt: u32,
        stream: LogStream,
        offset: u64,
        limit: u64,
    },
    /// Remove a node from the cluster's membership (it is leaving on purpose).
    Leave {
        node: NodeId,
    },
    /// Leader: does a quorum still follow you, and am I (the asking worker) still in good
    /// standing? A worker that cannot get `Good` in time stops its attempts (fencing).
    Standing,
    /// Part of a shipped working tree (see `core::code`) this node holds.
    Code {
        hash: String,
        offset: u64,
        limit: u64,
    },
    /// Part of an artifact of an attempt this node ran.
    Artifact {
        task: u64,
        attempt: u32,
        path: String,
        offset: u64,
        limit: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Hello(Hello),
    AppendEntries(Result<AppendEntriesResponse<NodeId>, String>),
    Vote(Result<VoteResponse<NodeId>, String>),
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, String>),
    /// The verdict and the log index it was committed at.
    Write(Result<(Result<Applied, Rejected>, u64), WriteFailure>),
    Join(Result<(), WriteFailure>),
    Logs(Result<(Vec<u8>, u64), String>),
    ReadIndex(Result<u64, WriteFailure>),
    Leave(Result<(), WriteFailure>),
    Standing(Standing),
    /// The bytes and the whole file's length.
    Code(Result<(Vec<u8>, u64), String>),
    Artifact(Result<(Vec<u8>, u64), String>),
}

/// A leader's answer to [`Request::Standing`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Standing {
    /// A quorum follows this leader and the worker is not marked lost.
    Good,
    /// The ledger has marked the worker lost: its attempts were moved away.
    Lost,
    /// Not (or no longer) the leader, or it cannot confirm a quorum.
    Unsure(String),
}

/// Why a forwarded write or join did not happen.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WriteFailure {
    NotLeader(Option<NodeId>),
    Unavailable(String),
}

#[derive(Debug, Clone, Default)]
pub struct Codec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as u64;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut buf = Vec::with_capacity(len as usize);
    io.take(len).read_to_end(&mut buf).await?;
    if buf.len() as u64 != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "truncated frame",
        ));
    }
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    if bytes.len() as u64 > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message over the frame limit",
        ));
    }
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

fn invalid(e: codec::CodecError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Request> {
        codec::decode(&read_frame(io).await?).map_err(invalid)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Response> {
        codec::decode(&read_frame(io).await?).map_err(invalid)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()> {
        write_frame(io, &codec::encode(&req).map_err(invalid)?).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()> {
        write_frame(io, &codec::encode(&res).map_err(invalid)?).await
    }
}
