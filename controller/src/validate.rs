//! `portcullis-controller validate PATH...`: reports every problem in
//! resource files, one per line as `FILE:DOC Kind/ns/name: field: message`,
//! and exits 1 if there is any; otherwise prints a one-line summary (counts
//! per kind) and exits 0.
//!
//! Problems are: everything that fails the load (syntax, types, unknown
//! fields, per-resource rules), cross-resource problems (`Resources::check`:
//! overlapping Servers, bad annotations, dangling references), and route
//! matches that can never match in a compiled pod.
//! Called by: `cli`. Must not: serve or decide.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use portcullis_policy::{compile, Authorizer, PolicyConfig, Resources};

use crate::cli::ValidateArgs;

/// Every problem, one line each (`Err`), or the summary line (`Ok`).
pub fn validate(paths: &[PathBuf], config: &PolicyConfig) -> Result<String, Vec<String>> {
    let resources = Resources::load(paths)
        .map_err(|errors| errors.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let mut problems: Vec<String> = resources
        .check(config)
        .iter()
        .map(ToString::to_string)
        .collect();
    for w in &resources.workloads {
        let Ok(compiled) = compile(&resources, &format!("{}/{}", w.namespace, w.name), config)
        else {
            continue;
        };
        for policy in compiled.policy.ports.into_values() {
            for p in Authorizer::from(policy).problems() {
                problems.push(format!(
                    "{}:{} {}: {p}",
                    w.origin.file,
                    w.origin.doc,
                    w.id()
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(summary(&resources))
    } else {
        Err(problems)
    }
}

/// `valid: 1 Namespace, 3 Pods, 4 Servers, ...` (kinds in a fixed order).
fn summary(res: &Resources) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for w in &res.workloads {
        *counts.entry(w.kind.as_str()).or_default() += 1;
    }
    let mut parts = Vec::new();
    let mut part = |n: usize, kind: &str| {
        if n > 0 {
            parts.push(format!("{n} {}", plural(kind, n)));
        }
    };
    part(res.namespaces.len(), "Namespace");
    for (kind, n) in &counts {
        part(*n, kind);
    }
    part(res.servers.len(), "Server");
    part(res.authorizations.len(), "ServerAuthorization");
    part(res.network_policies.len(), "NetworkAuthenticationPolicy");
    if parts.is_empty() {
        "valid: no resources".to_string()
    } else {
        format!("valid: {}", parts.join(", "))
    }
}

fn plural(kind: &str, n: usize) -> String {
    match (n, kind.strip_suffix("Policy")) {
        (1, _) => kind.to_string(),
        (_, Some(stem)) => format!("{stem}Policies"),
        _ => format!("{kind}s"),
    }
}

pub fn run(args: &ValidateArgs) -> ExitCode {
    let result = validate(&args.paths, &args.policy.config());
    let mut out = std::io::stdout().lock();
    match result {
        Ok(summary) => {
            let _ = writeln!(out, "{summary}");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in problems {
                let _ = writeln!(out, "{p}");
            }
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals() {
        assert_eq!(plural("Pod", 1), "Pod");
        assert_eq!(plural("Pod", 2), "Pods");
        assert_eq!(
            plural("NetworkAuthenticationPolicy", 2),
            "NetworkAuthenticationPolicies"
        );
    }
}
