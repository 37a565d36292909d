//! Opaque forwarding: connect to the app and copy bytes both ways.
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

use crate::metrics::ByteCounters;

/// Copy buffer per direction: large enough for bulk transfers, small enough
/// for many idle connections.
const COPY_BUFFER: usize = 64 * 1024;

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

    #[tokio::test]
    async fn connecting_to_a_closed_port_fails_fast() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = connect_app(addr, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, ForwardError::Connect { .. }), "{err}");
    }
}
