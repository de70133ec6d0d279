//! `stele timestamp`: renew the timestamp document (`trust/timestamp.json`, SPEC.md §6.4) or show it.
//!
//! A renewal names HEAD, the commit it is made on (F2: the new commit's first parent), goes up one
//! version, and is valid from now for `--expires` (at most the role's `max_validity_seconds`, F1). It
//! is judged like every other write, as the one first-parent step it makes from HEAD's verified state
//! (`base::judge_commit`: the very commit, read as agents read it), before HEAD moves to it.
//! A timestamp cannot wait for co-signers on a proposal branch: it names the head it lands on, so the
//! given keys must meet the role's threshold now.

use super::base::{cached, judge_commit, load_base, remember};
use super::{key_list, now, parse_when, problem_lines};
use crate::cli::{RenewArgs, TimestampArgs, TimestampCommand, TimestampShowArgs};
use crate::exit::{self, Refused};
use crate::keys::{self, LoadedSecret};
use crate::repo::{Change, LedgerRepo};
use anyhow::Result;
use ledger_format::freshness::{check_current, TIMESTAMP_PATH};
use ledger_format::tree::Expiry;
use ledger_format::types::{CommitId, TimestampDoc, TimestampType};
use ledger_format::{Document, KeyId, Timestamp};
use serde_json::json;

pub fn run(args: TimestampArgs) -> Result<u8> {
    match args.command {
        TimestampCommand::Renew(args) => renew(args),
        TimestampCommand::Show(args) => show(args),
    }
}

/// `3h 59m`, `59m 12s`, `12s`: a duration for people.
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn renew(args: RenewArgs) -> Result<u8> {
    let now = now();
    let repo = LedgerRepo::open(&args.repo.dir())?;
    let base = load_base(&repo)?;
    let policy = &base.state.policy.payload;
    let Some(role) = &policy.timestamp else {
        return Err(Refused(format!(
            "the policy (version {}) has no timestamp role, so no timestamp can be signed; root keys add one: \
             stele policy set-timestamp --pubkey bot.key.pub --max-validity 6h --key root.key",
            policy.version
        ))
        .into());
    };

    // Only keys of the timestamp role sign, and together they must meet its threshold now.
    let signers: Vec<LoadedSecret> = args.keys.iter().map(|k| keys::load_secret(k)).collect::<Result<_, _>>()?;
    for (file, s) in args.keys.iter().zip(&signers) {
        if !role.keys.contains(&s.key_id()) {
            return Err(Refused(format!(
                "{}: key {} is not a key of the timestamp role ({}); nothing was written",
                file.display(),
                s.key_id(),
                key_list(policy, &role.keys)
            ))
            .into());
        }
    }
    let mut ids: Vec<KeyId> = signers.iter().map(LoadedSecret::key_id).collect();
    ids.sort();
    ids.dedup();
    if (ids.len() as u64) < role.threshold {
        return Err(Refused(format!(
            "the timestamp role needs {} signatures and {} key(s) were given; a timestamp names the head it \
             lands on, so it cannot wait for co-signers: pass --key for each of {} of ({}); nothing was written",
            role.threshold,
            ids.len(),
            role.threshold,
            key_list(policy, &role.keys)
        ))
        .into());
    }

    let expires_at = match &args.expires {
        Some(text) => parse_when(text, now)?,
        None => Timestamp::from_unix(now.unix() + role.max_validity_seconds as i64)
            .ok_or_else(|| Refused("the role's max_validity_seconds reaches past year 9999".into()))?,
    };
    let validity = expires_at.unix() - now.unix();
    if validity <= 0 {
        return Err(Refused(format!("--expires {expires_at} is not in the future; nothing was written")).into());
    }
    if validity as u64 > role.max_validity_seconds {
        return Err(Refused(format!(
            "--expires {} ({} from now) is beyond the timestamp role's limit of {} ({} s, policy version {}); \
             nothing was written",
            args.expires.as_deref().unwrap_or_default(),
            human_duration(validity),
            human_duration(role.max_validity_seconds as i64),
            role.max_validity_seconds,
            policy.version
        ))
        .into());
    }

    let head = base.head.ok_or_else(|| Refused("the ledger has no commit yet".into()))?;
    let ledger_commit: CommitId = head.to_string().parse().map_err(Refused)?;
    let version = base.state.timestamp.as_ref().map_or(1, |t| t.payload.version + 1);
    let mut doc = Document::new(TimestampDoc {
        payload_type: TimestampType,
        ledger: policy.ledger.clone(),
        version,
        ledger_commit,
        issued_at: now,
        expires_at,
    });
    for s in &signers {
        doc.sign(&s.key);
    }
    let changes = vec![Change::Write { path: TIMESTAMP_PATH.into(), bytes: doc.to_file_bytes() }];
    let subject = format!("timestamp v{version}: ledger at {}, valid until {expires_at}", &head.to_string()[..12]);

    let signed_by: Vec<String> = ids.iter().map(|id| key_list(policy, &[*id])).collect();
    let trailers: String = signed_by.iter().map(|s| format!("signed-by: {s}\n")).collect();
    let message = format!("{subject}\n\nissued: {now}\nexpires: {expires_at}\n{trailers}");
    // The very commit, with HEAD as its first parent, judged as agents will (F2: the timestamp names
    // that parent); HEAD then moves to it only if no other commit landed meanwhile.
    let commit = repo.prepare_commit(&changes, &message, None)?;
    let next = judge_commit(&repo, &base, commit)?.map_err(|problems| {
        Refused(format!(
            "after this renewal the ledger would not verify, so nothing was written:\n{}",
            problem_lines(&problems)
        ))
    })?;
    repo.land(commit, &changes).map_err(|e| {
        Refused(format!("{e}: the renewal names {head}, so it was not committed; renew again on the new HEAD"))
    })?;
    remember(&repo, commit, &next);

    if args.json {
        println!(
            "{}",
            json!({
                "version": version, "ledger_commit": head.to_string(), "issued_at": now, "expires_at": expires_at,
                "valid_seconds": validity, "commit": commit.to_string(), "signed_by": ids,
            })
        );
    } else {
        println!("timestamp version {version}: the ledger at {head}");
        println!("  valid {} until {expires_at}", human_duration(validity));
        println!("  commit {commit}");
        println!("  signed by {}: threshold {} met", signed_by.join(", "), role.threshold);
        println!("  push it (git push origin HEAD) so agents see it before {expires_at}");
    }
    Ok(exit::OK)
}

fn show(args: TimestampShowArgs) -> Result<u8> {
    let now = now();
    let repo = LedgerRepo::open(&args.repo.dir())?;
    // HEAD's verified state: kept by the last writing command, or HEAD's tree verified now.
    let (policy, timestamp) = match cached(&repo)? {
        Some(base) => (base.state.policy, base.state.timestamp),
        None => {
            let snapshot = repo.rev_snapshot("HEAD")?;
            let tree = crate::commands::verify_tree(&snapshot, Expiry::NotJudged).map_err(|problems| {
                Refused(format!(
                    "the ledger at HEAD does not verify (see `stele verify --rev HEAD`):\n{}",
                    problem_lines(&problems)
                ))
            })?;
            (tree.policy, tree.timestamp)
        }
    };
    let policy = &policy.payload;
    // F3 as an agent without memory would judge it now.
    let verdict =
        check_current(policy, timestamp.as_ref(), None, now).map_err(|e| format!("{}: {}", e.check, e.reason));
    let code = if verdict.is_ok() { exit::OK } else { exit::VERIFY_FAILED };
    let Some(doc) = &timestamp else {
        let why = match (&policy.timestamp, &verdict) {
            (None, _) => "the policy has no timestamp role; agents do not require one".to_owned(),
            (Some(_), Err(reason)) => reason.clone(),
            (Some(_), Ok(())) => unreachable!("F3 requires a timestamp under a timestamp role"),
        };
        if args.json {
            println!(
                "{}",
                json!({"timestamp": null, "role": policy.timestamp, "fresh": verdict.is_ok(), "reason": why})
            );
        } else {
            println!("no timestamp: {why}");
        }
        return Ok(code);
    };
    let t = &doc.payload;
    let left = t.expires_at.unix() - now.unix();
    let signers: Vec<KeyId> = doc.signatures.iter().map(|s| s.keyid).collect();
    if args.json {
        println!(
            "{}",
            json!({
                "version": t.version, "ledger_commit": t.ledger_commit, "issued_at": t.issued_at,
                "expires_at": t.expires_at, "seconds_left": left.max(0), "signed_by": signers,
                "role": policy.timestamp, "fresh": verdict.is_ok(), "reason": verdict.as_ref().err(),
            })
        );
        return Ok(code);
    }
    println!("timestamp version {}", t.version);
    println!("  commit   {}", t.ledger_commit);
    println!("  issued   {}", t.issued_at);
    println!("  expires  {}", t.expires_at);
    if left > 0 {
        println!("  left     {}", human_duration(left));
    } else {
        println!("  left     none: EXPIRED {} ago", human_duration(left));
    }
    println!("  signed by {}", key_list(policy, &signers));
    if let Err(reason) = &verdict {
        println!("  STALE: {reason}; agents hold until `stele timestamp renew`");
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human_duration(12), "12s");
        assert_eq!(human_duration(-72), "1m 12s");
        assert_eq!(human_duration(6 * 3600), "6h 0m");
        assert_eq!(human_duration(2 * 86_400 + 3 * 3600 + 5), "2d 3h");
    }
}
