//! The `PolicyTable`: the policy in force, read on every decision.
//!
//! One writer builds a complete [`Snapshot`] off to the side and publishes it
//! with a single `ArcSwap::store`; readers load it without locks. Each publish
//! bumps a generation on a `watch` channel so that live connections re-check
//! their authorization (revocation). A snapshot that fails to build is never
//! published: the last good one stays in force (fail closed, never open).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;

use crate::authorize::Authorizer;
use crate::model::{PolicyConfig, PortPolicy, Protocol, WorkloadPolicy};

/// A complete, immutable view of the policy for every port.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Ports with a policy of their own.
    pub ports: HashMap<u16, Arc<Authorizer>>,
    /// For every other port: the default policy, cluster networks and opaque ports.
    pub fallback: WorkloadPolicy,
    /// Where the policy came from, for `/policy` and logs (e.g. the file path).
    pub source: String,
}

impl Snapshot {
    /// Only the configured default policy (no policy source).
    pub fn from_config(config: &PolicyConfig, source: impl Into<String>) -> Self {
        Snapshot {
            ports: HashMap::new(),
            fallback: WorkloadPolicy {
                workload: String::new(),
                ports: Default::default(),
                default_policy: config.default_policy,
                opaque_ports: config.opaque_ports.clone(),
                cluster_networks: config.cluster_networks.clone(),
            },
            source: source.into(),
        }
    }

    /// Every port of a compiled workload.
    pub fn from_workload(workload: WorkloadPolicy, source: impl Into<String>) -> Self {
        let ports = workload
            .ports
            .iter()
            .map(|(port, policy)| (*port, Arc::new(Authorizer::from(policy.clone()))))
            .collect();
        let fallback = WorkloadPolicy {
            ports: Default::default(),
            ..workload
        };
        Snapshot {
            ports,
            fallback,
            source: source.into(),
        }
    }

    /// A copy with one port's policy replaced (per-port controller updates).
    pub fn with_port(&self, policy: PortPolicy) -> Self {
        let mut next = self.clone();
        next.ports.insert(policy.port, Arc::new(policy.into()));
        next
    }

    /// The policy for `port`: its own, or the fallback.
    pub fn get(&self, port: u16) -> Arc<Authorizer> {
        match self.ports.get(&port) {
            Some(a) => a.clone(),
            None => Arc::new(self.fallback.port(port).into()),
        }
    }

    /// The protocol for `port` without building a fallback policy.
    pub fn protocol(&self, port: u16) -> Protocol {
        match self.ports.get(&port) {
            Some(a) => a.protocol,
            None if self.fallback.opaque_ports.contains(&port) => Protocol::Opaque,
            None => Protocol::Detect,
        }
    }

    /// The JSON shown on the admin server's `/policy`.
    pub fn to_json(&self, generation: u64) -> serde_json::Value {
        #[derive(Serialize)]
        struct View<'a> {
            generation: u64,
            source: &'a str,
            workload: &'a str,
            default_policy: &'a str,
            opaque_ports: &'a std::collections::BTreeSet<u16>,
            ports: std::collections::BTreeMap<u16, &'a PortPolicy>,
        }
        let view = View {
            generation,
            source: &self.source,
            workload: &self.fallback.workload,
            default_policy: self.fallback.default_policy.as_str(),
            opaque_ports: &self.fallback.opaque_ports,
            ports: self.ports.iter().map(|(p, a)| (*p, a.policy())).collect(),
        };
        serde_json::to_value(view).unwrap_or(serde_json::Value::Null)
    }
}

/// The policy in force, shared by every connection.
#[derive(Debug)]
pub struct PolicyTable {
    current: ArcSwap<Snapshot>,
    generation: watch::Sender<u64>,
}

impl PolicyTable {
    pub fn new(initial: Snapshot) -> Self {
        PolicyTable {
            current: ArcSwap::from_pointee(initial),
            generation: watch::Sender::new(0),
        }
    }

    /// The snapshot in force now.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The policy for one port now.
    pub fn get(&self, port: u16) -> Arc<Authorizer> {
        self.current.load().get(port)
    }

    /// Replaces the snapshot and tells every subscriber. Call from one writer.
    pub fn publish(&self, next: Snapshot) {
        self.current.store(Arc::new(next));
        self.generation.send_modify(|g| *g += 1);
    }

    /// How many snapshots have been published since start.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// A receiver that changes on every publish.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}
