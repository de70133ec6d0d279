//! Headless Chromium (the Debian package `chromium`, which scripts/test.sh installs) for the tests of
//! the operator page and the audit report: the DOM after the browser parsed a page, and screenshots.
//! A missing or failing browser fails the test, naming what to install; nothing is ever skipped.
//!
//! Each run gets its own profile directory, so tests running in parallel never share Chromium's
//! profile lock, and is killed after [`DEADLINE`].

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The browser binary, found on `PATH`.
pub const CHROMIUM: &str = "chromium";
/// How long one browser run may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(90);

/// The serialized DOM of `target` (a URL, or a path to a local file) after Chromium loaded it.
pub fn dom(target: &str) -> String {
    let out = run(&["--dump-dom", &url(target)]);
    assert!(out.contains("<html"), "chromium printed no document for {target}:\n{out}");
    out
}

/// A `width`×`height` screenshot of `target` written to `out_png` (its directory is created).
pub fn screenshot(target: &str, out_png: &Path, width: u32, height: u32) {
    if let Some(dir) = out_png.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    }
    let _ = std::fs::remove_file(out_png);
    let shot = format!("--screenshot={}", out_png.display());
    run(&["--hide-scrollbars", &format!("--window-size={width},{height}"), &shot, &url(target)]);
    let bytes = std::fs::read(out_png).unwrap_or_else(|e| panic!("chromium wrote no {}: {e}", out_png.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", out_png.display());
}

/// `target` as a URL: a path becomes an absolute `file://` URL.
pub fn url(target: &str) -> String {
    if target.contains("://") {
        return target.to_owned();
    }
    let path = std::fs::canonicalize(target).unwrap_or_else(|e| panic!("{target}: {e}"));
    let path = path.to_str().unwrap_or_else(|| panic!("{}: not UTF-8", path.display()));
    assert!(
        path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.+".contains(&b)),
        "{path}: characters a file URL would need to escape"
    );
    format!("file://{path}")
}

/// The directory that screenshots go to: `target/screenshots/` of this workspace.
pub fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("screenshots")
}

/// Runs headless Chromium with `args` and returns its stdout; any failure panics with its stderr.
fn run(args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("a temporary profile directory");
    let mut cmd = Command::new(CHROMIUM);
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run `{CHROMIUM}` ({e}): install the Debian package `chromium` (scripts/test.sh does)")
    });
    // Read both pipes on threads, so a chatty stderr never blocks the browser.
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} took more than {DEADLINE:?}:\n{}", err.join().unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    assert!(status.success(), "chromium {args:?} failed ({status}):\n{err}");
    out
}
