//! A mesh PKI and mTLS clients for the `tests/mtls_*.rs` end-to-end tests
//! (included with `#[path]`, like `apps.rs`). Certificates are generated per
//! test with rcgen; nothing secret is committed.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Linkerd's service-account identity for `name` in `ns`.
pub fn sa(name: &str, ns: &str) -> String {
    format!("{name}.{ns}.serviceaccount.identity.linkerd.cluster.local")
}

/// A certificate authority.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
}

/// A leaf certificate and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Ca {
    pub fn new(cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A mesh leaf (server and client auth) whose SANs are `names`: a
    /// `spiffe://` (or any `scheme://`) name becomes a URI SAN, others DNS.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        self.issue_with(names, |_| {})
    }

    pub fn issue_with(&self, names: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.subject_alt_names = names
            .iter()
            .map(|n| {
                if n.contains("://") {
                    SanType::URI((*n).try_into().unwrap())
                } else {
                    SanType::DnsName((*n).try_into().unwrap())
                }
            })
            .collect();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(rand_serial().into());
        edit(&mut params);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

fn rand_serial() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish() >> 1
}

impl Leaf {
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Writes `NAME.pem` and `NAME.key` into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

/// The proxy's identity files in a temporary directory, and the flags that
/// point the proxy at them.
pub struct ProxyIdentity {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub name: String,
    pub leaf: Leaf,
    pub anchors: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ProxyIdentity {
    pub fn new(name: &str) -> ProxyIdentity {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("mesh root");
        let leaf = ca.issue(&[name]);
        let anchors = dir.path().join("ca.pem");
        std::fs::write(&anchors, ca.pem()).unwrap();
        let (cert, key) = leaf.write(dir.path(), "proxy");
        ProxyIdentity {
            dir,
            ca,
            name: name.to_string(),
            leaf,
            anchors,
            cert,
            key,
        }
    }

    pub fn args(&self) -> Vec<String> {
        vec![
            "--identity-trust-anchors".into(),
            self.anchors.display().to_string(),
            "--identity-cert".into(),
            self.cert.display().to_string(),
            "--identity-key".into(),
            self.key.display().to_string(),
        ]
    }

    /// Replaces the proxy's certificate and key (each file atomically, key
    /// first so that the pair is briefly mismatched, as a real rotation can be).
    pub fn rotate(&mut self, leaf: Leaf) {
        for (path, content) in [(&self.key, &leaf.key_pem), (&self.cert, &leaf.cert_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, content).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        self.leaf = leaf;
    }

    /// A client leaf signed by the mesh CA.
    pub fn client(&self, names: &[&str]) -> Leaf {
        self.ca.issue(names)
    }

    /// A client configuration trusting the mesh CA.
    pub fn client_config(&self, leaf: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        client_config(&self.ca, leaf, alpn)
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS client configuration trusting `ca`, presenting `leaf` if given.
pub fn client_config(ca: &Ca, leaf: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match leaf {
        Some(l) => builder
            .with_client_auth_cert(vec![l.der.clone()], l.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Connects and completes a TLS handshake for `server_name`.
pub async fn connect_tls(
    addr: std::net::SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// An HTTP/1.1 client over an established TLS session.
pub async fn h1_over(
    tls: TlsStream<TcpStream>,
) -> hyper::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(tx)
}

/// An HTTP/2 client over an established TLS session.
pub async fn h2_over(
    tls: TlsStream<TcpStream>,
) -> hyper::Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>> {
    let (tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(tx)
}

/// ALPN of Linkerd's opaque transport.
pub const TRANSPORT_ALPN: &[u8] = b"transport.l5d.io/v1";

/// Linkerd's transport header, encoded here independently of the proxy:
/// preface, big-endian length, protobuf `Header{port = 1, name = 2,
/// session_protocol = 3 {http1 = 1 | http2 = 2}}`.
pub fn transport_header(port: u16, name: &str, session: Option<u8>) -> Vec<u8> {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let mut msg = vec![0x08];
    varint(port.into(), &mut msg);
    if !name.is_empty() {
        msg.push(0x12);
        varint(name.len() as u64, &mut msg);
        msg.extend_from_slice(name.as_bytes());
    }
    if let Some(kind) = session {
        // SessionProtocol{ kind: <tag> Empty{} }
        msg.extend_from_slice(&[0x1a, 0x02, kind << 3 | 2, 0x00]);
    }
    let mut out = b"transport.l5d.io/v1\r\n\r\n".to_vec();
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out
}
