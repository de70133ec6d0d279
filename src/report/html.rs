//! A minimal HTML writer that escapes everything it is given (text and attribute values alike), and
//! the page's style sheet. Tag and attribute names are always literals of this module's callers.

use std::fmt::Write as _;

/// Markup being written. Every string that does not come from a literal is escaped.
#[derive(Default)]
pub struct Html(String);

impl Html {
    /// Markup written as is: only ever a literal of this module's callers.
    pub fn raw(&mut self, markup: &'static str) {
        self.0.push_str(markup);
    }

    /// Escaped text.
    pub fn text(&mut self, text: &str) {
        escape_into(&mut self.0, text);
    }

    pub fn open(&mut self, tag: &'static str, attrs: &[(&'static str, &str)]) {
        self.0.push('<');
        self.0.push_str(tag);
        for (name, value) in attrs {
            let _ = write!(self.0, " {name}=\"");
            escape_into(&mut self.0, value);
            self.0.push('"');
        }
        self.0.push('>');
    }

    /// An element without content (`<meta>`).
    pub fn void(&mut self, tag: &'static str, attrs: &[(&'static str, &str)]) {
        self.open(tag, attrs);
        self.0.push('\n');
    }

    pub fn close(&mut self, tag: &'static str) {
        let _ = write!(self.0, "</{tag}>");
    }

    /// `<tag attrs>text</tag>`.
    pub fn elem(&mut self, tag: &'static str, attrs: &[(&'static str, &str)], text: &str) {
        self.open(tag, attrs);
        self.text(text);
        self.close(tag);
    }

    pub fn finish(self) -> String {
        self.0
    }
}

/// Appends `text` with the five characters that matter in HTML text and in quoted attribute values
/// replaced.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// The page's only style sheet. Colours carry meaning twice over (a word is always next to them), so
/// the page reads the same printed in black and white.
pub const STYLE: &str = r#"
:root { --fg: #1b1f24; --muted: #59636e; --line: #d1d9e0; --bg: #ffffff; --panel: #f6f8fa;
  --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --info: #0969da; --frozen: #8250df; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  background: var(--bg); }
header { padding: 16px 24px; border-bottom: 1px solid var(--line); background: var(--panel); }
h1 { margin: 0 0 4px; font-size: 20px; }
h2 { font-size: 16px; margin: 0 0 8px; display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
h3 { font-size: 14px; margin: 16px 0 6px; }
main { padding: 16px 24px; max-width: 1400px; }
section { margin-bottom: 28px; }
.meta, .muted { color: var(--muted); }
code, .mono { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 16px; }
.scroll { overflow-x: auto; }
article.env, article.proposal, #agent { border: 1px solid var(--line); border-radius: 6px; padding: 12px 14px;
  background: var(--bg); }
article.env[data-suspended="true"] { border-color: var(--frozen); }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
  color: #fff; background: var(--muted); }
.phase-Healthy { background: var(--ok); }
.phase-Progressing { background: var(--info); }
.phase-Degraded { background: var(--warn); }
.phase-Stalled, .badge.refused { background: var(--bad); }
.badge.suspended { background: var(--frozen); }
.badge.ready { background: var(--ok); }
.badge.not-ready { background: var(--warn); }
.badge.unpinned, .badge.unverified { background: var(--bad); }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0 0 8px; }
dt { color: var(--muted); }
dd { margin: 0; overflow-wrap: anywhere; }
.error { color: var(--bad); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: 4px 8px; border-bottom: 1px solid var(--line); }
th { background: var(--panel); font-weight: 600; }
td.num { text-align: right; }
td.nowrap, .nowrap { white-space: nowrap; }
tr.refused td { background: #ffebe9; }
tr.refused td:first-child { border-left: 4px solid var(--bad); }
tr.recovered td { background: #fff8c5; }
tr.rollback td, tr.withdraw td { background: #fbefff; }
tr.policy td, tr.spec td, tr.genesis td { background: #f6f8fa; }
.signer { white-space: nowrap; }
.gate-failed { color: var(--bad); font-weight: 600; }
.gate-converged { color: var(--ok); }
ul.problems { margin: 4px 0 0; padding-left: 18px; }
.warn-box { border: 1px solid var(--bad); background: #ffebe9; padding: 8px 12px; border-radius: 6px; }
"#;
