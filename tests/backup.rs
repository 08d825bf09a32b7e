//! Backup and restore on real clusters: `warrant snapshot save` from a running cluster, checksum
//! checks, `warrant snapshot restore` into a fresh 3-node cluster that keeps leases, completed tasks
//! and the audit trail, and issues tokens above every token the old cluster may have issued.

mod common;

use std::time::Duration;

use common::{granted, json, stderr, stdout, Cluster, Opts};
use warrant::client::{AcquireOptions, Acquired};

const WAIT: Duration = Duration::from_secs(20);

/// The cluster id `warrant cluster status` reports.
fn cluster_id(cluster: &Cluster) -> String {
    let out = cluster.cli("human/admin", &["cluster", "status", "--output", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = json(&out)["cluster_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "{id}");
    id
}

fn ttl(resource: &str, secs: u64) -> AcquireOptions {
    AcquireOptions::new(resource, Duration::from_secs(secs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_then_restore_into_a_fresh_cluster_keeps_leases_tasks_and_audit_and_tokens_only_grow()
{
    let mut old = Cluster::start(Opts {
        spare: 1,
        ..Opts::default()
    });
    old.wait_leader(WAIT).await;
    let agent = old.client("agent/deployer");
    let live = granted(&agent, ttl("b/live", 600)).await;
    let mut task = ttl("b/task", 60);
    task.task_key = Some("deploy-42".into());
    let t = granted(&agent, task.clone()).await;
    t.checkpoint(b"all pods rolled".to_vec()).await.unwrap();
    let task_token = t.token();
    t.release(Some(warrant::model::ReleaseOutcome::Done))
        .await
        .unwrap();
    for i in 0..5 {
        granted(&agent, ttl(&format!("b/other/{i}"), 60))
            .await
            .release(None)
            .await
            .unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.wbak");
    let file_arg = file.to_str().unwrap();
    let saved = old.cli(
        "human/admin",
        &["snapshot", "save", file_arg, "--output", "json"],
    );
    assert!(saved.status.success(), "{}", stderr(&saved));
    let saved = json(&saved);
    let records = saved["backup"]["audit_records"].as_u64().unwrap();
    assert!(records >= 14, "{saved}");
    // Any member saves one: a follower has the leader decide (and audit) the admin check, then
    // writes its own state.
    let leader = old.wait_leader(WAIT).await;
    let follower = old
        .nodes
        .iter()
        .find(|n| n.joined && n.id != leader)
        .unwrap();
    let from_follower = dir.path().join("follower.wbak");
    let out = old.cli(
        "human/admin",
        &[
            "snapshot",
            "save",
            from_follower.to_str().unwrap(),
            "--output",
            "json",
            "--endpoints",
            &follower.client_addr,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json(&out)["backup"]["node"],
        follower.id,
        "{}",
        stdout(&out)
    );
    assert!(json(&out)["backup"]["audit_records"].as_u64().unwrap() >= records);
    let status = old.cli("human/admin", &["snapshot", "status", file_arg]);
    assert!(status.status.success(), "{}", stderr(&status));
    assert!(
        stdout(&status).contains("ok, sha256"),
        "{}",
        stdout(&status)
    );

    // A damaged copy is refused, by status and by restore, before anything is written.
    let damaged = dir.path().join("damaged.wbak");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&damaged, bytes).unwrap();
    let refused = old.cli(
        "human/admin",
        &["snapshot", "status", damaged.to_str().unwrap()],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("checksum mismatch"),
        "{}",
        stderr(&refused)
    );

    // The old cluster grows a fourth member after the backup. (Asked to add it under another id,
    // the leader finds out who answers at that address first.)
    old.start_spare(4);
    let (raft4, client4) = (
        old.node(4).raft_addr.clone(),
        old.node(4).client_addr.clone(),
    );
    let wrong = old.cli(
        "human/admin",
        &["cluster", "add-node", "5", &raft4, &client4],
    );
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains(&format!("node 4 answers at {raft4}, not node 5")),
        "{}",
        stderr(&wrong)
    );
    let added = old.cli(
        "human/admin",
        &["cluster", "add-node", "4", &raft4, &client4],
    );
    assert!(added.status.success(), "{}", stderr(&added));
    let old_id = cluster_id(&old);

    // The old cluster goes on issuing tokens after the backup (it is not dead yet).
    let after_backup = granted(&agent, ttl("b/after", 60)).await;
    let highest_old_token = after_backup.token();

    // The new cluster: every node seeded from the backup, then started.
    let new = Cluster::start(Opts {
        restore_from: Some(file.clone()),
        ..Opts::default()
    });
    new.wait_leader(WAIT).await;
    let admin = new.client("human/admin");
    let leases = admin.list("b").await.unwrap();
    let restored = leases
        .leases
        .iter()
        .find(|l| l.resource == "b/live")
        .expect("the live lease is restored");
    assert_eq!(restored.lease_id, live.lease_id());
    assert_eq!(restored.token, live.token());
    assert!(
        leases.revision >= records,
        "the revision continues from the backup's"
    );

    // The restored cluster has an id of its own, so the old cluster's members cannot join it or
    // talk Raft to it by mistake: adding the old cluster's node 4 is refused, saying why.
    let new_id = cluster_id(&new);
    assert_ne!(new_id, old_id);
    let foreign = new.cli(
        "human/admin",
        &["cluster", "add-node", "4", &raft4, &client4],
    );
    assert_eq!(foreign.status.code(), Some(3), "{}", stderr(&foreign));
    assert!(
        stderr(&foreign).contains(&format!(
            "node 4 at {raft4} belongs to another cluster: this node belongs to cluster id \
             {old_id}, the sender to cluster id {new_id}"
        )),
        "{}",
        stderr(&foreign)
    );
    assert_eq!(cluster_id(&old), old_id, "the old cluster is unchanged");

    // The completed task stays completed.
    let again = new.client("agent/deployer");
    match again.acquire(task).await.unwrap() {
        Acquired::AlreadyDone(done) => assert_eq!(done.token, task_token),
        other => panic!("expected already done, got {other:?}"),
    }

    // The audit trail came along and verifies; new records chain onto it.
    let verified = new.cli("human/admin", &["audit", "verify", "--output", "json"]);
    assert!(verified.status.success(), "{}", stderr(&verified));
    assert_eq!(json(&verified)["ok"], true);
    assert!(json(&verified)["records"].as_u64().unwrap() > records);

    // Tokens continue above every token of the backup, and above the ones the old cluster issued
    // since (the restore skipped a billion by default).
    let fresh = granted(&again, ttl("b/after", 60)).await;
    assert!(
        fresh.token() > highest_old_token,
        "token {} after restore, the old cluster reached {highest_old_token}",
        fresh.token()
    );
    assert!(fresh.token() > 1_000_000_000, "{}", fresh.token());

    // Restore refuses a data directory that is in use.
    let busy = new.cli(
        "human/admin",
        &[
            "snapshot",
            "restore",
            file_arg,
            "--config",
            new.node(1).config.to_str().unwrap(),
        ],
    );
    assert_eq!(busy.status.code(), Some(1));
    assert!(stderr(&busy).contains("not empty"), "{}", stderr(&busy));
    drop(live);
}

/// Issue 24 item 2: a backup taken after failovers (the old cluster at term 3 or more) restored
/// into a new cluster, whose terms start again at 1: its lease clock starts, a lease kept alive
/// stays, a lease left alone expires after its ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restored_from_a_backup_taken_after_failovers_keeps_time() {
    let mut old = Cluster::start(Opts::default());
    // Two elections forced by killing the leader (its restart keeps its data).
    for _ in 0..2 {
        let leader = old.wait_leader(WAIT).await;
        old.kill(leader);
        assert_ne!(old.wait_leader(WAIT).await, leader);
        old.start_node(leader);
    }
    let term = old.client("human/admin").status().await.unwrap().term;
    assert!(term >= 3, "the backup is taken at term {term}");
    let agent = old.client("agent/deployer");
    let kept = granted(&agent, ttl("t/kept", 3)).await;
    let lapsing = granted(&agent, ttl("t/lapsing", 3)).await;
    let (kept_id, lapsing_id) = (kept.lease_id().to_string(), lapsing.lease_id().to_string());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.wbak");
    let saved = old.cli("human/admin", &["snapshot", "save", file.to_str().unwrap()]);
    assert!(saved.status.success(), "{}", stderr(&saved));
    drop((kept, lapsing, old));

    let new = Cluster::start(Opts {
        restore_from: Some(file),
        ..Opts::default()
    });
    new.wait_leader(WAIT).await;
    let client = new.client("agent/deployer");
    let started = std::time::Instant::now();
    // Keepalives are answered with a ttl (before the fix: UNAVAILABLE, the clock never started)
    // while the other lease runs out and is expired by the new leader.
    let lapsed_after = loop {
        let answer = common::eventually(WAIT, "a keepalive answered", || {
            let client = &client;
            let kept_id = &kept_id;
            async move { client.keepalive(kept_id).await.ok() }
        })
        .await;
        match answer.result {
            Some(warrant::proto::keep_alive_response::Result::TtlMs(ms)) => {
                assert!(ms > 0 && ms <= 3_000, "{ms}")
            }
            other => panic!("the kept lease was lost: {other:?}"),
        }
        let live = client.list("t").await.unwrap();
        if !live.leases.iter().any(|l| l.lease_id == lapsing_id) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the lease left alone never expired after the restore"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        lapsed_after >= Duration::from_secs(2),
        "expired after {lapsed_after:?}: a restored lease gets a full ttl from the new leader"
    );
    let live = client.list("t").await.unwrap();
    assert!(
        live.leases.iter().any(|l| l.lease_id == kept_id),
        "{live:?}"
    );
}
