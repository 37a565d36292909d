//! The load harness: Portcullis against a direct connection and against
//! HAProxy and nginx, on loopback, interleaved in the same run (issue 6).
//!
//! ```text
//! cargo bench --bench load -- <scenario|group|all> [--rounds N] [--duration S]
//!     [--warmup S] [--smoke] [--targets direct,portcullis,haproxy,nginx]
//!     [--idle-conns N] [--portcullis-bin PATH] [--results FILE|none]
//!     [--svg-dir DIR|none] [--json FILE] [--no-pin] [--keep] [--list]
//! ```
//!
//! Layout: `scenarios.rs` (what is measured, interleaving) → `targets.rs`
//! (starting direct/portcullis/haproxy/nginx with generated configs) and
//! `tools.rs` (wrk, h2load, iperf3, the own client) → `report.rs` (tables,
//! RESULTS.md, SVG). `upstream.rs` and `client.rs` run in subprocesses of
//! this same binary (`__upstream`, `__client`) so they can be pinned to a
//! core with taskset; `procs.rs` reads /proc; `certs.rs` and `tls.rs` make
//! the mTLS material.
//!
//! Run by cargo's test runner (no arguments, `cargo test --all-targets`) it
//! only prints how to run it: the load run is a manual command, and CI runs
//! a short smoke of it from tests/bench_smoke.rs instead.

mod certs;
mod client;
mod policy;
mod procs;
mod relay;
mod report;
mod scenarios;
mod targets;
mod tls;
mod tools;
mod upstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use procs::{Core, Pinning, Proc};
use scenarios::{Ctx, Plan, Status};

struct Options {
    scenarios: Vec<String>,
    rounds: Option<u32>,
    duration: Option<f64>,
    warmup: Option<f64>,
    smoke: bool,
    targets: Option<Vec<String>>,
    idle_conns: Option<u32>,
    portcullis_bin: Option<PathBuf>,
    results: Option<String>,
    svg_dir: Option<String>,
    json: Option<PathBuf>,
    pin: bool,
    keep: bool,
    list: bool,
}

const USAGE: &str = "usage: cargo bench --bench load -- <scenario|group|all>... [--rounds N] [--duration SECS] [--warmup SECS] [--smoke] [--targets direct,portcullis,haproxy,nginx] [--idle-conns N] [--portcullis-bin PATH] [--results FILE|none] [--svg-dir DIR|none] [--json FILE] [--no-pin] [--keep] [--list]";

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        scenarios: Vec::new(),
        rounds: None,
        duration: None,
        warmup: None,
        smoke: false,
        targets: None,
        idle_conns: None,
        portcullis_bin: None,
        results: None,
        svg_dir: None,
        json: None,
        pin: true,
        keep: false,
        list: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        let num = |v: String| v.parse::<f64>().map_err(|e| format!("{a} {v}: {e}"));
        match a.as_str() {
            // cargo bench appends --bench; libtest-style filters are ours.
            "--bench" => {}
            "--rounds" => o.rounds = Some(num(val()?)?.max(1.0) as u32),
            "--duration" => o.duration = Some(num(val()?)?),
            "--warmup" => o.warmup = Some(num(val()?)?),
            "--smoke" => o.smoke = true,
            "--targets" => o.targets = Some(val()?.split(',').map(str::to_string).collect()),
            "--idle-conns" => o.idle_conns = Some(num(val()?)?.max(1.0) as u32),
            "--portcullis-bin" => o.portcullis_bin = Some(PathBuf::from(val()?)),
            "--results" => o.results = Some(val()?),
            "--svg-dir" => o.svg_dir = Some(val()?),
            "--json" => o.json = Some(PathBuf::from(val()?)),
            "--no-pin" => o.pin = false,
            "--keep" => o.keep = true,
            "--list" => o.list = true,
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{USAGE}")),
            s => o.scenarios.push(s.to_string()),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Subprocess roles of this same binary.
    let role = match args.first().map(String::as_str) {
        Some("__upstream") => Some(upstream::main(&args[1..])),
        Some("__client") => Some(client::main(&args[1..])),
        Some("__relay") => Some(relay::main(&args[1..])),
        _ => None,
    };
    if let Some(r) = role {
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.is_empty() {
        // `cargo test --all-targets` runs bench targets with no arguments.
        println!("load harness: run it with `cargo bench --bench load -- all` (see README, Benchmarks); nothing to do under cargo test");
        return ExitCode::SUCCESS;
    }
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(opts, &args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("load harness: {e}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The release build of Portcullis, built first (a no-op when up to date).
fn portcullis_bin(opts: &Options) -> Result<PathBuf, String> {
    if let Some(p) = &opts.portcullis_bin {
        return if p.is_file() {
            Ok(p.clone())
        } else {
            Err(format!("--portcullis-bin {}: no such file", p.display()))
        };
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("load harness: cargo build --release -p portcullis-proxy --bin portcullis");
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "portcullis-proxy",
            "--bin",
            "portcullis",
        ])
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build --release -p portcullis-proxy failed ({status})"
        ));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let bin = target.join("release").join("portcullis");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("{} not found after the build", bin.display()))
    }
}

/// Starts the upstream app (this binary, `__upstream`) on the serving core.
fn start_upstream(
    pin: Pinning,
    certs: Option<&certs::Certs>,
) -> Result<(Proc, SocketAddr, Option<SocketAddr>), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let mut args = vec!["__upstream".to_string()];
    if let Some(c) = certs {
        args.extend([
            "--tls".to_string(),
            c.ca.display().to_string(),
            c.server_cert.display().to_string(),
            c.server_key.display().to_string(),
        ]);
    }
    let mut child = procs::command(pin, Core::Serve, &exe, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting the upstream: {e}"))?;
    let stdout = child.stdout.take().ok_or("upstream has no stdout")?;
    let proc = Proc {
        name: "upstream".into(),
        child,
        log: None,
    };
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("reading the upstream: {e}"))?;
    let rest = line
        .trim()
        .strip_prefix("READY ")
        .ok_or_else(|| format!("upstream did not start: {line:?}"))?;
    let mut http = None;
    let mut tls = None;
    for kv in rest.split_whitespace() {
        match kv.split_once('=') {
            Some(("http", a)) => http = a.parse().ok(),
            Some(("tls", a)) => tls = a.parse().ok(),
            _ => {}
        }
    }
    Ok((proc, http.ok_or("upstream printed no address")?, tls))
}

fn start_iperf3(pin: Pinning, dir: &Path) -> Result<(Proc, SocketAddr), String> {
    let bin = procs::which("iperf3").ok_or("iperf3 is not installed")?;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("bind: {e}"))?;
    let log = dir.join("iperf3-server.log");
    let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let args = vec![
        "-s".to_string(),
        "-B".into(),
        "127.0.0.1".into(),
        "-p".into(),
        addr.port().to_string(),
    ];
    let child = procs::command(pin, Core::Serve, &bin, &args)
        .stdout(Stdio::from(out))
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting iperf3 -s: {e}"))?;
    let mut proc = Proc {
        name: "iperf3 server".into(),
        child,
        log: Some(log),
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if proc.exited().is_some() || std::time::Instant::now() > deadline {
            return Err(format!("iperf3 server did not listen: {}", proc.log_tail()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((proc, addr))
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_string(), |(_, m)| m.trim().to_string());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{nproc} CPUs ({model}), Linux {}", kernel.trim())
}

fn tool_versions() -> String {
    let v = |cmd: &str, args: &[&str]| -> Option<String> {
        let bin = procs::which(cmd)?;
        let out = std::process::Command::new(bin).args(args).output().ok()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .find(|l| !l.trim().is_empty())
            // "HAProxy version 2.6.12 2023/01/01 - https://…": keep the version.
            .map(|l| l.split(" - http").next().unwrap_or(l).trim().to_string())
    };
    [
        ("haproxy", &["-v"][..]),
        ("nginx", &["-v"][..]),
        ("wrk", &["-v"][..]),
        ("h2load", &["--version"][..]),
        ("iperf3", &["--version"][..]),
    ]
    .iter()
    .map(|(t, a)| format!("{t}: {}", v(t, a).unwrap_or_else(|| "not installed".into())))
    .collect::<Vec<_>>()
    .join("; ")
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s:.1} s")
    }
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Returns Ok(false) when some selected target failed (not skipped).
fn run(opts: Options, raw_args: &[String]) -> Result<bool, String> {
    let smoke = opts.smoke;
    let nofile = procs::hard_nofile();
    // A proxy holds ~2 descriptors per idle connection; stay under the limit.
    let want_idle = opts.idle_conns.unwrap_or(if smoke { 200 } else { 10_000 });
    let idle_conns = want_idle
        .min((nofile.saturating_sub(400) / 2) as u32)
        .max(1);
    let plan = Plan {
        rounds: opts.rounds.unwrap_or(if smoke { 1 } else { 3 }),
        duration: Duration::from_secs_f64(
            opts.duration
                .unwrap_or(if smoke { 0.5 } else { 10.0 })
                .max(0.1),
        ),
        warmup: Duration::from_secs_f64(
            opts.warmup
                .unwrap_or(if smoke { 0.0 } else { 2.0 })
                .max(0.0),
        ),
        smoke,
        idle_conns,
        targets: opts.targets.clone(),
    };
    let all = scenarios::all(&plan);
    if opts.list || opts.scenarios.is_empty() {
        for s in &all {
            println!("{:22} {}", s.name, s.title);
        }
        return Ok(true);
    }
    let selected: Vec<scenarios::Scenario> = all
        .into_iter()
        .filter(|s| opts.scenarios.iter().any(|a| scenarios::selects(a, s.name)))
        .collect();
    if selected.is_empty() {
        return Err(format!(
            "no scenario matches {:?} (try --list)",
            opts.scenarios
        ));
    }
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = Pinning {
        enabled: opts.pin && nproc >= 2 && procs::have("taskset"),
    };

    let tmp = tempfile::Builder::new()
        .prefix("portcullis-load-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let dir = tmp.path().to_path_buf();
    let lua = dir.join("report.lua");
    std::fs::write(&lua, tools::WRK_LUA).map_err(|e| e.to_string())?;
    let certs = certs::generate(&dir);
    let portcullis = if opts
        .targets
        .as_ref()
        .is_some_and(|t| !t.iter().any(|x| x == "portcullis"))
    {
        Err("not selected".to_string())
    } else {
        portcullis_bin(&opts)
    };
    let (upstream, upstream_http, upstream_tls) = start_upstream(pin, certs.as_ref().ok())?;
    let needs_iperf = selected
        .iter()
        .any(|s| matches!(s.load, scenarios::Load::Iperf));
    let iperf = if needs_iperf && procs::have("iperf3") {
        Some(start_iperf3(pin, &dir)?)
    } else {
        None
    };
    let env = targets::Env {
        pin,
        dir: dir.clone(),
        upstream_http,
        upstream_tls,
        iperf: iperf.as_ref().map(|(_, a)| *a),
        certs: certs.as_ref().ok().cloned(),
        portcullis,
        nofile,
    };
    let ctx = Ctx {
        env: &env,
        plan: &plan,
        lua,
        h2log: dir.join("h2load.log"),
        tls: env.certs.as_ref().map(scenarios::client_tls),
    };
    let mut selected = selected;
    if let Err(e) = &certs {
        for s in selected.iter_mut() {
            if s.name.contains("mtls") {
                s.unavailable = Some(format!("no certificates: {e}"));
            }
        }
    }

    let plan_desc = format!(
        "{} round(s) of {} per target{} (wrk and iperf3 -t take whole seconds, at least 1)",
        plan.rounds,
        secs(plan.duration),
        if plan.warmup.is_zero() {
            String::new()
        } else {
            format!(" after a {} warm-up", secs(plan.warmup))
        }
    );
    let mut outcomes = Vec::new();
    let mut slot = 0u32;
    for sc in selected {
        eprintln!("load harness: {} ...", sc.name);
        let o = scenarios::run(sc, &ctx, &mut slot);
        let md = report::table(
            &o,
            &if o.scenario.unit == scenarios::Unit::Memory {
                format!("{} round(s), a fresh process per round", plan.rounds)
            } else {
                plan_desc.clone()
            },
        );
        println!("{md}");
        outcomes.push(o);
    }
    drop(upstream);
    drop(iperf);

    let command = format!(
        "cargo bench --bench load -- {}",
        raw_args
            .iter()
            .filter(|a| *a != "--bench")
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    );
    let pinning = if pin.enabled {
        "load generator on CPU 0, upstream and proxy on CPU 1 (taskset)"
    } else {
        "not pinned (fewer than 2 CPUs, taskset missing, or --no-pin)"
    };
    let svg_dir = match opts.svg_dir.as_deref() {
        Some("none") => None,
        Some(d) => Some(PathBuf::from(d)),
        None if smoke => None,
        None => Some(workspace_root().join("benches").join("results")),
    };
    let mut charts = Vec::new();
    if let Some(d) = &svg_dir {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        for o in &outcomes {
            let p = d.join(format!("{}.svg", o.scenario.name));
            match report::chart(o, &p) {
                Ok(true) => charts.push((o.scenario.name, p)),
                Ok(false) => {}
                Err(e) => eprintln!("load harness: {e}"),
            }
        }
    }
    let results = match opts.results.as_deref() {
        Some("none") => None,
        Some(p) => Some(PathBuf::from(p)),
        None if smoke => None,
        None => Some(workspace_root().join("benches").join("RESULTS.md")),
    };
    if let Some(path) = results {
        let mut s = String::from("## Load benchmarks\n\n");
        s.push_str(&format!("- Date: {}\n", now_utc()));
        s.push_str(&format!("- Machine: {}\n", machine()));
        s.push_str(&format!("- Command: `{command}`\n"));
        s.push_str(&format!("- Mode: {}; {pinning}; every proxy single-threaded (HAProxy nbthread 1, nginx 1 worker, Portcullis TOKIO_WORKER_THREADS=1)\n", if smoke { "smoke (numbers are not measurements)" } else { "full" }));
        s.push_str(&format!("- Tools: {}\n", tool_versions()));
        s.push_str("- Columns: throughput is the median over rounds (min..max); p50/p99 are medians over rounds; proxy CPU is utime+stime from /proc of the proxy's processes (nginx: master and worker) divided by the work done; peak RSS is VmHWM (summed over processes).\n\n");
        for o in &outcomes {
            let desc = if o.scenario.unit == scenarios::Unit::Memory {
                format!("{} round(s), a fresh process per round", plan.rounds)
            } else {
                plan_desc.clone()
            };
            s.push_str(&report::table(o, &desc));
            if let Some((_, p)) = charts.iter().find(|(n, _)| *n == o.scenario.name) {
                // Links are relative to RESULTS.md's own directory.
                let base = path.parent().unwrap_or(Path::new("."));
                let rel = p
                    .strip_prefix(base)
                    .map_or(p.display().to_string(), |r| r.display().to_string());
                s.push_str(&format!(
                    "\n![{} latency percentiles]({rel})\n",
                    o.scenario.name
                ));
            }
            s.push('\n');
        }
        report::write_results(&path, &s)?;
        eprintln!("load harness: wrote {}", path.display());
    }
    if let Some(p) = &opts.json {
        let text =
            serde_json::to_string_pretty(&report::json(&outcomes)).map_err(|e| e.to_string())?;
        std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if opts.keep {
        let kept = tmp.keep();
        eprintln!("load harness: kept {}", kept.display());
    }
    Ok(!outcomes
        .iter()
        .flat_map(|o| &o.rows)
        .any(|r| matches!(r.status, Status::Failed(_))))
}
