//! The verified state on disk: the high-water mark (last verified commit) and the compact ledger
//! state after it, in `<state-dir>/verified.json`, replaced atomically; also the highest timestamp
//! version accepted so far (F3, SPEC.md §8.9), which files written before revision 4 lack.
//!
//! Owns: the state file's format and atomic replacement. Must not verify anything: what it loads was
//! verified when saved, and the documents inside are re-parsed (strictly) on load.

use crate::repo::write_atomic;
use anyhow::{Context, Result};
use ledger_format::history::LedgerState;
use ledger_format::Timestamp;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "verified.json";
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
pub struct StateFile {
    pub format: u32,
    /// The source this state belongs to; a state is never reused for another repository or branch.
    pub source: String,
    pub branch: Option<String>,
    /// The high-water mark: every later head must descend from it by first parents.
    pub commit: String,
    pub verified_at: Timestamp,
    pub state: LedgerState,
    /// The highest timestamp version accepted (F3's `seen`): a ledger whose timestamp is older is a
    /// replay. Absent before the first timestamp (and in files of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_seen: Option<u64>,
}

impl StateFile {
    pub fn new(source: &str, branch: Option<&str>, commit: String, verified_at: Timestamp, state: LedgerState) -> Self {
        Self {
            format: FORMAT,
            source: source.to_owned(),
            branch: branch.map(str::to_owned),
            commit,
            verified_at,
            timestamp_seen: state.timestamp.as_ref().map(|t| t.payload.version),
            state,
        }
    }

    /// This state, remembering `seen` too when it is higher than its own timestamp's version.
    pub fn with_seen(mut self, seen: Option<u64>) -> Self {
        self.timestamp_seen = self.timestamp_seen.max(seen);
        self
    }
}

fn path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

pub fn load(dir: &Path) -> Result<Option<StateFile>> {
    let file = path(dir);
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read the verified state", file.display())),
    };
    let state: StateFile = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: the verified state is unreadable; it is never guessed at", file.display()))?;
    anyhow::ensure!(state.format == FORMAT, "{}: state format {} is not {FORMAT}", file.display(), state.format);
    Ok(Some(state))
}

pub fn save(dir: &Path, state: &StateFile) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the state directory", dir.display()))?;
    let bytes = serde_json::to_vec_pretty(state).expect("the state serializes");
    write_atomic(&path(dir), &bytes)?;
    Ok(())
}
