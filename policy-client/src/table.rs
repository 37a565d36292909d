//! The `PolicyTable`: the policy in force, read on every decision.
//!
//! One writer builds a complete [`Snapshot`] off to the side and publishes it
//! with a single `ArcSwap::store`; readers load it without locks. Each publish
//! bumps a generation on a `watch` channel so that live connections re-check
//! their authorization (revocation). A snapshot that fails to build is never
//! published: the last good one stays in force (fail closed, never open).
//!
//! Callers: the proxy (every connection and request reads `get`), the file and
//! controller policy sources (`publish`), the admin server (`to_json`).
//!
//! Ports without a policy of their own use the fallback. Building a fallback
//! [`Authorizer`] costs allocations and an index build, so a snapshot keeps a
//! small direct-mapped cache of them keyed by port. The cache lives inside the
//! snapshot and dies with it, so a publish can never serve a stale fallback;
//! slots fill once (`OnceLock`) and are read without locks. A port whose slot
//! another port took gets a freshly built authorizer (correct, just slower).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;

use crate::authorize::Authorizer;
use crate::model::{PolicyConfig, PortPolicy, Protocol, WorkloadPolicy};

/// A complete, immutable view of the policy for every port.
///
/// Build it with the constructors; its fields are public for reading. Do not
/// change `fallback` after construction: cached fallback authorizers were
/// built from it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Ports with a policy of their own.
    pub ports: HashMap<u16, Arc<Authorizer>>,
    /// For every other port: the default policy, cluster networks and opaque ports.
    pub fallback: WorkloadPolicy,
    /// Where the policy came from, for `/policy` and logs (e.g. the file path).
    pub source: String,
    /// Built fallback authorizers; shared by copies made with `with_port`,
    /// which keep the same `fallback`.
    fallback_cache: Arc<FallbackCache>,
}

/// Slots for fallback authorizers, indexed by `port % FALLBACK_SLOTS`.
const FALLBACK_SLOTS: usize = 64;

#[derive(Debug)]
struct FallbackCache {
    slots: [OnceLock<Arc<Authorizer>>; FALLBACK_SLOTS],
}

impl FallbackCache {
    fn new() -> Arc<Self> {
        Arc::new(FallbackCache {
            slots: std::array::from_fn(|_| OnceLock::new()),
        })
    }
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
            fallback_cache: FallbackCache::new(),
        }
    }

    /// Every port of a compiled workload (its port policies move into the
    /// authorizers; the rest is the fallback).
    pub fn from_workload(mut workload: WorkloadPolicy, source: impl Into<String>) -> Self {
        let ports = std::mem::take(&mut workload.ports)
            .into_iter()
            .map(|(port, policy)| (port, Arc::new(Authorizer::from(policy))))
            .collect();
        Snapshot {
            ports,
            fallback: workload,
            source: source.into(),
            fallback_cache: FallbackCache::new(),
        }
    }

    /// Whether [`Snapshot::from_workload`] of `workload` would decide exactly
    /// as this snapshot does: a reload that compiles to this changes nothing.
    pub fn holds(&self, workload: &WorkloadPolicy) -> bool {
        // Destructured whole, so a field added later is compared too.
        let WorkloadPolicy {
            workload: name,
            ports,
            default_policy,
            opaque_ports,
            cluster_networks,
        } = workload;
        self.ports.len() == ports.len()
            && ports
                .iter()
                .all(|(port, p)| self.ports.get(port).is_some_and(|a| a.policy() == p))
            && self.fallback.workload == *name
            && self.fallback.default_policy == *default_policy
            && self.fallback.opaque_ports == *opaque_ports
            && self.fallback.cluster_networks == *cluster_networks
    }

    /// A copy with one port's policy replaced (per-port controller updates).
    pub fn with_port(&self, policy: PortPolicy) -> Self {
        let mut next = self.clone();
        next.ports.insert(policy.port, Arc::new(policy.into()));
        next
    }

    /// The policy for `port`: its own, or the fallback.
    pub fn get(&self, port: u16) -> Arc<Authorizer> {
        if let Some(a) = self.ports.get(&port) {
            return a.clone();
        }
        let slot = self
            .fallback_cache
            .slots
            .get(usize::from(port) % FALLBACK_SLOTS);
        if let Some(cached) = slot.and_then(|s| s.get()) {
            if cached.port == port {
                return cached.clone();
            }
        }
        let built = Arc::new(Authorizer::from(self.fallback.port(port)));
        if let Some(slot) = slot {
            // First port to reach an empty slot keeps it; losing a race is fine.
            let _ = slot.set(built.clone());
        }
        built
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DefaultPolicy, Meta};

    #[test]
    fn fallback_authorizers_carry_their_port_and_are_cached() {
        let snap = Snapshot::from_config(&PolicyConfig::default(), "test");
        let a = snap.get(9000);
        assert_eq!(a.port, 9000);
        assert_eq!(a.protocol, Protocol::Detect);
        assert!(Arc::ptr_eq(&a, &snap.get(9000)), "second get is cached");
        // Same slot, other port: still the right port, never the cached one.
        let b = snap.get(9000 + FALLBACK_SLOTS as u16);
        assert_eq!(b.port, 9000 + FALLBACK_SLOTS as u16);
        let mysql = snap.get(3306);
        assert_eq!((mysql.port, mysql.protocol), (3306, Protocol::Opaque));
        // Copies for per-port updates keep the cache and override the port.
        let mut policy = PolicyConfig::default().fallback_port(9000);
        policy.server = Meta::policy("server", "web");
        let next = snap.with_port(policy);
        assert_eq!(next.get(9000).server, Meta::policy("server", "web"));
        assert!(Arc::ptr_eq(&mysql, &next.get(3306)));
    }

    #[test]
    fn a_snapshot_holds_exactly_the_workload_it_was_built_from() {
        let config = PolicyConfig::default();
        let mut web = config.fallback_port(8080);
        web.server = Meta::policy("server", "web");
        let workload = WorkloadPolicy {
            workload: "ns/web".into(),
            ports: [(8080, web.clone())].into_iter().collect(),
            default_policy: DefaultPolicy::AllAuthenticated,
            opaque_ports: config.opaque_ports.clone(),
            cluster_networks: config.cluster_networks.clone(),
        };
        let snap = Snapshot::from_workload(workload.clone(), "test");
        assert!(snap.holds(&workload));
        assert_eq!(snap.get(8080).policy(), &web);

        let mut other_port = workload.clone();
        other_port.ports.get_mut(&8080).unwrap().server = Meta::policy("server", "api");
        let mut extra_port = workload.clone();
        extra_port.ports.insert(9090, config.fallback_port(9090));
        let mut no_ports = workload.clone();
        no_ports.ports.clear();
        let mut other_default = workload.clone();
        other_default.default_policy = DefaultPolicy::Deny;
        let mut other_pod = workload.clone();
        other_pod.workload = "ns/api".into();
        let mut other_opaque = workload.clone();
        other_opaque.opaque_ports.insert(9999);
        for (why, changed) in [
            ("a port's policy", other_port),
            ("one more port", extra_port),
            ("no ports", no_ports),
            ("the default policy", other_default),
            ("the workload", other_pod),
            ("the opaque ports", other_opaque),
        ] {
            assert!(
                !snap.holds(&changed),
                "{why} changed, and the snapshot still holds it"
            );
        }
        // The configured default (no workload) holds no compiled workload.
        assert!(!Snapshot::from_config(&config, "default").holds(&workload));
    }

    #[test]
    fn a_published_snapshot_does_not_serve_the_old_fallback() {
        let table = PolicyTable::new(Snapshot::from_config(&PolicyConfig::default(), "a"));
        assert_eq!(table.get(7000).server, Meta::default("all-unauthenticated"));
        let deny = PolicyConfig {
            default_policy: DefaultPolicy::Deny,
            ..PolicyConfig::default()
        };
        table.publish(Snapshot::from_config(&deny, "b"));
        assert_eq!(table.generation(), 1);
        assert_eq!(table.get(7000).server, Meta::default("deny"));
    }
}
