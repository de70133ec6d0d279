//! The verified starting point of a writing command (`release`, `env set`, `policy ...`): HEAD's
//! commit and the verified state after it (SPEC.md §8.1), without reading the whole tree when it can be
//! avoided.
//!
//! A full tree verification (§7.2) reads and parses every document, which at 100 000 entries takes
//! seconds. Its result is kept in `<git dir>/stele/verified-state.json`, keyed by the commit it holds
//! for and by the build that computed it. The next writing command then
//! - takes it as is when HEAD is still that commit;
//! - replays the first-parent commits since then with the history rules (`crate::replay`, §8.3), as an
//!   agent does, when HEAD descends from it (a `git pull`, someone else's release);
//! - and verifies the whole tree again otherwise (no cache, a rewritten branch, a refused commit, a
//!   different build), which is what every writer did before.
//!
//! A change is then judged as one step from that state (`proposal::submit`): by §8.0 a step the history
//! rules accept produces a tree that verifies, so only the changed documents are read and checked.
//! The work tree must match HEAD (`LedgerRepo::ensure_clean`), so what was verified is what is signed.
//!
//! Owns: the cache file and choosing between cache, replay and full verification. Must not judge
//! anything itself (verdicts come from `ledger_format` through `replay` and `verify_tree`).

use super::load_verified;
use crate::exit::Refused;
use crate::repo::{write_atomic, LedgerRepo};
use crate::source::GitSource;
use anyhow::Result;
use git2::Oid;
use ledger_format::document::Document;
use ledger_format::history::{state_of, LedgerState, TrustAnchor};
use ledger_format::tree::Node;
use ledger_format::types::{Entry, EnvName};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the cache lives, under the repository's git directory (never in the work tree).
const CACHE_FILE: &str = "stele/verified-state.json";

/// What the cache holds. `build` names the binary that verified it: another build (whose rules may
/// differ) verifies the tree again rather than trust it.
#[derive(Serialize, Deserialize)]
struct Cached<S> {
    build: String,
    commit: String,
    state: S,
}

/// How [`load_base`] arrived at the state, for `--json` output and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The cache held HEAD's state.
    Cached,
    /// The cache held an ancestor's state; this many commits were replayed from it.
    Replayed(usize),
    /// The whole tree was read and verified.
    Verified,
}

/// HEAD and its verified state: where a writing command starts.
pub struct Base {
    pub head: Option<Oid>,
    pub state: LedgerState,
    pub source: Source,
}

impl Base {
    /// The environment's state, or a refusal naming how to declare it.
    pub fn env(&self, env: &EnvName) -> Result<&ledger_format::history::EnvHistory> {
        self.state.envs.get(env).ok_or_else(|| {
            let policy = &self.state.policy.payload;
            Refused(format!(
                "environment {env} is not declared in this ledger; declare it first, signed by {} of the root keys \
                 ({}):\n  stele policy add-env {env} --key ROOT_SECRET_KEY",
                policy.root.threshold,
                super::key_list(policy, &policy.root.keys)
            ))
            .into()
        })
    }

    /// The document of `env`'s tip, read from HEAD at the policy's layout.
    pub fn tip_doc(&self, repo: &LedgerRepo, env: &EnvName) -> Result<Option<Document<Entry>>> {
        let (Some(head), Some(tip)) = (self.head, self.state.envs.get(env).and_then(|h| h.tip.as_ref())) else {
            return Ok(None);
        };
        let path = self.state.policy.payload.layout().entry_path(env, tip.seq);
        match repo.node_at(head, &path)? {
            Some(Node::File(bytes)) => Ok(Some(Document::parse(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{path}: the verified tip no longer parses ({e}); remove {}",
                    cache_path(repo).display()
                )
            })?)),
            _ => Err(anyhow::anyhow!(
                "{path}: the verified tip of {env} is not in commit {head}; remove {} and try again",
                cache_path(repo).display()
            )),
        }
    }
}

fn cache_path(repo: &LedgerRepo) -> PathBuf {
    repo.git().path().join(CACHE_FILE)
}

fn build() -> String {
    let b = crate::build_info::build_info();
    format!("{} {} {}", b.version, b.commit, b.profile)
}

/// Reads the work tree's starting point (the work tree must match HEAD) and its verified state, from
/// the cache when it can (see the module's documentation). Refuses, listing every problem, when the
/// ledger does not verify.
pub fn load_base(repo: &LedgerRepo) -> Result<Base> {
    repo.ensure_clean()?;
    if let Some(base) = cached(repo)? {
        return Ok(base);
    }
    let head = repo.head_commit()?.map(|c| c.id());
    let (_, tree) = load_verified(repo)?;
    let state = state_of(tree);
    if let Some(head) = head {
        remember(repo, head, &state);
    }
    Ok(Base { head, state, source: Source::Verified })
}

/// HEAD's verified state from the cache alone (as is, or replayed forward), or `None` when the cache
/// cannot give it: for commands with their own way to judge a tree that does not verify (`stele sign`).
/// The caller has checked the work tree against HEAD.
pub fn cached(repo: &LedgerRepo) -> Result<Option<Base>> {
    let Some(head) = repo.head_commit()?.map(|c| c.id()) else { return Ok(None) };
    let Some((state, source)) = read_cache(repo).and_then(|c| advance(repo, c, head)) else { return Ok(None) };
    if source != Source::Cached {
        remember(repo, head, &state);
    }
    Ok(Some(Base { head: Some(head), state, source }))
}

/// The cache, when it is there, readable and written by this build.
fn read_cache(repo: &LedgerRepo) -> Option<Cached<LedgerState>> {
    let bytes = std::fs::read(cache_path(repo)).ok()?;
    let cached: Cached<LedgerState> = serde_json::from_slice(&bytes).ok()?;
    (cached.build == build()).then_some(cached)
}

/// The state at `head` from the cached one: as is, or replayed along first parents. `None` when the
/// cache is of no use (not an ancestor, or a commit since then the history rules refuse).
fn advance(repo: &LedgerRepo, cached: Cached<LedgerState>, head: Oid) -> Option<(LedgerState, Source)> {
    let from: Oid = cached.commit.parse().ok()?;
    if from == head {
        return Some((cached.state, Source::Cached));
    }
    let root = repo.root().to_str()?;
    let source = GitSource::open(root, None, repo.git().path()).ok()?;
    let from = crate::replay::Verified { commit: from, state: cached.state };
    // The anchor is not consulted: replay starts from a verified point, not from genesis.
    let anchor = TrustAnchor::UnpinnedTrustGenesisAsFound;
    let out = crate::replay::replay_with(&source, Some(from), head, &anchor, &mut |_, _| {}, &mut |_| {}).ok()?;
    let verified = out.verified.filter(|v| v.commit == head && out.refusals.is_empty())?;
    Some((verified.state, Source::Replayed(out.commits_seen)))
}

/// Judges `commit` (made by `LedgerRepo::prepare_commit` on top of `base.head`, not yet landed) as
/// agents will: its step read by the same reader (`GitSource::step`, SSH signature included) and
/// applied to `base`'s state. The state after it, or every reason it would be refused.
pub fn judge_commit(
    repo: &LedgerRepo,
    base: &Base,
    commit: Oid,
) -> Result<Result<LedgerState, Vec<ledger_format::tree::Problem>>> {
    use crate::source::LedgerSource;
    let root = repo.root().to_str().ok_or_else(|| anyhow::anyhow!("{}: not a UTF-8 path", repo.root().display()))?;
    let source = GitSource::open(root, None, repo.git().path())?;
    let step = source.step(commit, base.head)?;
    let mut next = base.state.clone();
    Ok(ledger_format::history::apply_step(&mut next, &step, &ledger_format::document::Direct).map(|_| next))
}

/// Records `state` as the verified state after `commit`. A cache that cannot be written costs the next
/// command a full verification, nothing else: it is reported and otherwise ignored.
pub fn remember(repo: &LedgerRepo, commit: Oid, state: &LedgerState) {
    let cached = Cached { build: build(), commit: commit.to_string(), state };
    let bytes = serde_json::to_vec(&cached).expect("the state serializes");
    if let Err(e) = write_atomic(&cache_path(repo), &bytes) {
        eprintln!("note: could not keep the verified state for the next command: {e}");
    }
}
