//! Protocol detection: what is the client speaking?
//!
//! Three pure sniffers over the first bytes of a connection — a TLS
//! ClientHello (with its SNI), the HTTP/2 connection preface, an HTTP/1
//! request line — each with three outcomes ([`Sniff`]): matched, not this
//! protocol, or incomplete (a valid prefix; read more). They never panic and
//! never allocate beyond a ClientHello split over several records; the fuzz
//! target `fuzz/fuzz_targets/detect.rs` and the prefix tests below hold them
//! to that.
//!
//! The async half ([`detect_tls`], [`detect_http`]) reads into a bounded
//! buffer ([`DETECT_BUFFER`]) until a sniffer decides, the buffer is full,
//! the client stops sending (EOF) or the deadline of `--detect-timeout`
//! passes. The deadline bounds the whole detection, so a client trickling one
//! byte at a time cannot hold the proxy past it. Whatever was read is
//! replayed to the next stage by [`PrefixedIo`]: detection never loses or
//! reorders a byte.
//!
//! `inbound.rs` calls this; nothing here decides policy or opens sockets.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The most bytes detection reads before deciding (a ClientHello, even with
/// post-quantum key shares, or an HTTP/1 request line fit well within it).
pub const DETECT_BUFFER: usize = 16 * 1024;

/// What a sniffer concluded from the bytes seen so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sniff<T> {
    /// The bytes are this protocol.
    Match(T),
    /// The bytes cannot be this protocol, whatever follows.
    NotThis,
    /// The bytes are a valid prefix of this protocol; more are needed.
    Incomplete,
}

/// A TLS ClientHello, as far as the proxy cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// The `server_name` extension's host name, when present and valid UTF-8.
    pub sni: Option<String>,
}

const HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0x0000;
/// TLS records carry at most 2^14 bytes of plaintext (RFC 8446 §5.1), plus
/// slack some stacks use; a bigger length field is not TLS.
const MAX_RECORD: usize = (1 << 14) + 2048;

/// Sniffs a TLS ClientHello and its SNI. A handshake split over several
/// records is reassembled. A ClientHello that parses as TLS framing but
/// whose body is malformed is still TLS (`Match` with no SNI): it is passed
/// through and the application's TLS stack rejects it.
pub fn sniff_tls(buf: &[u8]) -> Sniff<ClientHello> {
    // Record header: type, legacy version 3.x, length.
    match buf {
        [] => return Sniff::Incomplete,
        [t, ..] if *t != HANDSHAKE => return Sniff::NotThis,
        [_, major, ..] if *major != 0x03 => return Sniff::NotThis,
        [_, _, minor, ..] if *minor > 0x04 => return Sniff::NotThis,
        _ => {}
    }
    // Reassemble the handshake message from consecutive handshake records.
    // The common case (one record holds the whole ClientHello) borrows.
    let mut joined: Option<Vec<u8>> = None;
    let mut first: &[u8] = &[];
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return Sniff::Incomplete;
        }
        if rest[0] != HANDSHAKE || rest[1] != 0x03 {
            return Sniff::NotThis;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > MAX_RECORD {
            return Sniff::NotThis;
        }
        let Some(fragment) = rest.get(5..5 + len) else {
            return Sniff::Incomplete;
        };
        rest = &rest[5 + len..];
        let handshake: &[u8] = match &mut joined {
            None if first.is_empty() => {
                first = fragment;
                first
            }
            None => {
                let mut v = Vec::with_capacity(first.len() + fragment.len());
                v.extend_from_slice(first);
                v.extend_from_slice(fragment);
                joined = Some(v);
                joined.as_deref().unwrap_or_default()
            }
            Some(v) => {
                v.extend_from_slice(fragment);
                v
            }
        };
        // Handshake header: type, 24-bit length.
        if handshake[0] != CLIENT_HELLO {
            return Sniff::NotThis;
        }
        if handshake.len() < 4 {
            continue;
        }
        let hs_len = (usize::from(handshake[1]) << 16)
            | (usize::from(handshake[2]) << 8)
            | usize::from(handshake[3]);
        if let Some(body) = handshake.get(4..4 + hs_len) {
            return Sniff::Match(ClientHello {
                sni: parse_client_hello_sni(body),
            });
        }
    }
}

/// Reads the SNI host name from a ClientHello body; `None` when it is absent
/// or the body is malformed.
fn parse_client_hello_sni(body: &[u8]) -> Option<String> {
    let mut r = Reader(body);
    r.skip(2)?; // legacy_version
    r.skip(32)?; // random
    let sid = r.u8()?;
    r.skip(sid.into())?;
    let suites = r.u16()?;
    r.skip(suites.into())?;
    let comp = r.u8()?;
    r.skip(comp.into())?;
    if r.0.is_empty() {
        return None; // no extensions
    }
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(ext_len.into())?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(len.into())?;
        if ty != EXT_SERVER_NAME {
            continue;
        }
        let mut sn = Reader(data);
        let list_len = sn.u16()?;
        let mut list = Reader(sn.take(list_len.into())?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name_len = list.u16()?;
            let name = list.take(name_len.into())?;
            if name_type == 0 {
                return is_host_name(name).then(|| String::from_utf8_lossy(name).into_owned());
            }
        }
        return None;
    }
    None
}

/// An SNI host name is ASCII (RFC 6066 §3): letters, digits, `-`, `.`
/// (and `_`, seen in practice), at most 253 bytes. Anything else is treated
/// as no SNI, so client bytes never reach labels or logs unchecked.
fn is_host_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// A bounds-checked cursor: every read returns `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Sniffs the HTTP/2 connection preface (prior knowledge).
pub fn sniff_h2(buf: &[u8]) -> Sniff<()> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] != H2_PREFACE[..n] {
        Sniff::NotThis
    } else if n == H2_PREFACE.len() {
        Sniff::Match(())
    } else {
        Sniff::Incomplete
    }
}

/// Longest method accepted; real ones are short, and a bound keeps garbage
/// from looking like an endless method.
const MAX_METHOD: usize = 24;

/// Sniffs an HTTP/1 request line: `METHOD SP TARGET SP HTTP/1.<d> CRLF`
/// (a bare LF is accepted as httparse does).
pub fn sniff_http1(buf: &[u8]) -> Sniff<()> {
    // Method: one or more tchars (RFC 9110 §5.6.2), then SP.
    let mut i = 0;
    while i < buf.len() && is_tchar(buf[i]) {
        i += 1;
        if i > MAX_METHOD {
            return Sniff::NotThis;
        }
    }
    match buf.get(i) {
        None => return Sniff::Incomplete,
        Some(b' ') if i > 0 => i += 1,
        Some(_) => return Sniff::NotThis,
    }
    // Target: visible bytes (and obs-text), then SP.
    let start = i;
    while i < buf.len() && buf[i] > b' ' && buf[i] != 0x7f {
        i += 1;
    }
    match buf.get(i) {
        None => return Sniff::Incomplete,
        Some(b' ') if i > start => i += 1,
        Some(_) => return Sniff::NotThis,
    }
    // Version and line end.
    const VERSION: &[u8] = b"HTTP/1.";
    let rest = &buf[i..];
    let n = rest.len().min(VERSION.len());
    if rest[..n] != VERSION[..n] {
        return Sniff::NotThis;
    }
    match rest.get(VERSION.len()..) {
        None | Some([]) => Sniff::Incomplete,
        Some([d, ..]) if !d.is_ascii_digit() => Sniff::NotThis,
        Some([_]) => Sniff::Incomplete,
        Some([_, b'\n', ..]) | Some([_, b'\r', b'\n', ..]) => Sniff::Match(()),
        Some([_, b'\r']) => Sniff::Incomplete,
        Some(_) => Sniff::NotThis,
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Why detection stopped without a match.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Undetected {
    /// The bytes are not this protocol.
    NotThis,
    /// `--detect-timeout` passed first.
    Timeout,
    /// The client closed its write side first.
    Eof,
}

/// What the TLS phase found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsDetect {
    ClientHello(ClientHello),
    NotTls(Undetected),
}

/// What the HTTP phase found.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HttpDetect {
    Http1,
    Http2,
    NotHttp(Undetected),
}

impl HttpDetect {
    /// The `result` label of `inbound_tcp_detect_http_results_total`.
    pub fn label(&self) -> &'static str {
        match self {
            HttpDetect::Http1 => "http/1",
            HttpDetect::Http2 => "http/2",
            HttpDetect::NotHttp(Undetected::NotThis) | HttpDetect::NotHttp(Undetected::Eof) => {
                "not_http"
            }
            HttpDetect::NotHttp(Undetected::Timeout) => "read_timeout",
        }
    }
}

/// Reads from `io` into `buf` until `sniff` decides. A full buffer ends
/// detection with `on_full`'s verdict on the bytes (the sniffer said only
/// "incomplete").
async fn sniff_io<I, T>(
    io: &mut I,
    buf: &mut BytesMut,
    deadline: Instant,
    sniff: impl Fn(&[u8]) -> Sniff<T>,
    on_full: impl Fn(&[u8]) -> Result<T, Undetected>,
) -> io::Result<Result<T, Undetected>>
where
    I: AsyncRead + Unpin,
{
    loop {
        if !buf.is_empty() {
            match sniff(buf) {
                Sniff::Match(t) => return Ok(Ok(t)),
                Sniff::NotThis => return Ok(Err(Undetected::NotThis)),
                Sniff::Incomplete => {}
            }
        }
        if buf.len() >= DETECT_BUFFER {
            return Ok(on_full(buf));
        }
        // Read no more than the bound, whatever the buffer's capacity.
        let want = DETECT_BUFFER - buf.len();
        buf.reserve(want);
        let read = {
            let mut limited = (&mut *io).take(want as u64);
            tokio::time::timeout_at(deadline, limited.read_buf(buf)).await
        };
        match read {
            Err(_elapsed) => return Ok(Err(Undetected::Timeout)),
            Ok(Ok(0)) => return Ok(Err(Undetected::Eof)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// Phase 1: is this a TLS ClientHello? `buf` keeps every byte read.
pub async fn detect_tls<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    deadline: Instant,
) -> io::Result<TlsDetect> {
    // A ClientHello larger than the buffer is still TLS; its SNI is unknown.
    let found = sniff_io(io, buf, deadline, sniff_tls, |_| {
        Ok(ClientHello { sni: None })
    })
    .await?;
    Ok(match found {
        Ok(hello) => TlsDetect::ClientHello(hello),
        Err(why) => TlsDetect::NotTls(why),
    })
}

/// Phase 2: HTTP/2 preface or HTTP/1 request line? Continues with the bytes
/// already in `buf`, under the same deadline.
pub async fn detect_http<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    deadline: Instant,
) -> io::Result<HttpDetect> {
    let found = sniff_io(io, buf, deadline, sniff_http, |b| {
        // A request line longer than the buffer (a huge URL): still HTTP/1,
        // and hyper answers it with 414/431 instead of us guessing opaque.
        match sniff_http1(b) {
            Sniff::Incomplete => Ok(HttpDetect::Http1),
            _ => Err(Undetected::NotThis),
        }
    })
    .await?;
    Ok(found.unwrap_or_else(HttpDetect::NotHttp))
}

/// Both HTTP sniffers: a match of either wins; incomplete while either may still match.
pub fn sniff_http(buf: &[u8]) -> Sniff<HttpDetect> {
    match (sniff_h2(buf), sniff_http1(buf)) {
        (Sniff::Match(()), _) => Sniff::Match(HttpDetect::Http2),
        (_, Sniff::Match(())) => Sniff::Match(HttpDetect::Http1),
        (Sniff::NotThis, Sniff::NotThis) => Sniff::NotThis,
        _ => Sniff::Incomplete,
    }
}

/// Checks the sniffers' contract on `data` and panics on a violation: no
/// panic on any bytes, and a verdict never changes with more bytes (a
/// prefix that matched or was rejected stays so; "incomplete" may go
/// either way). Shared by the fuzz target `detect` and the property test.
#[doc(hidden)]
pub fn check_sniffers(data: &[u8]) {
    fn stable<T: PartialEq + std::fmt::Debug>(data: &[u8], sniff: impl Fn(&[u8]) -> Sniff<T>) {
        let full = sniff(data);
        // Every short prefix, then evenly spaced cut points: linear cost.
        let step = (data.len() / 32).max(1);
        let cuts = (0..data.len().min(64)).chain((64..data.len()).step_by(step));
        for n in cuts {
            match sniff(&data[..n]) {
                Sniff::Incomplete => {}
                decided => assert_eq!(decided, full, "verdict at {n} bytes changed with more"),
            }
        }
    }
    stable(data, sniff_tls);
    stable(data, sniff_h2);
    stable(data, sniff_http1);
    stable(data, sniff_http);
}

/// An I/O that first replays the bytes read during detection, then reads
/// from the inner I/O; writes go straight through.
#[derive(Debug)]
pub struct PrefixedIo<I> {
    prefix: Bytes,
    io: I,
}

impl<I> PrefixedIo<I> {
    pub fn new(prefix: Bytes, io: I) -> Self {
        PrefixedIo { prefix, io }
    }

    pub fn get_ref(&self) -> &I {
        &self.io
    }
}

/// A client connection as opaque forwarding sees it: a plain socket (which
/// is then spliced, `forward::splice`) or anything else (copied).
pub trait IntoPlain: Sized {
    /// The replayed bytes and the socket, if the connection is a plain one.
    fn into_plain(self) -> Result<(Bytes, TcpStream), Self>;
}

impl IntoPlain for PrefixedIo<TcpStream> {
    fn into_plain(self) -> Result<(Bytes, TcpStream), Self> {
        Ok((self.prefix, self.io))
    }
}

impl<T> IntoPlain for PrefixedIo<tokio_rustls::server::TlsStream<T>> {
    fn into_plain(self) -> Result<(Bytes, TcpStream), Self> {
        Err(self)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Release the detection buffer: a long-lived connection
                // must not keep it.
                this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
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
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// A ClientHello as rustls 0.23 sends it for `web.example.com`.
    fn client_hello(sni: &str) -> Vec<u8> {
        let mut exts = Vec::new();
        // server_name
        let name = sni.as_bytes();
        let mut sn = Vec::new();
        sn.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sn.push(0);
        sn.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sn.extend_from_slice(name);
        // an unrelated extension first (supported_versions), then SNI
        exts.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        exts.extend_from_slice(&0u16.to_be_bytes());
        exts.extend_from_slice(&(sn.len() as u16).to_be_bytes());
        exts.extend_from_slice(&sn);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.push(32);
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]);
        body.extend_from_slice(&[0x01, 0x00]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![CLIENT_HELLO];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![HANDSHAKE, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    /// The same handshake split over records of at most `n` bytes.
    fn fragmented(hello: &[u8], n: usize) -> Vec<u8> {
        let hs = &hello[5..];
        let mut out = Vec::new();
        for chunk in hs.chunks(n) {
            out.extend_from_slice(&[HANDSHAKE, 0x03, 0x03]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    /// Every strict prefix of a matching input is incomplete, never "not this".
    fn assert_prefixes_incomplete<T: std::fmt::Debug>(
        input: &[u8],
        sniff: impl Fn(&[u8]) -> Sniff<T>,
    ) {
        for n in 0..input.len() {
            assert!(
                matches!(sniff(&input[..n]), Sniff::Incomplete),
                "prefix of {n} bytes: {:?}",
                sniff(&input[..n])
            );
        }
    }

    #[test]
    fn tls_client_hello_with_sni() {
        let hello = client_hello("web.example.com");
        assert_eq!(
            sniff_tls(&hello),
            Sniff::Match(ClientHello {
                sni: Some("web.example.com".into())
            })
        );
        assert_prefixes_incomplete(&hello, sniff_tls);
        // Trailing bytes (the next flight) do not matter.
        let mut more = hello.clone();
        more.extend_from_slice(b"\x14\x03\x03");
        assert!(matches!(sniff_tls(&more), Sniff::Match(_)));
    }

    #[test]
    fn tls_client_hello_over_several_records() {
        let hello = client_hello("a.b");
        for n in [1, 2, 5, 17] {
            let split = fragmented(&hello, n);
            assert_eq!(
                sniff_tls(&split),
                Sniff::Match(ClientHello {
                    sni: Some("a.b".into())
                }),
                "records of {n}"
            );
            assert_prefixes_incomplete(&split, sniff_tls);
        }
    }

    #[test]
    fn tls_rejects_other_protocols() {
        assert_eq!(sniff_tls(b"GET / HTTP/1.1\r\n"), Sniff::NotThis);
        assert_eq!(sniff_tls(H2_PREFACE), Sniff::NotThis);
        assert_eq!(sniff_tls(b"\x16\x02"), Sniff::NotThis);
        // A handshake record that is not a ClientHello.
        assert_eq!(
            sniff_tls(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00"),
            Sniff::NotThis
        );
        // An SNI that is not a host name is no SNI.
        let mut odd = client_hello("a\"b");
        assert_eq!(sniff_tls(&odd), Sniff::Match(ClientHello { sni: None }));
        odd = client_hello(&"a".repeat(254));
        assert_eq!(sniff_tls(&odd), Sniff::Match(ClientHello { sni: None }));
        // A malformed ClientHello body is still TLS, without SNI.
        assert_eq!(
            sniff_tls(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\xff"),
            Sniff::Match(ClientHello { sni: None })
        );
    }

    #[test]
    fn h2_preface() {
        assert_eq!(sniff_h2(H2_PREFACE), Sniff::Match(()));
        assert_prefixes_incomplete(H2_PREFACE, sniff_h2);
        assert_eq!(sniff_h2(b"PRI * HTTP/1.1\r\n"), Sniff::NotThis);
        assert_eq!(sniff_http(H2_PREFACE), Sniff::Match(HttpDetect::Http2));
    }

    #[test]
    fn http1_request_lines() {
        for line in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /a?b=c HTTP/1.0\r\nHost: x\r\n",
            b"OPTIONS * HTTP/1.1\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n",
            b"M-SEARCH http://x/y HTTP/1.1\r\n",
        ] {
            assert_eq!(sniff_http1(line), Sniff::Match(()), "{line:?}");
            let end = line.iter().position(|b| *b == b'\n').unwrap();
            assert_prefixes_incomplete(&line[..=end], sniff_http1);
            assert_eq!(sniff_http(line), Sniff::Match(HttpDetect::Http1));
        }
        for bad in [
            &b" GET / HTTP/1.1\r\n"[..],
            b"GET  / HTTP/1.1\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET / HTTP/1.1x",
            b"GET / HTTP/1.x\r\n",
            b"\x00\x01",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"*1\r\n$4\r\nPING\r\n",
            b"AVERYLONGMETHODNAMETHATISNOTHTTP ",
        ] {
            assert_eq!(sniff_http1(bad), Sniff::NotThis, "{bad:?}");
        }
        assert_eq!(sniff_http(b"*1\r\n"), Sniff::NotThis);
    }

    proptest::proptest! {
        #[test]
        fn verdicts_never_change_with_more_bytes(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            check_sniffers(&data);
        }

        #[test]
        fn protocol_lookalikes_keep_their_verdicts(
            head in proptest::sample::select(vec![
                b"GET / HTTP/1.1\r\n".to_vec(),
                H2_PREFACE.to_vec(),
                vec![HANDSHAKE, 0x03, 0x01, 0x00, 0x30, CLIENT_HELLO, 0x00, 0x00, 0x2c],
            ]),
            cut in 0usize..40,
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
        ) {
            let mut data = head[..cut.min(head.len())].to_vec();
            data.extend_from_slice(&tail);
            check_sniffers(&data);
        }
    }

    #[test]
    fn captured_inputs_keep_their_verdicts() {
        check_sniffers(&client_hello("web.example.com"));
        check_sniffers(&fragmented(&client_hello("a.b"), 3));
        check_sniffers(H2_PREFACE);
        check_sniffers(b"POST /x HTTP/1.1\r\nHost: a\r\n\r\nbody");
    }

    #[tokio::test]
    async fn detection_reads_a_trickle_until_it_matches_and_keeps_every_byte() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let req = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let writer = tokio::spawn(async move {
            for b in req {
                client.write_all(&[*b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            client
        });
        let mut buf = BytesMut::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            detect_tls(&mut server, &mut buf, deadline).await.unwrap(),
            TlsDetect::NotTls(Undetected::NotThis)
        );
        assert_eq!(
            detect_http(&mut server, &mut buf, deadline).await.unwrap(),
            HttpDetect::Http1
        );
        let _client = writer.await.unwrap();
        // The prefix replays exactly what was read, then the rest follows.
        let mut io = PrefixedIo::new(buf.freeze(), server);
        let mut got = vec![0; req.len()];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..], &req[..]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_client_cannot_outlast_the_deadline() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            // "GET /" then one byte of target per second, forever.
            client.write_all(b"GET /").await.unwrap();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if client.write_all(b"a").await.is_err() {
                    return;
                }
            }
        });
        let start = Instant::now();
        let deadline = start + Duration::from_secs(10);
        let mut buf = BytesMut::new();
        let found = detect_http(&mut server, &mut buf, deadline).await.unwrap();
        assert_eq!(found, HttpDetect::NotHttp(Undetected::Timeout));
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert!(buf.starts_with(b"GET /a"));
    }

    #[tokio::test]
    async fn the_buffer_is_bounded() {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        // A TLS-looking record header that announces more than fits.
        let mut flood = vec![
            HANDSHAKE,
            0x03,
            0x01,
            0x48,
            0x00,
            CLIENT_HELLO,
            0x00,
            0xff,
            0xff,
        ];
        flood.resize(200_000, 0);
        client.write_all(&flood).await.unwrap();
        let mut buf = BytesMut::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = detect_tls(&mut server, &mut buf, deadline).await.unwrap();
        assert_eq!(found, TlsDetect::ClientHello(ClientHello { sni: None }));
        assert_eq!(buf.len(), DETECT_BUFFER);

        // A request line longer than the buffer is still HTTP/1.
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let mut long = b"GET /".to_vec();
        long.resize(100_000, b'a');
        client.write_all(&long).await.unwrap();
        let mut buf = BytesMut::new();
        let found = detect_http(&mut server, &mut buf, deadline).await.unwrap();
        assert_eq!(found, HttpDetect::Http1);
        assert_eq!(buf.len(), DETECT_BUFFER);
    }

    #[tokio::test]
    async fn eof_before_a_decision_is_reported() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"he\x01").await.unwrap();
        drop(client);
        let mut buf = BytesMut::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let found = detect_http(&mut server, &mut buf, deadline).await.unwrap();
        assert_eq!(found, HttpDetect::NotHttp(Undetected::NotThis));
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GE").await.unwrap();
        drop(client);
        let mut buf = BytesMut::new();
        let found = detect_http(&mut server, &mut buf, deadline).await.unwrap();
        assert_eq!(found, HttpDetect::NotHttp(Undetected::Eof));
        assert_eq!(&buf[..], b"GE");
    }
}
