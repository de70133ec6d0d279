//! The status branch: `StatusWriter` publishing `status/<env>.json` to a ledger repository, and
//! `stele status` reading it back from a clone.
//!
//! Every repository is made by the real `git` CLI. Each writer scenario runs against the three ways
//! an agent reaches its ledger: a bare repository's path, a `file:///` URL, and `git://` through a
//! real `git daemon` on loopback (the push path, where the server's receive-pack does the
//! compare-and-swap). Races are lost on purpose through the writer's before-update hook, by another
//! writer or by the git CLI moving the branch between the writer's read and its update.

mod common;

use common::*;
use ledger_format::Blake3Digest;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};
use stele::status::{
    history, open_repository, read_all, render, EnvStatus, InstanceStatus, Phase, Published, StatusError, StatusWriter,
    TargetStatus, FORMAT,
};

const BRANCH: &str = "stele/status";

// ---------------------------------------------------------------------------------------------------
// Fixtures

/// Points libgit2 (used in this process by the writer) at an empty configuration, so a developer's
/// `~/.gitconfig` cannot change the commit identity these tests assert. Called before any git2 use.
fn hermetic_libgit2() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let empty = std::env::temp_dir().join(format!("stele-status-tests-no-config-{}", std::process::id()));
        for level in [git2::ConfigLevel::System, git2::ConfigLevel::XDG, git2::ConfigLevel::Global] {
            // SAFETY: runs once, before this test binary opens any repository (every test calls this
            // first, and `Once` makes the others wait until it has finished).
            unsafe { git2::opts::set_search_path(level, &empty) }.expect("set libgit2's config search path");
        }
    });
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    BarePath,
    FileUrl,
    GitDaemon,
}

const TRANSPORTS: [Transport; 3] = [Transport::BarePath, Transport::FileUrl, Transport::GitDaemon];

/// A bare ledger repository (`remote.git`, with a `main` branch) and the location writers reach it
/// by.
struct Remote {
    sb: Sandbox,
    bare: PathBuf,
    location: String,
    transport: Transport,
    _daemon: Option<GitDaemon>,
}

impl Remote {
    fn new(transport: Transport) -> Self {
        hermetic_libgit2();
        let sb = Sandbox::new();
        let bare = sb.path("remote.git");
        sb.git(sb.root(), ["init", "-q", "--bare", "-b", "main", "remote.git"]);
        let seed = sb.path("seed");
        sb.git(sb.root(), ["init", "-q", "-b", "main", "seed"]);
        std::fs::write(seed.join("ledger.txt"), "the ledger branch\n").expect("write a file");
        sb.git(&seed, ["add", "-A"]);
        sb.git(&seed, ["commit", "-q", "-m", "ledger"]);
        sb.git(&seed, ["push", "-q", &path_str(&bare), "main"]);
        let (location, daemon) = match transport {
            Transport::BarePath => (path_str(&bare), None),
            Transport::FileUrl => (format!("file://{}", path_str(&bare)), None),
            Transport::GitDaemon => {
                let daemon = GitDaemon::serve(&sb, sb.root());
                (format!("git://127.0.0.1:{}/remote.git", daemon.port), Some(daemon))
            }
        };
        Remote { sb, bare, location, transport, _daemon: daemon }
    }

    fn writer(&self, name: &str) -> StatusWriter {
        StatusWriter::open(&self.location, BRANCH, &self.sb.path(&format!("{name}-cache.git")))
            .unwrap_or_else(|e| panic!("{:?}: open a writer: {e}", self.transport))
    }

    fn bare_git(&self, args: &[&str]) -> String {
        self.sb.git(&self.bare, args)
    }

    /// The branch tip in the bare repository, if the branch exists.
    fn tip(&self) -> Option<String> {
        let out = self.bare_git(&["for-each-ref", "--format=%(objectname)", &format!("refs/heads/{BRANCH}")]);
        Some(out.trim().to_owned()).filter(|t| !t.is_empty())
    }

    fn files(&self) -> Vec<String> {
        self.bare_git(&["ls-tree", "-r", "--name-only", BRANCH]).lines().map(str::to_owned).collect()
    }

    fn file(&self, path: &str) -> String {
        self.bare_git(&["show", &format!("{BRANCH}:{path}")])
    }

    /// Every commit of the branch, newest first, with its parents.
    fn commits(&self) -> Vec<Vec<String>> {
        self.bare_git(&["rev-list", "--parents", BRANCH])
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    }

    fn parents_of(&self, commit: &str) -> Vec<String> {
        let line = self.bare_git(&["rev-list", "--parents", "-n", "1", commit]);
        line.split_whitespace().skip(1).map(str::to_owned).collect()
    }

    /// A handle the before-update hook can move: commits with the git CLI, as a person would.
    fn mover(&self) -> Mover {
        Mover { home: self.sb.root().to_owned(), bare: self.bare.clone(), scratch: self.sb.path("mover") }
    }
}

/// Moves the status branch of a bare repository with the git CLI, from a scratch clone.
#[derive(Clone)]
struct Mover {
    home: PathBuf,
    bare: PathBuf,
    scratch: PathBuf,
}

impl Mover {
    fn git(&self, cwd: &Path, args: &[&str]) -> String {
        let out = scrubbed("git", &self.home, cwd).args(args).output().expect("run git");
        assert!(out.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Commits `bytes` as `path` on top of the branch tip (which must exist) and pushes it without
    /// force; returns the new tip.
    fn commit(&self, path: &str, bytes: &[u8]) -> String {
        if !self.scratch.exists() {
            self.git(&self.home, &["clone", "-q", &path_str(&self.bare), &path_str(&self.scratch)]);
        }
        self.git(&self.scratch, &["fetch", "-q", "origin", BRANCH]);
        self.git(&self.scratch, &["checkout", "-q", "-B", "mover", "FETCH_HEAD"]);
        let file = self.scratch.join(path);
        std::fs::create_dir_all(file.parent().expect("a parent")).expect("create a directory");
        std::fs::write(&file, bytes).expect("write a file");
        self.git(&self.scratch, &["add", "-A"]);
        self.git(&self.scratch, &["commit", "-q", "--allow-empty", "-m", &format!("by hand: {path}")]);
        self.git(&self.scratch, &["push", "-q", "origin", &format!("HEAD:refs/heads/{BRANCH}")]);
        self.git(&self.scratch, &["rev-parse", "HEAD"]).trim().to_owned()
    }
}

fn digest(byte: u8) -> Blake3Digest {
    Blake3Digest([byte; 32])
}

/// A plausible status for `env` at `generation`, `updated_at` a fixed time.
fn status(env: &str, generation: u64, phase: Phase) -> EnvStatus {
    let target = TargetStatus {
        version: format!("{generation}.0.0").parse().unwrap(),
        seq: generation,
        blake3: digest(generation as u8),
    };
    let healthy = phase == Phase::Healthy;
    EnvStatus {
        format: FORMAT,
        env: env.parse().unwrap(),
        ledger: "acme".parse().unwrap(),
        ledger_commit: format!("{generation:040x}"),
        target_generation: generation,
        observed_generation: if healthy { generation } else { generation - 1 },
        target: Some(target.clone()),
        running: if healthy { Some(target) } else { None },
        phase,
        message: if healthy { String::new() } else { format!("replacing instances of {env}") },
        instances: vec![InstanceStatus {
            id: format!("{env}-web-1"),
            group: "web".parse().unwrap(),
            generation,
            blake3: digest(generation as u8),
            health: if healthy { "healthy".into() } else { "starting".into() },
            since: "2026-03-01T10:00:00Z".parse().unwrap(),
            drift: None,
        }],
        last_error: None,
        agent: format!("host-{env}:/var/lib/stele"),
        updated_at: "2026-03-01T10:00:00Z".parse().unwrap(),
        suspended: None,
    }
}

#[track_caller]
fn committed(outcome: Result<Published, StatusError>) -> (String, u32) {
    match outcome {
        Ok(Published::Committed { commit, attempts }) => (commit, attempts),
        other => panic!("expected a commit, got {other:?}"),
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("status files are UTF-8")
}

// ---------------------------------------------------------------------------------------------------
// Publishing

#[test]
fn first_publish_creates_the_branch_with_a_readme_and_the_environment_file() {
    for transport in TRANSPORTS {
        let remote = Remote::new(transport);
        let main_before = remote.bare_git(&["rev-parse", "main"]);
        assert_eq!(remote.tip(), None);
        let staging = status("staging", 3, Phase::Healthy);
        let (commit, attempts) = committed(remote.writer("a").publish(&staging));
        assert_eq!(attempts, 1, "{transport:?}");
        assert_eq!(remote.tip().as_deref(), Some(commit.as_str()), "{transport:?}");
        assert_eq!(remote.files(), ["README.md", "status/staging.json"], "{transport:?}");
        assert_eq!(remote.file("status/staging.json"), text(render(&staging)), "{transport:?}");
        assert!(remote.file("README.md").contains("written by Stele agents"), "{transport:?}");
        assert_eq!(remote.commits(), [vec![commit.clone()]], "{transport:?}: the first commit has no parent");
        let message = remote.bare_git(&["log", "-1", "--format=%s", &commit]);
        assert_eq!(message.trim(), "status(staging): Healthy, generation 3 (3.0.0)", "{transport:?}");
        let who = remote.bare_git(&["log", "-1", "--format=%an <%ae>|%cn <%ce>", &commit]);
        assert_eq!(who.trim(), "stele-agent <agent@stele.invalid>|stele-agent <agent@stele.invalid>");
        assert_eq!(remote.bare_git(&["rev-parse", "main"]), main_before, "{transport:?}: the ledger branch moved");
    }
}

#[test]
fn the_commit_identity_comes_from_git_config_when_it_names_one() {
    let remote = Remote::new(Transport::BarePath);
    remote.bare_git(&["config", "user.name", "Ops Robot"]);
    remote.bare_git(&["config", "user.email", "robot@example.invalid"]);
    let (commit, _) = committed(remote.writer("a").publish(&status("staging", 1, Phase::Healthy)));
    let who = remote.bare_git(&["log", "-1", "--format=%an <%ae>", &commit]);
    assert_eq!(who.trim(), "Ops Robot <robot@example.invalid>");
}

#[test]
fn a_status_that_differs_only_in_updated_at_is_not_committed() {
    for transport in TRANSPORTS {
        let remote = Remote::new(transport);
        let mut writer = remote.writer("a");
        let first = status("staging", 2, Phase::Progressing);
        let (commit, _) = committed(writer.publish(&first));
        let mut later = first.clone();
        later.updated_at = "2026-03-01T11:30:00Z".parse().unwrap();
        assert_eq!(writer.publish(&later).expect("publish"), Published::Unchanged, "{transport:?}");
        // A writer with an empty cache (an agent restarted elsewhere) reads the same from the branch.
        assert_eq!(remote.writer("fresh").publish(&later).expect("publish"), Published::Unchanged);
        assert_eq!(remote.tip().as_deref(), Some(commit.as_str()), "{transport:?}: nothing new was committed");
        assert_eq!(remote.commits().len(), 1);
        assert_eq!(remote.file("status/staging.json"), text(render(&first)), "the old updated_at stays");
    }
}

#[test]
fn a_change_is_one_new_commit_whose_parent_is_the_old_tip() {
    for transport in TRANSPORTS {
        let remote = Remote::new(transport);
        let mut writer = remote.writer("a");
        let (old, _) = committed(writer.publish(&status("staging", 2, Phase::Progressing)));
        let healthy = status("staging", 2, Phase::Healthy);
        let (new, attempts) = committed(writer.publish(&healthy));
        assert_eq!(attempts, 1);
        assert_ne!(new, old);
        assert_eq!(remote.parents_of(&new), [old], "{transport:?}");
        assert_eq!(remote.commits().len(), 2, "{transport:?}");
        assert_eq!(remote.file("status/staging.json"), text(render(&healthy)));
        assert_eq!(remote.files(), ["README.md", "status/staging.json"], "{transport:?}");
    }
}

#[test]
fn two_writers_for_two_environments_never_overwrite_each_other() {
    for transport in TRANSPORTS {
        let remote = Remote::new(transport);
        let (mut a, mut b) = (remote.writer("a"), remote.writer("b"));
        let (c1, _) = committed(a.publish(&status("staging", 1, Phase::Progressing)));
        let (c2, n2) = committed(b.publish(&status("prod", 1, Phase::Progressing)));
        let (c3, n3) = committed(a.publish(&status("staging", 1, Phase::Healthy)));
        let (c4, n4) = committed(b.publish(&status("prod", 1, Phase::Healthy)));
        assert_eq!(a.publish(&status("staging", 1, Phase::Healthy)).expect("publish"), Published::Unchanged);
        // Each writer read the branch afresh, so none had to retry and none built on a stale tip.
        assert_eq!((n2, n3, n4), (1, 1, 1), "{transport:?}");
        let commits = remote.commits();
        let expected: Vec<Vec<String>> = vec![
            vec![c4.clone(), c3.clone()],
            vec![c3.clone(), c2.clone()],
            vec![c2.clone(), c1.clone()],
            vec![c1.clone()],
        ];
        assert_eq!(commits, expected, "{transport:?}: history is one line, each commit on the previous");
        assert_eq!(remote.files(), ["README.md", "status/prod.json", "status/staging.json"]);
        assert_eq!(remote.file("status/staging.json"), text(render(&status("staging", 1, Phase::Healthy))));
        assert_eq!(remote.file("status/prod.json"), text(render(&status("prod", 1, Phase::Healthy))));
    }
}

#[test]
fn a_race_lost_to_another_writer_is_rebuilt_on_the_new_tip() {
    for transport in TRANSPORTS {
        let remote = Remote::new(transport);
        let mut a = remote.writer("a");
        let (first, _) = committed(a.publish(&status("staging", 1, Phase::Healthy)));
        // Writer B publishes prod after A has read the branch and built its commit, before A's update.
        let mut b = remote.writer("b");
        let b_result: Arc<Mutex<Vec<Published>>> = Arc::default();
        let seen = Arc::clone(&b_result);
        a.set_before_update(move |attempt| {
            if attempt == 1 {
                let outcome = b.publish(&status("prod", 4, Phase::Degraded)).expect("writer B publishes");
                seen.lock().expect("not poisoned").push(outcome);
            }
        });
        let staging = status("staging", 2, Phase::Progressing);
        let (commit, attempts) = committed(a.publish(&staging));
        let b_commit = match b_result.lock().expect("not poisoned").as_slice() {
            [Published::Committed { commit, attempts: 1 }] => commit.clone(),
            other => panic!("{transport:?}: writer B should have committed once, got {other:?}"),
        };
        assert_eq!(attempts, 2, "{transport:?}: A lost the first race and won the second");
        assert_eq!(remote.parents_of(&b_commit), [first], "{transport:?}");
        assert_eq!(remote.parents_of(&commit), [b_commit], "{transport:?}: A rebuilt on B's commit");
        assert_eq!(remote.commits().len(), 3, "{transport:?}: A's first, losing commit never reached the branch");
        assert_eq!(remote.file("status/prod.json"), text(render(&status("prod", 4, Phase::Degraded))));
        assert_eq!(remote.file("status/staging.json"), text(render(&staging)));
    }
}

#[test]
fn a_branch_moved_by_the_git_cli_behind_the_writers_back_is_retried() {
    for transport in TRANSPORTS {
        let remote = Remote::new(transport);
        let mut a = remote.writer("a");
        committed(a.publish(&status("staging", 1, Phase::Healthy)));
        let mover = remote.mover();
        let moved: Arc<Mutex<Option<String>>> = Arc::default();
        let seen = Arc::clone(&moved);
        let prod = status("prod", 7, Phase::Healthy);
        let prod_bytes = render(&prod);
        a.set_before_update(move |attempt| {
            if attempt == 1 {
                *seen.lock().expect("not poisoned") = Some(mover.commit("status/prod.json", &prod_bytes));
            }
        });
        let staging = status("staging", 2, Phase::Healthy);
        let (commit, attempts) = committed(a.publish(&staging));
        let moved = moved.lock().expect("not poisoned").clone().expect("the hook ran");
        assert!(attempts > 1, "{transport:?}: the race must have been lost once");
        assert_eq!(remote.parents_of(&commit), [moved], "{transport:?}");
        assert_eq!(remote.file("status/prod.json"), text(render(&prod)), "{transport:?}: the other file survives");
        assert_eq!(remote.file("status/staging.json"), text(render(&staging)));
    }
}

#[test]
fn a_branch_that_keeps_moving_gives_up_as_contended_without_writing() {
    for transport in TRANSPORTS {
        let remote = Remote::new(transport);
        let mut a = remote.writer("a");
        committed(a.publish(&status("staging", 1, Phase::Healthy)));
        let mover = remote.mover();
        let calls: Arc<Mutex<u32>> = Arc::default();
        let counted = Arc::clone(&calls);
        a.set_before_update(move |attempt| {
            *counted.lock().expect("not poisoned") = attempt;
            mover.commit("noise.txt", format!("attempt {attempt}\n").as_bytes());
        });
        let tips_before = remote.commits().len();
        match a.publish(&status("staging", 2, Phase::Healthy)) {
            Err(e @ StatusError::Contended { .. }) => {
                assert!(e.is_retryable(), "{e}");
                assert!(e.to_string().contains(BRANCH), "{e}");
            }
            other => panic!("{transport:?}: expected Contended, got {other:?}"),
        }
        let attempts = *calls.lock().expect("not poisoned");
        assert_eq!(attempts, 5, "{transport:?}: five tries, then give up");
        assert_eq!(remote.commits().len(), tips_before + attempts as usize, "{transport:?}: only the mover's commits");
        assert_eq!(remote.file("status/staging.json"), text(render(&status("staging", 1, Phase::Healthy))));
    }
}

/// Installs `hooks/pre-receive` in the bare repository.
fn pre_receive(remote: &Remote, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    let hook = remote.bare.join("hooks/pre-receive");
    std::fs::write(&hook, format!("#!/bin/sh\n{script}")).expect("write the hook");
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("make the hook executable");
}

#[test]
fn a_push_whose_old_value_the_server_no_longer_has_is_a_lost_race() {
    // The server-side compare-and-swap: the branch moves after the writer's push connection listed it,
    // so receive-pack itself refuses the update and reports it for the ref. The hook moves the branch
    // once, outside the push's quarantine, as a concurrent push would.
    let remote = Remote::new(Transport::GitDaemon);
    let mut a = remote.writer("a");
    let (first, _) = committed(a.publish(&status("staging", 1, Phase::Healthy)));
    let mark = remote.sb.path("move-once");
    std::fs::write(&mark, "").expect("write the marker");
    pre_receive(
        &remote,
        &format!(
            "if [ -f '{mark}' ]; then\n  rm -f '{mark}'\n  \
             env -u GIT_QUARANTINE_PATH -u GIT_OBJECT_DIRECTORY -u GIT_ALTERNATE_OBJECT_DIRECTORIES sh -c \\\n    \
             'git update-ref refs/heads/{BRANCH} $(git commit-tree -p refs/heads/{BRANCH} -m moved refs/heads/{BRANCH}^{{tree}})'\n\
             fi\nexit 0\n",
            mark = path_str(&mark)
        ),
    );
    let staging = status("staging", 2, Phase::Healthy);
    let (commit, attempts) = committed(a.publish(&staging));
    assert!(!mark.exists(), "the hook ran");
    assert_eq!(attempts, 2, "the server refused the first push and the writer rebuilt");
    let moved = remote.parents_of(&commit);
    assert_eq!(moved.len(), 1);
    assert_eq!(remote.bare_git(&["log", "-1", "--format=%s", &moved[0]]).trim(), "moved");
    assert_eq!(remote.parents_of(&moved[0]), [first]);
    assert_eq!(remote.file("status/staging.json"), text(render(&staging)));
}

#[test]
fn a_push_the_server_declines_is_a_retryable_network_error_not_a_race() {
    let remote = Remote::new(Transport::GitDaemon);
    let mut a = remote.writer("a");
    committed(a.publish(&status("staging", 1, Phase::Healthy)));
    let before = remote.tip();
    pre_receive(&remote, "echo 'status pushes are paused' >&2\nexit 1\n");
    match a.publish(&status("staging", 2, Phase::Healthy)) {
        Err(e @ StatusError::Network { .. }) => {
            assert!(e.is_retryable(), "{e}");
            assert!(e.to_string().contains("refs/heads/stele/status"), "{e}");
        }
        other => panic!("expected a Network error, got {other:?}"),
    }
    assert_eq!(remote.tip(), before);
}

#[test]
fn a_corrupt_status_file_is_reported_by_name_and_never_overwritten() {
    for transport in TRANSPORTS {
        let remote = Remote::new(transport);
        let mut a = remote.writer("a");
        committed(a.publish(&status("staging", 1, Phase::Healthy)));
        let mover = remote.mover();
        for (bytes, why) in [
            (b"{ not json\n".to_vec(), "key must be a string"),
            (render(&status("prod", 1, Phase::Healthy)), "holds the status of environment prod"),
        ] {
            let tip = mover.commit("status/staging.json", &bytes);
            match a.publish(&status("staging", 2, Phase::Healthy)) {
                Err(e @ StatusError::Corrupt { .. }) => {
                    assert!(!e.is_retryable(), "{e}");
                    let message = e.to_string();
                    assert!(message.contains("status/staging.json") && message.contains(&tip), "{message}");
                    assert!(message.contains(why), "{message}");
                }
                other => panic!("{transport:?}: expected Corrupt, got {other:?}"),
            }
            assert_eq!(remote.tip(), Some(tip), "{transport:?}: the branch was left as it was");
            assert_eq!(remote.file("status/staging.json").as_bytes(), bytes.as_slice());
            // Readers refuse it too, naming the file.
            let repo = open_repository(&remote.bare).expect("open");
            let err = read_all(&repo, BRANCH).expect_err("a corrupt file is an error");
            assert!(err.to_string().contains("status/staging.json"), "{err}");
        }
    }
}

#[test]
fn another_environments_unreadable_file_is_carried_over_untouched() {
    let remote = Remote::new(Transport::BarePath);
    let mut a = remote.writer("a");
    committed(a.publish(&status("staging", 1, Phase::Healthy)));
    remote.mover().commit("status/prod.json", b"garbage written by someone else\n");
    committed(a.publish(&status("staging", 2, Phase::Healthy)));
    assert_eq!(remote.file("status/prod.json"), "garbage written by someone else\n");
}

// ---------------------------------------------------------------------------------------------------
// Never the checked-out branch

#[test]
fn publishing_never_moves_a_branch_that_is_checked_out() {
    hermetic_libgit2();
    let sb = Sandbox::new();
    let ledger = sb.path("ledger");
    sb.git(sb.root(), ["init", "-q", "-b", "main", "ledger"]);
    std::fs::write(ledger.join("ledger.txt"), "ledger\n").expect("write");
    sb.git(&ledger, ["add", "-A"]);
    sb.git(&ledger, ["commit", "-q", "-m", "ledger"]);
    let file_url = format!("file://{}", path_str(&ledger));
    let cache = sb.path("cache.git");

    // The status branch checked out in the main work tree: refused before anything is written.
    sb.git(&ledger, ["checkout", "-q", "-b", BRANCH]);
    for location in [path_str(&ledger), file_url.clone()] {
        match StatusWriter::open(&location, BRANCH, &cache) {
            Err(e @ StatusError::Refused { .. }) => {
                assert!(!e.is_retryable());
                assert!(e.to_string().contains("checked out"), "{e}");
            }
            Err(other) => panic!("{location}: expected Refused, got {other}"),
            Ok(_) => panic!("{location}: a writer opened on the checked-out branch"),
        }
    }
    let head = sb.git(&ledger, ["rev-parse", "HEAD"]);

    // On a branch of its own, the work tree, the index and HEAD are left alone.
    sb.git(&ledger, ["checkout", "-q", "main"]);
    let mut writer = StatusWriter::open(&path_str(&ledger), BRANCH, &cache).expect("open");
    let (commit, _) = committed(writer.publish(&status("staging", 1, Phase::Healthy)));
    assert_eq!(sb.git(&ledger, ["symbolic-ref", "HEAD"]).trim(), "refs/heads/main");
    assert_eq!(sb.git(&ledger, ["status", "--porcelain", "--untracked-files=all"]), "");
    assert!(!ledger.join("status").exists(), "the status file must not appear in the ledger's work tree");
    assert_eq!(sb.git(&ledger, ["rev-parse", "HEAD"]), head, "main did not move");
    assert_eq!(sb.git(&ledger, ["rev-parse", BRANCH]).trim(), commit);

    // Checked out later in a linked work tree: the next publish refuses, and the branch stays put.
    sb.git(&ledger, ["worktree", "add", "-q", &path_str(&sb.path("linked")), BRANCH]);
    match writer.publish(&status("staging", 2, Phase::Healthy)) {
        Err(e @ StatusError::Refused { .. }) => assert!(e.to_string().contains("checked out"), "{e}"),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(sb.git(&ledger, ["rev-parse", BRANCH]).trim(), commit);
}

#[test]
fn a_repository_whose_head_is_the_status_branch_is_refused() {
    for transport in TRANSPORTS {
        let remote = Remote::new(transport);
        remote.bare_git(&["branch", BRANCH, "main"]);
        remote.bare_git(&["symbolic-ref", "HEAD", &format!("refs/heads/{BRANCH}")]);
        let before = remote.tip();
        let outcome = StatusWriter::open(&remote.location, BRANCH, &remote.sb.path("cache.git"))
            .and_then(|mut w| w.publish(&status("staging", 1, Phase::Healthy)));
        match outcome {
            Err(e @ StatusError::Refused { .. }) => assert!(e.to_string().contains(BRANCH), "{e}"),
            other => panic!("{transport:?}: expected Refused, got {other:?}"),
        }
        assert_eq!(remote.tip(), before, "{transport:?}");
    }
}

// ---------------------------------------------------------------------------------------------------
// Reading back

#[test]
fn history_lists_each_change_of_one_environment_newest_first() {
    let remote = Remote::new(Transport::BarePath);
    let (mut a, mut b) = (remote.writer("a"), remote.writer("b"));
    let s1 = status("staging", 1, Phase::Progressing);
    let s2 = status("staging", 1, Phase::Healthy);
    committed(a.publish(&s1));
    committed(b.publish(&status("prod", 1, Phase::Healthy)));
    committed(a.publish(&s2));
    committed(b.publish(&status("prod", 2, Phase::Healthy)));
    let repo = open_repository(&remote.bare).expect("open");
    let staging = history(&repo, BRANCH, &"staging".parse().unwrap()).expect("history");
    let versions: Vec<&EnvStatus> = staging.iter().map(|(_, s)| s).collect();
    assert_eq!(versions, [&s2, &s1], "prod's commits are not changes of staging");
    assert!(staging[0].0 >= staging[1].0, "newest first");
    let prod = history(&repo, BRANCH, &"prod".parse().unwrap()).expect("history");
    assert_eq!(prod.iter().map(|(_, s)| s.target_generation).collect::<Vec<_>>(), [2, 1]);
    assert!(history(&repo, BRANCH, &"qa".parse().unwrap()).expect("history").is_empty());
    assert!(history(&repo, "no/such/branch", &"prod".parse().unwrap()).expect("history").is_empty());
}

/// A clone of the remote after staging and prod have reported: it has the status branch only as
/// `origin/stele/status`.
fn clone_with_two_environments() -> (Remote, PathBuf, String, [EnvStatus; 2]) {
    let remote = Remote::new(Transport::BarePath);
    let mut staging = status("staging", 3, Phase::Healthy);
    staging.instances[0].drift = Some("tag changed by hand".into());
    let mut prod = status("prod", 2, Phase::Degraded);
    prod.running = Some(TargetStatus { version: "1.0.0".parse().unwrap(), seq: 1, blake3: digest(1) });
    prod.last_error = Some("health gate failed: 0/2 healthy after 300s".into());
    committed(remote.writer("a").publish(&staging));
    let (tip, _) = committed(remote.writer("b").publish(&prod));
    let clone = remote.sb.path("clone");
    remote.sb.git(remote.sb.root(), ["clone", "-q", &path_str(&remote.bare), "clone"]);
    assert_eq!(remote.sb.git(&clone, ["for-each-ref", "--format=%(refname)", "refs/heads"]).trim(), "refs/heads/main");
    assert_eq!(remote.sb.git(&clone, ["rev-parse", &format!("origin/{BRANCH}")]).trim(), tip);
    (remote, clone, tip, [prod, staging])
}

/// The reports `stele status --json` shows, without the verdict and where each was read.
fn reports(json: &serde_json::Value) -> serde_json::Value {
    let mut envs = json["environments"].clone();
    for env in envs.as_array_mut().expect("a list") {
        let env = env.as_object_mut().expect("an object");
        for key in ["verified", "agent_key", "check", "unverified_reason", "ref", "status_commit", "recorded_at"] {
            assert!(env.remove(key).is_some(), "stele status --json says {key}");
        }
    }
    envs
}

#[test]
fn stele_status_json_reads_the_branch_a_clone_has_only_as_origin() {
    let (remote, clone, tip, [prod, staging]) = clone_with_two_environments();
    let out = remote.sb.stele(&clone, ["status", "--json"]);
    out.expect(OK);
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("stele status --json prints JSON");
    assert_eq!(json["branch"], BRANCH);
    assert_eq!(json["commit"], tip.as_str());
    let expected = serde_json::json!([prod, staging]);
    assert_eq!(reports(&json), expected, "every environment, in name order, exactly as written");
    // Unsigned and without a trust root: shown, labelled, where it was read.
    for env in json["environments"].as_array().expect("a list") {
        assert_eq!((env["verified"].as_bool(), env["check"].as_str()), (Some(false), Some("O1")), "{env:#}");
        assert_eq!(env["ref"], format!("refs/remotes/origin/{BRANCH}"));
    }

    let out = remote.sb.stele(&clone, ["status", "--json", "--env", "staging"]);
    let json: serde_json::Value = serde_json::from_str(&out.expect(OK).stdout).expect("JSON");
    assert_eq!(reports(&json), serde_json::json!([staging]));

    // A local branch, when there is one, is read first.
    remote.sb.git(&clone, ["branch", BRANCH, &format!("origin/{BRANCH}~1")]);
    let out = remote.sb.stele(&clone, ["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out.expect(OK).stdout).expect("JSON");
    assert_eq!(reports(&json), serde_json::json!([staging]));
}

#[test]
fn stele_status_prints_one_line_per_environment_and_per_instance() {
    let (remote, clone, tip, _) = clone_with_two_environments();
    let out = remote.sb.stele(&clone, ["status"]);
    out.expect(OK);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let expected_head = format!("status branch {BRANCH} at {}", &tip[..12]);
    let blake = |b: u8| format!("blake3:{}…", &Blake3Digest([b; 32]).to_hex()[..12]);
    let unsigned = "  unverified (O1): unsigned: a bare status file, not a signed status document (an agent without \
                    a key, or anyone with write access to the ref)";
    let want = [
        expected_head,
        "UNVERIFIED: no trust root given (pin the ledger's genesis with --trust-root or --trust-root-hash, or pass \
         --trust-genesis-as-found)"
            .to_owned(),
        format!("prod     UNVERIFIED  Degraded  generation 1/2  2.0.0 {}  (updated 2026-03-01T10:00:00Z)", blake(2)),
        unsigned.to_owned(),
        format!("  running: 1.0.0 {}", blake(1)),
        "  message: replacing instances of prod".to_owned(),
        "  last error: health gate failed: 0/2 healthy after 300s".to_owned(),
        "  prod-web-1  web  generation 2  starting  since 2026-03-01T10:00:00Z".to_owned(),
        format!("  agent host-prod:/var/lib/stele on ledger acme at {:040x} (ref refs/remotes/origin/{BRANCH})", 2),
        format!("staging  UNVERIFIED  Healthy   generation 3/3  3.0.0 {}  (updated 2026-03-01T10:00:00Z)", blake(3)),
        unsigned.to_owned(),
        "  staging-web-1  web  generation 3  healthy  since 2026-03-01T10:00:00Z  drift: tag changed by hand"
            .to_owned(),
        format!("  agent host-staging:/var/lib/stele on ledger acme at {:040x} (ref refs/remotes/origin/{BRANCH})", 3),
    ];
    assert_eq!(lines, want, "\n{}", out.stdout);

    let out = remote.sb.stele(&clone, ["status", "--env", "prod"]);
    assert!(out.expect(OK).stdout.contains("prod  UNVERIFIED  Degraded"), "{}", out.stdout);
    assert!(!out.stdout.contains("staging"), "{}", out.stdout);
}

#[test]
fn stele_status_refuses_an_environment_that_has_not_reported() {
    let (remote, clone, _, _) = clone_with_two_environments();
    remote
        .sb
        .stele(&clone, ["status", "--env", "qa"])
        .expect(REFUSED)
        .says(&["no status for environment qa", "prod, staging"]);
    remote.sb.stele(&clone, ["status", "--env", "Not_An_Env"]).expect(REFUSED).says(&["environment name"]);
}

#[test]
fn stele_status_without_a_status_branch_says_the_agent_has_not_reported() {
    let remote = Remote::new(Transport::BarePath);
    let clone = remote.sb.path("clone");
    remote.sb.git(remote.sb.root(), ["clone", "-q", &path_str(&remote.bare), "clone"]);
    let out = remote.sb.stele(&clone, ["status"]);
    out.expect(OK).says(&["no status branch stele/status yet: the agent has not reported"]);
    let out = remote.sb.stele(&clone, ["status", "--json", "--branch", "ops/status"]);
    let json: serde_json::Value = serde_json::from_str(&out.expect(OK).stdout).expect("JSON");
    assert_eq!(json, serde_json::json!({"branch": "ops/status", "commit": null, "environments": []}));
}

#[test]
fn stele_status_outside_a_repository_is_refused() {
    let sb = Sandbox::new();
    sb.stele(sb.root(), ["status"]).expect(REFUSED).says(&["not a Git repository"]);
}

// ---------------------------------------------------------------------------------------------------
// A quiet branch: the real agent, real processes

const WEBAPP: &str = env!("CARGO_BIN_EXE_stele-webapp");

/// The demo app packed as an image of `version`.
fn webapp_image(sb: &Sandbox, version: &str) -> PathBuf {
    let dir = sb.path(&format!("app-{version}"));
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
    std::fs::copy(WEBAPP, dir.join("bin/stele-webapp")).expect("copy the webapp");
    std::fs::write(dir.join("version.txt"), format!("{version}\n")).expect("write version");
    std::fs::write(dir.join("stele-image.json"), r#"{"command": "bin/stele-webapp"}"#).expect("write manifest");
    let tar = sb.path(&format!("app-{version}.tar"));
    sb.stele(sb.root(), ["image", "pack", &path_str(&dir), "--out", &path_str(&tar)]).expect(OK);
    tar
}

/// Stops every instance and balancer the agent started under `state` (they outlive `stele agent`).
struct Instances(PathBuf);

impl Drop for Instances {
    fn drop(&mut self) {
        let settings = stele::provider::local::LocalSettings::default();
        if let Ok(mut p) = stele::provider::local::LocalProvider::new(&self.0, settings, STELE.into()) {
            let _ = p.destroy(&"staging".parse().expect("an environment name"));
        }
    }
}

#[test]
fn a_canary_pause_that_counts_down_writes_no_status_commits() {
    hermetic_libgit2();
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let ledger = sb.ledger("ledger", "quiet", &alice, &["staging"]);
    let state = sb.path("agent-state");
    let _instances = Instances(state.clone());
    let pause = 6;
    let mut spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/environments/canary.json"))
            .expect("the canary example"),
    )
    .expect("JSON");
    spec["strategy"]["steps"][0]["pause_seconds"] = pause.into();
    spec["health"]["interval_ms"] = 200.into();
    spec["health"]["timeout_ms"] = 200.into();
    spec["health"]["healthy_threshold"] = 1.into();
    std::fs::write(sb.path("spec.json"), spec.to_string()).expect("write the spec");
    let key = alice.secret();
    ledger
        .stele(["env", "set", "--env", "staging", "--spec", &path_str(&sb.path("spec.json")), "--key", &key])
        .expect(OK);
    let config = sb.path("agent.toml");
    std::fs::write(
        &config,
        format!(
            "repo = \"{}\"\nstate_dir = \"{}\"\ntrust_root = [\"{}\"]\ninterval_seconds = 1\n",
            path_str(&ledger.dir),
            path_str(&state),
            alice.id
        ),
    )
    .expect("write agent.toml");
    let agent = ["agent", "--config", &path_str(&config), "--once", "--timeout", "60"];
    ledger.release("staging", "1.0.0", &webapp_image(&sb, "1.0.0"), &alice);
    ledger.stele(agent).expect(OK);
    ledger.release("staging", "2.0.0", &webapp_image(&sb, "2.0.0"), &alice);
    let started = std::time::Instant::now();
    let out = ledger.stele(agent);
    out.expect(OK);
    assert!(started.elapsed().as_secs() >= pause, "the agent waited out the canary pause\n{}", out.dump());

    let repo = open_repository(&ledger.dir).expect("open the ledger");
    let versions: Vec<EnvStatus> = history(&repo, BRANCH, &"staging".parse().unwrap())
        .expect("history")
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| s.target_generation == 2)
        .collect();
    let messages: Vec<&str> = versions.iter().map(|s| s.message.as_str()).collect();
    let pausing: Vec<&EnvStatus> = versions.iter().filter(|s| s.message.contains("pausing")).collect();
    // Entering the pause is a gate verdict (the canary holds 50%), worth a commit; so is an instance
    // launched meanwhile. The countdown alone ("pausing 6s more", "5s more", ...) is not.
    assert!(!pausing.is_empty(), "the pause is on the branch: {messages:#?}");
    let besides_message =
        |s: &EnvStatus| EnvStatus { message: String::new(), updated_at: versions[0].updated_at, ..s.clone() };
    for pair in pausing.windows(2) {
        assert_ne!(
            besides_message(pair[0]),
            besides_message(pair[1]),
            "a commit that only counted down ({:?} after {:?}); the rollout's commits: {messages:#?}",
            pair[0].message,
            pair[1].message
        );
    }
    assert_eq!(versions[0].phase, Phase::Healthy, "{messages:#?}");
    assert_eq!(versions[0].observed_generation, 2, "{messages:#?}");
}
