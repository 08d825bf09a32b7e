//! Cedar policy: who may hold, take over, approve or revoke what, and when.
//!
//! This module owns the policy set of the cluster as a [`PolicyBundle`]: Cedar policies (plus an
//! optional entities file giving group membership), compiled and validated in strict mode against
//! Warrant's schema (`cluster/policies/warrant.cedarschema`), with a version. The state machine
//! holds the current bundle and calls [`PolicyBundle::evaluate`] for every request; `PutPolicy`
//! replaces the bundle only if [`PolicyBundle::compile`] accepts the new texts, so a bad policy
//! is rejected with Cedar's own message and changes nothing (DESIGN.md, "Policy and approval").
//!
//! Invariant: evaluation is a pure function of the bundle and the [`Query`] — no I/O, no clock
//! (time comes from the log entry as `now_ms`), no randomness, and the determining policy ids
//! are sorted — so every replica reaches the same [`Decision`] for the same entry. Deny wins.
//!
//! This module sits beside `model` (it does not import it): principals and resources arrive as
//! the strings the model has already validated (`agent/NAME`, `human/NAME`, `a/b/c`).

mod bundle;
mod compile;
mod evaluate;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

pub use bundle::PolicyBundle;
pub use compile::{resource_literals, validate, ValidationSummary};

/// The Cedar schema every policy set is validated against (human schema syntax).
pub const SCHEMA: &str = include_str!("../../cluster/policies/warrant.cedarschema");

/// Default length of the intent-conflict window: leases granted this long ago or less count as
/// "recent" for `context.recent_labels`.
pub const DEFAULT_INTENT_WINDOW_MS: u64 = 600_000;

/// Largest `@approval("N")` a policy may ask for.
pub const MAX_APPROVALS: u32 = 16;

/// The id of the single `Cluster` entity, the resource of [`Action::Admin`].
pub const CLUSTER_ID: &str = "warrant";

/// What a principal asks to do; one Cedar action (`Action::"acquire"`, …) each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Acquire a free lease on a resource.
    Acquire,
    /// Take over a lease that someone else holds.
    Takeover,
    /// Give a lease back.
    Release,
    /// Record progress on a held lease.
    Checkpoint,
    /// Approve another principal's pending request.
    Approve,
    /// Revoke someone else's lease.
    Revoke,
    /// Administer the cluster (policies, membership); its resource is `Cluster::"warrant"`.
    Admin,
    /// Read others' leases and approvals under a resource (`get`, `list`, `approvals list`), or,
    /// on `Cluster::"warrant"` (resource ""), the policy itself (`policy get`, `policy test` for
    /// another principal). Decided only once the policy set names `read` in some scope
    /// ([`PolicyBundle::governs_reads`]); until then reads are open to every caller.
    Read,
}

impl Action {
    /// Every action, in declaration order.
    pub const ALL: [Action; 8] = [
        Action::Acquire,
        Action::Takeover,
        Action::Release,
        Action::Checkpoint,
        Action::Approve,
        Action::Revoke,
        Action::Admin,
        Action::Read,
    ];

    /// The Cedar action id (`"acquire"`, …), also the text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Acquire => "acquire",
            Action::Takeover => "takeover",
            Action::Release => "release",
            Action::Checkpoint => "checkpoint",
            Action::Approve => "approve",
            Action::Revoke => "revoke",
            Action::Admin => "admin",
            Action::Read => "read",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                PolicyError::new(format!(
                    "unknown action `{s}` (expected one of: acquire, takeover, release, \
                     checkpoint, approve, revoke, admin, read)"
                ))
            })
    }
}

/// One authorization question: may `principal` do `action` on `resource`, in this context?
///
/// Fields that make no sense for an action are left at their defaults (0, "", empty, false);
/// [`Query::new`] starts from those.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// `agent/NAME` or `human/NAME`.
    pub principal: &'a str,
    /// What the principal asks to do.
    pub action: Action,
    /// The resource path (`k8s/prod/payments`); ignored for [`Action::Admin`]; "" for a
    /// [`Action::Read`] of the cluster (the policy, every approval).
    pub resource: &'a str,
    /// Requested time to live, in milliseconds (`context.ttl_ms`).
    pub ttl_ms: u64,
    /// Free-text intent (`context.intent`).
    pub intent: &'a str,
    /// Intent labels; each becomes `"key:value"` in `context.labels`.
    pub labels: &'a BTreeMap<String, String>,
    /// Whether the request carries a task key (`context.has_task_key`).
    pub has_task_key: bool,
    /// Whether the request asks to take over (`context.takeover`).
    pub takeover: bool,
    /// Unix time in milliseconds, from the log entry; gives `context.hour`, `context.weekday`
    /// and `context.minute_of_day` (UTC).
    pub now_ms: u64,
    /// `"key:value"` labels of leases granted on this resource, an ancestor or a descendant
    /// within the bundle's [intent window](PolicyBundle::intent_window_ms)
    /// (`context.recent_labels`), computed by the caller.
    pub recent_labels: &'a BTreeSet<String>,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
static NO_RECENT_LABELS: BTreeSet<String> = BTreeSet::new();

impl<'a> Query<'a> {
    /// A query with an empty context (ttl 0, no intent, no labels, no task key, no takeover,
    /// time 0 = Thursday 1970-01-01 00:00 UTC); set the fields that apply.
    pub fn new(principal: &'a str, action: Action, resource: &'a str) -> Self {
        Query {
            principal,
            action,
            resource,
            ttl_ms: 0,
            intent: "",
            labels: &NO_LABELS,
            has_task_key: false,
            takeover: false,
            now_ms: 0,
            recent_labels: &NO_RECENT_LABELS,
        }
    }
}

/// The outcome of [`PolicyBundle::evaluate`]. Policy ids are sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Permitted by `policies` (none of which asks for approval), and no forbid applies.
    Allow {
        /// The determining permits.
        policies: Vec<String>,
    },
    /// Deny wins. `policies` empty means nothing permitted it (Cedar's default deny);
    /// `reason` is the text of the `@reason("…")` annotation of the first determining forbid
    /// (ids sorted) that has one, if any. A query that cannot be put to Cedar at all (a
    /// principal that is not `agent/…` or `human/…`) is denied with no policies and a reason.
    Deny {
        /// The determining forbids; empty for a default deny.
        policies: Vec<String>,
        /// Why, for the requester.
        reason: Option<String>,
    },
    /// An Allow determined by at least one permit annotated `@approval("N")`: `approvals`
    /// distinct approvers are needed (the largest N among the determining permits).
    NeedsApproval {
        /// Distinct approvers needed (1..=[`MAX_APPROVALS`]).
        approvals: u32,
        /// The determining permits.
        policies: Vec<String>,
    },
}

impl Decision {
    /// The determining policy ids (sorted), whatever the outcome.
    pub fn policies(&self) -> &[String] {
        match self {
            Decision::Allow { policies }
            | Decision::Deny { policies, .. }
            | Decision::NeedsApproval { policies, .. } => policies,
        }
    }
}

/// A policy set or entities file that Cedar (or Warrant's annotation rules) rejects.
///
/// The message holds every error found, one per line, in Cedar's own words, each prefixed with
/// where it is (`policies line 3, column 10:` or `entities:`) when that is known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(String);

impl PolicyError {
    fn new(message: impl Into<String>) -> Self {
        PolicyError(message.into())
    }

    /// The full message (all errors, one per line).
    pub fn message(&self) -> &str {
        &self.0
    }
}
