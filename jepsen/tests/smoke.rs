//! Bounded runs of the suite in local or proxy mode (no root needed), 3 real nodes each: a smoke run with
//! kills and pauses that every checker must pass (both workloads: register and deploy), and runs with
//! a deliberately broken mode that the right checker must fail. Needs the `warrant` binary built
//! next to this test (`cargo build -p warrant --bin warrant`) or named by `$WARRANT_BIN`. Runs queue
//! on the machine-wide run lock, so these tests may start together.

use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// `warrant-jepsen run --mode local --nodes 3 --nemesis kill,pause,client-pause --seed 7 ARGS`: its
/// exit status and results.json.
fn run_suite(args: &[&str]) -> (ExitStatus, serde_json::Value, String) {
    run_suite_with("kill,pause,client-pause", args)
}

/// The same with another nemesis.
fn run_suite_with(nemesis: &str, args: &[&str]) -> (ExitStatus, serde_json::Value, String) {
    run_suite_in("local", nemesis, args)
}

/// The same in another `--mode`.
fn run_suite_in(
    mode: &str,
    nemesis: &str,
    args: &[&str],
) -> (ExitStatus, serde_json::Value, String) {
    let bin = warrant_jepsen::find_warrant_bin();
    assert!(
        bin.is_file(),
        "the warrant server binary is missing ({}); run `cargo build -p warrant --bin warrant` or set WARRANT_BIN",
        bin.display()
    );
    let out = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_warrant-jepsen"))
        .args([
            "run",
            "--mode",
            mode,
            "--nodes",
            "3",
            "--nemesis",
            nemesis,
            "--seed",
            "7",
        ])
        .args(args)
        .arg("--out")
        .arg(out.path())
        .arg("--warrant-bin")
        .arg(&bin)
        .spawn()
        .expect("start warrant-jepsen");
    // Bounded: a run takes its time plus ~5 s, and may first wait for another run's lock (up to
    // 180 s); kill it past 400 s (it cleans up on SIGTERM).
    let deadline = Instant::now() + Duration::from_secs(400);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for warrant-jepsen") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
            panic!("warrant-jepsen {args:?} did not finish within 400 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let results = std::fs::read_to_string(out.path().join("results.json")).unwrap_or_default();
    let v = serde_json::from_str(&results).unwrap_or(serde_json::Value::Null);
    (status, v, results)
}

/// The checkers of the cluster's own behaviour, which a harness-side broken mode must leave valid.
const CLUSTER_OWN: [&str; 5] = [
    "token_order",
    "linearizable",
    "durability",
    "audit",
    "node_state",
];

/// Each of `checkers` in results.json is `valid` (or, with `valid = false`, failed).
fn assert_checkers(v: &serde_json::Value, results: &str, valid: bool, checkers: &[&str]) {
    for c in checkers {
        assert_eq!(v["checkers"][c]["valid"], valid, "{c}: {results}");
    }
}

#[test]
fn smoke_run_in_local_mode_passes_every_checker() {
    let (status, v, results) = run_suite(&["--time", "20s"]);
    assert!(status.success(), "smoke run failed ({status}): {results}");
    assert_eq!(v["valid"], true);
    assert!(
        v["ops"]["acquire.ok"].as_u64().unwrap_or(0) > 5,
        "{results}"
    );
    let faults = ["kill", "pause", "client-pause"]
        .iter()
        .map(|f| v["faults"][f].as_u64().unwrap_or(0))
        .sum::<u64>();
    assert!(faults >= 2, "{results}");
    assert_eq!(v["os_clients"], 2, "{results}");
    assert!(
        v["checkers"]["deploy_once"]["counts"]["deploys_completed"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{results}"
    );
    assert_checkers(
        &v,
        &results,
        true,
        &[
            "fenced_register",
            "token_order",
            "lease_exclusivity",
            "durability",
            "deploy_fencing",
            "deploy_once",
            "deploy_previous",
            "deploy_duplicates",
            "node_state",
            // The restore step: a backup saved mid-run, a second cluster restored from it, the
            // register workload against that one with every checker.
            "restore",
            "restore/fenced_register",
            "restore/token_order",
            "restore/lease_exclusivity",
            "restore/durability",
            "restore/linearizable",
            "restore/node_state",
            "restore/audit",
            "restore/tokens_after_restore",
        ],
    );
    assert!(
        v["ops"]["restore.acquire.ok"].as_u64().unwrap_or(0) > 5,
        "the restored cluster grants: {results}"
    );
}

/// A protected resource that skips the fence check accepts a fenced-out instance's steps: exit 1,
/// and `deploy_fencing` names them.
#[test]
fn a_resource_skipping_the_fence_check_fails_the_run() {
    let (status, v, results) = run_suite(&["--time", "15s", "--break", "skip-fence"]);
    assert_eq!(status.code(), Some(1), "{results}");
    assert_eq!(v["valid"], false, "{results}");
    assert_eq!(v["checkers"]["deploy_fencing"]["valid"], false, "{results}");
    // The cluster itself did nothing wrong.
    assert_checkers(&v, &results, true, &CLUSTER_OWN);
}

/// A client that acts after its lease expired (waking from a pause) overlaps the next holder:
/// exit 1, and `lease_exclusivity` names the overlap.
#[test]
fn a_client_ignoring_expiry_fails_the_run() {
    let (status, v, results) = run_suite(&["--time", "20s", "--break", "ignore-expiry"]);
    assert_eq!(status.code(), Some(1), "{results}");
    assert_checkers(&v, &results, false, &["lease_exclusivity"]);
    assert_checkers(&v, &results, true, &CLUSTER_OWN);
}

/// Server side: a leader whose lease clock runs fast (`chaos_break = "early-expiry"`) grants a lease
/// to the next client while its holder still rightly believes it holds it: `lease_exclusivity`
/// names the overlap, though every token is still in order.
#[test]
fn a_leader_expiring_leases_early_fails_the_run() {
    let (status, v, results) = run_suite(&["--time", "15s", "--break", "early-expiry"]);
    assert_eq!(status.code(), Some(1), "{results}");
    assert_checkers(&v, &results, false, &["lease_exclusivity"]);
    assert_checkers(
        &v,
        &results,
        true,
        &["token_order", "durability", "audit", "node_state"],
    );
}

/// Real client processes, really stopped: a client that ignores expiry, SIGSTOPped past its ttl
/// (`client-pause`, no simulated pauses at all), acts on its lease after the next holder got it:
/// `lease_exclusivity` names the overlap, and the fence turns its writes away.
#[test]
fn a_client_ignoring_expiry_is_caught_after_a_real_sigstop() {
    let (status, v, results) = run_suite_with(
        "client-pause",
        &[
            "--time",
            "25s",
            "--break",
            "ignore-expiry",
            "--sim-pause",
            "0",
            "--os-clients",
            "6",
            "--workload",
            "register",
        ],
    );
    assert_eq!(status.code(), Some(1), "{results}");
    assert!(
        v["faults"]["client-pause"].as_u64().unwrap_or(0) >= 1,
        "{results}"
    );
    assert_eq!(
        v["ops"]["pause.info"],
        serde_json::Value::Null,
        "no simulated pause: {results}"
    );
    assert_checkers(&v, &results, false, &["lease_exclusivity"]);
    assert_checkers(
        &v,
        &results,
        true,
        &[
            "fenced_register",
            "token_order",
            "linearizable",
            "durability",
            "audit",
            "node_state",
        ],
    );
}

/// Without namespaces or root: partitions cut by the harness's proxies between nodes (`--mode
/// proxy`), every checker passing.
#[test]
fn partitions_through_proxies_pass_every_checker() {
    let (status, v, results) = run_suite_in(
        "proxy",
        "partition,bridge",
        &["--time", "15s", "--workload", "register", "--no-restore"],
    );
    assert!(status.success(), "proxy run failed ({status}): {results}");
    assert_eq!(v["mode"], "proxy", "{results}");
    let cuts = v["faults"]["partition"].as_u64().unwrap_or(0)
        + v["faults"]["bridge"].as_u64().unwrap_or(0);
    assert!(cuts >= 2, "{results}");
    assert_eq!(v["faults"]["errors"], serde_json::Value::Null, "{results}");
}

/// Server side: a node that grants over a live holder (`chaos_break = "grant-over-holder"`: it
/// revokes the holder's lease unasked before the acquire) leaves the holder believing it still holds
/// the resource until its next keepalive: `lease_exclusivity` names the overlap, while the fence
/// still turns the displaced holder's writes away.
#[test]
fn a_server_granting_over_the_holder_fails_the_run() {
    let (status, v, results) = run_suite(&[
        "--time",
        "15s",
        "--break",
        "grant-over-holder",
        "--workload",
        "register",
    ]);
    assert_eq!(status.code(), Some(1), "{results}");
    assert_checkers(&v, &results, false, &["lease_exclusivity"]);
    assert_checkers(
        &v,
        &results,
        true,
        &[
            "fenced_register",
            "token_order",
            "durability",
            "audit",
            "node_state",
        ],
    );
}

/// Server side: every node acknowledges one acquire in four without applying it (`chaos_break =
/// "lose-grants"`): acknowledged grants lost from every node. `audit` finds them missing from the
/// logs, `token_order` sees their tokens issued again, `durability` sees grants that carry the
/// wrong predecessor.
#[test]
fn a_server_losing_acknowledged_grants_fails_the_run() {
    let (status, v, results) = run_suite(&["--time", "15s", "--break", "lose-grants"]);
    assert_eq!(status.code(), Some(1), "{results}");
    assert_checkers(&v, &results, false, &["audit", "token_order", "durability"]);
    let audit = serde_json::to_string(&v["checkers"]["audit"]["violations"]).unwrap();
    assert!(audit.contains("missing_from_audit"), "{audit}");
}
