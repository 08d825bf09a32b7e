//! Entry points of the fuzz targets (`fuzz/`, run with `cargo fuzz`): one function per decoder that
//! reads bytes from the network or from disk. Each takes the fuzzer's bytes, runs the code the node
//! runs on them and must return (an error is a fine answer) without a panic, an overflow or an
//! unbounded allocation. Where the bytes become commands, the commands are applied to a state like a
//! running cluster's and [`State::check_consistency`] must hold after each.
//!
//! The first byte of an input often picks which decoder of a family reads the rest. The committed
//! inputs (`fuzz/seeds/<target>/`: seeds and regressions; `fuzz/corpus/<target>/`: what the fuzzer
//! grew) are replayed through these functions by `tests/fuzz_corpus.rs` on every test run, so a
//! crash once found stays fixed. `scripts/fuzz.sh` runs the fuzzer.

use std::sync::OnceLock;
use std::time::Duration;

use crate::model::{
    self, AcquireCmd, Command, Effects, EntryMeta, InstanceId, Intent, PolicyDefaults, Principal,
    Quotas, RecordLimits, RequestId, ResourcePath, State, TaskKey,
};
use crate::proto;
use crate::security::{AccessClaims, GrantVerifier, Identity, KeyRing, SigningKey, VerifyingKey};
use crate::server::requests;

/// A fuzz target's body: the fuzzer's bytes in, nothing out (it must not panic).
pub type Target = fn(&[u8]);

/// The fuzz targets, by name: `fuzz/fuzz_targets/<name>.rs` calls the function of that name.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("request", request),
    ("raft_message", raft_message),
    ("log_entry", log_entry),
    ("snapshot", snapshot),
    ("backup", backup),
    ("audit_export", audit_export),
    ("credential", credential),
    ("policy", policy),
];

/// A node's config file: TOML parsed and validated.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::server::Config::parse(text, "fuzz.toml");
    }
}

/// A client request through the call's checks into a command, applied as the server proposes it.
/// The first byte: its low six bits modulo 7 pick the call (acquire, checkpoint, release, revoke,
/// approve, reject, policy put), bit 0x40 makes the caller one of the config's admins, bit 0x80
/// makes the caller a human when the request names no valid principal. The rest is the call's
/// protobuf message.
pub fn request(data: &[u8]) {
    use prost::Message;
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let bounds = requests::AcquireBounds {
        min_ttl: Duration::from_secs(1),
        max_ttl: Duration::from_secs(3_600),
        max_wait: Duration::from_secs(600),
        approval_timeout: Duration::from_secs(3_600),
    };
    // The principal a credential proved; the request names it (or another, which the server
    // refuses before these checks).
    let caller = |claimed: &str| {
        Principal::parse(claimed).unwrap_or_else(|_| {
            fixed(if kind & 0x80 == 0 {
                "agent/fuzz"
            } else {
                "human/fuzz"
            })
        })
    };
    let cmd = match (kind & 0x3f) % 7 {
        0 => proto::AcquireRequest::decode(bytes).ok().and_then(|r| {
            let who = caller(&r.principal);
            let checked = requests::acquire(r, who, &bounds, PolicyDefaults::default()).ok()?;
            Some(Command::AcquireWithin {
                cmd: checked.cmd,
                quotas: QUOTAS,
            })
        }),
        1 => proto::CheckpointRequest::decode(bytes).ok().and_then(|r| {
            let who = caller(&r.principal);
            requests::checkpoint(r, who).ok()
        }),
        2 => proto::ReleaseRequest::decode(bytes)
            .ok()
            .and_then(|r| requests::release(&r, caller(&r.principal)).ok())
            .map(|(_, cmd)| cmd),
        3 => proto::RevokeRequest::decode(bytes).ok().and_then(|r| {
            let who = caller(&r.principal);
            requests::revoke(r, who, kind & 0x40 != 0).ok()
        }),
        4 => proto::ApproveRequest::decode(bytes).ok().and_then(|r| {
            let who = caller(&r.principal);
            requests::approve(r, who).ok()
        }),
        5 => proto::RejectRequest::decode(bytes).ok().and_then(|r| {
            let who = caller(&r.principal);
            requests::reject(r, who).ok()
        }),
        _ => proto::PutPolicyRequest::decode(bytes).ok().and_then(|r| {
            let who = caller(&r.principal);
            requests::put_policy(r, who, kind & 0x40 != 0).ok()
        }),
    };
    if let Some(cmd) = cmd {
        let mut state = base_state().clone();
        apply(&mut state, 100, 5_000, cmd);
        consistent(&state);
    }
}

/// A message from a peer on the Raft port, as the service decodes it, or a peer's answer, as the
/// transport decodes it (the kind by the first byte, modulo 11). An append's entries are applied
/// in order; a whole snapshot is read as a follower installs it.
pub fn raft_message(data: &[u8]) {
    use crate::raft::service::decode_payload;
    use crate::raft::NodeId;
    use openraft::error::{InstallSnapshotError, RaftError};
    use openraft::raft::{AppendEntriesResponse, InstallSnapshotResponse, VoteResponse};
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    // Answers are read with bincode's defaults, as the transport reads them.
    fn answer<T: serde::de::DeserializeOwned>(bytes: &[u8]) {
        let _ = bincode::deserialize::<T>(bytes);
    }
    match kind % 11 {
        0 => {
            if let Ok(append) = decode_payload::<crate::raft::AppendRequest>(bytes) {
                let mut state = base_state().clone();
                for entry in &append.entries {
                    apply_entry(&mut state, entry);
                    consistent(&state);
                }
            }
        }
        1 => {
            let _ = decode_payload::<openraft::raft::VoteRequest<crate::raft::NodeId>>(bytes);
        }
        2 => {
            if let Ok(chunk) = decode_payload::<crate::raft::SnapshotRequest>(bytes) {
                // Chunks land in a file the follower reads whole once the last one is in.
                if chunk.offset == 0 && chunk.done {
                    let read = with_scratch_file(
                        "chunk",
                        &chunk.data,
                        crate::storage::snapshot_files::read,
                    );
                    if let Ok((_, mut state)) = read {
                        exercise(&mut state);
                    }
                }
            }
        }
        3 => {
            let _ = decode_payload::<crate::raft::Control>(bytes);
        }
        4 => {
            // A forwarded command: only an admin check (as is, or sent with a token) is taken.
            if let Ok(cmd) = decode_payload::<Command>(bytes) {
                let check = match &cmd {
                    Command::AsToken { cmd, .. } | Command::ViaToken { cmd, .. } => cmd.as_ref(),
                    cmd => cmd,
                };
                if matches!(check, Command::AdminCheck { .. }) {
                    let mut state = base_state().clone();
                    apply(&mut state, 100, 5_000, cmd);
                    consistent(&state);
                }
            }
        }
        5 => {
            let _ = decode_payload::<crate::raft::IdentifyAsk>(bytes);
        }
        6 => answer::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(bytes),
        7 => answer::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>(bytes),
        8 => answer::<
            Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
        >(bytes),
        9 => answer::<crate::raft::Forwarded>(bytes),
        _ => answer::<crate::raft::Identity>(bytes),
    }
}

/// Values read back from RocksDB: log entries (applied in order, as after a restart), audit records,
/// the node's identity, its vote and log ids. Each value is a little-endian u16 length and that
/// many bytes; the first byte (modulo 5) says which kind they all are.
pub fn log_entry(data: &[u8]) {
    let Some((&kind, mut rest)) = data.split_first() else {
        return;
    };
    let mut state = base_state().clone();
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (value, tail) = rest[2..].split_at(len);
        rest = tail;
        match kind % 5 {
            0 => {
                if let Ok(entry) = crate::storage::decode::<crate::raft::Entry>(value) {
                    apply_entry(&mut state, &entry);
                    consistent(&state);
                }
            }
            1 => {
                if let Ok(record) = crate::audit::AuditRecord::from_bytes(value) {
                    let _ = record.to_json_line();
                    let _ = record.compute_hash();
                }
            }
            2 => {
                // The data directory's identity (cluster, node, format), read at every start.
                let _ = crate::storage::decode::<crate::storage::Identity>(value);
            }
            3 => {
                let _ = crate::storage::decode::<openraft::Vote<crate::raft::NodeId>>(value);
            }
            _ => {
                let _ = crate::storage::decode::<crate::raft::LogId>(value);
                let _ = crate::storage::decode::<Option<crate::raft::LogId>>(value);
            }
        }
    }
}

/// A snapshot: the state's encoding (first byte even) or a whole snapshot file (odd), then a few
/// commands applied to whatever it decoded to.
pub fn snapshot(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    if kind % 2 == 0 {
        load_snapshot(bytes);
        return;
    }
    let read = with_scratch_file("snapshot", bytes, crate::storage::snapshot_files::read);
    if let Ok((_, mut state)) = read {
        exercise(&mut state);
    }
}

/// A backup file. The fuzzer's bytes get a valid checksum appended unless the first byte is odd,
/// so the reader gets past its checksum to the header, the state and the audit records.
pub fn backup(data: &[u8]) {
    use sha2::Digest;
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let mut file = bytes.to_vec();
    if kind % 2 == 0 {
        let sum: [u8; 32] = sha2::Sha256::digest(bytes).into();
        file.extend_from_slice(&sum);
    }
    with_scratch_file("backup", &file, |path| {
        let Ok(mut reader) = crate::storage::backup::BackupReader::open(path) else {
            return;
        };
        if kind & 0x2 == 0 {
            if let Ok(state) = reader.read_state() {
                load_snapshot(&state);
            }
        }
        let mut records = Vec::new();
        while let Ok(Some(record)) = reader.next_record() {
            records.push(Ok(record));
            if records.len() > 10_000 {
                break;
            }
        }
        let _ = crate::audit::verify(records);
    });
}

/// An audit export (JSON lines, as `warrant audit export` writes and `audit verify-file` reads), or
/// (first byte 0) audit records as a peer or a server sends them (protobuf `AuditQueryResponse`-like
/// stream items), rebuilt and verified as a node filling its audit gap does.
pub fn audit_export(data: &[u8]) {
    use prost::Message;
    if let Some((0, bytes)) = data.split_first() {
        let mut rest = bytes;
        let mut records = Vec::new();
        while let Ok(record) = proto::AuditRecord::decode_length_delimited(&mut rest) {
            records.push(
                crate::audit::wire::from_proto(record).map_err(crate::audit::AuditError::Bytes),
            );
            if records.len() > 10_000 || rest.is_empty() {
                break;
            }
        }
        let _ = crate::audit::verify(records);
        return;
    }
    let text = String::from_utf8_lossy(data);
    let _ = crate::audit::verify(
        text.lines()
            .take(10_000)
            .map(crate::audit::AuditRecord::from_json_line),
    );
}

/// Credentials: access tokens and grant certificates (as text, or as a payload signed with the
/// cluster's key so the claims' decoding is reached), certificates' identities, keys.
pub fn credential(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(bytes);
    let (signing, ring) = keys();
    let grants = GrantVerifier::new(ring.clone(), "fuzz");
    let now = 1_800_000_000_000;
    match kind % 6 {
        0 => {
            let _ = AccessClaims::verify(ring, "fuzz", &text, now);
            let _ = crate::security::token::peek_principal(&text);
        }
        1 => {
            let _ = grants.verify(&text, "k8s/prod/web", now);
            let _ = crate::security::grant::peek_not_after_ms(&text);
        }
        2 => {
            // Claims of any shape under a good signature: what a leaked old key, or a bug in
            // signing, would present.
            for purpose in [
                crate::security::token::PURPOSE,
                crate::security::grant::PURPOSE,
            ] {
                let Ok(token) = pasetors::version4::PublicToken::sign(
                    signing.secret(),
                    bytes,
                    None,
                    Some(purpose),
                ) else {
                    continue;
                };
                let _ = AccessClaims::verify(ring, "fuzz", &token, now);
                let _ = crate::security::token::peek_principal(&token);
                let _ = grants.verify(&token, "k8s/prod/web", now);
                let _ = crate::security::grant::peek_not_after_ms(&token);
            }
        }
        3 => {
            let _ = Identity::from_cert_der(bytes);
            let _ = Identity::cert_not_after_ms(bytes);
        }
        4 => {
            let _ = Identity::from_uri(&text);
        }
        _ => {
            let _ = SigningKey::from_paserk(&text);
            let _ = VerifyingKey::from_paserk(&text);
            let _ = KeyRing::parse(&text);
        }
    }
}

/// Policy text and an entities document (split at the first NUL byte), validated as `policy put`
/// does, then compiled and asked a few questions.
pub fn policy(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (policies, entities) = match text.split_once('\0') {
        Some((p, e)) => (p, Some(e)),
        None => (&*text, None),
    };
    if crate::policy::validate(policies, entities).is_err() {
        return;
    }
    let _ = crate::policy::resource_literals(policies, entities);
    let Ok(bundle) = crate::policy::PolicyBundle::compile(1, policies, entities, 3_600_000) else {
        return;
    };
    let _ = bundle.governs_reads();
    for (principal, action, resource) in [
        ("agent/fuzz", crate::policy::Action::Acquire, "k8s/prod/web"),
        ("human/fuzz", crate::policy::Action::Approve, "db/main"),
        ("agent/fuzz", crate::policy::Action::Admin, ""),
        ("agent/fuzz", crate::policy::Action::Read, "k8s/prod/web"),
        ("human/fuzz", crate::policy::Action::Read, ""),
    ] {
        let _ = bundle.evaluate(&crate::policy::Query::new(principal, action, resource));
    }
}

// ---- shared pieces ----------------------------------------------------------------------------

const QUOTAS: Quotas = Quotas {
    leases: 10_000,
    pending: 100,
    queued: 256,
};

fn fixed<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("a fixed fuzz value parses")
}

/// A state like a running cluster's: record limits, a policy with an approval rule, a live lease
/// with a task and a checkpoint, a waiter queued behind it and a request waiting for a human.
fn base_state() -> &'static State {
    static BASE: OnceLock<State> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut state = State::default();
        state.observe(EntryMeta { index: 1, term: 1 });
        apply(
            &mut state,
            2,
            1_000,
            Command::SetRecordLimits(RecordLimits::default()),
        );
        apply(
            &mut state,
            3,
            1_000,
            Command::PutPolicy {
                by: fixed("human/admin"),
                by_admin: true,
                policies: "@id(\"all\") permit(principal, action, resource in Resource::\"k8s\");\n\
                           @id(\"db\") @approval(\"1\") permit(principal, action, resource in Resource::\"db\");"
                    .into(),
                entities: None,
                intent_window_ms: 3_600_000,
            },
        );
        let acquire = |request: &str, resource: &str, principal: &str, wait_ms: Option<u64>| {
            Command::AcquireWithin {
                cmd: AcquireCmd {
                    request_id: RequestId::parse(request).expect("fixed request id"),
                    resource: ResourcePath::parse(resource).expect("fixed resource"),
                    principal: fixed(principal),
                    instance: InstanceId::parse("i-1").expect("fixed instance"),
                    ttl_ms: 30_000,
                    intent: Intent::new("deploy", Default::default()).expect("fixed intent"),
                    task_key: Some(TaskKey::parse("deploy-web").expect("fixed task key")),
                    wait_ms,
                    takeover: false,
                    defaults: PolicyDefaults::default(),
                },
                quotas: QUOTAS,
            }
        };
        apply(&mut state, 4, 1_000, acquire("r-1", "k8s/prod/web", "agent/a", None));
        let checkpoint = state.leases().next().map(|lease| Command::Checkpoint {
            lease_id: lease.lease_id,
            principal: lease.principal.clone(),
            token: lease.token,
            data: b"3/5 pods".to_vec(),
        });
        if let Some(cmd) = checkpoint {
            apply(&mut state, 5, 1_500, cmd);
        }
        apply(
            &mut state,
            6,
            2_000,
            acquire("r-2", "k8s/prod/web", "agent/b", Some(60_000)),
        );
        apply(&mut state, 7, 2_000, acquire("r-3", "db/main", "agent/c", None));
        consistent(&state);
        state
    })
}

fn apply(state: &mut State, index: u64, now_ms: u64, cmd: Command) -> model::Response {
    let at = EntryMeta { index, term: 1 };
    state.apply(at, &model::Request { now_ms, cmd }, &mut Effects::default())
}

/// A log entry applied as the state machine applies it.
fn apply_entry(state: &mut State, entry: &crate::raft::Entry) {
    let at = EntryMeta {
        index: entry.log_id.index,
        term: entry.log_id.leader_id.term,
    };
    match &entry.payload {
        openraft::EntryPayload::Normal(request) => {
            state.apply(at, request, &mut Effects::default());
        }
        openraft::EntryPayload::Blank | openraft::EntryPayload::Membership(_) => state.observe(at),
    }
}

fn consistent(state: &State) {
    if let Err(e) = state.check_consistency() {
        panic!("state inconsistent after apply: {e}");
    }
}

/// A snapshot's bytes read as a follower installing it reads them, then used.
fn load_snapshot(bytes: &[u8]) {
    if let Ok(mut state) = State::read_snapshot(bytes, bytes.len() as u64) {
        exercise(&mut state);
    }
}

/// What a node does with a state it loaded: the leader's first entries, expiries, a release.
/// A snapshot is not checked for consistency (its decoder checks types, not cross-references);
/// applying to it must still not panic.
fn exercise(state: &mut State) {
    let index = 1 << 40;
    state.observe(EntryMeta {
        index,
        term: u64::MAX,
    });
    let _ = state.to_snapshot();
    let leases: Vec<_> = state
        .leases()
        .take(16)
        .map(|l| (l.lease_id, l.principal.clone()))
        .collect();
    for (i, (lease_id, principal)) in leases.into_iter().enumerate() {
        apply(
            state,
            index.saturating_add(1 + i as u64),
            u64::MAX / 2,
            Command::Release {
                lease_id,
                principal,
                outcome: None,
            },
        );
    }
}

/// The fuzzed cluster's signing key: fixed, so a seed's token verifies in every run (a key made
/// for the fuzz targets alone, never a cluster's).
const FUZZ_SIGNING_KEY: &str =
    "k4.secret.jd9COCKO7eKp75vcgIuNKRH9NakmchRWDze-4wcT0PGfORmsvf9wAXHNMEBJzunbVTwIh_kVhbmV1IlMI8Z9cA";

fn keys() -> &'static (SigningKey, KeyRing) {
    static KEYS: OnceLock<(SigningKey, KeyRing)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let signing = SigningKey::from_paserk(FUZZ_SIGNING_KEY).expect("the fuzz key parses");
        let ring = KeyRing::from(signing.verifying_key());
        (signing, ring)
    })
}

/// `read` run on a file holding `bytes` (for readers that take a path), removed afterwards.
fn with_scratch_file<T>(what: &str, bytes: &[u8], read: impl FnOnce(&std::path::Path) -> T) -> T {
    let path = std::env::temp_dir().join(format!(
        "warrant-fuzz-{what}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    if let Err(e) = std::fs::write(&path, bytes) {
        panic!("cannot write the scratch file {}: {e}", path.display());
    }
    let answer = read(&path);
    let _ = std::fs::remove_file(&path);
    answer
}

/// Seed inputs for each target, made by the node's own encoders so the fuzzer starts from inputs
/// that reach deep (`cargo test --test fuzz_corpus -- --ignored write_seeds` writes them to
/// `fuzz/seeds/<target>/seed-*`).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use prost::Message;
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let with_kind = |kind: u8, bytes: Vec<u8>| [vec![kind], bytes].concat();
    let state = base_state();
    let lease = state.leases().next().expect("the base state holds a lease");
    let pending = state
        .pending_approvals()
        .next()
        .expect("the base state has a pending request");

    // request
    let intent = Some(proto::Intent {
        text: "deploy web v2".into(),
        labels: [("scale".to_string(), "up".to_string())].into(),
    });
    let acquire = proto::AcquireRequest {
        request_id: "r-9".into(),
        resource: "k8s/prod/api".into(),
        principal: "agent/a".into(),
        instance: "i-2".into(),
        ttl_ms: 30_000,
        intent,
        task_key: "deploy-api".into(),
        wait_ms: 0,
        takeover: false,
        approval_wait_ms: 0,
    };
    out.push(("request", with_kind(0, acquire.encode_to_vec())));
    let takeover = proto::AcquireRequest {
        resource: "k8s/prod/web".into(),
        takeover: true,
        ..acquire.clone()
    };
    out.push(("request", with_kind(0, takeover.encode_to_vec())));
    let checkpoint = proto::CheckpointRequest {
        lease_id: lease.lease_id.to_string(),
        principal: lease.principal.to_string(),
        token: lease.token.0,
        data: b"4/5 pods".to_vec(),
    };
    out.push(("request", with_kind(1, checkpoint.encode_to_vec())));
    let release = proto::ReleaseRequest {
        lease_id: lease.lease_id.to_string(),
        principal: lease.principal.to_string(),
        outcome: proto::ReleaseOutcome::Done as i32,
    };
    out.push(("request", with_kind(2, release.encode_to_vec())));
    let revoke = proto::RevokeRequest {
        resource: "k8s/prod/web".into(),
        principal: "human/admin".into(),
        reason: "stuck deploy".into(),
        ..Default::default()
    };
    out.push(("request", with_kind(3 | 0x40, revoke.encode_to_vec())));
    let approve = proto::ApproveRequest {
        request_id: pending.request_id.to_string(),
        principal: "human/ann".into(),
        comment: "ok".into(),
        ..Default::default()
    };
    out.push(("request", with_kind(4, approve.encode_to_vec())));
    let reject = proto::RejectRequest {
        request_id: pending.request_id.to_string(),
        principal: "human/ann".into(),
        reason: "not now".into(),
        ..Default::default()
    };
    out.push(("request", with_kind(5, reject.encode_to_vec())));
    let put = proto::PutPolicyRequest {
        principal: "human/admin".into(),
        policies: EXAMPLE_POLICY.into(),
        ..Default::default()
    };
    out.push(("request", with_kind(6 | 0x40, put.encode_to_vec())));

    // raft_message and log_entry: entries carrying real commands
    let request = |cmd: Command| std::sync::Arc::new(model::Request { now_ms: 9_000, cmd });
    let log_id = |index: u64| openraft::LogId::new(openraft::CommittedLeaderId::new(2, 1), index);
    let entries: Vec<crate::raft::Entry> = vec![
        openraft::Entry {
            log_id: log_id(10),
            payload: openraft::EntryPayload::Blank,
        },
        openraft::Entry {
            log_id: log_id(11),
            payload: openraft::EntryPayload::Normal(request(Command::Release {
                lease_id: lease.lease_id,
                principal: lease.principal.clone(),
                outcome: Some(model::ReleaseOutcome::Failed),
            })),
        },
        openraft::Entry {
            log_id: log_id(12),
            payload: openraft::EntryPayload::Normal(request(Command::Approve {
                request_id: pending.request_id.clone(),
                by: fixed("human/ann"),
                comment: String::new(),
            })),
        },
    ];
    let append = crate::raft::AppendRequest {
        vote: openraft::Vote::new_committed(2, 1),
        prev_log_id: Some(log_id(9)),
        entries: entries.clone(),
        leader_commit: Some(log_id(9)),
    };
    fn bin<T: serde::Serialize>(value: &T) -> Vec<u8> {
        bincode::serialize(value).unwrap_or_default()
    }
    out.push(("raft_message", with_kind(0, bin(&append))));
    let vote = openraft::raft::VoteRequest::new(openraft::Vote::new(3, 2), Some(log_id(12)));
    out.push(("raft_message", with_kind(1, bin(&vote))));
    let chunk = crate::raft::SnapshotRequest {
        vote: openraft::Vote::new_committed(2, 1),
        meta: Default::default(),
        offset: 0,
        data: snapshot_file(state),
        done: true,
    };
    out.push(("raft_message", with_kind(2, bin(&chunk))));
    let notice = crate::raft::Control::TakeOver {
        from: 1,
        to: 2,
        term: 2,
    };
    out.push(("raft_message", with_kind(3, bin(&notice))));
    out.push((
        "raft_message",
        with_kind(4, bin(&Command::SetRecordLimits(RecordLimits::default()))),
    ));
    let ask = crate::raft::IdentifyAsk {
        from: 2,
        joining: false,
        incarnation: String::new(),
        admit: false,
    };
    out.push(("raft_message", with_kind(5, bin(&ask))));
    let framed = |values: Vec<Vec<u8>>| {
        values
            .into_iter()
            .flat_map(|v| [(v.len() as u16).to_le_bytes().to_vec(), v].concat())
            .collect::<Vec<u8>>()
    };
    out.push((
        "log_entry",
        with_kind(0, framed(entries.iter().map(bin).collect())),
    ));
    let mut after = state.clone();
    let mut fx = Effects::default();
    for entry in &entries {
        if let openraft::EntryPayload::Normal(request) = &entry.payload {
            after.apply(
                EntryMeta {
                    index: entry.log_id.index,
                    term: 2,
                },
                request,
                &mut fx,
            );
        }
    }
    let mut chain = crate::audit::AuditChain::default();
    let records: Vec<_> = fx
        .audit
        .iter()
        .enumerate()
        .map(|(i, r)| chain.append(20 + i as u64, 9_000, r.entry.clone()))
        .collect();
    out.push((
        "log_entry",
        with_kind(1, framed(records.iter().map(|r| r.to_bytes()).collect())),
    ));

    // snapshot, backup
    out.push(("snapshot", with_kind(0, after.to_snapshot())));
    out.push(("snapshot", with_kind(1, snapshot_file(&after))));
    let snapshot = after.to_snapshot();
    let header = crate::storage::backup::BackupHeader {
        cluster: "fuzz".into(),
        node: 1,
        taken_at_ms: 9_000,
        log_index: 12,
        data_format: crate::storage::DATA_FORMAT_VERSION,
        state_len: snapshot.len() as u64,
        audit_records: records.len() as u64,
    };
    if let Ok(mut writer) =
        crate::storage::backup::BackupWriter::start(Vec::new(), &header, &snapshot[..])
    {
        for r in &records {
            let _ = writer.record(r);
        }
        if let Ok((_, mut bytes)) = writer.finish() {
            bytes.truncate(bytes.len().saturating_sub(32));
            out.push(("backup", with_kind(0, bytes)));
        }
    }

    // audit_export
    let lines: String = records.iter().map(|r| r.to_json_line() + "\n").collect();
    out.push(("audit_export", lines.into_bytes()));
    let sent: Vec<u8> = records
        .iter()
        .flat_map(|r| crate::audit::wire::to_proto(r).encode_length_delimited_to_vec())
        .collect();
    out.push(("audit_export", with_kind(0, sent)));

    // credential
    let (signing, _) = keys();
    let token = AccessClaims {
        id: "t-1".into(),
        principal: fixed("agent/fuzz"),
        cluster: "fuzz".into(),
        issued_at_ms: 1_700_000_000_000,
        expires_at_ms: 1_900_000_000_000,
    }
    .sign(signing);
    out.push(("credential", with_kind(0, token.into_bytes())));
    let grant = crate::security::GrantClaims {
        cluster: "fuzz".into(),
        resource: "k8s/prod/web".into(),
        token: 7,
        lease_id: "a1".into(),
        principal: "agent/fuzz".into(),
        instance: "i-1".into(),
        not_after_ms: 1_900_000_000_000,
    };
    out.push(("credential", with_kind(1, grant.sign(signing).into_bytes())));
    if let Ok(json) = serde_json::to_vec(&grant) {
        out.push(("credential", with_kind(2, json)));
    }
    out.push((
        "credential",
        with_kind(4, b"spiffe://warrant/agent/fuzz".to_vec()),
    ));
    out.push((
        "credential",
        with_kind(5, FUZZ_SIGNING_KEY.as_bytes().to_vec()),
    ));

    // policy, config
    out.push(("policy", EXAMPLE_POLICY.as_bytes().to_vec()));
    out.push((
        "policy",
        [EXAMPLE_POLICY, "\0", EXAMPLE_ENTITIES]
            .concat()
            .into_bytes(),
    ));
    out.push(("config", EXAMPLE_CONFIG.as_bytes().to_vec()));
    out
}

/// A snapshot file of `state`, as a node writes one (empty if it cannot be written).
fn snapshot_file(state: &State) -> Vec<u8> {
    let path = std::env::temp_dir().join(format!(
        "warrant-fuzz-seed-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let written = std::fs::File::create(&path).and_then(|f| {
        crate::storage::snapshot_files::write(&f, &Default::default(), state)?;
        std::fs::read(&path)
    });
    let _ = std::fs::remove_file(&path);
    written.unwrap_or_default()
}

const EXAMPLE_POLICY: &str = include_str!("../cluster/policies/example.cedar");
const EXAMPLE_ENTITIES: &str = include_str!("../cluster/policies/example.entities.json");
const EXAMPLE_CONFIG: &str = include_str!("../cluster/local-3/node1.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_state_holds_a_lease_a_waiter_and_a_pending_request() {
        let state = base_state();
        assert_eq!(state.leases().count(), 1);
        assert_eq!(state.pending_approvals().count(), 1);
        let web = ResourcePath::parse("k8s/prod/web").expect("resource");
        assert_eq!(state.resource(&web).map(|r| r.waiters), Some(1));
    }

    #[test]
    fn the_request_seeds_pass_the_checks_so_the_fuzzer_starts_deep() {
        use prost::Message;
        for (target, bytes) in seeds() {
            if target != "request" {
                continue;
            }
            let (kind, body) = bytes.split_first().expect("a kind byte");
            let ok = match (kind & 0x3f) % 7 {
                0 => {
                    let r = proto::AcquireRequest::decode(body).expect("decodes");
                    let who = fixed(&r.principal.clone());
                    let bounds = requests::AcquireBounds {
                        min_ttl: Duration::from_secs(1),
                        max_ttl: Duration::from_secs(3_600),
                        max_wait: Duration::from_secs(600),
                        approval_timeout: Duration::from_secs(3_600),
                    };
                    requests::acquire(r, who, &bounds, PolicyDefaults::default()).is_ok()
                }
                1 => {
                    let r = proto::CheckpointRequest::decode(body).expect("decodes");
                    let who = fixed(&r.principal.clone());
                    requests::checkpoint(r, who).is_ok()
                }
                4 => {
                    let r = proto::ApproveRequest::decode(body).expect("decodes");
                    let who = fixed(&r.principal.clone());
                    requests::approve(r, who).is_ok()
                }
                6 => {
                    let r = proto::PutPolicyRequest::decode(body).expect("decodes");
                    let who = fixed(&r.principal.clone());
                    requests::put_policy(r, who, true).is_ok()
                }
                _ => true,
            };
            assert!(ok, "request seed of kind {kind} is refused by its checks");
            request(&bytes);
        }
    }

    #[test]
    fn every_target_has_seeds_and_runs_them() {
        let seeds = seeds();
        for (target, run) in TARGETS {
            let mine: Vec<_> = seeds.iter().filter(|(t, _)| t == target).collect();
            assert!(!mine.is_empty(), "{target} has seeds");
            for (_, bytes) in mine {
                run(bytes);
            }
        }
    }
}
