//! The first pass over an archive: its headers only, before anything is written. Every check that the
//! headers can answer is made here, so that an archive that could never become an image is refused
//! at once, naming the entry (or the bound) at fault, and costs no disk writes and no clean-up.
//!
//! Owns the bounds an image must keep ([`Bounds`]); must not touch the disk beyond reading the blob.
//! The second pass (`unpack`) keeps its own per-entry checks: this pass makes refusals early and
//! clear, it is not the only guard.
//!
//! # The bounds, and why
//!
//! - A path is at most [`MAX_PATH_BYTES`] (1024) bytes, in at most [`MAX_DEPTH`] (64) components of at
//!   most [`MAX_COMPONENT_BYTES`] (255, Linux's `NAME_MAX`) bytes each. Linux refuses longer names
//!   (`ENAMETOOLONG`) and whole paths past 4096 bytes; 1024 leaves room for the store's own prefix, and
//!   is far beyond what packaging ecosystems produce. A GNU long-name entry is read into memory, so one
//!   larger than [`MAX_LONG_NAME_BYTES`] is refused unread.
//! - An archive holds at most one entry per [`ARCHIVE_BYTES_PER_ENTRY`] (2048) bytes of its signed
//!   size, but always at least [`MIN_ENTRY_BOUND`] (16 384) and never more than [`MAX_ENTRIES`]
//!   (1 000 000). Unpacking costs a few system calls per entry whatever its size, so an archive made
//!   mostly of headers (100 000 empty files in 51 MB) is refused rather than spending minutes creating
//!   files; ordinary images average far more than 2 KiB per entry.
//! - The content the headers declare, with one 512-byte block per header and each file's data padded to
//!   a block, must fit in the signed size: the archive is not compressed, so a header that declares
//!   more is lying (or the archive is cut short), and is refused before a byte of it is written.
//!
//! Besides the bounds, the pass refuses what the second pass would refuse (names that are not UTF-8,
//! absolute or `..` paths, links and special files, an entry under a file, an entry that appears twice,
//! PAX headers) and checks the `stele image pack` form (order, modes, zero owners and times, a directory
//! entry before its children). A form problem is reported only once no other refusal applies, since a
//! more specific reason (a link, say) helps more than "not in pack form".

use super::StoreError;
use ledger_format::Blake3Digest;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// The longest path an image may hold, in bytes.
pub(super) const MAX_PATH_BYTES: usize = 1024;
/// The longest single name (path component), in bytes: Linux's `NAME_MAX`.
pub(super) const MAX_COMPONENT_BYTES: usize = 255;
/// The most components a path may have.
pub(super) const MAX_DEPTH: usize = 64;
/// The largest GNU long-name entry read; anything larger is refused without reading it.
pub(super) const MAX_LONG_NAME_BYTES: u64 = 64 * 1024;
/// An archive may hold one entry per this many bytes of its signed size.
pub(super) const ARCHIVE_BYTES_PER_ENTRY: u64 = 2048;
/// However small the archive, this many entries are allowed.
pub(super) const MIN_ENTRY_BOUND: u64 = 16_384;
/// However large the archive, no more entries than this.
pub(super) const MAX_ENTRIES: u64 = 1_000_000;

const BLOCK: u64 = 512;

/// Names longer than this are shortened in messages (status files and logs stay readable).
const SHOWN_NAME_BYTES: usize = 120;

/// The most entries an archive of `signed_size` bytes may hold.
pub(super) fn entry_bound(signed_size: u64) -> u64 {
    (signed_size / ARCHIVE_BYTES_PER_ENTRY).clamp(MIN_ENTRY_BOUND, MAX_ENTRIES)
}

/// What the first pass learnt, for the second to hold the archive to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Listing {
    /// Entries (files and directories), not counting GNU long-name entries.
    pub(super) entries: u64,
}

/// A name as messages show it: whole when short, else its start and end with its length.
pub(super) fn shown(name: &str) -> String {
    if name.len() <= SHOWN_NAME_BYTES {
        return name.to_owned();
    }
    let head_end = (0..=60).rev().find(|i| name.is_char_boundary(*i)).unwrap_or(0);
    let tail_start = (name.len() - 40..name.len()).find(|i| name.is_char_boundary(*i)).unwrap_or(name.len());
    format!("{}…{} ({} bytes)", &name[..head_end], &name[tail_start..], name.len())
}

/// Checks a `/`-separated path from an archive or manifest: relative, with no empty, `.` or `..`
/// component.
pub(super) fn check_relative_path(path: &str) -> Result<(), String> {
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

/// Says why an entry that is neither a regular file nor a directory is refused.
pub(super) fn refused_entry_reason<R: Read>(entry: &tar::Entry<'_, R>) -> String {
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

/// Checks a path's length, depth and component lengths against the bounds.
pub(super) fn check_path_bounds(path: &str) -> Result<(), String> {
    if path.len() > MAX_PATH_BYTES {
        return Err(format!("path is {} bytes long; an image's paths are at most {MAX_PATH_BYTES} bytes", path.len()));
    }
    let depth = path.split('/').count();
    if depth > MAX_DEPTH {
        return Err(format!("path has {depth} components; an image's paths have at most {MAX_DEPTH}"));
    }
    if let Some(long) = path.split('/').find(|c| c.len() > MAX_COMPONENT_BYTES) {
        return Err(format!(
            "name {} is {} bytes long; a name is at most {MAX_COMPONENT_BYTES} bytes",
            shown(long),
            long.len()
        ));
    }
    Ok(())
}

/// Compares two archive paths in `stele image pack` order: depth first, siblings by the bytes of their
/// names (so `a`, `a/b`, `a-c`).
fn pack_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').map(str::as_bytes).cmp(b.split('/').map(str::as_bytes))
}

/// Reads the headers of the archive at `blob` (signed as `signed_size` bytes), seeking over file data,
/// and refuses it as a bad image if any check fails. `archive_name` (the artifact URI) names the
/// archive as a whole in refusals that concern no single entry.
pub(super) fn check(
    blob: &Path,
    signed_size: u64,
    digest: &Blake3Digest,
    archive_name: &str,
) -> Result<Listing, StoreError> {
    let bad = |file: &str, reason: String| StoreError::BadImage { digest: *digest, file: file.to_owned(), reason };
    let unreadable = |e: std::io::Error| bad(archive_name, format!("not a readable tar archive: {e}"));
    let file = File::open(blob).map_err(|error| StoreError::Io { action: "open", path: blob.to_path_buf(), error })?;
    let mut archive = tar::Archive::new(file);
    let entries = archive.entries_with_seek().map_err(unreadable)?.raw(true);
    let bound = entry_bound(signed_size);

    // Every path seen, and whether it is a directory.
    let mut seen: HashMap<String, bool> = HashMap::new();
    let mut previous: Option<String> = None;
    let mut long_name: Option<Vec<u8>> = None;
    // The first way in which the archive departs from the `stele image pack` form, reported last.
    let mut form: Option<String> = None;
    let mut count: u64 = 0;
    // Bytes the archive must have so far: headers, long names and file data, each padded to a block.
    let mut needed: u64 = 0;

    for entry in entries {
        let mut entry = entry.map_err(unreadable)?;
        let header = entry.header();
        let entry_type = header.entry_type();
        let recognised = header.as_gnu().is_some() || header.as_ustar().is_some();
        let size = entry.size();
        needed = needed.saturating_add(BLOCK).saturating_add(size.div_ceil(BLOCK).saturating_mul(BLOCK));

        if recognised && entry_type.is_gnu_longname() {
            if long_name.is_some() {
                return Err(bad(archive_name, "has two GNU long-name entries in a row".to_owned()));
            }
            if size > MAX_LONG_NAME_BYTES {
                return Err(bad(
                    archive_name,
                    format!(
                        "has a GNU long-name entry of {size} bytes at offset {}; names are at most \
                         {MAX_PATH_BYTES} bytes, and long-name entries over {MAX_LONG_NAME_BYTES} bytes are not read",
                        entry.raw_header_position()
                    ),
                ));
            }
            let mut name = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut name).map_err(unreadable)?;
            // The name is NUL-terminated, as tar readers expect (they drop one trailing NUL).
            if name.last() == Some(&0) {
                name.pop();
            }
            long_name = Some(name);
            continue;
        }
        if recognised
            && (entry_type.is_gnu_longlink()
                || entry_type.is_pax_local_extensions()
                || entry_type.is_pax_global_extensions())
        {
            let what = if entry_type.is_gnu_longlink() { "a GNU long link name" } else { "a PAX extended header" };
            return Err(bad(
                archive_name,
                format!(
                    "has {what} at offset {}, which `stele image pack` never writes and which would change \
                     how the entries after it read",
                    entry.raw_header_position()
                ),
            ));
        }

        count += 1;
        if count > bound {
            return Err(bad(
                archive_name,
                format!(
                    "holds more than {bound} entries, the bound for a {signed_size}-byte archive (one entry per \
                     {ARCHIVE_BYTES_PER_ENTRY} bytes, at least {MIN_ENTRY_BOUND}, at most {MAX_ENTRIES}); \
                     refused from its headers before unpacking anything"
                ),
            ));
        }
        if needed > signed_size {
            let name = String::from_utf8_lossy(&long_name.clone().unwrap_or_else(|| header.path_bytes().into_owned()))
                .into_owned();
            return Err(bad(
                &shown(&name),
                format!(
                    "declares {size} bytes, but the signed archive of {signed_size} bytes cannot hold them \
                     with the entries before it (it would need at least {needed})"
                ),
            ));
        }

        let name_bytes = long_name.take().unwrap_or_else(|| header.path_bytes().into_owned());
        let name = String::from_utf8(name_bytes)
            .map_err(|e| bad(&shown(&String::from_utf8_lossy(e.as_bytes())), "name is not valid UTF-8".to_owned()))?;
        let is_dir = if entry_type.is_dir() {
            true
        } else if entry_type.is_file() || entry_type == tar::EntryType::Continuous {
            false
        } else {
            return Err(bad(&shown(&name), refused_entry_reason(&entry)));
        };
        let relative = if is_dir { name.strip_suffix('/').unwrap_or(&name) } else { &name }.to_owned();
        check_relative_path(&relative).map_err(|reason| bad(&shown(&name), format!("path {reason}")))?;
        check_path_bounds(&relative).map_err(|reason| bad(&shown(&name), reason))?;

        if seen.contains_key(&relative) {
            return Err(bad(&shown(&name), "appears twice in the archive".to_owned()));
        }
        for (at, _) in relative.match_indices('/') {
            let parent = &relative[..at];
            match seen.get(parent) {
                Some(true) => {}
                Some(false) => return Err(bad(&shown(&name), format!("its parent {} is a file", shown(parent)))),
                None => {
                    form.get_or_insert_with(|| {
                        format!("{} comes before its directory {}", shown(&name), shown(parent))
                    });
                }
            }
        }
        if form.is_none() {
            form = form_problem(&entry, &relative, is_dir, previous.as_deref());
        }
        seen.insert(relative.clone(), is_dir);
        previous = Some(relative);
    }
    if long_name.is_some() {
        return Err(bad(archive_name, "ends with a GNU long-name entry that names no entry".to_owned()));
    }
    if let Some(problem) = form {
        return Err(bad(
            archive_name,
            format!(
                "the archive is not in the reproducible `stele image pack` form ({problem}), so drift could not \
                 be detected once unpacked; build it with `stele image pack`"
            ),
        ));
    }
    Ok(Listing { entries: count })
}

/// How an entry departs from what `stele image pack` writes, if it does: its place in the order, its
/// mode, owner, time or size.
fn form_problem<R: Read>(
    entry: &tar::Entry<'_, R>,
    path: &str,
    is_dir: bool,
    previous: Option<&str>,
) -> Option<String> {
    let header = entry.header();
    let shown_path = shown(path);
    if let Some(previous) = previous {
        if pack_order(previous, path) != std::cmp::Ordering::Less {
            return Some(format!("{shown_path} comes after {}; entries are sorted", shown(previous)));
        }
    }
    if header.as_gnu().is_none() {
        return Some(format!("{shown_path} has a header that is not in the GNU format"));
    }
    if is_dir && header.entry_type() != tar::EntryType::Directory
        || !is_dir && header.entry_type() != tar::EntryType::Regular
    {
        return Some(format!("{shown_path} has tar entry type {:?}", header.entry_type().as_byte() as char));
    }
    let mode = header.mode().ok();
    let modes_allowed: &[u32] = if is_dir { &[0o755] } else { &[0o755, 0o644] };
    if !mode.is_some_and(|m| modes_allowed.contains(&m)) {
        return Some(format!("{shown_path} has mode {}", mode.map_or("unreadable".to_owned(), |m| format!("{m:o}"))));
    }
    if header.mtime().ok() != Some(0) {
        return Some(format!("{shown_path} has a modification time"));
    }
    if header.uid().ok() != Some(0) || header.gid().ok() != Some(0) {
        return Some(format!("{shown_path} has an owner"));
    }
    if is_dir && entry.size() != 0 {
        return Some(format!("directory {shown_path} declares a size"));
    }
    if is_dir && path.len() < entry.path_bytes().len() {
        return Some(format!("directory {shown_path} is written with a trailing '/'"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_bound_is_relative_to_the_signed_size_within_fixed_limits() {
        for (size, bound) in [
            (0, MIN_ENTRY_BOUND),
            (MIN_ENTRY_BOUND * ARCHIVE_BYTES_PER_ENTRY, MIN_ENTRY_BOUND),
            (51_204_096, 25_002),
            (u64::MAX, MAX_ENTRIES),
        ] {
            assert_eq!(entry_bound(size), bound, "size {size}");
        }
    }

    #[test]
    fn pack_order_is_depth_first_with_siblings_by_bytes() {
        let mut paths = vec!["a-c", "a/b", "b", "a", "a/b/c", "a/a"];
        paths.sort_by(|a, b| pack_order(a, b));
        assert_eq!(paths, ["a", "a/a", "a/b", "a/b/c", "a-c", "b"]);
    }

    #[test]
    fn path_bounds_name_what_is_too_long() {
        let cases: [(String, Option<&str>); 5] = [
            ("a/b".to_owned(), None),
            ("x".repeat(255), None),
            ("x".repeat(256), Some("at most 255 bytes")),
            (vec!["d"; 65].join("/"), Some("65 components")),
            (vec!["d".repeat(100); 11].join("/"), Some("at most 1024 bytes")),
        ];
        for (path, says) in cases {
            match (check_path_bounds(&path), says) {
                (Ok(()), None) => {}
                (Err(reason), Some(says)) => assert!(reason.contains(says), "{reason}"),
                (result, _) => panic!("{} bytes: {result:?}, expected {says:?}", path.len()),
            }
        }
    }

    #[test]
    fn long_names_are_shortened_on_character_boundaries() {
        assert_eq!(shown("short"), "short");
        let long = "é".repeat(100);
        let text = shown(&long);
        assert!(text.ends_with("(200 bytes)") && text.contains('…'), "{text}");
    }
}
