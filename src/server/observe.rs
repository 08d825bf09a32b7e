//! What an operator watches: Prometheus metrics at `/metrics`, `/healthz` and `/readyz` on the
//! node's HTTP port (`http_addr`).
//!
//! Counters and histograms are recorded where things happen (through the `metrics` facade, so the
//! hot paths pay an atomic add); gauges of the Raft and state-machine state are sampled here once
//! a second. Every name is documented in the README's metrics table.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use super::Shared;

/// Histogram buckets in seconds, from 100 µs to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// How long `/readyz` on a leader waits for a quorum's confirmation.
const QUORUM_WAIT: Duration = Duration::from_secs(1);

/// A node whose applied index trails its own log, or the leader's applied index, by more than this
/// is not ready.
const READY_LAG: u64 = 1_000;
/// How long `/readyz` on a follower waits for the leader to say how far it has applied.
const LEADER_WAIT: Duration = Duration::from_secs(1);

/// The process's Prometheus recorder (one per process; installed on first use).
fn handle() -> Result<PrometheusHandle, String> {
    static HANDLE: std::sync::OnceLock<Result<PrometheusHandle, String>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(SECONDS_BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())
        })
        .clone()
}

/// Bind the HTTP port and serve until `stop`.
pub(super) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let handle = match handle() {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the metrics recorder; /metrics is off");
            return;
        }
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(Http {
            shared,
            ready: Default::default(),
        }));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "HTTP (metrics, health) stopped");
    }
}

/// `/readyz` answers from a check at most this old, so a flood of probes (anyone who reaches the
/// HTTP port may send them) costs one quorum round a second, not one each.
const READY_FOR: Duration = Duration::from_secs(1);

/// What the HTTP handlers share: the node, and the last readiness answer with its time.
struct Http {
    shared: Arc<Shared>,
    /// Held while a check runs, so concurrent probes wait for it instead of starting their own.
    ready: tokio::sync::Mutex<Option<(std::time::Instant, (StatusCode, String))>>,
}

/// Ready: a member of a cluster that knows its leader and has applied what it holds. From a
/// check at most [`READY_FOR`] old.
async fn readyz(State(http): State<Arc<Http>>) -> (StatusCode, String) {
    let mut last = http.ready.lock().await;
    if let Some((at, answer)) = last.as_ref() {
        if at.elapsed() < READY_FOR {
            return answer.clone();
        }
    }
    let answer = check_ready(&http.shared).await;
    *last = Some((std::time::Instant::now(), answer.clone()));
    answer
}

async fn check_ready(shared: &Shared) -> (StatusCode, String) {
    metrics::counter!("warrant_readyz_checks_total").increment(1);
    let mut answer = readiness(shared).await;
    if shared.draining.load(std::sync::atomic::Ordering::SeqCst) {
        // Asking the quorum now would renew the followers' leader lease and delay the hand-over.
        answer = Err("this leader is handing leadership over".into());
    }
    // A leader cut off from its quorum still calls itself leader: ask the quorum.
    if answer
        .as_ref()
        .is_ok_and(|_| shared.raft.metrics().borrow().current_leader == Some(shared.node_id))
    {
        let confirmed = tokio::time::timeout(QUORUM_WAIT, shared.raft.ensure_linearizable()).await;
        if !matches!(confirmed, Ok(Ok(_))) {
            answer = Err(format!(
                "leads but could not confirm it with a quorum within {}ms",
                QUORUM_WAIT.as_millis()
            ));
        }
    }
    match answer {
        Ok(why) => (StatusCode::OK, format!("ready: {why}\n")),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn readiness(shared: &Shared) -> Result<String, String> {
    if let Some(why) = shared.retired.get() {
        return Err(why.clone());
    }
    let m = shared.raft.metrics().borrow().clone();
    if m.membership_config
        .membership()
        .get_node(&shared.node_id)
        .is_none()
    {
        return Err(
            "not a member of a cluster yet (add it with `warrant cluster add-node`)".into(),
        );
    }
    let Some(leader) = m.current_leader else {
        return Err(format!(
            "no known leader (term {}, {:?}): cut off from a quorum, or an election is under way",
            m.current_term, m.state
        ));
    };
    let applied = m.last_applied.map_or(0, |l| l.index);
    let last = m.last_log_index.unwrap_or(0);
    caught_up(applied, last, "its log holds")?;
    if leader == shared.node_id {
        return Ok(format!("leader of term {}", m.current_term));
    }
    // A follower's own log says nothing of what it has not received yet: compare with the leader's.
    let addr = m
        .membership_config
        .membership()
        .get_node(&leader)
        .cloned()
        .ok_or_else(|| format!("leader {leader} is not in the membership this node knows"))?;
    match shared.network.identify(&addr.raft, None, LEADER_WAIT).await {
        Ok(theirs) => caught_up(
            applied,
            theirs.applied,
            &format!("leader {leader} has applied"),
        )?,
        // A leader of an older version (a rolling upgrade): judge by this node's own log.
        Err(s) if s.code() == tonic::Code::Unimplemented => {}
        Err(s) => {
            return Err(format!(
                "cannot reach leader {leader} at {}: {}",
                addr.raft,
                s.message()
            ))
        }
    }
    Ok(format!(
        "following leader {leader} in term {}",
        m.current_term
    ))
}

/// Not ready while `applied` trails `reference` by more than [`READY_LAG`] entries; `whose` names
/// the reference ("its log holds").
fn caught_up(applied: u64, reference: u64, whose: &str) -> Result<(), String> {
    if reference.saturating_sub(applied) > READY_LAG {
        return Err(format!(
            "catching up: applied {applied}, {whose} {reference}"
        ));
    }
    Ok(())
}

/// Sample the gauges once a second; count leader changes as they happen.
pub(super) async fn sample(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_leader = None;
    loop {
        tick.tick().await;
        let m = shared.raft.metrics().borrow().clone();
        if m.current_leader != last_leader {
            if last_leader.is_some() || m.current_leader.is_some() {
                metrics::counter!("warrant_raft_leader_changes_total").increment(1);
            }
            last_leader = m.current_leader;
        }
        let applied = m.last_applied.map_or(0, |l| l.index);
        let last = m.last_log_index.unwrap_or(0);
        metrics::gauge!("warrant_raft_term").set(m.current_term as f64);
        metrics::gauge!("warrant_raft_is_leader").set(f64::from(u8::from(
            m.current_leader == Some(shared.node_id),
        )));
        metrics::gauge!("warrant_raft_last_log_index").set(last as f64);
        metrics::gauge!("warrant_raft_applied_index").set(applied as f64);
        metrics::gauge!("warrant_raft_apply_lag_entries").set(last.saturating_sub(applied) as f64);
        let voters = m.membership_config.membership().voter_ids().count();
        metrics::gauge!("warrant_raft_voters").set(voters as f64);
        let ready = readiness(&shared).await.is_ok();
        metrics::gauge!("warrant_ready").set(f64::from(u8::from(ready)));
        let (leases, audit) = {
            let sm = shared.sm.read();
            (sm.state.live_lease_count(), sm.state.audit_chain().len())
        };
        metrics::gauge!("warrant_leases_live").set(leases as f64);
        metrics::gauge!("warrant_audit_records").set(audit as f64);
        metrics::gauge!("warrant_acquire_waiters").set(shared.waiters.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_caught_up_within_the_lag_and_says_how_far_behind_it_is_otherwise() {
        assert!(caught_up(5_000, 5_000, "x").is_ok());
        assert!(caught_up(4_000, 5_000, "x").is_ok());
        // Ahead of a reference read a moment ago is caught up too.
        assert!(caught_up(6_000, 5_000, "x").is_ok());
        let behind = caught_up(3_999, 5_000, "leader 1 has applied").unwrap_err();
        assert_eq!(
            behind,
            "catching up: applied 3999, leader 1 has applied 5000"
        );
    }
}
