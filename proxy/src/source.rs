//! Policy sources: where the policy table's snapshots come from.
//!
//! - none: the default policy (`--default-policy`, `--opaque-ports`,
//!   `--cluster-networks`) on every port; ready at once.
//!
//! A source is the table's only writer: it builds each snapshot off to the
//! side and publishes it whole (`PolicyTable::publish`), which wakes the
//! revocation task in `authz.rs`. Called once by `lib.rs` at startup.

use std::sync::Arc;

use portcullis_policy::PolicyTable;
use tokio::sync::watch;

use crate::config::{Config, PolicySource};
use crate::metrics::Metrics;

/// Why the policy source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("policy file {0}: not supported by this build yet")]
    FileUnsupported(String),
}

/// Starts the configured source. The returned flag turns true once a
/// policy is in force (for `/ready`).
pub fn start(
    config: &Config,
    table: Arc<PolicyTable>,
    metrics: Arc<Metrics>,
) -> Result<watch::Sender<bool>, SourceError> {
    let ready = watch::Sender::new(false);
    match &config.source {
        PolicySource::None => {
            // The table starts with the default policy: nothing to load.
            metrics.policy_generation.set(table.generation() as i64);
            ready.send_replace(true);
        }
        PolicySource::File { path, .. } => {
            return Err(SourceError::FileUnsupported(path.display().to_string()))
        }
    }
    Ok(ready)
}
