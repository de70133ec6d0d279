//! The local provider's content-addressed image store: it turns a signed artifact entry (URI, BLAKE3
//! digest, size) into a verified, read-only directory an instance can run from.
//!
//! Owns: fetching artifacts (`file:///`, `http://`, `https://`) into the store while hashing them,
//! refusing any byte stream that differs from its entry before anything is unpacked, unpacking the
//! archive read-only with every path checked, reading and checking the image manifest, and re-hashing
//! an unpacked tree to detect drift. Must not touch: processes, ports or health checks (`process`),
//! plans and targets (`plan`), Git or the ledger. Whether a digest is trusted is decided by the ledger
//! before a digest ever reaches [`ImageStore::ensure`]; this module only makes sure the bytes on disk
//! are the bytes that digest names. Hashing and the archive format come from [`crate::image`].
//!
//! # Layout
//!
//! ```text
//! <root>/blobs/<hex>.tar   the artifact, moved here only after its digest and size matched
//! <root>/images/<hex>/     the unpacked tree: files 0444 (0555 if executable), directories 0555
//! <root>/images/<hex>.ok   written last: an image without it is incomplete and is rebuilt
//! <root>/tmp/              downloads and unpacking in progress; emptied by `ImageStore::open`
//! ```
//!
//! One process at a time may use a store root; within that process, concurrent calls for the same
//! digest wait for each other. All calls block (network and disk), so async code runs them on a
//! blocking thread.
//!
//! # Image format
//!
//! An image is a tar archive in the reproducible form written by `stele image pack`
//! ([`crate::image::pack_dir`]): regular files and directories only, no links, no device files. The
//! store insists on that form: after unpacking, the tree must pack back to exactly the entry's digest,
//! which is what lets [`ImageStore::verify_unpacked`] detect drift later by re-hashing the tree alone.
//!
//! At the root of every image sits the manifest [`MANIFEST_FILE`] (`stele-image.json`), a JSON object
//! with these members and no others:
//!
//! - `command` (string, required): the program to start, as a path relative to the image root, such as
//!   `bin/app`. It must name an executable regular file inside the image; absolute paths and `.`, `..`
//!   or empty components are refused.
//! - `args` (array of strings, default `[]`): arguments passed after the command.
//! - `env` (object of string values, default `{}`): environment variables for the process. Names must
//!   be non-empty and contain no `=`; names starting with `STELE_` are refused because the agent sets
//!   those itself (port, instance id, version, generation, data directory).
//!
//! For example: `{"command": "bin/stele-webapp", "args": [], "env": {"RUST_LOG": "info"}}`.

use crate::image::{self, ImageDigest, ImageError};
use ledger_format::types::ArtifactUri;
use ledger_format::Blake3Digest;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// The manifest's file name at the root of every image.
pub const MANIFEST_FILE: &str = "stele-image.json";

/// A manifest larger than this is refused unread: it is a handful of strings, not data.
const MANIFEST_MAX_BYTES: u64 = 64 * 1024;

/// How long a TCP (and TLS) connection to an artifact server may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one whole HTTP attempt may take, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// HTTP attempts per `ensure` for failures that may pass (connection errors, timeouts, 5xx).
const HTTP_ATTEMPTS: usize = 3;
/// The pause before the second and third attempt.
const HTTP_BACKOFF: [Duration; HTTP_ATTEMPTS - 1] = [Duration::from_millis(500), Duration::from_millis(1500)];

/// At most this many differences are named when an unpacked tree has drifted; the rest are counted.
const DIFFERENCES_SHOWN: usize = 5;

/// The modes a tree's entries get. The archive only records "executable or not" (see [`crate::image`]),
/// so these are the only modes an image's files can have.
#[derive(Clone, Copy)]
struct TreeModes {
    dir: u32,
    executable: u32,
    file: u32,
}

/// An unpacked image, as it stays.
const READ_ONLY: TreeModes = TreeModes { dir: 0o555, executable: 0o555, file: 0o444 };
/// A tree being written, or being removed.
const WRITABLE: TreeModes = TreeModes { dir: 0o755, executable: 0o755, file: 0o644 };

/// What to run from an image: read from [`MANIFEST_FILE`] at the image root (format in the module
/// documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The program, relative to the image root, e.g. `bin/app`.
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl Manifest {
    /// Parses a manifest and checks the rules that do not depend on the image's files. The error is a
    /// reason without the file name, for the caller to place.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest: {e}"))?;
        check_relative_path(&manifest.command).map_err(|reason| format!("\"command\" {reason}"))?;
        if let Some(arg) = manifest.args.iter().find(|arg| arg.contains('\0')) {
            return Err(format!("argument {arg:?} contains a NUL byte"));
        }
        for (name, value) in &manifest.env {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(format!("environment variable name {name:?} must be non-empty without '=' or NUL"));
            }
            if name.starts_with("STELE_") {
                return Err(format!("environment variable {name} is reserved: the agent sets STELE_* itself"));
            }
            if value.contains('\0') {
                return Err(format!("environment variable {name} has a value containing a NUL byte"));
            }
        }
        Ok(manifest)
    }

    /// Where the command lives in an image unpacked at `image_dir`.
    pub fn command_path(&self, image_dir: &Path) -> PathBuf {
        image_dir.join(&self.command)
    }
}

/// A verified image, unpacked and ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedImage {
    pub digest: Blake3Digest,
    /// The unpacked, read-only tree.
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl PreparedImage {
    /// The absolute path of the program to start.
    pub fn command_path(&self) -> PathBuf {
        self.manifest.command_path(&self.dir)
    }
}

/// Why an image could not be prepared, sorted by how the agent must react (STYLE.md 4): a
/// [`Mismatch`](StoreError::Mismatch) or [`BadImage`](StoreError::BadImage) needs a human (a new
/// release), a [`Fetch`](StoreError::Fetch) or [`Io`](StoreError::Io) failure is worth retrying later.
/// In every case nothing was added to `images/` or `blobs/`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The artifact's bytes differ from its signed entry: another digest, another size, a truncated
    /// download or an oversize stream (reading stopped one byte past the size). Never retried.
    #[error(
        "{uri}: the artifact does not match its signed entry: expected blake3 {expected} ({expected_size} bytes), \
         got {actual}; nothing was unpacked"
    )]
    Mismatch { uri: String, expected: Blake3Digest, expected_size: u64, actual: String },

    /// The artifact could not be fetched: network, HTTP status, timeout, a missing `file://` source.
    #[error("{uri}: {reason}")]
    Fetch { uri: String, reason: String },

    /// The artifact has the signed digest but cannot be used as an image. `file` is the path inside
    /// the image (or the URI, for the archive as a whole).
    #[error("image {digest}: {file}: {reason}")]
    BadImage { digest: Blake3Digest, file: String, reason: String },

    /// A file-system operation in the store failed. `action` is a verb phrase such as "create".
    #[error("could not {action} {}: {error}", path.display())]
    Io { action: &'static str, path: PathBuf, error: io::Error },
}

impl StoreError {
    /// Whether the agent should back off and try again: a network failure may pass, and so may a
    /// full disk. A mismatched or unusable artifact never becomes usable; it needs a new release.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Fetch { .. } | StoreError::Io { .. })
    }
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |error| StoreError::Io { action, path: path.to_path_buf(), error }
}

/// The content-addressed store of artifacts and their unpacked images (layout in the module
/// documentation).
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    /// Digests some thread is preparing or removing now; others wait on `in_flight_done`.
    in_flight: Mutex<HashSet<Blake3Digest>>,
    in_flight_done: Condvar,
}

/// Holds a digest in [`ImageStore::in_flight`] until dropped.
struct Claim<'a> {
    store: &'a ImageStore,
    digest: Blake3Digest,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        // The set stays consistent even if a holder panicked, so a poisoned lock is still usable.
        let mut in_flight = self.store.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        in_flight.remove(&self.digest);
        self.store.in_flight_done.notify_all();
    }
}

impl ImageStore {
    /// Opens (creating if needed) a store at `root`, and removes whatever an interrupted run left in
    /// `tmp/`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(root).map_err(io_error("create", root))?;
        // Absolute, so image directories handed to processes do not depend on their working directory.
        let root = fs::canonicalize(root).map_err(io_error("resolve", root))?;
        for sub in ["blobs", "images", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        }
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(io_error("list directory", &tmp))? {
            let path = entry.map_err(io_error("list directory", &tmp))?.path();
            remove_forcibly(&path)?;
        }
        Ok(ImageStore { root, in_flight: Mutex::new(HashSet::new()), in_flight_done: Condvar::new() })
    }

    /// The store's root directory (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the image with `digest` is (or would be) unpacked.
    pub fn image_dir(&self, digest: &Blake3Digest) -> PathBuf {
        self.root.join("images").join(digest.to_hex())
    }

    fn marker_path(&self, digest: &Blake3Digest) -> PathBuf {
        self.root.join("images").join(format!("{}.ok", digest.to_hex()))
    }

    fn blob_path(&self, digest: &Blake3Digest) -> PathBuf {
        self.root.join("blobs").join(format!("{}.tar", digest.to_hex()))
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Waits until no other thread works on `digest`, then holds it until the claim is dropped.
    fn claim(&self, digest: &Blake3Digest) -> Claim<'_> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while in_flight.contains(digest) {
            in_flight = self.in_flight_done.wait(in_flight).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        in_flight.insert(*digest);
        Claim { store: self, digest: *digest }
    }

    /// Makes the image for a signed artifact entry ready, fetching it only if needed.
    ///
    /// Idempotent: an image whose completion marker exists is returned as it is, without fetching or
    /// re-hashing (that is [`ImageStore::verify_unpacked`]'s job). Otherwise the artifact is streamed
    /// into `tmp/` while being hashed, with `size` as an upper bound (reading stops one byte past it),
    /// and compared with `digest` and `size` exactly before it becomes `blobs/<hex>.tar`. The archive is
    /// unpacked into `tmp/`, refusing absolute paths, `..`, links and anything but regular files and
    /// directories; the manifest is checked; everything is made read-only; the tree must pack back to
    /// `digest`; then it is renamed to `images/<hex>` and the marker is written last.
    ///
    /// HTTP is retried up to three times with backoff for connection errors, timeouts and 5xx answers;
    /// other statuses and mismatches are final.
    pub fn ensure(&self, uri: &ArtifactUri, digest: &Blake3Digest, size: u64) -> Result<PreparedImage, StoreError> {
        let _claim = self.claim(digest);
        let dir = self.image_dir(digest);
        let marker = self.marker_path(digest);
        if marker.is_file() && dir.is_dir() {
            match read_manifest(&dir, digest) {
                Ok(manifest) => return Ok(PreparedImage { digest: *digest, dir, manifest }),
                // The manifest was checked before the marker was written, so the tree has been damaged
                // since: prepare it again, from the stored blob when that is still intact.
                Err(error) => tracing::warn!(%error, "prepared image is damaged; preparing it again"),
            }
        }
        // An interrupted run may have left a tree without its marker, or a marker without its tree.
        remove_forcibly(&marker)?;
        remove_forcibly(&dir)?;

        let expected = ImageDigest { blake3: *digest, size };
        let blob = self.blob(uri, &expected)?;
        match self.unpack_and_install(uri, digest, &blob, &dir) {
            Ok(manifest) => {
                tracing::info!(digest = %digest, dir = %dir.display(), "image ready");
                Ok(PreparedImage { digest: *digest, dir, manifest })
            }
            Err(error) => {
                // An unusable image stays unusable, so its blob is not kept for another try; after an
                // I/O failure it is, and the next try needs no download.
                if matches!(error, StoreError::BadImage { .. }) {
                    if let Err(remove_error) = remove_forcibly(&blob) {
                        tracing::warn!(%remove_error, "could not remove the blob of a refused image");
                    }
                }
                Err(error)
            }
        }
    }

    /// Unpacks a verified blob into `tmp/`, checks it, makes it read-only and moves it to `dir`, writing
    /// the completion marker last. Returns the image's manifest.
    fn unpack_and_install(
        &self,
        uri: &ArtifactUri,
        digest: &Blake3Digest,
        blob: &Path,
        dir: &Path,
    ) -> Result<Manifest, StoreError> {
        let staging = Staging::create(&self.tmp_dir(), digest)?;
        unpack(blob, &staging.path, digest)?;
        let manifest = read_manifest(&staging.path, digest)?;
        set_tree_modes(&staging.path, READ_ONLY)?;
        let not_canonical = |reason: String| StoreError::BadImage { digest: *digest, file: uri.to_string(), reason };
        match tree_digest(&staging.path) {
            Ok(actual) if actual == *digest => {}
            Ok(actual) => {
                return Err(not_canonical(format!(
                    "the archive is not in the reproducible `stele image pack` form (its files pack to {actual}), \
                     so drift could not be detected once unpacked; build it with `stele image pack`"
                )))
            }
            Err(ImageError::Io { action, path, error }) => return Err(StoreError::Io { action, path, error }),
            Err(error) => return Err(not_canonical(format!("the unpacked files cannot be packed again: {error}"))),
        }
        staging.install(dir)?;
        set_mode(dir, READ_ONLY.dir)?;
        sync_filesystem(dir)?;
        self.write_marker(digest)?;
        Ok(manifest)
    }

    /// Returns the path of a blob matching `expected`: the one already stored if it still hashes
    /// right, or a fresh download.
    fn blob(&self, uri: &ArtifactUri, expected: &ImageDigest) -> Result<PathBuf, StoreError> {
        let blob = self.blob_path(&expected.blake3);
        if blob.is_file() {
            match image::digest_file(&blob, Some(expected.size)) {
                Ok(actual) if image::check_digest(expected, &actual).is_ok() => return Ok(blob),
                // A damaged blob is no verdict on the artifact: fetch it again.
                Ok(_) | Err(ImageError::FileTooLarge { .. }) => {
                    tracing::warn!(blob = %blob.display(), "stored blob no longer matches its digest; fetching again");
                    remove_forcibly(&blob)?;
                }
                Err(error) => {
                    return Err(StoreError::Io { action: "hash", path: blob, error: io::Error::other(error) })
                }
            }
        }

        let mut download = tempfile::Builder::new()
            .prefix(&format!("{}.", expected.blake3.to_hex()))
            .suffix(".part")
            .tempfile_in(self.tmp_dir())
            .map_err(io_error("create a download file in", &self.tmp_dir()))?;
        tracing::info!(uri = %uri, digest = %expected.blake3, size = expected.size, "fetching artifact");
        let download_path = download.path().to_path_buf();
        let actual = fetch(uri.as_str(), expected, download.as_file_mut(), &download_path)?;
        if image::check_digest(expected, &actual).is_err() {
            return Err(mismatch(uri.as_str(), expected, describe_actual(&actual, expected.size)));
        }
        download.as_file().sync_all().map_err(io_error("sync", download.path()))?;
        download.persist(&blob).map_err(|e| StoreError::Io { action: "store", path: blob.clone(), error: e.error })?;
        Ok(blob)
    }

    fn write_marker(&self, digest: &Blake3Digest) -> Result<(), StoreError> {
        let marker = self.marker_path(digest);
        let mut file = tempfile::NamedTempFile::new_in(self.tmp_dir())
            .map_err(io_error("create a marker file in", &self.tmp_dir()))?;
        writeln!(file, "{digest}").map_err(io_error("write", file.path()))?;
        file.as_file().sync_all().map_err(io_error("sync", file.path()))?;
        file.persist(&marker).map_err(|e| StoreError::Io { action: "write", path: marker.clone(), error: e.error })?;
        Ok(())
    }

    /// Removes an image's unpacked tree and marker but keeps its blob, so the next
    /// [`ImageStore::ensure`] unpacks again without fetching (if the blob still hashes right). The way
    /// to replace a drifted tree. The caller makes sure nothing still runs from it.
    pub fn discard_unpacked(&self, digest: &Blake3Digest) -> Result<(), StoreError> {
        let _claim = self.claim(digest);
        // The marker goes first, so an interruption leaves an incomplete image that `ensure` rebuilds.
        remove_forcibly(&self.marker_path(digest))?;
        remove_forcibly(&self.image_dir(digest))
    }

    /// Removes an image, its marker and its blob, so the next [`ImageStore::ensure`] starts afresh
    /// (after drift, say). Removing an image that is not there is not an error. The caller makes sure
    /// nothing still runs from it.
    pub fn remove(&self, digest: &Blake3Digest) -> Result<(), StoreError> {
        let _claim = self.claim(digest);
        // The marker goes first, so an interruption leaves an incomplete image that `ensure` rebuilds.
        remove_forcibly(&self.marker_path(digest))?;
        remove_forcibly(&self.image_dir(digest))?;
        remove_forcibly(&self.blob_path(digest))
    }

    /// Re-hashes the unpacked tree of `digest`. Packing a tree with [`crate::image::pack_dir`] is
    /// reproducible and keeps only "executable or not" of each file's mode, so an intact read-only
    /// tree packs to exactly `digest`. Also checks that nothing in it has become writable.
    ///
    /// The error names the image directory, the digest and the digest the files have now, and, when
    /// the stored blob is still intact, up to five files that differ from it.
    pub fn verify_unpacked(&self, digest: &Blake3Digest) -> Result<(), String> {
        let dir = self.image_dir(digest);
        if !self.marker_path(digest).is_file() || !dir.is_dir() {
            return Err(format!("image {digest} is not prepared under {}", dir.display()));
        }
        let actual = tree_digest(&dir).map_err(|error| {
            format!("files under {} could not be re-hashed to check {digest}: {error}", dir.display())
        })?;
        if actual != *digest {
            let mut reason = format!("files under {} no longer hash to {digest} (got {actual})", dir.display());
            if let Some(differences) = self.differences(digest, &dir) {
                reason.push_str(": ");
                reason.push_str(&differences);
            }
            return Err(reason);
        }
        let writable =
            writable_paths(&dir).map_err(|error| format!("could not check modes under {}: {error}", dir.display()))?;
        if let Some((path, mode)) = writable.first() {
            return Err(format!(
                "files under {} still hash to {digest} but {} is writable (mode {mode:o}); images are kept read-only",
                dir.display(),
                path.display()
            ));
        }
        Ok(())
    }

    /// Compares the tree with the stored blob, entry by entry, and names what differs. `None` when the
    /// blob is gone or damaged, since a comparison against it would then mislead.
    fn differences(&self, digest: &Blake3Digest, dir: &Path) -> Option<String> {
        let blob = self.blob_path(digest);
        let intact = image::digest_file(&blob, None).ok()?;
        if intact.blake3 != *digest {
            return None;
        }
        let expected = archive_listing(&blob).ok()?;
        let actual = tree_listing(dir).ok()?;
        let mut found = Vec::new();
        for (path, want) in &expected {
            match actual.get(path) {
                None => found.push(format!("{path} is missing")),
                Some(have) if have.kind != want.kind => found.push(format!("{path} changed type")),
                Some(have) if have.content != want.content => found.push(format!("{path} has different contents")),
                Some(have) if have.executable != want.executable => {
                    found.push(format!("{path} changed its execute permission"))
                }
                Some(_) => {}
            }
        }
        found
            .extend(actual.keys().filter(|path| !expected.contains_key(*path)).map(|path| format!("{path} was added")));
        if found.is_empty() {
            return None;
        }
        let more = found.len().saturating_sub(DIFFERENCES_SHOWN);
        found.truncate(DIFFERENCES_SHOWN);
        let mut text = found.join(", ");
        if more > 0 {
            text.push_str(&format!(" and {more} more"));
        }
        Some(text)
    }
}

fn mismatch(uri: &str, expected: &ImageDigest, actual: String) -> StoreError {
    StoreError::Mismatch { uri: uri.to_owned(), expected: expected.blake3, expected_size: expected.size, actual }
}

/// Says what was received, for [`StoreError::Mismatch`].
fn describe_actual(actual: &ImageDigest, expected_size: u64) -> String {
    let gap = match actual.size.cmp(&expected_size) {
        std::cmp::Ordering::Less => format!(", truncated: {} bytes missing", expected_size - actual.size),
        std::cmp::Ordering::Greater => format!(", {} bytes too many", actual.size - expected_size),
        std::cmp::Ordering::Equal => String::new(),
    };
    format!("blake3 {} ({} bytes{gap})", actual.blake3, actual.size)
}

// ---------------------------------------------------------------------------------------------------
// Fetching
// ---------------------------------------------------------------------------------------------------

/// Streams the artifact at `uri` into `out` (at `out_path`), hashing it with at most `expected.size`
/// bytes accepted, and returns what was received. The caller compares it with the entry.
fn fetch(uri: &str, expected: &ImageDigest, out: &mut File, out_path: &Path) -> Result<ImageDigest, StoreError> {
    if let Some(path) = uri.strip_prefix("file://") {
        // `stele release` records `file://` followed by the absolute path as it is, so it is read back
        // the same way, without percent-decoding.
        let source = File::open(path)
            .map_err(|e| StoreError::Fetch { uri: uri.to_owned(), reason: format!("cannot open {path}: {e}") })?;
        return match copy_hashed(source, out, expected.size) {
            Ok(actual) => Ok(actual),
            Err(CopyFailure::Read(e)) => {
                Err(StoreError::Fetch { uri: uri.to_owned(), reason: format!("reading failed: {e}") })
            }
            Err(CopyFailure::Write(error)) => {
                Err(StoreError::Io { action: "write", path: out_path.to_path_buf(), error })
            }
            Err(CopyFailure::TooLarge) => Err(mismatch(uri, expected, too_large(expected.size))),
        };
    }
    fetch_http(uri, expected, out, out_path)
}

fn too_large(size: u64) -> String {
    format!("more than {size} bytes (stopped reading)")
}

/// The outcome of one HTTP attempt that did not succeed.
enum Attempt {
    /// A failure that may pass: try again after a pause.
    Retry(String),
    /// A failure that another attempt would repeat.
    Final(StoreError),
}

fn fetch_http(url: &str, expected: &ImageDigest, out: &mut File, out_path: &Path) -> Result<ImageDigest, StoreError> {
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| StoreError::Fetch { uri: url.to_owned(), reason: format!("cannot set up an HTTP client: {e}") })?;
    let mut last_reason = String::new();
    for attempt in 0..HTTP_ATTEMPTS {
        if attempt > 0 {
            tracing::warn!(uri = url, attempt = attempt + 1, reason = %last_reason, "retrying artifact download");
            std::thread::sleep(HTTP_BACKOFF[attempt - 1]);
            // A failed attempt may have written part of the body; start the file again.
            out.set_len(0).map_err(io_error("truncate", out_path))?;
            out.rewind().map_err(io_error("rewind", out_path))?;
        }
        match http_attempt(&client, url, expected, out, out_path) {
            Ok(actual) => return Ok(actual),
            Err(Attempt::Final(error)) => return Err(error),
            Err(Attempt::Retry(reason)) => last_reason = reason,
        }
    }
    Err(StoreError::Fetch {
        uri: url.to_owned(),
        reason: format!("{last_reason} (gave up after {HTTP_ATTEMPTS} attempts)"),
    })
}

fn http_attempt(
    client: &reqwest::blocking::Client,
    url: &str,
    expected: &ImageDigest,
    out: &mut File,
    out_path: &Path,
) -> Result<ImageDigest, Attempt> {
    // The URL is left out of the message: the error that carries it names it already.
    let response = client.get(url).send().map_err(|e| Attempt::Retry(describe_reqwest_error(&e.without_url())))?;
    let status = response.status();
    if status.is_server_error() {
        return Err(Attempt::Retry(format!("server answered {status}")));
    }
    if !status.is_success() {
        return Err(Attempt::Final(StoreError::Fetch {
            uri: url.to_owned(),
            reason: format!("server answered {status}; not retried"),
        }));
    }
    // The server says how much it will send: a different size can only end in a mismatch, so nothing
    // is read.
    if let Some(announced) = response.content_length() {
        if announced != expected.size {
            return Err(Attempt::Final(mismatch(
                url,
                expected,
                format!("a body the server announces as {announced} bytes"),
            )));
        }
    }
    match copy_hashed(response, out, expected.size) {
        Ok(actual) => Ok(actual),
        Err(CopyFailure::Read(e)) => Err(Attempt::Retry(format!("reading the body failed: {}", with_sources(&e)))),
        Err(CopyFailure::Write(error)) => {
            Err(Attempt::Final(StoreError::Io { action: "write", path: out_path.to_path_buf(), error }))
        }
        Err(CopyFailure::TooLarge) => Err(Attempt::Final(mismatch(url, expected, too_large(expected.size)))),
    }
}

/// A reqwest error with what kind of failure it was and its sources, which hold the useful part
/// ("connection refused").
fn describe_reqwest_error(error: &reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    format!("{what}: {}", with_sources(error))
}

/// An error's message followed by those of its sources, joined with ": ".
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Why [`copy_hashed`] stopped.
enum CopyFailure {
    Read(io::Error),
    Write(io::Error),
    TooLarge,
}

/// Copies `reader` into `out` through [`image::digest_reader`], so the bytes written are exactly the
/// bytes hashed and the size limit is enforced by the same code that hashes releases.
fn copy_hashed(reader: impl Read, out: &mut File, max_size: u64) -> Result<ImageDigest, CopyFailure> {
    let mut tee = Tee { reader, out: BufWriter::new(out), write_error: None };
    let result = image::digest_reader(&mut tee, Some(max_size));
    if let Some(error) = tee.write_error.take() {
        return Err(CopyFailure::Write(error));
    }
    let digest = match result {
        Ok(digest) => digest,
        Err(ImageError::TooLarge { .. }) => return Err(CopyFailure::TooLarge),
        Err(ImageError::Read { error }) => return Err(CopyFailure::Read(error)),
        Err(other) => return Err(CopyFailure::Read(io::Error::other(other.to_string()))),
    };
    tee.out.flush().map_err(CopyFailure::Write)?;
    Ok(digest)
}

/// A reader that writes everything it reads to `out`. A write failure is kept aside and reported to
/// the hashing loop as a read failure, which ends it.
struct Tee<R, W> {
    reader: R,
    out: W,
    write_error: Option<io::Error>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.reader.read(buf)?;
        if let Err(error) = self.out.write_all(&buf[..read]) {
            self.write_error = Some(error);
            return Err(io::Error::other("writing the download to disk failed"));
        }
        Ok(read)
    }
}

// ---------------------------------------------------------------------------------------------------
// Unpacking
// ---------------------------------------------------------------------------------------------------

/// A directory in `tmp/` being filled with an image. Removed when dropped unless installed.
struct Staging {
    path: PathBuf,
    installed: bool,
}

impl Staging {
    fn create(tmp: &Path, digest: &Blake3Digest) -> Result<Self, StoreError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}.", digest.to_hex()))
            .suffix(".unpack")
            .tempdir_in(tmp)
            .map_err(io_error("create a directory in", tmp))?;
        let path = dir.keep();
        set_mode(&path, WRITABLE.dir)?;
        Ok(Staging { path, installed: false })
    }

    fn install(mut self, dir: &Path) -> Result<(), StoreError> {
        fs::rename(&self.path, dir).map_err(io_error("move the unpacked image to", dir))?;
        self.installed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.installed {
            if let Err(error) = remove_forcibly(&self.path) {
                tracing::warn!(%error, "could not remove a refused image's files; the next open of the store will");
            }
        }
    }
}

/// Checks a `/`-separated path from an archive or manifest: relative, with no empty, `.` or `..`
/// component.
fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("is empty".to_owned());
    }
    if path.starts_with('/') {
        return Err("is an absolute path; paths in an image are relative to its root".to_owned());
    }
    for component in path.split('/') {
        match component {
            ".." => return Err("contains '..', which would leave the image".to_owned()),
            "." | "" => return Err("contains an empty or '.' component; `stele image pack` writes neither".to_owned()),
            _ if component.contains('\0') => return Err("contains a NUL byte".to_owned()),
            _ => {}
        }
    }
    Ok(())
}

/// Unpacks the archive at `blob` into the empty directory `dest`. Every entry is checked before it
/// touches the disk; no link is ever created, so no path can lead out of `dest`.
fn unpack(blob: &Path, dest: &Path, digest: &Blake3Digest) -> Result<(), StoreError> {
    let bad = |file: &str, reason: String| StoreError::BadImage { digest: *digest, file: file.to_owned(), reason };
    let archive_name = blob.display().to_string();
    let file = File::open(blob).map_err(io_error("open", blob))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let entries = archive.entries().map_err(|e| bad(&archive_name, format!("not a readable tar archive: {e}")))?;
    // Every path created so far, and whether it is a directory.
    let mut created: BTreeMap<String, bool> = BTreeMap::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(&archive_name, format!("not a readable tar archive: {e}")))?;
        let name = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|e| bad(&String::from_utf8_lossy(e.as_bytes()), "name is not valid UTF-8".to_owned()))?;
        let entry_type = entry.header().entry_type();
        let is_dir = if entry_type.is_dir() {
            true
        } else if entry_type.is_file() || entry_type == tar::EntryType::Continuous {
            false
        } else {
            return Err(bad(&name, refused_entry_reason(&entry)));
        };
        // Some tools spell directories with a trailing '/'; that is the only spelling variant allowed.
        let relative = if is_dir { name.strip_suffix('/').unwrap_or(&name) } else { &name }.to_owned();
        check_relative_path(&relative).map_err(|reason| bad(&name, format!("path {reason}")))?;

        // Parents first: a directory entry may be missing, but a file can never be a parent.
        for (at, _) in relative.match_indices('/') {
            let parent = &relative[..at];
            match created.get(parent) {
                Some(true) => {}
                Some(false) => return Err(bad(&name, format!("its parent {parent} is a file"))),
                None => {
                    create_dir(&dest.join(parent))?;
                    created.insert(parent.to_owned(), true);
                }
            }
        }
        match created.get(&relative) {
            // A directory already made for an earlier child; the form check later refuses the order.
            Some(true) if is_dir => continue,
            Some(_) => return Err(bad(&name, "appears twice in the archive".to_owned())),
            None => {}
        }
        let target = dest.join(&relative);
        if is_dir {
            create_dir(&target)?;
        } else {
            let executable =
                entry.header().mode().map_err(|e| bad(&name, format!("unreadable mode: {e}")))? & 0o111 != 0;
            write_entry(&mut entry, &target, executable, &name, digest)?;
        }
        created.insert(relative, is_dir);
    }
    Ok(())
}

/// Says why an entry that is neither a regular file nor a directory is refused.
fn refused_entry_reason<R: Read>(entry: &tar::Entry<'_, R>) -> String {
    let entry_type = entry.header().entry_type();
    let target = || match entry.link_name_bytes() {
        Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        None => String::new(),
    };
    let kind = if entry_type.is_symlink() {
        let target = target();
        let escapes = if target.starts_with('/') || target.split('/').any(|c| c == "..") {
            ", which points outside the image"
        } else {
            ""
        };
        format!("is a symbolic link to {target:?}{escapes}")
    } else if entry_type.is_hard_link() {
        format!("is a hard link to {:?}", target())
    } else if entry_type.is_character_special() || entry_type.is_block_special() {
        "is a device file".to_owned()
    } else if entry_type.is_fifo() {
        "is a named pipe (FIFO)".to_owned()
    } else {
        format!("has unsupported tar entry type {:?}", entry_type.as_byte() as char)
    };
    format!("{kind}; an image may only hold regular files and directories")
}

fn create_dir(path: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new().mode(WRITABLE.dir).create(path).map_err(io_error("create directory", path))
}

/// Writes one file entry. A short entry means the archive itself is cut off, which is a property of the
/// signed artifact, so it is a bad image rather than an I/O error.
fn write_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    target: &Path,
    executable: bool,
    name: &str,
    digest: &Blake3Digest,
) -> Result<(), StoreError> {
    let mode = if executable { WRITABLE.executable } else { WRITABLE.file };
    let file =
        OpenOptions::new().write(true).create_new(true).mode(mode).open(target).map_err(io_error("create", target))?;
    let mut out = BufWriter::new(file);
    let declared = entry.size();
    let mut buf = vec![0u8; 64 * 1024];
    let mut written: u64 = 0;
    loop {
        let read = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                return Err(StoreError::BadImage {
                    digest: *digest,
                    file: name.to_owned(),
                    reason: format!("could not be read from the archive: {error}"),
                })
            }
        };
        out.write_all(&buf[..read]).map_err(io_error("write", target))?;
        written += read as u64;
    }
    if written != declared {
        return Err(StoreError::BadImage {
            digest: *digest,
            file: name.to_owned(),
            reason: format!("the archive ends inside this file ({written} of {declared} bytes)"),
        });
    }
    out.into_inner().map_err(|e| StoreError::Io {
        action: "write",
        path: target.to_path_buf(),
        error: e.into_error(),
    })?;
    Ok(())
}

/// Reads the manifest at the root of `dir` and checks that its command is an executable file there.
fn read_manifest(dir: &Path, digest: &Blake3Digest) -> Result<Manifest, StoreError> {
    let bad = |file: &str, reason: String| StoreError::BadImage { digest: *digest, file: file.to_owned(), reason };
    let path = dir.join(MANIFEST_FILE);
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(bad(MANIFEST_FILE, "is missing; every image needs one at its root".to_owned()))
        }
        Err(error) => return Err(StoreError::Io { action: "read metadata of", path, error }),
    };
    if !meta.is_file() {
        return Err(bad(MANIFEST_FILE, "is not a regular file".to_owned()));
    }
    if meta.len() > MANIFEST_MAX_BYTES {
        return Err(bad(MANIFEST_FILE, format!("is larger than {MANIFEST_MAX_BYTES} bytes")));
    }
    let mut bytes = Vec::new();
    File::open(&path)
        .and_then(|file| file.take(MANIFEST_MAX_BYTES + 1).read_to_end(&mut bytes))
        .map_err(io_error("read", &path))?;
    let manifest = Manifest::parse(&bytes).map_err(|reason| bad(MANIFEST_FILE, reason))?;

    let command = manifest.command_path(dir);
    match fs::symlink_metadata(&command) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(manifest),
        Ok(meta) if meta.is_file() => {
            Err(bad(&manifest.command, format!("is named as the command in {MANIFEST_FILE} but is not executable")))
        }
        Ok(_) => {
            Err(bad(&manifest.command, format!("is named as the command in {MANIFEST_FILE} but is not a regular file")))
        }
        Err(error) if matches!(error.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
            Err(bad(&manifest.command, format!("is named as the command in {MANIFEST_FILE} but is not in the image")))
        }
        Err(error) => Err(StoreError::Io { action: "read metadata of", path: command, error }),
    }
}

// ---------------------------------------------------------------------------------------------------
// Modes, removal, hashing a tree
// ---------------------------------------------------------------------------------------------------

fn set_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_error("change the mode of", path))
}

/// Sets the mode of everything below `dir`, keeping only "executable or not" of each file. `dir`
/// itself is left alone: an unpacked root must stay writable until it is renamed into `images/`
/// (renaming a directory into another one rewrites its `..` entry).
fn set_tree_modes(dir: &Path, modes: TreeModes) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(io_error("list directory", dir))? {
        let path = entry.map_err(io_error("list directory", dir))?.path();
        let meta = fs::symlink_metadata(&path).map_err(io_error("read metadata of", &path))?;
        if meta.is_dir() {
            // Changing a mode needs ownership, not write permission on the parent, so the order of
            // parent and children does not matter; a read-only directory can still be listed.
            set_mode(&path, modes.dir)?;
            set_tree_modes(&path, modes)?;
        } else if meta.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 { modes.executable } else { modes.file };
            set_mode(&path, mode)?;
        }
    }
    Ok(())
}

/// Removes a file or a whole tree, read-only or not. A path that does not exist is not an error.
fn remove_forcibly(path: &Path) -> Result<(), StoreError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(StoreError::Io { action: "read metadata of", path: path.to_path_buf(), error }),
    };
    if meta.is_dir() {
        // Removing entries needs write permission on their directory, which an image does not grant.
        set_mode(path, WRITABLE.dir)?;
        set_tree_modes(path, WRITABLE)?;
        fs::remove_dir_all(path).map_err(io_error("remove", path))
    } else {
        fs::remove_file(path).map_err(io_error("remove", path))
    }
}

/// Flushes the file system holding `path` to disk, so the completion marker written next never
/// describes files that a crash could still lose.
fn sync_filesystem(path: &Path) -> Result<(), StoreError> {
    let dir = File::open(path).map_err(io_error("open", path))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `dir` is an open descriptor for the whole call; syncfs only reads it.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(StoreError::Io {
                action: "sync the file system of",
                path: path.to_path_buf(),
                error: io::Error::last_os_error(),
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        drop(dir);
        // SAFETY: sync takes no arguments and cannot fail.
        unsafe { libc::sync() };
    }
    Ok(())
}

/// The digest `dir` would have if packed with [`image::pack_dir`], computed without writing the archive.
fn tree_digest(dir: &Path) -> Result<Blake3Digest, ImageError> {
    let mut hasher = blake3::Hasher::new();
    {
        // Large writes let BLAKE3 use its SIMD paths; `pack_dir` flushes when it finishes.
        let mut out = BufWriter::with_capacity(64 * 1024, &mut hasher);
        image::pack_dir(dir, &mut out)?;
    }
    Ok(Blake3Digest(*hasher.finalize().as_bytes()))
}

/// Paths below `dir` that anyone may write, with their modes, in no particular order.
fn writable_paths(dir: &Path) -> io::Result<Vec<(PathBuf, u32)>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let meta = fs::symlink_metadata(&current)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o222 != 0 {
            found.push((current.clone(), mode));
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&current)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(found)
}

/// One path of an image as [`ImageStore::verify_unpacked`] compares it.
#[derive(PartialEq, Eq)]
struct Listed {
    kind: &'static str,
    executable: bool,
    /// BLAKE3 of a file's contents; `None` for anything else.
    content: Option<Blake3Digest>,
}

fn archive_listing(blob: &Path) -> io::Result<BTreeMap<String, Listed>> {
    let mut archive = tar::Archive::new(BufReader::new(File::open(blob)?));
    let mut listing = BTreeMap::new();
    for entry in archive.entries()? {
        let entry = entry?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).trim_end_matches('/').to_owned();
        let listed = if entry.header().entry_type().is_dir() {
            Listed { kind: "directory", executable: false, content: None }
        } else {
            let executable = entry.header().mode()? & 0o111 != 0;
            let digest = image::digest_reader(entry, None).map_err(io::Error::other)?;
            Listed { kind: "file", executable, content: Some(digest.blake3) }
        };
        listing.insert(name, listed);
    }
    Ok(listing)
}

fn tree_listing(dir: &Path) -> io::Result<BTreeMap<String, Listed>> {
    let mut listing = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in fs::read_dir(&current)? {
            let path = entry?.path();
            let name = path.strip_prefix(dir).map_err(io::Error::other)?.to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(&path)?;
            let listed = if meta.is_dir() {
                stack.push(path);
                Listed { kind: "directory", executable: false, content: None }
            } else if meta.is_file() {
                let digest = image::digest_file(&path, None).map_err(io::Error::other)?;
                Listed {
                    kind: "file",
                    executable: meta.permissions().mode() & 0o111 != 0,
                    content: Some(digest.blake3),
                }
            } else {
                Listed { kind: "other", executable: false, content: None }
            };
            listing.insert(name, listed);
        }
    }
    Ok(listing)
}
