//! rustls configurations for the harness's own TLS endpoints: the upstream
//! app's mTLS listener (the "direct" baseline of the mTLS scenarios) and the
//! benchmark client. Both verify the peer against the bench CA: the client
//! presents its certificate and checks the server's name, as a meshed client
//! does.
//!
//! Must not: weaken verification (a benchmark of a TLS stack that skips
//! verification measures something else). Called by `upstream.rs` and
//! `client.rs` in their subprocesses.

use std::path::Path;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn roots(ca: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: bad CA certificate: {e}", ca.display()))?;
    }
    Ok(Arc::new(roots))
}

/// Server side: requires and verifies a client certificate.
pub fn server(ca: &Path, cert: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, String> {
    let verifier = WebPkiClientVerifier::builder(roots(ca)?)
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let mut cfg = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert)?, key(key_path)?)
        .map_err(|e| format!("server certificate {}: {e}", cert.display()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Client side. `resume = false` forces a full handshake per connection: the
/// handshake scenario measures full handshakes, the worst case of a rollout
/// or a client restart.
pub fn client(
    ca: &Path,
    cert: &Path,
    key_path: &Path,
    resume: bool,
) -> Result<Arc<ClientConfig>, String> {
    let mut cfg = ClientConfig::builder()
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(certs(cert)?, key(key_path)?)
        .map_err(|e| format!("client certificate {}: {e}", cert.display()))?;
    if !resume {
        cfg.resumption = Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}
