//! The decision: may this client use this port (or make this request)?
//!
//! `authorize` is a pure function over plain data: no I/O, no locks, no
//! `await`. Its result names what decided (server, authorization, route) so
//! that metrics, logs and `portcullis-controller check` explain themselves.
//! An [`Authorizer`] is a [`PortPolicy`] plus the indexes that keep the
//! decision fast; build it once per policy update, never per connection.

use std::ops::Deref;

use serde::Serialize;

use crate::model::{
    Access, Authentication, Authorization, Client, ClientTls, HttpRequest, HttpRoute, Meta,
    PathMatch, PortPolicy, RouteMatch,
};

/// A port policy ready for decisions.
#[derive(Clone, Debug)]
pub struct Authorizer {
    policy: PortPolicy,
}

impl From<PortPolicy> for Authorizer {
    fn from(policy: PortPolicy) -> Self {
        Authorizer { policy }
    }
}

impl Deref for Authorizer {
    type Target = PortPolicy;
    fn deref(&self) -> &PortPolicy {
        &self.policy
    }
}

impl Authorizer {
    pub fn policy(&self) -> &PortPolicy {
        &self.policy
    }
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
    decide(&port.policy, None, &port.policy.authorizations, &[], client)
}

/// Decides one HTTP request.
pub fn authorize_request<'a>(
    port: &'a Authorizer,
    client: &Client,
    request: &HttpRequest<'_>,
) -> Result<Permit<'a>, Denied<'a>> {
    let policy = &port.policy;
    if policy.http_routes.is_empty() {
        return decide(policy, None, &policy.authorizations, &[], client);
    }
    match policy
        .http_routes
        .iter()
        .find(|r| route_matches(r, request))
    {
        Some(route) => decide(
            policy,
            Some(&route.meta),
            &route.authorizations,
            &policy.authorizations,
            client,
        ),
        None => audit_or_deny(policy, None, DenyReason::NoRoute),
    }
}

fn decide<'a>(
    policy: &'a PortPolicy,
    route: Option<&'a Meta>,
    first: &'a [Authorization],
    second: &'a [Authorization],
    client: &Client,
) -> Result<Permit<'a>, Denied<'a>> {
    if let Some(authz) = first.iter().chain(second).find(|a| admits(a, client)) {
        return Ok(Permit {
            server: &policy.server,
            authorization: &authz.meta,
            route,
            audited: None,
        });
    }
    let reason = deny_reason(policy, first.iter().chain(second), client);
    audit_or_deny(policy, route, reason)
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

/// Whether one authorization admits the client.
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
            && name.as_bytes()[name.len() - suffix.len() - 1] == b'.')
}

/// The most specific explanation of a denial (slow path only).
fn deny_reason<'a>(
    policy: &PortPolicy,
    authzs: impl Iterator<Item = &'a Authorization> + Clone,
    client: &Client,
) -> DenyReason {
    if authzs.clone().next().is_none() {
        return match &policy.server {
            Meta::Default { name } if name == "deny" => DenyReason::DefaultDeny,
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

fn route_matches(route: &HttpRoute, req: &HttpRequest<'_>) -> bool {
    route.matches.is_empty() || route.matches.iter().any(|m| request_matches(m, req))
}

fn request_matches(m: &RouteMatch, req: &HttpRequest<'_>) -> bool {
    if let Some(method) = &m.method {
        if method != req.method.as_str() {
            return false;
        }
    }
    if let Some(path) = &m.path {
        let ok = match path {
            PathMatch::Exact(p) => p == req.path,
            PathMatch::Prefix(p) => {
                let p = p.trim_end_matches('/');
                req.path == p
                    || p.is_empty()
                    || (req.path.starts_with(p) && req.path.as_bytes().get(p.len()) == Some(&b'/'))
            }
            // Regex matching is added with L7 AuthorizationPolicy; until then a
            // regex route never matches (fails closed).
            PathMatch::Regex(_) => false,
        };
        if !ok {
            return false;
        }
    }
    m.headers.iter().all(|h| {
        req.headers
            .get_all(h.name.as_str())
            .iter()
            .any(|v| match &h.value {
                crate::model::HeaderValueMatch::Exact(want) => v.as_bytes() == want.as_bytes(),
                crate::model::HeaderValueMatch::Regex(_) => false,
            })
    })
}
