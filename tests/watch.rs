//! `Watch` on a real cluster: every event of a scripted sequence in order, resumption after the
//! serving node dies without gaps or repeats, "compacted" when a start is older than the nodes
//! keep, and `warrant watch` from the shell.

mod common;

use std::time::Duration;

use common::{granted, stderr, stdout, Cluster, Opts};
use futures::{Stream, StreamExt};
use warrant::audit::watch::{WatchEvent, WatchKind};
use warrant::client::{AcquireOptions, Acquired, Client, ClientError};

const WAIT: Duration = Duration::from_secs(20);
/// Events each node keeps in these tests.
const HISTORY: usize = 40;

fn opts() -> Opts {
    Opts {
        top: format!("watch_history = {HISTORY}"),
        ..Opts::default()
    }
}

fn ttl(resource: &str, ms: u64) -> AcquireOptions {
    AcquireOptions::new(resource, Duration::from_millis(ms))
}

/// The next `n` events, each within `WAIT`.
async fn take(
    stream: &mut (impl Stream<Item = Result<WatchEvent, ClientError>> + Unpin),
    n: usize,
) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(Ok(e))) => out.push(e),
            Ok(Some(Err(e))) => panic!("the watch failed after {} events: {e}", out.len()),
            Ok(None) => panic!("the watch ended after {} events", out.len()),
            Err(_) => panic!(
                "no event within {WAIT:?} after {} events: {out:?}",
                out.len()
            ),
        }
    }
    out
}

fn kinds(events: &[WatchEvent]) -> Vec<(WatchKind, String)> {
    events
        .iter()
        .map(|e| (e.kind, e.resource.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_a_scripted_sequence_in_order_and_only_under_its_prefix() {
    let cluster = Cluster::start(opts());
    cluster.wait_leader(WAIT).await;
    let agent = cluster.client("agent/deployer");
    let admin = cluster.client("human/admin");
    let start = agent.list("w").await.unwrap().revision;
    let stream = admin.watch("w", start + 1);
    futures::pin_mut!(stream);

    // The script: grant, checkpoint, release; grant, revoke; grant that expires; a task taken over;
    // and noise outside the prefix, and a busy answer (not an event).
    let a = granted(&agent, ttl("w/a", 10_000)).await;
    a.checkpoint(b"half".to_vec()).await.unwrap();
    let a_token = a.token();
    a.release(None).await.unwrap();
    let outside = granted(&agent, ttl("elsewhere/x", 10_000)).await;
    let b = granted(&agent, ttl("w/b", 10_000)).await;
    assert!(matches!(
        cluster
            .client("agent/other")
            .acquire(ttl("w/b", 10_000))
            .await
            .unwrap(),
        Acquired::Busy { .. }
    ));
    admin.revoke("w/b", "scripted").await.unwrap();
    let c = granted(&agent, ttl("w/c", 500)).await;
    let c_id = c.lease_id().to_string();
    drop(c); // no keepalives: it expires
    let mut task = ttl("w/d", 10_000);
    task.task_key = Some("deploy-1".into());
    let d1 = granted(&agent, task.clone()).await;
    task.takeover = true;
    let mut replacement = cluster.client_config(cluster.endpoints(), "agent/deployer");
    replacement.instance = warrant::model::InstanceId::parse("replacement").unwrap();
    let d2 = granted(&Client::new(replacement).unwrap(), task).await;
    assert!(d2.token() > d1.token());

    let events = take(&mut stream, 10).await;
    use WatchKind::*;
    let want: Vec<(WatchKind, String)> = [
        (Granted, "w/a"),
        (Checkpoint, "w/a"),
        (Released, "w/a"),
        (Granted, "w/b"),
        (Revoked, "w/b"),
        (Granted, "w/c"),
        (Granted, "w/d"),
        (TakenOver, "w/d"),
        (Granted, "w/d"),
        (Expired, "w/c"),
    ]
    .iter()
    .map(|(k, r)| (*k, r.to_string()))
    .collect();
    // The expiry's place depends on time; everything else is in script order.
    let mut got = kinds(&events);
    let expired_at = got
        .iter()
        .position(|e| *e == (Expired, "w/c".to_string()))
        .expect("w/c expired");
    let expired = got.remove(expired_at);
    let mut want_rest = want.clone();
    want_rest.retain(|e| *e != expired);
    assert_eq!(got, want_rest);
    assert!(events.windows(2).all(|w| w[0].revision < w[1].revision));
    assert!(events.iter().all(|e| e.revision > start));
    assert_eq!(events[0].token, a_token);
    assert_eq!(events[0].principal, "agent/deployer");
    assert!(events
        .iter()
        .any(|e| e.lease_id == c_id && e.kind == Expired));
    let revoked = events.iter().find(|e| e.kind == Revoked).unwrap();
    assert_eq!(revoked.principal, "human/admin");
    assert!(revoked.reason.contains("scripted"), "{revoked:?}");
    drop(outside);
    drop(b);
    drop(d2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_on_another_node_without_gaps_or_repeats() {
    let mut cluster = Cluster::start(opts());
    let leader = cluster.wait_leader(WAIT).await;
    // The watch opens at the leader (its permission check is a log entry); kill it mid-stream.
    let watcher = cluster.client("human/admin");
    let agent = cluster.client("agent/deployer");
    let start = agent.list("").await.unwrap().revision;
    let stream = watcher.watch("", start + 1);
    futures::pin_mut!(stream);

    for i in 0..5 {
        granted(&agent, ttl(&format!("r/{i}"), 10_000))
            .await
            .release(None)
            .await
            .unwrap();
    }
    let mut seen = take(&mut stream, 10).await;
    cluster.kill(leader);
    let survivor = (1..=3).find(|id| *id != leader).unwrap();
    for i in 5..10 {
        granted(&agent, ttl(&format!("r/{i}"), 10_000))
            .await
            .release(None)
            .await
            .unwrap();
    }
    seen.extend(take(&mut stream, 10).await);
    let revisions: Vec<u64> = seen.iter().map(|e| e.revision).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions repeat or go back: {revisions:?}"
    );
    let resources: Vec<String> = seen
        .iter()
        .filter(|e| e.kind == WatchKind::Granted)
        .map(|e| e.resource.clone())
        .collect();
    assert_eq!(
        resources,
        (0..10).map(|i| format!("r/{i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        seen.iter()
            .filter(|e| e.kind == WatchKind::Released)
            .count(),
        10
    );

    // A watch started later from a past revision, on the surviving node, gives the same events.
    let again = cluster
        .node_client(survivor, "human/admin")
        .watch("", start + 1);
    futures::pin_mut!(again);
    assert_eq!(take(&mut again, 20).await, seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_older_than_the_history_is_told_compacted_and_list_gives_the_resync_point() {
    let cluster = Cluster::start(opts());
    cluster.wait_leader(WAIT).await;
    let agent = cluster.client("agent/deployer");
    let admin = cluster.client("human/admin");
    for i in 0..(HISTORY / 2 + 5) {
        granted(&agent, ttl(&format!("c/{i}"), 10_000))
            .await
            .release(None)
            .await
            .unwrap();
    }
    let old = admin.watch("c", 1);
    futures::pin_mut!(old);
    match tokio::time::timeout(WAIT, old.next()).await.unwrap() {
        Some(Err(e)) => {
            assert_eq!(e.code(), tonic::Code::OutOfRange, "{e}");
            assert!(e.to_string().contains("compacted"), "{e}");
            assert!(e.to_string().contains("resync"), "{e}");
        }
        other => panic!("expected compacted, got {other:?}"),
    }

    // Resync: the state now, then every event after it.
    let resync = agent.list("c").await.unwrap();
    assert!(resync.leases.is_empty());
    let live = admin.watch("c", resync.revision + 1);
    futures::pin_mut!(live);
    let l = granted(&agent, ttl("c/new", 10_000)).await;
    let e = take(&mut live, 1).await;
    assert_eq!(e[0].resource, "c/new");
    assert_eq!(e[0].token, l.token());

    // From the shell: one line per event, JSON on request, stopping after --count.
    let from = resync.revision + 1;
    let out = cluster.cli(
        "human/admin",
        &[
            "watch",
            "c",
            "--from",
            &from.to_string(),
            "--count",
            "1",
            "--output",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["kind"], "granted");
    assert_eq!(v["resource"], "c/new");
    let out = cluster.cli("human/admin", &["watch", "c", "--from", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("compacted"), "{}", stderr(&out));
}
