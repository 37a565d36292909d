//! The targets a scenario measures, started on loopback in front of the same
//! upstream: `direct` (the client talks to the upstream itself),
//! `portcullis` (the real release binary with a generated policy file that
//! must be evaluated: a Server selecting the port, `--default-policy deny`,
//! and a ServerAuthorization that allows the client), `haproxy` and `nginx`
//! (generated configurations). Every proxy runs single-threaded (one worker,
//! one thread) pinned to the serving core, next to the upstream.
//!
//! A target that cannot start reports why (missing binary, unknown flag,
//! policy not applied) as an `Err`; the scenario shows it in its table and
//! goes on. Must not: fall back to a default-allow policy, or let a proxy
//! outlive the run (`Proc` stops it on drop). Called by `scenarios.rs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::certs::{Certs, CLIENT_ID};
pub use crate::policy::{policy_yaml, write_policy, Traffic};
use crate::procs::{self, Core, Pinning, Proc};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Portcullis,
    Haproxy,
    Nginx,
    /// The floor: a blocking byte relay (`relay.rs`), no parsing or policy.
    Floor,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Portcullis => "portcullis",
            Kind::Haproxy => "haproxy",
            Kind::Nginx => "nginx",
            Kind::Floor => "floor",
        }
    }
}

/// What the target speaks to its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    /// HTTP/2 prior knowledge, cleartext.
    H2c,
    /// Opaque TCP (iperf3).
    Tcp,
    /// HTTP/1.1 inside mTLS; the proxy terminates it and forwards plain
    /// HTTP/1.1 to the upstream.
    Mtls,
}

/// One row of a scenario's table.
#[derive(Clone, Debug)]
pub struct Spec {
    pub label: String,
    pub kind: Kind,
    pub proto: Proto,
    /// HAProxy in TCP mode: splice(2) on or off.
    pub splice: bool,
    /// Portcullis: how many ServerAuthorizations the policy holds (the last
    /// one allows the client; the others must be looked at and rejected).
    pub authorizations: usize,
    /// Portcullis: rewrite the policy file 10 times a second while measuring.
    pub rewrite: bool,
}

impl Spec {
    pub fn new(kind: Kind, proto: Proto) -> Spec {
        Spec {
            label: kind.name().to_string(),
            kind,
            proto,
            splice: false,
            authorizations: 1,
            rewrite: false,
        }
    }

    pub fn label(mut self, l: &str) -> Spec {
        self.label = l.to_string();
        self
    }
}

/// What every target is started against.
pub struct Env {
    pub pin: Pinning,
    pub dir: PathBuf,
    pub upstream_http: SocketAddr,
    pub upstream_tls: Option<SocketAddr>,
    pub iperf: Option<SocketAddr>,
    pub certs: Option<Certs>,
    pub portcullis: Result<PathBuf, String>,
    /// Open files a proxy may use (for HAProxy's maxconn and nginx's limits).
    pub nofile: u64,
}

/// A started target.
pub struct Running {
    pub addr: SocketAddr,
    pub proc: Option<Proc>,
    pub admin: Option<SocketAddr>,
    pub policy_file: Option<PathBuf>,
    pub app_port: u16,
}

impl Running {
    /// A proxy with no admin server or policy file (HAProxy, nginx, the
    /// floor relay), listening on `addr` in front of `backend`.
    fn without_admin(addr: SocketAddr, proc: Proc, backend: SocketAddr) -> Running {
        Running {
            addr,
            proc: Some(proc),
            admin: None,
            policy_file: None,
            app_port: backend.port(),
        }
    }

    /// The processes whose CPU and memory count as the proxy's (none for
    /// direct).
    pub fn pids(&self) -> Vec<u32> {
        self.proc
            .as_ref()
            .map_or(Vec::new(), |p| procs::tree(p.pid()))
    }

    pub fn stop(&mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.stop();
        }
    }
}

/// A loopback port for a target to listen on: from below the ephemeral
/// range and never handed out twice (`e2e::free_addr`), so it cannot
/// collide with a load generator's source ports or another target's port.
fn free_port() -> Result<SocketAddr, String> {
    Ok(e2e::free_addr())
}

/// Where the proxies forward to for this protocol.
fn backend(env: &Env, proto: Proto) -> Result<SocketAddr, String> {
    match proto {
        Proto::Tcp => env.iperf.ok_or_else(|| "no iperf3 server".to_string()),
        _ => Ok(env.upstream_http),
    }
}

pub fn start(spec: &Spec, env: &Env, slot: &str) -> Result<Running, String> {
    let backend = backend(env, spec.proto)?;
    if spec.proto == Proto::Mtls && env.certs.is_none() {
        return Err("no certificates".into());
    }
    match spec.kind {
        Kind::Direct => {
            let addr = match spec.proto {
                Proto::Mtls => env.upstream_tls.ok_or("the upstream has no TLS listener")?,
                _ => backend,
            };
            Ok(Running {
                addr,
                proc: None,
                admin: None,
                policy_file: None,
                app_port: backend.port(),
            })
        }
        Kind::Portcullis => start_portcullis(spec, env, backend, slot),
        Kind::Haproxy => start_haproxy(spec, env, backend, slot),
        Kind::Nginx => start_nginx(spec, env, backend, slot),
        Kind::Floor => start_floor(env, backend, slot),
    }
}

fn spawn_logged(
    env: &Env,
    name: &str,
    program: &Path,
    args: &[String],
    envs: &[(&str, &str)],
    log: &Path,
) -> Result<Proc, String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = procs::command(env.pin, Core::Serve, program, args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| format!("starting {}: {e}", program.display()))?;
    Ok(Proc {
        name: name.to_string(),
        child,
        log: Some(log.to_path_buf()),
    })
}

/// Waits for `addr` to accept, failing early with the log if the process dies.
fn wait_ready(proc: &mut Proc, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = proc.exited() {
            let tail = proc.log_tail();
            let tail = if tail.is_empty() {
                "no output".to_string()
            } else {
                tail
            };
            return Err(format!("{} exited ({status}): {tail}", proc.name));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not listen on {addr} within {timeout:?}: {}",
                proc.name,
                proc.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A plain HTTP/1.1 GET; returns the status code and the whole response.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr} answered no HTTP status: {:?}", first_line(&text)))?;
    Ok((code, text))
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// One GET through the target must come back 200 before we measure: a 403
/// here means the policy did not allow the bench client (so it was really
/// evaluated, but wrongly configured) and every number would be a denial.
fn probe_http(addr: SocketAddr, name: &str) -> Result<(), String> {
    let (code, text) = http_get(addr, "/")?;
    if code != 200 {
        return Err(format!(
            "{name}: probe GET / answered {code} ({}), expected 200",
            text.lines()
                .find(|l| l.to_ascii_lowercase().starts_with("l5d-proxy-error"))
                .unwrap_or(first_line(&text))
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- portcullis

/// How the policy must let the bench client in for this protocol.
pub fn traffic(proto: Proto) -> Traffic {
    match proto {
        Proto::Tcp => Traffic::Opaque,
        Proto::Mtls => Traffic::MeshTls(CLIENT_ID),
        Proto::Http1 | Proto::H2c => Traffic::Plain,
    }
}

fn start_portcullis(
    spec: &Spec,
    env: &Env,
    backend: SocketAddr,
    slot: &str,
) -> Result<Running, String> {
    let bin = env.portcullis.clone()?;
    let listen = free_port()?;
    let admin = free_port()?;
    let policy = env.dir.join(format!("policy-{slot}.yaml"));
    write_policy(
        &policy,
        &policy_yaml(backend.port(), traffic(spec.proto), spec.authorizations, 0),
    )?;
    // The iptables listener is unused here, but it must bind somewhere of
    // our own: loopback, a free port (several proxies may run at once).
    let inbound = free_port()?;
    let mut args = vec![
        "--inbound-addr".to_string(),
        inbound.to_string(),
        "--map".to_string(),
        format!("{listen}={}", backend.port()),
        "--app-addr".into(),
        "127.0.0.1".into(),
        "--admin-addr".into(),
        admin.to_string(),
        "--policy-file".into(),
        policy.display().to_string(),
        "--workload".into(),
        "bench/app".into(),
        "--default-policy".into(),
        "deny".into(),
    ];
    if spec.proto == Proto::Mtls {
        let c = env.certs.as_ref().ok_or("no certificates")?;
        args.extend([
            "--identity-trust-anchors".to_string(),
            c.ca.display().to_string(),
            "--identity-cert".into(),
            c.server_cert.display().to_string(),
            "--identity-key".into(),
            c.server_key.display().to_string(),
        ]);
    }
    let log = env.dir.join(format!("portcullis-{slot}.log"));
    // One tokio worker thread: every proxy gets one core's worth of threads.
    let mut proc = spawn_logged(
        env,
        "portcullis",
        &bin,
        &args,
        &[("TOKIO_WORKER_THREADS", "1"), ("PORTCULLIS_LOG", "warn")],
        &log,
    )?;
    wait_ready(&mut proc, listen, Duration::from_secs(15))?;
    // /ready: the policy file has been loaded.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match http_get(admin, "/ready") {
            Ok((200, _)) => break,
            r if Instant::now() > deadline => {
                return Err(format!(
                    "portcullis admin /ready never answered 200 (last: {:?}): {}",
                    r.map(|(c, _)| c),
                    proc.log_tail()
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    if spec.proto == Proto::Http1 {
        probe_http(listen, "portcullis")?;
    }
    Ok(Running {
        addr: listen,
        proc: Some(proc),
        admin: Some(admin),
        policy_file: Some(policy),
        app_port: backend.port(),
    })
}

/// Sums the values of a Prometheus counter's samples whose labels contain
/// every `needle`, from `/metrics` text.
pub fn metric_sum(text: &str, name: &str, needles: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if !needles.iter().all(|n| rest.contains(n)) {
            continue;
        }
        if let Some(v) = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

// ------------------------------------------------------------------- haproxy

pub fn haproxy_cfg(spec: &Spec, env: &Env, listen: SocketAddr, backend: SocketAddr) -> String {
    // Each proxied connection holds two descriptors; with splice HAProxy
    // also reserves a pipe (two more) for every fourth connection. It
    // refuses to start when the total exceeds the hard limit.
    let per_conn = if spec.splice { 3 } else { 2 };
    let maxconn = (env.nofile.saturating_sub(300) / per_conn).clamp(256, 200_000);
    let splice = if spec.proto == Proto::Tcp && spec.splice {
        "    option splice-request\n    option splice-response\n"
    } else {
        ""
    };
    let nosplice = if spec.splice { "" } else { "    nosplice\n" };
    let mode = if spec.proto == Proto::Tcp {
        "tcp"
    } else {
        "http"
    };
    let (bind_extra, server_extra) = match spec.proto {
        // HTTP/2 on both sides: HAProxy keeps h2 to the upstream.
        Proto::H2c => (" proto h2".to_string(), " proto h2".to_string()),
        Proto::Mtls => match &env.certs {
            Some(c) => (
                format!(
                    " ssl crt {} ca-file {} verify required",
                    c.server_bundle.display(),
                    c.ca.display()
                ),
                String::new(),
            ),
            None => (String::new(), String::new()),
        },
        _ => (String::new(), String::new()),
    };
    let reuse = if mode == "http" {
        "    http-reuse always\n"
    } else {
        ""
    };
    format!(
        "global
    nbthread 1
    maxconn {maxconn}
{nosplice}
defaults
    mode {mode}
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
{reuse}{splice}
frontend bench
    bind {listen}{bind_extra}
    default_backend app

backend app
    server app {backend}{server_extra}
"
    )
}

fn start_haproxy(
    spec: &Spec,
    env: &Env,
    backend: SocketAddr,
    slot: &str,
) -> Result<Running, String> {
    let bin = procs::which("haproxy").ok_or("skipped: haproxy is not installed")?;
    let listen = free_port()?;
    let cfg = env.dir.join(format!("haproxy-{slot}.cfg"));
    std::fs::write(&cfg, haproxy_cfg(spec, env, listen, backend))
        .map_err(|e| format!("{}: {e}", cfg.display()))?;
    let log = env.dir.join(format!("haproxy-{slot}.log"));
    let args = vec!["-db".to_string(), "-f".into(), cfg.display().to_string()];
    let mut proc = spawn_logged(env, "haproxy", &bin, &args, &[], &log)?;
    wait_ready(&mut proc, listen, Duration::from_secs(10))?;
    if spec.proto == Proto::Http1 {
        probe_http(listen, "haproxy")?;
    }
    Ok(Running::without_admin(listen, proc, backend))
}

/// The floor relay: this binary re-executed as `__relay`.
fn start_floor(env: &Env, backend: SocketAddr, slot: &str) -> Result<Running, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let listen = free_port()?;
    let log = env.dir.join(format!("floor-{slot}.log"));
    let args = vec![
        "__relay".to_string(),
        listen.to_string(),
        backend.to_string(),
    ];
    let mut proc = spawn_logged(env, "floor", &exe, &args, &[], &log)?;
    wait_ready(&mut proc, listen, Duration::from_secs(10))?;
    Ok(Running::without_admin(listen, proc, backend))
}

// --------------------------------------------------------------------- nginx

const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

pub fn nginx_conf(
    spec: &Spec,
    env: &Env,
    dir: &Path,
    listen: SocketAddr,
    backend: SocketAddr,
) -> String {
    // worker_connections counts client and upstream connections alike; the
    // descriptor limit is the real bound.
    let conns = env.nofile.saturating_sub(100).clamp(256, 200_000);
    let d = dir.display();
    let head = format!(
        "daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {conns}; }}
",
        nofile = env.nofile
    );
    if spec.proto == Proto::Tcp {
        let module = if Path::new(NGINX_STREAM_MODULE).exists() {
            format!("load_module {NGINX_STREAM_MODULE};\n")
        } else {
            String::new()
        };
        return format!(
            "{module}{head}
stream {{
    upstream app {{ server {backend}; }}
    server {{
        listen {listen};
        proxy_pass app;
    }}
}}
"
        );
    }
    let (listen_extra, tls) = match spec.proto {
        // nginx 1.22 speaks h2c prior knowledge on a plain `http2` listener;
        // to the upstream it speaks HTTP/1.1 only (no h2 proxying in nginx).
        Proto::H2c => (" http2".to_string(), String::new()),
        Proto::Mtls => match &env.certs {
            Some(c) => (
                " ssl".to_string(),
                format!(
                    "        ssl_certificate {};
        ssl_certificate_key {};
        ssl_client_certificate {};
        ssl_verify_client on;
",
                    c.server_cert.display(),
                    c.server_key.display(),
                    c.ca.display()
                ),
            ),
            None => (String::new(), String::new()),
        },
        _ => (String::new(), String::new()),
    };
    format!(
        "{head}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    upstream app {{
        server {backend};
        keepalive 128;
        keepalive_requests 100000000;
    }}
    server {{
        listen {listen}{listen_extra};
{tls}        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
    )
}

fn start_nginx(spec: &Spec, env: &Env, backend: SocketAddr, slot: &str) -> Result<Running, String> {
    let bin = procs::which("nginx").ok_or("skipped: nginx is not installed")?;
    if spec.proto == Proto::Tcp && !Path::new(NGINX_STREAM_MODULE).exists() {
        // Built in statically on some distributions: let nginx -t decide.
        let v = std::process::Command::new(&bin).arg("-V").output();
        let built_in = v.is_ok_and(|o| {
            String::from_utf8_lossy(&o.stderr).contains("--with-stream ")
                || String::from_utf8_lossy(&o.stderr).contains("--with-stream\n")
        });
        if !built_in {
            return Err(
                "skipped: nginx stream module is not installed (libnginx-mod-stream)".into(),
            );
        }
    }
    let listen = free_port()?;
    let dir = env.dir.join(format!("nginx-{slot}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(spec, env, &dir, listen, backend))
        .map_err(|e| format!("{}: {e}", conf.display()))?;
    let log = dir.join("stderr.log");
    let args = vec![
        "-p".to_string(),
        format!("{}/", dir.display()),
        "-e".into(),
        dir.join("error.log").display().to_string(),
        "-c".into(),
        conf.display().to_string(),
    ];
    let mut proc = spawn_logged(env, "nginx", &bin, &args, &[], &log)?;
    let ready = wait_ready(&mut proc, listen, Duration::from_secs(10));
    if let Err(e) = ready {
        let errlog = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        return Err(format!("{e} {}", crate::tools::last_lines(&errlog, 3)));
    }
    if spec.proto == Proto::Http1 {
        probe_http(listen, "nginx")?;
    }
    Ok(Running::without_admin(listen, proc, backend))
}
