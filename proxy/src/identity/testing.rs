//! Test PKI for the identity and TLS tests: a CA, leaves signed by it, and
//! the PEM files the proxy reads, all generated per test with rcgen (no
//! committed keys). Test-only; nothing here is compiled into the proxy.

use std::path::Path;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::IdentityConfig;

/// A certificate authority that issues leaves.
pub(crate) struct Ca {
    pub cert: Certificate,
    key: KeyPair,
}

impl Ca {
    pub fn new(cn: &str) -> Ca {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-sign CA");
        Ca { cert, key }
    }

    /// An intermediate CA signed by this one.
    pub fn issue_ca(&self, cn: &str) -> Ca {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign intermediate");
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    pub fn issue(&self, spec: &Leaf) -> Issued {
        let key = KeyPair::generate_for(spec.alg).expect("generate leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, spec.cn.clone());
        params.subject_alt_names = spec.sans.clone();
        params.extended_key_usages = spec.eku.clone();
        params.serial_number = Some(SerialNumber::from(spec.serial));
        if let Some((y, m, d)) = spec.not_before {
            params.not_before = rcgen::date_time_ymd(y, m, d);
        }
        if let Some((y, m, d)) = spec.not_after {
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        params.custom_extensions = spec.extra_extensions.clone();
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        Issued { cert, key }
    }
}

/// What to put in a leaf.
#[derive(Clone)]
pub(crate) struct Leaf {
    pub cn: String,
    pub sans: Vec<SanType>,
    pub eku: Vec<ExtendedKeyUsagePurpose>,
    pub serial: u64,
    /// (year, month, day); rcgen's default when `None`.
    pub not_before: Option<(i32, u8, u8)>,
    pub not_after: Option<(i32, u8, u8)>,
    pub alg: &'static SignatureAlgorithm,
    pub extra_extensions: Vec<rcgen::CustomExtension>,
}

impl Leaf {
    /// A leaf for a DNS identity, usable as server and client (as mesh
    /// identity issuers do).
    pub fn dns(name: &str) -> Leaf {
        Leaf {
            cn: name.to_string(),
            sans: vec![SanType::DnsName(name.try_into().expect("ia5 name"))],
            eku: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            serial: 1,
            not_before: None,
            not_after: None,
            alg: &rcgen::PKCS_ECDSA_P256_SHA256,
            extra_extensions: Vec::new(),
        }
    }

    /// A leaf whose only SAN is a URI (e.g. a SPIFFE ID).
    pub fn uri(uri: &str) -> Leaf {
        Leaf {
            sans: vec![SanType::URI(uri.try_into().expect("ia5 uri"))],
            ..Leaf::dns("unused.example")
        }
    }

    pub fn serial(mut self, serial: u64) -> Leaf {
        self.serial = serial;
        self
    }

    pub fn validity(mut self, not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Leaf {
        self.not_before = Some(not_before);
        self.not_after = Some(not_after);
        self
    }

    pub fn alg(mut self, alg: &'static SignatureAlgorithm) -> Leaf {
        self.alg = alg;
        self
    }
}

/// An issued leaf with its key.
pub(crate) struct Issued {
    pub cert: Certificate,
    pub key: KeyPair,
}

impl Issued {
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

/// The three identity files in a directory.
pub(crate) struct Files {
    pub config: IdentityConfig,
}

impl Files {
    pub fn write(dir: &Path, anchors: &str, cert: &str, key: &str) -> Files {
        let config = IdentityConfig {
            trust_anchors: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            name: None,
        };
        std::fs::write(&config.trust_anchors, anchors).expect("write anchors");
        std::fs::write(&config.cert, cert).expect("write cert");
        std::fs::write(&config.key, key).expect("write key");
        Files { config }
    }

    /// Writes `issued` (signed by `ca`) as the proxy's identity.
    pub fn for_identity(dir: &Path, ca: &Ca, issued: &Issued) -> Files {
        Files::write(dir, &ca.pem(), &issued.cert_pem(), &issued.key_pem())
    }
}
