//! `warrant dev`: a local 3-node cluster in one process (real Raft, RocksDB and sockets on
//! 127.0.0.1), with a short guide. For development only: it runs in insecure mode.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{exit, wait_for_shutdown_signal};
use crate::server::{self, Config};

fn config_text(id: u64, port: u16, data_dir: &Path) -> String {
    let mut peers = String::new();
    for n in 1..=3u16 {
        peers.push_str(&format!(
            "[peers.{n}]\nraft = \"127.0.0.1:{}\"\nclient = \"127.0.0.1:{}\"\n",
            port + 99 + n,
            port + n - 1
        ));
    }
    format!(
        "node_id = {id}\ncluster_name = \"warrant-dev\"\ndata_dir = {:?}\nbootstrap = {}\ninsecure = true\ndefault_decision = \"allow\"\n\
         admins = [\"human/admin\"]\n{peers}",
        data_dir.join(format!("node{id}")).display().to_string(),
        id == 1
    )
}

pub async fn run(data_dir: PathBuf, port: u16) -> u8 {
    if port == 0 || port > u16::MAX - 110 {
        eprintln!("error: --port {port} leaves no room for 3 client and 3 raft ports");
        return exit::INVALID;
    }
    tracing::warn!(
        "INSECURE MODE (warrant dev): clients are not authenticated; for development only"
    );
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let config = match Config::parse(&config_text(id, port, &data_dir), "warrant dev") {
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
                    n.shutdown().await;
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
    println!(
        "\nendpoints: {endpoints}   data: {}\n\nTry this in another terminal:\n  \
         export WARRANT_ENDPOINTS={endpoints} WARRANT_PRINCIPAL=agent/deployer\n  \
         warrant acquire demo/web/deploy --ttl 30s --intent \"deploy web v2\"\n  \
         warrant acquire demo/web/deploy --ttl 30s          # busy: exit 3\n  \
         warrant get demo/web/deploy --output json\n  \
         warrant run demo/db/migrate --ttl 10s -- sh -c 'echo token=$WARRANT_TOKEN; sleep 2'\n  \
         warrant cluster status\n\nCtrl-C stops the cluster.",
        data_dir.display()
    );
    wait_for_shutdown_signal().await;
    for n in nodes {
        n.shutdown().await;
    }
    exit::OK
}
