//! The local provider. Being built.

pub mod process;
pub mod store;
