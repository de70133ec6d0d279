//! `stele status`: reads every status ref (written by agents, see `crate::status`: each ref under
//! `refs/stele/status/` and the legacy branch) from any clone and prints what runs where, as a table
//! or as JSON, each observation labelled VERIFIED (by which agent) or UNVERIFIED (with the check and
//! the reason).
//!
//! Owns: choosing environments and the output. Must not write anything, and must not present an
//! unverified observation as a claim: per environment it shows the newest verified observation, and
//! only when none verified the newest unverified one, labelled. Observations are verified against
//! the ledger branch replayed from the trust root given (`--trust-root`, `--trust-root-hash`,
//! `--trust-genesis-as-found`, as for `stele audit`); without one, every observation is UNVERIFIED
//! ("no trust root given") and the exit code is unchanged.

use super::observed::{judging, Judging};
use super::trust_anchor;
use crate::cli::StatusArgs;
use crate::exit::{Refused, OK};
use crate::status::{self, EnvStatus, Judged, Phase, TargetStatus, Trust};
use anyhow::Result;
use ledger_format::history::TrustAnchor;
use ledger_format::types::EnvName;
use serde_json::json;
use std::fmt::Write as _;
use std::path::Path;

pub fn run(repo: &Path, args: StatusArgs) -> Result<u8> {
    let git = status::open_repository(repo)
        .map_err(|e| Refused(format!("{}: not a Git repository ({e})", repo.display())))?;
    let wanted = args
        .env
        .as_deref()
        .map(|name| name.parse::<EnvName>().map_err(|e| Refused(format!("--env: {e}"))))
        .transpose()?;
    let anchor = match trust_anchor(&args.trust)? {
        Some(a) => Some(a),
        None if args.trust_genesis_as_found => Some(TrustAnchor::UnpinnedTrustGenesisAsFound),
        None => None,
    };
    let refs = status::status_refs(&git, &args.branch)?;
    let legacy = refs.iter().find(|(r, _)| !r.starts_with(status::STATUS_REFS)).map(|(_, id)| id.to_string());
    if refs.is_empty() {
        if args.json {
            let out = json!({"branch": args.branch, "commit": null, "environments": []});
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!(
                "no status branch {} yet: the agent has not reported (no refs under {} either)",
                args.branch,
                status::STATUS_REFS
            );
        }
        return Ok(OK);
    }
    let judging = judging(repo, args.ledger_branch.as_deref(), anchor.as_ref());
    let trust = match &judging.index {
        Some(index) => Trust::Ledger(index),
        None => Trust::Without(judging.summary.clone()),
    };
    let judged: Vec<Judged> =
        status::read_tips(&git, &args.branch)?.into_iter().map(|c| status::judge(c, &trust)).collect();
    let newest = status::newest_per_env(&judged, judging.index.as_ref());
    let shown: Vec<&Judged> = match &wanted {
        None => newest.values().copied().collect(),
        Some(env) => match newest.get(env.as_str()) {
            Some(j) => vec![*j],
            None => {
                let known: Vec<&str> = newest.keys().map(String::as_str).collect();
                let places: Vec<&str> = refs.iter().map(|(r, _)| r.as_str()).collect();
                return Err(Refused(format!(
                    "no status for environment {env} on {} (reported: {})",
                    places.join(", "),
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                ))
                .into());
            }
        },
    };
    if args.json {
        let out = json!({
            "branch": args.branch,
            "commit": legacy,
            "refs": refs.iter().map(|(r, id)| json!({"ref": r, "commit": id.to_string()})).collect::<Vec<_>>(),
            "verification": {"verifying": judging.index.is_some(), "summary": judging.summary},
            "environments": shown.iter().map(|j| j.json()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", table(&heading(&args.branch, &refs, &judging), &shown));
    }
    Ok(OK)
}

/// The heading: one line per status ref read, then what the observations were verified against,
/// or why nothing is verified.
fn heading(branch: &str, refs: &[(String, git2::Oid)], judging: &Judging) -> Vec<String> {
    let mut out: Vec<String> = refs
        .iter()
        .map(|(r, id)| {
            let short = &id.to_string()[..12];
            if r.starts_with(status::STATUS_REFS) {
                format!("status ref {r} at {short}")
            } else {
                format!("status branch {branch} at {short}")
            }
        })
        .collect();
    out.push(match judging.index {
        Some(_) => format!("observations {}", judging.summary),
        None => format!("UNVERIFIED: {}", judging.summary),
    });
    out
}

/// The human view: the heading, then per environment one line (with the VERIFIED / UNVERIFIED
/// column), the reason when unverified, and one indented line per instance.
fn table(heading: &[String], shown: &[&Judged]) -> String {
    let mut out = String::new();
    for line in heading {
        let _ = writeln!(out, "{line}");
    }
    if shown.is_empty() {
        let _ = writeln!(out, "no environment has reported yet");
        return out;
    }
    let env_width = shown.iter().map(|j| j.candidate.env.len()).max().unwrap_or(0);
    let label_width = shown.iter().map(|j| j.label.column().chars().count()).max().unwrap_or(0);
    let phase_width = shown.iter().filter_map(|j| j.status()).map(|s| s.phase.to_string().len()).max().unwrap_or(0);
    for j in shown {
        let label = j.label.column();
        let Some(s) = j.status() else {
            let _ = writeln!(out, "{:env_width$}  {label:label_width$}  unreadable", j.candidate.env);
            let _ = writeln!(out, "  {}", unverified_line(j));
            let _ = writeln!(out, "  ref {} at {}", j.candidate.refname, &j.candidate.commit[..12]);
            continue;
        };
        let release = s.target.as_ref().map_or_else(|| "no target".to_owned(), describe_release);
        let _ = writeln!(
            out,
            "{:env_width$}  {label:label_width$}  {:phase_width$}  generation {}/{}  {release}  (updated {})",
            s.env.as_str(),
            s.phase.to_string(),
            s.observed_generation,
            s.target_generation,
            s.updated_at,
        );
        if !j.label.is_verified() {
            let _ = writeln!(out, "  {}", unverified_line(j));
        }
        env_lines(&mut out, s);
        let _ = writeln!(
            out,
            "  agent {} on ledger {} at {} (ref {})",
            s.agent, s.ledger, s.ledger_commit, j.candidate.refname
        );
    }
    out
}

/// `unverified (O2): reason`, or `unverified: reason` when nothing was judged.
fn unverified_line(j: &Judged) -> String {
    match &j.label {
        status::Label::Unverified { check: Some(c), reason } => format!("unverified ({}): {reason}", c.id()),
        status::Label::Unverified { check: None, reason } => format!("unverified: {reason}"),
        status::Label::Verified { .. } => String::new(),
    }
}

/// The lines of one report under its heading line: running release, message, errors, instances.
fn env_lines(out: &mut String, s: &EnvStatus) {
    // The release the instances actually run is worth a line only when it is not the target,
    // which is what a Degraded rollout or one still in progress looks like.
    if s.running.is_some() && s.running != s.target {
        let running = s.running.as_ref().map_or_else(String::new, describe_release);
        let _ = writeln!(out, "  running: {running}");
    }
    if !s.message.is_empty() {
        let _ = writeln!(out, "  message: {}", s.message);
    }
    if let Some(error) = &s.last_error {
        let _ = writeln!(out, "  last error: {error}");
    }
    if s.phase == Phase::Stalled && s.last_error.is_none() && s.message.is_empty() {
        let _ = writeln!(out, "  stalled: the agent needs a human to act (see its log)");
    }
    let id_width = s.instances.iter().map(|i| i.id.len()).max().unwrap_or(0);
    let group_width = s.instances.iter().map(|i| i.group.as_str().len()).max().unwrap_or(0);
    for i in &s.instances {
        let drift = i.drift.as_deref().map_or_else(String::new, |d| format!("  drift: {d}"));
        let _ = writeln!(
            out,
            "  {:id_width$}  {:group_width$}  generation {}  {}  since {}{drift}",
            i.id,
            i.group.as_str(),
            i.generation,
            i.health,
            i.since,
        );
    }
}

/// `2.0.0 blake3:0123456789ab…`: the version and enough of the digest to tell releases apart.
fn describe_release(t: &TargetStatus) -> String {
    let hex = t.blake3.to_hex();
    format!("{} blake3:{}…", t.version, &hex[..12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::healthy;
    use ledger_format::Blake3Digest;

    fn judged(s: EnvStatus, label: status::Label) -> Judged {
        let bytes = status::render(&s);
        let candidate = status::Candidate {
            refname: "refs/heads/stele/status".into(),
            commit: "e".repeat(40),
            recorded_at: None,
            env: s.env.to_string(),
            file: status::decode(&bytes),
            bytes,
        };
        Judged { candidate, label }
    }

    #[test]
    fn the_table_shows_one_line_per_environment_and_per_instance_with_the_verdict() {
        let mut degraded = healthy("production");
        degraded.phase = Phase::Degraded;
        degraded.observed_generation = 2;
        degraded.running =
            Some(TargetStatus { version: "1.0.0".parse().unwrap(), seq: 1, blake3: Blake3Digest([1; 32]) });
        degraded.last_error = Some("health gate failed".into());
        degraded.instances[0].drift = Some("stopped by hand".into());
        let unsigned =
            status::Label::Unverified { check: Some(ledger_format::check::Check::O1), reason: "unsigned".into() };
        let agent = ledger_format::SecretKey::from_seed(&[1; 32]).public_key().key_id();
        let verified = status::Label::Verified { agent, agent_display: "stg (0123456789ab)".into() };
        let (a, b) = (judged(degraded, unsigned), judged(healthy("staging"), verified));
        let text = table(&["status branch stele/status at dddddddddddd".into()], &[&a, &b]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "status branch stele/status at dddddddddddd");
        assert_eq!(
            lines[1],
            "production  UNVERIFIED                      Degraded  generation 2/3  2.0.0 blake3:abababababab…  (updated 2026-01-02T00:00:00Z)"
        );
        assert_eq!(lines[2], "  unverified (O1): unsigned");
        assert_eq!(lines[3], "  running: 1.0.0 blake3:010101010101…");
        assert_eq!(lines[4], "  last error: health gate failed");
        assert_eq!(lines[5], "  web-1  web  generation 3  healthy  since 2026-01-01T00:00:00Z  drift: stopped by hand");
        assert!(lines[6].starts_with("  agent host:/state on ledger acme at cccc"), "{}", lines[6]);
        assert!(lines[6].ends_with(" (ref refs/heads/stele/status)"), "{}", lines[6]);
        assert_eq!(
            lines[7],
            "staging     VERIFIED by stg (0123456789ab)  Healthy   generation 3/3  2.0.0 blake3:abababababab…  (updated 2026-01-02T00:00:00Z)"
        );
    }
}
