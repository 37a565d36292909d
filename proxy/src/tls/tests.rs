//! Handshakes over `tokio::io::duplex` between [`terminate`] and a
//! tokio-rustls client, one per kind of client the mesh sees.

use std::sync::Arc;
use std::time::Duration;

use portcullis_policy::{ClientIdentity, ClientTls, PolicyConfig};
use rcgen::{ExtendedKeyUsagePurpose, SanType};
use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::TlsConnector;

use super::*;
use crate::identity::testing::{Ca, Files, Issued, Leaf};
use crate::identity::{IdentityStore, LocalIdentity};

const SERVER: &str = "backend.emojivoto.serviceaccount.identity.linkerd.cluster.local";
const CLIENT: &str = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";
const TIMEOUT: Duration = Duration::from_secs(5);

struct Pki {
    ca: Ca,
    _dir: tempfile::TempDir,
    store: IdentityStore,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("mesh root");
    let leaf = ca.issue(&Leaf::dns(SERVER));
    let files = Files::for_identity(dir.path(), &ca, &leaf);
    let store = IdentityStore::load(files.config).unwrap();
    Pki {
        ca,
        _dir: dir,
        store,
    }
}

fn client_config(ca: &Ca, cert: Option<&Issued>, alpn: &[&[u8]]) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(c) => builder
            .with_client_auth_cert(vec![c.der()], c.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

type ClientStream = tokio_rustls::client::TlsStream<DuplexStream>;

/// Runs both sides; returns the server's result and the client's.
async fn handshake(
    identity: &LocalIdentity,
    config: ClientConfig,
) -> (
    Result<Terminated<DuplexStream>, TlsError>,
    std::io::Result<ClientStream>,
) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(SERVER).unwrap();
    let policy = PolicyConfig::default();
    tokio::join!(
        terminate(server_io, Some(identity), Prefer::Http1, &policy, TIMEOUT),
        connector.connect(name, client_io)
    )
}

/// Application data flows both ways over an established session.
async fn assert_echo(server: &mut Terminated<DuplexStream>, client: &mut ClientStream) {
    client.write_all(b"ping").await.unwrap();
    client.flush().await.unwrap();
    let mut buf = [0u8; 4];
    server.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    server.stream.write_all(b"pong").await.unwrap();
    server.stream.flush().await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
}

fn expect_identity<IO>(t: &Terminated<IO>) -> &ClientIdentity {
    match &t.client {
        ClientTls::Mesh { identity: Some(id) } => id,
        other => panic!("expected a mesh identity, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_of_the_mesh_ca_is_terminated_with_its_dns_identity() {
    let pki = pki();
    let client = pki.ca.issue(&Leaf::dns(CLIENT));
    let config = client_config(&pki.ca, Some(&client), &[ALPN_H2]);
    let (server, client) = handshake(&pki.store.current(), config).await;
    let (mut server, mut client) = (server.unwrap(), client.unwrap());
    let id = expect_identity(&server);
    assert_eq!(id.presented, CLIENT);
    assert_eq!(id.dns.as_deref(), Some(CLIENT));
    assert_eq!(server.alpn.as_deref(), Some(ALPN_H2));
    // The client verified the proxy's certificate for the identity name.
    assert_eq!(
        client.get_ref().1.peer_certificates().unwrap()[0],
        *pki.store.current().leaf()
    );
    assert_echo(&mut server, &mut client).await;
}

/// A client offering both versions gets HTTP/1.1 unless the port prefers
/// HTTP/2; one offering only `h2` (gRPC) always gets it.
#[tokio::test]
async fn alpn_follows_the_ports_preference_when_the_client_offers_both() {
    let pki = pki();
    let identity = pki.store.current();
    let policy = PolicyConfig::default();
    for (prefer, offered, want) in [
        (Prefer::Http1, &[ALPN_H2, ALPN_HTTP1][..], ALPN_HTTP1),
        (Prefer::Http2, &[ALPN_HTTP1, ALPN_H2][..], ALPN_H2),
        (Prefer::Http1, &[ALPN_H2][..], ALPN_H2),
        (Prefer::Http2, &[ALPN_HTTP1][..], ALPN_HTTP1),
        (Prefer::Http1, &[ALPN_TRANSPORT][..], ALPN_TRANSPORT),
    ] {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let connector = TlsConnector::from(Arc::new(client_config(&pki.ca, None, offered)));
        let (server, _client) = tokio::join!(
            terminate(server_io, Some(&identity), prefer, &policy, TIMEOUT),
            connector.connect(ServerName::try_from(SERVER).unwrap(), client_io)
        );
        assert_eq!(
            server.unwrap().alpn.as_deref(),
            Some(want),
            "{prefer:?} {offered:?}"
        );
    }
}

#[tokio::test]
async fn a_spiffe_client_is_the_same_service_account() {
    let pki = pki();
    let client = pki
        .ca
        .issue(&Leaf::uri("spiffe://cluster.local/ns/emojivoto/sa/web"));
    let config = client_config(&pki.ca, Some(&client), &[ALPN_HTTP1]);
    let (server, _client) = handshake(&pki.store.current(), config).await;
    let server = server.unwrap();
    let id = expect_identity(&server);
    assert_eq!(id.presented, "spiffe://cluster.local/ns/emojivoto/sa/web");
    assert_eq!(id.dns.as_deref(), Some(CLIENT));
    assert_eq!(server.alpn.as_deref(), Some(ALPN_HTTP1));
}

#[tokio::test]
async fn a_client_with_several_sans_is_its_first_dns_name() {
    let pki = pki();
    let mut spec = Leaf::uri("spiffe://cluster.local/ns/other/sa/x");
    spec.sans.push(SanType::DnsName(CLIENT.try_into().unwrap()));
    spec.sans
        .push(SanType::DnsName("second.example".try_into().unwrap()));
    let client = pki.ca.issue(&spec);
    let config = client_config(&pki.ca, Some(&client), &[ALPN_TRANSPORT]);
    let (server, _client) = handshake(&pki.store.current(), config).await;
    let server = server.unwrap();
    assert_eq!(expect_identity(&server).presented, CLIENT);
    assert_eq!(server.alpn.as_deref(), Some(ALPN_TRANSPORT));
}

#[tokio::test]
async fn a_client_without_a_certificate_is_tls_without_identity() {
    let pki = pki();
    let config = client_config(&pki.ca, None, &[]);
    let (server, client) = handshake(&pki.store.current(), config).await;
    let (mut server, mut client) = (server.unwrap(), client.unwrap());
    assert_eq!(server.client, ClientTls::Mesh { identity: None });
    assert_eq!(server.alpn, None);
    assert_echo(&mut server, &mut client).await;
}

async fn assert_rejected(pki: &Pki, client: &Issued, why: fn(&CertificateError) -> bool) {
    let config = client_config(&pki.ca, Some(client), &[ALPN_H2]);
    let (server, _client) = handshake(&pki.store.current(), config).await;
    match server {
        Err(ref e @ TlsError::BadClientCertificate(rustls::Error::InvalidCertificate(ref c))) => {
            assert!(why(c), "unexpected reason: {c:?}");
            assert_eq!(e.fault(), Fault::Peer);
        }
        Err(other) => panic!("expected a rejected client certificate, got {other:?}"),
        Ok(t) => panic!("handshake succeeded: {t:?}"),
    }
}

#[tokio::test]
async fn a_client_of_another_ca_fails_the_handshake() {
    let pki = pki();
    let other = Ca::new("other root");
    let client = other.issue(&Leaf::dns(CLIENT));
    assert_rejected(&pki, &client, |c| {
        matches!(c, CertificateError::UnknownIssuer)
    })
    .await;
}

#[tokio::test]
async fn expired_and_not_yet_valid_clients_fail_the_handshake() {
    let pki = pki();
    let expired = pki
        .ca
        .issue(&Leaf::dns(CLIENT).validity((2000, 1, 1), (2001, 1, 1)));
    assert_rejected(&pki, &expired, |c| {
        matches!(
            c,
            CertificateError::Expired | CertificateError::ExpiredContext { .. }
        )
    })
    .await;
    let future = pki
        .ca
        .issue(&Leaf::dns(CLIENT).validity((2090, 1, 1), (2091, 1, 1)));
    assert_rejected(&pki, &future, |c| {
        matches!(
            c,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
        )
    })
    .await;
}

#[tokio::test]
async fn a_client_certificate_for_servers_only_fails_the_handshake() {
    let pki = pki();
    let mut spec = Leaf::dns(CLIENT);
    spec.eku = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let client = pki.ca.issue(&spec);
    assert_rejected(&pki, &client, |c| {
        matches!(
            c,
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }
        )
    })
    .await;
}

#[tokio::test]
async fn an_unsupported_alpn_fails_the_handshake() {
    let pki = pki();
    let config = client_config(&pki.ca, None, &[b"spdy/3"]);
    let (server, _client) = handshake(&pki.store.current(), config).await;
    assert!(
        matches!(
            server,
            Err(TlsError::Handshake(rustls::Error::NoApplicationProtocol))
        ),
        "{server:?}"
    );
}

#[tokio::test]
async fn a_silent_client_times_out() {
    let pki = pki();
    let (_client_io, server_io) = tokio::io::duplex(1024);
    let err = terminate(
        server_io,
        Some(&pki.store.current()),
        Prefer::Http1,
        &PolicyConfig::default(),
        Duration::from_millis(100),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TlsError::Timeout { .. }), "{err:?}");
    assert_eq!(err.fault(), Fault::Peer);
}

#[tokio::test]
async fn a_client_that_hangs_up_or_sends_garbage_is_the_peers_fault() {
    let pki = pki();
    let (client_io, server_io) = tokio::io::duplex(1024);
    drop(client_io);
    let err = terminate(
        server_io,
        Some(&pki.store.current()),
        Prefer::Http1,
        &PolicyConfig::default(),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert_eq!(err.fault(), Fault::Peer, "{err:?}");

    let (mut client_io, server_io) = tokio::io::duplex(1024);
    client_io
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let err = terminate(
        server_io,
        Some(&pki.store.current()),
        Prefer::Http1,
        &PolicyConfig::default(),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TlsError::Handshake(_)), "{err:?}");
}

#[tokio::test]
async fn without_an_identity_it_is_our_fault() {
    let (_client_io, server_io) = tokio::io::duplex(1024);
    let err = terminate(
        server_io,
        None,
        Prefer::Http1,
        &PolicyConfig::default(),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TlsError::NoIdentity));
    assert_eq!(err.fault(), Fault::Local);
}

/// Detection reads the ClientHello before deciding; the handshake must work
/// over an IO that replays those bytes first.
#[tokio::test]
async fn terminates_over_an_io_that_replays_peeked_bytes() {
    let pki = pki();
    let client = pki.ca.issue(&Leaf::dns(CLIENT));
    let config = client_config(&pki.ca, Some(&client), &[ALPN_H2]);
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let connector = TlsConnector::from(Arc::new(config));
    let client_task = tokio::spawn(async move {
        let mut s = connector
            .connect(ServerName::try_from(SERVER).unwrap(), client_io)
            .await?;
        s.write_all(b"ping").await?;
        s.flush().await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        std::io::Result::Ok(buf)
    });

    let (mut read, write) = tokio::io::split(server_io);
    let mut peeked = vec![0u8; 5];
    read.read_exact(&mut peeked).await.unwrap();
    assert_eq!(peeked[0], 0x16, "a TLS handshake record");
    let replay = tokio::io::join(std::io::Cursor::new(peeked).chain(read), write);
    let policy = PolicyConfig::default();
    let mut server = terminate(
        replay,
        Some(&pki.store.current()),
        Prefer::Http1,
        &policy,
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(expect_identity(&server).presented, CLIENT);
    let mut buf = [0u8; 4];
    server.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    server.stream.write_all(b"pong").await.unwrap();
    server.stream.flush().await.unwrap();
    assert_eq!(&client_task.await.unwrap().unwrap(), b"pong");
}

/// Rotation: new handshakes present the new leaf; a session established
/// before the reload keeps working.
#[tokio::test]
async fn new_handshakes_use_a_reloaded_identity_and_live_ones_continue() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("mesh root");
    let first = ca.issue(&Leaf::dns(SERVER).serial(1));
    let files = Files::for_identity(dir.path(), &ca, &first);
    let store = IdentityStore::load(files.config.clone()).unwrap();
    let client = ca.issue(&Leaf::dns(CLIENT));

    let (server, client_stream) =
        handshake(&store.current(), client_config(&ca, Some(&client), &[])).await;
    let (mut live_server, mut live_client) = (server.unwrap(), client_stream.unwrap());
    assert_eq!(
        live_client.get_ref().1.peer_certificates().unwrap()[0],
        first.der()
    );

    let second = ca.issue(&Leaf::dns(SERVER).serial(2));
    Files::for_identity(dir.path(), &ca, &second);
    assert!(matches!(
        store.reload_if_changed(),
        crate::identity::Reload::Reloaded { .. }
    ));

    let (server, client_stream) =
        handshake(&store.current(), client_config(&ca, Some(&client), &[])).await;
    let (_server, new_client) = (server.unwrap(), client_stream.unwrap());
    assert_eq!(
        new_client.get_ref().1.peer_certificates().unwrap()[0],
        second.der()
    );
    assert_echo(&mut live_server, &mut live_client).await;

    // A bad file keeps serving the second leaf.
    std::fs::write(&files.config.cert, first.cert_pem()).unwrap();
    assert!(matches!(
        store.reload_if_changed(),
        crate::identity::Reload::Rejected(_)
    ));
    let (server, client_stream) =
        handshake(&store.current(), client_config(&ca, Some(&client), &[])).await;
    server.unwrap();
    assert_eq!(
        client_stream
            .unwrap()
            .get_ref()
            .1
            .peer_certificates()
            .unwrap()[0],
        second.der()
    );
}
