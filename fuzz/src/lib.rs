//! Helpers the fuzz targets share: the text container that carries a whole ledger tree in one input
//! (`verify_tree`), the material the `history` target builds its steps from (every tree and step of
//! `ledger-format/test-vectors/history/`), and a byte cursor to decode operations from an input.
//!
//! Nothing here judges anything: verdicts come from `ledger_format` and `stele`; the targets only add
//! the properties that must hold whatever the input (see README.md beside this crate).

use ledger_format::history::{SshSigned, TrustAnchor};
use ledger_format::tree::{Node, Snapshot, MAX_READ};
use ledger_format::Timestamp;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The instant every tree is judged at: the `now` of the test vectors, 2026-06-01T00:00:00Z.
pub fn vectors_now() -> Timestamp {
    let days = ledger_format::time::days_from_civil(2026, 6, 1);
    Timestamp::from_unix(days * 86_400).expect("2026 is a valid timestamp")
}

/// Marks the start of a node in a tree container: at the very start of the input, or after a newline.
pub const HEADER: &[u8] = b"%% ";

/// Reads a tree container: a sequence of nodes, each a header line `%% <path>` followed by the file's
/// bytes up to the next line that starts with `%% ` (the newline before it belongs to the file). A
/// header ending in ` @link` is a symbolic link, ` @other` a submodule, ` @large` a file past
/// [`MAX_READ`]. Bytes before the first header are ignored; a later node for the same path wins.
///
/// The format is text so that the seeds (real ledger trees) stay readable and libFuzzer's mutations of
/// a document's bytes stay within that document.
pub fn parse_tree(data: &[u8]) -> Snapshot {
    let mut starts = Vec::new();
    if data.starts_with(HEADER) {
        starts.push(0);
    }
    for (i, window) in data.windows(HEADER.len() + 1).enumerate() {
        if window[0] == b'\n' && &window[1..] == HEADER {
            starts.push(i + 1);
        }
    }
    let mut nodes = BTreeMap::new();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(data.len());
        let record = &data[start + HEADER.len()..end];
        let (header, content) = match record.iter().position(|&b| b == b'\n') {
            Some(i) => (&record[..i], &record[i + 1..]),
            None => (record, &record[record.len()..]),
        };
        let (path, node) = if let Some(path) = header.strip_suffix(b" @link") {
            (path, Node::Symlink)
        } else if let Some(path) = header.strip_suffix(b" @other") {
            (path, Node::Other("submodule".to_owned()))
        } else if let Some(path) = header.strip_suffix(b" @large") {
            (path, Node::TooLarge { size: MAX_READ })
        } else {
            (header, Node::File(content.to_vec()))
        };
        nodes.insert(path.to_vec(), node);
    }
    Snapshot { nodes }
}

/// A commit of a history vector: what it writes and deletes, and its SSH signature.
#[derive(Clone, Debug)]
pub struct VectorStep {
    pub set: Vec<(Vec<u8>, Node)>,
    pub delete: Vec<Vec<u8>>,
    pub signature: Option<SshSigned>,
    /// The first parent the commit records, when the vector states it (timestamps name it, F2).
    pub parent: Option<String>,
}

/// Everything the history vectors hold, as building blocks for random histories.
#[derive(Debug)]
pub struct HistoryMaterial {
    /// Genesis trees with their trust anchors.
    pub geneses: Vec<(Snapshot, TrustAnchor)>,
    /// Every commit of every vector, in file order.
    pub steps: Vec<VectorStep>,
    /// Every path any vector uses, sorted.
    pub paths: Vec<Vec<u8>>,
    /// Every distinct file (documents, signed and tampered) any vector holds.
    pub files: Vec<Vec<u8>>,
    /// Every SSH commit signature any vector holds.
    pub signatures: Vec<SshSigned>,
}

/// The directory of the ledger format's test vectors.
pub fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ledger-format/test-vectors")
}

/// Loads [`HistoryMaterial`] from `ledger-format/test-vectors/history/*.json` (format in its README).
/// Panics with the file named when a vector cannot be read: the target is useless without them.
pub fn load_history_material() -> HistoryMaterial {
    let dir = vectors_dir().join("history");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    let mut material = HistoryMaterial {
        geneses: Vec::new(),
        steps: Vec::new(),
        paths: Vec::new(),
        files: Vec::new(),
        signatures: Vec::new(),
    };
    let mut paths = std::collections::BTreeSet::new();
    let mut files = std::collections::BTreeSet::new();
    for name in names {
        let text = std::fs::read(&name).unwrap_or_else(|e| panic!("{}: {e}", name.display()));
        let vector: Value = serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", name.display()));
        let anchor = anchor_of(&vector["anchor"]).unwrap_or_else(|| panic!("{}: no anchor", name.display()));
        let genesis = nodes_of(&vector["genesis"]);
        for (path, node) in &genesis {
            paths.insert(path.clone());
            if let Node::File(bytes) = node {
                files.insert(bytes.clone());
            }
        }
        material.geneses.push((Snapshot { nodes: genesis.into_iter().collect() }, anchor));
        for step in vector["steps"].as_array().into_iter().flatten() {
            let set = nodes_of(&step["set"]);
            let delete: Vec<Vec<u8>> =
                step["delete"].as_array().into_iter().flatten().filter_map(Value::as_str).map(path_bytes).collect();
            for (path, node) in &set {
                paths.insert(path.clone());
                if let Node::File(bytes) = node {
                    files.insert(bytes.clone());
                }
            }
            paths.extend(delete.iter().cloned());
            let signature = step["commit"]["ssh_signature"].as_object().map(|sig| SshSigned {
                armored: sig["armored"].as_str().unwrap_or_default().as_bytes().to_vec(),
                signed_payload: base64_decode(sig["signed_payload"].as_str().unwrap_or_default()),
            });
            if let Some(sig) = &signature {
                material.signatures.push(sig.clone());
            }
            let parent = step["commit"]["parent"].as_str().map(str::to_owned);
            material.steps.push(VectorStep { set, delete, signature, parent });
        }
    }
    material.paths = paths.into_iter().collect();
    material.files = files.into_iter().collect();
    material
}

fn anchor_of(anchor: &Value) -> Option<TrustAnchor> {
    if let Some(hash) = anchor["policy_hash"].as_str() {
        return Some(TrustAnchor::PolicyHash(hash.parse().ok()?));
    }
    let keys = anchor["root_keys"].as_array()?.iter().map(|k| k.as_str()?.parse().ok()).collect::<Option<Vec<_>>>()?;
    Some(TrustAnchor::RootKeys { keys, threshold: anchor["threshold"].as_u64()? })
}

/// Nodes in the vectors' form (`text`, `base64`, `repeat`, `symlink`, `other`), by path bytes.
pub fn nodes_of(files: &Value) -> Vec<(Vec<u8>, Node)> {
    let Some(files) = files.as_object() else { return Vec::new() };
    files
        .iter()
        .map(|(path, node)| {
            let node = if let Some(text) = node["text"].as_str() {
                Node::File(text.as_bytes().to_vec())
            } else if let Some(b64) = node["base64"].as_str() {
                Node::File(base64_decode(b64))
            } else if let Some(repeat) = node["repeat"].as_object() {
                let byte = repeat["byte"].as_u64().unwrap_or(0) as u8;
                let count = repeat["count"].as_u64().unwrap_or(0);
                if count > MAX_READ {
                    Node::TooLarge { size: count }
                } else {
                    Node::File(vec![byte; count as usize])
                }
            } else if node.get("symlink").is_some() {
                Node::Symlink
            } else {
                Node::Other(node["other"].as_str().unwrap_or("other").to_owned())
            };
            (path_bytes(path), node)
        })
        .collect()
}

/// A vector path: UTF-8 as written, or `base64:` and the bytes.
fn path_bytes(path: &str) -> Vec<u8> {
    match path.strip_prefix("base64:") {
        Some(b64) => base64_decode(b64),
        None => path.as_bytes().to_vec(),
    }
}

/// Standard base64 (RFC 4648 §4) with padding; anything else in the input is skipped.
pub fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let Some(v) = ALPHABET.iter().position(|&a| a == c) else { continue };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Reads operations from a fuzz input; past the end every read is zero and [`Cursor::done`] is true.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn done(&self) -> bool {
        self.data.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A big-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    /// An index below `len` (which must not be zero).
    pub fn index(&mut self, len: usize) -> usize {
        usize::from(self.u16()) % len
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }
}
