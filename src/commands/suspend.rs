//! `stele suspend` and `stele resume`: an operator's freeze of one environment's convergence, kept in
//! the agent's state directory (`agent::suspend`), so no commit and no running agent are needed. The
//! agent picks it up at its next pass (within its health interval, 5 s at most).

use crate::agent::suspend;
use crate::cli::{ResumeArgs, SuspendArgs};
use crate::exit::Refused;
use crate::status::Suspension;
use anyhow::{Context, Result};
use ledger_format::types::EnvName;
use std::path::{Path, PathBuf};

/// The state directory named by `--state-dir`, or by `state_dir` in the configuration file (relative
/// to the file's directory, as the agent reads it).
pub(super) fn state_dir(config: Option<&Path>, flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir.to_owned());
    }
    let path = config.expect("clap requires --config or --state-dir");
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let value: toml::Table = toml::from_str(&text).map_err(|e| Refused(format!("{}: {e}", path.display())))?;
    let dir = value
        .get("state_dir")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Refused(format!("{}: no state_dir; pass --state-dir", path.display())))?;
    let dir = PathBuf::from(dir);
    Ok(if dir.is_absolute() { dir } else { path.parent().unwrap_or(Path::new("")).join(dir) })
}

fn user() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into())
}

pub fn suspend(args: SuspendArgs) -> Result<u8> {
    let env: EnvName = args.env.parse().map_err(Refused)?;
    let dir = state_dir(args.config.as_deref(), args.state_dir.as_deref())?;
    if !dir.is_dir() {
        return Err(Refused(format!("{}: no such state directory (has the agent run?)", dir.display())).into());
    }
    anyhow::ensure!(!args.reason.trim().is_empty(), Refused("--reason must say why".into()));
    let s = Suspension { reason: args.reason, by: user(), since: super::now() };
    suspend::suspend(&dir, &env, &s)?;
    println!("suspended {env}: the agent acts on nothing there until `stele resume --env {env}`");
    Ok(crate::exit::OK)
}

pub fn resume(args: ResumeArgs) -> Result<u8> {
    let env: EnvName = args.env.parse().map_err(Refused)?;
    let dir = state_dir(args.config.as_deref(), args.state_dir.as_deref())?;
    if suspend::resume(&dir, &env)? {
        println!("resumed {env}: the agent converges it again at its next pass");
    } else {
        println!("{env} was not suspended");
    }
    Ok(crate::exit::OK)
}
