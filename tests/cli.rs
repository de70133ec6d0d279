//! The `stele` command line as a user meets it: the new-user story from keys to a co-signed release,
//! machine-readable verification, reproducible images and usage errors. Threats live in
//! `cli_threats.rs`.

mod common;

use common::*;
use std::path::Path;

/// Two keys, a ledger with staging and prod, bob added to prod and prod raised to 2-of-2, an image
/// packed and released by alice: the release is pending until bob co-signs, then verifies; one byte
/// changed in the signed payload is caught and named.
#[test]
fn new_user_story_from_keys_to_a_two_of_two_release_and_a_caught_tamper() {
    let sb = Sandbox::new();
    let alice = sb.key("alice"); // checks mode 0600, the .pub file and `stele key id`
    let bob = sb.key("bob");
    assert_ne!(alice.id, bob.id);
    let ledger = sb.ledger("ledger-repo", "story", &alice, &["staging", "prod"]);
    ledger.expect_valid(&[]).says(&["prod: no releases yet", "staging: no releases yet"]);

    ledger
        .stele(["policy", "add-signer", "--env", "prod", "--pubkey", &bob.public(), "--key", &alice.secret()])
        .expect(OK);
    // Under a 2-of-2 policy the prod spec needs bob's signature too: signed by alice alone, the change
    // is a proposal; bob signs it and it is promoted as one commit carrying the re-signed spec.
    let commits = ledger.commit_count();
    ledger
        .stele(["policy", "set-threshold", "--env", "prod", "--threshold", "2", "--key", &alice.secret()])
        .expect(OK)
        .says(&["set prod threshold to 2", "stele/proposals/policy-v3", "environments/prod.json: N4"]);
    assert_eq!(ledger.commit_count(), commits, "a proposal is not on the ledger branch");
    ledger.expect_valid(&[]);
    ledger.stele(["sign", "--proposal", "policy-v3", "--key", &bob.secret()]).expect(OK);
    ledger.stele(["promote", "policy-v3"]).expect(OK);
    assert_eq!(ledger.commit_count(), commits + 1);
    let policy = ledger.stele(["policy", "show"]);
    policy.expect(OK).says(&["prod: 2 of", "staging: 1 of", "alice", "bob"]);

    let app = sb.path("app");
    std::fs::create_dir_all(app.join("bin")).unwrap();
    std::fs::write(app.join("bin/run.sh"), "#!/bin/sh\necho hello\n").unwrap();
    manifest(&app, "bin/run.sh");
    let tar = sb.path("app-1.4.2.tar");
    let packed = sb.stele(sb.root(), ["image", "pack", &path_str(&app), "--out", &path_str(&tar)]);
    let digest = packed.expect(OK).first_word();

    let commits = ledger.commit_count();
    ledger.release("prod", "1.4.2", &tar, &alice).says(&["ledger/prod/1.json", "threshold not met: 1 of 2"]);
    assert_eq!(ledger.commit_count(), commits, "a release short of signatures is a proposal, off the branch");
    ledger.expect_valid(&[]).says(&["prod: no releases yet"]);
    let entry = ledger.git(["show", "stele/proposals/prod-1.4.2:ledger/prod/1.json"]);
    let entry: serde_json::Value = serde_json::from_str(&entry).unwrap();
    assert_eq!(entry["payload"]["image"]["blake3"], digest.as_str(), "the entry pins the packed image");

    ledger
        .stele(["sign", "--proposal", "prod-1.4.2", "--key", &bob.secret()])
        .expect(OK)
        .says(&["every threshold is met"]);
    ledger.stele(["promote", "prod-1.4.2"]).expect(OK);
    ledger.expect_valid(&[]).says(&["prod: 1.4.2 (seq 1)", &digest, "alice", "bob"]);

    // One byte of the signed payload, changed by hand: the version text 1.4.2 becomes 1.4.3.
    let text = ledger.read_string("ledger/prod/1.json");
    ledger.write("ledger/prod/1.json", replace_once(&text, "\"version\": \"1.4.2\"", "\"version\": \"1.4.3\""));
    ledger.expect_problems(&[], &[("ledger/prod/1.json", "E5", &["does not verify", "(S1)"])]);
}

/// `verify --json` is one JSON document: `ok` true with no problems for a valid tree, `ok` false with
/// every problem as {path, check, reason} otherwise, and the exit code still says which.
#[test]
fn verify_json_reports_ok_and_every_problem_as_path_check_reason() {
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let image = sb.image("app.tar", b"app v1\n");
    let ledger = sb.ledger("repo", "json-demo", &alice, &["prod"]);
    ledger.release("prod", "1.0.0", &image, &alice);

    let good = ledger.verify(&["--json"]);
    good.expect(OK);
    let v: serde_json::Value = serde_json::from_str(&good.stdout).unwrap_or_else(|e| panic!("{e}\n{}", good.dump()));
    assert_eq!(v["ok"], true);
    assert_eq!(v["problems"], serde_json::json!([]));
    assert_eq!(v["ledger"], "json-demo");
    assert_eq!(v["environments"]["prod"]["tip"]["version"], "1.0.0");

    ledger.git(["rm", "-q", "environments/prod.json"]);
    ledger.write("ledger/prod/notes.txt", "hello");
    let bad = ledger.verify(&["--json"]);
    bad.expect(VERIFY_FAILED);
    let v: serde_json::Value = serde_json::from_str(&bad.stdout).unwrap_or_else(|e| panic!("{e}\n{}", bad.dump()));
    assert_eq!(v["ok"], false);
    let problems: Vec<(&str, &str)> = v["problems"]
        .as_array()
        .expect("a problems array")
        .iter()
        .map(|p| {
            assert!(p["reason"].as_str().is_some_and(|r| !r.is_empty()), "a reason: {p}");
            (p["path"].as_str().expect("path"), p["check"].as_str().expect("check"))
        })
        .collect();
    assert_eq!(problems, [("environments/prod.json", "N2"), ("ledger/prod/notes.txt", "T2")]);
}

/// The same directory packs to the same bytes whatever the mtimes, the non-execute permission bits and
/// the order the files were created in, and `image digest` of the archive agrees with `image pack`.
#[test]
fn image_pack_is_reproducible_and_agrees_with_image_digest() {
    let sb = Sandbox::new();
    let make = |dir: &Path, order: &[&str]| {
        for rel in order {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, format!("contents of {rel}\n")).unwrap();
        }
    };
    let files = ["bin/app", "etc/app.toml", "README", "share/doc/a.txt"];
    let (one, two) = (sb.path("one"), sb.path("two"));
    make(&one, &files);
    make(&two, &files.iter().rev().copied().collect::<Vec<_>>());
    manifest(&one, "bin/app");
    manifest(&two, "bin/app");

    let pack = |dir: &Path, out: &str| -> (String, String) {
        let o = sb.stele(sb.root(), ["image", "pack", &path_str(dir), "--out", &path_str(&sb.path(out)), "--json"]);
        let v: serde_json::Value =
            serde_json::from_str(&o.expect(OK).stdout).unwrap_or_else(|e| panic!("{e}\n{}", o.dump()));
        (v["blake3"].as_str().expect("blake3").to_owned(), v["size"].to_string())
    };
    let first = pack(&one, "a.tar");
    assert_eq!(pack(&one, "b.tar"), first, "packing twice");
    assert_eq!(std::fs::read(sb.path("a.tar")).unwrap(), std::fs::read(sb.path("b.tar")).unwrap());
    assert_eq!(pack(&two, "c.tar"), first, "files created in another order");

    use std::os::unix::fs::PermissionsExt;
    let long_ago = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    for rel in files {
        let f = std::fs::File::options().write(true).open(one.join(rel)).unwrap();
        f.set_modified(long_ago).unwrap();
    }
    std::fs::set_permissions(one.join("README"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(pack(&one, "d.tar"), first, "after touching mtimes and non-execute permission bits");

    let digest = sb.stele(sb.root(), ["image", "digest", &path_str(&sb.path("a.tar")), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&digest.expect(OK).stdout).unwrap();
    assert_eq!((v["blake3"].as_str().unwrap().to_owned(), v["size"].to_string()), first);
    let plain = sb.stele(sb.root(), ["image", "digest", &path_str(&sb.path("a.tar"))]);
    assert_eq!(plain.expect(OK).first_word(), first.0);

    std::fs::write(one.join("README"), "changed\n").unwrap();
    assert_ne!(pack(&one, "e.tar").0, first.0, "different contents give a different digest");
}

/// Packing into the directory being packed would make the next pack contain this one; it is refused
/// and nothing is written.
#[test]
fn image_pack_refuses_an_output_inside_the_packed_directory() {
    let sb = Sandbox::new();
    let dir = sb.path("app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a"), "a\n").unwrap();
    manifest(&dir, "a");
    let out = sb.stele(sb.root(), ["image", "pack", "app", "--out", "app/app.tar"]);
    out.expect(REFUSED).says(&["app/app.tar", "inside the packed directory"]);
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["a", "stele-image.json"]);
}

/// Makes `dir` an image: `command` executable, named by `stele-image.json`.
fn manifest(dir: &Path, command: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join(command), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("stele-image.json"), format!("{{\"command\": \"{command}\"}}")).unwrap();
}

/// `stele image pack` refuses a directory that is not an image (no manifest, a bad one, a command
/// that is missing or not executable), saying what an image must contain and writing nothing; its
/// help says it too. `stele release` to a local-provider environment refuses an archive without a
/// valid manifest (made here by the library, as any other tar tool could), before anything is signed.
#[test]
fn image_pack_and_release_refuse_an_image_without_a_valid_manifest() {
    let sb = Sandbox::new();
    let dir = sb.path("empty");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let out_file = sb.path("empty.tar");
    let pack = || sb.stele(sb.root(), ["image", "pack", &path_str(&dir), "--out", &path_str(&out_file)]);
    pack().expect(REFUSED).says(&["not an image", "stele-image.json is missing", "\"command\": \"bin/app\""]);
    assert!(!out_file.exists(), "nothing is written");
    std::fs::write(dir.join("stele-image.json"), r#"{"cmd": "bin/app"}"#).unwrap();
    pack().expect(REFUSED).says(&["stele-image.json: not a valid manifest", "unknown field"]);
    std::fs::write(dir.join("stele-image.json"), r#"{"command": "bin/app"}"#).unwrap();
    pack().expect(REFUSED).says(&["bin/app, the command in stele-image.json, is not in the image"]);
    std::fs::write(dir.join("bin/app"), "#!/bin/sh\n").unwrap();
    pack().expect(REFUSED).says(&["bin/app, the command in stele-image.json, is not an executable regular file"]);
    assert!(!out_file.exists(), "nothing is written");
    sb.stele(sb.root(), ["image", "pack", "--help"]).expect(OK).says(&["stele-image.json", "executable"]);

    let alice = sb.key("alice");
    let ledger = sb.ledger("ledger", "manifests", &alice, &["staging"]);
    let commits = ledger.commit_count();
    let bare = sb.path("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::write(bare.join("index.html"), "hi\n").unwrap();
    let tar = sb.path("bare.tar");
    stele::image::pack_dir_to_file(&bare, &tar).expect("pack");
    let out = ledger.try_release("staging", "1.0.0", &tar, &alice, &[]);
    out.expect(REFUSED).says(&[
        "not an image the local provider of staging can run",
        "stele-image.json is missing",
        "stele image pack",
        "nothing was released",
    ]);
    assert_eq!(ledger.commit_count(), commits, "nothing was committed");
    let not_tar = sb.path("notes.txt");
    std::fs::write(&not_tar, vec![b'x'; 2000]).unwrap();
    ledger.try_release("staging", "1.0.0", &not_tar, &alice, &[]).expect(REFUSED).says(&["not an image"]);
    ledger.release("staging", "1.0.0", &sb.image("good.tar", b"#!/bin/sh\n"), &alice);
    assert_eq!(ledger.commit_count(), commits + 1);
}

/// Malformed command lines exit 2 (and say what is wrong) before touching anything; help and version
/// exit 0.
#[test]
fn malformed_command_lines_exit_2() {
    let sb = Sandbox::new();
    let cases: &[(&[&str], &str)] = &[
        (&["release", "--version", "1.0.0", "--image", "app.tar", "--key", "k"], "--env"),
        (&["release", "--env", "prod"], "--version"),
        (&["init", "repo", "--key", "k"], "--env"),
        (&["key", "generate"], "--out"),
        (&["sign", "--key", "k"], "--env"),
        (&["sign", "--env", "prod", "--file", "trust/policy.json", "--key", "k"], "cannot be used with"),
        (
            &["policy", "remove-signer", "--env", "prod", "--keyid", "ab", "--pubkey", "b.pub", "--key", "k"],
            "cannot be used with",
        ),
        (&["policy", "set-threshold", "--env", "prod", "--threshold", "two", "--key", "k"], "invalid value"),
        (&["verify", "--frobnicate"], "--frobnicate"),
        (&["deploy"], "unrecognized subcommand"),
        (&[], "Usage"),
    ];
    for (args, says) in cases {
        let out = sb.stele(sb.root(), *args);
        out.expect(USAGE).says(&[says]);
    }
    assert_eq!(std::fs::read_dir(sb.root()).unwrap().count(), 0, "usage errors write nothing");
    sb.stele(sb.root(), ["--help"]).expect(OK).says(&["Exit codes"]);
    sb.stele(sb.root(), ["--version"]).expect(OK).says(&["stele"]);
}

/// Root rotation: the new policy is signed by old and new root keys; afterwards only the new root may
/// change the policy (the old key keeps only its environment role). A rotation signed by the new keys
/// alone is refused, nothing committed. `add-env` then declares an environment that takes releases.
#[test]
fn root_rotation_needs_old_and_new_root_and_retires_the_old_root() {
    let sb = Sandbox::new();
    let old = sb.key("oldroot");
    let new = sb.key("newroot");
    let ledger = sb.ledger("ledger-repo", "rotation", &old, &["prod"]);

    let commits = ledger.commit_count();
    ledger
        .stele(["policy", "rotate-root", "--new-root", &new.public(), "--key", &new.secret()])
        .expect(OK)
        .says(&["stele/proposals/policy-v2", "P6"]);
    assert_eq!(ledger.commit_count(), commits, "a rotation short of the current root is only a proposal");
    ledger.stele(["promote", "policy-v2"]).expect(REFUSED).says(&["P6"]);
    ledger.git(["branch", "-D", "stele/proposals/policy-v2"]);

    ledger
        .stele(["policy", "rotate-root", "--new-root", &new.public(), "--key", &old.secret(), "--key", &new.secret()])
        .expect(OK)
        .says(&["policy version 2", "rotate root"]);
    ledger.expect_valid(&[]);
    let policy = ledger.json("trust/policy.json");
    assert_eq!(policy["payload"]["root"]["keys"], serde_json::json!([new.id]));
    assert_eq!(policy["signatures"].as_array().map(Vec::len), Some(2), "old and new root both signed");

    // The old key still signs prod (it was its signer), so it stays listed, but it may no longer sign
    // a policy.
    assert!(policy["payload"]["keys"].get(&old.id).is_some(), "prod's signer stays listed");
    let commits = ledger.commit_count();
    ledger
        .stele(["policy", "set-threshold", "--env", "prod", "--threshold", "1", "--key", &old.secret()])
        .expect(REFUSED)
        .says(&["is not a root key"]);
    assert_eq!(ledger.commit_count(), commits);
    ledger
        .stele(["policy", "add-env", "qa", "--key", &new.secret()])
        .expect(OK)
        .says(&["policy version 3", "add environment qa"]);
    ledger.expect_valid(&[]).says(&["qa: no releases yet"]);
    let image = sb.image("qa.tar", b"qa image");
    ledger.release("qa", "0.1.0", &image, &new).says(&["threshold 1 met"]);
    ledger.expect_valid(&[]).says(&["qa: 0.1.0 (seq 1)"]);
}

/// An AWS release pins an AMI and the digest its bake pipeline recorded; nothing is fetched. The two
/// go together, and an artifact's flags do not mix with them.
#[test]
fn release_of_a_machine_image_records_the_ami_and_its_recorded_digest() {
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let ledger = sb.ledger("ledger", "ami", &alice, &["prod"]);
    let digest = "ab".repeat(32);
    let out = ledger.stele([
        "release",
        "--env",
        "prod",
        "--version",
        "2.0.0",
        "--ami",
        "ami-0123456789abcdef0",
        "--blake3",
        &digest,
        "--key",
        &alice.secret(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out.expect(OK).stdout).expect("JSON");
    assert_eq!(
        v["image"],
        serde_json::json!({"kind": "machine_image", "id": "ami-0123456789abcdef0", "blake3": digest})
    );
    ledger.expect_valid(&[]);
    let message = ledger.git(["log", "-1", "--format=%B"]);
    assert!(message.contains("machine image: ami-0123456789abcdef0"), "{message}");
    for bad in [
        vec!["--ami", "ami-1"],                                          // no digest
        vec!["--ami", "ami-1", "--blake3", &digest, "--image", "x.tar"], // both kinds
        vec!["--blake3", &digest],                                       // digest without an AMI
    ] {
        let mut args = vec!["release", "--env", "prod", "--version", "3.0.0"];
        args.extend(bad);
        let key = alice.secret();
        args.extend(["--key", &key]);
        ledger.stele(&args).expect(USAGE);
    }
    let mut args = vec!["release", "--env", "prod", "--version", "3.0.0", "--ami", "ami-1", "--blake3", "XYZ"];
    let key = alice.secret();
    args.extend(["--key", &key]);
    ledger.stele(&args).expect(REFUSED);
}

/// Wherever people compare keys, Stele shows the SHA256 fingerprint exactly as `ssh-keygen -lf`
/// prints it: `key generate`, `key id` (stdout keeps the key id alone, for scripts), `init`,
/// `policy show` and the `add-signer` commit.
#[test]
fn key_fingerprints_are_the_ones_ssh_keygen_shows() {
    let sb = Sandbox::new();
    let ssh_keygen = |file: &std::path::Path| {
        let out = std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(file)
            .output()
            .expect("ssh-keygen (openssh-client) is needed for this test");
        assert!(out.status.success(), "ssh-keygen -lf {}", file.display());
        String::from_utf8_lossy(&out.stdout).split_whitespace().nth(1).expect("a fingerprint").to_owned()
    };
    let alice = sb.key("alice");
    let bob = sb.key("bob");
    let (alice_fp, bob_fp) = (ssh_keygen(&alice.public), ssh_keygen(&bob.public));
    assert_ne!(alice_fp, bob_fp);
    let generated = sb.stele(sb.root(), ["key", "generate", "--out", "carol.key"]);
    generated.expect(OK).says(&[&ssh_keygen(&sb.path("carol.key.pub"))]);
    let shown = sb.stele(sb.root(), ["key", "id", &alice.secret()]);
    assert_eq!(shown.expect(OK).stdout.trim(), alice.id, "stdout is the key id alone");
    shown.says(&[&alice_fp]);

    let ledger = sb.ledger("ledger", "acme-fp", &alice, &["prod"]);
    let init_said = sb.stele(sb.root(), ["init", "other", "--key", &alice.secret(), "--env", "prod"]);
    init_said.expect(OK).says(&[&alice_fp]);
    ledger
        .stele(["policy", "add-signer", "--env", "prod", "--pubkey", &bob.public(), "--key", &alice.secret()])
        .expect(OK);
    ledger.stele(["policy", "show"]).expect(OK).says(&[&format!("{}  alice  {alice_fp}", alice.id), &bob_fp]);
    assert!(ledger.git(["log", "-1", "--format=%B"]).contains(&bob_fp), "the add-signer commit names the fingerprint");
    // The audit names every key of the policy with its fingerprint, and each signer in JSON carries it.
    let audit = ledger.stele(["audit", "--trust-root", &alice.id]);
    audit
        .expect(OK)
        .says(&[&format!("key alice {} {alice_fp}", &alice.id[..12]), &format!("key bob {} {bob_fp}", &bob.id[..12])]);
    let json: serde_json::Value =
        serde_json::from_str(&ledger.stele(["audit", "--json", "--trust-root", &alice.id]).expect(OK).stdout)
            .expect("JSON");
    let text = json.to_string();
    assert!(text.contains(&format!("\"fingerprint\":\"{alice_fp}\"")), "{json:#}");
}

/// Serves `body` to every request on loopback (a release's image by URL).
fn serve_file(body: Vec<u8>) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.read(&mut [0u8; 4096]);
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(&body);
        }
    });
    addr
}

#[test]
fn a_release_from_a_url_signs_only_the_digest_someone_confirmed() {
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let ledger = sb.ledger("ledger", "by-url", &alice, &["staging"]);
    let tar = sb.image("app.tar", b"#!/bin/sh\n");
    let addr = serve_file(std::fs::read(&tar).unwrap());
    let url = format!("http://{addr}/app.tar");
    let commits = ledger.commit_count();
    let (secret, key_args) = (alice.secret(), ["release", "--env", "staging", "--version", "1.0.0", "--key"]);
    let release = |extra: &[&str]| {
        let mut args: Vec<&str> = key_args.to_vec();
        args.extend([secret.as_str(), "--image", url.as_str()]);
        args.extend(extra);
        ledger.stele(&args)
    };
    release(&[]).expect(REFUSED).says(&["needs --expect-blake3", "stele image digest", "nothing was released"]);
    assert_eq!(ledger.commit_count(), commits, "nothing was committed");
    // What the server sends now, as a reviewer would see it.
    let shown = sb.stele(sb.root(), ["image", "digest", &url, "--json"]);
    let digest: serde_json::Value = serde_json::from_str(&shown.expect(OK).stdout).expect("JSON");
    let hex = digest["blake3"].as_str().expect("a digest").to_owned();
    let local: serde_json::Value =
        serde_json::from_str(&sb.stele(sb.root(), ["image", "digest", &path_str(&tar), "--json"]).expect(OK).stdout)
            .expect("JSON");
    assert_eq!(local["blake3"], digest["blake3"], "the URL serves the packed file");
    release(&["--expect-blake3", &"00".repeat(32)]).expect(REFUSED).says(&["expected", "nothing was released"]);
    assert_eq!(ledger.commit_count(), commits);
    release(&["--expect-blake3", &hex]).expect(OK);
    assert_eq!(ledger.commit_count(), commits + 1);
    let entry = ledger.git(["show", "HEAD", "--stat"]);
    assert!(entry.contains("ledger/staging"), "{entry}");
}
