//! Network namespaces for the sidecar tests (`tests/init_script.rs`,
//! `tests/pod_topology.rs`): a [`Netns`] guard that deletes its namespace on
//! drop (also when the test panics), veth pairs between two namespaces, and
//! [`Background`] processes run inside a namespace and killed on drop.
//!
//! Everything goes through the `ip` command (`ip netns add/exec/del`), the
//! way an operator would do it, because `#![forbid(unsafe_code)]` rules out
//! calling `setns` from the test process. Namespaces are named
//! `pc-<tag>-<pid>-<n>` so parallel test runs never collide, and namespaces
//! left behind by a run that was killed (its pid is gone) are deleted by the
//! next one. Addresses used inside the namespaces come from the benchmarking
//! range 198.18.0.0/15: they exist only inside these throwaway namespaces.
//!
//! This is test support: failures panic with the command and its output.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// Why namespaces cannot be used on this machine (the test then skips).
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A named network namespace, deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Deletes `pc-*` namespaces whose creating process no longer exists.
fn delete_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let mut parts = name.split('-');
        let (Some("pc"), Some(_tag), Some(pid)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

impl Netns {
    /// Creates a fresh namespace with `lo` up. `Err(Unavailable)` only when
    /// this machine cannot create namespaces at all (not root, or no
    /// permission, e.g. an unprivileged container); any other failure panics.
    pub fn create(tag: &str) -> Result<Netns, Unavailable> {
        assert!(
            !tag.contains('-') && !tag.is_empty(),
            "netns tag {tag:?} must be non-empty without '-'"
        );
        if !is_root() {
            return Err(Unavailable(
                "not running as root: creating network namespaces needs root".into(),
            ));
        }
        delete_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("pc-{tag}-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap_or_else(|e| {
                panic!("running `ip netns add` (is iproute2 installed? .ci/run installs it): {e}")
            });
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            if err.contains("Operation not permitted") || err.contains("Permission denied") {
                return Err(Unavailable(format!(
                    "`ip netns add` refused: {}",
                    err.trim()
                )));
            }
            panic!("ip netns add {name} failed: {}", err.trim());
        }
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program`, to be given arguments and run.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `ip -n NAME ARGS...` and panics if it fails.
    pub fn ip(&self, args: &[&str]) {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        check(&mut cmd);
    }

    /// Runs `program args` in the namespace; panics unless it succeeds.
    /// Returns stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let mut cmd = self.command(program);
        cmd.args(args);
        String::from_utf8_lossy(&check(&mut cmd).stdout).into_owned()
    }

    /// Starts `program args` in the namespace; its stdout lines can be
    /// awaited with [`Background::wait_for_line`]. Killed on drop.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Background {
        let mut cmd = self.command(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        Background::start(cmd, format!("{program} {args:?} in {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside only keep the namespace alive until they
        // exit; the name is gone either way.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs a command, panicking with its output when it fails or runs longer
/// than a minute (a hung iptables must fail the test, not stall CI).
pub fn check(cmd: &mut Command) -> Output {
    let out = output_within(cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Like `Command::output`, but kills the command after `timeout` and panics.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pipe = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = pipe(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = pipe(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} still running after {timeout:?}: killed");
            }
            Err(e) => panic!("waiting for {cmd:?}: {e}"),
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Joins two namespaces with a veth pair: `a_if` in `a`, `b_if` in `b`, both
/// up. Interface names live inside the namespaces, so they never collide
/// with another run's.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    check(Command::new("ip").args([
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]));
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// A process started by a test, killed and reaped when dropped.
pub struct Background {
    child: Child,
    lines: Receiver<String>,
    what: String,
}

impl Background {
    /// Spawns `cmd` (stdout must be piped) and forwards its stdout lines.
    pub fn start(mut cmd: Command, what: String) -> Background {
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Background { child, lines, what }
    }

    /// Waits for a stdout line containing `needle`; panics after `timeout`
    /// or if the process exits first.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "{} printed no line containing {needle:?} within {timeout:?} (exit: {status:?})",
                        self.what
                    );
                }
            }
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
