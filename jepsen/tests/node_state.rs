//! The `node_state` and `audit` checkers against real nodes: it passes when every node's own state holds what
//! the history acknowledged, and fails when the history claims an acknowledged grant or release
//! that the nodes do not have — what a node that lost or never applied acknowledged writes looks
//! like; the audit checker likewise flags an acknowledged grant, release or checkpoint missing from
//! the nodes' audit logs. Local mode, 3 nodes; needs the `warrant` binary (see `smoke.rs`).

use std::time::Duration;

use warrant::client::{AcquireOptions, Acquired};
use warrant_jepsen::cluster::{self, Cluster, Mode, Setup};
use warrant_jepsen::history::{Event, Kind, Op};
use warrant_jepsen::{audit_check, node_check};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_state_catches_a_grant_or_release_the_nodes_do_not_have() {
    let bin = warrant_jepsen::find_warrant_bin();
    assert!(
        bin.is_file(),
        "build the warrant binary first ({})",
        bin.display()
    );
    // One run at a time on a machine: the other tests start `warrant-jepsen run`, which clears the
    // nodes an earlier run left behind.
    let _lock = cluster::lock_run().unwrap();
    cluster::cleanup_leftovers();
    // Stops the nodes however the test ends, also on a failed assertion.
    struct Cleanup;
    impl Drop for Cleanup {
        fn drop(&mut self) {
            cluster::cleanup();
        }
    }
    let _cleanup = Cleanup;
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(Setup {
        mode: Mode::Local,
        nodes: 3,
        spares: 0,
        bin: &bin,
        dir: dir.path(),
        faketime: None,
        top_level: "",
        tls: false,
        restore_from: None,
    })
    .unwrap();
    c.wait_leader(Duration::from_secs(30))
        .await
        .expect("a leader");
    let client = c.admin_client().unwrap();
    let Acquired::Granted(held) = client
        .acquire(AcquireOptions::new("ns/held", Duration::from_secs(60)))
        .await
        .unwrap()
    else {
        panic!("not granted")
    };
    let Acquired::Granted(freed) = client
        .acquire(AcquireOptions::new("ns/freed", Duration::from_secs(60)))
        .await
        .unwrap()
    else {
        panic!("not granted")
    };
    held.checkpoint(b"step 1".to_vec()).await.unwrap();
    let freed_token = freed.token();
    freed.release(None).await.unwrap();
    let names = ["ns/held".to_string(), "ns/freed".to_string()];
    let ok = |f, resource: &str, token| Event::new(Kind::Ok, f, 1, resource).token(token);

    // The true history: every node has it.
    let truth = [
        ok(Op::Acquire, "ns/held", held.token()),
        ok(Op::Acquire, "ns/freed", freed_token),
        ok(Op::Release, "ns/freed", freed_token),
        ok(Op::Checkpoint, "ns/held", held.token()),
    ];
    let v = node_check::check(&c, &names, &truth).await;
    assert!(v.valid, "{:?}", v.violations);
    assert_eq!(v.counts.get("nodes_checked"), Some(&3));
    let a = audit_check::check(&c.endpoints(), &truth, &c.security).await;
    assert!(a.valid, "{:?}", a.violations);
    for (counter, n) in [
        ("grants_in_audit", 2),
        ("releases_in_audit", 1),
        ("checkpoints_in_audit", 1),
        ("nodes_verified", 3),
    ] {
        assert_eq!(a.counts.get(counter), Some(&n), "{counter}: {:?}", a.counts);
    }

    // A history that acknowledged more than the nodes hold: a later grant on ns/freed, and the
    // release of the lease that still holds ns/held. Every node is flagged for both.
    let claimed = [
        ok(Op::Acquire, "ns/freed", freed_token + 1_000),
        ok(Op::Release, "ns/held", held.token()),
    ];
    let v = node_check::check(&c, &names, &claimed).await;
    assert!(!v.valid);
    assert_eq!(v.counts.get("violations"), Some(&6), "{:?}", v.violations);
    let text = serde_json::to_string(&v.violations).unwrap();
    assert!(
        text.contains("acknowledged_grant") && text.contains("release_acknowledged"),
        "{text}"
    );

    // The audit logs lack them too, and a checkpoint that was never recorded.
    let claimed = [
        ok(Op::Acquire, "ns/freed", freed_token + 1_000),
        ok(Op::Release, "ns/held", held.token()),
        ok(Op::Checkpoint, "ns/freed", freed_token + 1_000),
        // Two acknowledged checkpoints of `held`, of which the logs have one.
        ok(Op::Checkpoint, "ns/held", held.token()),
        ok(Op::Checkpoint, "ns/held", held.token()),
    ];
    let a = audit_check::check(&c.endpoints(), &claimed, &c.security).await;
    assert!(!a.valid);
    let text = serde_json::to_string(&a.violations).unwrap();
    for what in [
        "\"grant\"",
        "\"release\"",
        "\"checkpoint\"",
        "\"acknowledged\":2,\"records\":1",
    ] {
        assert!(text.contains(what), "{what}: {text}");
    }
    drop(held);
}
