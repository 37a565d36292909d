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
    // Before the runtime exists, so that all of its threads inherit it.
    if let Err(e) = portcullis_proxy::cpu::set_policy(config.cpu_scheduling) {
        tracing::warn!(
            "--cpu-scheduling {:?}: {e}; the threads keep their current policy",
            config.cpu_scheduling
        );
    }
    let runtime = match runtime_builder().enable_all().build() {
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

/// One worker thread (`TOKIO_WORKER_THREADS=1`, or a single available CPU,
/// as in a sidecar limited to one core) gets tokio's current-thread
/// scheduler: the same one thread, without the work-stealing machinery
/// (measured in benches/RESULTS.md). Otherwise one worker per CPU.
fn runtime_builder() -> tokio::runtime::Builder {
    let workers = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from));
    if workers == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
}
