//! Criterion micro-benchmarks of the audit chain: appending records (what every apply pays) and
//! verifying 10k records, from memory and from an exported JSONL file's lines.
//!
//! ```sh
//! cargo bench --bench audit
//! ```

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use warrant::audit::{verify, AuditChain, AuditDecision, AuditEntry, AuditRecord};

/// A grant as the state machine records it: realistic field sizes, two labels, one policy id.
fn entry(i: u64) -> AuditEntry {
    AuditEntry {
        principal: "agent/deployer".into(),
        instance: format!("deployer-{}", i % 8),
        resource: format!("k8s/prod/svc-{}/deploy", i % 1024),
        request_id: format!("req-{i:016x}"),
        lease_id: format!("{}", 1_000_000 + i),
        token: 1_000 + i,
        intent: "scale web to 12 replicas".into(),
        labels: [
            ("scale".to_string(), "up".to_string()),
            ("env".to_string(), "prod".to_string()),
        ]
        .into(),
        policy_version: 7,
        policies: vec!["prod-deploys-need-approval".into()],
        ..AuditEntry::new("acquire", AuditDecision::Granted)
    }
}

fn chain_of(n: u64) -> Vec<AuditRecord> {
    let mut chain = AuditChain::default();
    (0..n)
        .map(|i| chain.append(i + 1, 1_700_000_000_000 + i, entry(i)))
        .collect()
}

fn bench(c: &mut Criterion) {
    const N: u64 = 10_000;

    let mut g = c.benchmark_group("audit");
    g.throughput(Throughput::Elements(1024));
    g.bench_function("append 1024 records", |b| {
        b.iter_batched(
            || (0..1024).map(entry).collect::<Vec<_>>(),
            |entries| {
                let mut chain = AuditChain::default();
                for (i, e) in entries.into_iter().enumerate() {
                    black_box(chain.append(i as u64 + 1, 1_700_000_000_000, e));
                }
                chain
            },
            BatchSize::SmallInput,
        )
    });

    let records = chain_of(N);
    g.throughput(Throughput::Elements(N));
    g.bench_function("verify 10k records", |b| {
        b.iter_batched(
            || records.clone(),
            |records| {
                let report = verify(records.into_iter().map(Ok));
                assert!(report.is_ok());
                report
            },
            BatchSize::LargeInput,
        )
    });

    let lines: Vec<String> = records.iter().map(AuditRecord::to_json_line).collect();
    g.bench_function("verify 10k records from JSONL lines", |b| {
        b.iter(|| {
            let report = verify(lines.iter().map(|l| AuditRecord::from_json_line(l)));
            assert!(report.is_ok());
            report
        })
    });
    g.bench_function("export 10k records to JSONL lines", |b| {
        b.iter(|| {
            black_box(&records)
                .iter()
                .map(|r| r.to_json_line().len())
                .sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
