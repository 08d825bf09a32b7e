//! Criterion micro-benchmarks of the hot pure paths: applying a batch of entries to the state
//! machine, encoding a log entry, and a snapshot round trip.
//!
//! ```sh
//! cargo bench --bench state_machine
//! ```

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use warrant::model::{
    AcquireCmd, Command, Effects, EntryMeta, InstanceId, Intent, LeaseId, PolicyDefaults,
    Principal, Request, RequestId, ResourcePath, State,
};

fn acquire(i: u64) -> Request {
    Request {
        now_ms: 1_700_000_000_000 + i,
        cmd: Command::Acquire(AcquireCmd {
            request_id: RequestId::parse(&format!("req-{i}")).expect("valid request id"),
            resource: ResourcePath::parse(&format!("k8s/prod/svc-{}/deploy", i % 1024))
                .expect("valid resource"),
            principal: Principal::parse("agent/bench").expect("valid principal"),
            instance: InstanceId::parse("bench-1").expect("valid instance"),
            ttl_ms: 10_000,
            intent: Intent::default(),
            task_key: None,
            wait_ms: None,
            takeover: false,
            defaults: PolicyDefaults::default(),
        }),
    }
}

fn release(id: u64) -> Request {
    Request {
        now_ms: 1_700_000_000_000 + id,
        cmd: Command::Release {
            lease_id: LeaseId(id),
            principal: Principal::parse("agent/bench").expect("valid principal"),
            outcome: None,
        },
    }
}

fn bench(c: &mut Criterion) {
    let batch: Vec<Request> = (0..1024).map(acquire).collect();
    let mut g = c.benchmark_group("state_machine");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("apply 1024 acquires", |b| {
        b.iter_batched(
            State::default,
            |mut state| {
                let mut events = Effects::default();
                for (i, req) in batch.iter().enumerate() {
                    black_box(state.apply(
                        EntryMeta {
                            index: i as u64 + 1,
                            term: 1,
                        },
                        req,
                        &mut events,
                    ));
                }
                state
            },
            BatchSize::SmallInput,
        )
    });
    let releases: Vec<Request> = (1..=1024).map(release).collect();
    g.bench_function("apply 1024 acquire+release", |b| {
        b.iter_batched(
            State::default,
            |mut state| {
                let mut events = Effects::default();
                for (i, (a, r)) in batch.iter().zip(&releases).enumerate() {
                    let at = EntryMeta {
                        index: 2 * i as u64 + 1,
                        term: 1,
                    };
                    black_box(state.apply(at, a, &mut events));
                    black_box(state.apply(
                        EntryMeta {
                            index: at.index + 1,
                            term: 1,
                        },
                        r,
                        &mut events,
                    ));
                }
                state
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let entry = acquire(7);
    c.bench_function("encode one acquire entry (bincode)", |b| {
        b.iter(|| bincode::serialize(black_box(&entry)))
    });

    let mut state = State::default();
    let mut events = Effects::default();
    for (i, req) in (0..10_000).map(acquire).enumerate() {
        state.apply(
            EntryMeta {
                index: i as u64 + 1,
                term: 1,
            },
            &req,
            &mut events,
        );
    }
    c.bench_function("snapshot round trip, 1024 live leases", |b| {
        b.iter(|| State::from_snapshot(&black_box(&state).to_snapshot()).expect("snapshot decodes"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
