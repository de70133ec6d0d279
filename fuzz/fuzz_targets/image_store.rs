//! Tar unpacking into the local provider's image store: the input is an artifact, signed (as far as
//! the store knows) with its own BLAKE3 digest and size, handed to `ImageStore::ensure` through a
//! `file:///` URI. Whatever the archive holds:
//!
//! - nothing is written outside the store (the store's parent directory holds only the store and the
//!   artifact afterwards);
//! - `tmp/` is empty again when `ensure` returns, refused or not;
//! - an accepted image verifies (`verify_unpacked`) and can be removed.
//!
//! The store lives in one temporary directory per process (under `$TMPDIR`; scripts/fuzz.sh points it
//! at /dev/shm, since the store syncs every image to disk), removed when libFuzzer exits; every input's
//! image is removed again so that runs do not depend on each other.
#![no_main]

use ledger_format::types::ArtifactUri;
use ledger_format::Blake3Digest;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;
use stele::provider::local::store::ImageStore;

struct Fixture {
    /// Holds the store and the artifact.
    parent: PathBuf,
    artifact: PathBuf,
    uri: ArtifactUri,
    store: ImageStore,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("stele-fuzz-store.").tempdir().expect("a temporary directory");
        let parent = dir.keep().canonicalize().expect("the temporary directory resolves");
        // libFuzzer ends the process with exit(), which runs C exit handlers but no Rust destructors.
        // SAFETY: `remove_fixture` is a plain function that only touches the fixture's directory.
        unsafe { libc::atexit(remove_fixture) };
        let artifact = parent.join("artifact.tar");
        let uri = format!("file://{}", artifact.display()).parse().expect("a file URI of a plain temporary path");
        let store = ImageStore::open(&parent.join("store")).expect("a store in a fresh directory");
        Fixture { parent, artifact, uri, store }
    })
}

extern "C" fn remove_fixture() {
    if let Some(f) = FIXTURE.get() {
        let _ = std::fs::remove_dir_all(&f.parent);
    }
}

fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    std::fs::write(&f.artifact, data).expect("the artifact is written");
    let digest = Blake3Digest(*blake3::hash(data).as_bytes());
    let result = f.store.ensure(&f.uri, &digest, data.len() as u64);
    assert_eq!(listing(&f.parent), ["artifact.tar", "store"], "something was written beside the store");
    assert!(listing(&f.store.root().join("tmp")).is_empty(), "tmp/ not emptied after {result:?}");
    if result.is_ok() {
        if let Err(reason) = f.store.verify_unpacked(&digest) {
            panic!("an image ensure accepted does not verify: {reason}");
        }
    }
    f.store.remove(&digest).expect("an image can be removed");
    assert!(!f.store.image_dir(&digest).exists(), "a removed image is still there");
});
