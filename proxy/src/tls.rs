//! Meshed TLS termination: the rustls server configuration and the handshake.
//!
//! Owns: building the `ServerConfig` the local identity serves with (client
//! certificates requested and verified against the trust anchors — chain,
//! validity period and the clientAuth purpose, which webpki checks; ALPN
//! `http/1.1`, `h2` (in [`Prefer`]'s order) and `transport.l5d.io/v1`), and
//! [`terminate`], which runs
//! one server handshake with a timeout and reports the client's TLS state as
//! policy sees it ([`ClientTls::Mesh`]).
//!
//! A client without a certificate is "TLS, no identity" (what
//! `unauthenticatedTLS` admits); a client whose certificate does not verify
//! fails the handshake. The client identity comes from the verified leaf
//! (`identity::client_identity`).
//!
//! Must not: decide whether a connection is meshed TLS (detection compares
//! the ClientHello's SNI with `LocalIdentity::matches_sni` first), authorize
//! anything, or read files (`identity.rs` does).
//!
//! Called by: `identity.rs` ([`server_config`]) and the connection path in
//! `inbound.rs` ([`terminate`]).

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use portcullis_policy::{ClientTls, PolicyConfig};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::identity::{client_identity, LocalIdentity};

/// ALPN for HTTP/2 (meshed HTTP/2 and gRPC).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN for HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN of Linkerd's opaque transport (the direct path); see `transport.rs`.
pub const ALPN_TRANSPORT: &[u8] = crate::transport::PROTOCOL;

/// The one crypto provider (aws-lc-rs) used for every TLS configuration, so
/// nothing depends on a process-wide default being installed.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Why a server configuration could not be built (configuration's fault).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot verify client certificates with these trust anchors: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// Serves one certificate whatever the SNI: detection already checked that
/// the SNI names our identity before the handshake starts.
#[derive(Debug)]
struct AlwaysResolves(Arc<CertifiedKey>);

impl ResolvesServerCert for AlwaysResolves {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Which HTTP version to pick when a client offers both `h2` and
/// `http/1.1` (rustls picks the first of our ALPN list the client offers).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Prefer {
    /// The default: on a port whose protocol is detected, the proxy speaks
    /// to the app in the client's version, and an app behind an `unknown`
    /// port may not speak HTTP/2. Clients that offer only `h2` (gRPC) still
    /// get it.
    Http1,
    /// Ports whose Server says `HTTP/2` or `gRPC`.
    Http2,
}

impl Prefer {
    /// Our ALPN list, most preferred first.
    pub fn alpn(self) -> Vec<Vec<u8>> {
        let (first, second) = match self {
            Prefer::Http1 => (ALPN_HTTP1, ALPN_H2),
            Prefer::Http2 => (ALPN_H2, ALPN_HTTP1),
        };
        vec![first.to_vec(), second.to_vec(), ALPN_TRANSPORT.to_vec()]
    }
}

/// The server configuration for meshed TLS as `key`'s identity, verifying
/// client certificates against `roots`, with ALPN in `prefer`'s order.
pub fn server_config(
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    prefer: Prefer,
) -> Result<ServerConfig, ConfigError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        // No certificate = TLS without identity; a bad one still fails.
        .allow_unauthenticated()
        .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(AlwaysResolves(key)));
    config.alpn_protocols = prefer.alpn();
    Ok(config)
}

/// Whose fault a failed termination was, for logs and metrics.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The client: a bad certificate, a broken handshake, silence, a reset.
    Peer,
    /// Us: the proxy has no identity to terminate with.
    Local,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Peer => "peer",
            Fault::Local => "local",
        })
    }
}

/// Why a meshed TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no local identity is configured (--identity-cert etc.): cannot terminate meshed TLS")]
    NoIdentity,
    #[error("TLS handshake did not complete within {timeout:?}")]
    Timeout { timeout: Duration },
    #[error("client certificate rejected: {0}")]
    BadClientCertificate(rustls::Error),
    #[error("TLS handshake failed: {0}")]
    Handshake(rustls::Error),
    #[error("connection failed during the TLS handshake: {0}")]
    Io(std::io::Error),
}

impl TlsError {
    pub fn fault(&self) -> Fault {
        match self {
            TlsError::NoIdentity => Fault::Local,
            TlsError::Timeout { .. }
            | TlsError::BadClientCertificate(_)
            | TlsError::Handshake(_)
            | TlsError::Io(_) => Fault::Peer,
        }
    }

    /// tokio-rustls reports TLS errors as `io::Error`s wrapping a
    /// `rustls::Error`; unwrap them so the cause is typed.
    fn from_io(e: std::io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(
                err @ (rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented),
            ) => TlsError::BadClientCertificate(err.clone()),
            Some(err) => TlsError::Handshake(err.clone()),
            None => TlsError::Io(e),
        }
    }
}

/// A terminated meshed TLS connection.
pub struct Terminated<IO> {
    /// The plaintext side: read and write the client's application data.
    pub stream: tokio_rustls::server::TlsStream<IO>,
    /// The client as policy sees it: `Mesh { identity }`, `identity` `None`
    /// when the client sent no certificate (or one without a usable SAN).
    pub client: ClientTls,
    /// The negotiated ALPN protocol, if any (see [`ALPN_H2`] etc.).
    pub alpn: Option<Vec<u8>>,
}

impl<IO> fmt::Debug for Terminated<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Terminated")
            .field("client", &self.client)
            .field("alpn", &self.alpn.as_deref().map(String::from_utf8_lossy))
            .finish_non_exhaustive()
    }
}

/// Runs the server side of a meshed TLS handshake on `io` as `identity`,
/// within `timeout`, preferring `prefer`'s HTTP version in ALPN. `io` may be
/// a wrapper that first replays the bytes detection already read (the
/// ClientHello). `policy` supplies the trust and identity domains that
/// SPIFFE IDs are read with.
pub async fn terminate<IO>(
    io: IO,
    identity: Option<&LocalIdentity>,
    prefer: Prefer,
    policy: &PolicyConfig,
    timeout: Duration,
) -> Result<Terminated<IO>, TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let identity = identity.ok_or(TlsError::NoIdentity)?;
    let acceptor = TlsAcceptor::from(identity.server_config(prefer));
    let stream = match tokio::time::timeout(timeout, acceptor.accept(io)).await {
        Err(_elapsed) => return Err(TlsError::Timeout { timeout }),
        Ok(Err(e)) => return Err(TlsError::from_io(e)),
        Ok(Ok(stream)) => stream,
    };
    let (_, conn) = stream.get_ref();
    // rustls has verified the chain; the leaf is the first certificate.
    let client_id = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| client_identity(leaf.as_ref(), policy));
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    Ok(Terminated {
        stream,
        client: ClientTls::Mesh {
            identity: client_id,
        },
        alpn,
    })
}

#[cfg(test)]
mod tests;
