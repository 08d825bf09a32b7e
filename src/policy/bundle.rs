//! [`PolicyBundle`]: the cluster's policy set as replicated state — its source texts and version,
//! plus what was compiled from them.
//!
//! Only the texts, the version and the intent window are serialized; deserializing compiles them
//! again, so a snapshot reload yields a bundle equal to the one saved (and one that answers every
//! query the same way).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};

use super::compile::{self, Compiled, PolicyMeta};
use super::evaluate::Evaluator;
use super::{Decision, PolicyError, Query};

/// A compiled, validated policy set plus optional entities (group membership), with its version.
///
/// Cheap to clone (the compiled part is shared). Equality and `Debug` consider the version, the
/// source texts and the intent window — what the bundle was compiled from.
#[derive(Clone, Deserialize)]
#[serde(try_from = "BundleSource")]
pub struct PolicyBundle {
    version: u64,
    intent_window_ms: u64,
    inner: Arc<Inner>,
}

struct Inner {
    policies: String,
    entities: Option<String>,
    meta: HashMap<String, PolicyMeta>,
    ids: Vec<String>,
    evaluator: Evaluator,
}

impl PolicyBundle {
    /// Compile `policies` (Cedar) and the optional `entities` file (Cedar JSON entities) under
    /// `version`, checking everything [`validate`](super::validate) checks. `intent_window_ms`
    /// is how far back the caller looks for `context.recent_labels`
    /// ([`DEFAULT_INTENT_WINDOW_MS`](super::DEFAULT_INTENT_WINDOW_MS) unless configured).
    pub fn compile(
        version: u64,
        policies: &str,
        entities: Option<&str>,
        intent_window_ms: u64,
    ) -> Result<Self, PolicyError> {
        let Compiled {
            policy_set,
            meta,
            ids,
            file_entities,
            warnings: _,
        } = compile::compile(policies, entities)?;
        let evaluator = Evaluator::new(&policy_set, file_entities)?;
        Ok(PolicyBundle {
            version,
            intent_window_ms,
            inner: Arc::new(Inner {
                policies: policies.to_owned(),
                entities: entities.map(str::to_owned),
                meta,
                ids,
                evaluator,
            }),
        })
    }

    /// The version this bundle was installed under; recorded with every decision.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The Cedar policy text, as submitted.
    pub fn policies_text(&self) -> &str {
        &self.inner.policies
    }

    /// The entities file (Cedar JSON), as submitted, if any.
    pub fn entities_text(&self) -> Option<&str> {
        self.inner.entities.as_deref()
    }

    /// How far back, in milliseconds, granted leases count for `context.recent_labels`.
    pub fn intent_window_ms(&self) -> u64 {
        self.intent_window_ms
    }

    /// Policy ids in source order (`@id` or Cedar's default `policyN`).
    pub fn policy_ids(&self) -> &[String] {
        &self.inner.ids
    }

    /// Decide `q`. Pure and deterministic: the same bundle and query give the same decision on
    /// every replica. Never panics on a Cedar evaluation error (the erroring policy is skipped,
    /// as Cedar specifies).
    pub fn evaluate(&self, q: &Query<'_>) -> Decision {
        self.inner.evaluator.evaluate(&self.inner.meta, q)
    }

    /// Does some policy name the `read` action in its scope? Until one does, reads are open to
    /// every caller (a policy set written before `read` existed keeps working as it did); from
    /// then on they are decided like any action: a permit is needed and a forbid wins.
    pub fn governs_reads(&self) -> bool {
        self.inner.evaluator.governs_reads
    }
}

impl PartialEq for PolicyBundle {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
            && self.intent_window_ms == other.intent_window_ms
            && self.inner.policies == other.inner.policies
            && self.inner.entities == other.inner.entities
    }
}

impl Eq for PolicyBundle {}

impl fmt::Debug for PolicyBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyBundle")
            .field("version", &self.version)
            .field("intent_window_ms", &self.intent_window_ms)
            .field("policy_ids", &self.inner.ids)
            .field("policies_bytes", &self.inner.policies.len())
            .field(
                "entities_bytes",
                &self.inner.entities.as_ref().map(String::len),
            )
            .finish()
    }
}

/// The serialized form: what the bundle is compiled from.
#[derive(Serialize, Deserialize)]
struct BundleSource {
    version: u64,
    policies: String,
    entities: Option<String>,
    intent_window_ms: u64,
}

/// [`BundleSource`] by reference (same name, same fields, same order), so serializing copies
/// no text.
#[derive(Serialize)]
#[serde(rename = "BundleSource")]
struct BundleSourceRef<'a> {
    version: u64,
    policies: &'a str,
    entities: Option<&'a str>,
    intent_window_ms: u64,
}

impl Serialize for PolicyBundle {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        BundleSourceRef {
            version: self.version,
            policies: &self.inner.policies,
            entities: self.inner.entities.as_deref(),
            intent_window_ms: self.intent_window_ms,
        }
        .serialize(serializer)
    }
}

impl TryFrom<BundleSource> for PolicyBundle {
    type Error = PolicyError;

    fn try_from(source: BundleSource) -> Result<Self, Self::Error> {
        PolicyBundle::compile(
            source.version,
            &source.policies,
            source.entities.as_deref(),
            source.intent_window_ms,
        )
    }
}
