//! Signed status and per-agent refs (issue 13): an agent with `key_file` writes signed status
//! documents to its own ref `refs/stele/status/<agent-id>`, whose signatures verify against the
//! ledger's policy once `stele policy set-agent` declares the key; an agent without a key keeps
//! writing the shared, unsigned branch `stele/status` (and says its reports will be UNVERIFIED); an
//! agent given a key of a role refuses to run. Real `stele agent --once`, real git, and writers with
//! different keys racing to one bare remote through a real `git daemon`.

mod common;

use common::*;
use ledger_format::document::Document;
use ledger_format::observation::verify_observation;
use ledger_format::types::{CommitId, EnvName, Policy};
use ledger_format::SecretKey;
use std::path::{Path, PathBuf};
use stele::status::{decode, EnvStatus, Phase, Published, StatusError, StatusKey, StatusWriter, FORMAT};

/// A ledger `acme` with `staging` (no release: the agent settles at once, starting nothing) and an
/// agent configuration for it; `extra` goes at the top of the configuration.
struct Setup {
    sb: Sandbox,
    root: Key,
    ledger: Ledger,
    config: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let sb = Sandbox::new();
        let root = sb.key("root");
        let ledger = sb.ledger("ledger", "acme", &root, &["staging", "prod"]);
        let config = sb.path("agent.toml");
        Setup { sb, root, ledger, config }
    }

    /// Runs `stele agent --once` for `staging` with `extra` configuration lines.
    fn agent(&self, extra: &str) -> Output {
        std::fs::write(
            &self.config,
            format!(
                "{extra}\nrepo = \"{}\"\nstate_dir = \"{}\"\ntrust_root = [\"{}\"]\nenvironments = [\"staging\"]\n",
                path_str(&self.ledger.dir),
                path_str(&self.sb.path("state")),
                self.root.id
            ),
        )
        .expect("write agent.toml");
        self.ledger.stele(["agent", "--config", &path_str(&self.config), "--once", "--timeout", "60"])
    }

    /// The refs of the ledger repository under `prefix`.
    fn refs(&self, prefix: &str) -> Vec<String> {
        self.ledger.git(["for-each-ref", "--format=%(refname)", prefix]).lines().map(str::to_owned).collect()
    }

    fn file_at(&self, refname: &str, path: &str) -> Vec<u8> {
        self.ledger.git_bytes(["show", &format!("{refname}:{path}")], None)
    }

    fn head(&self) -> String {
        self.ledger.git(["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// The policy at the ledger's HEAD.
    fn policy(&self) -> Policy {
        let bytes = self.ledger.read("trust/policy.json");
        Document::<Policy>::parse(&bytes).expect("the policy parses").payload
    }
}

#[test]
fn an_agent_with_a_key_writes_signed_status_to_its_own_ref_which_verifies_once_declared() {
    let s = Setup::new();
    let agent_key = s.sb.key("agent");
    let key_line = format!("key_file = \"{}\"", path_str(&agent_key.secret));

    // Not yet declared: the agent runs, signs, and says readers will not verify it.
    let out = s.agent(&key_line);
    out.expect(OK);
    assert!(
        out.stderr
            .contains(&format!("reports will be UNVERIFIED: key {} is not an agent key of policy v1", agent_key.id)),
        "{}",
        out.dump()
    );
    let own = format!("refs/stele/status/{}", &agent_key.id[..16]);
    assert_eq!(s.refs("refs/stele/status/"), std::slice::from_ref(&own));
    assert!(s.refs("refs/heads/stele/").is_empty(), "the shared branch is not written by a signed agent");

    s.ledger
        .stele(["policy", "set-agent", "--pubkey", &agent_key.public(), "--env", "staging", "--key", &s.root.secret()])
        .expect(OK);
    let out = s.agent(&key_line);
    out.expect(OK);
    assert!(!out.stderr.contains("UNVERIFIED"), "a declared key is not warned about\n{}", out.dump());

    let bytes = s.file_at(&own, "status/staging.json");
    let file = decode(&bytes).expect("a status file");
    let doc = file.signed.expect("a signed status document");
    assert_eq!(doc.signatures[0].keyid.to_string(), agent_key.id);
    assert_eq!(file.status.ledger_commit, s.head(), "the status names the verified head (the set-agent commit)");
    let (policy, head) = (s.policy(), s.head().parse::<CommitId>().expect("a commit id"));
    let env: EnvName = "staging".parse().unwrap();
    let verified = verify_observation(&bytes, &env, |c| (*c == head).then_some(&policy)).expect("O1-O4 pass");
    assert_eq!(verified.agent.to_string(), agent_key.id);
    // Filed under another environment it does not verify: the check is real.
    let prod: EnvName = "prod".parse().unwrap();
    assert!(verify_observation(&bytes, &prod, |c| (*c == head).then_some(&policy)).is_err());
    let message = s.ledger.git(["log", "-1", "--format=%B", &own]);
    assert!(message.contains(&format!("signed: {}", agent_key.id)), "{message}");
    let readme = String::from_utf8(s.file_at(&own, "README.md")).unwrap();
    assert!(readme.contains("signed status document"), "{readme}");

    // A configured agent_id names the ref instead.
    let out = s.agent(&format!("{key_line}\nagent_id = \"eu-web-1\""));
    out.expect(OK);
    assert!(s.refs("refs/stele/status/").contains(&"refs/stele/status/eu-web-1".to_owned()));
    let bytes = s.file_at("refs/stele/status/eu-web-1", "status/staging.json");
    assert_eq!(decode(&bytes).expect("status").status.agent, "eu-web-1");
    assert!(verify_observation(&bytes, &env, |c| (*c == head).then_some(&policy)).is_ok());
}

#[test]
fn an_agent_without_a_key_writes_the_shared_unsigned_branch_and_warns() {
    let s = Setup::new();
    let out = s.agent("");
    out.expect(OK);
    assert!(out.stderr.contains("no key_file") && out.stderr.contains("UNVERIFIED"), "{}", out.dump());
    assert_eq!(s.refs("refs/heads/stele/"), ["refs/heads/stele/status"]);
    assert!(s.refs("refs/stele/status/").is_empty());
    let file = decode(&s.file_at("refs/heads/stele/status", "status/staging.json")).expect("a status file");
    assert!(file.signed.is_none(), "unsigned");
    assert_eq!(file.status.env.to_string(), "staging");
}

#[test]
fn an_agent_refuses_a_release_key_and_an_unreadable_key_file() {
    let s = Setup::new();
    // The root key signs policies and releases: an agent must never hold it.
    let out = s.agent(&format!("key_file = \"{}\"", s.root.secret()));
    out.expect(REFUSED);
    assert!(
        out.stderr.contains(&s.root.secret()) && out.stderr.contains("is in the root role of policy v1"),
        "{}",
        out.dump()
    );
    assert!(s.refs("refs/stele/").iter().all(|r| !r.starts_with("refs/stele/status/")), "nothing written");
    assert!(s.refs("refs/heads/stele/").is_empty());

    let missing = s.sb.path("missing.key");
    let out = s.agent(&format!("key_file = \"{}\"", path_str(&missing)));
    out.expect(REFUSED);
    assert!(out.stderr.contains(&path_str(&missing)) && out.stderr.contains("key_file"), "{}", out.dump());
    let out = s.agent(&format!("key_file = \"{}\"", s.root.public()));
    out.expect(REFUSED);
    assert!(out.stderr.contains(&s.root.public()), "{}", out.dump());
}

// ---------------------------------------------------------------------------------------------------
// Writers on a bare remote through git daemon

fn status(env: &str, generation: u64, phase: Phase) -> EnvStatus {
    EnvStatus {
        format: FORMAT,
        env: env.parse().unwrap(),
        ledger: "acme".parse().unwrap(),
        ledger_commit: format!("{generation:040x}"),
        target_generation: generation,
        observed_generation: if phase == Phase::Healthy { generation } else { generation - 1 },
        target: None,
        running: None,
        phase,
        message: String::new(),
        instances: Vec::new(),
        last_error: None,
        agent: format!("agent-{env}"),
        updated_at: "2026-01-01T00:00:00Z".parse().unwrap(),
        suspended: None,
    }
}

/// A bare repository with a `main` branch under `sb`, served by `git daemon`.
fn served_remote(sb: &Sandbox) -> (GitDaemon, String, PathBuf) {
    sb.git(sb.root(), ["init", "-q", "--bare", "-b", "main", "remote.git"]);
    let seed = sb.path("seed");
    sb.git(sb.root(), ["init", "-q", "-b", "main", "seed"]);
    std::fs::write(seed.join("ledger.txt"), "the ledger branch\n").expect("write");
    sb.git(&seed, ["add", "-A"]);
    sb.git(&seed, ["commit", "-q", "-m", "ledger"]);
    sb.git(&seed, ["push", "-q", &path_str(&sb.path("remote.git")), "main"]);
    let daemon = GitDaemon::serve(sb, sb.root());
    let url = format!("git://127.0.0.1:{}/remote.git", daemon.port);
    (daemon, url, sb.path("remote.git"))
}

fn signed_by(bare: &Path, sb: &Sandbox, refname: &str, env: &str) -> String {
    let bytes = sb.git_bytes(bare, ["show", &format!("{refname}:status/{env}.json")], None);
    let doc = decode(&bytes).expect("status").signed.expect("signed");
    doc.signatures[0].keyid.to_string()
}

#[test]
fn agents_with_their_own_refs_never_lose_a_race() {
    let sb = Sandbox::new();
    let (_daemon, url, bare) = served_remote(&sb);
    let keys: Vec<SecretKey> = (1..=2u8).map(|i| SecretKey::from_seed(&[i; 32])).collect();
    let threads: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let key = StatusKey::new(SecretKey::from_seed(&key.seed()));
            let refname = format!("refs/stele/status/{}", &key.key_id().to_hex()[..16]);
            let cache = sb.path(&format!("agent{i}.git"));
            let url = url.clone();
            std::thread::spawn(move || {
                let mut w = StatusWriter::open_ref(&url, &refname, &cache).expect("open").with_key(key);
                for generation in 2..=6 {
                    for env in [format!("a{i}-one"), format!("a{i}-two")] {
                        for phase in [Phase::Progressing, Phase::Healthy] {
                            let out = w.publish(&status(&env, generation, phase)).expect("publish");
                            assert!(matches!(out, Published::Committed { attempts: 1, .. }), "{out:?}");
                        }
                    }
                }
                (refname, w.stats())
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let (refname, stats) = t.join().expect("writer thread");
        assert_eq!(stats.lost_races, 0, "{refname}: {stats:?}");
        assert_eq!((stats.offers, stats.commits), (20, 20), "{refname}: {stats:?}");
        let id = keys[i].public_key().key_id().to_string();
        for env in [format!("a{i}-one"), format!("a{i}-two")] {
            assert_eq!(signed_by(&bare, &sb, &refname, &env), id);
        }
        let count = sb.git(&bare, ["rev-list", "--count", &refname]);
        assert_eq!(count.trim(), "20", "{refname}: one commit per change");
    }
}

#[test]
fn a_signed_writer_re_signs_a_file_it_did_not_sign_and_never_overwrites_one_it_cannot_parse() {
    let sb = Sandbox::new();
    let (_daemon, url, bare) = served_remote(&sb);
    let refname = "refs/stele/status/rotating";
    let old = StatusKey::new(SecretKey::from_seed(&[1; 32]));
    let new = StatusKey::new(SecretKey::from_seed(&[2; 32]));
    let s = status("staging", 3, Phase::Healthy);

    let mut w = StatusWriter::open_ref(&url, refname, &sb.path("old.git")).expect("open").with_key(old);
    assert!(matches!(w.publish(&s).expect("publish"), Published::Committed { .. }));
    assert!(matches!(w.publish(&s).expect("publish"), Published::Unchanged), "same key, same status");
    // The agent's key was replaced: the same status is written again, under the new key, once.
    let mut w = StatusWriter::open_ref(&url, refname, &sb.path("new.git")).expect("open").with_key(new.clone());
    assert!(matches!(w.publish(&s).expect("publish"), Published::Committed { .. }));
    assert_eq!(signed_by(&bare, &sb, refname, "staging"), new.key_id().to_string());
    assert!(matches!(w.publish(&s).expect("publish"), Published::Unchanged));
    // An unsigned writer on the same ref would not touch a file only because it is signed.
    let mut plain = StatusWriter::open_ref(&url, refname, &sb.path("plain.git")).expect("open");
    assert!(matches!(plain.publish(&s).expect("publish"), Published::Unchanged));

    // Someone commits a broken file: the writer refuses to overwrite it.
    let scratch = sb.path("scratch");
    sb.git(sb.root(), ["clone", "-q", &path_str(&bare), "scratch"]);
    sb.git(&scratch, ["fetch", "-q", "origin", &format!("{refname}:{refname}")]);
    sb.git(&scratch, ["checkout", "-q", refname]);
    std::fs::write(scratch.join("status/staging.json"), "{ not json").expect("write");
    sb.git(&scratch, ["commit", "-qam", "broken"]);
    sb.git(&scratch, ["push", "-q", "origin", &format!("HEAD:{refname}")]);
    let before = sb.git(&bare, ["rev-parse", refname]);
    let err = w.publish(&status("staging", 4, Phase::Healthy)).expect_err("a corrupt file is not overwritten");
    assert!(matches!(err, StatusError::Corrupt { ref file, .. } if file == "status/staging.json"), "{err}");
    assert_eq!(sb.git(&bare, ["rev-parse", refname]), before, "the ref did not move");
}

#[test]
fn a_writer_refuses_refs_outside_heads_and_stele() {
    let sb = Sandbox::new();
    let (_daemon, url, _) = served_remote(&sb);
    for bad in ["refs/tags/status", "refs/remotes/origin/x", "HEAD", "refs/stele/bad..name", "stele/status"] {
        match StatusWriter::open_ref(&url, bad, &sb.path("c.git")) {
            Err(StatusError::Refused { reason, .. }) => assert!(reason.contains(bad), "{reason}"),
            Err(e) => panic!("{bad}: {e}"),
            Ok(_) => panic!("{bad}: accepted"),
        }
    }
}
