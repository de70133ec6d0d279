//! Readers verify observations (issue 13): status documents written with real Git into the status
//! refs (`refs/stele/status/<agent>` and the legacy branch `stele/status`) of a ledger made by
//! `stele init`, with agent keys granted by `stele policy set-agent`. Each forgery (an unsigned
//! status, one signed by an unknown key, one by an agent of another environment, one naming a ledger
//! commit not in the verified history, one that does not parse) is labelled UNVERIFIED with its
//! check in `stele status`, `stele audit` and `stele audit --json`, and never counted as a claim of
//! what ran; a properly signed one is VERIFIED with the agent's name.

mod common;

use common::{Key, Ledger, Sandbox, OK};
use serde_json::{json, Value};
use stele::status::EnvStatus;

struct World {
    _sb: Sandbox,
    ledger: Ledger,
    alice: Key,
    prod_agent: Key,
    staging_agent: Key,
    mallory: Key,
    /// The ledger's head: the verified commit the agents report on.
    head: String,
}

fn world() -> World {
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let (prod_agent, staging_agent, mallory) = (sb.key("prodbot"), sb.key("stagebot"), sb.key("mallory"));
    let ledger = sb.ledger("ledger", "acme", &alice, &["staging", "prod"]);
    for (key, env, name) in [(&prod_agent, "prod", "prod-agent"), (&staging_agent, "staging", "staging-agent")] {
        let args = ["policy", "set-agent", "--pubkey", &key.public(), "--env", env, "--name", name];
        ledger.stele(args.iter().copied().chain(["--key", &alice.secret()])).expect(OK);
    }
    let image = sb.image("app-1.0.0.tar", b"#!/bin/sh\nexec sleep 600\n");
    ledger.release("prod", "1.0.0", &image, &alice);
    let head = ledger.git(["rev-parse", "HEAD"]).trim().to_owned();
    World { _sb: sb, ledger, alice, prod_agent, staging_agent, mallory, head }
}

/// prod Healthy at generation 1 (the real one) running `version`, reported on `ledger_commit`.
fn healthy(ledger_commit: &str, version: &str) -> EnvStatus {
    let release = json!({"version": version, "seq": 1, "blake3": "ab".repeat(32)});
    serde_json::from_value(json!({
        "format": 1, "env": "prod", "ledger": "acme", "ledger_commit": ledger_commit,
        "target_generation": 1, "observed_generation": 1, "target": release, "running": release,
        "phase": "Healthy", "message": "", "instances": [], "agent": "host:/var/lib/stele",
        "updated_at": "2030-01-01T00:00:00Z",
    }))
    .expect("a status")
}

fn signed(status: &EnvStatus, key: &Key) -> Vec<u8> {
    let secret = stele::keys::load_secret(&key.secret).expect("an agent key").key;
    stele::status::render_signed(status, &secret).expect("a signed status")
}

impl World {
    /// Commits `status/prod.json` holding `bytes` as the only file of a new root commit on `refname`.
    fn write_ref(&self, refname: &str, bytes: &[u8]) {
        let l = &self.ledger;
        let blob = l.git_bytes(["hash-object", "-w", "--stdin"], Some(bytes));
        let blob = String::from_utf8_lossy(&blob).trim().to_owned();
        let dir = l.git_bytes(["mktree"], Some(format!("100644 blob {blob}\tprod.json\n").as_bytes()));
        let dir = String::from_utf8_lossy(&dir).trim().to_owned();
        let root = l.git_bytes(["mktree"], Some(format!("040000 tree {dir}\tstatus\n").as_bytes()));
        let root = String::from_utf8_lossy(&root).trim().to_owned();
        let commit = l.git(["commit-tree", root.as_str(), "-m", "status"]);
        l.git(["update-ref", refname, commit.trim()]);
    }

    /// Removes every status ref.
    fn clear(&self) {
        let refs = self.ledger.git(["for-each-ref", "--format=%(refname)", "refs/stele/status", "refs/heads/stele"]);
        for r in refs.lines() {
            self.ledger.git(["update-ref", "-d", r]);
        }
    }

    fn status_json(&self) -> Value {
        let out = self.ledger.stele(["status", "--json", "--trust-root", &self.alice.id]);
        serde_json::from_str(&out.expect(OK).stdout).expect("stele status --json prints JSON")
    }

    fn audit_json(&self, extra: &[&str]) -> Value {
        let mut args = vec!["audit", "--json", "--trust-root", self.alice.id.as_str()];
        args.extend(extra);
        let out = self.ledger.stele(&args);
        serde_json::from_str(&out.expect(OK).stdout).expect("stele audit --json prints JSON")
    }

    fn audit_text(&self, extra: &[&str]) -> String {
        let mut args = vec!["audit", "--trust-root", self.alice.id.as_str()];
        args.extend(extra);
        self.ledger.stele(&args).expect(OK).stdout.clone()
    }

    /// The one forgery on `refname` is UNVERIFIED with `check` (and `reason` in its reason)
    /// everywhere, and no claim is built from it.
    fn expect_unverified(&self, case: &str, refname: &str, check: &str, reason: &str) {
        let status = self.status_json();
        let env = &status["environments"][0];
        assert_eq!(
            (env["env"].as_str(), env["verified"].as_bool(), env["check"].as_str(), env["ref"].as_str()),
            (Some("prod"), Some(false), Some(check), Some(refname)),
            "{case}: {status:#}"
        );
        assert!(env["unverified_reason"].as_str().unwrap_or_default().contains(reason), "{case}: {status:#}");
        assert_eq!(env["agent_key"], Value::Null, "{case}");
        let text = self.ledger.stele(["status", "--trust-root", &self.alice.id]).expect(OK).stdout.clone();
        assert!(
            text.contains("prod  UNVERIFIED  Healthy") || text.contains("prod  UNVERIFIED  unreadable"),
            "{case}:\n{text}"
        );
        assert!(text.contains(&format!("unverified ({check}): ")), "{case}:\n{text}");

        let audit = self.audit_json(&[]);
        let prod = &audit["environments"]["prod"];
        let promote = prod["events"].as_array().and_then(|e| e.iter().find(|e| e["action"] == "promote"));
        assert_eq!(promote.map(|e| &e["observed"]), Some(&Value::Null), "{case}: no claim from a forgery: {prod:#}");
        let listed = prod["unverified"].as_array().cloned().unwrap_or_default();
        assert_eq!(listed.len(), 1, "{case}: {prod:#}");
        assert_eq!((listed[0]["check"].as_str(), listed[0]["ref"].as_str()), (Some(check), Some(refname)), "{case}");
        assert_eq!(listed[0]["verified"], false, "{case}");

        let text = self.audit_text(&[]);
        assert!(!text.contains("generation 1 ran"), "{case}: a forged run is never a claim:\n{text}");
        assert!(text.contains("UNVERIFIED observations (1; not counted"), "{case}:\n{text}");
        assert!(
            text.contains(&format!("on {refname} (")) && text.contains(&format!("UNVERIFIED ({check}): ")),
            "{case}:\n{text}"
        );

        let at = self.audit_json(&["--at", "2100-01-01"]);
        let prod = &at["environments"]["prod"];
        assert_eq!(prod["observed"], Value::Null, "{case}: the --at answer uses verified observations only");
        assert_eq!(prod["unverified"][0]["check"], check, "{case}: {prod:#}");
    }
}

#[test]
fn forged_status_is_unverified_everywhere_and_a_signed_one_is_verified_by_its_agent() {
    let w = world();
    let head = w.head.clone();
    let forged = healthy(&head, "6.6.6");

    let cases: [(&str, &str, Vec<u8>, &str, &str); 5] = [
        ("unsigned, on the legacy branch", "refs/heads/stele/status", stele::status::render(&forged), "O1", "unsigned"),
        (
            "signed by an unknown key",
            "refs/stele/status/mallory",
            signed(&forged, &w.mallory),
            "O2",
            "not an agent key",
        ),
        (
            "signed by the agent of another environment",
            "refs/stele/status/stagebot",
            signed(&forged, &w.staging_agent),
            "O3",
            "may report on staging, not on prod",
        ),
        (
            "naming a ledger commit not in the verified history",
            "refs/stele/status/prodbot",
            signed(&healthy(&"f".repeat(40), "1.0.0"), &w.prod_agent),
            "O4",
            "is not a verified commit",
        ),
        ("not a status file at all", "refs/stele/status/junk", b"{\"payload\": 1}".to_vec(), "O1", "not a readable"),
    ];
    for (case, refname, bytes, check, reason) in &cases {
        w.clear();
        w.write_ref(refname, bytes);
        w.expect_unverified(case, refname, check, reason);
    }

    // Without a trust root nothing verifies, and the heading says why; the exit code is unchanged.
    w.clear();
    w.write_ref("refs/stele/status/prodbot", &signed(&healthy(&head, "1.0.0"), &w.prod_agent));
    let out = w.ledger.stele(["status"]);
    out.expect(OK).says(&["UNVERIFIED: no trust root given", "prod  UNVERIFIED  Healthy"]);
    let json: Value = serde_json::from_str(&w.ledger.stele(["status", "--json"]).expect(OK).stdout).expect("JSON");
    assert_eq!(json["environments"][0]["verified"], false);
    assert!(json["environments"][0]["unverified_reason"]
        .as_str()
        .unwrap_or_default()
        .starts_with("no trust root given"));

    // Every forgery at once beside the real agent's report: the real one stands for prod, VERIFIED
    // by its agent, and the audit counts only it.
    for (_, refname, bytes, _, _) in &cases {
        w.write_ref(refname, bytes);
    }
    w.write_ref("refs/stele/status/prodbot", &signed(&healthy(&head, "1.0.0"), &w.prod_agent));
    let status = w.status_json();
    let env = &status["environments"][0];
    assert_eq!(
        (env["verified"].as_bool(), env["ref"].as_str(), env["running"]["version"].as_str()),
        (Some(true), Some("refs/stele/status/prodbot"), Some("1.0.0")),
        "{status:#}"
    );
    assert_eq!(env["agent_key"]["keyid"], w.prod_agent.id.as_str());
    assert!(env["agent_key"]["display"].as_str().unwrap_or_default().starts_with("prod-agent ("), "{env:#}");
    w.ledger
        .stele(["status", "--trust-root", &w.alice.id])
        .expect(OK)
        .says(&["observations verified against ledger acme", "prod  VERIFIED by prod-agent ("]);

    let audit = w.audit_json(&[]);
    let prod = &audit["environments"]["prod"];
    let promote = prod["events"].as_array().and_then(|e| e.iter().find(|e| e["action"] == "promote")).expect("promote");
    assert!(promote["observed"]["converged_at"].is_string(), "{promote:#}");
    assert_eq!(promote["observed"]["agent_key"]["keyid"], w.prod_agent.id.as_str());
    let checks: Vec<&str> =
        prod["unverified"].as_array().expect("a list").iter().filter_map(|u| u["check"].as_str()).collect();
    let mut sorted = checks.clone();
    sorted.sort();
    assert_eq!(sorted, ["O1", "O1", "O2", "O3"], "the O4 report was replaced by the good one on its ref: {prod:#}");
    let text = w.audit_text(&[]);
    assert!(text.contains("(verified, agent prod-agent ("), "{text}");
    assert!(text.contains("generation 1 ran"), "{text}");
    let at = w.audit_json(&["--at", "2100-01-01"]);
    let observed = &at["environments"]["prod"]["observed"];
    assert_eq!((observed["verified"].as_bool(), observed["running"]["version"].as_str()), (Some(true), Some("1.0.0")));
    let text = w.audit_text(&["--at", "2100-01-01"]);
    assert!(text.contains("observed     (VERIFIED claim by agent prod-agent ("), "{text}");
    assert!(!text.contains("running 6.6.6"), "a forged release is never the answer:\n{text}");

    // Audited by URL, the status refs are fetched into the cache with the ledger branch.
    let url = format!("file://{}", w.ledger.dir.display());
    let remote = w.audit_json(&["--repo", &url, "--branch", "main"]);
    let prod = &remote["environments"]["prod"];
    let promote = prod["events"].as_array().and_then(|e| e.iter().find(|e| e["action"] == "promote")).expect("promote");
    assert_eq!(promote["observed"]["agent_key"]["keyid"], w.prod_agent.id.as_str(), "{prod:#}");
    assert_eq!(prod["unverified"].as_array().map(Vec::len), Some(4), "{prod:#}");
}
