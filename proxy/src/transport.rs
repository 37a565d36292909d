//! Linkerd's opaque-transport header: the first bytes a meshed client sends
//! on the direct path (a connection to the inbound port itself, after the
//! mTLS handshake with ALPN `transport.l5d.io/v1`), naming the port it
//! really wants.
//!
//! Wire format (linkerd2-proxy's `transport-header`, `header.proto`):
//!
//! ```text
//! "transport.l5d.io/v1\r\n\r\n"  u32 big-endian length  protobuf Header
//! message Header { int32 port = 1; string name = 2; SessionProtocol session_protocol = 3; }
//! message SessionProtocol { oneof kind { Http1 http1 = 1; Http2 http2 = 2; } }
//! ```
//!
//! Owns: the pure parser [`decode`] (three outcomes: a header, need more
//! bytes, or an error), [`encode`] (for tests and clients), and [`read`],
//! which feeds `decode` from a connection under one deadline. The protobuf
//! messages are private here: this wire format belongs to the data plane,
//! not to the policy API (whose types live in `policy-client/src/proto.rs`).
//!
//! Must not: trust the length field (capped at [`MAX_HEADER_LEN`]) or let a
//! client that trickles bytes hold the connection past the deadline. Called by the direct path in `inbound.rs` and by the
//! `transport_header` fuzz target.

use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The ALPN protocol and preface tag of Linkerd's opaque transport.
pub const PROTOCOL: &[u8] = b"transport.l5d.io/v1";
/// The bytes that open the header.
pub const PREFACE: &[u8] = b"transport.l5d.io/v1\r\n\r\n";
/// The largest header message accepted. Real headers are a few dozen bytes
/// (a port and a DNS name); the cap keeps a client from making us buffer.
pub const MAX_HEADER_LEN: usize = 64 * 1024;

const PREFIX_LEN: usize = PREFACE.len() + 4;

/// The protocol the client will speak after the header.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum SessionProtocol {
    Http1,
    Http2,
}

/// A decoded transport header.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// The target port (1..=65535).
    pub port: u16,
    /// The logical name of the target, if the client sent one.
    pub name: Option<String>,
    /// `None`: the connection is opaque.
    pub protocol: Option<SessionProtocol>,
}

/// Why bytes are not a valid transport header (always the peer's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the connection does not start with the transport.l5d.io/v1 preface")]
    BadPreface,
    #[error("transport header of {len} bytes exceeds the {MAX_HEADER_LEN}-byte limit")]
    TooLong { len: u32 },
    #[error("transport header is not a valid protobuf Header: {0}")]
    Decode(String),
    #[error("transport header names invalid port {0}")]
    BadPort(i32),
    #[error("transport header names an invalid target name")]
    BadName,
}

mod pb {
    //! The protobuf messages of `header.proto` (package `transport.l5d.io`).

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Header {
        #[prost(int32, tag = "1")]
        pub port: i32,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(message, optional, tag = "3")]
        pub session_protocol: Option<SessionProtocol>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SessionProtocol {
        #[prost(oneof = "session_protocol::Kind", tags = "1, 2")]
        pub kind: Option<session_protocol::Kind>,
    }

    pub mod session_protocol {
        #[derive(Clone, Copy, PartialEq, prost::Message)]
        pub struct Http1 {}
        #[derive(Clone, Copy, PartialEq, prost::Message)]
        pub struct Http2 {}

        #[derive(Clone, Copy, PartialEq, prost::Oneof)]
        pub enum Kind {
            #[prost(message, tag = "1")]
            Http1(Http1),
            #[prost(message, tag = "2")]
            Http2(Http2),
        }
    }
}

/// Parses a transport header at the start of `buf`.
///
/// `Ok(Some((header, consumed)))`: a complete header; the application data
/// starts at `buf[consumed..]`. `Ok(None)`: `buf` is a valid beginning, read
/// more. `Err`: not a header (a wrong preface is reported as soon as one
/// byte disagrees), too long, or undecodable.
pub fn decode(buf: &[u8]) -> Result<Option<(Header, usize)>, HeaderError> {
    let seen = buf.len().min(PREFACE.len());
    if buf.get(..seen) != PREFACE.get(..seen) {
        return Err(HeaderError::BadPreface);
    }
    let Some(len_bytes) = buf.get(PREFACE.len()..PREFIX_LEN) else {
        return Ok(None);
    };
    let mut len = [0u8; 4];
    len.copy_from_slice(len_bytes);
    let len = u32::from_be_bytes(len);
    let msg_len = usize::try_from(len).unwrap_or(usize::MAX);
    if msg_len > MAX_HEADER_LEN {
        return Err(HeaderError::TooLong { len });
    }
    let end = PREFIX_LEN + msg_len;
    let Some(msg) = buf.get(PREFIX_LEN..end) else {
        return Ok(None);
    };
    let pb::Header {
        port,
        name,
        session_protocol,
    } = pb::Header::decode(msg).map_err(|e| HeaderError::Decode(e.to_string()))?;
    let port = match u16::try_from(port) {
        Ok(p) if p != 0 => p,
        _ => return Err(HeaderError::BadPort(port)),
    };
    let name = if name.is_empty() {
        None
    } else if is_dns_name(&name) {
        Some(name)
    } else {
        return Err(HeaderError::BadName);
    };
    // An unknown kind (a future protocol) is handled opaquely, as Linkerd does.
    let protocol = session_protocol
        .and_then(|p| p.kind)
        .map(|kind| match kind {
            pb::session_protocol::Kind::Http1(_) => SessionProtocol::Http1,
            pb::session_protocol::Kind::Http2(_) => SessionProtocol::Http2,
        });
    Ok(Some((
        Header {
            port,
            name,
            protocol,
        },
        end,
    )))
}

/// The bytes of `header`, preface and length included.
pub fn encode(header: &Header) -> Vec<u8> {
    let msg = pb::Header {
        port: i32::from(header.port),
        name: header.name.clone().unwrap_or_default(),
        session_protocol: header.protocol.map(|p| pb::SessionProtocol {
            kind: Some(match p {
                SessionProtocol::Http1 => {
                    pb::session_protocol::Kind::Http1(pb::session_protocol::Http1 {})
                }
                SessionProtocol::Http2 => {
                    pb::session_protocol::Kind::Http2(pb::session_protocol::Http2 {})
                }
            }),
        }),
    }
    .encode_to_vec();
    let mut out = Vec::with_capacity(PREFIX_LEN + msg.len());
    out.extend_from_slice(PREFACE);
    // A header holds a u16 and a name: far below u32::MAX.
    out.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&msg);
    out
}

/// Why a transport header could not be read from a connection (the peer's
/// fault in every case).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("connection closed before the transport header was complete ({read} bytes read)")]
    Eof { read: usize },
    #[error("transport header not received within {0:?}")]
    Timeout(Duration),
    #[error("reading the transport header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads a transport header from `io` within `timeout` (one deadline for the
/// whole header, so trickled bytes cannot extend it). Returns the header and
/// the bytes read past it, which belong to the application stream and must
/// be replayed before the rest of `io`.
pub async fn read<IO: AsyncRead + Unpin>(
    io: &mut IO,
    timeout: Duration,
) -> Result<(Header, Vec<u8>), ReadError> {
    let read_all = async {
        let mut buf = Vec::with_capacity(256);
        loop {
            if let Some((header, consumed)) = decode(&buf)? {
                let rest = buf.split_off(consumed);
                return Ok((header, rest));
            }
            // `decode` rejected any length above the cap, so `buf` stays
            // below PREFIX_LEN + MAX_HEADER_LEN plus one read.
            buf.reserve(4096);
            if io.read_buf(&mut buf).await? == 0 {
                return Err(ReadError::Eof { read: buf.len() });
            }
        }
    };
    match tokio::time::timeout(timeout, read_all).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ReadError::Timeout(timeout)),
    }
}

/// Linkerd parses the name as a DNS name; we accept the same shape (ASCII
/// letters, digits, `-`, `_`, `.`; at most 253 bytes) so it is safe to log.
fn is_dns_name(s: &str) -> bool {
    s.len() <= 253
        && !s.starts_with('.')
        && !s.contains("..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            port: 3306,
            name: Some("mysql.db.svc.cluster.local".into()),
            protocol: None,
        }
    }

    #[test]
    fn round_trips_every_protocol() {
        for protocol in [
            None,
            Some(SessionProtocol::Http1),
            Some(SessionProtocol::Http2),
        ] {
            for name in [None, Some("web.emojivoto.svc.cluster.local".to_string())] {
                let h = Header {
                    port: 8080,
                    name: name.clone(),
                    protocol,
                };
                let bytes = encode(&h);
                assert_eq!(decode(&bytes), Ok(Some((h, bytes.len()))));
            }
        }
    }

    #[test]
    fn every_prefix_of_a_header_asks_for_more() {
        let bytes = encode(&sample());
        for n in 0..bytes.len() {
            assert_eq!(decode(&bytes[..n]), Ok(None), "prefix of {n} bytes");
        }
    }

    #[test]
    fn reports_where_application_data_starts() {
        let mut bytes = encode(&sample());
        let header_len = bytes.len();
        bytes.extend_from_slice(b"\x0a\x00\x00\x01payload");
        let (h, consumed) = decode(&bytes).unwrap().unwrap();
        assert_eq!(h, sample());
        assert_eq!(consumed, header_len);
        assert_eq!(&bytes[consumed..], b"\x0a\x00\x00\x01payload");
    }

    #[test]
    fn matches_linkerds_encoding_byte_for_byte() {
        // Header{port: 4040, name: "", session_protocol: {http2: {}}}:
        // field 1 varint 4040 = 08 c8 1f; field 3 length 2 = 1a 02; inside,
        // field 2 (http2) length 0 = 12 00.
        let h = Header {
            port: 4040,
            name: None,
            protocol: Some(SessionProtocol::Http2),
        };
        let mut expected = PREFACE.to_vec();
        expected.extend_from_slice(&[0, 0, 0, 7, 0x08, 0xc8, 0x1f, 0x1a, 0x02, 0x12, 0x00]);
        assert_eq!(encode(&h), expected);
    }

    #[test]
    fn rejects_other_protocols_at_the_first_wrong_byte() {
        for garbage in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n",
            b"\x16\x03\x01\x02\x00",
            b"x",
            b"transport.l5d.io/v2\r\n\r\n\0\0\0\0",
            b"transport.l5d.io/v1\n\n",
        ] {
            assert_eq!(decode(garbage), Err(HeaderError::BadPreface), "{garbage:?}");
        }
    }

    #[test]
    fn caps_the_length_before_waiting_for_it() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&(MAX_HEADER_LEN as u32 + 1).to_be_bytes());
        assert_eq!(
            decode(&bytes),
            Err(HeaderError::TooLong {
                len: MAX_HEADER_LEN as u32 + 1
            })
        );
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&bytes), Err(HeaderError::TooLong { .. })));
    }

    fn with_message(msg: &[u8]) -> Vec<u8> {
        let mut bytes = PREFACE.to_vec();
        bytes.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        bytes.extend_from_slice(msg);
        bytes
    }

    #[test]
    fn rejects_invalid_ports_names_and_protobuf() {
        // port 0 (field absent)
        assert_eq!(decode(&with_message(&[])), Err(HeaderError::BadPort(0)));
        // port 70000
        let msg = pb::Header {
            port: 70000,
            name: String::new(),
            session_protocol: None,
        }
        .encode_to_vec();
        assert_eq!(
            decode(&with_message(&msg)),
            Err(HeaderError::BadPort(70000))
        );
        // port -1
        let msg = pb::Header {
            port: -1,
            name: String::new(),
            session_protocol: None,
        }
        .encode_to_vec();
        assert_eq!(decode(&with_message(&msg)), Err(HeaderError::BadPort(-1)));
        // a name with spaces and newlines
        let msg = pb::Header {
            port: 80,
            name: "evil\r\nname".into(),
            session_protocol: None,
        }
        .encode_to_vec();
        assert_eq!(decode(&with_message(&msg)), Err(HeaderError::BadName));
        // truncated varint / wrong wire type
        assert!(matches!(
            decode(&with_message(&[0x08, 0xff])),
            Err(HeaderError::Decode(_))
        ));
        assert!(matches!(
            decode(&with_message(&[0x12, 0x05, b'a'])),
            Err(HeaderError::Decode(_))
        ));
    }

    #[test]
    fn unknown_fields_and_protocols_are_ignored() {
        // port 80, unknown field 9 (varint 1), session_protocol with unknown kind 3.
        let msg = [0x08, 80, 0x48, 0x01, 0x1a, 0x02, 0x1a, 0x00];
        assert_eq!(
            decode(&with_message(&msg)),
            Ok(Some((
                Header {
                    port: 80,
                    name: None,
                    protocol: None
                },
                PREFIX_LEN + msg.len()
            )))
        );
    }

    /// The committed fuzz seeds are what their names say.
    #[test]
    fn fuzz_seed_corpus_decodes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/transport_header");
        let seed = |name: &str| std::fs::read(dir.join(name)).unwrap();
        let opaque = Header {
            port: 3306,
            name: None,
            protocol: None,
        };
        assert_eq!(decode(&seed("opaque_3306")), Ok(Some((opaque.clone(), 30))));
        assert_eq!(decode(&seed("with_payload")), Ok(Some((opaque, 30))));
        let (h, _) = decode(&seed("http2_4040")).unwrap().unwrap();
        assert_eq!((h.port, h.protocol), (4040, Some(SessionProtocol::Http2)));
        let (h, _) = decode(&seed("http1_named")).unwrap().unwrap();
        assert_eq!(h.name.as_deref(), Some("web.emojivoto.svc.cluster.local"));
        assert_eq!(h.protocol, Some(SessionProtocol::Http1));
        assert_eq!(decode(&seed("http_request")), Err(HeaderError::BadPreface));
    }

    #[tokio::test]
    async fn reads_a_trickled_header_and_keeps_the_bytes_after_it() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut bytes = encode(&sample());
        bytes.extend_from_slice(b"hello");
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in bytes.chunks(3) {
                client.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let (header, rest) = read(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(header, sample());
        let _client = writer.await.unwrap();
        let mut tail = rest;
        while tail.len() < 5 {
            let mut b = [0u8; 8];
            let n = server.read(&mut b).await.unwrap();
            tail.extend_from_slice(&b[..n]);
        }
        assert_eq!(tail, b"hello");
    }

    #[tokio::test]
    async fn read_fails_on_silence_hangup_and_garbage() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let err = read(&mut server, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, ReadError::Timeout(_)), "{err:?}");

        let bytes = encode(&sample());
        let (mut client, mut server) = tokio::io::duplex(1024);
        {
            use tokio::io::AsyncWriteExt;
            client.write_all(&bytes[..10]).await.unwrap();
        }
        drop(client);
        let err = read(&mut server, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, ReadError::Eof { read: 10 }), "{err:?}");

        let mut garbage: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        let err = read(&mut garbage, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ReadError::Header(HeaderError::BadPreface)),
            "{err:?}"
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic sweep; the fuzz target covers the rest.
        let valid = encode(&sample());
        for i in 0..valid.len() {
            for b in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut v = valid.clone();
                v[i] = b;
                let _ = decode(&v);
            }
        }
    }
}
