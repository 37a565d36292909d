//! The policy model: plain data that every other part of Portcullis speaks.
//!
//! Resources (`resources`) compile into these types (`compile`), the controller
//! stream converts into them (`proto`), the decision function (`authorize`)
//! reads them and the proxy publishes them through the `PolicyTable` (`table`).
//! Nothing here does I/O; everything is `Clone + Send + Sync` and serializes to
//! JSON for the admin server's `/policy` page.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Serialize;

/// Linkerd's default identity domain: service-account identities are
/// `NAME.NAMESPACE.serviceaccount.identity.<domain>`.
pub const DEFAULT_IDENTITY_DOMAIN: &str = "linkerd.cluster.local";
/// Linkerd's default SPIFFE trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Linkerd's default cluster networks.
pub const DEFAULT_CLUSTER_NETWORKS: &str =
    "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8";
/// Linkerd's default opaque ports.
pub const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";

/// How inbound connections on a port are handled (`Server.spec.proxyProtocol`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub enum Protocol {
    /// `unknown`: detect TLS, HTTP/2, HTTP/1, else opaque.
    #[default]
    #[serde(rename = "unknown")]
    Detect,
    #[serde(rename = "HTTP/1")]
    Http1,
    #[serde(rename = "HTTP/2")]
    Http2,
    #[serde(rename = "gRPC")]
    Grpc,
    #[serde(rename = "opaque")]
    Opaque,
    /// The application terminates TLS itself; the proxy passes it through.
    #[serde(rename = "TLS")]
    Tls,
}

impl Protocol {
    /// The spelling used in resources and by Linkerd.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Detect => "unknown",
            Protocol::Http1 => "HTTP/1",
            Protocol::Http2 => "HTTP/2",
            Protocol::Grpc => "gRPC",
            Protocol::Opaque => "opaque",
            Protocol::Tls => "TLS",
        }
    }

    /// Every accepted spelling, for error messages.
    pub const NAMES: [&'static str; 6] = ["unknown", "HTTP/1", "HTTP/2", "gRPC", "opaque", "TLS"];
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "unknown" => Protocol::Detect,
            "HTTP/1" => Protocol::Http1,
            "HTTP/2" => Protocol::Http2,
            "gRPC" => Protocol::Grpc,
            "opaque" => Protocol::Opaque,
            "TLS" => Protocol::Tls,
            other => {
                return Err(format!(
                    "unknown proxyProtocol {other:?}; expected one of {}",
                    Protocol::NAMES.join(", ")
                ))
            }
        })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The policy that applies to a port no Server selects.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    #[default]
    AllUnauthenticated,
    AllAuthenticated,
    ClusterAuthenticated,
    ClusterUnauthenticated,
    Deny,
    /// Allow everything, and mark every allow as audited.
    Audit,
}

impl DefaultPolicy {
    pub fn as_str(&self) -> &'static str {
        match self {
            DefaultPolicy::AllUnauthenticated => "all-unauthenticated",
            DefaultPolicy::AllAuthenticated => "all-authenticated",
            DefaultPolicy::ClusterAuthenticated => "cluster-authenticated",
            DefaultPolicy::ClusterUnauthenticated => "cluster-unauthenticated",
            DefaultPolicy::Deny => "deny",
            DefaultPolicy::Audit => "audit",
        }
    }

    pub const NAMES: [&'static str; 6] = [
        "all-unauthenticated",
        "all-authenticated",
        "cluster-authenticated",
        "cluster-unauthenticated",
        "deny",
        "audit",
    ];
}

impl FromStr for DefaultPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "all-unauthenticated" => DefaultPolicy::AllUnauthenticated,
            "all-authenticated" => DefaultPolicy::AllAuthenticated,
            "cluster-authenticated" => DefaultPolicy::ClusterAuthenticated,
            "cluster-unauthenticated" => DefaultPolicy::ClusterUnauthenticated,
            "deny" => DefaultPolicy::Deny,
            "audit" => DefaultPolicy::Audit,
            other => {
                return Err(format!(
                    "unknown default policy {other:?}; expected one of {}",
                    DefaultPolicy::NAMES.join(", ")
                ))
            }
        })
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a policy object is, as Linkerd labels it (`group`, `kind`, `name`):
/// metrics labels (`srv_*`, `authz_*`, `route_*`), logs and `check` use it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Meta {
    /// A built-in policy: `kind="default"`, `name` = e.g. `all-unauthenticated`, `probe`.
    Default { name: String },
    /// A resource: e.g. `policy.linkerd.io` / `server` / `web-http`.
    Resource {
        group: String,
        kind: String,
        name: String,
    },
}

/// The API group of Linkerd's policy resources.
pub const POLICY_GROUP: &str = "policy.linkerd.io";

impl Meta {
    pub fn default(name: impl Into<String>) -> Self {
        Meta::Default { name: name.into() }
    }

    /// A resource in Linkerd's policy group, e.g. `Meta::policy("server", "web")`.
    pub fn policy(kind: impl Into<String>, name: impl Into<String>) -> Self {
        Meta::Resource {
            group: POLICY_GROUP.to_string(),
            kind: kind.into(),
            name: name.into(),
        }
    }

    pub fn group(&self) -> &str {
        match self {
            Meta::Default { .. } => "",
            Meta::Resource { group, .. } => group,
        }
    }

    pub fn kind(&self) -> &str {
        match self {
            Meta::Default { .. } => "default",
            Meta::Resource { kind, .. } => kind,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Meta::Default { name } | Meta::Resource { name, .. } => name,
        }
    }
}

impl fmt::Display for Meta {
    /// `kind/name`, e.g. `server/web-http` or `default/deny`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind(), self.name())
    }
}

/// A client network: `net` minus every `except`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Network {
    pub net: IpNet,
    pub except: Vec<IpNet>,
}

impl Network {
    pub fn new(net: IpNet) -> Self {
        Network {
            net,
            except: Vec::new(),
        }
    }

    /// Every IPv4 and IPv6 address.
    pub fn all() -> Vec<Network> {
        vec![
            Network::new("0.0.0.0/0".parse().expect("valid")),
            Network::new("::/0".parse().expect("valid")),
        ]
    }

    /// Whether the network admits `ip`, all read canonically (see
    /// [`canonical_net`]). An `except` of the other address family than the
    /// network would exclude nothing, so a network with one admits nothing:
    /// policy entry points reject such networks ([`Network::canonical`]); a
    /// hand-built one fails closed rather than widening access.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        let net = canonical_net(self.net);
        net.contains(&ip)
            && self.except.iter().all(|e| {
                let e = canonical_net(*e);
                same_family(&net, &e) && !e.contains(&ip)
            })
    }

    /// The network with its cidr and every `except` in canonical form
    /// ([`canonical_net`]), as policy entry points (resource validation, the
    /// controller's messages) store it. An `except` whose family then differs
    /// from the cidr's is an error: it would exclude nothing, which widens
    /// access.
    pub fn canonical(&self) -> Result<Network, MixedFamilies> {
        let net = canonical_net(self.net);
        let except = self
            .except
            .iter()
            .enumerate()
            .map(|(index, e)| {
                let e = canonical_net(*e);
                if same_family(&net, &e) {
                    Ok(e)
                } else {
                    Err(MixedFamilies {
                        index,
                        net,
                        except: e,
                    })
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Network { net, except })
    }
}

/// An `except` (at `index`) of the other address family than its network,
/// after both are read canonically: it would exclude nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("except {except} is not of the address family of cidr {net}, so it would exclude nothing")]
pub struct MixedFamilies {
    pub index: usize,
    pub net: IpNet,
    pub except: IpNet,
}

/// IPv4-mapped IPv6 networks of prefix 96 or longer (`::ffff:10.1.0.0/112`)
/// are the IPv4 network they carry (`10.1.0.0/16`), because mapped client
/// addresses are read as IPv4 ([`canonical_ip`]): written as IPv6 they would
/// never match. Host bits are cleared. Every other network is returned as it is.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(|n| IpNet::V4(n.trunc()))
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!(
        (a, b),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    )
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as a dual-stack listener
/// reports IPv4 clients) are matched as the IPv4 address they carry.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Which clients an authorization admits, by how they authenticated.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Authentication {
    /// Any client: plaintext, passthrough TLS, or meshed TLS.
    Unauthenticated,
    /// Meshed TLS terminated by the proxy, with or without a client certificate.
    TlsUnauthenticated,
    /// Meshed TLS with a verified client identity that is listed.
    TlsAuthenticated {
        /// Exact identities (DNS-form names or URIs).
        identities: BTreeSet<String>,
        /// Suffixes, without the leading `*.`: `emojivoto.serviceaccount.identity.linkerd.cluster.local`
        /// admits `web.emojivoto.serviceaccount...`. The empty suffix (from `*`) admits
        /// every authenticated client.
        suffixes: BTreeSet<String>,
    },
}

impl Authentication {
    /// `*`: every client with a verified identity.
    pub fn any_identity() -> Self {
        Authentication::TlsAuthenticated {
            identities: BTreeSet::new(),
            suffixes: BTreeSet::from([String::new()]),
        }
    }
}

/// One rule that admits clients to a port (or route).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Authorization {
    /// What granted it, e.g. `serverauthorization/web-public` or `default/all-unauthenticated`.
    pub meta: Meta,
    /// The client address must be in one of these; an empty list admits no address.
    pub networks: Vec<Network>,
    pub authentication: Authentication,
}

/// How a header value is matched.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "camelCase")]
pub enum HeaderValueMatch {
    Exact(String),
    /// A regular expression over the whole value (compiled by the matcher).
    Regex(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct HeaderMatch {
    /// Lower-case header name.
    pub name: String,
    pub value: HeaderValueMatch,
}

/// How a request path is matched (Gateway API semantics).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", content = "value", rename_all = "camelCase")]
pub enum PathMatch {
    Exact(String),
    /// Path-segment prefix: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    Prefix(String),
    Regex(String),
}

/// One way a request can match a route; every present field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct RouteMatch {
    pub path: Option<PathMatch>,
    /// Upper-case method, e.g. `GET`.
    pub method: Option<String>,
    pub headers: Vec<HeaderMatch>,
}

/// An HTTP route on a port with its own authorizations (kubelet probes,
/// later `HTTPRoute` + `AuthorizationPolicy`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct HttpRoute {
    /// E.g. `default/probe` or `httproute/web-get`.
    pub meta: Meta,
    /// The route applies when any match matches; empty matches everything.
    pub matches: Vec<RouteMatch>,
    pub authorizations: Vec<Authorization>,
}

/// Whether denials are enforced or only recorded.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    #[default]
    Enforce,
    /// Would-be denials are allowed and marked audited (the `audit` default policy).
    Audit,
}

/// Everything the proxy needs to decide about traffic to one port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortPolicy {
    pub port: u16,
    pub protocol: Protocol,
    /// The Server that selects the port, or `default/<policy>`.
    pub server: Meta,
    pub access: Access,
    /// Connection-level authorizations; for HTTP they also apply to every route.
    pub authorizations: Vec<Authorization>,
    /// HTTP routes. When empty, every HTTP request is checked against
    /// `authorizations`; when not, a request must match a route and is checked
    /// against that route's authorizations and the port's. When several
    /// routes match, the one with the most specific match wins (Gateway API
    /// precedence, see `authorize`); list order only breaks ties.
    pub http_routes: Vec<HttpRoute>,
}

impl PortPolicy {
    /// The policy of a port that no Server selects.
    pub fn for_default(
        port: u16,
        protocol: Protocol,
        default: DefaultPolicy,
        cluster_networks: &[Network],
    ) -> Self {
        let authz = |networks: Vec<Network>, authentication| Authorization {
            meta: Meta::default(default.as_str()),
            networks,
            authentication,
        };
        let authorizations = match default {
            DefaultPolicy::AllUnauthenticated | DefaultPolicy::Audit => {
                vec![authz(Network::all(), Authentication::Unauthenticated)]
            }
            DefaultPolicy::ClusterUnauthenticated => vec![authz(
                cluster_networks.to_vec(),
                Authentication::Unauthenticated,
            )],
            DefaultPolicy::AllAuthenticated => {
                vec![authz(Network::all(), Authentication::any_identity())]
            }
            DefaultPolicy::ClusterAuthenticated => vec![authz(
                cluster_networks.to_vec(),
                Authentication::any_identity(),
            )],
            DefaultPolicy::Deny => Vec::new(),
        };
        PortPolicy {
            port,
            protocol,
            server: Meta::default(default.as_str()),
            access: if default == DefaultPolicy::Audit {
                Access::Audit
            } else {
                Access::Enforce
            },
            authorizations,
            http_routes: Vec::new(),
        }
    }
}

/// Settings that shape compiled policy and how identities are read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyConfig {
    /// `--default-policy` (default `all-unauthenticated`).
    pub default_policy: DefaultPolicy,
    /// `--cluster-networks` (default [`DEFAULT_CLUSTER_NETWORKS`]).
    pub cluster_networks: Vec<Network>,
    /// `--opaque-ports` (default [`DEFAULT_OPAQUE_PORTS`]).
    pub opaque_ports: BTreeSet<u16>,
    /// `--identity-domain` (default `linkerd.cluster.local`).
    pub identity_domain: String,
    /// `--identity-trust-domain` (default `cluster.local`).
    pub trust_domain: String,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            default_policy: DefaultPolicy::AllUnauthenticated,
            cluster_networks: DEFAULT_CLUSTER_NETWORKS
                .split(',')
                .map(|n| Network::new(n.parse().expect("valid default network")))
                .collect(),
            opaque_ports: DEFAULT_OPAQUE_PORTS
                .split(',')
                .map(|p| p.parse().expect("valid default port"))
                .collect(),
            identity_domain: DEFAULT_IDENTITY_DOMAIN.to_string(),
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
        }
    }
}

impl PolicyConfig {
    /// The service-account identity in Linkerd's DNS form.
    pub fn service_account_identity(&self, name: &str, namespace: &str) -> String {
        format!(
            "{name}.{namespace}.serviceaccount.identity.{}",
            self.identity_domain
        )
    }

    /// The policy of a port with no compiled policy at all (no Server, no pod
    /// information): the configured default, opaque when the port is listed.
    pub fn fallback_port(&self, port: u16) -> PortPolicy {
        let protocol = if self.opaque_ports.contains(&port) {
            Protocol::Opaque
        } else {
            Protocol::Detect
        };
        PortPolicy::for_default(port, protocol, self.default_policy, &self.cluster_networks)
    }
}

/// A verified client identity as the decision function sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ClientIdentity {
    /// As presented in the certificate: a DNS name or a URI (e.g. a SPIFFE ID).
    pub presented: String,
    /// The DNS form used for service-account, suffix and `*` matching: the
    /// presented DNS name, or the Linkerd identity of a SPIFFE ID in our trust
    /// domain. `None` for other URIs, which match only exact entries.
    pub dns: Option<String>,
}

impl ClientIdentity {
    /// Reads `presented` with the unification rule of DESIGN.md:
    /// `spiffe://TRUST_DOMAIN/ns/NS/sa/NAME` is `NAME.NS.serviceaccount.identity.DOMAIN`.
    pub fn new(presented: impl Into<String>, config: &PolicyConfig) -> Self {
        let presented = presented.into();
        let dns = if let Some(rest) = presented.strip_prefix("spiffe://") {
            let mut parts = rest.split('/');
            match (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) {
                (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None)
                    if td == config.trust_domain && is_dns_label(ns) && is_dns_label(sa) =>
                {
                    Some(config.service_account_identity(sa, ns))
                }
                _ => None,
            }
        } else if presented.contains(':') || presented.contains('/') {
            None
        } else {
            Some(presented.clone())
        };
        ClientIdentity { presented, dns }
    }
}

/// A Kubernetes-style name segment: lower-case alphanumerics, `-` and `.` inside.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

/// How the client reached the proxy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ClientTls {
    /// Plaintext, or TLS not for the proxy (passed through to the app).
    None,
    /// Meshed TLS terminated by the proxy; `identity` is `None` when the client
    /// sent no certificate.
    Mesh { identity: Option<ClientIdentity> },
}

/// The client of one connection, as the decision function sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Client {
    pub addr: IpAddr,
    pub tls: ClientTls,
}

/// The parts of an HTTP request that policy can look at.
#[derive(Copy, Clone, Debug)]
pub struct HttpRequest<'a> {
    pub method: &'a http::Method,
    /// The path without the query string.
    pub path: &'a str,
    pub headers: &'a dyn RequestHeaders,
}

/// Request headers as policy reads them: hyper's `HeaderMap`, or a parsed
/// HTTP/1 head the proxy did not copy into one.
pub trait RequestHeaders: std::fmt::Debug {
    /// Whether some value of the header `name` satisfies `f`.
    fn any_value(&self, name: &http::HeaderName, f: &mut dyn FnMut(&[u8]) -> bool) -> bool;
}

impl RequestHeaders for http::HeaderMap {
    fn any_value(&self, name: &http::HeaderName, f: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        self.get_all(name).iter().any(|v| f(v.as_bytes()))
    }
}

/// The compiled policy of one workload (pod): what the file source publishes
/// and what the controller serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkloadPolicy {
    /// `namespace/pod`.
    pub workload: String,
    /// Every port that a Server selects, the pod declares, or a probe uses.
    pub ports: BTreeMap<u16, PortPolicy>,
    /// For ports not in `ports`: the default policy in force for this pod
    /// (after annotations) and its opaque ports.
    pub default_policy: DefaultPolicy,
    pub opaque_ports: BTreeSet<u16>,
    pub cluster_networks: Vec<Network>,
}

impl WorkloadPolicy {
    /// The policy of any port of this workload.
    pub fn port(&self, port: u16) -> PortPolicy {
        if let Some(p) = self.ports.get(&port) {
            return p.clone();
        }
        let protocol = if self.opaque_ports.contains(&port) {
            Protocol::Opaque
        } else {
            Protocol::Detect
        };
        PortPolicy::for_default(port, protocol, self.default_policy, &self.cluster_networks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_of_our_trust_domain_unify_with_service_accounts() {
        let cfg = PolicyConfig::default();
        let id = ClientIdentity::new("spiffe://cluster.local/ns/emojivoto/sa/web", &cfg);
        assert_eq!(
            id.dns.as_deref(),
            Some("web.emojivoto.serviceaccount.identity.linkerd.cluster.local")
        );
        let other = ClientIdentity::new("spiffe://example.org/ns/emojivoto/sa/web", &cfg);
        assert_eq!(other.dns, None);
        let extra = ClientIdentity::new("spiffe://cluster.local/ns/a/sa/b/c", &cfg);
        assert_eq!(extra.dns, None);
        let dns = ClientIdentity::new("web.emojivoto.serviceaccount.identity.x", &cfg);
        assert_eq!(
            dns.dns.as_deref(),
            Some("web.emojivoto.serviceaccount.identity.x")
        );
    }

    #[test]
    fn networks_exclude_excepts_and_read_mapped_ipv4() {
        let n = Network {
            net: "10.0.0.0/8".parse().unwrap(),
            except: vec!["10.1.0.0/16".parse().unwrap()],
        };
        assert!(n.contains("10.2.3.4".parse().unwrap()));
        assert!(!n.contains("10.1.3.4".parse().unwrap()));
        assert!(n.contains("::ffff:10.2.3.4".parse().unwrap()));
        assert!(!n.contains("192.168.0.1".parse().unwrap()));
    }

    #[test]
    fn mapped_networks_read_as_ipv4() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(
            canonical_net(net("::ffff:10.1.0.0/112")),
            net("10.1.0.0/16")
        );
        assert_eq!(canonical_net(net("::ffff:0:0/96")), net("0.0.0.0/0"));
        assert_eq!(
            canonical_net(net("::ffff:10.1.2.3/128")),
            net("10.1.2.3/32")
        );
        // Host bits cleared, as everywhere else.
        assert_eq!(canonical_net(net("::ffff:10.1.2.3/104")), net("10.0.0.0/8"));
        // Shorter than /96 it also holds non-mapped addresses: left as IPv6.
        assert_eq!(canonical_net(net("::ffff:0:0/95")), net("::ffff:0:0/95"));
        assert_eq!(canonical_net(net("fd00::/8")), net("fd00::/8"));
        assert_eq!(canonical_net(net("10.0.0.0/8")), net("10.0.0.0/8"));

        let n = Network {
            net: net("10.0.0.0/8"),
            except: vec![net("::ffff:10.1.0.0/112")],
        };
        assert!(!n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(n.contains("10.2.0.1".parse().unwrap()));
        assert_eq!(
            n.canonical(),
            Ok(Network {
                net: net("10.0.0.0/8"),
                except: vec![net("10.1.0.0/16")],
            })
        );
        let mapped_cidr = Network::new(net("::ffff:10.0.0.0/104"));
        assert!(mapped_cidr.contains("10.9.9.9".parse().unwrap()));
        assert!(mapped_cidr.contains("::ffff:10.9.9.9".parse().unwrap()));
        assert!(!mapped_cidr.contains("11.0.0.1".parse().unwrap()));
    }

    #[test]
    fn an_except_of_the_other_family_is_an_error_and_admits_nothing() {
        let n = Network {
            net: "0.0.0.0/0".parse().unwrap(),
            except: vec!["10.1.0.0/16".parse().unwrap(), "fd00::/8".parse().unwrap()],
        };
        let err = n.canonical().unwrap_err();
        assert_eq!(err.index, 1);
        assert!(err.to_string().contains("would exclude nothing"), "{err}");
        // Hand-built anyway: fail closed.
        assert!(!n.contains("192.168.0.1".parse().unwrap()));
        // `::/0` never held IPv4 clients, so a mapped except excludes nothing there.
        let v6 = Network {
            net: "::/0".parse().unwrap(),
            except: vec!["::ffff:10.0.0.0/104".parse().unwrap()],
        };
        assert_eq!(v6.canonical().unwrap_err().index, 0);
    }

    #[test]
    fn default_policies_name_themselves() {
        let cfg = PolicyConfig::default();
        let p = PortPolicy::for_default(
            8080,
            Protocol::Detect,
            DefaultPolicy::Deny,
            &cfg.cluster_networks,
        );
        assert!(p.authorizations.is_empty());
        assert_eq!(p.server, Meta::default("deny"));
        let a = cfg.fallback_port(3306);
        assert_eq!(a.protocol, Protocol::Opaque);
        assert_eq!(
            a.authorizations[0].meta.to_string(),
            "default/all-unauthenticated"
        );
    }
}
