//! The Portcullis demo: the proxy, a demo policy and a demo app on one
//! machine, no cluster needed.
//!
//! `cargo run -p portcullis-proxy --example demo` starts
//! - a small backend app on 127.0.0.1:18080 (`http`) and 127.0.0.1:19090 (`admin`),
//! - the real proxy (the same `Args` and `run` as the `portcullis` binary),
//!   with `--map` listeners in front of both ports and the embedded policy
//!   (`demo/policy.yaml`) written to a file you can edit while it runs,
//!
//! and prints curl commands that show an allowed and a denied request.
//! `--check` makes those requests itself, prints what happened, and exits 0
//! only when every outcome is the expected one (the end-to-end test runs it).
//! `--listen-ip IP` moves the proxy's listeners to another loopback address
//! and `--app-ports HTTP,ADMIN` moves the app (the policy follows), so that
//! concurrent runs do not collide.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Parser;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

const POLICY: &str = include_str!("../../demo/policy.yaml");
/// The app's ports as the embedded policy declares them.
const APP_HTTP: u16 = 18080;
const APP_ADMIN: u16 = 19090;

#[derive(Parser)]
#[command(about = "Run the Portcullis demo: proxy + demo policy + demo app")]
struct Opts {
    /// Make the demo requests, print the outcomes, exit 0 if all are as expected
    #[arg(long)]
    check: bool,
    /// Loopback address for the proxy's listeners (the app stays on 127.0.0.1)
    #[arg(long, default_value = "127.0.0.1")]
    listen_ip: IpAddr,
    /// The app's two ports (the policy's containerPorts follow)
    #[arg(long, value_delimiter = ',', default_values_t = [APP_HTTP, APP_ADMIN])]
    app_ports: Vec<u16>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    let ip = opts.listen_ip;
    let (http_port, admin_port, proxy_admin) = (4180, 4190, 4191);
    let (app_http, app_admin) = match opts.app_ports[..] {
        [h, a] => (h, a),
        _ => anyhow::bail!("--app-ports takes two ports: HTTP,ADMIN"),
    };

    // The demo app: answers every request with what it received, including
    // the identity header the proxy sets for meshed clients.
    for port in [app_http, app_admin] {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| anyhow::anyhow!("demo app cannot listen on 127.0.0.1:{port}: {e}"))?;
        tokio::spawn(serve_app(listener, port));
    }

    // The policy, written where the user can edit it (the proxy reloads it).
    let dir = std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let policy = dir.join("policy.yaml");
    let text = POLICY
        .replace(
            &format!("containerPort: {APP_HTTP}"),
            &format!("containerPort: {app_http}"),
        )
        .replace(
            &format!("containerPort: {APP_ADMIN}"),
            &format!("containerPort: {app_admin}"),
        );
    std::fs::write(&policy, text)?;

    // The proxy, configured through the same flags as the binary.
    let args = portcullis_proxy::config::Args::try_parse_from([
        "portcullis".to_string(),
        format!("--inbound-addr={ip}:4143"),
        format!("--map={ip}:{http_port}={app_http},{ip}:{admin_port}={app_admin}"),
        format!("--admin-addr={ip}:{proxy_admin}"),
        format!("--policy-file={}", policy.display()),
        "--workload=demo/backend".to_string(),
        "--app-addr=127.0.0.1".to_string(),
        // On one machine, loopback is "the cluster": authorizations without
        // `networks` (like backend-admin-prometheus) apply to it.
        "--cluster-networks=127.0.0.0/8,::1/128".to_string(),
    ])?;
    let config = args.validate()?;
    portcullis_proxy::init_logging(config.log_format);
    let proxy = tokio::spawn(portcullis_proxy::run(config));
    wait_ready(SocketAddr::new(ip, proxy_admin)).await?;

    if opts.check {
        let ok = check(ip, http_port, admin_port, proxy_admin).await;
        let _ = std::fs::remove_dir_all(&dir);
        std::process::exit(if ok { 0 } else { 1 });
    }

    println!(
        r#"
Portcullis demo is running: proxy in front of the demo app, policy {policy}
(namespace demo denies by default; edit the file and the proxy reloads it).

  curl -si http://{ip}:{http_port}/hello
      allowed: server/backend-http, serverauthorization/backend-http-local
  curl -si --interface 127.0.0.2 http://{ip}:{http_port}/hello
      denied (403, l5d-proxy-error): 127.0.0.2 is excepted from the authorized network
  curl -si http://{ip}:{admin_port}/admin
      denied (403): backend-admin admits only the prometheus service account over mesh TLS
  curl -si http://{ip}:{admin_port}/ready
      allowed: the pod's readiness probe path (default/probe route)
  curl -s http://{ip}:{proxy_admin}/metrics | grep authz
  curl -s http://{ip}:{proxy_admin}/policy

Why was a request denied?
  cargo run -q -p portcullis-controller -- check --resources {policy} \
      --workload demo/backend --port {app_http} --client-ip 127.0.0.2

Ctrl-C stops the demo."#,
        policy = policy.display(),
    );
    let result = proxy.await?;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn serve_app(listener: TcpListener, port: u16) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                let id = req
                    .headers()
                    .get("l5d-client-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_string();
                let body = format!(
                    "hello from the demo backend (port {port}): {} {}, l5d-client-id: {id}\n",
                    req.method(),
                    req.uri().path()
                );
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn wait_ready(admin: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..100 {
        if let Ok((200, _)) = get(None, admin, "/ready").await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the proxy did not become ready on {admin}")
}

/// Makes the requests the printed curl commands make; true when all match.
async fn check(ip: IpAddr, http_port: u16, admin_port: u16, proxy_admin: u16) -> bool {
    let local: IpAddr = "127.0.0.2".parse().expect("valid address");
    let cases = [
        (
            "allowed from 127.0.0.1",
            None,
            http_port,
            "/hello",
            200,
            false,
        ),
        (
            "denied from 127.0.0.2",
            Some(local),
            http_port,
            "/hello",
            403,
            true,
        ),
        (
            "admin denied without identity",
            None,
            admin_port,
            "/admin",
            403,
            true,
        ),
        (
            "readiness probe allowed",
            None,
            admin_port,
            "/ready",
            200,
            false,
        ),
    ];
    let mut ok = true;
    for (name, from, port, path, want, denied_by_proxy) in cases {
        let got = get(from, SocketAddr::new(ip, port), path).await;
        let pass = match &got {
            Ok((status, head)) => {
                *status == want
                    && head.contains("l5d-proxy-error: unauthorized request on route")
                        == denied_by_proxy
            }
            Err(_) => false,
        };
        ok &= pass;
        println!(
            "{} {name}: {}",
            if pass { "ok  " } else { "FAIL" },
            match got {
                Ok((status, _)) => format!("HTTP {status}"),
                Err(e) => format!("error: {e}"),
            }
        );
    }
    let metrics = get(None, SocketAddr::new(ip, proxy_admin), "/metrics").await;
    let counted = matches!(&metrics, Ok((200, body))
        if body.contains("inbound_http_authz_allow_total") && body.contains("inbound_http_authz_deny_total"));
    println!(
        "{} metrics count allows and denies",
        if counted { "ok  " } else { "FAIL" }
    );
    ok && counted
}

/// A minimal HTTP/1.1 GET from an optional local address: returns the status
/// and the whole response text.
async fn get(from: Option<IpAddr>, to: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(to)).await??;
    let req = format!("GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {text:?}"))?;
    Ok((status, text))
}
