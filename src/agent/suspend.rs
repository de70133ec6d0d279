//! Suspensions: an operator's freeze of one environment's convergence during an incident, without a
//! commit (`stele suspend` / `stele resume`). Kept as `<state-dir>/suspended/<env>.json`, so it
//! survives restarts and needs no running agent; the agent reads the directory at every pass.
//!
//! Owns: that file format and its directory. Must not: decide what a suspended environment does (the
//! worker observes it and acts on nothing).

use crate::repo::write_atomic;
use crate::status::Suspension;
use anyhow::{Context, Result};
use ledger_format::types::EnvName;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("suspended")
}

fn file(state_dir: &Path, env: &EnvName) -> PathBuf {
    dir(state_dir).join(format!("{env}.json"))
}

/// Every suspension in `state_dir`. A file that cannot be read or parsed still suspends its
/// environment (with the problem as the reason): when in doubt, hold.
pub fn read_all(state_dir: &Path) -> BTreeMap<EnvName, Suspension> {
    let mut all = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else { return all };
    for path in entries.flatten().map(|e| e.path()) {
        let Some(env) = path
            .extension()
            .filter(|x| *x == "json")
            .and(path.file_stem())
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<EnvName>().ok())
        else {
            continue;
        };
        let suspension = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Suspension>(&b).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| Suspension {
                reason: format!("{}: unreadable suspension ({e}); holding", path.display()),
                by: "unknown".into(),
                since: crate::clock::now(),
            });
        all.insert(env, suspension);
    }
    all
}

/// Suspends `env` (replacing an earlier suspension's reason).
pub fn suspend(state_dir: &Path, env: &EnvName, s: &Suspension) -> Result<()> {
    let path = file(state_dir, env);
    std::fs::create_dir_all(dir(state_dir)).with_context(|| format!("{}: cannot create", dir(state_dir).display()))?;
    write_atomic(&path, &serde_json::to_vec_pretty(s).expect("suspensions serialize"))
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// Resumes `env`; whether it was suspended.
pub fn resume(state_dir: &Path, env: &EnvName) -> Result<bool> {
    let path = file(state_dir, env);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("{}: cannot remove", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspend_read_resume_and_an_unreadable_file_still_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let env: EnvName = "prod".parse().unwrap();
        assert!(read_all(tmp.path()).is_empty());
        let s = Suspension {
            reason: "incident 42".into(),
            by: "alice".into(),
            since: "2026-11-30T10:00:00Z".parse().unwrap(),
        };
        suspend(tmp.path(), &env, &s).unwrap();
        assert_eq!(read_all(tmp.path()).get(&env), Some(&s));
        std::fs::write(tmp.path().join("suspended/qa.json"), b"{not json").unwrap();
        let all = read_all(tmp.path());
        assert!(all[&"qa".parse::<EnvName>().unwrap()].reason.contains("unreadable suspension"), "{all:?}");
        assert!(resume(tmp.path(), &env).unwrap());
        assert!(!resume(tmp.path(), &env).unwrap());
        assert!(!read_all(tmp.path()).contains_key(&env));
    }
}
