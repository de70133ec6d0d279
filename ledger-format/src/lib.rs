//! Stele ledger format, version 1: the pure definition of what a valid ledger tree is.
//!
//! `SPEC.md` beside this crate is the normative text; each module cites the sections it implements.
//! The crate does no I/O and never reads a clock: callers pass bytes and `now` in, which keeps every
//! verdict reproducible (and testable against the vectors in `test-vectors/`).
//!
//! Data flow: bytes --[`json`]--> value --[`document`]--> typed document --[`tree`]--> verified tree;
//! first-parent steps --[`history`]--> verified state, target generations and an audit timeline.

pub mod check;
pub mod crypto;
pub mod document;
pub mod freshness;
pub mod history;
pub mod json;
pub mod observation;
pub mod ranges;
pub mod safety;
pub mod time;
pub mod tree;
pub mod types;

pub use check::Check;
pub use crypto::{Blake3Digest, KeyId, PublicKey, SecretKey};
pub use document::{DocKind, Document, SignedBy};
pub use time::Timestamp;
pub use tree::{verify_snapshot, Problem, Snapshot, VerifiedTree};
