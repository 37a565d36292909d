//! The proxy's configuration: every flag, its `PORTCULLIS_*` environment
//! variable, its default, and the validation step.
//!
//! `Args` is what clap parses (flags and environment); [`Args::validate`]
//! checks what clap cannot (flag combinations, ports that would loop) and
//! returns the typed [`Config`] the rest of the proxy reads. Nothing here
//! opens a socket or reads a file; `main` calls it once at startup and logs
//! the result. Each field's doc line is its `--help` text and states its
//! default.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use portcullis_policy::cli::PolicyArgs;
use portcullis_policy::PolicyConfig;
use serde::Serialize;

use crate::identity::IdentityConfig;

/// Portcullis: an inbound sidecar proxy that enforces Linkerd authorization policy.
#[derive(Debug, Clone, Parser)]
#[command(name = "portcullis", version, about, long_about = None)]
pub struct Args {
    /// Address that receives iptables-redirected connections; the target port is the
    /// original destination (SO_ORIGINAL_DST) [default: 0.0.0.0:4143]
    #[arg(
        long,
        env = "PORTCULLIS_INBOUND_ADDR",
        default_value = "0.0.0.0:4143",
        hide_default_value = true
    )]
    pub inbound_addr: SocketAddr,

    /// Extra listener LISTEN_ADDR=PORT whose connections are treated as addressed to PORT
    /// (repeatable or comma-separated; for VMs and tests without iptables)
    #[arg(
        long = "map",
        env = "PORTCULLIS_MAP",
        value_delimiter = ',',
        value_name = "LISTEN_ADDR=PORT"
    )]
    pub maps: Vec<PortMap>,

    /// Address of the application: connections to port P are forwarded to APP_ADDR:P
    /// [default: 127.0.0.1]
    #[arg(
        long,
        env = "PORTCULLIS_APP_ADDR",
        default_value = "127.0.0.1",
        hide_default_value = true
    )]
    pub app_addr: IpAddr,

    /// Admin server address: /metrics, /ready, /live, /policy, /config [default: 127.0.0.1:4191]
    #[arg(
        long,
        env = "PORTCULLIS_ADMIN_ADDR",
        default_value = "127.0.0.1:4191",
        hide_default_value = true
    )]
    pub admin_addr: SocketAddr,

    /// Policy resources (YAML file or directory), compiled for --workload and reloaded on change
    #[arg(
        long,
        env = "PORTCULLIS_POLICY_FILE",
        value_name = "PATH",
        conflicts_with = "policy_controller"
    )]
    pub policy_file: Option<PathBuf>,

    /// Policy controller URL, http://HOST:PORT (Linkerd's inbound policy API: portcullis-controller
    /// or Linkerd's policy controller); policy for --workload is watched per port
    #[arg(long, env = "PORTCULLIS_POLICY_CONTROLLER", value_name = "URL")]
    pub policy_controller: Option<String>,

    /// The pod this proxy serves, NAMESPACE/POD (required with a policy source)
    #[arg(long, env = "PORTCULLIS_WORKLOAD", value_name = "NAMESPACE/POD")]
    pub workload: Option<String>,

    /// With a controller: how long a connection waits for its port's first policy before the
    /// default policy applies [default: 10s]
    #[arg(long, env = "PORTCULLIS_POLICY_TIMEOUT", value_parser = parse_duration, default_value = "10s", hide_default_value = true)]
    pub policy_timeout: Duration,

    /// With a controller: the pod's ports whose policy is fetched at startup (others on first use)
    #[arg(
        long,
        env = "PORTCULLIS_INBOUND_PORTS",
        value_delimiter = ',',
        value_name = "PORT"
    )]
    pub inbound_ports: Vec<u16>,

    /// Policy settings shared with portcullis-controller: --default-policy,
    /// --cluster-networks, --opaque-ports, --identity-domain, --identity-trust-domain.
    #[command(flatten)]
    pub policy: PolicyArgs,

    /// Mesh identity: the trust anchors (PEM, one or more CA certificates) that client
    /// certificates and the proxy's own chain must verify against. With --identity-cert and
    /// --identity-key, enables meshed mTLS termination
    #[arg(
        long,
        env = "PORTCULLIS_IDENTITY_TRUST_ANCHORS",
        value_name = "PEM",
        requires_all = ["identity_cert", "identity_key"]
    )]
    pub identity_trust_anchors: Option<PathBuf>,

    /// Mesh identity: the proxy's certificate chain (PEM, leaf first); reloaded when it changes
    #[arg(
        long,
        env = "PORTCULLIS_IDENTITY_CERT",
        value_name = "PEM",
        requires_all = ["identity_trust_anchors", "identity_key"]
    )]
    pub identity_cert: Option<PathBuf>,

    /// Mesh identity: the leaf's private key (PEM: PKCS#8, SEC1 or PKCS#1; ECDSA, Ed25519 or
    /// RSA); reloaded when it changes
    #[arg(
        long,
        env = "PORTCULLIS_IDENTITY_KEY",
        value_name = "PEM",
        requires_all = ["identity_trust_anchors", "identity_cert"]
    )]
    pub identity_key: Option<PathBuf>,

    /// Mesh identity name: the TLS server name meshed clients use (a ClientHello with this SNI
    /// is terminated) [default: the certificate's first DNS SAN]
    #[arg(
        long,
        env = "PORTCULLIS_IDENTITY_NAME",
        value_name = "NAME",
        requires = "identity_cert"
    )]
    pub identity_name: Option<String>,

    /// Protocol detection limit: a client that has not sent a recognizable TLS ClientHello or
    /// HTTP request by then is handled as opaque TCP (bytes read so far are forwarded)
    /// [default: 10s]
    #[arg(long, env = "PORTCULLIS_DETECT_TIMEOUT", value_parser = parse_duration, default_value = "10s", hide_default_value = true)]
    pub detect_timeout: Duration,

    /// Most inbound connections open at once; further connections are closed at accept and
    /// counted in inbound_tcp_refused_total [default: 20000]
    #[arg(
        long,
        env = "PORTCULLIS_MAX_CONNECTIONS",
        default_value_t = 20_000,
        hide_default_value = true
    )]
    pub max_connections: usize,

    /// How long connecting to the application may take before the client gets a 502 or a
    /// closed connection [default: 1s]
    #[arg(long, env = "PORTCULLIS_APP_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "1s", hide_default_value = true)]
    pub app_connect_timeout: Duration,

    /// Largest HTTP/1 request head (request line and headers); larger gets 431 [default: 65536]
    #[arg(long, env = "PORTCULLIS_HTTP1_MAX_HEAD_BYTES", default_value_t = 64 * 1024, hide_default_value = true)]
    pub http1_max_head_bytes: usize,

    /// Time an HTTP/1 client has to send a complete request head once its first byte arrived
    /// (idle keep-alive connections are `--http-idle-timeout`'s). Requests handed to hyper
    /// (upgrades, chunked or large bodies...) count it from the connection's start or the end
    /// of the previous response [default: 30s]
    #[arg(long, env = "PORTCULLIS_HTTP_HEADER_READ_TIMEOUT", value_parser = parse_duration, default_value = "30s", hide_default_value = true)]
    pub http_header_read_timeout: Duration,

    /// An HTTP connection with no request in flight for this long is closed gracefully
    /// (HTTP/2 gets GOAWAY) [default: 5m]
    #[arg(long, env = "PORTCULLIS_HTTP_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "5m", hide_default_value = true)]
    pub http_idle_timeout: Duration,

    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients [default: 100]
    #[arg(
        long,
        env = "PORTCULLIS_HTTP2_MAX_CONCURRENT_STREAMS",
        default_value_t = 100,
        hide_default_value = true
    )]
    pub http2_max_concurrent_streams: u32,

    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE; a larger request header block gets 431
    /// [default: 65536]
    #[arg(long, env = "PORTCULLIS_HTTP2_MAX_HEADER_LIST_BYTES", default_value_t = 64 * 1024, hide_default_value = true)]
    pub http2_max_header_list_bytes: u32,

    /// HTTP/2 streams a client may reset before their response (less one per stream served);
    /// more closes the connection with ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487)
    /// [default: 20]
    #[arg(
        long,
        env = "PORTCULLIS_HTTP2_MAX_PENDING_ACCEPT_RESETS",
        default_value_t = 20,
        hide_default_value = true
    )]
    pub http2_max_pending_accept_resets: usize,

    /// HTTP/2 streams the proxy may reset because of client protocol errors before it closes
    /// the connection [default: 1024]
    #[arg(
        long,
        env = "PORTCULLIS_HTTP2_MAX_LOCAL_ERROR_RESETS",
        default_value_t = 1024,
        hide_default_value = true
    )]
    pub http2_max_local_error_resets: usize,

    /// On SIGTERM: how long in-flight requests and connections may drain before exit
    /// [default: 30s]
    #[arg(long, env = "PORTCULLIS_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "30s", hide_default_value = true)]
    pub shutdown_grace: Duration,

    /// CPU scheduling policy of the proxy's threads: batch (its wake-ups do not preempt
    /// the task running on the core, typically the app finishing a batch of requests;
    /// measured in benches/RESULTS.md) or normal [default: batch]
    #[arg(
        long,
        env = "PORTCULLIS_CPU_SCHEDULING",
        value_enum,
        default_value = "batch",
        hide_default_value = true
    )]
    pub cpu_scheduling: CpuScheduling,

    /// How opaque bytes of a plain (not TLS) client move: copy (through a small
    /// buffer held only while bytes flow) or splice (inside the kernel, splice(2));
    /// which is faster depends on the CPU (benches/RESULTS.md) [default: copy]
    #[arg(
        long,
        env = "PORTCULLIS_OPAQUE_TRANSFER",
        value_enum,
        default_value = "copy",
        hide_default_value = true
    )]
    pub opaque_transfer: OpaqueTransfer,

    /// Log format: plain or json (filter with PORTCULLIS_LOG, default info) [default: plain]
    #[arg(
        long,
        env = "PORTCULLIS_LOG_FORMAT",
        value_enum,
        default_value = "plain",
        hide_default_value = true
    )]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

/// `--cpu-scheduling`: the Linux scheduling policy of every proxy thread.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuScheduling {
    /// `SCHED_BATCH`
    Batch,
    /// `SCHED_OTHER`, the kernel's default
    Normal,
}

/// `--opaque-transfer`: how a plain client's opaque bytes move.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpaqueTransfer {
    /// read(2)/write(2) through a buffer held while bytes flow
    Copy,
    /// splice(2) through a pipe per direction
    Splice,
}

/// One `--map LISTEN_ADDR=PORT`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortMap {
    pub listen: SocketAddr,
    pub port: u16,
}

impl FromStr for PortMap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (listen, port) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?} is not LISTEN_ADDR=PORT"))?;
        let listen = listen
            .trim()
            .parse()
            .map_err(|e| format!("{s:?}: listen address {listen:?}: {e}"))?;
        let port = port
            .trim()
            .parse()
            .map_err(|e| format!("{s:?}: port {port:?}: {e}"))?;
        Ok(PortMap { listen, port })
    }
}

/// Durations are shown as they are written on the command line (`10s`).
fn human<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 10s, 500ms)"))
}

/// Where the policy comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PolicySource {
    /// Neither `--policy-file` nor `--policy-controller`: the default policy on every port.
    None,
    File {
        path: PathBuf,
        workload: String,
    },
    /// `--policy-controller`: one `WatchPort` stream per port of `workload`.
    Controller {
        url: String,
        workload: String,
        /// `--policy-timeout`.
        #[serde(serialize_with = "human")]
        policy_timeout: Duration,
        /// `--inbound-ports`: watched from the start.
        inbound_ports: Vec<u16>,
    },
}

/// The validated configuration the proxy runs with (shown at startup and on `/config`).
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub inbound_addr: SocketAddr,
    pub maps: Vec<PortMap>,
    pub app_addr: IpAddr,
    pub admin_addr: SocketAddr,
    pub source: PolicySource,
    pub policy: PolicyConfig,
    /// The mesh identity files; `None`: no mTLS termination (all TLS passes through).
    pub identity: Option<IdentityConfig>,
    #[serde(serialize_with = "human")]
    pub detect_timeout: Duration,
    pub max_connections: usize,
    #[serde(serialize_with = "human")]
    pub app_connect_timeout: Duration,
    pub http: HttpLimits,
    #[serde(serialize_with = "human")]
    pub shutdown_grace: Duration,
    pub cpu_scheduling: CpuScheduling,
    pub opaque_transfer: OpaqueTransfer,
    pub log_format: LogFormat,
}

/// The HTTP server limits (see the flags of the same names).
#[derive(Clone, Debug, Serialize)]
pub struct HttpLimits {
    pub http1_max_head_bytes: usize,
    #[serde(serialize_with = "human")]
    pub header_read_timeout: Duration,
    #[serde(serialize_with = "human")]
    pub idle_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    pub http2_max_header_list_bytes: u32,
    pub http2_max_pending_accept_resets: usize,
    pub http2_max_local_error_resets: usize,
}

/// A configuration that clap accepted but that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--policy-file and --policy-controller need --workload NAMESPACE/POD (the pod whose policy to use)")]
    WorkloadMissing,
    #[error("--policy-controller {0:?}: expected http://HOST:PORT")]
    ControllerUrl(String),
    #[error("--workload {0:?} is not NAMESPACE/POD")]
    WorkloadInvalid(String),
    #[error("--map {listen}={port}: port {port} is the inbound port; it would loop")]
    MapLoops { listen: SocketAddr, port: u16 },
    #[error("--map port 0 is not a port")]
    MapPortZero,
    #[error("listen address {0} is used twice (--inbound-addr, --admin-addr, --map)")]
    AddrReused(SocketAddr),
    #[error("--{flag} must be at least {min}")]
    TooSmall { flag: &'static str, min: u64 },
}

impl Args {
    /// Checks what clap cannot and builds the [`Config`].
    pub fn validate(self) -> Result<Config, ConfigError> {
        let source = match (&self.policy_file, &self.policy_controller) {
            (_, Some(url)) => {
                let workload = self.workload.clone().ok_or(ConfigError::WorkloadMissing)?;
                // The client names the pod to the controller: it must be a
                // Kubernetes name, not just two non-empty halves.
                if workload
                    .parse::<portcullis_policy::client::Workload>()
                    .is_err()
                {
                    return Err(ConfigError::WorkloadInvalid(workload));
                }
                let bare = url.strip_prefix("http://").unwrap_or(url);
                if (url.contains("://") && !url.starts_with("http://")) || bare.is_empty() {
                    return Err(ConfigError::ControllerUrl(url.clone()));
                }
                PolicySource::Controller {
                    url: url.clone(),
                    workload,
                    policy_timeout: self.policy_timeout,
                    inbound_ports: self.inbound_ports.clone(),
                }
            }
            (Some(path), None) => {
                let workload = self.workload.clone().ok_or(ConfigError::WorkloadMissing)?;
                PolicySource::File {
                    path: path.clone(),
                    workload,
                }
            }
            (None, None) => PolicySource::None,
        };
        if let Some(w) = &self.workload {
            match w.split_once('/') {
                Some((ns, pod)) if !ns.is_empty() && !pod.is_empty() && !pod.contains('/') => {}
                _ => return Err(ConfigError::WorkloadInvalid(w.clone())),
            }
        }

        let mut addrs = BTreeSet::from([self.inbound_addr]);
        if !addrs.insert(self.admin_addr) && self.admin_addr.port() != 0 {
            return Err(ConfigError::AddrReused(self.admin_addr));
        }
        for m in &self.maps {
            if m.port == 0 {
                return Err(ConfigError::MapPortZero);
            }
            if m.port == self.inbound_addr.port() {
                return Err(ConfigError::MapLoops {
                    listen: m.listen,
                    port: m.port,
                });
            }
            if !addrs.insert(m.listen) && m.listen.port() != 0 {
                return Err(ConfigError::AddrReused(m.listen));
            }
        }

        let min = |flag, value: u64, min: u64| {
            if value < min {
                Err(ConfigError::TooSmall { flag, min })
            } else {
                Ok(())
            }
        };
        min("max-connections", self.max_connections as u64, 1)?;
        min(
            "http1-max-head-bytes",
            self.http1_max_head_bytes as u64,
            1024,
        )?;
        min(
            "http2-max-concurrent-streams",
            self.http2_max_concurrent_streams.into(),
            1,
        )?;
        min(
            "http2-max-header-list-bytes",
            self.http2_max_header_list_bytes.into(),
            1024,
        )?;
        min("detect-timeout", self.detect_timeout.as_millis() as u64, 1)?;
        min(
            "http-header-read-timeout",
            self.http_header_read_timeout.as_millis() as u64,
            1,
        )?;
        min(
            "http-idle-timeout",
            self.http_idle_timeout.as_millis() as u64,
            1,
        )?;
        min(
            "app-connect-timeout",
            self.app_connect_timeout.as_millis() as u64,
            1,
        )?;

        Ok(Config {
            inbound_addr: self.inbound_addr,
            maps: self.maps,
            app_addr: self.app_addr,
            admin_addr: self.admin_addr,
            source,
            policy: self.policy.config(),
            identity: match (
                self.identity_trust_anchors,
                self.identity_cert,
                self.identity_key,
            ) {
                (Some(trust_anchors), Some(cert), Some(key)) => Some(IdentityConfig {
                    trust_anchors,
                    cert,
                    key,
                    name: self.identity_name,
                }),
                // clap's `requires_all` makes them all-or-none.
                _ => None,
            },
            detect_timeout: self.detect_timeout,
            max_connections: self.max_connections,
            app_connect_timeout: self.app_connect_timeout,
            http: HttpLimits {
                http1_max_head_bytes: self.http1_max_head_bytes,
                header_read_timeout: self.http_header_read_timeout,
                idle_timeout: self.http_idle_timeout,
                http2_max_concurrent_streams: self.http2_max_concurrent_streams,
                http2_max_header_list_bytes: self.http2_max_header_list_bytes,
                http2_max_pending_accept_resets: self.http2_max_pending_accept_resets,
                http2_max_local_error_resets: self.http2_max_local_error_resets,
            },
            shutdown_grace: self.shutdown_grace,
            cpu_scheduling: self.cpu_scheduling,
            opaque_transfer: self.opaque_transfer,
            log_format: self.log_format,
        })
    }
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySource::None => f.write_str("none (default policy on every port)"),
            PolicySource::File { path, workload } => {
                write!(f, "file {} for {workload}", path.display())
            }
            PolicySource::Controller { url, workload, .. } => {
                write!(f, "controller {url} for {workload}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["portcullis"];
        argv.extend_from_slice(args);
        let args = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
        args.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_design() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.inbound_addr, "0.0.0.0:4143".parse().unwrap());
        assert_eq!(c.admin_addr, "127.0.0.1:4191".parse().unwrap());
        assert_eq!(c.app_addr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(c.detect_timeout, Duration::from_secs(10));
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.policy, PolicyConfig::default());
        assert_eq!(c.source, PolicySource::None);
        assert_eq!(c.log_format, LogFormat::Plain);
        assert_eq!(c.cpu_scheduling, CpuScheduling::Batch);
        assert_eq!(c.opaque_transfer, OpaqueTransfer::Copy);
    }

    #[test]
    fn lists_durations_and_maps_parse() {
        let c = parse(&[
            "--map",
            "127.0.0.1:7000=8080,[::1]:7001=9090",
            "--map",
            "127.0.0.1:7002=80",
            "--opaque-ports",
            "3306,1000-1002",
            "--detect-timeout",
            "250ms",
            "--default-policy",
            "deny",
        ])
        .unwrap();
        assert_eq!(c.maps.len(), 3);
        assert_eq!(c.maps[1].listen, "[::1]:7001".parse().unwrap());
        assert_eq!(c.maps[1].port, 9090);
        assert_eq!(
            c.policy.opaque_ports,
            BTreeSet::from([1000, 1001, 1002, 3306])
        );
        assert_eq!(c.detect_timeout, Duration::from_millis(250));
        assert_eq!(
            c.policy.default_policy,
            portcullis_policy::DefaultPolicy::Deny
        );
    }

    #[test]
    fn a_controller_source_takes_its_flags() {
        let c = parse(&[
            "--policy-controller",
            "http://127.0.0.1:8090",
            "--workload",
            "shop/web-0",
            "--inbound-ports",
            "8080,9090",
            "--policy-timeout",
            "2s",
        ])
        .unwrap();
        assert_eq!(
            c.source,
            PolicySource::Controller {
                url: "http://127.0.0.1:8090".into(),
                workload: "shop/web-0".into(),
                policy_timeout: Duration::from_secs(2),
                inbound_ports: vec![8080, 9090],
            }
        );
        assert!(parse(&["--policy-controller", "127.0.0.1:8090", "--workload", "a/b"]).is_ok());
    }

    #[test]
    fn invalid_combinations_are_rejected() {
        assert!(parse(&["--policy-controller", "http://x"])
            .unwrap_err()
            .contains("--workload"));
        assert!(
            parse(&["--policy-controller", "https://x", "--workload", "ns/pod"])
                .unwrap_err()
                .contains("http://HOST:PORT")
        );
        assert!(
            parse(&["--policy-controller", "http://x", "--workload", "NS/pod"])
                .unwrap_err()
                .contains("NAMESPACE/POD")
        );
        assert!(parse(&["--policy-file", "x.yaml"])
            .unwrap_err()
            .contains("--workload"));
        assert!(parse(&["--policy-file", "x", "--workload", "nopod"])
            .unwrap_err()
            .contains("NAMESPACE/POD"));
        assert!(parse(&["--map", "127.0.0.1:7000=4143"])
            .unwrap_err()
            .contains("loop"));
        assert!(parse(&["--map", "127.0.0.1:7000=80,127.0.0.1:7000=81"])
            .unwrap_err()
            .contains("used twice"));
        assert!(parse(&["--map", "nonsense"]).is_err());
        assert!(parse(&["--opaque-ports", "9-3"]).is_err());
        assert!(parse(&["--detect-timeout", "soon"]).is_err());
        assert!(parse(&["--max-connections", "0"]).is_err());
        // The identity files come together.
        let err = parse(&["--identity-cert", "c.pem"]).unwrap_err();
        assert!(err.contains("--identity-trust-anchors"), "{err}");
        assert!(parse(&["--identity-name", "x"]).is_err());
    }

    #[test]
    fn identity_flags_and_variables() {
        let c = parse(&[
            "--identity-trust-anchors",
            "/id/ca.pem",
            "--identity-cert",
            "/id/crt.pem",
            "--identity-key",
            "/id/key.pem",
            "--identity-name",
            "web.ns.serviceaccount.identity.linkerd.cluster.local",
            "--identity-trust-domain",
            "example.org",
        ])
        .unwrap();
        let id = c.identity.unwrap();
        assert_eq!(id.trust_anchors, PathBuf::from("/id/ca.pem"));
        assert_eq!(id.cert, PathBuf::from("/id/crt.pem"));
        assert_eq!(id.key, PathBuf::from("/id/key.pem"));
        assert_eq!(
            id.name.as_deref(),
            Some("web.ns.serviceaccount.identity.linkerd.cluster.local")
        );
        assert_eq!(c.policy.trust_domain, "example.org");
        assert_eq!(parse(&[]).unwrap().identity, None);
    }
}
