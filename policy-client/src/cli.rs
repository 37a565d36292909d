//! The command-line flags that shape compiled policy, shared by the proxy
//! (`portcullis`) and the controller (`portcullis-controller`) so that both
//! spell, default and parse them identically (feature `cli`).
//!
//! Owns only flag parsing into a [`PolicyConfig`]; it reads no file and opens
//! no socket. Callers flatten [`PolicyArgs`] into their own clap parser.

use std::collections::BTreeSet;
use std::str::FromStr;

use clap::Args;
use ipnet::IpNet;
use serde::Serialize;

use crate::model::{
    DefaultPolicy, Network, PolicyConfig, DEFAULT_CLUSTER_NETWORKS, DEFAULT_IDENTITY_DOMAIN,
    DEFAULT_OPAQUE_PORTS, DEFAULT_TRUST_DOMAIN,
};

/// Settings that shape compiled policy, shared by every command.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Policy for ports no Server selects: all-unauthenticated, all-authenticated,
    /// cluster-authenticated, cluster-unauthenticated, deny or audit [default: all-unauthenticated]
    #[arg(
        long,
        env = "PORTCULLIS_DEFAULT_POLICY",
        default_value = "all-unauthenticated",
        hide_default_value = true
    )]
    pub default_policy: DefaultPolicy,

    /// The cluster's networks, for the cluster-* default policies and authorizations without
    /// networks [default: 10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8]
    #[arg(long, env = "PORTCULLIS_CLUSTER_NETWORKS", value_delimiter = ',', default_value = DEFAULT_CLUSTER_NETWORKS, hide_default_value = true, value_name = "CIDR")]
    pub cluster_networks: Vec<IpNet>,

    /// Ports (or ranges A-B) handled as opaque TCP, without protocol detection, when no Server
    /// names a protocol [default: 25,587,3306,4444,5432,6379,9300,11211]
    #[arg(long, env = "PORTCULLIS_OPAQUE_PORTS", value_delimiter = ',', default_value = DEFAULT_OPAQUE_PORTS, hide_default_value = true, value_name = "PORT|A-B")]
    pub opaque_ports: Vec<PortRange>,

    /// Identity domain of service-account identities [default: linkerd.cluster.local]
    #[arg(long, env = "PORTCULLIS_IDENTITY_DOMAIN", default_value = DEFAULT_IDENTITY_DOMAIN, hide_default_value = true)]
    pub identity_domain: String,

    /// SPIFFE trust domain whose IDs are unified with service accounts [default: cluster.local]
    #[arg(long, env = "PORTCULLIS_IDENTITY_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN, hide_default_value = true)]
    pub identity_trust_domain: String,
}

impl PolicyArgs {
    pub fn config(&self) -> PolicyConfig {
        PolicyConfig {
            default_policy: self.default_policy,
            cluster_networks: self
                .cluster_networks
                .iter()
                .map(|n| Network::new(*n))
                .collect(),
            opaque_ports: self
                .opaque_ports
                .iter()
                .flat_map(|r| r.first..=r.last)
                .collect::<BTreeSet<u16>>(),
            identity_domain: self.identity_domain.clone(),
            trust_domain: self.identity_trust_domain.clone(),
        }
    }
}

/// A port or an inclusive range `A-B` of ports.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("invalid port {p:?}: expected 1-65535"))
        };
        match s.split_once('-') {
            Some((a, b)) => {
                let (first, last) = (port(a)?, port(b)?);
                if first > last {
                    return Err(format!("invalid port range {s:?}: {first} > {last}"));
                }
                Ok(PortRange { first, last })
            }
            None => port(s).map(|p| PortRange { first: p, last: p }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_reject_zero_and_empty_ranges() {
        assert_eq!(
            "80".parse(),
            Ok(PortRange {
                first: 80,
                last: 80
            })
        );
        assert_eq!(
            "4000-4100".parse(),
            Ok(PortRange {
                first: 4000,
                last: 4100
            })
        );
        assert!("0".parse::<PortRange>().is_err());
        assert!("10-9".parse::<PortRange>().is_err());
        assert!("x".parse::<PortRange>().is_err());
    }
}
