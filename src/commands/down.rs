//! `stele down`: stop everything an agent started on the local provider under its state directory
//! (every instance and balancer of every environment found under `<state>/local/`), with
//! `LocalProvider::destroy` per environment, and remove their records. Images in the store stay.
//!
//! Does not stop the agent: a running agent would start them again at its next pass, so stop it
//! first (`systemctl stop stele-agent`). Nothing records which process runs an agent for a state
//! directory, so this is said in `--help` rather than checked.

use super::suspend::state_dir;
use crate::cli::DownArgs;
use crate::exit::{self, Refused};
use crate::provider::local::{LocalProvider, LocalSettings};
use anyhow::{Context, Result};
use ledger_format::types::EnvName;
use std::path::Path;

/// The `[local]` settings of the configuration file (the stop grace), or the defaults.
fn local_settings(config: Option<&Path>) -> Result<LocalSettings> {
    let Some(path) = config else { return Ok(LocalSettings::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let value: toml::Table = toml::from_str(&text).map_err(|e| Refused(format!("{}: {e}", path.display())))?;
    match value.get("local") {
        None => Ok(LocalSettings::default()),
        Some(local) => {
            local.clone().try_into().map_err(|e| Refused(format!("{}: [local]: {e}", path.display())).into())
        }
    }
}

pub fn run(args: DownArgs) -> Result<u8> {
    let dir = state_dir(args.config.as_deref(), args.state_dir.as_deref())?;
    if !dir.is_dir() {
        return Err(Refused(format!("{}: no such state directory (has the agent run?)", dir.display())).into());
    }
    let local = dir.join("local");
    let mut envs: Vec<EnvName> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&local) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            match name.to_str().map(str::parse::<EnvName>) {
                Some(Ok(env)) if entry.path().is_dir() => envs.push(env),
                _ => eprintln!("warning: {}: not an environment's directory; left alone", entry.path().display()),
            }
        }
    }
    envs.sort();
    if envs.is_empty() {
        println!("nothing to stop: no local environment under {}", local.display());
        return Ok(exit::OK);
    }
    let exe = std::env::current_exe().context("cannot find the stele binary")?;
    let mut provider = LocalProvider::new(&dir, local_settings(args.config.as_deref())?, exe)?;
    for env in &envs {
        provider.destroy(env).with_context(|| format!("{env}: cannot stop everything"))?;
        println!("stopped {env}: its instances and balancers, records removed");
    }
    Ok(exit::OK)
}
