//! Garbage collection inside the store: images nothing holds, moved-aside drifted trees nobody needs as
//! evidence, and what interrupted runs left in `tmp/`. Which images are held is the caller's verdict
//! ([`Retention`], built by `local::gc` from instance records and the agent's targets); this module
//! only turns it into removals, in a pure [`plan`] that the I/O shell carries out.
//!
//! # Rules
//!
//! - An image (`images/<hex>/`, `images/<hex>.ok`, `blobs/<hex>.tar`) is removed, marker first, unless
//!   its digest is in [`Retention::images`] or another thread is preparing it right now.
//! - A moved-aside tree `images/<hex>.drifted-*` is evidence of what drifted instances ran from: for a
//!   digest in [`Retention::drift_evidence`] the newest such tree (by change time) is kept, every
//!   other one is removed.
//! - An entry of `tmp/` older than the pass's `min_age` is removed unless its digest is being prepared
//!   now (`ImageStore::open` already empties `tmp/` on start).
//! - Names the store never writes are left alone.

use super::tree::remove_forcibly;
use super::ImageStore;
use ledger_format::Blake3Digest;
use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What a collection must keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Images to keep whole: tree, marker and blob.
    pub images: BTreeSet<Blake3Digest>,
    /// Digests with an instance still marked drifted: their newest moved-aside tree is kept.
    pub drift_evidence: BTreeSet<Blake3Digest>,
}

/// One removal of a collection pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    pub path: PathBuf,
    /// Which rule removed it, in words.
    pub reason: &'static str,
    /// The image it belongs to, if any: removed only while no other thread prepares that image.
    digest: Option<Blake3Digest>,
}

/// What the store holds, as [`plan`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Found {
    Tree(Blake3Digest),
    Marker(Blake3Digest),
    Blob(Blake3Digest),
    /// A moved-aside tree and when it was moved (its change time).
    Drifted(Blake3Digest, SystemTime),
    /// An entry of `tmp/`, the image it was for (when its name tells), and how old it is.
    Temporary(Option<Blake3Digest>, Duration),
}

pub(super) const REASON_IMAGE: &str = "image that no instance record, target or last good release holds";
pub(super) const REASON_DRIFTED: &str = "moved-aside drifted tree no longer needed as evidence";
pub(super) const REASON_TEMPORARY: &str = "temporary file or directory left by an interrupted run";

/// Decides what to remove. Removals of one image come marker first, so an interrupted pass leaves an
/// incomplete image (which `ensure` rebuilds), never a marker vouching for a partial tree.
pub(super) fn plan(
    found: &[(PathBuf, Found)],
    retention: &Retention,
    in_flight: &HashSet<Blake3Digest>,
    min_age: Duration,
) -> Vec<Removal> {
    let busy = |digest: &Blake3Digest| in_flight.contains(digest);
    let newest_evidence: BTreeSet<&Path> = retention
        .drift_evidence
        .iter()
        .filter_map(|digest| {
            found
                .iter()
                .filter_map(|(path, f)| match f {
                    Found::Drifted(d, changed) if d == digest => Some((changed, path.as_path())),
                    _ => None,
                })
                .max()
                .map(|(_, path)| path)
        })
        .collect();
    let mut removals: Vec<(u8, Removal)> = Vec::new();
    for (path, f) in found {
        let removal = |order: u8, reason: &'static str, digest: Option<Blake3Digest>| {
            (order, Removal { path: path.clone(), reason, digest })
        };
        match f {
            Found::Marker(d) if !retention.images.contains(d) && !busy(d) => {
                removals.push(removal(0, REASON_IMAGE, Some(*d)))
            }
            Found::Tree(d) if !retention.images.contains(d) && !busy(d) => {
                removals.push(removal(1, REASON_IMAGE, Some(*d)))
            }
            Found::Blob(d) if !retention.images.contains(d) && !busy(d) => {
                removals.push(removal(2, REASON_IMAGE, Some(*d)))
            }
            Found::Drifted(d, _) if !newest_evidence.contains(path.as_path()) => {
                removals.push(removal(3, REASON_DRIFTED, Some(*d)))
            }
            Found::Temporary(d, age) if *age >= min_age && !d.as_ref().is_some_and(busy) => {
                removals.push(removal(4, REASON_TEMPORARY, None))
            }
            _ => {}
        }
    }
    removals.sort_by(|(a, ra), (b, rb)| (a, &ra.path).cmp(&(b, &rb.path)));
    removals.into_iter().map(|(_, r)| r).collect()
}

/// The digest a store name starts with (`<hex>`, `<hex>.ok`, `<hex>.<anything>`).
fn digest_prefix(name: &str) -> Option<Blake3Digest> {
    name.get(..64)?.parse().ok()
}

/// What a collection pass did.
#[derive(Clone, Debug, Default)]
pub struct Collected {
    pub removed: Vec<Removal>,
    /// Removals that failed, with the error; the next pass tries again.
    pub failed: Vec<String>,
}

impl ImageStore {
    /// Lists what the store holds under `images/`, `blobs/` and `tmp/`.
    fn inventory(&self, now: SystemTime) -> Vec<(PathBuf, Found)> {
        let mut found = Vec::new();
        let list = |dir: &Path| -> Vec<(PathBuf, String, fs::Metadata)> {
            let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
            entries
                .flatten()
                .filter_map(|e| {
                    let meta = fs::symlink_metadata(e.path()).ok()?;
                    Some((e.path(), e.file_name().to_string_lossy().into_owned(), meta))
                })
                .collect()
        };
        for (path, name, meta) in list(&self.root.join("images")) {
            let Some(digest) = digest_prefix(&name) else { continue };
            let rest = &name[64..];
            if rest.is_empty() && meta.is_dir() {
                found.push((path, Found::Tree(digest)));
            } else if rest == ".ok" {
                found.push((path, Found::Marker(digest)));
            } else if rest.starts_with(".drifted-") && meta.is_dir() {
                let changed =
                    SystemTime::UNIX_EPOCH + Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec() as u32);
                found.push((path, Found::Drifted(digest, changed)));
            }
        }
        for (path, name, _) in list(&self.root.join("blobs")) {
            if let Some(digest) = name.strip_suffix(".tar").and_then(digest_prefix).filter(|_| name.len() == 68) {
                found.push((path, Found::Blob(digest)));
            }
        }
        for (path, name, meta) in list(&self.tmp_dir()) {
            let age = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or(Duration::ZERO);
            found.push((path, Found::Temporary(digest_prefix(&name), age)));
        }
        found
    }

    /// Removes what `retention` does not hold (rules in the module documentation). Never waits for a
    /// download: an image being prepared is skipped and looked at again by the next pass.
    pub fn collect(&self, retention: &Retention, min_age: Duration) -> Collected {
        let found = self.inventory(SystemTime::now());
        let in_flight = self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let mut collected = Collected::default();
        for removal in plan(&found, retention, &in_flight, min_age) {
            // Held for the removal, so that no `ensure` of this image runs meanwhile.
            let _claim = match removal.digest {
                Some(digest) => match self.try_claim(&digest) {
                    Some(claim) => Some(claim),
                    None => continue,
                },
                None => None,
            };
            match remove_forcibly(&removal.path) {
                Ok(()) => {
                    tracing::info!(path = %removal.path.display(), reason = removal.reason, "collected");
                    collected.removed.push(removal);
                }
                Err(error) => {
                    tracing::warn!(%error, "could not collect garbage; the next pass tries again");
                    collected.failed.push(error.to_string());
                }
            }
        }
        collected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(byte: u8) -> Blake3Digest {
        Blake3Digest([byte; 32])
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn removed(
        found: &[(PathBuf, Found)],
        retention: &Retention,
        busy: &[Blake3Digest],
    ) -> Vec<(String, &'static str)> {
        let in_flight = busy.iter().copied().collect();
        plan(found, retention, &in_flight, Duration::from_secs(60))
            .into_iter()
            .map(|r| (r.path.display().to_string(), r.reason))
            .collect()
    }

    #[test]
    fn unheld_images_go_marker_first_and_held_or_busy_ones_stay() {
        let (held, unheld, busy) = (digest(1), digest(2), digest(3));
        let mut found = Vec::new();
        for d in [held, unheld, busy] {
            found.push((PathBuf::from(format!("blobs/{d}.tar")), Found::Blob(d)));
            found.push((PathBuf::from(format!("images/{d}")), Found::Tree(d)));
            found.push((PathBuf::from(format!("images/{d}.ok")), Found::Marker(d)));
        }
        let retention = Retention { images: [held].into(), ..Retention::default() };
        assert_eq!(
            removed(&found, &retention, &[busy]),
            [
                (format!("images/{unheld}.ok"), REASON_IMAGE),
                (format!("images/{unheld}"), REASON_IMAGE),
                (format!("blobs/{unheld}.tar"), REASON_IMAGE),
            ]
        );
    }

    #[test]
    fn only_the_newest_drifted_tree_of_a_digest_with_drifted_instances_is_kept() {
        let (evidence, gone) = (digest(1), digest(2));
        let found = vec![
            (PathBuf::from("images/a.drifted-old"), Found::Drifted(evidence, at(10))),
            (PathBuf::from("images/a.drifted-new"), Found::Drifted(evidence, at(20))),
            (PathBuf::from("images/b.drifted-x"), Found::Drifted(gone, at(30))),
        ];
        let retention = Retention { images: [evidence, gone].into(), drift_evidence: [evidence].into() };
        assert_eq!(
            removed(&found, &retention, &[]),
            [("images/a.drifted-old".to_owned(), REASON_DRIFTED), ("images/b.drifted-x".to_owned(), REASON_DRIFTED)]
        );
    }

    #[test]
    fn temporaries_go_once_old_enough_unless_their_image_is_being_prepared() {
        let busy = digest(9);
        let found = vec![
            (PathBuf::from("tmp/young"), Found::Temporary(None, Duration::from_secs(59))),
            (PathBuf::from("tmp/old"), Found::Temporary(None, Duration::from_secs(60))),
            (PathBuf::from("tmp/busy"), Found::Temporary(Some(busy), Duration::from_secs(600))),
        ];
        assert_eq!(removed(&found, &Retention::default(), &[busy]), [("tmp/old".to_owned(), REASON_TEMPORARY)]);
    }
}
