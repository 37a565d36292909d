//! Opaque forwarding: connect to the app and copy bytes both ways.
//!
//! Bytes are copied through a buffer per direction that exists only while
//! bytes flow ([`copy_both`]), or, for a plain client socket with
//! `--opaque-transfer splice`, spliced inside the kernel ([`splice`]).
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
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::counter::Counter;

use crate::metrics::ByteCounters;

/// Bytes read per call when copying. 32 KiB measured fastest on the Xeon
/// VM (`tcp-bulk`: 8 KiB 16.1 Gbit/s, 16 KiB 17.8, 32 KiB 21.2, 64 KiB 14.1,
/// where it no longer stays in the caches between the read and the write).
/// Held only while bytes flow, so idle connections do not pay for it.
const COPY_CHUNK: usize = 32 * 1024;

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
        res = copy_both(client, app) => Ok(res?),
        _ = revoked.cancelled() => Err(ForwardError::Revoked),
        _ = shutdown.cancelled() => Err(ForwardError::Shutdown),
    }
}

/// Copies both ways between `a` and `b` until both directions have ended
/// (each end half-closes the other side's writer). Returns bytes
/// (a->b, b->a). Like tokio's `copy_bidirectional`, except that a
/// direction holds its buffer only while bytes flow ([`Direction`]): an
/// idle connection, however long it lives, holds none.
pub async fn copy_both<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Direction::default();
    let mut down = Direction::default();
    std::future::poll_fn(|cx| {
        let a_to_b = up.poll_copy(cx, &mut *a, &mut *b)?;
        let b_to_a = down.poll_copy(cx, &mut *b, &mut *a)?;
        match (a_to_b, b_to_a) {
            (Poll::Ready(u), Poll::Ready(d)) => Poll::Ready(Ok((u, d))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// One direction of [`copy_both`].
#[derive(Default)]
struct Direction {
    /// What was read; `None` while the source is idle.
    buf: Option<Vec<u8>>,
    /// How much of `buf` is written.
    written: usize,
    /// Written since the last flush.
    unflushed: bool,
    /// The source ended; the destination's writer is being shut down.
    read_done: bool,
    /// The destination's writer is shut down too: `total` is final.
    finished: bool,
    total: u64,
}

impl Direction {
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.finished {
            return Poll::Ready(Ok(self.total));
        }
        loop {
            // Write out what was read.
            if let Some(buf) = self.buf.as_ref() {
                while self.written < buf.len() {
                    let n = ready!(Pin::new(&mut *w).poll_write(cx, &buf[self.written..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.written += n;
                    self.total += n as u64;
                    self.unflushed = true;
                }
            }
            if self.read_done {
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.finished = true;
                return Poll::Ready(Ok(self.total));
            }
            // Read more into the same buffer, or a new one.
            let buf = self
                .buf
                .get_or_insert_with(|| Vec::with_capacity(COPY_CHUNK));
            buf.clear();
            self.written = 0;
            match tokio_util::io::poll_read_buf(Pin::new(&mut *r), cx, buf) {
                Poll::Ready(Ok(0)) => {
                    self.buf = None;
                    self.read_done = true;
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Idle: give the buffer back, and push out what a
                    // buffering writer (TLS) still holds.
                    self.buf = None;
                    if self.unflushed {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Like [`copy`], for a client on a plain socket with `--opaque-transfer
/// splice`: the bytes move between the two sockets inside the kernel
/// (`splice(2)` through a pipe per direction) and never through user
/// space, which is how HAProxy moves TCP bulk data. Which of the two is
/// faster depends on the CPU (benches/RESULTS.md, pass 6). `prefix` (bytes
/// already read from the client during detection) goes to the app first.
/// The byte counters are fed with what was moved.
pub async fn splice(
    prefix: bytes::Bytes,
    client: &TcpStream,
    app: &mut TcpStream,
    counters: &ByteCounters,
    revoked: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<(u64, u64), ForwardError> {
    use tokio::io::AsyncWriteExt;
    if !prefix.is_empty() {
        app.write_all(&prefix).await?;
        counters.read.inc_by(prefix.len() as u64);
    }
    let app = &*app;
    let both = async {
        let (up, down) = tokio::try_join!(
            splice_one(client, app, &counters.read),
            splice_one(app, client, &counters.write),
        )?;
        Ok::<_, io::Error>((up + prefix.len() as u64, down))
    };
    tokio::select! {
        res = both => Ok(res?),
        _ = revoked.cancelled() => Err(ForwardError::Revoked),
        _ = shutdown.cancelled() => Err(ForwardError::Shutdown),
    }
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
    use crate::config::OpaqueTransfer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An app for one connection: reads everything until EOF (checking that
    /// it starts with `first`), then answers with its length.
    async fn length_app(first: &'static [u8]) -> SocketAddr {
        let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = app.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = app.accept().await.unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            assert!(all.starts_with(first), "the prefix went first");
            s.write_all(format!("{}", all.len()).as_bytes())
                .await
                .unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn half_close_lets_the_other_direction_finish() {
        let app_addr = length_app(b"").await;
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

    /// Both `--opaque-transfer`s, through real sockets: the detection prefix
    /// goes first, the client's FIN reaches the app, the app's answer
    /// comes back, and the counters see every byte.
    #[tokio::test]
    async fn both_transfers_keep_the_prefix_and_the_half_close() {
        for transfer in [OpaqueTransfer::Copy, OpaqueTransfer::Splice] {
            let app_addr = length_app(b"PREFIX").await;
            let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let front_addr = front.local_addr().unwrap();
            let counters = ByteCounters {
                read: Counter::default(),
                write: Counter::default(),
            };
            let seen = counters.clone();
            let fwd = tokio::spawn(async move {
                let (client, _) = front.accept().await.unwrap();
                let mut upstream = connect_app(app_addr, Duration::from_secs(1)).await.unwrap();
                let never = CancellationToken::new();
                let prefix = bytes::Bytes::from_static(b"PREFIX");
                match transfer {
                    OpaqueTransfer::Splice => {
                        splice(prefix, &client, &mut upstream, &counters, &never, &never).await
                    }
                    OpaqueTransfer::Copy => {
                        let io = crate::detect::PrefixedIo::new(prefix, client);
                        let mut io = CountingIo::new(io, counters);
                        copy(&mut io, &mut upstream, &never, &never).await
                    }
                }
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

    /// A direction gives its buffer back as soon as its source has nothing
    /// to read: an idle connection holds no copy buffer.
    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer() {
        let (mut client, mut a) = tokio::io::duplex(64 * 1024);
        // Room for less than one chunk on the way to the app.
        let (mut b, mut app) = tokio::io::duplex(16 * 1024);
        let mut up = Direction::default();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(up.poll_copy(&mut cx, &mut a, &mut b).is_pending());
        assert!(up.buf.is_none(), "a buffer before any byte");
        client.write_all(b"hello").await.unwrap();
        assert!(up.poll_copy(&mut cx, &mut a, &mut b).is_pending());
        assert!(up.buf.is_none(), "the buffer outlived the burst");
        let mut got = [0u8; 5];
        app.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // While the destination is full, the unwritten bytes stay.
        let big = vec![1u8; 200 * 1024];
        let writer = tokio::spawn(async move { client.write_all(&big).await.map(|_| client) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(up.poll_copy(&mut cx, &mut a, &mut b).is_pending());
        assert!(up.buf.is_some(), "bytes waiting for room were dropped");
        drop(writer);
    }

    /// A buffering writer (TLS buffers records) is flushed when the source
    /// goes quiet, or the last bytes would wait for the next ones.
    #[tokio::test]
    async fn a_buffering_writer_is_flushed_when_the_source_goes_quiet() {
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (b, mut app) = tokio::io::duplex(1024);
        let mut b = tokio::io::BufWriter::new(b);
        tokio::spawn(async move { copy_both(&mut a, &mut b).await });
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), app.read_exact(&mut got))
            .await
            .expect("the bytes were left in the writer's buffer")
            .unwrap();
        assert_eq!(&got, b"ping");
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
