//! One ledger sync: fetch the branch, verify every first-parent commit since the high-water mark, and
//! persist the new mark. `stele poll` runs it once; the agent runs it on every poll.
//!
//! Owns: the rules around the state directory (a state belongs to one source and branch; the first
//! sync needs a pinned trust root), the freshness rule for whoever acts (F3, applied with the clock and
//! the highest timestamp version seen, which it persists) and the verdict of a sync. Must not contain
//! verification rules (`ledger_format::history`, `ledger_format::freshness`) or print.

use crate::exit::Refused;
use crate::replay::{replay_with, Outcome, Verified};
use crate::source::{GitSource, LedgerSource, SourceError};
use crate::state::{self, StateFile};
use anyhow::Result;
use git2::Oid;
use ledger_format::history::{LedgerState, TrustAnchor};
use ledger_format::Timestamp;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncStatus {
    /// The head is the high-water mark already.
    UpToDate,
    /// New commits verified up to the head.
    Verified,
    /// No commit carries a ledger yet.
    NoLedger,
    /// The head is not verified (a refused commit or a history rewrite): the last verified state holds.
    Stalled,
}

/// A reader's own freshness floor (never from the ledger): the head must contain `commit`, and each
/// named environment must be at least at its generation. A fresh agent with a floor cannot be fed a
/// mirror reset below what its operator knows to exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Floor {
    pub commit: Option<Oid>,
    pub generations: std::collections::BTreeMap<ledger_format::types::EnvName, u64>,
}

impl Floor {
    pub fn is_empty(&self) -> bool {
        self.commit.is_none() && self.generations.is_empty()
    }
}

pub struct Synced {
    pub status: SyncStatus,
    pub head: Oid,
    /// The state to act on: the last verified point (new or old).
    pub verified: Option<Verified>,
    pub outcome: Outcome,
    /// Why the sync stalled, when it did, in one line naming the commit and check.
    pub reason: Option<String>,
    /// Why the ledger is not fresh (F3: its timestamp expired, is missing or went back), when it is
    /// not: then the status is `Stalled` and whoever acts must act on nothing, not even `verified`.
    pub stale: Option<String>,
}

/// Where a state directory keeps the fetched copy of a remote ledger.
pub fn cache_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cache")
}

/// A ledger source with its state directory.
pub struct LedgerSync {
    source: GitSource,
    location: String,
    branch: Option<String>,
    state_dir: PathBuf,
    anchor: Option<TrustAnchor>,
    last: Option<Verified>,
    floor: Floor,
    /// The highest timestamp version accepted before (F3's `seen`), persisted with the state.
    seen: Option<u64>,
}

/// Whether a state directory recorded for `recorded` belongs to `location`: the same text, or two
/// spellings of one local repository (relative and absolute, through a symbolic link).
fn same_source(recorded: &str, location: &str) -> bool {
    if recorded == location {
        return true;
    }
    if crate::source::is_remote(recorded) || crate::source::is_remote(location) {
        return false;
    }
    match (std::fs::canonicalize(recorded), std::fs::canonicalize(location)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

impl LedgerSync {
    /// Opens the source and the state directory. Refuses a state directory that belongs to another
    /// source or branch, and a first sync without a pinned trust root.
    pub fn open(location: &str, branch: Option<&str>, state_dir: &Path, anchor: Option<TrustAnchor>) -> Result<Self> {
        let source = GitSource::open(location, branch, &cache_dir(state_dir))?;
        let branch = source.branch().map(str::to_owned);
        let existing = state::load(state_dir)?;
        if let Some(s) = &existing {
            if !same_source(&s.source, location) || s.branch != branch {
                return Err(Refused(format!(
                    "{} holds the state of {} (branch {}); use another --state-dir for {location} (branch {})",
                    state_dir.display(),
                    s.source,
                    s.branch.as_deref().unwrap_or("HEAD"),
                    branch.as_deref().unwrap_or("HEAD")
                ))
                .into());
            }
        }
        if existing.is_none() && anchor.is_none() {
            return Err(Refused(
                "the first poll needs a pinned trust root (--trust-root KEYID[,KEYID] or --trust-root-hash HEX); \
                 Stele never trusts the first policy it happens to find"
                    .into(),
            )
            .into());
        }
        // A state file written before revision 4 has no `timestamp_seen`; its state's timestamp counts.
        let seen =
            existing.as_ref().and_then(|s| s.timestamp_seen.max(s.state.timestamp.as_ref().map(|t| t.payload.version)));
        let last = match existing {
            Some(s) => Some(Verified { commit: Oid::from_str(&s.commit)?, state: s.state }),
            None => None,
        };
        Ok(Self {
            source,
            location: location.to_owned(),
            branch,
            state_dir: state_dir.to_owned(),
            anchor,
            last,
            floor: Floor::default(),
            seen,
        })
    }

    /// Refuses, from now on, any head below `floor` (see [`Floor`]).
    pub fn with_floor(mut self, floor: Floor) -> Self {
        self.floor = floor;
        self
    }

    /// Why `head` (and the state verified up to it) is below the floor, if it is.
    fn below_floor(&self, head: Oid, verified: Option<&Verified>) -> Option<String> {
        if let Some(floor) = self.floor.commit {
            let repo = self.source.repository();
            let reaches = head == floor || repo.graph_descendant_of(head, floor).unwrap_or(false);
            if !reaches {
                return Some(format!(
                    "H1: the ledger head {head} does not contain the pinned floor commit {floor} (a mirror reset \
                     or a stale copy?); nothing below the floor is accepted"
                ));
            }
        }
        for (env, min) in &self.floor.generations {
            let have = verified.and_then(|v| v.state.envs.get(env)).map_or(0, |h| h.generation);
            if have < *min {
                return Some(format!(
                    "H1: environment {env} is at generation {have} at the ledger head {head}, below the pinned \
                     floor {min} (a mirror reset or a stale copy?); nothing below the floor is accepted"
                ));
            }
        }
        None
    }

    /// F3 for `state` at `now` (SPEC.md §8.9): why it must not be acted on, if it must not.
    fn stale(&self, state: &LedgerState, commit: Oid, now: Timestamp) -> Option<String> {
        let policy = &state.policy.payload;
        ledger_format::freshness::check_current(policy, state.timestamp.as_ref(), self.seen, now).err().map(|e| {
            format!(
                "{}: {} (verified commit {commit}); keeping the last verified state and acting on nothing until \
                 a renewal (stele timestamp renew) arrives",
                e.check, e.reason
            )
        })
    }

    /// F3 for the last verified state at `now`: a timestamp that was fresh at the last poll expires
    /// with time alone, so whoever acts asks again before acting.
    pub fn stale_now(&self, now: Timestamp) -> Option<String> {
        self.last.as_ref().and_then(|v| self.stale(&v.state, v.commit, now))
    }

    /// The highest timestamp version accepted so far.
    pub fn timestamp_seen(&self) -> Option<u64> {
        self.seen
    }

    pub fn branch(&self) -> Option<&str> {
        self.branch.as_deref()
    }

    /// The last verified point, without fetching.
    pub fn last(&self) -> Option<&Verified> {
        self.last.as_ref()
    }

    /// Fetches and verifies; with `persist`, saves a new high-water mark (a dry run such as `stele plan`
    /// passes false). Network failures are errors (retryable: `SourceError::is_retryable`); refusals
    /// are a `Stalled` verdict, never an error.
    pub fn sync(&mut self, now: Timestamp, persist: bool) -> Result<Synced, SourceError> {
        let head = self.source.refresh()?;
        if let Some(v) = self.last.as_ref().filter(|v| v.commit == head) {
            if let Some(reason) = self.below_floor(head, Some(v)) {
                return Ok(Synced {
                    status: SyncStatus::Stalled,
                    head,
                    verified: Some(v.clone()),
                    outcome: Outcome::default(),
                    reason: Some(reason),
                    stale: None,
                });
            }
            let stale = self.stale(&v.state, v.commit, now);
            return Ok(Synced {
                status: if stale.is_some() { SyncStatus::Stalled } else { SyncStatus::UpToDate },
                head,
                verified: Some(v.clone()),
                outcome: Outcome::default(),
                reason: stale.clone(),
                stale,
            });
        }
        let anchor = self.anchor.clone().unwrap_or(TrustAnchor::UnpinnedTrustGenesisAsFound);
        // Reports are not kept: a poll needs the verified state, and its memory stays bounded.
        let outcome = match replay_with(&self.source, self.last.clone(), head, &anchor, &mut |_, _| {}, &mut drop) {
            Err(e @ SourceError::Rewritten { .. }) => {
                return Ok(Synced {
                    status: SyncStatus::Stalled,
                    head,
                    verified: self.last.clone(),
                    outcome: Outcome::default(),
                    reason: Some(format!("H1: {e}; keeping the last verified state")),
                    stale: None,
                });
            }
            other => other?,
        };
        let verified = outcome.verified.clone();
        if let Some(reason) = self.below_floor(head, verified.as_ref()) {
            return Ok(Synced {
                status: SyncStatus::Stalled,
                head,
                verified: self.last.clone(),
                outcome: Outcome::default(),
                reason: Some(reason),
                stale: None,
            });
        }
        if let Some(v) = verified.as_ref().filter(|v| self.last.as_ref().map(|l| l.commit) != Some(v.commit)) {
            // A state that is not fresh is never the new high-water mark: the last good one holds.
            if let Some(stale) = self.stale(&v.state, v.commit, now) {
                return Ok(Synced {
                    status: SyncStatus::Stalled,
                    head,
                    verified: self.last.clone(),
                    outcome,
                    reason: Some(stale.clone()),
                    stale: Some(stale),
                });
            }
            // A policy without a timestamp role withdrew it (only the root can): versions of a role added
            // later start again at 1, so what was seen under the old role is forgotten (SPEC.md §8.9).
            let seen = match v.state.policy.payload.timestamp {
                None => None,
                Some(_) => self.seen.max(v.state.timestamp.as_ref().map(|t| t.payload.version)),
            };
            if persist {
                let file =
                    StateFile::new(&self.location, self.branch.as_deref(), v.commit.to_string(), now, v.state.clone())
                        .with_seen(seen);
                state::save(&self.state_dir, &file).map_err(|e| SourceError::Git {
                    location: self.state_dir.display().to_string(),
                    context: "save the verified state".into(),
                    source: git2::Error::from_str(&format!("{e:#}")),
                })?;
            }
            self.last = Some(v.clone());
            self.seen = seen;
        }
        let stale = verified.as_ref().and_then(|v| self.stale(&v.state, v.commit, now));
        let status = match &verified {
            _ if stale.is_some() => SyncStatus::Stalled,
            Some(v) if v.commit == head => SyncStatus::Verified,
            None if outcome.refusals.is_empty() => SyncStatus::NoLedger,
            _ => SyncStatus::Stalled,
        };
        let refused = outcome.refusals.first().map(|r| {
            let problems: Vec<String> = r.problems.iter().map(|p| p.to_string()).collect();
            format!(
                "commit {} ({}) refused: {}",
                &r.commit.id[..12.min(r.commit.id.len())],
                r.commit.summary,
                problems.join("; ")
            )
        });
        let reason = match (&stale, refused) {
            (Some(stale), Some(refused)) => Some(format!("{stale}; also {refused}")),
            (Some(stale), None) => Some(stale.clone()),
            (None, refused) => refused,
        };
        Ok(Synced { status, head, verified, outcome, reason, stale })
    }
}

#[cfg(test)]
mod tests {
    use super::same_source;

    #[test]
    fn one_local_repository_spelled_two_ways_is_the_same_source() {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = tmp.path().join("ledger");
        let other = tmp.path().join("other");
        std::fs::create_dir_all(&ledger).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::os::unix::fs::symlink(&ledger, tmp.path().join("link")).unwrap();
        let abs = ledger.to_str().unwrap();
        let dotted = format!("{}/../ledger", other.display());
        assert!(same_source(abs, &dotted));
        assert!(same_source(abs, tmp.path().join("link").to_str().unwrap()));
        assert!(!same_source(abs, other.to_str().unwrap()));
        assert!(!same_source("git://host/ledger", abs));
        assert!(same_source("git://host/ledger", "git://host/ledger"));
        assert!(!same_source(abs, tmp.path().join("missing").to_str().unwrap()));
    }
}
