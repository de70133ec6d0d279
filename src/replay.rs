//! Replays Git history through the pure history verifier as a stream: reads the first-parent steps
//! [`CHUNK`] commits at a time, verifies every signature a chunk carries in parallel, judges its steps
//! in order and drops it, so memory is bounded by the verified state and one chunk, not by the history.
//!
//! Owns: the order of work and the recovery rule after a refused commit. Must not contain
//! verification rules (those are `ledger_format::history`) or git2 calls (those are `source`).

use crate::source::{LedgerSource, SourceError};
use git2::Oid;
use ledger_format::crypto::CryptoError;
use ledger_format::document::{Direct, Document, SignatureCheck, SignatureEntry};
use ledger_format::history::{apply_step, genesis, CommitInfo, Event, LedgerState, Step, TrustAnchor};
use ledger_format::tree::{classify, LayoutPath, Node, Problem};
use ledger_format::types::{Entry, Environment, Policy};
use ledger_format::{Blake3Digest, KeyId, PublicKey};
use std::collections::{HashMap, HashSet};

/// How many commits are read and pre-verified together. Large enough that starting the reading and
/// verifying threads costs nothing measurable, small enough that a chunk's steps take a few MiB.
pub const CHUNK: usize = 512;

/// A verified point in history.
#[derive(Clone, Debug)]
pub struct Verified {
    pub commit: Oid,
    pub state: LedgerState,
}

/// What one commit did, for the timeline.
#[derive(Clone, Debug)]
pub struct CommitReport {
    pub commit: CommitInfo,
    pub events: Vec<Event>,
}

/// A refused commit and every reason.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub commit: CommitInfo,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Default)]
pub struct Outcome {
    /// The last verified point (the input one when nothing new verified).
    pub verified: Option<Verified>,
    /// What each verified commit did, oldest first ([`replay`]; [`replay_with`] hands them over instead).
    pub reports: Vec<CommitReport>,
    pub refusals: Vec<Refusal>,
    /// Commits judged together with a later one after a refusal (see [`replay`]).
    pub recovered: Vec<(String, String)>,
    pub commits_seen: usize,
    /// Where the time went: walking first parents, reading steps, verifying signatures, judging steps
    /// (each summed over the chunks).
    pub timings: Timings,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    pub walk: std::time::Duration,
    pub read: std::time::Duration,
    pub verify: std::time::Duration,
    pub apply: std::time::Duration,
}

/// Signatures verified ahead of time; anything not in the set is verified directly, so a failure is
/// still reported precisely.
#[derive(Default)]
pub struct Preverified(HashSet<Verdict>);

/// A signature that verified: the document hash, the public key and the signature.
type Verdict = (Blake3Digest, [u8; 32], [u8; 64]);

impl SignatureCheck for Preverified {
    fn verify(&self, hash: &Blake3Digest, key: &PublicKey, pae: &[u8], sig: &[u8; 64]) -> Result<(), CryptoError> {
        if self.0.contains(&(*hash, key.to_bytes(), *sig)) {
            Ok(())
        } else {
            Direct.verify(hash, key, pae, sig)
        }
    }
}

/// Parses every document the steps add or change and verifies, across all cores, each signature whose
/// key id is known from any policy in the history. Keys come from the documents' own history, and a
/// key id determines its public key, so no verdict depends on which policy lists it.
pub fn preverify(initial: Option<&Policy>, steps: &[Step]) -> Preverified {
    let files = steps.iter().flat_map(|s| &s.changes).filter_map(|c| Some((c.path.as_slice(), c.after.as_ref()?)));
    let mut found = Preverified::default();
    found.add(initial, files);
    found
}

impl Preverified {
    /// Verifies, across all cores, every signature of `files` (paths and nodes, in any order) whose key
    /// id is known from `initial` or a policy among them, and keeps those that verify. Signatures already
    /// kept are not verified again.
    pub fn add<'a>(&mut self, initial: Option<&Policy>, files: impl Iterator<Item = (&'a [u8], &'a Node)>) {
        let found = verify_all(initial, files, &self.0);
        self.0.extend(found);
    }
}

fn verify_all<'a>(
    initial: Option<&Policy>,
    files: impl Iterator<Item = (&'a [u8], &'a Node)>,
    known: &HashSet<Verdict>,
) -> Vec<Verdict> {
    let mut keys: HashMap<KeyId, PublicKey> = HashMap::new();
    let mut add_keys = |p: &Policy| {
        for (id, info) in &p.keys {
            keys.insert(*id, info.public_key);
        }
    };
    if let Some(p) = initial {
        add_keys(p);
    }
    let mut docs: Vec<(&[u8], Kind)> = Vec::new();
    for (path, node) in files {
        let (Node::File(bytes), Some(kind)) = (node, std::str::from_utf8(path).ok().and_then(classify)) else {
            continue;
        };
        let kind = match kind {
            LayoutPath::Policy => {
                if let Ok(doc) = Document::<Policy>::parse(bytes) {
                    add_keys(&doc.payload);
                }
                Kind::Policy
            }
            LayoutPath::Entry(..) => Kind::Entry,
            LayoutPath::Environment(_) => Kind::Environment,
            // Timestamps and stray files: verified directly when judged.
            _ => continue,
        };
        docs.push((bytes, kind));
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = docs.len().div_ceil(threads).max(1);
    let keys = &keys;
    std::thread::scope(|scope| {
        let workers: Vec<_> = docs
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut valid = Vec::new();
                    for (bytes, kind) in part {
                        let Some((hash, pae, sigs)) = parse_as(bytes, *kind) else { continue };
                        for s in sigs {
                            if let Some(key) = keys.get(&s.keyid) {
                                let verdict = (hash, key.to_bytes(), s.sig.0);
                                if !known.contains(&verdict) && key.verify(&pae, &s.sig.0).is_ok() {
                                    valid.push(verdict);
                                }
                            }
                        }
                    }
                    valid
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("verification threads do not panic")).collect()
    })
}

/// What a changed file is, by its path in the layout.
#[derive(Clone, Copy)]
enum Kind {
    Entry,
    Environment,
    Policy,
}

/// The hash, PAE and signatures of a document of the kind its path says it is.
fn parse_as(bytes: &[u8], kind: Kind) -> Option<(Blake3Digest, Vec<u8>, Vec<SignatureEntry>)> {
    fn parts<T>(d: Document<T>) -> (Blake3Digest, Vec<u8>, Vec<SignatureEntry>) {
        (d.hash(), d.pae().to_vec(), d.signatures)
    }
    match kind {
        Kind::Entry => Document::<Entry>::parse(bytes).map(parts).ok(),
        Kind::Environment => Document::<Environment>::parse(bytes).map(parts).ok(),
        Kind::Policy => Document::<Policy>::parse(bytes).map(parts).ok(),
    }
}

/// Replays the first-parent history from `from` (or from the root) up to `head`, keeping every
/// commit's report in [`Outcome::reports`].
///
/// After a refused commit the state stays at the last good one, and each later commit is judged as one
/// step from that last good commit: a bad commit followed by its revert is thereby recovered from
/// without ever acting on the bad state. `progress` is called with (done, total).
pub fn replay(
    source: &dyn LedgerSource,
    from: Option<Verified>,
    head: Oid,
    anchor: &TrustAnchor,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Outcome, SourceError> {
    let mut reports = Vec::new();
    let mut out = replay_with(source, from, head, anchor, progress, &mut |r| reports.push(r))?;
    out.reports = reports;
    Ok(out)
}

/// [`replay`], handing each verified commit's report to `report` as it is judged instead of keeping
/// it: for callers that need only the verified state (a poll), memory then stays bounded by the state
/// and one [`CHUNK`] of steps, whatever the length of the history.
pub fn replay_with(
    source: &dyn LedgerSource,
    from: Option<Verified>,
    head: Oid,
    anchor: &TrustAnchor,
    progress: &mut dyn FnMut(usize, usize),
    report: &mut dyn FnMut(CommitReport),
) -> Result<Outcome, SourceError> {
    replay_chunked(source, from, head, anchor, progress, report, CHUNK)
}

/// [`replay_with`] reading `chunk` commits at a time (at least one). The outcome does not depend on
/// `chunk`: a refusal and its recovery may fall in different chunks (`tests/history.rs` checks this).
pub fn replay_chunked(
    source: &dyn LedgerSource,
    from: Option<Verified>,
    head: Oid,
    anchor: &TrustAnchor,
    progress: &mut dyn FnMut(usize, usize),
    report: &mut dyn FnMut(CommitReport),
    chunk: usize,
) -> Result<Outcome, SourceError> {
    let clock = std::time::Instant::now();
    let commits = source.first_parents(from.as_ref().map(|v| v.commit), head)?;
    let mut out = Outcome { commits_seen: commits.len(), ..Outcome::default() };
    out.timings.walk = clock.elapsed();
    let mut rest: &[Oid] = &commits;
    let mut current = from;

    if current.is_none() {
        // Commits before the policy first appears are outside the ledger.
        while let Some((&id, tail)) = rest.split_first() {
            rest = tail;
            let Some(snapshot) = source.snapshot(id)? else { continue };
            let info = source.commit_info(id)?;
            match genesis(&snapshot, anchor, &info) {
                Ok((state, events)) => {
                    report(CommitReport { commit: info, events });
                    current = Some(Verified { commit: id, state });
                }
                Err(problems) => {
                    // Nothing after an untrusted genesis can be judged.
                    out.refusals.push(Refusal { commit: info, problems });
                    return Ok(out);
                }
            }
            break;
        }
    }
    let Some(mut good) = current else {
        return Ok(out);
    };

    let total = rest.len();
    let mut done = 0;
    let mut refused_since: Option<String> = None;
    for chunk in rest.chunks(chunk.max(1)) {
        let clock = std::time::Instant::now();
        let steps: Vec<Step> = source.steps(chunk)?;
        out.timings.read += clock.elapsed();
        let clock = std::time::Instant::now();
        let sigs = preverify(Some(&good.state.policy.payload), &steps);
        out.timings.verify += clock.elapsed();
        let clock = std::time::Instant::now();
        for (id, step) in chunk.iter().zip(&steps) {
            done += 1;
            progress(done, total);
            let recovery;
            let step = match &refused_since {
                None => step,
                Some(_) => {
                    recovery = source.step(*id, Some(good.commit))?;
                    &recovery
                }
            };
            match apply_step(&mut good.state, step, &sigs) {
                Ok(events) => {
                    if let Some(first_bad) = refused_since.take() {
                        out.recovered.push((first_bad, id.to_string()));
                    }
                    report(CommitReport { commit: step.commit.clone(), events });
                    good.commit = *id;
                }
                Err(problems) => {
                    if refused_since.is_none() {
                        refused_since = Some(id.to_string());
                        out.refusals.push(Refusal { commit: step.commit.clone(), problems });
                    }
                }
            }
        }
        out.timings.apply += clock.elapsed();
    }
    out.verified = Some(good);
    Ok(out)
}
