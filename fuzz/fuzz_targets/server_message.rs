//! Fuzz target: arbitrary bytes as a `Server` message from a policy
//! controller (Linkerd's inbound API), through `portcullis_policy::proto`.
//! Decoding must return a policy or an error, never panic; a decoded policy
//! must encode again and decode to itself; and the decision function must
//! run on it. Controller messages come from the network: a bug here would
//! let one bad message take down every proxy.
//! Run: `cargo +nightly fuzz run server_message` in fuzz/ (seeds in
//! corpus/server_message). Its always-run companion is the
//! `arbitrary_bytes_never_panic` property test in policy-client/src/proto.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_policy::proto::pb;
use portcullis_policy::{authorize, Authorizer, Client, ClientTls, PortPolicy};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(server) = pb::Server::decode(data) else {
        return;
    };
    let Ok(policy) = PortPolicy::try_from((8080, server)) else {
        return;
    };
    let encoded = pb::Server::try_from(&policy).expect("a decoded policy encodes");
    let again = PortPolicy::try_from((8080, encoded)).expect("an encoded policy decodes");
    assert_eq!(again, policy, "decode(encode(p)) == p");
    let port = Authorizer::from(policy);
    let client = Client {
        addr: "10.1.2.3".parse().expect("valid"),
        tls: ClientTls::None,
    };
    let _ = authorize(&port, &client);
});
