//! End-to-end: the inbound listener with a real iptables redirect, so the
//! target port comes from `SO_ORIGINAL_DST` (IPv4) and
//! `IP6T_SO_ORIGINAL_DST` (IPv6), as in a pod.
//!
//! Everything runs inside a private network namespace (`unshare --net`):
//! its own loopback, its own iptables rules, nothing seen by or changed on
//! the host. Loopback addresses only: clients call 127.0.0.2:APP (IPv4) and
//! [::1]:APP (IPv6), which are redirected to the proxy's dual-stack
//! `--inbound-addr [::]:4143`; the proxy forwards to the app on
//! 127.0.0.1:APP, which no rule redirects. The app is a second `portcullis`
//! whose admin server answers `GET /live`. Needs root (CI runs as root, and
//! `.ci/run` installs iproute2, iptables and curl); elsewhere the test says
//! it was skipped.

use std::process::Command;

const SCRIPT: &str = r#"
set -eu
ip link set lo up
iptables -t nat -A OUTPUT -p tcp -d 127.0.0.2 --dport 8080 -j REDIRECT --to-ports 4143
ip6tables -t nat -A OUTPUT -p tcp -d ::1 --dport 8080 -j REDIRECT --to-ports 4143
"$BIN" --admin-addr 127.0.0.1:8080 --inbound-addr 127.0.0.1:0 2>/dev/null &
APP=$!
"$BIN" --inbound-addr '[::]:4143' --admin-addr 127.0.0.1:4191 $EXTRA 2>"$LOG" &
PROXY=$!
trap 'kill $APP $PROXY 2>/dev/null' EXIT
i=0
until curl -sf http://127.0.0.1:4191/live >/dev/null && curl -sf http://127.0.0.1:8080/live >/dev/null; do
  i=$((i + 1)); [ $i -lt 200 ] || { echo "not started"; exit 1; }; sleep 0.05
done
code() { curl -s -o /dev/null -m 5 -w '%{http_code}' "$1" || true; }
echo "v4=$(code http://127.0.0.2:8080/live)"
echo "v6=$(code 'http://[::1]:8080/live')"
echo "direct=$(code http://127.0.0.1:4143/live)"
curl -s http://127.0.0.1:4191/metrics
"#;

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs the scenario in a fresh network namespace: (stdout, proxy logs).
fn run_in_netns(name: &str, extra: &str) -> Option<(String, String)> {
    if !is_root() {
        eprintln!("skipped: a private network namespace with iptables needs root");
        return None;
    }
    let log = std::env::temp_dir().join(format!(
        "portcullis-origdst-{}-{name}.log",
        std::process::id()
    ));
    let out = Command::new("unshare")
        .args(["--net", "sh", "-c", SCRIPT])
        .env("BIN", e2e::bin("portcullis"))
        .env("LOG", &log)
        .env("EXTRA", extra)
        .env("PORTCULLIS_LOG", "info")
        .output()
        .expect("run unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(
        out.status.success(),
        "scenario failed: {}\n{stdout}\n{}\nproxy logs:\n{logs}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Some((stdout, logs))
}

#[test]
fn redirected_connections_reach_their_original_destination_port() {
    let Some((out, logs)) = run_in_netns("allow", "") else {
        return;
    };
    assert!(
        out.contains("v4=200"),
        "IPv4 through SO_ORIGINAL_DST:\n{out}\n{logs}"
    );
    assert!(
        out.contains("v6=200"),
        "IPv6 through IP6T_SO_ORIGINAL_DST:\n{out}\n{logs}"
    );
    // The inbound port itself is the direct path: closed, never forwarded to itself.
    assert!(out.contains("direct=000"), "{out}");
    assert_eq!(
        e2e::metric_sum(
            &out,
            "inbound_http_authz_allow_total",
            &[("target_addr", "127.0.0.2:8080"), ("target_port", "8080")]
        ),
        1.0,
        "{out}"
    );
    assert_eq!(
        e2e::metric_sum(
            &out,
            "inbound_http_authz_allow_total",
            &[("target_addr", "[::1]:8080"), ("target_ip", "::1")]
        ),
        1.0,
        "{out}"
    );
    assert_eq!(
        e2e::metric_sum(&out, "inbound_tcp_refused_total", &[("reason", "direct")]),
        1.0
    );
}

#[test]
fn redirected_connections_are_enforced_for_their_original_port() {
    let Some((out, _)) = run_in_netns("deny", "--default-policy deny") else {
        return;
    };
    assert!(out.contains("v4=403"), "{out}");
    assert!(out.contains("v6=403"), "{out}");
    assert_eq!(
        e2e::metric_sum(
            &out,
            "inbound_http_authz_deny_total",
            &[("srv_name", "deny"), ("target_port", "8080")]
        ),
        2.0,
        "{out}"
    );
}
