//! The decision: may this client use this port (or make this request)?
//!
//! `authorize` is a pure function over plain data: no I/O, no locks, no
//! `await`, no allocation on the allow path. Its result names what decided
//! (server, authorization, route) so that metrics, logs and
//! `portcullis-controller check` explain themselves. Callers: the proxy's
//! `authz` stage (every connection and request) and the controller's `check`.
//!
//! An [`Authorizer`] is a [`PortPolicy`] plus the indexes that keep the
//! decision fast; [`Authorizer::from`] builds them once per policy update,
//! never per decision. This module must not change what a policy means: the
//! winner is always the first authorization, in the policy's order (a matched
//! route's authorizations first, then the port's), that [`admits`] the client,
//! exactly as a linear scan would find it. `tests/props.rs` checks that against
//! a naive scan.
//!
//! # Which route a request takes
//! Linkerd (Gateway API `HTTPRoute` semantics) does not take the first route
//! that matches but the one with the most specific matching match, across all
//! routes: an exact path beats a prefix, a longer prefix a shorter one, any
//! prefix a regex (a longer pattern first, as Linkerd does) and any path a
//! match without one; then a match with a method beats one without; then more
//! header matches beat fewer; remaining ties go to the route listed first. A
//! route with no matches matches everything at the lowest rank. The order over
//! (route, match) pairs is computed once in [`Authorizer::from`], so a request
//! walks the pairs best-first and stops at the first that matches; nothing is
//! sorted per request. Controllers send the catch-all route before the probe
//! route, so list order alone would deny kubelet probes.
//!
//! # How a decision stays fast
//! Each ordered list of authorizations (the port's, and each route's) becomes a
//! [`Scope`]. Small scopes are scanned (cheap checks first); larger ones are
//! indexed by how a client can authenticate:
//! - buckets for `Unauthenticated`, `TlsUnauthenticated` and `*` (any identity);
//! - a map of exact identities, probed with the presented identity and its DNS
//!   form;
//! - a map of `*.suffix` suffixes, probed with each dot-suffix of the client's
//!   DNS identity whose length some suffix has.
//!
//! Every bucket and map entry is a list of (authorization position, network
//! set) sorted by position, keeping only the first position per network set
//! (the others cannot win: same authentication, same networks, later). The
//! candidates are merged by taking the smallest position whose network set
//! contains the client, stopping each list at the best position so far.
//! Network sets are deduplicated across the whole port (most authorizations
//! share the cluster networks), and each set is tested at most once per
//! decision. A list longer than [`NET_INDEX_THRESHOLD`] (thousands of
//! authorizations, each for its own address) is also indexed by the
//! prefixes of its networks, so only entries whose networks share a prefix
//! with the client are tested.
//!
//! # Audit
//! A port in audit mode allows what it would deny and marks the allow
//! (`Permit::audited`). The `audit` default policy carries one catch-all
//! authorization named `default/audit` so that readers of the policy see that
//! everything is allowed; the decision treats it as the audit marker rather
//! than as a rule, so every allow through it is audited (DESIGN: "allow
//! everything, log each allow as audited").
//!
//! # Regular expressions
//! Path and header-value regexes are compiled here, anchored to the whole
//! path or value. An invalid one makes its match never match (fail closed) and
//! is listed by [`Authorizer::problems`].

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::ops::Deref;

use serde::Serialize;
use thiserror::Error;

use crate::model::{
    canonical_ip, Access, Authentication, Authorization, Client, ClientTls, DefaultPolicy,
    HeaderValueMatch, HttpRequest, HttpRoute, Meta, Network, PathMatch, PortPolicy, RouteMatch,
};

/// Scopes with at most this many authorizations are scanned rather than
/// indexed. A scan costs about 55 instructions per authorization and an
/// indexed decision about 400 whatever the size (hashing the identity
/// dominates): the scan wins at 2, ties at 4 and loses from 8 on (callgrind
/// figures in `benches/RESULTS.md`).
pub const DEFAULT_SCAN_THRESHOLD: usize = 3;

/// Compiled regexes are capped so a hostile pattern from a controller cannot
/// take unbounded memory; a pattern over the cap is reported and never matches.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A port policy ready for decisions.
#[derive(Clone, Debug)]
pub struct Authorizer {
    policy: PortPolicy,
    /// Every distinct network list of the port's authorizations (and its routes').
    nets: Vec<NetSet>,
    port_scope: Scope,
    /// Parallel to `policy.http_routes`.
    routes: Vec<CompiledRoute>,
    /// Every (route, match) pair, most specific first (see the module doc).
    precedence: Box<[RouteRef]>,
    problems: Vec<MatchProblem>,
}

impl From<PortPolicy> for Authorizer {
    fn from(policy: PortPolicy) -> Self {
        Authorizer::with_scan_threshold(policy, DEFAULT_SCAN_THRESHOLD)
    }
}

impl Deref for Authorizer {
    type Target = PortPolicy;
    fn deref(&self) -> &PortPolicy {
        &self.policy
    }
}

impl Authorizer {
    /// Builds the indexes, scanning (not indexing) scopes of at most
    /// `scan_threshold` authorizations. `From<PortPolicy>` uses
    /// [`DEFAULT_SCAN_THRESHOLD`]; other values exist for benchmarks and for
    /// tests that check both strategies decide alike.
    pub fn with_scan_threshold(policy: PortPolicy, scan_threshold: usize) -> Self {
        let mut nets = NetSets::default();
        let port_scope = Scope::build(&policy, &policy.authorizations, &mut nets, scan_threshold);
        let mut problems = Vec::new();
        let routes = policy
            .http_routes
            .iter()
            .map(|route| CompiledRoute {
                matches: route
                    .matches
                    .iter()
                    .map(|m| CompiledMatch::build(policy.port, route, m, &mut problems))
                    .collect(),
                scope: Scope::build(&policy, &route.authorizations, &mut nets, scan_threshold),
            })
            .collect();
        let precedence = precedence(&policy.http_routes);
        let nets = nets.sets;
        Authorizer {
            policy,
            nets,
            port_scope,
            routes,
            precedence,
            problems,
        }
    }

    pub fn policy(&self) -> &PortPolicy {
        &self.policy
    }

    /// Route matches that can never match because they did not compile
    /// (invalid regex or header name). Empty for a healthy policy; the proxy
    /// and `validate` report these.
    pub fn problems(&self) -> &[MatchProblem] {
        &self.problems
    }
}

/// A route match that cannot work as written; it never matches (fail closed).
/// The configuration's fault.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum MatchProblem {
    #[error("port {port}, route {route}: invalid path regex {pattern:?} ({error}); the match never matches")]
    InvalidPathRegex {
        port: u16,
        route: Meta,
        pattern: String,
        error: String,
    },
    #[error("port {port}, route {route}: header {header:?}: invalid value regex {pattern:?} ({error}); the match never matches")]
    InvalidHeaderRegex {
        port: u16,
        route: Meta,
        header: String,
        pattern: String,
        error: String,
    },
    #[error("port {port}, route {route}: invalid header name {header:?}; the match never matches")]
    InvalidHeaderName {
        port: u16,
        route: Meta,
        header: String,
    },
}

/// Why a client was denied, from the configuration's point of view.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenyReason {
    /// The port's policy is the `deny` default.
    DefaultDeny,
    /// A Server selects the port and no authorization targets it.
    NoAuthorizations,
    /// No authorization admits the client's address.
    NetworkNotAuthorized,
    /// Authorizations admit the address but require meshed TLS.
    TlsRequired,
    /// Authorizations admit the address but require a client identity.
    IdentityRequired,
    /// The client's identity is not listed by any authorization admitting its address.
    IdentityNotAuthorized,
    /// The port has HTTP routes and none matches the request.
    NoRoute,
}

impl DenyReason {
    /// A sentence for logs and `check`.
    pub fn describe(&self) -> &'static str {
        match self {
            DenyReason::DefaultDeny => "the default policy is deny",
            DenyReason::NoAuthorizations => "no authorization targets the server",
            DenyReason::NetworkNotAuthorized => {
                "the client address is not in any authorized network"
            }
            DenyReason::TlsRequired => "authorizations for this address require meshed TLS",
            DenyReason::IdentityRequired => {
                "authorizations for this address require a client identity"
            }
            DenyReason::IdentityNotAuthorized => "the client identity is not authorized",
            DenyReason::NoRoute => "no HTTP route matches the request",
        }
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// An allow, naming what allowed it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Permit<'a> {
    pub server: &'a Meta,
    pub authorization: &'a Meta,
    pub route: Option<&'a Meta>,
    /// `Some(reason)` when the request would have been denied but the port is in audit mode.
    pub audited: Option<DenyReason>,
}

/// A denial, naming the server (and route) and why.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Denied<'a> {
    pub server: &'a Meta,
    pub route: Option<&'a Meta>,
    pub reason: DenyReason,
}

/// Decides a connection (opaque, TLS passthrough, or the TCP level of any port).
pub fn authorize<'a>(port: &'a Authorizer, client: &Client) -> Result<Permit<'a>, Denied<'a>> {
    let probe = Probe::new(client);
    let mut memo = NetMemo::default();
    let policy = &port.policy;
    let winner = port.port_scope.find(&port.nets, &probe, &mut memo);
    match winner.and_then(|i| policy.authorizations.get(i)) {
        Some(authz) => Ok(permit(policy, &authz.meta, None)),
        None => refuse(policy, None, client),
    }
}

/// Decides one HTTP request: the route with the most specific match for it
/// (see the module doc) is checked against its own authorizations, then the
/// port's.
pub fn authorize_request<'a>(
    port: &'a Authorizer,
    client: &Client,
    request: &HttpRequest<'_>,
) -> Result<Permit<'a>, Denied<'a>> {
    let policy = &port.policy;
    if policy.http_routes.is_empty() {
        return authorize(port, client);
    }
    let Some((compiled, route)) = port.route_for(request) else {
        return audit_or_deny(policy, None, DenyReason::NoRoute);
    };
    let probe = Probe::new(client);
    let mut memo = NetMemo::default();
    let route_winner = compiled.scope.find(&port.nets, &probe, &mut memo);
    if let Some(authz) = route_winner.and_then(|i| route.authorizations.get(i)) {
        return Ok(permit(policy, &authz.meta, Some(&route.meta)));
    }
    let port_winner = port.port_scope.find(&port.nets, &probe, &mut memo);
    match port_winner.and_then(|i| policy.authorizations.get(i)) {
        Some(authz) => Ok(permit(policy, &authz.meta, Some(&route.meta))),
        None => refuse(policy, Some(route), client),
    }
}

fn permit<'a>(policy: &'a PortPolicy, authz: &'a Meta, route: Option<&'a Meta>) -> Permit<'a> {
    Permit {
        server: &policy.server,
        authorization: authz,
        route,
        audited: None,
    }
}

/// The slow path: nothing admits the client; explain why.
fn refuse<'a>(
    policy: &'a PortPolicy,
    route: Option<&'a HttpRoute>,
    client: &Client,
) -> Result<Permit<'a>, Denied<'a>> {
    let route_authzs = route.map(|r| r.authorizations.as_slice()).unwrap_or(&[]);
    let authzs = route_authzs
        .iter()
        .chain(&policy.authorizations)
        .filter(|a| !is_audit_marker(policy, a));
    let reason = deny_reason(policy, authzs, client);
    audit_or_deny(policy, route.map(|r| &r.meta), reason)
}

fn audit_or_deny<'a>(
    policy: &'a PortPolicy,
    route: Option<&'a Meta>,
    reason: DenyReason,
) -> Result<Permit<'a>, Denied<'a>> {
    match policy.access {
        Access::Audit => Ok(Permit {
            server: &policy.server,
            authorization: &policy.server,
            route,
            audited: Some(reason),
        }),
        Access::Enforce => Err(Denied {
            server: &policy.server,
            route,
            reason,
        }),
    }
}

/// The `audit` default policy's catch-all authorization: it documents that
/// everything is allowed, but an allow through it must be flagged, so the
/// decision never lets it win (see the module doc).
fn is_audit_marker(policy: &PortPolicy, authz: &Authorization) -> bool {
    policy.access == Access::Audit
        && matches!(&authz.meta, Meta::Default { name } if name == DefaultPolicy::Audit.as_str())
}

/// Whether one authorization admits the client. This is the definition the
/// indexes implement; it is not used on the hot path.
pub fn admits(authz: &Authorization, client: &Client) -> bool {
    authz.networks.iter().any(|n| n.contains(client.addr))
        && authenticates(&authz.authentication, &client.tls)
}

fn authenticates(authn: &Authentication, tls: &ClientTls) -> bool {
    match (authn, tls) {
        (Authentication::Unauthenticated, _) => true,
        (Authentication::TlsUnauthenticated, ClientTls::Mesh { .. }) => true,
        (
            Authentication::TlsAuthenticated {
                identities,
                suffixes,
            },
            ClientTls::Mesh { identity: Some(id) },
        ) => {
            identities.contains(&id.presented)
                || id.dns.as_ref().is_some_and(|dns| {
                    identities.contains(dns) || suffixes.iter().any(|s| suffix_matches(s, dns))
                })
        }
        _ => false,
    }
}

/// `suffix` (without `*.`) matches `name` when `name` ends with `.suffix`;
/// the empty suffix matches every name.
pub fn suffix_matches(suffix: &str, name: &str) -> bool {
    suffix.is_empty()
        || (name.len() > suffix.len()
            && name.ends_with(suffix)
            && name.as_bytes().get(name.len() - suffix.len() - 1) == Some(&b'.'))
}

/// The most specific explanation of a denial (slow path only).
fn deny_reason<'a>(
    policy: &PortPolicy,
    authzs: impl Iterator<Item = &'a Authorization> + Clone,
    client: &Client,
) -> DenyReason {
    if authzs.clone().next().is_none() {
        return match &policy.server {
            Meta::Default { name } if name == DefaultPolicy::Deny.as_str() => {
                DenyReason::DefaultDeny
            }
            _ => DenyReason::NoAuthorizations,
        };
    }
    let mut in_network = authzs
        .filter(|a| a.networks.iter().any(|n| n.contains(client.addr)))
        .peekable();
    if in_network.peek().is_none() {
        return DenyReason::NetworkNotAuthorized;
    }
    match &client.tls {
        ClientTls::None => DenyReason::TlsRequired,
        ClientTls::Mesh { identity: None } => DenyReason::IdentityRequired,
        ClientTls::Mesh { identity: Some(_) } => DenyReason::IdentityNotAuthorized,
    }
}

// ---------------------------------------------------------------------------
// The client, as the indexes read it.

/// A client address as integer bits, IPv4-mapped IPv6 read as IPv4 (the
/// model's `canonical_ip` rule).
#[derive(Copy, Clone, Debug)]
enum Ip {
    V4(u32),
    V6(u128),
}

impl From<IpAddr> for Ip {
    fn from(ip: IpAddr) -> Self {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => Ip::V4(u32::from(v4)),
            IpAddr::V6(v6) => Ip::V6(u128::from(v6)),
        }
    }
}

/// What one decision needs from the client, computed once.
struct Probe<'c> {
    ip: Ip,
    /// Meshed TLS terminated by the proxy.
    mesh: bool,
    presented: Option<&'c str>,
    dns: Option<&'c str>,
    /// The DNS form when it differs from the presented identity (a unified
    /// SPIFFE ID): the only case where exact entries must be probed twice.
    other_dns: Option<&'c str>,
}

impl<'c> Probe<'c> {
    fn new(client: &'c Client) -> Self {
        let (mesh, identity) = match &client.tls {
            ClientTls::None => (false, None),
            ClientTls::Mesh { identity } => (true, identity.as_ref()),
        };
        let presented = identity.map(|id| id.presented.as_str());
        let dns = identity.and_then(|id| id.dns.as_deref());
        Probe {
            ip: Ip::from(client.addr),
            mesh,
            presented,
            dns,
            other_dns: dns.filter(|d| Some(*d) != presented),
        }
    }
}

// ---------------------------------------------------------------------------
// Network sets.

/// `addr/mask` over integer bits; `addr` is already masked.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
struct Cidr<T> {
    addr: T,
    mask: T,
}

impl<T: Copy + Eq + std::ops::BitAnd<Output = T>> Cidr<T> {
    fn contains(&self, ip: T) -> bool {
        ip & self.mask == self.addr
    }
}

#[derive(Clone, Debug)]
struct Net<T> {
    cidr: Cidr<T>,
    except: Box<[Cidr<T>]>,
}

impl<T: Copy + Eq + std::ops::BitAnd<Output = T>> Net<T> {
    fn contains(&self, ip: T) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// One authorization's `networks`, split by family. Same meaning as
/// `networks.iter().any(|n| n.contains(ip))`: networks are read in canonical
/// form (IPv4-mapped IPv6 nets as IPv4), and a network with an `except` of the
/// other family than its `cidr` admits nothing (fail closed; entry points
/// reject it).
#[derive(Clone, Debug, Default)]
struct NetSet {
    v4: Box<[Net<u32>]>,
    v6: Box<[Net<u128>]>,
}

impl NetSet {
    fn build(networks: &[Network]) -> Self {
        use ipnet::IpNet;
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for n in networks {
            let Ok(n) = n.canonical() else {
                continue;
            };
            match n.net {
                IpNet::V4(net) => v4.push(Net {
                    cidr: Cidr {
                        addr: u32::from(net.network()),
                        mask: u32::from(net.netmask()),
                    },
                    except: n
                        .except
                        .iter()
                        .filter_map(|e| match e {
                            IpNet::V4(e) => Some(Cidr {
                                addr: u32::from(e.network()),
                                mask: u32::from(e.netmask()),
                            }),
                            IpNet::V6(_) => None,
                        })
                        .collect(),
                }),
                IpNet::V6(net) => v6.push(Net {
                    cidr: Cidr {
                        addr: u128::from(net.network()),
                        mask: u128::from(net.netmask()),
                    },
                    except: n
                        .except
                        .iter()
                        .filter_map(|e| match e {
                            IpNet::V6(e) => Some(Cidr {
                                addr: u128::from(e.network()),
                                mask: u128::from(e.netmask()),
                            }),
                            IpNet::V4(_) => None,
                        })
                        .collect(),
                }),
            }
        }
        NetSet {
            v4: v4.into(),
            v6: v6.into(),
        }
    }

    fn contains(&self, ip: Ip) -> bool {
        match ip {
            Ip::V4(ip) => self.v4.iter().any(|n| n.contains(ip)),
            Ip::V6(ip) => self.v6.iter().any(|n| n.contains(ip)),
        }
    }
}

/// Deduplicates network lists while an [`Authorizer`] is built.
#[derive(Default)]
struct NetSets<'p> {
    ids: HashMap<&'p [Network], u32>,
    sets: Vec<NetSet>,
}

impl<'p> NetSets<'p> {
    fn id(&mut self, networks: &'p [Network]) -> u32 {
        if let Some(id) = self.ids.get(networks) {
            return *id;
        }
        let id = u32::try_from(self.sets.len()).unwrap_or(u32::MAX);
        self.sets.push(NetSet::build(networks));
        self.ids.insert(networks, id);
        id
    }
}

/// Per-decision results of network-set tests, so each distinct set is tested
/// at most once. The first 64 sets live in two words; results for sets past
/// them go to a short list (a decision tests few sets: long candidate lists
/// are indexed by network, see [`Candidates`]).
#[derive(Default)]
struct NetMemo {
    known: u64,
    ok: u64,
    spill: Vec<(u32, bool)>,
}

impl NetMemo {
    #[inline]
    fn contains(&mut self, nets: &[NetSet], id: u32, ip: Ip) -> bool {
        let test = |id: u32| nets.get(id as usize).is_some_and(|s| s.contains(ip));
        if id < 64 {
            let bit = 1u64 << id;
            if self.known & bit != 0 {
                return self.ok & bit != 0;
            }
            let inside = test(id);
            self.known |= bit;
            if inside {
                self.ok |= bit;
            }
            return inside;
        }
        if let Some(&(_, inside)) = self.spill.iter().find(|(i, _)| *i == id) {
            return inside;
        }
        let inside = test(id);
        self.spill.push((id, inside));
        inside
    }
}

// ---------------------------------------------------------------------------
// Candidate lists, indexed by network when long.

/// Lists longer than this are also indexed by the prefixes of their
/// networks: a list of 5,000 authorizations each for its own `/32` would
/// otherwise be scanned, one network test per entry, on every decision.
pub const NET_INDEX_THRESHOLD: usize = 16;

/// One candidate list (sorted by position, first entry per network set);
/// a long one also indexed by network prefix.
#[derive(Clone, Debug, Default)]
struct Candidates {
    list: Box<[Entry]>,
    by_net: Option<Box<NetIndex>>,
}

/// For each (family, prefix length, masked address) that some entry's
/// networks have, the entries having it, by position. An entry whose
/// networks contain an address has a network whose prefix the address
/// shares, so probing the address's prefixes of the listed lengths finds
/// every candidate; the memo then tests excepts as the scan would.
/// (IPv6, prefix length, masked address).
type PrefixKey = (bool, u32, u128);

#[derive(Clone, Debug, Default)]
struct NetIndex {
    v4_lens: Box<[u32]>,
    v6_lens: Box<[u32]>,
    prefixes: HashMap<PrefixKey, Box<[Entry]>, BuildHasherDefault<FxHasher>>,
}

/// The first `len` bits of an address (`bits` holds an IPv4 address in its
/// low 32 bits).
fn prefix(v6: bool, bits: u128, len: u32) -> u128 {
    let width = if v6 { 128 } else { 32 };
    match len.min(width) {
        0 => 0,
        len => bits & (u128::MAX << (width - len)),
    }
}

impl Candidates {
    fn build(list: Box<[Entry]>, sets: &[NetSet], threshold: usize) -> Self {
        if list.len() <= threshold {
            return Candidates { list, by_net: None };
        }
        let mut prefixes: HashMap<PrefixKey, Vec<Entry>> = HashMap::new();
        let mut add = |key: PrefixKey, e: Entry| {
            let v = prefixes.entry(key).or_default();
            if v.last() != Some(&e) {
                v.push(e);
            }
        };
        for e in list.iter() {
            let Some(set) = sets.get(e.net as usize) else {
                continue;
            };
            for n in set.v4.iter() {
                add(
                    (false, n.cidr.mask.count_ones(), u128::from(n.cidr.addr)),
                    *e,
                );
            }
            for n in set.v6.iter() {
                add((true, n.cidr.mask.count_ones(), n.cidr.addr), *e);
            }
        }
        let lens = |v6: bool| -> Box<[u32]> {
            let mut l: Vec<u32> = prefixes.keys().filter(|k| k.0 == v6).map(|k| k.1).collect();
            l.sort_unstable();
            l.dedup();
            l.into()
        };
        let (v4_lens, v6_lens) = (lens(false), lens(true));
        Candidates {
            list,
            by_net: Some(Box::new(NetIndex {
                v4_lens,
                v6_lens,
                prefixes: prefixes.into_iter().map(|(k, v)| (k, v.into())).collect(),
            })),
        }
    }

    /// The smallest position below `best` whose network set contains the
    /// client, or `best`.
    #[inline]
    fn first(&self, nets: &[NetSet], ip: Ip, memo: &mut NetMemo, best: u32) -> u32 {
        let Some(index) = &self.by_net else {
            return first_in(&self.list, nets, ip, memo, best);
        };
        let (lens, v6, bits) = match ip {
            Ip::V4(a) => (&index.v4_lens, false, u128::from(a)),
            Ip::V6(a) => (&index.v6_lens, true, a),
        };
        let mut best = best;
        for &len in lens.iter() {
            if let Some(list) = index.prefixes.get(&(v6, len, prefix(v6, bits, len))) {
                best = first_in(list, nets, ip, memo, best);
            }
        }
        best
    }
}

fn first_in(list: &[Entry], nets: &[NetSet], ip: Ip, memo: &mut NetMemo, best: u32) -> u32 {
    for e in list {
        if e.authz >= best {
            break;
        }
        if memo.contains(nets, e.net, ip) {
            return e.authz;
        }
    }
    best
}

// ---------------------------------------------------------------------------
// Scopes: one ordered list of authorizations each.

/// A candidate: the authorization's position in its list, and its network set.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Entry {
    authz: u32,
    net: u32,
}

#[derive(Clone, Debug)]
enum Scope {
    Scan(Box<[ScanEntry]>),
    Indexed(Box<Index>),
}

#[derive(Clone, Debug)]
struct ScanEntry {
    entry: Entry,
    authn: ScanAuthn,
}

#[derive(Clone, Debug)]
enum ScanAuthn {
    Unauthenticated,
    TlsUnauthenticated,
    Identities {
        exact: Box<[Box<str>]>,
        /// Non-empty suffixes.
        suffixes: Box<[Box<str>]>,
        /// `*` was listed.
        any: bool,
    },
}

impl ScanAuthn {
    fn admits(&self, probe: &Probe<'_>) -> bool {
        match self {
            ScanAuthn::Unauthenticated => true,
            ScanAuthn::TlsUnauthenticated => probe.mesh,
            ScanAuthn::Identities {
                exact,
                suffixes,
                any,
            } => {
                let Some(presented) = probe.presented else {
                    return false;
                };
                if exact.iter().any(|e| **e == *presented) {
                    return true;
                }
                let Some(dns) = probe.dns else {
                    return false;
                };
                *any || probe
                    .other_dns
                    .is_some_and(|d| exact.iter().any(|e| **e == *d))
                    || suffixes.iter().any(|s| suffix_matches(s, dns))
            }
        }
    }
}

/// Hash map keyed by identity strings. The keys come from the policy, so a
/// client cannot grow a collision chain; a fast non-keyed hash is safe here
/// and several times cheaper than SipHash for 50-byte identities.
type IdMap = HashMap<Box<str>, Candidates, BuildHasherDefault<FxHasher>>;

#[derive(Clone, Debug, Default)]
struct Index {
    unauthenticated: Candidates,
    tls_unauthenticated: Candidates,
    any_identity: Candidates,
    exact: IdMap,
    suffixes: IdMap,
    /// Distinct lengths of the keys of `suffixes`, ascending: only dot-suffixes
    /// of these lengths are probed.
    suffix_lens: Box<[usize]>,
}

impl Scope {
    fn build<'p>(
        policy: &PortPolicy,
        authzs: &'p [Authorization],
        nets: &mut NetSets<'p>,
        scan_threshold: usize,
    ) -> Scope {
        let live = authzs
            .iter()
            .enumerate()
            .filter(|(_, a)| !is_audit_marker(policy, a))
            .filter_map(|(i, a)| Some((u32::try_from(i).ok()?, a)));
        if authzs.len() <= scan_threshold {
            let entries = live
                .map(|(i, a)| ScanEntry {
                    entry: Entry {
                        authz: i,
                        net: nets.id(&a.networks),
                    },
                    authn: match &a.authentication {
                        Authentication::Unauthenticated => ScanAuthn::Unauthenticated,
                        Authentication::TlsUnauthenticated => ScanAuthn::TlsUnauthenticated,
                        Authentication::TlsAuthenticated {
                            identities,
                            suffixes,
                        } => ScanAuthn::Identities {
                            exact: identities.iter().map(|s| s.as_str().into()).collect(),
                            suffixes: suffixes
                                .iter()
                                .filter(|s| !s.is_empty())
                                .map(|s| s.as_str().into())
                                .collect(),
                            any: suffixes.iter().any(|s| s.is_empty()),
                        },
                    },
                })
                .collect();
            return Scope::Scan(entries);
        }

        let mut unauthenticated = Vec::new();
        let mut tls_unauthenticated = Vec::new();
        let mut any_identity = Vec::new();
        let mut exact: HashMap<&str, Vec<Entry>> = HashMap::new();
        let mut suffixes: HashMap<&str, Vec<Entry>> = HashMap::new();
        for (i, a) in live {
            let entry = Entry {
                authz: i,
                net: nets.id(&a.networks),
            };
            match &a.authentication {
                Authentication::Unauthenticated => unauthenticated.push(entry),
                Authentication::TlsUnauthenticated => tls_unauthenticated.push(entry),
                Authentication::TlsAuthenticated {
                    identities,
                    suffixes: sfx,
                } => {
                    for id in identities {
                        exact.entry(id.as_str()).or_default().push(entry);
                    }
                    for s in sfx {
                        if s.is_empty() {
                            any_identity.push(entry);
                        } else {
                            suffixes.entry(s.as_str()).or_default().push(entry);
                        }
                    }
                }
            }
        }
        let mut suffix_lens: Vec<usize> = suffixes.keys().map(|s| s.len()).collect();
        suffix_lens.sort_unstable();
        suffix_lens.dedup();
        // Fully indexed scopes (threshold 0, for tests) index every list.
        let net_threshold = if scan_threshold == 0 {
            0
        } else {
            NET_INDEX_THRESHOLD
        };
        let sets = &nets.sets;
        let candidates = |v: Vec<Entry>| Candidates::build(first_per_net(v), sets, net_threshold);
        let to_map = |m: HashMap<&str, Vec<Entry>>| -> IdMap {
            m.into_iter()
                .map(|(k, v)| (Box::from(k), candidates(v)))
                .collect()
        };
        Scope::Indexed(Box::new(Index {
            unauthenticated: candidates(unauthenticated),
            tls_unauthenticated: candidates(tls_unauthenticated),
            any_identity: candidates(any_identity),
            exact: to_map(exact),
            suffixes: to_map(suffixes),
            suffix_lens: suffix_lens.into(),
        }))
    }

    /// The position of the first authorization that admits the client.
    #[inline]
    fn find(&self, nets: &[NetSet], probe: &Probe<'_>, memo: &mut NetMemo) -> Option<usize> {
        match self {
            Scope::Scan(entries) => entries
                .iter()
                .find(|e| e.authn.admits(probe) && memo.contains(nets, e.entry.net, probe.ip))
                .map(|e| e.entry.authz as usize),
            Scope::Indexed(index) => index.find(nets, probe, memo),
        }
    }
}

/// Keeps, in a list sorted by position, only the first entry of each network
/// set: later ones share its authentication and networks, so they never win.
fn first_per_net(list: Vec<Entry>) -> Box<[Entry]> {
    let mut seen = std::collections::HashSet::new();
    list.into_iter().filter(|e| seen.insert(e.net)).collect()
}

impl Index {
    fn find(&self, nets: &[NetSet], probe: &Probe<'_>, memo: &mut NetMemo) -> Option<usize> {
        let mut best = u32::MAX;
        let mut consider = |list: &Candidates, memo: &mut NetMemo| {
            best = list.first(nets, probe.ip, memo, best);
        };
        consider(&self.unauthenticated, memo);
        if probe.mesh {
            consider(&self.tls_unauthenticated, memo);
        }
        if let Some(presented) = probe.presented {
            if let Some(list) = self.exact.get(presented) {
                consider(list, memo);
            }
        }
        if let Some(list) = probe.other_dns.and_then(|d| self.exact.get(d)) {
            consider(list, memo);
        }
        if let Some(dns) = probe.dns {
            consider(&self.any_identity, memo);
            // `*.suffix` admits `name` when `name` ends with `.suffix`: probe
            // only the dot-suffixes whose length some listed suffix has.
            let bytes = dns.as_bytes();
            for &len in self.suffix_lens.iter() {
                if len >= bytes.len() {
                    break;
                }
                let start = bytes.len() - len;
                if bytes.get(start - 1) != Some(&b'.') {
                    continue;
                }
                if let Some(list) = dns.get(start..).and_then(|s| self.suffixes.get(s)) {
                    consider(list, memo);
                }
            }
        }
        (best != u32::MAX).then_some(best as usize)
    }
}

/// FxHash (the rustc hasher), with the final rotation of rustc-hash 2 so the
/// low bits the table uses are well mixed.
#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash.rotate_left(26)
    }
}

// ---------------------------------------------------------------------------
// HTTP routes.

#[derive(Clone, Debug)]
struct CompiledRoute {
    /// Empty matches every request.
    matches: Vec<CompiledMatch>,
    scope: Scope,
}

/// One (route, match) pair of the precedence order; `matched: None` is a
/// route without matches, which matches every request.
#[derive(Copy, Clone, Debug)]
struct RouteRef {
    route: usize,
    matched: Option<usize>,
}

/// How specific a match is; greater wins. Field order is precedence order.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Specificity {
    path: PathRank,
    method: bool,
    headers: usize,
}

/// Variant order is rank order (derived `Ord` compares variants first).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PathRank {
    /// No path match (or no matches at all).
    Any,
    /// Regex, by pattern length (Linkerd's rule).
    Regex(usize),
    /// Prefix, by length without trailing `/`: `/a/` and `/a` mean the same.
    Prefix(usize),
    Exact(usize),
}

impl Specificity {
    const LOWEST: Specificity = Specificity {
        path: PathRank::Any,
        method: false,
        headers: 0,
    };

    fn of(m: &RouteMatch) -> Self {
        let path = match &m.path {
            None => PathRank::Any,
            Some(PathMatch::Exact(p)) => PathRank::Exact(p.len()),
            Some(PathMatch::Prefix(p)) => PathRank::Prefix(p.trim_end_matches('/').len()),
            Some(PathMatch::Regex(p)) => PathRank::Regex(p.len()),
        };
        Specificity {
            path,
            method: m.method.is_some(),
            headers: m.headers.len(),
        }
    }
}

/// Every (route, match) pair, most specific first; the sort is stable, so
/// ties keep the policy's order.
fn precedence(routes: &[HttpRoute]) -> Box<[RouteRef]> {
    let mut pairs: Vec<(Specificity, RouteRef)> = Vec::new();
    for (route, r) in routes.iter().enumerate() {
        if r.matches.is_empty() {
            pairs.push((
                Specificity::LOWEST,
                RouteRef {
                    route,
                    matched: None,
                },
            ));
        }
        for (i, m) in r.matches.iter().enumerate() {
            pairs.push((
                Specificity::of(m),
                RouteRef {
                    route,
                    matched: Some(i),
                },
            ));
        }
    }
    pairs.sort_by_key(|(specificity, _)| std::cmp::Reverse(*specificity));
    pairs.into_iter().map(|(_, r)| r).collect()
}

impl Authorizer {
    /// The route a request takes: the first pair in precedence order whose
    /// match matches.
    fn route_for(&self, req: &HttpRequest<'_>) -> Option<(&CompiledRoute, &HttpRoute)> {
        self.precedence.iter().find_map(|r| {
            let compiled = self.routes.get(r.route)?;
            let hit = match r.matched {
                None => true,
                Some(i) => compiled.matches.get(i).is_some_and(|m| m.matches(req)),
            };
            if !hit {
                return None;
            }
            Some((compiled, self.policy.http_routes.get(r.route)?))
        })
    }
}

/// One `RouteMatch`; every present part must match. `None` in a compiled part
/// means it did not compile and never matches.
#[derive(Clone, Debug)]
struct CompiledMatch {
    method: Option<Box<str>>,
    path: Option<PathMatcher>,
    headers: Vec<HeaderMatcher>,
}

#[derive(Clone, Debug)]
enum PathMatcher {
    Exact(Box<str>),
    /// Without trailing `/`.
    Prefix(Box<str>),
    Regex(Option<regex::Regex>),
}

#[derive(Clone, Debug)]
struct HeaderMatcher {
    name: Option<http::HeaderName>,
    value: ValueMatcher,
}

#[derive(Clone, Debug)]
enum ValueMatcher {
    Exact(Box<[u8]>),
    Regex(Option<regex::bytes::Regex>),
}

/// `^(?:pattern)$`: Gateway API regex matches apply to the whole path or value.
fn anchored(pattern: &str) -> String {
    format!("^(?:{pattern})$")
}

impl CompiledMatch {
    fn build(
        port: u16,
        route: &HttpRoute,
        m: &RouteMatch,
        problems: &mut Vec<MatchProblem>,
    ) -> Self {
        let path = m.path.as_ref().map(|p| match p {
            PathMatch::Exact(p) => PathMatcher::Exact(p.as_str().into()),
            PathMatch::Prefix(p) => PathMatcher::Prefix(p.trim_end_matches('/').into()),
            PathMatch::Regex(pattern) => PathMatcher::Regex(
                regex::RegexBuilder::new(&anchored(pattern))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| {
                        problems.push(MatchProblem::InvalidPathRegex {
                            port,
                            route: route.meta.clone(),
                            pattern: pattern.clone(),
                            error: e.to_string(),
                        })
                    })
                    .ok(),
            ),
        });
        let headers = m
            .headers
            .iter()
            .map(|h| {
                let name = http::HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| {
                        problems.push(MatchProblem::InvalidHeaderName {
                            port,
                            route: route.meta.clone(),
                            header: h.name.clone(),
                        })
                    })
                    .ok();
                let value = match &h.value {
                    HeaderValueMatch::Exact(v) => ValueMatcher::Exact(v.as_bytes().into()),
                    HeaderValueMatch::Regex(pattern) => ValueMatcher::Regex(
                        regex::bytes::RegexBuilder::new(&anchored(pattern))
                            .size_limit(REGEX_SIZE_LIMIT)
                            .build()
                            .map_err(|e| {
                                problems.push(MatchProblem::InvalidHeaderRegex {
                                    port,
                                    route: route.meta.clone(),
                                    header: h.name.clone(),
                                    pattern: pattern.clone(),
                                    error: e.to_string(),
                                })
                            })
                            .ok(),
                    ),
                };
                HeaderMatcher { name, value }
            })
            .collect();
        CompiledMatch {
            method: m.method.as_deref().map(Box::from),
            path,
            headers,
        }
    }

    fn matches(&self, req: &HttpRequest<'_>) -> bool {
        if let Some(method) = &self.method {
            if **method != *req.method.as_str() {
                return false;
            }
        }
        if let Some(path) = &self.path {
            let ok = match path {
                PathMatcher::Exact(p) => **p == *req.path,
                // Path-segment prefix: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
                PathMatcher::Prefix(p) => {
                    p.is_empty()
                        || req.path == &**p
                        || (req.path.starts_with(&**p)
                            && req.path.as_bytes().get(p.len()) == Some(&b'/'))
                }
                PathMatcher::Regex(re) => re.as_ref().is_some_and(|re| re.is_match(req.path)),
            };
            if !ok {
                return false;
            }
        }
        self.headers.iter().all(|h| {
            let Some(name) = &h.name else {
                return false;
            };
            req.headers.any_value(name, &mut |v| match &h.value {
                ValueMatcher::Exact(want) => v == &**want,
                ValueMatcher::Regex(re) => re.as_ref().is_some_and(|re| re.is_match(v)),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClientIdentity, HeaderMatch, PolicyConfig, Protocol};
    use std::collections::BTreeSet;

    /// A detected port whose Server lists `authorizations`, without routes.
    fn port(authorizations: Vec<Authorization>) -> PortPolicy {
        PortPolicy {
            port: 1,
            protocol: Protocol::Detect,
            server: Meta::policy("server", "s"),
            access: Access::Enforce,
            authorizations,
            http_routes: Vec::new(),
        }
    }

    fn route(matches: Vec<RouteMatch>) -> PortPolicy {
        PortPolicy {
            port: 8080,
            protocol: Protocol::Http1,
            server: Meta::policy("server", "web"),
            access: Access::Enforce,
            authorizations: Vec::new(),
            http_routes: vec![HttpRoute {
                meta: Meta::policy("httproute", "r"),
                matches,
                authorizations: vec![Authorization {
                    meta: Meta::policy("authorizationpolicy", "all"),
                    networks: Network::all(),
                    authentication: Authentication::Unauthenticated,
                }],
            }],
        }
    }

    fn client() -> Client {
        Client {
            addr: "127.0.0.1".parse().unwrap(),
            tls: ClientTls::None,
        }
    }

    fn request(
        a: &Authorizer,
        method: &http::Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> bool {
        let req = HttpRequest {
            method,
            path,
            headers,
        };
        authorize_request(a, &client(), &req).is_ok()
    }

    #[test]
    fn path_regex_matches_the_whole_path_only() {
        let a = Authorizer::from(route(vec![RouteMatch {
            path: Some(PathMatch::Regex("/api/v[0-9]+/.*".into())),
            ..Default::default()
        }]));
        assert!(a.problems().is_empty());
        let h = http::HeaderMap::new();
        assert!(request(&a, &http::Method::GET, "/api/v1/users", &h));
        assert!(!request(&a, &http::Method::GET, "/x/api/v1/users", &h));
        assert!(!request(&a, &http::Method::GET, "/api/vx/users", &h));
        // An alternation cannot escape the anchors.
        let b = Authorizer::from(route(vec![RouteMatch {
            path: Some(PathMatch::Regex("/a|/b".into())),
            ..Default::default()
        }]));
        assert!(request(&b, &http::Method::GET, "/b", &h));
        assert!(!request(&b, &http::Method::GET, "/a/x", &h));
        assert!(!request(&b, &http::Method::GET, "/x/b", &h));
    }

    #[test]
    fn header_regex_matches_the_whole_value() {
        let a = Authorizer::from(route(vec![RouteMatch {
            headers: vec![HeaderMatch {
                name: "x-tenant".into(),
                value: HeaderValueMatch::Regex("team-[a-z]+".into()),
            }],
            ..Default::default()
        }]));
        let mut h = http::HeaderMap::new();
        assert!(!request(&a, &http::Method::GET, "/", &h));
        h.insert("x-tenant", "team-blue".parse().unwrap());
        assert!(request(&a, &http::Method::GET, "/", &h));
        h.insert("x-tenant", "team-blue2".parse().unwrap());
        assert!(!request(&a, &http::Method::GET, "/", &h));
        // Any of several values may match.
        h.append("x-tenant", "team-red".parse().unwrap());
        assert!(request(&a, &http::Method::GET, "/", &h));
    }

    #[test]
    fn invalid_regexes_and_header_names_never_match_and_are_reported() {
        let a = Authorizer::from(route(vec![
            RouteMatch {
                path: Some(PathMatch::Regex("/(unclosed".into())),
                ..Default::default()
            },
            RouteMatch {
                headers: vec![HeaderMatch {
                    name: "x-a".into(),
                    value: HeaderValueMatch::Regex("[z-a]".into()),
                }],
                ..Default::default()
            },
            RouteMatch {
                headers: vec![HeaderMatch {
                    name: "bad header".into(),
                    value: HeaderValueMatch::Exact("v".into()),
                }],
                ..Default::default()
            },
        ]));
        assert_eq!(a.problems().len(), 3, "{:?}", a.problems());
        assert!(matches!(
            a.problems()[0],
            MatchProblem::InvalidPathRegex { port: 8080, .. }
        ));
        assert!(matches!(
            a.problems()[1],
            MatchProblem::InvalidHeaderRegex { .. }
        ));
        assert!(matches!(
            a.problems()[2],
            MatchProblem::InvalidHeaderName { .. }
        ));
        assert!(a.problems()[0].to_string().contains("httproute/r"));
        let mut h = http::HeaderMap::new();
        h.insert("x-a", "a".parse().unwrap());
        // Nothing matches, so the request is denied for want of a route.
        let req = HttpRequest {
            method: &http::Method::GET,
            path: "/(unclosed",
            headers: &h,
        };
        let denied = authorize_request(&a, &client(), &req).unwrap_err();
        assert_eq!(denied.reason, DenyReason::NoRoute);
    }

    #[test]
    fn long_lists_of_distinct_networks_are_found_by_prefix() {
        // 5,000 unauthenticated authorizations, each for its own /32, then
        // broader ones: the network index must pick what a scan picks,
        // excepts included.
        let unauth = |name: String, net: &str, except: &[&str]| Authorization {
            meta: Meta::policy("serverauthorization", name),
            networks: vec![Network {
                net: net.parse().unwrap(),
                except: except.iter().map(|e| e.parse().unwrap()).collect(),
            }],
            authentication: Authentication::Unauthenticated,
        };
        let mut authorizations: Vec<Authorization> = (0..5000u32)
            .map(|i| {
                unauth(
                    format!("d{i}"),
                    &format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255),
                    &[],
                )
            })
            .collect();
        authorizations.push(unauth(
            "wide-except".into(),
            "192.168.0.0/16",
            &["192.168.7.0/24"],
        ));
        authorizations.push(unauth("wide".into(), "192.168.0.0/16", &[]));
        authorizations.push(unauth("v6".into(), "fd00::/8", &[]));
        let policy = port(authorizations);
        let indexed = Authorizer::from(policy.clone());
        let scanned = Authorizer::with_scan_threshold(policy, usize::MAX);
        for (ip, want) in [
            ("10.0.19.135", Some("d4999")),
            ("10.0.0.0", Some("d0")),
            ("10.0.19.136", None),
            ("192.168.1.1", Some("wide-except")),
            ("192.168.7.9", Some("wide")),
            ("::ffff:192.168.7.9", Some("wide")),
            ("fd00::1", Some("v6")),
            ("172.16.0.1", None),
        ] {
            let c = Client {
                addr: ip.parse().unwrap(),
                tls: ClientTls::None,
            };
            let got = |a: &Authorizer| {
                authorize(a, &c)
                    .ok()
                    .map(|p| p.authorization.name().to_string())
            };
            assert_eq!(got(&indexed), got(&scanned), "{ip}");
            assert_eq!(got(&indexed).as_deref(), want, "{ip}");
        }
    }

    #[test]
    fn network_sets_are_shared_across_authorizations() {
        let cfg = PolicyConfig::default();
        let authorizations: Vec<Authorization> = (0..100)
            .map(|i| Authorization {
                meta: Meta::policy("serverauthorization", format!("a{i}")),
                networks: cfg.cluster_networks.clone(),
                authentication: Authentication::TlsAuthenticated {
                    identities: BTreeSet::from([format!("sa{i}.ns.serviceaccount.identity.x")]),
                    suffixes: BTreeSet::new(),
                },
            })
            .collect();
        let a = Authorizer::from(port(authorizations));
        assert_eq!(a.nets.len(), 1);
        let id = ClientIdentity::new("sa42.ns.serviceaccount.identity.x", &cfg);
        let c = Client {
            addr: "10.1.2.3".parse().unwrap(),
            tls: ClientTls::Mesh { identity: Some(id) },
        };
        assert_eq!(authorize(&a, &c).unwrap().authorization.name(), "a42");
    }

    #[test]
    fn memo_spills_past_64_network_sets() {
        // 100 distinct /32 networks: the spill path must agree with the words.
        let mut memo = NetMemo::default();
        let nets: Vec<NetSet> = (0..100u32)
            .map(|i| NetSet::build(&[Network::new(format!("10.0.0.{i}/32").parse().unwrap())]))
            .collect();
        let ip = Ip::V4(u32::from(std::net::Ipv4Addr::new(10, 0, 0, 70)));
        for round in 0..2 {
            for id in 0..100u32 {
                assert_eq!(
                    memo.contains(&nets, id, ip),
                    id == 70,
                    "round {round} id {id}"
                );
            }
        }
    }
}
