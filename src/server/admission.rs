//! Before anyone is authenticated: what a connection costs a node is bounded. Every accepted TCP
//! connection counts against a cap per port (`limits.max_connections`) and per source address
//! (`limits.max_connections_per_address`), and the new connections one address may open are rate
//! limited (`limits.new_connections_per_second`, so a flood of TLS handshakes, each a signature
//! check, is cheap to refuse). A connection over any of them is closed at once, counted in
//! `warrant_limit_refused_total{limit}` and logged (at most once per limit every 10 s). The TLS
//! handshake itself must finish within `limits.handshake_timeout` (see `TlsMaterial::server`), and
//! on the client port (where TLS completes without a client certificate) a connection must carry
//! an authenticated request within `limits.unauthenticated_connection_timeout` or be closed, so
//! idle connections cannot hold the port's places.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::config::LimitsConfig;

/// How often a refused connection is logged, at most, per kind of refusal.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The connection limits of one listening port.
pub struct Admission {
    /// Which port ("client" or "raft"), for logs and metrics.
    port: &'static str,
    max: usize,
    max_per_address: usize,
    open: Mutex<Open>,
    rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    warned: Mutex<HashMap<&'static str, Instant>>,
    /// Close a connection that carried no authenticated request within this long.
    prove_within: Option<Duration>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
    /// Connections that must still carry an authenticated request, by peer address.
    unproven: HashMap<std::net::SocketAddr, Arc<AtomicBool>>,
}

impl Admission {
    /// The client port's limits: connections must prove themselves (see the module doc).
    pub fn client(limits: &LimitsConfig) -> Arc<Self> {
        let mut admission = Self::build("client", limits);
        admission.prove_within = Some(limits.unauthenticated_connection_timeout);
        Arc::new(admission)
    }

    pub fn new(port: &'static str, limits: &LimitsConfig) -> Arc<Self> {
        Arc::new(Self::build(port, limits))
    }

    fn build(port: &'static str, limits: &LimitsConfig) -> Self {
        let rate = NonZeroU32::new(limits.new_connections_per_second).map(|per_s| {
            let burst = NonZeroU32::new(limits.new_connections_per_second.saturating_mul(2))
                .unwrap_or(per_s);
            RateLimiter::keyed(Quota::per_second(per_s).allow_burst(burst))
        });
        Self {
            port,
            max: limits.max_connections as usize,
            max_per_address: limits.max_connections_per_address as usize,
            open: Default::default(),
            rate,
            warned: Default::default(),
            prove_within: None,
        }
    }

    /// The connection from `peer` carried an authenticated request: it may stay.
    pub fn proven(&self, peer: std::net::SocketAddr) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flag) = open.unproven.remove(&peer) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// Watch a newly admitted connection from `peer` until it proves itself.
    fn unproven(&self, peer: std::net::SocketAddr) -> Option<(Arc<AtomicBool>, Duration)> {
        let within = self.prove_within?;
        let flag = Arc::new(AtomicBool::new(false));
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.unproven.insert(peer, flag.clone());
        Some((flag, within))
    }

    /// Take a place for a connection from `ip`, or say which limit refuses it.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let ip = source(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if self.max > 0 && open.total >= self.max {
            return Err("max_connections");
        }
        let here = open.by_address.get(&ip).copied().unwrap_or(0);
        if self.max_per_address > 0 && here >= self.max_per_address {
            return Err("max_connections_per_address");
        }
        if let Some(rate) = &self.rate {
            if rate.check_key(&ip).is_err() {
                return Err("new_connections_per_second");
            }
        }
        open.total += 1;
        open.by_address.insert(ip, here + 1);
        Ok(Slot {
            admission: self.clone(),
            ip,
            watched: None,
        })
    }

    fn release(&self, ip: IpAddr, watched: Option<&(std::net::SocketAddr, Arc<AtomicBool>)>) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        // Only this connection's entry: a new connection may reuse the peer address.
        if let Some((peer, flag)) = watched {
            if open
                .unproven
                .get(peer)
                .is_some_and(|f| Arc::ptr_eq(f, flag))
            {
                open.unproven.remove(peer);
            }
        }
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_address.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&ip);
            }
        }
    }

    fn refused(&self, limit: &'static str, ip: IpAddr) {
        metrics::counter!("warrant_limit_refused_total", "limit" => limit).increment(1);
        let now = Instant::now();
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned.get(limit).is_some_and(|at| now - *at < WARN_EVERY) {
            return;
        }
        warned.insert(limit, now);
        tracing::warn!(port = self.port, %ip, limit, "connection refused: over limits.{limit}");
    }

    /// Forget the rate limiter's state of addresses gone quiet (bounded memory).
    pub fn forget_idle(&self) {
        if let Some(rate) = &self.rate {
            rate.retain_recent();
        }
    }
}

/// Whom limits per address count: an IPv4 address, or an IPv6 /64 (one host commonly holds a
/// whole /64, and would otherwise open its connections from as many addresses as it likes).
pub fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
        v4 => v4,
    }
}

/// A connection's place in the counts, given back when the connection is dropped.
struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
    /// Its peer address and flag, while it is watched until it proves itself.
    watched: Option<(std::net::SocketAddr, Arc<AtomicBool>)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.release(self.ip, self.watched.as_ref());
    }
}

/// An admitted connection.
pub struct Admitted {
    stream: TcpStream,
    slot: Slot,
    /// Set once the connection carried an authenticated request; until then `deadline` closes it.
    proven: Option<Arc<AtomicBool>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Accepted connections within `admission`'s limits, with Nagle's algorithm off (small messages
/// must not wait for delayed ACKs: a 40 ms stall per exchange otherwise). Connections over a limit
/// are closed as they are accepted.
pub fn incoming(
    listener: TcpListener,
    admission: Arc<Admission>,
) -> impl Stream<Item = Result<Admitted, std::io::Error>> {
    futures::stream::unfold((listener, admission), |(listener, admission)| async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            match admission.admit(peer.ip()) {
                Ok(mut slot) => {
                    let _ = stream.set_nodelay(true);
                    let (proven, deadline) = match admission.unproven(peer) {
                        Some((flag, within)) => {
                            slot.watched = Some((peer, flag.clone()));
                            (Some(flag), Some(Box::pin(tokio::time::sleep(within))))
                        }
                        None => (None, None),
                    };
                    let admitted = Admitted {
                        stream,
                        slot,
                        proven,
                        deadline,
                    };
                    return Some((Ok(admitted), (listener, admission)));
                }
                Err(limit) => {
                    admission.refused(limit, peer.ip());
                    drop(stream);
                }
            }
        }
    })
}

impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // The server always has a read pending on a connection, so this is polled when the
        // deadline fires.
        let this = &mut *self;
        if let (Some(proven), Some(deadline)) = (&this.proven, &mut this.deadline) {
            if proven.load(Ordering::Relaxed) {
                this.proven = None;
                this.deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                this.slot
                    .admission
                    .refused("unauthenticated_connection_timeout", this.slot.ip);
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no authenticated request within limits.unauthenticated_connection_timeout",
                )));
            }
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: u32, per_address: u32, per_second: u32) -> LimitsConfig {
        LimitsConfig {
            max_connections: max,
            max_connections_per_address: per_address,
            new_connections_per_second: per_second,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn connections_are_capped_per_address_and_per_port_and_given_back() {
        let a = Admission::new("client", &limits(3, 2, 0));
        let (one, two): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = a.admit(one).unwrap();
        let _second = a.admit(one).unwrap();
        assert_eq!(a.admit(one).err(), Some("max_connections_per_address"));
        let _third = a.admit(two).unwrap();
        assert_eq!(a.admit(two).err(), Some("max_connections"));
        drop(first);
        assert!(
            a.admit(two).is_ok(),
            "a closed connection gives its place back"
        );
    }

    #[test]
    fn an_ipv6_host_counts_as_its_slash_64() {
        let a = Admission::new("client", &limits(0, 2, 0));
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let _first = a.admit(one).unwrap();
        let _second = a.admit(same_64).unwrap();
        assert_eq!(a.admit(one).err(), Some("max_connections_per_address"));
        assert!(a.admit("2001:db8:1:3::1".parse().unwrap()).is_ok());
        assert_eq!(
            source("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn new_connections_from_one_address_are_rate_limited() {
        let a = Admission::new("client", &limits(0, 0, 5));
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let admitted = (0..20).filter(|_| a.admit(one).is_ok()).count();
        assert_eq!(admitted, 10, "the burst is twice the rate");
        assert_eq!(a.admit(one).err(), Some("new_connections_per_second"));
        assert!(
            a.admit("10.0.0.2".parse().unwrap()).is_ok(),
            "another address"
        );
    }
}
