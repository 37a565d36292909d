//! Criterion micro-benchmarks of the decision function and of building it.
//!
//! Owns the figures in `benches/RESULTS.md` ("Decision function"). Measures
//! `authorize` at 1, 10, 100 and 10,000 authorizations (identity hit on the
//! last-added authorization, identity miss, suffix hit, unauthenticated),
//! scan vs index at small sizes (how `DEFAULT_SCAN_THRESHOLD` was chosen),
//! HTTP requests on routes, `Authorizer::from` at 10 and 10,000, and
//! `Snapshot::get` for the fallback. Pure CPU work: no I/O.
//!
//! Run: `cargo bench -p portcullis-policy --bench authorize -- --warm-up-time 1 --measurement-time 2`

use std::collections::BTreeSet;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use portcullis_policy::{
    authorize, authorize_request, Access, Authentication, Authorization, Authorizer, Client,
    ClientIdentity, ClientTls, HttpRequest, HttpRoute, Meta, Network, PathMatch, PolicyConfig,
    PortPolicy, Protocol, RouteMatch, Snapshot, DEFAULT_IDENTITY_DOMAIN,
};

const SIZES: [usize; 4] = [1, 10, 100, 10_000];

fn sa(i: usize) -> String {
    format!(
        "sa{i}.ns{}.serviceaccount.identity.{DEFAULT_IDENTITY_DOMAIN}",
        i % 97
    )
}

fn exact(i: usize, networks: &[Network]) -> Authorization {
    Authorization {
        meta: Meta::policy("serverauthorization", format!("exact-{i}")),
        networks: networks.to_vec(),
        authentication: Authentication::TlsAuthenticated {
            identities: BTreeSet::from([sa(i)]),
            suffixes: BTreeSet::new(),
        },
    }
}

/// `n` authorizations: `n - 1` exact service-account identities over the
/// cluster networks (as a ServerAuthorization without `networks` compiles),
/// then `last`.
fn policy(n: usize, last: Authentication) -> PortPolicy {
    let cluster = PolicyConfig::default().cluster_networks;
    let mut authorizations: Vec<Authorization> = (0..n - 1).map(|i| exact(i, &cluster)).collect();
    authorizations.push(Authorization {
        meta: Meta::policy("serverauthorization", "last"),
        networks: cluster,
        authentication: last,
    });
    PortPolicy {
        port: 8080,
        protocol: Protocol::Detect,
        server: Meta::policy("server", "web"),
        access: Access::Enforce,
        authorizations,
        http_routes: Vec::new(),
    }
}

fn exact_last(n: usize) -> Authentication {
    Authentication::TlsAuthenticated {
        identities: BTreeSet::from([sa(n - 1)]),
        suffixes: BTreeSet::new(),
    }
}

const TARGET_NS: &str = "target.serviceaccount.identity.linkerd.cluster.local";

fn suffix_last() -> Authentication {
    Authentication::TlsAuthenticated {
        identities: BTreeSet::new(),
        suffixes: BTreeSet::from([TARGET_NS.to_string()]),
    }
}

fn meshed(identity: &str) -> Client {
    Client {
        addr: "10.42.0.7".parse().unwrap(),
        tls: ClientTls::Mesh {
            identity: Some(ClientIdentity::new(identity, &PolicyConfig::default())),
        },
    }
}

fn plaintext() -> Client {
    Client {
        addr: "10.42.0.7".parse().unwrap(),
        tls: ClientTls::None,
    }
}

fn decisions(c: &mut Criterion) {
    let mut g = c.benchmark_group("authorize");
    for n in SIZES {
        let a = Authorizer::from(policy(n, exact_last(n)));
        let hit = meshed(&sa(n - 1));
        assert!(authorize(&a, &hit).is_ok());
        g.bench_with_input(BenchmarkId::new("identity_hit_last", n), &n, |b, _| {
            b.iter(|| authorize(black_box(&a), black_box(&hit)).is_ok())
        });

        let miss = meshed(&PolicyConfig::default().service_account_identity("stranger", "ns1"));
        assert!(authorize(&a, &miss).is_err());
        g.bench_with_input(BenchmarkId::new("identity_miss", n), &n, |b, _| {
            b.iter(|| authorize(black_box(&a), black_box(&miss)).is_ok())
        });

        let s = Authorizer::from(policy(n, suffix_last()));
        let in_ns = meshed(&format!("web.{TARGET_NS}"));
        assert_eq!(authorize(&s, &in_ns).unwrap().authorization.name(), "last");
        g.bench_with_input(BenchmarkId::new("suffix_hit_last", n), &n, |b, _| {
            b.iter(|| authorize(black_box(&s), black_box(&in_ns)).is_ok())
        });

        let u = Authorizer::from(policy(n, Authentication::Unauthenticated));
        let plain = plaintext();
        assert_eq!(authorize(&u, &plain).unwrap().authorization.name(), "last");
        g.bench_with_input(BenchmarkId::new("unauthenticated_last", n), &n, |b, _| {
            b.iter(|| authorize(black_box(&u), black_box(&plain)).is_ok())
        });
    }
    g.finish();
}

/// Scan vs index for small scopes: where the default threshold comes from.
fn strategy(c: &mut Criterion) {
    let mut g = c.benchmark_group("strategy");
    for n in [2usize, 4, 8, 16, 32] {
        let p = policy(n, exact_last(n));
        let hit = meshed(&sa(n - 1));
        let miss = meshed(&PolicyConfig::default().service_account_identity("stranger", "ns1"));
        for (name, threshold) in [("scan", usize::MAX), ("index", 0)] {
            let a = Authorizer::with_scan_threshold(p.clone(), threshold);
            g.bench_with_input(
                BenchmarkId::new(format!("{name}_hit_last"), n),
                &n,
                |b, _| b.iter(|| authorize(black_box(&a), black_box(&hit)).is_ok()),
            );
            g.bench_with_input(BenchmarkId::new(format!("{name}_miss"), n), &n, |b, _| {
                b.iter(|| authorize(black_box(&a), black_box(&miss)).is_ok())
            });
        }
    }
    g.finish();
}

fn requests(c: &mut Criterion) {
    let mut g = c.benchmark_group("authorize_request");
    // A port with kubelet probes: probe route, then a catch-all route.
    let mut p = policy(10, exact_last(10));
    p.http_routes = vec![
        HttpRoute {
            meta: Meta::default("probe"),
            matches: vec![RouteMatch {
                path: Some(PathMatch::Exact("/ready".into())),
                method: Some("GET".into()),
                headers: Vec::new(),
            }],
            authorizations: vec![Authorization {
                meta: Meta::default("probe"),
                networks: Network::all(),
                authentication: Authentication::Unauthenticated,
            }],
        },
        HttpRoute {
            meta: Meta::policy("httproute", "api"),
            matches: vec![RouteMatch {
                path: Some(PathMatch::Regex("/api/v[0-9]+/users/[^/]+".into())),
                ..Default::default()
            }],
            authorizations: Vec::new(),
        },
        HttpRoute {
            meta: Meta::default("default"),
            matches: Vec::new(),
            authorizations: Vec::new(),
        },
    ];
    let a = Authorizer::from(p);
    let headers = http::HeaderMap::new();
    let hit = meshed(&sa(9));
    for (name, path) in [
        ("probe", "/ready"),
        ("regex_route", "/api/v2/users/42"),
        ("catch_all", "/index.html"),
    ] {
        let req = HttpRequest {
            method: &http::Method::GET,
            path,
            headers: &headers,
        };
        assert!(authorize_request(&a, &hit, &req).is_ok());
        g.bench_function(name, |b| {
            b.iter(|| authorize_request(black_box(&a), black_box(&hit), black_box(&req)).is_ok())
        });
    }
    g.finish();
}

fn build(c: &mut Criterion) {
    let mut g = c.benchmark_group("build");
    for n in [10usize, 10_000] {
        let p = policy(n, exact_last(n));
        g.bench_with_input(BenchmarkId::new("authorizer_from", n), &n, |b, _| {
            b.iter(|| Authorizer::from(black_box(p.clone())))
        });
        g.bench_with_input(BenchmarkId::new("policy_clone_only", n), &n, |b, _| {
            b.iter(|| black_box(p.clone()))
        });
    }
    g.finish();
}

fn snapshot(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot_get");
    let config = PolicyConfig::default();
    let snap = Snapshot::from_config(&config, "bench").with_port(policy(10, exact_last(10)));
    g.bench_function("own_port", |b| b.iter(|| snap.get(black_box(8080))));
    g.bench_function("fallback_cached", |b| b.iter(|| snap.get(black_box(9090))));
    // What every fallback `get` cost before the cache.
    g.bench_function("fallback_uncached", |b| {
        b.iter(|| std::sync::Arc::new(Authorizer::from(config.fallback_port(black_box(9090)))))
    });
    g.finish();
}

criterion_group!(benches, decisions, strategy, requests, build, snapshot);
criterion_main!(benches);
