//! Warrant: fenced, time-bound execution leases for AI agents, granted by a Raft cluster.
//!
//! Floors, bottom to top (each imports only from below):
//! - [`proto`]: the generated wire types (public API and Raft transport) and their metadata keys;
//!   [`policy`]: Cedar policies, compiled and evaluated; [`failpoint`]: test-only fault injection
//!   (debug builds);
//! - [`audit`]: the hash-chained audit trail's records, chain, verification and wire form;
//! - [`model`]: pure types and the lease state machine (no I/O, no async, no clock);
//! - [`typeconfig`]: openraft's type configuration; [`security`]: identities in certificates,
//!   access tokens, grant certificates, keys and key rings, TLS files;
//! - [`storage`]: RocksDB-backed Raft log, vote, state machine, snapshots, backups, files at rest;
//! - [`raft`]: the node-to-node transport; [`client`]: the Rust client library (`Client`, `Lease`,
//!   `FenceGuard`);
//! - [`server`]: the client-facing gRPC service, lease time and node start-up;
//! - [`cli`]: the `warrant` command line; [`fuzzing`]: the fuzz targets' bodies.

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
pub mod typeconfig;

/// Generated gRPC code for the public API (`proto/warrant.proto`) and the Raft transport.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("warrant.v1");

    /// Metadata key naming the leader's client address on a "not the leader" answer.
    pub const LEADER_METADATA: &str = "warrant-leader";
    /// Metadata key of an access token (`Bearer …`).
    pub const AUTHORIZATION: &str = "authorization";

    /// Node-to-node Raft transport (`proto/raft.proto`).
    pub mod raft {
        tonic::include_proto!("warrant.raft.v1");
    }
}
