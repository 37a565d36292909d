//! Reading resource files: paths and directories, multi-document YAML,
//! dispatch by `apiVersion`/`kind`, and turning every parse problem into a
//! located [`ResourceError`].
//!
//! Owns: which kinds are read (`Namespace`, `Pod`, `List`, apps/v1
//! `Deployment`/`StatefulSet`/`DaemonSet`/`ReplicaSet` pod templates, and
//! Linkerd's `Server`, `ServerAuthorization`, `NetworkAuthenticationPolicy`),
//! which are skipped (any other kind outside `policy.linkerd.io`) and which
//! are errors (any other kind inside it: a typo must not drop a policy).
//! Must not: judge policy rules (`validate` does) or panic on any input.
//! Every problem is collected; any one of them fails the whole load.
//! Called by: [`Resources::load`] and [`Resources::from_yaml`].

use std::fs;
use std::net::IpAddr;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use crate::model::POLICY_GROUP;
use crate::resources::{
    ContainerPort, HttpProbe, Namespace, Origin, PortRef, ResourceError, ResourceErrors, Resources,
    Workload,
};
use crate::selector::{did_you_mean, is_dns_label, is_dns_subdomain};
use crate::validate::{self, Object};

/// The kinds of `policy.linkerd.io` we read, with the versions accepted.
const POLICY_KINDS: [(&str, &[&str]); 3] = [
    ("Server", &["v1beta1", "v1beta2", "v1beta3"]),
    ("ServerAuthorization", &["v1beta1"]),
    ("NetworkAuthenticationPolicy", &["v1alpha1"]),
];

/// apps/v1 kinds whose pod template counts as a pod named after the workload.
const WORKLOAD_KINDS: [&str; 4] = ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"];

/// The fields of Kubernetes' ObjectMeta: policy resources may use only these.
const METADATA_FIELDS: [&str; 15] = [
    "annotations",
    "creationTimestamp",
    "deletionGracePeriodSeconds",
    "deletionTimestamp",
    "finalizers",
    "generateName",
    "generation",
    "labels",
    "managedFields",
    "name",
    "namespace",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
    "uid",
];

/// Top-level fields of a policy resource (`status` is tolerated and ignored).
const OBJECT_FIELDS: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];

pub(crate) fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Result<Resources, ResourceErrors> {
    let mut res = Resources::default();
    let mut errors = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file_error = |message: String| ResourceError {
            file: name.clone(),
            doc: 0,
            resource: None,
            field: String::new(),
            message,
        };
        match fs::metadata(path) {
            Err(e) => errors.push(file_error(format!("cannot read: {e}"))),
            Ok(meta) if meta.is_dir() => match yaml_files(path) {
                Err(e) => errors.push(file_error(format!("cannot read directory: {e}"))),
                Ok(files) if files.is_empty() => errors.push(file_error(
                    "directory has no *.yaml or *.yml files".to_string(),
                )),
                Ok(files) => {
                    for f in files {
                        load_file(&f, &mut res, &mut errors);
                    }
                }
            },
            Ok(_) => load_file(path, &mut res, &mut errors),
        }
    }
    if errors.is_empty() {
        Ok(res)
    } else {
        Err(ResourceErrors(errors))
    }
}

/// Whether a directory's entry is one of its policy files: `*.yaml` or
/// `*.yml` (the proxy's file watcher asks too).
pub fn is_yaml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

/// `*.yaml` and `*.yml` files directly inside `dir`, sorted by name.
fn yaml_files(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if is_yaml(&path) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn load_file(path: &Path, res: &mut Resources, errors: &mut Vec<ResourceError>) {
    let name = path.display().to_string();
    match fs::read_to_string(path) {
        Ok(text) => load_into(&text, &name, res, errors),
        Err(e) => errors.push(ResourceError {
            file: name,
            doc: 0,
            resource: None,
            field: String::new(),
            message: format!("cannot read: {e}"),
        }),
    }
}

pub(crate) fn load_str(yaml: &str, file: &str) -> Result<Resources, ResourceErrors> {
    let mut res = Resources::default();
    let mut errors = Vec::new();
    load_into(yaml, file, &mut res, &mut errors);
    if errors.is_empty() {
        Ok(res)
    } else {
        Err(ResourceErrors(errors))
    }
}

fn load_into(yaml: &str, file: &str, res: &mut Resources, errors: &mut Vec<ResourceError>) {
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let origin = Origin {
            file: file.to_string(),
            doc: i + 1,
        };
        match Value::deserialize(doc) {
            Ok(value) => load_value(value, &origin, "", res, errors),
            Err(e) => {
                // After a syntax error the parser cannot find where the next
                // document starts (it would repeat the error forever), so the
                // rest of the file is not read.
                errors.push(ResourceError::new(
                    &origin,
                    None,
                    "",
                    format!("invalid YAML: {e} (the rest of the file is not read)"),
                ));
                break;
            }
        }
    }
}

/// Dispatches one document (or `List` item; `prefix` is then `items[N].`).
fn load_value(
    mut value: Value,
    origin: &Origin,
    prefix: &str,
    res: &mut Resources,
    errors: &mut Vec<ResourceError>,
) {
    let err = |field: &str, message: String| {
        ResourceError::new(origin, None, format!("{prefix}{field}"), message)
    };
    if let Err(e) = value.apply_merge() {
        errors.push(err("", format!("invalid YAML merge key: {e}")));
        return;
    }
    let map = match value {
        // An empty document (or `---` with nothing after it) is skipped.
        Value::Null => return,
        Value::Mapping(m) => m,
        other => {
            errors.push(err(
                "",
                format!(
                    "a document must be a Kubernetes object (a mapping), not {}",
                    value_kind(&other)
                ),
            ));
            return;
        }
    };
    let kind = match map.get("kind") {
        Some(Value::String(k)) => k.clone(),
        Some(_) => {
            errors.push(err("kind", "must be a string".to_string()));
            return;
        }
        None => {
            errors.push(err("kind", "required".to_string()));
            return;
        }
    };
    let api_version = match map.get("apiVersion") {
        Some(Value::String(v)) => v.clone(),
        Some(_) => {
            errors.push(err("apiVersion", "must be a string".to_string()));
            return;
        }
        None => {
            errors.push(err("apiVersion", "required".to_string()));
            return;
        }
    };
    let (group, version) = api_version
        .split_once('/')
        .unwrap_or(("", api_version.as_str()));
    let ctx = Ctx {
        origin,
        prefix,
        kind: &kind,
    };
    match (group, kind.as_str()) {
        ("", "List") => match map.get("items") {
            None | Some(Value::Null) => {}
            Some(Value::Sequence(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let prefix = format!("{prefix}items[{i}].");
                    load_value(item.clone(), origin, &prefix, res, errors);
                }
            }
            Some(other) => errors.push(err(
                "items",
                format!("must be a list, not {}", value_kind(other)),
            )),
        },
        ("", "Namespace") => {
            if let Some(ns) = namespace(&ctx, &map, errors) {
                res.namespaces.push(ns);
            }
        }
        ("", "Pod") => {
            if let Some(w) = pod(&ctx, &map, errors) {
                res.workloads.push(w);
            }
        }
        ("apps", k) if WORKLOAD_KINDS.contains(&k) => {
            if let Some(w) = workload_template(&ctx, &map, errors) {
                res.workloads.push(w);
            }
        }
        (POLICY_GROUP, _) => policy(&ctx, version, &map, res, errors),
        // Services, ConfigMaps, ServiceAccounts...: not policy, skipped.
        _ => {}
    }
}

/// The document being read, for error messages.
struct Ctx<'a> {
    origin: &'a Origin,
    prefix: &'a str,
    kind: &'a str,
}

impl Ctx<'_> {
    fn error(&self, resource: Option<String>, field: &str, message: String) -> ResourceError {
        ResourceError::new(
            self.origin,
            resource,
            format!("{}{}", self.prefix, field),
            message,
        )
    }
}

/// Name, namespace, labels and annotations of an object.
struct Meta {
    name: String,
    namespace: String,
    labels: std::collections::BTreeMap<String, String>,
    annotations: std::collections::BTreeMap<String, String>,
}

/// The best-effort `Kind/ns/name` of an object whose metadata may be broken.
fn raw_id(kind: &str, map: &Mapping, namespaced: bool) -> String {
    let meta = map.get("metadata");
    let get = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    match (get("name"), namespaced) {
        (Some(name), true) => format!("{kind}/{}/{name}", get("namespace").unwrap_or("default")),
        (Some(name), false) => format!("{kind}/{name}"),
        (None, _) => kind.to_string(),
    }
}

/// Reads `metadata` at `at`; `strict`: unknown fields are errors (policy
/// resources; Kubernetes' own objects keep their lenient reading). Name and
/// namespace must be valid Kubernetes names for every kind.
fn read_meta(
    ctx: &Ctx<'_>,
    id: &str,
    meta: Option<&Value>,
    at: &str,
    strict: bool,
    errors: &mut Vec<ResourceError>,
) -> Option<Meta> {
    let id = Some(id.to_string());
    let Some(meta) = meta else {
        errors.push(ctx.error(id, at, "required (with at least a name)".to_string()));
        return None;
    };
    let before = errors.len();
    if strict {
        if let Value::Mapping(m) = meta {
            unknown_keys(ctx, &id, at, m, &METADATA_FIELDS, errors);
        }
    }
    let om: ObjectMeta = match de(meta.clone()) {
        Ok(om) => om,
        Err((path, message)) => {
            errors.push(ctx.error(id, &join(at, &path), message));
            return None;
        }
    };
    let name = match om.name {
        Some(n) if !n.is_empty() => n,
        _ => {
            errors.push(ctx.error(id.clone(), &format!("{at}.name"), "required".to_string()));
            String::new()
        }
    };
    // Kubernetes' default; a `kubectl apply -n` is not known here.
    let namespace = om
        .namespace
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| "default".to_string());
    // Names are checked for every kind: `--workload NAMESPACE/POD` and
    // error messages rely on them (Kubernetes enforces the same).
    {
        if !name.is_empty() && !is_dns_subdomain(&name) {
            errors.push(ctx.error(
                id.clone(),
                &format!("{at}.name"),
                format!("{name:?} is not a valid resource name (lower-case DNS subdomain)"),
            ));
        }
        if !is_dns_label(&namespace) {
            errors.push(ctx.error(
                id.clone(),
                &format!("{at}.namespace"),
                format!("{namespace:?} is not a valid namespace name"),
            ));
        }
    }
    (errors.len() == before).then(|| Meta {
        name,
        namespace,
        labels: om.labels.unwrap_or_default(),
        annotations: om.annotations.unwrap_or_default(),
    })
}

fn unknown_keys(
    ctx: &Ctx<'_>,
    id: &Option<String>,
    at: &str,
    map: &Mapping,
    allowed: &[&str],
    errors: &mut Vec<ResourceError>,
) {
    for key in map.keys() {
        let key = match key {
            Value::String(s) => s.as_str(),
            other => {
                errors.push(ctx.error(
                    id.clone(),
                    at,
                    format!("field names must be strings, not {}", value_kind(other)),
                ));
                continue;
            }
        };
        if !allowed.contains(&key) {
            errors.push(ctx.error(
                id.clone(),
                &join(at, key),
                format!(
                    "unknown field {key:?}{}; expected one of {}",
                    did_you_mean(key, allowed.iter().copied()),
                    allowed.join(", ")
                ),
            ));
        }
    }
}

fn namespace(ctx: &Ctx<'_>, map: &Mapping, errors: &mut Vec<ResourceError>) -> Option<Namespace> {
    let id = raw_id(ctx.kind, map, false);
    let meta = read_meta(ctx, &id, map.get("metadata"), "metadata", false, errors)?;
    Some(Namespace {
        origin: ctx.origin.clone(),
        name: meta.name,
        labels: meta.labels,
        annotations: meta.annotations,
    })
}

fn pod(ctx: &Ctx<'_>, map: &Mapping, errors: &mut Vec<ResourceError>) -> Option<Workload> {
    let id = raw_id(ctx.kind, map, true);
    let meta = read_meta(ctx, &id, map.get("metadata"), "metadata", false, errors);
    let spec = match map.get("spec") {
        None => {
            errors.push(ctx.error(Some(id.clone()), "spec", "required".to_string()));
            None
        }
        Some(v) => match de::<PodSpec>(v.clone()) {
            Ok(s) => Some(s),
            Err((path, message)) => {
                errors.push(ctx.error(Some(id.clone()), &join("spec", &path), message));
                None
            }
        },
    };
    let pod_ip = match map
        .get("status")
        .and_then(|s| s.get("podIP"))
        .and_then(Value::as_str)
    {
        None => None,
        Some(ip) => match ip.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                errors.push(ctx.error(
                    Some(id.clone()),
                    "status.podIP",
                    format!("{ip:?} is not an IP address"),
                ));
                None
            }
        },
    };
    let (meta, spec) = (meta?, spec?);
    workload(ctx, &id, "spec", meta, spec, pod_ip, errors)
}

fn workload_template(
    ctx: &Ctx<'_>,
    map: &Mapping,
    errors: &mut Vec<ResourceError>,
) -> Option<Workload> {
    let id = raw_id(ctx.kind, map, true);
    let meta = read_meta(ctx, &id, map.get("metadata"), "metadata", false, errors)?;
    let template = match map.get("spec").and_then(|s| s.get("template")) {
        None => {
            errors.push(ctx.error(Some(id), "spec.template", "required".to_string()));
            return None;
        }
        Some(t) => match de::<PodTemplateSpec>(t.clone()) {
            Ok(t) => t,
            Err((path, message)) => {
                errors.push(ctx.error(Some(id), &join("spec.template", &path), message));
                return None;
            }
        },
    };
    let tmeta = template.metadata.unwrap_or_default();
    let meta = Meta {
        // The template counts as a pod named after the workload.
        name: meta.name,
        namespace: meta.namespace,
        labels: tmeta.labels.unwrap_or_default(),
        annotations: tmeta.annotations.unwrap_or_default(),
    };
    let Some(spec) = template.spec else {
        errors.push(ctx.error(Some(id), "spec.template.spec", "required".to_string()));
        return None;
    };
    workload(ctx, &id, "spec.template.spec", meta, spec, None, errors)
}

/// What policy needs from a pod spec: service account, TCP container ports
/// (of containers and native sidecars) and HTTP probes.
fn workload(
    ctx: &Ctx<'_>,
    id: &str,
    at: &str,
    meta: Meta,
    spec: PodSpec,
    pod_ip: Option<IpAddr>,
    errors: &mut Vec<ResourceError>,
) -> Option<Workload> {
    let before = errors.len();
    let mut ports = Vec::new();
    let mut probes = Vec::new();
    // Native sidecars (init containers with `restartPolicy: Always`) keep
    // running and may serve ports like any container.
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, c)| c.restart_policy.as_deref() == Some("Always"))
        .map(|(i, c)| (format!("{at}.initContainers[{i}]"), c));
    let containers = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("{at}.containers[{i}]"), c));
    for (field, c) in containers.chain(sidecars) {
        let own = container_ports(ctx, id, &field, c, errors);
        for (probe, p) in [
            ("livenessProbe", &c.liveness_probe),
            ("readinessProbe", &c.readiness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            let Some(get) = p.as_ref().and_then(|p| p.http_get.as_ref()) else {
                continue;
            };
            // An HTTPS probe is TLS the proxy passes through: it never sees
            // the request, so there is no route to add.
            if get
                .scheme
                .as_deref()
                .is_some_and(|s| !s.eq_ignore_ascii_case("HTTP"))
            {
                continue;
            }
            let port = match &get.port {
                IntOrString::Int(n) => match u16::try_from(*n) {
                    Ok(p) if p != 0 => PortRef::Number(p),
                    _ => {
                        errors.push(ctx.error(
                            Some(id.to_string()),
                            &format!("{field}.{probe}.httpGet.port"),
                            format!("port {n} is out of range 1-65535"),
                        ));
                        continue;
                    }
                },
                // A name resolves through this container's ports.
                IntOrString::String(name) => own
                    .iter()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .map(|p| PortRef::Number(p.port))
                    .unwrap_or_else(|| PortRef::Name(name.clone())),
            };
            let raw = get.path.as_deref().unwrap_or("/");
            let path = raw.split('?').next().unwrap_or_default();
            probes.push(HttpProbe {
                container: c.name.clone(),
                probe,
                port,
                path: if path.is_empty() { "/" } else { path }.to_string(),
            });
        }
        ports.extend(own);
    }
    let service_account = spec
        .service_account_name
        .or(spec.service_account)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string());
    (errors.len() == before).then(|| Workload {
        origin: ctx.origin.clone(),
        kind: ctx.kind.to_string(),
        namespace: meta.namespace,
        name: meta.name,
        labels: meta.labels,
        annotations: meta.annotations,
        service_account,
        ports,
        probes,
        pod_ip,
    })
}

fn container_ports(
    ctx: &Ctx<'_>,
    id: &str,
    field: &str,
    c: &Container,
    errors: &mut Vec<ResourceError>,
) -> Vec<ContainerPort> {
    let mut out = Vec::new();
    for (j, p) in c.ports.iter().flatten().enumerate() {
        // UDP and SCTP ports are not proxied.
        if p.protocol.as_deref().is_some_and(|pr| pr != "TCP") {
            continue;
        }
        match u16::try_from(p.container_port) {
            Ok(port) if port != 0 => out.push(ContainerPort {
                container: c.name.clone(),
                name: p.name.clone().filter(|n| !n.is_empty()),
                port,
            }),
            _ => errors.push(ctx.error(
                Some(id.to_string()),
                &format!("{field}.ports[{j}].containerPort"),
                format!("port {} is out of range 1-65535", p.container_port),
            )),
        }
    }
    out
}

fn policy(
    ctx: &Ctx<'_>,
    version: &str,
    map: &Mapping,
    res: &mut Resources,
    errors: &mut Vec<ResourceError>,
) {
    let id = raw_id(ctx.kind, map, true);
    let Some((_, versions)) = POLICY_KINDS.iter().find(|(k, _)| *k == ctx.kind) else {
        errors.push(ctx.error(
            Some(id),
            "kind",
            format!(
                "unsupported kind {:?} in {POLICY_GROUP}{}; supported: {}",
                ctx.kind,
                did_you_mean(ctx.kind, POLICY_KINDS.iter().map(|(k, _)| *k)),
                POLICY_KINDS
                    .iter()
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
        return;
    };
    if !versions.contains(&version) {
        errors.push(ctx.error(
            Some(id),
            "apiVersion",
            format!(
                "unsupported version {POLICY_GROUP}/{version} of {}; supported: {}",
                ctx.kind,
                versions
                    .iter()
                    .map(|v| format!("{POLICY_GROUP}/{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
        return;
    }
    let before = errors.len();
    unknown_keys(ctx, &Some(id.clone()), "", map, &OBJECT_FIELDS, errors);
    let meta = read_meta(ctx, &id, map.get("metadata"), "metadata", true, errors);
    let spec = match map.get("spec") {
        Some(spec) => Some(spec.clone()),
        None => {
            errors.push(ctx.error(Some(id.clone()), "spec", "required".to_string()));
            None
        }
    };
    let Some(spec) = spec else {
        return;
    };
    // With broken metadata the spec is still checked (every error is
    // reported at once), under the best-effort name; nothing is kept.
    let keep = meta.is_some() && errors.len() == before;
    let meta = meta.unwrap_or_else(|| {
        let raw = |k: &str| {
            map.get("metadata")
                .and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        Meta {
            name: raw("name").unwrap_or_default(),
            namespace: raw("namespace").unwrap_or_else(|| "default".to_string()),
            labels: Default::default(),
            annotations: Default::default(),
        }
    });
    let obj = Object {
        origin: ctx.origin,
        kind: ctx.kind,
        namespace: &meta.namespace,
        name: &meta.name,
        labels: &meta.labels,
    };
    // Errors from `validate` carry fields relative to the object; a List
    // item adds its `items[N].` prefix.
    let mut fix = |errs: Vec<ResourceError>| {
        errors.extend(errs.into_iter().map(|mut e| {
            e.field = format!("{}{}", ctx.prefix, e.field);
            e
        }))
    };
    let spec_error = |(path, message): (String, String)| {
        vec![ResourceError::new(
            ctx.origin,
            Some(obj.id()),
            join("spec", &path),
            message,
        )]
    };
    match ctx.kind {
        "Server" => match de(spec).map_err(spec_error) {
            Ok(spec) => match validate::server(&obj, spec) {
                Ok(s) if keep => res.servers.push(s),
                Ok(_) => {}
                Err(e) => fix(e),
            },
            Err(e) => fix(e),
        },
        "ServerAuthorization" => match de(spec).map_err(spec_error) {
            Ok(spec) => match validate::server_authorization(&obj, spec) {
                Ok(a) if keep => res.authorizations.push(a),
                Ok(_) => {}
                Err(e) => fix(e),
            },
            Err(e) => fix(e),
        },
        _ => match de(spec).map_err(spec_error) {
            Ok(spec) => match validate::network_authentication_policy(&obj, spec) {
                Ok(n) if keep => res.network_policies.push(n),
                Ok(_) => {}
                Err(e) => fix(e),
            },
            Err(e) => fix(e),
        },
    }
}

/// Deserializes `value`, returning the path of the failing field (relative
/// to `value`) and a message; an unknown field gets a did-you-mean hint and
/// its own name in the path.
fn de<T: DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = e.into_inner().to_string();
        describe(path, message)
    })
}

/// serde reports an unknown field as ``unknown field `x`, expected one of
/// `a`, `b` `` at the path of the enclosing object: name the field itself
/// and suggest the closest expected one.
fn describe(path: String, message: String) -> (String, String) {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return (path, message);
    };
    let Some((field, tail)) = rest.split_once('`') else {
        return (path, message);
    };
    let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    let path = path.strip_suffix(".?").unwrap_or(&path).to_string();
    let at = if path.ends_with(field) {
        path.clone()
    } else {
        join(&path, field)
    };
    let listed = if expected.is_empty() {
        String::new()
    } else {
        format!("; expected one of {}", expected.join(", "))
    };
    (
        at,
        format!(
            "unknown field {field:?}{}{listed}",
            did_you_mean(field, expected.iter().copied())
        ),
    )
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ if b.starts_with('[') => format!("{a}{b}"),
        _ => format!("{a}.{b}"),
    }
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}
