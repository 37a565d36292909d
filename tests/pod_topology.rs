//! The sidecar as it runs in a Kubernetes pod, on one machine: a "pod"
//! network namespace and a "client" namespace joined by a veth pair, the
//! init script (`deploy/portcullis-init.sh`) run in the pod, and traffic from
//! the client namespace. Addresses come from the benchmarking range
//! 198.18.0.0/15 and exist only inside these throwaway namespaces:
//!
//! ```text
//!   client ns                               pod ns
//!   eth0 198.18.0.2/30, 198.18.1.2/32  ──  eth0 198.18.0.1/30
//!                                           nat PREROUTING -> PORTCULLIS_INBOUND
//!                                           listener on 0.0.0.0:4143, app on 127.0.0.1
//! ```
//!
//! - `redirect_reaches_the_proxy_port_with_the_original_destination` checks
//!   the plumbing with a stand-in listener (a Python one-liner that reports
//!   SO_ORIGINAL_DST): every port is redirected with its original
//!   destination intact, except the admin port, the skip list and the
//!   proxy's own UID.
//! - `the_real_proxy_enforces_policy_on_redirected_traffic` puts the real
//!   `portcullis` (UID 2102, `--policy-file`) behind the rules: HTTP and
//!   opaque ports allowed and denied by the original destination port, the
//!   admin port reached directly, a client outside the networks denied.
//! - `the_walkthrough_runs_as_the_manifests_configure_it` runs the backend
//!   pod of `deploy/k8s/demo.yaml` with its init and sidecar settings, fed by
//!   `portcullis-controller` from the ConfigMap's files, and replays README's
//!   curl commands: plaintext refused, mTLS as the frontend let through.
//!
//! Needs root (CI runs as root); skips with a message when namespaces cannot
//! be created. Namespaces and processes are removed by guards, also on
//! failure. Processes inside the namespaces are started with
//! `ip netns exec` (no `setns` from Rust: unsafe code is forbidden).

use std::time::Duration;

use e2e::netns::{self, Background, Netns};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/portcullis-init.sh");

const POD_IP: &str = "198.18.0.1";
const CLIENT_IP: &str = "198.18.0.2";
/// A second client address, outside the authorizations' networks.
const OTHER_CLIENT_IP: &str = "198.18.1.2";
const PROXY_UID: &str = "2102";

/// A listener for the pod: `MODE LABEL HOST PORT`. Prints `ready` once
/// listening. Modes:
/// - `origdst`: answers each connection with one line naming the label, the
///   original destination (SO_ORIGINAL_DST, 80 in
///   <linux/netfilter_ipv4.h>) and the peer, then closes;
/// - `greet`: a server-speaks-first app (like PostgreSQL or MySQL): sends
///   `LABEL hello`, then echoes until the client closes;
/// - `http`: an HTTP app answering `LABEL PATH` to every GET.
const LISTENER_PY: &str = r#"
import socket, struct, sys, threading
mode, label, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if mode == "http":
    import http.server
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = ("%s %s\n" % (label, self.path)).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    srv = http.server.ThreadingHTTPServer((host, port), H)
    print("ready", flush=True)
    srv.serve_forever()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port))
srv.listen(128)
print("ready", flush=True)
def handle(c, peer):
    try:
        if mode == "origdst":
            try:
                raw = c.getsockopt(socket.SOL_IP, 80, 16)
                orig = "%s:%d" % (socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0])
            except OSError as e:
                orig = "none(%s)" % e.errno
            c.sendall(("%s orig=%s peer=%s\n" % (label, orig, peer[0])).encode())
        elif mode == "greet":
            c.sendall(("%s hello\n" % label).encode())
            while True:
                data = c.recv(65536)
                if not data:
                    break
                c.sendall(data)
    finally:
        c.close()
while True:
    c, peer = srv.accept()
    threading.Thread(target=handle, args=(c, peer), daemon=True).start()
"#;

/// A client: `SRC DST PORT UID SEND SHUT`. `SRC`/`UID` of `-` mean default.
/// Connects (as UID, when given), sends SEND (hex, `-` for nothing), closes
/// its write side when SHUT is `shut`, reads to EOF and prints what it got;
/// on a connection error prints what it got so far and `error: NAME`, and
/// exits 3.
const CLIENT_PY: &str = r#"
import os, socket, sys
import encodings.idna  # socket needs it; import before dropping root can hide /root
src, host, port, uid, send, shut = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
if uid != "-":
    os.setgroups([]); os.setgid(int(uid)); os.setuid(int(uid))
data = b""
try:
    c = socket.create_connection((host, port), timeout=5,
                                 source_address=None if src == "-" else (src, 0))
    if send != "-":
        c.sendall(bytes.fromhex(send))
    if shut == "shut":
        c.shutdown(socket.SHUT_WR)
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    sys.stdout.write(data.decode("utf-8", "replace"))
except OSError as e:
    sys.stdout.write(data.decode("utf-8", "replace"))
    print("error: %s" % type(e).__name__)
    sys.exit(3)
"#;

/// The two namespaces, wired and addressed. Dropped last (declared first).
struct Topology {
    pod: Netns,
    client: Netns,
}

impl Topology {
    /// None (after printing why) when namespaces cannot be created here.
    fn new() -> Option<Topology> {
        let pod = match Netns::create("pod") {
            Ok(ns) => ns,
            Err(why) => {
                eprintln!("SKIPPED: cannot create network namespaces here ({why})");
                return None;
            }
        };
        let client = Netns::create("client").expect("second namespace after the first worked");
        netns::veth(&pod, "eth0", &client, "eth0");
        pod.ip(&["addr", "add", &format!("{POD_IP}/30"), "dev", "eth0"]);
        client.ip(&["addr", "add", &format!("{CLIENT_IP}/30"), "dev", "eth0"]);
        client.ip(&[
            "addr",
            "add",
            &format!("{OTHER_CLIENT_IP}/32"),
            "dev",
            "eth0",
        ]);
        // The pod answers the second client address through the veth.
        pod.ip(&[
            "route",
            "add",
            &format!("{OTHER_CLIENT_IP}/32"),
            "via",
            CLIENT_IP,
        ]);
        Some(Topology { pod, client })
    }

    /// Runs the init script in the pod namespace.
    fn init(&self, args: &[&str]) {
        let mut cmd = self.pod.command("sh");
        cmd.arg(SCRIPT).args(args);
        netns::check(&mut cmd);
    }

    /// Starts a Python listener in the pod and waits until it listens.
    fn listen(&self, mode: &str, label: &str, host: &str, port: u16) -> Background {
        let port = port.to_string();
        let mut l = self
            .pod
            .spawn("python3", &["-c", LISTENER_PY, mode, label, host, &port]);
        l.wait_for_line("ready", Duration::from_secs(10));
        l
    }
}

/// Connects from `ns` (from address `src`, as `uid`), sends `send` (then
/// closes the write side if `shut`), and returns everything the server said
/// until it closed, with `error: ...` appended on a connection error.
fn exchange(
    ns: &Netns,
    src: Option<&str>,
    dst: &str,
    port: u16,
    uid: Option<&str>,
    send: &[u8],
    shut: bool,
) -> String {
    let hex: String = send.iter().map(|b| format!("{b:02x}")).collect();
    let mut cmd = ns.command("python3");
    cmd.args([
        "-c",
        CLIENT_PY,
        src.unwrap_or("-"),
        dst,
        &port.to_string(),
        uid.unwrap_or("-"),
        if hex.is_empty() { "-" } else { &hex },
        if shut { "shut" } else { "keep" },
    ]);
    let out = netns::output_within(&mut cmd, Duration::from_secs(20));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() || text.contains("error: "),
        "client {dst}:{port} from {src:?} as {uid:?} crashed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Connects and reads what the server says first (nothing sent).
fn connect(ns: &Netns, src: Option<&str>, dst: &str, port: u16, uid: Option<&str>) -> String {
    exchange(ns, src, dst, port, uid, b"", false)
}

/// An HTTP/1.1 response as the client saw it.
#[derive(Debug)]
struct Response {
    status: u16,
    /// Header lines, lowercased.
    head: String,
    body: String,
    raw: String,
}

/// `GET path` to `POD_IP:port` from the client namespace.
fn http_get(t: &Topology, src: Option<&str>, port: u16, path: &str) -> Response {
    let req = format!("GET {path} HTTP/1.1\r\nHost: api.shop\r\nConnection: close\r\n\r\n");
    let raw = exchange(&t.client, src, POD_IP, port, None, req.as_bytes(), false);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Response {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
        raw: raw.clone(),
    }
}

#[test]
fn redirect_reaches_the_proxy_port_with_the_original_destination() {
    let Some(t) = Topology::new() else { return };
    t.init(&["--skip-inbound-ports", "2222"]);

    // Stand-ins: the "proxy" reports the original destination; the "app"
    // and the admin and skipped listeners only say who they are.
    let _proxy = t.listen("origdst", "proxy", "0.0.0.0", 4143);
    let _app = t.listen("origdst", "app", "0.0.0.0", 8080);
    let _admin = t.listen("origdst", "admin", POD_IP, 4191);
    let _skipped = t.listen("origdst", "skipped", "0.0.0.0", 2222);

    let from_client = |src: Option<&str>, port| connect(&t.client, src, POD_IP, port, None);

    // Any port, from either client address, lands on the proxy port with
    // the original destination and the real client address.
    for port in [8080, 5432, 9] {
        assert_eq!(
            from_client(None, port),
            format!("proxy orig={POD_IP}:{port} peer={CLIENT_IP}"),
            "port {port}"
        );
    }
    assert_eq!(
        from_client(Some(OTHER_CLIENT_IP), 8080),
        format!("proxy orig={POD_IP}:8080 peer={OTHER_CLIENT_IP}")
    );
    // Straight to the inbound port: the original destination is the inbound
    // port itself, which the proxy treats as its direct path (never a loop).
    assert_eq!(
        from_client(None, 4143),
        format!("proxy orig={POD_IP}:4143 peer={CLIENT_IP}")
    );
    // The admin port and the skip list are not redirected: kubelet probes
    // reach the admin server itself.
    assert!(
        from_client(None, 4191).starts_with("admin "),
        "admin port was redirected"
    );
    assert!(
        from_client(None, 2222).starts_with("skipped "),
        "skip list ignored"
    );

    // Inside the pod: the pod's own address goes through the proxy too...
    assert_eq!(
        connect(&t.pod, None, POD_IP, 8080, None),
        format!("proxy orig={POD_IP}:8080 peer={POD_IP}")
    );
    // ...except for the proxy's own UID (it may reach the app at the pod IP
    // without looping back into itself), and loopback is never touched.
    assert!(
        connect(&t.pod, None, POD_IP, 8080, Some(PROXY_UID)).starts_with("app "),
        "the proxy's own traffic was redirected"
    );
    assert!(connect(&t.pod, None, "127.0.0.1", 8080, None).starts_with("app "));
    // Other UIDs are redirected like root.
    assert!(connect(&t.pod, None, POD_IP, 8080, Some("2103")).starts_with("proxy "));

    // Idempotent in practice too: a second run changes nothing observable.
    t.init(&["--skip-inbound-ports", "2222"]);
    assert!(from_client(None, 2222).starts_with("skipped "));
    assert!(from_client(None, 8080).starts_with("proxy orig="));
}

/// The pod's policy: `shop/api` with four ports, each decided by its own
/// Server. The authorizations admit only the /30 of the veth, so the second
/// client address (198.18.1.2) is outside their networks.
const POLICY: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  annotations:
    config.linkerd.io/default-inbound-policy: deny
---
apiVersion: v1
kind: Pod
metadata:
  name: api
  namespace: shop
  labels: {app: api}
spec:
  containers:
  - name: api
    ports:
    - {name: http, containerPort: 8080}
    - {name: admin-http, containerPort: 9090}
    - {name: db, containerPort: 5432}
    - {name: cache, containerPort: 6379}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: api-http, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  port: http
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: api-http-veth, namespace: shop}
spec:
  server: {name: api-http}
  client:
    unauthenticated: true
    networks: [{cidr: 198.18.0.0/30}]
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: api-admin, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  port: admin-http
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: api-db, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  port: db
  proxyProtocol: opaque
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: api-db-veth, namespace: shop}
spec:
  server: {name: api-db}
  client:
    unauthenticated: true
    networks: [{cidr: 198.18.0.0/30}]
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: api-cache, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  port: cache
  proxyProtocol: opaque
"#;

/// Sum of a metric's samples whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn the_real_proxy_enforces_policy_on_redirected_traffic() {
    let Some(t) = Topology::new() else { return };
    // The proxy runs as the image's UID, so the files must be readable by it.
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).expect("write policy");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let proxy_bin = e2e::bin("portcullis");

    t.init(&[]);
    // The app's ports, on loopback where the proxy forwards (--app-addr).
    let _http = t.listen("http", "api", "127.0.0.1", 8080);
    let _admin_app = t.listen("http", "api-admin", "127.0.0.1", 9090);
    let _db = t.listen("greet", "db", "127.0.0.1", 5432);
    let _cache = t.listen("greet", "cache", "127.0.0.1", 6379);

    // The sidecar, as the manifests run it: all inbound on 0.0.0.0:4143,
    // admin on the pod IP (for kubelet probes), UID 2102.
    let log_path = dir.path().join("proxy.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = t.pod.command("setpriv");
    cmd.args(["--reuid", PROXY_UID, "--regid", PROXY_UID, "--clear-groups"])
        .arg(&proxy_bin)
        .args(["--inbound-addr", "0.0.0.0:4143"])
        .args(["--admin-addr", &format!("{POD_IP}:4191")])
        .args(["--app-addr", "127.0.0.1"])
        .arg("--policy-file")
        .arg(&policy)
        .args(["--workload", "shop/api"])
        .env("PORTCULLIS_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log);
    let _proxy = Background::start(cmd, "portcullis in the pod".into());
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // The admin port is not redirected: kubelet's probes reach /ready and
    // /live on the pod IP directly.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready = http_get(&t, None, 4191, "/ready");
        if ready.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "proxy not ready on {POD_IP}:4191: {ready:?}\nlogs:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let live = http_get(&t, None, 4191, "/live");
    assert_eq!(live.status, 200, "{live:?}");

    // HTTP, decided on the original destination port: every connection
    // arrives on 4143, only SO_ORIGINAL_DST tells 8080 from 9090.
    let ok = http_get(&t, None, 8080, "/items");
    assert_eq!(ok.status, 200, "{}\nlogs:\n{}", ok.raw, logs());
    assert_eq!(ok.body.trim(), "api /items");
    let denied = http_get(&t, None, 9090, "/admin");
    assert_eq!(denied.status, 403, "{}", denied.raw);
    assert!(
        denied
            .head
            .contains("l5d-proxy-error: unauthorized request on route"),
        "{}",
        denied.raw
    );
    assert!(
        !denied.body.contains("api-admin"),
        "the app answered: {}",
        denied.raw
    );

    // Opaque: the server-speaks-first app greets, then echoes, through the
    // proxy; the unauthorized port closes without a byte of the app's.
    let db = exchange(&t.client, None, POD_IP, 5432, None, b"SELECT 1;\n", true);
    assert_eq!(db, "db hello\nSELECT 1;", "logs:\n{}", logs());
    let cache = exchange(&t.client, None, POD_IP, 6379, None, b"PING\r\n", true);
    assert!(
        !cache.contains("cache hello"),
        "denied port forwarded: {cache:?}"
    );

    // A client address outside the authorizations' networks: denied on
    // both protocols.
    let outside = http_get(&t, Some(OTHER_CLIENT_IP), 8080, "/items");
    assert_eq!(outside.status, 403, "{}", outside.raw);
    let outside_db = exchange(
        &t.client,
        Some(OTHER_CLIENT_IP),
        POD_IP,
        5432,
        None,
        b"SELECT 1;\n",
        true,
    );
    assert!(!outside_db.contains("db hello"), "{outside_db:?}");

    // The proxy's own metrics agree, with the original destination as
    // target address and port.
    let metrics = http_get(&t, None, 4191, "/metrics").body;
    let target = |port: &str| {
        [
            ("target_addr", format!("{POD_IP}:{port}")),
            ("target_port", port.to_owned()),
        ]
    };
    let count = |name: &str, port: &str, extra: &[(&str, &str)]| {
        let t = target(port);
        let mut labels: Vec<(&str, &str)> = t.iter().map(|(k, v)| (*k, v.as_str())).collect();
        labels.extend_from_slice(extra);
        metric(&metrics, name, &labels)
    };
    assert_eq!(
        count(
            "inbound_http_authz_allow_total",
            "8080",
            &[("srv_name", "api-http")]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        count(
            "inbound_http_authz_deny_total",
            "9090",
            &[("srv_name", "api-admin")]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        count(
            "inbound_http_authz_deny_total",
            "8080",
            &[("srv_name", "api-http")]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        count(
            "inbound_tcp_authz_allow_total",
            "5432",
            &[("srv_name", "api-db")]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        count(
            "inbound_tcp_authz_deny_total",
            "6379",
            &[("srv_name", "api-cache")]
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        count(
            "inbound_tcp_authz_deny_total",
            "5432",
            &[("srv_name", "api-db")]
        ),
        1.0,
        "{metrics}"
    );
    // Nothing was ever addressed to the admin port through the proxy.
    assert_eq!(
        metric(&metrics, "tcp_open_total", &[("target_port", "4191")]),
        0.0,
        "{metrics}"
    );
}

/// The backend's sidecar and init container settings from
/// `deploy/k8s/demo.yaml` (literal `value:` entries), as (name, value).
fn manifest_env(container_list: &str, container: &str) -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/k8s/demo.yaml"))
            .expect("deploy/k8s/demo.yaml");
    let backend = text
        .split("\n---\n")
        .map(|d| serde_yaml_ng::from_str::<serde_json::Value>(d).expect("demo.yaml document"))
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "backend")
        .expect("backend Deployment");
    backend["spec"]["template"]["spec"][container_list]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == container))
        .and_then(|c| c["env"].as_array())
        .expect("container env")
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// curl from the client namespace; returns what `-w` printed.
fn curl(t: &Topology, args: &[&str]) -> String {
    let mut cmd = t.client.command("curl");
    cmd.args(["-s", "-m", "10"]).args(args);
    let out = netns::output_within(&mut cmd, Duration::from_secs(30));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_walkthrough_runs_as_the_manifests_configure_it() {
    // README "Sidecar (Kubernetes)" on one machine: the backend pod is the
    // pod namespace, the frontend the client namespace, and the controller
    // runs there too (another address, like another pod). The init
    // container and the sidecar get exactly the manifest's settings except
    // where the controller and the identity files are.
    let Some(t) = Topology::new() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    let world_readable = |p: &std::path::Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    world_readable(dir.path(), 0o755);

    // The PKI, minted as README does (Secrets are mounted 0644).
    let pki = dir.path().join("pki");
    let mut mint = std::process::Command::new("sh");
    mint.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/mint-mesh-pki.sh"
    ))
    .arg(&pki)
    .arg("frontend=frontend.demo.serviceaccount.identity.linkerd.cluster.local")
    .arg("backend=backend.demo.serviceaccount.identity.linkerd.cluster.local");
    netns::check(&mut mint);
    world_readable(&pki, 0o755);
    for f in std::fs::read_dir(&pki).expect("pki dir") {
        world_readable(&f.expect("entry").path(), 0o644);
    }
    let pki_file = |f: &str| pki.join(f).to_string_lossy().into_owned();

    // The ConfigMap's files, served by the controller.
    let resources = dir.path().join("resources");
    std::fs::create_dir(&resources).expect("mkdir");
    for f in ["demo.yaml", "policy.yaml"] {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/k8s")
            .join(f);
        std::fs::copy(src, resources.join(f)).expect("copy");
    }
    let _controller = t.client.spawn(
        e2e::bin("portcullis-controller")
            .to_str()
            .expect("utf-8 path"),
        &[
            "serve",
            "--resources",
            resources.to_str().expect("utf-8 path"),
            "--listen",
            &format!("{CLIENT_IP}:8090"),
            // The namespaces' addresses play the cluster's pod network.
            "--cluster-networks",
            "198.18.0.0/30",
        ],
    );

    // The init container, with its manifest settings.
    let mut init = t.pod.command("sh");
    init.arg(SCRIPT)
        .envs(manifest_env("initContainers", "portcullis-init"));
    netns::check(&mut init);

    // The backend app (nginx-unprivileged in the manifest).
    let _app = t.listen("http", "backend", "127.0.0.1", 8080);

    // The sidecar, as UID 2102 with the manifest's environment.
    let mut env = manifest_env("containers", "portcullis");
    for (k, v) in env.iter_mut() {
        match k.as_str() {
            "PORTCULLIS_POLICY_CONTROLLER" => *v = format!("http://{CLIENT_IP}:8090"),
            "PORTCULLIS_IDENTITY_TRUST_ANCHORS" => *v = pki_file("ca.pem"),
            "PORTCULLIS_IDENTITY_CERT" => *v = pki_file("backend.pem"),
            "PORTCULLIS_IDENTITY_KEY" => *v = pki_file("backend.key"),
            _ => {}
        }
    }
    assert!(env
        .iter()
        .any(|(k, v)| k == "PORTCULLIS_WORKLOAD" && v == "demo/backend"));
    // The proxy's own default cluster networks do not include 198.18/15.
    env.push(("PORTCULLIS_CLUSTER_NETWORKS".into(), "198.18.0.0/30".into()));
    let log_path = dir.path().join("proxy.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = t.pod.command("setpriv");
    cmd.args(["--reuid", PROXY_UID, "--regid", PROXY_UID, "--clear-groups"])
        .arg(e2e::bin("portcullis"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log);
    let _proxy = Background::start(cmd, "backend sidecar".into());
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Ready (kubelet's readiness probe) once the controller's policy for
    // 8080 arrived.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while curl(
        &t,
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{POD_IP}:4191/ready"),
        ],
    ) != "200"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "backend sidecar never ready\nlogs:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // README's first command: plaintext from the frontend is refused.
    assert_eq!(
        curl(
            &t,
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %header{l5d-proxy-error}",
                &format!("http://{POD_IP}:8080/")
            ]
        ),
        "403 unauthorized request on route",
        "logs:\n{}",
        logs()
    );
    // Its second: mutual TLS with the frontend's identity gets through.
    let b = "backend.demo.serviceaccount.identity.linkerd.cluster.local";
    let mtls = |cert: &str, key: &str, extra: &[&str]| {
        let (ca, cert, key) = (pki_file("ca.pem"), pki_file(cert), pki_file(key));
        let connect_to = format!("{b}:8080:{POD_IP}:8080");
        let url = format!("https://{b}:8080/hello");
        let mut args = vec![
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--connect-to",
            &connect_to,
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&t, &args)
    };
    assert_eq!(
        mtls("frontend.pem", "frontend.key", &[]),
        "200",
        "logs:\n{}",
        logs()
    );
    // Any other identity is refused, and so is the frontend's own
    // certificate from outside the cluster networks.
    assert_eq!(mtls("backend.pem", "backend.key", &[]), "403");
    assert_eq!(
        mtls(
            "frontend.pem",
            "frontend.key",
            &["--interface", OTHER_CLIENT_IP]
        ),
        "403"
    );
}
