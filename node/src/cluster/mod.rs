//! The Raft cluster over the mesh: the network adaptor, answering peers' requests, forming a
//! cluster from discovered peers, and growing it (learners promoted to voters up to a target).
//!
//! Formation: a node that is not in a cluster asks every connected peer for its state. If one
//! is in a cluster, it asks to join (as a learner; the leader promotes learners while voters are
//! fewer than `--voters`). If none is, after a short discovery window (or once `--bootstrap-expect`
//! nodes are seen) the node with the lowest id among the uninitialised ones initialises a
//! cluster — alone by default, or with all expected nodes as voters — and the others then join
//! it. Only one node initialises, so nodes started together end up in one cluster.

pub mod admission;
pub mod failover;
pub mod network;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use libp2p::PeerId;
use openraft::{BasicNode, ChangeMembers};
use testmesh_consensus::{NodeId, TaskId};
use tokio::sync::{mpsc, watch};

use crate::core::membership::{caught_up_learners, learners_to_promote, voters_without};
use crate::core::{Core, Writer};
use crate::mesh::key::node_id_of;
use crate::mesh::rpc::{Hello, Request, Response, Standing, WriteFailure};
use crate::mesh::{Inbound, MeshClient};

/// Inbound requests handled at once at most; more wait in the mesh's bounded queue (and past
/// its bound, the peer's request times out and is retried, as Raft does anyway).
const MAX_IN_FLIGHT: usize = 256;

/// Answers peers' requests until shutdown or until the mesh stops; each request is handled on
/// its own task (a Raft append must not wait behind a slow log read), at most
/// [`MAX_IN_FLIGHT`] at once.
pub async fn serve(
    mut inbound: mpsc::Receiver<Inbound>,
    core: Core,
    mesh: MeshClient,
    candidate: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut handlers = tokio::task::JoinSet::new();
    let refusals = Refusals::default();
    loop {
        while handlers.len() >= MAX_IN_FLIGHT {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = handlers.join_next() => {}
            }
        }
        let inb = tokio::select! {
            _ = shutdown.changed() => return,
            inb = inbound.recv() => match inb { Some(i) => i, None => return },
            Some(_) = handlers.join_next(), if !handlers.is_empty() => continue,
        };
        let (core, mesh, refusals) = (core.clone(), mesh.clone(), refusals.clone());
        handlers.spawn(async move {
            let resp = handle(inb.request, inb.peer, &mesh, &core, candidate, &refusals).await;
            let _ = inb.reply.send(resp);
        });
    }
}

async fn handle(
    req: Request,
    from: PeerId,
    mesh: &MeshClient,
    core: &Core,
    candidate: bool,
    refusals: &Refusals,
) -> Response {
    let (raft, writer, leadership) = (core.writer.raft(), &core.writer, &core.leadership);
    let sender = node_id_of(&from);
    if let Some(claimed) = raft_claim(&req)
        && let Err(e) = admission::raft_allowed(core, sender, claimed.unwrap_or(sender))
    {
        note_refusal(core, refusals, sender, &e);
        return raft_refused(&req, e);
    }
    match req {
        Request::Hello => {
            let m = leadership.metrics();
            Response::Hello(Hello {
                node: core.node,
                addr: mesh.member_addr().await,
                initialized: m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .next()
                    .is_some(),
                leader: m.current_leader,
                candidate,
                cluster: core
                    .ledger
                    .read()
                    .scaling()
                    .cluster_id()
                    .map(str::to_string),
            })
        }
        Request::AppendEntries(rpc) => {
            Response::AppendEntries(raft.append_entries(rpc).await.map_err(|e| e.to_string()))
        }
        Request::Vote(rpc) => Response::Vote(raft.vote(rpc).await.map_err(|e| e.to_string())),
        Request::InstallSnapshot(rpc) => {
            Response::InstallSnapshot(raft.install_snapshot(rpc).await.map_err(|e| e.to_string()))
        }
        Request::Write(cmd) => {
            if let Err(e) = admission::member_only(core, sender, "a write")
                .and_then(|()| admission::forwardable(&cmd, sender))
            {
                note_refusal(core, refusals, sender, &e);
                return Response::Write(Err(WriteFailure::Unavailable(e)));
            }
            Response::Write(writer.write_here(cmd).await.map_err(Into::into))
        }
        Request::Join { node, addr, token } => {
            // The id must be the one the joiner's identity proves, and a join passed on by
            // someone else must come from a member.
            let claimed: Option<PeerId> = crate::mesh::parse_member_addr(&addr).map(|(p, _)| p);
            let forwarded_by_member = || leadership.is_member(sender);
            match claimed {
                Some(c) if node_id_of(&c) == node && (c == from || forwarded_by_member()) => {}
                _ => {
                    return Response::Join(Err(WriteFailure::Unavailable(
                        "join refused: the node id does not match the peer's identity".into(),
                    )));
                }
            }
            Response::Join(admission::join(core, node, addr, token).await)
        }
        Request::Leave { node } => {
            // Only a node itself, or a member passing its request on, may take it out.
            if node != node_id_of(&from) && !leadership.is_member(node_id_of(&from)) {
                return Response::Leave(Err(WriteFailure::Unavailable(
                    "leave refused: only the node itself or a member may ask".into(),
                )));
            }
            Response::Leave(remove_member(writer, node).await)
        }
        Request::ReadIndex => {
            if let Err(e) = admission::member_only(core, sender, "a read index") {
                return Response::ReadIndex(Err(WriteFailure::Unavailable(e)));
            }
            Response::ReadIndex(writer.read_index_here().await.map_err(Into::into))
        }
        Request::Standing => {
            if let Err(e) = admission::member_only(core, sender, "standing") {
                return Response::Standing(Standing::Unsure(e));
            }
            Response::Standing(writer.standing_of(sender).await)
        }
        Request::Logs {
            task,
            attempt,
            stream,
            offset,
            limit,
        } => {
            if let Err(e) = admission::member_only(core, sender, "reading logs") {
                return Response::Logs(Err(e));
            }
            Response::Logs(
                core.logs
                    .read_local(
                        TaskId(task),
                        attempt,
                        stream,
                        offset,
                        limit.min(MAX_LOG_READ),
                    )
                    .map_err(|e| e.to_string()),
            )
        }
        Request::Code {
            hash,
            offset,
            limit,
        } => {
            if let Err(e) = admission::member_only(core, sender, "fetching code") {
                return Response::Code(Err(e));
            }
            let code = core.code.clone();
            Response::Code(
                tokio::task::spawn_blocking(move || code.read_local(&hash, offset, limit))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string())),
            )
        }
        Request::Artifact {
            task,
            attempt,
            path,
            offset,
            limit,
        } => {
            if let Err(e) = admission::member_only(core, sender, "fetching artifacts") {
                return Response::Artifact(Err(e));
            }
            Response::Artifact(crate::core::artifacts::read_local(
                &core.data_dir,
                TaskId(task),
                attempt,
                &path,
                offset,
                limit.min(crate::core::code::CHUNK),
            ))
        }
    }
}

/// The node a Raft RPC (append, vote, snapshot) says it comes from; `None` for other requests.
fn raft_claim(req: &Request) -> Option<Option<NodeId>> {
    match req {
        Request::AppendEntries(r) => Some(r.vote.leader_id().voted_for()),
        Request::Vote(r) => Some(r.vote.leader_id().voted_for()),
        Request::InstallSnapshot(r) => Some(r.vote.leader_id().voted_for()),
        _ => None,
    }
}

/// The refusal of a Raft RPC, in its own answer type.
fn raft_refused(req: &Request, e: String) -> Response {
    match req {
        Request::Vote(_) => Response::Vote(Err(e)),
        Request::InstallSnapshot(_) => Response::InstallSnapshot(Err(e)),
        _ => Response::AppendEntries(Err(e)),
    }
}

/// Most bytes of a log one request reads, whatever `limit` it asks for (the reply must fit a
/// frame, and a peer must not make this node read a whole large file into memory).
const MAX_LOG_READ: u64 = 4 << 20;

/// How often a refused peer is logged: enough to see an intruder (or a removed node still
/// trying) without a line per heartbeat.
const REFUSAL_NOTE_EVERY: Duration = Duration::from_secs(60);

/// When each refused peer was last logged.
type Refusals = std::sync::Arc<std::sync::Mutex<BTreeMap<NodeId, std::time::Instant>>>;

fn note_refusal(core: &Core, refusals: &Refusals, sender: NodeId, e: &str) {
    let now = core.clock.instant();
    let mut r = refusals.lock().unwrap_or_else(|p| p.into_inner());
    if r.len() > 1_000 {
        r.retain(|_, t| now.duration_since(*t) < REFUSAL_NOTE_EVERY);
    }
    let due = r
        .get(&sender)
        .is_none_or(|t| now.duration_since(*t) >= REFUSAL_NOTE_EVERY);
    if due {
        r.insert(sender, now);
        tracing::warn!("{e} (further refusals of {sender} are logged once a minute)");
    }
}

/// On the leader: takes `node` out of the membership (a voter is replaced by a caught-up
/// learner where one exists); elsewhere: passes the request on to the leader. A leader that
/// removes itself keeps leading until the change commits, then steps down.
pub async fn remove_member(writer: &Writer, node: NodeId) -> Result<(), WriteFailure> {
    let m = writer.leadership().metrics();
    if m.current_leader != Some(writer.me()) {
        return writer.forward_leave(node).await.map_err(Into::into);
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
    writer
        .raft()
        .change_membership(change, false)
        .await
        .map(|_| ())
        .map_err(|e| WriteFailure::Unavailable(e.to_string()))
}

pub struct FormationOptions {
    /// How long the set of peers must stay the same before the lowest id initialises a cluster.
    pub window: Duration,
    pub bootstrap_expect: Option<usize>,
    /// False for a node given `--join` seeds (and no `--bootstrap-expect`): it joins a cluster
    /// and never starts one of its own.
    pub may_initialise: bool,
    /// A join token to present (`--join-token`).
    pub join_token: Option<String>,
}

/// How often a node waiting to join says why.
const WAITING_NOTE_EVERY: Duration = Duration::from_secs(10);

/// Runs until this node is a member of a cluster.
pub async fn form(
    core: Core,
    mesh: MeshClient,
    opts: FormationOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let me = core.node;
    let raft = core.writer.raft();
    let started = core.clock.instant();
    let mut announced = false;
    // The peers seen last time round and since when that set has not changed: the lowest id
    // decides only once discovery has settled, not a fixed time after start.
    let mut seen: BTreeSet<NodeId> = BTreeSet::new();
    let mut settled_since = started;
    let mut noted = None;
    let mut refused_noted = None;
    loop {
        if core.leadership.is_member(me) {
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
        // A connected peer that did not answer is not absent: it may be the lowest id.
        let all_answered = hellos.len() == peers.len();
        let now_seen: BTreeSet<NodeId> = hellos.iter().map(|(_, h)| h.node).collect();
        if now_seen != seen || !all_answered {
            seen = now_seen;
            settled_since = core.clock.instant();
        }
        if let Some((peer, _)) = hellos.iter().find(|(_, h)| h.initialized) {
            let req = Request::Join {
                node: me,
                addr: mesh.member_addr().await,
                token: opts.join_token.clone(),
            };
            match mesh.request(*peer, req, Duration::from_secs(5)).await {
                Ok(Response::Join(Ok(()))) => {
                    if !announced {
                        tracing::info!("joining the cluster through {peer}");
                        announced = true;
                    }
                }
                Ok(Response::Join(Err(WriteFailure::Unavailable(why))))
                    if why.starts_with("join ") =>
                {
                    // Pending or refused: say so now and then, not every round.
                    let now = core.clock.instant();
                    if refused_noted.is_none_or(|t| now.duration_since(t) >= WAITING_NOTE_EVERY) {
                        refused_noted = Some(now);
                        tracing::warn!("not admitted yet (node {me}): {why}");
                    }
                }
                other => tracing::debug!("join through {peer}: {other:?}"),
            }
        } else if !opts.may_initialise {
            let now = core.clock.instant();
            if noted.is_none_or(|t| now.duration_since(t) >= WAITING_NOTE_EVERY) {
                noted = Some(now);
                tracing::warn!(
                    "waiting to join a cluster: no peer that belongs to one has answered yet \
                     ({} peer(s) connected). A node given --join never starts a cluster of its \
                     own; check that a --join seed is up and reachable",
                    peers.len()
                );
            }
        } else {
            // Only candidates are counted (and become the first voters): a peer that was given
            // only --join will never start a cluster, so waiting for it would wait for ever.
            // (Nodes given --bootstrap-expect are candidates.)
            let mut fresh: BTreeMap<NodeId, String> = hellos
                .iter()
                .filter(|(_, h)| h.candidate)
                .map(|(_, h)| (h.node, h.addr.clone()))
                .collect();
            fresh.insert(me, mesh.member_addr().await);
            let ready = match opts.bootstrap_expect {
                Some(n) => fresh.len() >= n,
                None => core.clock.instant().duration_since(settled_since) >= opts.window,
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

/// How often a member looks for connected peers of another cluster.
const FOREIGN_EVERY: Duration = Duration::from_secs(5);

/// Looks for connected peers that belong to another cluster (formed separately, or another
/// cluster sharing the swarm key). Two ledgers cannot be merged, so it says so loudly and lists
/// them in the status. Only peers outside this cluster's membership are asked.
pub async fn watch_foreign(core: Core, mesh: MeshClient, mut shutdown: watch::Receiver<bool>) {
    let mut reported: BTreeSet<NodeId> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(FOREIGN_EVERY) => {}
        }
        let mine = core
            .ledger
            .read()
            .scaling()
            .cluster_id()
            .map(str::to_string);
        let Some(mine) = mine.filter(|_| core.leadership.is_member(core.node)) else {
            continue;
        };
        let mut found = BTreeMap::new();
        for p in mesh.peers().await {
            if core.leadership.is_member(node_id_of(&p)) {
                continue;
            }
            let Ok(Response::Hello(h)) = mesh
                .request(p, Request::Hello, Duration::from_secs(2))
                .await
            else {
                continue;
            };
            if let Some(theirs) = h.cluster.filter(|c| h.initialized && *c != mine) {
                if reported.insert(h.node) {
                    tracing::error!(
                        "peer {} belongs to another cluster ({theirs}; this one is {mine}):                          clusters that formed separately do not merge. Stop one side's nodes,                          remove their data dirs and start them with --join to a member of the                          other",
                        h.node
                    );
                }
                found.insert(h.node, theirs);
            }
        }
        reported.retain(|n| found.contains_key(n));
        *core
            .foreign_clusters
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = found;
    }
}

/// On the leader: record the founding members once, and promote caught-up learners to voters
/// while there are fewer than `target`.
pub async fn grow(
    core: Core,
    target: usize,
    founding_window: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let (me, writer) = (core.node, &core.writer);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let m = core.leadership.metrics();
        if m.current_leader != Some(me) {
            continue;
        }
        admission::found_if_needed(&core, founding_window).await;
        let membership = m.membership_config.membership();
        // Nodes an operator removed leave the membership (the API only records the removal).
        let removed: Vec<NodeId> = {
            let ledger = core.ledger.read();
            let gone = ledger.security().removed();
            membership
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| gone.contains_key(id))
                .collect()
        };
        for node in removed {
            tracing::info!("taking removed node {node} out of the membership");
            if let Err(e) = remove_member(writer, node).await {
                tracing::warn!("removing {node}: {e:?}");
            }
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.len() >= target {
            continue;
        }
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let caught_up: BTreeSet<NodeId> = caught_up_learners(&m, &learners)
            .into_iter()
            .filter(|l| writer.may_vote(*l))
            .collect();
        let caught_up = learners_to_promote(voters.len(), &caught_up, target);
        if caught_up.is_empty() {
            continue;
        }
        tracing::info!("promoting {:?} to voter(s)", caught_up);
        if let Err(e) = writer
            .raft()
            .change_membership(ChangeMembers::AddVoterIds(caught_up), false)
            .await
        {
            tracing::warn!("promotion failed: {e}");
        }
    }
}
