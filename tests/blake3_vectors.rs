//! The official BLAKE3 test vectors (tests/data/blake3, CC0, from BLAKE3-team/BLAKE3) run through
//! `stele::image::digest_reader`, with the input handed over in awkward piece sizes so that the
//! streaming code meets every kind of chunk boundary: single bytes, pieces that straddle BLAKE3's 1 KiB
//! chunks, and pieces larger than the reader's own 64 KiB buffer.

use std::io::{self, Read};
use std::path::PathBuf;
use stele::image::{digest_reader, ImageError};

/// Piece sizes handed out by [`PieceReader`], cycling: one byte, a small odd size, either side of a
/// BLAKE3 chunk (1024), and more than the digest's 64 KiB read buffer.
const PIECES: [usize; 5] = [1, 7, 1023, 1025, 65537];

/// Returns at most the next size from [`PIECES`] per `read` call.
struct PieceReader<'a> {
    data: &'a [u8],
    next_piece: usize,
}

impl Read for PieceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let piece = PIECES[self.next_piece % PIECES.len()];
        self.next_piece += 1;
        let n = piece.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// The vectors' input: byte `i` is `i % 251`.
fn vector_input(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn digest_reader_matches_every_official_blake3_vector_whatever_the_read_sizes() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/blake3/test_vectors.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("BLAKE3 test vectors missing at {}: {e}", path.display()));
    let vectors: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let cases = vectors["cases"].as_array().unwrap_or_else(|| panic!("{}: no \"cases\" array", path.display()));

    let mut checked = 0;
    for case in cases {
        let len = case["input_len"].as_u64().unwrap_or_else(|| panic!("case without input_len: {case}"));
        let hash = case["hash"].as_str().unwrap_or_else(|| panic!("case without hash: {case}"));
        // The vectors give extended output; the default digest is its first 32 bytes.
        let expected = hash.get(..64).unwrap_or_else(|| panic!("hash shorter than 32 bytes: {hash}"));
        let input = vector_input(len as usize);

        for max_size in [None, Some(len)] {
            let digest = digest_reader(PieceReader { data: &input, next_piece: 0 }, max_size)
                .unwrap_or_else(|e| panic!("input_len {len}, max_size {max_size:?}: {e}"));
            assert_eq!(digest.blake3.to_hex(), expected, "input_len {len}, max_size {max_size:?}");
            assert_eq!(digest.size, len, "input_len {len}");
        }
        if len > 0 {
            let refused = digest_reader(PieceReader { data: &input, next_piece: 0 }, Some(len - 1));
            assert!(matches!(refused, Err(ImageError::TooLarge { .. })), "input_len {len}: {refused:?}");
        }
        checked += 1;
    }
    assert!(checked > 30, "only {checked} BLAKE3 vectors checked; is {} complete?", path.display());
}
