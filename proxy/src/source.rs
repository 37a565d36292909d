//! Policy sources: where the policy table's snapshots come from.
//!
//! - none: the default policy (`--default-policy`, `--opaque-ports`,
//!   `--cluster-networks`) on every port; ready at once.
//! - `--policy-controller URL --workload NS/POD`: Linkerd's inbound policy
//!   API, one `WatchPort` stream per port (`portcullis_policy::client`): the
//!   ports of `--inbound-ports` from the start, any other port when a
//!   connection first arrives for it (the connection waits up to
//!   `--policy-timeout` for that port's first policy, then the default
//!   applies). Ready once every known port has a policy. While the controller
//!   is unreachable the last policy received stays in force; a message that
//!   cannot be used makes its port deny until a good one arrives.
//! - `--policy-file PATH --workload NS/POD`: the resources in PATH (a YAML
//!   file or a directory of them) compiled for that pod. The path is watched
//!   (inotify on its directory, plus a one-second check of sizes and
//!   modification times as a safety net) and reloaded within about a second
//!   of a change.
//!
//! Fail closed: a load that fails (unreadable file, invalid YAML, invalid
//! resource, unknown workload) is rejected whole, every error is logged, and
//! the last good policy stays in force. If the very first load fails, the
//! table denies everything (and `/ready` stays 503) until a valid file
//! appears: a typo never opens anything up. Warnings (overlapping Servers,
//! unknown annotation values...) are logged and the policy is applied.
//!
//! A source is the table's only writer: it builds each snapshot off to the
//! side and publishes it whole (`PolicyTable::publish`), which wakes the
//! revocation task in `authz.rs`. Called once by `lib.rs` at startup.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis_policy::client::{ClientConfig, ClientError, ClientStats, PolicyClient};
use portcullis_policy::load::is_yaml;
use portcullis_policy::{
    compile, CompileError, DefaultPolicy, PolicyConfig, PolicyTable, ResourceErrors, Resources,
    Snapshot, WorkloadPolicy,
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::config::{Config, PolicySource};
use crate::metrics::Metrics;

/// How often the files' metadata is compared even without a watch event.
const POLL: Duration = Duration::from_secs(1);
/// After a change, wait until the files stop changing for this long (an
/// editor or `kubectl cp` may write in several steps).
const SETTLE: Duration = Duration::from_millis(50);

/// Why a policy file could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Resources(ResourceErrors),
    #[error(transparent)]
    Compile(#[from] CompileError),
}

/// A started policy source.
pub struct Started {
    /// Turns true once a policy is in force (for `/ready`).
    pub ready: watch::Sender<bool>,
    /// With `--policy-controller`: connections wait on it for their port's
    /// first policy (`PolicyClient::wait_for_port`).
    pub client: Option<PolicyClient>,
}

/// Starts the configured source. Fails only on a controller URL the client
/// cannot use.
pub fn start(
    config: &Config,
    table: Arc<PolicyTable>,
    metrics: Arc<Metrics>,
) -> Result<Started, ClientError> {
    let ready = watch::Sender::new(false);
    let mut client = None;
    match &config.source {
        PolicySource::None => {
            // The table starts with the default policy: nothing to load.
            metrics.policy_generation.set(table.generation() as i64);
            ready.send_replace(true);
        }
        PolicySource::File { path, workload } => {
            let mut file = FileSource {
                path: path.clone(),
                workload: workload.clone(),
                policy: config.policy.clone(),
                table,
                metrics,
                ready: ready.clone(),
            };
            // First load before any listener exists, so no connection sees
            // anything but the file's policy (or deny-all while it is invalid).
            if !file.reload() {
                let deny = PolicyConfig {
                    default_policy: DefaultPolicy::Deny,
                    ..config.policy.clone()
                };
                file.table.publish(Snapshot::from_config(
                    &deny,
                    format!("deny-all: {} has no valid policy yet", path.display()),
                ));
                file.metrics
                    .policy_generation
                    .set(file.table.generation() as i64);
            }
            tokio::spawn(file.watch());
        }
        PolicySource::Controller {
            url,
            workload,
            policy_timeout,
            inbound_ports,
        } => {
            let mut initial = Snapshot::from_config(&config.policy, format!("controller {url}"));
            initial.fallback.workload = workload.clone();
            table.publish(initial);
            let workload = workload.parse()?;
            let mut cc = ClientConfig::new(url.clone(), workload);
            cc.ports = inbound_ports.clone();
            cc.policy_timeout = *policy_timeout;
            let c = PolicyClient::spawn(cc, table.clone())?;
            tokio::spawn(follow_controller(c.clone(), table, metrics, ready.clone()));
            client = Some(c);
        }
    }
    Ok(Started { ready, client })
}

/// Turns `/ready` on once every known port has a policy (then it stays on
/// until draining), and copies the stream client's counters and the table's
/// generation into the metrics.
async fn follow_controller(
    client: PolicyClient,
    table: Arc<PolicyTable>,
    metrics: Arc<Metrics>,
    ready: watch::Sender<bool>,
) {
    let mut generation = table.subscribe();
    let mut reported = ClientStats::default();
    let mut became_ready = false;
    loop {
        metrics.policy_generation.set(table.generation() as i64);
        let stats = client.stats();
        metrics
            .policy_stream_errors
            .inc_by(stats.stream_errors.saturating_sub(reported.stream_errors));
        metrics.policy_invalid_messages.inc_by(
            stats
                .invalid_messages
                .saturating_sub(reported.invalid_messages),
        );
        reported = stats;
        if !became_ready && client.is_ready() {
            became_ready = true;
            ready.send_replace(true);
            info!(ports = ?client.ports(), "every known port has a policy from the controller");
        }
        tokio::select! {
            changed = generation.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            // Readiness is marked just after a publish, and counters change
            // without one: check again shortly.
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Loads and compiles a policy file for one workload.
pub fn load(path: &Path, workload: &str, config: &PolicyConfig) -> Result<Loaded, LoadError> {
    let resources = Resources::load(&[path]).map_err(LoadError::Resources)?;
    let mut warnings: Vec<String> = resources
        .check(config)
        .into_iter()
        .map(|w| w.to_string())
        .collect();
    let compiled = compile(&resources, workload, config)?;
    warnings.extend(compiled.warnings);
    Ok(Loaded {
        policy: compiled.policy,
        warnings,
    })
}

fn log_warnings(path: &Path, warnings: &[String]) {
    for w in warnings {
        warn!(file = %path.display(), "policy warning: {w}");
    }
}

/// A compiled policy file.
#[derive(Debug)]
pub struct Loaded {
    pub policy: WorkloadPolicy,
    pub warnings: Vec<String>,
}

struct FileSource {
    path: PathBuf,
    workload: String,
    policy: PolicyConfig,
    table: Arc<PolicyTable>,
    metrics: Arc<Metrics>,
    ready: watch::Sender<bool>,
}

/// What a reload found: the work of a reload except publishing it.
enum Prepared {
    /// The file changed but compiles to the policy in force.
    Unchanged {
        warnings: Vec<String>,
    },
    Changed {
        snapshot: Snapshot,
        warnings: Vec<String>,
    },
    Rejected(LoadError),
}

/// Loads, compiles, compares with the snapshot in force and builds the
/// next one: everything of a reload that costs time in proportion to the
/// file (about 15 ms of CPU for 1,000 authorizations, 140 ms for 10,000),
/// and nothing that changes the table.
fn prepare(path: &Path, workload: &str, config: &PolicyConfig, current: &Snapshot) -> Prepared {
    match load(path, workload, config) {
        Err(e) => Prepared::Rejected(e),
        Ok(loaded) if current.holds(&loaded.policy) => Prepared::Unchanged {
            warnings: loaded.warnings,
        },
        Ok(loaded) => Prepared::Changed {
            snapshot: Snapshot::from_workload(loaded.policy, format!("file {}", path.display())),
            warnings: loaded.warnings,
        },
    }
}

impl FileSource {
    /// Loads, compiles and publishes on the calling thread (startup, before
    /// any listener); `false` (and the table untouched) on error.
    fn reload(&mut self) -> bool {
        let prepared = prepare(&self.path, &self.workload, &self.policy, &self.table.load());
        self.apply(prepared)
    }

    /// The same while serving: the preparing runs on a blocking thread. On
    /// the runtime, a large policy stalled every connection of a
    /// single-worker proxy for the whole parse: with 10,000 authorizations
    /// reloaded once a second, wrk's p99 was 122 ms, and 5 ms since
    /// (benches/RESULTS.md, pass 7).
    async fn reload_off_runtime(&mut self) -> bool {
        let (path, workload, config) = (
            self.path.clone(),
            self.workload.clone(),
            self.policy.clone(),
        );
        // The source is the table's only writer: what it loads now is
        // still in force when the job's result is applied.
        let current = self.table.load();
        let job = tokio::task::spawn_blocking(move || prepare(&path, &workload, &config, &current));
        match job.await {
            Ok(prepared) => self.apply(prepared),
            Err(e) => {
                // A panic, or the runtime shutting down: the policy in force
                // stays until the file's next change.
                self.metrics.policy_errors.inc();
                error!(file = %self.path.display(), error = %e, "policy reload failed; the last good policy stays in force");
                false
            }
        }
    }

    /// Publishes a prepared reload, or logs why not.
    fn apply(&mut self, prepared: Prepared) -> bool {
        let file = self.path.display();
        match prepared {
            Prepared::Unchanged { warnings } => {
                log_warnings(&self.path, &warnings);
                debug!(%file, "policy file changed; policy unchanged");
                true
            }
            Prepared::Changed { snapshot, warnings } => {
                log_warnings(&self.path, &warnings);
                let ports = snapshot.ports.len();
                self.table.publish(snapshot);
                let generation = self.table.generation();
                self.metrics.policy_generation.set(generation as i64);
                self.ready.send_replace(true);
                info!(%file, workload = %self.workload, ports, generation, "policy loaded");
                true
            }
            Prepared::Rejected(e) => {
                self.metrics.policy_errors.inc();
                let errors: Vec<String> = match &e {
                    LoadError::Resources(errs) => errs.0.iter().map(|e| e.to_string()).collect(),
                    LoadError::Compile(c) => vec![c.to_string()],
                };
                for err in &errors {
                    error!(%file, "invalid policy: {err}");
                }
                error!(
                    %file,
                    errors = errors.len(),
                    "policy rejected; the last good policy stays in force"
                );
                false
            }
        }
    }

    async fn watch(mut self) {
        let (tx, mut events) = mpsc::unbounded_channel();
        // Without a watch (inotify unavailable, its limits reached) or once
        // it has failed, the channel is closed: only the timer remains, or
        // a closed channel would make this loop spin.
        let mut watching = match watcher(&self.path, tx) {
            Ok(()) => true,
            Err(e) => {
                warn!(file = %self.path.display(), error = %e, "cannot watch the policy file; checking it every second");
                false
            }
        };
        let mut seen = fingerprint(&self.path);
        loop {
            tokio::select! {
                event = events.recv(), if watching => {
                    if event.is_none() {
                        watching = false;
                        continue;
                    }
                }
                _ = tokio::time::sleep(POLL) => {}
            }
            let mut now = fingerprint(&self.path);
            if now == seen {
                continue;
            }
            // Let a multi-step write finish.
            loop {
                tokio::time::sleep(SETTLE).await;
                while events.try_recv().is_ok() {}
                let again = fingerprint(&self.path);
                if again == now {
                    break;
                }
                now = again;
            }
            seen = now;
            debug!(file = %self.path.display(), "policy file changed");
            self.reload_off_runtime().await;
        }
    }
}

/// Watches the path's directory (a file is often replaced by a rename, or
/// by a symlink swap in a Kubernetes volume) and signals on the events that
/// can concern the policy. The mask leaves out `IN_MODIFY` and opens: a
/// log written beside the policy file would otherwise wake the proxy on
/// every write (the load harness's `h2load.log` did, once per request). A
/// finished write (`IN_CLOSE_WRITE`) and every rename, creation and
/// removal still count; a file written in place and held open is caught
/// by the one-second check. The events are read by a task on the runtime
/// (no thread of its own).
fn watcher(path: &Path, tx: mpsc::UnboundedSender<()>) -> std::io::Result<()> {
    use futures::StreamExt;
    use inotify::{Inotify, WatchMask};
    let (watched, dir) = Watched::of(path);
    let inotify = Inotify::init()?;
    inotify.watches().add(
        &dir,
        WatchMask::CLOSE_WRITE
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::ATTRIB,
    )?;
    let mut events = inotify.into_event_stream([0u8; 4096])?;
    let file = path.to_path_buf();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let name = match &event {
                Ok(e) => e.name.as_deref(),
                Err(_) => None,
            };
            if concerns_policy(name, &watched) && tx.send(()).is_err() {
                return;
            }
            if let Err(e) = event {
                warn!(file = %file.display(), error = %e, "policy file watch failed; checking it every second");
                return;
            }
        }
    });
    Ok(())
}

/// What the watched directory holds of the policy.
#[derive(Debug, Clone)]
enum Watched {
    /// `--policy-file` names this file in the directory.
    File(OsString),
    /// `--policy-file` names the directory: its YAML files.
    Dir,
}

impl Watched {
    /// What `--policy-file` names, and the directory to watch for it.
    fn of(path: &Path) -> (Watched, PathBuf) {
        match path.file_name() {
            Some(name) if !path.is_dir() => {
                let dir = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
                (Watched::File(name.to_owned()), dir)
            }
            _ => (Watched::Dir, path.to_path_buf()),
        }
    }
}

/// Whether an event on the directory entry `name` may have changed the
/// policy: the policy file itself (or, for a directory, a YAML file), or a
/// `..`-prefixed entry (kubelet's `..data` symlink swap, which replaces a
/// ConfigMap's files without touching their own names). An event without a
/// name (the directory itself, a queue overflow, a read error) counts: the
/// fingerprint decides.
fn concerns_policy(name: Option<&OsStr>, watched: &Watched) -> bool {
    let Some(name) = name else { return true };
    if name.as_encoded_bytes().starts_with(b"..") {
        return true;
    }
    match watched {
        Watched::File(file) => name == file,
        Watched::Dir => is_yaml(Path::new(name)),
    }
}

/// Size, modification time and inode of the policy file (or of each YAML
/// file of the directory): any edit, replacement or removal changes it.
fn fingerprint(path: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>, u64)> {
    use std::os::unix::fs::MetadataExt;
    let stat = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (p.to_path_buf(), m.len(), m.modified().ok(), m.ino()))
    };
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_yaml(p))
            .filter_map(|p| stat(&p))
            .collect();
        entries.sort();
        entries
    } else {
        stat(path).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Watched {
        Watched::File("policy.yaml".into())
    }

    fn name(n: &str) -> Option<&OsStr> {
        Some(OsStr::new(n))
    }

    #[test]
    fn a_watched_file_wakes_on_its_own_name_only() {
        assert!(concerns_policy(name("policy.yaml"), &file()));
        assert!(!concerns_policy(name("h2load.log"), &file()));
        assert!(!concerns_policy(name("other.yaml"), &file()));
        assert!(!concerns_policy(name(".policy.yaml.swp"), &file()));
    }

    #[test]
    fn a_kubelet_symlink_swap_wakes() {
        assert!(concerns_policy(name("..data"), &file()));
        assert!(concerns_policy(name("..data_tmp"), &file()));
        assert!(concerns_policy(name("..2026_12_03_15_00_00.123"), &file()));
    }

    #[test]
    fn a_watched_directory_wakes_on_yaml_files_only() {
        assert!(concerns_policy(name("a.yaml"), &Watched::Dir));
        assert!(concerns_policy(name("b.yml"), &Watched::Dir));
        assert!(!concerns_policy(name("notes.txt"), &Watched::Dir));
    }

    #[test]
    fn events_without_a_name_wake() {
        assert!(concerns_policy(None, &file()));
        assert!(concerns_policy(None, &Watched::Dir));
    }

    #[test]
    fn watched_of_tells_a_file_from_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (watched, watch_dir) = Watched::of(dir.path());
        assert!(matches!(watched, Watched::Dir));
        assert_eq!(watch_dir, dir.path());
        match Watched::of(&dir.path().join("policy.yaml")) {
            (Watched::File(name), watch_dir) => {
                assert_eq!(name, "policy.yaml");
                assert_eq!(watch_dir, dir.path());
            }
            (Watched::Dir, _) => panic!("a file path was taken for a directory"),
        }
        // A bare file name is watched in the working directory.
        assert_eq!(Watched::of(Path::new("policy.yaml")).1, Path::new("."));
    }

    /// The CPU time this thread has used, in clock ticks (/proc).
    fn thread_ticks() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        // Fields after the command name (which may hold spaces): utime is
        // the 14th field of the line, stime the 15th.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    }

    /// A policy file in a directory that cannot be watched (it does not
    /// exist yet): the source falls back to its timer and sleeps between
    /// checks; it must not spin on the closed event channel.
    #[test]
    fn without_a_watch_the_source_sleeps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("not-yet").join("policy.yaml");
        let source = file_source(path);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let before = thread_ticks();
        rt.block_on(async {
            let ran = tokio::time::timeout(Duration::from_millis(500), source.watch()).await;
            assert!(ran.is_err(), "the watch loop ended");
        });
        let used = thread_ticks() - before;
        // Spinning for 500 ms uses about 50 ticks (10 ms each).
        assert!(used < 15, "the source used {used} ticks of CPU in 500 ms");
    }

    const WEB_POLICY: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: ns
  labels: {app: web}
spec:
  containers:
  - name: app
    ports:
    - {name: http, containerPort: 8080}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata: {name: web-http, namespace: ns}
spec:
  podSelector: {matchLabels: {app: web}}
  port: http
  proxyProtocol: HTTP/1
";

    fn file_source(path: PathBuf) -> FileSource {
        let config = PolicyConfig::default();
        FileSource {
            path,
            workload: "ns/web".into(),
            policy: config.clone(),
            table: Arc::new(PolicyTable::new(Snapshot::from_config(&config, "test"))),
            metrics: Arc::new(Metrics::new()),
            ready: watch::Sender::new(false),
        }
    }

    /// A reload that compiles to the policy in force publishes nothing; a
    /// real change publishes once.
    #[test]
    fn only_a_changed_policy_is_published() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, WEB_POLICY).expect("write");
        let mut source = file_source(path.clone());
        assert!(source.reload());
        let first = source.table.generation();
        // A comment changes the file, not the policy.
        std::fs::write(&path, format!("# edited\n{WEB_POLICY}")).expect("rewrite");
        assert!(source.reload());
        assert_eq!(
            source.table.generation(),
            first,
            "an unchanged policy was published"
        );
        std::fs::write(&path, WEB_POLICY.replace("HTTP/1", "HTTP/2")).expect("rewrite");
        assert!(source.reload());
        assert_eq!(source.table.generation(), first + 1);
    }

    /// A reload while serving reads and compiles off the runtime. The policy
    /// file is a FIFO here, so reading it blocks until somebody writes, and
    /// the writer is a task of the same single-threaded runtime: had the
    /// reload read on the runtime's only thread, the writer could never run.
    #[test]
    fn a_reload_leaves_the_runtime_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("policy.yaml");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo");
        assert!(made.success(), "mkfifo failed");
        let mut source = file_source(path.clone());
        let before = source.table.generation();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let loaded = rt.block_on(async {
                let writer = async {
                    tokio::task::yield_now().await;
                    std::fs::write(&path, WEB_POLICY).expect("write into the FIFO");
                };
                tokio::join!(source.reload_off_runtime(), writer).0
            });
            let _ = done_tx.send((loaded, source));
        });
        let (loaded, source) = done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the reload blocked the runtime: its writer never ran");
        assert!(loaded, "the policy was not applied");
        assert_eq!(source.table.generation(), before + 1);
        assert!(source.table.load().ports.contains_key(&8080));
        assert_eq!(source.metrics.policy_errors.get(), 0);
    }

    /// Through a real inotify watch: appends to a log beside the policy
    /// file send nothing; rewriting the policy file, and a rename over it,
    /// send a signal each.
    #[tokio::test]
    async fn the_watch_ignores_a_busy_neighbour() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = dir.path().join("policy.yaml");
        std::fs::write(&policy, "a: 1\n").expect("write");
        let mut log = std::fs::File::create(dir.path().join("h2load.log")).expect("log");
        let (tx, mut rx) = mpsc::unbounded_channel();
        watcher(&policy, tx).expect("watch");
        let drain = |rx: &mut mpsc::UnboundedReceiver<()>| {
            let mut n = 0;
            while rx.try_recv().is_ok() {
                n += 1;
            }
            n
        };
        let settle = || tokio::time::sleep(Duration::from_millis(100));

        for i in 0..100 {
            writeln!(log, "request {i}").expect("log write");
        }
        log.flush().expect("flush");
        settle().await;
        assert_eq!(drain(&mut rx), 0, "appends to a neighbour woke the watch");

        std::fs::write(&policy, "a: 2\n").expect("rewrite");
        settle().await;
        assert!(
            drain(&mut rx) >= 1,
            "rewriting the policy file did not wake the watch"
        );

        let tmp = dir.path().join(".policy.yaml.tmp");
        std::fs::write(&tmp, "a: 3\n").expect("write tmp");
        settle().await;
        assert_eq!(drain(&mut rx), 0, "a neighbour's creation woke the watch");
        std::fs::rename(&tmp, &policy).expect("rename");
        settle().await;
        assert!(
            drain(&mut rx) >= 1,
            "a rename over the policy file did not wake the watch"
        );
    }
}
