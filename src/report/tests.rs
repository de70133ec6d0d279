//! The renderer on its own: escaping, the stable hooks, the refresh tag. The DOM a real browser builds
//! from a real audit is tested in tests/audit_html.rs.

use super::*;
use crate::status::{Phase, TargetStatus};
use ledger_format::Blake3Digest;
use scraper::{Html, Selector};
use serde_json::json;

/// `env` Degraded: target generation 3 (2.0.0) failed its gate, 1.0.0 runs at generation 2.
fn status(env: &str) -> EnvStatus {
    let old = TargetStatus { version: "1.0.0".parse().unwrap(), seq: 1, blake3: Blake3Digest([1; 32]) };
    let mut s = crate::status::tests::healthy(env);
    s.observed_generation = 2;
    s.running = Some(old);
    s.phase = Phase::Degraded;
    s.message = "health gate failed".into();
    s.instances[0].generation = 2;
    s.instances[0].blake3 = Blake3Digest([1; 32]);
    s
}

fn select<'a>(doc: &'a Html, css: &str) -> Vec<scraper::ElementRef<'a>> {
    doc.select(&Selector::parse(css).expect("a valid selector")).collect()
}

fn text(e: &scraper::ElementRef) -> String {
    e.text().collect()
}

#[test]
fn strings_from_reports_and_the_ledger_stay_text_in_content_and_attributes() {
    let mut s = status("prod");
    s.message = "<script>alert('pwned')</script> & more".into();
    s.last_error = Some("</dd><img src=x onerror=alert(1)>".into());
    s.instances[0].id = "web-\"><script>x()</script>".into();
    s.instances[0].drift = Some("' onmouseover='alert(1)".into());
    let timeline = json!({
        "ok": false, "trust_root_pinned": true, "ledger": "acme<b>", "head": "h".repeat(40), "commits": 1,
        "refusals": [{}],
        "timeline": [{"action": "refused", "commit": "d".repeat(40), "summary": "<script>evil()</script>",
                      "author": "Mallory <m@x>", "problems": [{"path": "ledger/x/<1>.json", "check": "E1",
                      "reason": "<i>bad</i>"}]}],
        "environments": {}, "proposals": [],
    });
    let view = PageView {
        title: "Stele <audit>".into(),
        generated_at: "now".into(),
        environments: vec![EnvView { status: s.clone(), suspended: Some("<b>incident</b>".into()), verified: None }],
        timeline: Some(timeline),
        ..PageView::default()
    };
    let page = render_page(&view);
    assert!(!page.contains("<script"), "no script element, escaped or not:\n{page}");
    assert!(!page.contains("<img"), "{page}");
    assert!(!page.contains("<b>"), "{page}");
    let doc = Html::parse_document(&page);
    assert!(select(&doc, "script, img, b, i").is_empty(), "markup injected:\n{page}");
    let message = select(&doc, "article.env[data-env=prod] [data-field=message]");
    assert_eq!(text(&message[0]), s.message, "the message is shown verbatim, as text");
    assert_eq!(text(&select(&doc, "[data-field=last-error]")[0]), s.last_error.clone().unwrap());
    let row = &select(&doc, "table.instances tr[data-instance]")[0];
    assert_eq!(row.value().attr("data-instance"), Some(s.instances[0].id.as_str()));
    assert_eq!(row.value().attr("data-drift"), s.instances[0].drift.as_deref());
    assert!(row.value().attr("onmouseover").is_none());
    assert_eq!(text(&select(&doc, "#title")[0]), "Stele <audit>");
    let refused = &select(&doc, "#timeline tr[data-row-kind=refused]")[0];
    assert!(text(refused).contains("\"<script>evil()</script>\" by Mallory <m@x>"), "{}", text(refused));
    let problem = &select(&doc, "#timeline li[data-check=E1]")[0];
    assert_eq!(problem.value().attr("data-path"), Some("ledger/x/<1>.json"));
    assert!(text(&select(&doc, "[data-field=suspended]")[0]).ends_with("<b>incident</b>"));
}

#[test]
fn the_environment_card_carries_phase_generations_and_instances_as_attributes() {
    let view = PageView {
        title: "t".into(),
        environments: vec![EnvView { status: status("prod"), suspended: None, verified: None }],
        timeline: Some(json!({"ok": true, "timeline": [], "environments": {"prod": {}, "staging": {}}})),
        ..PageView::default()
    };
    let doc = Html::parse_document(&render_page(&view));
    let card = &select(&doc, "#environments article.env[data-env=prod]")[0];
    let attr = |name| card.value().attr(name);
    assert_eq!(
        (attr("data-phase"), attr("data-target-generation"), attr("data-observed-generation"), attr("data-suspended")),
        (Some("Degraded"), Some("3"), Some("2"), Some("false"))
    );
    let running = text(&select(&doc, "[data-env=prod] [data-field=running]")[0]);
    assert_eq!(running, "1.0.0 (seq 1, blake3:010101010101)");
    let inst = &select(&doc, "[data-env=prod] tr[data-instance=web-1]")[0];
    assert_eq!(
        (inst.value().attr("data-group"), inst.value().attr("data-generation"), inst.value().attr("data-health")),
        (Some("web"), Some("2"), Some("healthy"))
    );
    // staging is in the ledger but has no report: shown as such, not left out.
    let staging = &select(&doc, "article.env[data-env=staging]")[0];
    assert_eq!(staging.value().attr("data-phase"), Some("unknown"));
    assert!(select(&doc, "#agent").is_empty(), "no agent given, no agent panel");
    assert!(select(&doc, "meta[http-equiv=refresh]").is_empty());
}

#[test]
fn refresh_and_agent_panel_appear_only_when_asked_for() {
    let view = PageView {
        title: "t".into(),
        refresh_seconds: Some(15),
        agent: Some(AgentView { id: "host:/var/lib/stele".into(), last_poll: None, ready: false, message: None }),
        ..PageView::default()
    };
    let page = render_page(&view);
    assert!(page.starts_with("<!DOCTYPE html>"));
    let doc = Html::parse_document(&page);
    assert_eq!(select(&doc, "meta[http-equiv=refresh]")[0].value().attr("content"), Some("15"));
    let agent = &select(&doc, "#agent")[0];
    assert_eq!(
        (agent.value().attr("data-ready"), agent.value().attr("data-agent")),
        (Some("false"), Some("host:/var/lib/stele"))
    );
    assert!(select(&doc, "#audit").is_empty(), "no timeline given, no audit section");
    assert_eq!(text(&select(&doc, "#no-environments")[0]), "No environment has reported yet.");
    assert!(!page.contains("<link") && !page.contains("src="), "no external assets");
}
