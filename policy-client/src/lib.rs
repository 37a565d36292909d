//! Portcullis policy: the model, Kubernetes-style resources and their
//! validation, compilation into per-port policy for one workload, the pure
//! decision function, the `PolicyTable`, and the controller stream client.
//!
//! Nothing in this crate opens a socket except the stream client (`client`).
//!
//! # Layout
//! ```text
//! resources (YAML files) ─► validate ─► compile ─► WorkloadPolicy ─┐
//! controller stream ─► proto (pb::Server -> PortPolicy) ───────────┤
//!                                                                  ▼
//!                                          table (ArcSwap<Snapshot>) ─► authorize
//! ```

pub mod authorize;
#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod compile;
pub mod load;
pub mod model;
pub mod proto;
pub mod resources;
pub mod selector;
pub mod table;
pub mod validate;

pub use authorize::{
    authorize, authorize_request, Authorizer, Denied, DenyReason, MatchProblem, Permit,
};
pub use compile::{compile, CompileError, Compiled};
pub use model::*;
pub use resources::{ResourceError, ResourceErrors, Resources};
pub use table::{PolicyTable, Snapshot};
