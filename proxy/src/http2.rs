//! The HTTP/2 relay: an HTTP/2 client connection forwarded frame by frame
//! to an HTTP/2 connection to the app that belongs to it, with every
//! request authorized.
//!
//! Terminating HTTP/2 on both sides (hyper's server and client over the
//! `h2` crate) costs about 60 k instructions per request: two stream state
//! machines, two flow controllers, and tasks per request (see
//! `benches/RESULTS.md`). Here one task relays frames between the client
//! and a connection to the app that belongs to this client, so stream ids,
//! flow control and SETTINGS stay end to end, and the proxy does only what
//! enforcement needs:
//!
//! - The **app connection** is opened for the first allowed request. Until
//!   then the proxy is the client's peer: it sends its own SETTINGS,
//!   acknowledges the client's and answers PING, and replays the client's
//!   SETTINGS and window updates to the app when it starts (their ACKs are
//!   then the proxy's to swallow). A client whose requests are all denied
//!   never reaches the app.
//! - **Requests** (the client's header blocks) are decoded with HPACK
//!   (`hpack.rs`), validated (pseudo-headers, lowercase names, no
//!   connection-specific fields, no CR/LF/NUL), authorized by the same
//!   [`HttpAuthz::check`](crate::authz::HttpAuthz::check) as the other
//!   paths, and re-encoded for the app without the client's
//!   `l5d-client-id` (the verified identity added). The encoder never
//!   indexes, so the app's HPACK table holds nothing the proxy must track.
//! - **Denied** requests are answered on the stream (403 or gRPC
//!   PERMISSION_DENIED, headers only) and never reach the app; their DATA is
//!   dropped and credited back to the client's connection window.
//! - **Responses** pass verbatim (the app encodes for the client's HPACK
//!   table); a mirror decoder reads `:status` and `grpc-status` for the
//!   metrics. The proxy's own frames wait until no response header block is
//!   in progress, so they never split one.
//! - **SETTINGS** are relayed with the proxy's limits applied: server push
//!   off, concurrent streams and header-list size at most the proxy's,
//!   frame and HPACK table sizes capped (frames are buffered whole).
//! - Streams reset by the client before their response (rapid reset) and
//!   streams the proxy resets for malformed requests are limited as with
//!   hyper (`--http2-max-pending-accept-resets`,
//!   `--http2-max-local-error-resets`): past them, GOAWAY
//!   ENHANCE_YOUR_CALM.
//!
//! [`Relay`] is the pure part (bytes in, bytes out; tested and fuzzed
//! without sockets); [`serve`] drives it over the two connections.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::{HeaderName, Method, Response, StatusCode};
use portcullis_policy::RequestHeaders;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use crate::authz::{is_grpc, respond, Refusal};
use crate::forward::ForwardError;
use crate::hpack::{self, Decoder};
use crate::http::{grpc_status, HttpConn, Pool, ProxyBody, L5D_CLIENT_ID};
use crate::http1::{make_room, parse_number};
use crate::signal::{Signal, Watch};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

// Error codes (RFC 9113 §7).
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const INTERNAL_ERROR: u32 = 0x2;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

// Settings (RFC 9113 §6.5.2, RFC 8441).
const HEADER_TABLE_SIZE: u16 = 0x1;
const ENABLE_PUSH: u16 = 0x2;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
const MAX_FRAME_SIZE: u16 = 0x5;
const MAX_HEADER_LIST_SIZE: u16 = 0x6;
const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;

/// The largest frame either side may send through the relay (frames are
/// buffered whole): both sides' SETTINGS_MAX_FRAME_SIZE are capped to it.
pub const MAX_FRAME: usize = 64 * 1024;
/// The frame size every peer accepts before its SETTINGS say otherwise.
const DEFAULT_MAX_FRAME: usize = 16_384;
/// HPACK tables the relay mirrors are capped to this (SETTINGS rewritten).
pub const MAX_TABLE: u32 = 64 * 1024;
const DEFAULT_TABLE: usize = 4_096;
/// Refused streams remembered, so their late frames are dropped, not
/// forwarded (a client stops sending soon after RST_STREAM).
const REFUSED_MEMORY: usize = 64;

/// The relay's limits (from the `--http2-*` flags).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_concurrent_streams: u32,
    pub max_header_list: u32,
    pub max_pending_resets: usize,
    pub max_local_resets: usize,
    pub idle_timeout: Duration,
}

/// What the relay asks of the rest of the proxy per request.
pub trait Gate {
    /// Counts a request and authorizes it; `Err` is the proxy's answer
    /// (already counted as a response).
    fn request(
        &self,
        method: &Method,
        path: &str,
        headers: &dyn RequestHeaders,
    ) -> Result<(), Response<ProxyBody>>;
    /// The verified client identity, sent to the app as `l5d-client-id`.
    fn client_id(&self) -> Option<&[u8]>;
    /// A forwarded request's response ended.
    fn response(&self, status: u16, grpc_status: Option<u32>, latency: Duration);
}

impl Gate for HttpConn {
    fn request(
        &self,
        method: &Method,
        path: &str,
        headers: &dyn RequestHeaders,
    ) -> Result<(), Response<ProxyBody>> {
        self.request_started();
        self.authz()
            .check(method, path, headers)
            .inspect_err(|rsp| {
                self.record_response(rsp.status(), grpc_status(rsp.headers()), Duration::ZERO);
            })
    }

    fn client_id(&self) -> Option<&[u8]> {
        HttpConn::client_id(self).map(|v| v.as_bytes())
    }

    fn response(&self, status: u16, grpc_status: Option<u32>, latency: Duration) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        self.record_response(status, grpc_status, latency);
    }
}

/// A connection error: the relay sends GOAWAY with `code` to the client
/// and closes both connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{why} (HTTP/2 error {code:#x}, {side})")]
pub struct ConnError {
    pub code: u32,
    pub why: &'static str,
    pub side: Side,
}

/// Which peer broke the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    App,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Client => "from the client",
            Side::App => "from the application",
        })
    }
}

fn client_err(code: u32, why: &'static str) -> ConnError {
    ConnError {
        code,
        why,
        side: Side::Client,
    }
}

fn app_err(code: u32, why: &'static str) -> ConnError {
    ConnError {
        code,
        why,
        side: Side::App,
    }
}

// ===== frames

/// A frame header (RFC 9113 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

fn parse_head(b: &[u8]) -> Head {
    Head {
        len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
        kind: b[3],
        flags: b[4],
        stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
    }
}

/// The head of the first frame in `input` once all of it has arrived
/// (room is reserved for the rest meanwhile).
fn complete_frame(input: &mut BytesMut, side: Side) -> Result<Option<Head>, ConnError> {
    if input.len() < 9 {
        return Ok(None);
    }
    let h = parse_head(input);
    if h.len > MAX_FRAME {
        return Err(ConnError {
            code: FRAME_SIZE_ERROR,
            why: "a frame over the size limit",
            side,
        });
    }
    if input.len() < 9 + h.len {
        input.reserve(9 + h.len - input.len());
        return Ok(None);
    }
    Ok(Some(h))
}

/// The parameters of a SETTINGS payload (length already checked to be a
/// multiple of 6): (identifier, value).
pub fn settings_params(payload: &[u8]) -> impl Iterator<Item = (u16, u32)> + '_ {
    payload.chunks_exact(6).map(|p| {
        (
            u16::from_be_bytes([p[0], p[1]]),
            u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
        )
    })
}

fn put_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = len as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

fn put_rst(out: &mut Vec<u8>, stream: u32, code: u32) {
    put_head(out, 4, RST_STREAM, 0, stream);
    out.extend_from_slice(&code.to_be_bytes());
}

fn put_goaway(out: &mut Vec<u8>, last_stream: u32, code: u32) {
    put_head(out, 8, GOAWAY, 0, 0);
    out.extend_from_slice(&last_stream.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
}

fn put_window_update(out: &mut Vec<u8>, stream: u32, increment: usize) {
    put_head(out, 4, WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&(increment as u32).to_be_bytes());
}

/// A header block as HEADERS (+ CONTINUATION) frames of at most
/// `max_frame` bytes each.
fn put_block(out: &mut Vec<u8>, stream: u32, end_stream: bool, block: &[u8], max_frame: usize) {
    let mut chunks = block.chunks(max_frame.max(1)).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if chunks.peek().is_none() {
        flags |= END_HEADERS;
    }
    put_head(out, first.len(), HEADERS, flags, stream);
    out.extend_from_slice(first);
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        put_head(out, chunk.len(), CONTINUATION, flags, stream);
        out.extend_from_slice(chunk);
    }
}

/// The header block fragment of a HEADERS frame (padding and priority
/// removed).
pub fn headers_fragment(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut p = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&n, rest) = p.split_first()?;
        pad = usize::from(n);
        p = rest;
    }
    if flags & PRIORITY_FLAG != 0 {
        p = p.get(5..)?;
    }
    p.get(..p.len().checked_sub(pad)?)
}

// ===== HPACK encoding (RFC 7541 §5, §6.2.2: literals never indexed)

fn put_int(out: &mut Vec<u8>, mut value: usize, prefix_bits: u8, first: u8) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A string literal without Huffman coding; returns where its bytes are.
fn put_str(out: &mut Vec<u8>, s: &[u8]) -> (u32, u32) {
    put_int(out, s.len(), 7, 0);
    let start = out.len();
    out.extend_from_slice(s);
    (start as u32, out.len() as u32)
}

/// Static-table entries with their value (indexed representation).
fn static_field(name: &[u8], value: &[u8]) -> Option<u8> {
    Some(match (name, value) {
        (b":method", b"GET") => 2,
        (b":method", b"POST") => 3,
        (b":path", b"/") => 4,
        (b":scheme", b"http") => 6,
        (b":scheme", b"https") => 7,
        (b":status", b"200") => 8,
        _ => return None,
    })
}

/// Encodes one field; returns where its value's bytes are in `out` (an
/// indexed field's value is not there: `None`).
fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) -> Option<(u32, u32)> {
    if let Some(i) = static_field(name, value) {
        out.push(0x80 | i);
        return None;
    }
    match hpack::static_name_index(name) {
        Some(i) => put_int(out, i, 4, 0),
        None => {
            out.push(0);
            put_str(out, name);
        }
    }
    Some(put_str(out, value))
}

/// A response the proxy sends itself, headers only.
fn put_response(out: &mut Vec<u8>, rsp: &Response<ProxyBody>) {
    let status = rsp.status();
    put_field(out, b":status", status.as_str().as_bytes());
    for (name, value) in rsp.headers() {
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

// ===== requests

/// A decoded regular field of a request: where its name and value are in
/// the re-encoded block.
#[derive(Clone, Copy, Debug)]
struct Field {
    name: FieldName,
    value: (u32, u32),
}

#[derive(Clone, Copy, Debug)]
enum FieldName {
    Static(usize),
    Block(u32, u32),
}

/// The request's regular fields as policy reads them.
#[derive(Debug)]
struct Fields<'a> {
    block: &'a [u8],
    fields: &'a [Field],
}

fn slice(block: &[u8], (a, b): (u32, u32)) -> &[u8] {
    &block[a as usize..b as usize]
}

impl Field {
    fn is(&self, block: &[u8], wanted: &[u8], wanted_static: Option<usize>) -> bool {
        match self.name {
            FieldName::Static(i) => wanted_static == Some(i),
            FieldName::Block(a, b) => slice(block, (a, b)) == wanted,
        }
    }
}

impl RequestHeaders for Fields<'_> {
    fn any_value(&self, name: &HeaderName, f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        let wanted = name.as_str().as_bytes();
        let wanted_static = hpack::static_name_index(wanted);
        self.fields
            .iter()
            .filter(|field| field.is(self.block, wanted, wanted_static))
            .any(|field| f(slice(self.block, field.value)))
    }
}

/// What decoding a request (or trailer) block found.
#[derive(Debug, Default)]
struct Decoded {
    method: Option<(u32, u32)>,
    method_indexed: Option<&'static str>,
    path: Option<(u32, u32)>,
    path_indexed: bool,
    scheme: bool,
    authority: bool,
    /// Decoded header-list size (RFC 9113 §6.5.2).
    size: usize,
    malformed: Option<&'static str>,
}

/// HTTP/2 forbids these in messages (RFC 9113 §8.2.2).
fn connection_specific(name: &[u8]) -> bool {
    matches!(
        name,
        b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
    )
}

fn bad_name(name: &[u8]) -> bool {
    name.is_empty()
        || name
            .iter()
            .any(|&b| b.is_ascii_uppercase() || b <= b' ' || b == b':' || b >= 0x7f)
}

fn bad_value(value: &[u8]) -> bool {
    value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n')
}

/// Decodes a client header block and re-encodes it into `enc` (without
/// `l5d-client-id`), recording regular fields in `fields`. `trailers`:
/// no pseudo-headers allowed. `Err` is an HPACK failure (a connection
/// error: the table can no longer be trusted).
fn decode_request(
    decoder: &mut Decoder,
    block: &[u8],
    trailers: bool,
    max_list: usize,
    enc: &mut Vec<u8>,
    fields: &mut Vec<Field>,
) -> Result<Decoded, ConnError> {
    let mut d = Decoded::default();
    let mut regular = false;
    decoder
        .decode(block, |name, value| {
            d.size += name.len() + value.len() + 32;
            if d.malformed.is_some() || d.size > max_list {
                // Keep decoding: the HPACK table must stay in step.
                return;
            }
            if bad_value(value) {
                d.malformed = Some("a header value contains CR, LF or NUL");
                return;
            }
            if let Some(pseudo) = name.strip_prefix(b":") {
                if regular || trailers {
                    d.malformed = Some("a pseudo-header after regular headers or in trailers");
                    return;
                }
                let seen = match pseudo {
                    b"method" => d.method.is_some() || d.method_indexed.is_some(),
                    b"path" => d.path.is_some() || d.path_indexed,
                    b"scheme" => d.scheme,
                    b"authority" => d.authority,
                    b"protocol" => {
                        d.malformed = Some("extended CONNECT is not enabled");
                        return;
                    }
                    _ => {
                        d.malformed = Some("an unknown pseudo-header");
                        return;
                    }
                };
                if seen {
                    d.malformed = Some("a repeated pseudo-header");
                    return;
                }
                let at = put_field(enc, name, value);
                match pseudo {
                    b"method" => match at {
                        Some(r) => d.method = Some(r),
                        None => {
                            d.method_indexed = Some(if value == b"GET" { "GET" } else { "POST" })
                        }
                    },
                    b"path" => match at {
                        Some(r) => d.path = Some(r),
                        None => d.path_indexed = true,
                    },
                    b"scheme" => d.scheme = true,
                    _ => d.authority = true,
                }
                return;
            }
            regular = true;
            if bad_name(name) {
                d.malformed = Some("a header name is not lowercase token characters");
                return;
            }
            if connection_specific(name) || (name == b"te" && value != b"trailers") {
                d.malformed = Some("a connection-specific header");
                return;
            }
            if name == L5D_CLIENT_ID.as_bytes() {
                // The app trusts it: only the proxy sets it.
                return;
            }
            let name = match hpack::static_name_index(name) {
                Some(i) => {
                    put_int(enc, i, 4, 0);
                    FieldName::Static(i)
                }
                None => {
                    enc.push(0);
                    let (a, b) = put_str(enc, name);
                    FieldName::Block(a, b)
                }
            };
            let value_at = put_str(enc, value);
            fields.push(Field {
                name,
                value: value_at,
            });
        })
        .map_err(|_| {
            client_err(
                COMPRESSION_ERROR,
                "the request header block does not decode",
            )
        })?;
    if !trailers && d.malformed.is_none() && d.size <= max_list {
        if d.method.is_none() && d.method_indexed.is_none() {
            d.malformed = Some("no :method");
        } else if !d.scheme || (d.path.is_none() && !d.path_indexed) {
            d.malformed = Some("no :scheme or :path (CONNECT is not relayed)");
        } else if d.path.is_some_and(|(a, b)| a == b) {
            d.malformed = Some("an empty :path");
        }
    }
    Ok(d)
}

// ===== the relay

/// One forwarded stream (open or half-closed).
#[derive(Debug)]
struct Stream {
    id: u32,
    /// For the proxy's own answer if the app cannot be reached.
    grpc: bool,
    start: Instant,
    client_done: bool,
    app_done: bool,
    status: Option<u16>,
    grpc_status: Option<u32>,
    latency: Duration,
}

/// A header block in progress (HEADERS without END_HEADERS so far).
#[derive(Debug)]
struct Block {
    stream: u32,
    end_stream: bool,
    role: Role,
    fragment: Vec<u8>,
}

/// RFC 9113 §3.4 and §6.10: SETTINGS comes first, and nothing comes
/// between a HEADERS without END_HEADERS and its CONTINUATIONs.
fn check_sequence(
    settings_seen: bool,
    open: &Option<Block>,
    h: Head,
    side: Side,
) -> Result<(), ConnError> {
    let err = |why| {
        Err(ConnError {
            code: PROTOCOL_ERROR,
            why,
            side,
        })
    };
    if !settings_seen && (h.kind != SETTINGS || h.flags & ACK != 0) {
        return err("the first frame is not SETTINGS");
    }
    match open {
        Some(block) if h.kind != CONTINUATION || h.stream != block.stream => {
            err("a header block was interrupted")
        }
        _ => Ok(()),
    }
}

/// A HEADERS frame's block: complete now (decoded from the frame in place,
/// nothing copied: the common case), or kept in `open` for its
/// CONTINUATIONs.
fn start_block<'p>(
    open: &mut Option<Block>,
    h: Head,
    fragment: &'p [u8],
    role: Role,
) -> Option<(Block, &'p [u8])> {
    let mut block = Block {
        stream: h.stream,
        end_stream: h.flags & END_STREAM != 0,
        role,
        fragment: Vec::new(),
    };
    if h.flags & END_HEADERS != 0 {
        return Some((block, fragment));
    }
    block.fragment = fragment.to_vec();
    *open = Some(block);
    None
}

/// Adds a CONTINUATION to the block in `open` (at most `limit` bytes in
/// all); the whole block once END_HEADERS ends it.
fn continue_block(
    open: &mut Option<Block>,
    h: Head,
    payload: &[u8],
    limit: usize,
    side: Side,
) -> Result<Option<Block>, ConnError> {
    let err = |code, why| Err(ConnError { code, why, side });
    let Some(block) = open.as_mut() else {
        return err(PROTOCOL_ERROR, "CONTINUATION outside a header block");
    };
    if block.fragment.len() + payload.len() > limit {
        return err(ENHANCE_YOUR_CALM, "a header block over the limit");
    }
    block.fragment.extend_from_slice(payload);
    Ok(if h.flags & END_HEADERS != 0 {
        open.take()
    } else {
        None
    })
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Role {
    Request,
    Trailers,
    /// Decoded (the table must stay in step) and dropped.
    Ignore,
    /// A new stream refused (concurrency, or after GOAWAY).
    Refuse,
    Response,
}

/// The relay's state for one client connection and its app connection.
/// Bytes in, bytes out: no I/O.
pub struct Relay<'g, G: ?Sized> {
    gate: &'g G,
    limits: Limits,
    req_decoder: Decoder,
    rsp_decoder: Decoder,
    client_settings_seen: bool,
    app_settings_seen: bool,
    client_block: Option<Block>,
    app_block: Option<Block>,
    last_client_stream: u32,
    /// After the proxy's GOAWAY, new streams are refused.
    goaway_sent: bool,
    refused: VecDeque<u32>,
    streams: Vec<Stream>,
    /// SETTINGS_MAX_FRAME_SIZE the app accepts (for re-encoded requests).
    app_max_frame: usize,
    req_table_max: usize,
    rsp_table_max: usize,
    premature_resets: usize,
    local_resets: usize,
    /// The app connection is opened for the first forwarded request:
    /// until then the proxy answers SETTINGS and PING itself, and keeps
    /// the client's SETTINGS and connection-window updates to replay.
    app_started: bool,
    early: Vec<u8>,
    early_window: u32,
    /// SETTINGS the proxy sent (and acknowledged) itself: that many ACKs
    /// from the client, and from the app for the replayed ones, are the
    /// proxy's, not to be relayed.
    own_settings_unacked: usize,
    replayed_settings_unacked: usize,
    /// The proxy's own frames to the client, held while a response header
    /// block is in progress.
    inject: Vec<u8>,
    enc: Vec<u8>,
    fields: Vec<Field>,
}

impl<'g, G: Gate + ?Sized> Relay<'g, G> {
    pub fn new(gate: &'g G, limits: Limits) -> Self {
        Relay {
            gate,
            limits,
            req_decoder: Decoder::new(),
            rsp_decoder: Decoder::new(),
            client_settings_seen: false,
            app_settings_seen: false,
            client_block: None,
            app_block: None,
            last_client_stream: 0,
            goaway_sent: false,
            refused: VecDeque::new(),
            streams: Vec::new(),
            app_max_frame: DEFAULT_MAX_FRAME,
            req_table_max: DEFAULT_TABLE,
            rsp_table_max: DEFAULT_TABLE,
            premature_resets: 0,
            local_resets: 0,
            app_started: false,
            early: Vec::new(),
            early_window: 0,
            own_settings_unacked: 0,
            replayed_settings_unacked: 0,
            inject: Vec::new(),
            enc: Vec::new(),
            fields: Vec::new(),
        }
    }

    /// No stream is open.
    pub fn is_idle(&self) -> bool {
        self.streams.is_empty()
    }

    pub fn last_client_stream(&self) -> u32 {
        self.last_client_stream
    }

    /// Starts a graceful close: GOAWAY (NO_ERROR) to the client; streams
    /// already started finish, new ones are refused.
    pub fn go_away(&mut self) {
        if !self.goaway_sent {
            self.goaway_sent = true;
            put_goaway(&mut self.inject, self.last_client_stream, NO_ERROR);
        }
    }

    /// Moves the proxy's own frames to `to_client`, unless that would
    /// split a response header block.
    pub fn take_injected(&mut self, to_client: &mut Vec<u8>) {
        if self.app_block.is_none() && !self.inject.is_empty() {
            to_client.append(&mut self.inject);
        }
    }

    /// Consumes the complete frames in `input` (client bytes, after the
    /// preface), appending what the app gets to `to_app`.
    pub fn client_frames(
        &mut self,
        input: &mut BytesMut,
        to_app: &mut Vec<u8>,
    ) -> Result<(), ConnError> {
        while let Some(h) = complete_frame(input, Side::Client)? {
            self.client_frame(h, &input[..9 + h.len], to_app)?;
            input.advance(9 + h.len);
        }
        Ok(())
    }

    /// Consumes the complete frames in `input` (app bytes), appending what
    /// the client gets to `to_client`.
    pub fn app_frames(
        &mut self,
        input: &mut BytesMut,
        to_client: &mut Vec<u8>,
    ) -> Result<(), ConnError> {
        while let Some(h) = complete_frame(input, Side::App)? {
            self.app_frame(h, &input[..9 + h.len], to_client)?;
            input.advance(9 + h.len);
            self.take_injected(to_client);
        }
        Ok(())
    }

    fn client_frame(&mut self, h: Head, raw: &[u8], to_app: &mut Vec<u8>) -> Result<(), ConnError> {
        let payload = &raw[9..];
        check_sequence(
            self.client_settings_seen,
            &self.client_block,
            h,
            Side::Client,
        )?;
        let stream_frame = matches!(
            h.kind,
            DATA | HEADERS | PRIORITY | RST_STREAM | CONTINUATION
        );
        if stream_frame && h.stream == 0 {
            return Err(client_err(PROTOCOL_ERROR, "a stream frame on stream 0"));
        }
        // RFC 9113 §5.1: only HEADERS (and PRIORITY) may open a stream.
        if matches!(h.kind, DATA | RST_STREAM | WINDOW_UPDATE) && h.stream > self.last_client_stream
        {
            return Err(client_err(PROTOCOL_ERROR, "a frame on an idle stream"));
        }
        match h.kind {
            DATA => {
                if self.is_local(h.stream) {
                    // The app never sees it: credit the client's window.
                    if h.len > 0 {
                        put_window_update(&mut self.inject, 0, h.len);
                    }
                    if h.flags & END_STREAM != 0 {
                        self.forget_refused(h.stream);
                    }
                    return Ok(());
                }
                if h.flags & END_STREAM != 0 {
                    self.client_done(h.stream);
                }
                to_app.extend_from_slice(raw);
            }
            HEADERS => self.client_headers(h, payload, to_app)?,
            CONTINUATION => self.client_continuation(h, payload, to_app)?,
            // Advisory, and deprecated (RFC 9113 §5.3.2): not relayed.
            PRIORITY => {}
            RST_STREAM => self.client_reset(h, raw, to_app)?,
            SETTINGS => self.client_settings_frame(h, raw, to_app)?,
            PUSH_PROMISE => return Err(client_err(PROTOCOL_ERROR, "PUSH_PROMISE from a client")),
            PING | GOAWAY => self.client_connection_frame(h, raw, to_app)?,
            WINDOW_UPDATE => self.client_window_update(h, raw, to_app)?,
            // Unknown types are ignored (RFC 9113 §5.5); extensions are
            // per hop.
            _ => {}
        }
        Ok(())
    }

    /// A HEADERS frame: a new request (or one refused), trailers, or a
    /// block only decoded to keep the HPACK table in step.
    fn client_headers(
        &mut self,
        h: Head,
        payload: &[u8],
        to_app: &mut Vec<u8>,
    ) -> Result<(), ConnError> {
        let fragment = headers_fragment(h.flags, payload)
            .ok_or(client_err(PROTOCOL_ERROR, "bad HEADERS padding"))?;
        if h.stream.is_multiple_of(2) {
            return Err(client_err(PROTOCOL_ERROR, "HEADERS on an even stream id"));
        }
        let role = if h.stream > self.last_client_stream {
            self.last_client_stream = h.stream;
            if self.goaway_sent || self.streams.len() >= self.limits.max_concurrent_streams as usize
            {
                Role::Refuse
            } else {
                Role::Request
            }
        } else if self.is_local(h.stream) {
            Role::Ignore
        } else {
            Role::Trailers
        };
        match start_block(&mut self.client_block, h, fragment, role) {
            Some((block, fragment)) => self.end_client_block(block, fragment, to_app),
            None => Ok(()),
        }
    }

    fn client_continuation(
        &mut self,
        h: Head,
        payload: &[u8],
        to_app: &mut Vec<u8>,
    ) -> Result<(), ConnError> {
        let limit = self.block_limit();
        if let Some(mut block) =
            continue_block(&mut self.client_block, h, payload, limit, Side::Client)?
        {
            let fragment = std::mem::take(&mut block.fragment);
            self.end_client_block(block, &fragment, to_app)?;
        }
        Ok(())
    }

    /// RST_STREAM: relayed, and counted when the stream had no response
    /// yet (rapid reset).
    fn client_reset(&mut self, h: Head, raw: &[u8], to_app: &mut Vec<u8>) -> Result<(), ConnError> {
        if h.len != 4 {
            return Err(client_err(FRAME_SIZE_ERROR, "RST_STREAM length"));
        }
        if self.is_local(h.stream) {
            self.forget_refused(h.stream);
            return Ok(());
        }
        if let Some(i) = self.find(h.stream) {
            let s = self.streams.swap_remove(i);
            if s.status.is_none() {
                self.premature_resets += 1;
                if self.premature_resets > self.limits.max_pending_resets {
                    return Err(client_err(
                        ENHANCE_YOUR_CALM,
                        "too many streams reset before their response",
                    ));
                }
            }
        }
        to_app.extend_from_slice(raw);
        Ok(())
    }

    fn client_settings_frame(
        &mut self,
        h: Head,
        raw: &[u8],
        to_app: &mut Vec<u8>,
    ) -> Result<(), ConnError> {
        if h.stream != 0 {
            return Err(client_err(PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if h.flags & ACK != 0 {
            if self.own_settings_unacked > 0 {
                self.own_settings_unacked -= 1;
            } else if self.app_started {
                to_app.extend_from_slice(raw);
            }
            return Ok(());
        }
        if !h.len.is_multiple_of(6) {
            return Err(client_err(FRAME_SIZE_ERROR, "SETTINGS length"));
        }
        if self.app_started {
            self.client_settings(&raw[9..], to_app);
        } else {
            self.early_settings(&raw[9..]);
        }
        Ok(())
    }

    /// PING and GOAWAY: the app's to answer once it exists.
    fn client_connection_frame(
        &mut self,
        h: Head,
        raw: &[u8],
        to_app: &mut Vec<u8>,
    ) -> Result<(), ConnError> {
        if h.stream != 0 {
            return Err(client_err(PROTOCOL_ERROR, "a connection frame on a stream"));
        }
        if h.kind == PING && h.len != 8 {
            return Err(client_err(FRAME_SIZE_ERROR, "PING length"));
        }
        if self.app_started {
            to_app.extend_from_slice(raw);
        } else if h.kind == PING && h.flags & ACK == 0 {
            // No app yet: the proxy is the peer.
            put_head(&mut self.inject, 8, PING, ACK, 0);
            self.inject.extend_from_slice(&raw[9..]);
        }
        Ok(())
    }

    fn client_window_update(
        &mut self,
        h: Head,
        raw: &[u8],
        to_app: &mut Vec<u8>,
    ) -> Result<(), ConnError> {
        if h.len != 4 {
            return Err(client_err(FRAME_SIZE_ERROR, "WINDOW_UPDATE length"));
        }
        if !self.app_started {
            // Only the connection window can grow before a stream is
            // forwarded; the app gets the sum (at most 2^31 - 1, the
            // largest window) when it starts.
            if h.stream == 0 {
                let inc = u32::from_be_bytes([raw[9], raw[10], raw[11], raw[12]]) & 0x7fff_ffff;
                self.early_window = self.early_window.saturating_add(inc).min(0x7fff_ffff);
            }
        } else if !self.is_refused(h.stream) || h.stream == 0 {
            to_app.extend_from_slice(raw);
        }
        Ok(())
    }

    /// The most encoded header-block bytes accepted (CONTINUATION floods).
    fn block_limit(&self) -> usize {
        self.limits.max_header_list as usize + MAX_FRAME
    }

    fn end_client_block(
        &mut self,
        block: Block,
        fragment: &[u8],
        to_app: &mut Vec<u8>,
    ) -> Result<(), ConnError> {
        self.enc.clear();
        self.fields.clear();
        let trailers = block.role != Role::Request;
        let max_list = self.limits.max_header_list as usize;
        let d = decode_request(
            &mut self.req_decoder,
            fragment,
            trailers,
            max_list,
            &mut self.enc,
            &mut self.fields,
        )?;
        match block.role {
            Role::Ignore => {
                if block.end_stream {
                    self.forget_refused(block.stream);
                }
            }
            Role::Refuse => {
                put_rst(&mut self.inject, block.stream, REFUSED_STREAM);
                self.refuse(block.stream, block.end_stream);
            }
            Role::Trailers => {
                if !block.end_stream {
                    return Err(client_err(PROTOCOL_ERROR, "trailers without END_STREAM"));
                }
                if let Some(why) = d.malformed {
                    debug!(stream = block.stream, why, "malformed HTTP/2 trailers");
                    put_rst(&mut self.inject, block.stream, PROTOCOL_ERROR);
                    put_rst(to_app, block.stream, PROTOCOL_ERROR);
                    if let Some(i) = self.find(block.stream) {
                        self.streams.swap_remove(i);
                    }
                    return self.count_local_reset();
                }
                put_block(to_app, block.stream, true, &self.enc, self.app_max_frame);
                self.client_done(block.stream);
            }
            Role::Request => self.request(block.stream, block.end_stream, d, to_app)?,
            Role::Response => {}
        }
        Ok(())
    }

    fn request(
        &mut self,
        stream: u32,
        end_stream: bool,
        d: Decoded,
        to_app: &mut Vec<u8>,
    ) -> Result<(), ConnError> {
        if d.size > self.limits.max_header_list as usize {
            let mut rsp = Response::new(ProxyBody::empty());
            *rsp.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
            self.answer(stream, end_stream, &rsp);
            return Ok(());
        }
        if let Some(why) = d.malformed {
            debug!(stream, why, "malformed HTTP/2 request");
            put_rst(&mut self.inject, stream, PROTOCOL_ERROR);
            self.refuse(stream, end_stream);
            return self.count_local_reset();
        }
        let method = match (d.method_indexed, d.method) {
            (Some(m), _) => Method::from_bytes(m.as_bytes()),
            (None, Some(r)) => Method::from_bytes(slice(&self.enc, r)),
            (None, None) => Method::from_bytes(b""),
        };
        let path = match d.path {
            None => Ok("/"),
            Some(r) => std::str::from_utf8(slice(&self.enc, r)),
        };
        let (Ok(method), Ok(path)) = (method, path) else {
            put_rst(&mut self.inject, stream, PROTOCOL_ERROR);
            self.refuse(stream, end_stream);
            return self.count_local_reset();
        };
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let start = Instant::now();
        let fields = Fields {
            block: &self.enc,
            fields: &self.fields,
        };
        if let Err(rsp) = self.gate.request(&method, path, &fields) {
            self.answer(stream, end_stream, &rsp);
            return Ok(());
        }
        let grpc = is_grpc(&fields);
        if let Some(id) = self.gate.client_id() {
            put_field(&mut self.enc, L5D_CLIENT_ID.as_bytes(), id);
        }
        self.start_app(to_app);
        put_block(to_app, stream, end_stream, &self.enc, self.app_max_frame);
        self.streams.push(Stream {
            id: stream,
            grpc,
            start,
            client_done: end_stream,
            app_done: false,
            status: None,
            grpc_status: None,
            latency: Duration::ZERO,
        });
        Ok(())
    }

    /// The proxy answers a stream itself (headers only).
    fn answer(&mut self, stream: u32, end_stream: bool, rsp: &Response<ProxyBody>) {
        let mut block = Vec::with_capacity(128);
        put_response(&mut block, rsp);
        put_block(&mut self.inject, stream, true, &block, DEFAULT_MAX_FRAME);
        if !end_stream {
            // The answer is complete; the rest of the request is not wanted
            // (RFC 9113 §8.1).
            put_rst(&mut self.inject, stream, NO_ERROR);
        }
        self.refuse(stream, end_stream);
    }

    fn count_local_reset(&mut self) -> Result<(), ConnError> {
        self.local_resets += 1;
        if self.local_resets > self.limits.max_local_resets {
            return Err(client_err(ENHANCE_YOUR_CALM, "too many malformed streams"));
        }
        Ok(())
    }

    /// Remembers a stream whose later frames are dropped (unless the
    /// client already ended it).
    fn refuse(&mut self, stream: u32, ended: bool) {
        if ended {
            return;
        }
        if self.refused.len() == REFUSED_MEMORY {
            self.refused.pop_front();
        }
        self.refused.push_back(stream);
    }

    /// A stream the proxy answered itself, whose late frames stay here:
    /// a refused one, or any stream before the app connection exists (the
    /// app must see nothing before the preface).
    fn is_local(&self, stream: u32) -> bool {
        !self.app_started || self.is_refused(stream)
    }

    fn is_refused(&self, stream: u32) -> bool {
        !self.refused.is_empty() && self.refused.contains(&stream)
    }

    fn forget_refused(&mut self, stream: u32) {
        self.refused.retain(|&s| s != stream);
    }

    fn find(&self, stream: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.id == stream)
    }

    fn client_done(&mut self, stream: u32) {
        if let Some(i) = self.find(stream) {
            self.streams[i].client_done = true;
            if self.streams[i].app_done {
                self.streams.swap_remove(i);
            }
        }
    }

    /// SETTINGS before the app connection exists: the proxy sends its own
    /// (first time), acknowledges the client's, and keeps them (rewritten)
    /// for the app.
    fn early_settings(&mut self, payload: &[u8]) {
        if !self.client_settings_seen {
            let at = self.inject.len();
            put_head(&mut self.inject, 0, SETTINGS, 0, 0);
            put_setting(
                &mut self.inject,
                MAX_CONCURRENT_STREAMS,
                self.limits.max_concurrent_streams,
            );
            put_setting(
                &mut self.inject,
                MAX_HEADER_LIST_SIZE,
                self.limits.max_header_list,
            );
            fix_len(&mut self.inject, at);
            self.own_settings_unacked += 1;
        }
        put_head(&mut self.inject, 0, SETTINGS, ACK, 0);
        let mut early = std::mem::take(&mut self.early);
        self.client_settings(payload, &mut early);
        self.early = early;
        self.replayed_settings_unacked += 1;
    }

    /// Before the first forwarded request: the connection preface, the
    /// client's SETTINGS and window updates so far. The driver connects to
    /// the app when there is something to send.
    fn start_app(&mut self, to_app: &mut Vec<u8>) {
        if self.app_started {
            return;
        }
        self.app_started = true;
        to_app.extend_from_slice(PREFACE);
        to_app.append(&mut self.early);
        if self.early_window > 0 {
            put_window_update(to_app, 0, self.early_window as usize);
        }
    }

    /// The app could not be reached: the forwarded streams get the proxy's
    /// 502 (gRPC: UNAVAILABLE), and the connection closes gracefully (a
    /// new one tries the app again).
    pub fn app_unreachable(&mut self) {
        for s in std::mem::take(&mut self.streams) {
            let rsp = respond(Refusal::AppUnavailable, s.grpc);
            self.gate.response(
                rsp.status().as_u16(),
                grpc_status(rsp.headers()),
                s.start.elapsed(),
            );
            self.answer(s.id, s.client_done, &rsp);
        }
        self.go_away();
    }

    /// Rewrites the client's SETTINGS for the app: push off, frame size and
    /// HPACK table capped.
    fn client_settings(&mut self, payload: &[u8], to_app: &mut Vec<u8>) {
        let at = to_app.len();
        put_head(to_app, 0, SETTINGS, 0, 0);
        for (id, mut value) in settings_params(payload) {
            match id {
                ENABLE_PUSH => continue,
                HEADER_TABLE_SIZE => {
                    value = value.min(MAX_TABLE);
                    self.rsp_table_max = self.rsp_table_max.max(value as usize);
                    self.rsp_decoder.set_allowed(self.rsp_table_max);
                }
                MAX_FRAME_SIZE => value = value.min(MAX_FRAME as u32),
                _ => {}
            }
            put_setting(to_app, id, value);
        }
        put_setting(to_app, ENABLE_PUSH, 0);
        self.client_settings_seen = true;
        fix_len(to_app, at);
    }

    /// Rewrites the app's SETTINGS for the client: the proxy's stream and
    /// header-list limits, frame size and HPACK table capped, no extended
    /// CONNECT.
    fn app_settings(&mut self, payload: &[u8], to_client: &mut Vec<u8>) {
        let at = to_client.len();
        put_head(to_client, 0, SETTINGS, 0, 0);
        let (mut streams_set, mut list_set) = (false, false);
        for (id, mut value) in settings_params(payload) {
            match id {
                ENABLE_PUSH | ENABLE_CONNECT_PROTOCOL => continue,
                HEADER_TABLE_SIZE => {
                    value = value.min(MAX_TABLE);
                    self.req_table_max = self.req_table_max.max(value as usize);
                    self.req_decoder.set_allowed(self.req_table_max);
                }
                MAX_CONCURRENT_STREAMS => {
                    value = value.min(self.limits.max_concurrent_streams);
                    streams_set = true;
                }
                MAX_HEADER_LIST_SIZE => {
                    value = value.min(self.limits.max_header_list);
                    list_set = true;
                }
                MAX_FRAME_SIZE => {
                    self.app_max_frame = (value as usize).clamp(DEFAULT_MAX_FRAME, MAX_FRAME);
                    value = value.min(MAX_FRAME as u32);
                }
                _ => {}
            }
            put_setting(to_client, id, value);
        }
        if !self.app_settings_seen {
            if !streams_set {
                put_setting(
                    to_client,
                    MAX_CONCURRENT_STREAMS,
                    self.limits.max_concurrent_streams,
                );
            }
            if !list_set {
                put_setting(to_client, MAX_HEADER_LIST_SIZE, self.limits.max_header_list);
            }
        }
        self.app_settings_seen = true;
        fix_len(to_client, at);
    }

    fn app_frame(&mut self, h: Head, raw: &[u8], to_client: &mut Vec<u8>) -> Result<(), ConnError> {
        let payload = &raw[9..];
        check_sequence(self.app_settings_seen, &self.app_block, h, Side::App)?;
        match h.kind {
            DATA => {
                if h.flags & END_STREAM != 0 {
                    self.app_done(h.stream);
                }
                to_client.extend_from_slice(raw);
            }
            HEADERS => {
                let fragment = headers_fragment(h.flags, payload)
                    .ok_or(app_err(PROTOCOL_ERROR, "bad HEADERS padding"))?;
                to_client.extend_from_slice(raw);
                if let Some((block, fragment)) =
                    start_block(&mut self.app_block, h, fragment, Role::Response)
                {
                    self.end_app_block(block, fragment)?;
                }
            }
            CONTINUATION => {
                let limit = self.block_limit();
                let done = continue_block(&mut self.app_block, h, payload, limit, Side::App)?;
                to_client.extend_from_slice(raw);
                if let Some(mut block) = done {
                    let fragment = std::mem::take(&mut block.fragment);
                    self.end_app_block(block, &fragment)?;
                }
            }
            SETTINGS => {
                if h.flags & ACK != 0 {
                    if self.replayed_settings_unacked > 0 {
                        self.replayed_settings_unacked -= 1;
                    } else {
                        to_client.extend_from_slice(raw);
                    }
                } else {
                    if !h.len.is_multiple_of(6) {
                        return Err(app_err(FRAME_SIZE_ERROR, "SETTINGS length"));
                    }
                    self.app_settings(payload, to_client);
                }
            }
            PUSH_PROMISE => return Err(app_err(PROTOCOL_ERROR, "PUSH_PROMISE with push disabled")),
            RST_STREAM => {
                if let Some(i) = self.find(h.stream) {
                    self.streams.swap_remove(i);
                }
                to_client.extend_from_slice(raw);
            }
            PRIORITY | PING | GOAWAY | WINDOW_UPDATE => to_client.extend_from_slice(raw),
            _ => {}
        }
        Ok(())
    }

    fn end_app_block(&mut self, block: Block, fragment: &[u8]) -> Result<(), ConnError> {
        let (mut status, mut grpc) = (None, None);
        self.rsp_decoder
            .decode(fragment, |name, value| match name {
                b":status" => status = parse_number(value).and_then(|s| u16::try_from(s).ok()),
                b"grpc-status" => grpc = parse_number(value),
                _ => {}
            })
            .map_err(|_| {
                app_err(
                    COMPRESSION_ERROR,
                    "the response header block does not decode",
                )
            })?;
        if let Some(i) = self.find(block.stream) {
            let s = &mut self.streams[i];
            match (s.status, status) {
                // Interim (1xx) responses do not count.
                (None, Some(code)) if code >= 200 => {
                    s.status = Some(code);
                    s.latency = s.start.elapsed();
                    s.grpc_status = grpc;
                }
                (Some(_), _) if grpc.is_some() => s.grpc_status = grpc,
                _ => {}
            }
            if block.end_stream {
                self.app_done(block.stream);
            }
        }
        Ok(())
    }

    fn app_done(&mut self, stream: u32) {
        let Some(i) = self.find(stream) else { return };
        let s = &mut self.streams[i];
        if s.app_done {
            return;
        }
        s.app_done = true;
        if let Some(status) = s.status {
            self.gate.response(status, s.grpc_status, s.latency);
            // A served stream earns back a premature reset.
            self.premature_resets = self.premature_resets.saturating_sub(1);
        }
        if self.streams[i].client_done {
            self.streams.swap_remove(i);
        }
    }
}

fn put_setting(out: &mut Vec<u8>, id: u16, value: u32) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&value.to_be_bytes());
}

/// Sets the length of the frame whose header starts at `at`.
fn fix_len(out: &mut [u8], at: usize) {
    let len = (out.len() - at - 9) as u32;
    out[at..at + 3].copy_from_slice(&len.to_be_bytes()[1..]);
}

// ===== driving it over the sockets

/// Why a relayed connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("client connection: {0}")]
    Client(io::Error),
    #[error("application connection: {0}")]
    App(io::Error),
    #[error(transparent)]
    Protocol(ConnError),
    #[error("the client did not send the HTTP/2 preface")]
    Preface,
}

/// Stop reading a side while this much waits for the other.
const HIGH_WATER: usize = 256 * 1024;

/// Reads what `io` has into `buf`, grown as the HTTP/1 path grows its
/// buffers.
fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    make_room(buf);
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Bytes waiting to be written to one side.
#[derive(Default)]
struct Outbox {
    buf: Vec<u8>,
    at: usize,
}

impl Outbox {
    fn pending(&self) -> usize {
        self.buf.len() - self.at
    }

    /// Writes until empty or the socket would block. `Ok(true)`: emptied.
    fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<io::Result<()>> {
        while self.at < self.buf.len() {
            match Pin::new(&mut *w).poll_write(cx, &self.buf[self.at..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.at += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.buf.clear();
        self.at = 0;
        Pin::new(&mut *w).poll_flush(cx)
    }
}

/// Relays one HTTP/2 client connection (its bytes start with the preface)
/// to `app`, a new connection to the app, until either side closes, the
/// idle timeout passes without open streams, or `drain` fires (GOAWAY,
/// then open streams finish).
pub async fn serve<I>(
    client: I,
    conn: &HttpConn,
    limits: &Limits,
    drain: &Signal,
) -> Result<(), Error>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut d = Driver {
        client,
        app: None,
        connecting: None,
        app_failed: false,
        pool: conn.pool().clone(),
        relay: Relay::new(conn, limits.clone()),
        from_client: BytesMut::new(),
        from_app: BytesMut::new(),
        to_app: Outbox::default(),
        to_client: Outbox::default(),
        preface: false,
        client_eof: false,
        app_eof: false,
        closing: false,
        idle_timeout: limits.idle_timeout,
        idle_since: Instant::now(),
        idle: Box::pin(tokio::time::sleep(limits.idle_timeout)),
        error: None,
    };
    let mut drained = std::pin::pin!(drain.watch());
    let res = std::future::poll_fn(|cx| d.poll(cx, drained.as_mut())).await;
    debug!(
        client = %conn.authz().conn().peer,
        streams = d.relay.last_client_stream().div_ceil(2),
        "HTTP/2 connection relayed"
    );
    res
}

/// Connecting to the app (boxed: only while it lasts).
type Connecting = Pin<Box<dyn Future<Output = Result<TcpStream, ForwardError>> + Send>>;

struct Driver<'g, I> {
    client: I,
    /// Opened when the first request is forwarded.
    app: Option<TcpStream>,
    connecting: Option<Connecting>,
    /// The app could not be reached: nothing more is sent to it.
    app_failed: bool,
    pool: Arc<Pool>,
    relay: Relay<'g, HttpConn>,
    from_client: BytesMut,
    from_app: BytesMut,
    to_app: Outbox,
    to_client: Outbox,
    preface: bool,
    client_eof: bool,
    app_eof: bool,
    /// Ending: flush what the client is owed, then close.
    closing: bool,
    idle_timeout: Duration,
    idle_since: Instant,
    idle: Pin<Box<Sleep>>,
    error: Option<Error>,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Driver<'_, I> {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        mut drained: Pin<&mut Watch<'_>>,
    ) -> Poll<Result<(), Error>> {
        loop {
            let mut progress = false;
            // writes first: they make room for reads
            if !self.to_app.buf.is_empty() {
                match &mut self.app {
                    Some(app) => match self.to_app.poll_flush(cx, app) {
                        Poll::Ready(Ok(())) => progress = true,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::App(e))),
                        Poll::Pending => {}
                    },
                    None if self.app_failed => self.to_app.buf.clear(),
                    None => progress |= self.poll_connect(cx),
                }
            }
            if self.closing || self.app_eof {
                // Nothing more will complete a response header block.
                self.to_client.buf.append(&mut self.relay.inject);
            } else {
                self.relay.take_injected(&mut self.to_client.buf);
            }
            if !self.to_client.buf.is_empty() && !self.client_eof {
                match self.to_client.poll_flush(cx, &mut self.client) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Client(e))),
                    Poll::Pending => {}
                }
            }
            if let Some(done) = self.finished() {
                return Poll::Ready(done);
            }
            let room = self.to_client.pending() < HIGH_WATER;
            if !self.closing && !self.client_eof && room && self.to_app.pending() < HIGH_WATER {
                match self.read_client(cx) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if !self.closing && !self.app_eof && room && self.app.is_some() {
                match self.read_app(cx) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if !progress && !self.poll_timers(cx, drained.as_mut()) {
                return Poll::Pending;
            }
        }
    }

    /// `Some` once the connection is over and everything owed is written:
    /// to the app if the client left, to the client otherwise.
    fn finished(&mut self) -> Option<Result<(), Error>> {
        let done = if self.client_eof {
            self.closing || self.to_app.buf.is_empty()
        } else {
            (self.closing || self.app_eof)
                && self.to_client.buf.is_empty()
                && self.relay.inject.is_empty()
        };
        done.then(|| self.error.take().map_or(Ok(()), Err))
    }

    fn read_client(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let n = match poll_fill(&mut self.client, cx, &mut self.from_client) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Client(e))),
            Poll::Pending => return Poll::Pending,
        };
        if n == 0 {
            self.client_eof = true;
            return Poll::Ready(Ok(()));
        }
        if !self.preface {
            let have = self.from_client.len().min(PREFACE.len());
            if self.from_client[..have] != PREFACE[..have] {
                return Poll::Ready(Err(Error::Preface));
            }
            if have < PREFACE.len() {
                return Poll::Ready(Ok(()));
            }
            self.from_client.advance(PREFACE.len());
            self.preface = true;
        }
        let was_idle = self.relay.is_idle();
        if let Err(e) = self
            .relay
            .client_frames(&mut self.from_client, &mut self.to_app.buf)
        {
            self.fail(e);
        }
        self.after_frames(was_idle);
        Poll::Ready(Ok(()))
    }

    fn read_app(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let Some(app) = self.app.as_mut() else {
            return Poll::Pending;
        };
        let n = match poll_fill(app, cx, &mut self.from_app) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::App(e))),
            Poll::Pending => return Poll::Pending,
        };
        if n == 0 {
            self.app_eof = true;
            return Poll::Ready(Ok(()));
        }
        let was_idle = self.relay.is_idle();
        if let Err(e) = self
            .relay
            .app_frames(&mut self.from_app, &mut self.to_client.buf)
        {
            self.fail(e);
        }
        self.after_frames(was_idle);
        Poll::Ready(Ok(()))
    }

    /// Connects to the app; `true` when that attempt ended. If it fails,
    /// the waiting requests get 502s and the connection closes gracefully.
    fn poll_connect(&mut self, cx: &mut Context<'_>) -> bool {
        let pool = &self.pool;
        let connecting = self.connecting.get_or_insert_with(|| {
            let pool = pool.clone();
            Box::pin(async move { pool.connect_raw().await })
        });
        let Poll::Ready(res) = connecting.as_mut().poll(cx) else {
            return false;
        };
        self.connecting = None;
        match res {
            Ok(app) => self.app = Some(app),
            Err(e) => {
                warn!(error = %e, "HTTP/2 requests failed: the application is unreachable");
                self.to_app.buf.clear();
                self.app_failed = true;
                self.relay.app_unreachable();
                self.closing = self.relay.is_idle();
            }
        }
        true
    }

    fn after_frames(&mut self, was_idle: bool) {
        if !was_idle && self.relay.is_idle() {
            self.idle_since = Instant::now();
        }
        // After GOAWAY, the last open stream ending ends the connection.
        if self.relay.goaway_sent && self.relay.is_idle() {
            self.closing = true;
        }
    }

    /// A connection error: GOAWAY to the client, then close.
    fn fail(&mut self, e: ConnError) {
        let code = match e.side {
            Side::Client => e.code,
            Side::App => INTERNAL_ERROR,
        };
        self.relay.goaway_sent = true;
        put_goaway(&mut self.relay.inject, self.relay.last_client_stream, code);
        // Never held back: the connection ends here.
        self.to_client.buf.append(&mut self.relay.inject);
        self.closing = true;
        self.error = Some(Error::Protocol(e));
    }

    /// Drain and idle timeout; `true` if either started closing.
    fn poll_timers(&mut self, cx: &mut Context<'_>, mut drained: Pin<&mut Watch<'_>>) -> bool {
        if self.relay.goaway_sent {
            return false;
        }
        // No lock per wake-up: `Watch` reads a flag after its first poll.
        if drained.as_mut().poll(cx).is_ready() {
            self.relay.go_away();
            self.closing = self.relay.is_idle();
            return true;
        }
        // The timer fires at an old deadline at worst; then it is moved to
        // the real one (re-arming per request costs more).
        while self.idle.as_mut().poll(cx).is_ready() {
            let due = self.idle_since + self.idle_timeout;
            if self.relay.is_idle() && Instant::now() >= due {
                debug!("closing idle HTTP/2 connection");
                self.relay.go_away();
                self.closing = true;
                return true;
            }
            let next = if self.relay.is_idle() {
                due
            } else {
                Instant::now() + self.idle_timeout
            };
            self.idle.as_mut().reset(next);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// (method, path, `x-a` header) of a request the gate saw.
    type Seen = (String, String, Option<Vec<u8>>);

    /// Allows paths under `/a`, denies the rest as policy would.
    #[derive(Default)]
    struct TestGate {
        id: Option<Vec<u8>>,
        requests: RefCell<Vec<Seen>>,
        responses: RefCell<Vec<(u16, Option<u32>)>>,
    }

    impl Gate for TestGate {
        fn request(
            &self,
            method: &Method,
            path: &str,
            headers: &dyn RequestHeaders,
        ) -> Result<(), Response<ProxyBody>> {
            let mut xa = None;
            headers.any_value(&HeaderName::from_static("x-a"), &mut |v| {
                xa = Some(v.to_vec());
                true
            });
            self.requests
                .borrow_mut()
                .push((method.to_string(), path.to_string(), xa));
            if path.starts_with("/a") {
                Ok(())
            } else {
                Err(respond(Refusal::Unauthorized, is_grpc(headers)))
            }
        }
        fn client_id(&self) -> Option<&[u8]> {
            self.id.as_deref()
        }
        fn response(&self, status: u16, grpc_status: Option<u32>, _: Duration) {
            self.responses.borrow_mut().push((status, grpc_status));
        }
    }

    fn limits() -> Limits {
        Limits {
            max_concurrent_streams: 100,
            max_header_list: 16 * 1024,
            max_pending_resets: 3,
            max_local_resets: 3,
            idle_timeout: Duration::from_secs(60),
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        put_head(&mut f, payload.len(), kind, flags, stream);
        f.extend_from_slice(payload);
        f
    }

    fn settings(params: &[(u16, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        for &(id, v) in params {
            put_setting(&mut p, id, v);
        }
        frame(SETTINGS, 0, 0, &p)
    }

    type Frame = (u8, u8, u32, Vec<u8>);

    fn frames(mut b: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        while b.len() >= 9 {
            let h = parse_head(b);
            out.push((h.kind, h.flags, h.stream, b[9..9 + h.len].to_vec()));
            b = &b[9 + h.len..];
        }
        assert!(b.is_empty(), "trailing partial frame");
        out
    }

    fn fields(decoder: &mut Decoder, block: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        decoder
            .decode(block, |n, v| {
                out.push((
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                ))
            })
            .expect("decodes");
        out
    }

    fn settings_of(payload: &[u8]) -> Vec<(u16, u32)> {
        settings_params(payload).collect()
    }

    /// A client talking to a relay: encodes with a real HPACK encoder
    /// (dynamic table on), collects what reaches the app and the client.
    struct Harness<'g> {
        relay: Relay<'g, TestGate>,
        enc: loona_hpack::Encoder<'static>,
        to_app: Vec<u8>,
        to_client: Vec<u8>,
    }

    impl<'g> Harness<'g> {
        fn new(gate: &'g TestGate, limits: Limits) -> Self {
            let mut h = Harness {
                relay: Relay::new(gate, limits),
                enc: loona_hpack::Encoder::new(),
                to_app: Vec::new(),
                to_client: Vec::new(),
            };
            h.client(&settings(&[])).unwrap();
            h.app(&settings(&[])).unwrap();
            h.to_app.clear();
            h.to_client.clear();
            h
        }

        /// Feeds client bytes; the app connection's opening (preface and
        /// replayed SETTINGS) is checked and left out of `to_app`.
        fn client(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
            let mut input = BytesMut::from(bytes);
            let before = self.to_app.len();
            let r = self.relay.client_frames(&mut input, &mut self.to_app);
            self.relay.take_injected(&mut self.to_client);
            if self.to_app[before..].starts_with(PREFACE) {
                let rest = self.to_app.split_off(before + PREFACE.len());
                self.to_app.truncate(before);
                let h = parse_head(&rest);
                assert_eq!(h.kind, SETTINGS, "the client's SETTINGS follow the preface");
                self.to_app.extend_from_slice(&rest[9 + h.len..]);
            }
            r
        }

        fn app(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
            let mut input = BytesMut::from(bytes);
            self.relay.app_frames(&mut input, &mut self.to_client)
        }

        fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
            self.enc
                .encode(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
        }

        fn request(&mut self, stream: u32, path: &str, extra: &[(&str, &str)], end: bool) {
            let mut h = vec![
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "web"),
                (":path", path),
            ];
            h.extend_from_slice(extra);
            let block = self.block(&h);
            let flags = END_HEADERS | if end { END_STREAM } else { 0 };
            self.client(&frame(HEADERS, flags, stream, &block)).unwrap();
        }
    }

    #[test]
    fn allowed_requests_are_reencoded_with_only_the_verified_identity() {
        let gate = TestGate {
            id: Some(b"web.ns.serviceaccount.identity.linkerd.cluster.local".to_vec()),
            ..TestGate::default()
        };
        let mut h = Harness::new(&gate, limits());
        h.request(
            1,
            "/a?q=1",
            &[("l5d-client-id", "forged"), ("x-a", "1")],
            true,
        );
        let out = frames(&h.to_app);
        assert_eq!(out.len(), 1);
        let (kind, flags, stream, block) = &out[0];
        assert_eq!((*kind, *stream), (HEADERS, 1));
        assert_eq!(*flags, END_HEADERS | END_STREAM);
        let got = fields(&mut Decoder::new(), block);
        let ids: Vec<_> = got.iter().filter(|(n, _)| n == "l5d-client-id").collect();
        assert_eq!(ids.len(), 1, "{got:?}");
        assert_eq!(
            ids[0].1,
            "web.ns.serviceaccount.identity.linkerd.cluster.local"
        );
        assert!(got.contains(&(":path".into(), "/a?q=1".into())));
        assert!(got.contains(&("x-a".into(), "1".into())));
        assert_eq!(
            gate.requests.borrow()[0],
            ("POST".into(), "/a".into(), Some(b"1".to_vec())),
            "policy sees the path without its query"
        );
        assert!(h.to_client.is_empty());
    }

    #[test]
    fn denied_requests_are_answered_and_their_data_credited_back() {
        let gate = TestGate::default();
        let mut h = Harness::new(&gate, limits());
        h.request(1, "/b", &[], false);
        h.client(&frame(DATA, 0, 1, &[7; 100])).unwrap();
        h.client(&frame(DATA, END_STREAM, 1, &[7; 20])).unwrap();
        assert!(h.to_app.is_empty(), "nothing of it reaches the app");
        let out = frames(&h.to_client);
        assert_eq!(out[0].0, HEADERS);
        assert_eq!(out[0].1, END_HEADERS | END_STREAM);
        let rsp = fields(&mut Decoder::new(), &out[0].3);
        assert_eq!(rsp[0], (":status".into(), "403".into()));
        assert!(rsp.contains(&(
            "l5d-proxy-error".into(),
            "unauthorized request on route".into()
        )));
        assert_eq!(out[1], (RST_STREAM, 0, 1, NO_ERROR.to_be_bytes().to_vec()));
        assert_eq!(out[2], (WINDOW_UPDATE, 0, 0, 100u32.to_be_bytes().to_vec()));
        assert_eq!(out[3], (WINDOW_UPDATE, 0, 0, 20u32.to_be_bytes().to_vec()));
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn grpc_denials_are_permission_denied() {
        let gate = TestGate::default();
        let mut h = Harness::new(&gate, limits());
        h.request(
            1,
            "/pkg.Svc/M",
            &[("content-type", "application/grpc")],
            true,
        );
        let out = frames(&h.to_client);
        let rsp = fields(&mut Decoder::new(), &out[0].3);
        assert_eq!(rsp[0], (":status".into(), "200".into()));
        assert!(rsp.contains(&("grpc-status".into(), "7".into())));
    }

    #[test]
    fn the_hpack_table_stays_in_step_across_denied_requests() {
        let gate = TestGate::default();
        let mut h = Harness::new(&gate, limits());
        // The denied request's fields enter the client's table; the next
        // request refers to them by index.
        h.request(1, "/b", &[("x-a", "shared")], true);
        h.request(3, "/a", &[("x-a", "shared")], true);
        let out = frames(&h.to_app);
        assert_eq!(out.len(), 1);
        let got = fields(&mut Decoder::new(), &out[0].3);
        assert!(got.contains(&("x-a".into(), "shared".into())), "{got:?}");
        assert!(got.contains(&(":authority".into(), "web".into())));
        assert_eq!(gate.requests.borrow()[1].2.as_deref(), Some(&b"shared"[..]));
    }

    #[test]
    fn settings_carry_the_proxys_limits_both_ways() {
        let gate = TestGate::default();
        let mut relay = Relay::new(&gate, limits());
        let (mut to_app, mut to_client) = (Vec::new(), Vec::new());
        let client = settings(&[
            (ENABLE_PUSH, 1),
            (MAX_FRAME_SIZE, 1 << 20),
            (HEADER_TABLE_SIZE, 1 << 20),
            (0x4, 1 << 20),
        ]);
        relay
            .client_frames(&mut BytesMut::from(&client[..]), &mut to_app)
            .unwrap();
        relay.take_injected(&mut to_client);
        // No app connection yet: the proxy answers with its own SETTINGS.
        assert!(to_app.is_empty());
        let out = frames(&to_client);
        assert_eq!(
            settings_of(&out[0].3),
            vec![
                (MAX_CONCURRENT_STREAMS, 100),
                (MAX_HEADER_LIST_SIZE, 16 * 1024)
            ]
        );
        assert_eq!((out[1].0, out[1].1), (SETTINGS, ACK));
        // The first forwarded request opens the app connection with the
        // client's SETTINGS, rewritten.
        let block = loona_hpack::Encoder::new().encode([
            (&b":method"[..], &b"GET"[..]),
            (b":scheme", b"http"),
            (b":path", b"/a"),
        ]);
        let req = frame(HEADERS, END_HEADERS | END_STREAM, 1, &block);
        relay
            .client_frames(&mut BytesMut::from(&req[..]), &mut to_app)
            .unwrap();
        assert!(to_app.starts_with(PREFACE));
        let sent = frames(&to_app[PREFACE.len()..]);
        assert_eq!(
            settings_of(&sent[0].3),
            vec![
                (MAX_FRAME_SIZE, MAX_FRAME as u32),
                (HEADER_TABLE_SIZE, MAX_TABLE),
                (0x4, 1 << 20),
                (ENABLE_PUSH, 0)
            ]
        );
        assert_eq!(sent[1].0, HEADERS);
        // The app's SETTINGS reach the client with the proxy's limits; its
        // ACK of the replayed SETTINGS, and the client's ACK of the proxy's,
        // are the proxy's own and go no further.
        to_client.clear();
        let app = settings(&[(ENABLE_CONNECT_PROTOCOL, 1), (MAX_CONCURRENT_STREAMS, 1000)]);
        let mut app_in = BytesMut::from(&app[..]);
        app_in.extend_from_slice(&frame(SETTINGS, ACK, 0, &[]));
        relay.app_frames(&mut app_in, &mut to_client).unwrap();
        let out = frames(&to_client);
        assert_eq!(out.len(), 1, "the app's ACK stays with the proxy");
        assert_eq!(
            settings_of(&out[0].3),
            vec![
                (MAX_CONCURRENT_STREAMS, 100),
                (MAX_HEADER_LIST_SIZE, 16 * 1024)
            ]
        );
        to_app.clear();
        let acks = [frame(SETTINGS, ACK, 0, &[]), frame(SETTINGS, ACK, 0, &[])].concat();
        relay
            .client_frames(&mut BytesMut::from(&acks[..]), &mut to_app)
            .unwrap();
        assert_eq!(
            frames(&to_app),
            vec![(SETTINGS, ACK, 0, vec![])],
            "one ACK is the app's"
        );
    }

    #[test]
    fn a_connection_without_allowed_requests_never_reaches_the_app() {
        let gate = TestGate::default();
        let mut h = Harness::new(&gate, limits());
        h.client(&frame(PING, 0, 0, b"12345678")).unwrap();
        h.client(&frame(WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes()))
            .unwrap();
        h.request(1, "/b", &[], true);
        // Late frames of an answered stream (a protocol error of the
        // client's) stay here too: the app sees nothing before its preface.
        h.client(&frame(DATA, 0, 1, b"late")).unwrap();
        h.client(&frame(SETTINGS, ACK, 0, &[])).unwrap();
        h.client(&frame(SETTINGS, ACK, 0, &[])).unwrap();
        assert!(h.to_app.is_empty(), "nothing for the app");
        let out = frames(&h.to_client);
        assert_eq!(
            out[0],
            (PING, ACK, 0, b"12345678".to_vec()),
            "the proxy answers"
        );
        assert_eq!(out[1].0, HEADERS, "the 403");
        assert_eq!(out[2], (WINDOW_UPDATE, 0, 0, 4u32.to_be_bytes().to_vec()));
        // The first allowed request brings the window update along.
        h.request(3, "/a", &[], true);
        let out = frames(&h.to_app);
        assert_eq!(
            out[0],
            (WINDOW_UPDATE, 0, 0, 1000u32.to_be_bytes().to_vec())
        );
        assert_eq!((out[1].0, out[1].2), (HEADERS, 3));
        // From now on PINGs are the app's to answer.
        h.client(&frame(PING, 0, 0, b"abcdefgh")).unwrap();
        assert_eq!(frames(&h.to_app)[2].0, PING);
    }

    #[test]
    fn an_unreachable_app_gets_the_waiting_requests_502s() {
        let gate = TestGate::default();
        let mut h = Harness::new(&gate, limits());
        h.request(1, "/a", &[("content-type", "application/grpc")], false);
        h.request(3, "/a", &[], true);
        h.to_client.clear();
        h.relay.app_unreachable();
        h.relay.take_injected(&mut h.to_client);
        let out = frames(&h.to_client);
        let mut dec = Decoder::new();
        let first = fields(&mut dec, &out[0].3);
        assert!(
            first.contains(&("grpc-status".into(), "14".into())),
            "{first:?}"
        );
        assert_eq!(out[1].0, RST_STREAM, "the unfinished request is cut short");
        let second = fields(&mut dec, &out[2].3);
        assert_eq!(second[0], (":status".into(), "502".into()));
        assert_eq!(out.last().unwrap().0, GOAWAY);
        assert_eq!(*gate.responses.borrow(), vec![(200, Some(14)), (502, None)]);
        assert!(h.relay.is_idle());
    }

    #[test]
    fn the_proxys_frames_never_split_a_response_header_block() {
        let gate = TestGate::default();
        let mut h = Harness::new(&gate, limits());
        h.request(1, "/a", &[], true);
        let mut rsp = loona_hpack::Encoder::new();
        let block = rsp.encode([(&b":status"[..], &b"200"[..]), (b"x-long", &[b'v'; 40][..])]);
        let (first, rest) = block.split_at(5);
        h.app(&frame(HEADERS, 0, 1, first)).unwrap();
        h.request(3, "/b", &[], true);
        assert_eq!(frames(&h.to_client).len(), 1, "the 403 waits");
        h.app(&frame(CONTINUATION, END_HEADERS, 1, rest)).unwrap();
        let out = frames(&h.to_client);
        let kinds: Vec<_> = out.iter().map(|f| (f.0, f.2)).collect();
        assert_eq!(kinds, vec![(HEADERS, 1), (CONTINUATION, 1), (HEADERS, 3)]);
    }

    #[test]
    fn responses_are_counted_with_grpc_status_from_trailers() {
        let gate = TestGate::default();
        let mut h = Harness::new(&gate, limits());
        h.request(1, "/a", &[], true);
        let mut rsp = loona_hpack::Encoder::new();
        let head = rsp.encode([(&b":status"[..], &b"200"[..])]);
        let trailers = rsp.encode([(&b"grpc-status"[..], &b"5"[..])]);
        h.app(&frame(HEADERS, END_HEADERS, 1, &head)).unwrap();
        h.app(&frame(DATA, 0, 1, b"body")).unwrap();
        assert!(gate.responses.borrow().is_empty(), "counted when it ends");
        h.app(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &trailers))
            .unwrap();
        assert_eq!(*gate.responses.borrow(), vec![(200, Some(5))]);
        assert!(h.relay.is_idle());
        // Everything the app sent reached the client verbatim.
        assert_eq!(frames(&h.to_client).len(), 3);
    }

    #[test]
    fn malformed_requests_are_reset_and_a_flood_of_them_closes() {
        let gate = TestGate::default();
        let mut h = Harness::new(&gate, limits());
        let bad: [&[(&str, &str)]; 4] = [
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/a"),
                ("X-Up", "1"),
            ],
            &[
                (":method", "GET"),
                ("x-a", "1"),
                (":scheme", "http"),
                (":path", "/a"),
            ],
            &[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/a"),
                ("connection", "x"),
            ],
            &[(":method", "CONNECT"), (":authority", "web:443")],
        ];
        for (i, headers) in bad.iter().enumerate() {
            let block = h.block(headers);
            let r = h.client(&frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                2 * i as u32 + 1,
                &block,
            ));
            if i < 3 {
                r.unwrap();
            } else {
                assert_eq!(r.unwrap_err().code, ENHANCE_YOUR_CALM, "past the limit");
            }
        }
        assert!(h.to_app.is_empty());
        let resets: Vec<_> = frames(&h.to_client)
            .into_iter()
            .filter(|f| f.0 == RST_STREAM)
            .map(|f| (f.2, f.3))
            .collect();
        assert_eq!(resets.len(), 4);
        assert!(resets
            .iter()
            .all(|(_, code)| *code == PROTOCOL_ERROR.to_be_bytes()));
        assert!(gate.requests.borrow().is_empty(), "policy never saw them");
    }

    #[test]
    fn streams_over_the_concurrency_limit_are_refused() {
        let gate = TestGate::default();
        let mut h = Harness::new(
            &gate,
            Limits {
                max_concurrent_streams: 2,
                ..limits()
            },
        );
        for id in [1, 3, 5] {
            h.request(id, "/a", &[], false);
        }
        assert_eq!(frames(&h.to_app).len(), 2);
        let out = frames(&h.to_client);
        assert_eq!(
            out,
            vec![(RST_STREAM, 0, 5, REFUSED_STREAM.to_be_bytes().to_vec())]
        );
        // Its late DATA is dropped, not forwarded.
        h.client(&frame(DATA, END_STREAM, 5, b"x")).unwrap();
        assert_eq!(frames(&h.to_app).len(), 2);
    }

    #[test]
    fn streams_reset_before_their_response_are_limited() {
        let gate = TestGate::default();
        let mut h = Harness::new(&gate, limits());
        let mut last = Ok(());
        for i in 0..5u32 {
            let id = 2 * i + 1;
            h.request(id, "/a", &[], true);
            last = h.client(&frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
            if last.is_err() {
                assert_eq!(i, 3, "the fourth reset crosses a limit of 3");
                break;
            }
        }
        assert_eq!(last.unwrap_err().code, ENHANCE_YOUR_CALM);
    }

    #[test]
    fn an_oversized_header_list_gets_431() {
        let gate = TestGate::default();
        let mut h = Harness::new(&gate, limits());
        let big = "v".repeat(20_000);
        h.request(1, "/a", &[("x-big", &big)], true);
        assert!(h.to_app.is_empty());
        let out = frames(&h.to_client);
        let rsp = fields(&mut Decoder::new(), &out[0].3);
        assert_eq!(rsp[0], (":status".into(), "431".into()));
        // The table kept up: the next request decodes.
        h.request(3, "/a", &[], true);
        assert_eq!(frames(&h.to_app).len(), 1);
    }

    #[test]
    fn header_blocks_span_continuations_both_ways() {
        let gate = TestGate::default();
        let mut h = Harness::new(
            &gate,
            Limits {
                max_header_list: 64 * 1024,
                ..limits()
            },
        );
        let big = "v".repeat(15_000);
        let block = h.block(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/a"),
            ("x-1", &big),
            ("x-2", &big),
        ]);
        let (a, b) = block.split_at(100);
        h.client(&frame(HEADERS, END_STREAM, 1, a)).unwrap();
        assert!(h.to_app.is_empty(), "not before the block ends");
        h.client(&frame(CONTINUATION, END_HEADERS, 1, b)).unwrap();
        // Re-encoded over 16 KiB: split at the app's frame size.
        let out = frames(&h.to_app);
        let kinds: Vec<_> = out.iter().map(|f| (f.0, f.1)).collect();
        assert_eq!(
            kinds,
            vec![(HEADERS, END_STREAM), (CONTINUATION, END_HEADERS)]
        );
        assert!(out.iter().all(|f| f.3.len() <= DEFAULT_MAX_FRAME));
        let joined: Vec<u8> = out.iter().flat_map(|f| f.3.clone()).collect();
        assert!(fields(&mut Decoder::new(), &joined).contains(&("x-2".into(), big.clone())));
        // A block interrupted by another frame is a connection error.
        let block = h.block(&[(":method", "GET"), (":scheme", "http"), (":path", "/a")]);
        h.client(&frame(HEADERS, 0, 3, &block)).unwrap();
        let err = h.client(&frame(DATA, 0, 3, b"x")).unwrap_err();
        assert_eq!(err.code, PROTOCOL_ERROR);
    }
}
