//! Property tests: arbitrary sequences of commands, clock steps and elections must keep the state
//! machine's safety invariants after every step, and never panic.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::command::{
    AcquireCmd, AcquireOutcome, Command, Effects, EntryMeta, Event, PolicyDefaults, Quotas,
    Request, Response,
};
use super::state::{FenceStatus, State};
use super::testkit::{inst, res, rid, task, who};
use super::types::{
    EndReason, FencingToken, Intent, Lease, LeaseId, ReleaseOutcome, RequestId, ResourcePath,
    TaskKey,
};
use super::RevokeTarget;

const RESOURCES: [&str; 3] = ["a", "a/b", "c"];
const PRINCIPALS: [&str; 3] = ["agent/x", "agent/y", "human/h"];
const INSTANCES: [&str; 3] = ["i1", "i2", "i3"];

// Test steps are generated and consumed once; boxing the command would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Step {
    /// A new leader's blank entry.
    Elect,
    /// An entry from an older term arriving late (must be ignored by term tracking).
    StaleTerm,
    Apply {
        advance_ms: u64,
        cmd: Command,
    },
    /// The current holder of a resource acts with its real lease id and token (random ids and
    /// tokens rarely match a live lease): checkpoint, or release with an outcome.
    Holder {
        resource: &'static str,
        checkpoint_len: Option<usize>,
        outcome: Option<ReleaseOutcome>,
    },
}

/// Turn a `Holder` step into the command its holder would send; `None` if the resource is free.
fn holder_command(
    state: &State,
    resource: &str,
    checkpoint_len: Option<usize>,
    outcome: Option<ReleaseOutcome>,
) -> Option<Command> {
    let lease = state.resource(&res(resource))?.holder?;
    Some(match checkpoint_len {
        Some(len) => Command::Checkpoint {
            lease_id: lease.lease_id,
            principal: lease.principal.clone(),
            token: lease.token,
            data: vec![len as u8; len],
        },
        None => Command::Release {
            lease_id: lease.lease_id,
            principal: lease.principal.clone(),
            outcome,
        },
    })
}

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    prop::sample::select(items)
}

/// Enough ids that most acquires are new, few enough that retries and reuse happen.
fn request_id() -> impl Strategy<Value = RequestId> {
    (0u32..40).prop_map(|n| rid(&format!("r{n}")))
}

fn lease_id() -> impl Strategy<Value = LeaseId> {
    (0u64..14).prop_map(LeaseId)
}

fn acquire() -> impl Strategy<Value = Command> {
    (
        request_id(),
        pick(&RESOURCES),
        pick(&PRINCIPALS),
        pick(&INSTANCES),
        prop::sample::select(vec![1_000u64, 10_000]),
        prop::sample::select(vec![None, Some("t1"), Some("t2")]),
        prop::sample::select(vec![None, Some(0u64), Some(500), Some(5_000)]),
        any::<bool>(),
    )
        .prop_map(|(r, resource, p, i, ttl_ms, t, wait_ms, takeover)| {
            Command::Acquire(AcquireCmd {
                request_id: r,
                resource: res(resource),
                principal: who(p),
                instance: inst(i),
                ttl_ms,
                intent: Intent::default(),
                task_key: t.map(task),
                wait_ms,
                takeover,
                defaults: PolicyDefaults::default(),
            })
        })
}

/// A command, sometimes as sent by a caller with an access token (`ViaToken`, or format 4's
/// `AsToken`): the tokens `t0`..`t2` are minted and revoked by other generated commands, so some of
/// these are refused in apply.
fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        6 => plain_command(),
        1 => (0u8..3, plain_command()).prop_map(|(id, cmd)| Command::AsToken {
            token_id: format!("t{id}"),
            cmd: Box::new(cmd),
        }),
        2 => (0u8..3, any::<bool>(), plain_command()).prop_map(|(id, recheck, cmd)| {
            Command::ViaToken {
                token_id: format!("t{id}"),
                recheck,
                cmd: Box::new(cmd),
            }
        }),
    ]
}

fn plain_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        4 => acquire(),
        // Held to quotas small enough to bite.
        2 => (acquire(), 0u32..3, 0u32..3, 0u32..3).prop_map(|(cmd, leases, pending, queued)| {
            match cmd {
                Command::Acquire(cmd) => Command::AcquireWithin {
                    cmd,
                    quotas: Quotas { leases, pending, queued },
                },
                other => other,
            }
        }),
        2 => (
            lease_id(),
            pick(&PRINCIPALS),
            prop::sample::select(vec![None, Some(ReleaseOutcome::Done), Some(ReleaseOutcome::Done), Some(ReleaseOutcome::Failed)]),
        )
            .prop_map(|(lease_id, p, outcome)| Command::Release {
                lease_id,
                principal: who(p),
                outcome
            }),
        1 => (
            lease_id(),
            pick(&PRINCIPALS),
            0u64..40,
            prop::sample::select(vec![0usize, 3, 4096, 4097]),
        )
            .prop_map(|(lease_id, p, token, len)| Command::Checkpoint {
                lease_id,
                principal: who(p),
                token: FencingToken(token),
                data: vec![len as u8; len],
            }),
        1 => (any::<bool>(), pick(&RESOURCES), lease_id()).prop_map(|(by_res, r, id)| {
            Command::Revoke {
                target: if by_res {
                    RevokeTarget::Resource(res(r))
                } else {
                    RevokeTarget::Lease(id)
                },
                by: who("human/h"),
                reason: "because".to_owned(),
                by_admin: true,
            }
        }),
        1 => (request_id(), pick(&PRINCIPALS)).prop_map(|(request_id, p)| Command::CancelWait {
            request_id,
            principal: who(p)
        }),
        1 => prop::collection::vec(lease_id(), 0..4).prop_map(|lease_ids| Command::Renew { lease_ids }),
        1 => prop::collection::vec(lease_id(), 0..4).prop_map(|lease_ids| Command::Expire { lease_ids }),
        1 => prop::collection::vec((lease_id(), 0u64..20_000), 0..4)
            .prop_map(|remaining| Command::CheckpointTtl { remaining }),
        1 => (pick(&POLICIES), any::<bool>()).prop_map(|(policies, by_admin)| Command::PutPolicy {
            by: who("human/h"),
            by_admin,
            policies: policies.to_owned(),
            entities: None,
            intent_window_ms: 600_000,
        }),
        2 => (request_id(), pick(&PRINCIPALS)).prop_map(|(request_id, p)| Command::Approve {
            request_id,
            by: who(p),
            comment: String::new(),
        }),
        1 => (request_id(), pick(&PRINCIPALS)).prop_map(|(request_id, p)| Command::Reject {
            request_id,
            by: who(p),
            reason: "no".to_owned(),
        }),
        1 => prop::collection::vec(request_id(), 0..3)
            .prop_map(|request_ids| Command::ExpireApprovals { request_ids }),
        1 => (0u8..3, pick(&PRINCIPALS), any::<bool>(), 0u64..20_000).prop_map(
            |(id, p, by_admin, ttl)| Command::MintToken {
                record: super::types::TokenRecord {
                    id: format!("t{id}"),
                    principal: who(p),
                    minted_by: who("human/h"),
                    issued_at_ms: 0,
                    expires_at_ms: ttl,
                    revoked_by: None,
                },
                by_admin,
            }
        ),
        1 => (0u8..3, any::<bool>()).prop_map(|(id, by_admin)| Command::RevokeToken {
            id: format!("t{id}"),
            by: who("human/h"),
            by_admin,
            reason: "leaked".to_owned(),
        }),
    ]
}

/// Policy sets the generated `PutPolicy` commands choose from: allow all, two approvals under `a`,
/// `c` forbidden, and one that does not compile.
const POLICIES: [&str; 4] = [
    "permit(principal, action, resource);",
    "permit(principal, action, resource);\n@id(\"a-needs-two\") @approval(\"2\")\n\
     permit(principal, action in [Action::\"acquire\", Action::\"takeover\"], resource in Resource::\"a\");",
    "permit(principal, action, resource);\n@id(\"no-c\") @reason(\"c is frozen\")\n\
     forbid(principal, action in [Action::\"acquire\", Action::\"takeover\"], resource in Resource::\"c\");",
    "permit(principal, action, resource",
];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => Just(Step::Elect),
        1 => Just(Step::StaleTerm),
        12 => (prop::sample::select(vec![0u64, 1, 100, 700, 3_000]), command())
            .prop_map(|(advance_ms, cmd)| Step::Apply { advance_ms, cmd }),
        3 => (
            pick(&RESOURCES),
            prop::sample::select(vec![None, Some(5usize), Some(4096), Some(4097)]),
            prop::sample::select(vec![None, Some(ReleaseOutcome::Done), Some(ReleaseOutcome::Failed)]),
        )
            .prop_map(|(resource, checkpoint_len, outcome)| Step::Holder {
                resource,
                checkpoint_len,
                outcome
            }),
    ]
}

/// What the checker remembers across steps.
#[derive(Default)]
struct Seen {
    last_token: BTreeMap<ResourcePath, FencingToken>,
    fence: BTreeMap<ResourcePath, FencingToken>,
    grant_of_request: BTreeMap<String, LeaseId>,
    done_tasks: BTreeSet<(ResourcePath, TaskKey)>,
    ended_tokens: Vec<(ResourcePath, FencingToken)>,
}

fn check_step(
    state: &State,
    cmd: Option<&Command>,
    response: Option<&Response>,
    events: &[Event],
    seen: &mut Seen,
) -> Result<(), TestCaseError> {
    // A command sent with an access token is checked as itself (a refused one answers `Refused`).
    let cmd = match cmd {
        Some(Command::AsToken { cmd, .. }) => Some(cmd.as_ref()),
        cmd => cmd,
    };
    prop_assert_eq!(
        &state.held,
        &state.count_held(),
        "the per-principal counts are the leases and queued waiters"
    );
    let mut ended_now: BTreeMap<LeaseId, &Lease> = BTreeMap::new();
    for event in events {
        match event {
            Event::Granted { grant } => {
                let lease = &grant.lease;
                if let Some(last) = seen.last_token.get(&lease.resource) {
                    prop_assert!(lease.token > *last, "tokens per resource strictly increase");
                }
                seen.last_token.insert(lease.resource.clone(), lease.token);
                let first = seen
                    .grant_of_request
                    .entry(lease.request_id.to_string())
                    .or_insert(lease.lease_id);
                prop_assert_eq!(*first, lease.lease_id, "a request id yields one grant");
                if let Some(key) = &lease.task_key {
                    prop_assert!(
                        !seen
                            .done_tasks
                            .contains(&(lease.resource.clone(), key.clone())),
                        "a done task is never granted again"
                    );
                }
                if let Some(prev) = &grant.previous {
                    prop_assert!(lease.token > prev.token, "successor outranks predecessor");
                    if let Some(ended) = ended_now.get(&prev.lease_id) {
                        // Its own last checkpoint is carried; one that never checkpointed passes on
                        // the task's inherited checkpoint instead.
                        if ended.checkpoint.is_some() {
                            prop_assert_eq!(
                                &prev.checkpoint,
                                &ended.checkpoint,
                                "checkpoint carried"
                            );
                        }
                    }
                }
            }
            Event::Ended { lease, reason } => {
                if let (EndReason::Done, Some(key)) = (reason, &lease.task_key) {
                    seen.done_tasks
                        .insert((lease.resource.clone(), key.clone()));
                }
                seen.ended_tokens
                    .push((lease.resource.clone(), lease.token));
                ended_now.insert(lease.lease_id, lease);
            }
            Event::WaiterEnded { .. } => {}
        }
    }

    // An acquire answered Granted names the request's one and only grant.
    if let (Some(Command::Acquire(cmd)), Some(Response::Acquire(AcquireOutcome::Granted(g)))) =
        (cmd, response)
    {
        if cmd.takeover && g.previous.is_some() {
            let prev = g.previous.as_ref().map(|p| p.token).unwrap_or_default();
            prop_assert!(g.lease.token > prev, "takeover yields a higher token");
        }
        if let Some(first) = seen.grant_of_request.get(cmd.request_id.as_str()) {
            prop_assert_eq!(*first, g.lease.lease_id, "retry answers the first grant");
        }
    }

    // A request waiting for humans holds nothing.
    for pending in state.pending_approvals() {
        prop_assert!(
            state.leases().all(|l| l.request_id != pending.request_id),
            "a pending request holds no lease"
        );
    }

    // At most one live holder per resource, consistent with the resource table and fences.
    let mut holders: BTreeMap<&ResourcePath, usize> = BTreeMap::new();
    for lease in state.leases() {
        *holders.entry(&lease.resource).or_default() += 1;
        let view = state.resource(&lease.resource);
        prop_assert_eq!(view.and_then(|v| v.holder), Some(lease));
        prop_assert_eq!(
            state.check_fence(&lease.resource, lease.token),
            FenceStatus::Current
        );
    }
    prop_assert!(
        holders.values().all(|&n| n == 1),
        "one live holder per resource"
    );
    for (resource, token) in &seen.ended_tokens {
        prop_assert!(
            matches!(
                state.check_fence(resource, *token),
                FenceStatus::Stale { .. }
            ),
            "an ended holder's token is stale"
        );
    }
    for r in RESOURCES {
        let path = res(r);
        if let Some(view) = state.resource(&path) {
            let before = seen.fence.get(&path).copied().unwrap_or_default();
            prop_assert!(view.fence >= before, "fences never decrease");
            seen.fence.insert(path, view.fence);
        }
    }

    let back = State::from_snapshot(&state.to_snapshot());
    prop_assert_eq!(back.as_ref(), Ok(state), "snapshot round-trips");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_after_every_step(steps in prop::collection::vec(step(), 1..80)) {
        let mut state = State::default();
        let mut seen = Seen::default();
        let mut revoked = std::collections::BTreeMap::new();
        let (mut index, mut term, mut now_ms) = (0u64, 1u64, 1_000u64);
        for step in steps {
            index += 1;
            let mut fx = Effects::default();
            let step = match step {
                Step::Holder { resource, checkpoint_len, outcome } => {
                    match holder_command(&state, resource, checkpoint_len, outcome) {
                        Some(cmd) => Step::Apply { advance_ms: 0, cmd },
                        None => continue,
                    }
                }
                other => other,
            };
            match step {
                Step::Elect => {
                    term += 1;
                    state.observe(EntryMeta { index, term });
                    check_step(&state, None, None, &fx.events, &mut seen)?;
                }
                Step::StaleTerm => {
                    let before = (state.current_term(), state.prev_term());
                    state.observe(EntryMeta { index, term: term.saturating_sub(1) });
                    prop_assert_eq!((state.current_term(), state.prev_term()), before);
                }
                Step::Apply { advance_ms, cmd } => {
                    now_ms += advance_ms;
                    // The read-only answer (busy without a log write) must be what apply decides.
                    let predicted = match &cmd {
                        Command::Acquire(a) | Command::AcquireWithin { cmd: a, .. } => {
                            state.answer_without_write(a, now_ms)
                        }
                        _ => None,
                    };
                    let req = Request { now_ms, cmd };
                    let chain_before = state.audit_chain().clone();
                    let response = state.apply(EntryMeta { index, term }, &req, &mut fx);
                    // The entry's audit records continue the chain exactly and end at its new head.
                    let report = crate::audit::verify(fx.audit.iter().cloned().map(Ok));
                    prop_assert!(report.is_ok(), "{}", report);
                    if fx.audit.is_empty() {
                        prop_assert_eq!(&chain_before, state.audit_chain());
                    } else {
                        prop_assert_eq!(report.first_seq, Some(chain_before.len() + 1));
                        prop_assert_eq!(report.first_prev_hash, chain_before.head());
                        prop_assert!(report.matches_chain(state.audit_chain()));
                    }
                    if let Some(outcome) = predicted {
                        prop_assert_eq!(&response, &Response::Acquire(outcome), "answer_without_write agrees with apply");
                        prop_assert!(fx.events.is_empty(), "an answer without a write grants and ends nothing");
                    }
                    check_step(&state, Some(&req.cmd), Some(&response), &fx.events, &mut seen)?;
                    // A revoked access token stays known and revoked until its expiry plus the
                    // retention margin; after that its id may be forgotten and minted afresh.
                    if let Response::RevokeToken(Ok(t)) = &response {
                        revoked.insert(t.id.clone(), t.expires_at_ms);
                    }
                    for (id, expires) in &revoked {
                        if now_ms < expires.saturating_add(super::access::REVOKED_RETENTION_MS) {
                            prop_assert!(
                                state.token(id).is_some_and(|t| t.revoked_by.is_some()),
                                "token {} was revoked and is forgotten or live again", id
                            );
                        }
                    }
                }
                Step::Holder { .. } => {}
            }
        }
    }

    #[test]
    fn same_entries_give_same_state_and_answers(steps in prop::collection::vec(step(), 1..40)) {
        let run = |steps: &[Step]| {
            let mut state = State::default();
            let mut out = Vec::new();
            let (mut index, mut term, mut now_ms) = (0u64, 1u64, 1_000u64);
            for step in steps {
                index += 1;
                match step {
                    Step::Elect => { term += 1; state.observe(EntryMeta { index, term }); }
                    Step::StaleTerm => state.observe(EntryMeta { index, term: term.saturating_sub(1) }),
                    Step::Apply { advance_ms, cmd } => {
                        now_ms += advance_ms;
                        let mut fx = Effects::default();
                        let req = Request { now_ms, cmd: cmd.clone() };
                        let r = state.apply(EntryMeta { index, term }, &req, &mut fx);
                        out.push((r, fx.events, fx.audit));
                    }
                    Step::Holder { resource, checkpoint_len, outcome } => {
                        if let Some(cmd) = holder_command(&state, resource, *checkpoint_len, *outcome) {
                            let mut fx = Effects::default();
                            let req = Request { now_ms, cmd };
                            let r = state.apply(EntryMeta { index, term }, &req, &mut fx);
                            out.push((r, fx.events, fx.audit));
                        }
                    }
                }
            }
            (state.to_snapshot(), out)
        };
        prop_assert_eq!(run(&steps), run(&steps));
    }

    #[test]
    fn apply_never_panics_at_extreme_times_and_ids(
        now_ms in prop::sample::select(vec![0u64, 1, u64::MAX - 1, u64::MAX]),
        wait_ms in prop::sample::select(vec![None, Some(1u64), Some(u64::MAX)]),
        ttl_ms in prop::sample::select(vec![0u64, u64::MAX]),
        id in prop::sample::select(vec![0u64, u64::MAX]),
        term in prop::sample::select(vec![0u64, u64::MAX]),
    ) {
        let mut state = State::default();
        let mut fx = Effects::default();
        let at = EntryMeta { index: 1, term };
        let base = AcquireCmd {
            request_id: rid("r"),
            resource: res("a"),
            principal: who("agent/x"),
            instance: inst("i1"),
            ttl_ms,
            intent: Intent::default(),
            task_key: None,
            wait_ms,
            takeover: false,
            defaults: PolicyDefaults::default(),
        };
        let cmds = vec![
            Command::Acquire(base.clone()),
            Command::Acquire(AcquireCmd { request_id: rid("w"), ..base.clone() }),
            Command::Renew { lease_ids: vec![LeaseId(id), LeaseId(1)] },
            Command::CheckpointTtl { remaining: vec![(LeaseId(1), u64::MAX)] },
            Command::Expire { lease_ids: vec![LeaseId(id), LeaseId(1)] },
            Command::CancelWait { request_id: rid("w"), principal: who("agent/x") },
        ];
        for cmd in cmds {
            state.apply(at, &Request { now_ms, cmd }, &mut fx);
        }
        if let Some(lease) = state.leases().next() {
            state.initial_countdown_ms(lease);
        }
        let back = State::from_snapshot(&state.to_snapshot());
        prop_assert_eq!(back.as_ref(), Ok(&state));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Group commit changes nothing observable: a batch entry gives the same state, answers and
    /// events as its commands applied one entry each.
    #[test]
    fn a_batch_applies_like_its_commands_one_by_one(
        before in prop::collection::vec(command(), 0..20),
        batch in prop::collection::vec(command(), 1..12),
    ) {
        let mut one_by_one = State::default();
        let mut fx = Effects::default();
        let mut index = 0;
        for cmd in &before {
            index += 1;
            one_by_one.apply(EntryMeta { index, term: 1 }, &Request { now_ms: 5_000, cmd: cmd.clone() }, &mut fx);
        }
        let mut batched = one_by_one.clone();
        let (mut single, mut batch_fx) = (Effects::default(), Effects::default());
        let mut answers = Vec::new();
        // The batch is one entry: its commands' audit records carry that entry's index, so the
        // one-by-one run applies them at the same index.
        index += 1;
        for cmd in &batch {
            let req = Request { now_ms: 6_000, cmd: cmd.clone() };
            answers.push(one_by_one.apply(EntryMeta { index, term: 1 }, &req, &mut single));
        }
        let req = Request { now_ms: 6_000, cmd: Command::Batch(batch.clone()) };
        let response = batched.apply(EntryMeta { index, term: 1 }, &req, &mut batch_fx);
        prop_assert_eq!(response, Response::Batch(answers));
        prop_assert_eq!(batch_fx.events, single.events);
        prop_assert_eq!(batch_fx.audit, single.audit);
        prop_assert_eq!(batched, one_by_one);
    }
}
