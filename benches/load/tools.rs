//! Running the load generators and reading their results: wrk (HTTP/1.1,
//! with a Lua `done` hook printing exact percentiles as JSON), h2load
//! (HTTP/2 cleartext; percentiles from its per-request log), iperf3 (TCP
//! bulk, JSON output) and the harness's own client (`client.rs`). Every
//! generator runs as a child pinned to the load core.
//!
//! The parsers are pure functions over the tools' text so they can be
//! tested on captured output; a tool that fails, prints nothing we
//! recognise, or exits non-zero yields an `Err` with its stderr, never a
//! panic or a made-up number. Called by `scenarios.rs`.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::client::PERCENTILES;
use crate::procs::{self, Core, Pinning};

/// One measurement by one generator against one target.
#[derive(Clone, Debug, Default)]
pub struct Measure {
    /// Completed requests (bulk: bytes received).
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed_s: f64,
    /// Requests per second (bulk: bits per second).
    pub throughput: f64,
    /// (percentile, microseconds); empty when the tool gives none.
    pub latency_us: Vec<(f64, u64)>,
    /// Fixed rate only: p99 of how late sends left their schedule, the
    /// load generator's own contribution to the measured latency.
    pub late_us_p99: Option<u64>,
}

/// The Lua hook for wrk: machine-readable totals and percentiles.
pub const WRK_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p":[',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
  local ps = {50, 75, 90, 99, 99.9, 99.99, 100}
  for i, p in ipairs(ps) do
    local sep = ","
    if i == 1 then sep = "" end
    io.write(string.format('%s[%g,%d]', sep, p, latency:percentile(p)))
  end
  io.write("]}\n")
end
"#;

fn run(pin: Pinning, tool: &str, args: &[String]) -> Result<(String, String), String> {
    let path = procs::which(tool).ok_or_else(|| format!("{tool} is not installed"))?;
    let out = procs::command(pin, Core::Load, &path, args)
        .output()
        .map_err(|e| format!("running {tool}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{tool} exited with {}: {}",
            out.status,
            last_lines(&format!("{stdout}\n{stderr}"), 3)
        ));
    }
    Ok((stdout, stderr))
}

pub fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Whole seconds for tools that take no fractions (wrk, iperf3), at least 1.
pub fn whole_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// wrk, one thread (the load core), `connections` connections.
pub fn wrk(
    pin: Pinning,
    lua: &Path,
    addr: SocketAddr,
    connections: u32,
    duration: Duration,
    close: bool,
) -> Result<Measure, String> {
    let mut args = vec![
        "-t1".to_string(),
        format!("-c{connections}"),
        format!("-d{}s", whole_secs(duration)),
        "--timeout".into(),
        "5s".into(),
        "-s".into(),
        lua.display().to_string(),
    ];
    if close {
        args.extend(["-H".to_string(), "Connection: close".to_string()]);
    }
    args.push(format!("http://{addr}/"));
    let (stdout, stderr) = run(pin, "wrk", &args)?;
    parse_wrk(&stdout).ok_or_else(|| {
        format!(
            "wrk printed no result: {}",
            last_lines(&format!("{stdout}\n{stderr}"), 3)
        )
    })
}

pub fn parse_wrk(stdout: &str) -> Option<Measure> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("WRKJSON "))?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let requests = v.get("requests")?.as_u64()?;
    let elapsed_s = v.get("duration_us")?.as_u64()? as f64 / 1e6;
    let (connect, read, write, status, timeout) = (
        n("connect"),
        n("read"),
        n("write"),
        n("status"),
        n("timeout"),
    );
    let errors = connect + read + write + status + timeout;
    let first_error = (errors > 0).then(|| {
        format!("connect {connect}, read {read}, write {write}, non-2xx/3xx {status}, timeout {timeout}")
    });
    let latency_us = v
        .get("p")?
        .as_array()?
        .iter()
        .filter_map(|pair| Some((pair.get(0)?.as_f64()?, pair.get(1)?.as_u64()?)))
        .collect();
    Some(Measure {
        requests,
        errors,
        first_error,
        elapsed_s,
        throughput: if elapsed_s > 0.0 {
            requests as f64 / elapsed_s
        } else {
            0.0
        },
        latency_us,
        late_us_p99: None,
    })
}

/// h2load over h2c prior knowledge, one thread.
pub fn h2load(
    pin: Pinning,
    log: &Path,
    addr: SocketAddr,
    clients: u32,
    streams: u32,
    duration: Duration,
) -> Result<Measure, String> {
    let _ = std::fs::remove_file(log);
    let args = vec![
        "-t1".to_string(),
        format!("-c{clients}"),
        format!("-m{streams}"),
        format!("-D{}ms", duration.as_millis().max(100)),
        format!("--log-file={}", log.display()),
        format!("http://{addr}/"),
    ];
    let (stdout, stderr) = run(pin, "h2load", &args)?;
    let mut m = parse_h2load(&stdout).ok_or_else(|| {
        format!(
            "h2load printed no result: {}",
            last_lines(&format!("{stdout}\n{stderr}"), 3)
        )
    })?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    m.latency_us = h2load_log_percentiles(&text);
    let _ = std::fs::remove_file(log);
    Ok(m)
}

pub fn parse_h2load(stdout: &str) -> Option<Measure> {
    // finished in 1.00s, 51234.00 req/s, 5.00MB/s
    let fin = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("finished in "))?;
    let mut parts = fin.split(',').map(str::trim);
    let elapsed = parts.next()?;
    let elapsed_s = if let Some(ms) = elapsed.strip_suffix("ms") {
        ms.parse::<f64>().ok()? / 1e3
    } else {
        elapsed.strip_suffix('s')?.parse::<f64>().ok()?
    };
    let throughput: f64 = parts.next()?.strip_suffix(" req/s")?.parse().ok()?;
    // requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout
    let req = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("requests: "))?;
    let field = |name: &str| -> Option<u64> {
        req.split(',')
            .map(str::trim)
            .find_map(|p| p.strip_suffix(name))
            .and_then(|n| n.trim().parse().ok())
    };
    let succeeded = field("succeeded")?;
    let failed = field("failed")?;
    let errored = field("errored").unwrap_or(0);
    let timeout = field("timeout").unwrap_or(0);
    let codes = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("status codes: "))
        .unwrap_or("")
        .to_string();
    // "failed" counts requests that got no 2xx/3xx; "errored" and "timeout"
    // are subsets of it in h2load's accounting, so only add timeouts that
    // could be outside it.
    let errors = failed.max(errored + timeout);
    Some(Measure {
        requests: succeeded,
        errors,
        first_error: (errors > 0).then(|| {
            format!("failed {failed}, errored {errored}, timeout {timeout}; status codes: {codes}")
        }),
        elapsed_s,
        throughput,
        latency_us: Vec::new(),
        late_us_p99: None,
    })
}

/// h2load's log: `start_us \t status \t duration_us` per request.
pub fn h2load_log_percentiles(log: &str) -> Vec<(f64, u64)> {
    let mut lat: Vec<u32> = log
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    lat.sort_unstable();
    if lat.is_empty() {
        return Vec::new();
    }
    PERCENTILES
        .iter()
        .map(|p| (*p, crate::client::percentile(&lat, *p)))
        .collect()
}

/// iperf3 client for `duration` (smoke runs: a fixed byte count instead,
/// which finishes sooner than iperf3's 1 s minimum).
pub fn iperf3(
    pin: Pinning,
    addr: SocketAddr,
    duration: Duration,
    bytes: Option<u64>,
) -> Result<Measure, String> {
    let mut args = vec![
        "-c".to_string(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
        "-J".into(),
    ];
    match bytes {
        Some(b) => args.extend(["-n".to_string(), b.to_string()]),
        None => args.extend(["-t".to_string(), whole_secs(duration).to_string()]),
    }
    // The iperf3 server serves one test at a time and re-opens its listener
    // after each (also after the harness's readiness probe): a client that
    // arrives in that gap is refused, so a refusal is tried again.
    let mut attempt = 0;
    loop {
        attempt += 1;
        // iperf3 -J exits non-zero on errors but still prints JSON with "error".
        let (stdout, _) = run(pin, "iperf3", &args)?;
        match parse_iperf3(&stdout) {
            Err(e) if attempt < 5 && e.contains("unable to connect") => {
                std::thread::sleep(Duration::from_millis(200));
            }
            res => return res,
        }
    }
}

pub fn parse_iperf3(stdout: &str) -> Result<Measure, String> {
    let v: serde_json::Value =
        serde_json::from_str(stdout).map_err(|e| format!("iperf3 output is not JSON: {e}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {err}"));
    }
    let recv = v
        .pointer("/end/sum_received")
        .ok_or("iperf3 JSON has no end.sum_received")?;
    let bytes = recv.get("bytes").and_then(|b| b.as_u64()).unwrap_or(0);
    let bps = recv
        .get("bits_per_second")
        .and_then(|b| b.as_f64())
        .unwrap_or(0.0);
    let secs = recv.get("seconds").and_then(|b| b.as_f64()).unwrap_or(0.0);
    Ok(Measure {
        requests: bytes,
        errors: 0,
        first_error: None,
        elapsed_s: secs,
        throughput: bps,
        latency_us: Vec::new(),
        late_us_p99: None,
    })
}

/// Arguments for the harness's own client in TLS mode.
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub sni: String,
}

fn client_args(
    addr: SocketAddr,
    mode: &str,
    connections: u32,
    duration: Duration,
    rate: Option<u32>,
    tls: Option<&ClientTls>,
) -> Vec<String> {
    let mut a = vec![
        "__client".to_string(),
        "--addr".into(),
        addr.to_string(),
        "--mode".into(),
        mode.into(),
        "--connections".into(),
        connections.to_string(),
        "--duration".into(),
        format!("{:.3}", duration.as_secs_f64()),
    ];
    if let Some(r) = rate {
        a.extend(["--rate".to_string(), r.to_string()]);
    }
    if let Some(t) = tls {
        a.extend([
            "--tls".to_string(),
            t.ca.display().to_string(),
            t.cert.display().to_string(),
            t.key.display().to_string(),
            t.sni.clone(),
        ]);
    }
    a
}

/// The own client in keep-alive (optionally fixed-rate) or handshake mode.
pub fn client(
    pin: Pinning,
    addr: SocketAddr,
    mode: &str,
    connections: u32,
    duration: Duration,
    rate: Option<u32>,
    tls: Option<&ClientTls>,
) -> Result<Measure, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let args = client_args(addr, mode, connections, duration, rate, tls);
    let out = procs::command(pin, Core::Load, &exe, &args)
        .output()
        .map_err(|e| format!("running client: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| format!("client printed no result: {}", last_lines(&stderr, 3)))?;
    parse_client(line)
}

pub fn parse_client(json: &str) -> Result<Measure, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("client output: {e}"))?;
    let requests = v.get("requests").and_then(|x| x.as_u64()).unwrap_or(0);
    let errors = v.get("errors").and_then(|x| x.as_u64()).unwrap_or(0);
    let elapsed_s = v.get("elapsed_s").and_then(|x| x.as_f64()).unwrap_or(0.0);
    let latency_us = v
        .get("latency_us")
        .and_then(|x| x.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|pair| Some((pair.get(0)?.as_f64()?, pair.get(1)?.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    Ok(Measure {
        requests,
        errors,
        first_error: v
            .get("first_error")
            .and_then(|x| x.as_str())
            .map(str::to_string),
        elapsed_s,
        throughput: if elapsed_s > 0.0 {
            requests as f64 / elapsed_s
        } else {
            0.0
        },
        latency_us,
        late_us_p99: v.get("late_us_p99").and_then(|x| x.as_u64()),
    })
}

/// The own client holding idle connections (memory scenario): started,
/// waited on until every connection answered once, then told to close.
pub struct IdleClient {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl IdleClient {
    /// Returns once the connections are open, with (open, errors, first error).
    pub fn open(
        pin: Pinning,
        addr: SocketAddr,
        connections: u32,
        tls: Option<&ClientTls>,
    ) -> Result<(Self, u64, u64, Option<String>), String> {
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        let args = client_args(addr, "idle", connections, Duration::ZERO, None, tls);
        let mut child = procs::command(pin, Core::Load, &exe, &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting client: {e}"))?;
        let stdout = child.stdout.take().ok_or("client has no stdout")?;
        let mut c = IdleClient {
            child,
            stdout: BufReader::new(stdout),
        };
        let mut line = String::new();
        loop {
            line.clear();
            let n = c
                .stdout
                .read_line(&mut line)
                .map_err(|e| format!("reading client: {e}"))?;
            if n == 0 {
                return Err("client exited before opening its connections".into());
            }
            if let Some(j) = line.trim().strip_prefix("IDLE_READY ") {
                let v: serde_json::Value =
                    serde_json::from_str(j).map_err(|e| format!("client output: {e}"))?;
                let open = v.get("open").and_then(|x| x.as_u64()).unwrap_or(0);
                let errors = v.get("errors").and_then(|x| x.as_u64()).unwrap_or(0);
                let first = v
                    .get("first_error")
                    .and_then(|x| x.as_str())
                    .map(str::to_string);
                return Ok((c, open, errors, first));
            }
        }
    }

    /// Closes every connection and waits for the client to exit.
    pub fn close(mut self) -> Result<(), String> {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = stdin.flush();
        }
        let mut rest = String::new();
        while self.stdout.read_line(&mut rest).is_ok_and(|n| n > 0) {}
        self.child
            .wait()
            .map_err(|e| format!("waiting for client: {e}"))?;
        Ok(())
    }
}

impl Drop for IdleClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
