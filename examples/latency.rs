//! Single-client latency against a running cluster: acquire, and acquire + release cycle.
//!
//! ```sh
//! cargo run --release --example latency -- 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 [N] [PREFIX]
//! ```
//! Prints median, p99 and max for N (default 500) sequential operations on resources under PREFIX
//! (default `bench`; with the example policy loaded, `k8s/staging` is one agents may acquire).
//! On a secure cluster set `WARRANT_CA`, `WARRANT_CERT` and `WARRANT_KEY` (the client's principal is
//! `agent/latency`, so its certificate must name that).

use std::time::{Duration, Instant};

use warrant::client::{AcquireOptions, Acquired, Client, ClientConfig};

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{name:<22} n={:<5} median {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        samples.len(),
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let endpoints: Vec<String> = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7001".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(500);
    // Where to acquire: a prefix the loaded policy permits (e.g. k8s/staging with the example policy).
    let prefix = args.next().unwrap_or_else(|| "bench".into());
    let mut config = ClientConfig::new(endpoints, "agent/latency")?;
    if let Ok(ca) = std::env::var("WARRANT_CA") {
        let cert = std::env::var("WARRANT_CERT")?;
        let key = std::env::var("WARRANT_KEY")?;
        config.tls = Some(
            warrant::client::TlsFiles {
                ca: ca.into(),
                cert_and_key: Some((cert.into(), key.into())),
            }
            .load()
            .map_err(anyhow::Error::msg)?,
        );
    }
    let client = Client::new(config)?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (mut acquire, mut cycle) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let start = Instant::now();
        let lease = match client
            .acquire(AcquireOptions::new(
                &format!("{prefix}/{run}/{}", i % 16),
                Duration::from_secs(10),
            ))
            .await?
        {
            Acquired::Granted(l) => l,
            other => anyhow::bail!("not granted: {other:?}"),
        };
        acquire.push(start.elapsed());
        lease.release(None).await?;
        cycle.push(start.elapsed());
    }
    summary("acquire", acquire);
    summary("acquire + release", cycle);
    Ok(())
}
