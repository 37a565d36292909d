//! `portcullis-controller check`: answers "why was this request denied?".
//!
//! Compiles the pod's policy from the resource files exactly as `serve` does,
//! then runs the proxy's own decision function (`authorize` for a connection,
//! `authorize_request` for an HTTP request) on the port, and prints the
//! result: `allow` with the deciding server, authorization (and route), or
//! `deny` with the server and the reason. Exit 0 allow, 3 deny, 1 bad input.
//!
//! The client is described by flags: `--client-ip` (default 10.0.0.1, an
//! address inside the default cluster networks; it is only a value for the
//! decision, never contacted), plaintext unless `--client-id ID` (meshed TLS
//! with that identity) or `--tls-no-identity` (meshed TLS, no certificate).
//! Called by: `cli`. Must not: open sockets.

use std::fmt::Write as _;
use std::process::ExitCode;

use portcullis_policy::{
    authorize, authorize_request, compile, Authorizer, Client, ClientIdentity, ClientTls,
    CompileError, HttpRequest, Protocol, ResourceErrors, Resources,
};

use crate::cli::CheckArgs;

/// Why `check` could not decide: the input's fault.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Resources(ResourceErrors),
    #[error("{0}")]
    Compile(#[from] CompileError),
    #[error("invalid port 0")]
    Port,
    #[error("invalid --method {0:?}")]
    Method(String),
    #[error("invalid --path {0:?}: must start with /")]
    Path(String),
    #[error("invalid --header {0:?}: expected NAME=VALUE with a valid header name and value")]
    Header(String),
}

/// The decision, ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// `allow` or `deny`, then `key: value` lines.
    pub text: String,
    /// Things the operator should know (compile warnings, HTTP not inspected).
    pub notes: Vec<String>,
}

pub fn check(args: &CheckArgs) -> Result<Outcome, CheckError> {
    if args.port == 0 {
        return Err(CheckError::Port);
    }
    let config = args.policy.config();
    let resources = Resources::load(&args.resources).map_err(CheckError::Resources)?;
    let compiled = compile(&resources, &args.workload.to_string(), &config)?;
    let mut notes = compiled.warnings;
    let port = Authorizer::from(compiled.policy.port(args.port));
    notes.extend(port.problems().iter().map(ToString::to_string));

    let tls = match (&args.client_id, args.tls_no_identity) {
        (Some(id), _) => ClientTls::Mesh {
            identity: Some(ClientIdentity::new(id.clone(), &config)),
        },
        (None, true) => ClientTls::Mesh { identity: None },
        (None, false) => ClientTls::None,
    };
    let client = Client {
        addr: args.client_ip,
        tls,
    };

    let http = args.method.is_some() || args.path.is_some() || !args.headers.is_empty();
    let method = args.method.as_deref().unwrap_or("GET");
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| CheckError::Method(method.to_string()))?;
    let path = args.path.as_deref().unwrap_or("/");
    if !path.starts_with('/') {
        return Err(CheckError::Path(path.to_string()));
    }
    // Policy matches the path without its query string, as the proxy does.
    let path = path.split('?').next().unwrap_or(path);
    let mut headers = http::HeaderMap::new();
    for h in &args.headers {
        let bad = || CheckError::Header(h.clone());
        let (name, value) = h.split_once('=').ok_or_else(bad)?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
        let value = http::HeaderValue::from_str(value).map_err(|_| bad())?;
        headers.append(name, value);
    }

    let decision = if http && matches!(port.protocol, Protocol::Opaque | Protocol::Tls) {
        notes.push(format!(
            "port {} is {}: the proxy does not look at HTTP there; deciding the connection",
            args.port, port.protocol
        ));
        authorize(&port, &client)
    } else if http {
        let request = HttpRequest {
            method: &method,
            path,
            headers: &headers,
        };
        authorize_request(&port, &client, &request)
    } else {
        authorize(&port, &client)
    };

    let mut text = String::new();
    let allowed = decision.is_ok();
    match decision {
        Ok(permit) => {
            let _ = writeln!(text, "allow");
            let _ = writeln!(text, "server: {}", permit.server);
            let _ = writeln!(text, "authorization: {}", permit.authorization);
            if let Some(route) = permit.route {
                let _ = writeln!(text, "route: {route}");
            }
            if let Some(reason) = permit.audited {
                let _ = writeln!(text, "audited: would be denied: {reason}");
            }
        }
        Err(denied) => {
            let _ = writeln!(text, "deny");
            let _ = writeln!(text, "server: {}", denied.server);
            if let Some(route) = denied.route {
                let _ = writeln!(text, "route: {route}");
            }
            let _ = writeln!(text, "reason: {}", denied.reason);
        }
    }
    Ok(Outcome {
        allowed,
        text,
        notes,
    })
}

pub fn run(args: &CheckArgs) -> ExitCode {
    match check(args) {
        Ok(outcome) => {
            for note in &outcome.notes {
                eprintln!("note: {note}");
            }
            print!("{}", outcome.text);
            if outcome.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(1)
        }
    }
}
