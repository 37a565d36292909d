//! Compilation: the validated resources plus one workload (`ns/pod`) become
//! that pod's [`WorkloadPolicy`], a [`PortPolicy`] per port.
//!
//! Owns: which Server governs a port (the older of overlapping ones, with a
//! warning), the authorizations of a Server as plain data, what a
//! NetworkAuthenticationPolicy adds, the default policy and protocol of a
//! port with no Server (annotations, then namespace, then config), opaque
//! ports, and the routes that let kubelet probes through.
//! Must not: read files, log, or fail on anything the resources say: every
//! problem is a warning in [`Compiled::warnings`], and the result always
//! errs on the side of denying (an unresolvable thing grants nothing).
//! Called by: the proxy's file policy source, `portcullis-controller serve`
//! (per watched workload) and `check`.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use crate::model::{
    Access, Authentication, Authorization, DefaultPolicy, HttpRoute, Meta, Network, PathMatch,
    PolicyConfig, PortPolicy, Protocol, RouteMatch, WorkloadPolicy,
};
use crate::resources::{
    ClientAuth, NetworkAuthenticationPolicy, PortRef, Resources, Server, ServerAuthorization,
    Workload,
};
use crate::validate::is_port_name;

/// Pod or namespace annotation naming the default policy.
pub const DEFAULT_INBOUND_POLICY_ANNOTATION: &str = "config.linkerd.io/default-inbound-policy";
/// Pod or namespace annotation listing opaque ports.
pub const OPAQUE_PORTS_ANNOTATION: &str = "config.linkerd.io/opaque-ports";

/// The policy of one workload and what was odd about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    pub policy: WorkloadPolicy,
    /// Overlapping Servers, unknown annotation values, unresolved port names...
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// The workload is not written `namespace/pod`.
    #[error("invalid workload {0:?}: expected NAMESPACE/POD")]
    BadWorkload(String),
    /// No Pod (or Deployment, StatefulSet, DaemonSet, ReplicaSet) by that name.
    #[error(
        "unknown workload {namespace}/{name}: no Pod or workload of that name in the resources"
    )]
    UnknownPod { namespace: String, name: String },
}

/// Compiles the policy of `workload` (`namespace/pod`).
pub fn compile(
    res: &Resources,
    workload: &str,
    config: &PolicyConfig,
) -> Result<Compiled, CompileError> {
    let (namespace, name) = workload
        .split_once('/')
        .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| CompileError::BadWorkload(workload.to_string()))?;
    let pod = res
        .workload(namespace, name)
        .ok_or_else(|| CompileError::UnknownPod {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })?;
    let mut warnings = Vec::new();
    let default_policy = effective_default(res, pod, config, &mut warnings);
    let opaque_ports = effective_opaque_ports(res, pod, config, &mut warnings);
    let cluster = &config.cluster_networks;

    // Every port of the pod: declared, selected by a Server or a
    // NetworkAuthenticationPolicy, or probed.
    let mut ports: BTreeSet<u16> = pod.ports.iter().map(|p| p.port).collect();

    // port -> Servers selecting it, oldest first.
    let mut servers: BTreeMap<u16, Vec<&Server>> = BTreeMap::new();
    for s in &res.servers {
        let selected = s.selected_ports(pod);
        if selected.is_empty()
            && matches!(s.port, PortRef::Name(_))
            && s.namespace == pod.namespace
            && s.pod_selector.matches(&pod.labels)
        {
            warnings.push(format!(
                "{} selects {} but port {:?} is not a declared container port of it; ignored",
                s.id(),
                pod.id(),
                s.port.to_string()
            ));
        }
        for p in selected {
            servers.entry(p).or_default().push(s);
        }
    }
    let mut naps: BTreeMap<u16, Vec<&NetworkAuthenticationPolicy>> = BTreeMap::new();
    for n in &res.network_policies {
        for p in n.selected_ports(pod) {
            naps.entry(p).or_default().push(n);
        }
    }
    ports.extend(servers.keys());
    ports.extend(naps.keys());

    let mut probes: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for probe in &pod.probes {
        match &probe.port {
            PortRef::Number(p) => {
                probes.entry(*p).or_default().insert(probe.path.clone());
            }
            PortRef::Name(n) => warnings.push(format!(
                "{}: {} of container {} uses port {n:?}, which the container does not declare; \
                 the probe is not authorized specially",
                pod.id(),
                probe.probe,
                probe.container
            )),
        }
    }
    ports.extend(probes.keys());

    let mut out = BTreeMap::new();
    for port in ports {
        let protocol_default = if opaque_ports.contains(&port) {
            Protocol::Opaque
        } else {
            Protocol::Detect
        };
        let nap_authzs: Vec<Authorization> = {
            let mut list: Vec<&NetworkAuthenticationPolicy> =
                naps.get(&port).cloned().unwrap_or_default();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            list.iter()
                .map(|n| nap_authorization(res, n, config))
                .collect()
        };
        let mut policy = match servers.get(&port).map(Vec::as_slice) {
            Some([server, rest @ ..]) => {
                for other in rest {
                    warnings.push(format!(
                        "{} and {} both select port {port} of {}; the older one, {} ({}), is used",
                        server.id(),
                        other.id(),
                        pod.id(),
                        server.id(),
                        server.origin
                    ));
                }
                let mut authorizations = server_authorizations(res, server, config);
                authorizations.extend(nap_authzs);
                PortPolicy {
                    port,
                    protocol: server.protocol,
                    server: Meta::policy("server", &server.name),
                    access: Access::Enforce,
                    authorizations,
                    http_routes: Vec::new(),
                }
            }
            _ => match naps.get(&port).and_then(|l| l.first()) {
                // A NetworkAuthenticationPolicy alone makes the port enforced:
                // only its sources are admitted.
                Some(first) => PortPolicy {
                    port,
                    protocol: protocol_default,
                    server: Meta::policy("networkauthenticationpolicy", &first.name),
                    access: Access::Enforce,
                    authorizations: nap_authzs,
                    http_routes: Vec::new(),
                },
                None => PortPolicy::for_default(port, protocol_default, default_policy, cluster),
            },
        };
        if let Some(paths) = probes.get(&port) {
            // Linkerd authorizes probes only when the port has no routes of
            // its own (then the Server's routes decide).
            if policy.http_routes.is_empty() {
                policy.http_routes = probe_routes(paths);
            }
        }
        out.insert(port, policy);
    }

    Ok(Compiled {
        policy: WorkloadPolicy {
            workload: format!("{}/{}", pod.namespace, pod.name),
            ports: out,
            default_policy,
            opaque_ports,
            cluster_networks: cluster.clone(),
        },
        warnings,
    })
}

/// The probe route (`GET` on each exact probe path, any unauthenticated
/// client from anywhere), then a catch-all route with no authorizations of
/// its own, so every other request is still decided by the port's
/// authorizations (`authorize_request` checks a route's authorizations
/// together with the port's).
fn probe_routes(paths: &BTreeSet<String>) -> Vec<HttpRoute> {
    vec![
        HttpRoute {
            meta: Meta::default("probe"),
            matches: paths
                .iter()
                .map(|p| RouteMatch {
                    path: Some(PathMatch::Exact(p.clone())),
                    method: Some("GET".to_string()),
                    headers: Vec::new(),
                })
                .collect(),
            authorizations: vec![Authorization {
                meta: Meta::default("probe"),
                networks: Network::all(),
                authentication: Authentication::Unauthenticated,
            }],
        },
        HttpRoute {
            meta: Meta::default("default"),
            matches: Vec::new(),
            authorizations: Vec::new(),
        },
    ]
}

/// The ServerAuthorizations targeting `server`, by name.
fn server_authorizations(
    res: &Resources,
    server: &Server,
    config: &PolicyConfig,
) -> Vec<Authorization> {
    let mut authzs: Vec<&ServerAuthorization> = res
        .authorizations
        .iter()
        .filter(|a| a.targets(server))
        .collect();
    authzs.sort_by(|a, b| a.name.cmp(&b.name));
    authzs.dedup_by(|a, b| a.name == b.name);
    authzs
        .into_iter()
        .map(|a| Authorization {
            meta: Meta::policy("serverauthorization", &a.name),
            networks: a
                .networks
                .clone()
                .unwrap_or_else(|| config.cluster_networks.clone()),
            authentication: match &a.client {
                ClientAuth::Unauthenticated => Authentication::Unauthenticated,
                ClientAuth::TlsUnauthenticated => Authentication::TlsUnauthenticated,
                ClientAuth::Identities {
                    identities,
                    suffixes,
                } => Authentication::TlsAuthenticated {
                    identities: identities.clone(),
                    suffixes: suffixes.clone(),
                },
                ClientAuth::ServiceAccounts(sas) => Authentication::TlsAuthenticated {
                    identities: sas
                        .iter()
                        .map(|(name, ns)| config.service_account_identity(name, ns))
                        .collect(),
                    suffixes: BTreeSet::new(),
                },
            },
        })
        .collect()
}

/// The authorization a NetworkAuthenticationPolicy grants: the identities
/// of the service accounts of every pod its sources select, from the
/// cluster networks. A source that selects no pod adds no identity.
fn nap_authorization(
    res: &Resources,
    nap: &NetworkAuthenticationPolicy,
    config: &PolicyConfig,
) -> Authorization {
    let identities = nap
        .sources
        .iter()
        .flat_map(|src| {
            res.workloads.iter().filter(move |w| {
                w.namespace == src.namespace && src.pod_selector.matches(&w.labels)
            })
        })
        .map(|w| config.service_account_identity(&w.service_account, &w.namespace))
        .collect();
    Authorization {
        meta: Meta::policy("networkauthenticationpolicy", &nap.name),
        networks: config.cluster_networks.clone(),
        authentication: Authentication::TlsAuthenticated {
            identities,
            suffixes: BTreeSet::new(),
        },
    }
}

/// Pod annotation, else the Namespace's, else the configured default; an
/// unknown value is a warning and its level is skipped (never read as allow).
fn effective_default(
    res: &Resources,
    pod: &Workload,
    config: &PolicyConfig,
    warnings: &mut Vec<String>,
) -> DefaultPolicy {
    if let Some(v) = pod.annotations.get(DEFAULT_INBOUND_POLICY_ANNOTATION) {
        match DefaultPolicy::from_str(v) {
            Ok(p) => return p,
            Err(e) => warnings.push(format!(
                "{}: annotation {DEFAULT_INBOUND_POLICY_ANNOTATION}: {e}; ignored",
                pod.id()
            )),
        }
    }
    if let Some(ns) = res.namespace(&pod.namespace) {
        if let Some(v) = ns.annotations.get(DEFAULT_INBOUND_POLICY_ANNOTATION) {
            match DefaultPolicy::from_str(v) {
                Ok(p) => return p,
                Err(e) => warnings.push(format!(
                    "Namespace/{}: annotation {DEFAULT_INBOUND_POLICY_ANNOTATION}: {e}; ignored",
                    ns.name
                )),
            }
        }
    }
    config.default_policy
}

/// The configured opaque ports plus the pod's annotation (or, when the pod
/// has none, its namespace's).
fn effective_opaque_ports(
    res: &Resources,
    pod: &Workload,
    config: &PolicyConfig,
    warnings: &mut Vec<String>,
) -> BTreeSet<u16> {
    let mut ports = config.opaque_ports.clone();
    let (owner, value) = match pod.annotations.get(OPAQUE_PORTS_ANNOTATION) {
        Some(v) => (pod.id(), Some(v)),
        None => match res.namespace(&pod.namespace) {
            Some(ns) => (
                format!("Namespace/{}", ns.name),
                ns.annotations.get(OPAQUE_PORTS_ANNOTATION),
            ),
            None => (String::new(), None),
        },
    };
    if let Some(v) = value {
        let (listed, problems) = parse_opaque_ports(v, Some(pod));
        ports.extend(listed);
        for p in problems {
            warnings.push(format!(
                "{owner}: annotation {OPAQUE_PORTS_ANNOTATION}: {p}"
            ));
        }
    }
    ports
}

/// Reads `config.linkerd.io/opaque-ports`: a comma list of numbers, ranges
/// (`4000-4100`) and port names (resolved through `pod`'s container ports;
/// without a pod only checked for syntax). Returns the ports and a message
/// per entry that was skipped.
pub fn parse_opaque_ports(value: &str, pod: Option<&Workload>) -> (BTreeSet<u16>, Vec<String>) {
    let mut ports = BTreeSet::new();
    let mut problems = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let number = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p != 0);
        if let Some((lo, hi)) = entry.split_once('-').filter(|(lo, _)| number(lo).is_some()) {
            match (number(lo), number(hi)) {
                (Some(lo), Some(hi)) if lo <= hi => ports.extend(lo..=hi),
                _ => problems.push(format!(
                    "{entry:?} is not a port range (e.g. 4000-4100); skipped"
                )),
            }
        } else if let Some(p) = number(entry) {
            ports.insert(p);
        } else if is_port_name(entry) {
            if let Some(pod) = pod {
                let resolved = pod.resolve(&PortRef::Name(entry.to_string()));
                if resolved.is_empty() {
                    problems.push(format!(
                        "port name {entry:?} is not a declared container port of {}; skipped",
                        pod.id()
                    ));
                }
                ports.extend(resolved);
            }
        } else {
            problems.push(format!(
                "{entry:?} is not a port number, range or name; skipped"
            ));
        }
    }
    (ports, problems)
}
