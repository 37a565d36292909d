//! README's run command: the demo starts the proxy, the demo policy and the
//! demo app, and its requests get the outcomes it prints (`--check`).

use std::process::Command;

#[test]
fn demo_allows_and_denies_as_it_says() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // A loopback address and app ports of its own, so that concurrent runs
    // (other tests, other checkouts) cannot take its ports.
    let pid = std::process::id();
    let ip = format!("127.77.{}.{}", (pid >> 8) & 0xff, (pid & 0xff).max(1));
    let ports = format!("{},{}", e2e::free_addr().port(), e2e::free_addr().port());
    let out = Command::new(cargo)
        .args([
            "run",
            "-q",
            "-p",
            "portcullis-proxy",
            "--example",
            "demo",
            "--",
        ])
        .args(["--check", "--listen-ip", &ip, "--app-ports", &ports])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo check failed:\n{stdout}\n{stderr}"
    );
    for line in [
        "ok   allowed from 127.0.0.1: HTTP 200",
        "ok   denied from 127.0.0.2: HTTP 403",
        "ok   admin denied without identity: HTTP 403",
        "ok   readiness probe allowed: HTTP 200",
        "ok   metrics count allows and denies",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(
        stderr.contains("require meshed TLS"),
        "the admin denial names why:\n{stderr}"
    );
}
