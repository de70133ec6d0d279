//! Building status commits and moving the status branch with a compare-and-swap: a ref update
//! against the expected old value on this machine, a push without force to a remote. A lost race is
//! rebuilt on the new tip and offered again.
//!
//! Must not touch: anything on the branch but the files of the environments it is handed; the
//! ledger branch; a branch a work tree has checked out.

use super::{
    decode, git_err, read_env_file, render, render_signed, status_dir, status_path, EnvStatus, StatusError, STATUS_DIR,
};
use crate::source::{callbacks, local_path};
use git2::{ErrorCode, FileMode, Oid, PushOptions, Repository, Signature, Tree};
use ledger_format::crypto::KeyId;
use ledger_format::types::EnvName;
use ledger_format::SecretKey;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Written at the root of the ref by its first commit, so a person browsing it knows what it is.
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
/// The README of a signed agent's own ref (`refs/stele/status/<agent-id>`).
const README_SIGNED: &str = "\
# Stele status of one agent

This ref is written by one Stele agent, not by people. Each file `status/<environment>.json` is a
signed status document (`stele.status/v1`, SPEC.md): what the agent last observed of that
environment, signed with the agent's own key. Readers (`stele status`, `stele audit`) check the
signature against the agent keys the ledger's policy declares, and label anything else UNVERIFIED.

A commit is made only when an environment's observed state changes; the agent moves this ref with a
compare-and-swap (never a force push), so its history is the audit trail of what ran where. Fetch it
with `git fetch origin '+refs/stele/status/*:refs/stele/status/*'`. Do not commit here by hand.
";
/// How many times [`StatusWriter::publish_all`] builds and offers a commit before giving up on a
/// branch that keeps moving.
const MAX_ATTEMPTS: u32 = 5;
const DEFAULT_NAME: &str = "stele-agent";
const DEFAULT_EMAIL: &str = "agent@stele.invalid";

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

/// The outcome of [`StatusWriter::publish_all`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The commits now on the branch, oldest first: one per status that said something new to an
    /// auditor. Empty when the branch already said everything.
    pub commits: Vec<String>,
    /// How many times the chain was built and offered (more than one after a lost race).
    pub attempts: u32,
}

/// What one writer did since it was opened, for benchmarks and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Chains offered to the branch: pushes to a remote, ref updates on this machine.
    pub offers: u64,
    /// Offers refused because the branch had moved (lost races, each rebuilt and offered again).
    pub lost_races: u64,
    /// Commits that reached the branch.
    pub commits: u64,
}

/// The outcome of offering one commit to the branch.
enum Offer {
    Accepted,
    /// The branch no longer points where the commit's parent does.
    Moved,
    /// The remote refused the push, saying why: a lost race if the branch moved meanwhile, otherwise
    /// a refusal for another reason. The next read of the tip tells which, saving a connection per
    /// lost race (most refusals, when many agents share the remote).
    Refused(String),
}

/// The key a writer signs its status files with (an agent's own key, never a release key).
#[derive(Clone)]
pub struct StatusKey {
    key: Arc<SecretKey>,
    key_id: KeyId,
}

impl StatusKey {
    pub fn new(key: SecretKey) -> Self {
        let key_id = key.public_key().key_id();
        Self { key: Arc::new(key), key_id }
    }

    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    pub fn secret(&self) -> &SecretKey {
        &self.key
    }
}

impl std::fmt::Debug for StatusKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StatusKey({})", self.key_id)
    }
}

/// Writes status files to the status branch (or an agent's own status ref) of one ledger repository.
pub struct StatusWriter {
    target: Target,
    /// What log lines and errors call the ref: the branch name for `refs/heads/<branch>`, otherwise
    /// the full ref name.
    branch: String,
    refname: String,
    location: String,
    /// With a key, every file is a signed status document; without one, the bare status object.
    key: Option<StatusKey>,
    before_update: Option<Box<dyn FnMut(u32) + Send>>,
    stats: WriterStats,
}

impl StatusWriter {
    /// Prepares to write to `branch` of the ledger repository at `location`: a local path (bare or
    /// not), a `file:///` URL, or a remote URL (`git://`, `ssh://`, `https://`). `work_dir` holds the
    /// bare cache a remote is mirrored into (for example `<state-dir>/status.git`); it is neither
    /// created nor used for a repository on this machine.
    pub fn open(location: &str, branch: &str, work_dir: &Path) -> Result<Self, StatusError> {
        Self::open_ref(location, &format!("refs/heads/{branch}"), work_dir)
    }

    /// [`StatusWriter::open`] for a full ref name: `refs/heads/<branch>` (the legacy shared branch)
    /// or an agent's own `refs/stele/status/<agent-id>`. Only refs under `refs/heads/` and
    /// `refs/stele/` are written (never tags, notes or remote-tracking refs).
    pub fn open_ref(location: &str, refname: &str, work_dir: &Path) -> Result<Self, StatusError> {
        let refused = |reason: String| StatusError::Refused { location: location.to_owned(), reason };
        let branch = match refname.strip_prefix("refs/heads/") {
            Some(branch) if git2::Reference::is_valid_name(refname) => branch.to_owned(),
            Some(branch) => return Err(refused(format!("{branch:?} is not a valid branch name"))),
            None if refname.starts_with("refs/stele/") && git2::Reference::is_valid_name(refname) => refname.to_owned(),
            None => {
                return Err(refused(format!(
                    "{refname:?} is not a status ref: expected refs/heads/<branch> or refs/stele/<name>"
                )))
            }
        };
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
        let writer = Self {
            target,
            branch,
            refname: refname.to_owned(),
            location: location.to_owned(),
            key: None,
            before_update: None,
            stats: WriterStats::default(),
        };
        if let Target::Local { repo } = &writer.target {
            writer.refuse_checked_out(repo)?;
        }
        Ok(writer)
    }

    /// Signs every status file written from now on with `key` (a signed status document, SPEC.md
    /// §6.5). A file already on the ref that says the same to an auditor but is not signed by this key
    /// is written again, so the ref ends up saying everything under this key.
    pub fn with_key(mut self, key: StatusKey) -> Self {
        self.key = Some(key);
        self
    }

    /// The branch written to (the full ref name when it is not under `refs/heads/`).
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The full name of the ref written to.
    pub fn refname(&self) -> &str {
        &self.refname
    }

    /// What this writer did since it was opened.
    pub fn stats(&self) -> WriterStats {
        self.stats
    }

    /// Calls `hook(attempt)` after each commit is built and before it is offered to the branch.
    /// Tests use it to move the branch behind the writer's back and lose a race on purpose.
    pub fn set_before_update(&mut self, hook: impl FnMut(u32) + Send + 'static) {
        self.before_update = Some(Box::new(hook));
    }

    /// Writes `status` to `status/<env>.json` unless the branch already says the same to an auditor
    /// (see [`super::quiet`]). Every other file on the branch is carried over untouched. A lost race
    /// (the branch moved between reading it and offering the commit) is retried on the new tip, with a
    /// short jittered pause, up to [`MAX_ATTEMPTS`] times.
    ///
    /// Blocks for the network round trips and the pauses; call it off an async runtime's workers.
    pub fn publish(&mut self, status: &EnvStatus) -> Result<Published, StatusError> {
        let batch = self.publish_all(std::slice::from_ref(status))?;
        Ok(match batch.commits.last() {
            None => Published::Unchanged,
            Some(commit) => Published::Committed { commit: commit.clone(), attempts: batch.attempts },
        })
    }

    /// Writes each of `statuses`, in order, as its own commit (several may be of one environment),
    /// skipping those that say nothing new to an auditor, and offers the chain to the branch at once:
    /// one push for the lot. A lost race rebuilds the whole chain on the new tip, with a short
    /// jittered pause, up to [`MAX_ATTEMPTS`] times; then [`StatusError::Contended`].
    ///
    /// Blocks for the network round trips and the pauses; call it off an async runtime's workers.
    pub fn publish_all(&mut self, statuses: &[EnvStatus]) -> Result<Batch, StatusError> {
        // The tip a push was refused against, and why: judged by the next read of the tip.
        let mut refused: Option<(Option<Oid>, String)> = None;
        for attempt in 1..=MAX_ATTEMPTS {
            let tip = self.read_tip()?;
            if let Some((expected, reason)) = refused.take() {
                if tip == expected {
                    return Err(StatusError::Network { url: self.location.clone(), reason });
                }
                self.stats.lost_races += 1;
            }
            let chain = self.build_chain(tip, statuses)?;
            let Some(&head) = chain.last() else {
                tracing::debug!(branch = %self.branch, "status unchanged; nothing to commit");
                return Ok(Batch { commits: Vec::new(), attempts: attempt });
            };
            if let Some(hook) = self.before_update.as_mut() {
                hook(attempt);
            }
            self.stats.offers += 1;
            match self.offer(tip, head)? {
                Offer::Accepted => {
                    self.stats.commits += chain.len() as u64;
                    tracing::info!(branch = %self.branch, %head, commits = chain.len(), attempt, "status published");
                    return Ok(Batch { commits: chain.iter().map(Oid::to_string).collect(), attempts: attempt });
                }
                Offer::Moved => {
                    self.stats.lost_races += 1;
                    tracing::info!(branch = %self.branch, attempt, "status branch moved meanwhile; rebuilding on the new tip");
                }
                Offer::Refused(reason) => {
                    tracing::info!(branch = %self.branch, attempt, "status push refused ({reason}); rebuilding on the tip");
                    refused = Some((tip, reason));
                }
            }
            if attempt < MAX_ATTEMPTS {
                std::thread::sleep(backoff(attempt));
            }
        }
        if let Some((expected, reason)) = refused {
            if let Target::Remote { cache, url } = &self.target {
                if self.remote_tip(cache, url)? == expected {
                    return Err(StatusError::Network { url: url.clone(), reason });
                }
            }
            self.stats.lost_races += 1;
        }
        Err(StatusError::Contended {
            location: self.location.clone(),
            branch: self.branch.clone(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// One commit per status that differs, for an auditor, from what the branch (as built so far)
    /// says of its environment; each the parent of the next, the first on `tip`.
    fn build_chain(&self, tip: Option<Oid>, statuses: &[EnvStatus]) -> Result<Vec<Oid>, StatusError> {
        let repo = self.repo();
        let err = |context: &'static str| git_err(&self.location, context);
        let tip_tree = match tip {
            Some(id) => Some(repo.find_commit(id).and_then(|c| c.tree()).map_err(err("read tip"))?),
            None => None,
        };
        let mut said: BTreeMap<&EnvName, Option<EnvStatus>> = BTreeMap::new();
        let mut parent = tip;
        let mut chain = Vec::new();
        for status in statuses {
            let before = match said.get(&status.env) {
                Some(before) => before.clone(),
                None => match (&tip_tree, tip) {
                    (Some(tree), Some(id)) => read_env_file(repo, tree, &status.env, &id.to_string())?,
                    _ => None,
                },
            };
            if before.as_ref().is_some_and(|b| b.same_for_audit(status))
                && !self.resign(&said, status, &tip_tree, tip)?
            {
                said.insert(&status.env, before);
                continue;
            }
            let commit = self.build_commit(parent, status, &status_path(&status.env))?;
            said.insert(&status.env, Some(status.clone()));
            parent = Some(commit);
            chain.push(commit);
        }
        Ok(chain)
    }

    /// Whether the tip's file of `status.env` (which says the same to an auditor) must be written
    /// again because this writer signs and the file is not signed by its key: unsigned, or by another
    /// key (the agent's key was replaced). Not for a file written earlier in this chain.
    fn resign(
        &self,
        said: &BTreeMap<&EnvName, Option<EnvStatus>>,
        status: &EnvStatus,
        tip_tree: &Option<Tree>,
        tip: Option<Oid>,
    ) -> Result<bool, StatusError> {
        match (&self.key, tip_tree, tip) {
            (Some(key), Some(tree), Some(id)) if !said.contains_key(&status.env) => {
                Ok(self.signer(tree, &status.env, &id.to_string())? != Some(key.key_id))
            }
            _ => Ok(false),
        }
    }

    /// The key that signed `status/<env>.json` in `tree` (`None` for an unsigned file). Called only
    /// after [`read_env_file`] read the file as a status file.
    fn signer(&self, tree: &Tree, env: &EnvName, commit: &str) -> Result<Option<KeyId>, StatusError> {
        let repo = self.repo();
        let Some(dir) = status_dir(repo, tree, commit)? else {
            return Ok(None);
        };
        let Some(entry) = dir.get_name(&format!("{env}.json")) else {
            return Ok(None);
        };
        let blob = repo.find_blob(entry.id()).map_err(git_err(&self.location, "read status file"))?;
        let file = decode(blob.content()).map_err(|reason| StatusError::Corrupt {
            file: status_path(env),
            commit: commit.to_owned(),
            reason,
        })?;
        Ok(file.signed.and_then(|doc| doc.signatures.first().map(|s| s.keyid)))
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

    /// Brings the branch tip into the repository the writer builds in.
    fn read_tip(&self) -> Result<Option<Oid>, StatusError> {
        match &self.target {
            Target::Local { repo } => {
                // HEAD may have been switched since `open`; check again before every write.
                self.refuse_checked_out(repo)?;
                match repo.refname_to_id(&self.refname) {
                    Ok(id) => Ok(Some(id)),
                    Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
                    Err(e) => Err(git_err(&self.location, "read the status branch")(e)),
                }
            }
            Target::Remote { cache, url } => self.fetch(cache, url),
        }
    }

    /// The cache's mirror of the remote ref: `refs/stele/remote/<branch>` for a branch (as before
    /// revision 4), `refs/stele/tracking/<refname>` for any other ref (a name that cannot clash with
    /// a branch's directory).
    fn tracking_ref(&self) -> String {
        match self.refname.strip_prefix("refs/heads/") {
            Some(branch) => format!("refs/stele/remote/{branch}"),
            None => format!("refs/stele/tracking/{}", self.refname),
        }
    }

    /// The remote's branch tip (`None` when the branch does not exist yet), refusing when it is the
    /// remote's HEAD branch.
    fn remote_tip(&self, cache: &Repository, url: &str) -> Result<Option<Oid>, StatusError> {
        let mut remote = cache.remote_anonymous(url).map_err(network_err(url))?;
        let connection =
            remote.connect_auth(git2::Direction::Fetch, Some(callbacks()), None).map_err(network_err(url))?;
        self.tip_listed(&connection, url)
    }

    /// The branch tip the remote listed on `connection`, refusing when it is the remote's HEAD branch.
    fn tip_listed(
        &self,
        connection: &git2::RemoteConnection<'_, '_, '_>,
        url: &str,
    ) -> Result<Option<Oid>, StatusError> {
        let listed = connection.list().map_err(network_err(url))?;
        let tip = listed.iter().find(|h| h.name() == self.refname).map(|h| h.oid());
        let head = connection.default_branch().ok().and_then(|b| b.as_str().map(str::to_owned));
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

    /// Fetches the remote tip into the cache over one connection (list, then download), transferring
    /// nothing when the cache already has it: one Git server process per read, which matters when
    /// many agents share a host.
    fn fetch(&self, cache: &Repository, url: &str) -> Result<Option<Oid>, StatusError> {
        let mut remote = cache.remote_anonymous(url).map_err(network_err(url))?;
        let mut connection =
            remote.connect_auth(git2::Direction::Fetch, Some(callbacks()), None).map_err(network_err(url))?;
        let Some(tip) = self.tip_listed(&connection, url)? else {
            return Ok(None);
        };
        let tracking = self.tracking_ref();
        if cache.find_commit(tip).is_err() {
            let mut opts = git2::FetchOptions::new();
            opts.remote_callbacks(callbacks());
            let refspec = format!("+{}:{tracking}", self.refname);
            connection.remote().download(&[&refspec], Some(&mut opts)).map_err(network_err(url))?;
        }
        // Forced: the tracking ref is only our mirror of the remote, which may have moved anywhere.
        cache
            .reference(&tracking, tip, true, "stele status: fetched")
            .map_err(git_err(url, "record the fetched status branch"))?;
        Ok(Some(tip))
    }

    /// A commit whose tree is the tip's tree with only our file replaced.
    fn build_commit(&self, parent: Option<Oid>, status: &EnvStatus, file: &str) -> Result<Oid, StatusError> {
        let repo = self.repo();
        let err = |context: &'static str| git_err(&self.location, context);
        let parent = parent.map(|id| repo.find_commit(id)).transpose().map_err(err("read tip"))?;
        let base = parent.as_ref().map(|c| c.tree()).transpose().map_err(err("read tip tree"))?;
        let bytes = match &self.key {
            Some(key) => render_signed(status, key.secret()).map_err(|reason| StatusError::Refused {
                location: self.location.clone(),
                reason: format!("cannot sign the status of {}: {reason}", status.env),
            })?,
            None => render(status),
        };
        let blob = repo.blob(&bytes).map_err(err("write status file"))?;
        let readme = if self.key.is_some() { README_SIGNED } else { README };
        let tree = build_tree(repo, base.as_ref(), &status.env, blob, readme).map_err(err("write tree"))?;
        let tree = repo.find_tree(tree).map_err(err("write tree"))?;
        // libgit2 reads user.name and user.email from the repository's and the user's git config;
        // without them the agent signs as itself.
        let signature =
            repo.signature().or_else(|_| Signature::now(DEFAULT_NAME, DEFAULT_EMAIL)).map_err(err("make signature"))?;
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let mut message = commit_message(status, file);
        if let Some(key) = &self.key {
            message.push_str(&format!("signed: {}\n", key.key_id));
        }
        repo.commit(None, &signature, &signature, &message, &tree, &parents).map_err(err("write commit"))
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
                    Some(reason) => Ok(Offer::Refused(reason)),
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

/// A pause before the next attempt: doubling from 25 ms, plus up to as much again at random, so
/// writers that collided do not collide again in lockstep.
fn backoff(attempt: u32) -> Duration {
    let base = 25u64 << attempt.min(6).saturating_sub(1);
    Duration::from_millis(base + random_u64() % (base + 1))
}

/// A random number, for jitter: a randomly keyed hasher is a source of randomness without another
/// dependency.
pub(super) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// The root tree of the new commit: `base` with only `status/<env>.json` replaced (and a README on
/// the first commit).
fn build_tree(
    repo: &Repository,
    base: Option<&Tree>,
    env: &EnvName,
    blob: Oid,
    readme: &str,
) -> Result<Oid, git2::Error> {
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
        let readme = repo.blob(readme.as_bytes())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::sample;
    use crate::status::Phase;
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
    fn backoff_grows_and_stays_short() {
        for attempt in 1..MAX_ATTEMPTS {
            let pause = backoff(attempt);
            let base = 25u64 << (attempt - 1);
            assert!(pause >= Duration::from_millis(base) && pause <= Duration::from_millis(2 * base), "{pause:?}");
        }
    }
}
