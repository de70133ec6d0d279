//! Unpacking a verified blob into a staging directory, every entry checked before it touches the disk,
//! and reading the manifest of the result. Must not touch: fetching, or the layout of `images/`.

use super::headers::{check_path_bounds, check_relative_path, refused_entry_reason, shown};
use super::tree::{remove_forcibly, set_mode, WRITABLE};
use super::{io_error, Manifest, StoreError, MANIFEST_FILE, MANIFEST_MAX_BYTES};
use ledger_format::Blake3Digest;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A directory in `tmp/` being filled with an image. Removed when dropped unless installed.
pub(super) struct Staging {
    pub(super) path: PathBuf,
    pub(super) installed: bool,
}

impl Staging {
    pub(super) fn create(tmp: &Path, digest: &Blake3Digest) -> Result<Self, StoreError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}.", digest.to_hex()))
            .suffix(".unpack")
            .tempdir_in(tmp)
            .map_err(io_error("create a directory in", tmp))?;
        let path = dir.keep();
        set_mode(&path, WRITABLE.dir)?;
        Ok(Staging { path, installed: false })
    }

    pub(super) fn install(mut self, dir: &Path) -> Result<(), StoreError> {
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

/// Unpacks the archive at `blob` into the empty directory `dest`. Every entry is checked before it
/// touches the disk; no link is ever created, so no path can lead out of `dest`. `listed` is how many
/// entries the header pass ([`super::headers::check`]) counted: the archive must read the same now.
pub(super) fn unpack(blob: &Path, dest: &Path, digest: &Blake3Digest, listed: u64) -> Result<(), StoreError> {
    let bad = |file: &str, reason: String| StoreError::BadImage { digest: *digest, file: shown(file), reason };
    let archive_name = blob.display().to_string();
    let file = File::open(blob).map_err(io_error("open", blob))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let entries = archive.entries().map_err(|e| bad(&archive_name, format!("not a readable tar archive: {e}")))?;
    // Every path created so far, and whether it is a directory.
    let mut created: BTreeMap<String, bool> = BTreeMap::new();
    let mut count: u64 = 0;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(&archive_name, format!("not a readable tar archive: {e}")))?;
        count += 1;
        if count > listed {
            return Err(bad(&archive_name, format!("reads as more than the {listed} entries its headers listed")));
        }
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
        check_path_bounds(&relative).map_err(|reason| bad(&name, reason))?;

        // Parents first: a directory entry may be missing, but a file can never be a parent.
        for (at, _) in relative.match_indices('/') {
            let parent = &relative[..at];
            match created.get(parent) {
                Some(true) => {}
                Some(false) => return Err(bad(&name, format!("its parent {} is a file", shown(parent)))),
                None => {
                    create_dir(&dest.join(parent), parent, digest)?;
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
            create_dir(&target, &relative, digest)?;
        } else {
            let executable =
                entry.header().mode().map_err(|e| bad(&name, format!("unreadable mode: {e}")))? & 0o111 != 0;
            write_entry(&mut entry, &target, executable, &name, digest)?;
        }
        created.insert(relative, is_dir);
    }
    Ok(())
}

/// Whether a failure to create or write an entry comes from the entry itself (its name, its size, the
/// shape of the tree), so that no later try could succeed: then the image is bad. Anything else (a full
/// disk, a read-only or failing file system) may pass, and stays an I/O error to retry.
pub(super) fn caused_by_entry(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::ENAMETOOLONG
                | libc::EILSEQ
                | libc::EINVAL
                | libc::EFBIG
                | libc::EMLINK
                | libc::ELOOP
                | libc::ENOTDIR
                | libc::EISDIR
                | libc::EEXIST
        )
    )
}

/// Maps a failure to `action` the entry `name` (at `path`): a bad image when the entry caused it
/// ([`caused_by_entry`]), else an I/O error.
fn entry_error<'a>(
    digest: &'a Blake3Digest,
    name: &'a str,
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |error| {
        if caused_by_entry(&error) {
            StoreError::BadImage {
                digest: *digest,
                file: shown(name),
                reason: format!("could not {action} it: {error}"),
            }
        } else {
            StoreError::Io { action, path: path.to_path_buf(), error }
        }
    }
}

pub(super) fn create_dir(path: &Path, name: &str, digest: &Blake3Digest) -> Result<(), StoreError> {
    fs::DirBuilder::new().mode(WRITABLE.dir).create(path).map_err(entry_error(digest, name, "create directory", path))
}

/// Writes one file entry. A short entry means the archive itself is cut off, which is a property of the
/// signed artifact, so it is a bad image rather than an I/O error.
pub(super) fn write_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    target: &Path,
    executable: bool,
    name: &str,
    digest: &Blake3Digest,
) -> Result<(), StoreError> {
    let mode = if executable { WRITABLE.executable } else { WRITABLE.file };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(target)
        .map_err(entry_error(digest, name, "create", target))?;
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
        out.write_all(&buf[..read]).map_err(entry_error(digest, name, "write", target))?;
        written += read as u64;
    }
    if written != declared {
        return Err(StoreError::BadImage {
            digest: *digest,
            file: name.to_owned(),
            reason: format!("the archive ends inside this file ({written} of {declared} bytes)"),
        });
    }
    out.into_inner().map_err(|e| entry_error(digest, name, "write", target)(e.into_error()))?;
    Ok(())
}

/// Reads the manifest at the root of `dir` and checks that its command is an executable file there.
pub(super) fn read_manifest(dir: &Path, digest: &Blake3Digest) -> Result<Manifest, StoreError> {
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
