//! End-to-end: meshed mTLS with clients no one here wrote — `curl` and
//! `openssl s_client` (`.ci/run` installs both) — against certificates
//! minted by `scripts/mint-mesh-pki.sh`, the recipe README documents. This
//! is README's walkthrough (frontend -> backend over mTLS) as a test.

#[path = "support/apps.rs"]
mod apps;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use apps::*;
use e2e::Proxy;

/// In the walkthrough both Deployments run as the `default` service
/// account of `demo`: the backend's identity, and the one its policy admits.
const DEMO_DEFAULT: &str = "default.demo.serviceaccount.identity.linkerd.cluster.local";
const STRANGER: &str = "api.other.serviceaccount.identity.linkerd.cluster.local";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Mints the demo PKI with the script README shows.
fn mint(dir: &Path, ids: &[&str]) {
    let out = Command::new("sh")
        .arg(repo().join("scripts/mint-mesh-pki.sh"))
        .arg(dir)
        .args(ids)
        .output()
        .expect("run scripts/mint-mesh-pki.sh");
    assert!(
        out.status.success(),
        "mint failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Backend {
    proxy: Proxy,
    listen: std::net::SocketAddr,
    pki: tempfile::TempDir,
    _app: App,
    _dir: tempfile::TempDir,
}

/// The walkthrough, as README runs it: backend (`demo/backend`) with the
/// NetworkAuthenticationPolicy that admits only the frontend's service
/// account on 8080, in a namespace whose default is `deny`. Only the port
/// differs: the fixture's 8080 becomes the test app's port.
async fn backend() -> Backend {
    let pki = tempfile::tempdir().unwrap();
    mint(
        pki.path(),
        &[
            &format!("backend={DEMO_DEFAULT}"),
            &format!("frontend={DEMO_DEFAULT}"),
            &format!("stranger={STRANGER}"),
        ],
    );
    let app = http_app().await;
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::fs::read_to_string(repo().join("tests/fixtures/walkthrough.yaml"))
        .unwrap()
        .replace(
            "containerPort: 8080",
            &format!("containerPort: {}", app.port()),
        )
        .replace("- port: 8080", &format!("- port: {}", app.port()));
    assert!(fixture.contains(&format!("- port: {}", app.port())));
    let policy = dir.path().join("walkthrough.yaml");
    std::fs::write(&policy, fixture).unwrap();
    let (listen, m) = map(app.port());
    let p = |f: &str| pki.path().join(f).display().to_string();
    let proxy = Proxy::start(&[
        "--identity-trust-anchors".to_string(),
        p("ca.pem"),
        "--identity-cert".into(),
        p("backend.pem"),
        "--identity-key".into(),
        p("backend.key"),
        "--map".into(),
        m,
        "--policy-file".into(),
        policy.display().to_string(),
        "--workload".into(),
        "demo/backend".into(),
        "--cluster-networks".into(),
        "127.0.0.0/8".into(),
    ]);
    assert!(
        proxy.wait_ready(Duration::from_secs(10)),
        "{}",
        proxy.logs()
    );
    Backend {
        proxy,
        listen,
        pki,
        _app: app,
        _dir: dir,
    }
}

impl Backend {
    fn file(&self, f: &str) -> String {
        self.pki.path().join(f).display().to_string()
    }

    /// `curl` as `client` (None: no client certificate); returns (exit
    /// status success, HTTP status, response headers).
    fn curl(&self, client: Option<&str>, extra: &[&str]) -> (bool, u16, String) {
        let port = self.listen.port();
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "-o", "/dev/null", "-D", "-"])
            .args(["--cacert", &self.file("ca.pem")])
            .args(["--resolve", &format!("{DEMO_DEFAULT}:{port}:127.0.0.1")])
            .args(["-H", "l5d-client-id: forged.example"]);
        if let Some(c) = client {
            cmd.args(["--cert", &self.file(&format!("{c}.pem"))])
                .args(["--key", &self.file(&format!("{c}.key"))]);
        }
        cmd.args(extra)
            .arg(format!("https://{DEMO_DEFAULT}:{port}/hello"));
        let out = cmd
            .output()
            .expect("run curl (install it, as .ci/run does)");
        let head = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = head
            .lines()
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (out.status.success(), status, head.to_ascii_lowercase())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_frontend_reaches_the_backend_and_everyone_else_is_refused() {
    let b = backend().await;

    // The frontend: allowed, and the app sees its verified identity, not
    // the forged header. curl offers h2 and http/1.1 even with --http2; on
    // a port whose protocol is detected the proxy prefers HTTP/1.1, which
    // every HTTP app speaks (the app gets the client's version).
    for version in ["--http1.1", "--http2"] {
        let (ok, status, head) = b.curl(Some("frontend"), &[version]);
        assert!(
            ok && status == 200,
            "{version}: {status}\n{head}\n{}",
            b.proxy.logs()
        );
        assert!(
            head.contains(&format!("x-seen-client-id: {DEMO_DEFAULT}")),
            "{head}"
        );
        assert!(head.contains("x-seen-version: http/1.1"), "{head}");
    }

    // Another identity, and TLS without a certificate: 403 from the proxy.
    for client in [Some("stranger"), None] {
        let (ok, status, head) = b.curl(client, &[]);
        assert!(ok && status == 403, "{client:?}: {status}\n{head}");
        assert!(
            head.contains("l5d-proxy-error: unauthorized request on route"),
            "{head}"
        );
    }

    // Plaintext: 403 too.
    let mut tx = h1(b.listen).await;
    let (status, _, _, _) = read(tx.send_request(get("/")).await.unwrap()).await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_speaks_http_over_mtls_and_a_foreign_ca_fails() {
    let b = backend().await;
    let s_client = |cert: &str, key: &str| {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-verify_return_error"])
            .args(["-connect", &b.listen.to_string()])
            .args([
                "-servername",
                DEMO_DEFAULT,
                "-verify_hostname",
                DEMO_DEFAULT,
            ])
            .args(["-CAfile", &b.file("ca.pem")])
            .args(["-cert", cert, "-key", key, "-alpn", "http/1.1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run openssl (install it, as .ci/run does)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET /s HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (out, err) = s_client(&b.file("frontend.pem"), &b.file("frontend.key"));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{err}");
    assert!(
        out.to_ascii_lowercase()
            .contains(&format!("x-seen-client-id: {DEMO_DEFAULT}")),
        "{out}"
    );

    // A certificate from a CA the backend does not trust: no response.
    let foreign = tempfile::tempdir().unwrap();
    mint(foreign.path(), &[&format!("frontend={DEMO_DEFAULT}")]);
    let f = |file: &str| foreign.path().join(file).display().to_string();
    let (out, err) = s_client(&f("frontend.pem"), &f("frontend.key"));
    assert!(!out.contains("HTTP/1.1"), "{out}\n{err}");
    assert!(
        b.proxy
            .wait_log(&["meshed TLS handshake failed"], Duration::from_secs(5)),
        "{}",
        b.proxy.logs()
    );
}
