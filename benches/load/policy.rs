//! The Portcullis policy file of the load harness: the bench pod, a Server
//! selecting its port, and ServerAuthorizations, so that Portcullis really
//! evaluates policy in every scenario (never the default-allow short-cut:
//! it also runs with `--default-policy deny`).
//!
//! Self-contained on purpose: tests/bench_smoke.rs includes this file to
//! check, with the policy crate itself, that the generated resources load,
//! compile for `bench/app`, allow the bench client and deny others. Must
//! not: depend on the rest of the harness. Called by `targets.rs` and
//! `scenarios.rs` (the rewrite thread).

use std::fmt::Write as _;
use std::path::Path;

/// What the allowing authorization matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Traffic {
    /// Unauthenticated clients from 127.0.0.0/8 (HTTP/1, h2c).
    Plain,
    /// The same, on a Server with `proxyProtocol: opaque` (TCP bulk).
    Opaque,
    /// Meshed TLS clients with this identity.
    MeshTls(&'static str),
}

/// The resource file Portcullis enforces: the bench pod, a Server selecting
/// its port (so the default policy never applies), `authorizations - 1`
/// decoy ServerAuthorizations that do not match the bench client (half by
/// network, half by identity; their CIDRs are policy data only, never
/// traffic targets), and finally the one that allows it. `generation`
/// changes one decoy so a rewrite is a real policy change.
pub fn policy_yaml(
    app_port: u16,
    traffic: Traffic,
    authorizations: usize,
    generation: u32,
) -> String {
    let protocol = if traffic == Traffic::Opaque {
        "opaque"
    } else {
        "unknown"
    };
    let mut y = format!(
        "apiVersion: v1
kind: Namespace
metadata:
  name: bench
---
apiVersion: v1
kind: Pod
metadata:
  name: app
  namespace: bench
  labels:
    app: bench-app
spec:
  serviceAccountName: app
  containers:
  - name: app
    ports:
    - name: app
      containerPort: {app_port}
---
apiVersion: policy.linkerd.io/v1beta1
kind: Server
metadata:
  name: bench-server
  namespace: bench
spec:
  podSelector:
    matchLabels:
      app: bench-app
  port: {app_port}
  proxyProtocol: {protocol}
"
    );
    for i in 1..authorizations {
        let client = if i % 2 == 1 {
            let g = if i == 1 { generation % 250 } else { 0 };
            format!(
                "    unauthenticated: true
    networks:
    - cidr: 10.{}.{}.{}/32
",
                (i >> 16) & 0xff,
                (i >> 8) & 0xff,
                (i & 0xff) ^ g as usize
            )
        } else {
            format!(
                "    meshTLS:
      identities:
      - decoy-{i}.bench.serviceaccount.identity.linkerd.cluster.local
"
            )
        };
        let _ = write!(
            y,
            "---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata:
  name: decoy-{i:05}
  namespace: bench
spec:
  server:
    name: bench-server
  client:
{client}"
        );
    }
    // Networks are explicit: left out, they would default to the cluster
    // networks, which do not include loopback.
    let allow = match traffic {
        Traffic::MeshTls(id) => format!(
            "    meshTLS:
      identities:
      - {id}
    networks:
    - cidr: 127.0.0.0/8
"
        ),
        Traffic::Plain | Traffic::Opaque => "    unauthenticated: true
    networks:
    - cidr: 127.0.0.0/8
"
        .to_string(),
    };
    let _ = write!(
        y,
        "---
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata:
  name: zz-bench-allow
  namespace: bench
spec:
  server:
    name: bench-server
  client:
{allow}"
    );
    y
}

/// Writes the policy through a temporary file and a rename, as Kubernetes
/// updates mounted ConfigMaps: a reader never sees half a file.
pub fn write_policy(path: &Path, yaml: &str) -> Result<(), String> {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, yaml).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
