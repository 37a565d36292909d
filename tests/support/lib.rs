//! Shared support for the end-to-end tests in `tests/`: finding the real
//! binaries (built once per test process with the same cargo and profile),
//! free loopback ports, and waiting for a listener.
//!
//! Tests run the binaries as a user would, through their flags, so that the
//! contract in DESIGN.md is what gets exercised.

pub mod netns;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The path of a workspace binary (`portcullis` or `portcullis-controller`),
/// built first if needed. Integration tests of this root package cannot use
/// `CARGO_BIN_EXE_*` for other packages' binaries, so we ask cargo (a no-op
/// when up to date).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // target/<profile>/deps/<test> -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(|p| p.parent())
            .ok_or("test executable has no profile dir")?
            .to_path_buf();
        let mut cmd = std::process::Command::new(cargo);
        cmd.args([
            "build",
            "--bins",
            "-p",
            "portcullis-proxy",
            "-p",
            "portcullis-controller",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build failed: {status}"));
        }
        Ok(profile_dir)
    });
    match dir {
        Ok(dir) => dir.join(name),
        Err(e) => panic!("cannot build the binaries for end-to-end tests: {e}"),
    }
}

/// A loopback address with a port that was free a moment ago.
///
/// The port comes from below the kernel's ephemeral range. A port from
/// `bind(":0")` is ephemeral: once the probe releases it, any connection
/// opened in the meantime (by a test client, a proxy, an app) may take it
/// as its source port, and then the proxy's bind fails with "address in
/// use", or a port meant to stay closed answers. CI saw both. Below the
/// range, only explicit binds take ports. Each port is handed out once per
/// process, from a start that differs between processes.
pub fn free_addr() -> SocketAddr {
    static NEXT: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);
    const LOW: u16 = 10_000;
    let high = ephemeral_low().max(LOW + 1_000);
    let span = u32::from(high - LOW);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    // u64: a pid times the stride overflows u32 for pids above 542,000.
    let start = u64::from(std::process::id()) * 7_919 % u64::from(span);
    let mut port = next.unwrap_or(LOW + start as u16);
    for _ in 0..span {
        let candidate = port;
        port = if port + 1 >= high { LOW } else { port + 1 };
        let addr = SocketAddr::from(([127, 0, 0, 1], candidate));
        if TcpListener::bind(addr).is_ok() {
            *next = Some(port);
            return addr;
        }
    }
    panic!("no free loopback port in {LOW}..{high}");
}

/// The first port of the kernel's ephemeral range (32768 by default).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A running `portcullis` process, killed when dropped. Its stderr (the
/// logs) goes to a file so tests can assert on what it logged.
pub struct Proxy {
    child: std::process::Child,
    /// The admin server (`--admin-addr`).
    pub admin: SocketAddr,
    /// The inbound listener (`--inbound-addr`).
    pub inbound: SocketAddr,
    log: PathBuf,
}

impl Proxy {
    /// Starts `portcullis` with `args` plus free `--admin-addr` and
    /// `--inbound-addr` (unless given), and waits until `/live` answers.
    /// `PORTCULLIS_*` variables of the test environment are not inherited.
    pub fn start<S: AsRef<str>>(args: &[S]) -> Proxy {
        Self::start_with(args, None, &[])
    }

    /// Like [`Proxy::start`], with the open-file limit (`ulimit -n`) set to
    /// `nofile` when given (to exercise descriptor exhaustion), and extra
    /// environment variables (e.g. `PORTCULLIS_*` instead of flags).
    pub fn start_with<S: AsRef<str>>(
        args: &[S],
        nofile: Option<u64>,
        env: &[(&str, &str)],
    ) -> Proxy {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        let has = |flag: &str| args.iter().any(|a| a == flag);
        let admin = free_addr();
        let inbound = free_addr();
        let mut all = args.clone();
        if !has("--admin-addr") {
            all.extend(["--admin-addr".into(), admin.to_string()]);
        }
        if !has("--inbound-addr") {
            all.extend(["--inbound-addr".into(), inbound.to_string()]);
        }
        let admin = flag_value(&all, "--admin-addr").unwrap_or(admin);
        let inbound = flag_value(&all, "--inbound-addr").unwrap_or(inbound);
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let log = std::env::temp_dir().join(format!(
            "portcullis-test-{}-{}.log",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let stderr = std::fs::File::create(&log).expect("create log file");
        let mut cmd = match nofile {
            None => std::process::Command::new(bin("portcullis")),
            Some(n) => {
                // `exec` keeps the pid: signals and /proc reach the proxy.
                let mut c = std::process::Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin("portcullis"));
                c
            }
        };
        for (k, _) in std::env::vars() {
            if k.starts_with("PORTCULLIS_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(&all)
            .env("PORTCULLIS_LOG", "info")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr);
        let child = cmd.spawn().expect("spawn portcullis");
        let mut proxy = Proxy {
            child,
            admin,
            inbound,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!("portcullis exited at startup ({status}):\n{}", proxy.logs());
            }
            if proxy.try_get("/live").is_some_and(|(s, _)| s == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "portcullis did not start:\n{}",
                proxy.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    /// Waits until `/ready` is 200.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.try_get("/ready").is_some_and(|(s, _)| s == 200) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// `GET path` on the admin server: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        self.try_get(path)
            .unwrap_or_else(|| panic!("admin GET {path} failed:\n{}", self.logs()))
    }

    fn try_get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s =
            std::net::TcpStream::connect_timeout(&self.admin, Duration::from_millis(500)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").ok()?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).ok()?;
        let status = raw.split(' ').nth(1)?.parse().ok()?;
        let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        self.get("/metrics").1
    }

    /// The sum of every series of `name` whose labels include all of
    /// `labels` (0 when none matches).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }

    /// Polls until `metric(name, labels) >= at_least`.
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        at_least: f64,
        timeout: Duration,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(name, labels);
            if v >= at_least || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the logs until one line contains every needle.
    pub fn wait_log(&self, needles: &[&str], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .logs()
                .lines()
                .any(|l| needles.iter().all(|n| l.contains(n)))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -TERM failed");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- portcullis logs ---\n{}", self.logs());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn flag_value(args: &[String], flag: &str) -> Option<SocketAddr> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1)?.parse().ok()
}

/// Sums the series of `name` in Prometheus text whose labels include all of
/// `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let all = labels.iter().all(|(k, v)| {
                let pat = format!("{k}=\"{v}\"");
                rest.starts_with(&pat) || rest.contains(&format!(",{pat}"))
            });
            if !all {
                return None;
            }
            value.parse::<f64>().ok()
        })
        .sum()
}

/// A running `portcullis-controller serve`, killed when dropped; its stderr
/// (the logs) is kept for assertions.
pub struct Controller {
    child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Controller {
    /// Starts `portcullis-controller serve` with `args` and `env` (which must
    /// make it listen on `addr`), and waits until it listens.
    pub fn serve(args: &[&str], env: &[(&str, &str)], addr: SocketAddr) -> Controller {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin("portcullis-controller"))
            .arg("serve")
            .args(args)
            .envs(env.iter().copied())
            .env("PORTCULLIS_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start portcullis-controller");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        assert!(
            wait_listening(addr, Duration::from_secs(20)),
            "controller listening on {addr}"
        );
        Controller { child, log }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}
