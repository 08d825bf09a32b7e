//! `warrant run RESOURCE -- CMD`: acquire, run CMD while the lease is alive, release on exit.
//!
//! CMD is terminated (SIGTERM, then SIGKILL after the grace) as soon as the lease is lost, or early
//! enough that it is dead before the lease could lapse by this holder's own clock (DESIGN rule 1;
//! consul#9788). A leader election alone does not kill CMD: keepalives are retried, and the holder's
//! validity only runs out if no keepalive is acknowledged for a whole ttl (consul#1162).

use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::{exit, fail, wait_for_shutdown_signal};
use crate::client::{AcquireOptions, Acquired, Client, Lease};
use crate::model::ReleaseOutcome;

pub async fn run(client: Client, opts: AcquireOptions, grace: Duration, cmd: Vec<String>) -> u8 {
    let usable = opts.ttl.mul_f64(1.0 - client.config().drift);
    if grace.saturating_mul(2) >= usable {
        eprintln!(
            "error: --grace {} must be less than half the ttl ({}), or CMD would be stopped as soon as it starts",
            humantime::format_duration(grace),
            humantime::format_duration(opts.ttl)
        );
        return exit::INVALID;
    }
    let lease = match client.acquire(opts).await {
        Ok(Acquired::Granted(lease)) => lease,
        Ok(Acquired::Busy {
            holder,
            holder_instance,
            expires_in,
        }) => {
            eprintln!(
                "busy: held by {holder} (instance {holder_instance}), expires in {}ms",
                expires_in.as_millis()
            );
            return exit::BUSY_OR_STALE;
        }
        Ok(Acquired::AlreadyDone(record)) => {
            eprintln!(
                "already done: task completed by {} (token {}); not running CMD",
                record.principal, record.token
            );
            return exit::ALREADY_DONE;
        }
        Ok(Acquired::WaitEnded) => {
            eprintln!(
                "wait ended: the resource stayed busy until the wait deadline; not running CMD"
            );
            return exit::PENDING_OR_WAIT_ENDED;
        }
        // Denied, pending approval, not approved, queued: shown as `warrant acquire` shows them.
        Ok(other) => {
            let out = super::answer::acquired(&other, client.config().instance.as_ref());
            eprintln!("{}\nnot running CMD", super::escape_untrusted(&out.text));
            return out.code;
        }
        Err(e) => return fail(&e),
    };
    let mut command = tokio::process::Command::new(&cmd[0]);
    command
        .args(&cmd[1..])
        // Its own process group, so stopping it reaches everything it started (`sh -c 'deploy.sh'`).
        .process_group(0)
        .env("WARRANT_TOKEN", lease.token().to_string())
        .env("WARRANT_LEASE_ID", lease.lease_id())
        .env("WARRANT_RESOURCE", lease.resource())
        .env("WARRANT_ENDPOINTS", client.config().endpoints.join(","))
        .env("WARRANT_PRINCIPAL", client.config().principal.to_string())
        .env("WARRANT_INSTANCE", client.config().instance.to_string());
    // The certificate at start, and a file that always holds the current one: a certificate
    // lasts at most the cluster's `lease.certificate_lifetime`, and a long CMD needs the renewals.
    // Kept (and kept current) until CMD is done.
    let _certificate_file = if lease.certificate().is_empty() {
        None
    } else {
        command.env("WARRANT_GRANT_CERTIFICATE", lease.certificate());
        match CertificateFile::start(&lease) {
            Ok(file) => {
                command.env("WARRANT_GRANT_CERTIFICATE_FILE", file.path());
                Some(file)
            }
            Err(e) => {
                eprintln!("warrant run: no WARRANT_GRANT_CERTIFICATE_FILE: {e}");
                None
            }
        }
    };
    if let Some(checkpoint) = lease.previous().and_then(|p| p.checkpoint.as_ref()) {
        command.env(
            "WARRANT_PREVIOUS_CHECKPOINT",
            String::from_utf8_lossy(checkpoint).into_owned(),
        );
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot start {:?}: {e}", cmd[0]);
            release(lease, Some(ReleaseOutcome::Failed)).await;
            return exit::OTHER;
        }
    };
    tokio::select! {
        status = child.wait() => {
            let code = match status {
                Ok(s) => s.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)),
                Err(e) => { eprintln!("error: waiting for CMD failed: {e}"); 1 }
            };
            release(lease, Some(if code == 0 { ReleaseOutcome::Done } else { ReleaseOutcome::Failed })).await;
            code.clamp(0, 255) as u8
        }
        reason = lease.expiring_within(grace) => {
            eprintln!("warrant run: {reason}; stopping {:?} (SIGTERM, SIGKILL after {})", cmd[0], humantime::format_duration(grace));
            stop(&mut child, grace).await;
            if lease.is_valid() {
                release(lease, Some(ReleaseOutcome::Failed)).await;
            }
            exit::BUSY_OR_STALE
        }
        _ = wait_for_shutdown_signal() => {
            eprintln!("warrant run: interrupted; stopping {:?}", cmd[0]);
            stop(&mut child, grace).await;
            release(lease, Some(ReleaseOutcome::Failed)).await;
            exit::OTHER
        }
    }
}

/// A private file holding the lease's current grant certificate, rewritten (atomically) at every
/// renewal until dropped.
struct CertificateFile {
    dir: tempfile::TempDir,
    writer: tokio::task::JoinHandle<()>,
}

impl CertificateFile {
    const NAME: &'static str = "grant-certificate";

    fn start(lease: &Lease) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("warrant-run-").tempdir()?;
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        let path = dir.path().join(Self::NAME);
        let mut renewals = lease.certificates();
        write_private(&path, &renewals.borrow_and_update())?;
        let writer = tokio::spawn(async move {
            while renewals.changed().await.is_ok() {
                let text = renewals.borrow_and_update().clone();
                if let Err(e) = write_private(&path, &text) {
                    eprintln!("warrant run: cannot renew {}: {e}", path.display());
                }
            }
        });
        Ok(Self { dir, writer })
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join(Self::NAME)
    }
}

impl Drop for CertificateFile {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

/// Write `text` beside `path` (owner-only) and rename it into place, so a reader never sees half.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("new");
    // No fsync: the file is for a running child, not for after a crash.
    let mut file = crate::storage::files::private_file(&tmp)?;
    file.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, path)
}

/// SIGTERM to CMD's process group, then SIGKILL to the group if CMD is still running after `grace`.
async fn stop(child: &mut tokio::process::Child, grace: Duration) {
    let group = child.id().map(|pid| Pid::from_raw(pid as i32));
    if let Some(pgid) = group {
        let _ = killpg(pgid, Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        if let Some(pgid) = group {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
        let _ = child.kill().await;
    } else if let Some(pgid) = group {
        // CMD is gone; anything it left running in its group must not outlive the lease either.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
}

async fn release(lease: Lease, outcome: Option<ReleaseOutcome>) {
    if let Err(e) = lease.release(outcome).await {
        eprintln!("warrant run: could not release the lease ({e}); it will expire after its ttl");
    }
}
