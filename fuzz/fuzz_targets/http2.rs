//! Fuzz target: the HTTP/2 relay's pure core
//! (`portcullis_proxy::http2::Relay`) over arbitrary client and app bytes,
//! and the HPACK decoder (`portcullis_proxy::hpack::Decoder`) over
//! arbitrary header blocks. Nothing may panic, and:
//! - what the relay writes to either side is whole, well-formed frames
//!   (lengths within `MAX_FRAME`, header blocks not interleaved with other
//!   frames, valid HEADERS padding);
//! - every header block to the app decodes (one decoder for the direction,
//!   every block in order) into a valid request or trailers: pseudo-headers
//!   first and known, lowercase names, no connection-specific fields, no
//!   CR/LF/NUL, no `l5d-client-id` (the test gate has no identity), and a
//!   `:path` the gate allowed; one request block per allowed request;
//! - every header block to the client decodes the same way, unless the
//!   relay itself refused that block (an app COMPRESSION_ERROR);
//! - SETTINGS to the app turn push off and cap frame and table sizes;
//!   SETTINGS to the client cap streams and header lists to the limits;
//! - HPACK mode: a block that decodes re-encodes (literals, no indexing)
//!   into a block that decodes to the same fields.
//!
//! Input: `[mode, client_len (u16 BE), chunk_seed, client bytes, app
//! bytes]`; mode bits 6-7 = 11 selects HPACK mode (`[mode, allowed,
//! (len, block)*]`), bits 0-3 pick the limits. Each side's stream gets an
//! empty SETTINGS frame first (the relay requires one) and is fed in chunks
//! of varying size, alternating client and app.
//!
//! Run: `cargo +nightly fuzz run http2` from `fuzz/` (seed corpus in
//! `corpus/http2`).

#![no_main]

use std::cell::Cell;
use std::time::Duration;

use bytes::BytesMut;
use http::header::CONTENT_TYPE;
use http::{HeaderName, Method, Response};
use libfuzzer_sys::fuzz_target;
use portcullis_policy::RequestHeaders;
use portcullis_proxy::authz::{respond, Refusal};
use portcullis_proxy::hpack::Decoder;
use portcullis_proxy::http::ProxyBody;
use portcullis_proxy::http2::{
    headers_fragment, settings_params, ConnError, Gate, Limits, Relay, Side, COMPRESSION_ERROR,
    MAX_FRAME, MAX_TABLE, PREFACE,
};

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const CONTINUATION: u8 = 0x9;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, SETTINGS, 0, 0, 0, 0, 0];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 0xc0 == 0xc0 {
        hpack(rest);
    } else {
        relay(mode, rest);
    }
});

/// Allows paths starting with `/a`, denies the rest with the proxy's 403.
#[derive(Default)]
struct TestGate {
    allowed: Cell<usize>,
    denied: Cell<usize>,
    responses: Cell<usize>,
}

impl Gate for TestGate {
    fn request(
        &self,
        _method: &Method,
        path: &str,
        headers: &dyn RequestHeaders,
    ) -> Result<(), Response<ProxyBody>> {
        // Policy reads headers: a static-table name and a literal one.
        for name in [CONTENT_TYPE, HeaderName::from_static("x-a")] {
            headers.any_value(&name, &mut |v| v.is_empty());
        }
        if path.starts_with("/a") {
            self.allowed.set(self.allowed.get() + 1);
            Ok(())
        } else {
            self.denied.set(self.denied.get() + 1);
            Err(respond(Refusal::Unauthorized, false))
        }
    }

    fn client_id(&self) -> Option<&[u8]> {
        None
    }

    fn response(&self, status: u16, _grpc_status: Option<u32>, _latency: Duration) {
        // Interim (1xx) responses are not counted.
        assert!(status >= 200, "response counted with status {status}");
        self.responses.set(self.responses.get() + 1);
    }
}

fn relay(mode: u8, data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let client_len = usize::from(u16::from_be_bytes([head[0], head[1]])).min(rest.len());
    let (client_bytes, app_bytes) = rest.split_at(client_len);
    let limits = Limits {
        max_concurrent_streams: 1 + u32::from(mode & 3),
        max_header_list: 128 << ((mode >> 2) & 3),
        max_pending_resets: 2,
        max_local_resets: 2,
        idle_timeout: Duration::from_secs(1),
    };
    let client: Vec<u8> = EMPTY_SETTINGS.iter().chain(client_bytes).copied().collect();
    let app: Vec<u8> = EMPTY_SETTINGS.iter().chain(app_bytes).copied().collect();

    let gate = TestGate::default();
    let mut relay = Relay::new(&gate, limits.clone());
    let (mut from_client, mut from_app) = (BytesMut::new(), BytesMut::new());
    let (mut to_app, mut to_client) = (Vec::new(), Vec::new());
    let (mut c, mut a) = (0, 0);
    let mut seed = u32::from(head[2]) | 0x100;
    let mut error = None;
    while c < client.len() || a < app.len() {
        let n = chunk(&mut seed).min(client.len() - c);
        from_client.extend_from_slice(&client[c..c + n]);
        c += n;
        if let Err(e) = relay.client_frames(&mut from_client, &mut to_app) {
            error = Some(e);
            break;
        }
        relay.take_injected(&mut to_client);
        let n = chunk(&mut seed).min(app.len() - a);
        from_app.extend_from_slice(&app[a..a + n]);
        a += n;
        if let Err(e) = relay.app_frames(&mut from_app, &mut to_client) {
            error = Some(e);
            break;
        }
        relay.take_injected(&mut to_client);
    }

    let requests = check_to_app(&to_app);
    assert_eq!(
        requests,
        gate.allowed.get(),
        "a request block per allowed request"
    );
    assert!(gate.responses.get() <= gate.allowed.get());
    check_to_client(&to_client, &limits, error);
}

/// Chunk sizes: mostly small (frames split anywhere), sometimes whole.
fn chunk(seed: &mut u32) -> usize {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 17;
    *seed ^= *seed << 5;
    [1, 2, 3, 8, 9, 10, 17, 64, 200, 1000, 5000, 70_000][(*seed % 12) as usize]
}

struct Frame<'a> {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &'a [u8],
}

/// Splits relay output into frames: it only ever writes whole ones.
fn frames(mut out: &[u8]) -> Vec<Frame<'_>> {
    let mut v = Vec::new();
    while !out.is_empty() {
        assert!(out.len() >= 9, "a partial frame header: {out:02x?}");
        let len = usize::from(out[0]) << 16 | usize::from(out[1]) << 8 | usize::from(out[2]);
        assert!(len <= MAX_FRAME, "a frame of {len} bytes");
        assert!(out.len() >= 9 + len, "a partial frame");
        v.push(Frame {
            kind: out[3],
            flags: out[4],
            stream: u32::from_be_bytes([out[5], out[6], out[7], out[8]]) & 0x7fff_ffff,
            payload: &out[9..9 + len],
        });
        out = &out[9 + len..];
    }
    v
}

/// Header blocks (reassembled from HEADERS + CONTINUATION), checking that
/// nothing is interleaved with them. `open` is a block still in progress.
struct Blocks {
    open: Option<(u32, Vec<u8>)>,
}

impl Blocks {
    /// Returns a complete block when `f` ends one.
    fn frame(&mut self, f: &Frame) -> Option<Vec<u8>> {
        if let Some((stream, _)) = &self.open {
            assert!(
                f.kind == CONTINUATION && f.stream == *stream,
                "a header block interrupted by a frame of type {}",
                f.kind
            );
        }
        let fragment = match f.kind {
            HEADERS => headers_fragment(f.flags, f.payload).expect("HEADERS padding was checked"),
            CONTINUATION => {
                assert!(self.open.is_some(), "CONTINUATION outside a block");
                f.payload
            }
            _ => return None,
        };
        let (_, block) = self.open.get_or_insert_with(|| (f.stream, Vec::new()));
        block.extend_from_slice(fragment);
        if f.flags & END_HEADERS != 0 {
            self.open.take().map(|(_, b)| b)
        } else {
            None
        }
    }
}

fn settings(payload: &[u8]) -> Vec<(u16, u32)> {
    assert_eq!(payload.len() % 6, 0, "SETTINGS length");
    settings_params(payload).collect()
}

/// Checks the frames to the app; returns how many request blocks it got.
fn check_to_app(out: &[u8]) -> usize {
    // The app connection exists once something is sent, and opens with
    // the preface.
    let out = match out.strip_prefix(&PREFACE[..]) {
        Some(rest) => rest,
        None => {
            assert!(out.is_empty(), "bytes to the app before the preface");
            out
        }
    };
    let mut blocks = Blocks { open: None };
    let mut decoder = Decoder::new();
    let mut requests = 0;
    for f in frames(out) {
        if f.kind == SETTINGS && f.flags & ACK == 0 {
            assert_eq!(f.stream, 0);
            let s = settings(f.payload);
            assert_eq!(s.last(), Some(&(0x2, 0)), "push disabled last");
            for (id, value) in s {
                match id {
                    0x1 => assert!(value <= MAX_TABLE),
                    0x2 => assert_eq!(value, 0, "push enabled"),
                    0x5 => assert!(value as usize <= MAX_FRAME),
                    _ => {}
                }
            }
        }
        if f.kind == HEADERS {
            // Re-encoded by the relay: no padding or priority.
            assert_eq!(f.flags & (PADDED | PRIORITY), 0);
        }
        let Some(block) = blocks.frame(&f) else {
            continue;
        };
        let mut fields = Vec::new();
        decoder
            .decode(&block, |n, v| fields.push((n.to_vec(), v.to_vec())))
            .expect("a block to the app decodes");
        if check_request(&fields) {
            requests += 1;
        }
    }
    assert!(blocks.open.is_none(), "a header block to the app left open");
    requests
}

/// A block the relay forwards: a request (returns true) or trailers.
fn check_request(fields: &[(Vec<u8>, Vec<u8>)]) -> bool {
    let mut regular = false;
    let mut seen: Vec<&[u8]> = Vec::new();
    for (name, value) in fields {
        assert!(
            !value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n'),
            "a value with CR, LF or NUL: {value:02x?}"
        );
        if name.starts_with(b":") {
            assert!(!regular, "a pseudo-header after regular ones");
            assert!(
                matches!(
                    &name[..],
                    b":method" | b":path" | b":scheme" | b":authority"
                ),
                "pseudo-header {name:02x?}"
            );
            assert!(!seen.contains(&&name[..]), "repeated {name:02x?}");
            seen.push(name);
            if name == b":path" {
                assert!(
                    value.starts_with(b"/a"),
                    "a denied path forwarded: {value:02x?}"
                );
            }
            continue;
        }
        regular = true;
        assert!(
            !name.is_empty()
                && !name
                    .iter()
                    .any(|&b| b.is_ascii_uppercase() || b <= b' ' || b == b':' || b >= 0x7f),
            "a bad name forwarded: {name:02x?}"
        );
        assert!(
            !matches!(
                &name[..],
                b"connection"
                    | b"keep-alive"
                    | b"proxy-connection"
                    | b"transfer-encoding"
                    | b"upgrade"
            ),
            "a connection-specific field forwarded"
        );
        assert!(name != b"te" || value == b"trailers");
        assert!(
            name != b"l5d-client-id",
            "the client's l5d-client-id forwarded"
        );
    }
    let request = seen.contains(&&b":method"[..]);
    if request {
        assert!(seen.contains(&&b":scheme"[..]) && seen.contains(&&b":path"[..]));
    }
    request
}

fn check_to_client(out: &[u8], limits: &Limits, error: Option<ConnError>) {
    let mut blocks = Blocks { open: None };
    let mut decoder = Decoder::new();
    // The relay's own decoder is stricter (what the client allowed): a
    // block it accepted must decode here too.
    decoder.set_allowed(usize::MAX);
    let mut decoding = true;
    for f in frames(out) {
        if f.kind == SETTINGS && f.flags & ACK == 0 && f.stream == 0 {
            for (id, value) in settings(f.payload) {
                match id {
                    0x1 => assert!(value <= MAX_TABLE),
                    0x2 | 0x8 => panic!("setting {id} relayed to the client"),
                    0x3 => assert!(value <= limits.max_concurrent_streams),
                    0x5 => assert!(value as usize <= MAX_FRAME),
                    0x6 => assert!(value <= limits.max_header_list),
                    _ => {}
                }
            }
        }
        let Some(block) = blocks.frame(&f) else {
            continue;
        };
        if decoding && decoder.decode(&block, |_, _| {}).is_err() {
            assert!(
                matches!(
                    error,
                    Some(ConnError {
                        code: COMPRESSION_ERROR,
                        side: Side::App,
                        ..
                    })
                ),
                "a response block the relay accepted does not decode: {error:?}"
            );
            decoding = false;
        }
    }
}

/// HPACK mode: `[allowed, (len, block)*]` through one decoder.
fn hpack(data: &[u8]) {
    let Some((&allowed, mut rest)) = data.split_first() else {
        return;
    };
    let mut decoder = Decoder::new();
    decoder.set_allowed(usize::from(allowed) << 6);
    while let Some((&len, tail)) = rest.split_first() {
        let (block, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        let mut fields = Vec::new();
        if decoder
            .decode(block, |n, v| fields.push((n.to_vec(), v.to_vec())))
            .is_err()
        {
            return;
        }
        let mut again = Vec::new();
        for (n, v) in &fields {
            again.push(0x00); // literal without indexing, new name
            put_str(&mut again, n);
            put_str(&mut again, v);
        }
        let mut decoded = Vec::new();
        Decoder::new()
            .decode(&again, |n, v| decoded.push((n.to_vec(), v.to_vec())))
            .expect("a re-encoded block decodes");
        assert_eq!(decoded, fields);
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let mut len = s.len();
    if len < 127 {
        out.push(len as u8);
    } else {
        out.push(127);
        len -= 127;
        while len >= 128 {
            out.push((len % 128) as u8 | 0x80);
            len /= 128;
        }
        out.push(len as u8);
    }
    out.extend_from_slice(s);
}
