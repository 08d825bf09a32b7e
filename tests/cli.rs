//! The `warrant` CLI as scripts and agents use it: json shapes, exit codes, bad input, `warrant run`,
//! and the server's refusal of bad configs and foreign data.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{eventually, free_port, json, stderr, stdout, Cluster, Opts, BIN};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_get_release_have_the_documented_json_and_exit_codes() {
    let cluster = Cluster::start(Opts::default());
    cluster.wait_leader(WAIT).await;
    let out = cluster.cli(
        "agent/a",
        &[
            "acquire",
            "app/web",
            "--ttl",
            "30s",
            "--intent",
            "deploy web",
            "--output",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let g = json(&out);
    assert_eq!(g["outcome"], "granted");
    assert_eq!(g["resource"], "app/web");
    assert_eq!(g["ttl_ms"], 30_000);
    assert!(g["previous"].is_null());
    let token = g["token"].as_u64().unwrap();
    let lease_id = g["lease_id"].as_str().unwrap().to_string();

    let busy = cluster.cli(
        "agent/b",
        &["acquire", "app/web", "--ttl", "30s", "--output", "json"],
    );
    assert_eq!(busy.status.code(), Some(3));
    let b = json(&busy);
    assert_eq!(b["outcome"], "busy");
    assert_eq!(b["holder"], "agent/a");
    assert!(b["expires_in_ms"].as_u64().unwrap() <= 30_000);

    let get = json(&cluster.cli("agent/b", &["get", "app/web", "--output", "json"]));
    for key in [
        "resource",
        "held",
        "holder",
        "instance",
        "lease_id",
        "token",
        "expires_in_ms",
        "intent",
        "fence",
    ] {
        assert!(get.get(key).is_some(), "get json lacks {key}: {get}");
    }
    assert_eq!(get["held"], true);
    assert_eq!(get["token"], token);
    assert_eq!(get["intent"], "deploy web");

    let ka = cluster.cli("agent/a", &["keepalive", &lease_id, "--output", "json"]);
    assert_eq!(ka.status.code(), Some(0), "{}", stderr(&ka));
    assert_eq!(json(&ka)["ttl_ms"], 30_000);

    assert_eq!(
        cluster
            .cli("agent/a", &["check-fence", "app/web", &token.to_string()])
            .status
            .code(),
        Some(0)
    );
    let rel = cluster.cli("agent/a", &["release", &lease_id, "--outcome", "done"]);
    assert_eq!(rel.status.code(), Some(0), "{}", stderr(&rel));
    assert_eq!(
        cluster
            .cli("agent/a", &["check-fence", "app/web", &token.to_string()])
            .status
            .code(),
        Some(3)
    );
    let lost = cluster.cli("agent/a", &["keepalive", &lease_id, "--output", "json"]);
    assert_eq!(lost.status.code(), Some(3));
    assert_eq!(json(&lost)["lost"], "done");

    let status = json(&cluster.cli("agent/a", &["cluster", "status", "--output", "json"]));
    assert!(status["leader"].as_u64().is_some());
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    assert!(status["term"].as_u64().unwrap() >= 1);
    assert!(status["last_applied"].as_u64().unwrap() >= 1);
}

/// A follower's serializable read does not know how long a lease has left (only the leader counts
/// it): the CLI says so instead of "expires in 0ms".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serializable_get_from_a_follower_reports_the_ttl_not_a_countdown() {
    let cluster = Cluster::start(Opts::default());
    let leader = cluster.wait_leader(WAIT).await;
    let out = cluster.cli(
        "agent/a",
        &["acquire", "ser/x", "--ttl", "30s", "--output", "json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let at = cluster.node(follower).client_addr.clone();
    let args = ["get", "ser/x", "--serializable", "--output", "json"];
    let got = eventually(WAIT, "the follower to apply the grant", || {
        let out = cluster.cli_at(&at, "agent/b", &args);
        async move {
            let j = json(&out);
            (j["held"] == true).then_some(j)
        }
    })
    .await;
    assert!(got["expires_in_ms"].is_null(), "{got}");
    assert_eq!(got["ttl_ms"], 30_000);
    let text = cluster.cli_at(&at, "agent/b", &["get", "ser/x", "--serializable"]);
    assert!(
        stdout(&text).contains("expires in at most 30000ms (its ttl: a serializable read"),
        "{}",
        stdout(&text)
    );
    // The linearizable read (through the leader) counts down.
    let lin = json(&cluster.cli("agent/b", &["get", "ser/x", "--output", "json"]));
    assert!(
        lin["expires_in_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0 && ms <= 30_000),
        "{lin}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_done_task_answers_already_done_with_exit_6() {
    let cluster = Cluster::start(Opts::default());
    cluster.wait_leader(WAIT).await;
    let g = json(&cluster.cli(
        "agent/a",
        &[
            "acquire",
            "db/m",
            "--ttl",
            "10s",
            "--task-key",
            "mig-1",
            "--output",
            "json",
        ],
    ));
    let lease_id = g["lease_id"].as_str().unwrap();
    assert_eq!(
        cluster
            .cli("agent/a", &["release", lease_id, "--outcome", "done"])
            .status
            .code(),
        Some(0)
    );
    let again = cluster.cli(
        "agent/a",
        &[
            "acquire",
            "db/m",
            "--ttl",
            "10s",
            "--task-key",
            "mig-1",
            "--output",
            "json",
        ],
    );
    assert_eq!(again.status.code(), Some(6));
    assert_eq!(json(&again)["outcome"], "already_done");
    assert_eq!(json(&again)["record"]["token"], g["token"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_exit_2_and_a_precise_reason() {
    let cluster = Cluster::start(Opts {
        min_ttl: "1s",
        max_ttl: "1h",
        ..Opts::default()
    });
    cluster.wait_leader(WAIT).await;
    let cases: &[(&[&str], &str)] = &[
        (&["acquire", "", "--ttl", "10s"], "resource"),
        (&["acquire", "a//b", "--ttl", "10s"], "empty segment"),
        (&["acquire", "/a", "--ttl", "10s"], "resource"),
        (&["acquire", "a\u{7}b", "--ttl", "10s"], "resource"),
        (&["acquire", &"x".repeat(300), "--ttl", "10s"], "resource"),
        (&["acquire", "a/b", "--ttl", "0s"], "greater than zero"),
        (&["acquire", "a/b", "--ttl", "-5s"], "ttl"),
        (&["acquire", "a/b", "--ttl", "soon"], "not a duration"),
        (
            &["acquire", "a/b", "--ttl", "100ms"],
            "outside this cluster's bounds",
        ),
        (
            &["acquire", "a/b", "--ttl", "2h"],
            "outside this cluster's bounds",
        ),
        (
            &[
                "acquire",
                "a/b",
                "--ttl",
                "10s",
                "--intent",
                &"i".repeat(2000),
            ],
            "intent",
        ),
        (
            &["acquire", "a/b", "--ttl", "10s", "--label", "nocolon"],
            "KEY:VALUE",
        ),
        (
            &["acquire", "a/b", "--ttl", "10s", "--label", "bad key:v"],
            "label",
        ),
        (&["keepalive", "not-a-lease"], "lease id"),
        (&["release", "zzzz"], "lease id"),
        (&["release", "00000000000000ff"], "unknown lease"),
        (
            &["checkpoint", "00000000000000ff", "--token", "1", "x"],
            "unknown lease",
        ),
        (&["check-fence", "a//b", "1"], "empty segment"),
        (
            &["acquire", "a/b", "--ttl", "10s", "--principal", "root"],
            "agent/NAME",
        ),
    ];
    for (args, needle) in cases {
        let out = cluster.cli("agent/a", args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {} / {}",
            stdout(&out),
            stderr(&out)
        );
        let err = stderr(&out);
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "{args:?}: {err}"
        );
    }
    // Nothing changed: no lease was granted by any of the above.
    let list = json(&cluster.cli("agent/a", &["list", "--output", "json"]));
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");

    // A stale or oversized checkpoint is refused and changes nothing.
    let g = json(&cluster.cli(
        "agent/a",
        &["acquire", "cp/x", "--ttl", "30s", "--output", "json"],
    ));
    let (id, token) = (
        g["lease_id"].as_str().unwrap(),
        g["token"].as_u64().unwrap(),
    );
    let stale = cluster.cli(
        "agent/a",
        &["checkpoint", id, "--token", &(token - 1).to_string(), "x"],
    );
    assert_eq!(stale.status.code(), Some(3), "{}", stderr(&stale));
    assert!(stderr(&stale).contains("token"), "{}", stderr(&stale));
    let big = cluster.cli(
        "agent/a",
        &[
            "checkpoint",
            id,
            "--token",
            &token.to_string(),
            &"x".repeat(5000),
        ],
    );
    assert_eq!(big.status.code(), Some(2), "{}", stderr(&big));
    assert!(stderr(&big).contains("4096"), "{}", stderr(&big));
    let not_mine = cluster.cli("agent/b", &["release", id]);
    assert_eq!(not_mine.status.code(), Some(4), "{}", stderr(&not_mine));
    let not_admin = cluster.cli("agent/b", &["revoke", "cp/x", "--reason", "mine now"]);
    assert_eq!(not_admin.status.code(), Some(4), "{}", stderr(&not_admin));
    let get = json(&cluster.cli("agent/a", &["get", "cp/x", "--output", "json"]));
    assert_eq!(get["token"], token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_passes_the_lease_to_the_child_and_releases_on_exit() {
    let cluster = Cluster::start(Opts::default());
    cluster.wait_leader(WAIT).await;
    let out = cluster.cli(
        "agent/a",
        &[
            "run",
            "jobs/report",
            "--ttl",
            "10s",
            "--task-key",
            "t1",
            "--",
            "sh",
            "-c",
            "echo token=$WARRANT_TOKEN lease=$WARRANT_LEASE_ID resource=$WARRANT_RESOURCE; exit 0",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("resource=jobs/report"), "{text}");
    assert!(
        text.contains("token=") && !text.contains("token= "),
        "{text}"
    );
    // Released with outcome done: the task is complete.
    let again = cluster.cli(
        "agent/a",
        &[
            "run",
            "jobs/report",
            "--ttl",
            "10s",
            "--task-key",
            "t1",
            "--",
            "true",
        ],
    );
    assert_eq!(again.status.code(), Some(6), "{}", stderr(&again));
    // The child's exit code is passed through, and a failure leaves the task open with the checkpoint.
    let fail = cluster.cli(
        "agent/a",
        &[
            "run",
            "jobs/etl",
            "--ttl",
            "10s",
            "--task-key",
            "t2",
            "--",
            "sh",
            "-c",
            "warrant checkpoint $WARRANT_LEASE_ID --token $WARRANT_TOKEN 'stage 2' && exit 7",
        ],
    );
    assert_eq!(fail.status.code(), Some(7), "{}", stderr(&fail));
    let next = cluster.cli(
        "agent/a",
        &[
            "run",
            "jobs/etl",
            "--ttl",
            "10s",
            "--task-key",
            "t2",
            "--",
            "sh",
            "-c",
            "echo prev=$WARRANT_PREVIOUS_CHECKPOINT",
        ],
    );
    assert_eq!(next.status.code(), Some(0), "{}", stderr(&next));
    assert!(stdout(&next).contains("prev=stage 2"), "{}", stdout(&next));
    assert_eq!(
        json(&cluster.cli("agent/a", &["get", "jobs/etl", "--output", "json"]))["held"],
        false
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_kills_the_child_and_its_children_when_its_lease_is_revoked() {
    let cluster = Cluster::start(Opts::default());
    cluster.wait_leader(WAIT).await;
    let pid_file = cluster.dir.path().join("grandchild.pid");
    let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
    let mut child = Command::new(BIN)
        .args([
            "run",
            "jobs/long",
            "--ttl",
            "3s",
            "--grace",
            "500ms",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env("WARRANT_ENDPOINTS", cluster.endpoints_csv())
        .env("WARRANT_PRINCIPAL", "agent/a")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(WAIT, "the run to hold the lease", || async {
        let out = cluster.cli("agent/b", &["get", "jobs/long", "--output", "json"]);
        (json(&out)["held"] == true).then_some(())
    })
    .await;
    let revoke = cluster.cli(
        "human/admin",
        &["revoke", "jobs/long", "--reason", "incident 7"],
    );
    assert_eq!(revoke.status.code(), Some(0), "{}", stderr(&revoke));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "warrant run did not stop its child"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(3));
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("revoked by human/admin: incident 7"), "{err}");
    // The grandchild (what `sh -c` started) was stopped too.
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    let state = common::proc_state(std::path::Path::new(&format!("/proc/{pid}/stat")))
        .unwrap_or_else(|| "gone".to_string());
    assert!(
        matches!(state.as_str(), "gone" | "Z" | "X"),
        "grandchild {pid} still running: state {state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_survives_a_leader_kill_while_its_lease_is_valid() {
    let mut cluster = Cluster::start(Opts::default());
    let leader = cluster.wait_leader(WAIT).await;
    let child = Command::new(BIN)
        .args([
            "run",
            "jobs/steady",
            "--ttl",
            "6s",
            "--",
            "sh",
            "-c",
            "sleep 5; echo finished",
        ])
        .env("WARRANT_ENDPOINTS", cluster.endpoints_csv())
        .env("WARRANT_PRINCIPAL", "agent/a")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually(WAIT, "the run to hold the lease", || async {
        (json(&cluster.cli("agent/b", &["get", "jobs/steady", "--output", "json"]))["held"] == true)
            .then_some(())
    })
    .await;
    cluster.kill(leader);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("finished"));
}

#[test]
fn server_refuses_bad_configs_and_foreign_data_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let good = |node: u64, cluster: &str| {
        format!(
            "node_id = {node}\ncluster_name = \"{cluster}\"\ndata_dir = \"data\"\ninsecure = true\ndefault_decision = \"allow\"\nbootstrap = true\n\
             [peers.{node}]\nraft = \"127.0.0.1:{}\"\nclient = \"127.0.0.1:{}\"\n",
            free_port(),
            free_port()
        )
    };
    let serve = |path: &std::path::Path| {
        let mut child = Command::new(BIN)
            .args(["server", "--config"])
            .arg(path)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                return (status.code(), err);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return (None, String::new());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (code, err) = serve(&write(
        "typo.toml",
        &format!("{}\nnode_idd = 3\n", good(1, "x")),
    ));
    assert_eq!(code, Some(2));
    assert!(err.contains("node_idd"), "{err}");
    let (code, err) = serve(&write("missing.toml", "cluster_name = \"x\"\n"));
    assert_eq!(code, Some(2));
    assert!(err.contains("node_id"), "{err}");
    let (code, err) = serve(&write(
        "secure.toml",
        &good(1, "x").replace("insecure = true", "insecure = false"),
    ));
    assert_eq!(code, Some(2));
    assert!(err.contains("insecure"), "{err}");

    // Start once as cluster "one" (then stop it), and again as cluster "two" on the same data.
    let one = write("one.toml", &good(1, "one"));
    let mut child = Command::new(BIN)
        .args(["server", "--config"])
        .arg(&one)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !dir.path().join("data").join("CURRENT").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "server did not create its data dir"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let _ = child.wait();
    let (code, err) = serve(&write("two.toml", &good(1, "two")));
    assert_eq!(code, Some(1));
    assert!(err.contains("belongs to cluster \"one\""), "{err}");
}
