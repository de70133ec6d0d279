//! Stele: a signed release ledger and pull-based GitOps reconciler for immutable infrastructure.
//!
//! This crate is the I/O shell around the pure `ledger_format` core: key files, image files, the Git
//! repository, and the command line. See ARCHITECTURE.md for the map.

pub mod agent;
pub mod build_info;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod converge;
pub mod exit;
pub mod http;
pub mod image;
pub mod keys;
pub mod lb;
pub mod logging;
pub mod notify;
pub mod plan;
pub mod provider;
pub mod replay;
pub mod repo;
pub mod report;
pub mod source;
pub mod state;
pub mod status;
pub mod sync;
pub mod tls;
