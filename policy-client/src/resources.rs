//! Kubernetes-style resources: the serde types as users write them, the
//! validated objects the rest of the crate works with, and [`Resources`],
//! everything loaded from a set of files.
//!
//! Owns: the shape of `Server`, `ServerAuthorization` and
//! `NetworkAuthenticationPolicy` specs (unknown fields denied: a typo must
//! never silently widen access), the validated forms of all supported kinds,
//! each remembering where it came from, and [`ResourceError`], the one error
//! type every loading and checking step reports with.
//! Must not: read files (`load` does), decide rules (`validate` does), or
//! produce per-port policy (`compile` does).
//! Called by: the proxy's `--policy-file` source and `portcullis-controller`
//! (`serve`, `validate`, `check`) through [`Resources::load`],
//! [`Resources::check`] and [`crate::compile::compile`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::model::{Network, PolicyConfig, Protocol};
use crate::selector::Selector;

// ---------------------------------------------------------------------------
// Serde types: the specs as written. Every struct denies unknown fields.
// ---------------------------------------------------------------------------

/// `Server.spec` (policy.linkerd.io/v1beta1).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerSpec {
    pub pod_selector: Option<Selector>,
    pub port: Option<PortSpec>,
    pub proxy_protocol: Option<String>,
}

/// `ServerAuthorization.spec` (policy.linkerd.io/v1beta1).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerAuthorizationSpec {
    pub server: Option<ServerRefSpec>,
    pub client: Option<ClientSpec>,
}

/// `ServerAuthorization.spec.server`: exactly one of `name`, `selector`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerRefSpec {
    pub name: Option<String>,
    pub selector: Option<Selector>,
}

/// `ServerAuthorization.spec.client`: exactly one of `meshTLS`,
/// `unauthenticated: true`; optional `networks`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientSpec {
    #[serde(rename = "meshTLS")]
    pub mesh_tls: Option<MeshTlsSpec>,
    pub unauthenticated: Option<bool>,
    pub networks: Option<Vec<NetworkSpec>>,
}

/// `client.meshTLS`: exactly one of `unauthenticatedTLS: true`,
/// `identities`, `serviceAccounts`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshTlsSpec {
    #[serde(rename = "unauthenticatedTLS")]
    pub unauthenticated_tls: Option<bool>,
    pub identities: Option<Vec<String>>,
    pub service_accounts: Option<Vec<ServiceAccountSpec>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceAccountSpec {
    pub name: Option<String>,
    pub namespace: Option<String>,
}

/// `client.networks[]`: `cidr` minus every `except`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkSpec {
    pub cidr: Option<String>,
    pub except: Option<Vec<String>>,
}

/// `NetworkAuthenticationPolicy.spec` (policy.linkerd.io/v1alpha1).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkAuthenticationPolicySpec {
    pub target: Option<NapTargetSpec>,
    pub ports: Option<Vec<NapPortSpec>>,
    pub sources: Option<Vec<NapSourceSpec>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NapTargetSpec {
    pub selector: Option<Selector>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NapPortSpec {
    pub port: Option<PortSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NapSourceSpec {
    pub pod_selector: Option<Selector>,
    pub namespace: Option<String>,
}

/// A port as written: a YAML number, or a string (a port name). The number
/// is kept wide so that validation, not the parser, reports the range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    Number(i64),
    Name(String),
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a port name")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortSpec, E> {
                Ok(PortSpec::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortSpec, E> {
                Ok(PortSpec::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSpec, E> {
                Ok(PortSpec::Name(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Validated objects.
// ---------------------------------------------------------------------------

/// Where an object was read: the file name and the 1-based document number
/// (items of a `List` share the List's document number).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub file: String,
    pub doc: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.doc)
    }
}

/// A validated port reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortRef {
    Number(u16),
    /// An IANA-style port name, resolved through a pod's container ports.
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(n) => f.write_str(n),
        }
    }
}

/// A `Namespace`: only its annotations matter (default policy, opaque ports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub origin: Origin,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// A declared container port (TCP only: the proxy handles nothing else).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub container: String,
    pub name: Option<String>,
    pub port: u16,
}

/// An HTTP probe (`httpGet` of a liveness, readiness or startup probe).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    pub container: String,
    /// `livenessProbe`, `readinessProbe` or `startupProbe`.
    pub probe: &'static str,
    pub port: PortRef,
    /// The path without its query string (`/` when the probe gives none).
    pub path: String,
}

/// A pod, or the pod template of a Deployment, StatefulSet, DaemonSet or
/// ReplicaSet (named after the workload), with what policy needs from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub origin: Origin,
    /// `Pod`, `Deployment`, `StatefulSet`, `DaemonSet` or `ReplicaSet`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `spec.serviceAccountName`, default `default`.
    pub service_account: String,
    pub ports: Vec<ContainerPort>,
    pub probes: Vec<HttpProbe>,
    /// `status.podIP`, when present.
    pub pod_ip: Option<IpAddr>,
}

impl Workload {
    /// The port numbers a reference denotes on this pod: a number as is, a
    /// name through the declared container ports only.
    pub fn resolve(&self, port: &PortRef) -> Vec<u16> {
        match port {
            PortRef::Number(n) => vec![*n],
            PortRef::Name(name) => {
                let mut ports: Vec<u16> = self
                    .ports
                    .iter()
                    .filter(|p| p.name.as_deref() == Some(name.as_str()))
                    .map(|p| p.port)
                    .collect();
                ports.sort_unstable();
                ports.dedup();
                ports
            }
        }
    }

    /// `Pod/ns/name` (or `Deployment/ns/name`, ...).
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// A validated `Server`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub origin: Origin,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub pod_selector: Selector,
    pub port: PortRef,
    pub protocol: Protocol,
}

impl Server {
    pub fn id(&self) -> String {
        format!("Server/{}/{}", self.namespace, self.name)
    }

    /// The ports of `pod` this Server selects (none when it selects another pod).
    pub fn selected_ports(&self, pod: &Workload) -> Vec<u16> {
        if pod.namespace == self.namespace && self.pod_selector.matches(&pod.labels) {
            pod.resolve(&self.port)
        } else {
            Vec::new()
        }
    }
}

/// Which Servers a ServerAuthorization applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerTarget {
    Name(String),
    /// Selects Servers by their `metadata.labels`.
    Selector(Selector),
}

/// Who a ServerAuthorization admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `unauthenticated: true`.
    Unauthenticated,
    /// `meshTLS.unauthenticatedTLS: true`.
    TlsUnauthenticated,
    /// `meshTLS.identities`: exact names and `*.suffix` / `*` (suffix `""`).
    Identities {
        identities: BTreeSet<String>,
        suffixes: BTreeSet<String>,
    },
    /// `meshTLS.serviceAccounts` as `(name, namespace)`, the namespace
    /// already defaulted to the authorization's own.
    ServiceAccounts(Vec<(String, String)>),
}

/// A validated `ServerAuthorization`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAuthorization {
    pub origin: Origin,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub server: ServerTarget,
    pub client: ClientAuth,
    /// `None`: the cluster networks (as Linkerd does), not every address.
    pub networks: Option<Vec<Network>>,
}

impl ServerAuthorization {
    pub fn id(&self) -> String {
        format!("ServerAuthorization/{}/{}", self.namespace, self.name)
    }

    /// Whether this authorization applies to `server`.
    pub fn targets(&self, server: &Server) -> bool {
        server.namespace == self.namespace
            && match &self.server {
                ServerTarget::Name(name) => *name == server.name,
                ServerTarget::Selector(sel) => sel.matches(&server.labels),
            }
    }
}

/// One `sources[]` entry of a NetworkAuthenticationPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NapSource {
    pub pod_selector: Selector,
    /// The namespace of the source pods (defaulted to the policy's own).
    pub namespace: String,
}

/// A validated `NetworkAuthenticationPolicy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkAuthenticationPolicy {
    pub origin: Origin,
    pub namespace: String,
    pub name: String,
    pub target: Selector,
    pub ports: Vec<PortRef>,
    pub sources: Vec<NapSource>,
}

impl NetworkAuthenticationPolicy {
    pub fn id(&self) -> String {
        format!(
            "NetworkAuthenticationPolicy/{}/{}",
            self.namespace, self.name
        )
    }

    /// The ports of `pod` this policy governs.
    pub fn selected_ports(&self, pod: &Workload) -> Vec<u16> {
        if pod.namespace != self.namespace || !self.target.matches(&pod.labels) {
            return Vec::new();
        }
        let mut ports: Vec<u16> = self.ports.iter().flat_map(|p| pod.resolve(p)).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

// ---------------------------------------------------------------------------
// Errors.
// ---------------------------------------------------------------------------

/// One problem in the input, located for an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceError {
    pub file: String,
    /// 1-based document number; 0 when the problem is with the file itself.
    pub doc: usize,
    /// `Kind/namespace/name` (`Namespace/name`), when known.
    pub resource: Option<String>,
    /// The field path, e.g. `spec.client.meshTLS.identities[2]`; empty for
    /// the document as a whole.
    pub field: String,
    pub message: String,
}

impl ResourceError {
    pub fn new(
        origin: &Origin,
        resource: Option<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ResourceError {
            file: origin.file.clone(),
            doc: origin.doc,
            resource,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ResourceError {
    /// `FILE:DOC Kind/ns/name: field: message`; the resource, the field and
    /// (for whole-file problems) the document number are left out when unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if self.doc > 0 {
            write!(f, ":{}", self.doc)?;
        }
        if let Some(resource) = &self.resource {
            write!(f, " {resource}")?;
        }
        f.write_str(": ")?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ResourceError {}

/// Every hard error found while loading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceErrors(pub Vec<ResourceError>);

impl fmt::Display for ResourceErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ResourceErrors {}

// ---------------------------------------------------------------------------
// Everything loaded.
// ---------------------------------------------------------------------------

/// All objects loaded from a set of files, in order of appearance (the
/// order of the paths given, files of a directory sorted by name, documents
/// in file order). Order matters: of two overlapping Servers the older wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub namespaces: Vec<Namespace>,
    /// Pods and workload pod templates.
    pub workloads: Vec<Workload>,
    pub servers: Vec<Server>,
    pub authorizations: Vec<ServerAuthorization>,
    pub network_policies: Vec<NetworkAuthenticationPolicy>,
}

impl Resources {
    /// Loads files and/or directories (every `*.yaml`/`*.yml` directly
    /// inside, sorted by name). All hard errors (unreadable files, YAML
    /// syntax, wrong types, unknown fields, per-resource validation) are
    /// collected; any of them fails the whole load, so a half-read policy
    /// never takes effect.
    pub fn load<P: AsRef<Path>>(paths: &[P]) -> Result<Resources, ResourceErrors> {
        crate::load::load_paths(paths)
    }

    /// Loads YAML from a string; `file` names it in errors.
    pub fn from_yaml(yaml: &str, file: &str) -> Result<Resources, ResourceErrors> {
        crate::load::load_str(yaml, file)
    }

    /// Cross-resource problems: overlapping Servers, unknown annotation
    /// values, authorizations that target no Server, duplicates, sources
    /// that match no pod. `portcullis-controller validate` reports them as
    /// errors; at run time they are logged as warnings.
    pub fn check(&self, config: &PolicyConfig) -> Vec<ResourceError> {
        crate::validate::check(self, config)
    }

    /// Every pod and workload template as `(namespace, name)`.
    pub fn pods(&self) -> Vec<(String, String)> {
        self.workloads
            .iter()
            .map(|w| (w.namespace.clone(), w.name.clone()))
            .collect()
    }

    /// The pod (or workload template) `namespace/name`; the first one when
    /// several share the name.
    pub fn workload(&self, namespace: &str, name: &str) -> Option<&Workload> {
        self.workloads
            .iter()
            .find(|w| w.namespace == namespace && w.name == name)
    }

    /// The `Namespace` resource named `name`, when the input has one.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    /// Appends everything from `other` (keeping order: `other` is newer).
    pub fn extend(&mut self, other: Resources) {
        self.namespaces.extend(other.namespaces);
        self.workloads.extend(other.workloads);
        self.servers.extend(other.servers);
        self.authorizations.extend(other.authorizations);
        self.network_policies.extend(other.network_policies);
    }
}
