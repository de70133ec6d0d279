//! Writes the ledger format test vectors into `ledger-format/test-vectors/`, replacing what is there.
//!
//! Run `cargo run -p ledger-format --example gen_vectors` after changing a case in
//! `tests/support/vectors.rs`; `tests/test_vectors.rs` fails until the committed files match.

#[path = "../tests/support/vectors.rs"]
mod vectors;

use std::fs;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-vectors");
    // Start from an empty directory so a renamed or removed case leaves no stale file behind.
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    let files = vectors::render(&vectors::build_cases());
    for (name, bytes) in &files {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().expect("vector files live in a directory"))?;
        fs::write(&path, bytes)?;
    }
    let total: usize = files.values().map(Vec::len).sum();
    println!("wrote {} files ({total} bytes) to {}", files.len(), dir.display());
    Ok(())
}
