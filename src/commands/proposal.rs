//! Proposals (SPEC.md revision 3, R2): documents short only of signatures live on their own branch,
//! `stele/proposals/<name>`, as exactly one commit on top of a ledger commit, until co-signers have
//! signed them (`stele sign --proposal`) and `stele promote` (or a Git host's merge) lands them.
//!
//! Owns: deciding whether a change is complete (commit it on the ledger branch), short only of
//! signatures (write a proposal) or refused; the `sign --proposal` and `promote` commands.
//! Must not implement verification rules: verdicts come from `ledger_format`.

use super::base::Base;
use super::{key_list, problem_lines};
use crate::exit::{self, Refused};
use crate::keys::{self, LoadedSecret};
use crate::repo::{apply_to, Change, LedgerRepo, Proposal, PROPOSAL_PREFIX};
use anyhow::Result;
use ledger_format::document::Payload;
use ledger_format::history::{CommitInfo, LedgerState};
use ledger_format::tree::{classify, Expiry, Layout, LayoutPath, Node, Problem, Snapshot, POLICY_PATH};
use ledger_format::types::{Entry, EnvName, Environment, Policy, TimestampDoc};
use ledger_format::{Check, Document, KeyId};
use std::path::Path;

/// What a change to the ledger amounts to, judged on the tree it would make and as a step from the
/// tree it starts from.
pub enum Verdict {
    /// Every document meets its threshold: commit it on the ledger branch.
    Complete,
    /// Short only of signatures on the proposed documents: what each still needs.
    Short(Vec<Problem>),
    /// Anything else: nothing may be written.
    Refused(Vec<Problem>),
}

/// Whether `p` is nothing but missing signatures on one of `paths`.
fn only_signatures(p: &Problem, paths: &[&str]) -> bool {
    let missing = match p.check {
        Check::N4 | Check::E5 | Check::P4 => p.cause == Some(Check::S3),
        Check::P6 => !matches!(p.cause, Some(Check::S1) | Some(Check::S2)),
        Check::N6 => p.cause == Some(Check::S3),
        _ => false,
    };
    missing && paths.contains(&p.path.as_str())
}

/// The verified state of `before`, from which [`judge`] judges steps: refuses a starting tree that
/// does not verify (expiry not judged).
pub fn state_before(before: &Snapshot) -> Result<LedgerState> {
    match crate::commands::verify_tree(before, Expiry::NotJudged) {
        Ok(tree) => Ok(ledger_format::history::state_of(tree)),
        Err(problems) => Err(Refused(format!(
            "the ledger a proposal starts from does not verify, so nothing was changed:\n{}",
            problem_lines(&problems)
        ))
        .into()),
    }
}

/// Judges `before -> after` (changing `paths`), where `state` is the verified state of `before`: as a
/// tree with expiry not judged, then as one first-parent step (SPEC.md §8) by
/// `ledger_format::history::check_step_from`.
pub fn judge(state: &LedgerState, before: &Snapshot, after: &Snapshot, paths: &[&str], summary: &str) -> Verdict {
    let problems = match crate::commands::verify_tree(after, Expiry::NotJudged) {
        Err(problems) => problems,
        Ok(_) => {
            let commit = CommitInfo { summary: summary.to_owned(), ..CommitInfo::default() };
            match ledger_format::history::check_step_from(state, before, after, commit) {
                Ok(_) => return Verdict::Complete,
                Err(problems) => problems,
            }
        }
    };
    if problems.iter().all(|p| only_signatures(p, paths)) {
        Verdict::Short(problems)
    } else {
        Verdict::Refused(problems)
    }
}

/// A change a command wants to make, with how to describe it.
pub struct Submission {
    pub changes: Vec<Change>,
    /// The commit subject, e.g. `release prod 2.0.0 (seq 2)`.
    pub subject: String,
    /// Lines for the commit body (without the `signed-by:` trailers).
    pub body: String,
    /// Who signed, as `name (keyid)`.
    pub signed_by: Vec<String>,
    /// The default proposal name, e.g. `prod-2.0.0`.
    pub slug: String,
    /// `--proposal NAME`: overrides the slug.
    pub name: Option<String>,
}

impl Submission {
    fn message(&self) -> String {
        let trailers: String = self.signed_by.iter().map(|s| format!("signed-by: {s}\n")).collect();
        format!("{}\n\n{}{trailers}", self.subject, self.body)
    }
}

pub enum Outcome {
    Committed { commit: git2::Oid },
    Proposed { name: String, commit: git2::Oid, needs: Vec<Problem> },
}

/// Commits `s` on the ledger branch when complete, writes it as a proposal when short only of
/// signatures, and refuses anything else (nothing written). The change is judged as one step from
/// `base` (SPEC.md §8.0: a step the history rules accept makes a tree that verifies), reading only the
/// documents it changes; the state after a commit is kept for the next command.
pub fn submit(repo: &LedgerRepo, base: &Base, s: &Submission) -> Result<Outcome> {
    let problems = match judge_on(repo, base, &s.changes, &s.subject)? {
        (Verdict::Complete, next) => {
            let commit = repo.commit(&s.changes, &s.message())?;
            super::base::remember(repo, commit, &next.expect("a complete step has a state after it"));
            return Ok(Outcome::Committed { commit });
        }
        (Verdict::Refused(problems), _) => {
            return Err(Refused(format!(
                "after this change the ledger would not verify, so nothing was written:\n{}",
                problem_lines(&problems)
            ))
            .into())
        }
        (Verdict::Short(problems), _) => problems,
    };
    let name = s.name.clone().unwrap_or_else(|| s.slug.clone());
    check_name(&name)?;
    let branch = format!("{PROPOSAL_PREFIX}{name}");
    if repo.has_branch(&branch) {
        return Err(Refused(format!(
            "a proposal named {name} already exists (branch {branch}); sign or promote it, pass --proposal \
             OTHER_NAME, or delete it (git branch -D {branch}); nothing was written"
        ))
        .into());
    }
    let parent = base.head.ok_or_else(|| Refused("the ledger has no commit yet".into()))?;
    let commit = repo.commit_on_branch(&branch, parent, &s.changes, &s.message(), false)?;
    Ok(Outcome::Proposed { name, commit, needs: problems })
}

/// Judges `changes` as one step from `base` (SPEC.md §8.0: a step the history rules accept makes a tree
/// that verifies), reading from HEAD only what they touch; with the state after them when complete.
pub fn judge_on(
    repo: &LedgerRepo,
    base: &Base,
    changes: &[Change],
    summary: &str,
) -> Result<(Verdict, Option<LedgerState>)> {
    let (before, after) = touched(repo, base.head, changes)?;
    let paths: Vec<&str> = changes.iter().map(Change::path).collect();
    let commit = CommitInfo { summary: summary.to_owned(), ..CommitInfo::default() };
    let step = ledger_format::history::step_between(&before, &after, commit);
    let mut next = base.state.clone();
    Ok(match ledger_format::history::apply_step(&mut next, &step, &ledger_format::document::Direct) {
        Ok(_) => (Verdict::Complete, Some(next)),
        Err(problems) if problems.iter().all(|p| only_signatures(p, &paths)) => (Verdict::Short(problems), None),
        Err(problems) => (Verdict::Refused(problems), None),
    })
}

/// The part of HEAD's tree a change touches, before and after it: each changed path, and the entries
/// just below a removed entry (in either layout), which a revert makes tips again. Judging the step
/// between these two is judging it between the whole trees (`history::step_between` reads no more).
pub fn touched(repo: &LedgerRepo, head: Option<git2::Oid>, changes: &[Change]) -> Result<(Snapshot, Snapshot)> {
    let mut paths: Vec<String> = changes.iter().map(|c| c.path().to_owned()).collect();
    for change in changes {
        if let Change::Remove { path } = change {
            if let Some(LayoutPath::Entry(env, seq)) = classify(path) {
                paths.extend([Layout::Flat, Layout::Buckets].map(|l| l.entry_path(&env, seq.saturating_sub(1))));
            }
        }
    }
    let mut before = Snapshot::default();
    if let Some(head) = head {
        for path in paths {
            if let Some(node) = repo.node_at(head, &path)? {
                before.nodes.insert(path.into_bytes(), node);
            }
        }
    }
    let mut after = before.clone();
    apply_to(&mut after, changes);
    Ok((before, after))
}

/// Refuses proposal names git would refuse or that would not round-trip through the commands.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with(['.', '-'])
        && !name.ends_with(".lock")
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(Refused(format!("{name:?} is not a usable proposal name (letters, digits, '-', '_', '.')")).into())
    }
}

/// A slug for a proposal name: lowercase letters, digits, `-` and `.`.
pub fn slug(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| p.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// Prints what a proposal still needs and the exact commands that finish it.
/// What a spec or policy change did, for people: the commit, or the proposal and what it still needs.
pub fn print_outcome(outcome: &Outcome, signed_by: &[String]) {
    match outcome {
        Outcome::Committed { commit } => {
            println!("  commit {commit}");
            println!("  signed by {}: every threshold met", signed_by.join(", "));
        }
        Outcome::Proposed { name, commit, needs } => {
            println!("  signed by {}", signed_by.join(", "));
            print_proposed(name, *commit, needs);
        }
    }
}

pub fn print_proposed(name: &str, commit: git2::Oid, needs: &[Problem]) {
    let branch = format!("{PROPOSAL_PREFIX}{name}");
    println!("  not enough signatures yet, so this is a proposal: branch {branch} (commit {commit})");
    println!("  the ledger branch is unchanged; agents keep what they run. Still needed:");
    println!("{}", problem_lines(needs).replace("\n  ", "\n    ").replacen("  ", "    ", 1));
    println!("  next:");
    println!("    git push origin {branch}");
    println!("    stele sign --proposal {name} --key <co-signer's key>   (each co-signer, then)");
    println!("    git push --force-with-lease origin {branch}");
    println!("    stele promote {name}   (lands it on the ledger branch as one commit)");
}

/// Adds `key`'s signature to the document at `path` (its kind from the layout).
fn add_signature(path: &str, bytes: &[u8], key: &LoadedSecret) -> Result<Vec<u8>> {
    fn signed<T: Payload>(path: &str, bytes: &[u8], key: &LoadedSecret) -> Result<Vec<u8>> {
        let mut doc = Document::<T>::parse(bytes).map_err(|e| Refused(format!("{path}: {e}")))?;
        doc.sign(&key.key);
        Ok(doc.to_file_bytes())
    }
    match classify(path) {
        Some(LayoutPath::Policy) => signed::<Policy>(path, bytes, key),
        Some(LayoutPath::Environment(_)) => signed::<Environment>(path, bytes, key),
        Some(LayoutPath::Entry(..)) => signed::<Entry>(path, bytes, key),
        Some(LayoutPath::Timestamp) => signed::<TimestampDoc>(path, bytes, key),
        None => Err(Refused(format!("{path} is not a ledger document")).into()),
    }
}

/// Whether `path` is an entry whose very bytes `before` holds at its path in another layout: a move.
fn is_moved_entry(path: &str, bytes: &[u8], before: &Snapshot) -> bool {
    let Some(LayoutPath::Entry(env, seq)) = classify(path) else { return false };
    [Layout::Flat, Layout::Buckets].into_iter().map(|l| l.entry_path(&env, seq)).any(|other| {
        other != path && matches!(before.nodes.get(other.as_bytes()), Some(Node::File(old)) if old.as_slice() == bytes)
    })
}

fn signers_of(path: &str, bytes: &[u8]) -> Vec<KeyId> {
    fn ids<T: Payload>(bytes: &[u8]) -> Vec<KeyId> {
        Document::<T>::parse(bytes).map(|d| d.signatures.iter().map(|s| s.keyid).collect()).unwrap_or_default()
    }
    match classify(path) {
        Some(LayoutPath::Policy) => ids::<Policy>(bytes),
        Some(LayoutPath::Environment(_)) => ids::<Environment>(bytes),
        Some(LayoutPath::Entry(..)) => ids::<Entry>(bytes),
        Some(LayoutPath::Timestamp) => ids::<TimestampDoc>(bytes),
        None => Vec::new(),
    }
}

/// The policy as written in `snapshot`, parsed but not trusted (its signatures may be incomplete).
pub fn written_policy(snapshot: &Snapshot) -> Result<Policy> {
    match snapshot.nodes.get(POLICY_PATH.as_bytes()) {
        Some(Node::File(bytes)) => Document::<Policy>::parse(bytes)
            .map(|d| d.payload)
            .map_err(|e| Refused(format!("{POLICY_PATH}: {e}")).into()),
        _ => Err(Refused(format!("{POLICY_PATH} is missing")).into()),
    }
}

/// The spec as written at `environments/<env>.json` in `snapshot`, if it parses.
pub fn written_spec(snapshot: &Snapshot, env: &EnvName) -> Option<Environment> {
    match snapshot.nodes.get(ledger_format::tree::environment_path(env).as_bytes()) {
        Some(Node::File(bytes)) => Document::<Environment>::parse(bytes).ok().map(|d| d.payload),
        _ => None,
    }
}

/// Who may sign the document at `path` of a change from `before` to `after` (R2, R4, R5): an entry or a
/// spec, the environment's role in the policy after the change; a spec that weakens a safety setting,
/// also the root role; the policy, its new root and the previous root (P6 needs both).
pub fn may_sign(path: &str, before: &Snapshot, after: &Snapshot, key: &KeyId) -> Result<bool> {
    let policy = written_policy(after)?;
    Ok(match classify(path) {
        Some(LayoutPath::Policy) => {
            policy.root.keys.contains(key) || written_policy(before).is_ok_and(|old| old.root.keys.contains(key))
        }
        Some(LayoutPath::Environment(env)) => {
            let in_role = policy.env_role(&env).is_some_and(|r| r.keys.contains(key));
            let weakening = match (written_spec(before, &env), written_spec(after, &env)) {
                (Some(old), Some(new)) => !weakens(&old, &new).is_empty(),
                _ => false,
            };
            in_role || (weakening && policy.root.keys.contains(key))
        }
        Some(LayoutPath::Entry(env, _)) => policy.env_role(&env).is_some_and(|r| r.keys.contains(key)),
        Some(LayoutPath::Timestamp) => policy.timestamp.as_ref().is_some_and(|t| t.keys.contains(key)),
        None => false,
    })
}

/// The safety settings `new` weakens relative to `old` (R4, check N6), described; empty when none.
pub fn weakens(old: &Environment, new: &Environment) -> Vec<String> {
    ledger_format::safety::weakenings(old, new)
}

/// `stele sign --proposal NAME --key K`: adds K's signature to every document of the proposal that K
/// may sign and rewrites the proposal's one commit (same parent).
pub fn sign(repo_path: &Path, name: &str, key_file: &Path) -> Result<u8> {
    let key = keys::load_secret(key_file)?;
    let id = key.key_id();
    let repo = LedgerRepo::open(repo_path)?;
    let proposal = repo.read_proposal(name)?;
    let before = repo.rev_snapshot(&proposal.parent.to_string())?;
    let state = state_before(&before)?;
    let mut after = before.clone();
    apply_to(&mut after, &proposal.changes);
    let policy = written_policy(&after)?;

    // The proposal's documents: what it writes, and documents it leaves as they are but that the
    // change makes short of signatures (a spec or tip a new policy needs re-signed, R5).
    let mut changes: Vec<Change> = proposal
        .changes
        .iter()
        .map(|c| match c {
            Change::Write { path, bytes } => Change::Write { path: path.clone(), bytes: bytes.clone() },
            Change::Remove { path } => Change::Remove { path: path.clone() },
        })
        .collect();
    let paths: Vec<&str> = proposal.paths();
    let mut also: Vec<String> = Vec::new();
    let mut needed: Vec<String> = Vec::new();
    if let Verdict::Short(needs) | Verdict::Refused(needs) = judge(&state, &before, &after, &paths, "") {
        for p in needs {
            if !paths.contains(&p.path.as_str()) && !also.contains(&p.path) {
                also.push(p.path.clone());
            }
            needed.push(p.path);
        }
    }
    for path in also {
        if let Some(Node::File(bytes)) = after.nodes.get(path.as_bytes()) {
            changes.push(Change::Write { path, bytes: bytes.clone() });
        }
    }
    let mut signed = Vec::new();
    let mut already = Vec::new();
    for change in &mut changes {
        let Change::Write { path, bytes } = change else { continue };
        if !may_sign(path, &before, &after, &id)? {
            continue;
        }
        // An entry a layout change moves stays byte for byte what it was (revision 5): signing it
        // would rewrite a signed entry (H2), unless the change leaves it short of signatures (R5).
        if is_moved_entry(path, bytes, &before) && !needed.contains(path) {
            continue;
        }
        if signers_of(path, bytes).contains(&id) {
            already.push(path.clone());
        } else {
            *bytes = add_signature(path, bytes, &key)?;
            signed.push(path.clone());
        }
    }
    let who = key_list(&policy, &[id]);
    if signed.is_empty() {
        let reason = if already.is_empty() {
            format!("{who} may sign none of its documents ({})", proposal.paths().join(", "))
        } else {
            format!("{who} has already signed {}", already.join(", "))
        };
        return Err(Refused(format!("proposal {name}: {reason}; nothing was signed")).into());
    }
    let message = format!("{}signed-by: {who}\n", with_final_newline(&proposal.message));
    let commit = repo.commit_on_branch(&proposal.branch(), proposal.parent, &changes, &message, true)?;
    let mut now = after.clone();
    apply_to(&mut now, &changes);
    let paths: Vec<&str> = changes.iter().map(Change::path).collect();
    println!("signed {} as {who}", signed.join(", "));
    println!("  proposal {name}: branch {} is now commit {commit}", proposal.branch());
    match judge(&state, &before, &now, &paths, subject(&proposal.message)) {
        Verdict::Complete => {
            println!("  every threshold is met; next:");
            println!("    git push --force-with-lease origin {}", proposal.branch());
            println!("    stele promote {name}          # or merge the branch on your Git host");
        }
        Verdict::Short(needs) => {
            println!("  still needed:\n{}", problem_lines(&needs));
            println!("  next: git push --force-with-lease origin {}; other co-signers run", proposal.branch());
            println!("    stele sign --proposal {name} --key <their key>");
        }
        Verdict::Refused(problems) => {
            println!("  the proposal cannot be promoted as it stands:\n{}", problem_lines(&problems));
        }
    }
    Ok(exit::OK)
}

fn with_final_newline(text: &str) -> String {
    if text.ends_with('\n') {
        text.to_owned()
    } else {
        format!("{text}\n")
    }
}

fn subject(message: &str) -> &str {
    message.lines().next().unwrap_or("")
}

/// The `signed-by:` trailers of a proposal's message.
fn trailers(message: &str) -> Vec<&str> {
    message.lines().filter_map(|l| l.strip_prefix("signed-by: ")).collect()
}

/// `stele promote NAME`: lands proposal NAME on the current branch as one commit.
pub fn promote(repo_path: &Path, name: &str, json: bool) -> Result<u8> {
    let repo = LedgerRepo::open(repo_path)?;
    let base = super::base::load_base(&repo)?;
    let proposal: Proposal = repo.read_proposal(name)?;
    let head = base.head.ok_or_else(|| Refused("the ledger has no commit".into()))?;
    for path in proposal.paths() {
        if repo.node_at(proposal.parent, path)? != repo.node_at(head, path)? {
            return Err(Refused(format!(
                "proposal {name} is stale: {path} changed on the ledger branch since the proposal's parent {} (now \
                 at {head}); nothing was promoted. Write the change again from the current ledger (and delete this \
                 proposal: git branch -D {})",
                proposal.parent,
                proposal.branch()
            ))
            .into());
        }
    }
    let what = subject(&proposal.message).to_owned();
    let paths = proposal.paths();
    let (verdict, next) = judge_on(&repo, &base, &proposal.changes, &what)?;
    match verdict {
        Verdict::Complete => {}
        Verdict::Short(needs) => {
            return Err(Refused(format!(
                "proposal {name} ({what}) is still short of signatures; nothing was promoted. Still needed:\n{}\n\
                 co-signers run: stele sign --proposal {name} --key <their key>",
                problem_lines(&needs)
            ))
            .into())
        }
        Verdict::Refused(problems) => {
            return Err(Refused(format!(
                "proposal {name} ({what}) would not verify on the ledger branch; nothing was promoted:\n{}",
                problem_lines(&problems)
            ))
            .into())
        }
    }
    let signers = trailers(&proposal.message);
    let body: String = proposal.message.lines().skip(1).map(|l| format!("{l}\n")).collect();
    let message = format!(
        "promote {what} (signed by {})\n{}proposal: {} ({})\n",
        signers.join(", "),
        with_final_newline(&body),
        proposal.branch(),
        proposal.head
    );
    let commit = repo.commit(&proposal.changes, &message)?;
    if let Some(next) = &next {
        super::base::remember(&repo, commit, next);
    }
    repo.delete_branch(&proposal.branch())?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "proposal": name, "commit": commit.to_string(), "promoted": what,
                "signed_by": signers, "paths": paths,
            })
        );
    } else {
        println!("promoted {name}: {what}");
        println!("  signed by {}", signers.join(", "));
        println!("  commit {commit}; local branch {} deleted", proposal.branch());
        println!("  push it: git push origin HEAD && git push origin --delete {}", proposal.branch());
    }
    Ok(exit::OK)
}
