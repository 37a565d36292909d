//! Portcullis, the data plane: an inbound sidecar proxy that enforces
//! Linkerd-style authorization policy in front of an application.
//!
//! # Layout
//!
//! One file per stage of a connection, and one that calls them in order:
//!
//! ```text
//!            accept.rs         detect.rs          tls.rs          detect.rs
//! client ──► listener ──────► TLS ClientHello? ─► terminate ───► HTTP/2? HTTP/1?
//!            orig dst / --map  (SNI = identity?    mesh TLS,        │
//!                 │            else pass through)  client id        │
//!                 └─ inbound port itself: direct path (mTLS + transport.rs header)
//!                                                                   ▼
//!            authz.rs ◄── PolicyTable (source.rs writes, revocation reads)
//!              │ TCP: once + on every policy update   HTTP: every request
//!              ▼                                       ▼
//!            forward.rs: byte copy / splice ─► app  http1.rs: HTTP/1.1 fast path ─► own app conn ─► app
//!                                                  └ anything else: http.rs: hyper server ─► pooled client ─► app
//!
//! inbound.rs   follows one connection through the stages above, top to bottom
//! config.rs    flags (PORTCULLIS_* env), validation
//! metrics.rs   Prometheus series (Linkerd's names and labels)
//! admin.rs     /metrics /ready /live /policy /config
//! source.rs    policy sources: none, --policy-file (reloaded), --policy-controller (streamed)
//! identity.rs  the local identity (files, validation, reload), client identity
//! tls.rs       rustls server config and the mTLS handshake
//! transport.rs Linkerd's opaque-transport header (direct path)
//! memory.rs    returns freed memory to the system after connection bursts
//! cpu.rs       the threads' CPU scheduling policy (--cpu-scheduling)
//! signal.rs    the drain and the stop, seen by every connection without a lock
//! ```
//!
//! [`run`] wires them: it starts the policy source, the revocation task, the
//! admin server and the listeners, then waits for SIGTERM and drains.

pub mod accept;
pub mod admin;
pub mod authz;
pub mod config;
pub mod cpu;
pub mod detect;
pub mod forward;
pub mod hpack;
pub mod http;
pub mod http1;
pub mod http2;
pub mod identity;
pub mod inbound;
pub mod memory;
pub mod metrics;
pub mod signal;
pub mod source;
pub mod tls;
pub mod transport;

use std::sync::Arc;

use portcullis_policy::{PolicyTable, Snapshot};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::accept::{Listener, ListenerKind};
use crate::authz::Enforcer;
use crate::config::{Config, LogFormat};
use crate::http::{HttpServer, Upstreams};
use crate::identity::IdentityStore;
use crate::inbound::Inbound;
use crate::metrics::Metrics;
use crate::signal::Signal;

/// How often the identity files are checked for a rotation.
const IDENTITY_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Logs through `tracing`, filtered by `PORTCULLIS_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colors only for a terminal; log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the proxy until SIGTERM (or SIGINT), then drains for up to
/// `--shutdown-grace` and returns.
pub async fn run(config: Config) -> anyhow::Result<()> {
    info!(config = %serde_json::to_string(&config).unwrap_or_default(), "starting portcullis {}", env!("CARGO_PKG_VERSION"));
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let table = Arc::new(PolicyTable::new(Snapshot::from_config(
        &config.policy,
        "default policy (no policy source)",
    )));

    // Identity before anything listens: a proxy that cannot prove who it is
    // refuses to start, saying exactly why (identity.rs).
    let identity = match &config.identity {
        Some(cfg) => {
            let store = Arc::new(IdentityStore::load(cfg.clone())?);
            let current = store.current();
            info!(name = %current.name(), serial = %current.serial(), "mesh identity loaded; meshed TLS for it is terminated");
            Some(store)
        }
        None => {
            info!("no mesh identity configured (--identity-*): all TLS is passed through");
            None
        }
    };
    let identity_reloader = identity
        .as_ref()
        .map(|store| store.spawn_reloader(IDENTITY_POLL));

    // Policy first: connections are decided against it from the start.
    let source::Started {
        ready,
        client: policy_client,
    } = source::start(&config, table.clone(), metrics.clone())?;
    let enforcer = Enforcer::new(table.clone(), metrics.clone());
    tokio::spawn(enforcer.clone().revoke_on_update());

    // Admin before listeners, so probes answer from the start.
    let admin_listener = admin::bind(config.admin_addr).await?;
    info!(addr = %admin_listener.local_addr().unwrap_or(config.admin_addr), "admin server listening");
    let stop_admin = CancellationToken::new();
    tokio::spawn(
        Arc::new(admin::Admin {
            config: config.clone(),
            metrics: metrics.clone(),
            table: table.clone(),
            ready: ready.subscribe(),
        })
        .serve(admin_listener, stop_admin.clone()),
    );

    let mut listeners = vec![Listener::bind(config.inbound_addr, ListenerKind::Inbound).await?];
    for m in &config.maps {
        listeners.push(Listener::bind(m.listen, ListenerKind::Mapped { port: m.port }).await?);
    }

    let connections = TaskTracker::new();
    let inbound = Arc::new(Inbound {
        config: config.clone(),
        enforcer,
        policy_client,
        metrics: metrics.clone(),
        http: HttpServer::new(&config.http),
        upstreams: Upstreams::new(config.app_addr, config.app_connect_timeout),
        identity,
        drain: Signal::new(),
        stop: Signal::new(),
        tasks: connections.clone(),
    });
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let stop_trim = CancellationToken::new();
    tokio::spawn(memory::trim_after_bursts(
        slots.clone(),
        config.max_connections,
        stop_trim.clone(),
    ));
    let stop_accepting = CancellationToken::new();
    let mut accept_loops = Vec::new();
    for l in listeners {
        match l.kind {
            ListenerKind::Inbound => {
                info!(addr = %l.local, "inbound listener (original destination)")
            }
            ListenerKind::Mapped { port } => info!(addr = %l.local, port, "mapped listener"),
        }
        let inbound = inbound.clone();
        let connections = connections.clone();
        accept_loops.push(tokio::spawn(l.run(
            slots.clone(),
            metrics.clone(),
            stop_accepting.clone(),
            move |conn| {
                connections.spawn(inbound.clone().serve(conn));
            },
        )));
    }

    shutdown_signal().await;

    // Stop accepting (listeners close), tell HTTP connections to finish
    // their requests and close, and wait up to the grace period.
    info!(grace = %humantime::format_duration(config.shutdown_grace), "shutting down: draining connections");
    ready.send_replace(false);
    stop_accepting.cancel();
    for l in accept_loops {
        let _ = l.await;
    }
    inbound.drain.fire();
    connections.close();
    if tokio::time::timeout(config.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        info!(
            remaining = connections.len(),
            "shutdown grace expired; closing remaining connections"
        );
        inbound.stop.fire();
        // Give the closes a moment to reach the sockets.
        let closing = std::time::Duration::from_secs(1);
        if tokio::time::timeout(closing, connections.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = connections.len(),
                "connections still open after being closed; exiting anyway"
            );
        }
    }
    stop_admin.cancel();
    stop_trim.cancel();
    if let Some(reloader) = identity_reloader {
        reloader.abort();
    }
    info!("shutdown complete");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => info!("received SIGTERM"),
                _ = int.recv() => info!("received SIGINT"),
            }
        }
        _ => {
            // Without signal handlers, only Ctrl-C can stop us.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
