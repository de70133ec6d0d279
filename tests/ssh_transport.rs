//! `stele poll` over `ssh://` against a real OpenSSH server on loopback: `/usr/sbin/sshd`, run in the
//! foreground by the test with a configuration, host key and authorized key of its own, serving a bare
//! repository the ledger is pushed to. libgit2 (through libssh2) logs in with the client key named by
//! `STELE_GIT_SSH_KEY` and, since Stele sets no `certificate_check` callback, accepts the server only
//! when `$HOME/.ssh/known_hosts` holds its host key under `[127.0.0.1]:PORT`. A host key it does not
//! know (no known_hosts, an empty one, or another key under the server's name) is refused before
//! anything is fetched: exit 3, and the saved state is left as it was.
//!
//! A missing `/usr/sbin/sshd` is a test failure, never a skip (scripts/test.sh installs it).

mod common;

use common::*;
use serde_json::Value;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The OpenSSH server the tests run.
const SSHD: &str = "/usr/sbin/sshd";
/// Exit code of `stele` when the environment failed (a fetch that could not happen): retry later.
const REFUSED: i32 = 3;
/// The longest any one process may run before the test kills it and fails.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------------
// Helpers

/// Runs `cmd` to the end, killing it (and failing) after [`PROCESS_TIMEOUT`]: a transport that hangs
/// must not hang the test run. Output goes through unnamed files, so no pipe can fill up.
fn run(cmd: &mut Command) -> Output {
    run_within(cmd, PROCESS_TIMEOUT)
}

/// `ssh-keygen -t ed25519 -N ''` into `path`; returns the public key as `TYPE BASE64` (no comment).
fn ssh_keygen(sb: &Sandbox, path: &Path) -> String {
    let mut cmd = scrubbed("ssh-keygen", sb.root(), sb.root());
    run(cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", "stele-test", "-f"]).arg(path)).expect(OK);
    let public = std::fs::read_to_string(format!("{}.pub", path_str(path))).expect("ssh-keygen wrote a .pub");
    public.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// `sshd -D -e` on 127.0.0.1 with its own host key, letting in root with the keys in `authorized_keys`
/// only. Killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    /// The server's host key, `ssh-ed25519 BASE64`.
    host_key: String,
}

impl Sshd {
    fn start(sb: &Sandbox, authorized_key: &str) -> Self {
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} is missing: install openssh-server (`apt-get install openssh-server`, as scripts/test.sh does); \
             the ssh:// transport tests need a real OpenSSH server and never skip"
        );
        let dir = sb.path("sshd");
        std::fs::create_dir_all(&dir).expect("create the sshd directory");
        let host_key_file = dir.join("host_ed25519");
        let host_key = ssh_keygen(sb, &host_key_file);
        let authorized_keys = dir.join("authorized_keys");
        std::fs::write(&authorized_keys, format!("{authorized_key}\n")).expect("write authorized_keys");
        privilege_separation_dir();
        // The server side runs `git-upload-pack`: give it this PATH (git may live in /usr/local) and a
        // HOME with no Git configuration in it.
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        let log = dir.join("sshd.log");
        for _ in 0..5 {
            let port = free_port();
            let config = dir.join("sshd_config");
            let settings = [
                "ListenAddress 127.0.0.1".to_owned(),
                format!("Port {port}"),
                format!("HostKey {}", path_str(&host_key_file)),
                format!("PidFile {}", path_str(&dir.join("sshd.pid"))),
                format!("AuthorizedKeysFile {}", path_str(&authorized_keys)),
                "StrictModes no".into(),
                "UsePAM no".into(),
                "PasswordAuthentication no".into(),
                "KbdInteractiveAuthentication no".into(),
                "PubkeyAuthentication yes".into(),
                "AuthenticationMethods publickey".into(),
                "PermitRootLogin prohibit-password".into(),
                "AllowUsers root".into(),
                "PrintMotd no".into(),
                "UseDNS no".into(),
                "LogLevel VERBOSE".into(),
                format!("SetEnv PATH={path} HOME={} GIT_CONFIG_NOSYSTEM=1", path_str(&dir)),
            ];
            std::fs::write(&config, settings.join("\n") + "\n").expect("write sshd_config");
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .env_clear()
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("create the sshd log"))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {SSHD}: {e}"));
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().expect("check on sshd").is_some() {
                    break; // a bad configuration, or the port was taken in the meantime: try another
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Sshd { child, port, host_key };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "{SSHD} did not start listening\n--- sshd stderr\n{}---",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// The `ssh://` URL of the repository at the absolute path `repo`.
    fn url(&self, repo: &Path) -> String {
        format!("ssh://root@127.0.0.1:{}{}", self.port, path_str(repo))
    }

    /// A known_hosts line naming this server (`[127.0.0.1]:PORT`) with `key`.
    fn known_host(&self, key: &str) -> String {
        format!("[127.0.0.1]:{} {key}\n", self.port)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// sshd's privilege separation directory: it must exist, root-owned and not writable by others.
fn privilege_separation_dir() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Path::new("/run/sshd");
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {} for sshd: {e}", dir.display()));
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod /run/sshd");
    }
}

/// A ledger (alice its root, one environment `staging`) pushed to a bare repository served by sshd,
/// and a client key sshd lets in.
struct Fixture {
    sb: Sandbox,
    alice: Key,
    ledger: Ledger,
    sshd: Sshd,
    url: String,
    client_key: PathBuf,
}

fn fixture(ledger_id: &str) -> Fixture {
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let ledger = sb.ledger("ledger", ledger_id, &alice, &["staging"]);
    let bare = sb.path("remote/ledger.git");
    std::fs::create_dir_all(&bare).expect("create the remote");
    sb.git(&bare, ["init", "-q", "--bare", "-b", "main"]);
    ledger.git(["remote", "add", "origin", &path_str(&bare)]);
    let client_key = sb.path("client_ed25519");
    let client_public = ssh_keygen(&sb, &client_key);
    let sshd = Sshd::start(&sb, &client_public);
    let url = sshd.url(&bare);
    Fixture { sb, alice, ledger, sshd, url, client_key }
}

impl Fixture {
    /// Releases `version` to staging and pushes it to the served repository; returns the commit.
    fn push_release(&self, version: &str) -> String {
        let image = self.sb.image(&format!("app-{version}.tar"), format!("app {version}\n").as_bytes());
        self.ledger.release("staging", version, &image, &self.alice);
        self.ledger.git(["push", "-q", "origin", "main"]);
        self.ledger.git(["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// A home directory for `stele` whose `.ssh/known_hosts` holds `known_hosts` (`None`: no file).
    fn home(&self, name: &str, known_hosts: Option<&str>) -> PathBuf {
        let home = self.sb.path(name);
        std::fs::create_dir_all(home.join(".ssh")).expect("create ~/.ssh");
        if let Some(text) = known_hosts {
            std::fs::write(home.join(".ssh/known_hosts"), text).expect("write known_hosts");
        }
        home
    }

    /// The home whose known_hosts holds the server's real host key.
    fn trusting_home(&self) -> PathBuf {
        self.home("home-trusting", Some(&self.sshd.known_host(&self.sshd.host_key)))
    }

    /// `stele poll --repo URL --state-dir STATE --trust-root ALICE --json` with `HOME=home` and the
    /// client key in `STELE_GIT_SSH_KEY`; returns what it printed and its JSON (null when none).
    fn poll(&self, home: &Path, state_dir: &Path) -> (Output, Value) {
        let mut cmd = scrubbed(STELE, home, self.sb.root());
        cmd.args(["poll", "--repo", &self.url, "--state-dir", &path_str(state_dir), "--trust-root", &self.alice.id])
            .arg("--json")
            .env("STELE_GIT_SSH_KEY", &self.client_key);
        let out = run(&mut cmd);
        let json = match out.stdout.trim() {
            "" => Value::Null,
            text => serde_json::from_str(text).unwrap_or_else(|e| panic!("poll printed no JSON: {e}\n{}", out.dump())),
        };
        (out, json)
    }
}

/// The state file's bytes in `state_dir`, if there is one.
fn state_bytes(state_dir: &Path) -> Option<Vec<u8>> {
    std::fs::read(state_dir.join("verified.json")).ok()
}

/// What the poll's cache has fetched of `main`, if anything.
fn fetched(sb: &Sandbox, state_dir: &Path) -> Option<String> {
    let mut cmd = scrubbed("git", sb.root(), sb.root());
    cmd.arg("--git-dir").arg(state_dir.join("cache/ledger.git"));
    let out = run(cmd.args(["rev-parse", "--verify", "-q", "refs/stele/remotes/main"]));
    (out.code == OK).then(|| out.stdout.trim().to_owned())
}

/// Asserts exit 0, `status`, the verified commit and staging's target version.
#[track_caller]
fn expect_poll(poll: &(Output, Value), status: &str, commit: &str, version: &str) {
    let (out, json) = poll;
    out.expect(OK);
    assert_eq!(json["status"], status, "{}", out.dump());
    assert_eq!(json["commit"], commit, "{}", out.dump());
    assert_eq!(json["head"], commit, "{}", out.dump());
    assert_eq!(json["environments"]["staging"]["target"]["version"], version, "{}", out.dump());
    assert_eq!(json["refusals"], serde_json::json!([]), "{}", out.dump());
}

/// Asserts a poll refused for the server's host key: exit 3 (a human must check and trust the key;
/// retrying cannot help), no JSON, a message naming the URL, known_hosts and what to do.
#[track_caller]
fn expect_host_key_refused(poll: &(Output, Value), f: &Fixture, case: &str) {
    let (out, json) = poll;
    assert_eq!(out.code, REFUSED, "{case}: an unknown host key must be refused with exit 3\n{}", out.dump());
    assert_eq!(*json, Value::Null, "{case}: no poll result is printed\n{}", out.dump());
    out.says(&[&format!("{}: the server's SSH host key", f.url), "known_hosts", "ssh-keyscan"]);
}

// ---------------------------------------------------------------------------------------------------
// Tests

/// Over `ssh://` with the server's host key in known_hosts: the first poll verifies the pushed release,
/// an unchanged remote is `up_to_date`, and after another push the next poll fetches and verifies
/// exactly the one new commit.
#[test]
fn poll_over_ssh_verifies_then_is_up_to_date_then_fetches_only_the_new_commit() {
    let f = fixture("ssh-poll");
    let v1 = f.push_release("1.0.0");
    let home = f.trusting_home();
    let state = f.sb.path("agent");

    let first = f.poll(&home, &state);
    expect_poll(&first, "verified", &v1, "1.0.0");
    assert_eq!(first.1["new_commits"], 2, "genesis and the release\n{}", first.0.dump());
    assert_eq!(fetched(&f.sb, &state).as_deref(), Some(v1.as_str()), "fetched over ssh into the cache");
    let saved = state_bytes(&state).expect("a saved state");

    let again = f.poll(&home, &state);
    expect_poll(&again, "up_to_date", &v1, "1.0.0");
    assert_eq!(again.1["new_commits"], 0);
    assert_eq!(state_bytes(&state), Some(saved), "an up-to-date poll writes nothing");

    let v2 = f.push_release("2.0.0");
    let next = f.poll(&home, &state);
    expect_poll(&next, "verified", &v2, "2.0.0");
    assert_eq!(next.1["new_commits"], 1, "only the new commit\n{}", next.0.dump());
    assert_eq!(next.1["environments"]["staging"]["generation"], 2);
    assert_eq!(fetched(&f.sb, &state).as_deref(), Some(v2.as_str()));
}

/// A server whose host key is not in known_hosts is refused, whether there is no known_hosts, an empty
/// one, or one holding another key under the server's name `[127.0.0.1]:PORT`: exit 3 (the host key is
/// for a human to check), nothing fetched, no state written on a first poll and the
/// saved state byte-identical on a later one. With the right key, the same state directory goes on.
#[test]
fn unknown_or_mismatched_host_key_is_refused_with_exit_3_and_the_state_is_kept() {
    let f = fixture("ssh-hostkey");
    let v1 = f.push_release("1.0.0");
    let impostor = ssh_keygen(&f.sb, &f.sb.path("impostor_ed25519"));
    assert_ne!(impostor, f.sshd.host_key);
    let untrusting = [
        ("no known_hosts", f.home("home-none", None)),
        ("empty known_hosts", f.home("home-empty", Some(""))),
        ("another key for [127.0.0.1]:PORT", f.home("home-other", Some(&f.sshd.known_host(&impostor)))),
    ];
    let state = f.sb.path("agent");

    for (case, home) in &untrusting {
        expect_host_key_refused(&f.poll(home, &state), &f, case);
        assert_eq!(state_bytes(&state), None, "{case}: nothing verified, nothing saved");
        assert_eq!(fetched(&f.sb, &state), None, "{case}: nothing fetched");
    }

    let trusting = f.trusting_home();
    expect_poll(&f.poll(&trusting, &state), "verified", &v1, "1.0.0");
    let saved = state_bytes(&state).expect("a saved state");

    let v2 = f.push_release("2.0.0");
    for (case, home) in &untrusting {
        expect_host_key_refused(&f.poll(home, &state), &f, case);
        assert_eq!(state_bytes(&state).as_ref(), Some(&saved), "{case}: the state file is byte-identical");
        assert_eq!(fetched(&f.sb, &state).as_deref(), Some(v1.as_str()), "{case}: nothing new fetched");
    }

    let next = f.poll(&trusting, &state);
    expect_poll(&next, "verified", &v2, "2.0.0");
    assert_eq!(next.1["new_commits"], 1, "{}", next.0.dump());
}
