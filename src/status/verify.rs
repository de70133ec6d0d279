//! Judging observations (SPEC.md §6.5, checks O1-O4): each status file a reader found
//! ([`super::read::Candidate`]) is VERIFIED (signed by an agent key the policy in force at the
//! ledger commit it names authorises for its environment) or UNVERIFIED with the check and the
//! reason. Only verified observations are ever counted as claims; the rest are shown, labelled.
//!
//! Owns: the label of a candidate and which observation stands for an environment. Must not read
//! Git or replay the ledger: the caller hands in the verified history as a [`LedgerIndex`] (built
//! from `crate::replay` under a trust anchor), or says why there is none.

use super::read::Candidate;
use super::EnvStatus;
use crate::replay::CommitReport;
use ledger_format::check::Check;
use ledger_format::observation::verify_observation;
use ledger_format::types::{EnvName, Policy};
use ledger_format::KeyId;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// The reader's verified first-parent history of the ledger branch: per verified commit, its
/// position (oldest first) and the version of the policy in force after it; and those policies.
#[derive(Debug, Default)]
pub struct LedgerIndex {
    commits: HashMap<String, (usize, u64)>,
    policies: BTreeMap<u64, Policy>,
}

impl LedgerIndex {
    /// From the verified steps of a replay, in order, and every policy in force along them by
    /// version. A step without events keeps the policy of the step before.
    pub fn new(reports: &[CommitReport], policies: BTreeMap<u64, Policy>) -> Self {
        let mut commits = HashMap::new();
        let mut version = None;
        for (position, report) in reports.iter().enumerate() {
            if let Some(v) = report.events.iter().map(|e| e.policy_version).max() {
                version = Some(version.map_or(v, |old: u64| old.max(v)));
            }
            if let Some(v) = version {
                commits.insert(report.commit.id.clone(), (position, v));
            }
        }
        Self { commits, policies }
    }

    /// The policy in force after `commit`, when it is a verified commit of the history.
    pub fn policy_at(&self, commit: &str) -> Option<&Policy> {
        let (_, version) = self.commits.get(commit)?;
        self.policies.get(version)
    }

    /// Where `commit` is in the verified history (oldest 0).
    pub fn position(&self, commit: &str) -> Option<usize> {
        self.commits.get(commit).map(|(p, _)| *p)
    }
}

/// How observations are judged: against a verified ledger history, or not at all (why not: no
/// trust root given, a genesis that did not verify).
pub enum Trust<'a> {
    Ledger(&'a LedgerIndex),
    Without(String),
}

/// The verdict on one observation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Label {
    /// Signed by `agent`, which the policy at its ledger commit authorises for its environment.
    Verified { agent: KeyId, agent_display: String },
    /// Not a claim: `check` (O1-O4; none when nothing could be judged) and why.
    Unverified { check: Option<Check>, reason: String },
}

impl Label {
    pub fn is_verified(&self) -> bool {
        matches!(self, Label::Verified { .. })
    }

    /// `VERIFIED by alice-agent (0123456789ab)` or `UNVERIFIED (O2): reason`.
    pub fn describe(&self) -> String {
        match self {
            Label::Verified { agent_display, .. } => format!("VERIFIED by {agent_display}"),
            Label::Unverified { check: Some(c), reason } => format!("UNVERIFIED ({}): {reason}", c.id()),
            Label::Unverified { check: None, reason } => format!("UNVERIFIED: {reason}"),
        }
    }

    /// The short column: `VERIFIED by NAME (KEYID)` or `UNVERIFIED`.
    pub fn column(&self) -> String {
        match self {
            Label::Verified { agent_display, .. } => format!("VERIFIED by {agent_display}"),
            Label::Unverified { .. } => "UNVERIFIED".into(),
        }
    }

    /// `verified`, `agent_key` (`{keyid, name}`), `check` and `unverified_reason`.
    pub fn json(&self) -> Value {
        match self {
            Label::Verified { agent, agent_display } => json!({
                "verified": true,
                "agent_key": {"keyid": agent, "display": agent_display},
                "check": null,
                "unverified_reason": null,
            }),
            Label::Unverified { check, reason } => json!({
                "verified": false,
                "agent_key": null,
                "check": check.map(|c| c.id()),
                "unverified_reason": reason,
            }),
        }
    }
}

/// A candidate and its label.
#[derive(Clone, Debug)]
pub struct Judged {
    pub candidate: Candidate,
    pub label: Label,
}

impl Judged {
    pub fn status(&self) -> Option<&EnvStatus> {
        self.candidate.status()
    }

    /// The report's fields (when it parses), then `verified`, `agent_key`, `check`,
    /// `unverified_reason`, `ref`, `status_commit` and `recorded_at`.
    pub fn json(&self) -> Value {
        let mut out = match self.status() {
            Some(s) => serde_json::to_value(s).expect("a status serializes"),
            None => json!({"env": self.candidate.env}),
        };
        let c = &self.candidate;
        let extra = json!({"ref": c.refname, "status_commit": c.commit, "recorded_at": c.recorded_at});
        for more in [self.label.json(), extra] {
            if let (Some(out), Value::Object(more)) = (out.as_object_mut(), more) {
                out.extend(more);
            }
        }
        out
    }
}

/// Judges `candidate` (checks O1-O4 in order, after the file itself): a file that does not parse
/// or is a bare (unsigned) status is O1; without a verified ledger nothing verifies.
pub fn judge(candidate: Candidate, trust: &Trust) -> Judged {
    let label = label(&candidate, trust);
    Judged { candidate, label }
}

fn label(c: &Candidate, trust: &Trust) -> Label {
    let unverified = |check, reason: String| Label::Unverified { check, reason };
    let file = match &c.file {
        Ok(file) => file,
        Err(reason) => return unverified(Some(Check::O1), format!("not a readable status file: {reason}")),
    };
    if file.signed.is_none() {
        return unverified(
            Some(Check::O1),
            "unsigned: a bare status file, not a signed status document (an agent without a key, or anyone with \
             write access to the ref)"
                .into(),
        );
    }
    let index = match trust {
        Trust::Ledger(index) => index,
        Trust::Without(why) => return unverified(None, why.clone()),
    };
    let env: EnvName = match c.env.parse() {
        Ok(env) => env,
        Err(e) => return unverified(Some(Check::O1), format!("file name: {e}")),
    };
    match verify_observation(&c.bytes, &env, |commit| index.policy_at(commit.as_str())) {
        Ok(v) => Label::Verified { agent: v.agent, agent_display: v.agent_display },
        Err(e) => unverified(Some(e.check), e.reason),
    }
}

/// Per environment, the observation that stands for it: the newest verified one (latest ledger
/// commit in first-parent order, then `updated_at`, then when it was recorded); when none
/// verified, the newest unverified one (which is never a claim).
pub fn newest_per_env<'a>(judged: &'a [Judged], index: Option<&LedgerIndex>) -> BTreeMap<String, &'a Judged> {
    let mut out: BTreeMap<String, &'a Judged> = BTreeMap::new();
    let key = |j: &Judged| {
        let s = j.status();
        (
            j.label.is_verified(),
            s.and_then(|s| index.and_then(|i| i.position(&s.ledger_commit))),
            s.map(|s| s.updated_at),
            j.candidate.recorded_at,
        )
    };
    for j in judged {
        match out.get(&j.candidate.env) {
            Some(best) if key(best) >= key(j) => {}
            _ => {
                out.insert(j.candidate.env.clone(), j);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::healthy;
    use crate::status::{decode, render, render_signed};
    use ledger_format::SecretKey;

    fn candidate(bytes: Vec<u8>, env: &str) -> Candidate {
        Candidate {
            refname: "refs/stele/status/a".into(),
            commit: "1".repeat(40),
            recorded_at: None,
            env: env.into(),
            file: decode(&bytes),
            bytes,
        }
    }

    #[test]
    fn unsigned_unparsable_and_unjudged_observations_are_unverified_with_the_check() {
        let unsigned = judge(candidate(render(&healthy("prod")), "prod"), &Trust::Without("no trust root".into()));
        assert!(
            matches!(&unsigned.label, Label::Unverified { check: Some(Check::O1), reason } if reason.starts_with("unsigned"))
        );
        let junk = judge(candidate(b"{".to_vec(), "prod"), &Trust::Without("x".into()));
        assert!(matches!(&junk.label, Label::Unverified { check: Some(Check::O1), .. }));
        assert_eq!(junk.json()["verified"], false);
        assert_eq!(junk.json()["check"], "O1");
        let signed = render_signed(&healthy("prod"), &SecretKey::from_seed(&[3; 32])).unwrap();
        let without = judge(candidate(signed.clone(), "prod"), &Trust::Without("no trust root given".into()));
        assert_eq!(without.label, Label::Unverified { check: None, reason: "no trust root given".into() });
        // A ledger commit the (empty) verified history does not hold: O4.
        let index = LedgerIndex::default();
        let o4 = judge(candidate(signed, "prod"), &Trust::Ledger(&index));
        assert!(matches!(&o4.label, Label::Unverified { check: Some(Check::O4), .. }), "{:?}", o4.label);
        assert!(o4.label.describe().starts_with("UNVERIFIED (O4): ledger commit cccc"));
    }

    #[test]
    fn the_newest_verified_observation_wins_over_any_unverified_one() {
        let mut newer = healthy("prod");
        newer.updated_at = "2027-01-01T00:00:00Z".parse().unwrap();
        let forged = Judged {
            candidate: candidate(render(&newer), "prod"),
            label: Label::Unverified { check: Some(Check::O1), reason: "unsigned".into() },
        };
        let agent = SecretKey::from_seed(&[3; 32]).public_key().key_id();
        let real = Judged {
            candidate: candidate(render(&healthy("prod")), "prod"),
            label: Label::Verified { agent, agent_display: "a".into() },
        };
        let all = [forged.clone(), real];
        assert!(newest_per_env(&all, None)["prod"].label.is_verified());
        let only_forged = [forged];
        assert!(!newest_per_env(&only_forged, None)["prod"].label.is_verified());
    }
}
