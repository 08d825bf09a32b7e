//! `warrant cluster …`: status, and membership changes (admin actions).

use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};

use super::{parse_duration, Conn, Outcome};
use crate::client::{Client, ClientError};
use crate::proto;

#[derive(Subcommand)]
pub(super) enum ClusterCommand {
    /// Leader, term, members and last applied index, as one node sees them.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
    /// Add node ID (started with `bootstrap = false` and its own address in `peers`): it joins as
    /// a learner, catches up (by snapshot when far behind), then becomes a voter.
    AddNode {
        id: u64,
        /// ip:port of the node's Raft transport.
        raft_addr: String,
        /// ip:port of the node's client API.
        client_addr: String,
        /// How long the node may take to catch up.
        #[arg(long, value_parser = parse_duration, default_value = "60s")]
        timeout: Duration,
        /// Add it as a non-voting learner and return at once (it replicates but does not vote);
        /// add-node without this flag later promotes it.
        #[arg(long)]
        learner: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove node ID (voter or learner). Refused if the remaining voters would lack a live
    /// quorum. The removed node stops serving and refuses to start again on its data.
    RemoveNode {
        id: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

fn members_json(members: &[proto::Member]) -> Vec<Value> {
    members
        .iter()
        .map(|m| json!({"id": m.id, "address": m.address, "raft_address": m.raft_address, "role": m.role}))
        .collect()
}

fn members_text(members: &[proto::Member]) -> String {
    members
        .iter()
        .map(|m| format!("  {} {} {}", m.id, m.address, m.role))
        .collect::<Vec<_>>()
        .join("\n")
}

fn changed(what: String, r: &proto::MembershipResponse) -> Outcome {
    Outcome::ok(
        format!(
            "{what} in {} ms; membership at log index {}:\n{}",
            r.took_ms,
            r.log_index,
            members_text(&r.members)
        ),
        json!({"members": members_json(&r.members), "log_index": r.log_index, "took_ms": r.took_ms}),
    )
}

pub(super) async fn execute(
    client: &Client,
    command: ClusterCommand,
) -> Result<Outcome, ClientError> {
    Ok(match command {
        ClusterCommand::Status { .. } => {
            let s = client.status().await?;
            let text = format!(
                "node {} of cluster {:?} (id {}) sees leader {} (term {}), last applied {}\n{}",
                s.node_id,
                s.cluster_name,
                if s.cluster_id.is_empty() {
                    "not known yet"
                } else {
                    &s.cluster_id
                },
                if s.leader == 0 {
                    "none".to_string()
                } else {
                    format!("{} at {}", s.leader, s.leader_address)
                },
                s.term,
                s.last_applied,
                members_text(&s.members)
            );
            let json = json!({"node": s.node_id, "cluster": s.cluster_name, "cluster_id": s.cluster_id, "leader": if s.leader == 0 { Value::Null } else { json!(s.leader) },
                "term": s.term, "members": members_json(&s.members), "last_applied": s.last_applied, "live_leases": s.live_leases});
            Outcome::ok(text, json)
        }
        ClusterCommand::AddNode {
            id,
            raft_addr,
            client_addr,
            timeout,
            learner,
            ..
        } => {
            let r = client
                .add_node(proto::AddNodeRequest {
                    node_id: id,
                    raft_address: raft_addr,
                    client_address: client_addr,
                    catch_up_timeout_ms: timeout.as_millis() as u64,
                    principal: String::new(),
                    learner,
                })
                .await?;
            let role = if learner { "a learner" } else { "a voter" };
            changed(format!("node {id} is {role}"), &r)
        }
        ClusterCommand::RemoveNode { id, .. } => {
            let r = client
                .remove_node(proto::RemoveNodeRequest {
                    node_id: id,
                    principal: String::new(),
                })
                .await?;
            changed(format!("node {id} removed"), &r)
        }
    })
}
