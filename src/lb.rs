//! The local load balancer (`stele lb --config FILE`), being built.

use anyhow::Result;
use std::path::Path;

pub fn run(_config: &Path) -> Result<u8> {
    anyhow::bail!("stele lb is being built")
}
