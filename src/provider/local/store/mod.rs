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
//! <root>/images/<hex>.drifted-<suffix>/   a tree found altered, moved aside by the provider
//! <root>/tmp/              downloads and unpacking in progress; emptied by `ImageStore::open`
//! ```
//!
//! [`ImageStore::collect`] removes what a [`Retention`] does not hold (rules in `collect.rs`; which
//! images are held is decided by `local::gc`).
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
//! Unpacking takes two passes. The first reads only the headers (`headers.rs`) and refuses, before
//! anything is written, whatever can be told from them: paths over 1024 bytes, 64 components or
//! 255-byte names, more than one entry per 2 KiB of the signed size (at least 16 384, at most
//! 1 000 000), content the signed size cannot hold, links, duplicates, PAX headers, and departures
//! from the pack form. The second writes the files, keeping its own checks. Either way, a refusal
//! caused by the archive's content is a [`StoreError::BadImage`] naming the entry, never retried.
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

mod check;
mod collect;
mod fetch;
mod headers;
mod tree;
mod unpack;

use crate::image::{self, ImageDigest, ImageError};
pub use check::{check_image_archive, check_image_dir, IMAGE_NEEDS};
pub use collect::{Collected, Removal, Retention};
use fetch::fetch;
use headers::check_relative_path;
use ledger_format::types::ArtifactUri;
use ledger_format::Blake3Digest;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use tree::{
    archive_listing, remove_forcibly, set_mode, set_tree_modes, sync_filesystem, tree_digest, tree_listing,
    writable_paths, READ_ONLY,
};
use unpack::{read_manifest, unpack, Staging};

/// The manifest's file name at the root of every image.
pub const MANIFEST_FILE: &str = "stele-image.json";

/// A manifest larger than this is refused unread: it is a handful of strings, not data.
const MANIFEST_MAX_BYTES: u64 = 64 * 1024;

/// At most this many differences are named when an unpacked tree has drifted; the rest are counted.
const DIFFERENCES_SHOWN: usize = 5;

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

    /// Holds `digest` unless another thread works on it now (garbage collection never waits for one).
    fn try_claim(&self, digest: &Blake3Digest) -> Option<Claim<'_>> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !in_flight.insert(*digest) {
            return None;
        }
        Some(Claim { store: self, digest: *digest })
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
        match self.unpack_and_install(uri, &expected, &blob, &dir) {
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

    /// Checks a verified blob's headers (nothing is written for an archive they refuse), unpacks it into
    /// `tmp/`, checks it, makes it read-only and moves it to `dir`, writing the completion marker last.
    /// Returns the image's manifest.
    fn unpack_and_install(
        &self,
        uri: &ArtifactUri,
        expected: &ImageDigest,
        blob: &Path,
        dir: &Path,
    ) -> Result<Manifest, StoreError> {
        let digest = &expected.blake3;
        let listing = headers::check(blob, expected.size, digest, uri.as_str())?;
        let staging = Staging::create(&self.tmp_dir(), digest)?;
        unpack(blob, &staging.path, digest, listing.entries)?;
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
