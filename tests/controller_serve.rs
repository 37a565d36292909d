//! `portcullis-controller serve` as a process, watched by the stream client
//! (`portcullis_policy::client`) over loopback: resource file edits reach the
//! client within a second and only for the ports whose policy changed; an
//! invalid edit keeps the last good policy and logs every error; a killed
//! controller leaves the client's policy in force, and a restarted one is
//! picked up again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_policy::client::{ClientConfig, FirstPolicy, PolicyClient, Workload};
use portcullis_policy::{
    authorize, Client, ClientTls, DenyReason, Meta, PolicyConfig, PolicyTable, Snapshot,
};

const SHOP: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
  labels: {app: web}
spec:
  containers:
    - name: web
      ports:
        - {name: http, containerPort: 8080}
        - {name: admin, containerPort: 9090}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: web-http, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  port: http
  proxyProtocol: HTTP/1
---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: web-public, namespace: shop}
spec:
  server: {name: web-http}
  client:
    unauthenticated: true
    networks: [{cidr: NETWORK}]
"#;

fn shop(network: &str) -> String {
    SHOP.replace("NETWORK", network)
}

/// `portcullis-controller serve` configured through its environment.
fn controller(resources: &Path, addr: SocketAddr) -> e2e::Controller {
    let (addr_s, res) = (addr.to_string(), resources.display().to_string());
    e2e::Controller::serve(
        &[],
        &[
            ("PORTCULLIS_RESOURCES", &res),
            ("PORTCULLIS_LISTEN", &addr_s),
        ],
        addr,
    )
}

fn resources(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("shop.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn client(addr: SocketAddr, table: Arc<PolicyTable>) -> PolicyClient {
    let mut cfg = ClientConfig::new(
        format!("http://{addr}"),
        "shop/web-0".parse::<Workload>().unwrap(),
    );
    cfg.ports = vec![8080, 9090];
    cfg.backoff_max = Duration::from_millis(500);
    PolicyClient::spawn(cfg, table).unwrap()
}

fn table() -> Arc<PolicyTable> {
    Arc::new(PolicyTable::new(Snapshot::from_config(
        &PolicyConfig::default(),
        "controller",
    )))
}

fn plain(ip: &str) -> Client {
    Client {
        addr: ip.parse().unwrap(),
        tls: ClientTls::None,
    }
}

fn allowed(table: &PolicyTable, port: u16, ip: &str) -> bool {
    authorize(&table.get(port), &plain(ip)).is_ok()
}

async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[tokio::test]
async fn file_edits_reach_watchers_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let file = resources(dir.path(), &shop("0.0.0.0/0"));
    let addr = e2e::free_addr();
    let ctl = controller(&file, addr);
    let table = table();
    let client = client(addr, table.clone());
    assert_eq!(client.wait_for_port(8080).await, FirstPolicy::Received);
    assert_eq!(client.wait_for_port(9090).await, FirstPolicy::Received);
    assert_eq!(table.get(8080).server, Meta::policy("server", "web-http"));
    assert_eq!(table.get(9090).server, Meta::default("all-unauthenticated"));
    assert!(allowed(&table, 8080, "192.168.1.1"));
    assert_eq!(client.stats().messages, 2);

    // Narrow the authorization: applied within a second, port 9090 untouched.
    let edited = Instant::now();
    std::fs::write(&file, shop("10.0.0.0/8")).unwrap();
    assert!(
        eventually(Duration::from_secs(1), || !allowed(
            &table,
            8080,
            "192.168.1.1"
        ))
        .await,
        "edit applied within 1 s; log:\n{}",
        ctl.log()
    );
    let took = edited.elapsed();
    assert!(allowed(&table, 8080, "10.1.1.1"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        client.stats().messages,
        3,
        "only port 8080 was pushed (took {took:?})"
    );

    // An invalid edit: every error logged, the last good policy stays.
    let generation = table.generation();
    std::fs::write(
        &file,
        shop("10.0.0.0/8")
            .replace("podSelector", "podSelecter")
            .replace("10.0.0.0/8", "10.0.0.0/33"),
    )
    .unwrap();
    let name = file.display().to_string();
    assert!(
        eventually(Duration::from_secs(2), || ctl
            .log()
            .contains("last good policy stays in force"))
        .await,
        "{}",
        ctl.log()
    );
    let log = ctl.log();
    assert!(
        log.contains(&format!(
            "{name}:2 Server/shop/web-http: spec.podSelecter: unknown field"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "{name}:3 ServerAuthorization/shop/web-public: spec.client.networks[0].cidr"
        )),
        "{log}"
    );
    assert_eq!(table.generation(), generation);
    assert!(allowed(&table, 8080, "10.1.1.1"));

    // Fixed: applied again.
    std::fs::write(&file, shop("192.168.0.0/16")).unwrap();
    assert!(
        eventually(Duration::from_secs(1), || allowed(
            &table,
            8080,
            "192.168.1.1"
        ))
        .await,
        "{}",
        ctl.log()
    );
    assert_eq!(client.stats().invalid_messages, 0);

    // Removing the Server: the port falls back to the pod's default policy.
    std::fs::write(&file, SHOP.split("---").next().unwrap()).unwrap();
    assert!(
        eventually(Duration::from_secs(1), || table.get(8080).server
            == Meta::default("all-unauthenticated"))
        .await
    );
}

#[tokio::test]
async fn a_killed_controller_leaves_the_policy_in_force_until_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = resources(dir.path(), &shop("10.0.0.0/8"));
    let addr = e2e::free_addr();
    let mut ctl = controller(&file, addr);
    let table = table();
    let client = client(addr, table.clone());
    assert_eq!(client.wait_for_port(8080).await, FirstPolicy::Received);
    assert_eq!(client.wait_for_port(9090).await, FirstPolicy::Received);
    assert!(!allowed(&table, 8080, "192.168.1.1"));

    ctl.kill();
    assert!(eventually(Duration::from_secs(3), || client.stats().stream_errors >= 2).await);
    // Still the last policy: no fallback to the (allowing) default.
    let held = table.get(8080);
    assert_eq!(held.server, Meta::policy("server", "web-http"));
    assert_eq!(
        authorize(&held, &plain("192.168.1.1")).unwrap_err().reason,
        DenyReason::NetworkNotAuthorized
    );
    assert!(client.is_ready());

    // Edited while down; the restarted controller serves the new policy.
    std::fs::write(&file, shop("0.0.0.0/0")).unwrap();
    let _ctl = controller(&file, addr);
    assert!(
        eventually(Duration::from_secs(5), || allowed(
            &table,
            8080,
            "192.168.1.1"
        ))
        .await,
        "{:?}",
        client.stats()
    );
}

#[test]
fn serve_refuses_to_start_on_invalid_resources() {
    let dir = tempfile::tempdir().unwrap();
    let file = resources(dir.path(), &shop("10.0.0.0/33"));
    let out = Command::new(e2e::bin("portcullis-controller"))
        .args(["serve", "--listen", "127.0.0.1:0", "--resources"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains(&format!(
            "{}:3 ServerAuthorization/shop/web-public: spec.client.networks[0].cidr",
            file.display()
        )),
        "{log}"
    );
    assert!(log.contains("nothing to serve"), "{log}");
}
