//! The local provider's image store against real files, a real HTTP server (a `std` TcpListener on a
//! thread, answering each request as the test says) and the real `stele-webapp` binary.
//!
//! Every refusal test also checks that nothing was left behind in `images/`, `blobs/` or `tmp/`: a
//! refused artifact must never become something an instance could start from.

mod store_support;

use ledger_format::types::ArtifactUri;
use ledger_format::Blake3Digest;
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};
use stele::provider::local::store::{ImageStore, Manifest, PreparedImage, StoreError, MANIFEST_FILE};
use store_support::{digest_of, names_in, new_store, raw_tar, Raw, Store};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------------
// Images and archives
// ---------------------------------------------------------------------------------------------------

/// A file to put in a test image: path, contents, mode.
type TestFile<'a> = (&'a str, &'a [u8], u32);

/// Writes `files` under `dir`, creating parent directories.
fn write_tree(dir: &Path, files: &[TestFile<'_>]) {
    for (path, contents, mode) in files {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().expect("test paths have a parent")).expect("create parent directory");
        fs::write(&path, contents).expect("write test file");
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).expect("set test file mode");
    }
}

const APP_SCRIPT: &[u8] = b"#!/bin/sh\necho hello\n";
const MANIFEST: &[u8] = br#"{"command": "bin/app", "args": ["--greeting", "hi"], "env": {"APP_MODE": "demo"}}"#;

/// A small valid image: a manifest, an executable, a nested data file and an empty directory.
fn sample_tree(dir: &Path) {
    write_tree(
        dir,
        &[
            (MANIFEST_FILE, MANIFEST, 0o644),
            ("bin/app", APP_SCRIPT, 0o755),
            ("share/data/notes.txt", b"some data\n", 0o600),
            ("version.txt", b"1.0.0\n", 0o644),
        ],
    );
    fs::create_dir(dir.join("empty")).expect("create empty directory");
}

/// Packs `dir` the way `stele image pack` does.
fn pack(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    stele::image::pack_dir(dir, &mut bytes).expect("pack test image");
    bytes
}

fn pack_files(files: &[TestFile<'_>]) -> Vec<u8> {
    let dir = TempDir::new().expect("create temp dir");
    write_tree(dir.path(), files);
    pack(dir.path())
}

fn sample_archive() -> Vec<u8> {
    let dir = TempDir::new().expect("create temp dir");
    sample_tree(dir.path());
    pack(dir.path())
}

fn file_uri(path: &Path) -> ArtifactUri {
    format!("file://{}", path.display()).parse().expect("temp paths make valid artifact URIs")
}

/// An artifact on disk, with the directory that holds it.
struct Artifact {
    _dir: TempDir,
    uri: ArtifactUri,
    digest: Blake3Digest,
    size: u64,
}

fn artifact_file(bytes: &[u8]) -> Artifact {
    let dir = TempDir::new().expect("create temp dir");
    let path = dir.path().join("image.tar");
    fs::write(&path, bytes).expect("write artifact");
    Artifact { uri: file_uri(&path), digest: digest_of(bytes), size: bytes.len() as u64, _dir: dir }
}

/// A valid manifest and command, to put beside the entry under test so that only it is wrong.
fn with_valid_image<'a>(mut entries: Vec<Raw<'a>>) -> Vec<Raw<'a>> {
    let mut all =
        vec![Raw::Dir("bin"), Raw::File("bin/app", APP_SCRIPT, 0o755), Raw::File(MANIFEST_FILE, MANIFEST, 0o644)];
    all.append(&mut entries);
    all
}

// ---------------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------------

impl Store {
    /// Asserts that the store holds nothing: a refused artifact left no trace.
    #[track_caller]
    fn assert_empty(&self) {
        for sub in ["images", "blobs", "tmp"] {
            assert_eq!(names_in(&self.root.join(sub)), Vec::<String>::new(), "{sub}/ should be empty");
        }
    }
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn file_artifact_is_unpacked_read_only_with_its_manifest() {
    let s = new_store();
    let artifact = artifact_file(&sample_archive());
    let image = s.store.ensure(&artifact.uri, &artifact.digest, artifact.size).expect("ensure");

    assert_eq!(image.digest, artifact.digest);
    assert_eq!(image.dir, s.store.image_dir(&artifact.digest));
    assert_eq!(image.dir, s.root.join("images").join(artifact.digest.to_hex()));
    assert_eq!(
        image.manifest,
        Manifest {
            command: "bin/app".to_owned(),
            args: vec!["--greeting".to_owned(), "hi".to_owned()],
            env: BTreeMap::from([("APP_MODE".to_owned(), "demo".to_owned())]),
        }
    );
    assert_eq!(image.command_path(), image.dir.join("bin/app"));
    assert_eq!(fs::read(image.dir.join("bin/app")).expect("read command"), APP_SCRIPT);
    assert_eq!(fs::read(image.dir.join("share/data/notes.txt")).expect("read data"), b"some data\n");

    // Read-only throughout: the checks are on mode bits, since tests may run as root, who can write
    // anyway.
    for (path, mode) in [
        ("", 0o555),
        ("bin", 0o555),
        ("bin/app", 0o555),
        ("share", 0o555),
        ("share/data", 0o555),
        ("share/data/notes.txt", 0o444),
        (MANIFEST_FILE, 0o444),
        ("empty", 0o555),
    ] {
        assert_eq!(mode_of(&image.dir.join(path)), mode, "mode of {path:?}");
    }

    let hex = artifact.digest.to_hex();
    assert_eq!(names_in(&s.root.join("images")), [hex.clone(), format!("{hex}.ok")]);
    assert_eq!(names_in(&s.root.join("blobs")), [format!("{hex}.tar")]);
    assert_eq!(names_in(&s.root.join("tmp")), Vec::<String>::new());
    assert_eq!(s.store.verify_unpacked(&artifact.digest), Ok(()));
}

#[test]
fn unpacked_read_only_tree_packs_back_to_the_artifact_digest() {
    let s = new_store();
    let bytes = sample_archive();
    let artifact = artifact_file(&bytes);
    let image = s.store.ensure(&artifact.uri, &artifact.digest, artifact.size).expect("ensure");
    // The same bytes, not just the same digest: 0444/0555 on disk pack as 0644/0755 again.
    assert!(pack(&image.dir) == bytes, "re-packing the read-only tree changed the archive");
}

#[test]
fn http_artifact_is_fetched_once_and_later_ensures_do_not_fetch() {
    let bytes = sample_archive();
    let served = bytes.clone();
    let server = Server::start(move |_| Reply::Body(served.clone()));
    let s = new_store();
    let uri = server.uri("/images/app.tar");
    let digest = digest_of(&bytes);

    let first = s.store.ensure(&uri, &digest, bytes.len() as u64).expect("first ensure");
    let second = s.store.ensure(&uri, &digest, bytes.len() as u64).expect("second ensure");
    assert_eq!(first, second);
    // A new store on the same root (an agent restart) finds the image too.
    let reopened = ImageStore::open(&s.root).expect("reopen store");
    assert_eq!(reopened.ensure(&uri, &digest, bytes.len() as u64).expect("ensure after reopening"), first);
    assert_eq!(server.hits(), 1, "only the first ensure may fetch");
    assert_eq!(server.paths(), ["/images/app.tar"]);
}

#[test]
fn concurrent_ensures_of_one_image_fetch_it_once() {
    let bytes = sample_archive();
    let served = bytes.clone();
    let server = Server::start(move |_| {
        // Slow enough that all threads ask while the first download is still running.
        thread::sleep(Duration::from_millis(200));
        Reply::Body(served.clone())
    });
    let s = new_store();
    let uri = server.uri("/app.tar");
    let digest = digest_of(&bytes);
    let dirs: Vec<PathBuf> = thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| s.store.ensure(&uri, &digest, bytes.len() as u64).expect("ensure").dir))
            .collect();
        handles.into_iter().map(|h| h.join().expect("ensure thread")).collect()
    });
    assert!(dirs.iter().all(|dir| *dir == s.store.image_dir(&digest)), "{dirs:?}");
    assert_eq!(server.hits(), 1);
}

#[test]
fn digest_mismatch_is_refused_and_leaves_nothing_behind() {
    let good = sample_archive();
    let mut evil = good.clone();
    // Same size, one byte different, inside the first file's contents.
    evil[600] ^= 0xff;
    let served = evil.clone();
    let server = Server::start(move |_| Reply::Body(served.clone()));
    let s = new_store();
    let uri = server.uri("/app.tar");
    let expected = digest_of(&good);

    let error = s.store.ensure(&uri, &expected, good.len() as u64).expect_err("mismatch must be refused");
    assert!(matches!(error, StoreError::Mismatch { .. }), "{error:?}");
    assert!(!error.is_retryable());
    let message = error.to_string();
    for part in [uri.as_str(), &expected.to_hex(), &digest_of(&evil).to_hex()] {
        assert!(message.contains(part), "{message:?} should name {part}");
    }
    assert_eq!(server.hits(), 1, "a mismatch is never retried");
    s.assert_empty();
    assert!(s.store.verify_unpacked(&expected).is_err(), "nothing was prepared");
}

#[test]
fn file_larger_than_its_entry_is_refused_after_one_byte_too_many() {
    let bytes = sample_archive();
    let artifact = artifact_file(&bytes);
    let s = new_store();
    let declared = bytes.len() as u64 - 512;
    let error = s.store.ensure(&artifact.uri, &artifact.digest, declared).expect_err("oversize must be refused");
    assert!(matches!(error, StoreError::Mismatch { .. }), "{error:?}");
    assert!(error.to_string().contains(&format!("more than {declared} bytes (stopped reading)")), "{error}");
    s.assert_empty();
}

#[test]
fn endless_http_stream_is_cut_off_at_the_declared_size() {
    let server = Server::start(|_| Reply::Endless);
    let s = new_store();
    let uri = server.uri("/endless");
    let error = s.store.ensure(&uri, &Blake3Digest([7; 32]), 100_000).expect_err("oversize must be refused");
    assert!(matches!(error, StoreError::Mismatch { .. }), "{error:?}");
    assert!(error.to_string().contains("more than 100000 bytes (stopped reading)"), "{error}");
    // The client hung up, so the server's writes failed long before its own limit.
    let sent = server.wait_for_endless_stream_to_stop();
    assert!(sent < ENDLESS_LIMIT, "the server sent all {sent} bytes: the download was not aborted");
    assert_eq!(server.hits(), 1);
    s.assert_empty();
}

#[test]
fn content_length_other_than_the_entry_size_is_refused_without_reading() {
    let bytes = sample_archive();
    let digest = digest_of(&bytes);
    let size = bytes.len() as u64;
    for (announced_extra, label) in [(10_000i64, "bigger"), (-512, "smaller")] {
        let announced = (size as i64 + announced_extra) as usize;
        let server = Server::start(move |_| Reply::Body(vec![0; announced]));
        let s = new_store();
        let error = s.store.ensure(&server.uri("/app.tar"), &digest, size).expect_err("must be refused");
        assert!(matches!(error, StoreError::Mismatch { .. }), "{label}: {error:?}");
        assert!(error.to_string().contains(&format!("announces as {announced} bytes")), "{label}: {error}");
        assert_eq!(server.hits(), 1, "{label}: a mismatch is never retried");
        s.assert_empty();
    }
}

#[test]
fn truncated_download_is_refused_as_a_mismatch() {
    let bytes = sample_archive();
    let short = bytes[..bytes.len() - 1000].to_vec();
    // No Content-Length: the body ends when the server closes, so the client sees a clean, short end.
    let server = Server::start(move |_| Reply::NoLength(short.clone()));
    let s = new_store();
    let error =
        s.store.ensure(&server.uri("/app.tar"), &digest_of(&bytes), bytes.len() as u64).expect_err("must be refused");
    assert!(matches!(error, StoreError::Mismatch { .. }), "{error:?}");
    assert!(error.to_string().contains("truncated: 1000 bytes missing"), "{error}");
    assert_eq!(server.hits(), 1);
    s.assert_empty();
}

#[test]
fn body_cut_short_of_its_content_length_is_retried_then_reported_as_a_fetch_failure() {
    let bytes = sample_archive();
    let served = bytes.clone();
    let server = Server::start(move |_| Reply::CutShort(served.clone(), 2048));
    let s = new_store();
    let error = s.store.ensure(&server.uri("/app.tar"), &digest_of(&bytes), bytes.len() as u64).expect_err("must fail");
    assert!(matches!(error, StoreError::Fetch { .. }), "{error:?}");
    assert!(error.is_retryable());
    assert!(error.to_string().contains("gave up after 3 attempts"), "{error}");
    assert_eq!(server.hits(), 3);
    s.assert_empty();
}

#[test]
fn server_error_is_retried_and_the_next_answer_is_used() {
    let bytes = sample_archive();
    let served = bytes.clone();
    let server = Server::start(move |hit| if hit == 0 { Reply::Status(500) } else { Reply::Body(served.clone()) });
    let s = new_store();
    let image = s.store.ensure(&server.uri("/app.tar"), &digest_of(&bytes), bytes.len() as u64).expect("ensure");
    assert_eq!(server.hits(), 2);
    assert_eq!(s.store.verify_unpacked(&image.digest), Ok(()));
}

#[test]
fn persistent_server_error_gives_up_after_three_attempts() {
    let server = Server::start(|_| Reply::Status(503));
    let s = new_store();
    let error = s.store.ensure(&server.uri("/app.tar"), &Blake3Digest([1; 32]), 10).expect_err("must fail");
    assert!(matches!(error, StoreError::Fetch { .. }), "{error:?}");
    assert!(error.is_retryable());
    assert!(error.to_string().contains("503"), "{error}");
    assert_eq!(server.hits(), 3);
    s.assert_empty();
}

#[test]
fn client_error_status_is_not_retried_and_names_the_status() {
    let server = Server::start(|_| Reply::Status(404));
    let s = new_store();
    let uri = server.uri("/missing.tar");
    let error = s.store.ensure(&uri, &Blake3Digest([1; 32]), 10).expect_err("must fail");
    assert!(matches!(error, StoreError::Fetch { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("404") && message.contains(uri.as_str()) && message.contains("not retried"), "{message}");
    assert_eq!(server.hits(), 1);
    s.assert_empty();
}

#[test]
fn unreachable_sources_are_retryable_fetch_failures() {
    // A port that was free a moment ago: nothing listens there.
    let port = free_port();
    let missing_dir = TempDir::new().expect("create temp dir");
    for uri in [format!("http://127.0.0.1:{port}/app.tar"), format!("file://{}/nope.tar", missing_dir.path().display())]
    {
        let s = new_store();
        let uri: ArtifactUri = uri.parse().expect("valid uri");
        let error = s.store.ensure(&uri, &Blake3Digest([1; 32]), 10).expect_err("must fail");
        assert!(matches!(error, StoreError::Fetch { .. }), "{uri}: {error:?}");
        assert!(error.is_retryable(), "{uri}");
        assert!(error.to_string().contains(uri.as_str()), "{error}");
        s.assert_empty();
    }
}

/// Ensures an archive whose digest is right but whose contents are not a usable image, and returns
/// the `BadImage` error's file and message.
#[track_caller]
fn refused_image(bytes: &[u8]) -> (String, String) {
    let s = new_store();
    let artifact = artifact_file(bytes);
    let error = s.store.ensure(&artifact.uri, &artifact.digest, artifact.size).expect_err("must be refused");
    let StoreError::BadImage { file, .. } = &error else { panic!("expected BadImage, got {error:?}") };
    assert!(!error.is_retryable());
    let message = error.to_string();
    assert!(message.contains(&artifact.digest.to_hex()), "{message:?} should name the digest");
    s.assert_empty();
    (file.clone(), message)
}

#[test]
fn archive_paths_that_leave_the_image_are_refused() {
    for (name, says) in [
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("/etc/cron.d/x", "absolute path"),
        ("./x", "'.' component"),
        ("a//x", "empty or '.' component"),
    ] {
        let (file, message) = refused_image(&raw_tar(&with_valid_image(vec![Raw::File(name, b"payload", 0o644)])));
        assert_eq!(file, name);
        assert!(message.contains(says), "{name}: {message}");
    }
}

#[test]
fn links_and_special_files_are_refused() {
    for (entry, name, says) in [
        (Raw::Symlink("escape", "/etc/passwd"), "escape", "points outside the image"),
        (Raw::Symlink("up", "../../outside"), "up", "points outside the image"),
        (Raw::Symlink("inside", "bin/app"), "inside", "symbolic link"),
        (Raw::HardLink("hard", "bin/app"), "hard", "hard link"),
        (Raw::Fifo("pipe"), "pipe", "named pipe"),
    ] {
        let (file, message) = refused_image(&raw_tar(&with_valid_image(vec![entry])));
        assert_eq!(file, name);
        assert!(message.contains(says) && message.contains("regular files and directories"), "{name}: {message}");
    }
}

#[test]
fn a_file_through_which_a_later_entry_would_be_written_is_refused() {
    let (file, message) = refused_image(&raw_tar(&with_valid_image(vec![
        Raw::File("data", b"a file", 0o644),
        Raw::File("data/inner", b"x", 0o644),
    ])));
    assert_eq!(file, "data/inner");
    assert!(message.contains("parent data is a file"), "{message}");

    let (file, message) = refused_image(&raw_tar(&with_valid_image(vec![Raw::File(MANIFEST_FILE, b"{}", 0o644)])));
    assert_eq!(file, MANIFEST_FILE);
    assert!(message.contains("twice"), "{message}");
}

#[test]
fn unusable_manifests_are_refused_and_name_the_file() {
    let script: &[u8] = APP_SCRIPT;
    let cases: [(&[TestFile<'_>], &str, &str); 9] = [
        (&[("bin/app", script, 0o755)], MANIFEST_FILE, "missing"),
        (&[(MANIFEST_FILE, b"{\"command\": ", 0o644)], MANIFEST_FILE, "not a valid manifest"),
        (
            &[(MANIFEST_FILE, br#"{"command": "bin/app", "user": "root"}"#, 0o644), ("bin/app", script, 0o755)],
            MANIFEST_FILE,
            "unknown field",
        ),
        (
            &[(MANIFEST_FILE, br#"{"command": "bin/other"}"#, 0o644), ("bin/app", script, 0o755)],
            "bin/other",
            "not in the image",
        ),
        (
            &[(MANIFEST_FILE, br#"{"command": "bin/app"}"#, 0o644), ("bin/app", script, 0o644)],
            "bin/app",
            "not executable",
        ),
        (&[(MANIFEST_FILE, br#"{"command": "bin"}"#, 0o644), ("bin/app", script, 0o755)], "bin", "not a regular file"),
        (&[(MANIFEST_FILE, br#"{"command": "/bin/sh"}"#, 0o644)], MANIFEST_FILE, "absolute path"),
        (&[(MANIFEST_FILE, br#"{"command": "../../bin/sh"}"#, 0o644)], MANIFEST_FILE, "'..'"),
        (
            &[
                (MANIFEST_FILE, br#"{"command": "bin/app", "env": {"STELE_PORT": "80"}}"#, 0o644),
                ("bin/app", script, 0o755),
            ],
            MANIFEST_FILE,
            "reserved",
        ),
    ];
    for (files, expected_file, says) in cases {
        let (file, message) = refused_image(&pack_files(files));
        assert_eq!(file, expected_file, "{message}");
        assert!(message.contains(says), "expected {says:?} in {message:?}");
    }
}

#[test]
fn archive_not_in_the_reproducible_pack_form_is_refused() {
    // A valid image, but with a modification time: `stele image pack` writes 0, so the unpacked tree
    // would never hash to the entry's digest again and drift could not be told from this.
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data, mode) in [(MANIFEST_FILE, MANIFEST, 0o644), ("bin/app", APP_SCRIPT, 0o755)] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(1_700_000_000);
        builder.append_data(&mut header, name, data).expect("append");
    }
    let bytes = builder.into_inner().expect("finish archive");
    let (file, message) = refused_image(&bytes);
    assert!(file.starts_with("file://"), "{file}");
    assert!(message.contains("stele image pack"), "{message}");
}

#[test]
fn untouched_tree_verifies_and_tampering_is_named() {
    let s = new_store();
    let artifact = artifact_file(&sample_archive());
    let image = s.store.ensure(&artifact.uri, &artifact.digest, artifact.size).expect("ensure");
    assert_eq!(s.store.verify_unpacked(&artifact.digest), Ok(()));

    let app = image.dir.join("bin/app");
    fs::set_permissions(&app, fs::Permissions::from_mode(0o755)).expect("chmod u+w");
    fs::write(&app, b"#!/bin/sh\necho pwned\n").expect("tamper");
    let reason = s.store.verify_unpacked(&artifact.digest).expect_err("tampering must be detected");
    let hex = artifact.digest.to_hex();
    assert!(reason.contains(&format!("files under {} no longer hash to {hex} (got ", image.dir.display())), "{reason}");
    assert!(reason.contains("bin/app has different contents"), "{reason}");
}

#[test]
fn added_files_and_lost_read_only_modes_are_drift_too() {
    let s = new_store();
    let artifact = artifact_file(&sample_archive());
    let image = s.store.ensure(&artifact.uri, &artifact.digest, artifact.size).expect("ensure");

    // Writable again but unchanged: the digest still matches, the mode does not.
    let notes = image.dir.join("share/data/notes.txt");
    fs::set_permissions(&notes, fs::Permissions::from_mode(0o644)).expect("chmod");
    let reason = s.store.verify_unpacked(&artifact.digest).expect_err("a writable file is drift");
    assert!(reason.contains("notes.txt is writable (mode 644)"), "{reason}");
    fs::set_permissions(&notes, fs::Permissions::from_mode(0o444)).expect("chmod back");
    assert_eq!(s.store.verify_unpacked(&artifact.digest), Ok(()));

    fs::set_permissions(&image.dir, fs::Permissions::from_mode(0o755)).expect("chmod image root");
    fs::write(image.dir.join("backdoor.sh"), b"#!/bin/sh\n").expect("add file");
    fs::set_permissions(&image.dir, fs::Permissions::from_mode(0o555)).expect("chmod image root back");
    let reason = s.store.verify_unpacked(&artifact.digest).expect_err("an added file is drift");
    assert!(reason.contains(&artifact.digest.to_hex()) && reason.contains("backdoor.sh was added"), "{reason}");
}

#[test]
fn verify_of_an_image_never_prepared_fails() {
    let s = new_store();
    let digest = Blake3Digest([9; 32]);
    let reason = s.store.verify_unpacked(&digest).expect_err("nothing to verify");
    assert!(reason.contains(&digest.to_hex()) && reason.contains("not prepared"), "{reason}");
}

#[test]
fn interrupted_preparation_is_redone_from_the_stored_blob_without_fetching() {
    let bytes = sample_archive();
    let served = bytes.clone();
    let server = Server::start(move |_| Reply::Body(served.clone()));
    let s = new_store();
    let uri = server.uri("/app.tar");
    let digest = digest_of(&bytes);
    let image = s.store.ensure(&uri, &digest, bytes.len() as u64).expect("ensure");

    // As if the agent died after renaming the tree but before writing the marker, with a half-written
    // download and staging directory left in tmp/.
    fs::remove_file(s.root.join("images").join(format!("{}.ok", digest.to_hex()))).expect("remove marker");
    fs::set_permissions(&image.dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(image.dir.join("partial"), b"junk").expect("write junk");
    fs::create_dir(s.root.join("tmp/leftover")).expect("create leftover");
    fs::write(s.root.join("tmp/leftover/file"), b"x").expect("write leftover");
    fs::set_permissions(s.root.join("tmp/leftover"), fs::Permissions::from_mode(0o555)).expect("chmod leftover");

    let reopened = ImageStore::open(&s.root).expect("reopen");
    assert_eq!(names_in(&s.root.join("tmp")), Vec::<String>::new(), "open empties tmp/");
    let again = reopened.ensure(&uri, &digest, bytes.len() as u64).expect("ensure again");
    assert_eq!(again, image);
    assert!(!again.dir.join("partial").exists(), "the incomplete tree was replaced");
    assert_eq!(reopened.verify_unpacked(&digest), Ok(()));
    assert_eq!(server.hits(), 1, "the stored blob was reused");
}

#[test]
fn drifted_tree_is_discarded_and_unpacked_again_from_the_blob() {
    let bytes = sample_archive();
    let served = bytes.clone();
    let server = Server::start(move |_| Reply::Body(served.clone()));
    let s = new_store();
    let uri = server.uri("/app.tar");
    let digest = digest_of(&bytes);
    let image = s.store.ensure(&uri, &digest, bytes.len() as u64).expect("ensure");
    let app = image.dir.join("bin/app");
    fs::set_permissions(&app, fs::Permissions::from_mode(0o755)).expect("chmod u+w");
    fs::write(&app, b"tampered").expect("tamper");
    assert!(s.store.verify_unpacked(&digest).is_err());

    s.store.discard_unpacked(&digest).expect("discard");
    assert!(!image.dir.exists());
    assert_eq!(names_in(&s.root.join("blobs")), [format!("{}.tar", digest.to_hex())], "the blob is kept");
    s.store.ensure(&uri, &digest, bytes.len() as u64).expect("ensure again");
    assert_eq!(s.store.verify_unpacked(&digest), Ok(()));
    assert_eq!(server.hits(), 1, "unpacked again from the stored blob");
}

#[test]
fn damaged_blob_and_removed_images_are_fetched_again() {
    let bytes = sample_archive();
    let served = bytes.clone();
    let server = Server::start(move |_| Reply::Body(served.clone()));
    let s = new_store();
    let uri = server.uri("/app.tar");
    let digest = digest_of(&bytes);
    s.store.ensure(&uri, &digest, bytes.len() as u64).expect("ensure");

    s.store.remove(&digest).expect("remove");
    s.assert_empty();
    s.store.ensure(&uri, &digest, bytes.len() as u64).expect("ensure after remove");
    assert_eq!(server.hits(), 2);

    // A blob that rotted on disk is no verdict on the artifact: it is fetched again.
    let blob = s.root.join("blobs").join(format!("{}.tar", digest.to_hex()));
    let mut rotten = fs::read(&blob).expect("read blob");
    rotten[700] ^= 1;
    fs::remove_file(s.root.join("images").join(format!("{}.ok", digest.to_hex()))).expect("remove marker");
    fs::write(&blob, rotten).expect("rot blob");
    s.store.ensure(&uri, &digest, bytes.len() as u64).expect("ensure with a rotten blob");
    assert_eq!(server.hits(), 3);
    assert_eq!(fs::read(&blob).expect("read blob"), bytes);
}

// ---------------------------------------------------------------------------------------------------
// A tiny HTTP server
// ---------------------------------------------------------------------------------------------------

/// How the test server answers one request.
enum Reply {
    /// 200 with a Content-Length.
    Body(Vec<u8>),
    /// 200 without a Content-Length: the body ends when the connection closes.
    NoLength(Vec<u8>),
    /// 200 announcing the whole body, then closing after the given number of bytes.
    CutShort(Vec<u8>, usize),
    /// An error status with a short body.
    Status(u16),
    /// 200 without a Content-Length, then zeros until the client hangs up or [`ENDLESS_LIMIT`].
    Endless,
}

/// Where the endless reply gives up on its own; a client that reads everything gets this many bytes.
const ENDLESS_LIMIT: u64 = 512 * 1024 * 1024;

struct Server {
    port: u16,
    hits: Arc<AtomicUsize>,
    paths: Arc<std::sync::Mutex<Vec<String>>>,
    endless_sent: Arc<AtomicU64>,
    endless_done: Arc<AtomicBool>,
}

impl Server {
    /// Serves requests one at a time on a background thread; `reply` gets the number of earlier
    /// requests. The thread lives as long as the test process.
    fn start(reply: impl Fn(usize) -> Reply + Send + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
        let port = listener.local_addr().expect("local address").port();
        let server = Server {
            port,
            hits: Arc::new(AtomicUsize::new(0)),
            paths: Arc::default(),
            endless_sent: Arc::new(AtomicU64::new(0)),
            endless_done: Arc::new(AtomicBool::new(false)),
        };
        let (hits, paths, endless_sent, endless_done) = (
            Arc::clone(&server.hits),
            Arc::clone(&server.paths),
            Arc::clone(&server.endless_sent),
            Arc::clone(&server.endless_done),
        );
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(path) = read_request_path(&mut stream) else { continue };
                paths.lock().expect("paths lock").push(path);
                let hit = hits.fetch_add(1, Ordering::SeqCst);
                // The client may hang up at any point; that is what some tests are about.
                let _ = match reply(hit) {
                    Reply::Body(body) => {
                        stream.write_all(&response_head(200, Some(body.len()))).and_then(|()| stream.write_all(&body))
                    }
                    Reply::NoLength(body) => {
                        stream.write_all(&response_head(200, None)).and_then(|()| stream.write_all(&body))
                    }
                    Reply::CutShort(body, keep) => stream
                        .write_all(&response_head(200, Some(body.len())))
                        .and_then(|()| stream.write_all(&body[..keep])),
                    Reply::Status(status) => {
                        stream.write_all(&response_head(status, Some(6))).and_then(|()| stream.write_all(b"nope\r\n"))
                    }
                    Reply::Endless => {
                        let result = stream.write_all(&response_head(200, None));
                        let chunk = vec![0u8; 64 * 1024];
                        while endless_sent.load(Ordering::SeqCst) < ENDLESS_LIMIT {
                            if stream.write_all(&chunk).is_err() {
                                break;
                            }
                            endless_sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                        }
                        endless_done.store(true, Ordering::SeqCst);
                        result
                    }
                };
            }
        });
        server
    }

    fn uri(&self, path: &str) -> ArtifactUri {
        format!("http://127.0.0.1:{}{path}", self.port).parse().expect("valid test URI")
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().expect("paths lock").clone()
    }

    /// Waits until the endless reply stopped writing, and returns how many bytes it sent.
    fn wait_for_endless_stream_to_stop(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.endless_done.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the endless stream is still being read");
            thread::sleep(Duration::from_millis(10));
        }
        self.endless_sent.load(Ordering::SeqCst)
    }
}

fn response_head(status: u16, length: Option<usize>) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status} Test\r\nConnection: close\r\n");
    if let Some(length) = length {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Reads a request head and returns its path.
fn read_request_path(stream: &mut TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).ok()?;
    head.split(' ').nth(1).map(str::to_owned)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("local address").port()
}

// ---------------------------------------------------------------------------------------------------
// The demo web app, run from a prepared image
// ---------------------------------------------------------------------------------------------------

const WEBAPP: &str = env!("CARGO_BIN_EXE_stele-webapp");

/// Packs the webapp binary into an image (`bin/stele-webapp`, `version.txt`, manifest, and any extra
/// files) and prepares it in `store`.
fn webapp_image(store: &Store, version: &str, extra: &[TestFile<'_>]) -> PreparedImage {
    let binary = fs::read(WEBAPP).expect("read the built stele-webapp");
    let mut files: Vec<TestFile<'_>> = vec![
        ("bin/stele-webapp", &binary, 0o755),
        ("version.txt", version.as_bytes(), 0o644),
        (MANIFEST_FILE, br#"{"command": "bin/stele-webapp"}"#, 0o644),
    ];
    files.extend_from_slice(extra);
    let artifact = artifact_file(&pack_files(&files));
    store.store.ensure(&artifact.uri, &artifact.digest, artifact.size).expect("prepare webapp image")
}

/// A running webapp, killed if the test ends early.
struct Running {
    child: Child,
    port: u16,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_webapp(command: &Path, args: &[&str]) -> Running {
    let port = free_port();
    let mut child = Command::new(command)
        .args(args)
        .env_clear()
        .env("STELE_PORT", port.to_string())
        .env("STELE_INSTANCE_ID", "web-1")
        .env("STELE_VERSION", "from-env")
        .env("STELE_GENERATION", "3")
        .env("STELE_DATA_DIR", "/nonexistent")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start stele-webapp");
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines, received) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let running = Running { child, port };
    let line = received.recv_timeout(Duration::from_secs(20)).expect("stele-webapp prints a line when listening");
    let line = line.expect("read stdout");
    assert!(line.contains(&format!("listening on http://127.0.0.1:{port}")), "{line}");
    running
}

/// Sends raw request bytes and returns status code and body.
fn request(port: u16, raw: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to stele-webapp");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set timeout");
    // In two pieces, so the app's head parser must cope with partial reads.
    let (first, second) = raw.split_at(raw.len() / 2);
    stream.write_all(first).expect("send request");
    thread::sleep(Duration::from_millis(20));
    stream.write_all(second).expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("response has a head");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .and_then(|n| n.parse().ok())
        .expect("Content-Length header");
    assert_eq!(body.len(), length, "Content-Length matches the body");
    assert!(head.contains("Connection: close"), "{head}");
    (status, body.to_owned())
}

fn get(port: u16, path: &str) -> (u16, String) {
    request(port, format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n").as_bytes())
}

#[track_caller]
fn terminate_and_expect_exit_0(mut running: Running) {
    // SAFETY: sending a signal to our own child, whose pid is valid until we wait for it.
    let sent = unsafe { libc::kill(running.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(sent, 0, "send SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = running.child.try_wait().expect("wait for stele-webapp") {
            assert_eq!(status.code(), Some(0), "stele-webapp should exit 0 on SIGTERM, got {status:?}");
            return;
        }
        assert!(Instant::now() < deadline, "stele-webapp did not exit within 10 s of SIGTERM");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn webapp_runs_from_a_read_only_image_and_stops_cleanly_on_sigterm() {
    let s = new_store();
    let image = webapp_image(&s, "2.5.0\n", &[]);
    assert_eq!(mode_of(&image.command_path()), 0o555);
    let app = start_webapp(&image.command_path(), &image.manifest.args.iter().map(String::as_str).collect::<Vec<_>>());

    assert_eq!(get(app.port, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(get(app.port, "/version"), (200, "2.5.0 web-1\n".to_owned()), "version.txt wins over STELE_VERSION");
    let (status, hello) = get(app.port, "/?from=test");
    assert_eq!(status, 200);
    assert!(hello.contains("2.5.0") && hello.contains("web-1"), "{hello}");
    assert_eq!(get(app.port, "/nope").0, 404);
    assert_eq!(request(app.port, b"NOT A REQUEST\r\n\r\n").0, 400);
    assert_eq!(request(app.port, b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n").0, 400);
    assert_eq!(request(app.port, b"POST /version HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0, 405);

    terminate_and_expect_exit_0(app);
    assert_eq!(s.store.verify_unpacked(&image.digest), Ok(()), "running the app did not change its image");
}

#[test]
fn webapp_fails_its_health_check_when_asked_to() {
    let s = new_store();
    let image = webapp_image(&s, "3.0.0", &[]);
    let app = start_webapp(&image.command_path(), &["--fail-health"]);
    assert_eq!(get(app.port, "/healthz").0, 503);
    assert_eq!(get(app.port, "/version"), (200, "3.0.0 web-1\n".to_owned()), "only health fails");
    terminate_and_expect_exit_0(app);

    // The quickstart's "built to fail" release: a FAIL_HEALTH file at the image root.
    let failing = webapp_image(&s, "3.0.1", &[("FAIL_HEALTH", b"", 0o644)]);
    let app = start_webapp(&failing.command_path(), &[]);
    assert_eq!(get(app.port, "/healthz").0, 503);
    terminate_and_expect_exit_0(app);
}

#[test]
fn webapp_without_version_file_reports_stele_version() {
    // The binary as Cargo built it: no version.txt beside its parent directory.
    let app = start_webapp(Path::new(WEBAPP), &[]);
    assert_eq!(get(app.port, "/version"), (200, "from-env web-1\n".to_owned()));
    terminate_and_expect_exit_0(app);
}

#[test]
fn webapp_finishes_a_request_in_flight_after_sigterm() {
    let s = new_store();
    let image = webapp_image(&s, "4.0.0", &[]);
    let app = start_webapp(&image.command_path(), &[]);
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).expect("connect to stele-webapp");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set timeout");
    stream.write_all(b"GET /version HTTP/1.1\r\nHost: localhost\r\n").expect("send the first half");
    // Long enough for the app to accept the connection before the signal arrives.
    thread::sleep(Duration::from_millis(200));
    // SAFETY: sending a signal to our own child, whose pid is valid until we wait for it.
    assert_eq!(unsafe { libc::kill(app.child.id() as libc::pid_t, libc::SIGTERM) }, 0, "send SIGTERM");
    thread::sleep(Duration::from_millis(200));
    // New connections are refused now, but the one in flight is still served.
    assert!(TcpStream::connect(("127.0.0.1", app.port)).is_err(), "the listener should be closed after SIGTERM");
    stream.write_all(b"\r\n").expect("send the rest");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n") && response.ends_with("\r\n\r\n4.0.0 web-1\n"), "{response:?}");
    terminate_and_expect_exit_0(app);
}
