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
//! `redirect_reaches_the_proxy_port_with_the_original_destination` checks the
//! plumbing with a stand-in listener (a Python one-liner that reports
//! SO_ORIGINAL_DST): every port is redirected with its original destination
//! intact, except the admin port, the skip list and the proxy's own UID.
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
/// listening. Mode `origdst` answers each connection with one line naming
/// the label, the original destination (SO_ORIGINAL_DST, 80 in
/// <linux/netfilter_ipv4.h>) and the peer, then closes.
const LISTENER_PY: &str = r#"
import socket, struct, sys, threading
mode, label, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
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
    finally:
        c.close()
while True:
    c, peer = srv.accept()
    threading.Thread(target=handle, args=(c, peer), daemon=True).start()
"#;

/// A client: `SRC DST PORT UID`. `SRC`/`UID` of `-` mean default. Connects
/// (as UID, when given), reads to EOF and prints what it got; on a
/// connection error prints `error: NAME` and exits 3.
const CLIENT_PY: &str = r#"
import os, socket, sys
import encodings.idna  # socket needs it; import before dropping root can hide /root
src, host, port, uid = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if uid != "-":
    os.setgroups([]); os.setgid(int(uid)); os.setuid(int(uid))
try:
    c = socket.create_connection((host, port), timeout=5,
                                 source_address=None if src == "-" else (src, 0))
    data = b""
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    sys.stdout.write(data.decode("utf-8", "replace"))
except OSError as e:
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

/// Connects from `ns` (from address `src`, as `uid`) and returns what the
/// server said, or `error: ...`.
fn connect(ns: &Netns, src: Option<&str>, dst: &str, port: u16, uid: Option<&str>) -> String {
    let mut cmd = ns.command("python3");
    cmd.args([
        "-c",
        CLIENT_PY,
        src.unwrap_or("-"),
        dst,
        &port.to_string(),
        uid.unwrap_or("-"),
    ]);
    let out = netns::output_within(&mut cmd, Duration::from_secs(20));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() || text.starts_with("error: "),
        "client {dst}:{port} from {src:?} as {uid:?} crashed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
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
