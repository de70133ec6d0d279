//! Archives whose bytes match their signed entry but whose content cannot be an image: over-long
//! names, too many entries, sizes the archive cannot hold. Each must be a bad image (never retried)
//! on the first try, naming the entry or the bound, and what can be told from the headers must be
//! refused before anything is written: the store's `tmp/` and `images/` are not even touched.

mod store_support;

use ledger_format::types::ArtifactUri;
use std::fs;
use std::path::Path;
use std::time::SystemTime;
use stele::provider::local::store::{StoreError, MANIFEST_FILE};
use store_support::{digest_of, header, header_named, names_in, new_store, raw_tar, Raw};
use tempfile::TempDir;

const APP_SCRIPT: &[u8] = b"#!/bin/sh\necho hello\n";
const MANIFEST: &[u8] = br#"{"command": "bin/app"}"#;

/// A valid manifest and command around `middle`, in the order `stele image pack` writes them
/// (`middle` must sort between `bin/app` and `stele-image.json`).
fn around<'a>(middle: Vec<Raw<'a>>) -> Vec<Raw<'a>> {
    let mut all = vec![Raw::Dir("bin"), Raw::File("bin/app", APP_SCRIPT, 0o755)];
    all.extend(middle);
    all.push(Raw::File(MANIFEST_FILE, MANIFEST, 0o644));
    all
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path).expect("stat").modified().expect("mtime")
}

/// Ensures `bytes` as an image from a `file://` artifact and returns the error, which must be a bad
/// image. With `blob_in_place` the verified blob is put into `blobs/` first (the store reuses a blob
/// that hashes right), so that nothing but unpacking could touch `tmp/`; then `tmp/` and `images/` must
/// come out untouched, not even created in and emptied again.
#[track_caller]
fn refused(bytes: &[u8], blob_in_place: bool) -> (String, StoreError) {
    let s = new_store();
    let source = TempDir::new().expect("create temp dir");
    let path = source.path().join("image.tar");
    fs::write(&path, bytes).expect("write artifact");
    let uri: ArtifactUri = format!("file://{}", path.display()).parse().expect("valid artifact URI");
    let digest = digest_of(bytes);
    if blob_in_place {
        fs::write(s.root.join("blobs").join(format!("{}.tar", digest.to_hex())), bytes).expect("place blob");
    }
    let untouched = [mtime(&s.root.join("tmp")), mtime(&s.root.join("images"))];
    let error = s.store.ensure(&uri, &digest, bytes.len() as u64).expect_err("must be refused");
    let StoreError::BadImage { file, .. } = &error else { panic!("expected a bad image, got {error:?}") };
    assert!(!error.is_retryable(), "a bad image is never retried: {error}");
    for sub in ["images", "blobs", "tmp"] {
        assert_eq!(names_in(&s.root.join(sub)), Vec::<String>::new(), "{sub}/ should be empty after: {error}");
    }
    if blob_in_place {
        let now = [mtime(&s.root.join("tmp")), mtime(&s.root.join("images"))];
        assert_eq!(now, untouched, "nothing may be written before the headers are checked: {error}");
    }
    (file.clone(), error)
}

#[test]
fn gnu_long_name_of_50_components_of_100_bytes_is_a_bad_image_naming_the_entry() {
    // The archive of issue 11: one file under 49 directories of 100-byte names, 5 049 bytes in all,
    // which the file system refuses with ENAMETOOLONG. That is the archive's fault, so it must stall
    // the release at once rather than be retried as if the disk might change its mind.
    let component = "d".repeat(100);
    let deep = vec![component.as_str(); 50].join("/");
    let bytes = raw_tar(&around(vec![Raw::File(&deep, b"deep", 0o644)]));
    let (file, error) = refused(&bytes, true);
    let message = error.to_string();
    assert!(file.starts_with("dddd") && file.contains("(5049 bytes)"), "the entry is named: {file}");
    assert!(message.contains("at most 1024 bytes"), "the bound is named: {message}");
}

#[test]
fn name_component_longer_than_255_bytes_is_a_bad_image() {
    let long = "n".repeat(300);
    let bytes = raw_tar(&around(vec![Raw::File(&long, b"x", 0o644)]));
    let (file, error) = refused(&bytes, true);
    assert!(file.starts_with("nnnn") && file.contains("300 bytes"), "{file}");
    assert!(error.to_string().contains("at most 255 bytes"), "{error}");
}

#[test]
fn paths_deeper_than_the_bound_are_a_bad_image() {
    let deep = vec!["d"; 65].join("/");
    let bytes = raw_tar(&around(vec![Raw::File(&deep, b"x", 0o644)]));
    let (file, error) = refused(&bytes, true);
    assert!(file.starts_with("d/d/d") && file.ends_with("(129 bytes)"), "long names are shortened: {file}");
    assert!(error.to_string().contains("65 components") && error.to_string().contains("at most 64"), "{error}");
}

#[test]
fn archive_of_100_000_files_is_refused_from_its_headers_before_anything_is_written() {
    // In the `stele image pack` form, so that only the bound can refuse it.
    let names: Vec<String> = (0..100_000).map(|i| format!("many/f{i:06}")).collect();
    let mut entries = vec![Raw::Dir("many")];
    entries.extend(names.iter().map(|name| Raw::File(name, b"", 0o644)));
    let bytes = raw_tar(&around(entries));
    let (file, error) = refused(&bytes, true);
    let message = error.to_string();
    assert!(file.starts_with("file://"), "the archive as a whole is named: {file}");
    // 100 004 entries of at least 512 bytes each: the bound is one entry per 2 KiB of archive.
    let bound = bytes.len() / 2048;
    assert!(bound < 100_000, "the test archive must exceed the bound");
    assert!(
        message.contains(&format!("more than {bound} entries")) && message.contains("one entry per 2048 bytes"),
        "the bound is named: {message}"
    );
}

#[test]
fn file_declaring_more_bytes_than_the_archive_holds_is_refused_before_anything_is_written() {
    let bytes = raw_tar(&around(vec![Raw::Lying("big", b"only a little", 1 << 30)]));
    let (file, error) = refused(&bytes, true);
    assert_eq!(file, "big");
    let message = error.to_string();
    assert!(message.contains("1073741824 bytes") && message.contains(&format!("{} bytes", bytes.len())), "{message}");
}

#[test]
fn oversized_gnu_long_name_entry_is_refused_unread() {
    // A long-name entry is read into memory by tar readers; one larger than any allowed path must be
    // refused from its header.
    let mut bytes = Vec::new();
    let mut long = header_named(b"././@LongLink", tar::EntryType::GNULongName, 1 << 20);
    long.set_cksum();
    bytes.extend_from_slice(long.as_bytes());
    bytes.extend(std::iter::repeat_n(b'a', 1 << 20));
    let mut file = header(tar::EntryType::Regular, 0o644, 0);
    file.as_old_mut().name[..1].copy_from_slice(b"a");
    file.set_cksum();
    bytes.extend_from_slice(file.as_bytes());
    bytes.extend_from_slice(&[0; 1024]);
    let (file, error) = refused(&bytes, true);
    assert!(file.starts_with("file://"), "{file}");
    assert!(error.to_string().contains("long-name entry of 1048576 bytes"), "{error}");
}

#[test]
fn archive_not_in_pack_form_is_refused_from_its_headers_naming_the_entry() {
    // Out of order: `stele image pack` writes `bin` before `bin/app`.
    let bytes =
        raw_tar(&[Raw::File("bin/app", APP_SCRIPT, 0o755), Raw::Dir("bin"), Raw::File(MANIFEST_FILE, MANIFEST, 0o644)]);
    let (file, error) = refused(&bytes, true);
    assert!(file.starts_with("file://"), "{file}");
    let message = error.to_string();
    assert!(message.contains("stele image pack") && message.contains("bin/app"), "{message}");
}

#[test]
fn long_names_that_fit_the_bounds_are_unpacked() {
    // 9 components of 100 bytes: longer than a tar header's 100 bytes, within 1024.
    let component = "e".repeat(100);
    let dirs: Vec<String> = (1..=8).map(|n| vec![component.as_str(); n].join("/")).collect();
    let file = format!("{}/{component}", dirs[7]);
    let mut middle: Vec<Raw<'_>> = dirs.iter().map(|d| Raw::Dir(d)).collect();
    middle.push(Raw::File(&file, b"deep enough", 0o644));
    let bytes = raw_tar(&around(middle));
    let s = new_store();
    let source = TempDir::new().expect("create temp dir");
    let path = source.path().join("image.tar");
    fs::write(&path, &bytes).expect("write artifact");
    let uri: ArtifactUri = format!("file://{}", path.display()).parse().expect("valid artifact URI");
    let image = s.store.ensure(&uri, &digest_of(&bytes), bytes.len() as u64).expect("a long but bounded name unpacks");
    assert_eq!(fs::read(image.dir.join(&file)).expect("read deep file"), b"deep enough");
}
