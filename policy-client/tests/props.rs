//! Property tests for the decision function.
//!
//! Owns three properties: network membership (cidr minus excepts) agrees with
//! an integer reference model; `*.suffix` matching agrees with its definition;
//! and — the key one — the indexed decision agrees with a naive scan of the
//! policy over random policies, clients and requests (route precedence
//! included: exact/prefix paths, methods, header counts, list-order ties), for
//! every indexing strategy. Run with `cargo test -p portcullis-policy --test props`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portcullis_policy::authorize::{admits, suffix_matches, DEFAULT_SCAN_THRESHOLD};
use portcullis_policy::{
    authorize, authorize_request, Access, Authentication, Authorization, Authorizer, Client,
    ClientIdentity, ClientTls, DenyReason, HeaderMatch, HeaderValueMatch, HttpRequest, HttpRoute,
    Meta, Network, PathMatch, PolicyConfig, PortPolicy, Protocol, RouteMatch,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Networks.

/// Reference membership: the top `len` bits agree (shifts, not masks).
fn in_prefix_v4(ip: u32, net: u32, len: u8) -> bool {
    len == 0 || (ip >> (32 - u32::from(len))) == (net >> (32 - u32::from(len)))
}

fn in_prefix_v6(ip: u128, net: u128, len: u8) -> bool {
    len == 0 || (ip >> (128 - u32::from(len))) == (net >> (128 - u32::from(len)))
}

/// An address near `net`: sharing a random number of its top bits.
fn near_v4(net: u32) -> impl Strategy<Value = u32> {
    (0u32..=32, any::<u32>()).prop_map(move |(keep, noise)| {
        if keep == 0 {
            noise
        } else {
            let low = if keep == 32 { 0 } else { u32::MAX >> keep };
            (net & !low) | (noise & low)
        }
    })
}

fn near_v6(net: u128) -> impl Strategy<Value = u128> {
    (0u32..=128, any::<u128>()).prop_map(move |(keep, noise)| {
        if keep == 0 {
            noise
        } else {
            let low = if keep == 128 { 0 } else { u128::MAX >> keep };
            (net & !low) | (noise & low)
        }
    })
}

type V4Case = (u32, u8, Vec<(u32, u8)>, u32);

fn v4_case() -> impl Strategy<Value = V4Case> {
    (any::<u32>(), 0u8..=32).prop_flat_map(|(net, len)| {
        let excepts = prop::collection::vec((near_v4(net), 0u8..=32), 0..4);
        (Just(net), Just(len), excepts, near_v4(net))
    })
}

type V6Case = (u128, u8, Vec<(u128, u8)>, u128);

/// Within `::ffff:0:0/96`, so read as an IPv4 network.
fn is_mapped_net(net: u128, len: u8) -> bool {
    len >= 96 && net >> 32 == 0xffff
}

fn v6_case() -> impl Strategy<Value = V6Case> {
    (any::<u128>(), 0u8..=128).prop_flat_map(|(net, len)| {
        let excepts = prop::collection::vec((near_v6(net), 0u8..=128), 0..4);
        (Just(net), Just(len), excepts, near_v6(net))
    })
}

/// One unauthenticated authorization over `network`, decided by the compiled
/// path at both strategies.
fn compiled_admits(network: &Network, addr: IpAddr) -> (bool, bool) {
    let policy = PortPolicy {
        port: 80,
        protocol: Protocol::Detect,
        server: Meta::policy("server", "s"),
        access: Access::Enforce,
        authorizations: vec![Authorization {
            meta: Meta::policy("serverauthorization", "n"),
            networks: vec![network.clone()],
            authentication: Authentication::Unauthenticated,
        }],
        http_routes: Vec::new(),
    };
    let client = Client {
        addr,
        tls: ClientTls::None,
    };
    let scan = Authorizer::with_scan_threshold(policy.clone(), usize::MAX);
    let index = Authorizer::with_scan_threshold(policy, 0);
    (
        authorize(&scan, &client).is_ok(),
        authorize(&index, &client).is_ok(),
    )
}

/// `network` (written from the IPv4 `model`: cidr, length, excepts) decides
/// `ip` as the integer model does, read as IPv4 and as IPv4-mapped IPv6, by
/// `Network::contains` and by the compiled decision at both strategies.
fn decides_v4_like_the_model(
    network: &Network,
    (net, len, excepts): (u32, u8, &[(u32, u8)]),
    ip: u32,
) -> Result<(), TestCaseError> {
    let want = in_prefix_v4(ip, net, len) && !excepts.iter().any(|(e, l)| in_prefix_v4(ip, *e, *l));
    let v4 = IpAddr::V4(Ipv4Addr::from(ip));
    let mapped = IpAddr::V6(Ipv4Addr::from(ip).to_ipv6_mapped());
    prop_assert_eq!(network.contains(v4), want);
    prop_assert_eq!(
        network.contains(mapped),
        want,
        "IPv4-mapped IPv6 reads as IPv4"
    );
    prop_assert_eq!(compiled_admits(network, v4), (want, want));
    prop_assert_eq!(compiled_admits(network, mapped), (want, want));
    Ok(())
}

proptest! {
    #[test]
    fn ipv4_membership_matches_the_integer_model((net, len, excepts, ip) in v4_case()) {
        let network = Network {
            net: format!("{}/{len}", Ipv4Addr::from(net)).parse().unwrap(),
            except: excepts
                .iter()
                .map(|(e, l)| format!("{}/{l}", Ipv4Addr::from(*e)).parse().unwrap())
                .collect(),
        };
        decides_v4_like_the_model(&network, (net, len, &excepts), ip)?;
    }

    /// The same IPv4 network written with its cidr and each except either as
    /// IPv4 or as IPv4-mapped IPv6 (`::ffff:a.b.c.d/len+96`) decides alike.
    #[test]
    fn mapped_networks_match_as_ipv4(
        (net, len, excepts, ip) in v4_case(),
        mapped_cidr in any::<bool>(),
        mapped_excepts in prop::collection::vec(any::<bool>(), 4),
    ) {
        let write = |addr: u32, len: u8, mapped: bool| -> ipnet::IpNet {
            let v4 = Ipv4Addr::from(addr);
            if mapped {
                format!("{}/{}", v4.to_ipv6_mapped(), len + 96).parse().unwrap()
            } else {
                format!("{v4}/{len}").parse().unwrap()
            }
        };
        let network = Network {
            net: write(net, len, mapped_cidr),
            except: excepts
                .iter()
                .zip(&mapped_excepts)
                .map(|((e, l), m)| write(*e, *l, *m))
                .collect(),
        };
        decides_v4_like_the_model(&network, (net, len, &excepts), ip)?;
        prop_assert!(network.canonical().is_ok());
    }

    #[test]
    fn ipv6_membership_matches_the_integer_model((net, len, excepts, ip) in v6_case()) {
        // IPv4-mapped networks are IPv4 networks: `mapped_networks_match_as_ipv4`.
        prop_assume!(!is_mapped_net(net, len) && !excepts.iter().any(|(e, l)| is_mapped_net(*e, *l)));
        let network = Network {
            net: format!("{}/{len}", Ipv6Addr::from(net)).parse().unwrap(),
            except: excepts
                .iter()
                .map(|(e, l)| format!("{}/{l}", Ipv6Addr::from(*e)).parse().unwrap())
                .collect(),
        };
        let addr = Ipv6Addr::from(ip);
        // A mapped address is an IPv4 client, which an IPv6 network never admits.
        let want = addr.to_ipv4_mapped().is_none()
            && in_prefix_v6(ip, net, len)
            && !excepts.iter().any(|(e, l)| in_prefix_v6(ip, *e, *l));
        prop_assert_eq!(network.contains(IpAddr::V6(addr)), want);
        prop_assert_eq!(compiled_admits(&network, IpAddr::V6(addr)), (want, want));
    }

    #[test]
    fn suffix_matching_matches_its_definition(
        suffix in "[ab.]{0,4}",
        name in "[ab.]{0,7}",
    ) {
        // `*.suffix` admits NAME.suffix for any NAME (even empty); `*` admits all.
        let want = suffix.is_empty()
            || name.strip_suffix(suffix.as_str()).is_some_and(|rest| rest.ends_with('.'));
        prop_assert_eq!(suffix_matches(&suffix, &name), want);
        // The indexes agree: one authorization listing the suffix.
        let authz = Authorization {
            meta: Meta::policy("serverauthorization", "s"),
            networks: Network::all(),
            authentication: Authentication::TlsAuthenticated {
                identities: BTreeSet::new(),
                suffixes: BTreeSet::from([suffix.clone()]),
            },
        };
        let policy = PortPolicy {
            port: 80,
            protocol: Protocol::Detect,
            server: Meta::policy("server", "s"),
            access: Access::Enforce,
            authorizations: vec![authz],
            http_routes: Vec::new(),
        };
        let client = Client {
            addr: "10.0.0.1".parse().unwrap(),
            tls: ClientTls::Mesh {
                identity: Some(ClientIdentity { presented: name.clone(), dns: Some(name.clone()) }),
            },
        };
        for threshold in [0, usize::MAX] {
            let a = Authorizer::with_scan_threshold(policy.clone(), threshold);
            prop_assert_eq!(authorize(&a, &client).is_ok(), want, "threshold {}", threshold);
        }
    }
}

// ---------------------------------------------------------------------------
// The indexed decision against a naive scan.

const IDENTITIES: &[&str] = &[
    "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
    "emoji.emojivoto.serviceaccount.identity.linkerd.cluster.local",
    "prometheus.linkerd-viz.serviceaccount.identity.linkerd.cluster.local",
    "xemojivoto.serviceaccount.identity.linkerd.cluster.local",
    "emojivoto.serviceaccount.identity.linkerd.cluster.local",
    "spiffe://cluster.local/ns/emojivoto/sa/web",
    "spiffe://example.org/ns/emojivoto/sa/web",
    "a.b",
    "b",
];

const SUFFIXES: &[&str] = &[
    "",
    "emojivoto.serviceaccount.identity.linkerd.cluster.local",
    "linkerd-viz.serviceaccount.identity.linkerd.cluster.local",
    "serviceaccount.identity.linkerd.cluster.local",
    "linkerd.cluster.local",
    "cluster.local",
    "local",
    "b",
    "example.org",
];

/// Client identities as presented; `ClientIdentity::new` unifies the SPIFFE ones.
const PRESENTED: &[&str] = &[
    "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
    "emoji.emojivoto.serviceaccount.identity.linkerd.cluster.local",
    "prometheus.linkerd-viz.serviceaccount.identity.linkerd.cluster.local",
    "xemojivoto.serviceaccount.identity.linkerd.cluster.local",
    "emojivoto.serviceaccount.identity.linkerd.cluster.local",
    "spiffe://cluster.local/ns/emojivoto/sa/web",
    "spiffe://cluster.local/ns/linkerd-viz/sa/prometheus",
    "spiffe://example.org/ns/emojivoto/sa/web",
    "a.b",
    "x.a.b",
    "b",
    "c",
];

const ADDRS: &[&str] = &[
    "10.0.0.1",
    "10.1.2.3",
    "10.255.255.255",
    "192.168.1.1",
    "172.16.0.1",
    "8.8.8.8",
    "::ffff:10.2.3.4",
    "::ffff:10.1.0.5",
    "fd00::1",
    "2001:db8::1",
];

fn network_pool() -> Vec<Vec<Network>> {
    let n = |s: &str| -> ipnet::IpNet { s.parse().unwrap() };
    vec![
        Network::all(),
        PolicyConfig::default().cluster_networks,
        vec![Network {
            net: n("10.0.0.0/8"),
            except: vec![n("10.1.0.0/16"), n("10.255.0.0/16")],
        }],
        vec![Network::new(n("192.168.0.0/16"))],
        vec![Network::new(n("fd00::/8")), Network::new(n("8.8.8.8/32"))],
        vec![Network::new(n("10.1.2.3/32"))],
        // Written as IPv4-mapped IPv6: read as 10.0.0.0/8 except 10.1.0.0/16.
        vec![Network {
            net: n("::ffff:10.0.0.0/104"),
            except: vec![n("::ffff:10.1.0.0/112")],
        }],
        Vec::new(),
    ]
}

fn authentication() -> impl Strategy<Value = Authentication> {
    let set = |pool: &'static [&'static str]| {
        prop::collection::btree_set(prop::sample::select(pool).prop_map(String::from), 0..3)
    };
    prop_oneof![
        1 => Just(Authentication::Unauthenticated),
        1 => Just(Authentication::TlsUnauthenticated),
        4 => (set(IDENTITIES), set(SUFFIXES)).prop_map(|(identities, suffixes)| {
            Authentication::TlsAuthenticated { identities, suffixes }
        }),
    ]
}

fn authorizations(max: usize) -> impl Strategy<Value = Vec<Authorization>> {
    let pool = network_pool();
    let one = (
        0..pool.len(),
        authentication(),
        prop::bool::weighted(0.05),
        0u32..1000,
    )
        .prop_map(move |(net, authentication, marker, id)| Authorization {
            // Sometimes the audit default's own catch-all, which never wins.
            meta: if marker {
                Meta::default("audit")
            } else {
                Meta::policy("serverauthorization", format!("a{id}"))
            },
            networks: pool[net].clone(),
            authentication,
        });
    prop::collection::vec(one, 0..max)
}

/// Paths of route matches and of requests: chosen so that exact, prefix and
/// segment boundaries overlap in every way.
const MATCH_PATHS: &[PathMatchKind] = &[
    PathMatchKind::Exact("/"),
    PathMatchKind::Exact("/a"),
    PathMatchKind::Exact("/a/b"),
    PathMatchKind::Prefix("/"),
    PathMatchKind::Prefix("/a"),
    PathMatchKind::Prefix("/a/"),
    PathMatchKind::Prefix("/a/b"),
];
const REQUEST_PATHS: &[&str] = &["/", "/a", "/a/b", "/ab", "/a/c"];
const HEADER_NAMES: &[&str] = &["x-a", "x-b"];

#[derive(Copy, Clone, Debug)]
enum PathMatchKind {
    Exact(&'static str),
    Prefix(&'static str),
}

fn route_match() -> impl Strategy<Value = RouteMatch> {
    let method = prop::option::of(prop::sample::select(&["GET", "POST"][..]));
    let path = prop::option::of(prop::sample::select(MATCH_PATHS));
    let headers = prop::sample::subsequence(HEADER_NAMES, 0..=HEADER_NAMES.len());
    (method, path, headers).prop_map(|(method, path, headers)| RouteMatch {
        method: method.map(str::to_string),
        path: path.map(|p| match p {
            PathMatchKind::Exact(p) => PathMatch::Exact(p.to_string()),
            PathMatchKind::Prefix(p) => PathMatch::Prefix(p.to_string()),
        }),
        headers: headers
            .into_iter()
            .map(|name| HeaderMatch {
                name: name.to_string(),
                value: HeaderValueMatch::Exact("1".into()),
            })
            .collect(),
    })
}

fn route() -> impl Strategy<Value = HttpRoute> {
    let matches = prop_oneof![Just(Vec::new()), prop::collection::vec(route_match(), 1..3),];
    (matches, authorizations(12), 0u32..1000).prop_map(|(matches, authorizations, id)| HttpRoute {
        meta: Meta::policy("httproute", format!("r{id}")),
        matches,
        authorizations,
    })
}

fn policy() -> impl Strategy<Value = PortPolicy> {
    let server = prop_oneof![
        Just(Meta::policy("server", "web")),
        Just(Meta::default("deny")),
        Just(Meta::default("audit")),
    ];
    let access = prop_oneof![3 => Just(Access::Enforce), 1 => Just(Access::Audit)];
    let routes = prop_oneof![
        2 => Just(Vec::new()),
        1 => prop::collection::vec(route(), 1..5),
    ];
    (server, access, authorizations(40), routes).prop_map(
        |(server, access, authorizations, http_routes)| PortPolicy {
            port: 8080,
            protocol: Protocol::Detect,
            server,
            access,
            authorizations,
            http_routes,
        },
    )
}

fn client() -> impl Strategy<Value = Client> {
    let tls = prop_oneof![
        1 => Just(ClientTls::None),
        1 => Just(ClientTls::Mesh { identity: None }),
        4 => prop::sample::select(PRESENTED).prop_map(|p| ClientTls::Mesh {
            identity: Some(ClientIdentity::new(p, &PolicyConfig::default())),
        }),
    ];
    (prop::sample::select(ADDRS), tls).prop_map(|(addr, tls)| Client {
        addr: addr.parse().unwrap(),
        tls,
    })
}

/// A decision reduced to comparable facts: which `Meta` objects (by address)
/// decided, and why.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Permit {
        authz: *const Meta,
        route: Option<*const Meta>,
        audited: Option<DenyReason>,
    },
    Deny {
        route: Option<*const Meta>,
        reason: DenyReason,
    },
}

fn outcome(
    result: Result<portcullis_policy::Permit<'_>, portcullis_policy::Denied<'_>>,
) -> Outcome {
    match result {
        Ok(p) => Outcome::Permit {
            authz: p.authorization,
            route: p.route.map(|r| r as *const Meta),
            audited: p.audited,
        },
        Err(d) => Outcome::Deny {
            route: d.route.map(|r| r as *const Meta),
            reason: d.reason,
        },
    }
}

/// The audit default's catch-all marks allows as audited; it never wins.
fn is_marker(policy: &PortPolicy, a: &Authorization) -> bool {
    policy.access == Access::Audit && a.meta == Meta::default("audit")
}

/// A request as the reference reads it.
struct Req<'a> {
    method: &'a str,
    path: &'a str,
    headers: &'a [&'a str],
}

/// Non-empty path segments: a prefix matches whole segments.
fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

fn reference_matches(m: &RouteMatch, req: &Req<'_>) -> bool {
    let method_ok = m.method.as_deref().is_none_or(|want| want == req.method);
    let path_ok = match &m.path {
        None => true,
        Some(PathMatch::Exact(p)) => p == req.path,
        Some(PathMatch::Prefix(p)) => segments(req.path).starts_with(&segments(p)),
        Some(PathMatch::Regex(_)) => unreachable!("not generated"),
    };
    let headers_ok = m.headers.iter().all(|h| {
        h.value == HeaderValueMatch::Exact("1".into()) && req.headers.contains(&h.name.as_str())
    });
    method_ok && path_ok && headers_ok
}

/// Gateway API precedence as a plain tuple: (exact?, prefix?, path length,
/// method?, header count); greater is more specific.
fn reference_rank(m: &RouteMatch) -> (bool, bool, usize, bool, usize) {
    let (exact, prefix, len) = match &m.path {
        None => (false, false, 0),
        Some(PathMatch::Exact(p)) => (true, false, p.len()),
        Some(PathMatch::Prefix(p)) => (false, true, p.trim_end_matches('/').len()),
        Some(PathMatch::Regex(_)) => unreachable!("not generated"),
    };
    (exact, prefix, len, m.method.is_some(), m.headers.len())
}

/// The route a request takes: the most specific matching match over all
/// routes; the first listed wins a tie. A route without matches matches
/// everything at the lowest rank.
fn reference_route<'p>(policy: &'p PortPolicy, req: &Req<'_>) -> Option<&'p HttpRoute> {
    let lowest = reference_rank(&RouteMatch::default());
    let mut best: Option<(_, &HttpRoute)> = None;
    for route in &policy.http_routes {
        let mut ranks: Vec<_> = route
            .matches
            .iter()
            .filter(|m| reference_matches(m, req))
            .map(reference_rank)
            .collect();
        if route.matches.is_empty() {
            ranks.push(lowest);
        }
        for rank in ranks {
            if best.is_none_or(|(b, _)| rank > b) {
                best = Some((rank, route));
            }
        }
    }
    best.map(|(_, r)| r)
}

/// The specification, written as plainly as possible.
fn reference(policy: &PortPolicy, client: &Client, request: Option<&Req<'_>>) -> Outcome {
    let route = match request {
        Some(req) if !policy.http_routes.is_empty() => match reference_route(policy, req) {
            Some(r) => Some(r),
            None => return refused(policy, None, DenyReason::NoRoute),
        },
        _ => None,
    };
    let route_authzs: &[Authorization] = route.map(|r| &r.authorizations[..]).unwrap_or(&[]);
    let live: Vec<&Authorization> = route_authzs
        .iter()
        .chain(&policy.authorizations)
        .filter(|a| !is_marker(policy, a))
        .collect();
    if let Some(a) = live.iter().find(|a| admits(a, client)) {
        return Outcome::Permit {
            authz: &a.meta,
            route: route.map(|r| &r.meta as *const Meta),
            audited: None,
        };
    }
    let reason = if live.is_empty() {
        if policy.server == Meta::default("deny") {
            DenyReason::DefaultDeny
        } else {
            DenyReason::NoAuthorizations
        }
    } else if !live
        .iter()
        .any(|a| a.networks.iter().any(|n| n.contains(client.addr)))
    {
        DenyReason::NetworkNotAuthorized
    } else {
        match &client.tls {
            ClientTls::None => DenyReason::TlsRequired,
            ClientTls::Mesh { identity: None } => DenyReason::IdentityRequired,
            ClientTls::Mesh { identity: Some(_) } => DenyReason::IdentityNotAuthorized,
        }
    };
    refused(policy, route.map(|r| &r.meta), reason)
}

fn refused(policy: &PortPolicy, route: Option<&Meta>, reason: DenyReason) -> Outcome {
    let route = route.map(|r| r as *const Meta);
    match policy.access {
        Access::Audit => Outcome::Permit {
            authz: &policy.server,
            route,
            audited: Some(reason),
        },
        Access::Enforce => Outcome::Deny { route, reason },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn indexed_decisions_agree_with_a_naive_scan(
        policy in policy(),
        clients in prop::collection::vec(client(), 1..6),
        method in prop::sample::select(&["GET", "POST", "PUT"][..]),
        path in prop::sample::select(REQUEST_PATHS),
        header_names in prop::sample::subsequence(HEADER_NAMES, 0..=HEADER_NAMES.len()),
    ) {
        let method_value: http::Method = method.parse().unwrap();
        let mut headers = http::HeaderMap::new();
        for name in &header_names {
            headers.insert(*name, http::HeaderValue::from_static("1"));
        }
        let request = HttpRequest { method: &method_value, path, headers: &headers };
        let req = Req { method, path, headers: &header_names };
        for threshold in [0, 5, DEFAULT_SCAN_THRESHOLD, usize::MAX] {
            let authorizer = Authorizer::with_scan_threshold(policy.clone(), threshold);
            // Compare against the authorizer's own copy, so addresses agree.
            let p = authorizer.policy();
            for client in &clients {
                prop_assert_eq!(
                    outcome(authorize(&authorizer, client)),
                    reference(p, client, None),
                    "connection, threshold {}, client {:?}", threshold, client
                );
                prop_assert_eq!(
                    outcome(authorize_request(&authorizer, client, &request)),
                    reference(p, client, Some(&req)),
                    "request {} {} {:?}, threshold {}, client {:?}", method, path, header_names, threshold, client
                );
            }
        }
    }
}

#[test]
fn the_first_admitting_authorization_wins_among_many() {
    // 1,000 authorizations, all admitting the client by different rules: the
    // index must still pick the first in the policy's order.
    let cfg = PolicyConfig::default();
    let id = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local";
    let rules = [
        Authentication::TlsAuthenticated {
            identities: BTreeSet::from([id.to_string()]),
            suffixes: BTreeSet::new(),
        },
        Authentication::TlsAuthenticated {
            identities: BTreeSet::new(),
            suffixes: BTreeSet::from([
                "emojivoto.serviceaccount.identity.linkerd.cluster.local".into()
            ]),
        },
        Authentication::any_identity(),
        Authentication::TlsUnauthenticated,
        Authentication::Unauthenticated,
    ];
    for first in 0..rules.len() {
        let authorizations = (0..1000)
            .map(|i| Authorization {
                meta: Meta::policy("serverauthorization", format!("a{i}")),
                networks: if i < 500 {
                    vec![Network::new("192.168.0.0/16".parse().unwrap())]
                } else {
                    cfg.cluster_networks.clone()
                },
                authentication: rules[(first + i) % rules.len()].clone(),
            })
            .collect();
        let a = Authorizer::from(PortPolicy {
            port: 80,
            protocol: Protocol::Detect,
            server: Meta::policy("server", "s"),
            access: Access::Enforce,
            authorizations,
            http_routes: Vec::new(),
        });
        let client = Client {
            addr: "10.0.0.1".parse().unwrap(),
            tls: ClientTls::Mesh {
                identity: Some(ClientIdentity::new(id, &cfg)),
            },
        };
        assert_eq!(authorize(&a, &client).unwrap().authorization.name(), "a500");
    }
}
