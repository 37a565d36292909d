//! Validation: turns the serde specs of our policy resources into validated
//! objects (per-resource rules), and finds problems between resources
//! ([`check`]: overlapping Servers, bad annotations, dangling references).
//!
//! Owns: every rule of issue 2 about what a resource may say, each failure a
//! [`ResourceError`] naming file, document, `Kind/ns/name` and field.
//! Must not: read files or YAML (`load` does) or build per-port policy
//! (`compile` does). Per-resource rules are hard errors (the load fails);
//! [`check`]'s findings are errors for `portcullis-controller validate` and
//! warnings at run time.
//! Called by: `load` (per resource) and [`Resources::check`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::compile::{
    parse_opaque_ports, DEFAULT_INBOUND_POLICY_ANNOTATION, OPAQUE_PORTS_ANNOTATION,
};
use crate::model::{canonical_net, DefaultPolicy, Network, PolicyConfig, Protocol};
use crate::resources::{
    ClientAuth, ClientSpec, MeshTlsSpec, NapSource, NetworkAuthenticationPolicy,
    NetworkAuthenticationPolicySpec, NetworkSpec, Origin, PortRef, PortSpec, ResourceError,
    Resources, Server, ServerAuthorization, ServerAuthorizationSpec, ServerSpec, ServerTarget,
};
use crate::selector::{did_you_mean, is_dns_label, is_dns_subdomain, Selector};

/// The identity of the object being validated, for error messages.
#[derive(Clone, Debug)]
pub struct Object<'a> {
    pub origin: &'a Origin,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl Object<'_> {
    /// `Kind/namespace/name`.
    pub fn id(&self) -> String {
        if self.name.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }

    fn error(&self, field: impl Into<String>, message: impl Into<String>) -> ResourceError {
        ResourceError::new(self.origin, Some(self.id()), field, message)
    }
}

// ---------------------------------------------------------------------------
// Per-resource rules.
// ---------------------------------------------------------------------------

/// Validates a `Server`.
pub fn server(obj: &Object<'_>, spec: ServerSpec) -> Result<Server, Vec<ResourceError>> {
    let mut errors = Vec::new();
    let pod_selector = required_selector(obj, "spec.podSelector", spec.pod_selector, &mut errors);
    let port = match &spec.port {
        None => {
            errors.push(obj.error("spec.port", "required: a port number or name"));
            None
        }
        Some(p) => match port(p) {
            Ok(p) => Some(p),
            Err(message) => {
                errors.push(obj.error("spec.port", message));
                None
            }
        },
    };
    let protocol = match spec.proxy_protocol.as_deref() {
        None => Some(Protocol::Detect),
        Some(p) => match Protocol::from_str(p) {
            Ok(p) => Some(p),
            Err(message) => {
                errors.push(obj.error(
                    "spec.proxyProtocol",
                    format!("{message}{}", did_you_mean(p, Protocol::NAMES)),
                ));
                None
            }
        },
    };
    match (pod_selector, port, protocol) {
        (Some(pod_selector), Some(port), Some(protocol)) if errors.is_empty() => Ok(Server {
            origin: obj.origin.clone(),
            namespace: obj.namespace.to_string(),
            name: obj.name.to_string(),
            labels: obj.labels.clone(),
            pod_selector,
            port,
            protocol,
        }),
        _ => Err(errors),
    }
}

/// Validates a `ServerAuthorization`.
pub fn server_authorization(
    obj: &Object<'_>,
    spec: ServerAuthorizationSpec,
) -> Result<ServerAuthorization, Vec<ResourceError>> {
    let mut errors = Vec::new();
    let server = match spec.server {
        None => {
            errors.push(obj.error("spec.server", "required: one of name, selector"));
            None
        }
        Some(s) => match (s.name, s.selector) {
            (Some(_), Some(_)) => {
                errors.push(obj.error(
                    "spec.server",
                    "exactly one of name, selector is allowed; found both",
                ));
                None
            }
            (None, None) => {
                errors.push(obj.error(
                    "spec.server",
                    "exactly one of name, selector is required; found neither",
                ));
                None
            }
            (Some(name), None) => {
                if is_dns_subdomain(&name) {
                    Some(ServerTarget::Name(name))
                } else {
                    errors.push(obj.error(
                        "spec.server.name",
                        format!("{name:?} is not a valid resource name"),
                    ));
                    None
                }
            }
            (None, Some(sel)) => {
                let before = errors.len();
                selector_rules(obj, "spec.server.selector", &sel, &mut errors);
                (errors.len() == before).then_some(ServerTarget::Selector(sel))
            }
        },
    };
    let (client, networks) = match spec.client {
        None => {
            errors.push(obj.error(
                "spec.client",
                "required: one of meshTLS, unauthenticated: true",
            ));
            (None, None)
        }
        Some(c) => client(obj, c, &mut errors),
    };
    match (server, client) {
        (Some(server), Some(client)) if errors.is_empty() => Ok(ServerAuthorization {
            origin: obj.origin.clone(),
            namespace: obj.namespace.to_string(),
            name: obj.name.to_string(),
            labels: obj.labels.clone(),
            server,
            client,
            networks,
        }),
        _ => Err(errors),
    }
}

fn client(
    obj: &Object<'_>,
    spec: ClientSpec,
    errors: &mut Vec<ResourceError>,
) -> (Option<ClientAuth>, Option<Vec<Network>>) {
    let auth = match (spec.mesh_tls, spec.unauthenticated) {
        (Some(_), Some(true)) => {
            errors.push(obj.error(
                "spec.client",
                "exactly one of meshTLS, unauthenticated is allowed; found both",
            ));
            None
        }
        (None, Some(true)) => Some(ClientAuth::Unauthenticated),
        (None, Some(false)) => {
            errors.push(obj.error(
                "spec.client.unauthenticated",
                "`unauthenticated: false` alone admits no client; use `unauthenticated: true` or meshTLS",
            ));
            None
        }
        (None, None) => {
            errors.push(obj.error(
                "spec.client",
                "exactly one of meshTLS, unauthenticated is required; found neither",
            ));
            None
        }
        // `unauthenticated: false` next to meshTLS says nothing more.
        (Some(mesh), Some(false) | None) => mesh_tls(obj, mesh, errors),
    };
    let networks = match spec.networks {
        None => None,
        Some(list) if list.is_empty() => {
            errors.push(obj.error(
                "spec.client.networks",
                "an empty list admits no address; omit networks for the cluster networks",
            ));
            None
        }
        Some(list) => {
            let mut out = Vec::new();
            for (i, n) in list.iter().enumerate() {
                match network(n) {
                    Ok(n) => out.push(n),
                    Err(errs) => errors.extend(errs.into_iter().map(|(field, message)| {
                        obj.error(format!("spec.client.networks[{i}]{field}"), message)
                    })),
                }
            }
            Some(out)
        }
    };
    (auth, networks)
}

fn mesh_tls(
    obj: &Object<'_>,
    spec: MeshTlsSpec,
    errors: &mut Vec<ResourceError>,
) -> Option<ClientAuth> {
    let field = "spec.client.meshTLS";
    let tls_only = spec.unauthenticated_tls == Some(true);
    let present = [
        tls_only,
        spec.identities.is_some(),
        spec.service_accounts.is_some(),
    ]
    .iter()
    .filter(|p| **p)
    .count();
    if present != 1 {
        let detail = if present > 1 {
            "found more than one".to_string()
        } else if spec.unauthenticated_tls == Some(false) {
            "found only `unauthenticatedTLS: false`, which admits no client".to_string()
        } else {
            "found none".to_string()
        };
        errors.push(obj.error(
            field,
            format!(
                "exactly one of unauthenticatedTLS: true, identities, serviceAccounts is required; {detail}"
            ),
        ));
        return None;
    }
    if tls_only {
        return Some(ClientAuth::TlsUnauthenticated);
    }
    let before = errors.len();
    if let Some(ids) = spec.identities {
        if ids.is_empty() {
            errors.push(obj.error(
                format!("{field}.identities"),
                "must not be empty (use `*` for every authenticated client)",
            ));
        }
        let mut identities = BTreeSet::new();
        let mut suffixes = BTreeSet::new();
        for (i, id) in ids.iter().enumerate() {
            match identity(id) {
                Ok(IdentityPattern::Exact(id)) => {
                    identities.insert(id);
                }
                Ok(IdentityPattern::Suffix(s)) => {
                    suffixes.insert(s);
                }
                Err(message) => errors.push(obj.error(format!("{field}.identities[{i}]"), message)),
            }
        }
        return (errors.len() == before).then_some(ClientAuth::Identities {
            identities,
            suffixes,
        });
    }
    let sas = spec.service_accounts.unwrap_or_default();
    if sas.is_empty() {
        errors.push(obj.error(format!("{field}.serviceAccounts"), "must not be empty"));
    }
    let mut out = Vec::new();
    for (i, sa) in sas.into_iter().enumerate() {
        let at = format!("{field}.serviceAccounts[{i}]");
        let name = match sa.name {
            Some(n) if is_dns_subdomain(&n) => Some(n),
            Some(n) => {
                errors.push(obj.error(
                    format!("{at}.name"),
                    format!("{n:?} is not a valid service account name"),
                ));
                None
            }
            None => {
                errors.push(obj.error(format!("{at}.name"), "required"));
                None
            }
        };
        let namespace = match sa.namespace {
            None => Some(obj.namespace.to_string()),
            Some(ns) if is_dns_label(&ns) => Some(ns),
            Some(ns) => {
                errors.push(obj.error(
                    format!("{at}.namespace"),
                    format!("{ns:?} is not a valid namespace name"),
                ));
                None
            }
        };
        if let (Some(name), Some(namespace)) = (name, namespace) {
            out.push((name, namespace));
        }
    }
    (errors.len() == before).then_some(ClientAuth::ServiceAccounts(out))
}

/// Validates a `NetworkAuthenticationPolicy`.
pub fn network_authentication_policy(
    obj: &Object<'_>,
    spec: NetworkAuthenticationPolicySpec,
) -> Result<NetworkAuthenticationPolicy, Vec<ResourceError>> {
    let mut errors = Vec::new();
    let target = match spec.target {
        None => {
            errors.push(obj.error("spec.target", "required: a selector of the receiving pods"));
            None
        }
        Some(t) => required_selector(obj, "spec.target.selector", t.selector, &mut errors),
    };
    let mut ports = Vec::new();
    match spec.ports {
        None => errors.push(obj.error("spec.ports", "required: the ports this policy governs")),
        Some(list) if list.is_empty() => errors.push(obj.error("spec.ports", "must not be empty")),
        Some(list) => {
            for (i, p) in list.iter().enumerate() {
                let field = format!("spec.ports[{i}].port");
                match &p.port {
                    None => errors.push(obj.error(field, "required: a port number or name")),
                    Some(spec) => match port(spec) {
                        Ok(p) => ports.push(p),
                        Err(message) => errors.push(obj.error(field, message)),
                    },
                }
            }
        }
    }
    let mut sources = Vec::new();
    match spec.sources {
        None => errors.push(obj.error("spec.sources", "required: the sending pods")),
        Some(list) if list.is_empty() => {
            errors.push(obj.error("spec.sources", "must not be empty"))
        }
        Some(list) => {
            for (i, s) in list.into_iter().enumerate() {
                let sel = required_selector(
                    obj,
                    &format!("spec.sources[{i}].podSelector"),
                    s.pod_selector,
                    &mut errors,
                );
                let namespace = match s.namespace {
                    None => Some(obj.namespace.to_string()),
                    Some(ns) if is_dns_label(&ns) => Some(ns),
                    Some(ns) => {
                        errors.push(obj.error(
                            format!("spec.sources[{i}].namespace"),
                            format!("{ns:?} is not a valid namespace name"),
                        ));
                        None
                    }
                };
                if let (Some(pod_selector), Some(namespace)) = (sel, namespace) {
                    sources.push(NapSource {
                        pod_selector,
                        namespace,
                    });
                }
            }
        }
    }
    match target {
        Some(target) if errors.is_empty() => Ok(NetworkAuthenticationPolicy {
            origin: obj.origin.clone(),
            namespace: obj.namespace.to_string(),
            name: obj.name.to_string(),
            target,
            ports,
            sources,
        }),
        _ => Err(errors),
    }
}

fn required_selector(
    obj: &Object<'_>,
    field: &str,
    sel: Option<Selector>,
    errors: &mut Vec<ResourceError>,
) -> Option<Selector> {
    match sel {
        None => {
            errors.push(obj.error(
                field,
                "required (an empty selector `{}` selects every pod in the namespace)",
            ));
            None
        }
        Some(sel) => {
            let before = errors.len();
            selector_rules(obj, field, &sel, errors);
            (errors.len() == before).then_some(sel)
        }
    }
}

fn selector_rules(obj: &Object<'_>, field: &str, sel: &Selector, errors: &mut Vec<ResourceError>) {
    for e in sel.validate() {
        errors.push(obj.error(format!("{field}.{}", e.field), e.message));
    }
}

// ---------------------------------------------------------------------------
// Values.
// ---------------------------------------------------------------------------

/// A port: a number in 1-65535, or a valid port name.
pub fn port(spec: &PortSpec) -> Result<PortRef, String> {
    match spec {
        PortSpec::Number(n) => match u16::try_from(*n) {
            Ok(p) if p != 0 => Ok(PortRef::Number(p)),
            _ => Err(format!("port {n} is out of range 1-65535")),
        },
        PortSpec::Name(name) => {
            if is_port_name(name) {
                Ok(PortRef::Name(name.clone()))
            } else if name.parse::<u32>().is_ok() {
                Err(format!(
                    "{name:?} is a quoted number, not a port name; write the port number unquoted"
                ))
            } else {
                Err(format!(
                    "{name:?} is not a valid port name (1-15 lower-case letters, digits and \
                     '-', with at least one letter, no leading, trailing or double '-')"
                ))
            }
        }
    }
}

/// An IANA service name as Kubernetes validates container port names.
pub fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// A network in CIDR form, or a bare address (a /32 or /128). Host bits
/// are cleared: `10.1.2.3/8` is `10.0.0.0/8`; an IPv4-mapped IPv6 network
/// (`::ffff:10.1.0.0/112`) is the IPv4 network it carries (`10.1.0.0/16`),
/// as clients are matched ([`canonical_net`]).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let net = if s.contains('/') {
        IpNet::from_str(s)
            .map(|n| n.trunc())
            .map_err(|_| format!("{s:?} is not a CIDR (e.g. 10.0.0.0/8, fd00::/8)"))
    } else {
        IpAddr::from_str(s)
            .map(IpNet::from)
            .map_err(|_| format!("{s:?} is not a CIDR or an IP address"))
    };
    net.map(canonical_net)
}

/// Validates one `networks[]` entry; errors carry the field relative to it
/// (`.cidr`, `.except[1]`). An unparsable `except` fails the whole entry:
/// dropping it would widen access.
pub fn network(spec: &NetworkSpec) -> Result<Network, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let net = match spec.cidr.as_deref() {
        None => {
            errors.push((".cidr".to_string(), "required".to_string()));
            None
        }
        Some(c) => match parse_net(c) {
            Ok(n) => Some(n),
            Err(m) => {
                errors.push((".cidr".to_string(), m));
                None
            }
        },
    };
    let mut except = Vec::new();
    for (i, e) in spec.except.iter().flatten().enumerate() {
        let field = format!(".except[{i}]");
        let parsed = match parse_net(e) {
            Ok(n) => n,
            Err(m) => {
                errors.push((field, m));
                continue;
            }
        };
        if let Some(net) = net {
            // Compared in canonical form: a mapped IPv6 except of an IPv4
            // cidr is fine; an except of the other family excludes nothing.
            if !same_family(&net, &parsed) {
                errors.push((
                    field,
                    format!(
                        "{parsed} ({e}) is not of the address family of cidr {net}, so it would exclude nothing"
                    ),
                ));
                continue;
            }
            if !net.contains(&parsed) {
                errors.push((field, format!("{parsed} is not inside cidr {net}")));
                continue;
            }
            if parsed.prefix_len() <= net.prefix_len() {
                errors.push((
                    field,
                    format!("{parsed} covers all of cidr {net}, which would admit no address"),
                ));
                continue;
            }
        }
        except.push(parsed);
    }
    match net {
        Some(net) if errors.is_empty() => Ok(Network { net, except }),
        _ => Err(errors),
    }
}

fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!(
        (a, b),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    )
}

/// A `meshTLS.identities` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityPattern {
    Exact(String),
    /// Without the leading `*.`; `""` for `*` (every authenticated client).
    Suffix(String),
}

/// Exact names, `*.suffix`, or `*`. A `*` anywhere else (`foo*`, `a.*.b`),
/// an empty suffix (`*.`), empty labels or whitespace are rejected: a
/// pattern we might read differently from the author must not take effect.
pub fn identity(s: &str) -> Result<IdentityPattern, String> {
    if s.is_empty() {
        return Err("an identity must not be empty".to_string());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("identity {s:?} contains whitespace"));
    }
    if s == "*" {
        return Ok(IdentityPattern::Suffix(String::new()));
    }
    if let Some(suffix) = s.strip_prefix("*.") {
        if suffix.is_empty() || suffix.contains('*') || suffix.split('.').any(str::is_empty) {
            return Err(format!(
                "identity {s:?}: a wildcard must be `*` or `*.` followed by a domain \
                 (e.g. *.emojivoto.serviceaccount.identity.linkerd.cluster.local)"
            ));
        }
        return Ok(IdentityPattern::Suffix(suffix.to_string()));
    }
    if s.contains('*') {
        return Err(format!(
            "identity {s:?}: `*` is allowed only as the whole identity or as a `*.` prefix"
        ));
    }
    Ok(IdentityPattern::Exact(s.to_string()))
}

// ---------------------------------------------------------------------------
// Cross-resource checks.
// ---------------------------------------------------------------------------

/// Problems between resources; see [`Resources::check`].
pub fn check(res: &Resources, _config: &PolicyConfig) -> Vec<ResourceError> {
    let mut out = Vec::new();
    duplicates(res, &mut out);
    annotations(res, &mut out);
    overlaps(res, &mut out);
    server_ports(res, &mut out);
    dangling_authorizations(res, &mut out);
    nap_references(res, &mut out);
    out
}

fn duplicates(res: &Resources, out: &mut Vec<ResourceError>) {
    fn dup<'a>(items: impl Iterator<Item = (&'a Origin, String)>, out: &mut Vec<ResourceError>) {
        let mut seen: HashMap<String, &Origin> = HashMap::new();
        for (origin, id) in items {
            if let Some(first) = seen.get(&id) {
                out.push(ResourceError::new(
                    origin,
                    Some(id.clone()),
                    "metadata.name",
                    format!("duplicate: also defined at {first}; the first one is used"),
                ));
            } else {
                seen.insert(id, origin);
            }
        }
    }
    dup(
        res.namespaces
            .iter()
            .map(|n| (&n.origin, format!("Namespace/{}", n.name))),
        out,
    );
    // Pods and workload templates share one name space: `--workload ns/name`.
    dup(
        res.workloads.iter().map(|w| {
            (
                &w.origin,
                format!("pod or workload {}/{}", w.namespace, w.name),
            )
        }),
        out,
    );
    dup(res.servers.iter().map(|s| (&s.origin, s.id())), out);
    dup(res.authorizations.iter().map(|a| (&a.origin, a.id())), out);
    dup(
        res.network_policies.iter().map(|n| (&n.origin, n.id())),
        out,
    );
}

fn annotations(res: &Resources, out: &mut Vec<ResourceError>) {
    for ns in &res.namespaces {
        let id = Some(format!("Namespace/{}", ns.name));
        if let Some(v) = ns.annotations.get(DEFAULT_INBOUND_POLICY_ANNOTATION) {
            if let Err(e) = DefaultPolicy::from_str(v) {
                out.push(ResourceError::new(
                    &ns.origin,
                    id.clone(),
                    format!("metadata.annotations.{DEFAULT_INBOUND_POLICY_ANNOTATION}"),
                    format!(
                        "{e}{}; namespace {} falls back to the cluster default",
                        did_you_mean(v, DefaultPolicy::NAMES),
                        ns.name
                    ),
                ));
            }
        }
        if let Some(v) = ns.annotations.get(OPAQUE_PORTS_ANNOTATION) {
            for problem in parse_opaque_ports(v, None).1 {
                out.push(ResourceError::new(
                    &ns.origin,
                    id.clone(),
                    format!("metadata.annotations.{OPAQUE_PORTS_ANNOTATION}"),
                    problem,
                ));
            }
        }
    }
    for w in &res.workloads {
        let meta = if w.kind == "Pod" {
            "metadata"
        } else {
            "spec.template.metadata"
        };
        if let Some(v) = w.annotations.get(DEFAULT_INBOUND_POLICY_ANNOTATION) {
            if let Err(e) = DefaultPolicy::from_str(v) {
                out.push(ResourceError::new(
                    &w.origin,
                    Some(w.id()),
                    format!("{meta}.annotations.{DEFAULT_INBOUND_POLICY_ANNOTATION}"),
                    format!(
                        "{e}{}; pod {}/{} falls back to its namespace's or the cluster default",
                        did_you_mean(v, DefaultPolicy::NAMES),
                        w.namespace,
                        w.name
                    ),
                ));
            }
        }
        if let Some(v) = w.annotations.get(OPAQUE_PORTS_ANNOTATION) {
            for problem in parse_opaque_ports(v, Some(w)).1 {
                out.push(ResourceError::new(
                    &w.origin,
                    Some(w.id()),
                    format!("{meta}.annotations.{OPAQUE_PORTS_ANNOTATION}"),
                    problem,
                ));
            }
        }
    }
}

/// Two Servers selecting the same pod and port, reported once per pair at
/// the newer Server (the older one wins at run time).
fn overlaps(res: &Resources, out: &mut Vec<ResourceError>) {
    let mut reported: BTreeSet<(usize, usize)> = BTreeSet::new();
    for pod in &res.workloads {
        let mut by_port: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, s) in res.servers.iter().enumerate() {
            for p in s.selected_ports(pod) {
                by_port.entry(p).or_default().push(i);
            }
        }
        for (port, servers) in by_port {
            let Some((&first, rest)) = servers.split_first() else {
                continue;
            };
            for &other in rest {
                if !reported.insert((first, other)) {
                    continue;
                }
                let (Some(older), Some(newer)) = (res.servers.get(first), res.servers.get(other))
                else {
                    continue;
                };
                out.push(ResourceError::new(
                    &newer.origin,
                    Some(newer.id()),
                    "spec",
                    format!(
                        "overlaps {} ({}): both select port {port} of {}; Servers must not \
                         overlap (at run time the older one, {}, wins)",
                        older.id(),
                        older.origin,
                        pod.id(),
                        older.id()
                    ),
                ));
            }
        }
    }
}

/// A Server port name that none of the pods it selects declares.
fn server_ports(res: &Resources, out: &mut Vec<ResourceError>) {
    for s in &res.servers {
        let PortRef::Name(name) = &s.port else {
            continue;
        };
        let selected: Vec<_> = res
            .workloads
            .iter()
            .filter(|w| w.namespace == s.namespace && s.pod_selector.matches(&w.labels))
            .collect();
        if !selected.is_empty() && selected.iter().all(|w| w.resolve(&s.port).is_empty()) {
            out.push(ResourceError::new(
                &s.origin,
                Some(s.id()),
                "spec.port",
                format!(
                    "no pod this Server selects declares a container port named {name:?} ({})",
                    selected
                        .iter()
                        .map(|w| w.id())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
}

fn dangling_authorizations(res: &Resources, out: &mut Vec<ResourceError>) {
    for a in &res.authorizations {
        if res.servers.iter().any(|s| a.targets(s)) {
            continue;
        }
        let (field, message) = match &a.server {
            ServerTarget::Name(name) => (
                "spec.server.name",
                format!(
                    "no Server named {name:?} in namespace {}; this authorization has no effect",
                    a.namespace
                ),
            ),
            ServerTarget::Selector(_) => (
                "spec.server.selector",
                format!(
                    "selects no Server in namespace {}; this authorization has no effect",
                    a.namespace
                ),
            ),
        };
        out.push(ResourceError::new(&a.origin, Some(a.id()), field, message));
    }
}

fn nap_references(res: &Resources, out: &mut Vec<ResourceError>) {
    for nap in &res.network_policies {
        for (i, src) in nap.sources.iter().enumerate() {
            let any = res
                .workloads
                .iter()
                .any(|w| w.namespace == src.namespace && src.pod_selector.matches(&w.labels));
            if !any {
                out.push(ResourceError::new(
                    &nap.origin,
                    Some(nap.id()),
                    format!("spec.sources[{i}].podSelector"),
                    format!(
                        "matches no pod in namespace {}; this source admits no client",
                        src.namespace
                    ),
                ));
            }
        }
        let targets: Vec<_> = res
            .workloads
            .iter()
            .filter(|w| w.namespace == nap.namespace && nap.target.matches(&w.labels))
            .collect();
        for (i, p) in nap.ports.iter().enumerate() {
            if matches!(p, PortRef::Name(_))
                && !targets.is_empty()
                && targets.iter().all(|w| w.resolve(p).is_empty())
            {
                out.push(ResourceError::new(
                    &nap.origin,
                    Some(nap.id()),
                    format!("spec.ports[{i}].port"),
                    format!("no target pod declares a container port named {p:?}"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        let cases: &[(PortSpec, Result<PortRef, &str>)] = &[
            (PortSpec::Number(8080), Ok(PortRef::Number(8080))),
            (PortSpec::Number(1), Ok(PortRef::Number(1))),
            (PortSpec::Number(65535), Ok(PortRef::Number(65535))),
            (PortSpec::Number(0), Err("out of range")),
            (PortSpec::Number(65536), Err("out of range")),
            (PortSpec::Number(-1), Err("out of range")),
            (
                PortSpec::Name("grpc".into()),
                Ok(PortRef::Name("grpc".into())),
            ),
            (
                PortSpec::Name("admin-http".into()),
                Ok(PortRef::Name("admin-http".into())),
            ),
            (
                PortSpec::Name("h2c".into()),
                Ok(PortRef::Name("h2c".into())),
            ),
            (PortSpec::Name("8080".into()), Err("quoted number")),
            (PortSpec::Name("".into()), Err("not a valid port name")),
            (PortSpec::Name("Grpc".into()), Err("not a valid port name")),
            (PortSpec::Name("a--b".into()), Err("not a valid port name")),
            (PortSpec::Name("-a".into()), Err("not a valid port name")),
            (PortSpec::Name("a-".into()), Err("not a valid port name")),
            (
                PortSpec::Name("abcdefghijklmnop".into()),
                Err("not a valid port name"),
            ),
            (PortSpec::Name("a_b".into()), Err("not a valid port name")),
        ];
        for (spec, want) in cases {
            match (port(spec), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{spec:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{spec:?}: {got}"),
                (got, want) => panic!("{spec:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn identities() {
        use IdentityPattern::*;
        let cases: &[(&str, Option<IdentityPattern>)] = &[
            ("*", Some(Suffix("".into()))),
            (
                "*.emojivoto.serviceaccount.identity.linkerd.cluster.local",
                Some(Suffix(
                    "emojivoto.serviceaccount.identity.linkerd.cluster.local".into(),
                )),
            ),
            (
                "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
                Some(Exact(
                    "web.emojivoto.serviceaccount.identity.linkerd.cluster.local".into(),
                )),
            ),
            (
                "spiffe://cluster.local/ns/a/sa/b",
                Some(Exact("spiffe://cluster.local/ns/a/sa/b".into())),
            ),
            ("foo*", None),
            ("*foo", None),
            ("a.*.b", None),
            ("*.", None),
            ("*..a", None),
            ("*.a..b", None),
            ("*.*.a", None),
            ("**", None),
            ("", None),
            ("a b", None),
        ];
        for (input, want) in cases {
            assert_eq!(identity(input).ok(), *want, "{input:?}");
        }
    }

    #[test]
    fn networks() {
        let n = |cidr: &str, except: &[&str]| NetworkSpec {
            cidr: Some(cidr.to_string()),
            except: Some(except.iter().map(|s| s.to_string()).collect()),
        };
        let ok = |spec: NetworkSpec| network(&spec).expect("valid network");
        assert_eq!(ok(n("10.0.0.0/8", &[])).net.to_string(), "10.0.0.0/8");
        assert_eq!(ok(n("10.1.2.3", &[])).net.to_string(), "10.1.2.3/32");
        assert_eq!(ok(n("fd00::1", &[])).net.to_string(), "fd00::1/128");
        assert_eq!(ok(n("::/0", &[])).net.to_string(), "::/0");
        assert_eq!(ok(n("10.1.2.3/8", &[])).net.to_string(), "10.0.0.0/8");
        // IPv4-mapped IPv6 networks are the IPv4 networks they carry.
        assert_eq!(
            ok(n("::ffff:10.0.0.0/104", &[])).net.to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(ok(n("::ffff:10.1.2.3", &[])).net.to_string(), "10.1.2.3/32");
        let mapped = ok(n("10.0.0.0/8", &["::ffff:10.1.0.0/112"]));
        assert_eq!(mapped.except[0].to_string(), "10.1.0.0/16");
        assert!(!mapped.contains("10.1.2.3".parse().unwrap()));
        assert!(!mapped.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(mapped.contains("10.2.0.1".parse().unwrap()));
        let both = ok(n("::ffff:10.0.0.0/104", &["10.1.0.0/16"]));
        assert_eq!(both.net.to_string(), "10.0.0.0/8");
        assert!(!both.contains("10.1.0.1".parse().unwrap()));
        let with = ok(n("10.0.0.0/8", &["10.1.0.0/16", "10.2.3.4"]));
        assert_eq!(with.except.len(), 2);
        assert!(!with.contains("10.2.3.4".parse().unwrap()));
        assert!(with.contains("10.2.3.5".parse().unwrap()));
        let bad: &[(NetworkSpec, &str, &str)] = &[
            (
                NetworkSpec {
                    cidr: None,
                    except: None,
                },
                ".cidr",
                "required",
            ),
            (n("10.0.0.0/33", &[]), ".cidr", "not a CIDR"),
            (n("bogus", &[]), ".cidr", "not a CIDR or an IP"),
            (
                n("10.0.0.0/8", &["11.0.0.0/16"]),
                ".except[0]",
                "not inside",
            ),
            (n("10.0.0.0/8", &["10.0.0.0/8"]), ".except[0]", "covers all"),
            (n("10.0.0.0/8", &["0.0.0.0/0"]), ".except[0]", "not inside"),
            (
                n("10.0.0.0/8", &["fd00::/8"]),
                ".except[0]",
                "address family",
            ),
            (
                n("::/0", &["::ffff:10.1.0.0/112"]),
                ".except[0]",
                "exclude nothing",
            ),
            (
                n("::ffff:10.0.0.0/104", &["fd00::/8"]),
                ".except[0]",
                "address family",
            ),
            (
                n("10.0.0.0/8", &["10.1.0.0/16", "nope"]),
                ".except[1]",
                "not a CIDR",
            ),
            (n("10.0.0.1", &["10.0.0.1"]), ".except[0]", "covers all"),
        ];
        for (spec, field, msg) in bad {
            let errs = network(spec).expect_err("invalid network");
            assert_eq!(errs[0].0, *field, "{spec:?}");
            assert!(errs[0].1.contains(msg), "{spec:?}: {}", errs[0].1);
        }
    }
}
