//! Many status writers, one remote (see main.rs).

pub fn run() {}
