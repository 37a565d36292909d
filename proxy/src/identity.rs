//! The proxy's own mesh identity, and the identity of meshed clients.
//!
//! Owns: reading `--identity-trust-anchors`, `--identity-cert` (chain, leaf
//! first) and `--identity-key` from PEM files; validating them at startup
//! with a message that names exactly which problem (unreadable or empty file,
//! key that does not match the certificate, certificate expired or not yet
//! valid, not valid for `--identity-name`, chain that does not verify against
//! the trust anchors); publishing the result as a rustls `ServerConfig` in an
//! [`IdentityStore`] (an `ArcSwap`), and reloading it when the files change.
//! It also reads a client's identity from its verified leaf certificate
//! ([`client_identity`]).
//!
//! Must not: touch sockets or do handshakes (that is `tls.rs`), or decide
//! anything about policy (the identity is handed to `authz`/`portcullis_policy`
//! as a [`ClientIdentity`]). A bad new file never replaces a good identity:
//! the reloader keeps the old one and logs why (fail closed, keep serving).
//!
//! Called by: `main`/`inbound` at startup ([`IdentityStore::load`],
//! [`IdentityStore::spawn_reloader`]); `detect`/`inbound` to compare a
//! ClientHello's SNI with [`LocalIdentity::matches_sni`]; `tls::terminate`
//! for the server config and for [`client_identity`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use portcullis_policy::{ClientIdentity, PolicyConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore, ServerConfig};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::tls;

/// Where the local identity comes from (the `--identity-*` flags).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IdentityConfig {
    /// `--identity-trust-anchors`: one or more CA certificates (PEM).
    pub trust_anchors: PathBuf,
    /// `--identity-cert`: the certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// `--identity-key`: the leaf's private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// `--identity-name`; `None` means the leaf's first DNS SAN.
    pub name: Option<String>,
}

/// Which input file a problem is in, named by its flag for operators.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum IdentityFile {
    TrustAnchors,
    Cert,
    Key,
}

impl IdentityFile {
    pub fn flag(&self) -> &'static str {
        match self {
            IdentityFile::TrustAnchors => "--identity-trust-anchors",
            IdentityFile::Cert => "--identity-cert",
            IdentityFile::Key => "--identity-key",
        }
    }
}

impl fmt::Display for IdentityFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.flag())
    }
}

/// Why the local identity could not be loaded. Every variant is a problem of
/// the configuration (the files or flags), never of a peer.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {file} {path}: {source}")]
    Read {
        file: IdentityFile,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file} {path} contains no PEM {expected}")]
    Empty {
        file: IdentityFile,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{file} {path} is not valid PEM: {reason}")]
    BadPem {
        file: IdentityFile,
        path: PathBuf,
        reason: String,
    },
    #[error("{file} {path}: certificate #{index} is not a valid X.509 certificate: {reason}")]
    BadCertificate {
        file: IdentityFile,
        path: PathBuf,
        /// 1-based position in the file.
        index: usize,
        reason: String,
    },
    #[error("--identity-key {path} is not a usable private key (PKCS#8, SEC1 or PKCS#1 with ECDSA P-256/P-384, Ed25519 or RSA expected): {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("--identity-key {key} does not match the certificate in --identity-cert {cert} (the leaf's public key is not the key's)")]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error(
        "--identity-cert {path} has no DNS name (SAN) to use as the identity; set --identity-name"
    )]
    NoName { path: PathBuf },
    #[error("identity name {name:?} is not a DNS name")]
    BadName { name: String },
    #[error("--identity-cert {path}: the certificate is not valid before {not_before} (it is not yet valid)")]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("--identity-cert {path}: the certificate expired at {not_after}")]
    Expired { path: PathBuf, not_after: String },
    #[error("--identity-cert {path} is not valid for the identity name {name:?} (its DNS names: {sans:?})")]
    NameMismatch {
        path: PathBuf,
        name: String,
        sans: Vec<String>,
    },
    #[error("--identity-cert {cert}: the chain does not verify against --identity-trust-anchors {anchors}: {source}")]
    ChainInvalid {
        cert: PathBuf,
        anchors: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot build the TLS server configuration: {0}")]
    Tls(#[from] tls::ConfigError),
}

/// One validated local identity: the name clients put in SNI, and the
/// server configuration (certificate, key, client verifier) that terminates
/// their TLS. Immutable; a reload builds a new one.
pub struct LocalIdentity {
    name: String,
    /// ALPN preferring `http/1.1`, and preferring `h2` (see `tls::Prefer`).
    server_config_http1: Arc<ServerConfig>,
    server_config_h2: Arc<ServerConfig>,
    leaf: CertificateDer<'static>,
    serial: String,
    not_after: i64,
}

impl fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalIdentity")
            .field("name", &self.name)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The contents of the three files, read together.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Contents {
    trust_anchors: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Contents {
    fn read(cfg: &IdentityConfig) -> Result<Self, IdentityError> {
        let read = |file: IdentityFile, path: &Path| {
            std::fs::read(path).map_err(|source| IdentityError::Read {
                file,
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(Contents {
            trust_anchors: read(IdentityFile::TrustAnchors, &cfg.trust_anchors)?,
            cert: read(IdentityFile::Cert, &cfg.cert)?,
            key: read(IdentityFile::Key, &cfg.key)?,
        })
    }
}

impl LocalIdentity {
    /// Reads and validates the files of `cfg` now.
    pub fn load(cfg: &IdentityConfig) -> Result<Self, IdentityError> {
        let contents = Contents::read(cfg)?;
        Self::from_contents(cfg, &contents, UnixTime::now())
    }

    /// Validates already-read PEM contents as of `now`. The checks run in
    /// the order an operator would fix them: parse, key/cert pairing,
    /// validity period, name, chain.
    fn from_contents(
        cfg: &IdentityConfig,
        contents: &Contents,
        now: UnixTime,
    ) -> Result<Self, IdentityError> {
        let anchors = parse_certs(
            IdentityFile::TrustAnchors,
            &cfg.trust_anchors,
            &contents.trust_anchors,
        )?;
        let chain = parse_certs(IdentityFile::Cert, &cfg.cert, &contents.cert)?;
        let key = parse_key(&cfg.key, &contents.key)?;

        let mut roots = RootCertStore::empty();
        for (i, der) in anchors.into_iter().enumerate() {
            roots.add(der).map_err(|e| IdentityError::BadCertificate {
                file: IdentityFile::TrustAnchors,
                path: cfg.trust_anchors.clone(),
                index: i + 1,
                reason: e.to_string(),
            })?;
        }

        // The leaf is `chain[0]`; parse_certs never returns an empty chain.
        let Some(leaf) = chain.first().cloned() else {
            return Err(IdentityError::Empty {
                file: IdentityFile::Cert,
                path: cfg.cert.clone(),
                expected: "CERTIFICATE",
            });
        };
        let bad_leaf = |reason: String| IdentityError::BadCertificate {
            file: IdentityFile::Cert,
            path: cfg.cert.clone(),
            index: 1,
            reason,
        };
        let (_, x509) = X509Certificate::from_der(leaf.as_ref())
            .map_err(|e| bad_leaf(format!("cannot parse the leaf: {e}")))?;

        // Key and certificate belong together?
        let provider = tls::provider();
        let signing_key =
            provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| IdentityError::BadKey {
                    path: cfg.key.clone(),
                    reason: e.to_string(),
                })?;
        let certified = CertifiedKey::new(chain.clone(), signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(IdentityError::KeyMismatch {
                    key: cfg.key.clone(),
                    cert: cfg.cert.clone(),
                })
            }
            // The provider cannot derive the public key: rustls accepts
            // such keys too, and a mismatch would fail every handshake loudly.
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(e) => return Err(bad_leaf(e.to_string())),
        }

        // Validity period, with the dates in the message.
        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let validity = x509.validity();
        if now_secs < validity.not_before.timestamp() {
            return Err(IdentityError::NotYetValid {
                path: cfg.cert.clone(),
                not_before: validity.not_before.to_string(),
            });
        }
        if now_secs > validity.not_after.timestamp() {
            return Err(IdentityError::Expired {
                path: cfg.cert.clone(),
                not_after: validity.not_after.to_string(),
            });
        }

        // The identity name: explicit, or the leaf's first DNS SAN.
        let dns_sans = dns_sans(&x509);
        let name = match &cfg.name {
            Some(n) => n.trim_end_matches('.').to_ascii_lowercase(),
            None => match dns_sans.first() {
                Some(n) => n.clone(),
                None => {
                    return Err(IdentityError::NoName {
                        path: cfg.cert.clone(),
                    })
                }
            },
        };
        let server_name = match ServerName::try_from(name.clone()) {
            Ok(sn @ ServerName::DnsName(_)) => sn,
            _ => return Err(IdentityError::BadName { name }),
        };
        let parsed = ParsedCertificate::try_from(&leaf).map_err(|e| bad_leaf(e.to_string()))?;
        if rustls::client::verify_server_name(&parsed, &server_name).is_err() {
            return Err(IdentityError::NameMismatch {
                path: cfg.cert.clone(),
                name,
                sans: dns_sans,
            });
        }

        // The chain, as a meshed client would verify it (including the
        // serverAuth purpose when the leaf restricts its key usage).
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            chain.get(1..).unwrap_or_default(),
            now,
            provider.signature_verification_algorithms.all,
        )
        .map_err(|source| IdentityError::ChainInvalid {
            cert: cfg.cert.clone(),
            anchors: cfg.trust_anchors.clone(),
            source,
        })?;

        let serial = x509.raw_serial_as_string();
        let not_after = validity.not_after.timestamp();
        let http1 = tls::server_config(Arc::new(certified), Arc::new(roots), tls::Prefer::Http1)?;
        // The same configuration (key, verifier, session cache) with the
        // other ALPN order.
        let mut h2 = http1.clone();
        h2.alpn_protocols = tls::Prefer::Http2.alpn();
        Ok(LocalIdentity {
            name,
            server_config_http1: Arc::new(http1),
            server_config_h2: Arc::new(h2),
            leaf,
            serial,
            not_after,
        })
    }

    /// The identity name (lower case, no trailing dot): what meshed clients
    /// send as SNI.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a ClientHello's SNI names this identity (DNS names compare
    /// case-insensitively; a trailing dot is the same name).
    pub fn matches_sni(&self, sni: &str) -> bool {
        sni.trim_end_matches('.').eq_ignore_ascii_case(&self.name)
    }

    /// The server configuration that terminates meshed TLS as this
    /// identity, with ALPN in `prefer`'s order.
    pub fn server_config(&self, prefer: tls::Prefer) -> Arc<ServerConfig> {
        match prefer {
            tls::Prefer::Http1 => self.server_config_http1.clone(),
            tls::Prefer::Http2 => self.server_config_h2.clone(),
        }
    }

    /// The leaf certificate (DER).
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.leaf
    }

    /// The leaf's serial number, `aa:bb:..` hex, for logs.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// When the leaf expires, in seconds since the Unix epoch.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }
}

/// What a reload attempt found.
#[derive(Debug)]
pub enum Reload {
    /// The files hold what was last read: nothing to do.
    Unchanged,
    /// A new identity is in force for new handshakes.
    Reloaded { serial: String },
    /// The files changed but are not a valid identity: the old one stays.
    Rejected(IdentityError),
}

/// The current local identity, swapped whole on reload. Readers take a
/// snapshot with [`IdentityStore::current`] and keep it for one connection
/// (SNI check and handshake see the same identity); live connections keep
/// the configuration they started with.
pub struct IdentityStore {
    config: IdentityConfig,
    current: ArcSwap<LocalIdentity>,
    /// The contents of the last load attempt (good or bad), so an unchanged
    /// bad file is logged once, not every poll.
    last_seen: Mutex<Option<Contents>>,
    /// The last read error, logged once until it changes.
    last_read_error: Mutex<Option<String>>,
    warned_expired: AtomicBool,
}

impl fmt::Debug for IdentityStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityStore")
            .field("config", &self.config)
            .field("current", &*self.current.load())
            .finish_non_exhaustive()
    }
}

impl IdentityStore {
    /// Loads and validates the identity at startup. The identity name is
    /// fixed from here on: a rotated certificate must be valid for it.
    pub fn load(config: IdentityConfig) -> Result<Self, IdentityError> {
        let contents = Contents::read(&config)?;
        let identity = LocalIdentity::from_contents(&config, &contents, UnixTime::now())?;
        let config = IdentityConfig {
            name: Some(identity.name.clone()),
            ..config
        };
        Ok(IdentityStore {
            config,
            current: ArcSwap::from_pointee(identity),
            last_seen: Mutex::new(Some(contents)),
            last_read_error: Mutex::new(None),
            warned_expired: AtomicBool::new(false),
        })
    }

    /// The identity in force now.
    pub fn current(&self) -> Arc<LocalIdentity> {
        self.current.load_full()
    }

    /// The files this store reads, with the identity name fixed at startup.
    pub fn config(&self) -> &IdentityConfig {
        &self.config
    }

    /// Re-reads the files and, if their contents changed since the last
    /// attempt, validates them and swaps the new identity in. One writer
    /// (the reloader task) calls this; the lock only orders repeated calls.
    pub fn reload_if_changed(&self) -> Reload {
        self.reload_at(UnixTime::now())
    }

    fn reload_at(&self, now: UnixTime) -> Reload {
        let mut last_seen = match self.last_seen.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let contents = match Contents::read(&self.config) {
            Ok(c) => c,
            // A file briefly missing (e.g. during a Secret's symlink swap) is
            // a rejected reload; retried on the next poll.
            Err(e) => return Reload::Rejected(e),
        };
        if last_seen.as_ref() == Some(&contents) {
            return Reload::Unchanged;
        }
        let result = LocalIdentity::from_contents(&self.config, &contents, now);
        *last_seen = Some(contents);
        match result {
            Ok(identity) => {
                let serial = identity.serial.clone();
                self.current.store(Arc::new(identity));
                self.warned_expired.store(false, Ordering::Relaxed);
                Reload::Reloaded { serial }
            }
            Err(e) => Reload::Rejected(e),
        }
    }

    /// One poll of the reloader: reload and log what happened.
    fn poll_and_log(&self) {
        match self.reload_if_changed() {
            Reload::Unchanged => {}
            Reload::Reloaded { serial } => {
                tracing::info!(name = %self.config.name.as_deref().unwrap_or(""), %serial, "reloaded the local identity; new handshakes use it");
                self.set_read_error(None);
            }
            Reload::Rejected(e @ IdentityError::Read { .. }) => {
                let msg = e.to_string();
                if self.set_read_error(Some(msg.clone())) {
                    tracing::warn!(error = %msg, "cannot reload the local identity; keeping the current one");
                }
            }
            Reload::Rejected(e) => {
                self.set_read_error(None);
                tracing::warn!(error = %e, "the identity files changed but are not valid; keeping the current identity");
            }
        }
        let current = self.current();
        let now = i64::try_from(UnixTime::now().as_secs()).unwrap_or(i64::MAX);
        if now > current.not_after && !self.warned_expired.swap(true, Ordering::Relaxed) {
            tracing::warn!(name = %current.name, serial = %current.serial, "the local identity certificate has expired and no valid replacement was found; meshed clients will refuse it");
        }
    }

    /// Records the current read error; true when it differs from the last.
    fn set_read_error(&self, err: Option<String>) -> bool {
        let mut last = match self.last_read_error.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let changed = *last != err;
        *last = err;
        changed
    }

    /// Polls the files every `interval` (reading three small files is
    /// cheaper and more reliable than inotify across symlink swaps and
    /// bind mounts) until the returned task is aborted.
    pub fn spawn_reloader(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate; the files were just loaded
            loop {
                tick.tick().await;
                let store = Arc::clone(&store);
                // File reads block; keep them off the async workers.
                if let Err(e) = tokio::task::spawn_blocking(move || store.poll_and_log()).await {
                    tracing::error!(error = %e, "identity reloader poll failed");
                }
            }
        })
    }
}

fn parse_certs(
    file: IdentityFile,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem) {
        match item {
            Ok(der) => certs.push(der),
            Err(e) => {
                return Err(IdentityError::BadPem {
                    file,
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        }
    }
    if certs.is_empty() {
        return Err(IdentityError::Empty {
            file,
            path: path.to_path_buf(),
            expected: "CERTIFICATE",
        });
    }
    // Parse each one now so a corrupt certificate is named by position
    // instead of failing later as "chain does not verify".
    for (i, der) in certs.iter().enumerate() {
        if let Err(e) = X509Certificate::from_der(der.as_ref()) {
            return Err(IdentityError::BadCertificate {
                file,
                path: path.to_path_buf(),
                index: i + 1,
                reason: e.to_string(),
            });
        }
    }
    Ok(certs)
}

fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, IdentityError> {
    use rustls::pki_types::pem::Error as PemError;
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        PemError::NoItemsFound => IdentityError::Empty {
            file: IdentityFile::Key,
            path: path.to_path_buf(),
            expected: "PRIVATE KEY",
        },
        other => IdentityError::BadPem {
            file: IdentityFile::Key,
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })
}

/// The longest identity we accept from a certificate (a DNS name is at most
/// 253 bytes; URIs get more room). Longer SANs are skipped.
const MAX_IDENTITY_LEN: usize = 2048;

/// Well-formed DNS SANs of a certificate, lower-cased, in order. Wildcards
/// and names with characters outside printable ASCII are skipped: they are
/// not identities and must never reach an HTTP header.
fn dns_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    sans(cert)
        .into_iter()
        .filter_map(|n| match n {
            San::Dns(d) => Some(d),
            San::Uri(_) => None,
        })
        .collect()
}

enum San {
    Dns(String),
    Uri(String),
}

fn sans(cert: &X509Certificate<'_>) -> Vec<San> {
    // A certificate with a malformed or duplicated SAN extension has no
    // usable names (x509-parser reports both as errors).
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|gn| match gn {
            GeneralName::DNSName(d) if is_dns_identity(d) => {
                Some(San::Dns(d.trim_end_matches('.').to_ascii_lowercase()))
            }
            GeneralName::URI(u) if is_uri_identity(u) => Some(San::Uri((*u).to_string())),
            _ => None,
        })
        .collect()
}

fn is_dns_identity(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

fn is_uri_identity(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_IDENTITY_LEN
        && s.contains(':')
        && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The identity a client certificate presents: its first DNS SAN, else its
/// first URI SAN (e.g. a SPIFFE ID), else none. `der` is the verified leaf;
/// anything unparsable yields `None` (never a panic).
pub fn presented_identity(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let sans = sans(&cert);
    let dns = sans.iter().find_map(|s| match s {
        San::Dns(d) => Some(d.clone()),
        San::Uri(_) => None,
    });
    dns.or_else(|| {
        sans.into_iter().find_map(|s| match s {
            San::Uri(u) => Some(u),
            San::Dns(_) => None,
        })
    })
}

/// The client identity of a verified leaf as policy sees it: SPIFFE IDs of
/// the trust domain unify with service-account DNS names
/// ([`ClientIdentity::new`]).
pub fn client_identity(der: &[u8], policy: &PolicyConfig) -> Option<ClientIdentity> {
    presented_identity(der).map(|p| ClientIdentity::new(p, policy))
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
