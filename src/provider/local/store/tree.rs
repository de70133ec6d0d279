//! Whole trees of the store: their modes, removing them, flushing them to disk, and hashing or listing
//! them to tell drift. Must not touch: archives' headers (`unpack`), fetching.

use super::{io_error, StoreError};
use crate::image::{self, ImageError};
use ledger_format::Blake3Digest;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The modes a tree's entries get. The archive only records "executable or not" (see [`crate::image`]),
/// so these are the only modes an image's files can have.
#[derive(Clone, Copy)]
pub(super) struct TreeModes {
    pub(super) dir: u32,
    pub(super) executable: u32,
    pub(super) file: u32,
}

/// An unpacked image, as it stays.
pub(super) const READ_ONLY: TreeModes = TreeModes { dir: 0o555, executable: 0o555, file: 0o444 };
/// A tree being written, or being removed.
pub(super) const WRITABLE: TreeModes = TreeModes { dir: 0o755, executable: 0o755, file: 0o644 };

pub(super) fn set_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_error("change the mode of", path))
}

/// Sets the mode of everything below `dir`, keeping only "executable or not" of each file. `dir`
/// itself is left alone: an unpacked root must stay writable until it is renamed into `images/`
/// (renaming a directory into another one rewrites its `..` entry).
pub(super) fn set_tree_modes(dir: &Path, modes: TreeModes) -> Result<(), StoreError> {
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
pub(super) fn remove_forcibly(path: &Path) -> Result<(), StoreError> {
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
pub(super) fn sync_filesystem(path: &Path) -> Result<(), StoreError> {
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
pub(super) fn tree_digest(dir: &Path) -> Result<Blake3Digest, ImageError> {
    let mut hasher = blake3::Hasher::new();
    {
        // Large writes let BLAKE3 use its SIMD paths; `pack_dir` flushes when it finishes.
        let mut out = BufWriter::with_capacity(64 * 1024, &mut hasher);
        image::pack_dir(dir, &mut out)?;
    }
    Ok(Blake3Digest(*hasher.finalize().as_bytes()))
}

/// Paths below `dir` that anyone may write, with their modes, in no particular order.
pub(super) fn writable_paths(dir: &Path) -> io::Result<Vec<(PathBuf, u32)>> {
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
pub(super) struct Listed {
    pub(super) kind: &'static str,
    pub(super) executable: bool,
    /// BLAKE3 of a file's contents; `None` for anything else.
    pub(super) content: Option<Blake3Digest>,
}

pub(super) fn archive_listing(blob: &Path) -> io::Result<BTreeMap<String, Listed>> {
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

pub(super) fn tree_listing(dir: &Path) -> io::Result<BTreeMap<String, Listed>> {
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
