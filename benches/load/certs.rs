//! Certificates for the mTLS scenarios, generated at harness start with
//! rcgen (ECDSA P-256, the algorithm Linkerd's identity issues): one CA, a
//! server certificate named with the proxy's mesh identity (Portcullis
//! terminates mTLS when the ClientHello's SNI equals it), and a client
//! certificate with the identity the ServerAuthorization names. The same
//! files serve Portcullis, HAProxy, nginx and the upstream's own TLS
//! listener (the "direct" baseline), so every target does the same
//! handshake.
//!
//! Must not: be reused outside benchmarks (keys are throw-away, 0600 in a
//! temp dir). Called by `main.rs` once per run.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The proxy's identity: what the client sends as SNI.
pub const SERVER_ID: &str = "app.bench.serviceaccount.identity.linkerd.cluster.local";
/// The client's identity: what the ServerAuthorization allows.
pub const CLIENT_ID: &str = "client.bench.serviceaccount.identity.linkerd.cluster.local";

/// Paths of the generated PEM files.
#[derive(Clone, Debug)]
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Certificate followed by key, as HAProxy's `crt` wants.
    pub server_bundle: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub fn generate(dir: &Path) -> Result<Certs, String> {
    let e = |what: &str, err: rcgen::Error| format!("generating {what}: {err}");
    let ca_key = KeyPair::generate().map_err(|x| e("CA key", x))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|x| e("CA", x))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "portcullis bench CA");
    let ca = ca_params.self_signed(&ca_key).map_err(|x| e("CA", x))?;

    let leaf = |name: &str| -> Result<(String, String), String> {
        let key = KeyPair::generate().map_err(|x| e(name, x))?;
        let mut p = CertificateParams::new(vec![name.to_string()]).map_err(|x| e(name, x))?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &ca, &ca_key).map_err(|x| e(name, x))?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(SERVER_ID)?;
    let (client_cert, client_key) = leaf(CLIENT_ID)?;

    let certs = Certs {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        server_bundle: dir.join("server-bundle.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    let write = |p: &Path, s: &str| fs::write(p, s).map_err(|e| format!("{}: {e}", p.display()));
    write(&certs.ca, &ca.pem())?;
    write(&certs.server_cert, &server_cert)?;
    write(&certs.server_key, &server_key)?;
    write(&certs.server_bundle, &format!("{server_cert}{server_key}"))?;
    write(&certs.client_cert, &client_cert)?;
    write(&certs.client_key, &client_key)?;
    Ok(certs)
}
