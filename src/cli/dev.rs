//! `warrant dev`: a local 3-node cluster in one process (real Raft, RocksDB and sockets on
//! 127.0.0.1), with a short guide. Secure like production: it makes a CA, node and client
//! certificates under DATA_DIR/certs on first start (`--insecure` runs plaintext, and says so).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{exit, wait_for_shutdown_signal};
use crate::server::{self, Config};

fn config_text(id: u64, port: u16, data_dir: &Path, secure: bool) -> String {
    let mut peers = String::new();
    for n in 1..=3u16 {
        peers.push_str(&format!(
            "[peers.{n}]\nraft = \"127.0.0.1:{}\"\nclient = \"127.0.0.1:{}\"\n",
            port + 99 + n,
            port + n - 1
        ));
    }
    let certs = data_dir.join("certs");
    let security = if secure {
        format!(
            "[security]\nca = {:?}\ncert = {:?}\nkey = {:?}\nsigning_key = {:?}\n",
            certs.join("ca.pem").display().to_string(),
            certs.join(format!("node{id}.pem")).display().to_string(),
            certs.join(format!("node{id}.key")).display().to_string(),
            certs.join("cluster-signing.key").display().to_string(),
        )
    } else {
        String::new()
    };
    format!(
        "node_id = {id}\ncluster_name = \"warrant-dev\"\ndata_dir = {:?}\nbootstrap = {}\ninsecure = {}\ndefault_decision = \"allow\"\n\
         admins = [\"human/admin\"]\n{peers}{security}",
        data_dir.join(format!("node{id}")).display().to_string(),
        id == 1,
        !secure
    )
}

/// Make the dev cluster's certificates once (kept with its data, so restarts reuse them).
fn ensure_certs(data_dir: &Path) -> Result<(), String> {
    let certs = data_dir.join("certs");
    if certs.join("ca.key").exists() {
        return Ok(());
    }
    crate::security::certs::init(
        &certs,
        &crate::security::certs::InitOptions::local("warrant-dev", 3),
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

pub async fn run(data_dir: PathBuf, port: u16, insecure: bool) -> u8 {
    if port == 0 || port > u16::MAX - 110 {
        eprintln!("error: --port {port} leaves no room for 3 client and 3 raft ports");
        return exit::INVALID;
    }
    if insecure {
        tracing::warn!(
            "INSECURE MODE (warrant dev --insecure): plaintext, clients are not authenticated and may \
             claim any principal; for development only"
        );
    } else if let Err(e) = ensure_certs(&data_dir) {
        eprintln!(
            "error: making certificates in {}: {e}",
            data_dir.join("certs").display()
        );
        return exit::OTHER;
    }
    let mut nodes = Vec::new();
    // Node 1 bootstraps, and forms the cluster only once its peers answer: start it last.
    for id in (1..=3).rev() {
        let config =
            match Config::parse(&config_text(id, port, &data_dir, !insecure), "warrant dev") {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::OTHER;
                }
            };
        match server::start(config).await {
            Ok(n) => nodes.push(n),
            Err(e) => {
                eprintln!("error: node {id}: {e}");
                for n in nodes {
                    n.stop().await;
                }
                return exit::OTHER;
            }
        }
    }
    let leader = nodes[0]
        .raft
        .wait(Some(Duration::from_secs(15)))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await;
    let endpoints = (0..3)
        .map(|i| format!("127.0.0.1:{}", port + i))
        .collect::<Vec<_>>()
        .join(",");
    match leader {
        Ok(m) => println!(
            "warrant dev: 3 nodes up, leader is node {}",
            m.current_leader.unwrap_or(0)
        ),
        Err(e) => eprintln!("warning: no leader yet ({e}); the cluster may still be electing"),
    }
    let certs = data_dir.join("certs");
    let who = if insecure {
        "WARRANT_PRINCIPAL=agent/deployer".to_string()
    } else {
        format!(
            "WARRANT_CA={c}/ca.pem WARRANT_CERT={c}/agent-deployer.pem WARRANT_KEY={c}/agent-deployer.key\n  \
             # other identities: {c}/{{agent-other,human-alice,human-bob,human-admin}}.{{pem,key}}",
            c = certs.display()
        )
    };
    println!(
        "\nendpoints: {endpoints}   data: {}\n\nTry this in another terminal:\n  \
         export WARRANT_ENDPOINTS={endpoints} {who}\n  \
         warrant acquire demo/web/deploy --ttl 30s --intent \"deploy web v2\"\n  \
         warrant acquire demo/web/deploy --ttl 30s          # busy: exit 3\n  \
         warrant get demo/web/deploy --output json\n  \
         warrant run demo/db/migrate --ttl 10s -- sh -c 'echo token=$WARRANT_TOKEN; sleep 2'\n  \
         warrant cluster status\n\nCtrl-C stops the cluster.",
        data_dir.display()
    );
    wait_for_shutdown_signal().await;
    for n in nodes {
        n.stop().await;
    }
    exit::OK
}
