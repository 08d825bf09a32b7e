//! The replicated side of authentication: the registry of access tokens (minted and revoked through
//! the log, so every member refuses a revoked token) and admin actions that are authorized by Cedar
//! (`admin` on the cluster) and audited in apply, denials too.
//!
//! A token's text never enters the log: only its id, principal and expiry. The server signs the
//! token after the mint entry commits.

use super::command::{Command, Effects};
use super::error::Denial;
use super::error::OpError;
use super::governance::{Facts, Verdict};
use super::state::State;
pub use super::types::TokenRecord;
use super::types::{Intent, Principal};
use crate::audit::{AuditDecision, AuditEntry};
use crate::policy::Action;

/// Most live (unexpired) tokens the registry keeps; minting more is refused until some expire.
pub const MAX_TOKENS: usize = 100_000;
/// How long a revoked token is remembered after its expiry (clock skew between members).
pub const REVOKED_RETENTION_MS: u64 = 10 * 60 * 1000;
/// Longest token id.
pub const MAX_TOKEN_ID_BYTES: usize = 64;
/// How long after a mint a retry of it (same id, principal and minter) still gets the token back.
pub const MINT_RETRY_WINDOW_MS: u64 = 5 * 60 * 1000;

/// What policy sees of a request with no lease or acquire behind it (an admin action, a read):
/// no ttl, no intent, no task key.
fn bare(empty: &Intent) -> Facts<'_> {
    Facts {
        ttl_ms: 0,
        intent: empty,
        has_task_key: false,
        takeover: false,
    }
}

impl State {
    /// May `by` perform an admin action? The config's admins always may (break-glass); otherwise
    /// Cedar must permit `admin` on the cluster, and with no policy loaded nobody else may.
    pub fn admin_allowed(&self, by: &Principal, by_admin: bool) -> Result<(), Denial> {
        if by_admin {
            return Ok(());
        }
        let empty = Intent::default();
        let facts = bare(&empty);
        match self.evaluate(
            by,
            Action::Admin,
            super::governance::CLUSTER_RESOURCE,
            &facts,
            self.now_ms,
            false,
        ) {
            Verdict::Deny(denial) => Err(denial),
            _ => Ok(()),
        }
    }

    /// May `by` read others' leases and approvals under `resource`, or ("") the policy? Open to
    /// every caller while no policy is loaded or the loaded one names no `read`; the config's
    /// admins always may; otherwise Cedar decides `read` (an approval rule cannot apply: a read
    /// does not wait, so it is refused). Ok names the permitting policies (none when reads are not
    /// governed, or for an admin).
    pub fn read_allowed(
        &self,
        by: &Principal,
        by_admin: bool,
        resource: &str,
    ) -> Result<Vec<String>, Denial> {
        let governed = self.policy.as_ref().is_some_and(|p| p.governs_reads());
        if by_admin || !governed {
            return Ok(Vec::new());
        }
        let empty = Intent::default();
        let facts = bare(&empty);
        match self.evaluate(by, Action::Read, resource, &facts, self.now_ms, true) {
            Verdict::Allow { policies, .. } => Ok(policies),
            Verdict::Deny(denial) => Err(denial),
            Verdict::Approval {
                policy_version,
                policies,
                ..
            } => Err(Denial {
                action: Action::Read.as_str().to_owned(),
                policy_version,
                policies,
                reason: Some("a read cannot wait for approval".into()),
            }),
        }
    }

    /// Record an admin action that changes no state (e.g. an audit export): allowed or denied,
    /// it joins the audit trail.
    pub(super) fn admin_check(
        &mut self,
        by: &Principal,
        by_admin: bool,
        action: &str,
        detail: &str,
        fx: &mut Effects,
    ) -> Result<(), OpError> {
        let verdict = self.admin_allowed(by, by_admin);
        let mut entry = AuditEntry::new(
            action,
            if verdict.is_ok() {
                AuditDecision::AdminAllowed
            } else {
                AuditDecision::Denied
            },
        );
        entry.principal = by.to_string();
        entry.policy_version = self.policy_version();
        entry.reason = match &verdict {
            Ok(()) if by_admin => format!("{detail} (config admin)"),
            Ok(()) => detail.to_string(),
            Err(d) => {
                entry.policies = d.policies.clone();
                format!("{detail}: {d}")
            }
        };
        self.audit(fx, entry);
        verdict.map_err(OpError::Denied)
    }

    /// Register a new access token. Retrying the same mint (same id, principal, minter) within
    /// [`MINT_RETRY_WINDOW_MS`] of the first answers the same record (audited: its token's text is
    /// handed out again); later, or by anyone not allowed to mint now, it is refused.
    pub(super) fn mint_token(
        &mut self,
        record: &TokenRecord,
        by_admin: bool,
        fx: &mut Effects,
    ) -> Result<TokenRecord, OpError> {
        self.prune_tokens();
        let mut refused = |state: &mut State, e: OpError| {
            let mut entry = AuditEntry::new("token_mint", AuditDecision::Denied);
            entry.principal = record.minted_by.to_string();
            entry.reason = format!("token {} for {}: {e}", record.id, record.principal);
            entry.policy_version = state.policy_version();
            if let OpError::Denied(d) = &e {
                entry.policies = d.policies.clone();
            }
            state.audit(fx, entry);
            Err(e)
        };
        if let Err(d) = self.admin_allowed(&record.minted_by, by_admin) {
            return refused(self, OpError::Denied(d));
        }
        if let Some(existing) = self.tokens.get(&record.id) {
            let same = existing.principal == record.principal
                && existing.minted_by == record.minted_by
                && self.now_ms.saturating_sub(existing.issued_at_ms) <= MINT_RETRY_WINDOW_MS;
            if !same {
                return refused(
                    self,
                    OpError::TokenIdReused {
                        id: record.id.clone(),
                    },
                );
            }
            let existing = existing.clone();
            let mut entry = AuditEntry::new("token_mint", AuditDecision::TokenMinted);
            entry.principal = record.minted_by.to_string();
            entry.reason = format!(
                "retry: token {} for {} (minted at {} ms) returned again",
                existing.id, existing.principal, existing.issued_at_ms
            );
            self.audit(fx, entry);
            return Ok(existing);
        }
        if self.tokens.len() >= MAX_TOKENS {
            return refused(self, OpError::TooManyTokens { max: MAX_TOKENS });
        }
        let mut stored = record.clone();
        stored.revoked_by = None;
        stored.issued_at_ms = self.now_ms;
        self.tokens.insert(stored.id.clone(), stored.clone());
        let mut entry = AuditEntry::new("token_mint", AuditDecision::TokenMinted);
        entry.principal = record.minted_by.to_string();
        entry.reason = format!(
            "token {} for {} expires at {} ms{}",
            stored.id,
            stored.principal,
            stored.expires_at_ms,
            if by_admin { " (config admin)" } else { "" }
        );
        entry.policy_version = self.policy_version();
        self.audit(fx, entry);
        Ok(stored)
    }

    /// Revoke a token by id: from this entry on, every member refuses it.
    pub(super) fn revoke_token(
        &mut self,
        id: &str,
        by: &Principal,
        by_admin: bool,
        reason: &str,
        fx: &mut Effects,
    ) -> Result<TokenRecord, OpError> {
        self.prune_tokens();
        let verdict = self.admin_allowed(by, by_admin);
        let found = self.tokens.get(id).cloned();
        let outcome = match (verdict, found) {
            (Err(d), _) => Err(OpError::Denied(d)),
            (Ok(()), None) => Err(OpError::UnknownToken { id: id.to_string() }),
            (Ok(()), Some(mut t)) => {
                if t.revoked_by.is_none() {
                    t.revoked_by = Some(by.clone());
                    self.tokens.insert(t.id.clone(), t.clone());
                }
                Ok(t)
            }
        };
        let mut entry = AuditEntry::new(
            "token_revoke",
            match &outcome {
                Ok(_) => AuditDecision::TokenRevoked,
                Err(OpError::Denied(_)) => AuditDecision::Denied,
                Err(_) => AuditDecision::Invalid,
            },
        );
        entry.principal = by.to_string();
        entry.policy_version = self.policy_version();
        entry.reason = match &outcome {
            Ok(t) => format!("token {} of {}: {reason}", t.id, t.principal),
            Err(e) => {
                if let OpError::Denied(d) = e {
                    entry.policies = d.policies.clone();
                }
                format!("token {id}: {e}")
            }
        };
        self.audit(fx, entry);
        outcome
    }

    /// Forget tokens that have expired (they are refused by their expiry alone). A revoked token is
    /// kept `REVOKED_RETENTION_MS` longer: members check expiry against their own clocks, and one
    /// whose clock runs behind the leader's must still find the revocation.
    fn prune_tokens(&mut self) {
        let now = self.now_ms;
        self.tokens.retain(|_, t| {
            let keep_until = match t.revoked_by {
                Some(_) => t.expires_at_ms.saturating_add(REVOKED_RETENTION_MS),
                None => t.expires_at_ms,
            };
            keep_until > now
        });
    }

    /// Empty the registry, for a restore from a backup: no token the old cluster minted is
    /// honoured by the restored one. The number of tokens forgotten.
    pub fn forget_tokens(&mut self) -> usize {
        std::mem::take(&mut self.tokens).len()
    }

    /// A token the registry knows (minted, not yet expired and pruned).
    pub fn token(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.get(id)
    }

    /// Audit a command refused in apply because its access token was revoked first: the token's
    /// principal, the command's action (and resource and request for an acquire), decision `Invalid`.
    pub(super) fn audit_token_refusal(&mut self, id: &str, cmd: &Command, fx: &mut Effects) {
        let action = match cmd {
            Command::Acquire(a) | Command::AcquireWithin { cmd: a, .. } if a.takeover => "takeover",
            Command::Acquire(_) | Command::AcquireWithin { .. } => "acquire",
            Command::Release { .. } => "release",
            Command::Checkpoint { .. } => "checkpoint",
            Command::Revoke { .. } => "revoke",
            Command::PutPolicy { .. } => "policy_put",
            Command::Approve { .. } => "approve",
            Command::Reject { .. } => "reject",
            Command::CancelWait { .. } => "cancel_wait",
            Command::MintToken { .. } => "token_mint",
            Command::RevokeToken { .. } => "token_revoke",
            Command::AdminCheck { action, .. } => action.as_str(),
            _ => "command",
        };
        let mut entry = AuditEntry::new(action, AuditDecision::Invalid);
        if let Some(t) = self.tokens.get(id) {
            entry.principal = t.principal.to_string();
        }
        if let Command::Acquire(a) | Command::AcquireWithin { cmd: a, .. } = cmd {
            entry.resource = a.resource.to_string();
            entry.request_id = a.request_id.to_string();
            entry.instance = a.instance.to_string();
        }
        entry.reason = format!("access token {id} was revoked before this request was applied");
        self.audit(fx, entry);
    }

    /// True when the token was revoked (an unknown id is not revoked: it may be minted by a leader
    /// whose entry this member has not applied yet; its signature and expiry still hold).
    pub fn token_revoked(&self, id: &str) -> bool {
        self.tokens.get(id).is_some_and(|t| t.revoked_by.is_some())
    }

    /// Known tokens in id order.
    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testkit::Harness;
    use crate::model::{Command, Response};

    fn p(s: &str) -> Principal {
        Principal::parse(s).unwrap()
    }

    fn record(id: &str, by: &str) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            principal: p("agent/bot"),
            minted_by: p(by),
            issued_at_ms: 0,
            expires_at_ms: u64::MAX,
            revoked_by: None,
        }
    }

    fn mint(h: &mut Harness, id: &str, by: &str, by_admin: bool) -> Result<TokenRecord, OpError> {
        match h.apply(Command::MintToken {
            record: record(id, by),
            by_admin,
        }) {
            Response::MintToken(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn revoke(h: &mut Harness, id: &str, by: &str, by_admin: bool) -> Result<TokenRecord, OpError> {
        match h.apply(Command::RevokeToken {
            id: id.into(),
            by: p(by),
            by_admin,
            reason: "leaked".into(),
        }) {
            Response::RevokeToken(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_admins_mint_and_revoke_and_both_are_audited() {
        let mut h = Harness::new();
        let before = h.state.audit_chain().len();
        assert!(matches!(
            mint(&mut h, "t1", "agent/bot", false),
            Err(OpError::Denied(_))
        ));
        assert!(h.state.token("t1").is_none());
        mint(&mut h, "t1", "human/admin", true).unwrap();
        // A retry of the same mint answers the same record (and says so in the audit).
        mint(&mut h, "t1", "human/admin", true).unwrap();
        assert!(!h.state.token_revoked("t1"));
        assert!(matches!(
            revoke(&mut h, "t1", "agent/bot", false),
            Err(OpError::Denied(_))
        ));
        assert!(!h.state.token_revoked("t1"));
        revoke(&mut h, "t1", "human/admin", true).unwrap();
        assert!(h.state.token_revoked("t1"));
        assert!(matches!(
            revoke(&mut h, "nope", "human/admin", true),
            Err(OpError::UnknownToken { .. })
        ));
        // denied mint, mint, retry, denied revoke, revoke, unknown revoke
        assert_eq!(h.state.audit_chain().len() - before, 6);
        // Past the retry window, or for another principal, the id is refused.
        h.advance(MINT_RETRY_WINDOW_MS + 1);
        mint(&mut h, "t2", "human/admin", true).unwrap();
        assert!(matches!(
            mint(&mut h, "t1", "human/admin", true),
            Err(OpError::TokenIdReused { .. })
        ));
        // A non-admin learns nothing about an id: denied before it is looked up.
        assert!(matches!(
            mint(&mut h, "t2", "agent/bot", false),
            Err(OpError::Denied(_))
        ));
    }

    #[test]
    fn a_command_from_a_revoked_token_is_refused_in_apply_and_changes_nothing() {
        use crate::model::testkit::acq;
        let mut h = Harness::new();
        mint(&mut h, "t1", "human/admin", true).unwrap();
        let as_token = |cmd| Command::AsToken {
            token_id: "t1".into(),
            cmd: Box::new(cmd),
        };
        // Before the revocation the wrapped command is applied as itself.
        let first = h.apply(as_token(Command::Acquire(acq(
            "r1",
            "a/x",
            "agent/bot",
            "i1",
        ))));
        assert!(
            matches!(
                first,
                Response::Acquire(crate::model::AcquireOutcome::Granted(_))
            ),
            "{first:?}"
        );
        revoke(&mut h, "t1", "human/admin", true).unwrap();
        let chain = h.state.audit_chain().len();
        // Checked when it arrived, applied after the revocation: refused, nothing granted, no dedup
        // record (a retry is refused again), and the refusal is audited.
        let late = h.apply(as_token(Command::Acquire(acq(
            "r2",
            "a/y",
            "agent/bot",
            "i1",
        ))));
        assert_eq!(
            late,
            Response::Refused(OpError::TokenRevoked { id: "t1".into() })
        );
        assert!(h
            .state
            .request(&crate::model::RequestId::parse("r2").unwrap())
            .is_none());
        assert!(h
            .state
            .resource(&crate::model::ResourcePath::parse("a/y").unwrap())
            .is_none_or(|r| r.holder.is_none()));
        assert_eq!(h.state.audit_chain().len(), chain + 1);
        let record = h.audit.last().unwrap();
        assert_eq!(record.entry.action, "acquire");
        assert_eq!(record.entry.decision, AuditDecision::Invalid);
        assert_eq!(record.entry.principal, "agent/bot");
        assert_eq!(record.entry.resource, "a/y");
        assert!(
            record.entry.reason.contains("t1 was revoked"),
            "{:?}",
            record.entry
        );
        // Never nested.
        let nested = h.apply(as_token(as_token(Command::Acquire(acq(
            "r3",
            "a/z",
            "agent/bot",
            "i1",
        )))));
        assert_eq!(nested, Response::Batch(Vec::new()));
    }

    #[test]
    fn records_a_token_request_causes_name_the_token_and_no_others_do() {
        use crate::model::testkit::acq;
        let mut h = Harness::new();
        mint(&mut h, "t1", "human/admin", true).unwrap();
        let as_token = |cmd| Command::ViaToken {
            token_id: "t1".into(),
            recheck: true,
            cmd: Box::new(cmd),
        };
        let held = match h.apply(as_token(Command::Acquire(acq(
            "r1",
            "a/x",
            "agent/bot",
            "i1",
        )))) {
            Response::Acquire(crate::model::AcquireOutcome::Granted(g)) => g,
            other => panic!("{other:?}"),
        };
        assert_eq!(h.audit.len(), 1);
        assert_eq!(h.audit[0].entry.via_token, "t1");
        // A certificate client queues behind it: its record has no token.
        let mut waiter = acq("r2", "a/x", "agent/other", "i2");
        waiter.wait_ms = Some(60_000);
        h.apply(Command::Acquire(waiter));
        assert_eq!(h.audit.len(), 1);
        assert_eq!(h.audit[0].entry.decision, AuditDecision::Queued);
        assert_eq!(h.audit[0].entry.via_token, "");
        // The token's release, and the grant to the waiter it causes, both name the token.
        h.apply(as_token(Command::Release {
            lease_id: held.lease.lease_id,
            principal: p("agent/bot"),
            outcome: None,
        }));
        let decisions: Vec<_> = h
            .audit
            .iter()
            .map(|r| {
                (
                    r.entry.decision,
                    r.entry.principal.as_str(),
                    r.entry.via_token.as_str(),
                )
            })
            .collect();
        assert_eq!(
            decisions,
            [
                (AuditDecision::Released, "agent/bot", "t1"),
                (AuditDecision::Granted, "agent/other", "t1"),
            ]
        );
        // In a batch, only the wrapped command's records name the token.
        h.apply(Command::Batch(vec![
            Command::Acquire(acq("r3", "a/y", "agent/other", "i2")),
            as_token(Command::Acquire(acq("r4", "a/z", "agent/bot", "i1"))),
        ]));
        let via: Vec<_> = h.audit.iter().map(|r| r.entry.via_token.as_str()).collect();
        assert_eq!(via, ["", "t1"]);
        // A refusal names it too.
        revoke(&mut h, "t1", "human/admin", true).unwrap();
        assert_eq!(
            h.audit[0].entry.via_token, "",
            "an admin's revocation by certificate"
        );
        h.apply(as_token(Command::Acquire(acq(
            "r5",
            "a/w",
            "agent/bot",
            "i1",
        ))));
        assert_eq!(h.audit[0].entry.decision, AuditDecision::Invalid);
        assert_eq!(h.audit[0].entry.via_token, "t1");
        // Without the re-check (withdrawing one's own wait) it is applied, and named.
        let mut wait = acq("r6", "a/x", "agent/bot", "i1");
        wait.wait_ms = Some(60_000);
        h.apply(Command::Acquire(acq("r7", "a/x", "agent/other", "i2")));
        h.apply(Command::Acquire(wait));
        let cancel = h.apply(Command::ViaToken {
            token_id: "t1".into(),
            recheck: false,
            cmd: Box::new(Command::CancelWait {
                request_id: crate::model::testkit::rid("r6"),
                principal: p("agent/bot"),
            }),
        });
        assert!(matches!(cancel, Response::CancelWait(_)), "{cancel:?}");
        assert_eq!(h.audit[0].entry.decision, AuditDecision::WaitEnded);
        assert_eq!(h.audit[0].entry.via_token, "t1");
        // A format-4 entry (`AsToken`) is applied as format 4 did: no token in its records.
        mint(&mut h, "t2", "human/admin", true).unwrap();
        h.apply(Command::AsToken {
            token_id: "t2".into(),
            cmd: Box::new(Command::Acquire(acq("r8", "a/v", "agent/bot", "i1"))),
        });
        assert_eq!(h.audit[0].entry.decision, AuditDecision::Granted);
        assert_eq!(h.audit[0].entry.via_token, "");
    }

    #[test]
    fn admin_checks_are_audited_allowed_or_denied() {
        let mut h = Harness::new();
        let check = |h: &mut Harness, by: &str, by_admin: bool| match h.apply(Command::AdminCheck {
            by: p(by),
            by_admin,
            action: "audit_export".into(),
            detail: "records 1..".into(),
        }) {
            Response::AdminCheck(r) => r,
            other => panic!("{other:?}"),
        };
        let before = h.state.audit_chain().len();
        assert!(check(&mut h, "agent/bot", false).is_err());
        assert!(check(&mut h, "human/admin", true).is_ok());
        assert_eq!(h.state.audit_chain().len() - before, 2);
    }
}
