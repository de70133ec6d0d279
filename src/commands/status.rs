//! `stele status`: reads the status branch (written by agents, see `crate::status`) from any clone
//! and prints what runs where, as a table or as JSON.
//!
//! Owns: choosing environments and the output. Must not write anything, and must not treat what the
//! agents report as verified: the status branch is observation, the ledger is the authority.

use crate::cli::StatusArgs;
use crate::exit::{Refused, OK};
use crate::status::{self, EnvStatus, Phase, TargetStatus};
use anyhow::Result;
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
    let Some((commit, all)) = status::read_all(&git, &args.branch)? else {
        if args.json {
            let out = json!({"branch": args.branch, "commit": null, "environments": []});
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!("no status branch {} yet: the agent has not reported", args.branch);
        }
        return Ok(OK);
    };
    let shown: Vec<&EnvStatus> = match &wanted {
        None => all.iter().collect(),
        Some(env) => {
            let found: Vec<&EnvStatus> = all.iter().filter(|s| s.env == *env).collect();
            if found.is_empty() {
                let known: Vec<String> = all.iter().map(|s| s.env.to_string()).collect();
                return Err(Refused(format!(
                    "no status for environment {env} on {} at {commit} (reported: {})",
                    args.branch,
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                ))
                .into());
            }
            found
        }
    };
    if args.json {
        let out = json!({"branch": args.branch, "commit": commit, "environments": shown});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", table(&args.branch, &commit, &shown));
    }
    Ok(OK)
}

/// The human view: a heading, then per environment one line and one indented line per instance.
fn table(branch: &str, commit: &str, shown: &[&EnvStatus]) -> String {
    let mut out = String::new();
    let short = commit.get(..12).unwrap_or(commit);
    let _ = writeln!(out, "status branch {branch} at {short}");
    if shown.is_empty() {
        let _ = writeln!(out, "no environment has reported yet");
        return out;
    }
    let env_width = shown.iter().map(|s| s.env.as_str().len()).max().unwrap_or(0);
    let phase_width = shown.iter().map(|s| s.phase.to_string().len()).max().unwrap_or(0);
    for s in shown {
        let release = s.target.as_ref().map_or_else(|| "no target".to_owned(), describe_release);
        let _ = writeln!(
            out,
            "{:env_width$}  {:phase_width$}  generation {}/{}  {release}  (updated {})",
            s.env.as_str(),
            s.phase.to_string(),
            s.observed_generation,
            s.target_generation,
            s.updated_at,
        );
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
        let _ = writeln!(out, "  agent {} on ledger {} at {}", s.agent, s.ledger, s.ledger_commit);
    }
    out
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

    #[test]
    fn the_table_shows_one_line_per_environment_and_per_instance() {
        let mut degraded = healthy("production");
        degraded.phase = Phase::Degraded;
        degraded.observed_generation = 2;
        degraded.running =
            Some(TargetStatus { version: "1.0.0".parse().unwrap(), seq: 1, blake3: Blake3Digest([1; 32]) });
        degraded.last_error = Some("health gate failed".into());
        degraded.instances[0].drift = Some("stopped by hand".into());
        let staging = healthy("staging");
        let text = table("stele/status", &"d".repeat(40), &[&degraded, &staging]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "status branch stele/status at dddddddddddd");
        assert_eq!(
            lines[1],
            "production  Degraded  generation 2/3  2.0.0 blake3:abababababab…  (updated 2026-01-02T00:00:00Z)"
        );
        assert_eq!(lines[2], "  running: 1.0.0 blake3:010101010101…");
        assert_eq!(lines[3], "  last error: health gate failed");
        assert_eq!(lines[4], "  web-1  web  generation 3  healthy  since 2026-01-01T00:00:00Z  drift: stopped by hand");
        assert!(lines[5].starts_with("  agent host:/state on ledger acme at cccc"));
        assert_eq!(
            lines[6],
            "staging     Healthy   generation 3/3  2.0.0 blake3:abababababab…  (updated 2026-01-02T00:00:00Z)"
        );
    }
}
