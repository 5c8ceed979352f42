//! The nemesis' plan: which fault when, for how long, drawn from a seed so that a failing run
//! can be replayed. Pure: the targets (which node leads) are resolved when a fault is applied.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// kill -9 of the leader; restarted on the same data dir after the hold
    KillLeader,
    /// kill -9 of a random node; restarted after the hold
    KillNode,
    /// kill -9 of two nodes at once (a majority of three: writes stop until they are back)
    KillTwo,
    /// SIGSTOP of a node's process for less than half of --dead-after
    PauseShort,
    /// SIGSTOP of a node's process for longer than --dead-after (its tasks keep running)
    PauseLong,
    /// The leader cut off from every other node (network namespaces)
    IsolateLeader,
    /// A minority cut off from the majority (network namespaces)
    Partition,
    /// Two halves that cannot reach each other and one node that reaches both
    Bridge,
    /// One follower's link slowed to 2 Mbit/s each way, and a ~1 MB entry committed meanwhile
    SlowLink,
}

impl FaultKind {
    /// Faults that need each node in its own network namespace.
    pub fn needs_netns(self) -> bool {
        matches!(
            self,
            FaultKind::IsolateLeader
                | FaultKind::Partition
                | FaultKind::Bridge
                | FaultKind::SlowLink
        )
    }

    /// The name the command line takes (`slow-link`).
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }

    pub const ALL: [FaultKind; 9] = [
        FaultKind::KillLeader,
        FaultKind::KillNode,
        FaultKind::KillTwo,
        FaultKind::PauseShort,
        FaultKind::PauseLong,
        FaultKind::IsolateLeader,
        FaultKind::Partition,
        FaultKind::Bridge,
        FaultKind::SlowLink,
    ];
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    /// From the start of the run.
    pub at: Duration,
    pub kind: FaultKind,
    /// How long the fault lasts before it is healed.
    pub hold: Duration,
    /// Picks the victim(s) among the candidates when applied.
    pub pick: u64,
}

/// Faults one after another over `duration`: a quiet gap of `gap` to `gap` + 5 s, then a fault
/// held for a time that suits its kind (a pause is short or long against `dead_after`).
pub fn plan(
    seed: u64,
    duration: Duration,
    kinds: &[FaultKind],
    dead_after: Duration,
    gap: Duration,
) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    if kinds.is_empty() {
        return out;
    }
    let gap_ms = gap.as_millis() as u64;
    let mut at = Duration::from_millis(rng.random_range(gap_ms..=gap_ms + 3000));
    while at < duration {
        let kind = kinds[rng.random_range(0..kinds.len())];
        let ms = |lo: f64, hi: f64, rng: &mut StdRng| {
            Duration::from_millis(rng.random_range((lo * 1000.0) as u64..=(hi * 1000.0) as u64))
        };
        let d = dead_after.as_secs_f64();
        let hold = match kind {
            FaultKind::PauseShort => ms(0.1 * d, 0.4 * d, &mut rng),
            FaultKind::PauseLong => ms(1.5 * d, 2.5 * d, &mut rng),
            // Down long enough, sometimes, for the node to be declared lost.
            FaultKind::KillLeader | FaultKind::KillNode | FaultKind::KillTwo => {
                ms(0.5, 2.0 * d, &mut rng)
            }
            FaultKind::IsolateLeader | FaultKind::Partition | FaultKind::Bridge => {
                ms(0.5 * d, 2.0 * d, &mut rng)
            }
            FaultKind::SlowLink => ms(8.0, 15.0, &mut rng),
        };
        out.push(Planned {
            at,
            kind,
            hold,
            pick: rng.random(),
        });
        at += hold + Duration::from_millis(rng.random_range(gap_ms..=gap_ms + 5000));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Duration = Duration::from_secs(3);

    #[test]
    fn faults_are_named_as_the_command_line_takes_them() {
        assert_eq!(FaultKind::SlowLink.name(), "slow-link");
        assert_eq!(FaultKind::KillLeader.name(), "kill-leader");
    }

    #[test]
    fn the_same_seed_gives_the_same_plan_and_pauses_straddle_dead_after() {
        let d = Duration::from_secs(4);
        let a = plan(7, Duration::from_secs(300), &FaultKind::ALL, d, G);
        assert_eq!(a, plan(7, Duration::from_secs(300), &FaultKind::ALL, d, G));
        assert_ne!(a, plan(8, Duration::from_secs(300), &FaultKind::ALL, d, G));
        assert!(a.len() > 10, "{a:?}");
        for p in &a {
            match p.kind {
                FaultKind::PauseShort => assert!(p.hold < d / 2),
                FaultKind::PauseLong => assert!(p.hold > d),
                _ => {}
            }
        }
        // Faults never overlap.
        for w in a.windows(2) {
            assert!(w[0].at + w[0].hold < w[1].at);
        }
        assert!(plan(1, Duration::from_secs(60), &[], d, G).is_empty());
    }
}
