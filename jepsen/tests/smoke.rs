//! A bounded smoke run in local mode (no root needed): 3 real nodes, kills and pauses for 20 s, and
//! every checker must pass (both workloads: register and deploy). Needs the `warrant` binary built next to this test
//! (`cargo build -p warrant --bin warrant`) or named by `$WARRANT_BIN`.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn smoke_run_in_local_mode_passes_every_checker() {
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
            "local",
            "--nodes",
            "3",
            "--time",
            "20s",
            "--nemesis",
            "kill,pause",
            "--seed",
            "7",
            "--out",
        ])
        .arg(out.path())
        .arg("--warrant-bin")
        .arg(&bin)
        .spawn()
        .expect("start warrant-jepsen");
    // Bounded: the run itself takes ~25 s; give it 150 s before killing it (it cleans up on SIGTERM).
    let deadline = Instant::now() + Duration::from_secs(150);
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
            panic!("smoke run did not finish within 150 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let results = std::fs::read_to_string(out.path().join("results.json")).unwrap_or_default();
    assert!(status.success(), "smoke run failed ({status}): {results}");
    let v: serde_json::Value = serde_json::from_str(&results).expect("results.json is json");
    assert_eq!(v["valid"], true);
    assert!(
        v["ops"]["acquire.ok"].as_u64().unwrap_or(0) > 5,
        "{results}"
    );
    assert!(
        v["faults"]["kill"].as_u64().unwrap_or(0) + v["faults"]["pause"].as_u64().unwrap_or(0) >= 1,
        "{results}"
    );
    assert!(
        v["checkers"]["deploy_once"]["counts"]["deploys_completed"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{results}"
    );
    for c in [
        "fenced_register",
        "token_order",
        "lease_exclusivity",
        "durability",
        "deploy_fencing",
        "deploy_once",
        "deploy_previous",
        "deploy_duplicates",
    ] {
        assert_eq!(v["checkers"][c]["valid"], true, "{c}: {results}");
    }
}
