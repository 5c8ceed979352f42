//! Membership is earned: who may send which request over the mesh, and how a node gets in.
//!
//! The swarm key only lets a peer open a connection. What it may do then:
//! - anyone: `Hello` (formation) and `Join` (ask to be admitted);
//! - members and admitted nodes: Raft RPCs, sent as themselves (the id the RPC claims must be
//!   the one the peer's Noise identity proves);
//! - members: forwarded writes (a worker's own commands only for itself), reads, logs.
//!
//! A join is admitted by a join token, by the founding window (trust on first use, see
//! docs/security.md), or by an operator's approval; otherwise the leader records it as pending.

use std::time::Duration;

use openraft::BasicNode;
use testmesh_consensus::security::{AdmittedVia, JoinVerdict, SecurityCommand};
use testmesh_consensus::{Command, NodeId};

use crate::core::{Core, tokens};
use crate::mesh::rpc::WriteFailure;

/// A waiting node asks every 300 ms; its pending record is refreshed at most this often.
const PENDING_REFRESH: Duration = Duration::from_secs(10);

/// Whether `node` is in this replica's membership or was admitted (and not removed).
pub fn known(core: &Core, node: NodeId) -> bool {
    core.leadership.is_member(node) || core.ledger.read().security().is_admitted(node)
}

/// Whether this replica belongs to a cluster yet (has any voter).
fn initialised(core: &Core) -> bool {
    core.leadership
        .metrics()
        .membership_config
        .membership()
        .voter_ids()
        .next()
        .is_some()
}

/// Whether a Raft RPC (append, vote, snapshot) from `sender` that claims to come from `claimed`
/// may be handled. A node that is in no cluster yet takes them from anyone holding the key: it
/// has nothing to protect and must hear from the leader that is adding it (docs/security.md).
pub fn raft_allowed(core: &Core, sender: NodeId, claimed: NodeId) -> Result<(), String> {
    if sender != claimed {
        return Err(format!(
            "refused: peer {sender} sent a Raft request in the name of {claimed}"
        ));
    }
    if !initialised(core) || known(core, sender) {
        return Ok(());
    }
    Err(format!(
        "refused: {sender} is not a member of this cluster; a node must be admitted (join token \
         or `testmesh nodes approve`) before it takes part in Raft"
    ))
}

/// Whether a member may forward `cmd`: a worker's own reports must be about itself.
pub fn forwardable(cmd: &Command, sender: NodeId) -> Result<(), String> {
    let own = |w: NodeId, what: &str| {
        if w == sender {
            Ok(())
        } else {
            Err(format!(
                "refused: {sender} forwarded {what} for worker {w}; a node reports only its own"
            ))
        }
    };
    match cmd {
        Command::RegisterWorker { worker, .. } => own(worker.id, "a registration"),
        Command::TaskStarted { worker, .. } => own(*worker, "a task start"),
        Command::TaskFinished { worker, .. } => own(*worker, "a task end"),
        Command::Batch(cmds) => cmds.iter().try_for_each(|c| forwardable(c, sender)),
        _ => Ok(()),
    }
}

/// Whether a member-only request (write, read index, logs, standing) from `sender` may be
/// handled.
pub fn member_only(core: &Core, sender: NodeId, what: &str) -> Result<(), String> {
    if core.leadership.is_member(sender) {
        Ok(())
    } else {
        Err(format!(
            "refused: {what} is for members, and {sender} is not one (ask to join first)"
        ))
    }
}

/// The secret check of a presented join token: the token id when its secret matches the hash
/// the ledger keeps, else why not.
fn check_token(core: &Core, token: &str) -> Result<String, String> {
    let p = tokens::parse(token)
        .filter(|p| p.kind == tokens::Kind::Join)
        .ok_or_else(|| "join refused: the token is not a join token (tmj_…)".to_string())?;
    let ledger = core.ledger.read();
    let Some(t) = ledger.security().join_token(&p.id) else {
        return Err(format!(
            "join refused: join token {} is unknown or was revoked",
            p.id
        ));
    };
    if tokens::matches(&p.secret, &t.hash) {
        Ok(p.id)
    } else {
        Err(format!(
            "join refused: wrong secret for join token {}",
            p.id
        ))
    }
}

/// On the leader: admits `node` if it may be (and adds it as a learner); elsewhere passes the
/// request on to the leader.
pub async fn join(
    core: &Core,
    node: NodeId,
    addr: String,
    token: Option<String>,
) -> Result<(), WriteFailure> {
    let writer = &core.writer;
    if !writer.leadership().is_leader() {
        return writer
            .forward_join(node, addr, token)
            .await
            .map_err(Into::into);
    }
    if !core.leadership.is_member(node) {
        let now = core.now();
        // An admitted node (one that enrolled with its token, say) needs no token any more,
        // even one used up and since dropped from the ledger.
        let admitted = core.ledger.read().security().is_admitted(node);
        let checked = token
            .as_deref()
            .filter(|_| !admitted)
            .map(|t| check_token(core, t));
        let verdict = {
            let ledger = core.ledger.read();
            let sec = ledger.security();
            if !sec.founded() {
                return Err(WriteFailure::Unavailable(
                    "the cluster is being founded; ask again in a moment".into(),
                ));
            }
            sec.judge_join(
                node,
                checked.as_ref().map(|r| r.as_deref().map_err(Clone::clone)),
                now,
            )
        };
        match verdict {
            JoinVerdict::Admitted => {}
            JoinVerdict::Admit(via) => {
                let how = match &via {
                    AdmittedVia::Token(id) => format!("join token {id}"),
                    AdmittedVia::FoundingWindow => "the founding window".into(),
                    other => format!("{other:?}"),
                };
                security_write(core, SecurityCommand::Admit { node, via }).await?;
                tracing::info!("admitted {node} ({addr}) by {how}");
            }
            JoinVerdict::Pending => {
                let stale = core
                    .ledger
                    .read()
                    .security()
                    .pending()
                    .get(&node)
                    .is_none_or(|p| {
                        Duration::from_millis(now.saturating_sub(p.last_at)) >= PENDING_REFRESH
                    });
                if stale {
                    tracing::warn!(
                        "{node} ({addr}) asks to join without a join token: approve it with \
                         `testmesh nodes approve {node}` if you expect it"
                    );
                    let addr = addr.clone();
                    security_write(core, SecurityCommand::Pending { node, addr }).await?;
                }
                return Err(WriteFailure::Unavailable(format!(
                    "join pending: {node} waits for an operator (`testmesh nodes approve {node}` \
                     on a member), or start it with --join-token"
                )));
            }
            JoinVerdict::Refused(why) => return Err(WriteFailure::Unavailable(why)),
        }
    }
    if core.leadership.is_member(node) {
        return Ok(());
    }
    tracing::info!("adding {node} ({addr}) as a learner");
    writer
        .raft()
        .add_learner(node, BasicNode { addr }, false)
        .await
        .map(|_| ())
        .map_err(|e| WriteFailure::Unavailable(e.to_string()))
}

/// Commits a security command here (on the leader), turning a refusal into a failure.
async fn security_write(core: &Core, cmd: SecurityCommand) -> Result<(), WriteFailure> {
    let at = core.now();
    match core.writer.write_here(Command::Security { cmd, at }).await {
        Ok((Ok(_), _)) => Ok(()),
        Ok((Err(r), _)) => Err(WriteFailure::Unavailable(format!("join refused: {r}"))),
        Err(e) => Err(e.into()),
    }
}

/// On the leader: records the current members as admitted and opens the founding window, once
/// per ledger (a new cluster, or a ledger from before admissions were kept).
pub async fn found_if_needed(core: &Core, window: Duration) {
    if core.ledger.read().security().founded() || !core.leadership.is_leader() {
        return;
    }
    let members: Vec<NodeId> = core
        .leadership
        .metrics()
        .membership_config
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .collect();
    let now = core.now();
    let open_until = testmesh_consensus::UnixMillis(now.0 + window.as_millis() as u64);
    tracing::info!(
        "recording {} founding member(s); nodes holding the swarm key are admitted without a \
         join token for {}",
        members.len(),
        humantime::format_duration(window)
    );
    if let Err(e) = security_write(
        core,
        SecurityCommand::Found {
            members,
            open_until,
        },
    )
    .await
    {
        tracing::debug!("recording the founding members: {e:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testmesh_consensus::command::WorkerRegistration;
    use testmesh_consensus::{TaskId, UnixMillis};

    #[test]
    fn a_member_forwards_only_its_own_reports() {
        let me = NodeId(1);
        let started = |w| Command::TaskStarted {
            task: TaskId(1),
            attempt: 1,
            worker: NodeId(w),
            pid: 1,
            at: UnixMillis(0),
        };
        assert!(forwardable(&started(1), me).is_ok());
        assert!(forwardable(&started(2), me).is_err());
        assert!(forwardable(&Command::Batch(vec![started(1), started(2)]), me).is_err());
        let reg = Command::RegisterWorker {
            worker: WorkerRegistration {
                id: NodeId(3),
                hardware: Default::default(),
                capacity: Default::default(),
                labels: Default::default(),
                boot_id: 0,
                version: String::new(),
            },
            at: UnixMillis(0),
        };
        assert!(forwardable(&reg, me).is_err());
        assert!(forwardable(&reg, NodeId(3)).is_ok());
        let cancel = Command::Cancel {
            task: TaskId(1),
            at: UnixMillis(0),
        };
        assert!(
            forwardable(&cancel, me).is_ok(),
            "API writes come from any member"
        );
    }
}
