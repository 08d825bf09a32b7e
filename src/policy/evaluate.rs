//! Putting one [`Query`] to Cedar and reading its answer as a Warrant [`Decision`].
//!
//! Cedar wants every entity a request may touch in one store, and building that store costs about
//! a microsecond per entity. Rather than copy the whole entities file per request, we give it
//! only the entities Cedar can look up: the principal (with every group it is transitively in,
//! flattened at compile time) and the resource (with every path prefix as a parent), plus the
//! few entities that policy conditions name on the left of `in` (found at compile time). Our
//! schema gives entities no attributes, so `in` on the principal, the resource or a literal is
//! the only lookup there is, and it reads only the left side's ancestors: the answer is the same
//! as with the whole file and every prefix, at a cost that does not grow with either.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::LazyLock;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    Policy, PolicySet, PrincipalConstraint, Request, ResourceConstraint, RestrictedExpression,
};

use super::compile::PolicyMeta;
use super::{Action, Decision, PolicyError, Query, CLUSTER_ID};

/// Entity type names, parsed once.
struct TypeNames {
    agent: EntityTypeName,
    human: EntityTypeName,
    resource: EntityTypeName,
    cluster: EntityTypeName,
    action: EntityTypeName,
}

static TYPES: LazyLock<TypeNames> = LazyLock::new(|| {
    let name = |n: &str| {
        EntityTypeName::from_str(n)
            .expect("Agent, Human, Resource, Cluster, Action are valid names")
    };
    TypeNames {
        agent: name("Agent"),
        human: name("Human"),
        resource: name("Resource"),
        cluster: name("Cluster"),
        action: name("Action"),
    }
});

/// What can be computed once per bundle to answer queries quickly.
pub(super) struct Evaluator {
    authorizer: Authorizer,
    /// Per action and principal type, the action's entity uid and the policies whose scope can
    /// match: Cedar rebuilds and evaluates every policy it is given (about a microsecond each),
    /// and a policy whose scope cannot match can neither apply nor error, so the answer is the
    /// same with only these.
    candidates: HashMap<(Action, PrincipalKind), (EntityUid, PolicySet)>,
    /// Entities of the entities file, ancestors flattened, by uid.
    file: HashMap<EntityUid, Entity>,
    /// Entities every request carries: grouped actions and entities conditions look up.
    always: Vec<Entity>,
    always_uids: HashSet<EntityUid>,
    cluster: EntityUid,
    /// Some policy names `read` in its action scope (not merely any action).
    pub(super) governs_reads: bool,
}

impl Evaluator {
    pub(super) fn new(
        policy_set: &PolicySet,
        file: HashMap<EntityUid, Entity>,
    ) -> Result<Self, PolicyError> {
        let mut always: Vec<Entity> = Vec::new();
        let mut always_uids: HashSet<EntityUid> = HashSet::new();
        let mut add = |entity: Entity, always: &mut Vec<Entity>| {
            if always_uids.insert(entity.uid()) {
                always.push(entity);
            }
        };

        // Action entities matter only through their groups (`action in Action::"writes"`);
        // today's schema has none, and every entity in the store costs time per request.
        let action_entities = super::compile::schema()
            .action_entities()
            .map_err(|e| PolicyError::new(format!("schema actions: {e}")))?;
        for action in action_entities.iter() {
            if action_entities
                .ancestors(&action.uid())
                .is_some_and(|mut a| a.next().is_some())
            {
                add(action.clone(), &mut always);
            }
        }

        // A literal on the left of `in` in a condition (`Group::"oncall" in Group::"staff"`)
        // is dereferenced like the principal is, so it must be in the store with its
        // ancestors. Literals in the scope are only ever compared against, never looked up.
        let cluster = entity_uid(&TYPES.cluster, CLUSTER_ID);
        for uid in condition_literals(policy_set) {
            if uid.type_name() == &TYPES.resource {
                add(resource_entity(uid.id().unescaped()).1, &mut always);
            } else if let Some(entity) = file.get(&uid) {
                add(entity.clone(), &mut always);
            } else if uid == cluster {
                add(Entity::with_uid(uid), &mut always);
            }
        }

        let mut candidates = HashMap::new();
        for action in Action::ALL {
            let action_uid = entity_uid(&TYPES.action, action.as_str());
            for kind in [PrincipalKind::Agent, PrincipalKind::Human] {
                let matching = policy_set
                    .policies()
                    .filter(|p| scope_admits(p, &action_uid, kind.type_name(), &action_entities));
                let set = PolicySet::from_policies(matching.cloned())
                    .map_err(|e| PolicyError::new(format!("grouping policies by action: {e}")))?;
                candidates.insert((action, kind), (action_uid.clone(), set));
            }
        }
        let read = entity_uid(&TYPES.action, Action::Read.as_str());
        // In the scope, or in a condition (`when { action == Action::"read" }`).
        let governs_reads = policy_set.policies().any(|p| {
            p.entity_literals().contains(&read)
                || match p.action_constraint() {
                    ActionConstraint::Any | ActionConstraint::Eq(_) => false,
                    ActionConstraint::In(groups) => groups
                        .iter()
                        .any(|g| action_entities.is_ancestor_of(g, &read)),
                }
        });
        Ok(Evaluator {
            authorizer: Authorizer::new(),
            candidates,
            file,
            always,
            always_uids,
            cluster,
            governs_reads,
        })
    }

    pub(super) fn evaluate(&self, meta: &HashMap<String, PolicyMeta>, q: &Query<'_>) -> Decision {
        let Some((kind, principal)) = principal_uid(q.principal) else {
            return unusable(format!(
                "principal `{}` is neither agent/NAME nor human/NAME",
                q.principal
            ));
        };
        let Some((action, policy_set)) = self.candidates.get(&(q.action, kind)) else {
            return unusable(format!("no policies grouped for {} by {kind:?}", q.action));
        };

        let mut store = Vec::with_capacity(self.always.len() + 2);
        store.extend(self.always.iter().cloned());
        if !self.always_uids.contains(&principal) {
            store.push(
                self.file
                    .get(&principal)
                    .cloned()
                    .unwrap_or_else(|| Entity::with_uid(principal.clone())),
            );
        }
        let resource =
            if q.action == Action::Admin || (q.action == Action::Read && q.resource.is_empty()) {
                self.cluster.clone()
            } else {
                let (uid, entity) = resource_entity(q.resource);
                if !self.always_uids.contains(&uid) {
                    store.push(entity);
                }
                uid
            };
        // `add_entities` repairs the closure of what it adds; `from_entities` recomputes it
        // from scratch and takes twice as long.
        let entities = match Entities::empty().add_entities(store, None) {
            Ok(entities) => entities,
            Err(e) => return unusable(format!("building the request's entities: {e}")),
        };
        let context = match context(q) {
            Ok(context) => context,
            Err(e) => return unusable(format!("building the request's context: {e}")),
        };
        let request = match Request::new(principal, action.clone(), resource, context, None) {
            Ok(request) => request,
            Err(e) => return unusable(format!("building the request: {e}")),
        };

        // Policies that error (e.g. an overflow) are skipped, as Cedar specifies; deny wins.
        let response = self
            .authorizer
            .is_authorized(&request, policy_set, &entities);
        let mut policies: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| super::compile::id_str(id).to_owned())
            .collect();
        policies.sort();
        match response.decision() {
            cedar_policy::Decision::Deny => {
                let reason = policies
                    .iter()
                    .find_map(|id| meta.get(id).and_then(|m| m.reason.clone()));
                Decision::Deny { policies, reason }
            }
            cedar_policy::Decision::Allow => {
                let approvals = policies
                    .iter()
                    .filter_map(|id| meta.get(id).and_then(|m| m.approval))
                    .max();
                match approvals {
                    Some(approvals) => Decision::NeedsApproval {
                        approvals,
                        policies,
                    },
                    None => Decision::Allow { policies },
                }
            }
        }
    }
}

/// A query Cedar cannot be asked: denied, no policy, with the reason.
fn unusable(reason: String) -> Decision {
    Decision::Deny {
        policies: Vec::new(),
        reason: Some(reason),
    }
}

fn entity_uid(type_name: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(id))
}

/// The two principal entity types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PrincipalKind {
    Agent,
    Human,
}

impl PrincipalKind {
    fn type_name(self) -> &'static EntityTypeName {
        match self {
            PrincipalKind::Agent => &TYPES.agent,
            PrincipalKind::Human => &TYPES.human,
        }
    }
}

/// `agent/NAME` → `Agent::"NAME"`, `human/NAME` → `Human::"NAME"`.
fn principal_uid(principal: &str) -> Option<(PrincipalKind, EntityUid)> {
    let (kind, name) = principal.split_once('/')?;
    let kind = match kind {
        "agent" => PrincipalKind::Agent,
        "human" => PrincipalKind::Human,
        _ => return None,
    };
    Some((kind, entity_uid(kind.type_name(), name)))
}

/// Can `policy`'s scope match a request for `action` by a principal of type `principal_type`?
/// Errs on the side of yes: `principal in …` admits both types.
fn scope_admits(
    policy: &Policy,
    action: &EntityUid,
    principal_type: &EntityTypeName,
    action_entities: &Entities,
) -> bool {
    let action_in =
        |group: &EntityUid| group == action || action_entities.is_ancestor_of(group, action);
    let action_matches = match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(uid) => &uid == action,
        ActionConstraint::In(groups) => groups.iter().any(action_in),
    };
    let principal_matches = match policy.principal_constraint() {
        PrincipalConstraint::Any | PrincipalConstraint::In(_) => true,
        PrincipalConstraint::Eq(uid) => uid.type_name() == principal_type,
        PrincipalConstraint::Is(t) | PrincipalConstraint::IsIn(t, _) => &t == principal_type,
    };
    action_matches && principal_matches
}

/// `a/b/c` → `Resource::"a/b/c"`, in `Resource::"a/b"` and `Resource::"a"`. The prefixes
/// themselves need not be in the store: `in` looks only at the left side's ancestors.
fn resource_entity(path: &str) -> (EntityUid, Entity) {
    let uid = entity_uid(&TYPES.resource, path);
    let prefixes = path
        .match_indices('/')
        .map(|(at, _)| entity_uid(&TYPES.resource, &path[..at]))
        .collect();
    (uid.clone(), Entity::new_no_attrs(uid, prefixes))
}

/// Entity literals that occur in policy conditions beyond the scope: those Cedar may look up.
fn condition_literals(policy_set: &PolicySet) -> Vec<EntityUid> {
    let mut found = Vec::new();
    for policy in policy_set.policies() {
        // `entity_literals` lists every occurrence, the scope's included; what remains after
        // taking the scope's out is in `when`/`unless`.
        let mut occurrences: HashMap<EntityUid, usize> = HashMap::new();
        for uid in policy.entity_literals() {
            *occurrences.entry(uid).or_default() += 1;
        }
        let mut scope = Vec::new();
        match policy.principal_constraint() {
            PrincipalConstraint::In(uid)
            | PrincipalConstraint::Eq(uid)
            | PrincipalConstraint::IsIn(_, uid) => scope.push(uid),
            PrincipalConstraint::Any | PrincipalConstraint::Is(_) => {}
        }
        match policy.action_constraint() {
            ActionConstraint::In(uids) => scope.extend(uids),
            ActionConstraint::Eq(uid) => scope.push(uid),
            ActionConstraint::Any => {}
        }
        match policy.resource_constraint() {
            ResourceConstraint::In(uid)
            | ResourceConstraint::Eq(uid)
            | ResourceConstraint::IsIn(_, uid) => scope.push(uid),
            ResourceConstraint::Any | ResourceConstraint::Is(_) => {}
        }
        for uid in scope {
            if let Some(n) = occurrences.get_mut(&uid) {
                *n = n.saturating_sub(1);
            }
        }
        found.extend(
            occurrences
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(uid, _)| uid),
        );
    }
    found.sort_by_key(ToString::to_string);
    found.dedup();
    found
}

/// The request context, shaped as the schema's `RequestContext`.
pub(super) fn context(q: &Query<'_>) -> Result<Context, String> {
    let (hour, weekday, minute_of_day) = utc_calendar(q.now_ms);
    let long = |n: u64| RestrictedExpression::new_long(i64::try_from(n).unwrap_or(i64::MAX));
    let strings = |items: &mut dyn Iterator<Item = String>| {
        RestrictedExpression::new_set(items.map(RestrictedExpression::new_string))
    };
    Context::from_pairs([
        ("ttl_ms".to_owned(), long(q.ttl_ms)),
        (
            "intent".to_owned(),
            RestrictedExpression::new_string(q.intent.to_owned()),
        ),
        (
            "labels".to_owned(),
            strings(&mut q.labels.iter().map(|(k, v)| format!("{k}:{v}"))),
        ),
        (
            "has_task_key".to_owned(),
            RestrictedExpression::new_bool(q.has_task_key),
        ),
        (
            "takeover".to_owned(),
            RestrictedExpression::new_bool(q.takeover),
        ),
        ("hour".to_owned(), long(hour)),
        ("weekday".to_owned(), long(weekday)),
        ("minute_of_day".to_owned(), long(minute_of_day)),
        (
            "recent_labels".to_owned(),
            strings(&mut q.recent_labels.iter().cloned()),
        ),
    ])
    .map_err(|e| e.to_string())
}

/// `(hour 0-23, weekday 0 = Sunday .. 6, minute of the day 0-1439)` in UTC of a Unix time in ms.
pub(super) fn utc_calendar(now_ms: u64) -> (u64, u64, u64) {
    const DAY_S: u64 = 86_400;
    let seconds = now_ms / 1000;
    let minute_of_day = (seconds % DAY_S) / 60;
    // 1970-01-01 was a Thursday (4).
    let weekday = (seconds / DAY_S + 4) % 7;
    (minute_of_day / 60, weekday, minute_of_day)
}
