//! Where the ledger's history comes from: a local repository, or a remote one (`file://`, `git://`,
//! `ssh://`, `https://`) fetched into a cache. The rest of Stele sees [`LedgerSource`] and
//! `ledger_format::history::Step`s, never git2.
//!
//! Owns: fetching (with a cheap look at the remote ref first), walking first parents, turning a commit
//! into a `Step`. Must not judge anything it reads; network trouble is [`SourceError::Network`]
//! (retryable), never a verdict about the ledger.

use crate::repo::{node_of, tree_snapshot};
use git2::{Commit, Cred, CredentialType, FetchOptions, Oid, RemoteCallbacks, Repository};
use ledger_format::history::{CommitInfo, PathChange, SshSigned, Step};
use ledger_format::tree::{classify, Layout, LayoutPath, Node, Snapshot, OWNED_DIRS};
use ledger_format::Timestamp;
use std::cmp::Ordering;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The remote could not be reached or refused us: retry later.
    #[error("{url}: cannot fetch: {reason}")]
    Network { url: String, reason: String },
    /// The server's SSH host key is unknown or changed: a human must check and trust it.
    #[error("{url}: the server's SSH host key is not in ~/.ssh/known_hosts or does not match it; verify the key and add it (e.g. `ssh-keyscan -p PORT HOST >> ~/.ssh/known_hosts`)")]
    UnknownHostKey { url: String },
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
    /// The steps of `commits` (each from its first parent), in order. Sources may read in parallel.
    fn steps(&self, commits: &[Oid]) -> Result<Vec<Step>, SourceError> {
        commits.iter().map(|id| self.step(*id, None)).collect()
    }
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
    /// The parallel step readers' own handles on the same repository (git2 handles are not shared
    /// across threads), opened on first use and kept with their caches from one chunk to the next.
    readers: std::sync::Mutex<Vec<GitSource>>,
}

/// Whether `location` names a remote (fetched into a cache) rather than a local repository.
pub fn is_remote(location: &str) -> bool {
    location.contains("://") || (location.contains('@') && location.contains(':') && !Path::new(location).exists())
}

/// The most libgit2 may keep in its object caches, all repositories together (its default: 256 MiB,
/// which a long replay fills with trees it never reads again).
const OBJECT_CACHE_BYTES: usize = 16 << 20;
/// Pack files are read through memory maps of this size, and at most [`PACK_MAPPED_BYTES`] of them
/// stay mapped (libgit2's defaults on 64-bit: 1 GiB windows, 8 GiB in all), so reading a long history
/// does not leave the whole pack resident.
const PACK_WINDOW_BYTES: usize = 4 << 20;
const PACK_MAPPED_BYTES: usize = 32 << 20;

/// Process-wide libgit2 settings for replay speed and bounded memory, applied once before the first
/// repository opens.
pub(crate) fn tune_libgit2() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Keep ledger directory trees (tens of KiB at a thousand entries) in the object cache: each
        // step reads the tree its parent step just read. The default limit caches trees up to 4 KiB.
        // SAFETY: called once, before any repository is opened by this process.
        let cached = unsafe { git2::opts::set_cache_object_limit(git2::ObjectType::Tree, 4 << 20) };
        debug_assert!(cached.is_ok());
        // SAFETY: as above; libgit2 reads these options when it maps a pack or caches an object.
        unsafe {
            let capped = libgit2_sys::git_libgit2_opts(
                libgit2_sys::GIT_OPT_SET_CACHE_MAX_SIZE as libc::c_int,
                OBJECT_CACHE_BYTES as libc::ssize_t,
            );
            debug_assert_eq!(capped, 0);
            let window = git2::opts::set_mwindow_size(PACK_WINDOW_BYTES);
            let mapped = git2::opts::set_mwindow_mapped_limit(PACK_MAPPED_BYTES);
            debug_assert!(window.is_ok() && mapped.is_ok());
        }
        // Do not re-hash every object on every read: fetched objects were hashed when their pack was
        // indexed, and a local object store is inside the same trust boundary as the state directory
        // (whoever can write one can write the other). Commit ids, which the high-water mark pins,
        // are still what the objects were received as.
        git2::opts::strict_hash_verification(false);
    });
}

/// The path of a repository on this machine: `location` itself when it is not a URL, or the path of
/// a `file:///` URL (percent-decoded). `None` for every other URL.
pub fn local_path(location: &str) -> Option<PathBuf> {
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

/// Where the ledger at `location` is read from: the local repository itself (a path or a `file:///`
/// URL), or the bare repository a remote is fetched into under `cache_dir`.
pub fn local_copy(location: &str, cache_dir: &Path) -> std::path::PathBuf {
    local_path(location).unwrap_or_else(|| cache_dir.join("ledger.git"))
}

impl GitSource {
    /// Opens `location`. A remote is fetched into a bare repository under `cache_dir`; a local path is
    /// read in place. `branch` defaults to the local repository's HEAD, or `main` for a remote.
    pub fn open(location: &str, branch: Option<&str>, cache_dir: &Path) -> Result<Self, SourceError> {
        tune_libgit2();
        // A repository on this machine, even named by a `file:///` URL, is read in place: libgit2's
        // local transport would copy every object into the cache without deltas (10× the pack).
        let Some(in_place) = local_path(location) else {
            let path = local_copy(location, cache_dir);
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
            return Ok(Self {
                repo,
                branch: Some(branch.unwrap_or("main").to_owned()),
                remote_url: Some(location.to_owned()),
                location: location.to_owned(),
                readers: Default::default(),
            });
        };
        let repo = Repository::discover(&in_place).map_err(git_err(location, "open repository"))?;
        // Follow the branch checked out now, by name, so that switching branches in this checkout later
        // is not mistaken for a history rewrite. A URL names a remote: `main`, as for every remote.
        let branch = match branch {
            Some(b) => Some(b.to_owned()),
            None if is_remote(location) => Some("main".to_owned()),
            None => repo.head().ok().filter(|h| h.is_branch()).and_then(|h| h.shorthand().map(str::to_owned)),
        };
        Ok(Self { repo, branch, remote_url: None, location: location.to_owned(), readers: Default::default() })
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
        let network = |e: git2::Error| {
            if e.class() == git2::ErrorClass::Ssh && e.code() == git2::ErrorCode::Certificate {
                SourceError::UnknownHostKey { url: url.to_owned() }
            } else {
                SourceError::Network { url: url.to_owned(), reason: e.message().to_owned() }
            }
        };
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

    /// Copies a remote's status refs into the cache for readers (`stele audit`): every ref under
    /// `refs/stele/status/` and the legacy branch `legacy_branch`, forced (they are observations to
    /// judge, never part of the ledger's verdict). Nothing to do for a local repository. Agents do
    /// not call this: a poll transfers the ledger branch only.
    pub fn fetch_status_refs(&self, legacy_branch: &str) -> Result<(), SourceError> {
        let Some(url) = &self.remote_url else { return Ok(()) };
        let network = |e: git2::Error| SourceError::Network { url: url.to_owned(), reason: e.message().to_owned() };
        let mut remote = self.repo.remote_anonymous(url).map_err(network)?;
        let mut opts = FetchOptions::new();
        opts.remote_callbacks(callbacks());
        let legacy = format!("+refs/heads/{legacy_branch}:refs/heads/{legacy_branch}");
        remote.fetch(&[crate::status::STATUS_REFSPEC, &legacy], Some(&mut opts), None).map_err(network)
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
/// `x-access-token`) for https. Every remote operation starts here, so this is also where the CA
/// roots that `main` kept libgit2 from loading at start are loaded ([`crate::tls::load_ca_roots`]).
pub fn callbacks() -> RemoteCallbacks<'static> {
    crate::tls::load_ca_roots();
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
        if Some(to) == from {
            return Ok(Vec::new());
        }
        let walk_err = git_err(&self.location, "walk history");
        let mut walk = self.repo.revwalk().map_err(walk_err)?;
        walk.push(to).and_then(|()| walk.simplify_first_parent()).map_err(git_err(&self.location, "walk history"))?;
        let mut chain = Vec::new();
        for id in walk {
            let id = id.map_err(git_err(&self.location, "walk history"))?;
            if Some(id) == from {
                chain.reverse();
                return Ok(chain);
            }
            chain.push(id);
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
        let mut changes = Vec::new();
        for dir in OWNED_DIRS {
            let side = |t: Option<&git2::Tree>| t.and_then(|t| t.get_name(dir)).map(|e| (e.id(), e.filemode()));
            diff_entry(
                &self.repo,
                dir.as_bytes().to_vec(),
                side(old_tree.as_ref()),
                side(Some(&new_tree)),
                &mut changes,
            )
            .map_err(git_err(&self.location, "diff"))?;
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
                // In the layout of the commit's tree: a step never moves entries and reverts at once.
                let paths = [Layout::Flat, Layout::Buckets].map(|l| l.entry_path(&env, seq - 1));
                if let Some((below, entry)) =
                    paths.into_iter().find_map(|p| new_tree.get_path(Path::new(&p)).ok().map(|e| (p, e)))
                {
                    let node = node_of(&self.repo, entry.filemode() as u32, entry.id())
                        .map_err(git_err(&self.location, "read blob"))?;
                    if let Some(node) = node {
                        context.insert(below.into_bytes(), node);
                    }
                }
            }
        }
        Ok(Step { commit: self.commit_info(commit)?, changes, context })
    }

    fn steps(&self, commits: &[Oid]) -> Result<Vec<Step>, SourceError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if threads < 2 || commits.len() < 64 {
            return commits.iter().map(|id| self.step(*id, None)).collect();
        }
        // Each worker reads one contiguous run of commits with its own handle, so the tree a step's
        // parent read is still in that handle's cache.
        let mut readers = std::mem::take(&mut *self.readers.lock().unwrap_or_else(|e| e.into_inner()));
        while readers.len() < threads {
            let repo = Repository::open(self.repo.path()).map_err(git_err(&self.location, "open repository"))?;
            readers.push(GitSource {
                repo,
                branch: self.branch.clone(),
                remote_url: None,
                location: self.location.clone(),
                readers: Default::default(),
            });
        }
        let chunk = commits.len().div_ceil(threads);
        let parts: Vec<Result<Vec<Step>, SourceError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = commits
                .chunks(chunk)
                .zip(readers.iter_mut())
                .map(|(part, worker)| scope.spawn(move || part.iter().map(|id| worker.step(*id, None)).collect()))
                .collect();
            workers.into_iter().map(|w| w.join().expect("step readers do not panic")).collect()
        });
        *self.readers.lock().unwrap_or_else(|e| e.into_inner()) = readers;
        let mut steps = Vec::with_capacity(commits.len());
        for part in parts {
            steps.extend(part?);
        }
        Ok(steps)
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
            parent: c.parent_id(0).ok().map(|p| p.to_string()),
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

const TREE_MODE: i32 = 0o040000;

/// Git's order of names within a tree: bytes, with a directory's name compared as if it ended in `/`.
fn git_order(a: &[u8], a_dir: bool, b: &[u8], b_dir: bool) -> Ordering {
    let n = a.len().min(b.len());
    match a[..n].cmp(&b[..n]) {
        Ordering::Equal => {
            let next = |name: &[u8], dir: bool| name.get(n).copied().or(dir.then_some(b'/'));
            next(a, a_dir).cmp(&next(b, b_dir))
        }
        other => other,
    }
}

/// Appends every changed non-directory path between two tree entries (either may be absent),
/// descending only into subtrees whose ids differ. Both trees are walked in git's order side by side,
/// so an unchanged entry costs one id comparison and no allocation.
fn diff_entry(
    repo: &Repository,
    path: Vec<u8>,
    old: Option<(Oid, i32)>,
    new: Option<(Oid, i32)>,
    out: &mut Vec<PathChange>,
) -> Result<(), git2::Error> {
    if old == new {
        return Ok(());
    }
    let as_node = |side: Option<(Oid, i32)>| -> Result<Option<Node>, git2::Error> {
        match side {
            Some((id, mode)) if mode != TREE_MODE => node_of(repo, mode as u32, id),
            _ => Ok(None),
        }
    };
    let old_tree = old.filter(|(_, m)| *m == TREE_MODE).map(|(id, _)| repo.find_tree(id)).transpose()?;
    let new_tree = new.filter(|(_, m)| *m == TREE_MODE).map(|(id, _)| repo.find_tree(id)).transpose()?;
    let (old_node, new_node) = (as_node(old)?, as_node(new)?);
    if old_node.is_some() || new_node.is_some() {
        out.push(PathChange { path: path.clone(), before: old_node, after: new_node });
    }
    if old_tree.is_none() && new_tree.is_none() {
        return Ok(());
    }
    let (len_a, len_b) = (old_tree.as_ref().map_or(0, |t| t.len()), new_tree.as_ref().map_or(0, |t| t.len()));
    let (mut i, mut j) = (0, 0);
    let child = |name: &[u8]| {
        let mut p = path.clone();
        p.push(b'/');
        p.extend_from_slice(name);
        p
    };
    while i < len_a || j < len_b {
        let a = old_tree.as_ref().and_then(|t| t.get(i));
        let b = new_tree.as_ref().and_then(|t| t.get(j));
        let order = match (&a, &b) {
            (Some(a), Some(b)) => {
                git_order(a.name_bytes(), a.filemode() == TREE_MODE, b.name_bytes(), b.filemode() == TREE_MODE)
            }
            (Some(_), None) => Ordering::Less,
            (None, _) => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                let a = a.expect("Less means an old entry");
                diff_entry(repo, child(a.name_bytes()), Some((a.id(), a.filemode())), None, out)?;
                i += 1;
            }
            Ordering::Greater => {
                let b = b.expect("Greater means a new entry");
                diff_entry(repo, child(b.name_bytes()), None, Some((b.id(), b.filemode())), out)?;
                j += 1;
            }
            Ordering::Equal => {
                let (a, b) = (a.expect("both"), b.expect("both"));
                if a.id() != b.id() || a.filemode() != b.filemode() {
                    diff_entry(
                        repo,
                        child(a.name_bytes()),
                        Some((a.id(), a.filemode())),
                        Some((b.id(), b.filemode())),
                        out,
                    )?;
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn file_urls_are_local_paths_and_other_urls_are_remote() {
        assert_eq!(local_path("/srv/ledger"), Some(std::path::PathBuf::from("/srv/ledger")));
        assert_eq!(local_path("file:///srv/my%20ledger.git"), Some(std::path::PathBuf::from("/srv/my ledger.git")));
        assert_eq!(local_path("file://host/srv/ledger"), None);
        assert_eq!(local_path("git://127.0.0.1/ledger.git"), None);
        assert_eq!(local_path("https://example.com/ledger.git"), None);
        assert_eq!(local_path("file:///bad%zz"), None);
    }

    use super::*;

    #[test]
    fn git_order_puts_a_directory_after_names_that_extend_it_with_lower_bytes() {
        // "a-b" < "a/" (a directory "a") because '-' (0x2d) < '/' (0x2f); "a.json" > "a/"? '.' is 0x2e < '/'.
        assert_eq!(git_order(b"a-b", false, b"a", true), Ordering::Less);
        assert_eq!(git_order(b"a0", false, b"a", true), Ordering::Greater);
        assert_eq!(git_order(b"a", false, b"a", false), Ordering::Equal);
        assert_eq!(git_order(b"a", false, b"a", true), Ordering::Less);
        assert_eq!(git_order(b"10.json", false, b"9.json", false), Ordering::Less);
    }
}
