//! `warrant certs init|issue`, `warrant token create|revoke`, `warrant verify-grant`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;

use super::{exit, parse_duration, Common, Conn, Outcome, Output};
use crate::client::{Client, ClientError, FenceGuard, GrantVerifier};
use crate::model::Principal;
use crate::proto;
use crate::security::certs::{self, InitOptions};
use crate::security::{Identity, KeyRing};

#[derive(Subcommand)]
pub(super) enum CertsCommand {
    /// Create a CA, node certificates, client certificates and the cluster signing key in DIR.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// Node certificates for node ids 1..=N.
        #[arg(long, default_value_t = 5)]
        nodes: u64,
        #[arg(long, default_value = "warrant")]
        cluster_name: String,
        /// Extra host names or IPs every node certificate is valid for (always 127.0.0.1, localhost).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Client certificates to make (repeatable; default agent/deployer, agent/other,
        /// human/alice, human/bob, human/admin).
        #[arg(long = "principal")]
        principals: Vec<String>,
        #[arg(long, value_parser = parse_duration, default_value = "365d")]
        valid_for: Duration,
    },
    /// Issue one more certificate from the CA in DIR (ca.pem + ca.key), written next to it.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// A client certificate for agent/NAME or human/NAME.
        #[arg(long, conflicts_with = "node", required_unless_present = "node")]
        principal: Option<String>,
        /// A node certificate for this node id.
        #[arg(long)]
        node: Option<u64>,
        #[arg(long = "host")]
        hosts: Vec<String>,
        #[arg(long, value_parser = parse_duration, default_value = "365d")]
        valid_for: Duration,
    },
}

#[derive(Subcommand)]
pub(super) enum KeysCommand {
    /// Stage a new signing key: its public half joins the ring DIR/cluster-signing.pub and the key
    /// waits in DIR/cluster-signing.next.key. Put the ring on every node and every resource that
    /// verifies grants (restart the nodes one at a time), then `keys activate`.
    Rotate {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Make the staged key DIR/cluster-signing.key (then restart the nodes one at a time). What
    /// the old key signed still verifies until it is retired.
    Activate {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// The keys of the ring in DIR, and which one signs and which is staged.
    List {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Drop KEY_ID from the ring in DIR: tokens and certificates it signed stop verifying where
    /// the new ring is. Wait until no node signs with it and what it signed has run out (the
    /// longest token ttl; grant certificates within lease.certificate_lifetime).
    Retire {
        #[arg(long)]
        dir: PathBuf,
        key_id: String,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// `warrant keys rotate|activate|list|retire`: offline, on the files.
pub(super) fn keys(command: KeysCommand) -> u8 {
    let ring_file = |dir: &Path| dir.join(certs::KEY_RING_FILE).display().to_string();
    let (answer, output) = match command {
        KeysCommand::Rotate { dir, output } => (
            certs::stage_signing_key(&dir).map(|new| {
                Outcome::ok(
                    format!(
                        "staged signing key {new} in {}; the ring {} holds it.\n\
                         Next: put the ring on every node (verifying_keys) and every resource that \
                         verifies grants, restarting the nodes one at a time; then `warrant keys \
                         activate --dir {}` and restart them again.",
                        dir.join(certs::NEXT_KEY_FILE).display(),
                        ring_file(&dir),
                        dir.display()
                    ),
                    json!({"staged": new}),
                )
            }),
            output,
        ),
        KeysCommand::Activate { dir, output } => (
            certs::activate_next_key(&dir).map(|(old, new)| {
                Outcome::ok(
                    format!(
                        "{new} now signs (in {}). Restart the nodes one at a time; retire {old} \
                         once what it signed has run out.",
                        dir.join(certs::SIGNING_KEY_FILE).display()
                    ),
                    json!({"signing": new, "previous": old}),
                )
            }),
            output,
        ),
        KeysCommand::List { dir, output } => (
            certs::key_files(&dir).map(|files| {
                let keys: Vec<_> = files
                    .ring
                    .keys()
                    .iter()
                    .map(|k| {
                        let id = k.key_id();
                        let signs = files.signing.as_deref() == Some(id.as_str());
                        let staged = files.next.as_deref() == Some(id.as_str());
                        (id, k.to_paserk(), signs, staged)
                    })
                    .collect();
                Outcome::ok(
                    keys.iter()
                        .map(|(id, _, signs, staged)| match (signs, staged) {
                            (true, _) => format!("{id}  (signs)"),
                            (_, true) => format!("{id}  (staged)"),
                            _ => id.clone(),
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                    json!(keys
                        .iter()
                        .map(|(id, key, signs, staged)| json!({
                            "key_id": id, "public_key": key, "signs": signs, "staged": staged
                        }))
                        .collect::<Vec<_>>()),
                )
            }),
            output,
        ),
        KeysCommand::Retire {
            dir,
            key_id,
            output,
        } => (
            certs::retire_key(&dir, &key_id).map(|ring| {
                Outcome::ok(
                    format!(
                        "retired {key_id}; the ring {} holds {} key(s). Put it on every node and resource.",
                        ring_file(&dir),
                        ring.keys().len()
                    ),
                    json!({"retired": key_id, "keys": ring.keys().len()}),
                )
            }),
            output,
        ),
    };
    match answer {
        Ok(outcome) => print(&outcome, output),
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                certs::CertError::Invalid(_) => exit::INVALID,
                _ => exit::OTHER,
            }
        }
    }
}

#[derive(Subcommand)]
pub(super) enum TokenCommand {
    /// Admin: mint an access token for PRINCIPAL; it is printed once (keep it secret).
    /// (The caller is whoever its certificate names; `--principal` here is who the token is for.)
    Create {
        #[arg(long = "principal", visible_alias = "for", value_name = "PRINCIPAL")]
        subject: String,
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        ttl: Duration,
        #[command(flatten)]
        common: Common,
    },
    /// Admin: revoke an access token by id; every member refuses it from then on.
    Revoke {
        id: String,
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        conn: Conn,
    },
}

fn print(out: &Outcome, output: Output) -> u8 {
    match output {
        Output::Text => say!("{}", out.text),
        Output::Json => say!("{}", out.json),
    }
    out.code
}

pub(super) fn certs(command: CertsCommand) -> u8 {
    let written = match command {
        CertsCommand::Init {
            out,
            nodes,
            cluster_name,
            hosts,
            principals,
            valid_for,
        } => {
            let mut options = InitOptions::local(&cluster_name, nodes);
            options.hosts = hosts;
            if !principals.is_empty() {
                options.principals = principals;
            }
            options.valid_for = valid_for;
            certs::init(&out, &options)
        }
        CertsCommand::Issue {
            dir,
            principal,
            node,
            hosts,
            valid_for,
        } => {
            let identity = match (principal, node) {
                (Some(p), _) => match Principal::parse(&p) {
                    Ok(p) => Identity::Principal(p),
                    Err(e) => {
                        eprintln!("error: --principal: {e}");
                        return exit::INVALID;
                    }
                },
                (None, Some(id)) => Identity::Node(id),
                (None, None) => unreachable!("clap requires one"),
            };
            certs::issue_into(&dir, &identity, &hosts, valid_for)
        }
    };
    match written {
        Ok(files) => {
            for f in files {
                say!("wrote {}", f.display());
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                certs::CertError::Invalid(_) => exit::INVALID,
                _ => exit::OTHER,
            }
        }
    }
}

/// Mint or revoke a token (needs a connection).
pub(super) async fn token(client: &Client, command: TokenCommand) -> Result<Outcome, ClientError> {
    Ok(match command {
        TokenCommand::Create { subject, ttl, .. } => {
            let r = client
                .mint_token(proto::MintTokenRequest {
                    principal: subject,
                    ttl_ms: ttl.as_millis() as u64,
                    // The client picks one id for all its attempts.
                    id: String::new(),
                })
                .await?;
            let expires = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(r.expires_at_ms),
            );
            Outcome::ok(
                format!(
                    "{}\n# token {} for {} expires {expires}; pass it as WARRANT_ACCESS_TOKEN (with WARRANT_CA)",
                    r.token, r.id, r.principal
                ),
                json!({"token": r.token, "id": r.id, "principal": r.principal, "expires_at_ms": r.expires_at_ms}),
            )
        }
        TokenCommand::Revoke { id, reason, .. } => {
            let r = client
                .revoke_token(proto::RevokeTokenRequest { id, reason })
                .await?;
            Outcome::ok(
                format!("revoked token {} of {}", r.id, r.principal),
                json!({"revoked": r.id, "principal": r.principal}),
            )
        }
    })
}

/// `warrant verify-grant FILE|-`: the offline check a resource makes.
pub(super) fn verify_grant(
    file: &Path,
    resource: &str,
    (keys, cluster): (&Path, &str),
    skew: Duration,
    highest: u64,
    output: Output,
) -> u8 {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
            eprintln!("error: reading standard input: {e}");
            return exit::INVALID;
        }
        s
    } else {
        match std::fs::read_to_string(file) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", file.display());
                return exit::INVALID;
            }
        }
    };
    let ring = match KeyRing::load(keys) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INVALID;
        }
    };
    let mut verifier = GrantVerifier::new(ring, cluster);
    verifier.skew = skew;
    let guard = FenceGuard::with_highest(highest);
    match guard.admit_certificate(&verifier, text.trim(), resource) {
        Ok(c) => print(
            &Outcome::ok(
                format!(
                    "valid: {} token {} lease {} held by {} ({}) until {} ms",
                    c.resource, c.token, c.lease_id, c.principal, c.instance, c.not_after_ms
                ),
                json!({"valid": true, "cluster": c.cluster, "resource": c.resource, "token": c.token,
                       "lease_id": c.lease_id, "principal": c.principal, "instance": c.instance,
                       "not_after_ms": c.not_after_ms}),
            ),
            output,
        ),
        Err(e) => {
            let stale = matches!(e, crate::client::CertificateRefused::Stale(_));
            let out = Outcome {
                text: format!("refused: {e}"),
                json: json!({"valid": false, "stale": stale, "reason": e.to_string()}),
                code: if stale {
                    exit::BUSY_OR_STALE
                } else {
                    exit::DENIED
                },
            };
            print(&out, output)
        }
    }
}
