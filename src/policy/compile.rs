//! Turning policy and entity texts into a checked Cedar policy set, or into every error in them.
//!
//! The checks, in order: Cedar's parser; no templates; `@id` gives the policy id (unique, not
//! empty); `@approval("N")` only on a permit, 1 ≤ N ≤ [`MAX_APPROVALS`]; Cedar's strict
//! validation against [`SCHEMA`], where a policy Cedar finds can never apply (an "impossible
//! policy", or an action that cannot apply to the scope) is an error, not a warning; and the
//! entities file, in Cedar's JSON entities format, conforming to the schema and declaring only
//! `Agent`, `Human` and `Group` entities. Nothing is accepted unless every check passes, and every
//! error found is reported, not just the first, in an order that does not depend on hashing (a
//! rejection is audited on every replica, so it must be worded identically everywhere).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::LazyLock;

use cedar_policy::ffi::DetailedError;
use cedar_policy::{
    Effect, Entities, Entity, EntityUid, Policy, PolicyId, PolicySet, Schema, ValidationMode,
    ValidationWarning, Validator,
};

use super::{PolicyError, MAX_APPROVALS, SCHEMA};

/// Warrant's schema, parsed once.
pub(super) fn schema() -> &'static Schema {
    static PARSED: LazyLock<Schema> = LazyLock::new(|| {
        let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA)
            .expect("the embedded warrant.cedarschema is valid (checked by the policy tests)");
        schema
    });
    &PARSED
}

/// Entity types the entities file may declare: principals and their groups. Resources come from
/// the request path and the cluster entity is implicit.
const FILE_ENTITY_TYPES: [&str; 3] = ["Agent", "Human", "Group"];

/// What Warrant reads from a policy's annotations besides its id.
#[derive(Debug, Clone, Default)]
pub(super) struct PolicyMeta {
    /// `@approval("N")`: approvers needed when this permit determines an Allow.
    pub approval: Option<u32>,
    /// `@reason("…")`: shown to the requester when this forbid determines a Deny.
    pub reason: Option<String>,
}

/// A policy set and entities file that passed every check.
pub(super) struct Compiled {
    /// The policies, under their final ids (`@id` or Cedar's default).
    pub policy_set: PolicySet,
    /// Annotations by policy id.
    pub meta: HashMap<String, PolicyMeta>,
    /// Policy ids in source order.
    pub ids: Vec<String>,
    /// Entities of the entities file (no action entities), each with its transitive ancestors.
    pub file_entities: HashMap<EntityUid, Entity>,
    /// Cedar's remaining validation warnings (e.g. confusable text), formatted like errors.
    pub warnings: Vec<String>,
}

/// What [`validate`] found in a policy set that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationSummary {
    /// Policy ids in source order (`@id` or Cedar's default `policyN`).
    pub policy_ids: Vec<String>,
    /// Entities declared in the entities file (0 without one).
    pub entity_count: usize,
    /// Cedar's validation warnings that Warrant does not treat as errors, e.g. text mixing
    /// look-alike scripts. They do not stop a policy set from being accepted.
    pub warnings: Vec<String>,
}

/// Check a policy set (and optional entities file) offline, exactly as
/// [`PolicyBundle::compile`](super::PolicyBundle::compile) does — same checks, same messages —
/// and summarise it.
pub fn validate(policies: &str, entities: Option<&str>) -> Result<ValidationSummary, PolicyError> {
    let compiled = compile(policies, entities)?;
    Ok(ValidationSummary {
        policy_ids: compiled.ids,
        entity_count: compiled.file_entities.len(),
        warnings: compiled.warnings,
    })
}

/// Every `Resource::"…"` literal of a policy set that parses, and every `Resource` uid of an
/// entities file, for the server to check that each is a canonical resource path (one a request
/// can name: `ResourcePath` lives above this module). Nothing for text that does not parse.
pub fn resource_literals(policies: &str, entities: Option<&str>) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(set) = PolicySet::from_str(policies) {
        for policy in set.policies() {
            for uid in policy.entity_literals() {
                if uid.type_name().to_string() == "Resource" {
                    found.push(uid.id().unescaped().to_owned());
                }
            }
        }
    }
    let json = entities.and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok());
    for entity in json
        .as_ref()
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        let parents = entity.get("parents").and_then(|p| p.as_array());
        for uid in std::iter::once(entity.get("uid"))
            .flatten()
            .chain(parents.into_iter().flatten())
        {
            if uid.get("type").and_then(|t| t.as_str()) == Some("Resource") {
                if let Some(id) = uid.get("id").and_then(|i| i.as_str()) {
                    found.push(id.to_owned());
                }
            }
        }
    }
    found
}

/// Run every check; on failure the error lists all problems found, in source order.
pub(super) fn compile(policies: &str, entities: Option<&str>) -> Result<Compiled, PolicyError> {
    let mut errors = Findings::default();
    let mut warnings = Findings::default();
    let checked = check_policies(policies, &mut errors, &mut warnings);
    let file_entities = match entities {
        Some(json) => load_entities(json, &mut errors),
        None => Some(HashMap::new()),
    };
    match (checked, file_entities) {
        (Some((policy_set, meta, ids)), Some(file_entities)) if errors.is_empty() => Ok(Compiled {
            policy_set,
            meta,
            ids,
            file_entities,
            warnings: warnings.into_lines(),
        }),
        _ => Err(PolicyError::new(errors.into_lines().join("\n"))),
    }
}

type CheckedPolicies = (PolicySet, HashMap<String, PolicyMeta>, Vec<String>);

/// Parse, rename to `@id`, check annotations and validate against the schema. Returns `None`
/// only when the text does not parse (nothing further can be checked); otherwise returns what
/// could be built and leaves the verdict to `errors`.
fn check_policies(
    src: &str,
    errors: &mut Findings,
    warnings: &mut Findings,
) -> Option<CheckedPolicies> {
    let parsed = match PolicySet::from_str(src) {
        Ok(parsed) => parsed,
        Err(parse_errors) => {
            errors.diagnostic(Some(src), &DetailedError::from(&parse_errors));
            return None;
        }
    };
    let mut locator = Locator::new(src);

    for template in parsed.templates() {
        let at = locator.find(&template.to_cedar());
        errors.push(
            Some(src),
            at,
            format!(
                "policy `{}` has a slot (`?principal` or `?resource`): policy templates are \
                 not supported; write a static policy",
                template.annotation("id").unwrap_or(id_str(template.id()))
            ),
        );
    }

    // Source order, so ids and errors read top to bottom.
    let mut in_order: Vec<(Option<usize>, &Policy)> = parsed
        .policies()
        .map(|p| (p.to_cedar().and_then(|text| locator.find(&text)), p))
        .collect();
    in_order.sort_by(|(a, pa), (b, pb)| {
        (a.is_none(), a, id_str(pa.id())).cmp(&(b.is_none(), b, id_str(pb.id())))
    });

    let mut renamed = PolicySet::new();
    let mut meta = HashMap::new();
    let mut ids = Vec::new();
    let mut first_use: HashMap<String, Option<usize>> = HashMap::new();
    for (at, policy) in in_order {
        let id = match policy.annotation("id") {
            Some(id) if id.trim().is_empty() => {
                errors.push(
                    Some(src),
                    at,
                    "@id must name the policy, e.g. @id(\"prod-max-ttl\")".to_owned(),
                );
                continue;
            }
            Some(id) => id,
            None => id_str(policy.id()),
        };
        if let Some(first) = first_use.get(id) {
            let first = first
                .and_then(|offset| line_col(src, offset))
                .map(|(line, _)| format!(" (first used at line {line})"))
                .unwrap_or_default();
            errors.push(
                Some(src),
                at,
                format!(
                    "policy id `{id}` is used by more than one policy{first}; give each policy \
                     its own @id (a policy without @id is called policyN, N its position)"
                ),
            );
            continue;
        }
        first_use.insert(id.to_owned(), at);

        let approval = match (policy.annotation("approval"), policy.effect()) {
            (None, _) => None,
            (Some(_), Effect::Forbid) => {
                errors.push(
                    Some(src),
                    at,
                    format!(
                        "for policy `{id}`, @approval is only allowed on a permit (a forbid \
                         always denies)"
                    ),
                );
                None
            }
            (Some(n), Effect::Permit) => match parse_approval(n) {
                Some(n) => Some(n),
                None => {
                    errors.push(
                        Some(src),
                        at,
                        format!(
                            "for policy `{id}`, @approval(\"{n}\") must be a whole number of \
                             approvers from 1 to {MAX_APPROVALS}"
                        ),
                    );
                    None
                }
            },
        };
        let reason = policy.annotation("reason").map(str::to_owned);

        let policy = if id == id_str(policy.id()) {
            policy.clone()
        } else {
            policy.new_id(PolicyId::new(id))
        };
        if let Err(e) = renamed.add(policy) {
            // Unreachable (ids are checked unique above and the policy is static), but an error
            // is better than a panic if Cedar ever disagrees.
            errors.push(Some(src), at, format!("for policy `{id}`, {e}"));
            continue;
        }
        ids.push(id.to_owned());
        meta.insert(id.to_owned(), PolicyMeta { approval, reason });
    }

    let result = Validator::new(schema().clone()).validate(&renamed, ValidationMode::Strict);
    let mut invalid: HashSet<&PolicyId> = HashSet::new();
    for error in result.validation_errors() {
        invalid.insert(error.policy_id());
        errors.diagnostic(Some(src), &DetailedError::from(error));
    }
    for warning in result.validation_warnings() {
        match warning {
            // A policy that can never apply is a mistake, and a dead `forbid` is a silent hole
            // in a never-automate list: Warrant rejects what Cedar only warns about here —
            // unless the policy already has an error, of which this is just the echo.
            ValidationWarning::ImpossiblePolicy(_)
            | ValidationWarning::InvalidActionApplication(_) => {
                if !invalid.contains(warning.policy_id()) {
                    errors.diagnostic(Some(src), &DetailedError::from(warning));
                }
            }
            _ => warnings.diagnostic(Some(src), &DetailedError::from(warning)),
        }
    }
    Some((renamed, meta, ids))
}

/// A policy id as text (`PolicyId` is also `AsRef` of Cedar's internal id type).
pub(super) fn id_str(id: &PolicyId) -> &str {
    id.as_ref()
}

/// `"2"` → 2; anything but plain digits in 1..=MAX_APPROVALS → None.
fn parse_approval(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_APPROVALS).contains(n))
}

/// Parse the entities file, check its types and its conformance to the schema, and flatten each
/// entity's ancestors (so evaluation needs no transitive closure over the whole file).
fn load_entities(json: &str, errors: &mut Findings) -> Option<HashMap<EntityUid, Entity>> {
    // Schema-less first, to name entity types the file may not declare (the schema would
    // accept `Resource` and `Cluster` entities, but those come from the request).
    let untyped = match Entities::from_json_str(json, None) {
        Ok(untyped) => untyped,
        Err(e) => {
            errors.diagnostic(None, &DetailedError::from(&e));
            return None;
        }
    };
    let mut disallowed: Vec<String> = untyped
        .iter()
        .map(Entity::uid)
        .filter(|uid| !FILE_ENTITY_TYPES.contains(&uid.type_name().to_string().as_str()))
        .map(|uid| {
            format!(
                "entity `{uid}` is not allowed: the entities file declares only Agent, Human \
                 and Group entities"
            )
        })
        .collect();
    if !disallowed.is_empty() {
        disallowed.sort();
        for message in disallowed {
            errors.push(None, None, message);
        }
        return None;
    }

    let typed = match Entities::from_json_str(json, Some(schema())) {
        Ok(typed) => typed,
        Err(e) => {
            errors.diagnostic(None, &DetailedError::from(&e));
            return None;
        }
    };
    let flattened = typed
        .iter()
        .map(Entity::uid)
        .filter(|uid| FILE_ENTITY_TYPES.contains(&uid.type_name().to_string().as_str()))
        .map(|uid| {
            let ancestors: HashSet<EntityUid> = typed
                .ancestors(&uid)
                .map(|a| a.cloned().collect())
                .unwrap_or_default();
            (uid.clone(), Entity::new_no_attrs(uid, ancestors))
        })
        .collect();
    Some(flattened)
}

/// Every error (or warning) found, with its position when known.
#[derive(Default)]
struct Findings {
    /// (is-in-entities, byte offset, message): policies first in source order, then entities.
    found: Vec<(bool, Option<usize>, String)>,
}

impl Findings {
    fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// One error in the policies text (`src`) at byte `at`, or in the entities file (`src` None).
    fn push(&mut self, src: Option<&str>, at: Option<usize>, message: String) {
        let place = match (src, at.and_then(|at| src.and_then(|s| line_col(s, at)))) {
            (Some(_), Some((line, col))) => format!("policies line {line}, column {col}: "),
            (Some(_), None) => "policies: ".to_owned(),
            (None, _) => "entities: ".to_owned(),
        };
        self.found
            .push((src.is_none(), at, format!("{place}{message}")));
    }

    /// One of Cedar's diagnostics, with its help text and any related diagnostics (Cedar puts
    /// the second and later parse errors there).
    fn diagnostic(&mut self, src: Option<&str>, d: &DetailedError) {
        let at = d.source_locations.first().map(|label| label.loc.start);
        let message = match &d.help {
            Some(help) => format!("{} (help: {help})", d.message),
            None => d.message.clone(),
        };
        self.push(src, at, message);
        for related in &d.related {
            self.diagnostic(src, related);
        }
    }

    /// One line per finding: policies in source order, then entities. Ties are broken by the
    /// text, because Cedar reports some errors in hash order and every replica must word a
    /// rejection the same way.
    fn into_lines(mut self) -> Vec<String> {
        self.found.sort_by(|(ea, a, ma), (eb, b, mb)| {
            (ea, a.is_none(), a, ma).cmp(&(eb, b.is_none(), b, mb))
        });
        self.found.dedup_by(|a, b| a.2 == b.2);
        self.found.into_iter().map(|(_, _, m)| m).collect()
    }
}

/// Finds where each policy's text starts in the source. Cedar keeps each policy's original text
/// but no public position, so we search for it, claiming each occurrence once (two identical
/// policies get their own positions).
struct Locator<'s> {
    src: &'s str,
    claimed: HashSet<usize>,
}

impl<'s> Locator<'s> {
    fn new(src: &'s str) -> Self {
        Locator {
            src,
            claimed: HashSet::new(),
        }
    }

    fn find(&mut self, text: &str) -> Option<usize> {
        if text.is_empty() {
            return None;
        }
        let at = self
            .src
            .match_indices(text)
            .map(|(at, _)| at)
            .find(|at| !self.claimed.contains(at))?;
        self.claimed.insert(at);
        Some(at)
    }
}

/// 1-based line and column (in characters) of byte `offset` in `src`.
fn line_col(src: &str, offset: usize) -> Option<(usize, usize)> {
    let before = src.get(..offset)?;
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Some((line, column))
}
