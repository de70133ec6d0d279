//! The CLI's commands: each reads what it needs through `repo`, `keys` and `image`, asks
//! `ledger_format` for verdicts, and writes through `repo` only after the verdict allows it.
//!
//! Owns: command behaviour and human/JSON output. Must not implement verification rules (those live
//! in `ledger_format`) or touch Git directly (that is `repo`).

mod about;
mod agent;
pub mod audit;
mod base;
mod down;
mod env;
mod image_cmd;
mod init;
mod key;
mod observed;
mod plan;
mod policy;
mod poll;
mod proposal;
mod quickstart;
mod release;
mod rollback;
mod sign;
mod status;
mod suspend;
mod timestamp;
mod verify;

/// For the `agent_config` fuzz target.
pub use agent::check_config_text;

use crate::cli::{Cli, Command};
use crate::exit::Refused;
use crate::repo::LedgerRepo;
use anyhow::Result;
use ledger_format::document::display_key;
use ledger_format::tree::{Expiry, Problem, Snapshot, VerifiedTree};
use ledger_format::types::Policy;
use ledger_format::{KeyId, Timestamp};
use std::path::Path;

/// Runs the parsed command line and returns the exit code.
pub fn run(cli: Cli) -> Result<u8> {
    // Bounded libgit2 caches for every command, set before any repository opens.
    crate::source::tune_libgit2();
    match cli.command {
        Command::Key(cmd) => key::run(cmd),
        Command::Init(args) => init::run(args),
        Command::Policy(args) => policy::run(args.repo.as_deref().unwrap_or(Path::new(".")), args.command),
        Command::Image(cmd) => image_cmd::run(cmd),
        Command::Release(args) => release::run(&args.repo.dir(), args),
        Command::Env(args) => env::run(args.repo.as_deref().unwrap_or(Path::new(".")), args.command),
        Command::Sign(args) => match &args.proposal {
            Some(name) => proposal::sign(&args.repo.dir(), name, &args.key),
            None => sign::run(&args.repo.dir(), args),
        },
        Command::Promote(args) => proposal::promote(&args.repo.dir(), &args.name, args.json),
        Command::Verify(args) => verify::run(&args.repo.dir(), args),
        Command::Rollback(args) => rollback::run(&args.repo.dir(), args),
        Command::Poll(args) => poll::run(&args.repo.dir(), args),
        Command::Audit(args) => audit::run(&args.repo.dir(), args),
        Command::Status(args) => status::run(&args.repo.dir(), args),
        Command::Timestamp(args) => timestamp::run(args),
        Command::Agent(args) => agent::run(args.repo.repo.clone().as_deref(), args),
        Command::Plan(args) => plan::run(args.repo.repo.clone().as_deref(), args),
        Command::Suspend(args) => suspend::suspend(args),
        Command::Resume(args) => suspend::resume(args),
        Command::Down(args) => down::run(args),
        Command::Quickstart(args) => quickstart::run(args),
        Command::Version(args) => about::version(args),
        Command::Completions(args) => about::completions(args),
        Command::Man(args) => about::man(args),
        Command::Lb(args) => crate::lb::run(&args.config),
    }
}

pub use crate::clock::now;

/// Parses `WHEN`: an absolute timestamp, or a duration from `now` such as `90s`, `15m`, `12h`, `30d`.
pub fn parse_when(text: &str, now: Timestamp) -> Result<Timestamp> {
    if let Ok(t) = text.parse::<Timestamp>() {
        return Ok(t);
    }
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    let amount: i64 = digits.parse().unwrap_or(0);
    if scale == 0 || amount == 0 {
        return Err(Refused(format!(
            "{text:?} is neither a time (YYYY-MM-DDTHH:MM:SSZ) nor a duration such as 90s, 15m, 12h or 30d"
        ))
        .into());
    }
    amount
        .checked_mul(scale)
        .and_then(|d| now.unix().checked_add(d))
        .and_then(Timestamp::from_unix)
        .ok_or_else(|| Refused(format!("{text:?} is too far in the future")).into())
}

/// Formats problems one per line, as `stele verify` prints them.
pub fn problem_lines(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
}

/// Reads the work tree (which must match HEAD) and verifies it: the starting point of every command
/// that changes the ledger. Refuses, listing every problem, when the ledger does not verify.
/// Expiry is not judged here: appending a release or a new policy is how an expired one is renewed.
pub fn load_verified(repo: &LedgerRepo) -> Result<(Snapshot, VerifiedTree)> {
    repo.ensure_clean()?;
    let snapshot = repo.worktree_snapshot()?;
    match verify_tree(&snapshot, Expiry::NotJudged) {
        Ok(tree) => Ok((snapshot, tree)),
        Err(problems) => Err(Refused(format!(
            "the ledger at {} does not verify, so nothing was changed; fix these first (see `stele verify`):\n{}",
            repo.root().display(),
            problem_lines(&problems)
        ))
        .into()),
    }
}

/// Tree verification (SPEC.md §7.2) with every entry signature verified on all cores first. Signatures
/// verified once in this process are not verified again: a writing command verifies the tree before its
/// change and the tree after it, which differ by a few documents. The verdict is `verify_snapshot_with`'s:
/// anything not verified ahead is verified where the verifier meets it.
pub fn verify_tree(snapshot: &Snapshot, expiry: Expiry) -> Result<VerifiedTree, Vec<Problem>> {
    static SEEN: std::sync::Mutex<Option<crate::replay::Preverified>> = std::sync::Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let sigs = seen.get_or_insert_with(crate::replay::Preverified::default);
    sigs.add(None, snapshot.nodes.iter().map(|(path, node)| (path.as_slice(), node)));
    ledger_format::tree::verify_snapshot_using(snapshot, expiry, &*sigs)
}

/// The trust anchor from the command line; `None` when nothing is pinned.
pub fn trust_anchor(args: &crate::cli::TrustArgs) -> Result<Option<ledger_format::history::TrustAnchor>> {
    use ledger_format::history::TrustAnchor;
    if let Some(hex) = &args.trust_root_hash {
        return Ok(Some(TrustAnchor::PolicyHash(hex.parse().map_err(Refused)?)));
    }
    if args.trust_root.is_empty() {
        return Ok(None);
    }
    let keys = args.trust_root.iter().map(|k| k.parse::<KeyId>().map_err(Refused)).collect::<Result<Vec<_>, _>>()?;
    if args.trust_threshold < 1 || args.trust_threshold > keys.len() as u64 {
        return Err(
            Refused(format!("--trust-threshold {} is not within 1..={}", args.trust_threshold, keys.len())).into()
        );
    }
    Ok(Some(TrustAnchor::RootKeys { keys, threshold: args.trust_threshold }))
}

/// `name (keyid)` for each key, comma-separated.
pub fn key_list(policy: &Policy, ids: &[KeyId]) -> String {
    if ids.is_empty() {
        return "nobody".into();
    }
    ids.iter().map(|id| display_key(policy, id)).collect::<Vec<_>>().join(", ")
}

/// Human-readable byte count.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_accepts_times_and_durations() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(parse_when("2027-01-01T00:00:00Z", now).unwrap().to_string(), "2027-01-01T00:00:00Z");
        assert_eq!(parse_when("1d", now).unwrap().to_string(), "2026-01-02T00:00:00Z");
        assert_eq!(parse_when("90s", now).unwrap().unix(), now.unix() + 90);
        for bad in ["", "d", "0d", "5w", "1.5h", "-3d"] {
            assert!(parse_when(bad, now).is_err(), "{bad}");
        }
    }
}
