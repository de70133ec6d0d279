//! Revision 4 vectors (SPEC.md §6.1 agents, §6.4 timestamp, §6.5 observations, §8.9, §8.10): tree
//! cases for P8 and F1, and two small vector kinds of their own, each a verdict stated by hand:
//! `observations/*.json` (a status document judged against a policy, checks O1-O4) and
//! `freshness/*.json` (the timestamp rule for whoever acts, check F3).
//!
//! A child module of `vectors.rs`, whose builders it uses. Cases are tables of tuples, spelled inline.

#![allow(clippy::type_complexity)]

use super::{
    build, invalid, invalid_signed, lit, policy, role, sign_value, signed, standard, valid, Cases, EnvSetup, Keys,
    TestKey, LEDGER, NOW,
};
use ledger_format::check::Check;
use ledger_format::document::{DocKind, Document};
use ledger_format::freshness::TIMESTAMP_PATH;
use ledger_format::tree::POLICY_PATH;
use ledger_format::types::{AgentGrant, Observation, Policy, StatusType, TimestampDoc, TimestampRole, TimestampType};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The commit every timestamp and observation of these vectors names (a label in commit-id form).
pub const COMMIT_A: &str = "1111111111111111111111111111111111111111";
/// A second verified commit.
pub const COMMIT_B: &str = "2222222222222222222222222222222222222222";
/// A commit the verified history does not hold.
pub const COMMIT_X: &str = "9999999999999999999999999999999999999999";

/// The policy of the revision 4 cases: `prod` and `staging` (alice, 1 of 1); the agent key may report
/// on prod; the timestamp role is bot (1 of 1), valid up to a day.
pub fn rev4_policy(k: &Keys) -> Policy {
    let mut p =
        policy(k, &[&k.alice, &k.agent, &k.bot], &[("prod", role(&[&k.alice], 1)), ("staging", role(&[&k.alice], 1))]);
    p.agents = BTreeMap::from([(k.agent.id(), AgentGrant { environments: vec![lit("prod")] })]);
    p.timestamp = Some(TimestampRole { keys: vec![k.bot.id()], threshold: 1, max_validity_seconds: 86_400 });
    p
}

/// A timestamp of the ledger, version `version`, valid from `issued` for `seconds`.
pub fn timestamp(version: u64, commit: &str, issued: &str, seconds: i64) -> TimestampDoc {
    let issued_at: ledger_format::Timestamp = lit(issued);
    TimestampDoc {
        payload_type: TimestampType,
        ledger: lit(LEDGER),
        version,
        ledger_commit: lit(commit),
        issued_at,
        expires_at: ledger_format::Timestamp::from_unix(issued_at.unix() + seconds).expect("in range"),
    }
}

fn rev4_tree(k: &Keys, p: Policy) -> super::Tree {
    let envs = [
        EnvSetup { name: "prod", signers: &[&k.alice], entries: 1 },
        EnvSetup { name: "staging", signers: &[&k.alice], entries: 0 },
    ];
    build(k, p, &envs).0
}

pub(super) fn tree_cases(k: &Keys, cases: &mut Cases) {
    let mut tree = rev4_tree(k, rev4_policy(k));
    tree.put(TIMESTAMP_PATH, &signed(timestamp(3, COMMIT_A, "2026-05-31T12:00:00Z", 86_400), &[&k.bot]));
    cases.add(
        "valid/agents-and-timestamp",
        "Revision 4: the policy declares an agent key for prod and a timestamp role (bot, 1 of 1, up to a \
         day); trust/timestamp.json is signed by bot. Tree verification judges neither the timestamp's expiry \
         nor the commit it names (those are F3 and F2).",
        tree.clone(),
        valid(&tree),
    );

    // P8: agent keys hold no other role, report on declared environments, are listed in keys.
    let p8: Vec<(&str, &str, Box<dyn Fn(&mut Policy)>)> = vec![
        (
            "p8-agent-key-in-a-role",
            "The agent key is alice's, who signs prod's releases: an agent never holds a release key.",
            Box::new(|p: &mut Policy| {
                let grant = p.agents.remove(&k.agent.id()).expect("the agent is declared");
                p.agents.insert(k.alice.id(), grant);
            }),
        ),
        (
            "p8-agent-for-an-undeclared-environment",
            "The agent key reports on qa, which the policy does not declare.",
            Box::new(|p: &mut Policy| {
                p.agents.insert(k.agent.id(), AgentGrant { environments: vec![lit("qa")] });
            }),
        ),
        (
            "p8-agent-key-not-listed",
            "agents names mallory's key id, which keys does not define.",
            Box::new(|p: &mut Policy| {
                p.agents.insert(k.mallory.id(), AgentGrant { environments: vec![lit("prod")] });
            }),
        ),
        (
            "p8-agent-lists-no-environment",
            "The agent key's environment list is empty.",
            Box::new(|p: &mut Policy| {
                p.agents.insert(k.agent.id(), AgentGrant { environments: vec![] });
            }),
        ),
        (
            "p8-timestamp-validity-out-of-range",
            "The timestamp role allows a validity of 30 seconds, below the 60 allowed.",
            Box::new(|p: &mut Policy| {
                p.timestamp.as_mut().expect("a timestamp role").max_validity_seconds = 30;
            }),
        ),
    ];
    for (name, description, edit) in p8 {
        let mut p = rev4_policy(k);
        edit(&mut p);
        let mut tree = rev4_tree(k, rev4_policy(k));
        tree.put(POLICY_PATH, &signed(p, &[&k.root]));
        cases.add(
            &format!("invalid/{name}"),
            &format!("{description} (P8)"),
            tree,
            invalid(&[(POLICY_PATH, Check::P8)]),
        );
    }

    let mut p = rev4_policy(k);
    p.timestamp.as_mut().expect("a timestamp role").threshold = 2;
    let mut tree = rev4_tree(k, rev4_policy(k));
    tree.put(POLICY_PATH, &signed(p, &[&k.root]));
    cases.add(
        "invalid/p2-timestamp-threshold-above-key-count",
        "The timestamp role needs 2 signatures of its 1 key (P2: the timestamp role is a role).",
        tree,
        invalid(&[(POLICY_PATH, Check::P2)]),
    );

    let mut tree = rev4_tree(k, rev4_policy(k));
    let mut empty_agents = serde_json::to_value(rev4_policy(k)).expect("a policy serializes");
    empty_agents["agents"] = json!({});
    tree.put_bytes(POLICY_PATH, sign_value(DocKind::Policy, &empty_agents, &[&k.root]));
    cases.add(
        "invalid/d5-empty-agents",
        "agents is an empty object: absent is the one spelling of no agents (D5).",
        tree,
        invalid(&[(POLICY_PATH, Check::D5)]),
    );

    // F1: the timestamp is signed by the timestamp role, within its validity.
    let (mut tree, _) = standard(k);
    tree.put(TIMESTAMP_PATH, &signed(timestamp(1, COMMIT_A, "2026-05-31T12:00:00Z", 3600), &[&k.bot]));
    cases.add(
        "invalid/f1-timestamp-without-a-timestamp-role",
        "trust/timestamp.json exists, but the policy has no timestamp role (F1).",
        tree,
        invalid(&[(TIMESTAMP_PATH, Check::F1)]),
    );
    let f1: [(&str, &str, TimestampDoc, &[&TestKey], Option<Check>); 4] = [
        (
            "f1-timestamp-signed-by-a-foreign-key",
            "trust/timestamp.json is signed by bot and by mallory, who is not in the timestamp role (F1, S2).",
            timestamp(1, COMMIT_A, "2026-05-31T12:00:00Z", 3600),
            &[&k.bot, &k.mallory],
            Some(Check::S2),
        ),
        (
            "f1-timestamp-signed-by-a-release-key",
            "trust/timestamp.json is signed by alice (prod's release key) only, 0 of bot's 1 (F1, S2).",
            timestamp(1, COMMIT_A, "2026-05-31T12:00:00Z", 3600),
            &[&k.alice],
            Some(Check::S2),
        ),
        (
            "f1-timestamp-unsigned",
            "trust/timestamp.json carries no signature (F1, S3).",
            timestamp(1, COMMIT_A, "2026-05-31T12:00:00Z", 3600),
            &[],
            Some(Check::S3),
        ),
        (
            "f1-timestamp-valid-too-long",
            "The timestamp claims 2 days of validity; the role allows 1 (F1).",
            timestamp(1, COMMIT_A, "2026-05-31T12:00:00Z", 2 * 86_400),
            &[&k.bot],
            None,
        ),
    ];
    for (name, description, t, signers, cause) in f1 {
        let mut tree = rev4_tree(k, rev4_policy(k));
        tree.put(TIMESTAMP_PATH, &signed(t, signers));
        let expected = match cause {
            Some(cause) => invalid_signed(TIMESTAMP_PATH, Check::F1, cause),
            None => invalid(&[(TIMESTAMP_PATH, Check::F1)]),
        };
        cases.add(&format!("invalid/{name}"), description, tree, expected);
    }
    let mut other = timestamp(1, COMMIT_A, "2026-05-31T12:00:00Z", 3600);
    other.ledger = lit(super::OTHER_LEDGER);
    let mut tree = rev4_tree(k, rev4_policy(k));
    tree.put(TIMESTAMP_PATH, &signed(other, &[&k.bot]));
    cases.add(
        "invalid/d6-timestamp-of-another-ledger",
        "trust/timestamp.json names ledger acme-billing (D6): a timestamp cannot be replayed across ledgers.",
        tree,
        invalid(&[(TIMESTAMP_PATH, Check::D6)]),
    );
}

// ---------------------------------------------------------------------------------------------------
// Observation vectors.

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservationVector {
    pub description: String,
    /// The policy in force after every commit in `verified_commits` (file text).
    pub policy: String,
    /// The commits of the reader's verified first-parent history.
    pub verified_commits: Vec<String>,
    /// The environment of the file's path, `status/<env>.json`.
    pub env: String,
    /// The status file (text).
    pub file: String,
    pub expected: ObservationVerdict,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservationVerdict {
    pub verified: bool,
    /// For a verified observation: the agent key id that signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// For an unverified one: the check that fails (O1-O4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

pub struct ObservationCase {
    pub name: String,
    pub vector: ObservationVector,
}

fn report(env: &str, commit: &str) -> serde_json::Map<String, Value> {
    let Value::Object(map) = json!({
        "format": 1, "env": env, "ledger": LEDGER, "ledger_commit": commit,
        "phase": "Healthy", "target_generation": 2, "observed_generation": 2,
        "message": "", "instances": [], "agent": "host:/var/lib/stele", "updated_at": "2026-05-31T12:00:00Z"
    }) else {
        unreachable!()
    };
    map
}

fn observation(env: &str, commit: &str) -> Observation {
    Observation {
        payload_type: StatusType,
        ledger: lit(LEDGER),
        env: lit(env),
        ledger_commit: lit(commit),
        report: report(env, commit),
    }
}

pub fn observation_cases(k: &Keys) -> Vec<ObservationCase> {
    let policy_text = String::from_utf8(signed(rev4_policy(k), &[&k.root]).to_file_bytes()).expect("UTF-8");
    let text = |doc: Document<Observation>| String::from_utf8(doc.to_file_bytes()).expect("UTF-8");
    let ok = |agent: &TestKey| ObservationVerdict { verified: true, agent: Some(agent.id().to_hex()), check: None };
    let no = |check: Check| ObservationVerdict { verified: false, agent: None, check: Some(check.id().to_owned()) };
    let mut tampered = signed(observation("prod", COMMIT_B), &[&k.agent]);
    tampered.payload.report.insert("phase".into(), json!("Degraded"));
    let tampered = {
        // The payload changed after signing: the signature no longer covers it.
        let sigs = tampered.signatures.clone();
        let mut doc = Document::new(tampered.payload);
        doc.signatures = sigs;
        doc
    };
    let unsigned_legacy = serde_json::to_string_pretty(&Value::Object(report("prod", COMMIT_A))).expect("JSON") + "\n";
    let rows: Vec<(&str, &str, &str, String, ObservationVerdict)> = vec![
        (
            "valid",
            "prod's status at commit A, signed by the agent key the policy authorises for prod.",
            "prod",
            text(signed(observation("prod", COMMIT_A), &[&k.agent])),
            ok(&k.agent),
        ),
        (
            "o1-unsigned-status",
            "A bare status object, as agents without a key and before revision 4 wrote it: not a document (O1).",
            "prod",
            unsigned_legacy,
            no(Check::O1),
        ),
        (
            "o1-filed-under-another-environment",
            "prod's signed status filed as status/staging.json (O1).",
            "staging",
            text(signed(observation("prod", COMMIT_A), &[&k.agent])),
            no(Check::O1),
        ),
        (
            "o1-two-signatures",
            "Signed by the agent key and by alice: an observation carries exactly one signature (O1).",
            "prod",
            text(signed(observation("prod", COMMIT_A), &[&k.agent, &k.alice])),
            no(Check::O1),
        ),
        (
            "o2-unknown-key",
            "Signed by mallory, whom the policy does not list (O2).",
            "prod",
            text(signed(observation("prod", COMMIT_A), &[&k.mallory])),
            no(Check::O2),
        ),
        (
            "o2-release-key-is-not-an-agent",
            "Signed by alice, a release key of prod but not an agent key (O2).",
            "prod",
            text(signed(observation("prod", COMMIT_A), &[&k.alice])),
            no(Check::O2),
        ),
        (
            "o2-report-changed-after-signing",
            "The agent's signature, over a report whose phase was changed from Healthy to Degraded afterwards (O2).",
            "prod",
            text(tampered),
            no(Check::O2),
        ),
        (
            "o3-agent-of-another-environment",
            "staging's status signed by the agent key, which may report on prod only (O3).",
            "staging",
            text(signed(observation("staging", COMMIT_A), &[&k.agent])),
            no(Check::O3),
        ),
        (
            "o4-commit-not-in-history",
            "Signed by the prod agent, naming a ledger commit the verified history does not hold (O4).",
            "prod",
            text(signed(observation("prod", COMMIT_X), &[&k.agent])),
            no(Check::O4),
        ),
    ];
    rows.into_iter()
        .map(|(name, description, env, file, expected)| ObservationCase {
            name: format!("observations/{name}"),
            vector: ObservationVector {
                description: description.to_owned(),
                policy: policy_text.clone(),
                verified_commits: vec![COMMIT_A.to_owned(), COMMIT_B.to_owned()],
                env: env.to_owned(),
                file,
                expected,
            },
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Freshness vectors.

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreshnessVector {
    pub description: String,
    /// The policy in force at the verified head (file text).
    pub policy: String,
    /// The verified head's `trust/timestamp.json` (file text), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// The highest timestamp version the verifier accepted before, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<u64>,
    pub now: String,
    pub expected: FreshnessVerdict,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreshnessVerdict {
    /// Whether whoever acts may act on the head.
    pub current: bool,
    /// `F3` when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

pub struct FreshnessCase {
    pub name: String,
    pub vector: FreshnessVector,
}

pub fn freshness_cases(k: &Keys) -> Vec<FreshnessCase> {
    let with_role = String::from_utf8(signed(rev4_policy(k), &[&k.root]).to_file_bytes()).expect("UTF-8");
    let mut without = rev4_policy(k);
    without.timestamp = None;
    let without_role = String::from_utf8(signed(without, &[&k.root]).to_file_bytes()).expect("UTF-8");
    let ts = |version: u64, issued: &str, seconds: i64| {
        Some(
            String::from_utf8(signed(timestamp(version, COMMIT_A, issued, seconds), &[&k.bot]).to_file_bytes())
                .expect("UTF-8"),
        )
    };
    let current = FreshnessVerdict { current: true, check: None };
    let stale = FreshnessVerdict { current: false, check: Some(Check::F3.id().to_owned()) };
    let rows: Vec<(&str, &str, &String, Option<String>, Option<u64>, FreshnessVerdict)> = vec![
        (
            "current",
            "Version 5, issued 12 hours before now, valid for a day; the verifier saw version 4.",
            &with_role,
            ts(5, "2026-05-31T12:00:00Z", 86_400),
            Some(4),
            current.clone(),
        ),
        (
            "same-version-as-seen",
            "The version the verifier saw before, still valid: the head did not move, which is not a replay.",
            &with_role,
            ts(5, "2026-05-31T12:00:00Z", 86_400),
            Some(5),
            current.clone(),
        ),
        (
            "no-timestamp-role",
            "The policy has no timestamp role: there is nothing to judge.",
            &without_role,
            None,
            None,
            current,
        ),
        (
            "missing",
            "The policy has a timestamp role and the head has no timestamp (F3).",
            &with_role,
            None,
            None,
            stale.clone(),
        ),
        (
            "expired",
            "The timestamp expired 12 hours before now: a mirror that stopped updating, or a frozen ledger (F3).",
            &with_role,
            ts(5, "2026-05-30T12:00:00Z", 43_200),
            None,
            stale.clone(),
        ),
        (
            "expires-at-now",
            "expires_at equals now: expired, as every expiry in this format (F3).",
            &with_role,
            ts(5, "2026-05-31T00:00:00Z", 86_400),
            None,
            stale.clone(),
        ),
        (
            "older-than-seen",
            "A valid timestamp of version 4 after the verifier accepted version 5: a replayed ledger (F3).",
            &with_role,
            ts(4, "2026-05-31T12:00:00Z", 86_400),
            Some(5),
            stale.clone(),
        ),
        (
            "issued-in-the-future",
            "Issued 10 minutes after now, beyond the 300 seconds of clock skew allowed (F3).",
            &with_role,
            ts(5, "2026-06-01T00:10:00Z", 3600),
            None,
            stale,
        ),
    ];
    rows.into_iter()
        .map(|(name, description, policy, timestamp, seen, expected)| FreshnessCase {
            name: format!("freshness/{name}"),
            vector: FreshnessVector {
                description: description.to_owned(),
                policy: policy.clone(),
                timestamp,
                seen,
                now: NOW.to_owned(),
                expected,
            },
        })
        .collect()
}

pub const README: &str = r#"# Stele ledger format v1, revision 4: observation and freshness vectors

Generated with the tree vectors (see `../README.md` for keys). Do not edit by hand.

## `observations/*.json` (SPEC.md §6.5, §8.10, checks O1-O4)

```
{
  "description": "...",
  "policy": "<file text of trust/policy.json in force at every verified commit>",
  "verified_commits": ["<commit id>", ...],
  "env": "prod",
  "file": "<file text of status/<env>.json>",
  "expected": { "verified": true, "agent": "<key id>" }  or  { "verified": false, "check": "O2" }
}
```

A reader conforms when, judging `file` as `status/<env>.json` with the policy in force at the named
ledger commit (the `policy`, for a commit in `verified_commits`; none otherwise), it reaches the
expected verdict: verified by that agent key, or unverified by the first failing check.

## `freshness/*.json` (SPEC.md §8.9, check F3)

```
{
  "description": "...",
  "policy": "<file text of the policy in force at the verified head>",
  "timestamp": "<file text of trust/timestamp.json at the head>",   (absent: the head has none)
  "seen": 4,                                                        (absent: none accepted before)
  "now": "2026-06-01T00:00:00Z",
  "expected": { "current": true }  or  { "current": false, "check": "F3" }
}
```

Whoever acts at `now` conforms when it acts exactly on the `current` cases.

## Cases

"#;
