//! Startup validation (one test per refusal), reloading, and client identity
//! extraction, with certificates generated per test.

use std::sync::Arc;
use std::time::Duration;

use portcullis_policy::PolicyConfig;
use rcgen::{CustomExtension, SanType};

use super::testing::{Ca, Files, Leaf};
use super::*;

const NAME: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";

fn valid_files(dir: &Path) -> (Ca, Files) {
    let ca = Ca::new("root");
    let leaf = ca.issue(&Leaf::dns(NAME));
    let files = Files::for_identity(dir, &ca, &leaf);
    (ca, files)
}

fn load_err(cfg: &IdentityConfig) -> IdentityError {
    match LocalIdentity::load(cfg) {
        Ok(id) => panic!("expected a refusal, loaded {id:?}"),
        Err(e) => e,
    }
}

#[test]
fn loads_a_valid_identity_named_after_its_first_dns_san() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("root");
    let mut spec = Leaf::dns(NAME);
    spec.sans
        .push(SanType::DnsName("second.example".try_into().unwrap()));
    spec.sans.push(SanType::URI(
        "spiffe://cluster.local/ns/emojivoto/sa/web"
            .try_into()
            .unwrap(),
    ));
    let leaf = ca.issue(&spec);
    let files = Files::for_identity(dir.path(), &ca, &leaf);
    let id = LocalIdentity::load(&files.config).unwrap();
    assert_eq!(id.name(), NAME);
    assert_eq!(id.leaf(), &leaf.der());
    assert_eq!(id.serial(), "01");
    assert!(id.matches_sni(NAME));
    assert!(id.matches_sni(&NAME.to_ascii_uppercase()));
    assert!(id.matches_sni(&format!("{NAME}.")));
    assert!(!id.matches_sni("second.example"));
    assert!(!id.matches_sni(""));
    assert_eq!(
        id.server_config(tls::Prefer::Http1).alpn_protocols,
        vec![
            b"http/1.1".to_vec(),
            b"h2".to_vec(),
            b"transport.l5d.io/v1".to_vec()
        ]
    );
    assert_eq!(
        id.server_config(tls::Prefer::Http2).alpn_protocols,
        vec![
            b"h2".to_vec(),
            b"http/1.1".to_vec(),
            b"transport.l5d.io/v1".to_vec()
        ]
    );

    // An explicit name that is another SAN of the certificate is fine.
    let cfg = IdentityConfig {
        name: Some("Second.Example.".into()),
        ..files.config.clone()
    };
    assert_eq!(LocalIdentity::load(&cfg).unwrap().name(), "second.example");
}

#[test]
fn refuses_a_key_that_does_not_match_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("root");
    let leaf = ca.issue(&Leaf::dns(NAME));
    let other = ca.issue(&Leaf::dns(NAME));
    let files = Files::write(dir.path(), &ca.pem(), &leaf.cert_pem(), &other.key_pem());
    let err = load_err(&files.config);
    assert!(matches!(err, IdentityError::KeyMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("does not match the certificate"), "{msg}");
    assert!(msg.contains(&*files.config.key.to_string_lossy()), "{msg}");
    assert!(msg.contains(&*files.config.cert.to_string_lossy()), "{msg}");
}

#[test]
fn refuses_a_certificate_not_valid_for_the_identity_name() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, files) = valid_files(dir.path());
    let cfg = IdentityConfig {
        name: Some("api.emojivoto.serviceaccount.identity.linkerd.cluster.local".into()),
        ..files.config
    };
    let err = load_err(&cfg);
    assert!(matches!(err, IdentityError::NameMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("is not valid for the identity name"), "{msg}");
    assert!(msg.contains("api.emojivoto"), "{msg}");
    assert!(msg.contains(NAME), "lists the certificate's names: {msg}");

    let cfg = IdentityConfig {
        name: Some("10.0.0.1".into()),
        ..cfg
    };
    assert!(matches!(load_err(&cfg), IdentityError::BadName { .. }));
}

#[test]
fn refuses_expired_and_not_yet_valid_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("root");
    let expired = ca.issue(&Leaf::dns(NAME).validity((2000, 1, 1), (2001, 1, 1)));
    let files = Files::for_identity(dir.path(), &ca, &expired);
    let err = load_err(&files.config);
    assert!(matches!(err, IdentityError::Expired { .. }), "{err:?}");
    assert!(err.to_string().contains("expired at"), "{err}");
    assert!(err.to_string().contains("2001"), "{err}");

    let future = ca.issue(&Leaf::dns(NAME).validity((2090, 1, 1), (2091, 1, 1)));
    let files = Files::for_identity(dir.path(), &ca, &future);
    let err = load_err(&files.config);
    assert!(matches!(err, IdentityError::NotYetValid { .. }), "{err:?}");
    assert!(err.to_string().contains("not yet valid"), "{err}");
}

#[test]
fn refuses_a_chain_that_does_not_verify_against_the_trust_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("root");
    let other = Ca::new("other root");
    let leaf = other.issue(&Leaf::dns(NAME));
    let files = Files::write(dir.path(), &ca.pem(), &leaf.cert_pem(), &leaf.key_pem());
    let err = load_err(&files.config);
    assert!(matches!(err, IdentityError::ChainInvalid { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("does not verify against --identity-trust-anchors"),
        "{msg}"
    );
    assert!(
        msg.contains(&*files.config.trust_anchors.to_string_lossy()),
        "{msg}"
    );
}

#[test]
fn refuses_a_certificate_not_meant_for_servers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("root");
    let mut spec = Leaf::dns(NAME);
    spec.eku = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = ca.issue(&spec);
    let files = Files::for_identity(dir.path(), &ca, &leaf);
    assert!(matches!(
        load_err(&files.config),
        IdentityError::ChainInvalid { .. }
    ));
}

#[test]
fn verifies_chains_through_an_intermediate_and_any_of_several_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::new("root");
    let unrelated = Ca::new("unrelated root");
    let intermediate = root.issue_ca("issuer");
    let leaf = intermediate.issue(&Leaf::dns(NAME));
    let anchors = format!("{}{}", unrelated.pem(), root.pem());
    let chain = format!("{}{}", leaf.cert_pem(), intermediate.pem());
    let files = Files::write(dir.path(), &anchors, &chain, &leaf.key_pem());
    assert_eq!(LocalIdentity::load(&files.config).unwrap().name(), NAME);

    // Without the intermediate the chain cannot be built.
    let files = Files::write(dir.path(), &anchors, &leaf.cert_pem(), &leaf.key_pem());
    assert!(matches!(
        load_err(&files.config),
        IdentityError::ChainInvalid { .. }
    ));
}

#[test]
fn names_unreadable_empty_and_malformed_files() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, files) = valid_files(dir.path());
    let good = files.config.clone();

    let missing = IdentityConfig {
        cert: dir.path().join("nope.pem"),
        ..good.clone()
    };
    let err = load_err(&missing);
    assert!(matches!(
        err,
        IdentityError::Read {
            file: IdentityFile::Cert,
            ..
        }
    ));
    assert!(
        err.to_string().contains("cannot read --identity-cert"),
        "{err}"
    );
    assert!(err.to_string().contains("nope.pem"), "{err}");

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    for (cfg, file, expected) in [
        (
            IdentityConfig {
                trust_anchors: empty.clone(),
                ..good.clone()
            },
            IdentityFile::TrustAnchors,
            "CERTIFICATE",
        ),
        (
            IdentityConfig {
                cert: empty.clone(),
                ..good.clone()
            },
            IdentityFile::Cert,
            "CERTIFICATE",
        ),
        (
            IdentityConfig {
                key: empty.clone(),
                ..good.clone()
            },
            IdentityFile::Key,
            "PRIVATE KEY",
        ),
        // A key file that holds a certificate has no key.
        (
            IdentityConfig {
                key: good.trust_anchors.clone(),
                ..good.clone()
            },
            IdentityFile::Key,
            "PRIVATE KEY",
        ),
    ] {
        let err = load_err(&cfg);
        match &err {
            IdentityError::Empty {
                file: f,
                expected: e,
                ..
            } => {
                assert_eq!((*f, *e), (file, expected));
            }
            other => panic!("expected Empty for {file}, got {other:?}"),
        }
        assert!(err.to_string().contains(file.flag()), "{err}");
    }

    let truncated = dir.path().join("truncated.pem");
    let pem = ca.pem();
    std::fs::write(&truncated, &pem[..pem.len() / 2]).unwrap();
    let err = load_err(&IdentityConfig {
        cert: truncated.clone(),
        ..good.clone()
    });
    assert!(matches!(err, IdentityError::BadPem { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated.pem"), "{err}");

    // Valid base64, but not a certificate inside.
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = load_err(&IdentityConfig {
        trust_anchors: junk,
        ..good
    });
    assert!(
        matches!(
            err,
            IdentityError::BadCertificate {
                file: IdentityFile::TrustAnchors,
                index: 1,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn requires_a_name_when_the_certificate_has_no_dns_san() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("root");
    let leaf = ca.issue(&Leaf::uri("spiffe://cluster.local/ns/emojivoto/sa/web"));
    let files = Files::for_identity(dir.path(), &ca, &leaf);
    let err = load_err(&files.config);
    assert!(matches!(err, IdentityError::NoName { .. }), "{err:?}");
    assert!(err.to_string().contains("set --identity-name"), "{err}");
}

#[test]
fn accepts_ecdsa_ed25519_and_rsa_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("root");
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
        &rcgen::PKCS_RSA_SHA256,
    ] {
        let leaf = ca.issue(&Leaf::dns(NAME).alg(alg));
        let files = Files::for_identity(dir.path(), &ca, &leaf);
        let id = LocalIdentity::load(&files.config).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(id.leaf(), &leaf.der());
    }
}

/// SEC1 (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`) files, as older
/// tooling writes them, converted with the openssl CLI (CI installs it).
#[test]
fn accepts_sec1_and_pkcs1_keys() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("root");
    for (alg, marker) in [
        (&rcgen::PKCS_ECDSA_P256_SHA256, "BEGIN EC PRIVATE KEY"),
        (&rcgen::PKCS_RSA_SHA256, "BEGIN RSA PRIVATE KEY"),
    ] {
        let leaf = ca.issue(&Leaf::dns(NAME).alg(alg));
        let files = Files::for_identity(dir.path(), &ca, &leaf);
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-traditional", "-in"])
            .arg(&files.config.key)
            .output()
            .expect("run openssl (install it, as .ci/run does)");
        assert!(out.status.success(), "{out:?}");
        let traditional = String::from_utf8(out.stdout).unwrap();
        assert!(traditional.contains(marker), "{traditional}");
        std::fs::write(&files.config.key, traditional).unwrap();
        let id = LocalIdentity::load(&files.config).unwrap_or_else(|e| panic!("{marker}: {e}"));
        assert_eq!(id.leaf(), &leaf.der());
    }
}

#[test]
fn reload_swaps_in_new_files_and_keeps_the_old_identity_on_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("root");
    let first = ca.issue(&Leaf::dns(NAME).serial(1));
    let files = Files::for_identity(dir.path(), &ca, &first);
    let store = IdentityStore::load(files.config.clone()).unwrap();
    assert_eq!(store.current().leaf(), &first.der());
    assert!(matches!(store.reload_if_changed(), Reload::Unchanged));

    // Rotation: a new leaf and key.
    let second = ca.issue(&Leaf::dns(NAME).serial(2));
    Files::for_identity(dir.path(), &ca, &second);
    match store.reload_if_changed() {
        Reload::Reloaded { serial } => assert_eq!(serial, "02"),
        other => panic!("expected a reload, got {other:?}"),
    }
    assert_eq!(store.current().leaf(), &second.der());
    assert!(matches!(store.reload_if_changed(), Reload::Unchanged));

    // Half-written rotation: a new certificate with the old key.
    let third = ca.issue(&Leaf::dns(NAME).serial(3));
    std::fs::write(&files.config.cert, third.cert_pem()).unwrap();
    assert!(matches!(
        store.reload_if_changed(),
        Reload::Rejected(IdentityError::KeyMismatch { .. })
    ));
    assert_eq!(store.current().leaf(), &second.der(), "old identity kept");
    // The same bad contents are not re-validated (and not re-logged).
    assert!(matches!(store.reload_if_changed(), Reload::Unchanged));
    // Completing the rotation is picked up.
    std::fs::write(&files.config.key, third.key_pem()).unwrap();
    assert!(matches!(store.reload_if_changed(), Reload::Reloaded { .. }));
    assert_eq!(store.current().leaf(), &third.der());

    // The name is fixed at startup: a certificate for another name is refused.
    let renamed = ca.issue(&Leaf::dns("other.example").serial(4));
    Files::for_identity(dir.path(), &ca, &renamed);
    assert!(matches!(
        store.reload_if_changed(),
        Reload::Rejected(IdentityError::NameMismatch { .. })
    ));
    assert_eq!(store.current().leaf(), &third.der());

    // A missing file is a rejected reload, not a lost identity.
    std::fs::remove_file(&files.config.key).unwrap();
    assert!(matches!(
        store.reload_if_changed(),
        Reload::Rejected(IdentityError::Read { .. })
    ));
    assert_eq!(store.current().name(), NAME);
}

#[test]
fn reload_picks_up_new_trust_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("old root");
    let leaf = old_ca.issue(&Leaf::dns(NAME));
    let files = Files::for_identity(dir.path(), &old_ca, &leaf);
    let store = IdentityStore::load(files.config.clone()).unwrap();

    // CA rotation: the new bundle holds both roots; the new leaf is signed
    // by the new root.
    let new_ca = Ca::new("new root");
    let new_leaf = new_ca.issue(&Leaf::dns(NAME).serial(9));
    Files::write(
        dir.path(),
        &format!("{}{}", old_ca.pem(), new_ca.pem()),
        &new_leaf.cert_pem(),
        &new_leaf.key_pem(),
    );
    assert!(matches!(store.reload_if_changed(), Reload::Reloaded { .. }));
    assert_eq!(store.current().leaf(), &new_leaf.der());
}

#[tokio::test]
async fn the_reloader_task_polls_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("root");
    let first = ca.issue(&Leaf::dns(NAME).serial(1));
    let files = Files::for_identity(dir.path(), &ca, &first);
    let store = Arc::new(IdentityStore::load(files.config.clone()).unwrap());
    let task = store.spawn_reloader(Duration::from_millis(20));

    let second = ca.issue(&Leaf::dns(NAME).serial(2));
    Files::for_identity(dir.path(), &ca, &second);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.current().leaf() != &second.der() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reloader never picked up the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
}

// ---- client identity ----

fn presented(spec: &Leaf) -> Option<String> {
    let ca = Ca::new("root");
    presented_identity(ca.issue(spec).der().as_ref())
}

#[test]
fn client_identity_is_the_first_dns_san_else_the_first_uri() {
    assert_eq!(presented(&Leaf::dns(NAME)).as_deref(), Some(NAME));

    let spiffe = "spiffe://cluster.local/ns/emojivoto/sa/web";
    assert_eq!(presented(&Leaf::uri(spiffe)).as_deref(), Some(spiffe));

    // URI listed first, DNS second: the DNS name wins.
    let mut mixed = Leaf::uri(spiffe);
    mixed.sans.push(SanType::DnsName(
        "b.ns.serviceaccount.identity.x".try_into().unwrap(),
    ));
    mixed.sans.push(SanType::DnsName(
        "c.ns.serviceaccount.identity.x".try_into().unwrap(),
    ));
    assert_eq!(
        presented(&mixed).as_deref(),
        Some("b.ns.serviceaccount.identity.x")
    );

    // Upper case is normalised; wildcards and junk are skipped.
    let mut odd = Leaf::dns("*.wild.example");
    odd.sans
        .push(SanType::DnsName("has space.example".try_into().unwrap()));
    odd.sans.push(SanType::DnsName("".try_into().unwrap()));
    odd.sans
        .push(SanType::IpAddress("10.1.2.3".parse().unwrap()));
    odd.sans
        .push(SanType::DnsName("Real.Example".try_into().unwrap()));
    assert_eq!(presented(&odd).as_deref(), Some("real.example"));

    // No SANs at all.
    let mut none = Leaf::dns("x.example");
    none.sans.clear();
    assert_eq!(presented(&none), None);

    // Only things that are not identities.
    let mut junk = Leaf::dns("x.example");
    junk.sans = vec![
        SanType::Rfc822Name("a@b.example".try_into().unwrap()),
        SanType::URI("no-scheme".try_into().unwrap()),
        SanType::URI("spiffe://bad\x07bell".try_into().unwrap()),
    ];
    assert_eq!(presented(&junk), None);
}

#[test]
fn client_identity_survives_duplicate_and_malformed_san_extensions() {
    const SAN_OID: &[u64] = &[2, 5, 29, 17];
    // A second SAN extension next to the normal one.
    let mut dup = Leaf::dns(NAME);
    // SEQUENCE { [2] "a.example" }
    let mut content = vec![0x30, 11, 0x82, 9];
    content.extend_from_slice(b"a.example");
    dup.extra_extensions = vec![CustomExtension::from_oid_content(SAN_OID, content)];
    assert_eq!(presented(&dup), None);

    // A SAN extension whose content is not GeneralNames.
    let mut bad = Leaf::dns(NAME);
    bad.sans.clear();
    bad.extra_extensions = vec![CustomExtension::from_oid_content(
        SAN_OID,
        vec![0x30, 0x05, 0x82, 0x09, b'a'],
    )];
    assert_eq!(presented(&bad), None);

    // Non-certificates and every truncation of a real one.
    assert_eq!(presented_identity(b""), None);
    assert_eq!(presented_identity(b"\x30\x82\xff\xff garbage"), None);
    let der = Ca::new("root").issue(&Leaf::dns(NAME)).der();
    for n in 0..der.len() {
        let _ = presented_identity(&der[..n]);
    }
}

/// The committed fuzz seeds (made with openssl) read as expected.
#[test]
fn fuzz_seed_corpus_reads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/identity_der");
    let seed = |name: &str| presented_identity(&std::fs::read(dir.join(name)).unwrap());
    assert_eq!(seed("dns.der").as_deref(), Some(NAME));
    assert_eq!(
        seed("uri.der").as_deref(),
        Some("spiffe://cluster.local/ns/emojivoto/sa/web")
    );
    assert_eq!(seed("nosan.der"), None);
}

#[test]
fn spiffe_identities_of_the_trust_domain_unify_with_service_accounts() {
    let ca = Ca::new("root");
    let policy = PolicyConfig::default();
    let leaf = ca.issue(&Leaf::uri("spiffe://cluster.local/ns/emojivoto/sa/web"));
    let id = client_identity(leaf.der().as_ref(), &policy).unwrap();
    assert_eq!(id.presented, "spiffe://cluster.local/ns/emojivoto/sa/web");
    assert_eq!(id.dns.as_deref(), Some(NAME));

    let foreign = ca.issue(&Leaf::uri("spiffe://example.org/ns/emojivoto/sa/web"));
    let id = client_identity(foreign.der().as_ref(), &policy).unwrap();
    assert_eq!(id.dns, None);

    let dns = ca.issue(&Leaf::dns(NAME));
    let id = client_identity(dns.der().as_ref(), &policy).unwrap();
    assert_eq!(
        (id.presented.as_str(), id.dns.as_deref()),
        (NAME, Some(NAME))
    );
}
