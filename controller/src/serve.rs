//! `portcullis-controller serve`: compiles the resource files for every pod
//! in them, serves the result over gRPC (`grpc`), and follows the files.
//!
//! Owns: loading and compiling everything into one [`Policies`] value,
//! noticing file changes, and replacing that value whole.
//! Rules:
//! - The files are polled (default every 250 ms) and their contents hashed:
//!   reliable on every filesystem and editor (renames, truncate-and-write,
//!   mounts where inotify does not fire), and cheap for resource files. A
//!   change is read once it has been stable for a short moment, so a
//!   half-written file is not taken for an edit.
//! - An edit that does not load keeps the last good policies in force and
//!   logs every error (`FILE:DOC kind/ns/name: field: message`). Cross-resource
//!   problems (`Resources::check`) and compile warnings are logged as warnings.
//! - A new value goes to every watch at once; each watch sends only when its
//!   own port's policy changed (see `grpc`).
//!
//! At startup, resources that do not load are an error (nothing to serve).
//! Called by: `cli` (`serve`), and end-to-end tests through the binary.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use portcullis_policy::client::Workload;
use portcullis_policy::{compile, PolicyConfig, ResourceErrors, Resources};
use tokio::sync::watch;

use crate::cli::ServeArgs;
use crate::grpc::{self, Policies};

/// Loads and compiles every pod of the resource files. Logs cross-resource
/// problems and compile warnings; fails only when the files do not load.
pub fn load(paths: &[PathBuf], config: &PolicyConfig) -> Result<Policies, ResourceErrors> {
    let resources = Resources::load(paths)?;
    for problem in resources.check(config) {
        tracing::warn!("{problem}");
    }
    let mut workloads = HashMap::new();
    for (namespace, name) in resources.pods() {
        let workload = match Workload::new(&namespace, &name) {
            Ok(w) => w,
            Err(error) => {
                tracing::warn!(%error, "not serving this pod");
                continue;
            }
        };
        if workloads.contains_key(&workload) {
            // `compile` uses the first of several pods with one name too.
            continue;
        }
        match compile(&resources, &workload.to_string(), config) {
            Ok(compiled) => {
                for warning in &compiled.warnings {
                    tracing::warn!(%workload, "{warning}");
                }
                workloads.insert(workload, Arc::new(compiled.policy));
            }
            Err(error) => tracing::warn!(%workload, %error, "not serving this pod"),
        }
    }
    Ok(Policies { workloads })
}

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.policy.config();
    let paths = args.resources.clone();
    let policies = {
        let (paths, config) = (paths.clone(), config.clone());
        tokio::task::spawn_blocking(move || load(&paths, &config)).await?
    };
    let policies = match policies {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!("{e}");
            }
            anyhow::bail!(
                "the resources have {} error(s); nothing to serve",
                errors.0.len()
            );
        }
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(
        addr = %listener.local_addr().unwrap_or(args.listen),
        pods = policies.workloads.len(),
        resources = ?paths,
        "serving inbound policy"
    );

    let (tx, rx) = watch::channel(Arc::new(policies));
    let (shutdown_tx, shutdown) = watch::channel(false);
    let fingerprint = fingerprint(&paths);
    tokio::spawn(follow(
        paths,
        config,
        tx,
        fingerprint,
        args.poll_interval,
        shutdown.clone(),
    ));
    tokio::spawn(async move {
        signal().await;
        tracing::info!("shutting down");
        shutdown_tx.send_replace(true);
    });
    grpc::serve(listener, rx, shutdown)
        .await
        .context("serving gRPC")
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Polls the files; on a change, reloads and publishes (or keeps the last
/// good policies and logs why).
async fn follow(
    paths: Vec<PathBuf>,
    config: PolicyConfig,
    policies: watch::Sender<Arc<Policies>>,
    mut last: u64,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let Some(now) = settled(&paths, last).await else {
            continue;
        };
        last = now;
        let loaded = {
            let (paths, config) = (paths.clone(), config.clone());
            tokio::task::spawn_blocking(move || load(&paths, &config)).await
        };
        match loaded {
            Ok(Ok(next)) => {
                let changed = policies.send_if_modified(|current| {
                    if **current == next {
                        return false;
                    }
                    *current = Arc::new(next);
                    true
                });
                if changed {
                    tracing::info!(
                        pods = policies.borrow().workloads.len(),
                        "resources reloaded"
                    );
                } else {
                    tracing::info!("resources changed; no policy changed");
                }
            }
            Ok(Err(errors)) => {
                for e in &errors.0 {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    errors = errors.0.len(),
                    "the edited resources do not load; the last good policy stays in force"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "reloading failed; the last good policy stays in force")
            }
        }
    }
}

/// The new fingerprint of the files when it differs from `last` and has
/// stayed the same for a moment (a writer has finished), else `None`.
async fn settled(paths: &[PathBuf], last: u64) -> Option<u64> {
    let read = |paths: Vec<PathBuf>| async move {
        tokio::task::spawn_blocking(move || fingerprint(&paths))
            .await
            .ok()
    };
    let mut now = read(paths.to_vec()).await?;
    if now == last {
        return None;
    }
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let again = read(paths.to_vec()).await?;
        if again == now {
            return Some(now);
        }
        now = again;
    }
    Some(now)
}

/// A hash of what the loader reads: each path, each file directly inside a
/// directory (sorted), and their contents. Unreadable files hash their error,
/// so a file appearing or disappearing is a change too.
pub fn fingerprint(paths: &[PathBuf]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for path in paths {
        path.hash(&mut h);
        if path.is_dir() {
            let mut files: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(e) => {
                    e.kind().hash(&mut h);
                    continue;
                }
            };
            files.sort();
            for file in files.iter().filter(|f| f.is_file()) {
                hash_file(file, &mut h);
            }
        } else {
            hash_file(path, &mut h);
        }
    }
    h.finish()
}

fn hash_file(path: &Path, h: &mut impl Hasher) {
    path.hash(h);
    match std::fs::read(path) {
        Ok(bytes) => bytes.hash(h),
        Err(e) => e.kind().hash(h),
    }
}
