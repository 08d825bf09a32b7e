//! A real 3-node cluster on loopback: election, grants and tokens, leader failover, lease expiry by
//! time, restart durability, snapshot catch-up, takeover with fencing.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, granted, Cluster, Opts};
use warrant::client::{AcquireOptions, Acquired, Client, ClientConfig, FenceGuard};

const WAIT: Duration = Duration::from_secs(20);

/// The generated gRPC client, unary calls straight to node `id` (no retries, no leader discovery).
async fn raw_client(
    cluster: &Cluster,
    id: u64,
) -> warrant::proto::warrant_client::WarrantClient<tonic::transport::Channel> {
    warrant::proto::warrant_client::WarrantClient::connect(format!(
        "http://{}",
        cluster.node(id).client_addr
    ))
    .await
    .unwrap()
}

/// A `Session` stream opened on node `id` with the generated gRPC client: where to send its calls,
/// and its answers.
async fn raw_session(
    cluster: &Cluster,
    id: u64,
) -> (
    tokio::sync::mpsc::UnboundedSender<warrant::proto::SessionRequest>,
    tonic::Streaming<warrant::proto::SessionResponse>,
) {
    let addr = format!("http://{}", cluster.node(id).client_addr);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let answers = warrant::proto::warrant_client::WarrantClient::connect(addr)
        .await
        .unwrap()
        .session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, answers)
}

fn opts(resource: &str, ttl_ms: u64) -> AcquireOptions {
    AcquireOptions::new(resource, Duration::from_millis(ttl_ms))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_busy_release_acquire_gives_a_higher_token() {
    let cluster = Cluster::start(Opts::default());
    cluster.wait_leader(WAIT).await;
    let a = cluster.client("agent/a");
    let b = cluster.client("agent/b");

    let first = granted(&a, opts("k8s/prod/web/deploy", 10_000)).await;
    assert!(first.is_valid());
    match b
        .acquire(opts("k8s/prod/web/deploy", 10_000))
        .await
        .unwrap()
    {
        Acquired::Busy {
            holder, expires_in, ..
        } => {
            assert_eq!(holder, "agent/a");
            assert!(expires_in <= Duration::from_secs(10));
        }
        other => panic!("expected busy, got {other:?}"),
    }
    let t1 = first.token();
    first.release(None).await.unwrap();
    let second = granted(&b, opts("k8s/prod/web/deploy", 10_000)).await;
    assert!(
        second.token() > t1,
        "token {} must exceed {t1}",
        second.token()
    );

    let fence = b.check_fence("k8s/prod/web/deploy", t1).await.unwrap();
    assert_eq!(
        fence.status,
        warrant::proto::check_fence_response::Status::Stale as i32
    );
    let fence = b
        .check_fence("k8s/prod/web/deploy", second.token())
        .await
        .unwrap();
    assert_eq!(
        fence.status,
        warrant::proto::check_fence_response::Status::Current as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_acquire_with_the_same_request_id_returns_the_first_grant() {
    let cluster = Cluster::start(Opts::default());
    cluster.wait_leader(WAIT).await;
    let a = cluster.client("agent/a");
    let mut o = opts("db/orders/migrate", 10_000);
    o.request_id = Some("req-1".into());
    let first = granted(&a, o.clone()).await;
    let again = granted(&a, o).await;
    assert_eq!(first.lease_id(), again.lease_id());
    assert_eq!(first.token(), again.token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_a_new_one_and_the_next_token_is_higher() {
    let mut cluster = Cluster::start(Opts::default());
    let leader = cluster.wait_leader(WAIT).await;
    let a = cluster.client("agent/a");
    let mut highest = 0;
    for i in 0..5 {
        let l = granted(&a, opts(&format!("svc/{i}"), 10_000)).await;
        highest = highest.max(l.token());
        l.release(None).await.unwrap();
    }
    cluster.kill(leader);
    let killed_at = Instant::now();
    let l = granted(&a, opts("svc/0", 10_000)).await;
    let failover = killed_at.elapsed();
    eprintln!("leader kill -> next grant: {failover:?}");
    assert!(
        l.token() > highest,
        "token {} after failover must exceed {highest}",
        l.token()
    );
    let new_leader = cluster.wait_leader(WAIT).await;
    assert_ne!(new_leader, leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_lease_expires_after_its_ttl_and_not_before_the_holders_view() {
    let cluster = Cluster::start(Opts::default());
    cluster.wait_leader(WAIT).await;
    let a = cluster.client("agent/a");
    let b = cluster.client("agent/b");
    let ttl = Duration::from_millis(2_000);
    let t_send = Instant::now();
    let lease = granted(&a, opts("jobs/nightly", ttl.as_millis() as u64)).await;
    let token = lease.token();
    // The holder goes silent (no more keepalives): as a crashed agent would.
    std::mem::drop(lease);
    let holder_view = ttl.mul_f64(1.0 - a.config().drift);

    // Up to the holder's own validity the resource stays held.
    loop {
        let got = b.get("jobs/nightly").await.unwrap();
        let elapsed = t_send.elapsed();
        if elapsed >= holder_view {
            break;
        }
        assert!(
            got.holder.is_some(),
            "lease gone after {elapsed:?}, before the holder's view {holder_view:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And after ttl (+ the expiry interval and commit time) it is gone, with a higher fence.
    let freed_at = eventually(Duration::from_secs(10), "the lease to expire", || async {
        let got = b.get("jobs/nightly").await.ok()?;
        got.holder.is_none().then(|| (t_send.elapsed(), got.fence))
    })
    .await;
    assert!(
        freed_at.0 >= ttl.mul_f64(0.95),
        "expired after {:?}",
        freed_at.0
    );
    assert!(freed_at.1 > token, "expiry raises the fence");
    eprintln!(
        "abandoned lease with ttl {ttl:?} freed after {:?}",
        freed_at.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_kept_alive_outlives_its_ttl_and_survives_a_leader_kill() {
    let mut cluster = Cluster::start(Opts::default());
    let leader = cluster.wait_leader(WAIT).await;
    let a = cluster.client("agent/a");
    let lease = granted(&a, opts("svc/keep", 3_000)).await;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert!(lease.is_valid(), "keepalives extend the lease past its ttl");
    cluster.kill(leader);
    cluster.wait_leader(WAIT).await;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert!(
        lease.is_valid(),
        "a leader election does not end a lease that is kept alive"
    );
    let got = a.get("svc/keep").await.unwrap();
    assert_eq!(got.holder.map(|h| h.token), Some(lease.token()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_cluster_keeps_its_leases_tokens_and_checkpoints() {
    let mut cluster = Cluster::start(Opts::default());
    cluster.wait_leader(WAIT).await;
    let a = cluster.client("agent/a");
    let mut o = opts("db/main/migrate", 60_000);
    o.task_key = Some("migration-42".into());
    let lease = granted(&a, o).await;
    lease.checkpoint(b"step 3 of 7".to_vec()).await.unwrap();
    let before = a.get("db/main/migrate").await.unwrap();
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster.wait_leader(WAIT).await;
    let after = a.get("db/main/migrate").await.unwrap();
    let holder = after.holder.expect("the lease survived the restart");
    assert_eq!(holder.token, lease.token());
    assert_eq!(holder.lease_id, lease.lease_id());
    assert_eq!(holder.checkpoint.as_deref(), Some(&b"step 3 of 7"[..]));
    assert_eq!(after.fence, before.fence);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_catches_up_by_snapshot() {
    let mut cluster = Cluster::start(Opts {
        snapshot_after_entries: 20,
        keep_entries_after_snapshot: 2,
        ..Opts::default()
    });
    let leader = cluster.wait_leader(WAIT).await;
    let lagging = if leader == 3 { 2 } else { 3 };
    cluster.kill(lagging);
    let a = cluster.client("agent/a");
    let mut last = 0;
    for i in 0..40 {
        let l = granted(&a, opts(&format!("batch/{}", i % 4), 10_000)).await;
        last = l.token();
        l.release(None).await.unwrap();
    }
    let keep = granted(&a, opts("batch/held", 60_000)).await;
    cluster.start_node(lagging);
    let lc = cluster.node_client(lagging, "human/test");
    let leader_applied = cluster
        .node_client(leader, "human/test")
        .status()
        .await
        .unwrap()
        .last_applied;
    eventually(WAIT, "the lagging node to catch up", || async {
        let s = lc.status().await.ok()?;
        (s.last_applied >= leader_applied && s.live_leases == 1).then_some(())
    })
    .await;
    eventually(
        WAIT,
        "the lagging node's audit trail to be whole",
        || async { lc.verify_audit().await.ok().filter(|v| v.ok).map(|_| ()) },
    )
    .await;
    assert!(
        cluster.log_of(lagging).contains("installed snapshot"),
        "caught up through a snapshot"
    );
    // Make the caught-up node the only path to the data: stop the others one at a time is not
    // possible with quorum, so check its state through a leader-independent view instead.
    assert!(keep.token() > last);
    // The snapshot named the audit chain's head; the caught-up node fetched the records it lacked
    // from its peers and now holds the whole chain, intact, with the same head as the leader's.
    assert!(
        cluster.log_of(lagging).contains("audit records fetched"),
        "{}",
        cluster.log_of(lagging)
    );
    let (mine, theirs) = (
        lc.verify_audit().await.unwrap(),
        cluster
            .node_client(leader, "human/test")
            .verify_audit()
            .await
            .unwrap(),
    );
    assert!(mine.ok, "{mine:?}");
    assert!(
        mine.checked >= 81,
        "40 grants and releases and one more grant: {mine:?}"
    );
    assert!(theirs.checked >= mine.checked);
    if theirs.checked == mine.checked {
        assert_eq!(mine.head, theirs.head);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_takes_over_with_a_higher_token_and_its_predecessors_checkpoint() {
    let cluster = Cluster::start(Opts::default());
    cluster.wait_leader(WAIT).await;
    let endpoints = cluster.endpoints();
    let mut first_cfg = ClientConfig::new(endpoints.clone(), "agent/deployer").unwrap();
    first_cfg.instance = warrant::model::InstanceId::parse("deployer-1").unwrap();
    let mut second_cfg = first_cfg.clone();
    second_cfg.instance = warrant::model::InstanceId::parse("deployer-2").unwrap();
    let first = Client::new(first_cfg).unwrap();
    let second = Client::new(second_cfg).unwrap();

    // The protected resource: a register guarded by a FenceGuard.
    let guard = FenceGuard::new();
    let mut o = opts("k8s/prod/payments/deploy", 30_000);
    o.task_key = Some("deploy-v42".into());
    let old = granted(&first, o.clone()).await;
    guard.admit(old.token()).expect("first holder writes");
    old.checkpoint(b"3/5 pods rolled".to_vec()).await.unwrap();

    // Without --takeover the replacement is told the resource is busy.
    assert!(matches!(
        second.acquire(o.clone()).await.unwrap(),
        Acquired::Busy { .. }
    ));
    o.takeover = true;
    let new = granted(&second, o).await;
    assert!(new.token() > old.token());
    let prev = new
        .previous()
        .expect("the replacement learns where its predecessor stopped");
    assert_eq!(prev.instance, "deployer-1");
    assert_eq!(prev.token, old.token());
    assert_eq!(prev.ended, "taken over");
    assert_eq!(prev.checkpoint.as_deref(), Some(&b"3/5 pods rolled"[..]));

    guard.admit(new.token()).expect("the replacement writes");
    assert!(
        guard.admit(old.token()).is_err(),
        "the predecessor is fenced out at the resource"
    );
    assert_eq!(
        old.lost().await,
        warrant::client::LostReason::Server("taken over".into())
    );

    // Done completes the task: nobody is granted it again.
    new.release(Some(warrant::model::ReleaseOutcome::Done))
        .await
        .unwrap();
    let mut again = opts("k8s/prod/payments/deploy", 30_000);
    again.task_key = Some("deploy-v42".into());
    assert!(matches!(
        first.acquire(again).await.unwrap(),
        Acquired::AlreadyDone(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_waiter_is_granted_when_the_holder_releases() {
    let cluster = Cluster::start(Opts::default());
    cluster.wait_leader(WAIT).await;
    let a = cluster.client("agent/a");
    let b = cluster.client("agent/b");
    let held = granted(&a, opts("queue/res", 10_000)).await;
    let mut o = opts("queue/res", 10_000);
    o.wait = Some(Duration::from_secs(10));
    let waiter = tokio::spawn(async move { b.acquire(o).await });
    // The waiter is queued behind the holder.
    eventually(WAIT, "the waiter to queue", || async {
        (a.get("queue/res").await.ok()?.waiters == 1).then_some(())
    })
    .await;
    let t = held.token();
    held.release(None).await.unwrap();
    match waiter.await.unwrap().unwrap() {
        Acquired::Granted(l) => assert!(l.token() > t),
        other => panic!("expected the waiter to be granted, got {other:?}"),
    }

    // A waiter whose wait ends first is told so and never granted.
    let _holder = granted(&a, opts("queue/other", 10_000)).await;
    let c = cluster.client("agent/c");
    let mut o = opts("queue/other", 10_000);
    o.wait = Some(Duration::from_millis(500));
    assert!(matches!(c.acquire(o).await.unwrap(), Acquired::WaitEnded));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_quorum_acknowledges_no_keepalive() {
    let cluster = Cluster::start(Opts::default());
    let leader = cluster.wait_leader(WAIT).await;
    let a = cluster.client("agent/a");
    let lease = granted(&a, opts("svc/partitioned", 3_000)).await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for f in &followers {
        cluster.pause(*f);
    }
    // Straight to the old leader: it cannot confirm its leadership, so it must not extend the lease.
    let mut cfg = ClientConfig::new([cluster.node(leader).client_addr.clone()], "agent/a").unwrap();
    cfg.call_timeout = Duration::from_secs(5);
    let direct = Client::new(cfg).unwrap();
    let answer = direct.keepalive(lease.lease_id()).await;
    if answer.is_ok() {
        for id in 1..=3 {
            eprintln!(
                "==== node {id} (leader {leader}) ====\n{}",
                cluster.log_of(id)
            );
        }
    }
    assert!(
        answer.is_err(),
        "an unconfirmed leader acknowledged a keepalive: {answer:?}"
    );
    // And the holder learns by its own clock that it may no longer act.
    let lost = tokio::time::timeout(Duration::from_secs(5), lease.lost())
        .await
        .expect("lapse within ttl");
    assert_eq!(lost, warrant::client::LostReason::Lapsed);
    for f in &followers {
        cluster.resume(*f);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_knows_only_a_follower_is_redirected_to_the_leader() {
    let cluster = Cluster::start(Opts::default());
    let leader = cluster.wait_leader(WAIT).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let via_follower = cluster.node_client(follower, "agent/a");
    assert_eq!(via_follower.answered_by(), None, "nothing answered yet");
    let lease = granted(&via_follower, opts("redirect/me", 10_000)).await;
    // The answer came from the leader the follower named, and the client says so.
    assert_eq!(
        via_follower.answered_by().as_deref(),
        Some(cluster.node(leader).client_addr.as_str())
    );
    let got = via_follower.get("redirect/me").await.unwrap();
    assert_eq!(got.holder.map(|h| h.token), Some(lease.token()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serializable_read_is_answered_by_the_member_itself_even_without_a_quorum() {
    let mut cluster = Cluster::start(Opts::default());
    let leader = cluster.wait_leader(WAIT).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let other = (1..=3).find(|id| *id != leader && *id != follower).unwrap();
    let lease = granted(&cluster.client("agent/a"), opts("serial/x", 60_000)).await;
    let token = lease.token();
    let via_follower = cluster.node_client(follower, "agent/a");
    // The follower has applied the grant once its applied index reaches the leader's.
    let got = eventually(WAIT, "the follower applies the grant", || {
        let c = via_follower.clone();
        async move {
            c.get_serializable("serial/x")
                .await
                .ok()
                .filter(|g| g.fence >= token)
        }
    })
    .await;
    assert_eq!(got.holder.map(|h| h.token), Some(token));
    assert!(got.applied_index > 0);
    // Without a quorum, a linearizable read cannot be answered; the member's own state still is.
    cluster.kill(leader);
    cluster.kill(other);
    let mut quick =
        cluster.client_config(vec![cluster.node(follower).client_addr.clone()], "agent/a");
    quick.call_timeout = Duration::from_secs(2);
    let e = Client::new(quick)
        .unwrap()
        .get("serial/x")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    let alone = via_follower.get_serializable("serial/x").await.unwrap();
    assert_eq!(alone.fence, token);
    assert!(alone.applied_index >= got.applied_index);
    // The CLI says the same.
    let out = cluster.cli(
        "agent/a",
        &[
            "get",
            "serial/x",
            "--serializable",
            "--endpoints",
            &cluster.node(follower).client_addr,
            "--output",
            "json",
        ],
    );
    let json = common::json(&out);
    assert_eq!(json["fence"], token, "{json}");
    drop(lease);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_node_cluster_keeps_granting_with_two_nodes_down() {
    let mut cluster = Cluster::start(Opts {
        nodes: 5,
        ..Opts::default()
    });
    let leader = cluster.wait_leader(WAIT).await;
    let a = cluster.client("agent/a");
    let first = granted(&a, opts("five/r", 10_000)).await;
    let t = first.token();
    first.release(None).await.unwrap();
    // Lose two members, the leader among them: three of five are still a quorum.
    let other = (1..=5).find(|id| *id != leader).unwrap();
    cluster.kill(leader);
    cluster.kill(other);
    let next = granted(&a, opts("five/r", 10_000)).await;
    assert!(next.token() > t);
    let status = a.status().await.unwrap();
    assert_eq!(status.members.len(), 5);
}

/// The `Session` call on the wire: acquires and releases answered by call id exactly as the unary
/// calls answer them (grant, busy, release, a bad request, a waiting acquire refused), a follower's
/// session naming the leader, and a client's calls still answered after the node it had a session
/// with is killed (the session's calls fail as a lost connection and are retried elsewhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_answers_by_call_id_as_the_unary_calls_do() {
    use tokio_stream::StreamExt;
    use warrant::proto::{self, session_request::Call, session_response::Result as Answer};

    let mut cluster = Cluster::start(Opts::default());
    let leader = cluster.wait_leader(WAIT).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let acquire = |resource: &str, request_id: &str, wait_ms: u64| {
        Call::Acquire(proto::AcquireRequest {
            resource: resource.into(),
            ttl_ms: 10_000,
            request_id: request_id.into(),
            principal: "agent/a".into(),
            instance: "i-1".into(),
            wait_ms,
            ..Default::default()
        })
    };
    let (tx, mut answers) = raw_session(&cluster, leader).await;
    let ask = |call_id: u64, call: Call| {
        tx.send(proto::SessionRequest {
            call_id,
            call: Some(call),
        })
        .unwrap();
    };
    ask(1, acquire("session/a", "req-1", 0));
    let first = tokio::time::timeout(WAIT, answers.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.call_id, 1);
    let Some(Answer::Acquire(a)) = first.result else {
        panic!("expected an acquire answer, got {first:?}")
    };
    let Some(proto::acquire_response::Outcome::Granted(g)) = a.outcome else {
        panic!("expected a grant, got {a:?}")
    };
    let lease = g.lease.unwrap();
    // Three calls at once, answered by id: a retry of the same request (the same grant), another
    // request for the held resource (busy), a waiting acquire (refused here) and an invalid one.
    ask(2, acquire("session/a", "req-1", 0));
    ask(3, acquire("session/a", "req-2", 0));
    ask(4, acquire("session/b", "req-3", 5_000));
    ask(5, acquire("", "req-4", 0));
    let mut by_id = std::collections::BTreeMap::new();
    for _ in 0..4 {
        let m = tokio::time::timeout(WAIT, answers.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        by_id.insert(m.call_id, m.result.unwrap());
    }
    match &by_id[&2] {
        Answer::Acquire(proto::AcquireResponse {
            outcome: Some(proto::acquire_response::Outcome::Granted(again)),
        }) => assert_eq!(again.lease.as_ref().unwrap().token, lease.token),
        other => panic!("a retry should return the first grant, got {other:?}"),
    }
    assert!(
        matches!(
            &by_id[&3],
            Answer::Acquire(proto::AcquireResponse {
                outcome: Some(proto::acquire_response::Outcome::Busy(_))
            })
        ),
        "{:?}",
        by_id[&3]
    );
    for id in [4, 5] {
        match &by_id[&id] {
            Answer::Error(e) => assert_eq!(e.code, tonic::Code::InvalidArgument as i32, "{e:?}"),
            other => panic!("call {id} should be refused, got {other:?}"),
        }
    }
    ask(
        6,
        Call::Release(proto::ReleaseRequest {
            lease_id: lease.lease_id.clone(),
            principal: "agent/a".into(),
            ..Default::default()
        }),
    );
    let m = tokio::time::timeout(WAIT, answers.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m.call_id, 6);
    assert!(
        matches!(&m.result, Some(Answer::Release(r)) if r.ended == "released" && !r.already),
        "{m:?}"
    );

    // A follower's session answers "not the leader", naming it, as the unary call's metadata does.
    // (While an election is under way on a loaded machine it knows no leader yet and says so
    // without a name: ask again, a bounded number of times.)
    let (ftx, mut fanswers) = raw_session(&cluster, follower).await;
    for attempt in 0..20u64 {
        ftx.send(proto::SessionRequest {
            call_id: 7 + attempt * 1000,
            call: Some(acquire("session/c", "req-5", 0)),
        })
        .unwrap();
        let m = tokio::time::timeout(WAIT, fanswers.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match m.result {
            Some(Answer::Error(e)) if e.leader.is_empty() && attempt < 19 => {
                assert_eq!(e.code, tonic::Code::Unavailable as i32, "{e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(Answer::Error(e)) => {
                assert_eq!(e.code, tonic::Code::Unavailable as i32, "{e:?}");
                let now = cluster.wait_leader(WAIT).await;
                assert_eq!(e.leader, cluster.node(now).client_addr);
                break;
            }
            other => panic!("a follower should redirect, got {other:?}"),
        }
    }

    // The library's client makes its acquires and releases in a session (the leader counts them),
    // and keeps working across the loss of the node its session is with.
    let session_calls = |id: u64| {
        common::metrics_of(&cluster, id)
            .get("warrant_session_calls_total")
            .map_or(0, |v| *v as u64)
    };
    let before = session_calls(leader);
    assert!(before >= 6, "the raw session's calls are counted: {before}");
    let client = cluster.client("agent/b");
    let first = granted(&client, opts("session/d", 10_000)).await;
    let first_token = first.token();
    first.release(None).await.unwrap();
    assert_eq!(
        session_calls(leader),
        before + 2,
        "acquire and release in the session"
    );
    cluster.kill(leader);
    let after = granted(&client, opts("session/d", 10_000)).await;
    assert!(after.token() > first_token);
    after.release(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_sent_behind_the_holders_release_is_granted_not_answered_busy() {
    use tokio_stream::StreamExt;
    use warrant::proto::{self, session_request::Call, session_response::Result as Answer};

    let cluster = Cluster::start(Opts::default());
    let leader = cluster.wait_leader(WAIT).await;
    let (tx, mut answers) = raw_session(&cluster, leader).await;
    let mut call_id = 0;
    let mut ask = |call: Call| {
        call_id += 1;
        tx.send(proto::SessionRequest {
            call_id,
            call: Some(call),
        })
        .unwrap();
        call_id
    };
    let acquire = |principal: &str, request_id: String| {
        Call::Acquire(proto::AcquireRequest {
            resource: "handoff/r".into(),
            ttl_ms: 10_000,
            request_id,
            principal: principal.into(),
            instance: "i-1".into(),
            ..Default::default()
        })
    };
    let mut next = async |n: usize| {
        let mut by_id = std::collections::BTreeMap::new();
        for _ in 0..n {
            let m = tokio::time::timeout(WAIT, answers.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            by_id.insert(m.call_id, m.result.unwrap());
        }
        by_id
    };
    let grant_of = |answer: &Answer| match answer {
        Answer::Acquire(proto::AcquireResponse {
            outcome: Some(proto::acquire_response::Outcome::Granted(g)),
        }) => g.lease.clone().unwrap(),
        other => panic!("expected a grant, got {other:?}"),
    };
    let rides = || {
        common::metrics_of(&cluster, leader)
            .get("warrant_acquires_behind_release_total")
            .map_or(0, |v| *v as u64)
    };

    let busy = |answer: &Answer| {
        matches!(
            answer,
            Answer::Acquire(proto::AcquireResponse {
                outcome: Some(proto::acquire_response::Outcome::Busy(_))
            })
        )
    };

    let first = ask(acquire("agent/a", "first".into()));
    let mut holder = grant_of(&next(1).await[&first]);
    for round in 1..=10 {
        // The holder's release, then at once two acquires by others. The session runs its calls
        // concurrently: the first of the two to find the holder releasing rides behind the release
        // and is granted; the other finds the resource held (by the holder or the rider) and is
        // answered busy.
        let release = ask(Call::Release(proto::ReleaseRequest {
            lease_id: holder.lease_id.clone(),
            principal: holder.principal.clone(),
            ..Default::default()
        }));
        let takers = [
            ask(acquire("agent/b", format!("b-{round}"))),
            ask(acquire("agent/c", format!("c-{round}"))),
        ];
        let by_id = next(3).await;
        assert!(
            matches!(&by_id[&release], Answer::Release(r) if r.ended == "released"),
            "round {round}: {:?}",
            by_id[&release]
        );
        let taker = match (busy(&by_id[&takers[0]]), busy(&by_id[&takers[1]])) {
            (false, true) => takers[0],
            (true, false) => takers[1],
            _ => panic!(
                "round {round}: one acquire is granted, the other busy: {:?} / {:?}",
                by_id[&takers[0]], by_id[&takers[1]]
            ),
        };
        let taken = grant_of(&by_id[&taker]);
        assert!(taken.token > holder.token, "round {round}: tokens grow");
        holder = taken;
    }
    // Each grant above either found the resource already free or rode behind the release; the
    // leader counts the riders (a release commit takes longer than a quorum check, so in ten
    // rounds some ride).
    assert!(rides() >= 1, "no acquire rode behind a release");
}

/// Issue 24 item 9 (etcd#11456): a waiting acquire whose caller went away (its connection dropped)
/// is withdrawn, so the resource is never granted to a caller that is gone. Before the fix the
/// waiter stayed queued and was granted when the holder released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_caller_went_away_is_withdrawn_and_never_granted() {
    let cluster = Cluster::start(Opts::default());
    cluster.wait_leader(WAIT).await;
    let a = cluster.client("agent/a");
    let held = granted(&a, opts("gone/res", 60_000)).await;
    let b = cluster.client("agent/b");
    let mut o = opts("gone/res", 60_000);
    o.wait = Some(Duration::from_secs(60));
    let waiter = tokio::spawn(async move { b.acquire(o).await });
    eventually(WAIT, "the waiter to queue", || async {
        (a.get("gone/res").await.ok()?.waiters == 1).then_some(())
    })
    .await;
    // The caller goes away: its call is cancelled and its client (connections and all) dropped.
    waiter.abort();
    let _ = waiter.await;
    eventually(WAIT, "the waiter to be withdrawn", || async {
        (a.get("gone/res").await.ok()?.waiters == 0).then_some(())
    })
    .await;
    held.release(None).await.unwrap();
    let after = a.get("gone/res").await.unwrap();
    assert!(
        after.holder.is_none(),
        "granted to a caller that is gone: {:?}",
        after.holder
    );
}

/// Issue 24 item 3: a retried acquire (same request id) whose lease has ended since is answered as
/// ended, never as a live grant. Before the fix the retry returned the first grant with a full ttl
/// and the client ignored the keepalive that answered "lost": `is_valid()` was true while another
/// agent held the resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_acquire_of_a_lease_that_ended_is_reported_ended_not_granted() {
    let cluster = Cluster::start(Opts::default());
    cluster.wait_leader(WAIT).await;
    let a = cluster.client("agent/a");
    let mut first = opts("retry/res", 60_000);
    first.request_id = Some("retry-of-a-dead-lease".into());
    let lease = granted(&a, first.clone()).await;
    let lease_id = lease.lease_id().to_string();
    let instance = lease.info().lease.instance.clone();
    lease.release(None).await.unwrap();
    let b = cluster.client("agent/b");
    let _other = granted(&b, opts("retry/res", 60_000)).await;
    match a.acquire(first).await {
        Err(warrant::client::ClientError::LeaseEnded {
            lease_id: ended,
            reason,
        }) => {
            assert_eq!(ended, lease_id);
            assert!(reason.contains("released"), "{reason}");
        }
        Ok(Acquired::Granted(l)) => panic!(
            "a dead lease was handed out again (valid: {}) while agent/b holds the resource",
            l.is_valid()
        ),
        other => panic!("{other:?}"),
    }
    // The raw answer says so too: ended, no time left.
    let mut raw = raw_client(&cluster, cluster.wait_leader(WAIT).await).await;
    let answer = raw
        .acquire(warrant::proto::AcquireRequest {
            resource: "retry/res".into(),
            ttl_ms: 60_000,
            request_id: "retry-of-a-dead-lease".into(),
            principal: "agent/a".into(),
            instance,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    match answer.outcome {
        Some(warrant::proto::acquire_response::Outcome::Granted(g)) => {
            assert!(!g.ended.is_empty(), "{g:?}");
            assert_eq!(g.lease.unwrap().expires_in_ms, 0);
        }
        other => panic!("{other:?}"),
    }
}

/// Issue 24 item 6: a follower killed while it installs a snapshot (after openraft asked to purge
/// the log up to it, before the snapshot is on disk) restarts and catches up. The debug build's
/// test pause holds the install in that window; the node is killed inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_while_installing_a_snapshot_restarts_and_catches_up() {
    let mut cluster = Cluster::start(Opts {
        snapshot_after_entries: 20,
        keep_entries_after_snapshot: 2,
        ..Opts::default()
    });
    let leader = cluster.wait_leader(WAIT).await;
    let lagging = if leader == 3 { 2 } else { 3 };
    let a = cluster.client("agent/a");
    // The lagging node has a log of its own (and a snapshot), then falls behind.
    for i in 0..30 {
        granted(&a, opts(&format!("install/{}", i % 4), 10_000))
            .await
            .release(None)
            .await
            .unwrap();
    }
    cluster.kill(lagging);
    for i in 0..60 {
        granted(&a, opts(&format!("install/{}", i % 4), 10_000))
            .await
            .release(None)
            .await
            .unwrap();
    }
    let keep = granted(&a, opts("install/held", 120_000)).await;
    cluster.start_node_env(
        lagging,
        &[("WARRANT_TEST_PAUSE_BEFORE_SNAPSHOT_DURABLE_MS", "60000")],
    );
    cluster.wait_log(
        lagging,
        "WARRANT_TEST_PAUSE_BEFORE_SNAPSHOT_DURABLE_MS: test pause",
        WAIT,
    );
    cluster.kill(lagging);
    cluster.start_node(lagging);
    cluster.wait_caught_up(lagging, WAIT).await;
    let lc = cluster.node_client(lagging, "human/test");
    let view = lc.get_serializable("install/held").await.unwrap();
    assert_eq!(view.holder.map(|h| h.token), Some(keep.token()));
}

/// Issue 24 item 4, end to end: a cluster configured to remember 1,000 request ids replicates that
/// limit, answers the 1,001st new request id RESOURCE_EXHAUSTED (recording nothing), and still
/// answers a retry of the first request with its first grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_request_table_refuses_new_requests_and_keeps_every_answer() {
    let cluster = Cluster::start(Opts {
        extra: "[limits]\nrequest_records = 1000\nrequest_retention = \"10m\"\n".into(),
        ..Opts::default()
    });
    let leader = cluster.wait_leader(WAIT).await;
    let mut raw = raw_client(&cluster, leader).await;
    let request = |n: u32| warrant::proto::AcquireRequest {
        resource: format!("table/{n}"),
        ttl_ms: 60_000,
        request_id: format!("req-{n}"),
        principal: "agent/a".into(),
        instance: "i-1".into(),
        ..Default::default()
    };
    let lease_of = |answer: warrant::proto::AcquireResponse| match answer.outcome {
        Some(warrant::proto::acquire_response::Outcome::Granted(g)) => g.lease.unwrap(),
        other => panic!("expected a grant, got {other:?}"),
    };
    let first = lease_of(raw.acquire(request(0)).await.unwrap().into_inner());
    let mut refused = None;
    for n in 1..2_000 {
        match raw.acquire(request(n)).await {
            Ok(answer) => {
                lease_of(answer.into_inner());
            }
            Err(status) => {
                refused = Some((n, status));
                break;
            }
        }
    }
    let (n, status) = refused.expect("refused before 2,000 request ids");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("request_records"),
        "says what to raise: {}",
        status.message()
    );
    assert!(
        n >= 1_000,
        "every one of the 1,000 records was kept (refused at {n})"
    );
    // Nothing was recorded for the refused id: still refused, not granted by a later retry.
    let again = raw.acquire(request(n)).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::ResourceExhausted);
    // The first request, retried, gets its first grant; so does every other kept one.
    assert_eq!(
        lease_of(raw.acquire(request(0)).await.unwrap().into_inner()).lease_id,
        first.lease_id
    );
    let kept = lease_of(raw.acquire(request(n - 1)).await.unwrap().into_inner());
    assert_eq!(kept.resource, format!("table/{}", n - 1));
    let status = cluster
        .node_client(leader, "human/test")
        .status()
        .await
        .unwrap();
    assert_eq!(status.live_leases as u32, n, "no grant beyond the table");
}

/// Issue 24 item 5, over gRPC: a revoke of a resource whose answer was lost is retried with the
/// same request id after the waiter took the resource; the retry answers as the first did and the
/// waiter keeps its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_revoke_answers_as_the_first_and_spares_the_next_holder() {
    let cluster = Cluster::start(Opts::default());
    let a = cluster.client("agent/a");
    let b = cluster.client("agent/b");
    let first = granted(&a, opts("revoke/r", 60_000)).await;
    let waiting = tokio::spawn(async move {
        let mut o = opts("revoke/r", 60_000);
        o.wait = Some(Duration::from_secs(30));
        granted(&b, o).await
    });
    let admin = cluster.client("human/admin");
    eventually(WAIT, "agent/b to queue", || async {
        (admin.get("revoke/r").await.ok()?.waiters == 1).then_some(())
    })
    .await;
    let leader = cluster.wait_leader(WAIT).await;
    let mut raw = raw_client(&cluster, leader).await;
    let revoke = warrant::proto::RevokeRequest {
        resource: "revoke/r".into(),
        reason: "incident 9".into(),
        principal: "human/admin".into(),
        request_id: "revoke-once-1".into(),
        ..Default::default()
    };
    let answer = raw.revoke(revoke.clone()).await.unwrap().into_inner();
    assert_eq!(answer.revoked.unwrap().lease_id, first.lease_id());
    let next = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    // The retry (the first answer "lost"): the first lease again, and agent/b keeps the resource.
    let again = raw.revoke(revoke).await.unwrap().into_inner();
    assert_eq!(again.revoked.unwrap().lease_id, first.lease_id());
    let holder = admin.get("revoke/r").await.unwrap().holder.unwrap();
    assert_eq!(holder.lease_id, next.lease_id());
    assert!(next.is_valid());
}
