//! HPACK header-block decoding (RFC 7541) for the HTTP/2 relay
//! (`http2.rs`): indexed and literal fields, the dynamic table with its
//! size updates, and Huffman-coded strings.
//!
//! The relay decodes every request block (to authorize it) and every
//! response block (for `:status` and `grpc-status`), so this is on the hot
//! path: fields are handed to a callback as borrowed slices (of the block,
//! the table, or one scratch buffer for Huffman strings), and a table
//! entry is one allocation. The Huffman code (Appendix B) is canonical, so
//! it is decoded from its code lengths alone (RFC 7541 §5.2).

use std::collections::VecDeque;
use std::sync::OnceLock;

/// The table size both peers start with (RFC 9113 §6.5.2).
pub const DEFAULT_TABLE_SIZE: usize = 4_096;
/// Integers beyond this are refused (no legitimate length or index is).
const MAX_INT: usize = 1 << 28;

/// Why a header block does not decode. After one, the table can no longer
/// be trusted: a connection error (COMPRESSION_ERROR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the block ends inside a field")]
    Truncated,
    #[error("an index outside the tables")]
    BadIndex,
    #[error("an integer too large")]
    Overflow,
    #[error("a Huffman string does not decode")]
    Huffman,
    #[error("a table size update after a field, or over the allowed size")]
    SizeUpdate,
}

/// One HPACK decoding context (one direction of one connection).
#[derive(Debug)]
pub struct Decoder {
    /// Newest first: index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// What the decoding side advertised (SETTINGS_HEADER_TABLE_SIZE).
    allowed: usize,
    scratch: Vec<u8>,
}

#[derive(Debug)]
struct Entry {
    /// The name, then the value.
    bytes: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    fn field(&self) -> (&[u8], &[u8]) {
        self.bytes.split_at(self.name_len)
    }
}

/// Where a decoded string is until the callback reads it.
#[derive(Clone, Copy)]
enum Src {
    Block(usize, usize),
    Scratch(usize, usize),
    Index(usize),
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            allowed: DEFAULT_TABLE_SIZE,
            scratch: Vec::new(),
        }
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The largest table a size update may set (the decoding side's
    /// SETTINGS_HEADER_TABLE_SIZE).
    pub fn set_allowed(&mut self, size: usize) {
        self.allowed = size;
    }

    /// Decodes one complete header block, calling `f(name, value)` for each
    /// field in order.
    pub fn decode(&mut self, block: &[u8], mut f: impl FnMut(&[u8], &[u8])) -> Result<(), Error> {
        let mut pos = 0;
        let mut fields = false;
        while let Some(&b) = block.get(pos) {
            if b & 0x80 != 0 {
                let (index, n) = int(&block[pos..], 7)?;
                pos += n;
                let (name, value) = lookup(&self.entries, index).ok_or(Error::BadIndex)?;
                f(name, value);
            } else if b & 0xe0 == 0x20 {
                // RFC 7541 §4.2: only at the start of a block.
                let (size, n) = int(&block[pos..], 5)?;
                if fields || size > self.allowed {
                    return Err(Error::SizeUpdate);
                }
                pos += n;
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                let indexing = b & 0xc0 == 0x40;
                pos = self.literal(block, pos, indexing, &mut f)?;
            }
            fields = true;
        }
        Ok(())
    }

    /// A literal field starting at `pos`; returns the position after it.
    fn literal(
        &mut self,
        block: &[u8],
        pos: usize,
        indexing: bool,
        f: &mut impl FnMut(&[u8], &[u8]),
    ) -> Result<usize, Error> {
        let (index, n) = int(&block[pos..], if indexing { 6 } else { 4 })?;
        let mut pos = pos + n;
        self.scratch.clear();
        let name = if index == 0 {
            let (src, n) = string(block, pos, &mut self.scratch)?;
            pos += n;
            src
        } else {
            lookup(&self.entries, index).ok_or(Error::BadIndex)?;
            Src::Index(index)
        };
        let (value, n) = string(block, pos, &mut self.scratch)?;
        pos += n;
        let resolve = |src: Src, part: usize| -> &[u8] {
            match src {
                Src::Block(a, b) => &block[a..b],
                Src::Scratch(a, b) => &self.scratch[a..b],
                Src::Index(i) => {
                    let (n, v) = lookup(&self.entries, i).unwrap_or((&[], &[]));
                    if part == 0 {
                        n
                    } else {
                        v
                    }
                }
            }
        };
        let (name, value) = (resolve(name, 0), resolve(value, 1));
        f(name, value);
        if indexing {
            let mut bytes = Vec::with_capacity(name.len() + value.len());
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(value);
            let name_len = name.len();
            self.insert(Entry {
                bytes: bytes.into_boxed_slice(),
                name_len,
            });
        }
        Ok(pos)
    }

    fn insert(&mut self, entry: Entry) {
        let size = entry.bytes.len() + 32;
        if size > self.max_size {
            // RFC 7541 §4.4: an entry larger than the table empties it.
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.entries.push_front(entry);
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.bytes.len() + 32,
                None => break,
            }
        }
    }
}

/// An integer with an N-bit prefix (RFC 7541 §5.1): (value, bytes used).
fn int(buf: &[u8], prefix: u8) -> Result<(usize, usize), Error> {
    let max = (1usize << prefix) - 1;
    let first = usize::from(*buf.first().ok_or(Error::Truncated)?) & max;
    if first < max {
        return Ok((first, 1));
    }
    let mut value = max;
    let mut shift = 0;
    for (i, &b) in buf[1..].iter().enumerate() {
        value += usize::from(b & 0x7f) << shift;
        if value > MAX_INT {
            return Err(Error::Overflow);
        }
        if b & 0x80 == 0 {
            return Ok((value, i + 2));
        }
        shift += 7;
    }
    Err(Error::Truncated)
}

/// A string literal at `pos` (RFC 7541 §5.2): where it is, bytes used.
fn string(block: &[u8], pos: usize, scratch: &mut Vec<u8>) -> Result<(Src, usize), Error> {
    let huffman = block.get(pos).ok_or(Error::Truncated)? & 0x80 != 0;
    let (len, n) = int(&block[pos..], 7)?;
    let start = pos + n;
    let end = start
        .checked_add(len)
        .filter(|&e| e <= block.len())
        .ok_or(Error::Truncated)?;
    if huffman {
        let at = scratch.len();
        huffman_decode(&block[start..end], scratch)?;
        Ok((Src::Scratch(at, scratch.len()), n + len))
    } else {
        Ok((Src::Block(start, end), n + len))
    }
}

/// A field by index: the static table (1..=61), then the dynamic one.
fn lookup(entries: &VecDeque<Entry>, index: usize) -> Option<(&[u8], &[u8])> {
    match index {
        0 => None,
        1..=61 => Some(STATIC[index - 1]),
        _ => entries.get(index - 62).map(Entry::field),
    }
}

/// RFC 7541 Appendix A.
static STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The first static-table index of a name (for encoding; a match, which
/// compiles to far fewer comparisons than a scan of [`STATIC`]).
pub fn static_name_index(name: &[u8]) -> Option<usize> {
    Some(match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"accept-charset" => 15,
        b"accept-encoding" => 16,
        b"accept-language" => 17,
        b"accept-ranges" => 18,
        b"accept" => 19,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"authorization" => 23,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"cookie" => 32,
        b"date" => 33,
        b"etag" => 34,
        b"expect" => 35,
        b"expires" => 36,
        b"from" => 37,
        b"host" => 38,
        b"if-match" => 39,
        b"if-modified-since" => 40,
        b"if-none-match" => 41,
        b"if-range" => 42,
        b"if-unmodified-since" => 43,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"max-forwards" => 47,
        b"proxy-authenticate" => 48,
        b"proxy-authorization" => 49,
        b"range" => 50,
        b"referer" => 51,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"transfer-encoding" => 57,
        b"user-agent" => 58,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return None,
    })
}

// ===== Huffman (RFC 7541 Appendix B)

/// Code length of each symbol (256 is EOS). The code is canonical: codes
/// are assigned in order of (length, symbol).
static CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

/// The canonical code, arranged for decoding.
struct Canonical {
    /// Per length: the first code, how many codes, where its symbols start.
    first: [u32; 31],
    count: [u32; 31],
    offset: [u16; 31],
    /// Symbols in code order.
    symbols: [u16; 257],
}

fn canonical() -> &'static Canonical {
    static CODE: OnceLock<Canonical> = OnceLock::new();
    CODE.get_or_init(|| {
        let mut c = Canonical {
            first: [0; 31],
            count: [0; 31],
            offset: [0; 31],
            symbols: [0; 257],
        };
        for &len in &CODE_LENGTHS {
            c.count[usize::from(len)] += 1;
        }
        let (mut code, mut at) = (0u32, 0u16);
        for len in 1..31 {
            c.first[len] = code;
            c.offset[len] = at;
            code = (code + c.count[len]) << 1;
            at += c.count[len] as u16;
        }
        let mut next = c.offset;
        for (sym, &len) in CODE_LENGTHS.iter().enumerate() {
            let slot = &mut next[usize::from(len)];
            c.symbols[usize::from(*slot)] = sym as u16;
            *slot += 1;
        }
        c
    })
}

/// Decodes a Huffman-coded string, appending to `out`. Padding must be
/// at most 7 bits of the EOS prefix (all ones), and EOS itself is an error
/// (RFC 7541 §5.2).
pub fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    let c = canonical();
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    for &byte in src {
        acc = (acc << 8) | u64::from(byte);
        bits += 8;
        'symbols: while bits >= 5 {
            for len in 5..=bits.min(30) {
                let code = ((acc >> (bits - len)) & ((1u64 << len) - 1)) as u32;
                let l = len as usize;
                // Never below `first`: no shorter code matched (canonical).
                if code.wrapping_sub(c.first[l]) < c.count[l] {
                    let sym = c.symbols[usize::from(c.offset[l]) + (code - c.first[l]) as usize];
                    if sym == 256 {
                        return Err(Error::Huffman);
                    }
                    out.push(sym as u8);
                    bits -= len;
                    continue 'symbols;
                }
            }
            break;
        }
    }
    let mask = (1u64 << bits) - 1;
    if bits > 7 || acc & mask != mask {
        return Err(Error::Huffman);
    }
    Ok(())
}
