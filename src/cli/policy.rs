//! `warrant policy put|get|validate|test`: the cluster's Cedar policy set.
//!
//! `validate` is offline: it runs the same checks as the server (`crate::policy::validate`), so a
//! set that validates here is accepted by `put` (as long as both run the same Warrant version).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use serde::Deserialize;
use serde_json::json;

use super::{exit, parse_duration, Common, Conn, Outcome, Output};
use crate::client::{Client, ClientError, PolicyTest};
use crate::model::Principal;
use crate::policy::Action;

#[derive(Subcommand)]
pub(super) enum PolicyCommand {
    /// Make a Cedar policy set the cluster's active policy; prints its version. A set Cedar or the
    /// schema rejects changes nothing (exit 2, with Cedar's message).
    Put {
        /// The Cedar policy file.
        file: PathBuf,
        /// A Cedar JSON entities file putting principals into groups.
        #[arg(long)]
        entities: Option<PathBuf>,
        /// How far back `context.recent_labels` looks for intent conflicts (default 10m).
        #[arg(long, value_parser = parse_duration)]
        intent_window: Option<Duration>,
        #[command(flatten)]
        conn: Conn,
    },
    /// The active policy set, its version and the default decision.
    Get {
        #[command(flatten)]
        conn: Conn,
    },
    /// Check a policy set offline, with the server's checks and messages. Exit 0 if valid, 2 if not.
    Validate {
        /// The Cedar policy file.
        file: PathBuf,
        /// A Cedar JSON entities file putting principals into groups.
        #[arg(long)]
        entities: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// What the cluster would decide now for a request, and why. Exit 0 allow, 4 deny, 5 approval.
    ///
    /// `--principal` here is the principal whose request is tested (required; WARRANT_PRINCIPAL does
    /// not fill it), not the caller: testing changes nothing and is not audited.
    Test {
        /// The principal to test: agent/NAME or human/NAME.
        #[arg(long, value_parser = parse_principal)]
        principal: Principal,
        /// acquire, takeover, release, checkpoint, approve, revoke or admin.
        #[arg(long, value_parser = parse_action)]
        action: Action,
        /// The resource path (required except for admin).
        #[arg(long)]
        resource: Option<String>,
        /// The request's context as JSON, e.g.
        /// '{"ttl_ms":600000,"intent":"scale web","labels":{"scale":"up"},"has_task_key":true}'.
        #[arg(long, value_parser = parse_context)]
        context: Option<TestContext>,
        #[command(flatten)]
        common: Common,
    },
}

/// The `--context` of `policy test`: every key optional, no other key allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TestContext {
    #[serde(default)]
    ttl_ms: u64,
    #[serde(default)]
    intent: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    has_task_key: bool,
}

fn parse_context(s: &str) -> Result<TestContext, String> {
    serde_json::from_str(s).map_err(|e| {
        format!(
            "{e}; write a JSON object with any of ttl_ms (number), intent (string), labels \
             (object of strings), has_task_key (bool)"
        )
    })
}

fn parse_action(s: &str) -> Result<Action, String> {
    s.parse::<Action>().map_err(|e| e.to_string())
}

fn parse_principal(s: &str) -> Result<Principal, String> {
    Principal::parse(s).map_err(|e| e.to_string())
}

/// A file's text, or exit 2 naming it.
fn read(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path)
        .map_err(|e| ClientError::Invalid(format!("cannot read {}: {e}", path.display())))
}

/// `policy validate`: offline, prints its own output and returns the exit code.
pub(super) fn validate(file: &Path, entities: Option<&Path>, output: Output) -> u8 {
    let texts = read(file).and_then(|p| Ok((p, entities.map(read).transpose()?)));
    let (policies, entities_text) = match texts {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INVALID;
        }
    };
    match crate::policy::validate(&policies, entities_text.as_deref()) {
        Ok(summary) => {
            let n = summary.policy_ids.len();
            match output {
                Output::Text => say!(
                    "valid: {n} {} ({}){}",
                    if n == 1 { "policy" } else { "policies" },
                    summary.policy_ids.join(", "),
                    if entities.is_some() {
                        format!(", {} entities", summary.entity_count)
                    } else {
                        String::new()
                    }
                ),
                Output::Json => say!(
                    "{}",
                    json!({"valid": true, "policies": summary.policy_ids, "entities": summary.entity_count})
                ),
            }
            exit::OK
        }
        Err(e) => {
            match output {
                Output::Text => eprintln!("invalid: {}\n{}", file.display(), e.message()),
                Output::Json => say!(
                    "{}",
                    json!({"valid": false, "errors": e.message().lines().collect::<Vec<_>>()})
                ),
            }
            exit::INVALID
        }
    }
}

/// `policy put`, `policy get` and `policy test`.
pub(super) async fn execute(
    client: &Client,
    command: PolicyCommand,
) -> Result<Outcome, ClientError> {
    Ok(match command {
        PolicyCommand::Put {
            file,
            entities,
            intent_window,
            ..
        } => {
            let policies = read(&file)?;
            let entities = entities.as_deref().map(read).transpose()?;
            let version = client
                .put_policy(&policies, entities.as_deref(), intent_window)
                .await?;
            Outcome::ok(
                format!("policy version {version} is active ({})", file.display()),
                json!({"version": version}),
            )
        }
        PolicyCommand::Get { .. } => {
            let p = client.get_policy().await?;
            let window = humantime::format_duration(Duration::from_millis(p.intent_window_ms));
            let text = if p.version == 0 {
                format!(
                    "no policy loaded (version 0): the default decision `{}` applies to every request",
                    p.default_decision
                )
            } else {
                let mut t = format!(
                    "policy version {} (intent window {window}; with no policy the default decision would be `{}`)\n{}",
                    p.version,
                    p.default_decision,
                    p.policies.trim_end()
                );
                if !p.entities.is_empty() {
                    t.push_str(&format!("\n-- entities --\n{}", p.entities.trim_end()));
                }
                t
            };
            Outcome::ok(
                text,
                json!({"version": p.version, "policies": p.policies,
                    "entities": if p.entities.is_empty() { None } else { Some(&p.entities) },
                    "intent_window_ms": p.intent_window_ms, "default_decision": p.default_decision}),
            )
        }
        PolicyCommand::Test {
            principal,
            action,
            resource,
            context,
            ..
        } => {
            let resource = match (resource, action) {
                (Some(r), _) => r,
                (None, Action::Admin | Action::Read) => String::new(),
                (None, _) => {
                    return Err(ClientError::Invalid(format!(
                        "--resource is required for action {action}"
                    )))
                }
            };
            let context = context.unwrap_or_default();
            let test = PolicyTest {
                ttl: (context.ttl_ms > 0).then(|| Duration::from_millis(context.ttl_ms)),
                intent: context.intent,
                labels: context.labels.into_iter().collect(),
                has_task_key: context.has_task_key,
                ..PolicyTest::new(principal.clone(), action, &resource)
            };
            let r = client.test_policy(&test).await?;
            test_outcome(&principal, action, &resource, &r)
        }
        PolicyCommand::Validate { .. } => {
            return Err(ClientError::Invalid("validate runs offline".into()))
        }
    })
}

/// The answer of `policy test`, and its exit code: 0 allow, 4 deny, 5 approval.
fn test_outcome(
    principal: &Principal,
    action: Action,
    resource: &str,
    r: &crate::proto::TestPolicyResponse,
) -> Outcome {
    let target = if action == Action::Admin || (action == Action::Read && resource.is_empty()) {
        "the cluster".to_string()
    } else {
        resource.to_string()
    };
    let why = if r.policy_version == 0 {
        "no policy loaded: the default decision".to_string()
    } else if r.policies.is_empty() {
        format!("policy version {}; no policy applies", r.policy_version)
    } else {
        format!(
            "policy version {}; determined by {}",
            r.policy_version,
            r.policies.join(", ")
        )
    };
    let (text, code) = match r.decision.as_str() {
        "allow" => (
            format!("allow: {principal} may {action} {target} ({why})"),
            exit::OK,
        ),
        "deny" => (
            format!(
                "deny: {principal} may not {action} {target} ({why}){}",
                if r.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.reason)
                }
            ),
            exit::DENIED,
        ),
        "approval" => (
            format!(
                "approval: {principal} may {action} {target} once {} approve ({why})",
                if r.approvals_needed == 1 {
                    "1 human".to_string()
                } else {
                    format!("{} humans", r.approvals_needed)
                }
            ),
            exit::PENDING_OR_WAIT_ENDED,
        ),
        other => (
            format!("the server answered an unknown decision {other:?}"),
            exit::OTHER,
        ),
    };
    Outcome {
        text,
        json: json!({"decision": r.decision, "principal": principal.to_string(), "action": action.as_str(),
            "resource": resource, "policy_version": r.policy_version, "policies": r.policies,
            "reason": if r.reason.is_empty() { None } else { Some(&r.reason) },
            "approvals_needed": r.approvals_needed}),
        code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::TestPolicyResponse;

    #[test]
    fn context_json_takes_the_documented_keys_and_refuses_others() {
        let c = parse_context(
            r#"{"ttl_ms":600000,"intent":"scale web","labels":{"scale":"up"},"has_task_key":true}"#,
        )
        .unwrap();
        assert_eq!(c.ttl_ms, 600_000);
        assert_eq!(c.intent, "scale web");
        assert_eq!(c.labels["scale"], "up");
        assert!(c.has_task_key);
        assert_eq!(parse_context("{}").unwrap(), TestContext::default());
        let e = parse_context(r#"{"ttl":5}"#).unwrap_err();
        assert!(e.contains("unknown field `ttl`"), "{e}");
        assert!(parse_context(r#"{"labels":{"a":1}}"#).is_err());
    }

    #[test]
    fn test_decisions_map_to_exit_codes() {
        let p = Principal::parse("agent/deployer").unwrap();
        let answer = |decision: &str| TestPolicyResponse {
            decision: decision.into(),
            policy_version: 2,
            policies: vec!["p1".into()],
            reason: if decision == "deny" {
                "not in prod".into()
            } else {
                String::new()
            },
            approvals_needed: if decision == "approval" { 2 } else { 0 },
        };
        let allow = test_outcome(&p, Action::Acquire, "k8s/x", &answer("allow"));
        assert_eq!(allow.code, exit::OK);
        let deny = test_outcome(&p, Action::Acquire, "k8s/x", &answer("deny"));
        assert_eq!(deny.code, exit::DENIED);
        assert_eq!(
            deny.text,
            "deny: agent/deployer may not acquire k8s/x (policy version 2; determined by p1): not in prod"
        );
        assert_eq!(deny.json["reason"], "not in prod");
        let approval = test_outcome(&p, Action::Acquire, "k8s/x", &answer("approval"));
        assert_eq!(approval.code, exit::PENDING_OR_WAIT_ENDED);
        assert_eq!(approval.json["approvals_needed"], 2);
        assert!(approval.text.contains("once 2 humans approve"));
        assert_eq!(
            test_outcome(&p, Action::Acquire, "k8s/x", &answer("perhaps")).code,
            exit::OTHER
        );
    }
}
