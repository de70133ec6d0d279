//! The operator's HTML view: one self-contained HTML5 document (inline CSS, no scripts, no external
//! assets) showing each environment as the agent reports it and the audit timeline. The agent serves
//! it at `/`; `stele audit --html FILE` writes it as a static file an auditor can attach to a report.
//!
//! Owns: turning a [`PageView`] into markup, escaping every interpolated string, and the stable
//! `id`s and `data-*` attributes tests and scrapers read (listed below). Must not do I/O or read the
//! clock (the caller supplies `generated_at`), and must not judge anything: the verdicts are in the
//! audit JSON and the status reports it is given.
//!
//! Stable hooks (the DOM contract; texts may change, these may not without a test changing):
//! - `#title`, `#generated-at`, `#ledger`; `#agent[data-agent][data-ready]` when an agent is shown.
//! - `#environments article.env[data-env][data-phase][data-target-generation][data-observed-generation]
//!   [data-suspended]` (and `[data-verified=true|false]` when the report was read from a status ref:
//!   an unverified one carries a visible `.badge.unverified` and `[data-field=unverified]` with the
//!   check and reason; a verified one `[data-field=verified-by]`), inside it `[data-field=target|running|message|last-error|suspended|...]` and
//!   `table.instances tr[data-instance][data-group][data-generation][data-health][data-drift]`.
//!   An environment named by the timeline without a status report is `article.env[data-phase=unknown]`.
//! - `#audit[data-ok][data-trust-root-pinned]`, `#timeline tr[data-row-kind][data-commit]` (the kind is
//!   the audit JSON's `action`: `promote`, `co-sign`, `rollback`, `restore`, `withdraw`, `spec`,
//!   `policy`, `genesis`, `refused`, `recovered`), with `[data-env][data-generation]` on event rows;
//!   signer cells `[data-signer][data-keyid]` (who signed the document the row is about), co-signers
//!   `[data-co-signer]`, the SSH signer of a revert `[data-revert-signer]` and the reverted entry's
//!   `[data-reverted-signer]`, refusal problems `li[data-check][data-path]`, a verified agent's claim
//!   `[data-gate=failed|converged]`; observations not counted
//!   `#unverified li[data-env][data-verified=false][data-check]`.
//! - `#proposals article.proposal[data-proposal][data-verifies]` with `tr[data-path][data-complete]`,
//!   signers `[data-signer]` and keys that may still sign `[data-missing]`.

mod envs;
mod html;
mod timeline;

use crate::status::{EnvStatus, Label};

/// Everything one page shows. Plain data: the agent fills it from memory, `stele audit --html` from
/// the replay and the status branch.
#[derive(Clone, Debug, Default)]
pub struct PageView {
    pub title: String,
    /// When the page was made, as the caller's clock says (RFC 3339).
    pub generated_at: String,
    /// The ledger shown (for example its id and head commit).
    pub ledger: Option<String>,
    pub agent: Option<AgentView>,
    pub environments: Vec<EnvView>,
    /// Exactly what `stele audit --json` prints for the timeline (see
    /// `commands::audit::timeline_json`); `None` leaves the audit section out.
    pub timeline: Option<serde_json::Value>,
    /// Seconds after which a browser reloads the page (`<meta http-equiv="refresh">`); `None`: never.
    pub refresh_seconds: Option<u32>,
}

/// The agent serving the page.
#[derive(Clone, Debug, Default)]
pub struct AgentView {
    pub id: String,
    pub last_poll: Option<String>,
    /// Whether the first verified sync is done.
    pub ready: bool,
    pub message: Option<String>,
}

/// One environment as reported, and whether an operator froze it.
#[derive(Clone, Debug)]
pub struct EnvView {
    pub status: EnvStatus,
    /// The reason an operator gave when suspending convergence; `None` when not suspended.
    pub suspended: Option<String>,
    /// The verdict on the observation when it was read from a status ref (`stele audit --html`);
    /// `None` for the agent's own page, which shows what it observes itself.
    pub verified: Option<Label>,
}

/// The page for `view`: a complete HTML5 document.
pub fn render_page(view: &PageView) -> String {
    let mut h = html::Html::default();
    h.raw("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    if let Some(s) = view.refresh_seconds {
        h.void("meta", &[("http-equiv", "refresh"), ("content", &s.to_string())]);
    }
    h.elem("title", &[], &view.title);
    h.raw("\n<style>");
    h.raw(html::STYLE);
    h.raw("</style>\n</head>\n<body>\n<header>");
    h.elem("h1", &[("id", "title")], &view.title);
    h.open("p", &[("class", "meta")]);
    h.text("generated ");
    h.elem("time", &[("id", "generated-at")], &view.generated_at);
    if let Some(ledger) = &view.ledger {
        h.text(" · ledger ");
        h.elem("span", &[("id", "ledger")], ledger);
    }
    h.close("p");
    h.close("header");
    h.raw("\n<main>\n");
    if let Some(agent) = &view.agent {
        envs::agent(&mut h, agent);
    }
    envs::environments(&mut h, &view.environments, view.timeline.as_ref());
    if let Some(t) = &view.timeline {
        timeline::audit(&mut h, t);
    }
    h.raw("</main>\n</body>\n</html>\n");
    h.finish()
}

#[cfg(test)]
mod tests;
