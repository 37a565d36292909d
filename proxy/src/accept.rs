//! Listeners: bind, accept, and learn where each connection was going.
//!
//! Two kinds of listener: the inbound listener (`--inbound-addr`), which
//! receives iptables-redirected connections and reads their original
//! destination with `SO_ORIGINAL_DST` (IPv4) or `IP6T_SO_ORIGINAL_DST`
//! (IPv6); and `--map LISTEN_ADDR=PORT` listeners, whose connections are
//! treated as addressed to PORT. A connection whose original destination is
//! the inbound port itself is the direct path ([`Target::Direct`]), which
//! must never be forwarded to the inbound port (that would loop).
//!
//! Limits live here: `--max-connections` (a semaphore; a connection beyond
//! it is closed at once and counted), and accept errors such as EMFILE back
//! off exponentially (10 ms up to 1 s) instead of spinning.
//!
//! This module never reads from a connection. `lib.rs` binds and runs the
//! loops; each accepted connection is handed to `inbound.rs`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// How a listener's connections find their target port.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// iptables-redirected: the original destination names the port.
    Inbound,
    /// `--map`: always this port.
    Mapped { port: u16 },
}

/// A bound listener.
#[derive(Debug)]
pub struct Listener {
    pub kind: ListenerKind,
    pub local: SocketAddr,
    tcp: TcpListener,
}

/// Where an accepted connection goes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An app port: `addr` is the original destination (for `--map`, the
    /// listener's IP with the mapped port).
    App { addr: SocketAddr },
    /// Addressed to the inbound port itself: Linkerd's opaque transport
    /// (mesh identity); never forwarded to the inbound port.
    Direct,
}

/// One accepted connection, holding its slot of `--max-connections`.
#[derive(Debug)]
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub target: Target,
    pub _slot: OwnedSemaphorePermit,
}

/// Binding failed: the address is configuration, so say which flag.
#[derive(Debug, thiserror::Error)]
#[error("binding {what} {addr}: {source}")]
pub struct BindError {
    what: &'static str,
    addr: SocketAddr,
    source: io::Error,
}

impl Listener {
    pub async fn bind(addr: SocketAddr, kind: ListenerKind) -> Result<Self, BindError> {
        let what = match kind {
            ListenerKind::Inbound => "--inbound-addr",
            ListenerKind::Mapped { .. } => "--map",
        };
        let tcp =
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError { what, addr, source })?;
        let local = tcp
            .local_addr()
            .map_err(|source| BindError { what, addr, source })?;
        Ok(Listener { kind, local, tcp })
    }

    /// Accepts until `stop` fires, handing each connection to `serve`.
    pub async fn run(
        self,
        slots: Arc<Semaphore>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
        mut serve: impl FnMut(Accepted),
    ) {
        let mut backoff = Backoff::default();
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                a = self.tcp.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => {
                    backoff.reset();
                    a
                }
                Err(e) => {
                    metrics
                        .accept_errors
                        .get_or_create(&vec![("error", error_kind(&e))])
                        .inc();
                    if is_per_connection(&e) {
                        debug!(listener = %self.local, error = %e, "accept failed for one connection");
                        continue;
                    }
                    let wait = backoff.next();
                    warn!(listener = %self.local, error = %e, backoff = ?wait, "accept failed; backing off");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Over --max-connections: close now rather than queue.
                metrics.refused("max_connections");
                debug!(listener = %self.local, %peer, "connection refused: --max-connections reached");
                drop(stream);
                continue;
            };
            let target = match self.kind {
                ListenerKind::Mapped { port } => Target::App {
                    addr: SocketAddr::new(self.local.ip(), port),
                },
                ListenerKind::Inbound => {
                    let local = stream.local_addr().unwrap_or(self.local);
                    let dst = original_dst(&stream).unwrap_or(local);
                    if dst.port() == self.local.port() {
                        Target::Direct
                    } else {
                        Target::App { addr: dst }
                    }
                }
            };
            serve(Accepted {
                stream,
                peer,
                target,
                _slot: slot,
            });
        }
    }
}

/// The connection's destination before iptables redirected it; `None`
/// when it was not redirected (no conntrack entry).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = SockRef::from(stream);
    // An IPv6 socket may carry IPv4 clients (mapped); try both families.
    let found = if stream.local_addr().is_ok_and(|a| a.is_ipv6()) {
        sock.original_dst_ipv6().or_else(|_| sock.original_dst())
    } else {
        sock.original_dst()
    };
    found.ok().and_then(|a| a.as_socket())
}

/// Errors that concern only the connection being accepted (it was reset
/// before we got it); the listener is fine.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

fn error_kind(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(24) => "EMFILE".into(),
        Some(23) => "ENFILE".into(),
        Some(105) => "ENOBUFS".into(),
        Some(12) => "ENOMEM".into(),
        Some(n) => format!("errno {n}"),
        None => format!("{:?}", e.kind()),
    }
}

/// Exponential backoff for resource errors on accept (EMFILE and friends):
/// retrying at once would spin a core while no descriptor is free.
#[derive(Debug)]
struct Backoff(Duration);

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(BACKOFF_MIN)
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        now
    }
    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_second() {
        let mut b = Backoff::default();
        let waits: Vec<_> = (0..9).map(|_| b.next()).collect();
        assert_eq!(waits[0], Duration::from_millis(10));
        assert_eq!(waits[1], Duration::from_millis(20));
        assert_eq!(waits[8], Duration::from_secs(1));
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(10));
    }

    #[tokio::test]
    async fn mapped_listeners_name_their_port_and_excess_connections_are_refused() {
        let l = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            ListenerKind::Mapped { port: 8080 },
        )
        .await
        .unwrap();
        let addr = l.local;
        let slots = Arc::new(Semaphore::new(1));
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(l.run(slots, metrics.clone(), stop.clone(), move |a| {
            let _ = tx.send(a);
        }));
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let first = rx.recv().await.unwrap();
        assert_eq!(
            first.target,
            Target::App {
                addr: "127.0.0.1:8080".parse().unwrap()
            }
        );
        // The only slot is taken: the next connection is closed at accept.
        let mut c2 = TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 1];
        let n = tokio::io::AsyncReadExt::read(&mut c2, &mut b)
            .await
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(metrics
            .encode()
            .contains("inbound_tcp_refused_total{reason=\"max_connections\"} 1"));
        stop.cancel();
    }

    #[tokio::test]
    async fn unredirected_connections_to_the_inbound_port_are_direct() {
        let l = Listener::bind("127.0.0.1:0".parse().unwrap(), ListenerKind::Inbound)
            .await
            .unwrap();
        let addr = l.local;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(l.run(
            Arc::new(Semaphore::new(10)),
            Arc::new(Metrics::new()),
            stop.clone(),
            move |a| {
                let _ = tx.send(a);
            },
        ));
        let _c = TcpStream::connect(addr).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().target, Target::Direct);
        stop.cancel();
    }
}
