//! `portcullis-controller`: serves Linkerd's inbound policy API from resource
//! files (for VMs, demos and tests), validates resource files, and explains a
//! decision (`check`).
//!
//! # Layout
//! ```text
//! cli ─┬─ serve ──── load + compile every pod ─► watch channel ─► grpc (GetPort / WatchPort)
//!      │             (files polled; a bad edit keeps the last good state)
//!      ├─ validate ─ load + cross-resource checks ─► one line per problem
//!      └─ check ──── load + compile one pod ─► authorize ─► allow / deny and why
//! ```
//! Policy logic lives in `portcullis-policy`; this crate only wires it to
//! files, flags and the network.

pub mod check;
pub mod cli;
pub mod grpc;
pub mod serve;
pub mod validate;
