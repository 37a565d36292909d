//! The stream client: watches Linkerd's inbound policy API for every port of
//! this workload and publishes what arrives into the [`PolicyTable`].
//!
//! Called by the proxy when it runs with `--policy-controller URL --workload
//! NS/POD`: [`PolicyClient::spawn`] at startup with `--inbound-ports`, then
//! [`PolicyClient::wait_for_port`] for every accepted connection (which also
//! starts watching a port seen for the first time), and [`PolicyClient::is_ready`]
//! and [`PolicyClient::stats`] for `/ready` and `/metrics`. This is the only
//! code in `policy-client` that opens a socket; it never decides anything.
//!
//! ```text
//!  port 8080 ─ WatchPort stream ─┐
//!  port 9090 ─ WatchPort stream ─┼─► mpsc ─► writer task ─► PolicyTable::publish
//!  port N    ─ WatchPort stream ─┘   (one writer: one swap per batch of updates)
//! ```
//!
//! The work that grows with the policy runs on blocking threads, never on the
//! runtime that carries the proxy's connections: each stream decodes its
//! messages there (`decode_server`; tonic hands them over undecoded), and the
//! writer converts, compares and indexes there (`next_snapshot`). A policy of
//! 10,000 authorizations held a single-worker runtime for about 60 ms per
//! update before.
//!
//! Failure rules (fail closed, never open):
//! - One `WatchPort` stream per port, over one HTTP/2 connection. A stream that
//!   fails is retried with capped exponential backoff with jitter (100 ms up to
//!   60 s by default); the last policy received for the port stays in force
//!   while disconnected.
//! - `InvalidArgument` and `FailedPrecondition` are final: the controller says
//!   our request is wrong (workload name, port), so retrying cannot help. They
//!   are logged as configuration errors and the port's stream stops.
//! - The wait for a stream's first message is bounded; idle gaps afterwards
//!   are normal for a watch (policy rarely changes), so a dead connection is
//!   found by HTTP/2 keepalive pings instead.
//! - A message that cannot be converted (see `proto`) makes its port deny every
//!   client (`default/invalid`) until a good one arrives; it is counted and logged.
//! - Until a port's first policy arrives, connections wait up to the policy
//!   timeout (counted from when the port became known), then the table's
//!   fallback — the configured default policy — applies, and that is logged.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::model::PortPolicy;
use crate::proto::{invalid_policy, pb};
use crate::table::{PolicyTable, Snapshot};

/// tonic's generic client: `WatchPort` is called by hand (`call_watch_port`)
/// so that its responses arrive undecoded.
type GrpcClient = tonic::client::Grpc<Channel>;

// === workload ===

/// The pod a proxy serves, as `namespace/pod` on the command line and as
/// Linkerd's policy controller expects it in `PortSpec.workload`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Workload {
    #[serde(rename = "ns")]
    pub namespace: String,
    pub pod: String,
}

/// A workload name that cannot be used (bad flag, or a bad `PortSpec`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid workload {input:?}: {reason}")]
pub struct InvalidWorkload {
    pub input: String,
    pub reason: &'static str,
}

impl Workload {
    pub fn new(namespace: &str, pod: &str) -> Result<Self, InvalidWorkload> {
        let bad = |reason| InvalidWorkload {
            input: format!("{namespace}/{pod}"),
            reason,
        };
        if !is_k8s_name(namespace) {
            return Err(bad("the namespace is not a Kubernetes name"));
        }
        if !is_k8s_name(pod) {
            return Err(bad("the pod is not a Kubernetes name"));
        }
        Ok(Workload {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
        })
    }

    /// What we send in `PortSpec.workload`: `{"ns":"NS","pod":"POD"}`, the
    /// form Linkerd's policy controller reads.
    pub fn to_spec(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads `PortSpec.workload` as Linkerd's controller does: the JSON form,
    /// or the legacy `NS:POD`.
    pub fn from_spec(spec: &str) -> Result<Self, InvalidWorkload> {
        let bad = |reason| InvalidWorkload {
            input: spec.chars().take(300).collect(),
            reason,
        };
        if spec.trim_start().starts_with('{') {
            let w: Workload = serde_json::from_str(spec)
                .map_err(|_| bad("expected JSON {\"ns\": NAMESPACE, \"pod\": POD}"))?;
            return Workload::new(&w.namespace, &w.pod).map_err(|e| bad(e.reason));
        }
        match spec.split_once(':') {
            Some((ns, pod)) => Workload::new(ns, pod).map_err(|e| bad(e.reason)),
            None => Err(bad("expected JSON {\"ns\", \"pod\"} or NAMESPACE:POD")),
        }
    }
}

impl FromStr for Workload {
    type Err = InvalidWorkload;

    /// `namespace/pod`, as `--workload` takes it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, pod)) => Workload::new(ns, pod),
            None => Err(InvalidWorkload {
                input: s.to_string(),
                reason: "expected NAMESPACE/POD",
            }),
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.pod)
    }
}

/// A DNS subdomain name (RFC 1123), as Kubernetes requires of namespaces and pods.
fn is_k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

// === configuration ===

/// Settings of the stream client. Field docs state the defaults of [`ClientConfig::new`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `--policy-controller`: `http://HOST:PORT` (a bare `HOST:PORT` means http).
    pub controller: String,
    /// `--workload`.
    pub workload: Workload,
    /// `--inbound-ports`: watched from the start (others on first use).
    pub ports: Vec<u16>,
    /// `--policy-timeout`: how long connections to a port wait for its first
    /// policy before the default applies (10 s).
    pub policy_timeout: Duration,
    /// First retry delay after a failure (100 ms).
    pub backoff_min: Duration,
    /// Longest retry delay (60 s).
    pub backoff_max: Duration,
    /// TCP connect timeout to the controller (5 s).
    pub connect_timeout: Duration,
    /// How long a new stream may take to deliver its first message (10 s).
    pub first_message_timeout: Duration,
    /// HTTP/2 keepalive ping interval, and how long to wait for the answer,
    /// so a silent dead connection is noticed during idle gaps (10 s).
    pub keepalive: Duration,
}

impl ClientConfig {
    pub fn new(controller: impl Into<String>, workload: Workload) -> Self {
        ClientConfig {
            controller: controller.into(),
            workload,
            ports: Vec::new(),
            policy_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            first_message_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(10),
        }
    }
}

/// The client could not start: configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid --policy-controller {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("the policy client must be started inside a tokio runtime")]
    NoRuntime,
    #[error("--workload: {0}")]
    Workload(#[from] InvalidWorkload),
}

// === counters ===

/// Counters of the stream client, for the proxy's `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    streams_opened: AtomicU64,
    messages: AtomicU64,
    invalid_messages: AtomicU64,
    stream_errors: AtomicU64,
    config_errors: AtomicU64,
    updates_applied: AtomicU64,
}

/// A copy of the client's counters (all monotonic since start).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClientStats {
    /// `WatchPort` calls made.
    pub streams_opened: u64,
    /// `Server` messages received.
    pub messages: u64,
    /// Messages that could not be converted (the port denied until the next good one).
    pub invalid_messages: u64,
    /// Streams that failed: transport errors, error statuses, first-message timeouts.
    pub stream_errors: u64,
    /// Final errors (`InvalidArgument`, `FailedPrecondition`): configuration problems.
    pub config_errors: u64,
    /// Snapshots published into the table.
    pub updates_applied: u64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

// === the client ===

/// Whether a port's first policy arrived in time.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FirstPolicy {
    /// The controller's policy (or the deny of an invalid one) is in the table.
    Received,
    /// The policy timeout passed: the table's fallback (the default policy) applies.
    TimedOut,
}

/// A handle on the running stream client. Cheap to clone; when the last
/// handle is dropped every stream stops (the table keeps its last policy).
#[derive(Clone)]
pub struct PolicyClient {
    inner: Arc<Inner>,
    _stop: Arc<StopOnDrop>,
}

impl fmt::Debug for PolicyClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyClient")
            .field("controller", &self.inner.config.controller)
            .field("workload", &self.inner.config.workload)
            .finish()
    }
}

struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

struct Inner {
    config: ClientConfig,
    /// `PortSpec.workload`, computed once.
    spec: String,
    channel: Channel,
    table: Arc<PolicyTable>,
    ports: Mutex<HashMap<u16, PortState>>,
    updates: mpsc::Sender<Update>,
    counters: Counters,
    runtime: tokio::runtime::Handle,
    stop: watch::Receiver<bool>,
}

struct PortState {
    /// Set (by the writer, after publishing) once the port has a policy.
    received: watch::Sender<bool>,
    /// When waiting for the first policy ends.
    deadline: Instant,
    /// Whether "the default applies" has been logged for this port.
    default_logged: bool,
}

/// One port's new policy, from a stream to the writer.
struct Update {
    port: u16,
    /// As received: converting it (and indexing it) is the writer's work,
    /// off the runtime.
    server: pb::Server,
}

impl PolicyClient {
    /// Starts watching `config.ports` and the writer that feeds `table`. Must
    /// be called inside a tokio runtime; connects lazily (an unreachable
    /// controller is retried, not an error here).
    pub fn spawn(config: ClientConfig, table: Arc<PolicyTable>) -> Result<Self, ClientError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        let url = if config.controller.contains("://") {
            config.controller.clone()
        } else {
            format!("http://{}", config.controller)
        };
        let invalid = |reason: String| ClientError::InvalidUrl {
            url: config.controller.clone(),
            reason,
        };
        if !url.starts_with("http://") {
            return Err(invalid("only http:// controllers are supported".into()));
        }
        let endpoint = Endpoint::from_shared(url)
            .map_err(|e| invalid(e.to_string()))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(config.keepalive)
            .keep_alive_timeout(config.keepalive)
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();

        let (stop_tx, stop) = watch::channel(false);
        let (updates, rx) = mpsc::channel(64);
        let inner = Arc::new(Inner {
            spec: config.workload.to_spec(),
            config,
            channel,
            table,
            ports: Mutex::new(HashMap::new()),
            updates,
            counters: Counters::default(),
            runtime,
            stop,
        });
        inner.runtime.spawn(write(inner.clone(), rx));
        let client = PolicyClient {
            inner,
            _stop: Arc::new(StopOnDrop(stop_tx)),
        };
        tracing::info!(
            controller = %client.inner.config.controller,
            workload = %client.inner.config.workload,
            ports = ?client.inner.config.ports,
            "watching inbound policy"
        );
        for port in client.inner.config.ports.clone() {
            client.ensure_port(port);
        }
        Ok(client)
    }

    /// Starts watching `port` if it is not watched yet (a connection arrived
    /// for a port not in `--inbound-ports`).
    pub fn ensure_port(&self, port: u16) {
        let mut ports = self.inner.lock_ports();
        if ports.contains_key(&port) {
            return;
        }
        ports.insert(
            port,
            PortState {
                received: watch::Sender::new(false),
                deadline: Instant::now() + self.inner.config.policy_timeout,
                default_logged: false,
            },
        );
        drop(ports);
        tracing::debug!(port, "watching a new port");
        self.inner
            .runtime
            .spawn(watch_port(self.inner.clone(), port));
    }

    /// Waits until `port` has its first policy, or its policy timeout passed
    /// (then the table's default applies; logged once per port). Returns at
    /// once when the policy is there. Starts watching the port if needed.
    pub async fn wait_for_port(&self, port: u16) -> FirstPolicy {
        self.ensure_port(port);
        let (mut received, deadline) = {
            let ports = self.inner.lock_ports();
            match ports.get(&port) {
                Some(s) => (s.received.subscribe(), s.deadline),
                None => return FirstPolicy::TimedOut,
            }
        };
        if *received.borrow() {
            return FirstPolicy::Received;
        }
        let arrived = tokio::time::timeout_at(deadline, received.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok());
        if arrived {
            return FirstPolicy::Received;
        }
        let mut ports = self.inner.lock_ports();
        if let Some(state) = ports.get_mut(&port) {
            if !state.default_logged && !*state.received.borrow() {
                state.default_logged = true;
                tracing::warn!(
                    port,
                    timeout = ?self.inner.config.policy_timeout,
                    default = %self.inner.table.load().fallback.port(port).server,
                    "no policy from the controller in time; the default policy applies \
                     to this port until one arrives"
                );
            }
        }
        FirstPolicy::TimedOut
    }

    /// Every known port has a policy (vacuously true before any port is known).
    pub fn is_ready(&self) -> bool {
        self.inner
            .lock_ports()
            .values()
            .all(|s| *s.received.borrow())
    }

    /// The known ports and whether each has its policy, sorted by port.
    pub fn ports(&self) -> Vec<(u16, bool)> {
        let mut ports: Vec<_> = self
            .inner
            .lock_ports()
            .iter()
            .map(|(p, s)| (*p, *s.received.borrow()))
            .collect();
        ports.sort_unstable();
        ports
    }

    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            streams_opened: get(&c.streams_opened),
            messages: get(&c.messages),
            invalid_messages: get(&c.invalid_messages),
            stream_errors: get(&c.stream_errors),
            config_errors: get(&c.config_errors),
            updates_applied: get(&c.updates_applied),
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }
}

impl Inner {
    fn lock_ports(&self) -> MutexGuard<'_, HashMap<u16, PortState>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single inserts and flag reads), so a poisoned lock is still usable.
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Resolves when the client is stopped (last handle dropped).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

// === the writer ===

/// The one writer of the table: applies every pending update to one new
/// snapshot and publishes it with one swap, then marks the ports as received
/// (so waiting connections read the new policy).
async fn write(inner: Arc<Inner>, mut rx: mpsc::Receiver<Update>) {
    let stop = stopped(inner.stop.clone());
    tokio::pin!(stop);
    loop {
        let first = tokio::select! {
            _ = &mut stop => return,
            u = rx.recv() => match u {
                Some(u) => u,
                None => return,
            },
        };
        let mut batch = vec![first];
        while let Ok(u) = rx.try_recv() {
            batch.push(u);
        }
        let ports: Vec<u16> = batch.iter().map(|u| u.port).collect();
        // Converting, comparing and indexing take time in proportion to the
        // policy (about 60 ms for 10,000 authorizations): on the runtime they
        // would stall every connection of a single-worker proxy.
        let job = {
            let inner = inner.clone();
            tokio::task::spawn_blocking(move || next_snapshot(&inner.table, &inner.counters, batch))
        };
        match job.await {
            Ok(Some(next)) => {
                inner.table.publish(next);
                inc(&inner.counters.updates_applied);
            }
            Ok(None) => {}
            // A panic, or the runtime shutting down: the policy in force stays.
            Err(error) => tracing::error!(%error, "policy update failed"),
        }
        let states = inner.lock_ports();
        for port in ports {
            if let Some(state) = states.get(&port) {
                state.received.send_replace(true);
            }
        }
    }
}

/// The table's next snapshot after `batch`, or `None` when nothing changes.
/// A message that cannot be used makes its port deny every client.
fn next_snapshot(table: &PolicyTable, counters: &Counters, batch: Vec<Update>) -> Option<Snapshot> {
    let current = table.load();
    let mut next: Option<Snapshot> = None;
    for Update { port, server } in batch {
        let policy = PortPolicy::try_from((port, server)).unwrap_or_else(|error| {
            inc(&counters.invalid_messages);
            tracing::error!(
                port,
                %error,
                "denying every client on this port until the controller sends a valid policy"
            );
            invalid_policy(port)
        });
        let base = next.as_ref().unwrap_or(&current);
        if base.ports.get(&port).map(|a| a.policy()) == Some(&policy) {
            continue;
        }
        tracing::info!(
            port,
            server = %policy.server,
            protocol = %policy.protocol,
            authorizations = policy.authorizations.len(),
            routes = policy.http_routes.len(),
            "policy updated"
        );
        next = Some(base.with_port(policy));
    }
    next
}

// === one port's stream ===

/// Why one `WatchPort` stream ended.
enum End {
    /// Retry after a backoff; `healthy` when the stream delivered messages.
    Retry {
        healthy: bool,
        error: Option<StreamError>,
    },
    /// The controller rejected our request: do not retry.
    Final(tonic::Status),
    /// The client is shutting down.
    Stopped,
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("{}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    #[error("no message within {0:?} of opening the stream")]
    FirstMessageTimeout(Duration),
}

/// Watches one port until the client stops or the controller says our
/// request is wrong.
async fn watch_port(inner: Arc<Inner>, port: u16) {
    let mut client = GrpcClient::new(inner.channel.clone());
    let mut backoff = Backoff::new(inner.config.backoff_min, inner.config.backoff_max);
    let stop = stopped(inner.stop.clone());
    tokio::pin!(stop);
    loop {
        let end = tokio::select! {
            _ = &mut stop => return,
            end = watch_once(&inner, &mut client, port) => end,
        };
        match end {
            End::Stopped => return,
            End::Final(status) => {
                inc(&inner.counters.config_errors);
                tracing::error!(
                    port,
                    workload = %inner.config.workload,
                    code = %status.code(),
                    message = status.message(),
                    "configuration error: the policy controller rejected this workload or port; \
                     not retrying (check --workload and the port)"
                );
                return;
            }
            End::Retry { healthy, error } => {
                if healthy {
                    backoff.reset();
                }
                let delay = backoff.next();
                match error {
                    Some(error) => {
                        inc(&inner.counters.stream_errors);
                        tracing::warn!(
                            port,
                            %error,
                            retry_in = ?delay,
                            "policy stream failed; the last policy stays in force"
                        );
                    }
                    None => tracing::debug!(port, retry_in = ?delay, "policy stream ended"),
                }
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// One `WatchPort` call: forwards every message to the writer until the
/// stream ends.
async fn watch_once(inner: &Inner, client: &mut GrpcClient, port: u16) -> End {
    inc(&inner.counters.streams_opened);
    let spec = pb::PortSpec {
        workload: inner.spec.clone(),
        port: port.into(),
    };
    let timeout = inner.config.first_message_timeout;
    let first_by = Instant::now() + timeout;
    let mut stream = match tokio::time::timeout_at(first_by, call_watch_port(client, spec)).await {
        Err(_) => return retry(false, StreamError::FirstMessageTimeout(timeout)),
        Ok(Err(status)) => return on_status(status, false),
        Ok(Ok(stream)) => stream,
    };
    let mut received = false;
    loop {
        let next = if received {
            stream.message().await
        } else {
            match tokio::time::timeout_at(first_by, stream.message()).await {
                Ok(next) => next,
                Err(_) => return retry(false, StreamError::FirstMessageTimeout(timeout)),
            }
        };
        let bytes = match next {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return End::Retry {
                    healthy: received,
                    error: None,
                }
            }
            Err(status) => return on_status(status, received),
        };
        let server = match decode_server(bytes).await {
            Ok(server) => server,
            Err(status) => return on_status(status, received),
        };
        inc(&inner.counters.messages);
        if inner.updates.send(Update { port, server }).await.is_err() {
            return End::Stopped;
        }
        received = true;
    }
}

/// The `WatchPort` method's path, as the generated client names it.
const WATCH_PORT: &str = "/io.linkerd.proxy.inbound.InboundServerPolicies/WatchPort";

/// Opens a `WatchPort` stream as `linkerd2-proxy-api`'s generated client
/// does, but with [`RawServers`] as the codec.
async fn call_watch_port(
    client: &mut GrpcClient,
    spec: pb::PortSpec,
) -> Result<tonic::Streaming<Bytes>, tonic::Status> {
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
    let mut request = tonic::Request::new(spec);
    request.extensions_mut().insert(tonic::GrpcMethod::new(
        "io.linkerd.proxy.inbound.InboundServerPolicies",
        "WatchPort",
    ));
    let path = http::uri::PathAndQuery::from_static(WATCH_PORT);
    Ok(client
        .server_streaming(request, path, RawServers)
        .await?
        .into_inner())
}

/// Decodes one `Server` message on a blocking thread: a policy of 10,000
/// authorizations took about 35 ms to decode, a stall of every connection
/// of a single-worker proxy when done on the runtime. A message that does
/// not decode fails the stream with `Internal`, as prost's codec would.
async fn decode_server(bytes: Bytes) -> Result<pb::Server, tonic::Status> {
    use prost::Message as _;
    match tokio::task::spawn_blocking(move || pb::Server::decode(bytes)).await {
        Ok(Ok(server)) => Ok(server),
        Ok(Err(e)) => Err(tonic::Status::internal(format!(
            "cannot decode a Server message: {e}"
        ))),
        Err(e) => Err(tonic::Status::internal(format!(
            "decoding a Server message failed: {e}"
        ))),
    }
}

/// The codec of `WatchPort`: encodes the `PortSpec` with prost, and passes
/// each response on as its bytes, for [`decode_server`].
#[derive(Clone, Copy, Debug, Default)]
struct RawServers;

type ProstCodec = tonic_prost::ProstCodec<pb::PortSpec, pb::Server>;

impl tonic::codec::Codec for RawServers {
    type Encode = pb::PortSpec;
    type Decode = Bytes;
    type Encoder = <ProstCodec as tonic::codec::Codec>::Encoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

/// Takes a whole gRPC message (tonic has already framed it and enforced
/// its size limit) as bytes.
#[derive(Debug)]
struct RawDecoder;

impl tonic::codec::Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

fn retry(healthy: bool, error: StreamError) -> End {
    End::Retry {
        healthy,
        error: Some(error),
    }
}

/// `InvalidArgument` and `FailedPrecondition` mean the request is wrong and
/// will stay wrong; everything else (unavailable, not found yet, internal,
/// transport errors) may pass.
fn on_status(status: tonic::Status, healthy: bool) -> End {
    match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition => End::Final(status),
        _ => retry(healthy, StreamError::Status(status)),
    }
}

// === backoff ===

/// Capped exponential backoff with jitter: each delay is drawn from the upper
/// half of the current step (so retries of many proxies spread out), never
/// below `min`, and the step doubles up to `max`.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Backoff {
            min,
            max,
            step: min,
        }
    }

    fn reset(&mut self) {
        self.step = self.min;
    }

    fn next(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        let jittered = step.mul_f64(rand::rng().random_range(0.5..=1.0));
        jittered.clamp(self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_parse_in_every_form() {
        let w: Workload = "emojivoto/web-0".parse().unwrap();
        assert_eq!(w.to_string(), "emojivoto/web-0");
        assert_eq!(w.to_spec(), r#"{"ns":"emojivoto","pod":"web-0"}"#);
        assert_eq!(Workload::from_spec(&w.to_spec()), Ok(w.clone()));
        assert_eq!(Workload::from_spec("emojivoto:web-0"), Ok(w.clone()));
        assert_eq!(
            Workload::from_spec(r#" {"pod": "web-0", "ns": "emojivoto"}"#),
            Ok(w)
        );
        for bad in ["", "emojivoto", "a/b/c", "/pod", "ns/", "NS/pod", "ns/p_d"] {
            assert!(bad.parse::<Workload>().is_err(), "{bad:?}");
        }
        for bad in [
            "",
            "emojivoto",
            ":pod",
            "{",
            r#"{"ns":"a"}"#,
            r#"{"ns":"a","external_workload":"b"}"#,
            r#"{"ns":"A","pod":"b"}"#,
            "a:b:c",
        ] {
            assert!(Workload::from_spec(bad).is_err(), "{bad:?}");
        }
    }

    fn enforce(port: u16, name: &str) -> PortPolicy {
        PortPolicy {
            server: crate::model::Meta::default(name),
            ..invalid_policy(port)
        }
    }

    fn update(policy: &PortPolicy) -> Update {
        Update {
            port: policy.port,
            server: pb::Server::try_from(policy).expect("encodes"),
        }
    }

    fn table() -> PolicyTable {
        PolicyTable::new(Snapshot::from_config(
            &crate::PolicyConfig::default(),
            "test",
        ))
    }

    #[test]
    fn the_writer_builds_one_snapshot_for_a_batch() {
        let (table, counters) = (table(), Counters::default());
        let (a, b) = (enforce(8080, "a"), enforce(9090, "b"));
        let next = next_snapshot(&table, &counters, vec![update(&a), update(&b)])
            .expect("two new ports change the table");
        assert_eq!(next.get(8080).policy(), &a);
        assert_eq!(next.get(9090).policy(), &b);
        table.publish(next);
        // The same policies again change nothing.
        assert!(next_snapshot(&table, &counters, vec![update(&a)]).is_none());
        // A later message in the batch wins over an earlier one.
        let a2 = enforce(8080, "a2");
        let next = next_snapshot(&table, &counters, vec![update(&a2), update(&a)])
            .expect("a2 changes the port, and a changes it back");
        assert_eq!(next.get(8080).policy(), &a);
        assert_eq!(counters.invalid_messages.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_unusable_message_makes_its_port_deny() {
        let (table, counters) = (table(), Counters::default());
        let broken = Update {
            port: 8080,
            server: pb::Server::default(),
        };
        let next = next_snapshot(&table, &counters, vec![broken]).expect("a change");
        assert_eq!(next.get(8080).policy(), &invalid_policy(8080));
        assert_eq!(counters.invalid_messages.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_server_message_decodes_off_the_runtime_or_fails_the_stream() {
        use prost::Message as _;
        let server = pb::Server::try_from(&enforce(8080, "a")).expect("encodes");
        let bytes = Bytes::from(server.encode_to_vec());
        assert_eq!(decode_server(bytes).await.expect("decodes"), server);
        // A truncated length-delimited field: prost refuses it.
        let status = decode_server(Bytes::from_static(&[0x0a, 0x05, 0x01]))
            .await
            .expect_err("garbage decoded");
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("cannot decode a Server message"));
        // Internal is retried, not final: the last policy stays in force.
        assert!(matches!(on_status(status, true), End::Retry { .. }));
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(60);
        let mut b = Backoff::new(min, max);
        let mut step = min;
        for _ in 0..20 {
            let d = b.next();
            assert!(d >= min && d <= max, "{d:?}");
            assert!(d >= step / 2 && d <= step, "{d:?} outside half of {step:?}");
            step = (step * 2).min(max);
        }
        assert!(b.next() >= Duration::from_secs(30));
        b.reset();
        assert!(b.next() <= min);
    }

    #[test]
    fn only_bad_requests_are_final() {
        for code in [Code::InvalidArgument, Code::FailedPrecondition] {
            assert!(matches!(
                on_status(tonic::Status::new(code, "x"), false),
                End::Final(_)
            ));
        }
        for code in [
            Code::NotFound,
            Code::Unavailable,
            Code::Internal,
            Code::Unknown,
            Code::PermissionDenied,
        ] {
            assert!(matches!(
                on_status(tonic::Status::new(code, "x"), true),
                End::Retry { healthy: true, .. }
            ));
        }
    }

    #[tokio::test]
    async fn bad_urls_are_configuration_errors() {
        let table = Arc::new(PolicyTable::new(Snapshot::from_config(
            &crate::PolicyConfig::default(),
            "test",
        )));
        let w: Workload = "ns/pod".parse().unwrap();
        for url in ["https://127.0.0.1:1", "http://bad host:1"] {
            let r = PolicyClient::spawn(ClientConfig::new(url, w.clone()), table.clone());
            assert!(matches!(r, Err(ClientError::InvalidUrl { .. })), "{url}");
        }
        assert!(PolicyClient::spawn(ClientConfig::new("127.0.0.1:1", w), table).is_ok());
    }
}
