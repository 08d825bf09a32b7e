//! Criterion micro-benchmarks of Cedar policy evaluation, which runs inside the state machine's
//! apply for every acquire, takeover, approve and revoke: the shipped example policy set
//! (`cluster/policies/example.cedar` with its entities file) answering typical queries, and
//! compiling it (what `PutPolicy` and a snapshot load pay once).
//!
//! ```sh
//! cargo bench --bench policy
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use warrant::policy::{Action, Decision, PolicyBundle, Query, DEFAULT_INTENT_WINDOW_MS};

const POLICIES: &str = include_str!("../../cluster/policies/example.cedar");
const ENTITIES: &str = include_str!("../../cluster/policies/example.entities.json");

/// 2024-03-15 14:30:45 UTC, a Friday.
const NOW_MS: u64 = 1_710_513_045_000;

fn bench(c: &mut Criterion) {
    let bundle = PolicyBundle::compile(1, POLICIES, Some(ENTITIES), DEFAULT_INTENT_WINDOW_MS)
        .expect("the example policy set compiles");
    let labels: BTreeMap<String, String> = [("scale", "up"), ("team", "web")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let recent: BTreeSet<String> = ["team:web".to_owned()].into();

    let query = |principal, action, resource| {
        let mut q = Query::new(principal, action, resource);
        q.ttl_ms = 600_000;
        q.intent = "roll out web v2";
        q.labels = &labels;
        q.recent_labels = &recent;
        q.now_ms = NOW_MS;
        q
    };
    let cases = [
        (
            "evaluate: agent acquires under prod (allow)",
            query("agent/scaler", Action::Acquire, "k8s/prod/web/deploy"),
        ),
        (
            "evaluate: agent acquires prod payments (needs approval)",
            query("agent/deployer", Action::Acquire, "k8s/prod/payments/db"),
        ),
        (
            "evaluate: oncall human approves (group from entities file)",
            query("human/alice", Action::Approve, "k8s/prod/payments/db"),
        ),
        (
            "evaluate: intern-bot revokes (forbid)",
            query("agent/intern-bot", Action::Revoke, "k8s/prod/web"),
        ),
        (
            "evaluate: unknown principal (default deny)",
            query("agent/stranger", Action::Revoke, "k8s/staging"),
        ),
    ];

    let mut g = c.benchmark_group("policy");
    for (name, q) in &cases {
        assert!(
            !matches!(bundle.evaluate(q), Decision::Deny { reason: Some(r), .. } if r.contains("NAME")),
            "{name}: the query is well formed"
        );
        g.bench_function(*name, |b| b.iter(|| bundle.evaluate(black_box(q))));
    }
    g.bench_function("compile the example policy set and entities", |b| {
        b.iter(|| {
            PolicyBundle::compile(
                1,
                black_box(POLICIES),
                Some(ENTITIES),
                DEFAULT_INTENT_WINDOW_MS,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
