//! Helpers shared by the image-store suites (`local_store`, `local_store_archives`): archives built
//! byte by byte (for shapes `stele image pack` never writes), and a store in a temporary directory.

// Each test binary uses a different part of these helpers.
#![allow(dead_code)]

use ledger_format::Blake3Digest;
use std::fs;
use std::path::{Path, PathBuf};
use stele::provider::local::store::ImageStore;
use tempfile::TempDir;

pub fn digest_of(bytes: &[u8]) -> Blake3Digest {
    Blake3Digest(*blake3::hash(bytes).as_bytes())
}

/// One entry of a hand-built archive.
pub enum Raw<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    Fifo(&'a str),
    /// A regular file whose header declares `size` bytes but whose data is `data`.
    Lying(&'a str, &'a [u8], u64),
}

/// A header as `stele image pack` writes them (owner, group and time fixed).
pub fn header(entry_type: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    stele::image::normalised_header(entry_type, mode, size)
}

pub fn header_named(name: &[u8], entry_type: tar::EntryType, size: u64) -> tar::Header {
    let mut h = header(entry_type, 0o644, size);
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h
}

/// Appends one GNU header, preceded by a GNU long-name entry when the name does not fit in 100 bytes
/// (the way `stele image pack` writes long paths), then the data padded to a block.
fn push(out: &mut Vec<u8>, name: &[u8], mut entry: tar::Header, data: &[u8]) {
    if name.len() > 100 {
        let mut long = header_named(b"././@LongLink", tar::EntryType::GNULongName, name.len() as u64 + 1);
        long.set_cksum();
        out.extend_from_slice(long.as_bytes());
        out.extend_from_slice(name);
        out.push(0);
        out.resize(out.len().next_multiple_of(512), 0);
        entry.as_old_mut().name.copy_from_slice(&name[..100]);
    } else {
        entry.as_old_mut().name[..name.len()].copy_from_slice(name);
    }
    entry.set_cksum();
    out.extend_from_slice(entry.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
}

/// Builds a tar archive byte by byte, so names like `../x` that the tar crate's builder refuses, and
/// headers that lie about their size, can be written.
pub fn raw_tar(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let (name, header, data): (&str, tar::Header, &[u8]) = match entry {
            Raw::File(name, data, mode) => (name, header(tar::EntryType::Regular, *mode, data.len() as u64), data),
            Raw::Dir(name) => (name, header(tar::EntryType::Directory, 0o755, 0), &[]),
            Raw::Symlink(name, target) => (name, linked(tar::EntryType::Symlink, 0o777, target), &[]),
            Raw::HardLink(name, target) => (name, linked(tar::EntryType::Link, 0o644, target), &[]),
            Raw::Fifo(name) => (name, header(tar::EntryType::Fifo, 0o644, 0), &[]),
            Raw::Lying(name, data, size) => (name, header(tar::EntryType::Regular, 0o644, *size), data),
        };
        push(&mut out, name.as_bytes(), header, data);
    }
    out.extend_from_slice(&[0; 1024]);
    out
}

fn linked(entry_type: tar::EntryType, mode: u32, target: &str) -> tar::Header {
    let mut h = header(entry_type, mode, 0);
    h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
    h
}

pub struct Store {
    pub _root: TempDir,
    pub root: PathBuf,
    pub store: ImageStore,
}

pub fn new_store() -> Store {
    let root = TempDir::new().expect("create temp dir");
    let store = ImageStore::open(&root.path().join("store")).expect("open store");
    Store { root: store.root().to_path_buf(), store, _root: root }
}

pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list store directory")
        .map(|entry| entry.expect("list entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
