//! `stele audit`: replay the whole first-parent history offline, verify every step, and print either
//! the timeline (a row per promotion, co-signature, rollback, restore, spec and policy change, refused
//! and recovering commit, with who signed each, then the open proposals) or, with `--at`, the answer
//! to "what was each environment's target at that time", beside what the status branch says was
//! observed running then.
//!
//! Owns: gathering what the audit prints (the verified steps from `replay`, the policies in force
//! along the way, merge facts and proposal branches read from Git, the status branch's reports) and
//! printing it. Must not judge anything itself: verdicts come from `ledger_format` through `replay`.
//!
//! `--html FILE` also writes the timeline, with the environments as the status branch reports them
//! now, as one static page (`crate::report`); stdout then gets a short summary instead of the
//! timeline, or the same JSON with `--json`. `--html` and `--at` do not go together (the page is the
//! timeline). `--env` and the trust root flags mean what they mean for the timeline: the page shows
//! that environment only, and says loudly when the trust root was not pinned. The report is written
//! whatever the verdict, a refused genesis included, and the exit code does not change.
//!
//! [`timeline_json`] gives the same JSON to the agent's page, from its own repository and without
//! fetching.
//!
//! Without a trust root (`--trust-root`, `--trust-root-hash`) the audit refuses (exit 3) unless
//! `--trust-genesis-as-found` asks for it; the output then says loudly that the root was not pinned.
//! `--env` naming an environment the policy does not declare is refused too, listing the declared ones.
//!
//! Memory: the replay's reports are kept compactly ([`replay_kept`]) and `--json` is written as it
//! is made (`stream`), so a long history costs its reports and the verified state, not its output
//! (which holds a row per step, twice). `--html` still makes its page whole in memory.
//!
//! Exit codes: 0 when every commit verified, 1 when any commit was refused (the refused and the
//! recovering commits are still listed), 3 for a refused input. An open proposal is information,
//! never a failure.

mod answer;
mod git;
mod proposals;
mod stream;
mod time;
mod timeline;

use super::trust_anchor;
use crate::cli::AuditArgs;
use crate::exit::{self, Refused};
use crate::replay::{replay_with, Outcome};
use crate::report::{render_page, EnvView, PageView};
use crate::source::{is_remote, GitSource, LedgerSource};
use crate::status::{self, Judged, LedgerIndex, Trust};
use anyhow::Result;
use ledger_format::document::{Document, Payload};
use ledger_format::history::SshSigned;
use ledger_format::history::{Action, Event, TrustAnchor};
use ledger_format::types::{EnvName, Policy};
use ledger_format::{KeyId, Timestamp};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use stream::Json;

pub(crate) use git::blob_at;
pub use time::parse_at;

/// The status branch whose reports the audit shows beside the ledger's answers.
const STATUS_BRANCH: &str = "stele/status";

pub fn run(repo: &Path, args: AuditArgs) -> Result<u8> {
    let location = repo.to_str().ok_or_else(|| Refused(format!("{}: not UTF-8", repo.display())))?.to_owned();
    let only_env: Option<EnvName> =
        args.env.as_deref().map(str::parse).transpose().map_err(|e| Refused(format!("--env: {e}")))?;
    let at: Option<Timestamp> = args.at.as_deref().map(|t| parse_at("--at", t)).transpose().map_err(Refused)?;
    let pinned = trust_anchor(&args.trust)?;
    if pinned.is_none() && !args.trust_genesis_as_found {
        return Err(Refused(
            "no trust root: pin the genesis policy with --trust-root KEYID[,KEYID...] or --trust-root-hash HEX \
             (learnt out of band), or pass --trust-genesis-as-found to trust whoever wrote the first commit"
                .into(),
        )
        .into());
    }
    let temp;
    let cache = match (&args.cache_dir, is_remote(&location)) {
        (Some(dir), _) => dir.clone(),
        (None, true) => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
        (None, false) => repo.to_owned(),
    };
    let mut source = GitSource::open(&location, args.branch.as_deref(), &cache)?;
    let head = source.refresh()?;
    // The agents' observations, judged below; a failure to copy them is not a verdict on the ledger.
    if let Err(e) = source.fetch_status_refs(STATUS_BRANCH) {
        eprintln!("warning: the status refs cannot be fetched, so what was observed is not shown: {e}");
    }
    let anchor = pinned.clone().unwrap_or(TrustAnchor::UnpinnedTrustGenesisAsFound);
    let show_progress = std::io::stderr().is_terminal() && !args.json;
    let mut last_shown = 0;
    let outcome = replay_kept(&source, head, &anchor, &mut |done, total| {
        if show_progress && (done * 100 / total.max(1) > last_shown || done == total) {
            last_shown = done * 100 / total.max(1);
            eprint!("\rreplaying {done}/{total} commits");
            if done == total {
                eprintln!();
            }
        }
    })?;
    let shown = if is_remote(&location) { location.clone() } else { shown_location(&source) };
    let replayed = Replayed { source: &source, head, outcome: &outcome, pinned: pinned.is_some(), shown: &shown };
    if outcome.verified.is_none() {
        for r in &outcome.refusals {
            for p in &r.problems {
                eprintln!("REFUSED genesis commit {}: {p}", r.commit.id);
            }
        }
        if outcome.refusals.is_empty() {
            eprintln!("{location}: no commit on the first-parent history holds {}", ledger_format::tree::POLICY_PATH);
        }
        if let Some(file) = &args.html {
            write_html(file, &replayed.unverified_json(), Vec::new())?;
        }
        return Ok(exit::VERIFY_FAILED);
    }
    replayed.with_audit(only_env.as_ref(), |audit| {
        match (at, args.json) {
            (Some(at), true) => {
                Json::Value(answer::json(audit, at, args.at.as_deref())).after(audit.header_json()).print()?
            }
            (Some(at), false) => answer::print(audit, at, args.at.as_deref()),
            (None, json) => {
                let open = proposals::open(source.repository(), audit)?;
                // Made as it is written: the body holds a row per step of the history, twice.
                let body = timeline::json(audit, &open).after(audit.header_json());
                if let Some(file) = &args.html {
                    // The page is made whole in memory (`crate::report`), so is its timeline.
                    write_html(file, &body.to_value(), reported(source.repository(), audit))?;
                }
                match (json, &args.html) {
                    (true, _) => body.print()?,
                    (false, None) => timeline::print(audit, &open),
                    (false, Some(file)) => {
                        audit.print_header();
                        println!("{}", verdict(&outcome));
                        println!("report written to {}", file.display());
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok(if outcome.refusals.is_empty() { exit::OK } else { exit::VERIFY_FAILED })
}

/// What `stele audit --json` prints for the timeline (no `--at`), read from the local repository at
/// `repo` (a work tree or a bare repository such as an agent's fetch cache; nothing is fetched) by
/// replaying its first-parent history from genesis up to `head` under `anchor`, with the open
/// proposals its refs hold and what its `stele/status` branch says was observed. `only` keeps one
/// environment's rows (and the policy's), as `--env` does.
///
/// A history whose genesis is refused still gives a value: `ok: false`, the refusals, and their
/// rows. Errors are what `stele audit` exits non-zero for without a verdict: an unreadable
/// repository, a missing commit, an environment `only` the ledger does not declare.
pub fn timeline_json(repo: &Path, head: git2::Oid, anchor: &TrustAnchor, only: Option<&EnvName>) -> Result<Value> {
    let location = repo.to_str().ok_or_else(|| Refused(format!("{}: not UTF-8", repo.display())))?;
    let source = GitSource::open(location, None, repo)?;
    let outcome = replay_kept(&source, head, anchor, &mut |_, _| {})?;
    let pinned = !matches!(anchor, TrustAnchor::UnpinnedTrustGenesisAsFound);
    let shown = shown_location(&source);
    let replayed = Replayed { source: &source, head, outcome: &outcome, pinned, shown: &shown };
    if outcome.verified.is_none() {
        return Ok(replayed.unverified_json());
    }
    replayed.with_audit(only, |audit| {
        let open = proposals::open(source.repository(), audit)?;
        let value = timeline::json(audit, &open).after(audit.header_json()).to_value();
        Ok(value)
    })
}

/// Replays the history from genesis up to `head`, keeping each verified commit's report as compactly
/// as the audit needs it: the events without spare capacity, and of a commit's SSH signature only
/// that there is one (the key that made it, if any counts, is already in its events). A report is
/// thereby a few hundred bytes, the memory of a long history's audit.
fn replay_kept(
    source: &GitSource,
    head: git2::Oid,
    anchor: &TrustAnchor,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Outcome> {
    let mut reports = Vec::new();
    let mut outcome = replay_with(source, None, head, anchor, progress, &mut |mut report| {
        report.events.shrink_to_fit();
        if let Some(signed) = &mut report.commit.ssh_signature {
            *signed = SshSigned { armored: Vec::new(), signed_payload: Vec::new() };
        }
        reports.push(report);
    })?;
    reports.shrink_to_fit();
    outcome.reports = reports;
    Ok(outcome)
}

/// What to call a local repository: its work tree, or the repository itself when bare.
fn shown_location(source: &GitSource) -> String {
    source.repository().workdir().unwrap_or(source.repository().path()).display().to_string()
}

/// A replayed history, before the audit reads Git for the facts it prints.
struct Replayed<'a> {
    source: &'a GitSource,
    head: git2::Oid,
    outcome: &'a Outcome,
    pinned: bool,
    /// What to call the ledger's location.
    shown: &'a str,
}

impl Replayed<'_> {
    /// Runs `f` on the audit of a history whose genesis verified.
    fn with_audit<R>(&self, only: Option<&EnvName>, f: impl FnOnce(&Audit) -> Result<R>) -> Result<R> {
        let verified = self.outcome.verified.as_ref().expect("callers check that genesis verified");
        let policy = &verified.state.policy.payload;
        if let Some(env) = only {
            if !policy.environments.contains_key(env) {
                let known: Vec<String> = policy.environments.keys().map(ToString::to_string).collect();
                return Err(Refused(format!(
                    "--env {env}: unknown environment; the ledger's policy declares {}",
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                ))
                .into());
            }
        }
        let repo = self.source.repository();
        let git = git::Facts::read(repo, self.head, self.outcome)?;
        let index = LedgerIndex::new(&self.outcome.reports, git.policies.clone());
        let mut observed = BTreeMap::new();
        let mut unverified = BTreeMap::new();
        for env in policy.environments.keys() {
            let (good, bad) = observations(repo, env, &index);
            observed.insert(env.clone(), good);
            unverified.insert(env.clone(), bad);
        }
        f(&Audit {
            location: self.shown,
            branch: self.source.branch(),
            head: self.head,
            pinned: self.pinned,
            policy,
            outcome: self.outcome,
            only,
            observed: &observed,
            unverified: &unverified,
            index: &index,
            git: &git,
        })
    }

    /// The timeline JSON of a history whose genesis was refused: no policy, so no names; the
    /// refusals as rows.
    fn unverified_json(&self) -> Value {
        let refusals: Vec<Value> = self
            .outcome
            .refusals
            .iter()
            .map(|r| {
                json!({"commit": r.commit.id, "time": r.commit.time, "author": r.commit.author,
                       "summary": r.commit.summary, "problems": r.problems})
            })
            .collect();
        let rows: Vec<Value> = refusals
            .iter()
            .map(|r| {
                let mut row = r.clone();
                row["action"] = "refused".into();
                row
            })
            .collect();
        json!({
            "ok": false,
            "ledger": null,
            "source": self.shown,
            "branch": self.source.branch(),
            "head": self.head.to_string(),
            "trust_root_pinned": self.pinned,
            "commits": self.outcome.commits_seen,
            "refusals": refusals,
            "recovered": [],
            "timeline": rows,
            "environments": {},
            "policy": [],
            "proposals": [],
        })
    }
}

/// The last line of the human output.
fn verdict(outcome: &Outcome) -> String {
    if outcome.refusals.is_empty() {
        return "OK: every step verified".into();
    }
    let n = outcome.refusals.len();
    format!(
        "FAILED: {n} refused commit{} (the state follows the last good commit{})",
        if n == 1 { "" } else { "s" },
        if outcome.recovered.is_empty() { "" } else { " and the commits that recovered from it" }
    )
}

/// The environments the audit shows as the status refs report them now (what `stele status`
/// prints): per environment the newest verified observation, else the newest unverified one,
/// labelled; none, with a warning, when the refs cannot be read.
fn reported(repo: &git2::Repository, audit: &Audit) -> Vec<EnvView> {
    let trust = Trust::Ledger(audit.index);
    let judged: Vec<Judged> = match status::read_tips(repo, STATUS_BRANCH) {
        Ok(found) => found.into_iter().map(|c| status::judge(c, &trust)).collect(),
        Err(e) => {
            eprintln!("warning: the status refs cannot be read, so the environments are not shown: {e}");
            return Vec::new();
        }
    };
    status::newest_per_env(&judged, Some(audit.index))
        .into_values()
        .filter(|j| audit.envs().any(|e| e.as_str() == j.candidate.env))
        .filter_map(|j| {
            let status = j.status()?.clone();
            Some(EnvView { status, suspended: None, verified: Some(j.label.clone()) })
        })
        .collect()
}

/// The compact JSON of an unverified observation: where it was, what it claimed, and why it is
/// not counted.
pub(crate) fn unverified_json(j: &Judged) -> Value {
    let c = &j.candidate;
    let s = j.status();
    let mut out = json!({
        "ref": c.refname,
        "status_commit": c.commit,
        "recorded_at": c.recorded_at,
        "phase": s.map(|s| s.phase.to_string()),
        "observed_generation": s.map(|s| s.observed_generation),
        "target_generation": s.map(|s| s.target_generation),
        "running": s.and_then(|s| s.running.clone()),
        "agent": s.map(|s| s.agent.clone()),
    });
    if let (Some(out), Value::Object(label)) = (out.as_object_mut(), j.label.json()) {
        out.extend(label);
    }
    out
}

/// One human line for an unverified observation.
pub(crate) fn unverified_words(j: &Judged) -> String {
    let c = &j.candidate;
    let said = match j.status() {
        Some(s) => format!("{} generation {}/{}", s.phase, s.observed_generation, s.target_generation),
        None => "unreadable".into(),
    };
    let when = c.recorded_at.map_or_else(|| "?".to_owned(), |t| t.to_string());
    format!("{said} recorded {when} on {} ({}): {}", c.refname, short(&c.commit), j.label.describe())
}

/// Writes the audit report: `timeline` (the `--json` body) and `environments` as one HTML page.
fn write_html(file: &Path, timeline: &Value, environments: Vec<EnvView>) -> Result<()> {
    let ledger = timeline["ledger"].as_str().unwrap_or("(unverified)");
    let head = timeline["head"].as_str().unwrap_or("");
    let view = PageView {
        title: format!("Stele audit of ledger {ledger}"),
        generated_at: super::now().to_string(),
        ledger: Some(format!("{ledger} at {}", short(head))),
        agent: None,
        environments,
        timeline: Some(timeline.clone()),
        refresh_seconds: None,
    };
    std::fs::write(file, render_page(&view))
        .map_err(|e| Refused(format!("--html {}: cannot write the report: {e}", file.display())))?;
    Ok(())
}

/// Every observation the status refs hold for `env` (every ref under `refs/stele/status/` and the
/// legacy branch), judged against the verified history (`index`), split into the verified ones and
/// the rest, each oldest first by when it was recorded. Empty (with a warning) when the refs cannot
/// be read.
fn observations(repo: &git2::Repository, env: &EnvName, index: &LedgerIndex) -> (Vec<Judged>, Vec<Judged>) {
    let found = match status::read_history(repo, STATUS_BRANCH, env) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("warning: the status refs cannot be read, so what was observed is not shown: {e}");
            return (Vec::new(), Vec::new());
        }
    };
    let trust = Trust::Ledger(index);
    let mut judged: Vec<Judged> = found.into_iter().map(|c| status::judge(c, &trust)).collect();
    judged.sort_by_key(|j| (j.candidate.recorded_at, j.status().map(|s| s.updated_at)));
    judged.into_iter().partition(|j| j.label.is_verified())
}

/// Everything an audit prints, whichever the form.
pub(crate) struct Audit<'a> {
    pub location: &'a str,
    pub branch: Option<&'a str>,
    pub head: git2::Oid,
    pub pinned: bool,
    /// The policy at the last verified commit.
    pub policy: &'a Policy,
    pub outcome: &'a Outcome,
    pub only: Option<&'a EnvName>,
    /// Per environment, the verified observations of the status refs, oldest first: the only ones
    /// counted as claims.
    pub observed: &'a BTreeMap<EnvName, Vec<Judged>>,
    /// Per environment, every other observation, oldest first, labelled with the check and reason.
    pub unverified: &'a BTreeMap<EnvName, Vec<Judged>>,
    /// The verified history observations were judged against.
    pub index: &'a LedgerIndex,
    pub git: &'a git::Facts,
}

impl Audit<'_> {
    /// The environments shown: every one of the final policy, or `--env`.
    pub fn envs(&self) -> impl Iterator<Item = &EnvName> {
        self.policy.environments.keys().filter(|e| self.only.is_none_or(|o| o == *e))
    }

    /// The first lines of the human output.
    pub fn print_header(&self) {
        println!(
            "ledger {} — {}, head {}, {} commits replayed",
            self.policy.ledger,
            self.location,
            short(&self.head.to_string()),
            self.outcome.commits_seen
        );
        if !self.pinned {
            println!("trust root NOT PINNED: the genesis policy was taken as found (pin it with --trust-root or --trust-root-hash)");
        }
        // Keys as people compare them: name, key id, and the fingerprint `ssh-keygen -lf` prints.
        for (id, key) in &self.policy.keys {
            println!("key {} {} {}", key.name, &id.to_hex()[..12], crate::keys::ssh_fingerprint(&key.public_key));
        }
    }

    /// The SHA256 fingerprint of key `id` (as `ssh-keygen -lf` prints it), from the policy in force at
    /// `version` or any other that names the key.
    pub fn key_fingerprint(&self, version: u64, id: &KeyId) -> Option<String> {
        let policies = &self.git.policies;
        let find =
            |p: &ledger_format::types::Policy| p.keys.get(id).map(|k| crate::keys::ssh_fingerprint(&k.public_key));
        policies.get(&version).and_then(find).or_else(|| policies.values().find_map(find)).or_else(|| find(self.policy))
    }

    /// The fields every JSON form starts with.
    pub fn header_json(&self) -> serde_json::Value {
        let outcome = self.outcome;
        json!({
            "ok": outcome.refusals.is_empty(),
            "ledger": self.policy.ledger,
            "source": self.location,
            "branch": self.branch,
            "head": self.head.to_string(),
            "trust_root_pinned": self.pinned,
            "commits": outcome.commits_seen,
            "refusals": outcome.refusals.iter().map(|r| json!({
                "commit": r.commit.id,
                "time": r.commit.time,
                "author": r.commit.author,
                "summary": r.commit.summary,
                "problems": r.problems,
            })).collect::<Vec<_>>(),
            "recovered": outcome.recovered.iter().map(|(a, b)| json!({"refused": a, "recovered_at": b})).collect::<Vec<_>>(),
        })
    }

    /// A key as a person reads it: its name in the policy in force at `version`, or, for a key that
    /// policy does not list (an entry signed before the key was removed), its name in the latest
    /// earlier policy that did, else in any later one; the key id's first 12 digits when no policy
    /// ever named it.
    pub fn key_name(&self, version: u64, id: &KeyId) -> Option<String> {
        let policies = &self.git.policies;
        policies
            .get(&version)
            .and_then(|p| p.key_name(id))
            .or_else(|| policies.range(..version).rev().find_map(|(_, p)| p.key_name(id)))
            .or_else(|| policies.range(version..).find_map(|(_, p)| p.key_name(id)))
            .or_else(|| self.policy.key_name(id))
            .map(ToString::to_string)
    }

    pub fn key_display(&self, version: u64, id: &KeyId) -> String {
        let hex = id.to_hex();
        match self.key_name(version, id) {
            Some(name) => format!("{name} ({})", &hex[..12]),
            None => hex[..12].to_owned(),
        }
    }

    pub fn keys_display(&self, version: u64, ids: &[KeyId]) -> String {
        if ids.is_empty() {
            return "nobody".into();
        }
        ids.iter().map(|id| self.key_display(version, id)).collect::<Vec<_>>().join(", ")
    }

    pub fn keys_json(&self, version: u64, ids: &[KeyId]) -> Vec<serde_json::Value> {
        ids.iter()
            .map(|id| {
                json!({"keyid": id, "name": self.key_name(version, id), "fingerprint": self.key_fingerprint(version, id)})
            })
            .collect()
    }
}

/// The keys of `policy` (those `among` accepts) whose signatures on `doc` verify, sorted.
pub(crate) fn valid_signers<T: Payload>(
    doc: &Document<T>,
    policy: &Policy,
    among: impl Fn(&KeyId) -> bool,
) -> Vec<KeyId> {
    let mut out: Vec<KeyId> = Vec::new();
    for s in &doc.signatures {
        let Some(info) = policy.keys.get(&s.keyid) else { continue };
        if among(&s.keyid) && !out.contains(&s.keyid) && info.public_key.verify(doc.pae(), &s.sig.0).is_ok() {
            out.push(s.keyid);
        }
    }
    out.sort();
    out
}

pub(crate) fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The word for an action, in the timeline and in JSON.
pub(crate) fn action_word(a: &Action) -> &'static str {
    match a {
        Action::Genesis => "genesis",
        Action::Promote => "promote",
        Action::CoSign => "co-sign",
        Action::Rollback => "rollback",
        Action::Withdraw => "withdraw",
        Action::Restore => "restore",
        Action::PolicyChange => "policy",
        Action::SpecChange => "spec",
        Action::Timestamp => "timestamp",
    }
}

/// How a target took effect, as the `--at` answer says it.
pub(crate) fn how_word(a: &Action) -> &'static str {
    match a {
        Action::Genesis | Action::Promote => "promotion",
        Action::CoSign => "co-signature",
        Action::Rollback => "rollback",
        Action::Restore => "restore",
        Action::Withdraw => "withdrawal",
        Action::PolicyChange => "policy change",
        Action::SpecChange => "spec change",
        Action::Timestamp => "timestamp renewal",
    }
}

/// The events of `env`, each with the report of the commit that made it, in history order.
pub(crate) fn env_events<'a>(
    outcome: &'a Outcome,
    env: &'a EnvName,
) -> impl Iterator<Item = (&'a crate::replay::CommitReport, &'a Event)> + 'a {
    outcome
        .reports
        .iter()
        .flat_map(move |r| r.events.iter().filter(move |e| e.env.as_ref() == Some(env)).map(move |e| (r, e)))
}
