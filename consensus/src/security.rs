//! Who belongs to the cluster and who may use its API, replicated with the rest of the ledger:
//! admitted nodes, join requests waiting for an operator, join tokens, API tokens and the audit
//! trail of what tokens did.
//!
//! Secrets never enter the log: a token is stored as the SHA-256 of its secret part, computed on
//! the node that created it; the node that checks a token hashes what it was given and compares.
//! Applying a command is deterministic like the rest of the ledger: expiry is judged against the
//! command's own `at`, never a clock.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::command::Rejected;
use crate::model::{NodeId, UnixMillis};

/// Most API tokens and most join tokens kept (expired join tokens are dropped first).
pub const MAX_TOKENS: usize = 1_000;
/// Most join requests waiting for approval; the oldest is dropped for a new one.
pub const MAX_PENDING: usize = 256;
/// Audit records kept, oldest dropped first.
pub const AUDIT_LIMIT: usize = 10_000;
/// Most nodes remembered as removed.
pub const MAX_REMOVED: usize = 10_000;

/// What an API token allows. Each scope includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Status, tasks, logs, runs, reports, the dashboard.
    #[default]
    Read,
    /// Read, plus submitting and cancelling tasks and runs.
    Submit,
    /// Everything: workers, policy, tokens, nodes, the audit trail.
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s.to_ascii_lowercase().as_str() {
            "read" | "read-only" | "readonly" => Some(Scope::Read),
            "submit" => Some(Scope::Submit),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A cluster-wide API token (its secret's hash only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    /// Hex SHA-256 of the secret part.
    pub hash: String,
    pub created_at: UnixMillis,
    pub expires_at: Option<UnixMillis>,
}

/// A token that admits nodes to the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub id: String,
    pub hash: String,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub uses_left: u32,
    /// What it is for, e.g. "instance of launch intent 7".
    pub note: String,
}

/// How a node came to be admitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdmittedVia {
    /// A member when the cluster was founded (or when this ledger first recorded admissions).
    Founder,
    /// Joined while the founding window was open (trust on first use).
    FoundingWindow,
    /// Presented this join token.
    Token(String),
    /// An operator approved it.
    Approval,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admission {
    pub at: UnixMillis,
    pub via: AdmittedVia,
}

/// A node that asked to join without a token, waiting for `testmesh nodes approve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingJoin {
    /// Its member address (peer id and listen addresses).
    pub addr: String,
    pub first_at: UnixMillis,
    pub last_at: UnixMillis,
}

/// One thing a token (or a node acting on its own) did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at: UnixMillis,
    /// The API token's id and name, or "node-local" for a node's own `api-token` file.
    pub actor: String,
    /// The node whose API took the request.
    pub node: NodeId,
    /// e.g. "POST /api/v1/tasks".
    pub action: String,
    /// e.g. "3 task(s)", "refused: ...".
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityCommand {
    /// The first leader of a cluster (or of a ledger from before admissions were kept) records
    /// the current members as admitted and how long joins are admitted without a token.
    Found {
        members: Vec<NodeId>,
        open_until: UnixMillis,
    },
    CreateApiToken(ApiToken),
    RevokeApiToken {
        id: String,
    },
    CreateJoinToken(JoinToken),
    RevokeJoinToken {
        id: String,
    },
    /// Admit a node. With `via: Token(id)` one use of the token is taken; the ledger refuses an
    /// expired or used-up token (the secret was checked by the leader before it wrote this).
    Admit {
        node: NodeId,
        via: AdmittedVia,
    },
    /// A node asked to join without a token and waits for approval.
    Pending {
        node: NodeId,
        addr: String,
    },
    /// An operator removed the node: it is no longer admitted and may not join again without a
    /// new token or approval.
    Remove {
        node: NodeId,
    },
    Audit(Vec<AuditRecord>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityApplied {
    Done,
    /// The command changed nothing (already so).
    Unchanged,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    founded: bool,
    /// Joins with only the swarm key are admitted until then (the founding window).
    open_until: UnixMillis,
    api_tokens: BTreeMap<String, ApiToken>,
    join_tokens: BTreeMap<String, JoinToken>,
    admitted: BTreeMap<NodeId, Admission>,
    pending: BTreeMap<NodeId, PendingJoin>,
    /// Removed nodes and when.
    removed: BTreeMap<NodeId, UnixMillis>,
    audit: VecDeque<AuditRecord>,
}

/// What the leader does with a join request (see [`Security::judge_join`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinVerdict {
    /// Already admitted: add it to the membership.
    Admitted,
    /// Admit it this way (a write), then add it.
    Admit(AdmittedVia),
    /// Record it as pending; it waits for an operator.
    Pending,
    /// Refuse, saying why.
    Refused(String),
}

fn invalid(m: impl Into<String>) -> Rejected {
    Rejected::InvalidSecurity(m.into())
}

impl Security {
    pub fn founded(&self) -> bool {
        self.founded
    }

    pub fn open_until(&self) -> UnixMillis {
        self.open_until
    }

    pub fn api_tokens(&self) -> impl Iterator<Item = &ApiToken> {
        self.api_tokens.values()
    }

    pub fn api_token(&self, id: &str) -> Option<&ApiToken> {
        self.api_tokens.get(id)
    }

    pub fn join_tokens(&self) -> impl Iterator<Item = &JoinToken> {
        self.join_tokens.values()
    }

    pub fn join_token(&self, id: &str) -> Option<&JoinToken> {
        self.join_tokens.get(id)
    }

    pub fn admitted(&self) -> &BTreeMap<NodeId, Admission> {
        &self.admitted
    }

    pub fn is_admitted(&self, node: NodeId) -> bool {
        self.admitted.contains_key(&node)
    }

    pub fn pending(&self) -> &BTreeMap<NodeId, PendingJoin> {
        &self.pending
    }

    pub fn removed(&self) -> &BTreeMap<NodeId, UnixMillis> {
        &self.removed
    }

    pub fn audit(&self) -> &VecDeque<AuditRecord> {
        &self.audit
    }

    /// Whether the join token `id` can be used at `now` (exists, not expired, uses left).
    pub fn join_token_usable(&self, id: &str, now: UnixMillis) -> Result<&JoinToken, String> {
        let t = self
            .join_tokens
            .get(id)
            .ok_or_else(|| format!("join token {id} is unknown or was revoked"))?;
        if now >= t.expires_at {
            return Err(format!("join token {id} has expired"));
        }
        if t.uses_left == 0 {
            return Err(format!("join token {id} has been used up"));
        }
        Ok(t)
    }

    /// The leader's decision on a join request from `node`. `token` is the id of a join token
    /// whose secret the leader has already checked (`Ok`), or why the presented token is not
    /// good (`Err`); `None` when none was presented.
    pub fn judge_join(
        &self,
        node: NodeId,
        token: Option<Result<&str, String>>,
        now: UnixMillis,
    ) -> JoinVerdict {
        match token {
            Some(Err(why)) => return JoinVerdict::Refused(why),
            Some(Ok(id)) => {
                if self.admitted.contains_key(&node) {
                    return JoinVerdict::Admitted;
                }
                return match self.join_token_usable(id, now) {
                    Ok(_) => JoinVerdict::Admit(AdmittedVia::Token(id.to_string())),
                    Err(why) => JoinVerdict::Refused(why),
                };
            }
            None => {}
        }
        if self.admitted.contains_key(&node) {
            return JoinVerdict::Admitted;
        }
        if self.removed.contains_key(&node) {
            return JoinVerdict::Refused(format!(
                "node {node} was removed by an operator; it may join again with a new join token \
                 (--join-token) or after `testmesh nodes approve {node}`"
            ));
        }
        if self.founded && now < self.open_until {
            return JoinVerdict::Admit(AdmittedVia::FoundingWindow);
        }
        JoinVerdict::Pending
    }

    pub fn apply(
        &mut self,
        cmd: &SecurityCommand,
        at: UnixMillis,
    ) -> Result<SecurityApplied, Rejected> {
        use SecurityApplied::{Done, Unchanged};
        match cmd {
            SecurityCommand::Found {
                members,
                open_until,
            } => {
                if self.founded {
                    return Ok(Unchanged);
                }
                self.founded = true;
                self.open_until = *open_until;
                for m in members {
                    self.admitted.entry(*m).or_insert(Admission {
                        at,
                        via: AdmittedVia::Founder,
                    });
                }
                Ok(Done)
            }
            SecurityCommand::CreateApiToken(t) => {
                check_token_fields(&t.id, &t.hash)?;
                if t.name.len() > 200 || t.name.contains('\0') {
                    return Err(invalid("a token name is at most 200 bytes, without NUL"));
                }
                if self.api_tokens.contains_key(&t.id) {
                    return Err(invalid(format!("token id {} exists", t.id)));
                }
                // Expired API tokens go first when the table is full.
                self.api_tokens
                    .retain(|_, k| k.expires_at.is_none_or(|e| e > at));
                if self.api_tokens.len() >= MAX_TOKENS {
                    return Err(invalid(format!(
                        "the cluster holds {MAX_TOKENS} API tokens; revoke some first"
                    )));
                }
                self.api_tokens.insert(t.id.clone(), t.clone());
                Ok(Done)
            }
            SecurityCommand::RevokeApiToken { id } => Ok(if self.api_tokens.remove(id).is_some() {
                Done
            } else {
                Unchanged
            }),
            SecurityCommand::CreateJoinToken(t) => {
                check_token_fields(&t.id, &t.hash)?;
                if t.note.len() > 200 {
                    return Err(invalid("a join token's note is at most 200 bytes"));
                }
                if self.join_tokens.contains_key(&t.id) {
                    return Err(invalid(format!("token id {} exists", t.id)));
                }
                self.join_tokens
                    .retain(|_, k| k.expires_at > at && k.uses_left > 0);
                if self.join_tokens.len() >= MAX_TOKENS {
                    return Err(invalid(format!(
                        "the cluster holds {MAX_TOKENS} live join tokens; revoke some first"
                    )));
                }
                self.join_tokens.insert(t.id.clone(), t.clone());
                Ok(Done)
            }
            SecurityCommand::RevokeJoinToken { id } => {
                Ok(if self.join_tokens.remove(id).is_some() {
                    Done
                } else {
                    Unchanged
                })
            }
            SecurityCommand::Admit { node, via } => {
                if let AdmittedVia::Token(id) = via {
                    self.join_token_usable(id, at).map_err(invalid)?;
                    if let Some(t) = self.join_tokens.get_mut(id) {
                        t.uses_left -= 1;
                    }
                }
                self.pending.remove(node);
                self.removed.remove(node);
                if self.admitted.contains_key(node) {
                    return Ok(Unchanged);
                }
                self.admitted.insert(
                    *node,
                    Admission {
                        at,
                        via: via.clone(),
                    },
                );
                Ok(Done)
            }
            SecurityCommand::Pending { node, addr } => {
                if self.admitted.contains_key(node) {
                    return Ok(Unchanged);
                }
                if addr.len() > 4096 {
                    return Err(invalid("a member address is at most 4096 bytes"));
                }
                if let Some(p) = self.pending.get_mut(node) {
                    p.last_at = at;
                    p.addr.clone_from(addr);
                    return Ok(Done);
                }
                if self.pending.len() >= MAX_PENDING {
                    let oldest = self
                        .pending
                        .iter()
                        .min_by_key(|(_, p)| p.last_at)
                        .map(|(n, _)| *n);
                    if let Some(n) = oldest {
                        self.pending.remove(&n);
                    }
                }
                self.pending.insert(
                    *node,
                    PendingJoin {
                        addr: addr.clone(),
                        first_at: at,
                        last_at: at,
                    },
                );
                Ok(Done)
            }
            SecurityCommand::Remove { node } => {
                let was =
                    self.admitted.remove(node).is_some() | self.pending.remove(node).is_some();
                if self.removed.len() >= MAX_REMOVED && !self.removed.contains_key(node) {
                    let oldest = self
                        .removed
                        .iter()
                        .min_by_key(|(_, t)| **t)
                        .map(|(n, _)| *n);
                    if let Some(n) = oldest {
                        self.removed.remove(&n);
                    }
                }
                self.removed.insert(*node, at);
                Ok(if was { Done } else { Unchanged })
            }
            SecurityCommand::Audit(records) => {
                for r in records {
                    if r.actor.len() > 300 || r.action.len() > 300 || r.detail.len() > 1000 {
                        return Err(invalid("an audit record's fields are too long"));
                    }
                }
                for r in records {
                    if self.audit.len() >= AUDIT_LIMIT {
                        self.audit.pop_front();
                    }
                    self.audit.push_back(r.clone());
                }
                Ok(Done)
            }
        }
    }
}

fn check_token_fields(id: &str, hash: &str) -> Result<(), Rejected> {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if id.is_empty() || id.len() > 32 || !hex(id) {
        return Err(invalid("a token id is 1 to 32 hex digits"));
    }
    if hash.len() != 64 || !hex(hash) {
        return Err(invalid("a token hash is 64 hex digits (SHA-256)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(non_snake_case)]
    fn T(ms: u64) -> UnixMillis {
        UnixMillis(ms)
    }

    const H: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    /// Founds the cluster with node 1, the founding window open until 1,000 ms.
    fn found_with_node_1(s: &mut Security) {
        let found = SecurityCommand::Found {
            members: vec![NodeId(1)],
            open_until: T(1_000),
        };
        s.apply(&found, T(0)).unwrap();
    }

    fn join_token(id: &str, expires_at: UnixMillis, uses: u32) -> SecurityCommand {
        SecurityCommand::CreateJoinToken(JoinToken {
            id: id.into(),
            hash: H.into(),
            created_at: T(0),
            expires_at,
            uses_left: uses,
            note: String::new(),
        })
    }

    #[test]
    fn founding_window_then_pending_then_approval() {
        let mut s = Security::default();
        assert_eq!(s.judge_join(NodeId(9), None, T(0)), JoinVerdict::Pending);
        found_with_node_1(&mut s);
        assert_eq!(
            s.judge_join(NodeId(1), None, T(5_000)),
            JoinVerdict::Admitted
        );
        assert_eq!(
            s.judge_join(NodeId(2), None, T(999)),
            JoinVerdict::Admit(AdmittedVia::FoundingWindow)
        );
        assert_eq!(
            s.judge_join(NodeId(2), None, T(1_000)),
            JoinVerdict::Pending
        );
        let again = SecurityCommand::Found {
            members: vec![NodeId(7)],
            open_until: T(9_000),
        };
        assert_eq!(s.apply(&again, T(10)).unwrap(), SecurityApplied::Unchanged);
        assert_eq!(s.open_until(), T(1_000), "the first founding stays");
        s.apply(
            &SecurityCommand::Pending {
                node: NodeId(2),
                addr: "p".into(),
            },
            T(1_000),
        )
        .unwrap();
        assert!(s.pending().contains_key(&NodeId(2)));
        s.apply(
            &SecurityCommand::Admit {
                node: NodeId(2),
                via: AdmittedVia::Approval,
            },
            T(1_001),
        )
        .unwrap();
        assert!(s.pending().is_empty());
        assert_eq!(
            s.judge_join(NodeId(2), None, T(2_000)),
            JoinVerdict::Admitted
        );
        // Removal revokes, and a removed node is refused even within a window.
        s.apply(&SecurityCommand::Remove { node: NodeId(2) }, T(3_000))
            .unwrap();
        assert!(matches!(
            s.judge_join(NodeId(2), None, T(3_001)),
            JoinVerdict::Refused(m) if m.contains("removed")
        ));
    }

    #[test]
    fn join_tokens_expire_and_are_used_up() {
        let mut s = Security::default();
        s.apply(&join_token("a1", T(100), 2), T(0)).unwrap();
        assert_eq!(
            s.judge_join(NodeId(5), Some(Ok("a1")), T(50)),
            JoinVerdict::Admit(AdmittedVia::Token("a1".into()))
        );
        assert!(matches!(
            s.judge_join(NodeId(5), Some(Ok("a1")), T(100)),
            JoinVerdict::Refused(m) if m.contains("expired")
        ));
        assert!(matches!(
            s.judge_join(NodeId(5), Some(Err("wrong secret".into())), T(50)),
            JoinVerdict::Refused(m) if m == "wrong secret"
        ));
        let admit = |n| SecurityCommand::Admit {
            node: NodeId(n),
            via: AdmittedVia::Token("a1".into()),
        };
        s.apply(&admit(5), T(10)).unwrap();
        s.apply(&admit(6), T(11)).unwrap();
        assert!(s.apply(&admit(7), T(12)).is_err(), "used up");
        assert!(!s.is_admitted(NodeId(7)));
        // The ledger judges expiry by the command's time, so every replica agrees.
        s.apply(&join_token("b2", T(100), 5), T(0)).unwrap();
        let late = SecurityCommand::Admit {
            node: NodeId(8),
            via: AdmittedVia::Token("b2".into()),
        };
        assert!(s.apply(&late, T(100)).is_err());
        // Revoked: unknown.
        s.apply(&SecurityCommand::RevokeJoinToken { id: "b2".into() }, T(1))
            .unwrap();
        assert!(matches!(
            s.judge_join(NodeId(9), Some(Ok("b2")), T(1)),
            JoinVerdict::Refused(m) if m.contains("unknown")
        ));
    }

    /// Fuzzed join requests: whatever node id and presented token, after the founding window a
    /// join is admitted only by a usable join token or an earlier admission.
    #[test]
    fn no_join_is_admitted_without_a_token_or_an_earlier_admission() {
        // A small deterministic generator (xorshift): the same cases every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |lo: u64, hi: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lo + x % (hi - lo)
        };
        let mut s = Security::default();
        found_with_node_1(&mut s);
        s.apply(&join_token("a1", T(50_000), 1), T(0)).unwrap();
        for _ in 0..5_000 {
            let node = NodeId(next(2, u64::MAX));
            let now = T(next(1_000, 100_000));
            let len = next(0, 12);
            let id: String = (0..len)
                .map(|_| ['a', '1', 'f', '0', 'z', '_'][next(0, 6) as usize])
                .collect();
            let presented = match next(0, 3) {
                0 => None,
                1 => Some(Ok(id.as_str())),
                _ => Some(Err(format!("bad token {id}"))),
            };
            let verdict = s.judge_join(node, presented.clone(), now);
            match verdict {
                JoinVerdict::Admit(AdmittedVia::Token(t)) => {
                    assert_eq!(t, "a1", "only a usable token admits");
                    assert!(now < T(50_000));
                    assert!(matches!(presented, Some(Ok("a1"))));
                }
                JoinVerdict::Admit(other) => panic!("admitted {node} by {other:?} at {now:?}"),
                JoinVerdict::Admitted => panic!("{node} was never admitted"),
                JoinVerdict::Pending => assert!(presented.is_none()),
                JoinVerdict::Refused(_) => assert!(presented.is_some()),
            }
        }
    }

    #[test]
    fn bad_tokens_are_refused_and_tables_are_bounded() {
        let mut s = Security::default();
        let bad = SecurityCommand::CreateApiToken(ApiToken {
            id: "zz".into(),
            name: "x".into(),
            scope: Scope::Read,
            hash: H.into(),
            created_at: T(0),
            expires_at: None,
        });
        assert!(s.apply(&bad, T(0)).is_err());
        for i in 0..MAX_PENDING + 5 {
            s.apply(
                &SecurityCommand::Pending {
                    node: NodeId(i as u64),
                    addr: String::new(),
                },
                T(i as u64),
            )
            .unwrap();
        }
        assert_eq!(s.pending().len(), MAX_PENDING);
        assert!(!s.pending().contains_key(&NodeId(0)), "oldest dropped");
        let rec = AuditRecord {
            at: T(0),
            actor: "a".into(),
            node: NodeId(1),
            action: "POST".into(),
            detail: String::new(),
        };
        for _ in 0..3 {
            s.apply(
                &SecurityCommand::Audit(vec![rec.clone(); AUDIT_LIMIT / 2 + 1]),
                T(0),
            )
            .unwrap();
        }
        assert_eq!(s.audit().len(), AUDIT_LIMIT);
        assert!(Scope::Admin.allows(Scope::Submit) && !Scope::Read.allows(Scope::Submit));
    }
}
