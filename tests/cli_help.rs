//! The command line as a new user meets it: every argument explains itself, `--repo` appears only
//! where it means something, the top-level help lists every exit code, and `stele version`,
//! `stele completions` and `stele man` produce output that the real tools (bash, man) accept.

mod common;

use clap::CommandFactory;
use common::{Sandbox, OK};
use std::process::Command;
use stele::cli::Cli;

/// Every argument of every command, with the command path that owns it.
fn all_args() -> Vec<(String, clap::Arg)> {
    fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Arg)>) {
        for arg in cmd.get_arguments() {
            out.push((path.to_owned(), arg.clone()));
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, "stele", &mut out);
    out
}

#[test]
fn every_flag_and_positional_has_a_help_line() {
    let missing: Vec<String> = all_args()
        .into_iter()
        .filter(|(_, arg)| arg.get_help().is_none() && arg.get_long_help().is_none())
        .map(|(path, arg)| {
            format!("{path}: {}", arg.get_long().map(|l| format!("--{l}")).unwrap_or(arg.get_id().to_string()))
        })
        .collect();
    assert!(missing.is_empty(), "arguments without a help line:\n{}", missing.join("\n"));
}

/// `--repo` is offered exactly by the commands that read a ledger, and still comes from STELE_REPO.
#[test]
fn repo_is_offered_only_by_commands_that_read_a_ledger() {
    let mut with_repo: Vec<String> = all_args()
        .into_iter()
        .filter(|(path, arg)| arg.get_id() == "repo" && !path.contains(" help"))
        .map(|(path, arg)| {
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some("STELE_REPO"), "{path}");
            path
        })
        .collect();
    with_repo.sort();
    with_repo.dedup();
    let policy = ["show", "add-signer", "remove-signer", "set-threshold", "add-env", "rotate-root", "set-agent"]
        .into_iter()
        .chain(["remove-agent", "set-timestamp", "remove-timestamp", "set-layout"]);
    let mut expected: Vec<String> = ["agent", "audit", "env", "env set", "env show", "plan", "poll", "policy"]
        .iter()
        .chain(
            ["promote", "release", "rollback", "sign", "status", "timestamp renew", "timestamp show", "verify"].iter(),
        )
        .map(|c| format!("stele {c}"))
        .chain(policy.map(|c| format!("stele policy {c}")))
        .collect();
    expected.sort();
    assert_eq!(with_repo, expected);

    let sb = Sandbox::new();
    for cmd in [&["key", "generate", "--help"][..], &["init", "--help"], &["image", "pack", "--help"], &["--help"]] {
        let out = sb.stele(sb.root(), cmd);
        let offered = out.expect(OK).stdout.contains("--repo <");
        assert!(!offered, "`stele {}` offers --repo\n{}", cmd.join(" "), out.stdout);
    }
    sb.stele(sb.root(), ["verify", "--help"]).expect(OK).says(&["--repo <DIR>", "STELE_REPO"]);
    sb.stele(sb.root(), ["policy", "show", "--help"]).expect(OK).says(&["--repo <DIR>"]);
}

/// Each code assigned in src/exit.rs is listed by `stele --help`, with a meaning.
#[test]
fn top_level_help_lists_every_exit_code_of_exit_rs() {
    let source = include_str!("../src/exit.rs");
    let codes: Vec<(String, u8)> = source
        .lines()
        .filter_map(|l| l.strip_prefix("pub const ")?.split_once(": u8 = "))
        .map(|(name, value)| (name.to_owned(), value.trim_end_matches(';').parse().expect("a u8 literal")))
        .collect();
    assert!(codes.len() >= 7, "exit codes parsed from src/exit.rs: {codes:?}");
    let sb = Sandbox::new();
    let help = sb.stele(sb.root(), ["--help"]);
    let help = &help.expect(OK).stdout;
    let listed = help.split("Exit codes:").nth(1).unwrap_or_else(|| panic!("no exit code list in:\n{help}"));
    for (name, code) in codes {
        let line = listed.lines().find(|l| l.trim_start().starts_with(&format!("{code}  ")));
        assert!(line.is_some_and(|l| l.len() > 8), "exit code {code} ({name}) is not listed:\n{listed}");
    }
}

#[test]
fn version_shows_the_commit_and_the_build() {
    let sb = Sandbox::new();
    let long = sb.stele(sb.root(), ["--version"]);
    let long = &long.expect(OK).stdout;
    let info = stele::build_info::build_info();
    for want in [&info.version, &info.commit, &info.rustc, &info.target, &info.profile] {
        assert!(!want.is_empty() && long.contains(want.as_str()), "--version lacks {want:?}:\n{long}");
    }
    assert!(info.rustc.starts_with("rustc 1."), "{info:?}");
    // Built from this Git checkout: a hex hash, perhaps marked dirty, never "unknown".
    let hash = info.commit.trim_end_matches("+dirty");
    assert!(hash.len() >= 7 && hash.bytes().all(|b| b.is_ascii_hexdigit()), "{info:?}");
    assert_eq!(&sb.stele(sb.root(), ["version"]).expect(OK).stdout, long);
    let json = sb.stele(sb.root(), ["version", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json.expect(OK).stdout).expect("JSON");
    // The binary and this test may have been built at different moments of a working tree (`+dirty`).
    let bare = |c: &str| c.trim_end_matches("+dirty").to_owned();
    assert_eq!(bare(json["commit"].as_str().unwrap_or_default()), bare(&info.commit));
    assert_eq!(json["features"], info.features.as_str());
}

#[test]
fn bash_completion_script_parses_and_knows_the_subcommands() {
    let sb = Sandbox::new();
    let out = sb.stele(sb.root(), ["completions", "bash"]);
    let script = &out.expect(OK).stdout;
    for word in ["release", "promote", "rotate-root", "--trust-root", "completions"] {
        assert!(script.contains(word), "the bash completions do not mention {word}");
    }
    let path = sb.path("stele.bash");
    std::fs::write(&path, script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().expect("bash is needed for this test");
    assert!(check.status.success(), "bash -n refused it: {}", String::from_utf8_lossy(&check.stderr));
    // Sourced into a real shell, it completes a subcommand.
    let probe = format!(
        "source {}; COMP_WORDS=(stele rel); COMP_CWORD=1; COMP_LINE='stele rel'; COMP_POINT=9; _stele stele rel stele; echo \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let run = Command::new("bash").args(["--norc", "-c", &probe]).output().expect("bash runs");
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "release", "{}", String::from_utf8_lossy(&run.stderr));
    for shell in ["zsh", "fish"] {
        sb.stele(sb.root(), ["completions", shell]).expect(OK).says(&["stele", "promote"]);
    }
}

#[test]
fn man_pages_are_written_for_every_command_and_man_renders_them() {
    let sb = Sandbox::new();
    let dir = sb.path("man");
    sb.stele(sb.root(), ["man", "--out", &dir.display().to_string()]).expect(OK);
    for page in ["stele.1", "stele-release.1", "stele-policy-rotate-root.1", "stele-env-set.1", "stele-version.1"] {
        assert!(dir.join(page).is_file(), "{page} not written");
    }
    assert!(!dir.join("stele-lb.1").exists(), "the hidden lb command gets no page");
    let out = Command::new("man")
        .arg("-l")
        .arg(dir.join("stele-release.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .env("LC_ALL", "C")
        .output()
        .expect("man (man-db) is needed for this test; scripts/test.sh installs it");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "man -l failed: {}", String::from_utf8_lossy(&out.stderr));
    for want in ["NAME", "stele-release", "--expect-blake3", "Examples:", "stele release --env staging"] {
        assert!(text.contains(want), "the rendered page lacks {want:?}:\n{text}");
    }
}
