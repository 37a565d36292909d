//! Linkerd's opaque-transport header parser over arbitrary bytes: never
//! panics, never claims more bytes than it was given, agrees with itself on
//! the consumed prefix, and re-encodes what it decoded to the same header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_proxy::transport::{decode, encode, MAX_HEADER_LEN, PREFACE};

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(Some((header, consumed))) => {
            assert!(consumed <= data.len());
            assert!(consumed <= PREFACE.len() + 4 + MAX_HEADER_LEN);
            assert_eq!(
                decode(&data[..consumed]),
                Ok(Some((header.clone(), consumed)))
            );
            let bytes = encode(&header);
            assert_eq!(decode(&bytes), Ok(Some((header, bytes.len()))));
        }
        Ok(None) => assert!(data.len() < PREFACE.len() + 4 + MAX_HEADER_LEN),
        Err(_) => {}
    }
});
