//! The ledger repository on disk: reading the owned directories into a [`Snapshot`] (from the work
//! tree or from a Git revision) and committing changes to them.
//!
//! Owns: every filesystem and git2 call the CLI makes on a ledger. Must not judge what it reads (that
//! is `ledger_format::tree`) and must not touch files outside the owned directories.

use git2::{ErrorCode, Oid, Repository, Signature, Status, StatusOptions};
use ledger_format::tree::{Node, Snapshot, MAX_READ, OWNED_DIRS};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{path}: not a Git repository (run `stele init {path}` to make a ledger there): {source}")]
    NotARepository { path: PathBuf, source: git2::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("git: {context}: {source}")]
    Git { context: String, source: git2::Error },
    #[error("{rev}: not a commit in this repository: {source}")]
    UnknownRevision { rev: String, source: git2::Error },
    #[error("uncommitted changes in the ledger: {paths}; commit or discard them first, so that what is signed is what is committed")]
    Dirty { paths: String },
    #[error("proposal {branch}: {reason}")]
    Proposal { branch: String, reason: String },
}

fn git(context: impl Into<String>) -> impl FnOnce(git2::Error) -> RepoError {
    let context = context.into();
    move |source| RepoError::Git { context, source }
}

/// Signs a commit object's bytes, returning the armored signature for its `gpgsig` header.
pub type CommitSigner<'a> = &'a dyn Fn(&[u8]) -> Result<String, String>;

/// One file change in a commit. Paths are relative to the repository root, `/`-separated.
pub enum Change {
    Write { path: String, bytes: Vec<u8> },
    Remove { path: String },
}

/// Applies `changes` to an in-memory snapshot, to verify a tree before committing it.
pub fn apply_to(snapshot: &mut Snapshot, changes: &[Change]) {
    for change in changes {
        match change {
            Change::Write { path, bytes } => snapshot.insert_file(path, bytes.clone()),
            Change::Remove { path } => {
                snapshot.nodes.remove(path.as_bytes());
            }
        }
    }
}

pub struct LedgerRepo {
    root: PathBuf,
    git: Repository,
}

impl LedgerRepo {
    /// Opens the repository containing `path`.
    pub fn open(path: &Path) -> Result<Self, RepoError> {
        let git =
            Repository::discover(path).map_err(|source| RepoError::NotARepository { path: path.to_owned(), source })?;
        let root = git
            .workdir()
            .ok_or_else(|| RepoError::NotARepository {
                path: path.to_owned(),
                source: git2::Error::from_str("bare repositories have no work tree; clone it first"),
            })?
            .to_owned();
        Ok(Self { root, git })
    }

    /// Opens the repository at `path`, or creates one (with branch `main`) when there is none.
    pub fn open_or_init(path: &Path) -> Result<Self, RepoError> {
        fs::create_dir_all(path).map_err(|source| RepoError::Io { path: path.to_owned(), source })?;
        match Repository::open(path) {
            Ok(_) => Self::open(path),
            Err(e) if e.code() == ErrorCode::NotFound => {
                let mut opts = git2::RepositoryInitOptions::new();
                opts.initial_head("main");
                Repository::init_opts(path, &opts).map_err(git("init"))?;
                Self::open(path)
            }
            Err(source) => Err(RepoError::NotARepository { path: path.to_owned(), source }),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn git(&self) -> &Repository {
        &self.git
    }

    /// Reads the owned directories of the work tree, without following symbolic links.
    pub fn worktree_snapshot(&self) -> Result<Snapshot, RepoError> {
        let mut snapshot = Snapshot::default();
        for dir in OWNED_DIRS {
            walk_fs(&self.root, Path::new(dir), &mut snapshot)?;
        }
        Ok(snapshot)
    }

    /// Reads the owned directories of the tree of `rev` (a commit-ish such as `HEAD` or a hash).
    pub fn rev_snapshot(&self, rev: &str) -> Result<Snapshot, RepoError> {
        let commit = self
            .git
            .revparse_single(rev)
            .and_then(|o| o.peel_to_commit())
            .map_err(|source| RepoError::UnknownRevision { rev: rev.to_owned(), source })?;
        let tree = commit.tree().map_err(git("read tree"))?;
        tree_snapshot(&self.git, &tree).map_err(git("read tree"))
    }

    /// Refuses when the owned directories differ from HEAD in the index or work tree (untracked
    /// files included), so a command signs and commits exactly what it verified.
    pub fn ensure_clean(&self) -> Result<(), RepoError> {
        let mut opts = StatusOptions::new();
        // Ignored files count: the work tree is what gets verified, so a file git ignores under the
        // ledger would be judged but never committed.
        opts.include_untracked(true).recurse_untracked_dirs(true).include_ignored(true).recurse_ignored_dirs(true);
        for dir in OWNED_DIRS {
            opts.pathspec(dir);
        }
        let statuses = self.git.statuses(Some(&mut opts)).map_err(git("status"))?;
        let dirty: Vec<String> = statuses
            .iter()
            .filter(|s| s.status() != Status::CURRENT)
            .map(|s| String::from_utf8_lossy(s.path_bytes()).into_owned())
            .collect();
        if dirty.is_empty() {
            Ok(())
        } else {
            Err(RepoError::Dirty { paths: dirty.join(", ") })
        }
    }

    /// Commits `changes` on top of HEAD (or as the first commit), then brings the work tree and index
    /// up to date for those paths. The commit is built from HEAD's tree, so unrelated staged changes
    /// stay staged and are not swept into it.
    pub fn commit(&self, changes: &[Change], message: &str) -> Result<Oid, RepoError> {
        self.commit_signed(changes, message, None)
    }

    /// [`LedgerRepo::commit`], with the commit object signed by `sign` (which returns an armored
    /// signature for the commit bytes, stored in the `gpgsig` header as git does) when given.
    pub fn commit_signed(
        &self,
        changes: &[Change],
        message: &str,
        sign: Option<CommitSigner>,
    ) -> Result<Oid, RepoError> {
        let id = self.prepare_commit(changes, message, sign)?;
        self.land(id, changes)?;
        Ok(id)
    }

    /// Writes the commit [`LedgerRepo::commit_signed`] would make to the object database, moving no
    /// ref: so that the very commit, signature included, can be judged before [`LedgerRepo::land`].
    pub fn prepare_commit(
        &self,
        changes: &[Change],
        message: &str,
        sign: Option<CommitSigner>,
    ) -> Result<Oid, RepoError> {
        let parent = self.head_commit()?;
        let tree_id = self.tree_with(parent.as_ref(), changes)?;
        let tree = self.git.find_tree(tree_id).map_err(git("read tree"))?;
        let sig = identity(&self.git)?;
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        match sign {
            None => self.git.commit(None, &sig, &sig, message, &tree, &parents).map_err(git("commit")),
            Some(sign) => {
                let buffer =
                    self.git.commit_create_buffer(&sig, &sig, message, &tree, &parents).map_err(git("build commit"))?;
                let armored = sign(&buffer)
                    .map_err(|e| RepoError::Git { context: "sign commit".into(), source: git2::Error::from_str(&e) })?;
                let content = std::str::from_utf8(&buffer).expect("commit buffers of UTF-8 messages are UTF-8");
                self.git.commit_signed(content, &armored, None).map_err(git("write signed commit"))
            }
        }
    }

    /// Moves HEAD (its branch, or HEAD itself when detached) to `commit`, a child of HEAD made by
    /// [`LedgerRepo::prepare_commit`], only if HEAD has not moved since (else an error, nothing
    /// changed), then brings the work tree and index up to date for `changes`.
    pub fn land(&self, commit: Oid, changes: &[Change]) -> Result<(), RepoError> {
        let head_ref = self.git.find_reference("HEAD").map_err(git("read HEAD"))?;
        let target = head_ref.symbolic_target().unwrap_or("HEAD").to_owned();
        let made = self.git.find_commit(commit).map_err(git("read commit"))?;
        let parent = made.parent_id(0).ok();
        let reflog = format!("commit: {}", made.summary().unwrap_or(""));
        match parent {
            Some(parent) => self.git.reference_matching(&target, commit, true, parent, &reflog),
            None => self.git.reference(&target, commit, false, &reflog),
        }
        .map_err(git(format!("move {target} (did another commit land meanwhile?)")))?;

        let mut work_index = self.git.index().map_err(git("index"))?;
        for change in changes {
            match change {
                Change::Write { path, bytes } => {
                    write_atomic(&self.root.join(path), bytes)?;
                    work_index.add_path(Path::new(path)).map_err(git(format!("stage {path}")))?;
                }
                Change::Remove { path } => {
                    let full = self.root.join(path);
                    match fs::remove_file(&full) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(source) => return Err(RepoError::Io { path: full, source }),
                    }
                    work_index.remove_path(Path::new(path)).map_err(git(format!("unstage {path}")))?;
                }
            }
        }
        work_index.write().map_err(git("write index"))?;
        Ok(())
    }
}

/// The commit identity: `GIT_AUTHOR_NAME`/`GIT_AUTHOR_EMAIL` when set (as git does), else git config.
fn identity(repo: &Repository) -> Result<Signature<'static>, RepoError> {
    if let (Ok(name), Ok(email)) = (std::env::var("GIT_AUTHOR_NAME"), std::env::var("GIT_AUTHOR_EMAIL")) {
        return Signature::now(&name, &email).map_err(git("author identity"));
    }
    repo.signature().map_err(|source| RepoError::Git {
        context: "no commit identity: set user.name and user.email (git config --global ...), or GIT_AUTHOR_NAME and GIT_AUTHOR_EMAIL".into(),
        source,
    })
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash never leaves half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    let io = |source| RepoError::Io { path: path.to_owned(), source };
    let dir = path.parent().expect("repository paths have a parent");
    fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(".{}.stele-tmp", path.file_name().expect("a file name").to_string_lossy()));
    fs::write(&tmp, bytes).map_err(io)?;
    fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

fn walk_fs(root: &Path, rel: &Path, snapshot: &mut Snapshot) -> Result<(), RepoError> {
    let full = root.join(rel);
    let io = |source| RepoError::Io { path: full.clone(), source };
    let meta = match fs::symlink_metadata(&full) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let key = rel.as_os_str().as_bytes().to_vec();
    let ft = meta.file_type();
    if ft.is_dir() {
        let mut children: Vec<_> = fs::read_dir(&full).map_err(io)?.collect::<Result<_, _>>().map_err(io)?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            walk_fs(root, &rel.join(child.file_name()), snapshot)?;
        }
    } else if ft.is_symlink() {
        snapshot.nodes.insert(key, Node::Symlink);
    } else if ft.is_file() {
        let node = if meta.len() > MAX_READ {
            Node::TooLarge { size: meta.len() }
        } else {
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            fs::File::open(&full).map_err(io)?.take(MAX_READ).read_to_end(&mut bytes).map_err(io)?;
            Node::File(bytes)
        };
        snapshot.nodes.insert(key, node);
    } else {
        snapshot.nodes.insert(key, Node::Other("special file".into()));
    }
    Ok(())
}

/// What a tree entry of `mode` pointing at `id` is, as a snapshot node; `None` for a directory.
/// Blobs larger than [`MAX_READ`] are recorded by size only, without being read.
pub fn node_of(repo: &Repository, mode: u32, id: Oid) -> Result<Option<Node>, git2::Error> {
    Ok(Some(match mode {
        0o040000 => return Ok(None),
        0o100644 | 0o100755 => {
            let (size, _) = repo.odb()?.read_header(id)?;
            if size as u64 > MAX_READ {
                Node::TooLarge { size: size as u64 }
            } else {
                Node::File(repo.find_blob(id)?.content().to_vec())
            }
        }
        0o120000 => Node::Symlink,
        0o160000 => Node::Other("submodule".into()),
        mode => Node::Other(format!("tree entry of mode {mode:o}")),
    }))
}

/// The owned directories of `tree` as a snapshot.
pub fn tree_snapshot(repo: &Repository, tree: &git2::Tree) -> Result<Snapshot, git2::Error> {
    let mut snapshot = Snapshot::default();
    for dir in OWNED_DIRS {
        if let Some(entry) = tree.get_name(dir) {
            walk_git(repo, &entry, dir.as_bytes().to_vec(), &mut snapshot)?;
        }
    }
    Ok(snapshot)
}

fn walk_git(
    repo: &Repository,
    entry: &git2::TreeEntry,
    path: Vec<u8>,
    snapshot: &mut Snapshot,
) -> Result<(), git2::Error> {
    match node_of(repo, entry.filemode() as u32, entry.id())? {
        Some(node) => {
            snapshot.nodes.insert(path, node);
        }
        None => {
            for child in repo.find_tree(entry.id())?.iter() {
                let mut child_path = path.clone();
                child_path.push(b'/');
                child_path.extend_from_slice(child.name_bytes());
                walk_git(repo, &child, child_path, snapshot)?;
            }
        }
    }
    Ok(())
}

/// Where proposals live: one branch per proposal, `stele/proposals/<name>` (rev-3 R2).
pub const PROPOSAL_PREFIX: &str = "stele/proposals/";

/// A proposal as found on its branch: exactly one commit on top of a commit of the ledger branch.
pub struct Proposal {
    pub name: String,
    pub head: Oid,
    /// The proposal's first parent: the ledger commit it was written against.
    pub parent: Oid,
    pub message: String,
    /// What the proposal changes under the owned directories (parent -> head), in path order.
    pub changes: Vec<Change>,
}

impl Proposal {
    pub fn branch(&self) -> String {
        format!("{PROPOSAL_PREFIX}{}", self.name)
    }

    pub fn paths(&self) -> Vec<&str> {
        self.changes.iter().map(Change::path).collect()
    }
}

impl Change {
    pub fn path(&self) -> &str {
        match self {
            Change::Write { path, .. } | Change::Remove { path } => path,
        }
    }
}

impl LedgerRepo {
    /// The commit HEAD points at; `None` before the first commit.
    pub fn head_commit(&self) -> Result<Option<git2::Commit<'_>>, RepoError> {
        match self.git.head() {
            Ok(head) => head.peel_to_commit().map(Some).map_err(git("read HEAD")),
            Err(e) if e.code() == ErrorCode::UnbornBranch || e.code() == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(git("read HEAD")(e)),
        }
    }

    /// The tree of `base` (empty when `None`) with `changes` applied, written to the object database.
    fn tree_with(&self, base: Option<&git2::Commit>, changes: &[Change]) -> Result<Oid, RepoError> {
        // Only the trees on the changed paths are rewritten (git_tree_create_updated): a change costs
        // the depth of its path, not the size of the ledger.
        let base = match base {
            Some(commit) => commit.tree().map_err(git("read tree"))?,
            None => {
                let empty = self.git.treebuilder(None).and_then(|b| b.write()).map_err(git("write tree"))?;
                self.git.find_tree(empty).map_err(git("read tree"))?
            }
        };
        let mut update = git2::build::TreeUpdateBuilder::new();
        for change in changes {
            match change {
                Change::Write { path, bytes } => {
                    let id = self.git.blob(bytes).map_err(git("write blob"))?;
                    update.upsert(path.as_str(), id, git2::FileMode::Blob);
                }
                Change::Remove { path } => {
                    update.remove(path.as_str());
                }
            }
        }
        update.create_updated(&self.git, &base).map_err(git("write tree"))
    }

    /// Writes a commit of `parent`'s tree plus `changes` and points `refs/heads/<branch>` at it, without
    /// touching HEAD, the index or the work tree. With `replace`, an existing branch is moved (a
    /// proposal rewritten by a co-signer); without it, an existing branch is an error.
    pub fn commit_on_branch(
        &self,
        branch: &str,
        parent: Oid,
        changes: &[Change],
        message: &str,
        replace: bool,
    ) -> Result<Oid, RepoError> {
        let parent = self.git.find_commit(parent).map_err(git("read parent commit"))?;
        let tree_id = self.tree_with(Some(&parent), changes)?;
        let tree = self.git.find_tree(tree_id).map_err(git("read tree"))?;
        let sig = identity(&self.git)?;
        let id = self.git.commit(None, &sig, &sig, message, &tree, &[&parent]).map_err(git("commit"))?;
        self.git
            .reference(&format!("refs/heads/{branch}"), id, replace, "stele: proposal")
            .map_err(git(format!("write branch {branch}")))?;
        Ok(id)
    }

    /// Whether `refs/heads/<branch>` exists.
    pub fn has_branch(&self, branch: &str) -> bool {
        self.git.find_branch(branch, git2::BranchType::Local).is_ok()
    }

    /// Reads proposal `name` (branch `stele/proposals/<name>`), refusing anything that is not one
    /// commit whose first parent is on the first-parent history of HEAD, or that changes files outside
    /// the owned directories or anything but regular files inside them.
    pub fn read_proposal(&self, name: &str) -> Result<Proposal, RepoError> {
        let branch = format!("{PROPOSAL_PREFIX}{name}");
        let refused = |reason: String| RepoError::Proposal { branch: branch.clone(), reason };
        let head = self
            .git
            .find_branch(&branch, git2::BranchType::Local)
            .map_err(|_| refused("no such branch here (fetch it first: git fetch origin BRANCH:BRANCH)".into()))?
            .get()
            .peel_to_commit()
            .map_err(git(format!("read {branch}")))?;
        let parent = head.parent(0).map_err(|_| refused("its commit has no parent".into()))?;
        let ledger_head = self.head_commit()?.ok_or_else(|| refused("this repository has no commits".into()))?;
        let mut on_branch = false;
        let mut at = Some(ledger_head);
        while let Some(c) = at {
            if c.id() == parent.id() {
                on_branch = true;
                break;
            }
            at = c.parent(0).ok();
        }
        if !on_branch {
            return Err(refused(format!(
                "it must be exactly one commit on top of a commit of the ledger branch, but its parent {} is not \
                 on the first-parent history of HEAD",
                parent.id()
            )));
        }
        let (old_tree, new_tree) = (parent.tree().map_err(git("read tree"))?, head.tree().map_err(git("read tree"))?);
        for entry in old_tree.iter().chain(new_tree.iter()) {
            let name = entry.name().unwrap_or("");
            if OWNED_DIRS.contains(&name) {
                continue;
            }
            let before = old_tree.get_name(name).map(|e| e.id());
            let after = new_tree.get_name(name).map(|e| e.id());
            if before != after {
                return Err(refused(format!("it changes {name}, outside the ledger directories")));
            }
        }
        // Only what differs is read: the two trees are compared by object id, as `git diff` does.
        let mut opts = git2::DiffOptions::new();
        for dir in OWNED_DIRS {
            opts.pathspec(dir);
        }
        let diff = self
            .git
            .diff_tree_to_tree(Some(&old_tree), Some(&new_tree), Some(&mut opts))
            .map_err(git(format!("compare {branch} with its parent")))?;
        let mut changes = Vec::new();
        for delta in diff.deltas() {
            // Without rename detection, a delta is an addition, a change or a deletion of one path.
            let new = delta.new_file();
            let Some(path) = new.path_bytes() else { continue };
            let text = String::from_utf8_lossy(path).into_owned();
            if new.id().is_zero() {
                changes.push(Change::Remove { path: text });
                continue;
            }
            match node_of(&self.git, u32::from(new.mode()), new.id()).map_err(git(format!("read {text}")))? {
                Some(Node::File(bytes)) => changes.push(Change::Write { path: text, bytes }),
                _ => return Err(refused(format!("{text} is not a regular file"))),
            }
        }
        changes.sort_by(|a, b| a.path().cmp(b.path()));
        let message = head.message().unwrap_or("").to_owned();
        Ok(Proposal { name: name.to_owned(), head: head.id(), parent: parent.id(), message, changes })
    }

    /// The node at `path` in commit `rev`'s tree (`None` when absent).
    pub fn node_at(&self, commit: Oid, path: &str) -> Result<Option<Node>, RepoError> {
        let commit = self.git.find_commit(commit).map_err(git("read commit"))?;
        let tree = commit.tree().map_err(git("read tree"))?;
        match tree.get_path(Path::new(path)) {
            Ok(entry) => node_of(&self.git, entry.filemode() as u32, entry.id()).map_err(git("read blob")),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(git("read tree")(e)),
        }
    }

    /// Deletes local branch `branch`.
    pub fn delete_branch(&self, branch: &str) -> Result<(), RepoError> {
        let mut b = self.git.find_branch(branch, git2::BranchType::Local).map_err(git(format!("find {branch}")))?;
        b.delete().map_err(git(format!("delete {branch}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &str, text: &str) -> Change {
        Change::Write { path: path.into(), bytes: text.as_bytes().to_vec() }
    }

    #[test]
    fn a_prepared_commit_lands_only_on_the_head_it_was_made_on() {
        let dir = tempfile::tempdir().unwrap();
        let repo = LedgerRepo::open_or_init(dir.path()).unwrap();
        let mut config = repo.git().config().unwrap();
        config.set_str("user.name", "Stele Test").unwrap();
        config.set_str("user.email", "test@stele.invalid").unwrap();
        let first = repo.commit(&[write("ledger/a", "1")], "first").unwrap();

        let prepared = repo.prepare_commit(&[write("ledger/a", "2")], "second", None).unwrap();
        assert_eq!(repo.head_commit().unwrap().unwrap().id(), first, "preparing moves nothing");
        assert_eq!(fs::read_to_string(dir.path().join("ledger/a")).unwrap(), "1", "nor the work tree");

        // Another commit lands meanwhile: the prepared one, made on `first`, must not replace it.
        let other = repo.commit(&[write("ledger/b", "x")], "other").unwrap();
        let err = repo.land(prepared, &[write("ledger/a", "2")]).unwrap_err();
        assert!(err.to_string().contains("did another commit land meanwhile"), "{err}");
        assert_eq!(repo.head_commit().unwrap().unwrap().id(), other);
        assert_eq!(fs::read_to_string(dir.path().join("ledger/a")).unwrap(), "1");

        let again = repo.prepare_commit(&[write("ledger/a", "2")], "second", None).unwrap();
        repo.land(again, &[write("ledger/a", "2")]).unwrap();
        assert_eq!(repo.head_commit().unwrap().unwrap().id(), again);
        assert_eq!(fs::read_to_string(dir.path().join("ledger/a")).unwrap(), "2");
        repo.ensure_clean().unwrap();
    }

    #[test]
    fn a_commit_that_empties_a_directory_drops_it_from_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let repo = LedgerRepo::open_or_init(dir.path()).unwrap();
        let mut config = repo.git().config().unwrap();
        config.set_str("user.name", "Stele Test").unwrap();
        config.set_str("user.email", "test@stele.invalid").unwrap();
        repo.commit(&[write("ledger/prod/0/999.json", "a"), write("ledger/prod/1/1000.json", "b")], "two").unwrap();
        let id = repo.commit(&[Change::Remove { path: "ledger/prod/1/1000.json".into() }], "revert").unwrap();
        let tree = repo.git().find_commit(id).unwrap().tree().unwrap();
        assert!(tree.get_path(Path::new("ledger/prod/1")).is_err(), "no empty tree is written, as git never does");
        assert!(tree.get_path(Path::new("ledger/prod/0/999.json")).is_ok());
        repo.ensure_clean().unwrap();
    }
}
