//! Where the ledger's history comes from: a local repository, or a remote one (`file://`, `git://`,
//! `ssh://`, `https://`) fetched into a cache. The rest of Stele sees [`LedgerSource`] and
//! `ledger_format::history::Step`s, never git2.
//!
//! Owns: fetching (with a cheap look at the remote ref first), walking first parents, turning a commit
//! into a `Step`. Must not judge anything it reads; network trouble is [`SourceError::Network`]
//! (retryable), never a verdict about the ledger.

use crate::repo::{node_of, tree_snapshot};
use git2::{Commit, Cred, CredentialType, Delta, DiffOptions, FetchOptions, Oid, RemoteCallbacks, Repository};
use ledger_format::history::{CommitInfo, PathChange, SshSigned, Step};
use ledger_format::tree::{classify, entry_path, LayoutPath, Snapshot, OWNED_DIRS};
use ledger_format::Timestamp;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The remote could not be reached or refused us: retry later.
    #[error("{url}: cannot fetch: {reason}")]
    Network { url: String, reason: String },
    #[error("branch {branch} not found in {location}")]
    NoBranch { branch: String, location: String },
    /// History was rewritten: the new head does not descend, by first parents, from `verified`.
    #[error("history rewritten: the head {head} of {branch} does not descend (by first parents) from the last verified commit {verified}")]
    Rewritten { branch: String, head: String, verified: String },
    #[error("{location}: {context}: {source}")]
    Git { location: String, context: String, source: git2::Error },
}

impl SourceError {
    /// Whether waiting and trying again may help (as opposed to a human having to act).
    pub fn is_retryable(&self) -> bool {
        matches!(self, SourceError::Network { .. })
    }
}

/// Git history as the verifier needs it.
pub trait LedgerSource {
    /// Brings the source up to date (fetching only when the remote ref moved) and returns the head.
    fn refresh(&mut self) -> Result<Oid, SourceError>;
    /// The commits after `from` up to and including `to`, oldest first, along first parents.
    /// `from = None` means from the root. Fails with [`SourceError::Rewritten`] when `from` is not a
    /// first-parent ancestor of `to`.
    fn first_parents(&self, from: Option<Oid>, to: Oid) -> Result<Vec<Oid>, SourceError>;
    /// The snapshot of the owned directories at `commit`, or `None` when it has no policy yet.
    fn snapshot(&self, commit: Oid) -> Result<Option<Snapshot>, SourceError>;
    /// The step from `base` (default: the first parent) to `commit`.
    fn step(&self, commit: Oid, base: Option<Oid>) -> Result<Step, SourceError>;
    fn commit_info(&self, commit: Oid) -> Result<CommitInfo, SourceError>;
    /// What to call this source in messages.
    fn location(&self) -> &str;
}

/// A git2-backed source.
pub struct GitSource {
    repo: Repository,
    branch: Option<String>,
    remote_url: Option<String>,
    location: String,
}

/// Whether `location` names a remote (fetched into a cache) rather than a local repository.
pub fn is_remote(location: &str) -> bool {
    location.contains("://") || (location.contains('@') && location.contains(':') && !Path::new(location).exists())
}

impl GitSource {
    /// Opens `location`. A remote is fetched into a bare repository under `cache_dir`; a local path is
    /// read in place. `branch` defaults to the local repository's HEAD, or `main` for a remote.
    pub fn open(location: &str, branch: Option<&str>, cache_dir: &Path) -> Result<Self, SourceError> {
        if is_remote(location) {
            let path = cache_dir.join("ledger.git");
            let repo = match Repository::open_bare(&path) {
                Ok(r) => r,
                Err(_) => {
                    std::fs::create_dir_all(&path).map_err(|e| SourceError::Git {
                        location: path.display().to_string(),
                        context: "create cache".into(),
                        source: git2::Error::from_str(&e.to_string()),
                    })?;
                    Repository::init_bare(&path).map_err(git_err(location, "create cache"))?
                }
            };
            Ok(Self {
                repo,
                branch: Some(branch.unwrap_or("main").to_owned()),
                remote_url: Some(location.to_owned()),
                location: location.to_owned(),
            })
        } else {
            let repo = Repository::discover(location).map_err(git_err(location, "open repository"))?;
            // Follow the branch checked out now, by name, so that switching branches in this checkout
            // later is not mistaken for a history rewrite.
            let branch = match branch {
                Some(b) => Some(b.to_owned()),
                None => repo.head().ok().filter(|h| h.is_branch()).and_then(|h| h.shorthand().map(str::to_owned)),
            };
            Ok(Self { repo, branch, remote_url: None, location: location.to_owned() })
        }
    }

    /// The branch followed (`None`: a detached HEAD).
    pub fn branch(&self) -> Option<&str> {
        self.branch.as_deref()
    }

    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    fn tracking_ref(branch: &str) -> String {
        format!("refs/stele/remotes/{branch}")
    }

    fn fetch(&self, url: &str, branch: &str) -> Result<Oid, SourceError> {
        let network = |e: git2::Error| SourceError::Network { url: url.to_owned(), reason: e.message().to_owned() };
        let mut remote = self.repo.remote_anonymous(url).map_err(network)?;
        // Look at the remote's ref first: a poll of an unchanged ledger transfers no objects.
        remote.connect_auth(git2::Direction::Fetch, Some(callbacks()), None).map_err(network)?;
        let wanted = format!("refs/heads/{branch}");
        let head = remote
            .list()
            .map_err(network)?
            .iter()
            .find(|h| h.name() == wanted)
            .map(|h| h.oid())
            .ok_or_else(|| SourceError::NoBranch { branch: branch.to_owned(), location: url.to_owned() })?;
        remote.disconnect().map_err(network)?;
        let tracking = Self::tracking_ref(branch);
        if self.repo.refname_to_id(&tracking).ok() == Some(head) {
            return Ok(head);
        }
        let mut opts = FetchOptions::new();
        opts.remote_callbacks(callbacks());
        // Forced: a force push must reach the verifier, which then refuses it with a precise reason.
        let refspec = format!("+{wanted}:{tracking}");
        remote.fetch(&[&refspec], Some(&mut opts), None).map_err(network)?;
        self.repo.refname_to_id(&tracking).map_err(git_err(url, "read fetched ref"))
    }

    fn commit(&self, id: Oid) -> Result<Commit<'_>, SourceError> {
        self.repo.find_commit(id).map_err(git_err(&self.location, &format!("read commit {id}")))
    }

    fn tree_of(&self, id: Option<Oid>) -> Result<Option<git2::Tree<'_>>, SourceError> {
        id.map(|id| self.commit(id)?.tree().map_err(git_err(&self.location, "read tree"))).transpose()
    }
}

fn git_err<'a>(location: &'a str, context: &'a str) -> impl FnOnce(git2::Error) -> SourceError + 'a {
    move |source| SourceError::Git { location: location.to_owned(), context: context.to_owned(), source }
}

/// Credentials, never from the command line: an SSH agent or `STELE_GIT_SSH_KEY` (a key file) for
/// ssh; `STELE_GIT_TOKEN` / `STELE_GIT_TOKEN_FILE` (with `STELE_GIT_USERNAME`, default
/// `x-access-token`) for https.
fn callbacks() -> RemoteCallbacks<'static> {
    let mut cb = RemoteCallbacks::new();
    let mut tried_agent = false;
    cb.credentials(move |_url, username, allowed| {
        if allowed.contains(CredentialType::SSH_KEY) {
            let user = username.unwrap_or("git");
            if let Ok(key) = std::env::var("STELE_GIT_SSH_KEY") {
                return Cred::ssh_key(user, None, Path::new(&key), None);
            }
            if !tried_agent {
                tried_agent = true;
                return Cred::ssh_key_from_agent(user);
            }
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            let token = std::env::var("STELE_GIT_TOKEN").ok().or_else(|| {
                std::env::var("STELE_GIT_TOKEN_FILE")
                    .ok()
                    .and_then(|f| std::fs::read_to_string(PathBuf::from(f)).ok())
                    .map(|t| t.trim().to_owned())
            });
            if let Some(token) = token {
                let user = std::env::var("STELE_GIT_USERNAME").unwrap_or_else(|_| "x-access-token".into());
                return Cred::userpass_plaintext(&user, &token);
            }
        }
        Err(git2::Error::from_str("no usable credentials (see STELE_GIT_SSH_KEY, STELE_GIT_TOKEN)"))
    });
    cb
}

impl LedgerSource for GitSource {
    fn refresh(&mut self) -> Result<Oid, SourceError> {
        match (&self.remote_url, &self.branch) {
            (Some(url), Some(branch)) => self.fetch(url, branch),
            (_, Some(branch)) => self
                .repo
                .refname_to_id(&format!("refs/heads/{branch}"))
                .map_err(|_| SourceError::NoBranch { branch: branch.clone(), location: self.location.clone() }),
            (_, None) => self
                .repo
                .head()
                .and_then(|h| h.peel_to_commit())
                .map(|c| c.id())
                .map_err(git_err(&self.location, "read HEAD")),
        }
    }

    fn first_parents(&self, from: Option<Oid>, to: Oid) -> Result<Vec<Oid>, SourceError> {
        let mut chain = Vec::new();
        let mut at = Some(to);
        while let Some(id) = at {
            if Some(id) == from {
                chain.reverse();
                return Ok(chain);
            }
            chain.push(id);
            let commit = self.commit(id)?;
            at = commit.parent_ids().next();
        }
        match from {
            None => {
                chain.reverse();
                Ok(chain)
            }
            Some(verified) => Err(SourceError::Rewritten {
                branch: self.branch.clone().unwrap_or_else(|| "HEAD".into()),
                head: to.to_string(),
                verified: verified.to_string(),
            }),
        }
    }

    fn snapshot(&self, commit: Oid) -> Result<Option<Snapshot>, SourceError> {
        let tree = self.commit(commit)?.tree().map_err(git_err(&self.location, "read tree"))?;
        if tree.get_path(Path::new(ledger_format::tree::POLICY_PATH)).is_err() {
            return Ok(None);
        }
        tree_snapshot(&self.repo, &tree).map(Some).map_err(git_err(&self.location, "read tree"))
    }

    fn step(&self, commit: Oid, base: Option<Oid>) -> Result<Step, SourceError> {
        let c = self.commit(commit)?;
        let base = base.or_else(|| c.parent_ids().next());
        let old_tree = self.tree_of(base)?;
        let new_tree = c.tree().map_err(git_err(&self.location, "read tree"))?;
        let mut opts = DiffOptions::new();
        for dir in OWNED_DIRS {
            opts.pathspec(dir);
        }
        let diff = self
            .repo
            .diff_tree_to_tree(old_tree.as_ref(), Some(&new_tree), Some(&mut opts))
            .map_err(git_err(&self.location, "diff"))?;
        let node = |mode: u32, id: Oid| -> Result<Option<ledger_format::tree::Node>, SourceError> {
            if id.is_zero() {
                return Ok(None);
            }
            node_of(&self.repo, mode, id).map_err(git_err(&self.location, "read blob"))
        };
        let file_node = |file: git2::DiffFile| node(u32::from(file.mode()), file.id());
        let mut changes = Vec::new();
        for delta in diff.deltas() {
            let path =
                delta.new_file().path_bytes().or_else(|| delta.old_file().path_bytes()).unwrap_or_default().to_vec();
            let (before, after) = match delta.status() {
                Delta::Added => (None, file_node(delta.new_file())?),
                Delta::Deleted => (file_node(delta.old_file())?, None),
                _ => (file_node(delta.old_file())?, file_node(delta.new_file())?),
            };
            changes.push(PathChange { path, before, after });
        }
        // A removed entry makes the one below it the tip: hand that file to the verifier.
        let mut context = std::collections::BTreeMap::new();
        for change in &changes {
            if change.after.is_some() {
                continue;
            }
            let Some(LayoutPath::Entry(env, seq)) = std::str::from_utf8(&change.path).ok().and_then(classify) else {
                continue;
            };
            if seq > 1 {
                let below = entry_path(&env, seq - 1);
                if let Ok(entry) = new_tree.get_path(Path::new(&below)) {
                    if let Some(node) = node(entry.filemode() as u32, entry.id())? {
                        context.insert(below.into_bytes(), node);
                    }
                }
            }
        }
        Ok(Step { commit: self.commit_info(commit)?, changes, context })
    }

    fn commit_info(&self, commit: Oid) -> Result<CommitInfo, SourceError> {
        let c = self.commit(commit)?;
        let ssh_signature = match self.repo.extract_signature(&commit, None) {
            Ok((sig, data)) if sig.starts_with(b"-----BEGIN SSH SIGNATURE-----") => {
                Some(SshSigned { armored: sig.to_vec(), signed_payload: data.to_vec() })
            }
            _ => None,
        };
        Ok(CommitInfo {
            id: commit.to_string(),
            time: Timestamp::from_unix(c.time().seconds()),
            author: format!("{} <{}>", c.author().name().unwrap_or("?"), c.author().email().unwrap_or("?")),
            summary: c.summary().unwrap_or("").to_owned(),
            ssh_signature,
        })
    }

    fn location(&self) -> &str {
        &self.location
    }
}
