//! Fuzz target: protocol detection over arbitrary first bytes of a
//! connection. The TLS ClientHello/SNI, HTTP/2 preface and HTTP/1
//! request-line sniffers must never panic, and a verdict ("this protocol" or
//! "not this protocol") must never change when more bytes arrive
//! (`portcullis_proxy::detect::check_sniffers` asserts both).
//!
//! Run: `cargo +nightly fuzz run detect` from `fuzz/` (seed corpus in
//! `corpus/detect`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Detection never looks past its bounded buffer.
    let data = &data[..data.len().min(portcullis_proxy::detect::DETECT_BUFFER)];
    portcullis_proxy::detect::check_sniffers(data);
});
