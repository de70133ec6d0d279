//! Status write-back: what the agent observes, written to a status branch of the ledger repository
//! (default `stele/status`) as one file per environment, `status/<env>.json`, and read back by
//! `stele status` and `stele audit`.
//!
//! Owns: the status file format ([`EnvStatus`]), building status commits, moving the status branch
//! with a compare-and-swap (a ref update against the expected old value on this machine, a push
//! without force to a remote) and retrying a lost race on the new tip, and reading the branch back.
//!
//! Must not touch: the ledger branch or its documents. It never reads them and never judges them;
//! the agent hands it what it verified. It never overwrites another environment's file, never
//! overwrites a file it cannot parse, never force-pushes, and never moves the branch a work tree has
//! checked out.

use crate::source::{callbacks, is_remote};
use git2::{ErrorCode, FileMode, Oid, PushOptions, Repository, Signature, Tree};
use ledger_format::types::{EnvName, GroupName, LedgerId, ReleaseVersion};
use ledger_format::{Blake3Digest, Timestamp};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

/// The version of the status file format; a reader refuses any other.
pub const FORMAT: u32 = 1;
/// The directory holding one file per environment.
pub const STATUS_DIR: &str = "status";
/// Written at the root of the branch by its first commit, so a person browsing it knows what it is.
const README_NAME: &str = "README.md";
const README: &str = "\
# Stele status branch

This branch is written by Stele agents, not by people. Each file `status/<environment>.json` is what
the agent serving that environment last observed: the verified ledger commit it acts on, the target
and the release the instances actually run, the rollout phase and every instance's health.

A commit is made only when an environment's observed state changes, and agents move this branch
with a compare-and-swap (never a force push), so its history is the audit trail of what ran where.
Read it with `stele status` from any clone. Do not commit here by hand.
";
/// How many times [`StatusWriter::publish`] builds and offers a commit before giving up on a
/// branch that keeps moving.
const MAX_ATTEMPTS: u32 = 5;
const DEFAULT_NAME: &str = "stele-agent";
const DEFAULT_EMAIL: &str = "agent@stele.invalid";

/// Where a rollout stands, as the agent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum Phase {
    /// Instances are being replaced towards the target.
    Progressing,
    /// Every instance runs the target and passes its health check.
    Healthy,
    /// The target failed (for example its health gate) and the instances run something else.
    Degraded,
    /// The agent cannot proceed until a human acts (for example a ledger that does not verify).
    Stalled,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Progressing => "Progressing",
            Phase::Healthy => "Healthy",
            Phase::Degraded => "Degraded",
            Phase::Stalled => "Stalled",
        })
    }
}

/// A release as the status file names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetStatus {
    pub version: ReleaseVersion,
    pub seq: u64,
    pub blake3: Blake3Digest,
}

/// One instance as the provider reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceStatus {
    pub id: String,
    pub group: GroupName,
    pub generation: u64,
    pub blake3: Blake3Digest,
    /// `healthy`, `starting`, `unhealthy: <why>` or `gone: <why>`.
    pub health: String,
    /// When `health` last changed.
    pub since: Timestamp,
    /// How the instance differs from what was asked of it, when it does.
    pub drift: Option<String>,
}

/// The content of `status/<env>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvStatus {
    pub format: u32,
    pub env: EnvName,
    pub ledger: LedgerId,
    /// The verified ledger commit the agent acts on.
    pub ledger_commit: String,
    pub target_generation: u64,
    /// The generation the instances fully run (reached when the phase is Healthy).
    pub observed_generation: u64,
    pub target: Option<TargetStatus>,
    /// What the instances actually run now (for example the previous release while Degraded).
    pub running: Option<TargetStatus>,
    pub phase: Phase,
    pub message: String,
    pub instances: Vec<InstanceStatus>,
    pub last_error: Option<String>,
    /// Which agent wrote this (host name and state directory, chosen by the agent).
    pub agent: String,
    /// When this content last changed; not a heartbeat.
    pub updated_at: Timestamp,
}

impl EnvStatus {
    /// Whether `other` says the same thing, ignoring when it was said.
    pub fn same_content(&self, other: &EnvStatus) -> bool {
        *self == EnvStatus { updated_at: self.updated_at, ..other.clone() }
    }
}

/// The path of an environment's file on the status branch.
pub fn status_path(env: &EnvName) -> String {
    format!("{STATUS_DIR}/{env}.json")
}

/// The file bytes of `status`: pretty JSON, fields in declaration order, and a final newline.
pub fn render(status: &EnvStatus) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(status).expect("a status serializes: its maps have string keys");
    bytes.push(b'\n');
    bytes
}

/// Parses a status file, refusing unknown fields and any format but [`FORMAT`].
pub fn parse(bytes: &[u8]) -> Result<EnvStatus, String> {
    let status: EnvStatus = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if status.format != FORMAT {
        return Err(format!("format {} is not the supported format {FORMAT}", status.format));
    }
    Ok(status)
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The remote could not be reached or rejected the push for a reason other than a race: retry
    /// later.
    #[error("{url}: cannot publish status: {reason}")]
    Network { url: String, reason: String },
    /// The branch moved under us on every attempt: other writers keep winning. Retry later.
    #[error("{location}: branch {branch} kept moving; gave up after {attempts} attempts")]
    Contended { location: String, branch: String, attempts: u32 },
    #[error("{location}: {context}: {source}")]
    Git { location: String, context: String, source: git2::Error },
    /// The branch holds a file that is not a status file we can read. It is never overwritten
    /// blindly: a human must look at it.
    #[error("{file} at commit {commit} of the status branch is not a readable status file: {reason}")]
    Corrupt { file: String, commit: String, reason: String },
    /// The request itself is unsafe or invalid, such as writing to the branch a work tree has
    /// checked out: a human must change the configuration.
    #[error("{location}: {reason}")]
    Refused { location: String, reason: String },
}

impl StatusError {
    /// Whether waiting and trying again may help (as opposed to a human having to act).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StatusError::Network { .. } | StatusError::Contended { .. })
    }
}

fn git_err<'a>(location: &'a str, context: &'a str) -> impl FnOnce(git2::Error) -> StatusError + 'a {
    move |source| StatusError::Git { location: location.to_owned(), context: context.to_owned(), source }
}

/// The outcome of [`StatusWriter::publish`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Published {
    /// The branch already says this (apart from `updated_at`): nothing was committed.
    Unchanged,
    /// A commit now heads the branch; `attempts` counts the tries, more than one after a lost race.
    Committed { commit: String, attempts: u32 },
}

/// Where the writer's commits go.
enum Target {
    /// A repository on this machine (a path or a `file:///` URL). Objects are written into it and the
    /// branch is moved by a ref update that names the expected old value, under the ref's lock: a
    /// true compare-and-swap. (libgit2 cannot push to a non-bare repository, and its local push
    /// overwrites the ref it listed rather than comparing under the lock.)
    Local { repo: Repository },
    /// A remote repository, mirrored into a bare cache; a push without force is the
    /// compare-and-swap, which the server's receive-pack enforces.
    Remote { cache: Repository, url: String },
}

/// What a status writer found at the branch tip before building on it.
struct Tip {
    commit: Option<Oid>,
    /// Our environment's file at that commit.
    ours: Option<EnvStatus>,
}

/// The outcome of offering one commit to the branch.
enum Offer {
    Accepted,
    /// The branch no longer points where the commit's parent does.
    Moved,
}

/// Writes status files to the status branch of one ledger repository.
pub struct StatusWriter {
    target: Target,
    branch: String,
    refname: String,
    location: String,
    before_update: Option<Box<dyn FnMut(u32) + Send>>,
}

impl StatusWriter {
    /// Prepares to write to `branch` of the ledger repository at `location`: a local path (bare or
    /// not), a `file:///` URL, or a remote URL (`git://`, `ssh://`, `https://`). `work_dir` holds the
    /// bare cache a remote is mirrored into (for example `<state-dir>/status.git`); it is neither
    /// created nor used for a repository on this machine.
    pub fn open(location: &str, branch: &str, work_dir: &Path) -> Result<Self, StatusError> {
        let refname = format!("refs/heads/{branch}");
        if !git2::Reference::is_valid_name(&refname) {
            return Err(StatusError::Refused {
                location: location.to_owned(),
                reason: format!("{branch:?} is not a valid branch name"),
            });
        }
        let target = match local_path(location) {
            Some(path) => {
                let repo = Repository::discover(&path).map_err(git_err(location, "open repository"))?;
                Target::Local { repo }
            }
            None => {
                let cache = match Repository::open_bare(work_dir) {
                    Ok(repo) => repo,
                    Err(_) => {
                        std::fs::create_dir_all(work_dir).map_err(|e| StatusError::Git {
                            location: work_dir.display().to_string(),
                            context: "create the status cache".into(),
                            source: git2::Error::from_str(&e.to_string()),
                        })?;
                        Repository::init_bare(work_dir).map_err(git_err(location, "create the status cache"))?
                    }
                };
                Target::Remote { cache, url: location.to_owned() }
            }
        };
        let writer =
            Self { target, branch: branch.to_owned(), refname, location: location.to_owned(), before_update: None };
        if let Target::Local { repo } = &writer.target {
            writer.refuse_checked_out(repo)?;
        }
        Ok(writer)
    }

    /// The branch written to.
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// Calls `hook(attempt)` after each commit is built and before it is offered to the branch.
    /// Tests use it to move the branch behind the writer's back and lose a race on purpose.
    pub fn set_before_update(&mut self, hook: impl FnMut(u32) + Send + 'static) {
        self.before_update = Some(Box::new(hook));
    }

    /// Writes `status` to `status/<env>.json` unless the branch already says the same (ignoring
    /// `updated_at`). Every other file on the branch is carried over untouched. A lost race (the
    /// branch moved between reading it and offering the commit) is retried on the new tip, with a
    /// short jittered pause, up to [`MAX_ATTEMPTS`] times.
    ///
    /// Blocks for the network round trips and the pauses; call it off an async runtime's workers.
    pub fn publish(&mut self, status: &EnvStatus) -> Result<Published, StatusError> {
        let file = status_path(&status.env);
        for attempt in 1..=MAX_ATTEMPTS {
            let tip = self.read_tip(&status.env)?;
            if tip.ours.as_ref().is_some_and(|ours| ours.same_content(status)) {
                tracing::debug!(env = %status.env, branch = %self.branch, "status unchanged; nothing to commit");
                return Ok(Published::Unchanged);
            }
            let commit = self.build_commit(tip.commit, status, &file)?;
            if let Some(hook) = self.before_update.as_mut() {
                hook(attempt);
            }
            match self.offer(tip.commit, commit)? {
                Offer::Accepted => {
                    tracing::info!(env = %status.env, branch = %self.branch, %commit, attempt, "status published");
                    return Ok(Published::Committed { commit: commit.to_string(), attempts: attempt });
                }
                Offer::Moved => {
                    tracing::info!(env = %status.env, branch = %self.branch, attempt, "status branch moved meanwhile; rebuilding on the new tip");
                    if attempt < MAX_ATTEMPTS {
                        std::thread::sleep(backoff(attempt));
                    }
                }
            }
        }
        Err(StatusError::Contended {
            location: self.location.clone(),
            branch: self.branch.clone(),
            attempts: MAX_ATTEMPTS,
        })
    }

    fn repo(&self) -> &Repository {
        match &self.target {
            Target::Local { repo } => repo,
            Target::Remote { cache, .. } => cache,
        }
    }

    /// Refuses when a work tree of `repo` has the status branch checked out, or when it is the branch
    /// a bare repository's HEAD names: the status branch is never the ledger branch, and moving a
    /// checked-out branch would leave that work tree's index and files behind it.
    fn refuse_checked_out(&self, repo: &Repository) -> Result<(), StatusError> {
        let mut heads = vec![head_target(repo)];
        for name in repo.worktrees().map_err(git_err(&self.location, "list work trees"))?.iter().flatten() {
            let linked = repo.find_worktree(name).and_then(|wt| Repository::open_from_worktree(&wt));
            // A linked work tree whose directory is gone cannot have anything checked out.
            if let Ok(linked) = linked {
                heads.push(head_target(&linked));
            }
        }
        if heads.iter().flatten().any(|head| *head == self.refname) {
            return Err(StatusError::Refused {
                location: self.location.clone(),
                reason: format!(
                    "branch {} is checked out (HEAD) there; the status branch must be a branch of its own, never the ledger branch",
                    self.branch
                ),
            });
        }
        Ok(())
    }

    /// Brings the branch tip into the repository the writer builds in and reads our file there.
    fn read_tip(&self, env: &EnvName) -> Result<Tip, StatusError> {
        let commit = match &self.target {
            Target::Local { repo } => {
                // HEAD may have been switched since `open`; check again before every write.
                self.refuse_checked_out(repo)?;
                match repo.refname_to_id(&self.refname) {
                    Ok(id) => Some(id),
                    Err(e) if e.code() == ErrorCode::NotFound => None,
                    Err(e) => return Err(git_err(&self.location, "read the status branch")(e)),
                }
            }
            Target::Remote { cache, url } => self.fetch(cache, url)?,
        };
        let ours = match commit {
            Some(id) => {
                let repo = self.repo();
                let tree = repo.find_commit(id).and_then(|c| c.tree()).map_err(git_err(&self.location, "read tip"))?;
                read_env_file(repo, &tree, env, &id.to_string())?
            }
            None => None,
        };
        Ok(Tip { commit, ours })
    }

    fn tracking_ref(&self) -> String {
        format!("refs/stele/remote/{}", self.branch)
    }

    /// The remote's branch tip (`None` when the branch does not exist yet), refusing when it is the
    /// remote's HEAD branch.
    fn remote_tip(&self, cache: &Repository, url: &str) -> Result<Option<Oid>, StatusError> {
        let network = network_err(url);
        let mut remote = cache.remote_anonymous(url).map_err(network_err(url))?;
        remote.connect_auth(git2::Direction::Fetch, Some(callbacks()), None).map_err(network_err(url))?;
        let tip = remote.list().map_err(network_err(url))?.iter().find(|h| h.name() == self.refname).map(|h| h.oid());
        let head = remote.default_branch().ok().and_then(|b| b.as_str().map(str::to_owned));
        remote.disconnect().map_err(network)?;
        if head.as_deref() == Some(self.refname.as_str()) {
            return Err(StatusError::Refused {
                location: url.to_owned(),
                reason: format!(
                    "branch {} is the remote's HEAD (default) branch; the status branch must never be the ledger branch",
                    self.branch
                ),
            });
        }
        Ok(tip)
    }

    /// Fetches the remote tip into the cache, transferring nothing when the cache already has it.
    fn fetch(&self, cache: &Repository, url: &str) -> Result<Option<Oid>, StatusError> {
        let Some(tip) = self.remote_tip(cache, url)? else {
            return Ok(None);
        };
        let tracking = self.tracking_ref();
        if cache.refname_to_id(&tracking).ok() == Some(tip) {
            return Ok(Some(tip));
        }
        let mut remote = cache.remote_anonymous(url).map_err(network_err(url))?;
        let mut opts = git2::FetchOptions::new();
        opts.remote_callbacks(callbacks());
        // Forced: the tracking ref is only our mirror of the remote, which may have moved anywhere.
        let refspec = format!("+{}:{tracking}", self.refname);
        remote.fetch(&[&refspec], Some(&mut opts), None).map_err(network_err(url))?;
        cache.refname_to_id(&tracking).map(Some).map_err(git_err(url, "read the fetched status branch"))
    }

    /// A commit whose tree is the tip's tree with only our file replaced.
    fn build_commit(&self, parent: Option<Oid>, status: &EnvStatus, file: &str) -> Result<Oid, StatusError> {
        let repo = self.repo();
        let err = |context: &'static str| git_err(&self.location, context);
        let parent = parent.map(|id| repo.find_commit(id)).transpose().map_err(err("read tip"))?;
        let base = parent.as_ref().map(|c| c.tree()).transpose().map_err(err("read tip tree"))?;
        let blob = repo.blob(&render(status)).map_err(err("write status file"))?;
        let tree = build_tree(repo, base.as_ref(), &status.env, blob).map_err(err("write tree"))?;
        let tree = repo.find_tree(tree).map_err(err("write tree"))?;
        // libgit2 reads user.name and user.email from the repository's and the user's git config;
        // without them the agent signs as itself.
        let signature =
            repo.signature().or_else(|_| Signature::now(DEFAULT_NAME, DEFAULT_EMAIL)).map_err(err("make signature"))?;
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        repo.commit(None, &signature, &signature, &commit_message(status, file), &tree, &parents)
            .map_err(err("write commit"))
    }

    /// Offers `commit` as the new tip in place of `expected`.
    fn offer(&self, expected: Option<Oid>, commit: Oid) -> Result<Offer, StatusError> {
        let message = format!("stele status: publish {commit}");
        match &self.target {
            Target::Local { repo } => {
                let updated = match expected {
                    Some(old) => repo.reference_matching(&self.refname, commit, true, old, &message),
                    None => repo.reference(&self.refname, commit, false, &message),
                };
                match updated {
                    Ok(_) => Ok(Offer::Accepted),
                    // Modified: the ref no longer holds `expected`; Exists: someone created the
                    // branch first; Locked: another writer is updating it right now.
                    Err(e) if matches!(e.code(), ErrorCode::Modified | ErrorCode::Exists | ErrorCode::Locked) => {
                        Ok(Offer::Moved)
                    }
                    Err(e) => Err(git_err(&self.location, "update the status branch")(e)),
                }
            }
            Target::Remote { cache, url } => {
                let rejected = push(cache, url, commit, &self.refname);
                match rejected {
                    None => {
                        // Remember what the remote now holds, so the next publish transfers nothing.
                        if let Err(e) = cache.reference(&self.tracking_ref(), commit, true, &message) {
                            tracing::debug!(error = %e, "could not record the pushed status tip in the cache");
                        }
                        Ok(Offer::Accepted)
                    }
                    // Whatever the reason given, the branch having moved makes this a lost race;
                    // if it has not moved, the remote refused for another reason.
                    Some(reason) => match self.remote_tip(cache, url)? {
                        tip if tip != expected => Ok(Offer::Moved),
                        _ => Err(StatusError::Network { url: url.clone(), reason }),
                    },
                }
            }
        }
    }
}

/// Pushes `commit` to `refname` without force; `None` when the remote accepted it, otherwise why not.
/// A rejection is seen either as an error (libgit2 refuses a non-fast-forward before sending) or as a
/// status the server reports for the ref.
fn push(cache: &Repository, url: &str, commit: Oid, refname: &str) -> Option<String> {
    let refused: Rc<RefCell<Option<String>>> = Rc::default();
    let mut cb = callbacks();
    let seen = Rc::clone(&refused);
    cb.push_update_reference(move |name, status| {
        if let Some(status) = status {
            *seen.borrow_mut() = Some(format!("the remote rejected {name}: {status}"));
        }
        Ok(())
    });
    let mut opts = PushOptions::new();
    opts.remote_callbacks(cb);
    let refspec = format!("{commit}:{refname}");
    let pushed = cache.remote_anonymous(url).and_then(|mut remote| remote.push(&[&refspec], Some(&mut opts)));
    let rejected = refused.borrow_mut().take();
    match pushed {
        Err(e) => Some(describe_network(&e)),
        Ok(()) => rejected,
    }
}

fn network_err(url: &str) -> impl FnOnce(git2::Error) -> StatusError + '_ {
    move |e| StatusError::Network { url: url.to_owned(), reason: describe_network(&e) }
}

fn describe_network(e: &git2::Error) -> String {
    if e.class() == git2::ErrorClass::Ssh && e.code() == ErrorCode::Certificate {
        "the server's SSH host key is not in ~/.ssh/known_hosts or does not match it; verify the key and add it".into()
    } else {
        e.message().to_owned()
    }
}

/// The branch HEAD names, whether or not it has commits yet.
fn head_target(repo: &Repository) -> Option<String> {
    repo.find_reference("HEAD").ok().and_then(|head| head.symbolic_target().map(str::to_owned))
}

/// The path of a repository on this machine: `location` itself when it is not a URL, or the path of
/// a `file:///` URL.
fn local_path(location: &str) -> Option<PathBuf> {
    if !is_remote(location) {
        return Some(PathBuf::from(location));
    }
    let path = location.strip_prefix("file://").filter(|p| p.starts_with('/'))?;
    percent_decode(path).map(PathBuf::from)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A pause before the next attempt: doubling from 25 ms, plus up to as much again at random, so
/// writers that collided do not collide again in lockstep.
fn backoff(attempt: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let base = 25u64 << attempt.min(6).saturating_sub(1);
    // A randomly keyed hasher is a source of randomness without another dependency.
    let noise = std::collections::hash_map::RandomState::new().build_hasher().finish();
    Duration::from_millis(base + noise % (base + 1))
}

/// The root tree of the new commit: `base` with only `status/<env>.json` replaced (and a README on
/// the first commit).
fn build_tree(repo: &Repository, base: Option<&Tree>, env: &EnvName, blob: Oid) -> Result<Oid, git2::Error> {
    let status_dir = base
        .and_then(|t| t.get_name(STATUS_DIR))
        .map(|entry| entry.to_object(repo).and_then(|o| o.peel_to_tree()))
        .transpose()?;
    let mut dir = repo.treebuilder(status_dir.as_ref())?;
    dir.insert(format!("{env}.json"), blob, FileMode::Blob.into())?;
    let dir = dir.write()?;
    let mut root = repo.treebuilder(base)?;
    root.insert(STATUS_DIR, dir, FileMode::Tree.into())?;
    if base.is_none() {
        let readme = repo.blob(README.as_bytes())?;
        root.insert(README_NAME, readme, FileMode::Blob.into())?;
    }
    root.write()
}

/// `status(staging): Healthy, generation 3 (2.0.0)` (the version as released), then who wrote it from which ledger commit.
fn commit_message(status: &EnvStatus, file: &str) -> String {
    let generation = if status.observed_generation == status.target_generation {
        status.target_generation.to_string()
    } else {
        format!("{}/{}", status.observed_generation, status.target_generation)
    };
    let release = match &status.target {
        Some(target) => target.version.to_string(),
        None => "no target".into(),
    };
    format!(
        "status({}): {}, generation {generation} ({release})\n\nfile: {file}\nagent: {}\nledger: {} at {}\n",
        status.env, status.phase, status.agent, status.ledger, status.ledger_commit
    )
}

/// Reads `status/<env>.json` from `tree`, or `None` when there is none. Anything there that is not a
/// status file for `env` is [`StatusError::Corrupt`].
fn read_env_file(
    repo: &Repository,
    tree: &Tree,
    env: &EnvName,
    commit: &str,
) -> Result<Option<EnvStatus>, StatusError> {
    let Some(dir) = status_dir(repo, tree, commit)? else {
        return Ok(None);
    };
    let name = format!("{env}.json");
    let Some(entry) = dir.get_name(&name) else {
        return Ok(None);
    };
    parse_entry(repo, &entry, &name, commit).map(Some)
}

/// The `status` directory of `tree`, or `None` when there is none.
fn status_dir<'r>(repo: &'r Repository, tree: &Tree, commit: &str) -> Result<Option<Tree<'r>>, StatusError> {
    let Some(entry) = tree.get_name(STATUS_DIR) else {
        return Ok(None);
    };
    let corrupt = |reason: &str| StatusError::Corrupt {
        file: STATUS_DIR.into(),
        commit: commit.to_owned(),
        reason: reason.to_owned(),
    };
    if entry.kind() != Some(git2::ObjectType::Tree) {
        return Err(corrupt("it is not a directory"));
    }
    repo.find_tree(entry.id()).map(Some).map_err(|e| corrupt(e.message()))
}

/// Parses the status file `status/<name>` and checks that it speaks for the environment it is named
/// after.
fn parse_entry(repo: &Repository, entry: &git2::TreeEntry, name: &str, commit: &str) -> Result<EnvStatus, StatusError> {
    let corrupt = |reason: String| StatusError::Corrupt {
        file: format!("{STATUS_DIR}/{name}"),
        commit: commit.to_owned(),
        reason,
    };
    if entry.kind() != Some(git2::ObjectType::Blob) {
        return Err(corrupt("it is not a regular file".into()));
    }
    let blob = repo.find_blob(entry.id()).map_err(|e| corrupt(e.message().to_owned()))?;
    let status = parse(blob.content()).map_err(corrupt)?;
    if format!("{}.json", status.env) != name {
        return Err(corrupt(format!("it holds the status of environment {}", status.env)));
    }
    Ok(status)
}

/// The tip of the status branch as `repo` knows it: `refs/heads/<branch>`, else
/// `refs/remotes/origin/<branch>` (a clone that never checked the branch out).
fn branch_tip(repo: &Repository, branch: &str) -> Result<Option<Oid>, StatusError> {
    for refname in [format!("refs/heads/{branch}"), format!("refs/remotes/origin/{branch}")] {
        match repo.refname_to_id(&refname) {
            Ok(id) => return Ok(Some(id)),
            Err(e) if matches!(e.code(), ErrorCode::NotFound | ErrorCode::InvalidSpec) => continue,
            Err(e) => return Err(git_err(&repo_location(repo), "read the status branch")(e)),
        }
    }
    Ok(None)
}

fn repo_location(repo: &Repository) -> String {
    repo.workdir().unwrap_or_else(|| repo.path()).display().to_string()
}

/// Opens the repository containing `path` (bare or not), for reading the status branch.
pub fn open_repository(path: &Path) -> Result<Repository, StatusError> {
    Repository::discover(path).map_err(git_err(&path.display().to_string(), "open repository"))
}

/// Every status file at the tip of the status branch, in environment order, with that commit; `None`
/// when the repository has no status branch. Files under `status/` not ending in `.json` are ignored.
pub fn read_all(repo: &Repository, branch: &str) -> Result<Option<(String, Vec<EnvStatus>)>, StatusError> {
    let Some(tip) = branch_tip(repo, branch)? else {
        return Ok(None);
    };
    let commit = tip.to_string();
    let tree = repo.find_commit(tip).and_then(|c| c.tree()).map_err(git_err(&repo_location(repo), "read tip"))?;
    let Some(dir) = status_dir(repo, &tree, &commit)? else {
        return Ok(Some((commit, Vec::new())));
    };
    let mut all = Vec::new();
    for entry in dir.iter() {
        let name = String::from_utf8_lossy(entry.name_bytes()).into_owned();
        if name.ends_with(".json") {
            all.push(parse_entry(repo, &entry, &name, &commit)?);
        }
    }
    all.sort_by(|a, b| a.env.cmp(&b.env));
    Ok(Some((commit, all)))
}

/// Each version of one environment's status file along the branch's first parents, newest first,
/// with the time of the commit that wrote it: whether and when the agent reported converging.
pub fn history(repo: &Repository, branch: &str, env: &EnvName) -> Result<Vec<(Timestamp, EnvStatus)>, StatusError> {
    let location = repo_location(repo);
    let Some(tip) = branch_tip(repo, branch)? else {
        return Ok(Vec::new());
    };
    let path = status_path(env);
    let blob_at = |commit: &git2::Commit| -> Result<Option<git2::TreeEntry<'static>>, git2::Error> {
        match commit.tree()?.get_path(Path::new(&path)) {
            Ok(entry) => Ok(Some(entry)),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    };
    let mut out = Vec::new();
    let mut walk = repo.revwalk().map_err(git_err(&location, "walk the status branch"))?;
    walk.push(tip).and_then(|()| walk.simplify_first_parent()).map_err(git_err(&location, "walk the status branch"))?;
    for id in walk {
        let read = |e| git_err(&location, "read the status branch")(e);
        let commit = repo.find_commit(id.map_err(read)?).map_err(read)?;
        let Some(entry) = blob_at(&commit).map_err(read)? else {
            continue;
        };
        let before = match commit.parents().next() {
            Some(parent) => blob_at(&parent).map_err(read)?.map(|e| e.id()),
            None => None,
        };
        if before == Some(entry.id()) {
            continue;
        }
        let name = format!("{env}.json");
        let status = parse_entry(repo, &entry, &name, &commit.id().to_string())?;
        let when = Timestamp::from_unix(commit.time().seconds()).ok_or_else(|| StatusError::Corrupt {
            file: path.clone(),
            commit: commit.id().to_string(),
            reason: "the commit time is outside 1970-9999".into(),
        })?;
        out.push((when, status));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EnvStatus {
        EnvStatus {
            format: FORMAT,
            env: "staging".parse().unwrap(),
            ledger: "acme".parse().unwrap(),
            ledger_commit: "0".repeat(40),
            target_generation: 3,
            observed_generation: 2,
            target: Some(TargetStatus { version: "2.0.0".parse().unwrap(), seq: 4, blake3: Blake3Digest([7; 32]) }),
            running: None,
            phase: Phase::Progressing,
            message: "replacing 1 of 3".into(),
            instances: vec![InstanceStatus {
                id: "i-1".into(),
                group: "web".parse().unwrap(),
                generation: 3,
                blake3: Blake3Digest([7; 32]),
                health: "starting".into(),
                since: "2026-01-01T00:00:00Z".parse().unwrap(),
                drift: None,
            }],
            last_error: None,
            agent: "host:/var/lib/stele".into(),
            updated_at: "2026-01-01T00:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn a_status_file_round_trips_in_declaration_order_with_a_final_newline() {
        let bytes = render(&sample());
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.ends_with("}\n"));
        let order =
            ["\"format\"", "\"env\"", "\"ledger\"", "\"ledger_commit\"", "\"observed_generation\"", "\"updated_at\""];
        let positions: Vec<usize> = order.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(text.contains("\"phase\": \"Progressing\""));
        assert_eq!(parse(&bytes).unwrap(), sample());
    }

    #[test]
    fn unknown_fields_and_other_formats_are_refused() {
        let mut value: serde_json::Value = serde_json::from_slice(&render(&sample())).unwrap();
        value["extra"] = 1.into();
        assert!(parse(value.to_string().as_bytes()).unwrap_err().contains("extra"));
        let mut value: serde_json::Value = serde_json::from_slice(&render(&sample())).unwrap();
        value["format"] = 2.into();
        assert!(parse(value.to_string().as_bytes()).unwrap_err().contains("format 2"));
        let mut value: serde_json::Value = serde_json::from_slice(&render(&sample())).unwrap();
        value["instances"][0]["extra"] = true.into();
        assert!(parse(value.to_string().as_bytes()).is_err());
    }

    #[test]
    fn same_content_ignores_only_updated_at() {
        let a = sample();
        let mut b = sample();
        b.updated_at = "2027-01-01T00:00:00Z".parse().unwrap();
        assert!(a.same_content(&b));
        b.instances[0].health = "healthy".into();
        assert!(!a.same_content(&b));
    }

    #[test]
    fn commit_messages_name_env_phase_generation_and_version() {
        let mut s = sample();
        assert!(commit_message(&s, "status/staging.json")
            .starts_with("status(staging): Progressing, generation 2/3 (2.0.0)\n"));
        s.observed_generation = 3;
        s.phase = Phase::Healthy;
        assert!(
            commit_message(&s, "status/staging.json").starts_with("status(staging): Healthy, generation 3 (2.0.0)\n")
        );
        s.target = None;
        assert!(commit_message(&s, "status/staging.json").contains("(no target)"));
    }

    #[test]
    fn file_urls_are_local_paths_and_other_urls_are_remote() {
        assert_eq!(local_path("/srv/ledger"), Some(PathBuf::from("/srv/ledger")));
        assert_eq!(local_path("file:///srv/my%20ledger.git"), Some(PathBuf::from("/srv/my ledger.git")));
        assert_eq!(local_path("file://host/srv/ledger"), None);
        assert_eq!(local_path("git://127.0.0.1/ledger.git"), None);
        assert_eq!(local_path("https://example.com/ledger.git"), None);
        assert_eq!(local_path("file:///bad%zz"), None);
    }

    #[test]
    fn backoff_grows_and_stays_short() {
        for attempt in 1..MAX_ATTEMPTS {
            let pause = backoff(attempt);
            let base = 25u64 << (attempt - 1);
            assert!(pause >= Duration::from_millis(base) && pause <= Duration::from_millis(2 * base), "{pause:?}");
        }
    }
}
