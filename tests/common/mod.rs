//! Shared helpers for the integration tests that drive the real `stele` binary against real Git
//! repositories built by the `git` CLI in temporary directories.
//!
//! Every process runs with a scrubbed environment: `HOME` is the test's own temporary directory (so a
//! user's global Git configuration never leaks in), Git and `stele` get a fixed identity through
//! `GIT_AUTHOR_*` / `GIT_COMMITTER_*`, and nothing else is inherited but `PATH`. A missing `git` is a
//! test failure, never a skip.

// Each test binary uses a different part of these helpers.
#![allow(dead_code)]

pub mod browser;
pub mod cloud;
pub mod cloud_suite;
pub mod fixture;
pub mod gcp;
pub mod moto;

use std::ffi::OsStr;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The binary under test, built by Cargo for this test run.
pub const STELE: &str = env!("CARGO_BIN_EXE_stele");

/// Exit codes of `stele` (src/exit.rs).
pub const OK: i32 = 0;
pub const VERIFY_FAILED: i32 = 1;
pub const USAGE: i32 = 2;
pub const REFUSED: i32 = 3;

/// The fixed identity every commit is made with.
const IDENTITY: [(&str, &str); 4] = [
    ("GIT_AUTHOR_NAME", "Stele Test"),
    ("GIT_AUTHOR_EMAIL", "test@stele.invalid"),
    ("GIT_COMMITTER_NAME", "Stele Test"),
    ("GIT_COMMITTER_EMAIL", "test@stele.invalid"),
];

/// What a finished process printed and how it exited.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// The command line, for failure messages.
    pub command: String,
}

impl Output {
    /// Asserts the exit code, showing everything the process printed when it differs.
    #[track_caller]
    pub fn expect(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "`{}` exited {} instead of {code}\n{}", self.command, self.code, self.dump());
        self
    }

    /// Asserts that stdout or stderr contains each of `words`.
    #[track_caller]
    pub fn says(&self, words: &[&str]) -> &Self {
        let all = format!("{}{}", self.stdout, self.stderr);
        for w in words {
            assert!(all.contains(w), "`{}` does not say {w:?}\n{}", self.command, self.dump());
        }
        self
    }

    /// stdout and stderr, labelled, for failure messages.
    pub fn dump(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}---", self.stdout, self.stderr)
    }

    /// The first whitespace-separated word of stdout (a key id or digest).
    pub fn first_word(&self) -> String {
        self.stdout.split_whitespace().next().unwrap_or_else(|| panic!("`{}` printed nothing", self.command)).to_owned()
    }
}

/// A temporary directory that is also `HOME` for every process a test runs.
pub struct Sandbox {
    tmp: TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// A fresh sandbox. Panics when the `git` CLI cannot be run: these tests never skip for want of it.
    pub fn new() -> Self {
        static GIT_VERSION: OnceLock<String> = OnceLock::new();
        let sb = Self { tmp: tempfile::tempdir().expect("create a temporary directory") };
        GIT_VERSION.get_or_init(|| sb.git(sb.root(), ["--version"]));
        sb
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// Runs `stele ARGS` in `cwd`.
    pub fn stele<I, S>(&self, cwd: &Path, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(command(STELE, self.root(), cwd, args), None)
    }

    /// Runs `git ARGS` in `cwd` and returns its stdout; any failure (including a missing git) panics.
    pub fn git<I, S>(&self, cwd: &Path, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        String::from_utf8_lossy(&self.git_bytes(cwd, args, None)).into_owned()
    }

    /// Runs `git ARGS` in `cwd` with `stdin` as input and returns its raw stdout.
    pub fn git_bytes<I, S>(&self, cwd: &Path, args: I, stdin: Option<&[u8]>) -> Vec<u8>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = run_raw(command("git", self.root(), cwd, args), stdin);
        assert_eq!(out.code, OK, "`{}` failed\n{}", out.command, out.dump_lossy());
        out.stdout
    }

    /// `stele key generate --out HOME/NAME.key`, checked: the secret is mode 0600, `.pub` exists
    /// beside it, and the printed key id is what `stele key id` says for both files.
    pub fn key(&self, name: &str) -> Key {
        use std::os::unix::fs::PermissionsExt;
        let secret = self.path(&format!("{name}.key"));
        let out = self
            .stele(self.root(), [OsStr::new("key"), OsStr::new("generate"), OsStr::new("--out"), secret.as_os_str()]);
        out.expect(OK);
        let id = out.first_word();
        assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()), "not a key id: {id:?}");
        let mode = std::fs::metadata(&secret).expect("secret key written").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} must be private", secret.display());
        let public = self.path(&format!("{name}.key.pub"));
        for file in [&public, &secret] {
            let shown = self.stele(self.root(), [OsStr::new("key"), OsStr::new("id"), file.as_os_str()]);
            assert_eq!(shown.expect(OK).first_word(), id, "`stele key id {}`", file.display());
        }
        Key { secret, public, id }
    }

    /// Writes a small image artifact and returns its path.
    /// An image archive `name` the local provider accepts (a manifest naming `bin/app`, whose bytes
    /// are `contents`), packed in the reproducible form.
    pub fn image(&self, name: &str, contents: &[u8]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.path(&format!("{name}.d"));
        std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
        std::fs::write(dir.join("bin/app"), contents).expect("write the command");
        std::fs::set_permissions(dir.join("bin/app"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(dir.join("stele-image.json"), br#"{"command": "bin/app"}"#).expect("write the manifest");
        let path = self.path(name);
        stele::image::pack_dir_to_file(&dir, &path).expect("pack the image");
        path
    }

    /// `stele init DIR --key ROOT --env ... --ledger-id ID`, checked to succeed.
    pub fn ledger(&self, dir: &str, ledger_id: &str, root: &Key, envs: &[&str]) -> Ledger {
        self.ledger_with(dir, ledger_id, root, envs, &[])
    }

    /// [`Sandbox::ledger`] with `extra` arguments for `stele init` (e.g. `--layout buckets`).
    pub fn ledger_with(&self, dir: &str, ledger_id: &str, root: &Key, envs: &[&str], extra: &[&str]) -> Ledger {
        let ledger = Ledger { home: self.root().to_owned(), dir: self.path(dir) };
        let mut args = vec!["init".to_owned(), dir.to_owned(), "--key".to_owned(), path_str(&root.secret)];
        args.extend(["--ledger-id".to_owned(), ledger_id.to_owned()]);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        for env in envs {
            args.extend(["--env".to_owned(), (*env).to_owned()]);
        }
        self.stele(self.root(), &args).expect(OK).says(&[&format!("initialised ledger {ledger_id}")]);
        ledger
    }

    /// `git clone FROM DIR` of a ledger in this sandbox: another person's copy.
    pub fn clone_ledger(&self, from: &str, dir: &str) -> Ledger {
        self.git(self.root(), ["clone", "-q", from, dir]);
        Ledger { home: self.root().to_owned(), dir: self.path(dir) }
    }
}

/// A key pair written by `stele key generate`.
#[derive(Clone, Debug)]
pub struct Key {
    pub secret: PathBuf,
    pub public: PathBuf,
    pub id: String,
}

impl Key {
    pub fn secret(&self) -> String {
        path_str(&self.secret)
    }

    pub fn public(&self) -> String {
        path_str(&self.public)
    }
}

/// A ledger repository made by `stele init` inside a [`Sandbox`].
pub struct Ledger {
    home: PathBuf,
    pub dir: PathBuf,
}

impl Ledger {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Runs `stele ARGS` inside the ledger.
    pub fn stele<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(command(STELE, &self.home, &self.dir, args), None)
    }

    /// Runs `git ARGS` inside the ledger; a failure panics.
    pub fn git<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        String::from_utf8_lossy(&self.git_bytes(args, None)).into_owned()
    }

    pub fn git_bytes<I, S>(&self, args: I, stdin: Option<&[u8]>) -> Vec<u8>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = run_raw(command("git", &self.home, &self.dir, args), stdin);
        assert_eq!(out.code, OK, "`{}` failed\n{}", out.command, out.dump_lossy());
        out.stdout
    }

    /// Makes `env` 2 of 2: `co` becomes its second signer (signed by `root`), then the threshold is
    /// raised with both keys, so the same commit carries the spec and tip re-signed by `co` (R5).
    pub fn two_of_two(&self, env: &str, root: &Key, co: &Key) {
        let (root, co_secret) = (root.secret(), co.secret());
        self.stele(["policy", "add-signer", "--env", env, "--pubkey", &co.public(), "--key", &root]).expect(OK);
        let raise = ["policy", "set-threshold", "--env", env, "--threshold", "2", "--key", &root, "--key", &co_secret];
        self.stele(raise).expect(OK);
    }

    /// `stele release --env ENV --version V --image IMAGE --key KEY [EXTRA...]`, not checked.
    pub fn try_release(&self, env: &str, version: &str, image: &Path, key: &Key, extra: &[&str]) -> Output {
        let mut args = vec!["release", "--env", env, "--version", version, "--key"];
        let (secret, image) = (key.secret(), path_str(image));
        args.extend([secret.as_str(), "--image", image.as_str()]);
        args.extend(extra);
        self.stele(&args)
    }

    /// A release that must succeed.
    pub fn release(&self, env: &str, version: &str, image: &Path, key: &Key) -> Output {
        let out = self.try_release(env, version, image, key, &[]);
        out.expect(OK);
        out
    }

    /// `stele verify [ARGS...]` of the work tree (or `--rev`), not checked.
    pub fn verify(&self, args: &[&str]) -> Output {
        self.stele(std::iter::once("verify").chain(args.iter().copied()))
    }

    /// Asserts that `stele verify ARGS` exits 1 and reports exactly `expected`: one line per problem,
    /// `PATH: CHECK: reason`, each reason containing the given words.
    #[track_caller]
    pub fn expect_problems(&self, args: &[&str], expected: &[(&str, &str, &[&str])]) -> Output {
        let out = self.verify(args);
        out.expect(VERIFY_FAILED);
        let lines: Vec<&str> = out.stdout.lines().collect();
        for (path, check, words) in expected {
            let prefix = format!("{path}: {check}: ");
            let line = lines
                .iter()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("`{}` does not report {check} at {path}\n{}", out.command, out.dump()));
            for w in *words {
                assert!(line.contains(w), "{check} at {path} does not say {w:?}: {line}\n{}", out.dump());
            }
        }
        assert_eq!(lines.len(), expected.len(), "`{}` reports other problems too\n{}", out.command, out.dump());
        out.says(&["FAILED"]);
        out
    }

    /// Asserts that `stele verify ARGS` exits 0.
    #[track_caller]
    pub fn expect_valid(&self, args: &[&str]) -> Output {
        let out = self.verify(args);
        out.expect(OK).says(&["OK: "]);
        out
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn read_string(&self, rel: &str) -> String {
        String::from_utf8(self.read(rel)).unwrap_or_else(|e| panic!("{rel} is not UTF-8: {e}"))
    }

    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create directories");
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {rel}: {e}"));
    }

    /// A ledger document parsed as JSON.
    pub fn json(&self, rel: &str) -> serde_json::Value {
        serde_json::from_slice(&self.read(rel)).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
    }

    /// Writes `value` in the canonical file form of SPEC.md §3.3 (two-space indent, members sorted,
    /// final LF), rendered independently of the code under test.
    pub fn write_json(&self, rel: &str, value: &serde_json::Value) {
        self.write(rel, file_form(value));
    }

    /// `git add -A && git commit -m MESSAGE`, the way a person hand-editing the ledger would.
    pub fn commit_all(&self, message: &str) {
        self.git(["add", "-A"]);
        self.git(["commit", "-q", "-m", message]);
    }

    /// Number of commits reachable from HEAD.
    pub fn commit_count(&self) -> usize {
        self.git(["rev-list", "--count", "HEAD"]).trim().parse().expect("a count")
    }
}

/// `value` in the file form of SPEC.md §3.3. serde_json's maps are sorted (no `preserve_order`), and its
/// pretty printer indents by two spaces and writes `"name": value`, `[]` and `{}`: exactly the file form
/// for the ASCII-only documents these tests handle.
pub fn file_form(value: &serde_json::Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("JSON values render");
    bytes.push(b'\n');
    bytes
}

/// Replaces the single occurrence of `from` in `text`; panics unless there is exactly one, so a test
/// never silently edits nothing.
#[track_caller]
pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "expected exactly one {from:?} in:\n{text}");
    text.replacen(from, to, 1)
}

pub fn path_str(path: &Path) -> String {
    path.to_str().expect("temporary paths are UTF-8").to_owned()
}

/// A command with a scrubbed environment: only `PATH` is inherited (plus a coverage tool's profile
/// file), `HOME` is the sandbox and the Git identity is fixed.
fn command<I, S>(program: &str, home: &Path, cwd: &Path, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = scrubbed(program, home, cwd);
    cmd.args(args);
    cmd
}

/// `program` in `cwd` with the scrubbed environment of every helper here (only `PATH` inherited,
/// `HOME` = `home`, the fixed Git identity), for suites that add variables or keep children running.
pub fn scrubbed(program: &str, home: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd).env_clear();
    for inherited in ["PATH", "LLVM_PROFILE_FILE"] {
        if let Some(value) = std::env::var_os(inherited) {
            cmd.env(inherited, value);
        }
    }
    cmd.env("HOME", home)
        .env("LC_ALL", "C")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .envs(IDENTITY);
    cmd
}

struct RawOutput {
    code: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    command: String,
}

impl RawOutput {
    fn dump_lossy(&self) -> String {
        format!(
            "--- stdout\n{}--- stderr\n{}---",
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }
}

fn run_raw(mut cmd: Command, stdin: Option<&[u8]>) -> RawOutput {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run `{shown}`: {e} (these tests need the `git` CLI on PATH and the built `stele` binary)")
    });
    if let Some(input) = stdin {
        child.stdin.take().expect("piped stdin").write_all(input).expect("write stdin");
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("wait for `{shown}`: {e}"));
    RawOutput { code: out.status.code().unwrap_or(-1), stdout: out.stdout, stderr: out.stderr, command: shown }
}

fn run(cmd: Command, stdin: Option<&[u8]>) -> Output {
    let raw = run_raw(cmd, stdin);
    Output {
        code: raw.code,
        stdout: String::from_utf8_lossy(&raw.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&raw.stderr).into_owned(),
        command: raw.command,
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("a bound address").port()
}

/// `git daemon` serving every repository under `base` on loopback, pushes included. Killed on drop.
pub struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl GitDaemon {
    pub fn serve(sb: &Sandbox, base: &Path) -> Self {
        Self::start(sb, base, None)
    }

    /// Serves on `port` (which must be free).
    pub fn serve_on(sb: &Sandbox, base: &Path, port: u16) -> Self {
        Self::start(sb, base, Some(port))
    }

    fn start(sb: &Sandbox, base: &Path, fixed: Option<u16>) -> Self {
        // `git daemon` runs git-daemon as a child of its own and would outlive a kill of the `git`
        // process: start the daemon program itself, so that the process killed is the one listening.
        let program = Path::new(sb.git(sb.root(), ["--exec-path"]).trim()).join("git-daemon");
        let log = sb.path("git-daemon.log");
        for _ in 0..5 {
            let port = fixed.unwrap_or_else(free_port);
            let mut child = scrubbed(&path_str(&program), sb.root(), base)
                .args(["--export-all", "--reuseaddr", "--listen=127.0.0.1", "--enable=receive-pack"])
                .arg(format!("--base-path={}", path_str(base)))
                .arg(format!("--port={port}"))
                .arg("--informative-errors")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("create the daemon log"))
                .spawn()
                .expect("spawn git daemon (part of the git CLI these tests need)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().expect("check on git daemon").is_some() {
                    break; // most likely the port was taken in the meantime: try another
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return GitDaemon { child, port };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("git daemon did not start\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    pub fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to the end, killing it (and failing) after `timeout`: a process that hangs must not hang
/// the test run. Output goes through unnamed files, so no pipe can fill up.
pub fn run_within(cmd: &mut Command, timeout: Duration) -> Output {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    let (mut stdout, mut stderr) = (tempfile::tempfile().expect("a file"), tempfile::tempfile().expect("a file"));
    cmd.stdin(Stdio::null())
        .stdout(stdout.try_clone().expect("clone a file handle"))
        .stderr(stderr.try_clone().expect("clone a file handle"));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run `{shown}`: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("check on a child process") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let read = |file: &mut std::fs::File| {
        let mut text = String::new();
        file.seek(SeekFrom::Start(0)).expect("rewind");
        file.read_to_string(&mut text).expect("read the output");
        text
    };
    let out = Output { code: -1, stdout: read(&mut stdout), stderr: read(&mut stderr), command: shown };
    match status {
        Some(status) => Output { code: status.code().unwrap_or(-1), ..out },
        None => panic!("`{}` did not finish within {timeout:?}\n{}", out.command, out.dump()),
    }
}
