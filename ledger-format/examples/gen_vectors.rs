//! Writes the ledger format test vectors into `ledger-format/test-vectors/`, replacing what is there:
//! the tree vectors (`valid/`, `invalid/`) and the history vectors (`history/`).
//!
//! Run `cargo run -p ledger-format --example gen_vectors` after changing a case in
//! `tests/support/vectors.rs` or `tests/support/history_vectors.rs`; `tests/test_vectors.rs` and
//! `tests/history_vectors.rs` fail until the committed files match. Verdicts are stated by hand in the
//! cases; this program also replays each history vector and names those the implementation disagrees
//! with (the files are written all the same: the tests are where a disagreement fails).

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
    let history = vectors::history::build_cases();
    // A panic is reported as a disagreement, without the default hook's backtrace.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let disagreements: Vec<String> = history
        .iter()
        .filter_map(|case| match std::panic::catch_unwind(|| vectors::history::check(&case.vector)) {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{}: {e}", case.name)),
            Err(panic) => {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()));
                Some(format!("{}: the implementation panicked: {}", case.name, text.unwrap_or_default()))
            }
        })
        .collect();
    std::panic::set_hook(hook);
    for d in &disagreements {
        eprintln!("warning: {d}");
    }
    println!(
        "{} of {} history vectors agree with the implementation",
        history.len() - disagreements.len(),
        history.len()
    );
    Ok(())
}
