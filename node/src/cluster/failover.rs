//! A follower campaigns as soon as the leader's connection closes, instead of waiting for its
//! election timer.
//!
//! openraft 0.9 has a follower that knows a leader wait the leader lease (the longest election
//! timeout) plus one random election timeout after the last heartbeat, and every voter refuses
//! votes for the lease. A killed leader's sockets close at once, so the followers know it is
//! gone long before their timers say so: the first of them in node-id order asks for votes the
//! moment the lease has run out everywhere (it cannot have been renewed since the connection
//! closed), the next one a little later in case the first is gone too or loses. A leader cut off
//! without its connections closing (a partition) is still found by the timers.

use std::time::Duration;

use testmesh_consensus::NodeId;
use tokio::sync::{broadcast, watch};

use crate::core::Core;
use crate::mesh::MeshClient;
use crate::mesh::key::node_id_of;

/// Between one follower's campaign and the next one's: long enough for a vote round on a busy
/// machine, so that two followers do not split the vote.
const STAGGER: Duration = Duration::from_millis(150);

/// Margin past the lease, for clocks that tick a little apart between processes.
const MARGIN: Duration = Duration::from_millis(10);

/// When this node should campaign after the leader `lost` dropped its last connection: after
/// the lease, staggered by its rank among the remaining voters; None when it is not one of
/// them (a learner, or the leader itself).
pub fn campaign_delay(
    me: NodeId,
    lost: NodeId,
    voters: impl IntoIterator<Item = NodeId>,
    lease: Duration,
) -> Option<Duration> {
    let mut rest: Vec<NodeId> = voters.into_iter().filter(|v| *v != lost).collect();
    rest.sort_unstable();
    rest.dedup();
    let rank = rest.iter().position(|v| *v == me)?;
    Some(lease + MARGIN + STAGGER * rank as u32)
}

/// Watches the mesh for the leader's last connection closing and campaigns when
/// [`campaign_delay`] says, unless a newer term or leader was seen or the connection came back
/// meanwhile.
pub async fn campaign_when_leader_leaves(
    core: Core,
    mesh: MeshClient,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut gone = mesh.disconnects();
    let raft = core.writer.raft().clone();
    // openraft's lease is its longest election timeout.
    let lease = Duration::from_millis(raft.config().election_timeout_max);
    loop {
        let peer = tokio::select! {
            _ = shutdown.changed() => return,
            p = gone.recv() => match p {
                Ok(p) => p,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        let lost = node_id_of(&peer);
        let m = core.leadership.metrics();
        if m.current_leader != Some(lost) || lost == core.node {
            continue;
        }
        let voters = m.membership_config.membership().voter_ids();
        let Some(delay) = campaign_delay(core.node, lost, voters, lease) else {
            continue;
        };
        let seen = core.leadership.term();
        let (core, mesh, raft) = (core.clone(), mesh.clone(), raft.clone());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if core.leadership.term() != seen || mesh.peers().await.contains(&peer) {
                return;
            }
            tracing::info!(
                "the leader {lost} dropped its connection {delay:?} ago and no one took over: \
                 campaigning"
            );
            if let Err(e) = raft.trigger().elect().await {
                tracing::debug!("campaign: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_campaign_in_node_order_after_the_lease_and_others_never() {
        let lease = Duration::from_millis(300);
        let n = NodeId;
        let voters = [n(7), n(3), n(9)];
        // 9 led; 3 goes first, 7 one stagger later.
        assert_eq!(
            campaign_delay(n(3), n(9), voters, lease),
            Some(lease + MARGIN)
        );
        assert_eq!(
            campaign_delay(n(7), n(9), voters, lease),
            Some(lease + MARGIN + STAGGER)
        );
        // The old leader and a learner do not campaign.
        assert_eq!(campaign_delay(n(9), n(9), voters, lease), None);
        assert_eq!(campaign_delay(n(5), n(9), voters, lease), None);
    }
}
