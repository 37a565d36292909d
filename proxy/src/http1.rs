//! The HTTP/1.1 fast path: plain request/response exchanges forwarded
//! directly between the client's socket and the app's, without hyper.
//!
//! A sidecar spends most of its CPU on the common HTTP/1.1 exchange (a
//! request without or with a small body, any response), and hyper's server
//! plus client cost about 23 k instructions per request there (see
//! `benches/RESULTS.md`). This module parses the request head with
//! `httparse` into a stack array, authorizes it with the same
//! [`HttpAuthz::check`](crate::authz::HttpAuthz::check) as the hyper path,
//! writes a rebuilt head (hop-by-hop headers and the client's
//! `l5d-client-id` removed, the verified identity added) to a connection to
//! the app that this client connection keeps, and copies the response back,
//! its body framed by length, chunks (passed through verbatim, tracked by
//! [`Chunked`]) or the app's close.
//!
//! Anything else is **handed off** before a byte of it is forwarded: HTTP/1.0,
//! `CONNECT`, upgrades, `Expect`, `Transfer-Encoding` or big bodies in
//! requests, `Connection` options other than `keep-alive`/`close`, absolute
//! targets, heads that do not parse or exceed the limits. The caller then
//! serves the rest of the connection with hyper (`http.rs`), starting from
//! the buffered bytes, so the answer to an unusual request (400, 431,
//! upgrade, 100-continue...) is hyper's, exactly as without this path.
//!
//! The pure parts ([`classify_request`], [`write_request_head`],
//! [`classify_response`], [`write_response_head`], [`Chunked`]) are tested
//! without sockets and fuzzed (`fuzz/fuzz_targets/http1.rs`). Nothing here
//! decides policy.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::{Method, Response, StatusCode};
use portcullis_policy::RequestHeaders;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use crate::authz::{respond, Refusal};
use crate::http::{HttpConn, ProxyBody};
use crate::signal::{Signal, Watch};

/// Most headers in a request or response head (hyper's default too).
pub const MAX_HEADERS: usize = 100;
/// Request bodies up to this size are read whole and sent with the head;
/// a bigger one hands the connection to hyper, which streams it.
pub const MAX_BUFFERED_BODY: u64 = 64 * 1024;
/// The largest response head accepted from the app (hyper's client limit
/// is of the same order).
const MAX_RESPONSE_HEAD: usize = 256 * 1024;
/// Read buffer growth step, and the copy size for response bodies.
const READ_CHUNK: usize = 16 * 1024;
/// While waiting for the next request, a connection holds only this much
/// (no buffers): idle keep-alive connections must stay small.
const IDLE_READ: usize = 256;

/// How a connection left the fast path.
#[derive(Debug)]
pub enum Served<I> {
    /// The connection is finished (closed by either side, idle, drained).
    Closed(Result<(), Error>),
    /// A request the fast path does not serve: hyper serves the connection
    /// from here, starting with `buffered` (nothing of it was forwarded).
    Handoff {
        io: I,
        buffered: BytesMut,
        why: &'static str,
    },
}

/// Why a fast-path connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading or writing the client connection: {0}")]
    Client(#[source] io::Error),
    #[error("the client sent no complete request head within the header read timeout")]
    HeaderTimeout,
    #[error("the client stopped sending the request body")]
    BodyTimeout,
    #[error("the application's response broke off: {0}")]
    App(String),
}

impl Error {
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::HeaderTimeout | Error::BodyTimeout)
    }
}

// ===== request heads (pure)

/// What the fast path keeps of a request head it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// Bytes of body that follow the head (`Content-Length`, else 0).
    pub body: u64,
    /// The client asked to close after the response (`Connection: close`).
    pub close: bool,
}

/// Header names handled by name: `Connection` and the fixed hop-by-hop
/// list (RFC 9110 §7.6.1), `TE`, our own `l5d-client-id`, and the
/// response's `grpc-status` (for the metrics).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Special {
    Connection,
    HopByHop,
    Te,
    ClientId,
    ContentLength,
    TransferEncoding,
    Upgrade,
    Expect,
    GrpcStatus,
    Other,
}

fn special(name: &str) -> Special {
    // Most names are none of these: the first letter and the length rule
    // them out before any comparison.
    if !matches!(
        name.as_bytes().first().map(|b| b | 0x20),
        Some(b't' | b'e' | b'u' | b'c' | b'k' | b'l' | b'p' | b'g')
    ) {
        return Special::Other;
    }
    let is = |s: &str| eq_lower(name.as_bytes(), s.as_bytes());
    match name.len() {
        2 if is("te") => Special::Te,
        6 if is("expect") => Special::Expect,
        7 if is("upgrade") => Special::Upgrade,
        10 if is("connection") => Special::Connection,
        10 if is("keep-alive") => Special::HopByHop,
        11 if is("grpc-status") => Special::GrpcStatus,
        13 if is("l5d-client-id") => Special::ClientId,
        14 if is("content-length") => Special::ContentLength,
        16 if is("proxy-connection") => Special::HopByHop,
        17 if is("transfer-encoding") => Special::TransferEncoding,
        18 if is("proxy-authenticate") => Special::HopByHop,
        19 if is("proxy-authorization") => Special::HopByHop,
        _ => Special::Other,
    }
}

/// `name` equals `lower` ignoring ASCII case, eight bytes at a time (the
/// byte-wise `eq_ignore_ascii_case` was ~9 % of a request's instructions).
/// `lower` must be lowercase letters, digits and `-`, as the names
/// `special` looks for are: in those, bit 0x40 is set exactly on the
/// letters, so shifting it to 0x20 gives the case bit to ignore there, and
/// every other byte must match exactly.
fn eq_lower(name: &[u8], lower: &[u8]) -> bool {
    const LETTER: u64 = u64::from_le_bytes([0x40; 8]);
    fn word(s: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(w)
    }
    let same = |a: u64, b: u64| a | ((b & LETTER) >> 1) == b;
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    if n < 8 {
        return name
            .iter()
            .zip(lower)
            .all(|(a, b)| a | ((b & 0x40) >> 1) == *b);
    }
    // Whole words, then the last eight bytes (overlapping the previous word).
    let mut at = 0;
    while at + 8 < n {
        if !same(word(name, at), word(lower, at)) {
            return false;
        }
        at += 8;
    }
    same(word(name, n - 8), word(lower, n - 8))
}

/// Whether `name` is `Connection`, `TE`, `Upgrade`, `Transfer-Encoding` or
/// one of the fixed hop-by-hop headers (RFC 9110 §7.6.1); the hyper path
/// checks its header maps with this too.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        special(name),
        Special::Connection
            | Special::HopByHop
            | Special::Te
            | Special::Upgrade
            | Special::TransferEncoding
    )
}

/// A `Content-Length` value: digits only (RFC 9110 §8.6), no sign, no list.
/// At most 18 digits, so the sum cannot overflow.
fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// The tokens of a `Connection` value.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Decides whether the fast path serves a parsed request head, and what it
/// needs of it; `Err` names why hyper should serve it instead.
pub fn classify_request(req: &httparse::Request<'_, '_>) -> Result<RequestHead, &'static str> {
    if req.version != Some(1) {
        return Err("not HTTP/1.1");
    }
    let method =
        Method::from_bytes(req.method.unwrap_or("").as_bytes()).map_err(|_| "invalid method")?;
    if method == Method::CONNECT {
        return Err("CONNECT");
    }
    let target = req.path.unwrap_or("");
    if !target.starts_with('/') || target.contains('#') {
        return Err("request target not in origin form");
    }
    let mut head = RequestHead {
        method,
        body: 0,
        close: false,
    };
    let mut length_seen = false;
    for h in req.headers.iter() {
        match special(h.name) {
            Special::ContentLength => {
                if length_seen {
                    return Err("repeated content-length");
                }
                length_seen = true;
                head.body = content_length(h.value).ok_or("invalid content-length")?;
                if head.body > MAX_BUFFERED_BODY {
                    return Err("large request body");
                }
            }
            Special::TransferEncoding => return Err("transfer-encoding"),
            Special::Upgrade => return Err("upgrade"),
            Special::Expect => return Err("expect"),
            Special::Connection => {
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        head.close = true;
                    } else if !t.eq_ignore_ascii_case(b"keep-alive") {
                        return Err("connection options");
                    }
                }
            }
            Special::HopByHop
            | Special::Te
            | Special::ClientId
            | Special::GrpcStatus
            | Special::Other => {}
        }
    }
    Ok(head)
}

/// Writes the head sent to the app: the request line as HTTP/1.1, the
/// client's headers without hop-by-hop ones (`TE: trailers` survives, gRPC
/// needs it) and without its `l5d-client-id`, then `client_id` (the
/// verified identity) if any. `raw` is the head `req` was parsed from.
pub fn write_request_head(
    out: &mut Vec<u8>,
    raw: &[u8],
    req: &httparse::Request<'_, '_>,
    client_id: Option<&[u8]>,
) {
    out.extend_from_slice(req.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    copy_headers(out, raw, req.headers, |h| match special(h.name) {
        Special::Connection | Special::HopByHop | Special::ClientId => false,
        Special::Te => h.value.trim_ascii().eq_ignore_ascii_case(b"trailers"),
        _ => true,
    });
    if let Some(id) = client_id {
        header_line(out, crate::http::L5D_CLIENT_ID.as_bytes(), id);
    }
    out.extend_from_slice(b"\r\n");
}

/// Copies the header lines that `keep` admits from `raw` (the head the
/// headers were parsed from, so they point into it): consecutive kept lines
/// in one copy, as sent. A line not ended by CRLF is rewritten with CRLF.
fn copy_headers(
    out: &mut Vec<u8>,
    raw: &[u8],
    headers: &[httparse::Header<'_>],
    mut keep: impl FnMut(&httparse::Header<'_>) -> bool,
) {
    let base = raw.as_ptr() as usize;
    // Where header i's line starts; `httparse` slices point into `raw`.
    let start = |h: &httparse::Header<'_>| (h.name.as_ptr() as usize).wrapping_sub(base);
    // The header block ends before the empty line that ends the head.
    let block_end = raw.len() - if raw.ends_with(b"\r\n") { 2 } else { 1 };
    let mut run: Option<usize> = None;
    for (i, h) in headers.iter().enumerate() {
        let (from, to) = (start(h), headers.get(i + 1).map_or(block_end, &start));
        let raw_line = from < to && to <= raw.len() && raw[..to].ends_with(b"\r\n");
        let kept = keep(h);
        if kept && raw_line {
            run.get_or_insert(from);
            continue;
        }
        if let Some(r) = run.take() {
            out.extend_from_slice(&raw[r..from.min(raw.len())]);
        }
        if kept {
            header_line(out, h.name.as_bytes(), h.value);
        }
    }
    if let Some(r) = run {
        out.extend_from_slice(&raw[r..block_end]);
    }
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The request headers as policy reads them, without copying into a
/// `HeaderMap`. Names compare case-insensitively (HTTP/1 names are).
#[derive(Debug)]
pub struct Headers<'h, 'b>(pub &'h [httparse::Header<'b>]);

impl RequestHeaders for Headers<'_, '_> {
    fn any_value(&self, name: &http::HeaderName, f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.0
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name.as_str()))
            .any(|h| f(h.value))
    }
}

// ===== response heads (pure)

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body: `HEAD`, 1xx, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// Until the app closes the connection.
    Close,
}

/// What the fast path needs of a response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub framing: Framing,
    /// The app's connection cannot carry another request afterwards.
    pub app_close: bool,
    pub grpc_status: Option<u32>,
}

/// Reads a response head from the app. `Err` is a response the proxy cannot
/// forward safely (the client then gets a 502).
pub fn classify_response(
    rsp: &httparse::Response<'_, '_>,
    head_request: bool,
) -> Result<ResponseHead, &'static str> {
    let status = rsp.code.ok_or("no status")?;
    if status == 101 {
        return Err("101 to a request that did not ask to upgrade");
    }
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    let mut head = ResponseHead {
        status,
        framing: Framing::Empty,
        // HTTP/1.0 connections close unless asked otherwise; never reuse.
        app_close: rsp.version != Some(1),
        grpc_status: None,
    };
    for h in rsp.headers.iter() {
        match special(h.name) {
            Special::ContentLength => {
                let n = content_length(h.value).ok_or("invalid content-length")?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting content-length");
                }
                length = Some(n);
            }
            Special::TransferEncoding => {
                // The final coding decides (RFC 9112 §6.3, rule 4).
                chunked = Some(
                    tokens(h.value)
                        .last()
                        .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")),
                );
            }
            Special::Connection if tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"close")) => {
                head.app_close = true;
            }
            Special::GrpcStatus => head.grpc_status = parse_number(h.value),
            _ => {}
        }
    }
    head.framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    if head.framing == Framing::Close {
        head.app_close = true;
    }
    Ok(head)
}

/// Writes the head sent to the client: the status line as HTTP/1.1, the
/// app's headers without hop-by-hop ones (including those the app's
/// `Connection` lists), and `connection: close` when the proxy closes the
/// client connection after this response. `Transfer-Encoding` stays (the
/// body passes through as encoded); a `Content-Length` beside it is dropped
/// (RFC 9112 §6.1: a sender must not send both). `raw` is the head `rsp`
/// was parsed from.
pub fn write_response_head(
    out: &mut Vec<u8>,
    raw: &[u8],
    rsp: &httparse::Response<'_, '_>,
    close_client: bool,
) {
    let status = rsp.code.unwrap_or(502);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(status).as_slice());
    out.push(b' ');
    out.extend_from_slice(rsp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // One pass for what decides the others: the names `Connection` lists
    // (beyond keep-alive/close) and whether a coding is present.
    let mut any_coding = false;
    let mut listed: Vec<&[u8]> = Vec::new();
    for h in rsp.headers.iter() {
        match special(h.name) {
            Special::TransferEncoding => any_coding = true,
            Special::Connection => listed.extend(tokens(h.value).filter(|t| {
                !t.eq_ignore_ascii_case(b"keep-alive") && !t.eq_ignore_ascii_case(b"close")
            })),
            _ => {}
        }
    }
    copy_headers(out, raw, rsp.headers, |h| match special(h.name) {
        Special::Connection | Special::HopByHop | Special::Te | Special::Upgrade => false,
        // The body passes through as encoded, so its coding stays.
        Special::TransferEncoding => true,
        Special::ContentLength => !any_coding,
        _ => !listed
            .iter()
            .any(|t| t.eq_ignore_ascii_case(h.name.as_bytes())),
    });
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn itoa3(n: u16) -> [u8; 3] {
    let n = n.min(999);
    [
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}

/// A response the proxy makes itself (403, 502), as HTTP/1.1 bytes.
pub fn write_own_response(out: &mut Vec<u8>, rsp: &Response<ProxyBody>, close_client: bool) {
    let status = rsp.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in rsp.headers() {
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !rsp.headers().contains_key(http::header::CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

// ===== chunked bodies (pure)

/// Tracks a chunked body (RFC 9112 §7.1) passing through unchanged, to
/// find where it ends. Strict like hyper: CRLF line ends, hex sizes up to
/// 2^60, no newline inside chunk extensions, bounded extensions and
/// trailers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    /// Bytes of extension or trailer seen (bounded).
    extra: usize,
}

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    SizeStart,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Chunk extensions and trailers together may take this much per body.
const MAX_CHUNK_EXTRA: usize = 16 * 1024;

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes the body bytes at the start of `data`; returns how many
    /// belong to the body (all of `data` unless the body ended inside it).
    pub fn advance(&mut self, data: &[u8]) -> Result<usize, &'static str> {
        use ChunkState::*;
        let mut i = 0;
        while i < data.len() && self.state != Done {
            let b = data[i];
            match self.state {
                SizeStart | Size => match hex(b) {
                    Some(d) => {
                        if self.size >> 60 != 0 {
                            return Err("chunk size too large");
                        }
                        self.size = self.size << 4 | u64::from(d);
                        self.state = Size;
                    }
                    None if self.state == SizeStart => return Err("missing chunk size"),
                    None => self.state = self.after_size(b)?,
                },
                SizeLws => self.state = self.after_size(b)?,
                Extension => match b {
                    b'\r' => self.state = SizeLf,
                    b'\n' => return Err("newline in chunk extension"),
                    _ => self.count_extra()?,
                },
                SizeLf => {
                    let next = if self.size == 0 { TrailerStart } else { Data };
                    self.state = expect(b, b'\n', next, "chunk size line not ended by CRLF")?;
                }
                Data => {
                    let take =
                        (data.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => self.state = expect(b, b'\r', DataLf, "chunk data not followed by CRLF")?,
                DataLf => {
                    self.state = expect(b, b'\n', SizeStart, "chunk data not followed by CRLF")?
                }
                TrailerStart => {
                    self.state = if b == b'\r' { EndLf } else { Trailer };
                    self.count_extra()?;
                }
                Trailer => {
                    match b {
                        b'\r' => self.state = TrailerLf,
                        b'\n' => return Err("trailer line not ended by CRLF"),
                        _ => {}
                    }
                    self.count_extra()?;
                }
                TrailerLf => {
                    self.state = expect(b, b'\n', TrailerStart, "trailer line not ended by CRLF")?
                }
                EndLf => self.state = expect(b, b'\n', Done, "chunked body not ended by CRLF")?,
                Done => {}
            }
            i += 1;
        }
        Ok(i)
    }

    fn after_size(&mut self, b: u8) -> Result<ChunkState, &'static str> {
        match b {
            b' ' | b'\t' => Ok(ChunkState::SizeLws),
            b';' => Ok(ChunkState::Extension),
            b'\r' => Ok(ChunkState::SizeLf),
            _ => Err("invalid chunk size line"),
        }
    }

    fn count_extra(&mut self) -> Result<(), &'static str> {
        self.extra += 1;
        if self.extra > MAX_CHUNK_EXTRA {
            return Err("chunk extensions or trailers too long");
        }
        Ok(())
    }
}

/// `next` if `b` is the `want`ed line-end byte, else the error `why`.
fn expect(
    b: u8,
    want: u8,
    next: ChunkState,
    why: &'static str,
) -> Result<ChunkState, &'static str> {
    if b == want {
        Ok(next)
    } else {
        Err(why)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

// ===== the connection

/// The limits that apply to the fast path (from `--http1-max-head-bytes`,
/// `--http-header-read-timeout`, `--http-idle-timeout`).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_head: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// What to do with one parsed request, decided without awaiting.
enum Step {
    Handoff(&'static str),
    /// Answered by the proxy (a denial): `out` holds the response; the
    /// request's body is skipped.
    Answer {
        head_len: usize,
        body: u64,
        close: bool,
    },
    /// Sent to the app: `out` holds the rebuilt head.
    Forward {
        head_len: usize,
        request: RequestHead,
        start: Instant,
    },
}

/// Serves HTTP/1.1 requests of one client connection until it ends or a
/// request needs hyper.
pub async fn serve<I>(io: I, conn: &Arc<HttpConn>, limits: &Limits, drain: &Signal) -> Served<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut s = Session {
        io,
        buf: BytesMut::new(),
        app: None,
        conn,
        limits,
        idle: None,
        last_active: Instant::now(),
        drain,
    };
    let res = s.run().await;
    if let Some(app) = s.app.take() {
        conn.pool().checkin_raw(app);
    }
    match res {
        Ok(None) => Served::Closed(Ok(())),
        Ok(Some(why)) => Served::Handoff {
            io: s.io,
            buffered: s.buf,
            why,
        },
        Err(e) => Served::Closed(Err(e)),
    }
}

struct Session<'a, I> {
    io: I,
    /// Client bytes not yet consumed: the current request head first.
    buf: BytesMut,
    /// This client connection's own connection to the app.
    app: Option<TcpStream>,
    conn: &'a Arc<HttpConn>,
    limits: &'a Limits,
    /// The idle timer, created once and moved only when it fires early:
    /// re-arming a timer per request costs more than the request's parsing.
    idle: Option<Pin<Box<Sleep>>>,
    /// When the last exchange ended.
    last_active: Instant,
    /// SIGTERM: finish the request in flight, then close.
    drain: &'a Signal,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Session<'_, I> {
    /// `Ok(Some(why))`: hand off; `Ok(None)`: closed cleanly.
    async fn run(&mut self) -> Result<Option<&'static str>, Error> {
        let mut out = Vec::new();
        // One registration for the whole connection, not one per request.
        let drain = self.drain;
        let mut drained = std::pin::pin!(drain.watch());
        loop {
            // read a head (waiting idle first when nothing is buffered)
            if self.buf.is_empty() {
                // An idle connection keeps no buffer: the next request
                // allocates what its head needs (one small allocation).
                out = Vec::new();
                if !self.wait_request(drained.as_mut()).await? {
                    return Ok(None);
                }
            }
            // The head timeout starts when a head turns out incomplete: most
            // arrive whole, and then no clock is read for it.
            let mut head_deadline = None;
            let step = loop {
                out.clear();
                if let Some(step) = self.prepare(&mut out) {
                    break step;
                }
                if self.buf.len() > self.limits.max_head {
                    return Ok(Some("request head over the limit"));
                }
                let deadline = *head_deadline
                    .get_or_insert_with(|| Instant::now() + self.limits.header_read_timeout);
                if self.read_client(deadline, Error::HeaderTimeout).await? == 0 {
                    // The client closed within a head: nothing to answer.
                    return Ok(None);
                }
            };
            // authorize happened in prepare; now body, forward, respond
            let close = match step {
                Step::Handoff(why) => return Ok(Some(why)),
                Step::Answer {
                    head_len,
                    body,
                    close,
                } => {
                    let complete = self.skip_body(head_len, body).await;
                    self.write_client(&out).await?;
                    self.last_active = Instant::now();
                    !complete || close
                }
                Step::Forward {
                    head_len,
                    request,
                    start,
                } => {
                    self.take_body(head_len, request.body, &mut out).await?;
                    // Boxed: its state (≈ 300 bytes) exists only during a
                    // request, and an idle connection's task must stay small
                    // (4.3 → 4.0 KiB per idle connection, for ≈ 240
                    // instructions per request). It sets `last_active`.
                    Box::pin(self.exchange(&request, start, &mut out)).await?
                }
            };
            if close || self.drain.is_fired() {
                return Ok(None);
            }
        }
    }

    /// Waits for the first bytes of the next request, holding no buffer
    /// meanwhile. `false`: the client closed, went idle too long, or the
    /// proxy is draining.
    async fn wait_request(&mut self, mut drained: Pin<&mut Watch<'_>>) -> Result<bool, Error> {
        self.buf = BytesMut::new();
        let mut first = [0u8; IDLE_READ];
        let timeout = self.limits.idle_timeout;
        let due = self.last_active + timeout;
        let idle = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        let peer = self.conn.authz().conn().peer;
        let mut read = std::pin::pin!(self.io.read(&mut first));
        let n = std::future::poll_fn(|cx| {
            // No lock per request: `Watch` reads a flag after its first poll.
            if drained.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(0));
            }
            if let Poll::Ready(r) = read.as_mut().poll(cx) {
                return Poll::Ready(r.map_err(Error::Client));
            }
            while idle.as_mut().poll(cx).is_ready() {
                if Instant::now() >= due {
                    debug!(client = %peer, "closing idle HTTP connection");
                    return Poll::Ready(Ok(0));
                }
                idle.as_mut().reset(due);
            }
            Poll::Pending
        })
        .await?;
        if n == 0 {
            return Ok(false);
        }
        // Most heads fit a small allocation; a longer one grows it.
        let mut buf = BytesMut::with_capacity(n.max(1024));
        buf.extend_from_slice(&first[..n]);
        self.buf = buf;
        Ok(true)
    }

    /// Reads more client bytes before `deadline`; 0 at end of stream.
    async fn read_client(&mut self, deadline: Instant, late: Error) -> Result<usize, Error> {
        make_room(&mut self.buf);
        match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)).await {
            Ok(r) => r.map_err(Error::Client),
            Err(_) => Err(late),
        }
    }

    async fn write_client(&mut self, data: &[u8]) -> Result<(), Error> {
        self.io.write_all(data).await.map_err(Error::Client)?;
        self.io.flush().await.map_err(Error::Client)
    }

    /// Parses the buffered head, decides, and writes what to send into
    /// `out`: the rebuilt head for the app, or the proxy's own answer.
    /// `None` while the head is incomplete.
    fn prepare(&mut self, out: &mut Vec<u8>) -> Option<Step> {
        // Uninitialized: filling 100 empty headers costs more than parsing.
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let head_len = match req.parse_with_uninit_headers(&self.buf, &mut headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return None,
            Err(_) => return Some(Step::Handoff("request head does not parse")),
        };
        if head_len > self.limits.max_head {
            return Some(Step::Handoff("request head over the limit"));
        }
        let request = match classify_request(&req) {
            Ok(r) => r,
            Err(why) => return Some(Step::Handoff(why)),
        };
        // The rebuilt head is about as long, plus an identity; the response
        // head and the first body bytes reuse the allocation.
        out.reserve(head_len + 256);
        let start = Instant::now();
        self.conn.request_started();
        let path = req.path.unwrap_or("/");
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let headers = Headers(req.headers);
        Some(
            match self.conn.authz().check(&request.method, path, &headers) {
                Err(denied) => {
                    // Bodies here are small (MAX_BUFFERED_BODY), so they are
                    // read and skipped, and the connection stays usable.
                    write_own_response(out, &denied, request.close);
                    self.conn
                        .record_response(denied.status(), None, start.elapsed());
                    Step::Answer {
                        head_len,
                        body: request.body,
                        close: request.close,
                    }
                }
                Ok(()) => {
                    write_request_head(
                        out,
                        &self.buf[..head_len],
                        &req,
                        self.conn.client_id().map(|v| v.as_bytes()),
                    );
                    Step::Forward {
                        head_len,
                        request,
                        start,
                    }
                }
            },
        )
    }

    /// Reads the body after the head into `out` and consumes both.
    async fn take_body(
        &mut self,
        head_len: usize,
        body: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let end = head_len + body as usize;
        while self.buf.len() < end {
            let deadline = Instant::now() + self.limits.idle_timeout;
            if self.read_client(deadline, Error::BodyTimeout).await? == 0 {
                return Err(Error::Client(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        out.extend_from_slice(&self.buf[head_len..end]);
        self.buf.advance(end);
        Ok(())
    }

    /// Consumes a refused request's body; `false` if it did not arrive in
    /// time (the connection is then closed after the answer).
    async fn skip_body(&mut self, head_len: usize, body: u64) -> bool {
        let end = head_len + body as usize;
        let deadline = Instant::now() + crate::http::DENIED_BODY_DRAIN_TIME;
        while self.buf.len() < end {
            if !matches!(self.read_client(deadline, Error::BodyTimeout).await, Ok(n) if n > 0) {
                self.buf.clear();
                return false;
            }
        }
        self.buf.advance(end);
        true
    }

    /// Sends the request in `out` to the app and copies the response to the
    /// client. Returns whether the client connection closes afterwards.
    async fn exchange(
        &mut self,
        request: &RequestHead,
        start: Instant,
        out: &mut Vec<u8>,
    ) -> Result<bool, Error> {
        let retryable = request.method.is_idempotent();
        let head_request = request.method == Method::HEAD;
        let mut rbuf = BytesMut::with_capacity(4096);
        let mut attempt = 0;
        let mut app = loop {
            attempt += 1;
            let (app, reused) = match self.app_connection().await {
                Ok(c) => c,
                Err(e) => return self.app_failed(e, request, start).await,
            };
            // Nothing came back, so an idempotent request may be sent again.
            match send_and_read_head(app, out, &mut rbuf).await {
                Ok(app) => break app,
                Err(e) if reused && retryable && attempt == 1 => {
                    debug!(error = %e, "the application closed an idle connection; retrying on a new one");
                    rbuf.clear();
                }
                Err(e) => return self.app_failed(e, request, start).await,
            }
        };
        // forward interim (1xx) heads, then the final head and its body
        loop {
            out.clear();
            let closing = request.close || self.drain.is_fired();
            let parsed = response_head(&rbuf, head_request, closing, out);
            let (head_len, head, close) = match parsed {
                Ok(Some(p)) => p,
                Ok(None) => match read_more(&mut app, &mut rbuf).await {
                    Ok(0) => {
                        return self
                            .app_failed(
                                "the application closed the connection within a response head"
                                    .into(),
                                request,
                                start,
                            )
                            .await
                    }
                    Ok(_) => continue,
                    Err(e) => return self.app_failed(e.to_string(), request, start).await,
                },
                Err(e) => return self.app_failed(e, request, start).await,
            };
            rbuf.advance(head_len);
            if (100..200).contains(&head.status) {
                self.write_client(out).await?;
                continue;
            }
            // One clock read for the latency and the idle timer's start.
            let now = Instant::now();
            let latency = now.duration_since(start);
            self.last_active = now;
            let status = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let body = self.copy_body(&mut app, &mut rbuf, head.framing, out).await;
            self.conn.record_response(status, head.grpc_status, latency);
            body?;
            if !head.app_close && rbuf.is_empty() {
                self.app = Some(app);
            }
            return Ok(close);
        }
    }

    /// The connection for the next request: this client's own, a pooled
    /// one, or a new one. `true` if it carried requests before.
    async fn app_connection(&mut self) -> Result<(TcpStream, bool), String> {
        if let Some(app) = self.app.take() {
            if still_open(&app) {
                return Ok((app, true));
            }
        }
        let pool = self.conn.pool();
        if let Some(app) = pool.checkout_raw() {
            return Ok((app, true));
        }
        pool.connect_raw()
            .await
            .map(|a| (a, false))
            .map_err(|e| e.to_string())
    }

    /// Answers 502 when the app could not be asked or gave no usable
    /// response head; the client connection stays usable.
    async fn app_failed(
        &mut self,
        error: String,
        request: &RequestHead,
        start: Instant,
    ) -> Result<bool, Error> {
        let conn = self.conn.authz().conn();
        warn!(port = conn.port, client = %conn.peer, error = %error, "request to the application failed");
        let rsp = respond(Refusal::AppUnavailable, false);
        let mut out = Vec::with_capacity(128);
        write_own_response(&mut out, &rsp, request.close);
        self.last_active = Instant::now();
        self.conn
            .record_response(rsp.status(), None, self.last_active.duration_since(start));
        self.write_client(&out).await?;
        Ok(request.close)
    }

    /// Copies the response: `out` (the head) with the body bytes already
    /// read, then the rest as framed.
    async fn copy_body(
        &mut self,
        app: &mut TcpStream,
        rbuf: &mut BytesMut,
        framing: Framing,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let mut remaining = match framing {
            Framing::Empty => 0,
            Framing::Length(n) => n,
            Framing::Chunked | Framing::Close => u64::MAX,
        };
        let mut chunked = Chunked::default();
        // The head and what came with it go out in one write.
        let mut first = true;
        loop {
            let take = match framing {
                Framing::Chunked => chunked.advance(rbuf).map_err(|e| Error::App(e.into()))?,
                _ => rbuf
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX)),
            };
            if first {
                out.extend_from_slice(&rbuf[..take]);
                self.io.write_all(out).await.map_err(Error::Client)?;
                first = false;
            } else if take > 0 {
                self.io
                    .write_all(&rbuf[..take])
                    .await
                    .map_err(Error::Client)?;
            }
            rbuf.advance(take);
            if framing != Framing::Chunked && framing != Framing::Close {
                remaining -= take as u64;
            }
            let done = match framing {
                Framing::Chunked => chunked.is_done(),
                Framing::Close => false,
                _ => remaining == 0,
            };
            if done {
                break;
            }
            if !rbuf.is_empty() {
                continue;
            }
            rbuf.reserve(READ_CHUNK);
            let n = app
                .read_buf(rbuf)
                .await
                .map_err(|e| Error::App(e.to_string()))?;
            if n == 0 {
                if framing == Framing::Close {
                    break;
                }
                return Err(Error::App(
                    "the application closed the connection within a response body".into(),
                ));
            }
        }
        self.io.flush().await.map_err(Error::Client)
    }
}

/// Whether an idle connection to the app is still open: a closed one has
/// reported readable (EOF), so this costs no system call while it is open.
pub(crate) fn still_open(app: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(app.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Parses the response head at the start of `rbuf` and writes what the
/// client gets into `out`. `Ok(None)` while the head is incomplete; `Err`
/// names a head that cannot be forwarded. `closing`: the client connection
/// closes after this response anyway (it asked to, or the proxy drains).
/// Returns the head's length, the head, and whether the client connection
/// closes after it.
fn response_head(
    rbuf: &[u8],
    head_request: bool,
    closing: bool,
    out: &mut Vec<u8>,
) -> Result<Option<(usize, ResponseHead, bool)>, String> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut rsp = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut rsp,
        rbuf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if rbuf.len() > MAX_RESPONSE_HEAD => {
            return Err("response head too large".into())
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let head = classify_response(&rsp, head_request)?;
    let interim = (100..200).contains(&head.status);
    let close = !interim && (closing || head.framing == Framing::Close);
    write_response_head(out, &rbuf[..n], &rsp, close);
    Ok(Some((n, head, close)))
}

/// Writes the request and reads the first bytes of the response. An error
/// means nothing came back (the request may be sent again).
async fn send_and_read_head(
    mut app: TcpStream,
    out: &[u8],
    rbuf: &mut BytesMut,
) -> Result<TcpStream, String> {
    if let Err(e) = app.write_all(out).await {
        return Err(format!("writing the request: {e}"));
    }
    match read_more(&mut app, rbuf).await {
        Ok(0) => Err("the application closed the connection".into()),
        Ok(_) => Ok(app),
        Err(e) => Err(e.to_string()),
    }
}

async fn read_more(app: &mut TcpStream, rbuf: &mut BytesMut) -> io::Result<usize> {
    make_room(rbuf);
    app.read_buf(rbuf).await
}

/// A decimal header value (`:status`, `grpc-status`), surrounding
/// whitespace allowed.
pub(crate) fn parse_number(v: &[u8]) -> Option<u32> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// Grows a read buffer when less than 1 KiB is free.
pub(crate) fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_req<'h, 'b>(
        raw: &'b [u8],
        headers: &'h mut [httparse::Header<'b>],
    ) -> httparse::Request<'h, 'b> {
        let mut req = httparse::Request::new(headers);
        assert!(req.parse(raw).unwrap().is_complete(), "{raw:?}");
        req
    }

    fn classify(raw: &str) -> Result<RequestHead, &'static str> {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        classify_request(&parse_req(raw.as_bytes(), &mut h))
    }

    /// The names `special` knows, each with what it must return.
    const SPECIAL_NAMES: [(&str, Special); 12] = [
        ("te", Special::Te),
        ("expect", Special::Expect),
        ("upgrade", Special::Upgrade),
        ("connection", Special::Connection),
        ("keep-alive", Special::HopByHop),
        ("grpc-status", Special::GrpcStatus),
        ("l5d-client-id", Special::ClientId),
        ("content-length", Special::ContentLength),
        ("proxy-connection", Special::HopByHop),
        ("transfer-encoding", Special::TransferEncoding),
        ("proxy-authenticate", Special::HopByHop),
        ("proxy-authorization", Special::HopByHop),
    ];

    #[test]
    fn special_names_in_any_case_and_near_misses() {
        for (name, want) in SPECIAL_NAMES {
            assert_eq!(special(name), want, "{name}");
            assert_eq!(special(&name.to_ascii_uppercase()), want, "{name}");
            // Every other letter upper-case: the case bit differs per word.
            let mixed: String = name
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            assert_eq!(special(&mixed), want, "{mixed}");
            // One byte changed anywhere (first, middle, last; in the
            // overlapping tail word too) is no longer that name.
            for at in [0, name.len() / 2, name.len() - 1] {
                let mut b = name.as_bytes().to_vec();
                b[at] = if b[at] == b'x' { b'y' } else { b'x' };
                let near = String::from_utf8(b).unwrap();
                assert_ne!(special(&near), want, "{near}");
            }
        }
        // Bytes that equal a letter or '-' only with the case bit forced
        // (0x0D | 0x20 = '-', 0x15 | 0x20 = '5') must not match.
        assert_eq!(special("keep\ralive"), Special::Other);
        assert_eq!(special("l\u{15}d-client-id"), Special::Other);
        assert_eq!(special("content-type"), Special::Other);
        assert_eq!(special("date"), Special::Other);
    }

    proptest::proptest! {
        /// The word-wise comparison agrees with `eq_ignore_ascii_case` for
        /// any bytes against every name it is used with.
        #[test]
        fn eq_lower_is_eq_ignore_ascii_case(
            pick in 0..SPECIAL_NAMES.len(),
            flips in proptest::collection::vec(proptest::prelude::any::<(u8, u8)>(), 0..3),
            upper in proptest::prelude::any::<u32>(),
        ) {
            let lower = SPECIAL_NAMES[pick].0.as_bytes();
            let mut name: Vec<u8> = lower
                .iter()
                .enumerate()
                .map(|(i, b)| if upper >> (i % 32) & 1 == 1 { b.to_ascii_uppercase() } else { *b })
                .collect();
            for (at, byte) in flips {
                let at = usize::from(at) % name.len();
                name[at] = byte;
            }
            proptest::prop_assert_eq!(eq_lower(&name, lower), name.eq_ignore_ascii_case(lower));
        }
    }

    #[test]
    fn content_length_digits_only() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"13"), Some(13));
        assert_eq!(
            content_length(b"999999999999999999"),
            Some(999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"1x",
            b"+1",
            b"-1",
            b" 1",
            b"1,1",
            b"1234567890123456789",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn requests_the_fast_path_serves() {
        let get = classify("GET /a?b=1 HTTP/1.1\r\nHost: web\r\n\r\n").unwrap();
        assert_eq!((get.method, get.body, get.close), (Method::GET, 0, false));
        let post = classify("POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n").unwrap();
        assert_eq!(post.body, 10);
        let close = classify("GET / HTTP/1.1\r\nConnection: Keep-Alive, close\r\n\r\n").unwrap();
        assert!(close.close);
        assert!(
            !classify("GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .close
        );
    }

    #[test]
    fn requests_handed_to_hyper() {
        let big = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BUFFERED_BODY + 1
        );
        for raw in [
            "GET / HTTP/1.0\r\n\r\n",
            "CONNECT web:443 HTTP/1.1\r\n\r\n",
            "GET http://web/ HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "GET /a#frag HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1,1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            "PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nConnection: close, x-secret\r\nx-secret: 1\r\n\r\n",
            &big,
        ] {
            assert!(classify(raw).is_err(), "{raw:?} should be handed off");
        }
    }

    fn rebuilt(raw: &str, id: Option<&str>) -> String {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let req = parse_req(raw.as_bytes(), &mut h);
        let mut out = Vec::new();
        write_request_head(&mut out, raw.as_bytes(), &req, id.map(str::as_bytes));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_heads_lose_hop_by_hop_headers_and_spoofed_identities() {
        let raw = "GET /p?q HTTP/1.1\r\nHost: web\r\nL5D-Client-Id: admin.evil\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\nProxy-Authorization: secret\r\nTE: gzip\r\nAccept: */*\r\n\r\n";
        assert_eq!(
            rebuilt(raw, Some("web.ns.serviceaccount.identity.linkerd.cluster.local")),
            "GET /p?q HTTP/1.1\r\nHost: web\r\nAccept: */*\r\nl5d-client-id: web.ns.serviceaccount.identity.linkerd.cluster.local\r\n\r\n"
        );
        assert_eq!(
            rebuilt(
                "POST /g HTTP/1.1\r\nte: trailers\r\ncontent-length: 3\r\n\r\n",
                None
            ),
            "POST /g HTTP/1.1\r\nte: trailers\r\ncontent-length: 3\r\n\r\n"
        );
        // Bare LF line ends from the client become CRLF.
        assert_eq!(
            rebuilt("GET / HTTP/1.1\nHost: a\n\n", None),
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        );
    }

    fn response(raw: &str, head_request: bool) -> Result<ResponseHead, &'static str> {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut rsp = httparse::Response::new(&mut h);
        assert!(rsp.parse(raw.as_bytes()).unwrap().is_complete(), "{raw:?}");
        classify_response(&rsp, head_request)
    }

    #[test]
    fn response_framing_follows_rfc9112() {
        let f = |raw: &str, head: bool| response(raw, head).map(|r| r.framing);
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            Ok(Framing::Empty)
        );
        assert_eq!(
            f("HTTP/1.1 204 No Content\r\n\r\n", false),
            Ok(Framing::Empty)
        );
        assert_eq!(
            f(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            Ok(Framing::Empty)
        );
        assert_eq!(
            f("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false),
            Ok(Framing::Empty)
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                false
            ),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                false
            ),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            Ok(Framing::Close)
        );
        assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n", false), Ok(Framing::Close));
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
                false
            ),
            Ok(Framing::Length(5))
        );
        assert!(f(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            false
        )
        .is_err());
        assert!(f("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false).is_err());
        assert!(f("HTTP/1.1 101 Switching Protocols\r\n\r\n", false).is_err());
    }

    #[test]
    fn app_connections_are_reused_only_when_the_app_keeps_them() {
        let close = |raw: &str| response(raw, false).unwrap().app_close;
        assert!(!close("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(close(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(close("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(close("HTTP/1.1 200 OK\r\n\r\n"), "close-delimited");
        let grpc = response(
            "HTTP/1.1 200 OK\r\ngrpc-status: 7\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(grpc.grpc_status, Some(7));
    }

    fn rebuilt_response(raw: &str, close: bool) -> String {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut rsp = httparse::Response::new(&mut h);
        assert!(rsp.parse(raw.as_bytes()).unwrap().is_complete());
        let mut out = Vec::new();
        write_response_head(&mut out, raw.as_bytes(), &rsp, close);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn response_heads_lose_hop_by_hop_headers() {
        let raw = "HTTP/1.0 200 Fine\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nUpgrade: h2\r\nContent-Length: 2\r\nServer: app\r\n\r\n";
        assert_eq!(
            rebuilt_response(raw, false),
            "HTTP/1.1 200 Fine\r\nContent-Length: 2\r\nServer: app\r\n\r\n"
        );
        assert_eq!(
            rebuilt_response("HTTP/1.1 200 OK\nA: 1\r\nB: 2\nC: 3\r\n\n", false),
            "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
            "every line ends with CRLF"
        );
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n";
        assert_eq!(
            rebuilt_response(chunked, true),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn own_responses_carry_the_proxy_error() {
        let mut out = Vec::new();
        write_own_response(&mut out, &respond(Refusal::Unauthorized, false), false);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 403 Forbidden\r\nl5d-proxy-error: unauthorized request on route\r\ncontent-length: 0\r\n\r\n"
        );
        let mut out = Vec::new();
        write_own_response(&mut out, &respond(Refusal::AppUnavailable, false), true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{text}");
        assert!(text.ends_with("connection: close\r\n\r\n"), "{text}");
    }

    #[test]
    fn policy_reads_parsed_headers_case_insensitively() {
        let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let req = parse_req(
            b"GET / HTTP/1.1\r\nX-Tenant: a\r\nx-tenant: b\r\n\r\n",
            &mut h,
        );
        let headers = Headers(req.headers);
        let name = http::HeaderName::from_static("x-tenant");
        assert!(headers.any_value(&name, &mut |v| v == b"b"));
        assert!(!headers.any_value(&name, &mut |v| v == b"c"));
    }

    const BODY: &[u8] =
        b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";

    #[test]
    fn chunked_bodies_end_where_they_end_at_every_split() {
        let mut data = BODY.to_vec();
        data.extend_from_slice(b"HTTP/1.1 200 OK\r\n"); // the next response
        for split in 0..=BODY.len() {
            let mut c = Chunked::default();
            let a = c.advance(&data[..split]).unwrap();
            assert_eq!(a, split);
            assert!(!c.is_done() || split == BODY.len());
            let b = c.advance(&data[split..]).unwrap();
            assert_eq!(a + b, BODY.len(), "split at {split}");
            assert!(c.is_done());
        }
        // Byte by byte.
        let mut c = Chunked::default();
        let n: usize = BODY.chunks(1).map(|b| c.advance(b).unwrap()).sum();
        assert_eq!(n, BODY.len());
        assert!(c.is_done());
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        for bad in [
            &b"\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5;ext\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"g\r\n",
            b"11111111111111111\r\n",
            b"0\r\nx-trailer: 1\n\r\n",
            b"0\r\n\rX",
        ] {
            assert!(Chunked::default().advance(bad).is_err(), "{bad:?}");
        }
        let long_ext = [b"1;".as_slice(), &[b'x'; MAX_CHUNK_EXTRA + 1]].concat();
        assert!(Chunked::default().advance(&long_ext).is_err());
    }
}
