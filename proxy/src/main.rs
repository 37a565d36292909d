//! The `portcullis` binary: parse and validate flags, set up logging, run.
//! Everything else lives in the library (`portcullis_proxy`).

use std::process::ExitCode;

use clap::Parser;
use portcullis_proxy::config::Args;

fn main() -> ExitCode {
    let config = match Args::parse().validate() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return ExitCode::from(2);
        }
    };
    portcullis_proxy::init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(portcullis_proxy::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}
