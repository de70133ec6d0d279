//! The timeline: one row per thing a first-parent commit did (genesis, promotion, co-signature,
//! rollback, restore, spec change, policy change), per refused commit and per recovering commit, in
//! history order, each saying who signed it with the names of the policy in force at that step.

use super::proposals::Proposal;
use super::stream::Json;
use super::{action_word, short, valid_signers, Audit};
use crate::replay::CommitReport;
use crate::status::{Judged, Label, Phase};
use ledger_format::history::{Action, CommitInfo, Event, Link};
use ledger_format::tree::Problem;
use ledger_format::types::{EnvName, Policy};
use ledger_format::KeyId;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::rc::Rc;

/// One row of the timeline.
struct Row<'a> {
    commit: &'a CommitInfo,
    kind: Kind<'a>,
}

enum Kind<'a> {
    /// Something a verified commit did.
    Event {
        event: &'a Event,
        /// Who signed the document the event is about (entry, spec or policy).
        signed_by: Vec<KeyId>,
        /// For a co-signature: the keys whose signatures this step added.
        added: Vec<KeyId>,
        /// For a spec or policy change: its new version and, for a spec, its safety settings.
        detail: Option<String>,
    },
    Refused(&'a [Problem]),
    /// This commit verified as one step from the last good commit, past the refused one.
    Recovered {
        refused: &'a str,
    },
}

/// The rows of the whole history, in first-parent order.
fn rows<'a>(audit: &Audit<'a>) -> Vec<Row<'a>> {
    let outcome = audit.outcome;
    let recovered: BTreeMap<&str, &str> =
        outcome.recovered.iter().map(|(bad, good)| (good.as_str(), bad.as_str())).collect();
    let position = |c: &CommitInfo| audit.git.position.get(&c.id).copied().unwrap_or(usize::MAX);
    let mut rows: Vec<(usize, Row)> = Vec::new();
    // Signers each entry had before this step, to say what a co-signature added.
    let mut entry_signers: BTreeMap<(EnvName, u64), Vec<KeyId>> = BTreeMap::new();
    // Each environment's spec version so far, to tell a co-signature (same version) from a change.
    let mut spec_versions: BTreeMap<&EnvName, u64> = BTreeMap::new();
    for ((_, env), doc) in
        audit.git.specs.iter().filter(|((id, _), _)| Some(id) == outcome.reports.first().map(|r| &r.commit.id))
    {
        spec_versions.insert(env, doc.payload.version);
    }
    for report in &outcome.reports {
        let at = position(&report.commit);
        if let Some(refused) = recovered.get(report.commit.id.as_str()) {
            rows.push((at, Row { commit: &report.commit, kind: Kind::Recovered { refused } }));
        }
        for event in &report.events {
            if !shown(audit, event) {
                continue;
            }
            let (signed_by, mut detail) = signers_of(audit, report, event);
            if let (Action::SpecChange, Some(env)) = (&event.action, &event.env) {
                if let Some(doc) = audit.git.specs.get(&(report.commit.id.clone(), env.clone())) {
                    let before = spec_versions.insert(env, doc.payload.version);
                    if before == Some(doc.payload.version) {
                        detail = detail.map(|d| format!("{d} co-signed, same payload"));
                    }
                }
            }
            let mut added = Vec::new();
            if let (Some(env), Some(entry)) = (&event.env, &event.entry) {
                let before = entry_signers.insert((env.clone(), entry.seq), entry.signed_by.clone());
                if event.action == Action::CoSign {
                    let before = before.unwrap_or_default();
                    added = entry.signed_by.iter().filter(|k| !before.contains(k)).copied().collect();
                }
            }
            rows.push((at, Row { commit: &report.commit, kind: Kind::Event { event, signed_by, added, detail } }));
        }
    }
    for refusal in &outcome.refusals {
        rows.push((position(&refusal.commit), Row { commit: &refusal.commit, kind: Kind::Refused(&refusal.problems) }));
    }
    // Stable: the rows of one commit keep their order.
    rows.sort_by_key(|(at, _)| *at);
    rows.into_iter().map(|(_, r)| r).collect()
}

/// Whether `--env` keeps this event: its environment's, and the policy's (which decide who signs).
fn shown(audit: &Audit, event: &Event) -> bool {
    match (&event.env, audit.only) {
        (_, None) | (None, _) => true,
        (Some(env), Some(only)) => env == only,
    }
}

/// Who signed what an event is about, and a few words on a spec or policy change.
fn signers_of(audit: &Audit, report: &CommitReport, event: &Event) -> (Vec<KeyId>, Option<String>) {
    let policies = &audit.git.policies;
    let in_force = policies.get(&event.policy_version).unwrap_or(audit.policy);
    let id = &report.commit.id;
    match event.action {
        Action::SpecChange => {
            let Some(env) = &event.env else { return (Vec::new(), None) };
            match audit.git.specs.get(&(id.clone(), env.clone())) {
                Some(doc) => {
                    let signed = valid_signers(doc, in_force, |_| true);
                    let s = &doc.payload;
                    let detail = format!("spec v{} (revert {}, drift {})", s.version, word(&s.revert), word(&s.drift));
                    (signed, Some(detail))
                }
                None => (Vec::new(), Some("spec (not readable at this commit)".into())),
            }
        }
        Action::Genesis | Action::PolicyChange => {
            let Some(doc) = audit.git.policy_docs.get(id) else {
                return (Vec::new(), Some("policy (not readable at this commit)".into()));
            };
            // A new policy is authorised by the root of the one before it; genesis by its own root.
            let authority: &Policy = match event.action {
                Action::Genesis => &doc.payload,
                _ => policies.get(&(doc.payload.version.saturating_sub(1))).unwrap_or(in_force),
            };
            let signed = valid_signers(doc, authority, |k| authority.root.keys.contains(k));
            let p = &doc.payload;
            let roles: Vec<String> =
                p.environments.iter().map(|(env, r)| format!("{env} {} of {}", r.threshold, r.keys.len())).collect();
            // Revision 5: the layout is named when it is not flat or has just changed (a migration).
            let layout = if p.layout() != authority.layout() || p.layout() != ledger_format::tree::Layout::Flat {
                format!("; ledger layout {}", p.layout().name())
            } else {
                String::new()
            };
            let detail = format!(
                "policy v{} (root {} of {}; {}{layout})",
                p.version,
                p.root.threshold,
                p.root.keys.len(),
                if roles.is_empty() { "no environments".into() } else { roles.join(", ") }
            );
            (signed, Some(detail))
        }
        _ => (event.entry.as_ref().map(|l| l.signed_by.clone()).unwrap_or_default(), None),
    }
}

/// A serde enum's word (`signed`, `correct`).
fn word<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_else(|| "?".into())
}

fn time(c: &CommitInfo) -> String {
    c.time.map(|t| t.to_string()).unwrap_or_else(|| "?".into())
}

fn target_words(l: &Link) -> String {
    format!("{} (seq {}, blake3:{})", l.version, l.seq, &l.image.digest().to_hex()[..12])
}

/// What the verified observations say about a generation: when an agent first reported it healthy,
/// or that its health gate failed, and which agent said so. Unverified observations never count.
fn observed_generation(reports: Option<&Vec<Judged>>, generation: u64) -> Option<Value> {
    let reports = reports?;
    let when = |j: &Judged| j.candidate.recorded_at.or(j.status().map(|s| s.updated_at));
    let agent = |j: &Judged| match &j.label {
        Label::Verified { agent, agent_display } => json!({"keyid": agent, "display": agent_display}),
        Label::Unverified { .. } => Value::Null,
    };
    let healthy = reports.iter().find(|j| {
        j.label.is_verified()
            && j.status().is_some_and(|s| s.phase == Phase::Healthy && s.observed_generation == generation)
    });
    let degraded = reports.iter().find(|j| {
        j.label.is_verified()
            && j.status().is_some_and(|s| s.phase == Phase::Degraded && s.target_generation == generation)
    });
    (healthy.is_some() || degraded.is_some()).then(|| {
        json!({
            "converged_at": healthy.and_then(when),
            "degraded_at": degraded.and_then(when),
            "verified": true,
            "agent_key": healthy.or(degraded).map(agent),
        })
    })
}

/// `by AGENT (KEYID)` of a verified claim's JSON.
fn by_agent(o: &Value) -> String {
    o["agent_key"]["display"].as_str().map(|a| format!(" (verified, agent {a})")).unwrap_or_default()
}

/// The human words of one row: (env, generation, action, what).
fn describe(audit: &Audit, row: &Row) -> (String, String, String, Vec<String>) {
    let facts = audit.git.commit(&row.commit.id);
    let mut lines = Vec::new();
    let landed = match (&facts.merged_from, &facts.proposal) {
        (Some(from), Some(p)) => Some(format!("merged from {} (proposal stele/proposals/{p})", short(from))),
        (Some(from), None) => Some(format!("merged from {}", short(from))),
        (None, Some(p)) => Some(format!("from proposal stele/proposals/{p}")),
        (None, None) => None,
    };
    match &row.kind {
        Kind::Refused(problems) => {
            lines.push(format!("\"{}\" by {}", row.commit.summary, row.commit.author));
            lines.extend(problems.iter().map(|p| format!("  {p}")));
            ("-".into(), "-".into(), "REFUSED".into(), lines)
        }
        Kind::Recovered { refused } => {
            lines.push(format!(
                "verifies as one step from the last good commit, past refused {}; the state follows it",
                short(refused)
            ));
            ("-".into(), "-".into(), "recovered".into(), lines)
        }
        Kind::Event { event, signed_by, added, detail } => {
            let v = event.policy_version;
            let env = event.env.as_ref().map_or("-".into(), ToString::to_string);
            let generation = if event.env.is_some() { event.generation.to_string() } else { "-".into() };
            match event.action {
                Action::Rollback | Action::Withdraw => {
                    let removed = event.entry.as_ref().map(target_words).unwrap_or_default();
                    let now =
                        event.target.as_ref().map_or("no target".into(), |t| format!("target {}", target_words(t)));
                    lines.push(format!("reverted {removed}; {now}"));
                    let ssh = match (&event.revert_signed_by, &row.commit.ssh_signature) {
                        (Some(k), _) => format!("revert SSH-signed by {}", audit.key_display(v, k)),
                        (None, Some(_)) => "revert SSH signature not by a key of the environment's role".into(),
                        (None, None) => "revert not SSH-signed".into(),
                    };
                    lines.push(format!("{ssh}; committed by {}", row.commit.author));
                    if let Some(t) = &event.target {
                        lines.push(format!("{} signed by {}", t.version, audit.keys_display(v, &t.signed_by)));
                    }
                }
                Action::CoSign => {
                    let entry = event.entry.as_ref().map(target_words).unwrap_or_default();
                    lines.push(format!("{entry} co-signed by {}", audit.keys_display(v, added)));
                    lines.push(format!("now signed by {}", audit.keys_display(v, signed_by)));
                }
                Action::SpecChange | Action::PolicyChange | Action::Genesis => {
                    lines.push(format!(
                        "{}, signed by {}",
                        detail.clone().unwrap_or_default(),
                        audit.keys_display(v, signed_by)
                    ));
                }
                Action::Promote | Action::Restore => {
                    let entry = event.entry.as_ref().map(target_words).unwrap_or_default();
                    lines.push(format!("{entry} signed by {}", audit.keys_display(v, signed_by)));
                }
                Action::Timestamp => {
                    lines.push("timestamp renewed (trust/timestamp.json), signed by the timestamp role".into());
                }
            }
            if let Some(landed) = landed {
                lines.push(landed);
            }
            if let Some(env) = &event.env {
                if matches!(event.action, Action::Promote | Action::Rollback | Action::Restore | Action::CoSign) {
                    if let Some(o) = observed_generation(audit.observed.get(env), event.generation) {
                        let said = match (o["converged_at"].as_str(), o["degraded_at"].as_str()) {
                            (Some(t), _) => format!(
                                "status (agent's claim{}): generation {} ran {t}",
                                by_agent(&o),
                                event.generation
                            ),
                            (None, Some(t)) => format!(
                                "status (agent's claim{}): generation {} FAILED its health gate {t}",
                                by_agent(&o),
                                event.generation
                            ),
                            _ => String::new(),
                        };
                        lines.push(said);
                    }
                }
            }
            (env, generation, action_word(&event.action).into(), lines)
        }
    }
}

/// How many unverified observations per environment the human output lists (`--json` has all).
const UNVERIFIED_SHOWN: usize = 5;

/// The observations not counted as claims, newest first, per environment.
pub(crate) fn print_unverified(audit: &Audit) {
    let total: usize = audit.envs().map(|e| audit.unverified.get(e).map_or(0, Vec::len)).sum();
    if total == 0 {
        return;
    }
    println!("\nUNVERIFIED observations ({total}; not counted as claims of what ran):");
    for env in audit.envs() {
        let list = audit.unverified.get(env).map(Vec::as_slice).unwrap_or_default();
        for j in list.iter().rev().take(UNVERIFIED_SHOWN) {
            println!("  {env}  {}", super::unverified_words(j));
        }
        if list.len() > UNVERIFIED_SHOWN {
            println!("  {env}  ... and {} more (see --json)", list.len() - UNVERIFIED_SHOWN);
        }
    }
}

pub fn print(audit: &Audit, open: &[Proposal]) {
    audit.print_header();
    println!();
    println!("{:<20}  {:<12}  {:<12}  {:>3}  {:<9}  WHAT", "TIME (UTC)", "COMMIT", "ENV", "GEN", "ACTION");
    let pad = " ".repeat(20 + 2 + 12 + 2 + 12 + 2 + 3 + 2 + 9 + 2);
    for row in rows(audit) {
        let (env, generation, action, lines) = describe(audit, &row);
        let mut lines = lines.into_iter();
        println!(
            "{:<20}  {:<12}  {:<12}  {:>3}  {:<9}  {}",
            time(row.commit),
            short(&row.commit.id),
            env,
            generation,
            action,
            lines.next().unwrap_or_default()
        );
        for more in lines {
            println!("{pad}{more}");
        }
    }
    super::proposals::print(audit, open);
    print_unverified(audit);
    let outcome = audit.outcome;
    if outcome.refusals.is_empty() {
        println!("\nOK: every step verified");
    } else {
        let n = outcome.refusals.len();
        println!(
            "\nFAILED: {n} refused commit{} (listed above; the state follows the last good commit{})",
            if n == 1 { "" } else { "s" },
            if outcome.recovered.is_empty() { "" } else { " and the commits that recovered from it" }
        );
    }
}

fn row_json(audit: &Audit, row: &Row) -> Value {
    let facts = audit.git.commit(&row.commit.id);
    let mut out = json!({
        "commit": row.commit.id,
        "time": row.commit.time,
        "author": row.commit.author,
        "summary": row.commit.summary,
        "merged_from": facts.merged_from,
        "proposal": facts.proposal,
    });
    let fields = match &row.kind {
        Kind::Refused(problems) => json!({"action": "refused", "problems": problems}),
        Kind::Recovered { refused } => json!({"action": "recovered", "refused": refused}),
        Kind::Event { event, signed_by, added, detail } => {
            let v = event.policy_version;
            let observed =
                event.env.as_ref().and_then(|env| observed_generation(audit.observed.get(env), event.generation));
            json!({
                "action": action_word(&event.action),
                "env": event.env,
                "generation": event.generation,
                "target": event.target,
                "entry": event.entry,
                "signed_by": audit.keys_json(v, signed_by),
                "co_signed_by": matches!(event.action, Action::CoSign).then(|| audit.keys_json(v, added)),
                "detail": detail,
                "revert": matches!(event.action, Action::Rollback | Action::Withdraw).then(|| json!({
                    "commit_signed": row.commit.ssh_signature.is_some(),
                    "signed_by": event.revert_signed_by.map(|k| audit.keys_json(v, &[k])),
                })),
                "policy_version": v,
                // From the status refs, a verified agent's claim: when it first reported this
                // generation healthy, or that its health gate failed. Unverified ones never count.
                "observed": observed,
            })
        }
    };
    if let (Some(out), Value::Object(fields)) = (out.as_object_mut(), fields) {
        out.extend(fields);
    }
    out
}

/// The timeline as JSON: `timeline` (every row in order), and the same event rows per environment
/// (`environments.<env>.events`) and for the policy (`policy`). Each row is made as it is written
/// ([`Json`]), so the body never sits in memory whole.
pub fn json<'b>(audit: &'b Audit<'_>, open: &'b [Proposal]) -> Json<'b> {
    let rows = Rc::new(rows(audit));
    // The rows `keep` keeps, made one at a time.
    let made = |keep: Box<dyn Fn(&Row) -> bool + 'b>| {
        let rows = Rc::clone(&rows);
        let keep = Rc::new(keep);
        Json::lazy(move || {
            let (rows, kept, keep) = (Rc::clone(&rows), Rc::clone(&rows), Rc::clone(&keep));
            (0..rows.len()).filter(move |&i| keep(&kept[i])).map(move |i| row_json(audit, &rows[i]))
        })
    };
    let envs: BTreeMap<String, Json> = audit
        .envs()
        .map(|env| {
            let events = made(Box::new(
                move |r| matches!(&r.kind, Kind::Event { event, .. } if event.env.as_ref() == Some(env)),
            ));
            let unverified: Vec<Value> = audit
                .unverified
                .get(env)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(super::unverified_json)
                .collect();
            let mut members = BTreeMap::new();
            members.insert("events".to_owned(), events);
            members.insert("unverified".to_owned(), Json::Value(Value::Array(unverified)));
            (env.to_string(), Json::Object(members))
        })
        .collect();
    let mut body = BTreeMap::new();
    body.insert("timeline".to_owned(), made(Box::new(|_| true)));
    body.insert("environments".to_owned(), Json::Object(envs));
    body.insert(
        "policy".to_owned(),
        made(Box::new(|r| matches!(&r.kind, Kind::Event { event, .. } if event.env.is_none()))),
    );
    let proposals = open.iter().map(|p| super::proposals::json(audit, p)).collect();
    body.insert("proposals".to_owned(), Json::Value(Value::Array(proposals)));
    Json::Object(body)
}
