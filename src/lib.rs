//! Warrant: fenced, time-bound execution leases for AI agents, granted by a Raft cluster.
//!
//! Floors, bottom to top (each imports only from below):
//! - [`model`]: pure types and the lease state machine (no I/O, no async, no clock);
//! - [`storage`]: RocksDB-backed Raft log, vote, state machine and snapshots;
//! - [`security`]: identities in certificates, access tokens, grant certificates, TLS files;
//! - [`raft`]: the openraft type configuration and the node-to-node gRPC transport;
//! - [`server`]: the client-facing gRPC service, leader duties (lease time) and node start-up;
//! - [`client`]: the Rust client library (`Client`, `Lease`, `FenceGuard`);
//! - [`cli`]: the `warrant` command line.

/// Whether this build has the chaos suite's deliberate bugs (`chaos_break` in a node's config): test
/// and development (debug) builds, and builds with the `chaos` feature. A release build has none:
/// every branch that tests for one is compiled out, and a config asking for one is refused.
pub const CHAOS_MODES: bool = cfg!(any(debug_assertions, feature = "chaos"));

pub mod audit;
pub mod cli;
pub mod client;
#[cfg(debug_assertions)]
pub mod failpoint;
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
pub mod policy;
pub mod raft;
pub mod security;
pub mod server;
pub mod storage;

/// Generated gRPC code for the public API (`proto/warrant.proto`) and the Raft transport.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("warrant.v1");

    /// Node-to-node Raft transport (`proto/raft.proto`).
    pub mod raft {
        tonic::include_proto!("warrant.raft.v1");
    }
}
