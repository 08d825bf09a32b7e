//! How the answer to an acquire is shown: text, json and exit code, one function per outcome.
//!
//! `warrant acquire`, `warrant run` (on stderr, when it does not run CMD) and `warrant approve`
//! (what the requester got when the quorum was reached) all show an answer through these, so a
//! script sees the same shape whichever command produced it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{exit, Outcome};
use crate::client::Acquired;
use crate::proto;

/// The answer `warrant acquire` prints, made as `instance`. A granted lease is only described: the
/// caller decides what happens to the handle.
pub(super) fn acquired(answer: &Acquired, instance: &str) -> Outcome {
    match answer {
        Acquired::Granted(lease) => {
            let mut out = granted(&lease.info().lease, lease.previous());
            if !lease.certificate().is_empty() {
                out.json["certificate"] = lease.certificate().into();
            }
            out
        }
        Acquired::Busy {
            holder,
            holder_instance,
            expires_in,
        } => busy(holder, holder_instance, *expires_in),
        Acquired::AlreadyDone(record) => already_done(record),
        Acquired::WaitEnded => wait_ended(),
        Acquired::Denied {
            action,
            policy_version,
            policies,
            reason,
            message,
        } => denied(
            action,
            *policy_version,
            policies,
            reason.as_deref(),
            message,
        ),
        Acquired::PendingApproval(p) => pending(p),
        Acquired::NotApproved { kind, by, reason } => not_approved(kind, by.as_deref(), reason),
        Acquired::Queued {
            position,
            request_id,
        } => queued(*position, Some((request_id, instance))),
    }
}

/// The same for an answer as it came over the wire (inside an `ApproveResponse`).
pub(super) fn acquire_response(resp: &proto::AcquireResponse) -> Outcome {
    use proto::acquire_response::Outcome as O;
    match &resp.outcome {
        Some(O::Granted(g)) => match &g.lease {
            Some(l) => granted(l, g.previous.as_ref()),
            None => unexpected("a grant without a lease"),
        },
        Some(O::Busy(b)) => busy(
            &b.holder,
            &b.holder_instance,
            Duration::from_millis(b.expires_in_ms),
        ),
        Some(O::AlreadyDone(d)) => already_done(&d.record.clone().unwrap_or_default()),
        Some(O::WaitEnded(_)) => wait_ended(),
        Some(O::Denied(d)) => denied(
            &d.action,
            d.policy_version,
            &d.policies,
            Some(d.reason.as_str()).filter(|r| !r.is_empty()),
            &d.message,
        ),
        Some(O::PendingApproval(p)) => pending(p),
        Some(O::NotApproved(n)) => not_approved(
            &n.kind,
            Some(n.by.as_str()).filter(|b| !b.is_empty()),
            &n.reason,
        ),
        Some(O::Queued(q)) => queued(q.position, None),
        None => unexpected("an empty answer"),
    }
}

fn unexpected(what: &str) -> Outcome {
    Outcome {
        text: format!("the server sent {what}"),
        json: json!({"outcome": "unknown"}),
        code: exit::OTHER,
    }
}

fn granted(l: &proto::Lease, previous: Option<&proto::Previous>) -> Outcome {
    let mut text = format!(
        "granted {} lease {} token {} ttl {}ms",
        l.resource, l.lease_id, l.token, l.ttl_ms
    );
    if let Some(p) = previous {
        text.push_str(&format!(
            "\nprevious: instance {} token {} ended {}{}",
            p.instance,
            p.token,
            p.ended,
            p.checkpoint
                .as_ref()
                .map(|c| format!(", checkpoint {:?}", String::from_utf8_lossy(c)))
                .unwrap_or_default()
        ));
    }
    let json = json!({"outcome": "granted", "lease_id": l.lease_id, "token": l.token, "ttl_ms": l.ttl_ms,
        "resource": l.resource, "previous": previous.map(previous_json).unwrap_or(Value::Null)});
    Outcome::ok(text, json)
}

fn busy(holder: &str, holder_instance: &str, expires_in: Duration) -> Outcome {
    Outcome {
        text: format!(
            "busy: held by {holder} (instance {holder_instance}), expires in {}ms",
            expires_in.as_millis()
        ),
        json: json!({"outcome": "busy", "holder": holder, "holder_instance": holder_instance,
            "expires_in_ms": expires_in.as_millis() as u64}),
        code: exit::BUSY_OR_STALE,
    }
}

fn already_done(record: &proto::Completion) -> Outcome {
    Outcome {
        text: format!(
            "already done: task completed by {} (token {})",
            record.principal, record.token
        ),
        json: json!({"outcome": "already_done", "record": completion_json(record)}),
        code: exit::ALREADY_DONE,
    }
}

fn wait_ended() -> Outcome {
    Outcome {
        text: "wait ended: the resource stayed busy until the wait deadline".into(),
        json: json!({"outcome": "wait_ended"}),
        code: exit::PENDING_OR_WAIT_ENDED,
    }
}

fn denied(
    action: &str,
    policy_version: u64,
    policies: &[String],
    reason: Option<&str>,
    message: &str,
) -> Outcome {
    let why = match (reason, message) {
        (Some(r), _) => r.to_string(),
        (None, m) if !m.is_empty() => m.to_string(),
        (None, _) => format!("no policy permits {action}"),
    };
    let by = if policy_version == 0 {
        "no policy is loaded: the cluster's default decision denies it".to_string()
    } else if policies.is_empty() {
        format!("no policy permits it (policy version {policy_version})")
    } else {
        format!(
            "policies: {} (policy version {policy_version})",
            policies.join(", ")
        )
    };
    Outcome {
        text: format!("denied: {why}\n{by}"),
        json: json!({"outcome": "denied", "action": action, "policy_version": policy_version,
            "policies": policies, "reason": reason, "message": message}),
        code: exit::DENIED,
    }
}

fn plural(n: u32, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn pending(p: &proto::PendingApproval) -> Outcome {
    let id = &p.request_id;
    let mut text = format!(
        "pending approval: request {id} needs {}",
        plural(p.approvals_needed, "approval")
    );
    if !p.approvers.is_empty() {
        text.push_str(&format!(
            " ({} so far: {})",
            p.approvers.len(),
            approver_names(p)
        ));
    }
    text.push_str(&format!("; approve with `warrant approve {id}`"));
    if !p.policies.is_empty() {
        text.push_str(&format!(
            "\npolicies: {} (policy version {})",
            p.policies.join(", "),
            p.policy_version
        ));
    }
    if p.expires_at_ms > 0 {
        text.push_str(&format!(
            "\nexpires {} ({})",
            expires_in(p.expires_at_ms, now_ms()),
            rfc3339_ms(p.expires_at_ms)
        ));
    }
    // The request is bound to its instance too, and a CLI run is a fresh instance unless told.
    text.push_str(&format!(
        "\nto learn the outcome, repeat this acquire with `--request-id {id} --instance {}` (add `--wait` \
         to block until it is decided)",
        p.instance
    ));
    let mut json = serde_json::Map::new();
    json.insert("outcome".into(), "pending_approval".into());
    if let Value::Object(body) = pending_json(p) {
        json.extend(body);
    }
    Outcome {
        text,
        json: Value::Object(json),
        code: exit::PENDING_OR_WAIT_ENDED,
    }
}

fn not_approved(kind: &str, by: Option<&str>, reason: &str) -> Outcome {
    let what = match (kind, by) {
        ("rejected", Some(by)) => format!("rejected by {by}"),
        (kind, _) => kind.to_string(),
    };
    let text = if reason.is_empty() {
        format!("not approved: {what}")
    } else {
        format!("not approved: {what}: {reason}")
    };
    Outcome {
        text,
        json: json!({"outcome": "not_approved", "kind": kind, "by": by, "reason": reason}),
        code: exit::DENIED,
    }
}

/// `retry`: the request id and instance to repeat the acquire with, when known.
fn queued(position: u32, retry: Option<(&str, &str)>) -> Outcome {
    let mut text = format!("queued: approved, and number {position} in line for the resource");
    if let Some((id, instance)) = retry {
        text.push_str(&format!(
            "; repeat this acquire with `--request-id {id} --instance {instance} --wait DURATION` to \
             wait for the grant"
        ));
    }
    Outcome {
        text,
        json: json!({"outcome": "queued", "position": position,
            "request_id": retry.map(|r| r.0), "instance": retry.map(|r| r.1)}),
        code: exit::PENDING_OR_WAIT_ENDED,
    }
}

/// A pending request as json: what `approvals list` prints per request, and the body of a
/// `pending_approval` answer.
pub(super) fn pending_json(p: &proto::PendingApproval) -> Value {
    let intent = p.intent.clone().unwrap_or_default();
    json!({
        "request_id": p.request_id,
        "approvals_needed": p.approvals_needed,
        "approvals": p.approvers.len(),
        "approvers": p.approvers.iter().map(|a| json!({"principal": a.principal, "comment": a.comment})).collect::<Vec<_>>(),
        "resource": p.resource,
        "principal": p.principal,
        "instance": p.instance,
        "ttl_ms": p.ttl_ms,
        "intent": intent.text,
        "labels": intent.labels.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "policy_version": p.policy_version,
        "policies": p.policies,
        "created_at_ms": p.created_at_ms,
        "expires_at_ms": p.expires_at_ms,
        "digest": p.digest,
        "policy_version_now": p.policy_version_now,
    })
}

/// The approvers so far, comma-separated.
pub(super) fn approver_names(p: &proto::PendingApproval) -> String {
    p.approvers
        .iter()
        .map(|a| a.principal.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn checkpoint_json(c: &Option<Vec<u8>>) -> Value {
    match c {
        Some(bytes) => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        None => Value::Null,
    }
}

pub(super) fn previous_json(p: &proto::Previous) -> Value {
    json!({
        "lease_id": p.lease_id, "principal": p.principal, "instance": p.instance, "token": p.token,
        "ended": p.ended, "ended_at_ms": p.ended_at_ms, "checkpoint": checkpoint_json(&p.checkpoint),
    })
}

fn completion_json(c: &proto::Completion) -> Value {
    json!({
        "lease_id": c.lease_id, "principal": c.principal, "instance": c.instance, "token": c.token,
        "completed_at_ms": c.completed_at_ms, "checkpoint": checkpoint_json(&c.checkpoint),
    })
}

/// Now, Unix milliseconds (for "expires in": the server's timestamps are wall-clock).
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// "in 9m 59s" or "expired 3s ago", to the second.
pub(super) fn expires_in(at_ms: u64, now_ms: u64) -> String {
    let secs = |ms: u64| humantime::format_duration(Duration::from_secs(ms / 1000)).to_string();
    if at_ms > now_ms {
        format!("in {}", secs(at_ms - now_ms))
    } else {
        format!("expired {} ago", secs(now_ms - at_ms))
    }
}

/// RFC 3339 UTC with milliseconds, or the raw number past the year 9999 (which RFC 3339 cannot
/// write).
pub(super) fn rfc3339_ms(ms: u64) -> String {
    const YEAR_10000_MS: u64 = 253_402_300_800_000;
    if ms < YEAR_10000_MS {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    } else {
        format!("{ms} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending_answer() -> proto::PendingApproval {
        proto::PendingApproval {
            request_id: "r-1".into(),
            approvals_needed: 2,
            approvers: vec![proto::Approver {
                principal: "human/ann".into(),
                comment: "ok".into(),
            }],
            expires_at_ms: now_ms() + 600_000,
            policy_version: 3,
            policies: vec!["prod-payments-two-humans".into()],
            resource: "k8s/prod/payments".into(),
            principal: "agent/deployer".into(),
            instance: "i-7".into(),
            ..Default::default()
        }
    }

    #[test]
    fn denied_exits_4_and_names_the_reason_and_the_policies() {
        let out = acquired(
            &Acquired::Denied {
                action: "acquire".into(),
                policy_version: 7,
                policies: vec!["no-long-prod".into(), "other".into()],
                reason: Some("nobody holds prod for more than 15 minutes".into()),
                message: "acquire denied".into(),
            },
            "i-1",
        );
        assert_eq!(out.code, exit::DENIED);
        assert!(out
            .text
            .contains("nobody holds prod for more than 15 minutes"));
        assert!(out.text.contains("no-long-prod, other"), "{}", out.text);
        assert_eq!(
            out.json,
            json!({"outcome": "denied", "action": "acquire", "policy_version": 7,
                "policies": ["no-long-prod", "other"], "reason": "nobody holds prod for more than 15 minutes",
                "message": "acquire denied"})
        );
        let default_deny = acquired(
            &Acquired::Denied {
                action: "acquire".into(),
                policy_version: 0,
                policies: vec![],
                reason: None,
                message: String::new(),
            },
            "i-1",
        );
        assert_eq!(default_deny.code, exit::DENIED);
        assert!(default_deny.text.contains("default decision"));
        assert_eq!(default_deny.json["reason"], Value::Null);
    }

    #[test]
    fn pending_approval_exits_5_with_the_request_id_in_text_and_json() {
        let out = acquired(&Acquired::PendingApproval(pending_answer()), "i-1");
        assert_eq!(out.code, exit::PENDING_OR_WAIT_ENDED);
        assert!(
            out.text.starts_with(
                "pending approval: request r-1 needs 2 approvals (1 so far: human/ann); \
                 approve with `warrant approve r-1`"
            ),
            "{}",
            out.text
        );
        assert!(
            out.text.contains("--request-id r-1 --instance i-7"),
            "{}",
            out.text
        );
        assert_eq!(out.json["outcome"], "pending_approval");
        assert_eq!(out.json["request_id"], "r-1");
        assert_eq!(out.json["approvals_needed"], 2);
        assert_eq!(out.json["approvals"], 1);
    }

    #[test]
    fn not_approved_exits_4_and_queued_exits_5() {
        let rejected = acquired(
            &Acquired::NotApproved {
                kind: "rejected".into(),
                by: Some("human/bob".into()),
                reason: "not during the freeze".into(),
            },
            "i-1",
        );
        assert_eq!(rejected.code, exit::DENIED);
        assert_eq!(
            rejected.text,
            "not approved: rejected by human/bob: not during the freeze"
        );
        assert_eq!(
            rejected.json,
            json!({"outcome": "not_approved", "kind": "rejected", "by": "human/bob",
                "reason": "not during the freeze"})
        );
        let expired = acquired(
            &Acquired::NotApproved {
                kind: "expired".into(),
                by: None,
                reason: String::new(),
            },
            "i-1",
        );
        assert_eq!(expired.code, exit::DENIED);
        assert_eq!(expired.json["by"], Value::Null);

        let queued = acquired(
            &Acquired::Queued {
                position: 2,
                request_id: "r-9".into(),
            },
            "i-1",
        );
        assert_eq!(queued.code, exit::PENDING_OR_WAIT_ENDED);
        assert!(queued
            .text
            .contains("--request-id r-9 --instance i-1 --wait"));
        assert_eq!(
            queued.json,
            json!({"outcome": "queued", "position": 2, "request_id": "r-9", "instance": "i-1"})
        );
    }

    #[test]
    fn a_wire_answer_is_shown_like_the_same_answer_from_acquire() {
        use proto::acquire_response::Outcome as O;
        let p = pending_answer();
        let wire = proto::AcquireResponse {
            outcome: Some(O::PendingApproval(p.clone())),
        };
        let a = acquire_response(&wire);
        let b = acquired(&Acquired::PendingApproval(p), "i-1");
        assert_eq!((a.code, a.json), (b.code, b.json));
        let granted = acquire_response(&proto::AcquireResponse {
            outcome: Some(O::Granted(proto::Granted {
                ended: String::new(),
                lease: Some(proto::Lease {
                    lease_id: "0000000000000001".into(),
                    resource: "k8s/prod/payments".into(),
                    token: 4,
                    ttl_ms: 30_000,
                    ..Default::default()
                }),
                previous: None,
                certificate: String::new(),
            })),
        });
        assert_eq!(granted.code, exit::OK);
        assert_eq!(
            granted.text,
            "granted k8s/prod/payments lease 0000000000000001 token 4 ttl 30000ms"
        );
        assert_eq!(
            acquire_response(&proto::AcquireResponse { outcome: None }).code,
            exit::OTHER
        );
    }

    #[test]
    fn expiry_is_shown_relative_to_now_to_the_second() {
        assert_eq!(expires_in(10_000 + 125_400, 10_000), "in 2m 5s");
        assert_eq!(expires_in(10_000, 13_500), "expired 3s ago");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(u64::MAX), format!("{} ms", u64::MAX));
    }
}
