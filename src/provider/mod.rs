//! Providers: where instances run. Being built.

pub mod local;
