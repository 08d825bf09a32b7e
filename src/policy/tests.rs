use std::collections::{BTreeMap, BTreeSet};

use cedar_policy::{Authorizer, Entities, Entity, EntityUid, Request};

use super::evaluate::{context, utc_calendar};
use super::*;

const EXAMPLE: &str = include_str!("../../cluster/policies/example.cedar");
const EXAMPLE_ENTITIES: &str = include_str!("../../cluster/policies/example.entities.json");

/// 2024-03-15 14:30:45 UTC, a Friday.
const FRIDAY_AFTERNOON_MS: u64 = 1_710_513_045_000;
/// 2023-12-31 23:59:59 UTC, a Sunday.
const SUNDAY_NIGHT_MS: u64 = 1_704_067_199_000;

fn bundle(policies: &str) -> PolicyBundle {
    PolicyBundle::compile(1, policies, None, DEFAULT_INTENT_WINDOW_MS)
        .unwrap_or_else(|e| panic!("policies should compile:\n{e}"))
}

fn bundle_with(policies: &str, entities: &str) -> PolicyBundle {
    PolicyBundle::compile(1, policies, Some(entities), DEFAULT_INTENT_WINDOW_MS)
        .unwrap_or_else(|e| panic!("policies and entities should compile:\n{e}"))
}

fn example() -> PolicyBundle {
    bundle_with(EXAMPLE, EXAMPLE_ENTITIES)
}

fn rejected(policies: &str) -> String {
    match PolicyBundle::compile(1, policies, None, DEFAULT_INTENT_WINDOW_MS) {
        Ok(b) => panic!("policies should be rejected, compiled to {b:?}"),
        Err(e) => e.to_string(),
    }
}

fn rejected_entities(policies: &str, entities: &str) -> String {
    match PolicyBundle::compile(1, policies, Some(entities), DEFAULT_INTENT_WINDOW_MS) {
        Ok(b) => panic!("entities should be rejected, compiled to {b:?}"),
        Err(e) => e.to_string(),
    }
}

fn allow(ids: &[&str]) -> Decision {
    Decision::Allow {
        policies: ids.iter().map(|s| s.to_string()).collect(),
    }
}

fn deny(ids: &[&str], reason: Option<&str>) -> Decision {
    Decision::Deny {
        policies: ids.iter().map(|s| s.to_string()).collect(),
        reason: reason.map(str::to_owned),
    }
}

fn default_deny() -> Decision {
    deny(&[], None)
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn acquire<'a>(principal: &'a str, resource: &'a str) -> Query<'a> {
    Query::new(principal, Action::Acquire, resource)
}

// --- the schema and the shipped example ---

#[test]
fn embedded_schema_parses_and_declares_every_action() {
    let schema = compile::schema();
    let declared: Vec<String> = schema
        .actions()
        .map(|a| a.id().unescaped().to_owned())
        .collect();
    for action in Action::ALL {
        assert!(
            declared.iter().any(|d| d == action.as_str()),
            "schema lacks action {action}"
        );
    }
}

#[test]
fn example_policies_and_entities_validate() {
    let summary = validate(EXAMPLE, Some(EXAMPLE_ENTITIES)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        summary.policy_ids,
        [
            "holders-may-release",
            "staging-agents-free",
            "prod-agents-acquire",
            "prod-payments-two-humans",
            "prod-auth-two-humans",
            "deployers-take-over-in-hours",
            "oncall-approve-revoke-prod",
            "admins-administer",
            "prod-max-15-minutes",
            "intern-bot-never-revokes",
            "no-scale-against-recent-scale",
        ]
    );
    assert_eq!(summary.entity_count, 8);
    let with_reason = EXAMPLE.matches("@reason(").count();
    assert_eq!(
        with_reason,
        summary.policy_ids.len(),
        "every example policy has a @reason"
    );
}

#[test]
fn example_policy_is_a_never_automate_list() {
    let b = example();
    let ten_min = 600_000;

    let mut q = acquire("agent/scaler", "k8s/staging/web");
    q.ttl_ms = 3_600_000;
    assert_eq!(b.evaluate(&q), allow(&["staging-agents-free"]));

    let mut q = acquire("agent/scaler", "k8s/prod/web");
    q.ttl_ms = ten_min;
    assert_eq!(b.evaluate(&q), allow(&["prod-agents-acquire"]));

    q.ttl_ms = 900_001;
    assert_eq!(
        b.evaluate(&q),
        deny(
            &["prod-max-15-minutes"],
            Some("nothing under k8s/prod is held for more than 15 minutes; ask for a shorter ttl and renew")
        )
    );

    let mut q = acquire("agent/scaler", "k8s/prod/payments/db");
    q.ttl_ms = ten_min;
    assert_eq!(
        b.evaluate(&q),
        Decision::NeedsApproval {
            approvals: 2,
            policies: vec![
                "prod-agents-acquire".into(),
                "prod-payments-two-humans".into()
            ],
        }
    );
    let mut q = acquire("human/alice", "k8s/prod/auth");
    q.ttl_ms = ten_min;
    assert_eq!(
        b.evaluate(&q),
        Decision::NeedsApproval {
            approvals: 2,
            policies: vec!["prod-auth-two-humans".into()],
        }
    );

    let approve = Query::new("human/alice", Action::Approve, "k8s/prod/payments");
    assert_eq!(b.evaluate(&approve), allow(&["oncall-approve-revoke-prod"]));
    let approve = Query::new("human/carol", Action::Approve, "k8s/prod/payments");
    assert_eq!(b.evaluate(&approve), default_deny());
    let approve = Query::new("human/alice", Action::Approve, "k8s/staging/web");
    assert_eq!(b.evaluate(&approve), default_deny());

    let revoke = Query::new("agent/intern-bot", Action::Revoke, "k8s/prod/web");
    assert_eq!(
        b.evaluate(&revoke),
        deny(
            &["intern-bot-never-revokes"],
            Some("intern-bot may never revoke someone else's lease")
        )
    );

    let release = Query::new("agent/intern-bot", Action::Release, "k8s/prod/payments");
    assert_eq!(b.evaluate(&release), allow(&["holders-may-release"]));

    let admin = Query::new("human/root", Action::Admin, "");
    assert_eq!(b.evaluate(&admin), allow(&["admins-administer"]));
    let admin = Query::new("human/alice", Action::Admin, "");
    assert_eq!(b.evaluate(&admin), default_deny());

    let mut takeover = Query::new("agent/deployer", Action::Takeover, "k8s/prod/web");
    takeover.takeover = true;
    takeover.ttl_ms = ten_min;
    takeover.now_ms = FRIDAY_AFTERNOON_MS;
    assert_eq!(
        b.evaluate(&takeover),
        allow(&["deployers-take-over-in-hours"])
    );
    takeover.now_ms = SUNDAY_NIGHT_MS;
    assert_eq!(b.evaluate(&takeover), default_deny());

    let up = labels(&[("scale", "up")]);
    let recent = set(&["scale:down", "team:web"]);
    let mut q = acquire("agent/scaler", "k8s/staging/web");
    q.labels = &up;
    q.recent_labels = &recent;
    assert_eq!(
        b.evaluate(&q),
        deny(
            &["no-scale-against-recent-scale"],
            Some("a lease with the opposite scale intent was granted on this subtree within the intent window")
        )
    );
}

// --- rejection, with Cedar's own messages ---

#[test]
fn unknown_entity_type_is_rejected_with_cedars_message() {
    let e = rejected("permit(principal == User::\"alice\", action, resource);");
    assert!(e.contains("unrecognized entity type `User`"), "{e}");
    assert!(e.starts_with("policies line 1, column "), "{e}");
}

#[test]
fn unknown_action_is_rejected_with_cedars_message() {
    let e = rejected("\npermit(principal, action == Action::\"delete\", resource);");
    assert!(
        e.contains("unrecognized action `Action::\"delete\"`"),
        "{e}"
    );
    assert!(e.starts_with("policies line 2, column "), "{e}");
}

#[test]
fn wrong_attribute_type_is_rejected_with_cedars_message() {
    let e = rejected(
        "@id(\"ttl-as-text\")\npermit(principal, action, resource) when { context.ttl_ms like \"9*\" };",
    );
    assert!(e.contains("for policy `ttl-as-text`"), "{e}");
    assert!(e.contains("Long"), "{e}");
    assert!(e.contains("String"), "{e}");
    assert!(e.starts_with("policies line 2, column "), "{e}");
}

#[test]
fn unknown_context_attribute_is_rejected_once_per_action_in_a_stable_order() {
    let e = rejected("permit(principal, action, resource) when { context.tll_ms > 5 };");
    let actions: Vec<&str> = e
        .lines()
        .map(|line| {
            assert!(line.contains("attribute `tll_ms` in context for"), "{e}");
            assert!(line.contains("(help: did you mean `ttl_ms`?)"), "{e}");
            line.split('"').nth(1).expect("an action name")
        })
        .collect();
    // Cedar reports these in hash order; replicas must word a rejection identically.
    assert_eq!(
        actions,
        [
            "acquire",
            "admin",
            "approve",
            "checkpoint",
            "read",
            "release",
            "revoke",
            "takeover"
        ]
    );
}

#[test]
fn a_policy_that_can_never_apply_is_rejected() {
    // `admin` applies to the Cluster, never to a Resource: Cedar only warns.
    let e = rejected(
        "@id(\"dead\") forbid(principal, action == Action::\"admin\", resource in Resource::\"k8s\");",
    );
    assert!(e.contains("for policy `dead`, policy is impossible"), "{e}");
    assert!(
        e.contains("for policy `dead`, unable to find an applicable action"),
        "{e}"
    );
    let e = rejected("@id(\"off\") forbid(principal, action, resource) when { false };");
    assert!(e.contains("for policy `off`, policy is impossible"), "{e}");
}

#[test]
fn confusable_text_is_a_warning_not_an_error() {
    // A Cyrillic "а" among Latin letters.
    let mixed = "permit(principal, action, resource) when { context.intent == \"d\u{430}ta\" };";
    let summary = validate(mixed, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
    assert!(
        summary.warnings[0].starts_with("policies line 1, column "),
        "{:?}",
        summary.warnings
    );
    bundle(mixed);
    let example = validate(EXAMPLE, Some(EXAMPLE_ENTITIES)).expect("valid");
    assert!(example.warnings.is_empty(), "{:?}", example.warnings);
}

#[test]
fn syntax_error_is_rejected_with_line_and_column() {
    let e = rejected("permit(principal, action, resource)\nwhen { context.ttl_ms > };");
    assert!(
        e.starts_with("policies line 2, column 25: unexpected token `}`"),
        "{e}"
    );
}

#[test]
fn every_syntax_error_is_reported_not_just_the_first() {
    let e = rejected(
        "permit(principal, action, resource) when { 1 + };\n\
         permit(principal, action, resource);\n\
         forbid(principal, action resource);",
    );
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert!(lines[0].starts_with("policies line 1, "), "{e}");
    assert!(lines[1].starts_with("policies line 3, "), "{e}");
}

#[test]
fn every_validation_error_is_reported_not_just_the_first() {
    let e = rejected(
        "@id(\"a\") permit(principal is User, action, resource);\n\
         @id(\"ok\") permit(principal, action, resource);\n\
         @id(\"b\") permit(principal, action == Action::\"fly\", resource);",
    );
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert!(lines[0].contains("`a`") && lines[0].contains("User"), "{e}");
    assert!(lines[1].contains("fly"), "{e}");
}

#[test]
fn templates_are_rejected() {
    let e = rejected("permit(principal == ?principal, action, resource);");
    assert!(e.contains("policy templates are not supported"), "{e}");
    assert!(e.starts_with("policies line 1, column 1:"), "{e}");
}

#[test]
fn duplicate_ids_are_rejected() {
    let e = rejected(
        "@id(\"same\") permit(principal, action, resource);\n\
         @id(\"same\") forbid(principal, action, resource);",
    );
    assert!(
        e.contains("policy id `same` is used by more than one policy (first used at line 1)"),
        "{e}"
    );
    assert!(e.starts_with("policies line 2, column 1:"), "{e}");

    // A policy without @id is called policyN; an @id may not take that name from it.
    let e = rejected(
        "@id(\"policy1\") permit(principal, action, resource);\n\
         forbid(principal, action, resource);",
    );
    assert!(
        e.contains("policy id `policy1` is used by more than one policy"),
        "{e}"
    );

    let e = rejected("@id(\"\") permit(principal, action, resource);");
    assert!(e.contains("@id must name the policy"), "{e}");
}

#[test]
fn policies_without_id_get_cedars_default_ids() {
    let b = bundle(
        "permit(principal, action == Action::\"acquire\", resource);\n\
         @id(\"named\") permit(principal, action == Action::\"acquire\", resource);\n\
         permit(principal, action == Action::\"acquire\", resource);",
    );
    assert_eq!(b.policy_ids(), ["policy0", "named", "policy2"]);
    assert_eq!(
        b.evaluate(&acquire("agent/a", "x")),
        allow(&["named", "policy0", "policy2"])
    );
}

#[test]
fn entities_file_may_declare_only_principals_and_groups() {
    let policies = "permit(principal, action, resource);";
    let e = rejected_entities(
        policies,
        r#"[{"uid": {"type": "Resource", "id": "k8s"}, "attrs": {}, "parents": []}]"#,
    );
    assert!(
        e.contains("entities: entity `Resource::\"k8s\"` is not allowed"),
        "{e}"
    );

    let e = rejected_entities(
        policies,
        r#"[{"uid": {"type": "Team", "id": "sre"}, "attrs": {}, "parents": []}]"#,
    );
    assert!(
        e.contains("entities: entity `Team::\"sre\"` is not allowed"),
        "{e}"
    );

    // A human cannot be a member of an agent: Cedar's conformance check, in its words.
    let e = rejected_entities(
        policies,
        r#"[{"uid": {"type": "Human", "id": "alice"}, "attrs": {},
             "parents": [{"type": "Agent", "id": "bot"}]}]"#,
    );
    assert!(
        e.contains("`Human::\"alice\"` is not allowed to have an ancestor of type `Agent`"),
        "{e}"
    );

    let e = rejected_entities(policies, r#"[{"uid": {"type": "Human", "id": "alice"}, "#);
    assert!(
        e.starts_with("entities: error during entity deserialization"),
        "{e}"
    );

    let e = rejected_entities(
        policies,
        r#"[{"uid": {"type": "Human", "id": "alice"}, "attrs": {"age": 3}, "parents": []}]"#,
    );
    assert!(
        e.contains("attribute `age` on `Human::\"alice\"` should not exist"),
        "{e}"
    );
}

#[test]
fn errors_in_policies_and_entities_are_reported_together() {
    let e = rejected_entities(
        "permit(principal is User, action, resource);",
        r#"[{"uid": {"type": "Cluster", "id": "warrant"}, "attrs": {}, "parents": []}]"#,
    );
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert!(lines[0].starts_with("policies line 1"), "{e}");
    assert!(lines[1].starts_with("entities: "), "{e}");
}

#[test]
fn validate_reports_exactly_what_compile_reports() {
    for (policies, entities) in [
        ("permit(principal is User, action, resource);", None),
        ("permit(principal, action, resource) when {", None),
        (
            "@approval(\"0\") permit(principal, action, resource);",
            Some("[]"),
        ),
        ("permit(principal, action, resource);", Some("{}")),
    ] {
        let compiled = PolicyBundle::compile(7, policies, entities, 1).map(|_| ());
        let validated = validate(policies, entities).map(|_| ());
        assert!(compiled.is_err(), "{policies}");
        assert_eq!(compiled, validated, "{policies}");
    }
}

// --- decisions ---

#[test]
fn deny_wins_over_permit() {
    let b = bundle(
        "@id(\"all\") permit(principal, action, resource);\n\
         @id(\"no-prod\") forbid(principal, action, resource in Resource::\"k8s/prod\");",
    );
    assert_eq!(
        b.evaluate(&acquire("agent/a", "k8s/prod/web")),
        deny(&["no-prod"], None)
    );
    assert_eq!(
        b.evaluate(&acquire("agent/a", "k8s/staging")),
        allow(&["all"])
    );
}

#[test]
fn default_deny_names_no_policy() {
    let b = bundle("@id(\"humans\") permit(principal is Human, action, resource);");
    assert_eq!(b.evaluate(&acquire("agent/a", "k8s")), default_deny());
    let empty = bundle("");
    assert_eq!(empty.evaluate(&acquire("human/h", "k8s")), default_deny());
}

#[test]
fn deny_reason_is_the_first_determining_forbids_reason_by_id() {
    let b = bundle(
        "@id(\"all\") permit(principal, action, resource);\n\
         @id(\"z-late\") @reason(\"z says no\") forbid(principal, action, resource);\n\
         @id(\"b-middle\") @reason(\"b says no\") forbid(principal, action, resource);\n\
         @id(\"a-first\") forbid(principal, action, resource);",
    );
    assert_eq!(
        b.evaluate(&acquire("agent/a", "x")),
        deny(&["a-first", "b-middle", "z-late"], Some("b says no"))
    );
}

#[test]
fn policy_on_a_subtree_covers_descendants_but_not_lookalike_siblings() {
    let b = bundle("@id(\"prod\") permit(principal, action, resource in Resource::\"k8s/prod\");");
    for covered in ["k8s/prod", "k8s/prod/payments", "k8s/prod/payments/db"] {
        assert_eq!(
            b.evaluate(&acquire("agent/a", covered)),
            allow(&["prod"]),
            "{covered}"
        );
    }
    for outside in [
        "k8s/production",
        "k8s/production/db",
        "k8s",
        "prod",
        "x/k8s/prod",
    ] {
        assert_eq!(
            b.evaluate(&acquire("agent/a", outside)),
            default_deny(),
            "{outside}"
        );
    }
}

#[test]
fn groups_come_from_the_entities_file_including_nested_groups() {
    let entities = r#"[
        {"uid": {"type": "Group", "id": "oncall"}, "attrs": {}, "parents": [{"type": "Group", "id": "staff"}]},
        {"uid": {"type": "Human", "id": "alice"}, "attrs": {}, "parents": [{"type": "Group", "id": "oncall"}]},
        {"uid": {"type": "Agent", "id": "bot"}, "attrs": {}, "parents": [{"type": "Group", "id": "bots"}]}
    ]"#;
    let b = bundle_with(
        "@id(\"staff\") permit(principal in Group::\"staff\", action == Action::\"approve\", resource);\n\
         @id(\"bots\") permit(principal in Group::\"bots\", action == Action::\"acquire\", resource);\n\
         @id(\"literal\") permit(principal, action == Action::\"checkpoint\", resource)\n\
             when { Group::\"oncall\" in Group::\"staff\" };",
        entities,
    );
    let approve = |p| Query::new(p, Action::Approve, "k8s");
    assert_eq!(b.evaluate(&approve("human/alice")), allow(&["staff"]));
    assert_eq!(b.evaluate(&approve("human/bob")), default_deny());
    assert_eq!(b.evaluate(&approve("agent/alice")), default_deny());
    assert_eq!(b.evaluate(&acquire("agent/bot", "k8s")), allow(&["bots"]));
    assert_eq!(b.evaluate(&acquire("human/bot", "k8s")), default_deny());
    // An entity named by a policy is looked up with its ancestors too.
    let checkpoint = Query::new("agent/anyone", Action::Checkpoint, "k8s");
    assert_eq!(b.evaluate(&checkpoint), allow(&["literal"]));
}

#[test]
fn approval_annotation_asks_for_the_largest_count_among_determining_permits() {
    let b = bundle(
        "@id(\"plain\") permit(principal, action == Action::\"acquire\", resource);\n\
         @id(\"one\") @approval(\"1\") permit(principal, action, resource in Resource::\"db\");\n\
         @id(\"three\") @approval(\"3\") permit(principal, action, resource in Resource::\"db/main\");",
    );
    assert_eq!(b.evaluate(&acquire("agent/a", "web")), allow(&["plain"]));
    assert_eq!(
        b.evaluate(&acquire("agent/a", "db/replica")),
        Decision::NeedsApproval {
            approvals: 1,
            policies: vec!["one".into(), "plain".into()]
        }
    );
    assert_eq!(
        b.evaluate(&acquire("agent/a", "db/main/shard")),
        Decision::NeedsApproval {
            approvals: 3,
            policies: vec!["one".into(), "plain".into(), "three".into()]
        }
    );
    // Deny still wins over a permit that asks for approval.
    let b = bundle(
        "@approval(\"2\") permit(principal, action, resource);\n\
         forbid(principal, action, resource) when { context.takeover };",
    );
    let mut q = acquire("agent/a", "db");
    q.takeover = true;
    assert_eq!(b.evaluate(&q), deny(&["policy1"], None));
}

#[test]
fn approval_annotation_must_be_a_count_from_1_to_16_on_a_permit() {
    for bad in ["0", "17", "two", "+2", " 2", "", "-1", "99999999999"] {
        let e = rejected(&format!(
            "@id(\"p\") @approval(\"{bad}\") permit(principal, action, resource);"
        ));
        assert!(
            e.contains("for policy `p`, @approval") && e.contains("from 1 to 16"),
            "{bad:?}: {e}"
        );
    }
    let e = rejected("@id(\"f\") @approval(\"2\") forbid(principal, action, resource);");
    assert!(
        e.contains("for policy `f`, @approval is only allowed on a permit"),
        "{e}"
    );
    for good in ["1", "16"] {
        bundle(&format!(
            "@approval(\"{good}\") permit(principal, action, resource);"
        ));
    }
}

#[test]
fn intent_conflict_is_a_plain_forbid_on_context_labels() {
    let b = bundle(
        "@id(\"scale\") permit(principal, action == Action::\"acquire\", resource);\n\
         @id(\"no-up-after-down\")\n\
         @reason(\"a scale-down is in progress on this subtree\")\n\
         forbid(principal, action == Action::\"acquire\", resource)\n\
         when { context.labels.contains(\"scale:up\") && context.recent_labels.contains(\"scale:down\") };",
    );
    let up = labels(&[("scale", "up"), ("team", "web")]);
    let down_recently = set(&["scale:down"]);
    let up_recently = set(&["scale:up"]);

    let mut q = acquire("agent/scaler", "k8s/prod/web");
    q.labels = &up;
    assert_eq!(b.evaluate(&q), allow(&["scale"]));
    q.recent_labels = &up_recently;
    assert_eq!(b.evaluate(&q), allow(&["scale"]));
    q.recent_labels = &down_recently;
    assert_eq!(
        b.evaluate(&q),
        deny(
            &["no-up-after-down"],
            Some("a scale-down is in progress on this subtree")
        )
    );
}

#[test]
fn context_carries_every_query_field() {
    let b = bundle(
        "@id(\"all\") permit(principal, action == Action::\"acquire\", resource)\n\
         when {\n\
           context.ttl_ms == 30000 && context.intent == \"rotate certs\" &&\n\
           context.labels == [\"env:prod\", \"team:sec\"] && context.has_task_key &&\n\
           !context.takeover && context.recent_labels.isEmpty()\n\
         };",
    );
    let l = labels(&[("team", "sec"), ("env", "prod")]);
    let mut q = acquire("agent/a", "certs");
    q.ttl_ms = 30_000;
    q.intent = "rotate certs";
    q.labels = &l;
    q.has_task_key = true;
    assert_eq!(b.evaluate(&q), allow(&["all"]));
    q.has_task_key = false;
    assert_eq!(b.evaluate(&q), default_deny());
}

#[test]
fn hour_weekday_and_minute_come_from_now_ms_in_utc() {
    assert_eq!(utc_calendar(0), (0, 4, 0)); // Thursday 1970-01-01 00:00
    assert_eq!(utc_calendar(FRIDAY_AFTERNOON_MS), (14, 5, 14 * 60 + 30));
    assert_eq!(utc_calendar(SUNDAY_NIGHT_MS), (23, 0, 1439));
    assert_eq!(utc_calendar(SUNDAY_NIGHT_MS + 1000), (0, 1, 0)); // Monday 2024-01-01

    let b = bundle(
        "@id(\"friday-1430\") permit(principal, action, resource)\n\
         when { context.weekday == 5 && context.hour == 14 && context.minute_of_day == 870 };",
    );
    let mut q = acquire("agent/a", "x");
    q.now_ms = FRIDAY_AFTERNOON_MS;
    assert_eq!(b.evaluate(&q), allow(&["friday-1430"]));
    q.now_ms = SUNDAY_NIGHT_MS;
    assert_eq!(b.evaluate(&q), default_deny());
}

#[test]
fn admin_targets_the_cluster_whatever_the_resource() {
    let b = bundle(
        "@id(\"root\") permit(principal == Human::\"root\", action == Action::\"admin\", resource == Cluster::\"warrant\");",
    );
    for resource in ["", "k8s/prod", "whatever"] {
        let q = Query::new("human/root", Action::Admin, resource);
        assert_eq!(b.evaluate(&q), allow(&["root"]));
    }
    assert_eq!(
        b.evaluate(&Query::new("agent/root", Action::Admin, "")),
        default_deny()
    );
}

#[test]
fn malformed_principal_is_denied_with_a_reason_not_a_panic() {
    let b = bundle("permit(principal, action, resource);");
    for principal in ["root", "robot/x", ""] {
        match b.evaluate(&acquire(principal, "x")) {
            Decision::Deny { policies, reason } => {
                assert!(policies.is_empty());
                assert!(reason.unwrap_or_default().contains("agent/NAME"));
            }
            other => panic!("{principal:?}: {other:?}"),
        }
    }
}

#[test]
fn a_policy_that_errors_is_skipped_as_cedar_specifies() {
    let b = bundle(
        "@id(\"all\") permit(principal, action, resource);\n\
         @id(\"overflows\") forbid(principal, action, resource)\n\
         when { context.ttl_ms * 9223372036854775807 > 0 };",
    );
    let mut q = acquire("agent/a", "x");
    q.ttl_ms = 2;
    assert_eq!(b.evaluate(&q), allow(&["all"]));
    q.ttl_ms = u64::MAX; // clamped to i64::MAX, still overflows
    assert_eq!(b.evaluate(&q), allow(&["all"]));
}

/// The same question put to Cedar the plain way: the whole entities file, every resource in
/// play with its prefix chain (each link a direct parent only), and a request checked against
/// the schema (which checks our context too).
fn plain_cedar(b: &PolicyBundle, q: &Query<'_>) -> (bool, Vec<String>) {
    let schema = compile::schema();
    let uid = |text: String| text.parse::<EntityUid>().expect("a valid uid");
    let (kind, name) = q.principal.split_once('/').expect("kind/name");
    let principal = uid(format!(
        "{}::\"{name}\"",
        if kind == "agent" { "Agent" } else { "Human" }
    ));
    let mut entities =
        Entities::from_json_str(b.entities_text().unwrap_or("[]"), Some(schema)).expect("entities");
    // Every resource is in its path prefixes: the request's and those the policies name.
    let chain = |path: &str| -> Vec<Entity> {
        let segments: Vec<&str> = path.split('/').collect();
        let prefixes: Vec<EntityUid> = (1..=segments.len())
            .map(|n| uid(format!("Resource::\"{}\"", segments[..n].join("/"))))
            .collect();
        (0..prefixes.len())
            .map(|i| {
                let parent = i.checked_sub(1).map(|j| prefixes[j].clone());
                Entity::new_no_attrs(prefixes[i].clone(), parent.into_iter().collect())
            })
            .collect()
    };
    let policy_set = compile::compile(b.policies_text(), b.entities_text())
        .expect("compiles")
        .policy_set;
    let named: Vec<Entity> = policy_set
        .policies()
        .flat_map(|p| p.entity_literals())
        .filter(|e| e.type_name().to_string() == "Resource")
        .flat_map(|e| chain(e.id().unescaped()))
        .collect();
    entities = entities
        .upsert_entities(named, Some(schema))
        .expect("named resources");
    let resource =
        if q.action == Action::Admin || (q.action == Action::Read && q.resource.is_empty()) {
            uid("Cluster::\"warrant\"".to_owned())
        } else {
            entities = entities
                .upsert_entities(chain(q.resource), Some(schema))
                .expect("request chain");
            uid(format!("Resource::\"{}\"", q.resource))
        };
    if entities.get(&principal).is_none() {
        entities = entities
            .add_entities([Entity::with_uid(principal.clone())], Some(schema))
            .expect("principal");
    }
    let action = uid(format!("Action::\"{}\"", q.action));
    let request = Request::new(
        principal,
        action,
        resource,
        context(q).expect("context"),
        Some(schema),
    )
    .expect("the request conforms to the schema");
    let response = Authorizer::new().is_authorized(&request, &policy_set, &entities);
    let mut ids: Vec<String> = response
        .diagnostics()
        .reason()
        .map(|id| compile::id_str(id).to_owned())
        .collect();
    ids.sort();
    (response.decision() == cedar_policy::Decision::Allow, ids)
}

#[test]
fn evaluation_with_the_few_reachable_entities_matches_plain_cedar_with_the_whole_file() {
    let entities = r#"[
        {"uid": {"type": "Group", "id": "oncall"}, "attrs": {}, "parents": [{"type": "Group", "id": "staff"}]},
        {"uid": {"type": "Group", "id": "admins"}, "attrs": {}, "parents": [{"type": "Group", "id": "staff"}]},
        {"uid": {"type": "Human", "id": "alice"}, "attrs": {}, "parents": [{"type": "Group", "id": "oncall"}]},
        {"uid": {"type": "Human", "id": "root"}, "attrs": {}, "parents": [{"type": "Group", "id": "admins"}]},
        {"uid": {"type": "Agent", "id": "deployer"}, "attrs": {}, "parents": [{"type": "Group", "id": "deployers"}]},
        {"uid": {"type": "Agent", "id": "intern-bot"}, "attrs": {}, "parents": []}
    ]"#;
    let extra = "\n@id(\"staff-checkpoint\") permit(principal in Group::\"staff\", \
                 action == Action::\"checkpoint\", resource)\n\
                 when { Group::\"oncall\" in Group::\"staff\" && \
                 Resource::\"k8s/prod/payments\" in Resource::\"k8s/prod\" };\n\
                 @id(\"oncall-revoke\") permit(principal in Group::\"oncall\", \
                 action == Action::\"revoke\", resource)\n\
                 when { Group::\"oncall\" in Group::\"staff\" };";
    let b = bundle_with(&format!("{EXAMPLE}{extra}"), entities);
    let up = labels(&[("scale", "up")]);
    let down = set(&["scale:down"]);
    let principals = [
        "agent/deployer",
        "agent/intern-bot",
        "agent/stranger",
        "human/alice",
        "human/root",
        "human/stranger",
    ];
    let resources = [
        "k8s",
        "k8s/prod",
        "k8s/prod/payments/db",
        "k8s/prod/auth",
        "k8s/production",
        "k8s/staging/web",
        "",
    ];
    let mut compared = 0;
    for principal in principals {
        for action in Action::ALL {
            for resource in resources {
                for (ttl_ms, now_ms) in
                    [(60_000, FRIDAY_AFTERNOON_MS), (3_600_000, SUNDAY_NIGHT_MS)]
                {
                    let mut q = Query::new(principal, action, resource);
                    q.ttl_ms = ttl_ms;
                    q.now_ms = now_ms;
                    q.labels = &up;
                    q.recent_labels = if ttl_ms == 60_000 {
                        &down
                    } else {
                        &NO_RECENT_LABELS
                    };
                    let ours = b.evaluate(&q);
                    let (allowed, ids) = plain_cedar(&b, &q);
                    assert_eq!(
                        !matches!(ours, Decision::Deny { .. }),
                        allowed,
                        "{principal} {action} {resource}: {ours:?}"
                    );
                    assert_eq!(ours.policies(), ids, "{principal} {action} {resource}");
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 6 * 8 * 7 * 2);
}

// --- the bundle as replicated state ---

#[test]
fn serde_round_trip_gives_an_equal_bundle_that_decides_the_same() {
    let b = PolicyBundle::compile(42, EXAMPLE, Some(EXAMPLE_ENTITIES), 123_000).expect("compiles");
    let json = serde_json::to_string(&b).expect("serializes");
    let from_json: PolicyBundle = serde_json::from_str(&json).expect("deserializes");
    let binary = bincode::serialize(&b).expect("serializes");
    let from_binary: PolicyBundle = bincode::deserialize(&binary).expect("deserializes");

    for copy in [&from_json, &from_binary] {
        assert_eq!(copy, &b);
        assert_eq!(copy.version(), 42);
        assert_eq!(copy.intent_window_ms(), 123_000);
        assert_eq!(copy.policies_text(), EXAMPLE);
        assert_eq!(copy.entities_text(), Some(EXAMPLE_ENTITIES));
        for (principal, action, resource, ttl_ms) in [
            (
                "agent/scaler",
                Action::Acquire,
                "k8s/prod/payments/db",
                60_000,
            ),
            ("agent/scaler", Action::Acquire, "k8s/prod/web", 1_000_000),
            ("human/alice", Action::Approve, "k8s/prod/auth", 0),
            ("human/root", Action::Admin, "", 0),
            ("agent/nobody", Action::Revoke, "k8s", 0),
        ] {
            let mut q = Query::new(principal, action, resource);
            q.ttl_ms = ttl_ms;
            assert_eq!(copy.evaluate(&q), b.evaluate(&q));
        }
    }
    let value: serde_json::Value = serde_json::from_str(&json).expect("json");
    let keys: Vec<&str> = value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["version", "policies", "entities", "intent_window_ms"]
    );
}

#[test]
fn deserializing_an_invalid_bundle_fails_with_the_policy_error() {
    let json = r#"{"version": 1, "policies": "permit(principal is User, action, resource);",
                   "entities": null, "intent_window_ms": 1}"#;
    let e = serde_json::from_str::<PolicyBundle>(json).expect_err("invalid");
    assert!(
        e.to_string().contains("unrecognized entity type `User`"),
        "{e}"
    );
}

#[test]
fn bundles_are_equal_by_version_texts_and_window() {
    let p = "permit(principal, action, resource);";
    let a = PolicyBundle::compile(1, p, None, 10).expect("compiles");
    assert_eq!(a, a.clone());
    assert_eq!(a, PolicyBundle::compile(1, p, None, 10).expect("compiles"));
    assert_ne!(a, PolicyBundle::compile(2, p, None, 10).expect("compiles"));
    assert_ne!(a, PolicyBundle::compile(1, p, None, 11).expect("compiles"));
    assert_ne!(
        a,
        PolicyBundle::compile(1, p, Some("[]"), 10).expect("compiles")
    );
    assert_ne!(
        a,
        PolicyBundle::compile(1, &format!("{p}\n"), None, 10).expect("compiles")
    );
}

#[test]
fn bundle_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<PolicyBundle>();
}

#[test]
fn actions_parse_from_their_names() {
    for action in Action::ALL {
        assert_eq!(action.as_str().parse::<Action>(), Ok(action));
        assert_eq!(action.to_string(), action.as_str());
    }
    let e = "delete".parse::<Action>().expect_err("unknown");
    assert!(e.message().contains("unknown action `delete`"));
}

#[test]
fn resource_literals_are_found_in_scopes_conditions_and_entities() {
    let policies = "permit(principal, action, resource in Resource::\"k8s/prod\") \
                    when { resource == Resource::\"db/Orders\" };";
    let entities = r#"[{"uid": {"type": "Resource", "id": "a/b"}, "attrs": {},
                        "parents": [{"type": "Resource", "id": "a"}]},
                       {"uid": {"type": "Agent", "id": "x"}, "attrs": {}, "parents": []}]"#;
    let mut found = super::resource_literals(policies, Some(entities));
    found.sort();
    assert_eq!(found, ["a", "a/b", "db/Orders", "k8s/prod"]);
    assert!(super::resource_literals("not cedar", None).is_empty());
}

#[test]
fn reads_are_governed_only_once_a_policy_names_read() {
    let compile =
        |text: &str| PolicyBundle::compile(1, text, None, DEFAULT_INTENT_WINDOW_MS).unwrap();
    // A set written before `read` existed, even one permitting every action, governs no reads.
    assert!(!compile("permit(principal, action, resource);").governs_reads());
    assert!(
        !compile("forbid(principal, action, resource in Resource::\"k8s/prod\");").governs_reads()
    );
    assert!(compile(
        "permit(principal, action in [Action::\"acquire\", Action::\"read\"], resource);"
    )
    .governs_reads());
    assert!(
        compile("forbid(principal, action, resource) when { action == Action::\"read\" };")
            .governs_reads(),
        "named in a condition"
    );
    let b = compile(
        "@id(\"read-staging\") permit(principal, action == Action::\"read\", resource in Resource::\"k8s/staging\");\n\
         @id(\"humans-read-policy\") permit(principal is Human, action == Action::\"read\", resource == Cluster::\"warrant\");\n\
         @id(\"all-but-read\") permit(principal, action, resource) when { principal is Human };",
    );
    assert!(b.governs_reads());
    let decide = |who: &str, resource: &str| b.evaluate(&Query::new(who, Action::Read, resource));
    assert!(matches!(
        decide("agent/a", "k8s/staging/web"),
        Decision::Allow { .. }
    ));
    assert!(matches!(
        decide("agent/a", "k8s/prod/web"),
        Decision::Deny { .. }
    ));
    assert!(
        matches!(decide("human/h", ""), Decision::Allow { .. }),
        "the cluster: the policy"
    );
    assert!(matches!(decide("agent/a", ""), Decision::Deny { .. }));
    assert_eq!("read".parse::<Action>().unwrap(), Action::Read);
}
