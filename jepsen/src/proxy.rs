//! Partitions without network namespaces (`--mode proxy`): every node reaches every other node's
//! Raft port through a TCP proxy of its own in this process, one per ordered pair (i → j), and the
//! nodes are told so by `[raft.dial_via]` in their configs. Cutting i from j makes the proxies
//! i → j and j → i go silent: connections open at the cut stop forwarding (nothing is read from or
//! written to them, as with packets dropped) and new ones are accepted and left unanswered; on heal
//! those connections are closed, so the nodes reconnect. Clients reach nodes directly, as in netns
//! mode, where the harness reaches every node.
//!
//! What it cannot do, unlike nft rules in namespaces: drop single packets (loss), cut a
//! connection's bytes already in the kernel's buffers, or cut what nodes send each other through
//! their *client* ports (a node catching up from a snapshot fetches missing audit records from its
//! peers' client addresses, which `dial_via` does not map).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Which ordered pairs are cut, and a signal each time that changes.
struct State {
    cut: Mutex<BTreeSet<(u64, u64)>>,
    changed: watch::Sender<u64>,
}

impl State {
    fn is_cut(&self, from: u64, to: u64) -> bool {
        self.cut
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(from, to))
    }
}

/// The proxies of one run.
pub struct Proxies {
    state: Arc<State>,
    /// (from, to) → the address `from` dials to reach `to`.
    via: BTreeMap<(u64, u64), String>,
}

impl Proxies {
    /// A proxy for every ordered pair of `nodes` (id, Raft address), each on a port from `port`.
    /// Must be called within the runtime; the proxies live as long as it does.
    pub fn start(
        nodes: &[(u64, String)],
        mut port: impl FnMut() -> anyhow::Result<u16>,
    ) -> anyhow::Result<Self> {
        let (changed, _) = watch::channel(0);
        let state = Arc::new(State {
            cut: Mutex::new(BTreeSet::new()),
            changed,
        });
        let mut via = BTreeMap::new();
        for (from, _) in nodes {
            for (to, target) in nodes {
                if from == to {
                    continue;
                }
                let listener = std::net::TcpListener::bind(("127.0.0.1", port()?))?;
                listener.set_nonblocking(true)?;
                via.insert((*from, *to), listener.local_addr()?.to_string());
                let listener = TcpListener::from_std(listener)?;
                tokio::spawn(serve(listener, *from, *to, target.clone(), state.clone()));
            }
        }
        Ok(Self { state, via })
    }

    /// Node `from`'s `[raft.dial_via]` table: every other node's Raft address → its proxy.
    pub fn dial_via(&self, from: u64, nodes: &[(u64, String)]) -> String {
        let mut out = String::from("[raft.dial_via]\n");
        for (to, raft) in nodes {
            if let Some(via) = self.via.get(&(from, *to)) {
                out.push_str(&format!("\"{raft}\" = \"{via}\"\n"));
            }
        }
        out
    }

    /// The address `from` dials to reach `to`.
    pub fn via(&self, from: u64, to: u64) -> Option<&str> {
        self.via.get(&(from, to)).map(String::as_str)
    }

    /// Cut exactly these ordered pairs (the caller makes them symmetric); an empty set heals.
    pub fn set_cut(&self, pairs: BTreeSet<(u64, u64)>) {
        *self.state.cut.lock().unwrap_or_else(|p| p.into_inner()) = pairs;
        self.state.changed.send_modify(|g| *g += 1);
    }
}

/// Accept connections for `from` → `to` until the runtime ends.
async fn serve(listener: TcpListener, from: u64, to: u64, target: String, state: Arc<State>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of file descriptors, say: do not spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(connection(inbound, from, to, target.clone(), state.clone()));
    }
}

/// Wait until `from` → `to` is no longer cut.
async fn until_healed(from: u64, to: u64, state: &State, rx: &mut watch::Receiver<u64>) {
    while state.is_cut(from, to) {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Wait until `from` → `to` is cut.
async fn until_cut(from: u64, to: u64, state: &State, rx: &mut watch::Receiver<u64>) {
    while !state.is_cut(from, to) {
        if rx.changed().await.is_err() {
            // The proxies are gone: never.
            std::future::pending::<()>().await;
        }
    }
}

async fn connection(mut inbound: TcpStream, from: u64, to: u64, target: String, state: Arc<State>) {
    let mut rx = state.changed.subscribe();
    if state.is_cut(from, to) {
        // Accepted into silence; closed when the cut heals.
        until_healed(from, to, &state, &mut rx).await;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(&target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let cut = tokio::select! {
        // The cut first: once it is in place, not one more buffer is forwarded.
        biased;
        () = until_cut(from, to, &state, &mut rx) => true,
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
    };
    if cut {
        // Silent while cut (both sockets held open, nothing forwarded), closed on heal.
        until_healed(from, to, &state, &mut rx).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Send `msg` and read the echo, or None if nothing comes back within 300 ms.
    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        match tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf),
            _ => None,
        }
    }

    fn free() -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    }

    #[tokio::test]
    async fn a_cut_silences_open_and_new_connections_and_a_heal_closes_them() {
        let nodes = vec![(1, "127.0.0.1:9".to_string()), (2, echo_server().await)];
        let p = Proxies::start(&nodes, free).unwrap();
        assert!(p.dial_via(1, &nodes).contains(&nodes[1].1));
        let via = p.via(1, 2).unwrap().to_string();
        let mut open = TcpStream::connect(&via).await.unwrap();
        assert_eq!(
            round_trip(&mut open, b"one").await.as_deref(),
            Some(&b"one"[..])
        );

        p.set_cut([(1, 2), (2, 1)].into());
        assert_eq!(
            round_trip(&mut open, b"two").await,
            None,
            "open connection silenced"
        );
        let mut new = TcpStream::connect(&via).await.unwrap();
        assert_eq!(
            round_trip(&mut new, b"three").await,
            None,
            "new connection unanswered"
        );

        p.set_cut(BTreeSet::new());
        let mut buf = [0u8; 8];
        let closed = tokio::time::timeout(Duration::from_secs(2), open.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "closed on heal: {closed:?}"
        );
        let mut again = TcpStream::connect(&via).await.unwrap();
        assert_eq!(
            round_trip(&mut again, b"four").await.as_deref(),
            Some(&b"four"[..])
        );
    }
}
