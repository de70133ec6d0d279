//! `stele status`: reads the status branch and prints what runs where.

use crate::cli::StatusArgs;
use anyhow::Result;
use std::path::Path;

pub fn run(_repo: &Path, _args: StatusArgs) -> Result<u8> {
    anyhow::bail!("stele status is being built")
}
