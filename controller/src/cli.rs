//! The command line: `serve`, `validate` and `check`, every flag with its
//! `PORTCULLIS_*` environment variable (as the proxy's flags), parsed once
//! into typed arguments, then dispatched. Also logging setup (`PORTCULLIS_LOG`,
//! `--log-format`).
//!
//! Exit codes: 0 success (`check`: allow), 1 bad input or invalid resources,
//! 3 `check` denied. Usage errors exit 1 too (clap's default would be 2):
//! for `check` that is "bad input".
//! Called by: `main`. Must not: decide policy (see `check`, `serve`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use portcullis_policy::client::Workload;

/// portcullis-controller: serves Linkerd's inbound policy API from resource
/// files, validates them, and explains decisions.
#[derive(Debug, Parser)]
#[command(name = "portcullis-controller", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format on stderr (filter with PORTCULLIS_LOG, default info)
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_LOG_FORMAT",
        value_enum,
        default_value = "plain"
    )]
    pub log_format: LogFormat,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve GetPort/WatchPort for every pod in the resource files, pushing
    /// changes to watchers within a second of a file change.
    Serve(ServeArgs),
    /// Report every problem in resource files (one per line); exit 1 if any.
    Validate(ValidateArgs),
    /// Explain whether a client may use a pod's port (or make a request):
    /// prints allow or deny and why; exit 0 allow, 3 deny, 1 bad input.
    Check(CheckArgs),
}

pub use portcullis_policy::cli::{PolicyArgs, PortRange};

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Resource files or directories (every *.yaml/*.yml directly inside); repeatable or
    /// comma-separated
    #[arg(long, env = "PORTCULLIS_RESOURCES", value_delimiter = ',', required = true, num_args = 1.., value_name = "PATH")]
    pub resources: Vec<PathBuf>,

    /// Address to serve the gRPC API on, e.g. 0.0.0.0:8090
    #[arg(long, env = "PORTCULLIS_LISTEN", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// How often the resource files are checked for changes [default: 250ms]
    #[arg(long, env = "PORTCULLIS_POLL_INTERVAL", value_parser = parse_duration, default_value = "250ms", hide_default_value = true)]
    pub poll_interval: Duration,

    #[command(flatten)]
    pub policy: PolicyArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// Resource files or directories
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// The client and request to decide about. Check-specific flags have no
/// environment variables, so a proxy's environment cannot leak into them.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Resource files or directories; repeatable or comma-separated
    #[arg(long, env = "PORTCULLIS_RESOURCES", value_delimiter = ',', required = true, num_args = 1.., value_name = "PATH")]
    pub resources: Vec<PathBuf>,

    /// The receiving pod, NAMESPACE/POD (a Pod's name, or a Deployment's, StatefulSet's ...)
    #[arg(long, value_name = "NAMESPACE/POD")]
    pub workload: Workload,

    /// The receiving port
    #[arg(long)]
    pub port: u16,

    /// The client's address. Only a value for the decision, never contacted
    /// [default: 10.0.0.1, an address inside the default cluster networks]
    #[arg(
        long,
        value_name = "IP",
        default_value = "10.0.0.1",
        hide_default_value = true
    )]
    pub client_ip: IpAddr,

    /// The client's verified mesh identity (DNS-form name or SPIFFE URI): a meshed TLS client.
    /// Without this or --tls-no-identity the client is plaintext
    #[arg(long, value_name = "ID", conflicts_with = "tls_no_identity")]
    pub client_id: Option<String>,

    /// The client speaks meshed TLS without a client certificate
    #[arg(long)]
    pub tls_no_identity: bool,

    /// Check an HTTP request with this method [default: GET when --path or --header is given]
    #[arg(long, value_name = "M")]
    pub method: Option<String>,

    /// Check an HTTP request for this path [default: / when --method or --header is given]
    #[arg(long, value_name = "P")]
    pub path: Option<String>,

    /// A request header NAME=VALUE (repeatable)
    #[arg(long = "header", value_name = "K=V")]
    pub headers: Vec<String>,

    #[command(flatten)]
    pub policy: PolicyArgs,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Logs to stderr (stdout is the output of `validate` and `check`).
fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                // --help, --version
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Serve(args) => {
            init_logging(cli.log_format, "info");
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(crate::serve::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::from(1)
                }
            }
        }
        // Quiet by default: these print their result on stdout.
        Command::Validate(args) => {
            init_logging(cli.log_format, "warn");
            crate::validate::run(&args)
        }
        Command::Check(args) => {
            init_logging(cli.log_format, "warn");
            crate::check::run(&args)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(
            "8080".parse::<PortRange>(),
            Ok(PortRange {
                first: 8080,
                last: 8080
            })
        );
        assert_eq!(
            "4000-4002".parse::<PortRange>(),
            Ok(PortRange {
                first: 4000,
                last: 4002
            })
        );
        for bad in ["0", "65536", "a", "5-4", "1-", ""] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_match_the_proxy() {
        let cli = Cli::try_parse_from([
            "portcullis-controller",
            "serve",
            "--resources",
            "a.yaml,b.yaml",
            "--listen",
            "127.0.0.1:8090",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        assert_eq!(args.resources.len(), 2);
        assert_eq!(args.poll_interval, Duration::from_millis(250));
        assert_eq!(
            args.policy.config(),
            portcullis_policy::PolicyConfig::default()
        );
    }

    #[test]
    fn client_id_and_tls_no_identity_conflict() {
        let r = Cli::try_parse_from([
            "portcullis-controller",
            "check",
            "--resources",
            "a.yaml",
            "--workload",
            "ns/pod",
            "--port",
            "80",
            "--client-id",
            "x",
            "--tls-no-identity",
        ]);
        assert!(r.is_err());
    }
}
