//! Child processes of the harness and what /proc says about them: spawning
//! pinned to a core with a raised file limit, CPU time (utime + stime),
//! resident memory (VmRSS, VmHWM) summed over a process and its descendants
//! (nginx's master and worker), and stopping them so none outlives the run.
//!
//! Must not: measure anything itself or decide what a number means; the
//! scenarios do that. Called by `targets.rs`, `scenarios.rs` and `tools.rs`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// Which core a process is pinned to: the load generator gets `Load`, the
/// upstream app and every proxy get `Serve`, so each run competes for the
/// same two cores the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Core {
    Load,
    Serve,
}

/// Pinning policy, decided once per run.
#[derive(Clone, Copy, Debug)]
pub struct Pinning {
    pub enabled: bool,
}

impl Pinning {
    pub fn cpu_list(self, core: Core) -> Option<&'static str> {
        if !self.enabled {
            return None;
        }
        Some(match core {
            Core::Load => "0",
            Core::Serve => "1",
        })
    }
}

/// Pins the calling thread to `cpus` (`taskset -pc` on its thread id);
/// best effort: unpinned, the thread only adds noise.
pub fn pin_this_thread(cpus: &str) {
    let Ok(link) = fs::read_link("/proc/thread-self") else {
        return;
    };
    // "PID/task/TID"
    let Some(tid) = link.file_name().and_then(|t| t.to_str()).map(str::to_owned) else {
        return;
    };
    let _ = Command::new("taskset")
        .args(["-pc", cpus, &tid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Raises the hard file limit to 65,536 where it is lower and
/// the shell may (root), never lowering it, then the soft limit to the
/// hard one. 10,000 idle connections take about 20,000 descriptors in a
/// proxy, and a Debian container's default hard limit is often 20,000.
const RAISE_NOFILE: &str = "h=$(ulimit -Hn); \
    if [ \"$h\" != unlimited ] && [ \"$h\" -lt 65536 ]; then ulimit -Hn 65536 2>/dev/null; fi; \
    ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; ";

/// Builds a command that raises its file limits ([`RAISE_NOFILE`]; idle
/// connection scenarios need ~2 descriptors per connection in a proxy) and
/// runs `program` pinned with `taskset`. `exec` keeps the pid: the pid we get
/// is the pid of `program` itself, which is what /proc accounting needs.
pub fn command(pin: Pinning, core: Core, program: &Path, args: &[String]) -> Command {
    let mut cmd = Command::new("sh");
    let mut script = format!("{RAISE_NOFILE}exec ");
    if let Some(cpus) = pin.cpu_list(core) {
        script.push_str("taskset -c ");
        script.push_str(cpus);
        script.push(' ');
    }
    script.push_str("\"$@\"");
    cmd.arg("-c").arg(script).arg("sh").arg(program).args(args);
    cmd.stdin(Stdio::null());
    cmd
}

/// The hard limit on open files for processes we start (a proxy holding N
/// idle client connections needs about 2N descriptors), after
/// [`RAISE_NOFILE`].
pub fn hard_nofile() -> u64 {
    let out = Command::new("sh")
        .args(["-c", &format!("{RAISE_NOFILE}ulimit -Hn")])
        .output();
    match out {
        Ok(o) => {
            let s = String::from_utf8_lossy(&o.stdout);
            let s = s.trim();
            if s == "unlimited" {
                1 << 20
            } else {
                s.parse().unwrap_or(1024)
            }
        }
        Err(_) => 1024,
    }
}

/// Clock ticks per second for /proc/PID/stat times.
pub fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

struct Stat {
    ppid: u32,
    ticks: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields
    // count from the last ')'. After it: state(3) ppid(4) ... utime(14) stime(15).
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(Stat {
        ppid,
        ticks: utime + stime,
    })
}

/// `pid` and all its living descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(st) = read_stat(p) {
                children.entry(st.ppid).or_default().push(p);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c.iter().copied());
        }
        i += 1;
    }
    out
}

/// CPU time (user + system) of the processes, in microseconds.
pub fn cpu_us(pids: &[u32]) -> u64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|p| read_stat(*p))
        .map(|s| s.ticks)
        .sum();
    ticks * 1_000_000 / clk_tck()
}

fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Current resident memory of the processes, KiB (summed).
pub fn rss_kb(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| status_kb(*p, "VmRSS:")).sum()
}

/// Peak resident memory of the processes, KiB (sum of each one's VmHWM: an
/// upper bound on the peak of the sum when there are several processes).
pub fn hwm_kb(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| status_kb(*p, "VmHWM:")).sum()
}

/// A started server process (proxy, upstream, iperf3 server) that is stopped
/// with its descendants when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: Option<PathBuf>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Has it exited? With its exit status as text.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("wait failed: {e}")),
        }
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let start = lines.len().saturating_sub(6);
        lines[start..].join(" | ")
    }

    /// SIGTERM to the whole tree, a grace period, then SIGKILL what is left.
    pub fn stop(&mut self) {
        let pids = tree(self.pid());
        signal(&pids, "TERM");
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let parent_gone = matches!(self.child.try_wait(), Ok(Some(_)) | Err(_));
            let all_gone = pids[1..]
                .iter()
                .all(|p| !Path::new(&format!("/proc/{p}")).exists() || is_zombie(*p));
            if parent_gone && all_gone {
                return;
            }
            if Instant::now() > deadline {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        signal(&pids, "KILL");
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|st| st == "Z")
        })
        .unwrap_or(true)
}

fn signal(pids: &[u32], sig: &str) {
    if pids.is_empty() {
        return;
    }
    let mut cmd = Command::new("kill");
    cmd.arg(format!("-{sig}"));
    for p in pids {
        cmd.arg(p.to_string());
    }
    let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Is `tool` on PATH?
pub fn have(tool: &str) -> bool {
    which(tool).is_some()
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}
