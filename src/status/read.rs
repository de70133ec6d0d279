//! Reading status back: the legacy status branch (`read_all`, `history`: one unsigned writer's
//! branch, as before revision 4) and every status ref a reader must judge ([`read_tips`],
//! [`read_history`]): each ref under `refs/stele/status/` (one per signed agent) plus the legacy
//! branch (`refs/heads/<branch>`, else `refs/remotes/origin/<branch>`).
//!
//! Owns: finding status files in Git. Must not judge them: a [`Candidate`] is what a file says and
//! where it was found; whether an authorised agent said it is [`super::verify`]'s question. A file
//! that does not parse is a candidate too (with the reason), never an error for the whole read.

use super::{decode, git_err, parse, status_path, EnvStatus, StatusError, StatusFile, STATUS_DIR};
use git2::{ErrorCode, Oid, Repository, Tree};
use ledger_format::types::EnvName;
use ledger_format::Timestamp;
use std::path::Path;

/// The prefix of the per-agent status refs (SPEC revision 4): one writer per ref.
pub const STATUS_REFS: &str = "refs/stele/status/";

/// The refspec that copies every agent's status ref, for `git fetch` and the audit's cache.
pub const STATUS_REFSPEC: &str = "+refs/stele/status/*:refs/stele/status/*";

/// Reads `status/<env>.json` from `tree`, or `None` when there is none. Anything there that is not a
/// status file for `env` is [`StatusError::Corrupt`].
pub(crate) fn read_env_file(
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
pub(crate) fn status_dir<'r>(repo: &'r Repository, tree: &Tree, commit: &str) -> Result<Option<Tree<'r>>, StatusError> {
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
pub(crate) fn parse_entry(
    repo: &Repository,
    entry: &git2::TreeEntry,
    name: &str,
    commit: &str,
) -> Result<EnvStatus, StatusError> {
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
pub(crate) fn branch_tip(repo: &Repository, branch: &str) -> Result<Option<Oid>, StatusError> {
    for refname in [format!("refs/heads/{branch}"), format!("refs/remotes/origin/{branch}")] {
        match repo.refname_to_id(&refname) {
            Ok(id) => return Ok(Some(id)),
            Err(e) if matches!(e.code(), ErrorCode::NotFound | ErrorCode::InvalidSpec) => continue,
            Err(e) => return Err(git_err(&repo_location(repo), "read the status branch")(e)),
        }
    }
    Ok(None)
}

pub(crate) fn repo_location(repo: &Repository) -> String {
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

/// One status file as found on a status ref: where it was, its bytes, and what it says when it
/// parses. Not a verdict: see [`super::verify`].
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The ref it was read from (`refs/stele/status/<agent>` or the legacy branch's ref).
    pub refname: String,
    /// The status commit holding this version of the file.
    pub commit: String,
    /// That commit's time (when it was recorded), when it is within 1970-9999.
    pub recorded_at: Option<Timestamp>,
    /// The environment the file is named after (`status/<env>.json`).
    pub env: String,
    pub bytes: Vec<u8>,
    /// The file decoded, or why it cannot be (check O1).
    pub file: Result<StatusFile, String>,
}

impl Candidate {
    /// The report, when the file parses.
    pub fn status(&self) -> Option<&EnvStatus> {
        self.file.as_ref().ok().map(|f| &f.status)
    }
}

/// Every status ref a reader looks at, in a fixed order: the refs under [`STATUS_REFS`] by name,
/// then the legacy branch (`refs/heads/<branch>`, else `refs/remotes/origin/<branch>`). A ref that
/// does not point at a commit is skipped.
pub fn status_refs(repo: &Repository, legacy_branch: &str) -> Result<Vec<(String, Oid)>, StatusError> {
    let location = repo_location(repo);
    let mut out = Vec::new();
    let refs = repo.references().map_err(git_err(&location, "list refs"))?;
    for r in refs {
        let r = r.map_err(git_err(&location, "list refs"))?;
        let Some(name) = r.name().filter(|n| n.starts_with(STATUS_REFS)) else { continue };
        let name = name.to_owned();
        if let Ok(commit) = r.peel_to_commit() {
            out.push((name, commit.id()));
        }
    }
    out.sort();
    for refname in [format!("refs/heads/{legacy_branch}"), format!("refs/remotes/origin/{legacy_branch}")] {
        match repo.refname_to_id(&refname) {
            Ok(id) => {
                out.push((refname, id));
                break;
            }
            Err(e) if matches!(e.code(), ErrorCode::NotFound | ErrorCode::InvalidSpec) => continue,
            Err(e) => return Err(git_err(&location, "read the status branch")(e)),
        }
    }
    Ok(out)
}

/// The candidate `status/<name>` of `commit` on `refname`: its bytes and what they decode to. A file
/// that is not a regular file, does not parse, or holds another environment's status is a candidate
/// whose `file` says why.
fn candidate(repo: &Repository, refname: &str, commit: &git2::Commit, entry: &git2::TreeEntry) -> Candidate {
    let name = String::from_utf8_lossy(entry.name_bytes()).into_owned();
    let env = name.strip_suffix(".json").unwrap_or(&name).to_owned();
    let blob = match entry.kind() {
        Some(git2::ObjectType::Blob) => repo.find_blob(entry.id()).map_err(|e| e.message().to_owned()),
        _ => Err("it is not a regular file".to_owned()),
    };
    let bytes = blob.as_ref().map(|b| b.content().to_vec()).unwrap_or_default();
    let file = blob.and_then(|_| decode(&bytes)).and_then(|f| {
        if f.status.env.as_str() == env {
            Ok(f)
        } else {
            Err(format!("{STATUS_DIR}/{name} holds the status of environment {}", f.status.env))
        }
    });
    Candidate {
        refname: refname.to_owned(),
        commit: commit.id().to_string(),
        recorded_at: Timestamp::from_unix(commit.time().seconds()),
        env,
        bytes,
        file,
    }
}

/// Every status file at the tip of every status ref ([`status_refs`]), ref by ref, files in name
/// order. Files under `status/` not ending in `.json` are ignored; a ref whose `status` is not a
/// directory contributes nothing.
pub fn read_tips(repo: &Repository, legacy_branch: &str) -> Result<Vec<Candidate>, StatusError> {
    let location = repo_location(repo);
    let mut out = Vec::new();
    for (refname, tip) in status_refs(repo, legacy_branch)? {
        let commit = repo.find_commit(tip).map_err(git_err(&location, "read a status ref"))?;
        let tree = commit.tree().map_err(git_err(&location, "read a status ref"))?;
        let Ok(Some(dir)) = status_dir(repo, &tree, &tip.to_string()) else { continue };
        for entry in dir.iter() {
            if entry.name_bytes().ends_with(b".json") {
                out.push(candidate(repo, &refname, &commit, &entry));
            }
        }
    }
    Ok(out)
}

/// Each version of `env`'s status file along the first parents of every status ref, oldest first
/// within a ref: every report any writer recorded, to be judged one by one.
pub fn read_history(repo: &Repository, legacy_branch: &str, env: &EnvName) -> Result<Vec<Candidate>, StatusError> {
    let location = repo_location(repo);
    let path = status_path(env);
    let entry_at = |commit: &git2::Commit| -> Option<git2::TreeEntry<'static>> {
        commit.tree().ok()?.get_path(Path::new(&path)).ok()
    };
    let mut out = Vec::new();
    for (refname, tip) in status_refs(repo, legacy_branch)? {
        let read = |e| git_err(&location, "walk a status ref")(e);
        let mut walk = repo.revwalk().map_err(read)?;
        walk.push(tip).and_then(|()| walk.simplify_first_parent()).map_err(read)?;
        let mut mine = Vec::new();
        for id in walk {
            let commit = repo.find_commit(id.map_err(read)?).map_err(read)?;
            let Some(entry) = entry_at(&commit) else { continue };
            let before = commit.parents().next().and_then(|p| entry_at(&p)).map(|e| e.id());
            if before != Some(entry.id()) {
                mine.push(candidate(repo, &refname, &commit, &entry));
            }
        }
        mine.reverse();
        out.extend(mine);
    }
    Ok(out)
}
