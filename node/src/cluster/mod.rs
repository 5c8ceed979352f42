//! The Raft cluster over the mesh: the network adaptor, answering peers' requests, forming a
//! cluster from discovered peers, and growing it (learners promoted to voters up to a target).
//!
//! Formation: a node that is not in a cluster asks every connected peer for its state. If one
//! is in a cluster, it asks to join (as a learner; the leader promotes learners while voters are
//! fewer than `--voters`). If none is, after a short discovery window (or once `--bootstrap-expect`
//! nodes are seen) the node with the lowest id among the uninitialised ones initialises a
//! cluster — alone by default, or with all expected nodes as voters — and the others then join
//! it. Only one node initialises, so nodes started together end up in one cluster.

pub mod network;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use libp2p::PeerId;
use openraft::{BasicNode, ChangeMembers};
use testmesh_consensus::NodeId;
use testmesh_consensus::raft::Raft;
use tokio::sync::{mpsc, watch};

use crate::mesh::key::node_id_of;
use crate::mesh::rpc::{Hello, Request, Response, WriteFailure};
use crate::mesh::{Inbound, MeshClient};
use crate::writer::{WriteError, Writer};
use crate::{agent, clock};

/// Whether `node` appears in the cluster's membership (as voter or learner).
pub fn is_member(raft: &Raft, node: NodeId) -> bool {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&node)
        .is_some()
}

/// Answers peers' requests until the mesh stops.
pub async fn serve(
    mut inbound: mpsc::Receiver<Inbound>,
    mesh: MeshClient,
    raft: Raft,
    writer: Writer,
    me: NodeId,
    data_dir: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let inb = tokio::select! {
            _ = shutdown.changed() => return,
            inb = inbound.recv() => match inb { Some(i) => i, None => return },
        };
        let (raft, writer, data_dir, mesh) =
            (raft.clone(), writer.clone(), data_dir.clone(), mesh.clone());
        tokio::spawn(async move {
            let resp = handle(inb.request, inb.peer, &mesh, &raft, &writer, me, &data_dir).await;
            let _ = inb.reply.send(resp);
        });
    }
}

async fn handle(
    req: Request,
    from: PeerId,
    mesh: &MeshClient,
    raft: &Raft,
    writer: &Writer,
    me: NodeId,
    data_dir: &std::path::Path,
) -> Response {
    match req {
        Request::Hello => {
            let m = raft.metrics().borrow().clone();
            Response::Hello(Hello {
                node: me,
                addr: mesh.member_addr().await,
                initialized: m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .next()
                    .is_some(),
                leader: m.current_leader,
            })
        }
        Request::AppendEntries(rpc) => {
            Response::AppendEntries(raft.append_entries(rpc).await.map_err(|e| e.to_string()))
        }
        Request::Vote(rpc) => Response::Vote(raft.vote(rpc).await.map_err(|e| e.to_string())),
        Request::InstallSnapshot(rpc) => {
            Response::InstallSnapshot(raft.install_snapshot(rpc).await.map_err(|e| e.to_string()))
        }
        Request::Write(cmd) => Response::Write(writer.write_indexed(cmd).await.map_err(failure)),
        Request::Join { node, addr } => {
            // The id must be the one the joiner's identity proves, and a join passed on by
            // someone else must come from a member.
            let claimed: Option<PeerId> = crate::mesh::parse_member_addr(&addr).map(|(p, _)| p);
            let forwarded_by_member = || is_member(raft, node_id_of(&from));
            match claimed {
                Some(c) if node_id_of(&c) == node && (c == from || forwarded_by_member()) => {}
                _ => {
                    return Response::Join(Err(WriteFailure::Unavailable(
                        "join refused: the node id does not match the peer's identity".into(),
                    )));
                }
            }
            Response::Join(add_learner(raft, writer, node, addr).await)
        }
        Request::Leave { node } => {
            // Only a node itself, or a member passing its request on, may take it out.
            if node != node_id_of(&from) && !is_member(raft, node_id_of(&from)) {
                return Response::Leave(Err(WriteFailure::Unavailable(
                    "leave refused: only the node itself or a member may ask".into(),
                )));
            }
            Response::Leave(remove_member(raft, writer, node).await)
        }
        Request::ReadIndex => Response::ReadIndex(writer.read_index_here().await.map_err(failure)),
        Request::Logs {
            task,
            attempt,
            stream,
            offset,
            limit,
        } => {
            let path =
                agent::log_path(data_dir, testmesh_consensus::TaskId(task), attempt, &stream);
            Response::Logs(read_log(&path, offset, limit).map_err(|e| e.to_string()))
        }
    }
}

fn failure(e: WriteError) -> WriteFailure {
    match e {
        WriteError::NotLeader(l) => WriteFailure::NotLeader(l),
        WriteError::Unavailable(m) => WriteFailure::Unavailable(m),
    }
}

/// Reads up to `limit` bytes from `offset`; returns the bytes and the file's length.
pub fn read_log(
    path: &std::path::Path,
    offset: u64,
    limit: u64,
) -> std::io::Result<(Vec<u8>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(offset.min(len)))?;
    let mut buf = Vec::new();
    f.take(limit).read_to_end(&mut buf)?;
    Ok((buf, len))
}

async fn add_learner(
    raft: &Raft,
    writer: &Writer,
    node: NodeId,
    addr: String,
) -> Result<(), WriteFailure> {
    let leader = raft.metrics().borrow().current_leader;
    if leader != Some(writer.me()) {
        // Not the leader: pass the join on, so a joiner can ask any member.
        return writer.forward_join(node, addr).await.map_err(failure);
    }
    if is_member(raft, node) {
        return Ok(());
    }
    tracing::info!("adding {node} ({addr}) as a learner");
    raft.add_learner(node, BasicNode { addr }, false)
        .await
        .map(|_| ())
        .map_err(|e| WriteFailure::Unavailable(e.to_string()))
}

/// On the leader: takes `node` out of the membership (a voter is replaced by a caught-up
/// learner where one exists); elsewhere: passes the request on to the leader. A leader that
/// removes itself keeps leading until the change commits, then steps down.
pub async fn remove_member(raft: &Raft, writer: &Writer, node: NodeId) -> Result<(), WriteFailure> {
    let m = raft.metrics().borrow().clone();
    if m.current_leader != Some(writer.me()) {
        return writer.forward_leave(node).await.map_err(failure);
    }
    let membership = m.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let change = if voters.contains(&node) {
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let mut caught_up = caught_up_learners(&m, &learners);
        caught_up.retain(|l| writer.may_vote(*l));
        let Some(new) = voters_without(&voters, node, &caught_up) else {
            return Err(WriteFailure::Unavailable(
                "the last voter cannot leave: the cluster would have no one to keep its ledger"
                    .into(),
            ));
        };
        tracing::info!("{node} is leaving: voters become {new:?}");
        ChangeMembers::ReplaceAllVoters(new)
    } else if membership.get_node(&node).is_some() {
        tracing::info!("{node} is leaving (learner)");
        ChangeMembers::RemoveNodes(BTreeSet::from([node]))
    } else {
        return Ok(());
    };
    raft.change_membership(change, false)
        .await
        .map(|_| ())
        .map_err(|e| WriteFailure::Unavailable(e.to_string()))
}

/// Learners whose log is within 100 entries of the leader's.
pub fn caught_up_learners(
    m: &openraft::RaftMetrics<NodeId, BasicNode>,
    learners: &BTreeSet<NodeId>,
) -> BTreeSet<NodeId> {
    let last = m.last_log_index.unwrap_or(0);
    learners
        .iter()
        .copied()
        .filter(|l| {
            m.replication
                .as_ref()
                .and_then(|r| r.get(l).cloned().flatten())
                .is_some_and(|matched| matched.index + 100 >= last)
        })
        .collect()
}

/// The voters once `leaving` is gone, with the first of `candidates` in its place; `None` when
/// it is the only voter and no one can take over.
pub fn voters_without(
    voters: &BTreeSet<NodeId>,
    leaving: NodeId,
    candidates: &BTreeSet<NodeId>,
) -> Option<BTreeSet<NodeId>> {
    let mut new: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != leaving).collect();
    if let Some(c) = candidates
        .iter()
        .find(|c| **c != leaving && !voters.contains(c))
    {
        new.insert(*c);
    }
    (!new.is_empty()).then_some(new)
}

/// The voters once every silent voter is replaced by a live, caught-up learner (one for one,
/// while such learners last); `None` when nothing can be replaced. A silent voter without a
/// replacement stays: removing it would not make the cluster any safer.
pub fn voters_replacing_silent(
    voters: &BTreeSet<NodeId>,
    live_caught_up_learners: &BTreeSet<NodeId>,
    silent: &BTreeSet<NodeId>,
) -> Option<BTreeSet<NodeId>> {
    let dead = voters.iter().filter(|v| silent.contains(v));
    let fresh = live_caught_up_learners
        .iter()
        .filter(|l| !silent.contains(l) && !voters.contains(l));
    let pairs: Vec<(NodeId, NodeId)> = dead.copied().zip(fresh.copied()).collect();
    if pairs.is_empty() {
        return None;
    }
    let mut new = voters.clone();
    for (out, inn) in pairs {
        new.remove(&out);
        new.insert(inn);
    }
    Some(new)
}

pub struct FormationOptions {
    /// How long to look for peers before the lowest id initialises a cluster.
    pub window: Duration,
    pub bootstrap_expect: Option<usize>,
}

/// Runs until this node is a member of a cluster.
pub async fn form(
    raft: Raft,
    mesh: MeshClient,
    me: NodeId,
    opts: FormationOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let started = clock::instant();
    let mut announced = false;
    loop {
        if is_member(&raft, me) {
            tracing::info!("member of the cluster");
            return;
        }
        let peers = mesh.peers().await;
        let asks = peers.iter().map(|p| {
            let mesh = mesh.clone();
            let p = *p;
            async move {
                (
                    p,
                    mesh.request(p, Request::Hello, Duration::from_secs(2))
                        .await,
                )
            }
        });
        let hellos: Vec<(PeerId, Hello)> = futures::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(|(p, r)| match r {
                Ok(Response::Hello(h)) => Some((p, h)),
                _ => None,
            })
            .collect();
        if let Some((peer, _)) = hellos.iter().find(|(_, h)| h.initialized) {
            let req = Request::Join {
                node: me,
                addr: mesh.member_addr().await,
            };
            match mesh.request(*peer, req, Duration::from_secs(5)).await {
                Ok(Response::Join(Ok(()))) => {
                    if !announced {
                        tracing::info!("joining the cluster through {peer}");
                        announced = true;
                    }
                }
                other => tracing::debug!("join through {peer}: {other:?}"),
            }
        } else {
            let mut fresh: BTreeMap<NodeId, String> = hellos
                .iter()
                .map(|(_, h)| (h.node, h.addr.clone()))
                .collect();
            fresh.insert(me, mesh.member_addr().await);
            let ready = match opts.bootstrap_expect {
                Some(n) => fresh.len() >= n,
                None => clock::instant().duration_since(started) >= opts.window,
            };
            if ready && fresh.keys().next() == Some(&me) {
                let members: BTreeMap<NodeId, BasicNode> = match opts.bootstrap_expect {
                    Some(n) => fresh
                        .into_iter()
                        .take(n)
                        .map(|(id, addr)| (id, BasicNode { addr }))
                        .collect(),
                    None => BTreeMap::from([(
                        me,
                        BasicNode {
                            addr: mesh.member_addr().await,
                        },
                    )]),
                };
                tracing::info!("initialising a cluster with {} voter(s)", members.len());
                if let Err(e) = raft.initialize(members).await {
                    tracing::debug!("initialise: {e}");
                }
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
    }
}

/// On the leader: promote caught-up learners to voters while there are fewer than `target`.
pub async fn grow(
    raft: Raft,
    writer: Writer,
    me: NodeId,
    target: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let m = raft.metrics().borrow().clone();
        if m.current_leader != Some(me) {
            continue;
        }
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.len() >= target {
            continue;
        }
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let caught_up: BTreeSet<NodeId> = caught_up_learners(&m, &learners)
            .into_iter()
            .filter(|l| writer.may_vote(*l))
            .take(target - voters.len())
            .collect();
        if caught_up.is_empty() {
            continue;
        }
        tracing::info!("promoting {:?} to voter(s)", caught_up);
        if let Err(e) = raft
            .change_membership(ChangeMembers::AddVoterIds(caught_up), false)
            .await
        {
            tracing::warn!("promotion failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<NodeId> {
        ids.iter().map(|i| NodeId(*i)).collect()
    }

    #[test]
    fn a_leaving_voter_is_replaced_by_a_learner_when_there_is_one() {
        assert_eq!(
            voters_without(&set(&[1, 2, 3]), NodeId(2), &set(&[4, 5])),
            Some(set(&[1, 3, 4]))
        );
        assert_eq!(
            voters_without(&set(&[1, 2, 3]), NodeId(2), &set(&[])),
            Some(set(&[1, 3]))
        );
        assert_eq!(
            voters_without(&set(&[1]), NodeId(1), &set(&[2])),
            Some(set(&[2]))
        );
        assert_eq!(voters_without(&set(&[1]), NodeId(1), &set(&[])), None);
    }

    #[test]
    fn silent_voters_are_swapped_for_live_learners_one_for_one() {
        // Two voters silent, one live learner: only one swap is possible.
        assert_eq!(
            voters_replacing_silent(&set(&[1, 2, 3]), &set(&[4, 5]), &set(&[2, 3, 5])),
            Some(set(&[1, 3, 4]))
        );
        // Nobody silent, or nobody to take over: no change.
        assert_eq!(
            voters_replacing_silent(&set(&[1, 2, 3]), &set(&[4]), &set(&[])),
            None
        );
        assert_eq!(
            voters_replacing_silent(&set(&[1, 2, 3]), &set(&[]), &set(&[3])),
            None
        );
    }
}
