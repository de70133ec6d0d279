//! The agent panel and one card per environment: phase, target vs observed generation and release,
//! message, last error, suspension, and the instances table.

use super::html::Html;
use super::{AgentView, EnvView};
use crate::status::{Label, TargetStatus};

pub fn agent(h: &mut Html, agent: &AgentView) {
    let ready = if agent.ready { "true" } else { "false" };
    h.open("section", &[("id", "agent"), ("data-agent", &agent.id), ("data-ready", ready)]);
    h.open("h2", &[]);
    h.text("Agent ");
    h.elem("code", &[], &agent.id);
    if agent.ready {
        h.elem("span", &[("class", "badge ready")], "ready");
    } else {
        h.elem("span", &[("class", "badge not-ready")], "not ready: no verified sync yet");
    }
    h.close("h2");
    h.open("dl", &[]);
    if let Some(t) = &agent.last_poll {
        field(h, "last-poll", "last successful poll", t, None);
    }
    if let Some(m) = &agent.message {
        field(h, "agent-message", "message", m, None);
    }
    h.close("dl");
    h.close("section");
    h.raw("\n");
}

/// Every reported environment, then (with `timeline`) each environment the ledger names that no
/// agent has reported on yet.
pub fn environments(h: &mut Html, envs: &[EnvView], timeline: Option<&serde_json::Value>) {
    h.open("section", &[("id", "environments")]);
    h.elem("h2", &[], "Environments");
    let unreported: Vec<&String> = timeline
        .and_then(|t| t["environments"].as_object())
        .map(|m| m.keys().filter(|name| !envs.iter().any(|e| e.status.env.as_str() == name.as_str())).collect())
        .unwrap_or_default();
    if envs.is_empty() && unreported.is_empty() {
        h.elem("p", &[("class", "muted"), ("id", "no-environments")], "No environment has reported yet.");
    }
    h.raw("<div class=\"cards\">\n");
    for env in envs {
        card(h, env);
    }
    for name in unreported {
        h.open(
            "article",
            &[("class", "env"), ("data-env", name), ("data-phase", "unknown"), ("data-suspended", "false")],
        );
        h.open("h2", &[]);
        h.elem("span", &[], name);
        h.elem("span", &[("class", "badge")], "no status");
        h.close("h2");
        h.elem("p", &[("class", "muted")], "No agent has reported on this environment (no file on the status branch).");
        h.close("article");
        h.raw("\n");
    }
    h.raw("</div>\n");
    h.close("section");
    h.raw("\n");
}

fn card(h: &mut Html, view: &EnvView) {
    let s = &view.status;
    let phase = s.phase.to_string();
    let suspended = if view.suspended.is_some() { "true" } else { "false" };
    let target_generation = s.target_generation.to_string();
    let observed_generation = s.observed_generation.to_string();
    let mut attrs = vec![
        ("class", "env"),
        ("data-env", s.env.as_str()),
        ("data-phase", &phase),
        ("data-target-generation", &target_generation),
        ("data-observed-generation", &observed_generation),
        ("data-suspended", suspended),
    ];
    if let Some(label) = &view.verified {
        attrs.push(("data-verified", if label.is_verified() { "true" } else { "false" }));
    }
    h.open("article", &attrs);
    h.open("h2", &[]);
    h.elem("span", &[("class", "env-name")], s.env.as_str());
    h.elem("span", &[("class", &format!("badge phase-{phase}")), ("data-field", "phase")], &phase);
    if view.suspended.is_some() {
        h.elem("span", &[("class", "badge suspended")], "Suspended");
    }
    if matches!(view.verified, Some(Label::Unverified { .. })) {
        h.elem("span", &[("class", "badge unverified")], "UNVERIFIED");
    }
    h.close("h2");
    h.open("dl", &[]);
    match &view.verified {
        Some(Label::Verified { agent_display, .. }) => field(h, "verified-by", "verified", agent_display, None),
        Some(label @ Label::Unverified { .. }) => {
            let words = format!("{} (not a claim: who wrote this is not established)", label.describe());
            field(h, "unverified", "unverified", &words, Some("error"));
        }
        None => {}
    }
    if let Some(reason) = &view.suspended {
        let text = format!("convergence frozen by an operator: {reason}");
        field(h, "suspended", "suspended", &text, None);
    }
    let generations = format!("observed {} of target {}", s.observed_generation, s.target_generation);
    field(h, "generations", "generation", &generations, None);
    field(h, "target", "target", &release(s.target.as_ref()), None);
    let running = release(s.running.as_ref());
    let differs = if s.running != s.target { Some("error") } else { None };
    field(h, "running", "running", &running, differs);
    if !s.message.is_empty() {
        field(h, "message", "message", &s.message, None);
    }
    if let Some(e) = &s.last_error {
        field(h, "last-error", "last error", e, Some("error"));
    }
    field(h, "ledger-commit", "ledger commit", &s.ledger_commit, Some("mono"));
    field(h, "reported-by", "reported by", &format!("{} at {}", s.agent, s.updated_at), None);
    h.close("dl");
    instances(h, view);
    h.close("article");
    h.raw("\n");
}

fn instances(h: &mut Html, view: &EnvView) {
    let s = &view.status;
    if s.instances.is_empty() {
        h.elem("p", &[("class", "muted"), ("data-field", "no-instances")], "No instances.");
        return;
    }
    h.raw("<div class=\"scroll\">");
    h.open("table", &[("class", "instances")]);
    h.raw("<thead><tr><th>instance</th><th>group</th><th>generation</th><th>health</th><th>since</th><th>drift</th></tr></thead><tbody>");
    for i in &s.instances {
        let generation = i.generation.to_string();
        let drift = i.drift.as_deref().unwrap_or("");
        h.open(
            "tr",
            &[
                ("data-instance", &i.id),
                ("data-group", i.group.as_str()),
                ("data-generation", &generation),
                ("data-health", &i.health),
                ("data-drift", drift),
            ],
        );
        h.open("td", &[("class", "mono")]);
        h.text(&i.id);
        h.close("td");
        h.elem("td", &[], i.group.as_str());
        h.elem("td", &[("class", "num")], &generation);
        let class = if i.health == "healthy" { "gate-converged" } else { "" };
        h.elem("td", &[("class", class)], &i.health);
        h.elem("td", &[("class", "nowrap")], &i.since.to_string());
        h.elem("td", &[("class", if drift.is_empty() { "" } else { "error" })], drift);
        h.close("tr");
    }
    h.raw("</tbody></table></div>\n");
}

/// `2.0.0 (seq 2, blake3:0123456789ab)`, or `none`.
fn release(t: Option<&TargetStatus>) -> String {
    match t {
        Some(t) => format!("{} (seq {}, blake3:{})", t.version, t.seq, &t.blake3.to_hex()[..12]),
        None => "none".into(),
    }
}

/// One `<dt>label</dt><dd data-field=name>value</dd>` pair.
fn field(h: &mut Html, name: &str, label: &str, value: &str, class: Option<&str>) {
    h.elem("dt", &[], label);
    h.elem("dd", &[("data-field", name), ("class", class.unwrap_or(""))], value);
}
