//! Metrics: the Prometheus registry and every series the proxy exports.
//!
//! Names and labels follow Linkerd's proxy so that existing dashboards and
//! alerts work: `inbound_tcp_authz_{allow,deny,terminate}_total`,
//! `inbound_http_authz_{allow,deny}_total`,
//! `inbound_tcp_detect_http_results_total`, `tcp_{open,close}_total`,
//! `tcp_{read,write}_bytes_total`, `request_total`, `response_total`,
//! `response_latency_ms`. Portcullis adds `inbound_tcp_refused_total`,
//! `inbound_tcp_accept_errors_total`, `inbound_policy_generation`,
//! `inbound_policy_errors_total`, and with a controller
//! `inbound_policy_stream_errors_total` and `inbound_policy_invalid_messages_total`.
//!
//! Label values are computed once per connection ([`ConnLabels`]); hot
//! counters (bytes) are resolved once per connection and then only
//! incremented. This module records; it never decides. Callers: `authz.rs`
//! (decisions), `inbound.rs` and `forward.rs` (connections, bytes),
//! `http.rs` (requests), `accept.rs` (refusals), `source.rs` (policy), and
//! `admin.rs` (`/metrics`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use portcullis_policy::Meta;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label set: names are fixed, values computed at run time.
pub type Labels = Vec<(&'static str, String)>;

/// Linkerd's latency buckets, in milliseconds.
const LATENCY_BUCKETS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MS)
}

type Counters = Family<Labels, Counter>;

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    pub tcp_authz_allow: Counters,
    pub tcp_authz_deny: Counters,
    pub tcp_authz_terminate: Counters,
    pub http_authz_allow: Counters,
    pub http_authz_deny: Counters,
    pub detect_http: Counters,
    pub tcp_open: Counters,
    pub tcp_close: Counters,
    pub tcp_read_bytes: Counters,
    pub tcp_write_bytes: Counters,
    pub tcp_refused: Counters,
    pub accept_errors: Counters,
    pub request_total: Counters,
    pub response_total: Counters,
    pub response_latency_ms: Family<Labels, Histogram, fn() -> Histogram>,
    pub policy_generation: Gauge,
    pub policy_errors: Counter,
    pub sni: SniLabels,
    /// With `--policy-controller`: stream failures (transport errors, error
    /// statuses, first-message timeouts), copied from the stream client.
    pub policy_stream_errors: Counter,
    /// With `--policy-controller`: messages that could not be used (the
    /// port denies until a valid one arrives).
    pub policy_invalid_messages: Counter,
    /// See [`Metrics::conn_labels`].
    conn_label_sets: Mutex<HashMap<(SocketAddr, TlsLabel), Arc<ConnLabels>>>,
    /// See [`Metrics::detect_result`].
    detect_counters: Mutex<HashMap<(u16, &'static str), Counter>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        // prometheus-client appends `_total` to counter names.
        let mut counters = |name: &str, help: &str| {
            let family = Counters::default();
            registry.register(name, help, family.clone());
            family
        };
        let tcp_authz_allow = counters(
            "inbound_tcp_authz_allow",
            "TCP connections authorized, by server and authorization",
        );
        let tcp_authz_deny = counters(
            "inbound_tcp_authz_deny",
            "TCP connections denied (closed without forwarding)",
        );
        let tcp_authz_terminate = counters(
            "inbound_tcp_authz_terminate",
            "Live TCP connections closed because a policy update revoked them",
        );
        let http_authz_allow = counters(
            "inbound_http_authz_allow",
            "HTTP requests authorized, by server, route and authorization",
        );
        let http_authz_deny = counters(
            "inbound_http_authz_deny",
            "HTTP requests denied (403 or gRPC PERMISSION_DENIED)",
        );
        let detect_http = counters(
            "inbound_tcp_detect_http_results",
            "Results of HTTP protocol detection",
        );
        let tcp_open = counters("tcp_open", "TCP connections opened");
        let tcp_close = counters("tcp_close", "TCP connections closed");
        let tcp_read_bytes = counters("tcp_read_bytes", "Bytes read from clients");
        let tcp_write_bytes = counters("tcp_write_bytes", "Bytes written to clients");
        let tcp_refused = counters(
            "inbound_tcp_refused",
            "Connections closed at accept, by reason (max_connections, direct)",
        );
        let accept_errors = counters(
            "inbound_tcp_accept_errors",
            "Errors accepting connections (e.g. EMFILE), by error kind",
        );
        let request_total = counters("request", "HTTP requests received");
        let response_total = counters("response", "HTTP responses sent, by status");
        let response_latency_ms: Family<Labels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "response_latency_ms",
            "Time from a request's headers to its response's headers, in milliseconds",
            response_latency_ms.clone(),
        );
        let policy_generation = Gauge::default();
        registry.register(
            "inbound_policy_generation",
            "Policy updates applied since start",
            policy_generation.clone(),
        );
        let policy_errors = Counter::default();
        registry.register(
            "inbound_policy_errors",
            "Policy updates rejected (invalid files); the last good policy stays in force",
            policy_errors.clone(),
        );
        let policy_stream_errors = Counter::default();
        registry.register(
            "inbound_policy_stream_errors",
            "Policy controller stream failures; the last policy stays in force while reconnecting",
            policy_stream_errors.clone(),
        );
        let policy_invalid_messages = Counter::default();
        registry.register(
            "inbound_policy_invalid_messages",
            "Policy messages from the controller that could not be used; the port denies until a valid one arrives",
            policy_invalid_messages.clone(),
        );
        Metrics {
            registry,
            tcp_authz_allow,
            tcp_authz_deny,
            tcp_authz_terminate,
            http_authz_allow,
            http_authz_deny,
            detect_http,
            tcp_open,
            tcp_close,
            tcp_read_bytes,
            tcp_write_bytes,
            tcp_refused,
            accept_errors,
            request_total,
            response_total,
            response_latency_ms,
            policy_generation,
            policy_errors,
            sni: SniLabels::default(),
            policy_stream_errors,
            policy_invalid_messages,
            conn_label_sets: Mutex::new(HashMap::new()),
            detect_counters: Mutex::new(HashMap::new()),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts one result of HTTP detection.
    pub fn detect_result(&self, target_port: u16, result: &'static str) {
        // Resolved once per (port, result): a connection must not hash the
        // label strings (see `ConnLabels`).
        let mut known = self
            .detect_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        known
            .entry((target_port, result))
            .or_insert_with(|| {
                self.detect_http.get_or_create_owned(&vec![
                    ("target_port", target_port.to_string()),
                    ("result", result.to_string()),
                ])
            })
            .inc();
    }

    /// Counts a connection refused at accept.
    pub fn refused(&self, reason: &'static str) {
        self.tcp_refused
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }
}

/// Most distinct `sni` label values; clients choose their SNI, so further
/// names are labelled `sni="other"` to keep the series count bounded.
pub const MAX_SNI_LABELS: usize = 256;

/// Bounds the `sni` label's values (see [`MAX_SNI_LABELS`]).
#[derive(Debug, Default)]
pub struct SniLabels(std::sync::Mutex<std::collections::HashSet<String>>);

impl SniLabels {
    /// The label value for `sni`: itself while fewer than the cap have been
    /// seen (or it was seen before), else `other`.
    pub fn label(&self, sni: &str) -> String {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(sni) {
            return sni.to_string();
        }
        if seen.len() < MAX_SNI_LABELS {
            seen.insert(sni.to_string());
            return sni.to_string();
        }
        "other".to_string()
    }
}

/// How the client reached the proxy, as the `tls` label family shows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TlsLabel {
    /// Meshed TLS terminated by the proxy: `tls="true"` (+ `client_id`).
    Mesh { client_id: Option<String> },
    /// Plaintext: `tls="no_identity", no_tls_reason="no_tls_from_remote"`.
    Plain,
    /// TLS not for us, passed through: `tls="opaque"` (+ `sni`).
    Passthrough { sni: Option<String> },
}

impl TlsLabel {
    fn push(&self, labels: &mut Labels) {
        match self {
            TlsLabel::Mesh { client_id } => {
                labels.push(("tls", "true".into()));
                if let Some(id) = client_id {
                    labels.push(("client_id", id.clone()));
                }
            }
            TlsLabel::Plain => {
                labels.push(("tls", "no_identity".into()));
                labels.push(("no_tls_reason", "no_tls_from_remote".into()));
            }
            TlsLabel::Passthrough { sni } => {
                labels.push(("tls", "opaque".into()));
                if let Some(sni) = sni {
                    labels.push(("sni", sni.clone()));
                }
            }
        }
    }
}

/// The labels every series of one connection shares, and the series of
/// this label set once resolved. Connections with the same target and TLS
/// labels share one `ConnLabels` ([`Metrics::conn_labels`]): resolving a
/// series hashes its whole label set (SipHash over a dozen strings), which
/// cost more than the rest of a new connection together.
#[derive(Debug)]
pub struct ConnLabels {
    pub target_port: u16,
    base: Labels,
    /// `tcp_open_total` and the byte counters.
    tcp: OnceLock<(Counter, ByteCounters)>,
    /// `tcp_close_total` by `errno`.
    closes: Mutex<Vec<(String, Counter)>>,
    /// `request_total`.
    pub(crate) requests: OnceLock<Counter>,
    /// `response_total` and `response_latency_ms` by (status, failure).
    pub(crate) responses: Mutex<Vec<(u16, bool, Counter, Histogram)>>,
    /// `inbound_http_authz_allow_total` by (authorization, route) address
    /// inside the port's authorizer of one policy generation (kept alive
    /// here, so the addresses stay unique).
    pub(crate) allow: Mutex<Option<AllowCache>>,
}

/// See [`ConnLabels::allow`].
#[derive(Debug)]
pub(crate) struct AllowCache {
    pub generation: u64,
    pub authorizer: std::sync::Arc<portcullis_policy::Authorizer>,
    pub counters: Vec<(usize, usize, Counter)>,
}

/// Label sets kept by [`Metrics::conn_labels`]: targets times TLS labels
/// (client identities included), bounded so a crowd of identities cannot
/// grow it; past the bound connections resolve their own.
const MAX_CONN_LABEL_SETS: usize = 4096;

impl ConnLabels {
    /// `target` is the original destination (or, for `--map`, the listener's
    /// IP with the mapped port).
    pub fn new(target: SocketAddr, tls: &TlsLabel) -> Self {
        let mut base = vec![
            ("target_addr", target.to_string()),
            ("target_ip", target.ip().to_string()),
            ("target_port", target.port().to_string()),
        ];
        tls.push(&mut base);
        ConnLabels {
            target_port: target.port(),
            base,
            tcp: OnceLock::new(),
            closes: Mutex::new(Vec::new()),
            requests: OnceLock::new(),
            responses: Mutex::new(Vec::new()),
            allow: Mutex::new(None),
        }
    }

    /// Target and TLS labels only.
    pub fn base(&self) -> Labels {
        self.base.clone()
    }

    /// `tcp_*` series: `direction="inbound", peer="src"` plus the base.
    pub fn tcp(&self) -> Labels {
        let mut l = Vec::with_capacity(self.base.len() + 2);
        l.push(("direction", "inbound".to_string()));
        l.push(("peer", "src".to_string()));
        l.extend(self.base.iter().cloned());
        l
    }

    /// Base labels plus `srv_*` (and `authz_*`, `route_*` when given).
    pub fn authz(&self, server: &Meta, route: Option<&Meta>, authz: Option<&Meta>) -> Labels {
        let mut l = self.base.clone();
        l.push(("srv_group", server.group().to_string()));
        l.push(("srv_kind", server.kind().to_string()));
        l.push(("srv_name", server.name().to_string()));
        l.push(("srv_port", self.target_port.to_string()));
        if let Some(route) = route {
            l.push(("route_group", route.group().to_string()));
            l.push(("route_kind", route.kind().to_string()));
            l.push(("route_name", route.name().to_string()));
        }
        if let Some(authz) = authz {
            l.push(("authz_group", authz.group().to_string()));
            l.push(("authz_kind", authz.kind().to_string()));
            l.push(("authz_name", authz.name().to_string()));
        }
        l
    }
}

/// The byte counters of one connection, resolved once.
#[derive(Clone, Debug)]
pub struct ByteCounters {
    pub read: Counter,
    pub write: Counter,
}

impl Metrics {
    /// The shared labels (and resolved series) of connections to `target`
    /// with these TLS labels.
    pub fn conn_labels(&self, target: SocketAddr, tls: &TlsLabel) -> Arc<ConnLabels> {
        let mut sets = self
            .conn_label_sets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(l) = sets.get(&(target, tls.clone())) {
            return l.clone();
        }
        let labels = Arc::new(ConnLabels::new(target, tls));
        if sets.len() < MAX_CONN_LABEL_SETS {
            sets.insert((target, tls.clone()), labels.clone());
        }
        labels
    }

    /// Counts an opened connection and returns its byte counters.
    pub fn conn_open(&self, labels: &ConnLabels) -> ByteCounters {
        let (open, bytes) = labels.tcp.get_or_init(|| {
            let tcp = labels.tcp();
            (
                self.tcp_open.get_or_create_owned(&tcp),
                ByteCounters {
                    read: self.tcp_read_bytes.get_or_create_owned(&tcp),
                    write: self.tcp_write_bytes.get_or_create_owned(&tcp),
                },
            )
        });
        open.inc();
        bytes.clone()
    }

    /// Counts a closed connection; `errno` is empty for a clean close.
    pub fn conn_close(&self, labels: &ConnLabels, errno: &str) {
        let mut closes = labels.closes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = closes.iter().find(|(e, _)| e == errno) {
            c.inc();
            return;
        }
        let mut tcp = labels.tcp();
        tcp.push(("errno", errno.to_string()));
        let c = self.tcp_close.get_or_create_owned(&tcp);
        c.inc();
        closes.push((errno.to_string(), c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_label_values_are_bounded() {
        let sni = SniLabels::default();
        for i in 0..MAX_SNI_LABELS {
            assert_eq!(sni.label(&format!("h{i}.example")), format!("h{i}.example"));
        }
        assert_eq!(sni.label("new.example"), "other");
        assert_eq!(sni.label("h0.example"), "h0.example");
    }

    #[test]
    fn names_and_labels_are_linkerds() {
        let m = Metrics::new();
        let conn = ConnLabels::new("10.0.0.1:8080".parse().unwrap(), &TlsLabel::Plain);
        let server = Meta::default("all-unauthenticated");
        m.tcp_authz_allow
            .get_or_create(&conn.authz(&server, None, Some(&server)))
            .inc();
        m.detect_result(8080, "http/1");
        m.response_latency_ms
            .get_or_create(&vec![("status_code", "200".to_string())])
            .observe(3.5);
        let text = m.encode();
        assert!(text.contains(
            "inbound_tcp_authz_allow_total{target_addr=\"10.0.0.1:8080\",target_ip=\"10.0.0.1\",target_port=\"8080\",tls=\"no_identity\",no_tls_reason=\"no_tls_from_remote\",srv_group=\"\",srv_kind=\"default\",srv_name=\"all-unauthenticated\",srv_port=\"8080\",authz_group=\"\",authz_kind=\"default\",authz_name=\"all-unauthenticated\"} 1"
        ), "{text}");
        assert!(text.contains(
            "inbound_tcp_detect_http_results_total{target_port=\"8080\",result=\"http/1\"} 1"
        ));
        assert!(text.contains("# TYPE response_latency_ms histogram"));
        assert!(
            text.contains("response_latency_ms_bucket{le=\"5.0\",status_code=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE inbound_policy_generation gauge"));
    }
}
