//! The audit section, rendered from the JSON `stele audit --json` prints for the timeline: the
//! verdict, a table with one row per timeline row (who signed what, promotions, co-signatures,
//! rollbacks, refused and recovering commits, a verified agent's claim of a converged generation or
//! a failed health gate), the observations not counted (labelled UNVERIFIED), then the open
//! proposals. Fields it does not know are ignored; fields that are missing render as nothing, so a
//! page never fails for the shape of its input.

use super::html::Html;
use serde_json::Value;
use std::collections::BTreeMap;

pub fn audit(h: &mut Html, t: &Value) {
    let ok = t["ok"].as_bool().unwrap_or(false);
    let pinned = t["trust_root_pinned"].as_bool().unwrap_or(false);
    h.open("section", &[("id", "audit"), ("data-ok", bool_word(ok)), ("data-trust-root-pinned", bool_word(pinned))]);
    h.elem("h2", &[], "Audit timeline");
    h.open("p", &[("class", "meta"), ("id", "audit-source")]);
    let head = text(&t["head"]);
    h.text(&format!(
        "ledger {} · {}{} · head {} · {} commits replayed",
        text(&t["ledger"]),
        text(&t["source"]),
        t["branch"].as_str().map(|b| format!(" (branch {b})")).unwrap_or_default(),
        short(&head),
        text(&t["commits"]),
    ));
    h.close("p");
    if !pinned {
        h.elem(
            "p",
            &[("class", "warn-box"), ("id", "unpinned")],
            "Trust root NOT PINNED: the genesis policy was taken as found. Pin it (--trust-root or \
             --trust-root-hash) for a verdict that means something.",
        );
    }
    let refused = t["refusals"].as_array().map_or(0, Vec::len);
    let verdict = if ok {
        "OK: every step verified".to_owned()
    } else {
        format!(
            "FAILED: {refused} refused commit{} (marked below; the state follows the last good commit)",
            if refused == 1 { "" } else { "s" }
        )
    };
    h.elem("p", &[("id", "verdict"), ("class", if ok { "gate-converged" } else { "gate-failed" })], &verdict);
    let names = key_names(t);
    rows(h, t, &names);
    unverified(h, t);
    proposals(h, t);
    h.close("section");
    h.raw("\n");
}

/// The observations not counted as claims (`environments.<env>.unverified`), newest first, each
/// with its check and reason.
fn unverified(h: &mut Html, t: &Value) {
    let Some(envs) = t["environments"].as_object() else { return };
    let all: Vec<(&String, &Value)> = envs
        .iter()
        .flat_map(|(env, v)| v["unverified"].as_array().into_iter().flatten().rev().map(move |o| (env, o)))
        .collect();
    if all.is_empty() {
        return;
    }
    h.open("div", &[("id", "unverified")]);
    h.elem("h3", &[], &format!("UNVERIFIED observations ({}): not counted as claims of what ran", all.len()));
    h.open("ul", &[]);
    for (env, o) in all {
        let check = text(&o["check"]);
        h.open("li", &[("data-env", env), ("data-verified", "false"), ("data-check", &check)]);
        h.elem("span", &[("class", "badge unverified")], "UNVERIFIED");
        let said = match o["phase"].as_str() {
            Some(phase) => {
                format!("{phase} generation {}/{}", text(&o["observed_generation"]), text(&o["target_generation"]))
            }
            None => "unreadable".into(),
        };
        h.text(&format!(
            " {env}: {said}, recorded {} on {} ({}){}: {}",
            text(&o["recorded_at"]),
            text(&o["ref"]),
            short(&text(&o["status_commit"])),
            if check.is_empty() { String::new() } else { format!(" check {check}") },
            text(&o["unverified_reason"]),
        ));
        h.close("li");
    }
    h.close("ul");
    h.close("div");
}

/// Key id → name, from every signer list the JSON carries: a target's signers are key ids only.
fn key_names(t: &Value) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let mut visit = |list: &Value| {
        for k in list.as_array().into_iter().flatten() {
            if let (Some(id), Some(name)) = (k["keyid"].as_str(), k["name"].as_str()) {
                names.insert(id.to_owned(), name.to_owned());
            }
        }
    };
    for row in t["timeline"].as_array().into_iter().flatten() {
        visit(&row["signed_by"]);
        visit(&row["co_signed_by"]);
        visit(&row["revert"]["signed_by"]);
    }
    names
}

fn rows(h: &mut Html, t: &Value, names: &BTreeMap<String, String>) {
    let rows = t["timeline"].as_array().map(Vec::as_slice).unwrap_or_default();
    if rows.is_empty() {
        h.elem("p", &[("class", "muted")], "No commit on the timeline.");
        return;
    }
    h.open("table", &[("id", "timeline")]);
    h.raw("<thead><tr><th>time (UTC)</th><th>commit</th><th>env</th><th>gen</th><th>action</th><th>what</th><th>signed by</th></tr></thead><tbody>\n");
    for row in rows {
        let kind = row["action"].as_str().unwrap_or("unknown");
        let commit = text(&row["commit"]);
        let env = text(&row["env"]);
        let generation = if env.is_empty() { String::new() } else { text(&row["generation"]) };
        let mut attrs: Vec<(&'static str, &str)> =
            vec![("class", kind), ("data-row-kind", kind), ("data-commit", &commit)];
        if !env.is_empty() {
            attrs.extend([("data-env", env.as_str()), ("data-generation", generation.as_str())]);
        }
        h.open("tr", &attrs);
        h.elem("td", &[("class", "mono nowrap")], &text(&row["time"]));
        h.elem("td", &[("class", "mono"), ("title", &commit)], short(&commit));
        h.elem("td", &[], &env);
        h.elem("td", &[("class", "num")], &generation);
        h.open("td", &[]);
        let badge = if kind == "refused" { "badge refused" } else { "badge" };
        h.elem("span", &[("class", badge)], &kind.to_uppercase());
        h.close("td");
        h.open("td", &[("class", "what")]);
        what(h, row, kind, names);
        h.close("td");
        h.open("td", &[("class", "signers")]);
        signers(h, row, kind);
        h.close("td");
        h.close("tr");
        h.raw("\n");
    }
    h.raw("</tbody></table>\n");
}

/// The "what" cell: what the commit did, in words, with the status branch's claim.
fn what(h: &mut Html, row: &Value, kind: &str, names: &BTreeMap<String, String>) {
    match kind {
        "refused" => {
            h.elem("div", &[], &format!("\"{}\" by {}", text(&row["summary"]), text(&row["author"])));
            h.open("ul", &[("class", "problems")]);
            for p in row["problems"].as_array().into_iter().flatten() {
                let (path, check) = (text(&p["path"]), text(&p["check"]));
                h.open("li", &[("data-check", &check), ("data-path", &path)]);
                h.elem("code", &[], &path);
                h.text(": ");
                h.elem("strong", &[], &check);
                h.text(&format!(": {}", text(&p["reason"])));
                if let Some(cause) = p["cause"].as_str() {
                    h.text(&format!(" (because of {cause})"));
                }
                h.close("li");
            }
            h.close("ul");
        }
        "recovered" => {
            let refused = text(&row["refused"]);
            h.text(&format!(
                "verifies as one step from the last good commit, past refused {}; the state follows it",
                short(&refused)
            ));
        }
        "rollback" | "withdraw" => {
            h.elem("div", &[], &format!("reverted {}", release(&row["entry"])));
            let now = match row["target"].is_object() {
                true => {
                    let by = row["target"]["signed_by"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(|id| names.get(id).cloned().unwrap_or_else(|| short(id).to_owned()))
                        .collect::<Vec<_>>();
                    format!("target now {}, signed by {}", release(&row["target"]), list(&by))
                }
                false => "no target now".to_owned(),
            };
            h.elem("div", &[], &now);
        }
        "co-sign" => {
            h.elem("div", &[], &release(&row["entry"]));
            h.open("div", &[]);
            h.text("co-signed by ");
            keys(h, &row["co_signed_by"], "data-co-signer");
            h.close("div");
        }
        "promote" | "restore" => h.elem("div", &[], &release(&row["entry"])),
        _ => h.elem("div", &[], &text(&row["detail"])),
    }
    match (row["merged_from"].as_str(), row["proposal"].as_str()) {
        (Some(from), Some(p)) => {
            h.elem("div", &[("class", "muted")], &format!("merged from {} (proposal stele/proposals/{p})", short(from)))
        }
        (Some(from), None) => h.elem("div", &[("class", "muted")], &format!("merged from {}", short(from))),
        (None, Some(p)) => h.elem("div", &[("class", "muted")], &format!("from proposal stele/proposals/{p}")),
        (None, None) => {}
    }
    // The status branch's claim about the generation a row made the target (as the text timeline
    // says it): not on spec and policy rows, which share the generation without changing it.
    if !matches!(kind, "promote" | "rollback" | "restore" | "co-sign") {
        return;
    }
    let observed = &row["observed"];
    let by = observed["agent_key"]["display"].as_str().map(|a| format!(" by agent {a}")).unwrap_or_default();
    let generation = text(&row["generation"]);
    if let Some(at) = observed["converged_at"].as_str() {
        let words = format!("status (verified claim{by}): generation {generation} ran {at}");
        h.elem("div", &[("class", "gate-converged"), ("data-gate", "converged")], &words);
    } else if let Some(at) = observed["degraded_at"].as_str() {
        let words = format!("status (verified claim{by}): generation {generation} FAILED its health gate {at}");
        h.elem("div", &[("class", "gate-failed"), ("data-gate", "failed")], &words);
    }
}

/// The "signed by" cell: who signed the document the row is about; for a revert, who SSH-signed
/// the revert commit (the reverted entry's signers are in the "what" cell).
fn signers(h: &mut Html, row: &Value, kind: &str) {
    match kind {
        "refused" | "recovered" => {}
        "rollback" | "withdraw" => {
            let revert = &row["revert"];
            if revert["signed_by"].is_array() {
                keys(h, &revert["signed_by"], "data-revert-signer");
                h.elem("div", &[("class", "muted")], "SSH-signed revert");
            } else if revert["commit_signed"].as_bool() == Some(true) {
                h.elem("span", &[("class", "error")], "SSH signature not by a key of the environment's role");
            } else {
                h.elem("span", &[("class", "muted")], "revert not SSH-signed");
            }
            h.open("div", &[("class", "muted")]);
            h.text("reverted entry signed by ");
            keys(h, &row["signed_by"], "data-reverted-signer");
            h.close("div");
        }
        _ => keys(h, &row["signed_by"], "data-signer"),
    }
}

/// A list of `{keyid, name}` as spans carrying `role` (`data-signer`, `data-co-signer`,
/// `data-revert-signer`, `data-reverted-signer`, `data-missing`) set to the name, or to the short key
/// id when no policy ever named the key, and `data-keyid`.
fn keys(h: &mut Html, list: &Value, role: &'static str) {
    let keys = list.as_array().map(Vec::as_slice).unwrap_or_default();
    if keys.is_empty() {
        h.elem("span", &[("class", "muted")], "nobody");
        return;
    }
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            h.text(", ");
        }
        let id = text(&k["keyid"]);
        let name = k["name"].as_str().map_or_else(|| short(&id).to_owned(), str::to_owned);
        h.open("span", &[("class", "signer"), (role, name.as_str()), ("data-keyid", id.as_str())]);
        h.text(&name);
        h.text(" ");
        h.elem("code", &[("class", "muted")], short(&id));
        h.close("span");
    }
}

fn proposals(h: &mut Html, t: &Value) {
    let open = t["proposals"].as_array().map(Vec::as_slice).unwrap_or_default();
    h.open("div", &[("id", "proposals")]);
    h.elem("h3", &[], &format!("Open proposals ({})", open.len()));
    for p in open {
        let verifies = p["verifies"].as_bool().unwrap_or(false);
        h.open(
            "article",
            &[("class", "proposal"), ("data-proposal", &text(&p["name"])), ("data-verifies", bool_word(verifies))],
        );
        h.open("h3", &[]);
        h.elem("code", &[], &text(&p["ref"]));
        h.close("h3");
        let commit = text(&p["commit"]);
        h.elem("p", &[], &format!("{} \"{}\"", short(&commit), text(&p["summary"])));
        if let Some(shape) = p["shape_problem"].as_str() {
            h.elem("p", &[("class", "error")], shape);
        }
        let stale: Vec<String> = p["stale"].as_array().into_iter().flatten().map(text).collect();
        if !stale.is_empty() {
            let words = format!("stale: the ledger branch changed {} since the proposal's parent", stale.join(", "));
            h.elem("p", &[("class", "error"), ("data-stale", "true")], &words);
        }
        h.open("table", &[]);
        h.raw("<thead><tr><th>document</th><th>what</th><th>signatures</th><th>signed by</th><th>may still sign</th></tr></thead><tbody>");
        for d in p["documents"].as_array().into_iter().flatten() {
            let complete = d["complete"].as_bool().unwrap_or(false);
            h.open("tr", &[("data-path", &text(&d["path"])), ("data-complete", bool_word(complete))]);
            h.elem("td", &[("class", "mono")], &text(&d["path"]));
            h.elem("td", &[], &text(&d["what"]));
            let count = match d["required"].as_u64() {
                Some(r) => {
                    format!("{} of {r}{}", text(&d["signatures"]), if complete { ", threshold met" } else { "" })
                }
                None => text(&d["signatures"]),
            };
            h.elem("td", &[], &count);
            h.open("td", &[]);
            keys(h, &d["signed_by"], "data-signer");
            h.close("td");
            h.open("td", &[]);
            keys(h, &d["missing"], "data-missing");
            h.close("td");
            h.close("tr");
        }
        h.raw("</tbody></table>");
        if verifies {
            h.elem("p", &[("class", "gate-converged")], "ready to promote: landed on the head now, it verifies");
        } else {
            h.open("ul", &[("class", "problems")]);
            for pr in p["problems"].as_array().into_iter().flatten() {
                let (path, check) = (text(&pr["path"]), text(&pr["check"]));
                let words = format!("{path}: {check}: {}", text(&pr["reason"]));
                h.elem("li", &[("data-check", &check), ("data-path", &path)], &words);
            }
            h.close("ul");
        }
        h.close("article");
        h.raw("\n");
    }
    h.close("div");
}

/// `2.0.0 (seq 2, blake3:0123456789ab)` for an entry or target of the JSON.
fn release(link: &Value) -> String {
    if !link.is_object() {
        return "nothing".into();
    }
    let digest = text(&link["image"]["blake3"]);
    format!("{} (seq {}, blake3:{})", text(&link["version"]), text(&link["seq"]), short(&digest))
}

/// A JSON value as text: strings as they are, null as nothing, anything else as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "nobody".into()
    } else {
        items.join(", ")
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn bool_word(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}
