//! The scenarios of issue 6 and how each is measured: which targets, which
//! load generator, and the interleaving (every round measures every target
//! once, in the order direct, portcullis, haproxy, nginx, so drift on a
//! shared machine hits all of them alike). Per measurement it records the
//! generator's result plus the proxy's CPU time delta and peak RSS from
//! /proc.
//!
//! Must not: abort the run when one target or one scenario fails: the
//! failure (or why the scenario cannot run here) becomes the row's status.
//! Called by `main.rs`; the tables are drawn by `report.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::certs::SERVER_ID;
use crate::procs;
use crate::targets::{self, Env, Kind, Proto, Running, Spec};
use crate::tools::{self, ClientTls, IdleClient, Measure};

/// How a scenario loads its targets.
#[derive(Clone, Debug)]
pub enum Load {
    Wrk {
        connections: u32,
        close: bool,
    },
    H2load {
        clients: u32,
        streams: u32,
    },
    Iperf,
    /// The own client: `keepalive` (optionally at a fixed total rate) or
    /// `handshake` (a new mTLS connection per request).
    Client {
        mode: &'static str,
        connections: u32,
        rate: Option<u32>,
    },
    /// Memory: RSS idle, with `connections` idle keep-alive connections, and
    /// after they closed. A fresh target per round.
    Idle {
        connections: u32,
    },
}

/// What the headline number is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    RequestsPerSec,
    HandshakesPerSec,
    BitsPerSec,
    /// Fixed rate: the headline is latency added over direct.
    FixedRate,
    Memory,
}

pub struct Scenario {
    pub name: &'static str,
    pub title: String,
    pub unit: Unit,
    pub load: Load,
    pub specs: Vec<Spec>,
    /// The row the second ratio column compares to.
    pub reference: String,
    /// Why it cannot run here, if so.
    pub unavailable: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Failed(String),
    Skipped(String),
}

#[derive(Clone, Debug, Default)]
pub struct Memory {
    pub idle_kb: u64,
    pub with_kb: u64,
    pub after_kb: u64,
    pub open: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub m: Measure,
    /// Proxy CPU time during the measurement (None for direct).
    pub cpu_us: Option<u64>,
    pub hwm_kb: Option<u64>,
    pub mem: Option<Memory>,
}

pub struct Row {
    pub label: String,
    pub kind: Kind,
    pub status: Status,
    pub samples: Vec<Sample>,
    pub notes: Vec<String>,
}

pub struct Outcome {
    pub scenario: Scenario,
    pub rows: Vec<Row>,
}

/// Knobs from the command line.
pub struct Plan {
    pub rounds: u32,
    pub duration: Duration,
    pub warmup: Duration,
    pub smoke: bool,
    pub idle_conns: u32,
    pub targets: Option<Vec<String>>,
}

fn peers(proto: Proto) -> Vec<Spec> {
    [Kind::Direct, Kind::Portcullis, Kind::Haproxy, Kind::Nginx]
        .into_iter()
        .map(|k| Spec::new(k, proto))
        .collect()
}

/// The peers plus the floor relay: for one connection, where the round trip
/// through any relay on the shared core bounds what a proxy can reach.
fn peers_and_floor(proto: Proto) -> Vec<Spec> {
    let mut specs = peers(proto);
    specs.push(Spec::new(Kind::Floor, proto));
    specs
}

/// Every scenario, in the order they run.
pub fn all(plan: &Plan) -> Vec<Scenario> {
    let s = |name, title: &str, unit, load, specs, reference: &str| Scenario {
        name,
        title: title.to_string(),
        unit,
        load,
        specs,
        reference: reference.to_string(),
        unavailable: None,
    };
    let mut tcp = vec![Spec::new(Kind::Direct, Proto::Tcp)];
    tcp.push(Spec::new(Kind::Portcullis, Proto::Tcp));
    let mut h = Spec::new(Kind::Haproxy, Proto::Tcp).label("haproxy (splice)");
    h.splice = true;
    tcp.push(h);
    tcp.push(Spec::new(Kind::Haproxy, Proto::Tcp).label("haproxy (no splice)"));
    tcp.push(Spec::new(Kind::Nginx, Proto::Tcp).label("nginx (stream)"));

    let mut policy = vec![Spec::new(Kind::Direct, Proto::Http1)];
    let mut p10 = Spec::new(Kind::Portcullis, Proto::Http1).label("portcullis (10 authz)");
    p10.authorizations = 10;
    // Smoke runs use a debug build, where parsing 10,000 resources takes
    // seconds: 1,000 is enough to prove the path works.
    let big = if plan.smoke { 1_000 } else { 10_000 };
    let mut p10k = Spec::new(Kind::Portcullis, Proto::Http1).label(&format!(
        "portcullis ({} authz)",
        crate::report::thousands(big as f64)
    ));
    p10k.authorizations = big;
    let mut prw =
        Spec::new(Kind::Portcullis, Proto::Http1).label("portcullis (10 authz, rewrite 10/s)");
    prw.authorizations = 10;
    prw.rewrite = true;
    policy.extend([p10, p10k, prw]);

    let conns = plan.idle_conns;
    let n = crate::report::thousands(f64::from(conns));
    vec![
        s("http1-keepalive-c32", "HTTP/1.1 keep-alive, wrk -t1 -c32", Unit::RequestsPerSec,
          Load::Wrk { connections: 32, close: false }, peers(Proto::Http1), "haproxy"),
        s("http1-keepalive-c1", "HTTP/1.1 keep-alive, wrk -t1 -c1", Unit::RequestsPerSec,
          Load::Wrk { connections: 1, close: false }, peers_and_floor(Proto::Http1), "haproxy"),
        s("http1-close", "HTTP/1.1 new connection per request, wrk -t1 -c32 -H 'Connection: close'",
          Unit::RequestsPerSec, Load::Wrk { connections: 32, close: true }, peers(Proto::Http1), "haproxy"),
        s("h2c-c8m8", "HTTP/2 cleartext (prior knowledge), h2load -t1 -c8 -m8", Unit::RequestsPerSec,
          Load::H2load { clients: 8, streams: 8 }, peers(Proto::H2c), "haproxy"),
        s("h2c-c1m1", "HTTP/2 cleartext (prior knowledge), h2load -t1 -c1 -m1", Unit::RequestsPerSec,
          Load::H2load { clients: 1, streams: 1 }, peers_and_floor(Proto::H2c), "haproxy"),
        s("tcp-bulk", "opaque TCP bulk, iperf3 (one stream) through the proxy", Unit::BitsPerSec,
          Load::Iperf, tcp, "haproxy (splice)"),
        s("mtls-handshakes", "mTLS: a new connection (full handshake, client certificate) per request, 8 concurrent",
          Unit::HandshakesPerSec, Load::Client { mode: "handshake", connections: 8, rate: None },
          peers(Proto::Mtls), "haproxy"),
        s("mtls-keepalive", "mTLS keep-alive HTTP/1.1 requests, 32 connections",
          Unit::RequestsPerSec, Load::Client { mode: "keepalive", connections: 32, rate: None },
          peers(Proto::Mtls), "haproxy"),
        s("memory-plain", &format!("RSS idle, with {n} idle HTTP/1.1 keep-alive connections, and after they close"),
          Unit::Memory, Load::Idle { connections: conns }, peers(Proto::Http1), "haproxy"),
        s("memory-mtls", &format!("RSS idle, with {n} idle mTLS keep-alive connections, and after they close"),
          Unit::Memory, Load::Idle { connections: conns }, peers(Proto::Mtls), "haproxy"),
        s("latency-fixed-rate", "HTTP/1.1 at a fixed 1,000 requests/s over 16 connections (latency from scheduled send time)",
          Unit::FixedRate, Load::Client { mode: "keepalive", connections: 16, rate: Some(1000) },
          peers(Proto::Http1), "haproxy"),
        s("policy", "HTTP/1.1 keep-alive (wrk -c32) with 10 vs 10,000 authorizations, and with the policy file rewritten 10 times a second",
          Unit::RequestsPerSec, Load::Wrk { connections: 32, close: false }, policy, "portcullis (10 authz)"),
    ]
}

/// Does `arg` select `name`? `all`, the exact name, or a prefix group
/// (`http1-keepalive`, `h2c`, `memory`, `mtls`, `latency`).
pub fn selects(arg: &str, name: &str) -> bool {
    arg == "all" || arg == name || name.starts_with(&format!("{arg}-"))
}

/// Which tool a load needs, to report a clean "skipped" when absent.
fn tool_of(load: &Load) -> Option<&'static str> {
    match load {
        Load::Wrk { .. } => Some("wrk"),
        Load::H2load { .. } => Some("h2load"),
        Load::Iperf => Some("iperf3"),
        _ => None,
    }
}

pub struct Ctx<'a> {
    pub env: &'a Env,
    pub plan: &'a Plan,
    pub lua: PathBuf,
    pub h2log: PathBuf,
    pub tls: Option<ClientTls>,
}

fn measure(
    ctx: &Ctx,
    load: &Load,
    addr: SocketAddr,
    proto: Proto,
    d: Duration,
) -> Result<Measure, String> {
    let pin = ctx.env.pin;
    let tls = if proto == Proto::Mtls {
        ctx.tls.as_ref()
    } else {
        None
    };
    if proto == Proto::Mtls && tls.is_none() {
        return Err("no client certificate".into());
    }
    match load {
        Load::Wrk { connections, close } => {
            tools::wrk(pin, &ctx.lua, addr, *connections, d, *close)
        }
        Load::H2load { clients, streams } => {
            tools::h2load(pin, &ctx.h2log, addr, *clients, *streams, d)
        }
        Load::Iperf => {
            // Smoke: 64 MiB instead of iperf3's one-second minimum.
            let bytes = ctx.plan.smoke.then_some(64 << 20);
            tools::iperf3(pin, addr, d, bytes)
        }
        Load::Client {
            mode,
            connections,
            rate,
        } => tools::client(pin, addr, mode, *connections, d, *rate, tls),
        Load::Idle { .. } => Err("idle load is measured by memory()".into()),
    }
}

fn classify(err: String) -> Status {
    match err.strip_prefix("skipped: ") {
        Some(why) => Status::Skipped(why.to_string()),
        None => Status::Failed(err),
    }
}

pub fn run(sc: Scenario, ctx: &Ctx, slot: &mut u32) -> Outcome {
    let mut rows: Vec<Row> = sc
        .specs
        .iter()
        .map(|s| Row {
            label: s.label.clone(),
            kind: s.kind,
            status: Status::Ok,
            samples: Vec::new(),
            notes: Vec::new(),
        })
        .collect();
    let why_not = sc.unavailable.clone().or_else(|| {
        tool_of(&sc.load)
            .filter(|t| !procs::have(t))
            .map(|t| format!("{t} is not installed (run benches/setup.sh)"))
    });
    if let Some(why) = why_not {
        for r in &mut rows {
            r.status = Status::Skipped(why.clone());
        }
        return Outcome { scenario: sc, rows };
    }
    if let Some(only) = &ctx.plan.targets {
        for (r, s) in rows.iter_mut().zip(&sc.specs) {
            if !only.iter().any(|o| o == s.kind.name()) {
                r.status = Status::Skipped("not selected (--targets)".into());
            }
        }
    }
    if let Load::Idle { connections } = sc.load {
        memory(&sc, ctx, &mut rows, connections, slot);
        return Outcome { scenario: sc, rows };
    }

    // Start every target once for the scenario.
    let mut running: Vec<Option<Running>> = Vec::new();
    for (spec, row) in sc.specs.iter().zip(rows.iter_mut()) {
        if row.status != Status::Ok {
            running.push(None);
            continue;
        }
        *slot += 1;
        match targets::start(spec, ctx.env, &format!("{}-{slot}", sc.name)) {
            Ok(r) => running.push(Some(r)),
            Err(e) => {
                row.status = classify(e);
                running.push(None);
            }
        }
    }
    if !ctx.plan.warmup.is_zero() {
        for (spec, r) in sc.specs.iter().zip(&running) {
            if let Some(r) = r {
                let _ = measure(ctx, &sc.load, r.addr, spec.proto, ctx.plan.warmup);
            }
        }
    }
    for _round in 0..ctx.plan.rounds {
        for ((spec, row), target) in sc.specs.iter().zip(rows.iter_mut()).zip(running.iter_mut()) {
            let Some(t) = target.as_mut() else { continue };
            if let Some(p) = t.proc.as_mut() {
                if let Some(st) = p.exited() {
                    row.status =
                        Status::Failed(format!("{} exited ({st}): {}", p.name, p.log_tail()));
                    *target = None;
                    continue;
                }
            }
            let pids = t.pids();
            let cpu0 = procs::cpu_us(&pids);
            let rewriter = spec.rewrite.then(|| Rewriter::start(spec, t, ctx.env.pin));
            let result = measure(ctx, &sc.load, t.addr, spec.proto, ctx.plan.duration);
            if let Some(rw) = rewriter {
                let n = rw.stop();
                row.notes
                    .push(format!("policy file rewritten {n} times during the round"));
            }
            let proxied = t.proc.is_some();
            let cpu_us = proxied.then(|| procs::cpu_us(&pids).saturating_sub(cpu0));
            let hwm_kb = proxied.then(|| procs::hwm_kb(&pids));
            match result {
                Ok(m) => row.samples.push(Sample {
                    m,
                    cpu_us,
                    hwm_kb,
                    mem: None,
                }),
                Err(e) => {
                    // Stop measuring it (dropping stops the process); the
                    // other targets go on.
                    row.status = Status::Failed(e);
                    *target = None;
                }
            }
        }
    }
    for row in &mut rows {
        note_pacing(row);
    }
    for ((spec, row), target) in sc.specs.iter().zip(rows.iter_mut()).zip(running.iter_mut()) {
        if let Some(t) = target.as_mut() {
            if spec.kind == Kind::Portcullis {
                verify_authz(spec, t, row);
            }
            t.stop();
        }
    }
    Outcome { scenario: sc, rows }
}

/// Fixed rate: latency counts from each request's scheduled time, so the
/// load generator's own lateness is part of every figure; say how large it
/// was (the worst round's p99), so a reader can tell it from the proxy's.
fn note_pacing(row: &mut Row) {
    let worst = row.samples.iter().filter_map(|s| s.m.late_us_p99).max();
    if let Some(late) = worst {
        row.notes.push(format!(
            "pacing: sends left their scheduled time up to {late} µs late (p99, worst round)"
        ));
    }
}

/// Reads Portcullis's /metrics after a scenario: the requests allowed by the
/// bench ServerAuthorization prove the policy was evaluated (not a default).
fn verify_authz(spec: &Spec, t: &Running, row: &mut Row) {
    let Some(admin) = t.admin else { return };
    let text = match targets::http_get(admin, "/metrics") {
        Ok((200, text)) => text,
        Ok((code, _)) => {
            row.notes.push(format!(
                "/metrics answered {code}: authorization not verified"
            ));
            return;
        }
        Err(e) => {
            row.notes
                .push(format!("/metrics: {e}: authorization not verified"));
            return;
        }
    };
    let metric = if spec.proto == Proto::Tcp {
        "inbound_tcp_authz_allow_total"
    } else {
        "inbound_http_authz_allow_total"
    };
    match targets::metric_sum(&text, metric, &["zz-bench-allow"]) {
        Some(n) => row.notes.push(format!(
            "{metric}{{authz_name=\"zz-bench-allow\"}} = {n} (the Server's authorization decided)"
        )),
        None => row.notes.push(format!(
            "no {metric} sample names zz-bench-allow in /metrics: authorization not verified"
        )),
    }
    let denied = targets::metric_sum(&text, &metric.replace("allow", "deny"), &[]);
    if let Some(d) = denied.filter(|d| *d > 0.0) {
        row.notes
            .push(format!("{d} denials counted: check the policy"));
    }
    if spec.rewrite {
        let updates: Vec<&str> = text
            .lines()
            .filter(|l| {
                // e.g. inbound_policy_generation (updates applied) and
                // inbound_policy_errors_total (updates rejected).
                !l.starts_with('#')
                    && l.split([' ', '{'])
                        .next()
                        .is_some_and(|n| n.contains("policy"))
            })
            .collect();
        if updates.is_empty() {
            row.notes
                .push("no policy-update metric found in /metrics".into());
        } else {
            row.notes
                .push(format!("policy updates: {}", updates.join("; ")));
        }
    }
}

/// Rewrites a Portcullis policy file every 100 ms on its own thread, each
/// time changing one decoy authorization (a real policy change).
struct Rewriter {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU32>,
    handle: std::thread::JoinHandle<()>,
}

impl Rewriter {
    /// The writer stands for the control plane, a process of its own: it
    /// runs on the load generator's core, not on the proxy's.
    fn start(spec: &Spec, t: &Running, pin: procs::Pinning) -> Rewriter {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU32::new(0));
        let (s, c) = (stop.clone(), count.clone());
        let path = t.policy_file.clone();
        let (port, proto, authz) = (t.app_port, spec.proto, spec.authorizations);
        let handle = std::thread::spawn(move || {
            let Some(path) = path else { return };
            if let Some(cpus) = pin.cpu_list(procs::Core::Load) {
                procs::pin_this_thread(cpus);
            }
            let mut generation = 1u32;
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let yaml = targets::policy_yaml(port, targets::traffic(proto), authz, generation);
                if targets::write_policy(&path, &yaml).is_ok() {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                generation += 1;
            }
        });
        Rewriter {
            stop,
            count,
            handle,
        }
    }

    fn stop(self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
        self.count.load(Ordering::Relaxed)
    }
}

/// The memory scenario: per round and target, a fresh process; RSS when
/// idle, with the idle connections held, and after they closed.
fn memory(sc: &Scenario, ctx: &Ctx, rows: &mut [Row], connections: u32, slot: &mut u32) {
    let settle = if ctx.plan.smoke {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(2)
    };
    for _round in 0..ctx.plan.rounds {
        for (spec, row) in sc.specs.iter().zip(rows.iter_mut()) {
            if row.status != Status::Ok {
                continue;
            }
            *slot += 1;
            let mut t = match targets::start(spec, ctx.env, &format!("{}-{slot}", sc.name)) {
                Ok(t) => t,
                Err(e) => {
                    row.status = classify(e);
                    continue;
                }
            };
            std::thread::sleep(settle);
            let pids = t.pids();
            let idle_kb = procs::rss_kb(&pids);
            let cpu0 = procs::cpu_us(&pids);
            let tls = if spec.proto == Proto::Mtls {
                ctx.tls.as_ref()
            } else {
                None
            };
            let opened = IdleClient::open(ctx.env.pin, t.addr, connections, tls);
            let (client, open, errors, first) = match opened {
                Ok(x) => x,
                Err(e) => {
                    row.status = Status::Failed(e);
                    t.stop();
                    continue;
                }
            };
            std::thread::sleep(settle / 2);
            let pids = t.pids();
            let with_kb = procs::rss_kb(&pids);
            if let Err(e) = client.close() {
                row.notes.push(e);
            }
            std::thread::sleep(settle);
            let pids = t.pids();
            let after_kb = procs::rss_kb(&pids);
            let proxied = t.proc.is_some();
            let sample = Sample {
                m: Measure {
                    requests: open,
                    errors,
                    first_error: first,
                    ..Measure::default()
                },
                cpu_us: proxied.then(|| procs::cpu_us(&pids).saturating_sub(cpu0)),
                hwm_kb: proxied.then(|| procs::hwm_kb(&pids)),
                mem: proxied.then_some(Memory {
                    idle_kb,
                    with_kb,
                    after_kb,
                    open,
                }),
            };
            row.samples.push(sample);
            t.stop();
        }
    }
}

/// The client side of the mTLS scenarios: SNI is the proxy's identity (so
/// Portcullis terminates instead of passing the TLS through).
pub fn client_tls(c: &crate::certs::Certs) -> ClientTls {
    ClientTls {
        ca: c.ca.clone(),
        cert: c.client_cert.clone(),
        key: c.client_key.clone(),
        sni: SERVER_ID.to_string(),
    }
}
