//! `stele audit --html FILE` on a ledger made by the real `stele` binary and the real `git` CLI,
//! loaded in real headless Chromium: the DOM shows the environments as the status branch reports
//! them (phase, target and observed generations, instances), every timeline row with who signed it,
//! the refused commit marked with its check, the SSH-signed rollback, the co-signature, the status
//! branch's unsigned reports marked UNVERIFIED and never shown as claims, and the open proposal. A screenshot of the report goes to
//! target/screenshots/audit-report.png. Also: the library's `timeline_json` gives exactly what
//! `stele audit --json` prints, and how `--html` combines with `--json`, `--at` and `--env`.

mod common;

use common::browser;
use common::*;
use ledger_format::history::TrustAnchor;
use ledger_format::types::Entry;
use ledger_format::types::EnvName;
use ledger_format::Document;
use scraper::{ElementRef, Html, Selector};
use serde_json::{json, Value};

/// A ledger with two environments and everything the timeline can show, plus a status branch.
struct Story {
    sb: Sandbox,
    alice: Key,
    ledger: Ledger,
    bad: String,
    rollback: String,
}

/// staging (alice, bob): 1.0.0 by alice, 2.0.0 by bob, `git revert -S` of it by alice (rollback), a
/// hand-written entry (refused) and its revert (recovery). prod: 1.0.0 by alice, then 2 of 2 with
/// carol (a co-signature of the tip), then 2.0.0 by alice alone (an open proposal). The status branch
/// says staging runs generation 3 healthy and prod's generation 1 failed its health gate.
fn story() -> Story {
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let bob = sb.key("bob");
    let carol = sb.key("carol");
    let ledger = sb.ledger("ledger", "acme-report", &alice, &["staging", "prod"]);
    let l = &ledger;
    let add = ["policy", "add-signer", "--env", "staging", "--pubkey", &bob.public(), "--key", &alice.secret()];
    l.stele(add).expect(OK);
    l.release("staging", "1.0.0", &sb.image("app-1.tar", b"app 1\n"), &alice);
    l.release("staging", "2.0.0", &sb.image("app-2.tar", b"app 2\n"), &bob);
    let signing_key = format!("user.signingkey={}", alice.secret());
    l.git(["-c", "gpg.format=ssh", "-c", &signing_key, "revert", "--no-edit", "-S", "HEAD"]);
    let rollback = l.git(["rev-parse", "HEAD"]).trim().to_owned();
    l.write("ledger/staging/5.json", b"{}\n");
    l.commit_all("hand-written entry <b>bold</b>");
    let bad = l.git(["rev-parse", "HEAD"]).trim().to_owned();
    l.git(["revert", "--no-edit", "HEAD"]);
    l.release("prod", "1.0.0", &sb.image("app-1.tar", b"app 1\n"), &alice);
    l.two_of_two("prod", &alice, &carol);
    l.try_release("prod", "2.0.0", &sb.image("app-2.tar", b"app 2\n"), &alice, &[]).expect(OK).says(&["proposal"]);
    let story = Story { sb, alice, ledger, bad, rollback };
    story.report("staging", 3, 3, "Healthy", "converged", &[("staging-web-7", 3, "healthy", None)]);
    story.report(
        "prod",
        1,
        0,
        "Degraded",
        "health gate failed: <script>alert(1)</script>",
        &[("prod-web-1", 1, "unhealthy: connection refused", Some("stopped by hand"))],
    );
    story
}

impl Story {
    /// Commits `status/<env>.json` onto `stele/status` as an agent would report it, for the ledger's
    /// target of `env` at `target_generation` (its current tip entry).
    fn report(
        &self,
        env: &str,
        target_generation: u64,
        observed_generation: u64,
        phase: &str,
        message: &str,
        instances: &[(&str, u64, &str, Option<&str>)],
    ) {
        let l = &self.ledger;
        let dir = l.path(&format!("ledger/{env}"));
        let tip_seq = std::fs::read_dir(&dir)
            .expect("the environment has entries")
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".json")?.parse::<u64>().ok())
            .max()
            .expect("a tip");
        let entry = Document::<Entry>::parse(&l.read(&format!("ledger/{env}/{tip_seq}.json"))).expect("an entry");
        let target = json!({"version": entry.payload.version, "seq": tip_seq, "blake3": entry.payload.image.digest()});
        let instances: Vec<Value> = instances
            .iter()
            .map(|(id, generation, health, drift)| {
                json!({"id": id, "group": "web", "generation": generation, "blake3": entry.payload.image.digest(),
                       "health": health, "since": "2030-01-01T00:00:00Z", "drift": drift})
            })
            .collect();
        let status: stele::status::EnvStatus = serde_json::from_value(json!({
            "format": 1, "env": env, "ledger": entry.payload.ledger, "ledger_commit": l.git(["rev-parse", "HEAD"]).trim(),
            "target_generation": target_generation, "observed_generation": observed_generation,
            "target": target, "running": if phase == "Healthy" { target.clone() } else { Value::Null },
            "phase": phase, "message": message, "instances": instances, "last_error": null,
            "agent": "host:/var/lib/stele", "updated_at": "2030-01-02T00:00:00Z",
        }))
        .expect("a status document");
        let blob = l.git_bytes(["hash-object", "-w", "--stdin"], Some(&stele::status::render(&status)));
        let blob = String::from_utf8_lossy(&blob).trim().to_owned();
        let parent = l.git(["for-each-ref", "--format=%(objectname)", "refs/heads/stele/status"]);
        let parent = parent.trim();
        // The other environments' files stay: read the status directory of the parent, if any.
        let mut listing = String::new();
        if !parent.is_empty() {
            for line in l.git(["ls-tree", &format!("{parent}:status")]).lines() {
                if !line.ends_with(&format!("\t{env}.json")) {
                    listing.push_str(line);
                    listing.push('\n');
                }
            }
        }
        listing.push_str(&format!("100644 blob {blob}\t{env}.json\n"));
        let dir = l.git_bytes(["mktree"], Some(listing.as_bytes()));
        let dir = String::from_utf8_lossy(&dir).trim().to_owned();
        let root = l.git_bytes(["mktree"], Some(format!("040000 tree {dir}\tstatus\n").as_bytes()));
        let root = String::from_utf8_lossy(&root).trim().to_owned();
        let mut args = vec!["commit-tree", root.as_str(), "-m", "status"];
        if !parent.is_empty() {
            args.extend(["-p", parent]);
        }
        let commit = l.git(&args);
        l.git(["update-ref", "refs/heads/stele/status", commit.trim()]);
    }

    fn trust(&self) -> [String; 2] {
        ["--trust-root".into(), self.alice.id.clone()]
    }
}

fn select<'a>(doc: &'a Html, css: &str) -> Vec<ElementRef<'a>> {
    doc.select(&Selector::parse(css).unwrap_or_else(|e| panic!("selector {css}: {e:?}"))).collect()
}

/// The one element `css` selects.
#[track_caller]
fn one<'a>(doc: &'a Html, css: &str) -> ElementRef<'a> {
    let all = select(doc, css);
    assert_eq!(all.len(), 1, "{css} selects {} elements in\n{}", all.len(), doc.html());
    all[0]
}

fn attr<'a>(e: &ElementRef<'a>, name: &str) -> Option<&'a str> {
    e.value().attr(name)
}

fn text(e: &ElementRef) -> String {
    e.text().collect()
}

/// The values of `attribute` on the elements `css` selects inside `scope`, sorted.
fn attrs_in(scope: &ElementRef, css: &str, attribute: &str) -> Vec<String> {
    let sel = Selector::parse(css).expect("a selector");
    let mut v: Vec<String> = scope.select(&sel).filter_map(|e| e.value().attr(attribute).map(str::to_owned)).collect();
    v.sort();
    v
}

#[test]
fn the_html_report_loaded_in_chromium_shows_environments_signers_rollback_and_the_refused_commit() {
    let s = story();
    let l = &s.ledger;
    let report = s.sb.path("report.html");
    let trust = s.trust();
    let mut args = vec!["audit".to_owned(), "--html".to_owned(), path_str(&report)];
    args.extend(trust.clone());
    let out = l.stele(&args);
    out.expect(VERIFY_FAILED).says(&["FAILED: 1 refused commit", "report written to"]);
    assert!(!out.stdout.contains("TIME (UTC)"), "with --html, stdout gets a summary, not the timeline\n{}", out.dump());
    let json_out = l.stele(["audit".to_owned(), "--json".to_owned()].into_iter().chain(trust));
    json_out.expect(VERIFY_FAILED);
    let a: Value = serde_json::from_str(&json_out.stdout).expect("audit --json prints JSON");

    let dom = browser::dom(report.to_str().expect("UTF-8"));
    let doc = Html::parse_document(&dom);
    assert!(select(&doc, "script, link[rel=stylesheet], img").is_empty(), "self-contained, no scripts");

    // The environments, as the status branch reports them.
    let staging = one(&doc, "#environments article.env[data-env=staging]");
    assert_eq!(
        (
            attr(&staging, "data-phase"),
            attr(&staging, "data-target-generation"),
            attr(&staging, "data-observed-generation")
        ),
        (Some("Healthy"), Some("3"), Some("3"))
    );
    assert_eq!(attrs_in(&staging, "tr[data-instance]", "data-instance"), ["staging-web-7"]);
    let prod = one(&doc, "#environments article.env[data-env=prod]");
    assert_eq!(
        (attr(&prod, "data-phase"), attr(&prod, "data-target-generation"), attr(&prod, "data-observed-generation")),
        (Some("Degraded"), Some("1"), Some("0"))
    );
    let message = one(&doc, "article.env[data-env=prod] [data-field=message]");
    assert_eq!(text(&message), "health gate failed: <script>alert(1)</script>", "the message stays text");
    let instance = one(&doc, "article.env[data-env=prod] tr[data-instance=prod-web-1]");
    assert_eq!(
        (attr(&instance, "data-health"), attr(&instance, "data-drift")),
        (Some("unhealthy: connection refused"), Some("stopped by hand"))
    );

    // The verdict, and one row per row of `stele audit --json`, in order, same kind, commit and
    // generation, naming the same signers.
    let audit = one(&doc, "#audit");
    assert_eq!((attr(&audit, "data-ok"), attr(&audit, "data-trust-root-pinned")), (Some("false"), Some("true")));
    assert!(text(&one(&doc, "#verdict")).starts_with("FAILED: 1 refused commit"));
    let rows = select(&doc, "#timeline tbody tr");
    let expected = a["timeline"].as_array().expect("a timeline");
    assert_eq!(rows.len(), expected.len(), "{dom}");
    for (row, want) in rows.iter().zip(expected) {
        let kind = want["action"].as_str().expect("an action");
        assert_eq!(attr(row, "data-row-kind"), Some(kind));
        assert_eq!(attr(row, "data-commit"), want["commit"].as_str());
        if let Some(env) = want["env"].as_str() {
            assert_eq!(attr(row, "data-env"), Some(env));
            assert_eq!(attr(row, "data-generation").map(str::to_owned), Some(want["generation"].to_string()));
        }
        if !matches!(kind, "rollback" | "withdraw" | "refused" | "recovered") {
            let mut names: Vec<String> = want["signed_by"]
                .as_array()
                .expect("signers")
                .iter()
                .map(|k| k["name"].as_str().expect("a named key").to_owned())
                .collect();
            names.sort();
            assert_eq!(
                attrs_in(row, "td.signers [data-signer]", "data-signer"),
                names,
                "row {kind} {}",
                want["commit"]
            );
        }
    }
    let kinds: Vec<&str> = rows.iter().filter_map(|r| attr(r, "data-row-kind")).collect();
    for kind in ["genesis", "promote", "rollback", "refused", "recovered", "co-sign", "policy"] {
        assert!(kinds.contains(&kind), "a {kind} row: {kinds:?}");
    }
    let promotions = select(&doc, "#timeline tr[data-row-kind=promote][data-env=staging]");
    let signers: Vec<Vec<String>> = promotions.iter().map(|r| attrs_in(r, "[data-signer]", "data-signer")).collect();
    assert_eq!(signers, [["alice"], ["bob"]], "1.0.0 by alice, 2.0.0 by bob");

    // The rollback: SSH-signed by alice, reverting bob's 2.0.0, back to 1.0.0.
    let rollback = one(&doc, &format!("#timeline tr[data-row-kind=rollback][data-commit='{}']", s.rollback));
    assert_eq!(attrs_in(&rollback, "[data-revert-signer]", "data-revert-signer"), ["alice"]);
    assert_eq!(attrs_in(&rollback, "[data-reverted-signer]", "data-reverted-signer"), ["bob"]);
    assert!(text(&rollback).contains("reverted 2.0.0 (seq 2"), "{}", text(&rollback));
    assert!(text(&rollback).contains("target now 1.0.0 (seq 1"), "{}", text(&rollback));
    assert_eq!(attr(&rollback, "data-generation"), Some("3"));
    let none: [&str; 0] = [];
    assert_eq!(attrs_in(&rollback, "[data-gate]", "data-gate"), none, "staging's unsigned report of gen 3 is no claim");

    // The refused commit: marked, with its check and file, and its summary as text.
    let refused = one(&doc, &format!("#timeline tr[data-row-kind=refused][data-commit='{}']", s.bad));
    assert!(attr(&refused, "class").is_some_and(|c| c.contains("refused")));
    assert_eq!(text(&one(&doc, "tr[data-row-kind=refused] .badge")), "REFUSED");
    let problem = select(&doc, "tr[data-row-kind=refused] li[data-check]");
    assert_eq!(attr(&problem[0], "data-path"), Some("ledger/staging/5.json"));
    assert_eq!(attr(&problem[0], "data-check"), a["refusals"][0]["problems"][0]["check"].as_str());
    assert!(text(&refused).contains("\"hand-written entry <b>bold</b>\" by Stele Test"), "{}", text(&refused));
    one(&doc, "#timeline tr[data-row-kind=recovered]");

    // prod: carol's co-signature, the open proposal. The status branch is unsigned (an agent
    // without a key): its failed gate is no claim, its cards and reports are marked UNVERIFIED.
    let cosign = one(&doc, "#timeline tr[data-row-kind=co-sign][data-env=prod]");
    assert_eq!(attrs_in(&cosign, "[data-co-signer]", "data-co-signer"), ["carol"]);
    assert_eq!(attrs_in(&cosign, "td.signers [data-signer]", "data-signer"), ["alice", "carol"]);
    let failed = select(&doc, "#timeline tr[data-env=prod][data-generation='1'] [data-gate=failed]");
    assert!(failed.is_empty(), "an unsigned report is never shown as a claim:\n{dom}");
    assert_eq!(attr(&prod, "data-verified"), Some("false"));
    assert_eq!(text(&one(&doc, "article.env[data-env=prod] .badge.unverified")), "UNVERIFIED");
    let unverified = one(&doc, "#unverified li[data-env=prod][data-verified=false]");
    assert_eq!(attr(&unverified, "data-check"), Some("O1"));
    assert!(text(&unverified).contains("Degraded generation 0/1"), "{}", text(&unverified));
    assert!(
        select(&doc, "#timeline tr[data-row-kind=spec] [data-gate]").is_empty(),
        "a spec change made no generation"
    );
    let proposal = one(&doc, "#proposals article.proposal[data-proposal='prod-2.0.0']");
    let doc_row = one(&doc, "article.proposal tr[data-path='ledger/prod/2.json']");
    assert_eq!(attr(&doc_row, "data-complete"), Some("false"));
    assert_eq!(attrs_in(&proposal, "[data-signer]", "data-signer"), ["alice"]);
    assert_eq!(attrs_in(&proposal, "[data-missing]", "data-missing"), ["carol"]);

    let png = browser::screenshot_dir().join("audit-report.png");
    browser::screenshot(report.to_str().expect("UTF-8"), &png, 1400, 1600);
}

/// `timeline_json` (what the agent's page shows) is exactly what `stele audit --json` prints, also
/// read from a bare repository (as an agent's fetch cache is).
#[test]
fn timeline_json_is_what_audit_json_prints() {
    let s = story();
    let l = &s.ledger;
    let out = l.stele(["audit".to_owned(), "--json".to_owned()].into_iter().chain(s.trust()));
    let printed: Value = serde_json::from_str(&out.expect(VERIFY_FAILED).stdout).expect("JSON");
    let head = git2::Oid::from_str(l.git(["rev-parse", "HEAD"]).trim()).expect("an id");
    let anchor = TrustAnchor::RootKeys { keys: vec![s.alice.id.parse().expect("a key id")], threshold: 1 };
    let got = stele::commands::audit::timeline_json(&l.dir, head, &anchor, None).expect("a timeline");
    assert_eq!(got, printed);
    let prod: EnvName = "prod".parse().expect("a name");
    let only = stele::commands::audit::timeline_json(&l.dir, head, &anchor, Some(&prod)).expect("a timeline");
    let printed = l.stele(["audit", "--json", "--env", "prod", "--trust-root", &s.alice.id]);
    assert_eq!(only, serde_json::from_str::<Value>(&printed.expect(VERIFY_FAILED).stdout).expect("JSON"));
    // From a bare repository, as an agent's fetch cache is: the same rows.
    let cache = s.sb.path("cache.git");
    s.sb.git(s.sb.root(), ["clone", "-q", "--bare", &path_str(&l.dir), &path_str(&cache)]);
    let bare = stele::commands::audit::timeline_json(&cache, head, &anchor, None).expect("a timeline");
    assert_eq!(bare["timeline"], got["timeline"]);
    assert_eq!(bare["proposals"], got["proposals"]);
    let nope: EnvName = "nope".parse().expect("a name");
    let err = stele::commands::audit::timeline_json(&l.dir, head, &anchor, Some(&nope)).expect_err("unknown env");
    assert!(err.to_string().contains("--env nope: unknown environment; the ledger's policy declares"), "{err}");
}

/// With `--json`, stdout is the JSON and the file is written too; `--env` keeps one environment on
/// the page; without a pinned root the page says so; a refused genesis still gives a page, marked;
/// `--at` with `--html` is a usage error; a file that cannot be written is refused, naming it.
#[test]
fn html_combines_with_json_and_env_and_refuses_at() {
    let s = story();
    let l = &s.ledger;
    let file = s.sb.path("prod.html");
    let path = file.to_str().expect("UTF-8");
    let out = l.stele(["audit", "--json", "--env", "prod", "--html", path, "--trust-genesis-as-found"]);
    let printed: Value = serde_json::from_str(&out.expect(VERIFY_FAILED).stdout).expect("stdout is the JSON");
    assert!(printed["environments"].get("staging").is_none());
    let doc = Html::parse_document(&std::fs::read_to_string(&file).expect("the report was written"));
    let envs: Vec<&str> =
        select(&doc, "#environments article.env").iter().filter_map(|e| attr(e, "data-env")).collect();
    assert_eq!(envs, ["prod"]);
    assert!(select(&doc, "#timeline tr[data-env=staging]").is_empty());
    assert_eq!(attr(&one(&doc, "#audit"), "data-trust-root-pinned"), Some("false"));
    assert!(text(&one(&doc, "#unpinned")).contains("NOT PINNED"));

    // Pinned to a root that never signed the genesis policy: the page is still written, and says so.
    let eve = s.sb.key("eve");
    l.stele(["audit", "--html", path, "--trust-root", &eve.id]).expect(VERIFY_FAILED).says(&["REFUSED genesis commit"]);
    let doc = Html::parse_document(&std::fs::read_to_string(&file).expect("the report was written"));
    assert_eq!(attr(&one(&doc, "#audit"), "data-ok"), Some("false"));
    let genesis = l.git(["rev-list", "--max-parents=0", "HEAD"]);
    let refused = one(&doc, "#timeline tr[data-row-kind=refused]");
    assert_eq!(attr(&refused, "data-commit"), Some(genesis.trim()));
    assert!(!attrs_in(&refused, "li[data-check]", "data-check").is_empty(), "the check that refused it is shown");

    l.stele(["audit", "--at", "2030-01-01", "--html", path]).expect(USAGE).says(&["--at"]);
    let missing = s.sb.path("no/such/dir/r.html");
    l.stele(["audit", "--html", missing.to_str().expect("UTF-8"), "--trust-genesis-as-found"]).expect(REFUSED).says(&[
        "--html",
        "no/such/dir/r.html",
        "cannot write the report",
    ]);
}
