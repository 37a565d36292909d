//! Fuzz target: the HTTP/1.1 fast path's parsers over arbitrary heads and
//! bodies (`portcullis_proxy::http1`). Nothing may panic, and:
//! - a request head the fast path accepts is rebuilt into a head that
//!   parses again, classifies the same, and carries exactly one
//!   `l5d-client-id` (the proxy's);
//! - a response head is rebuilt into one with the same framing;
//! - a chunked body ends at the same byte however it is split.
//!
//! Run: `cargo +nightly fuzz run http1` from `fuzz/` (seed corpus in
//! `corpus/http1`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_proxy::http1::{
    classify_request, classify_response, write_request_head, write_response_head, Chunked,
    Framing, MAX_HEADERS,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => request(data),
        1 => response(data, mode & 0x80 != 0),
        _ => chunked(data, mode as usize),
    }
});

fn request(data: &[u8]) {
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut h);
    let Ok(httparse::Status::Complete(len)) = req.parse(data) else {
        return;
    };
    let Ok(head) = classify_request(&req) else {
        return;
    };
    let mut out = Vec::new();
    write_request_head(&mut out, &data[..len], &req, Some(b"id.example"));
    let mut h2 = [httparse::EMPTY_HEADER; MAX_HEADERS + 1];
    let mut again = httparse::Request::new(&mut h2);
    let n = match again.parse(&out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("rebuilt head does not parse: {other:?} {out:?}"),
    };
    assert_eq!(n, out.len());
    let head2 = classify_request(&again).expect("rebuilt head classifies");
    assert_eq!(head.method, head2.method);
    assert_eq!(head.body, head2.body);
    let ids = again
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("l5d-client-id"))
        .count();
    assert_eq!(ids, 1, "{out:?}");
}

fn response(data: &[u8], head_request: bool) {
    let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut rsp = httparse::Response::new(&mut h);
    let Ok(httparse::Status::Complete(len)) = rsp.parse(data) else {
        return;
    };
    let Ok(head) = classify_response(&rsp, head_request) else {
        return;
    };
    let mut out = Vec::new();
    write_response_head(&mut out, &data[..len], &rsp, head.framing == Framing::Close);
    let mut h2 = [httparse::EMPTY_HEADER; MAX_HEADERS + 1];
    let mut again = httparse::Response::new(&mut h2);
    assert!(
        matches!(again.parse(&out), Ok(httparse::Status::Complete(n)) if n == out.len()),
        "rebuilt head does not parse: {out:?}"
    );
    let head2 = classify_response(&again, head_request).expect("rebuilt head classifies");
    assert_eq!(head.framing, head2.framing, "{out:?}");
}

fn chunked(data: &[u8], split: usize) {
    let mut whole = Chunked::default();
    let all = whole.advance(data);
    let split = split.min(data.len());
    let mut parts = Chunked::default();
    let parted = parts
        .advance(&data[..split])
        .and_then(|a| parts.advance(&data[a..]).map(|b| a + b));
    match (all, parted) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            assert_eq!(whole.is_done(), parts.is_done());
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!("split changed the outcome: {a:?} vs {b:?}"),
    }
}
