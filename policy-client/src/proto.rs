//! Linkerd's inbound policy API on the wire: conversions between the protobuf
//! types of `linkerd2-proxy-api` (`pb::…`) and our plain policy model.
//!
//! This is the ONLY module where protobuf types appear. Everything else speaks
//! [`PortPolicy`] and friends. Decoding (`TryFrom<pb::…>`) is used by the stream
//! client (`client`) on every message from a controller; encoding (`TryFrom<&PortPolicy>
//! for pb::Server`) by `portcullis-controller` when it serves the API.
//!
//! Rules this module keeps:
//! - Messages are destructured field by field, so a new field in a new version
//!   of the API breaks the build here instead of being silently dropped.
//! - Decoding fails closed: anything we cannot enforce exactly (a missing or
//!   unknown protocol, a bad network, an empty identity, host or query
//!   matching, route filters, rate limits) is an [`InvalidServer`] naming the
//!   field. The caller then denies the port (see [`invalid_policy`]); nothing
//!   is ever dropped in a way that could widen access.
//! - Labels follow Linkerd: a Server is `group`/`kind`/`name` =
//!   `policy.linkerd.io`/`server`/NAME, or `""`/`default`/POLICY; authorizations
//!   carry `metadata` (and the older `labels`, for older proxies).
//! - Audit mode travels as Linkerd sends it: an extra authorization named
//!   `default/audit` admitting everyone. [`Access::Audit`] on our side.
//!
//! Round trip: for every policy the compiler can produce, decoding the encoding
//! gives back the same policy (property-tested below). Details outside that
//! domain: routes on `opaque`/`TLS` ports are not sent (those ports never look
//! at HTTP), a `Meta::Resource` that looks like a default (`""`/`default`) comes
//! back as `Meta::Default`, and the detect timeout is not carried (the proxy's
//! `--detect-timeout` applies).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::model::{
    Access, Authentication, Authorization, HeaderMatch, HeaderValueMatch, HttpRoute, Meta, Network,
    PathMatch, PortPolicy, Protocol, RouteMatch, POLICY_GROUP,
};

/// The generated protobuf types, always named through this alias (`pb::Server`)
/// so they are never confused with ours.
pub mod pb {
    /// gRPC request matches (the crate's `grpc_route` package).
    pub use linkerd2_proxy_api::grpc_route as grpc_match;
    /// Gateway-API-style HTTP request matches (the crate's `http_route` package).
    pub use linkerd2_proxy_api::http_route as http_match;
    pub use linkerd2_proxy_api::inbound::*;
    /// The generated client and server of `io.linkerd.proxy.inbound.InboundServerPolicies`.
    pub use linkerd2_proxy_api::inbound::{
        inbound_server_policies_client as client, inbound_server_policies_server as server,
    };
    pub use linkerd2_proxy_api::{http_types, meta, net};
}

/// The detect timeout we send: Linkerd's default, and our proxy's `--detect-timeout` default.
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The name of Linkerd's audit authorization (`default/audit`).
const AUDIT: &str = "audit";

/// The policy of a port whose last message could not be used: it denies every
/// client (no authorizations) and names itself `default/invalid`, as Linkerd's
/// proxy does, so metrics and logs show why.
pub fn invalid_policy(port: u16) -> PortPolicy {
    PortPolicy {
        port,
        protocol: Protocol::Detect,
        server: Meta::default("invalid"),
        access: Access::Enforce,
        authorizations: Vec::new(),
        http_routes: Vec::new(),
    }
}

// === errors ===

/// A `Server` message (or part of one) that cannot be enforced as sent. The
/// controller's fault; the port denies until a good message arrives.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid server policy from the controller: {field}: {problem}")]
pub struct InvalidServer {
    /// Where in the message, e.g. `authorizations[1].networks[0].net`.
    pub field: String,
    pub problem: Problem,
}

/// What is wrong with a field of a `Server` message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Protobuf decodes a oneof variant it does not know as absent, so the two
    /// cannot be told apart.
    #[error("missing (or a variant this proxy does not know)")]
    Missing,
    #[error("invalid network: {0}")]
    Network(String),
    #[error("empty identity")]
    EmptyIdentity,
    #[error("identity suffix has an empty label")]
    EmptySuffixLabel,
    #[error("route has no rules")]
    NoRules,
    /// A feature we do not enforce; ignoring it could change who gets in.
    #[error("not supported by this proxy: {0}")]
    Unsupported(&'static str),
    #[error("{0}")]
    Invalid(String),
}

impl InvalidServer {
    fn new(field: impl Into<String>, problem: Problem) -> Self {
        InvalidServer {
            field: field.into(),
            problem,
        }
    }

    /// Prefixes the field path with the enclosing field.
    fn within(self, outer: impl fmt::Display) -> Self {
        let field = if self.field.is_empty() {
            outer.to_string()
        } else if self.field.starts_with('[') {
            format!("{outer}{}", self.field)
        } else {
            format!("{outer}.{}", self.field)
        };
        InvalidServer { field, ..self }
    }
}

/// A compiled policy that Linkerd's API cannot express (our fault, or the
/// compiler's): the controller serves [`invalid_policy`] for that port instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("port {port}: route {route}: {reason}")]
pub struct UnencodablePolicy {
    pub port: u16,
    pub route: String,
    pub reason: &'static str,
}

/// Collects `items` converted by `f`, naming the index of the first failure.
fn convert_all<T, U>(
    field: &str,
    items: Vec<T>,
    f: impl Fn(T) -> Result<U, InvalidServer>,
) -> Result<Vec<U>, InvalidServer> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| f(item).map_err(|e| e.within(format!("{field}[{i}]"))))
        .collect()
}

// === decoding: pb -> plain ===

impl TryFrom<(u16, pb::Server)> for PortPolicy {
    type Error = InvalidServer;

    /// Decodes the `Server` sent for `port`.
    fn try_from((port, server): (u16, pb::Server)) -> Result<Self, InvalidServer> {
        let pb::Server {
            protocol,
            // The addresses the workload accepts on. Linkerd's proxy ignores
            // them too: we accept on the addresses we are configured with.
            server_ips: _,
            authorizations,
            labels,
        } = server;

        let server = server_meta(labels)?;
        let mut authorizations: Vec<Authorization> =
            convert_all("authorizations", authorizations, TryFrom::try_from)?;

        let pb::ProxyProtocol { kind } =
            protocol.ok_or_else(|| InvalidServer::new("protocol", Problem::Missing))?;
        let kind = kind.ok_or_else(|| InvalidServer::new("protocol.kind", Problem::Missing))?;
        use pb::proxy_protocol::Kind;
        let (protocol, http_routes) = match kind {
            Kind::Detect(pb::proxy_protocol::Detect {
                // Detection is bounded by the proxy's own `--detect-timeout`.
                timeout: _,
                http_routes,
                http_local_rate_limit,
            }) => {
                no_rate_limit(
                    "protocol.detect.http_local_rate_limit",
                    http_local_rate_limit,
                )?;
                let routes = convert_all("http_routes", http_routes, TryFrom::try_from)
                    .map_err(|e| e.within("protocol.detect"))?;
                (Protocol::Detect, routes)
            }
            Kind::Http1(pb::proxy_protocol::Http1 {
                routes,
                local_rate_limit,
            }) => {
                no_rate_limit("protocol.http1.local_rate_limit", local_rate_limit)?;
                let routes = convert_all("routes", routes, TryFrom::try_from)
                    .map_err(|e| e.within("protocol.http1"))?;
                (Protocol::Http1, routes)
            }
            Kind::Http2(pb::proxy_protocol::Http2 {
                routes,
                local_rate_limit,
            }) => {
                no_rate_limit("protocol.http2.local_rate_limit", local_rate_limit)?;
                let routes = convert_all("routes", routes, TryFrom::try_from)
                    .map_err(|e| e.within("protocol.http2"))?;
                (Protocol::Http2, routes)
            }
            Kind::Grpc(pb::proxy_protocol::Grpc { routes }) => {
                let routes = convert_all("routes", routes, TryFrom::try_from)
                    .map_err(|e| e.within("protocol.grpc"))?;
                (Protocol::Grpc, routes)
            }
            Kind::Opaque(pb::proxy_protocol::Opaque {}) => (Protocol::Opaque, Vec::new()),
            Kind::Tls(pb::proxy_protocol::Tls {}) => (Protocol::Tls, Vec::new()),
        };

        // Linkerd expresses audit mode as an extra authorization `default/audit`
        // that admits everyone; allows through it are would-be denials. We carry
        // that as `Access::Audit` (which marks them audited) and drop the extra
        // authorization, except on the `audit` default policy, whose only
        // authorization it is.
        let audit = authorizations.iter().any(|a| is_audit(&a.meta));
        if audit && !is_audit(&server) {
            authorizations.retain(|a| !is_audit(&a.meta));
        }

        Ok(PortPolicy {
            port,
            protocol,
            server,
            access: if audit {
                Access::Audit
            } else {
                Access::Enforce
            },
            authorizations,
            http_routes,
        })
    }
}

fn is_audit(meta: &Meta) -> bool {
    matches!(meta, Meta::Default { name } if name == AUDIT)
}

/// Rate limits are not enforced by Portcullis; an empty one is fine.
fn no_rate_limit(field: &str, limit: Option<pb::HttpLocalRateLimit>) -> Result<(), InvalidServer> {
    match limit {
        None => Ok(()),
        Some(pb::HttpLocalRateLimit {
            metadata: _,
            total: None,
            identity: None,
            overrides,
        }) if overrides.is_empty() => Ok(()),
        Some(_) => Err(InvalidServer::new(
            field,
            Problem::Unsupported("HTTP local rate limits"),
        )),
    }
}

/// A Server's `group`/`kind`/`name` labels, read as Linkerd's proxy reads them:
/// `name` is required, `group` defaults to `policy.linkerd.io`, `""`/`default`
/// is a default policy, and older controllers that send no `kind` encode it in
/// the name as `default:NAME` or `KIND:NAME`.
fn server_meta(labels: HashMap<String, String>) -> Result<Meta, InvalidServer> {
    meta_from_labels(labels, "server").map_err(|p| InvalidServer::new("labels.name", p))
}

fn meta_from_labels(
    mut labels: HashMap<String, String>,
    default_kind: &str,
) -> Result<Meta, Problem> {
    let name = labels.remove("name").ok_or(Problem::Missing)?;
    let group = labels
        .remove("group")
        .unwrap_or_else(|| POLICY_GROUP.to_string());
    if let Some(kind) = labels.remove("kind") {
        if group.is_empty() && kind == "default" {
            return Ok(Meta::Default { name });
        }
        return Ok(Meta::Resource { group, kind, name });
    }
    Ok(match name.split_once(':') {
        Some(("default", name)) => Meta::default(name),
        Some((kind, name)) => Meta::Resource {
            group,
            kind: kind.to_string(),
            name: name.to_string(),
        },
        None => Meta::Resource {
            group,
            kind: default_kind.to_string(),
            name,
        },
    })
}

impl TryFrom<pb::meta::Metadata> for Meta {
    type Error = InvalidServer;

    fn try_from(metadata: pb::meta::Metadata) -> Result<Self, InvalidServer> {
        let pb::meta::Metadata { kind } = metadata;
        match kind.ok_or_else(|| InvalidServer::new("kind", Problem::Missing))? {
            pb::meta::metadata::Kind::Default(name) => Ok(Meta::Default { name }),
            pb::meta::metadata::Kind::Resource(pb::meta::Resource {
                group,
                kind,
                name,
                // Inbound policy is per workload: namespace, section and port
                // of the referenced resource do not change a decision or a label.
                namespace: _,
                section: _,
                port: _,
            }) => {
                if group.is_empty() && kind == "default" {
                    return Ok(Meta::Default { name });
                }
                Ok(Meta::Resource { group, kind, name })
            }
        }
    }
}

impl TryFrom<pb::Authz> for Authorization {
    type Error = InvalidServer;

    fn try_from(authz: pb::Authz) -> Result<Self, InvalidServer> {
        let pb::Authz {
            networks,
            authentication,
            labels,
            metadata,
        } = authz;
        // An authorization without networks "must be ignored" (the API's
        // words): an empty network list admits no address, which is exactly that.
        let networks = convert_all("networks", networks, TryFrom::try_from)?;
        let authentication = authentication
            .ok_or_else(|| InvalidServer::new("authentication", Problem::Missing))
            .and_then(|a| Authentication::try_from(a).map_err(|e| e.within("authentication")))?;
        // `metadata` replaces the older free-form `labels`; use labels only
        // when a controller sends no metadata.
        let meta = match metadata {
            Some(m) => Meta::try_from(m).map_err(|e| e.within("metadata"))?,
            None => meta_from_labels(labels, "serverauthorization")
                .map_err(|p| InvalidServer::new("labels.name", p))?,
        };
        Ok(Authorization {
            meta,
            networks,
            authentication,
        })
    }
}

impl TryFrom<pb::Network> for Network {
    type Error = InvalidServer;

    fn try_from(network: pb::Network) -> Result<Self, InvalidServer> {
        let pb::Network { net, except } = network;
        let net = net
            .ok_or_else(|| InvalidServer::new("net", Problem::Missing))
            .and_then(|n| ip_net(n).map_err(|p| InvalidServer::new("net", p)))?;
        // An unparsable `except` is an error, never skipped: skipping it would
        // admit the addresses it excludes.
        let except = convert_all("except", except, |n| {
            ip_net(n).map_err(|p| InvalidServer::new("", p))
        })?;
        // Stored canonical (IPv4-mapped IPv6 nets as IPv4, as clients are
        // read); an `except` of the other family than `net` would exclude
        // nothing, which widens access: the message is invalid.
        Network { net, except }.canonical().map_err(|e| {
            InvalidServer::new(
                format!("except[{}]", e.index),
                Problem::Network(e.to_string()),
            )
        })
    }
}

fn ip_net(net: pb::net::IpNetwork) -> Result<ipnet::IpNet, Problem> {
    ipnet::IpNet::try_from(net).map_err(|e| Problem::Network(e.to_string()))
}

impl TryFrom<pb::Authn> for Authentication {
    type Error = InvalidServer;

    fn try_from(authn: pb::Authn) -> Result<Self, InvalidServer> {
        use pb::authn::permit_mesh_tls::{Clients, PermitClientIdentities};
        use pb::authn::{Permit, PermitMeshTls, PermitUnauthenticated};
        let pb::Authn { permit } = authn;
        match permit.ok_or_else(|| InvalidServer::new("permit", Problem::Missing))? {
            Permit::Unauthenticated(PermitUnauthenticated {}) => {
                Ok(Authentication::Unauthenticated)
            }
            Permit::MeshTls(PermitMeshTls { clients }) => {
                match clients.ok_or_else(|| {
                    InvalidServer::new("permit.mesh_tls.clients", Problem::Missing)
                })? {
                    Clients::Unauthenticated(PermitUnauthenticated {}) => {
                        Ok(Authentication::TlsUnauthenticated)
                    }
                    Clients::Identities(PermitClientIdentities {
                        identities,
                        suffixes,
                    }) => {
                        let identities = convert_all("identities", identities, |id| {
                            let pb::Identity { name } = id;
                            if name.is_empty() {
                                return Err(InvalidServer::new("name", Problem::EmptyIdentity));
                            }
                            Ok(name)
                        })
                        .map_err(|e| e.within("permit.mesh_tls.clients"))?;
                        let suffixes = convert_all("suffixes", suffixes, |s| {
                            let pb::IdentitySuffix { parts } = s;
                            if parts.iter().any(|p| p.is_empty()) {
                                return Err(InvalidServer::new("parts", Problem::EmptySuffixLabel));
                            }
                            // No parts is `*`: every authenticated client.
                            Ok(parts.join("."))
                        })
                        .map_err(|e| e.within("permit.mesh_tls.clients"))?;
                        Ok(Authentication::TlsAuthenticated {
                            identities: identities.into_iter().collect(),
                            suffixes: suffixes.into_iter().collect(),
                        })
                    }
                }
            }
        }
    }
}

impl TryFrom<pb::HttpRoute> for HttpRoute {
    type Error = InvalidServer;

    fn try_from(route: pb::HttpRoute) -> Result<Self, InvalidServer> {
        let pb::HttpRoute {
            metadata,
            hosts,
            authorizations,
            rules,
        } = route;
        let meta = route_meta(metadata)?;
        no_hosts(&hosts)?;
        let authorizations = convert_all("authorizations", authorizations, TryFrom::try_from)?;
        if rules.is_empty() {
            return Err(InvalidServer::new("rules", Problem::NoRules));
        }
        let rules = convert_all("rules", rules, |rule| {
            let pb::http_route::Rule { matches, filters } = rule;
            if !filters.is_empty() {
                return Err(InvalidServer::new(
                    "filters",
                    Problem::Unsupported("HTTP route filters"),
                ));
            }
            convert_all("matches", matches, TryFrom::try_from)
        })?;
        Ok(HttpRoute {
            meta,
            matches: flatten_rules(rules),
            authorizations,
        })
    }
}

impl TryFrom<pb::GrpcRoute> for HttpRoute {
    type Error = InvalidServer;

    fn try_from(route: pb::GrpcRoute) -> Result<Self, InvalidServer> {
        let pb::GrpcRoute {
            metadata,
            hosts,
            authorizations,
            rules,
        } = route;
        let meta = route_meta(metadata)?;
        no_hosts(&hosts)?;
        let authorizations = convert_all("authorizations", authorizations, TryFrom::try_from)?;
        if rules.is_empty() {
            return Err(InvalidServer::new("rules", Problem::NoRules));
        }
        let rules = convert_all("rules", rules, |rule| {
            let pb::grpc_route::Rule { matches, filters } = rule;
            if !filters.is_empty() {
                return Err(InvalidServer::new(
                    "filters",
                    Problem::Unsupported("gRPC route filters"),
                ));
            }
            convert_all("matches", matches, grpc_match)
        })?;
        Ok(HttpRoute {
            meta,
            matches: flatten_rules(rules),
            authorizations,
        })
    }
}

fn route_meta(metadata: Option<pb::meta::Metadata>) -> Result<Meta, InvalidServer> {
    metadata
        .ok_or_else(|| InvalidServer::new("metadata", Problem::Missing))
        .and_then(|m| Meta::try_from(m).map_err(|e| e.within("metadata")))
}

/// Host matching is not enforced by Portcullis; ignoring it would apply the
/// route (and its authorizations) to requests for any host.
fn no_hosts(hosts: &[pb::http_match::HostMatch]) -> Result<(), InvalidServer> {
    if hosts.is_empty() {
        Ok(())
    } else {
        Err(InvalidServer::new(
            "hosts",
            Problem::Unsupported("route host matching"),
        ))
    }
}

/// Every rule of one route shares its authorizations, so the route matches
/// when any match of any rule does. A rule without matches matches every
/// request (Gateway API), and so does a route with no matches in our model.
fn flatten_rules(rules: Vec<Vec<RouteMatch>>) -> Vec<RouteMatch> {
    if rules.iter().any(|matches| matches.is_empty()) {
        return Vec::new();
    }
    rules.into_iter().flatten().collect()
}

impl TryFrom<pb::http_match::HttpRouteMatch> for RouteMatch {
    type Error = InvalidServer;

    fn try_from(m: pb::http_match::HttpRouteMatch) -> Result<Self, InvalidServer> {
        let pb::http_match::HttpRouteMatch {
            path,
            headers,
            query_params,
            method,
        } = m;
        if !query_params.is_empty() {
            return Err(InvalidServer::new(
                "query_params",
                Problem::Unsupported("query parameter matching"),
            ));
        }
        let path = path
            .map(|p| {
                let pb::http_match::PathMatch { kind } = p;
                use pb::http_match::path_match::Kind;
                match kind.ok_or_else(|| InvalidServer::new("path.kind", Problem::Missing))? {
                    Kind::Exact(p) => Ok(PathMatch::Exact(p)),
                    Kind::Prefix(p) => Ok(PathMatch::Prefix(p)),
                    Kind::Regex(p) => Ok(PathMatch::Regex(p)),
                }
            })
            .transpose()?;
        let method = method
            .map(|m| {
                http::Method::try_from(m)
                    .map(|m| m.as_str().to_string())
                    .map_err(|e| InvalidServer::new("method", Problem::Invalid(e.to_string())))
            })
            .transpose()?;
        let headers = convert_all("headers", headers, TryFrom::try_from)?;
        Ok(RouteMatch {
            path,
            method,
            headers,
        })
    }
}

/// A gRPC match is a path match on `/SERVICE/METHOD`: both given is that exact
/// path, a service alone is every method of it (segment prefix).
fn grpc_match(m: pb::grpc_match::GrpcRouteMatch) -> Result<RouteMatch, InvalidServer> {
    let pb::grpc_match::GrpcRouteMatch { rpc, headers } = m;
    let path = match rpc {
        None => None,
        Some(pb::grpc_match::GrpcRpcMatch { service, method }) => {
            if service.contains('/') || method.contains('/') {
                return Err(InvalidServer::new(
                    "rpc",
                    Problem::Invalid("service and method must not contain '/'".into()),
                ));
            }
            match (service.is_empty(), method.is_empty()) {
                (true, true) => None,
                (false, false) => Some(PathMatch::Exact(format!("/{service}/{method}"))),
                (false, true) => Some(PathMatch::Prefix(format!("/{service}"))),
                (true, false) => {
                    return Err(InvalidServer::new(
                        "rpc",
                        Problem::Unsupported("a gRPC method match without a service"),
                    ))
                }
            }
        }
    };
    let headers = convert_all("headers", headers, TryFrom::try_from)?;
    Ok(RouteMatch {
        path,
        method: None,
        headers,
    })
}

impl TryFrom<pb::http_match::HeaderMatch> for HeaderMatch {
    type Error = InvalidServer;

    fn try_from(h: pb::http_match::HeaderMatch) -> Result<Self, InvalidServer> {
        let pb::http_match::HeaderMatch { name, value } = h;
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| {
                InvalidServer::new(
                    "name",
                    Problem::Invalid(format!("bad header name {name:?}")),
                )
            })?
            .as_str()
            .to_string();
        use pb::http_match::header_match::Value;
        let value = match value.ok_or_else(|| InvalidServer::new("value", Problem::Missing))? {
            Value::Exact(bytes) => {
                HeaderValueMatch::Exact(String::from_utf8(bytes).map_err(|_| {
                    InvalidServer::new(
                        "value",
                        Problem::Invalid("header value is not UTF-8".into()),
                    )
                })?)
            }
            Value::Regex(re) => HeaderValueMatch::Regex(re),
        };
        Ok(HeaderMatch { name, value })
    }
}

// === encoding: plain -> pb ===

impl TryFrom<&PortPolicy> for pb::Server {
    type Error = UnencodablePolicy;

    fn try_from(policy: &PortPolicy) -> Result<Self, UnencodablePolicy> {
        let PortPolicy {
            port,
            protocol,
            server,
            access,
            authorizations,
            http_routes,
        } = policy;
        let routes = || http_routes.iter().map(pb::HttpRoute::from).collect();
        use pb::proxy_protocol::Kind;
        let kind = match protocol {
            Protocol::Detect => Kind::Detect(pb::proxy_protocol::Detect {
                timeout: DETECT_TIMEOUT.try_into().ok(),
                http_routes: routes(),
                http_local_rate_limit: None,
            }),
            Protocol::Http1 => Kind::Http1(pb::proxy_protocol::Http1 {
                routes: routes(),
                local_rate_limit: None,
            }),
            Protocol::Http2 => Kind::Http2(pb::proxy_protocol::Http2 {
                routes: routes(),
                local_rate_limit: None,
            }),
            Protocol::Grpc => Kind::Grpc(pb::proxy_protocol::Grpc {
                routes: http_routes
                    .iter()
                    .map(|r| {
                        grpc_route(r).map_err(|reason| UnencodablePolicy {
                            port: *port,
                            route: r.meta.to_string(),
                            reason,
                        })
                    })
                    .collect::<Result<_, _>>()?,
            }),
            // No HTTP on these ports: routes would never be consulted.
            Protocol::Opaque => Kind::Opaque(pb::proxy_protocol::Opaque {}),
            Protocol::Tls => Kind::Tls(pb::proxy_protocol::Tls {}),
        };
        let mut authorizations: Vec<pb::Authz> =
            authorizations.iter().map(pb::Authz::from).collect();
        if *access == Access::Audit && !policy.authorizations.iter().any(|a| is_audit(&a.meta)) {
            authorizations.push(pb::Authz::from(&Authorization {
                meta: Meta::default(AUDIT),
                networks: Network::all(),
                authentication: Authentication::Unauthenticated,
            }));
        }
        Ok(pb::Server {
            protocol: Some(pb::ProxyProtocol { kind: Some(kind) }),
            server_ips: Vec::new(),
            authorizations,
            labels: labels(server),
        })
    }
}

/// Linkerd's `group`, `kind`, `name` labels.
fn labels(meta: &Meta) -> HashMap<String, String> {
    HashMap::from([
        ("group".to_string(), meta.group().to_string()),
        ("kind".to_string(), meta.kind().to_string()),
        ("name".to_string(), meta.name().to_string()),
    ])
}

impl From<&Meta> for pb::meta::Metadata {
    fn from(meta: &Meta) -> Self {
        use pb::meta::metadata::Kind;
        let kind = match meta {
            Meta::Default { name } => Kind::Default(name.clone()),
            Meta::Resource { group, kind, name } => Kind::Resource(pb::meta::Resource {
                group: group.clone(),
                kind: kind.clone(),
                name: name.clone(),
                namespace: String::new(),
                section: String::new(),
                port: 0,
            }),
        };
        pb::meta::Metadata { kind: Some(kind) }
    }
}

impl From<&Authorization> for pb::Authz {
    fn from(authz: &Authorization) -> Self {
        let Authorization {
            meta,
            networks,
            authentication,
        } = authz;
        pb::Authz {
            networks: networks.iter().map(pb::Network::from).collect(),
            authentication: Some(authentication.into()),
            // Older proxies read only labels.
            labels: labels(meta),
            metadata: Some(meta.into()),
        }
    }
}

impl From<&Network> for pb::Network {
    fn from(network: &Network) -> Self {
        let Network { net, except } = network;
        pb::Network {
            net: Some((*net).into()),
            except: except.iter().map(|e| (*e).into()).collect(),
        }
    }
}

impl From<&Authentication> for pb::Authn {
    fn from(authn: &Authentication) -> Self {
        use pb::authn::permit_mesh_tls::{Clients, PermitClientIdentities};
        use pb::authn::{Permit, PermitMeshTls, PermitUnauthenticated};
        let permit = match authn {
            Authentication::Unauthenticated => Permit::Unauthenticated(PermitUnauthenticated {}),
            Authentication::TlsUnauthenticated => Permit::MeshTls(PermitMeshTls {
                clients: Some(Clients::Unauthenticated(PermitUnauthenticated {})),
            }),
            Authentication::TlsAuthenticated {
                identities,
                suffixes,
            } => Permit::MeshTls(PermitMeshTls {
                clients: Some(Clients::Identities(PermitClientIdentities {
                    identities: identities
                        .iter()
                        .map(|name| pb::Identity { name: name.clone() })
                        .collect(),
                    suffixes: suffixes.iter().map(|s| suffix(s)).collect(),
                })),
            }),
        };
        pb::Authn {
            permit: Some(permit),
        }
    }
}

/// `a.b` is the parts `["a", "b"]`; the empty suffix (`*`) is no parts.
fn suffix(s: &str) -> pb::IdentitySuffix {
    let parts = if s.is_empty() {
        Vec::new()
    } else {
        s.split('.').map(str::to_string).collect()
    };
    pb::IdentitySuffix { parts }
}

impl From<&HttpRoute> for pb::HttpRoute {
    fn from(route: &HttpRoute) -> Self {
        let HttpRoute {
            meta,
            matches,
            authorizations,
        } = route;
        pb::HttpRoute {
            metadata: Some(meta.into()),
            hosts: Vec::new(),
            authorizations: authorizations.iter().map(pb::Authz::from).collect(),
            rules: vec![pb::http_route::Rule {
                matches: matches.iter().map(Into::into).collect(),
                filters: Vec::new(),
            }],
        }
    }
}

impl From<&RouteMatch> for pb::http_match::HttpRouteMatch {
    fn from(m: &RouteMatch) -> Self {
        let RouteMatch {
            path,
            method,
            headers,
        } = m;
        use pb::http_match::path_match::Kind;
        pb::http_match::HttpRouteMatch {
            path: path.as_ref().map(|p| pb::http_match::PathMatch {
                kind: Some(match p {
                    PathMatch::Exact(p) => Kind::Exact(p.clone()),
                    PathMatch::Prefix(p) => Kind::Prefix(p.clone()),
                    PathMatch::Regex(p) => Kind::Regex(p.clone()),
                }),
            }),
            headers: headers.iter().map(Into::into).collect(),
            query_params: Vec::new(),
            method: method
                .as_ref()
                .map(|m| match http::Method::from_bytes(m.as_bytes()) {
                    Ok(m) => m.into(),
                    // Not an HTTP token: send it as it is; a proxy will reject it.
                    Err(_) => pb::http_types::HttpMethod {
                        r#type: Some(pb::http_types::http_method::Type::Unregistered(m.clone())),
                    },
                }),
        }
    }
}

impl From<&HeaderMatch> for pb::http_match::HeaderMatch {
    fn from(h: &HeaderMatch) -> Self {
        let HeaderMatch { name, value } = h;
        use pb::http_match::header_match::Value;
        pb::http_match::HeaderMatch {
            name: name.clone(),
            value: Some(match value {
                HeaderValueMatch::Exact(v) => Value::Exact(v.clone().into_bytes()),
                HeaderValueMatch::Regex(re) => Value::Regex(re.clone()),
            }),
        }
    }
}

/// A route on a gRPC port: every match must be a `/SERVICE/METHOD` exact
/// path, a `/SERVICE` prefix, or no path, and no method (gRPC is always POST).
fn grpc_route(route: &HttpRoute) -> Result<pb::GrpcRoute, &'static str> {
    let HttpRoute {
        meta,
        matches,
        authorizations,
    } = route;
    let matches = matches
        .iter()
        .map(|m| {
            let RouteMatch {
                path,
                method,
                headers,
            } = m;
            if method.is_some() {
                return Err("a gRPC route cannot match on the HTTP method");
            }
            let segment = |s: &str| !s.is_empty() && !s.contains('/');
            let rpc = match path {
                None => None,
                Some(PathMatch::Exact(p)) => {
                    match p.strip_prefix('/').and_then(|p| p.split_once('/')) {
                        Some((service, method)) if segment(service) && segment(method) => {
                            Some(pb::grpc_match::GrpcRpcMatch {
                                service: service.to_string(),
                                method: method.to_string(),
                            })
                        }
                        _ => return Err("a gRPC route path must be /SERVICE/METHOD"),
                    }
                }
                Some(PathMatch::Prefix(p)) => match p.strip_prefix('/') {
                    Some(service) if segment(service) => Some(pb::grpc_match::GrpcRpcMatch {
                        service: service.to_string(),
                        method: String::new(),
                    }),
                    _ => return Err("a gRPC route prefix must be /SERVICE"),
                },
                Some(PathMatch::Regex(_)) => {
                    return Err("a gRPC route cannot match on a path expression")
                }
            };
            Ok(pb::grpc_match::GrpcRouteMatch {
                rpc,
                headers: headers.iter().map(Into::into).collect(),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(pb::GrpcRoute {
        metadata: Some(meta.into()),
        hosts: Vec::new(),
        authorizations: authorizations.iter().map(pb::Authz::from).collect(),
        rules: vec![pb::grpc_route::Rule {
            matches,
            filters: Vec::new(),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorize::{authorize, Authorizer};
    use crate::model::{Client, ClientTls, DefaultPolicy, PolicyConfig};
    use proptest::prelude::*;
    use prost::Message;
    use std::collections::BTreeSet;

    fn decode(port: u16, server: pb::Server) -> Result<PortPolicy, InvalidServer> {
        PortPolicy::try_from((port, server))
    }

    /// Encodes, goes through protobuf bytes as on the wire, and decodes.
    fn round_trip(policy: &PortPolicy) -> PortPolicy {
        let server = pb::Server::try_from(policy).expect("encodable");
        let bytes = server.encode_to_vec();
        let server = pb::Server::decode(bytes.as_slice()).expect("decodes");
        decode(policy.port, server).expect("valid")
    }

    // --- strategies: the domain of policies the compiler produces ---

    /// Names with a `-`, so never `audit` or `default` by accident.
    fn name() -> impl Strategy<Value = String> {
        "[a-z]{1,6}-[a-z0-9]{1,6}"
    }

    fn meta() -> impl Strategy<Value = Meta> {
        prop_oneof![
            name().prop_map(Meta::default),
            (
                prop_oneof![Just(POLICY_GROUP.to_string()), "[a-z]{1,5}\\.io"],
                "[a-z]{3,12}",
                name()
            )
                .prop_map(|(group, kind, name)| Meta::Resource { group, kind, name }),
        ]
    }

    fn ip_net_v4() -> impl Strategy<Value = ipnet::IpNet> {
        (any::<u32>(), 0u8..=32).prop_map(|(a, p)| {
            ipnet::Ipv4Net::new(a.into(), p)
                .expect("valid prefix")
                .into()
        })
    }

    /// Canonical: an IPv4-mapped net would decode as IPv4.
    fn ip_net_v6() -> impl Strategy<Value = ipnet::IpNet> {
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, p)| ipnet::Ipv6Net::new(a.into(), p).expect("valid prefix"))
            .prop_filter("not IPv4-mapped", |n| {
                crate::model::canonical_net((*n).into()) == ipnet::IpNet::V6(*n)
            })
            .prop_map(Into::into)
    }

    /// Excepts of the cidr's family, as the compiler produces them.
    fn network() -> impl Strategy<Value = Network> {
        prop_oneof![
            (ip_net_v4(), prop::collection::vec(ip_net_v4(), 0..3)),
            (ip_net_v6(), prop::collection::vec(ip_net_v6(), 0..3)),
        ]
        .prop_map(|(net, except)| Network { net, except })
    }

    fn authentication() -> impl Strategy<Value = Authentication> {
        prop_oneof![
            Just(Authentication::Unauthenticated),
            Just(Authentication::TlsUnauthenticated),
            (
                prop::collection::btree_set("[a-z0-9.:/-]{1,30}", 0..4),
                prop::collection::btree_set(
                    prop_oneof![
                        Just(String::new()),
                        "[a-z0-9-]{1,8}(\\.[a-z0-9-]{1,8}){0,3}"
                    ],
                    0..3
                ),
            )
                .prop_map(|(identities, suffixes)| Authentication::TlsAuthenticated {
                    identities,
                    suffixes
                }),
        ]
    }

    fn authorization() -> impl Strategy<Value = Authorization> {
        (
            meta(),
            prop::collection::vec(network(), 0..3),
            authentication(),
        )
            .prop_map(|(meta, networks, authentication)| Authorization {
                meta,
                networks,
                authentication,
            })
    }

    fn header() -> impl Strategy<Value = HeaderMatch> {
        (
            "[a-z][a-z0-9-]{0,10}",
            prop_oneof![
                "\\PC{0,12}".prop_map(HeaderValueMatch::Exact),
                "[a-z.*]{1,8}".prop_map(HeaderValueMatch::Regex),
            ],
        )
            .prop_map(|(name, value)| HeaderMatch { name, value })
    }

    fn http_match() -> impl Strategy<Value = RouteMatch> {
        (
            prop::option::of(prop_oneof![
                "/[a-z/]{0,10}".prop_map(PathMatch::Exact),
                "/[a-z/]{0,10}".prop_map(PathMatch::Prefix),
                "/[a-z.*]{0,10}".prop_map(PathMatch::Regex),
            ]),
            prop::option::of(prop_oneof![
                Just("GET".to_string()),
                Just("POST".to_string()),
                Just("DELETE".to_string()),
                Just("PURGE".to_string()),
                "[A-Z]{1,8}",
            ]),
            prop::collection::vec(header(), 0..3),
        )
            .prop_map(|(path, method, headers)| RouteMatch {
                path,
                method,
                headers,
            })
    }

    fn grpc_match() -> impl Strategy<Value = RouteMatch> {
        (
            prop::option::of(prop_oneof![
                ("[a-z]{1,5}\\.[A-Z][a-z]{1,6}", "[A-Z][a-zA-Z]{1,8}")
                    .prop_map(|(s, m)| PathMatch::Exact(format!("/{s}/{m}"))),
                "[a-z]{1,5}\\.[A-Z][a-z]{1,6}".prop_map(|s| PathMatch::Prefix(format!("/{s}"))),
            ]),
            prop::collection::vec(header(), 0..3),
        )
            .prop_map(|(path, headers)| RouteMatch {
                path,
                method: None,
                headers,
            })
    }

    fn routes(m: BoxedStrategy<RouteMatch>) -> impl Strategy<Value = Vec<HttpRoute>> {
        prop::collection::vec(
            (
                meta(),
                prop::collection::vec(m, 0..3),
                prop::collection::vec(authorization(), 0..2),
            )
                .prop_map(|(meta, matches, authorizations)| HttpRoute {
                    meta,
                    matches,
                    authorizations,
                }),
            0..3,
        )
    }

    fn protocol_and_routes() -> impl Strategy<Value = (Protocol, Vec<HttpRoute>)> {
        prop_oneof![
            (
                prop_oneof![
                    Just(Protocol::Detect),
                    Just(Protocol::Http1),
                    Just(Protocol::Http2)
                ],
                routes(http_match().boxed())
            ),
            (Just(Protocol::Grpc), routes(grpc_match().boxed())),
            Just((Protocol::Opaque, Vec::new())),
            Just((Protocol::Tls, Vec::new())),
        ]
    }

    fn port_policy() -> impl Strategy<Value = PortPolicy> {
        (
            any::<u16>(),
            protocol_and_routes(),
            meta(),
            any::<bool>(),
            prop::collection::vec(authorization(), 0..4),
        )
            .prop_map(
                |(port, (protocol, http_routes), server, audit, authorizations)| PortPolicy {
                    port,
                    protocol,
                    server,
                    access: if audit {
                        Access::Audit
                    } else {
                        Access::Enforce
                    },
                    authorizations,
                    http_routes,
                },
            )
    }

    proptest! {
        #[test]
        fn plain_to_proto_to_plain_is_identity(policy in port_policy()) {
            prop_assert_eq!(round_trip(&policy), policy);
        }

        #[test]
        fn default_policies_round_trip(
            port in any::<u16>(),
            protocol in prop_oneof![Just(Protocol::Detect), Just(Protocol::Opaque), Just(Protocol::Http2)],
            default in prop::sample::select(DefaultPolicy::NAMES.to_vec()),
        ) {
            let cfg = PolicyConfig::default();
            let default: DefaultPolicy = default.parse().expect("known name");
            let policy = PortPolicy::for_default(port, protocol, default, &cfg.cluster_networks);
            prop_assert_eq!(round_trip(&policy), policy);
        }

        /// Whatever bytes arrive, decoding returns a policy or an error, never panics.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(server) = pb::Server::decode(bytes.as_slice()) {
                let _ = decode(1, server);
            }
        }
    }

    // --- hand-built messages, as other controllers send them ---

    fn linkerd_labels(group: &str, kind: &str, name: &str) -> HashMap<String, String> {
        HashMap::from([
            ("group".into(), group.into()),
            ("kind".into(), kind.into()),
            ("name".into(), name.into()),
        ])
    }

    fn all_networks() -> Vec<pb::Network> {
        ["0.0.0.0/0", "::/0"]
            .iter()
            .map(|n| pb::Network {
                net: Some(n.parse::<ipnet::IpNet>().unwrap().into()),
                except: vec![],
            })
            .collect()
    }

    fn unauthenticated() -> pb::Authn {
        pb::Authn {
            permit: Some(pb::authn::Permit::Unauthenticated(
                pb::authn::PermitUnauthenticated {},
            )),
        }
    }

    fn authz(meta: pb::meta::metadata::Kind) -> pb::Authz {
        pb::Authz {
            networks: all_networks(),
            authentication: Some(unauthenticated()),
            labels: HashMap::new(),
            metadata: Some(pb::meta::Metadata { kind: Some(meta) }),
        }
    }

    fn opaque_server(authorizations: Vec<pb::Authz>) -> pb::Server {
        pb::Server {
            protocol: Some(pb::ProxyProtocol {
                kind: Some(pb::proxy_protocol::Kind::Opaque(
                    pb::proxy_protocol::Opaque {},
                )),
            }),
            server_ips: vec![],
            authorizations,
            labels: linkerd_labels(POLICY_GROUP, "server", "db"),
        }
    }

    #[test]
    fn linkerd_audit_authorization_becomes_audit_access() {
        let sa = pb::meta::metadata::Kind::Resource(pb::meta::Resource {
            group: POLICY_GROUP.into(),
            kind: "serverauthorization".into(),
            name: "db-clients".into(),
            namespace: "prod".into(),
            section: String::new(),
            port: 0,
        });
        let audit = pb::meta::metadata::Kind::Default("audit".into());
        let p = decode(5432, opaque_server(vec![authz(sa), authz(audit)])).unwrap();
        assert_eq!(p.access, Access::Audit);
        assert_eq!(p.server, Meta::policy("server", "db"));
        assert_eq!(p.authorizations.len(), 1);
        assert_eq!(
            p.authorizations[0].meta,
            Meta::policy("serverauthorization", "db-clients")
        );
        assert_eq!(p.protocol, Protocol::Opaque);
    }

    #[test]
    fn labels_are_read_as_linkerd_reads_them() {
        let m = |labels: &[(&str, &str)]| {
            meta_from_labels(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                "server",
            )
        };
        assert_eq!(
            m(&[("group", ""), ("kind", "default"), ("name", "deny")]),
            Ok(Meta::default("deny"))
        );
        assert_eq!(m(&[("name", "default:deny")]), Ok(Meta::default("deny")));
        assert_eq!(m(&[("name", "web")]), Ok(Meta::policy("server", "web")));
        assert_eq!(m(&[("name", "srv:web")]), Ok(Meta::policy("srv", "web")));
        assert_eq!(m(&[("kind", "server")]), Err(Problem::Missing));
        // Authorizations without metadata fall back to labels.
        let mut a = authz(pb::meta::metadata::Kind::Default("x".into()));
        a.metadata = None;
        a.labels = linkerd_labels(POLICY_GROUP, "serverauthorization", "legacy");
        let a = Authorization::try_from(a).unwrap();
        assert_eq!(a.meta, Meta::policy("serverauthorization", "legacy"));
    }

    /// Each malformed message is rejected with the field that is wrong.
    #[test]
    fn malformed_messages_name_the_field() {
        let ok = || opaque_server(vec![authz(pb::meta::metadata::Kind::Default("all".into()))]);
        type Mutation = Box<dyn Fn(&mut pb::Server)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("protocol", Box::new(|s| s.protocol = None)),
            (
                "protocol.kind",
                Box::new(|s| s.protocol = Some(pb::ProxyProtocol { kind: None })),
            ),
            (
                "labels.name",
                Box::new(|s| {
                    s.labels.remove("name");
                }),
            ),
            (
                "authorizations[0].authentication",
                Box::new(|s| s.authorizations[0].authentication = None),
            ),
            (
                "authorizations[0].authentication.permit",
                Box::new(|s| s.authorizations[0].authentication = Some(pb::Authn { permit: None })),
            ),
            (
                "authorizations[0].metadata.kind",
                Box::new(|s| {
                    s.authorizations[0].metadata = Some(pb::meta::Metadata { kind: None })
                }),
            ),
            (
                "authorizations[0].networks[1].net",
                Box::new(|s| s.authorizations[0].networks[1].net = None),
            ),
            (
                "authorizations[0].networks[0].net",
                Box::new(|s| {
                    s.authorizations[0].networks[0].net = Some(pb::net::IpNetwork {
                        ip: Some(std::net::IpAddr::from([10, 0, 0, 0]).into()),
                        prefix_len: 33,
                    })
                }),
            ),
            (
                "authorizations[0].networks[0].except[1]",
                Box::new(|s| {
                    let good: ipnet::IpNet = "10.1.0.0/16".parse().unwrap();
                    s.authorizations[0].networks[0].except = vec![
                        good.into(),
                        pb::net::IpNetwork {
                            ip: None,
                            prefix_len: 8,
                        },
                    ];
                }),
            ),
            (
                "authorizations[0].authentication.permit.mesh_tls.clients.identities[1].name",
                Box::new(|s| {
                    use pb::authn::permit_mesh_tls::{Clients, PermitClientIdentities};
                    s.authorizations[0].authentication = Some(pb::Authn {
                        permit: Some(pb::authn::Permit::MeshTls(pb::authn::PermitMeshTls {
                            clients: Some(Clients::Identities(PermitClientIdentities {
                                identities: vec![
                                    pb::Identity { name: "a.b".into() },
                                    pb::Identity {
                                        name: String::new(),
                                    },
                                ],
                                suffixes: vec![],
                            })),
                        })),
                    })
                }),
            ),
            (
                "authorizations[0].authentication.permit.mesh_tls.clients.suffixes[0].parts",
                Box::new(|s| {
                    use pb::authn::permit_mesh_tls::{Clients, PermitClientIdentities};
                    s.authorizations[0].authentication = Some(pb::Authn {
                        permit: Some(pb::authn::Permit::MeshTls(pb::authn::PermitMeshTls {
                            clients: Some(Clients::Identities(PermitClientIdentities {
                                identities: vec![],
                                suffixes: vec![pb::IdentitySuffix {
                                    parts: vec!["ns".into(), String::new()],
                                }],
                            })),
                        })),
                    })
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut s = ok();
            mutate(&mut s);
            let err = decode(80, s).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
        assert!(decode(80, ok()).is_ok());
    }

    fn pb_net(s: &str) -> pb::net::IpNetwork {
        s.parse::<ipnet::IpNet>().unwrap().into()
    }

    /// An `except` of the other address family than its `net` (after reading
    /// IPv4-mapped nets as IPv4) would exclude nothing: the message is
    /// invalid, and the port denies (`invalid_policy`) until a good one.
    #[test]
    fn an_except_of_the_other_family_is_rejected() {
        let cases: &[(&str, &[&str], &str)] = &[
            ("0.0.0.0/0", &["10.1.0.0/16", "fd00::/8"], "except[1]"),
            ("::/0", &["::ffff:10.1.0.0/112"], "except[0]"),
            ("::ffff:10.0.0.0/104", &["fd00::/8"], "except[0]"),
        ];
        for (net, except, field) in cases {
            let mut s = opaque_server(vec![authz(pb::meta::metadata::Kind::Default("all".into()))]);
            s.authorizations[0].networks = vec![pb::Network {
                net: Some(pb_net(net)),
                except: except.iter().map(|e| pb_net(e)).collect(),
            }];
            let err = decode(80, s).expect_err(net);
            assert_eq!(
                err.field,
                format!("authorizations[0].networks[0].{field}"),
                "{err}"
            );
            assert!(
                matches!(&err.problem, Problem::Network(m) if m.contains("exclude nothing")),
                "{err}"
            );
        }
    }

    /// IPv4-mapped IPv6 nets decode as the IPv4 nets they carry, so an
    /// `except` written that way really excludes its IPv4 clients.
    #[test]
    fn mapped_networks_decode_as_ipv4_and_exclude() {
        let mut s = opaque_server(vec![authz(pb::meta::metadata::Kind::Default("all".into()))]);
        s.authorizations[0].networks = vec![pb::Network {
            net: Some(pb_net("::ffff:10.0.0.0/104")),
            except: vec![pb_net("::ffff:10.1.0.0/112")],
        }];
        let p = decode(80, s).unwrap();
        assert_eq!(
            p.authorizations[0].networks,
            vec![Network {
                net: "10.0.0.0/8".parse().unwrap(),
                except: vec!["10.1.0.0/16".parse().unwrap()],
            }]
        );
        let a = Authorizer::from(p);
        let plain = |ip: &str| Client {
            addr: ip.parse().unwrap(),
            tls: ClientTls::None,
        };
        assert!(authorize(&a, &plain("10.2.0.1")).is_ok());
        assert!(authorize(&a, &plain("::ffff:10.2.0.1")).is_ok());
        assert!(authorize(&a, &plain("10.1.2.3")).is_err());
        assert!(authorize(&a, &plain("::ffff:10.1.2.3")).is_err());
    }

    fn detect_with_route(route: pb::HttpRoute) -> pb::Server {
        pb::Server {
            protocol: Some(pb::ProxyProtocol {
                kind: Some(pb::proxy_protocol::Kind::Detect(
                    pb::proxy_protocol::Detect {
                        timeout: DETECT_TIMEOUT.try_into().ok(),
                        http_routes: vec![route],
                        http_local_rate_limit: None,
                    },
                )),
            }),
            server_ips: vec![],
            authorizations: vec![],
            labels: linkerd_labels(POLICY_GROUP, "server", "web"),
        }
    }

    fn default_route() -> pb::HttpRoute {
        pb::HttpRoute {
            metadata: Some(pb::meta::Metadata {
                kind: Some(pb::meta::metadata::Kind::Default("default".into())),
            }),
            hosts: vec![],
            authorizations: vec![],
            rules: vec![pb::http_route::Rule {
                matches: vec![pb::http_match::HttpRouteMatch {
                    path: Some(pb::http_match::PathMatch {
                        kind: Some(pb::http_match::path_match::Kind::Prefix("/".into())),
                    }),
                    headers: vec![],
                    query_params: vec![],
                    method: None,
                }],
                filters: vec![],
            }],
        }
    }

    /// Features we cannot enforce are refused, not ignored: ignoring them
    /// could apply a route's authorizations to more requests.
    #[test]
    fn unenforceable_route_features_are_rejected() {
        let p = decode(8080, detect_with_route(default_route())).unwrap();
        assert_eq!(p.http_routes[0].meta, Meta::default("default"));
        assert_eq!(
            p.http_routes[0].matches,
            vec![RouteMatch {
                path: Some(PathMatch::Prefix("/".into())),
                ..Default::default()
            }]
        );

        let mut r = default_route();
        r.hosts = vec![pb::http_match::HostMatch {
            r#match: Some(pb::http_match::host_match::Match::Exact(
                "example.com".into(),
            )),
        }];
        let e = decode(8080, detect_with_route(r)).unwrap_err();
        assert_eq!(e.field, "protocol.detect.http_routes[0].hosts");
        assert!(matches!(e.problem, Problem::Unsupported(_)));

        let mut r = default_route();
        r.rules[0].matches[0].query_params = vec![pb::http_match::QueryParamMatch {
            name: "debug".into(),
            value: None,
        }];
        let e = decode(8080, detect_with_route(r)).unwrap_err();
        assert_eq!(
            e.field,
            "protocol.detect.http_routes[0].rules[0].matches[0].query_params"
        );

        let mut r = default_route();
        r.rules[0].filters = vec![pb::http_route::Filter { kind: None }];
        let e = decode(8080, detect_with_route(r)).unwrap_err();
        assert_eq!(e.field, "protocol.detect.http_routes[0].rules[0].filters");

        let mut r = default_route();
        r.rules.clear();
        let e = decode(8080, detect_with_route(r)).unwrap_err();
        assert_eq!(e.problem, Problem::NoRules);

        let mut s = detect_with_route(default_route());
        if let Some(pb::ProxyProtocol {
            kind: Some(pb::proxy_protocol::Kind::Detect(d)),
        }) = &mut s.protocol
        {
            d.http_local_rate_limit = Some(pb::HttpLocalRateLimit {
                metadata: None,
                total: Some(pb::http_local_rate_limit::Limit {
                    requests_per_second: 5,
                }),
                identity: None,
                overrides: vec![],
            });
        }
        let e = decode(8080, s).unwrap_err();
        assert_eq!(e.field, "protocol.detect.http_local_rate_limit");
    }

    /// A rule without matches matches every request, so the route does.
    #[test]
    fn a_rule_without_matches_makes_the_route_match_everything() {
        let mut r = default_route();
        r.rules.push(pb::http_route::Rule {
            matches: vec![],
            filters: vec![],
        });
        let p = decode(8080, detect_with_route(r)).unwrap();
        assert!(p.http_routes[0].matches.is_empty());
    }

    /// A protocol variant from a newer API decodes as "no variant" and is refused.
    #[test]
    fn unknown_protocol_variant_on_the_wire_is_refused() {
        let mut bytes = pb::Server {
            protocol: None,
            server_ips: vec![],
            authorizations: vec![],
            labels: linkerd_labels(POLICY_GROUP, "server", "web"),
        }
        .encode_to_vec();
        // protocol (field 1) = ProxyProtocol{ field 7 (not in this API): empty message }
        bytes.extend_from_slice(&[0x0a, 0x02, 0x3a, 0x00]);
        let server = pb::Server::decode(bytes.as_slice()).unwrap();
        let e = decode(80, server).unwrap_err();
        assert_eq!(e.field, "protocol.kind");
    }

    #[test]
    fn grpc_routes_map_to_paths() {
        let route = |rpc: Option<(&str, &str)>| pb::GrpcRoute {
            metadata: Some(pb::meta::Metadata {
                kind: Some(pb::meta::metadata::Kind::Default("default".into())),
            }),
            hosts: vec![],
            authorizations: vec![],
            rules: vec![pb::grpc_route::Rule {
                matches: vec![pb::grpc_match::GrpcRouteMatch {
                    rpc: rpc.map(|(service, method)| pb::grpc_match::GrpcRpcMatch {
                        service: service.into(),
                        method: method.into(),
                    }),
                    headers: vec![],
                }],
                filters: vec![],
            }],
        };
        let path = |rpc| HttpRoute::try_from(route(rpc)).map(|r| r.matches[0].path.clone());
        assert_eq!(
            path(Some(("pkg.Svc", "Get"))),
            Ok(Some(PathMatch::Exact("/pkg.Svc/Get".into())))
        );
        assert_eq!(
            path(Some(("pkg.Svc", ""))),
            Ok(Some(PathMatch::Prefix("/pkg.Svc".into())))
        );
        assert_eq!(path(Some(("", ""))), Ok(None));
        assert_eq!(path(None), Ok(None));
        assert!(path(Some(("", "Get"))).is_err());
        assert!(path(Some(("a/b", "Get"))).is_err());
    }

    #[test]
    fn grpc_routes_that_grpc_cannot_express_are_not_encoded() {
        let mut p = PortPolicy::for_default(9090, Protocol::Grpc, DefaultPolicy::Deny, &[]);
        p.http_routes = vec![HttpRoute {
            meta: Meta::default("probe"),
            matches: vec![RouteMatch {
                path: Some(PathMatch::Exact("/ready".into())),
                method: Some("GET".into()),
                headers: vec![],
            }],
            authorizations: vec![],
        }];
        let e = pb::Server::try_from(&p).unwrap_err();
        assert_eq!(e.port, 9090);
        assert_eq!(e.route, "default/probe");
    }

    #[test]
    fn invalid_policy_denies_and_names_itself() {
        let p = invalid_policy(8080);
        assert!(p.authorizations.is_empty());
        assert_eq!(p.server.to_string(), "default/invalid");
        assert_eq!(round_trip(&p), p);
    }

    #[test]
    fn suffixes_are_dns_parts() {
        assert_eq!(suffix("").parts, Vec::<String>::new());
        assert_eq!(
            suffix("ns.serviceaccount").parts,
            vec!["ns", "serviceaccount"]
        );
        let set: BTreeSet<String> = ["".to_string()].into();
        let authn = Authentication::TlsAuthenticated {
            identities: BTreeSet::new(),
            suffixes: set,
        };
        assert_eq!(
            Authentication::try_from(pb::Authn::from(&authn)).unwrap(),
            authn
        );
    }
}
