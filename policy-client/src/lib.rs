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
pub mod client;
pub mod model;
pub mod proto;
pub mod table;

pub use authorize::{authorize, authorize_request, Authorizer, Denied, DenyReason, Permit};
pub use model::*;
pub use table::{PolicyTable, Snapshot};
