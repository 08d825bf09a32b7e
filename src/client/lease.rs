//! `Lease`: a granted lease that keeps itself alive and answers "may I still act?" from the holder's
//! own monotonic clock (DESIGN rule 1).
//!
//! Validity runs until `t_send + ttl × (1 − drift)`, where `t_send` is when the holder *sent* the
//! acquire or its last acknowledged keepalive — never when the answer arrived, so a slow answer can
//! only shorten the holder's view. Uncertain means not holding: while keepalives fail, validity is
//! never extended, and the moment it runs out the lease counts as lapsed (Curator CURATOR-460).

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Client, ClientError};
use crate::model::ReleaseOutcome;
use crate::proto;

/// Why a lease can no longer be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostReason {
    /// The cluster says the lease is gone ("expired", "taken over", "revoked by …: …", …).
    Server(String),
    /// No keepalive was acknowledged in time: the lease lapsed by the holder's own clock.
    Lapsed,
    /// This holder released it.
    Released,
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LostReason::Server(r) => write!(f, "lease lost: {r}"),
            LostReason::Lapsed => write!(f, "lease lapsed: no keepalive was acknowledged within its ttl (by this holder's clock)"),
            LostReason::Released => write!(f, "lease released"),
        }
    }
}

#[derive(Debug, Clone)]
enum Validity {
    Until(Instant),
    Lost(LostReason),
}

/// What the cluster granted.
#[derive(Debug, Clone)]
pub struct LeaseInfo {
    pub lease: proto::Lease,
    /// The predecessor on this task (or the taken-over holder), with its last checkpoint.
    pub previous: Option<proto::Previous>,
    /// The grant certificate (secure clusters; empty otherwise): hand it to a resource that
    /// verifies grants offline.
    pub certificate: String,
}

/// A granted lease, kept alive in the background until released or dropped.
#[derive(Debug)]
pub struct Lease {
    client: Client,
    info: LeaseInfo,
    validity: watch::Receiver<Validity>,
    /// The latest grant certificate, renewed by the keeper.
    certificate: watch::Receiver<String>,
    keeper: JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Without keepalives the cluster expires the lease after its ttl.
        self.keeper.abort();
    }
}

impl Lease {
    pub(super) fn start(
        client: Client,
        lease: proto::Lease,
        previous: Option<proto::Previous>,
        certificate: String,
        t_send: Instant,
    ) -> Self {
        let ttl = Duration::from_millis(lease.ttl_ms);
        let drift = client.config().drift;
        let (tx, rx) = watch::channel(Validity::Until(t_send + ttl.mul_f64(1.0 - drift)));
        let (cert_tx, cert_rx) = watch::channel(certificate.clone());
        let keeper = tokio::spawn(keep_alive(
            client.clone(),
            t_send,
            lease.granted_at_ms,
            lease.lease_id.clone(),
            ttl,
            drift,
            tx,
            cert_tx,
        ));
        Self {
            client,
            info: LeaseInfo {
                lease,
                previous,
                certificate,
            },
            validity: rx,
            certificate: cert_rx,
            keeper,
        }
    }

    /// The lease as granted.
    pub fn info(&self) -> &LeaseInfo {
        &self.info
    }

    /// The lease id (16 hex digits).
    pub fn lease_id(&self) -> &str {
        &self.info.lease.lease_id
    }

    /// The fencing token: pass it to the resource with every write.
    pub fn token(&self) -> u64 {
        self.info.lease.token
    }

    /// The resource this lease is for.
    pub fn resource(&self) -> &str {
        &self.info.lease.resource
    }

    /// The current grant certificate (empty on an insecure cluster). A certificate is valid for
    /// the shorter of the ttl and the cluster's `lease.certificate_lifetime`; while the lease is
    /// kept alive, a fresh one replaces it once half of that has passed.
    pub fn certificate(&self) -> String {
        self.certificate.borrow().clone()
    }

    /// The grant certificate as it is renewed, for a holder that hands it on (`changed()` wakes
    /// at each renewal).
    pub fn certificates(&self) -> watch::Receiver<String> {
        self.certificate.clone()
    }

    /// What the predecessor on this task left behind, if anything.
    pub fn previous(&self) -> Option<&proto::Previous> {
        self.info.previous.as_ref()
    }

    /// Time left by this holder's own clock, or None if the lease is lost or lapsed.
    pub fn remaining(&self) -> Option<Duration> {
        match &*self.validity.borrow() {
            Validity::Until(until) => until
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero()),
            Validity::Lost(_) => None,
        }
    }

    /// May the holder still act? Check before every action on the resource (and fence it too).
    pub fn is_valid(&self) -> bool {
        self.remaining().is_some()
    }

    /// Wait until the lease is lost or lapses by the holder's clock, and say why.
    pub async fn lost(&self) -> LostReason {
        let mut rx = self.validity.clone();
        loop {
            let current = rx.borrow_and_update().clone();
            match current {
                Validity::Lost(reason) => return reason,
                Validity::Until(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {
                            if matches!(&*rx.borrow(), Validity::Until(u) if *u <= Instant::now()) {
                                return LostReason::Lapsed;
                            }
                        }
                        changed = rx.changed() => if changed.is_err() { return LostReason::Lapsed },
                    }
                }
            }
        }
    }

    /// Wait until the remaining validity drops to `margin` or below (or the lease is lost); returns
    /// the reason the lease is (about to be) unusable.
    pub async fn expiring_within(&self, margin: Duration) -> LostReason {
        let mut rx = self.validity.clone();
        loop {
            let current = rx.borrow_and_update().clone();
            match current {
                Validity::Lost(reason) => return reason,
                Validity::Until(until) => {
                    let at = until.checked_sub(margin).unwrap_or(until);
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {
                            if matches!(&*rx.borrow(), Validity::Until(u) if *u <= at + margin) {
                                return LostReason::Lapsed;
                            }
                        }
                        changed = rx.changed() => if changed.is_err() { return LostReason::Lapsed },
                    }
                }
            }
        }
    }

    /// Record a checkpoint (≤ 4 KiB) with this lease's token.
    pub async fn checkpoint(&self, data: Vec<u8>) -> Result<(), ClientError> {
        self.client
            .checkpoint(self.lease_id(), self.token(), data)
            .await
    }

    /// Stop keeping alive and release the lease (Done completes its task; Failed leaves it open).
    pub async fn release(
        self,
        outcome: Option<ReleaseOutcome>,
    ) -> Result<proto::ReleaseResponse, ClientError> {
        self.keeper.abort();
        self.client.release(self.lease_id(), outcome).await
    }
}

#[allow(clippy::too_many_arguments)]
async fn keep_alive(
    client: Client,
    granted_send: Instant,
    granted_at_ms: u64,
    lease_id: String,
    ttl: Duration,
    drift: f64,
    tx: watch::Sender<Validity>,
    certificate: watch::Sender<String>,
) {
    let period = (ttl / 3).max(Duration::from_millis(50));
    // When the certificate is half used up, a keepalive asks for a fresh one. Scheduled on this
    // holder's monotonic clock from how long the cluster says it is valid, never by comparing
    // wall clocks; a certificate valid longer than the ttl is renewed within the ttl.
    // (when to renew, when it runs out)
    let schedule = |from: Instant, valid: Duration| {
        let valid = valid.min(ttl).max(Duration::from_millis(100));
        (from + valid / 2, from + valid)
    };
    let mut renew = (!certificate.borrow().is_empty()).then(|| {
        // The grant's certificate: valid from the grant time (the cluster's clock) to not_after.
        let valid = crate::security::grant::peek_not_after_ms(&certificate.borrow())
            .map(|not_after| not_after.saturating_sub(granted_at_ms))
            .map_or(ttl, Duration::from_millis);
        schedule(granted_send, valid)
    });
    // Counted from when the acquire was sent: if it took long to answer, the first keepalive is due
    // at once.
    let mut next = granted_send + period;
    loop {
        // Renewals ride on the regular keepalives; only a certificate that would run out before
        // the next one gets a keepalive of its own.
        let wake = match renew {
            Some((at, runs_out)) if runs_out <= next + period / 2 => at.min(next),
            _ => next,
        };
        tokio::time::sleep_until(wake).await;
        let t_send = Instant::now();
        let until = match &*tx.borrow() {
            Validity::Until(u) => *u,
            Validity::Lost(_) => return,
        };
        // Due within half a period: asked on this keepalive rather than on one of its own.
        let with_certificate = renew.is_some_and(|(at, _)| at < t_send + period / 2);
        // Give up on this attempt when validity runs out; a late answer could not extend a lapsed lease.
        let attempt = tokio::time::timeout_at(
            until.max(t_send),
            client.keepalive_with(&lease_id, with_certificate),
        )
        .await;
        match attempt {
            Ok(Ok(resp)) => match resp.result {
                Some(proto::keep_alive_response::Result::TtlMs(ms)) => {
                    let new_until = t_send + Duration::from_millis(ms).mul_f64(1.0 - drift);
                    let _ = tx.send(Validity::Until(new_until.max(until)));
                    next = t_send + period;
                    if !resp.certificate.is_empty() {
                        let valid = match resp.certificate_valid_ms {
                            0 => ttl, // an older server: its certificates last the ttl
                            ms => Duration::from_millis(ms),
                        };
                        renew = Some(schedule(t_send, valid));
                        let _ = certificate.send(resp.certificate);
                    }
                }
                Some(proto::keep_alive_response::Result::Lost(reason)) => {
                    let _ = tx.send(Validity::Lost(LostReason::Server(reason)));
                    return;
                }
                None => next = Instant::now() + Duration::from_millis(100),
            },
            Ok(Err(e))
                if matches!(
                    e.code(),
                    tonic::Code::PermissionDenied
                        | tonic::Code::InvalidArgument
                        | tonic::Code::NotFound
                ) =>
            {
                let _ = tx.send(Validity::Lost(LostReason::Server(e.to_string())));
                return;
            }
            // Transient (no leader, unreachable): retry soon; validity is not extended meanwhile.
            Ok(Err(_)) => next = Instant::now() + Duration::from_millis(100),
            Err(_) => {
                let _ = tx.send(Validity::Lost(LostReason::Lapsed));
                return;
            }
        }
        // A renewal that did not happen is retried with the next attempt, not in a tight loop.
        if let Some((at, runs_out)) = renew.filter(|(at, _)| *at <= t_send) {
            renew = Some((at.max(next), runs_out));
        }
        if Instant::now() >= until
            && !matches!(&*tx.borrow(), Validity::Until(u) if *u > Instant::now())
        {
            let _ = tx.send(Validity::Lost(LostReason::Lapsed));
            return;
        }
    }
}
