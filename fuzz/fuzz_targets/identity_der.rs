//! Client identity extraction from arbitrary DER: what a (verified) peer
//! leaf could contain. Must never panic, and whatever it returns must be
//! safe to put in a log line or an `l5d-client-id` header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_policy::PolicyConfig;

fuzz_target!(|data: &[u8]| {
    let policy = PolicyConfig::default();
    let presented = portcullis_proxy::identity::presented_identity(data);
    let identity = portcullis_proxy::identity::client_identity(data, &policy);
    assert_eq!(presented, identity.as_ref().map(|id| id.presented.clone()));
    if let Some(id) = identity {
        assert!(!id.presented.is_empty());
        assert!(id.presented.bytes().all(|b| b.is_ascii_graphic()));
        if let Some(dns) = id.dns {
            assert!(dns.bytes().all(|b| b.is_ascii_graphic()));
        }
    }
});
