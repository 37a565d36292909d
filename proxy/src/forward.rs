//! Opaque forwarding: connect to the app and copy bytes both ways.
//!
//! A plain client socket is copied through a buffer that exists only while
//! bytes flow, or spliced inside the kernel (`--opaque-transfer`); a TLS
//! client goes through [`copy`].
//!
//! Half-close is respected: when one side finishes sending, the other side's
//! write half is shut down and the opposite direction keeps flowing until it
//! ends too, so request/response protocols that signal "done" with a FIN
//! lose nothing. A revocation (policy update) or shutdown cancels the copy
//! and closes both sockets.
//!
//! Also here: [`CountingIo`], the client-side I/O wrapper that feeds
//! `tcp_read_bytes_total` / `tcp_write_bytes_total` for every path, and
//! [`connect_app`], shared with the HTTP client pool.
//!
//! Nothing here decides policy. Called by `inbound.rs` (opaque and TLS
//! passthrough) and `http.rs` (connections to the app, upgrades).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::counter::Counter;

pub use crate::config::OpaqueTransfer;
use crate::metrics::ByteCounters;

/// Copy buffer per direction: enough for bulk transfers (HAProxy uses the
/// same size), small enough that `--max-connections` idle connections stay
/// affordable (2 x 16 KiB each).
const COPY_BUFFER: usize = 16 * 1024;

/// Why forwarding stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("connecting to the application at {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connecting to the application at {addr}: no answer within {}", humantime::format_duration(*.timeout))]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("closed: the policy no longer authorizes the connection")]
    Revoked,
    #[error("closed: the proxy is shutting down")]
    Shutdown,
    #[error("copying between client and application: {0}")]
    Io(#[from] io::Error),
}

impl ForwardError {
    /// The `errno` label of `tcp_close_total`.
    pub fn errno(&self) -> String {
        match self {
            ForwardError::Connect { source, .. } | ForwardError::Io(source) => source
                .raw_os_error()
                .map(|e| e.to_string())
                .unwrap_or_else(|| format!("{:?}", source.kind())),
            ForwardError::ConnectTimeout { .. } => "timeout".into(),
            ForwardError::Revoked => "revoked".into(),
            ForwardError::Shutdown => "shutdown".into(),
        }
    }
}

/// Connects to the app with a timeout, with Nagle off (we forward what we get
/// when we get it).
pub async fn connect_app(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ForwardError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ForwardError::ConnectTimeout { addr, timeout }),
        Ok(Err(source)) => return Err(ForwardError::Connect { addr, source }),
        Ok(Ok(s)) => s,
    };
    // Best effort: a failure only costs latency.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Copies until both directions are done, the connection is revoked, or the
/// proxy stops. Returns bytes (client->app, app->client).
pub async fn copy<C>(
    client: &mut C,
    app: &mut TcpStream,
    revoked: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<(u64, u64), ForwardError>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::select! {
        res = tokio::io::copy_bidirectional_with_sizes(client, app, COPY_BUFFER, COPY_BUFFER) => {
            Ok(res?)
        }
        _ = revoked.cancelled() => Err(ForwardError::Revoked),
        _ = shutdown.cancelled() => Err(ForwardError::Shutdown),
    }
}

/// Like [`copy`], for a client on a plain socket, moving the bytes the way
/// `--opaque-transfer` says: `copy` through a user-space buffer per
/// direction that exists only while bytes flow ([`copy_one`]), or `splice`
/// inside the kernel (`splice(2)` through a pipe per direction,
/// [`splice_one`]). Which is faster depends on the CPU (benches/RESULTS.md,
/// pass 6). `prefix` (bytes already read from the client during detection)
/// goes to the app first. The byte counters are fed with what was moved.
pub async fn plain(
    transfer: OpaqueTransfer,
    prefix: bytes::Bytes,
    client: &TcpStream,
    app: &TcpStream,
    counters: &ByteCounters,
    revoked: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<(u64, u64), ForwardError> {
    let both = async {
        write_all(app, &prefix).await?;
        counters.read.inc_by(prefix.len() as u64);
        let (up, down) = match transfer {
            OpaqueTransfer::Copy => tokio::try_join!(
                copy_one(client, app, &counters.read),
                copy_one(app, client, &counters.write),
            )?,
            OpaqueTransfer::Splice => tokio::try_join!(
                splice_one(client, app, &counters.read),
                splice_one(app, client, &counters.write),
            )?,
        };
        Ok::<_, io::Error>((up + prefix.len() as u64, down))
    };
    tokio::select! {
        res = both => Ok(res?),
        _ = revoked.cancelled() => Err(ForwardError::Revoked),
        _ = shutdown.cancelled() => Err(ForwardError::Shutdown),
    }
}

/// Bytes read per system call when copying a plain connection. 32 KiB
/// measured fastest on the Xeon VM: 8 KiB 16.1 Gbit/s, 16 KiB 17.8, 32 KiB
/// 21.2, 64 KiB 14.1 (it no longer stays in the L1/L2 caches between the
/// read and the write).
const COPY_CHUNK: usize = 32 * 1024;

/// Moves `src`'s bytes to `dst` until `src` ends, then ends `dst`'s
/// sending side (half-close). The buffer is allocated when `src` turns
/// readable and freed once it has nothing more to read, so an idle
/// connection holds no buffer (10,000 idle opaque connections would
/// otherwise hold 640 MiB). Returns the bytes moved.
async fn copy_one(src: &TcpStream, dst: &TcpStream, moved: &Counter) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        src.readable().await?;
        let mut buf = Vec::with_capacity(COPY_CHUNK);
        loop {
            buf.clear();
            match src.try_read_buf(&mut buf) {
                Ok(0) => {
                    half_close(dst)?;
                    return Ok(total);
                }
                Ok(n) => {
                    write_all(dst, &buf).await?;
                    total += n as u64;
                    moved.inc_by(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Writes all of `buf`, waiting for room only when the socket has none.
async fn write_all(dst: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match dst.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Ends `dst`'s sending side once its source has ended.
fn half_close(dst: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(dst)
        .shutdown(std::net::Shutdown::Write)
        .or_else(|e| {
            // The peer may have gone already; nothing left to tell it.
            if e.kind() == io::ErrorKind::NotConnected {
                Ok(())
            } else {
                Err(e)
            }
        })
}

/// Moves `src`'s bytes to `dst` until `src` ends, then ends `dst`'s
/// sending side (half-close). Returns the bytes moved.
async fn splice_one(src: &TcpStream, dst: &TcpStream, moved: &Counter) -> io::Result<u64> {
    use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
    use tokio::io::Interest;
    let (pipe_out, pipe_in) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    let mut total = 0u64;
    loop {
        // Fill the (empty) pipe from the source: a would-block here can
        // only mean the socket has nothing, so readiness is cleared rightly.
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice(src, None, &pipe_in, None, SPLICE_CHUNK, flags).map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            half_close(dst)?;
            return Ok(total);
        }
        // Drain the pipe into the destination.
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(&pipe_out, None, dst, None, left, flags).map_err(io::Error::from)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        total += n as u64;
        moved.inc_by(n as u64);
    }
}

/// Most bytes moved per splice call; the pipe's capacity (64 KiB by
/// default) bounds it anyway. A 256 KiB pipe measured level on throughput
/// but 17 % more CPU per MiB, and it would spend the per-user pipe budget
/// (`pipe-user-pages-soft`, beyond which the kernel hands out small pipes)
/// four times faster, so the default stays.
const SPLICE_CHUNK: usize = 1 << 20;

/// Counts the bytes read from and written to the client.
#[derive(Debug)]
pub struct CountingIo<I> {
    io: I,
    counters: ByteCounters,
}

impl<I> CountingIo<I> {
    pub fn new(io: I, counters: ByteCounters) -> Self {
        CountingIo { io, counters }
    }

    pub fn get_ref(&self) -> &I {
        &self.io
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for CountingIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            this.counters.read.inc_by(n as u64);
        }
        res
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for CountingIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.counters.write.inc_by(n as u64);
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let res = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            this.counters.write.inc_by(n as u64);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn half_close_lets_the_other_direction_finish() {
        // App: reads everything until EOF, then answers with its length.
        let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app_addr = app.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = app.accept().await.unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            s.write_all(format!("{}", all.len()).as_bytes())
                .await
                .unwrap();
        });
        // Proxy side: a duplex pair stands in for the client socket.
        let (mut client, mut proxied) = tokio::io::duplex(1024);
        let mut upstream = connect_app(app_addr, Duration::from_secs(1)).await.unwrap();
        let never = CancellationToken::new();
        let fwd = tokio::spawn(async move {
            copy(
                &mut proxied,
                &mut upstream,
                &never,
                &CancellationToken::new(),
            )
            .await
        });
        client.write_all(&[1u8; 100_000]).await.unwrap();
        client.shutdown().await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert_eq!(answer, "100000");
        let (up, down) = fwd.await.unwrap().unwrap();
        assert_eq!((up, down), (100_000, 6));
    }

    /// Both plain transfers, through real sockets: the detection prefix
    /// goes first, the client's FIN reaches the app, the app's answer
    /// comes back, and the counters see every byte.
    #[tokio::test]
    async fn plain_transfers_keep_the_prefix_and_the_half_close() {
        for transfer in [OpaqueTransfer::Copy, OpaqueTransfer::Splice] {
            let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let app_addr = app.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut s, _) = app.accept().await.unwrap();
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                assert!(all.starts_with(b"PREFIX"), "the prefix went first");
                s.write_all(format!("{}", all.len()).as_bytes())
                    .await
                    .unwrap();
            });
            let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let front_addr = front.local_addr().unwrap();
            let counters = ByteCounters {
                read: Counter::default(),
                write: Counter::default(),
            };
            let seen = counters.clone();
            let fwd = tokio::spawn(async move {
                let (client, _) = front.accept().await.unwrap();
                let upstream = connect_app(app_addr, Duration::from_secs(1)).await.unwrap();
                let never = CancellationToken::new();
                plain(
                    transfer,
                    bytes::Bytes::from_static(b"PREFIX"),
                    &client,
                    &upstream,
                    &counters,
                    &never,
                    &never,
                )
                .await
            });
            let mut client = TcpStream::connect(front_addr).await.unwrap();
            client.write_all(&[7u8; 300_000]).await.unwrap();
            client.shutdown().await.unwrap();
            let mut answer = String::new();
            client.read_to_string(&mut answer).await.unwrap();
            assert_eq!(answer, "300006", "{transfer:?}");
            let (up, down) = fwd.await.unwrap().unwrap();
            assert_eq!((up, down), (300_006, 6), "{transfer:?}");
            assert_eq!(
                (seen.read.get(), seen.write.get()),
                (300_006, 6),
                "{transfer:?}"
            );
        }
    }

    #[tokio::test]
    async fn connecting_to_a_closed_port_fails_fast() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = connect_app(addr, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, ForwardError::Connect { .. }), "{err}");
    }
}
