//! CI smoke run of the load harness (benches/load): every scenario, one
//! short round, so the harness cannot rot between the manual full runs.
//! It asserts only that every target answered — completed requests (or
//! bytes, or held connections), zero errors — never a number.
//!
//! Targets whose tool is not installed (HAProxy, nginx, wrk, h2load, iperf3;
//! `benches/setup.sh` installs them, and .ci/run calls it) are reported as
//! skipped by the harness and not asserted; every other row must be "ok".
//! Portcullis runs from the debug build of the real binary with a policy
//! that must be evaluated (see benches/load/targets.rs), and terminates mTLS
//! with the certificates the harness generates.
//!
//! Must not: take more than a minute (asserted), or write into the
//! repository (results, charts and JSON go to a temp dir).
//!
//! A second test checks the policy file the harness gives Portcullis with
//! the policy crate itself: it loads, compiles for `bench/app`, allows the
//! bench client through the last of N authorizations and denies others, so
//! the benchmark measures real enforcement.

use std::io::Read;
use std::net::IpAddr;

use portcullis_policy::{
    authorize, compile, Authorizer, Client, ClientIdentity, ClientTls, DefaultPolicy, PolicyConfig,
    Protocol, Resources,
};

// The harness's policy generator, checked here against the policy crate.
// `write_policy` is used by the harness only.
#[allow(dead_code)]
#[path = "../benches/load/policy.rs"]
mod policy;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `load` bench executable for the profile this test was built with:
/// `cargo bench --profile dev` builds the same artifact as
/// `cargo test --all-targets`, so this is normally a no-op.
fn bench_exe() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let exe = std::env::current_exe().expect("current exe");
    let release = exe
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "release");
    let out = Command::new(cargo)
        .args([
            "bench",
            "--profile",
            if release { "release" } else { "dev" },
            "-p",
            "portcullis-e2e",
            "--bench",
            "load",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo bench --no-run");
    assert!(out.status.success(), "building the load bench failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "load")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no executable for the load bench")
}

#[test]
fn every_target_answers_in_a_smoke_run() {
    let exe = bench_exe();
    let portcullis = e2e::bin("portcullis");
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("smoke.json");
    let results = dir.path().join("RESULTS.md");
    let svg = dir.path().join("svg");

    // Sections of RESULTS.md outside the harness's markers must survive.
    std::fs::write(
        &results,
        "# Benchmark results\n\n## Decision function (criterion)\n\nkeep me\n\n\
         <!-- load-harness:begin (old) -->\nold tables\n<!-- load-harness:end -->\n\n\
         ### Reading\n\nkeep me too\n",
    )
    .expect("seed RESULTS.md");

    let started = Instant::now();
    let mut child = Command::new(&exe)
        .arg("all")
        .arg("--smoke")
        .args(["--rounds", "1", "--duration", "0.5"])
        .arg("--portcullis-bin")
        .arg(&portcullis)
        .arg("--json")
        .arg(&json)
        .arg("--results")
        .arg(&results)
        .arg("--svg-dir")
        .arg(&svg)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the load harness");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    // Bounded: a hung harness fails the test instead of hanging CI.
    let deadline = started + Duration::from_secs(90);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the smoke run did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = started.elapsed();
    let tables = reader.join().unwrap_or_default();
    println!("{tables}");

    let text = std::fs::read_to_string(&json).expect("the harness wrote its JSON summary");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).expect("JSON summary parses");
    assert!(
        rows.len() >= 40,
        "expected every scenario's rows, got {}",
        rows.len()
    );

    let mut problems = Vec::new();
    let mut answered = std::collections::BTreeSet::new();
    for r in &rows {
        let name = format!("{} / {}", r["scenario"], r["target"]);
        match r["status"].as_str() {
            Some("ok") => {}
            Some("skipped") => {
                let why = r["reason"].as_str().unwrap_or("");
                // Only a missing external tool excuses a row.
                if !why.contains("not installed") {
                    problems.push(format!("{name}: skipped: {why}"));
                }
                continue;
            }
            other => {
                problems.push(format!("{name}: {other:?}: {}", r["reason"]));
                continue;
            }
        }
        if r["requests"].as_u64().unwrap_or(0) == 0 {
            problems.push(format!("{name}: no request completed"));
        }
        if r["errors"].as_u64() != Some(0) {
            problems.push(format!(
                "{name}: {} errors ({})",
                r["errors"], r["first_error"]
            ));
        }
        if let Some(k) = r["kind"].as_str() {
            answered.insert(k.to_string());
        }
    }
    assert!(
        problems.is_empty(),
        "smoke run problems:\n{}",
        problems.join("\n")
    );
    // The harness exits non-zero when any row failed.
    assert!(status.success(), "the harness exited with {status}");
    // Direct, Portcullis and the floor relay need no external proxy: they
    // always run.
    for k in ["direct", "portcullis", "floor"] {
        assert!(answered.contains(k), "{k} answered in no scenario");
    }

    let md = std::fs::read_to_string(&results).expect("RESULTS.md written");
    assert!(md.contains("## Load benchmarks") && md.contains("| direct |"));
    assert!(
        md.contains("keep me\n") && md.contains("keep me too"),
        "{md}"
    );
    assert!(
        !md.contains("old tables"),
        "the previous block was not replaced"
    );
    assert_eq!(md.matches("<!-- load-harness:begin").count(), 1);
    let charts: Vec<_> = std::fs::read_dir(&svg)
        .expect("svg dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "svg"))
        .collect();
    assert!(!charts.is_empty(), "no latency chart was drawn");
    let first = std::fs::read_to_string(charts[0].path()).expect("read svg");
    assert!(first.contains("<svg") && first.contains("direct"));

    assert!(
        elapsed < Duration::from_secs(60),
        "the smoke run took {elapsed:?} (must stay under a minute)"
    );
}

const CLIENT: &str = "client.bench.serviceaccount.identity.linkerd.cluster.local";
const APP_PORT: u16 = 18080;

fn port_policy(traffic: policy::Traffic, n: usize, generation: u32) -> Authorizer {
    let yaml = policy::policy_yaml(APP_PORT, traffic, n, generation);
    let res = Resources::from_yaml(&yaml, "bench-policy.yaml")
        .unwrap_or_else(|e| panic!("generated policy ({n} authorizations) does not load: {e}"));
    let config = PolicyConfig {
        default_policy: DefaultPolicy::Deny,
        ..PolicyConfig::default()
    };
    let problems = res.check(&config);
    assert!(problems.is_empty(), "validation problems: {problems:?}");
    let compiled = compile(&res, "bench/app", &config).expect("compiles for bench/app");
    let port = compiled
        .policy
        .ports
        .get(&APP_PORT)
        .unwrap_or_else(|| panic!("no policy for port {APP_PORT}"))
        .clone();
    assert_eq!(
        port.server.name(),
        "bench-server",
        "the Server selects the port"
    );
    assert_eq!(port.authorizations.len(), n);
    let want = if traffic == policy::Traffic::Opaque {
        Protocol::Opaque
    } else {
        Protocol::Detect
    };
    assert_eq!(port.protocol, want);
    Authorizer::from(port)
}

fn plain(ip: &str) -> Client {
    Client {
        addr: ip.parse::<IpAddr>().expect("ip"),
        tls: ClientTls::None,
    }
}

#[test]
fn harness_policy_is_enforced_as_intended() {
    for traffic in [policy::Traffic::Plain, policy::Traffic::Opaque] {
        for n in [1, 10, 10_000] {
            let authz = port_policy(traffic, n, 3);
            let permit = authorize(&authz, &plain("127.0.0.1"))
                .unwrap_or_else(|d| panic!("{traffic:?} x{n}: loopback denied: {d:?}"));
            assert_eq!(permit.authorization.name(), "zz-bench-allow");
            // Decoys must not let anyone else in (addresses are data here).
            assert!(authorize(&authz, &plain("192.0.2.7")).is_err());
        }
    }
    let config = PolicyConfig::default();
    let authz = port_policy(policy::Traffic::MeshTls(CLIENT), 10, 0);
    let meshed = |id: Option<&str>| Client {
        addr: "127.0.0.1".parse().expect("ip"),
        tls: ClientTls::Mesh {
            identity: id.map(|i| ClientIdentity::new(i, &config)),
        },
    };
    let permit = authorize(&authz, &meshed(Some(CLIENT))).expect("bench identity allowed");
    assert_eq!(permit.authorization.name(), "zz-bench-allow");
    assert!(authorize(&authz, &meshed(None)).is_err());
    assert!(authorize(&authz, &plain("127.0.0.1")).is_err());
    assert!(authorize(
        &authz,
        &meshed(Some(
            "other.bench.serviceaccount.identity.linkerd.cluster.local"
        ))
    )
    .is_err());

    // A rewrite changes the policy (so the proxy has something to apply).
    assert_ne!(
        policy::policy_yaml(APP_PORT, policy::Traffic::Plain, 10, 1),
        policy::policy_yaml(APP_PORT, policy::Traffic::Plain, 10, 2)
    );
}
