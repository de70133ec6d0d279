//! Garbage collection of the local provider's state directory: what interrupted runs left (temporary
//! files, instance directories without a valid record) and images that nothing holds any more. The
//! agent runs it on start and every [`INTERVAL`] (`LocalProvider::collect_garbage`).
//!
//! Owns: deciding what in `<state-dir>` is garbage. Must not touch: live processes (an instance
//! directory a running process uses is never removed), the agent's memory or the verified state
//! (only their leftover temporary files), balancer records, or anything it does not recognise.
//!
//! # Retention rule
//!
//! An image (unpacked tree, completion marker and blob) is kept while any of these holds it:
//! 1. an instance record of any environment names its digest (the instance may run, or be adopted);
//! 2. it is the target or the last good release of an environment (`keep`, from the agent), so that a
//!    relaunch or a failed gate's restore never has to fetch again;
//! 3. another thread is preparing it right now.
//!
//! Everything else in the store is removed: older images once their instances are gone, images of
//! superseded or reverted releases, images a refused release left. A moved-aside `.drifted-*` tree is
//! kept (the newest per digest) while an instance marked drifted with that digest remains, as evidence
//! of what it ran from, and removed afterwards.
//!
//! Leftovers: `*.stele-tmp` (an atomic write that failed, e.g. on a full disk), a balancer's report
//! temporary whose balancer is dead, and an instance directory whose `instance.json` is missing or
//! unreadable (a launch that failed before its record was written) and whose data directory no running
//! process uses. On start every leftover goes; on later passes only those older than [`MIN_AGE`], so a
//! write or launch in progress on another thread is never collected under its feet.

use super::store::{ImageStore, Retention};
use super::InstanceRecord;
use ledger_format::Blake3Digest;
use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How often the agent collects garbage after the pass on start.
pub const INTERVAL: Duration = Duration::from_secs(10 * 60);

/// On passes after the first, leftovers younger than this are left for the next pass.
pub const MIN_AGE: Duration = Duration::from_secs(60);

/// The suffix of `write_atomic`'s temporary files.
const TMP_SUFFIX: &str = ".stele-tmp";

/// What one pass removed, and what it could not.
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    /// Each removed path with the rule that removed it.
    pub removed: Vec<(PathBuf, &'static str)>,
    /// Removals that failed; the next pass tries again.
    pub failed: Vec<String>,
}

/// Collects garbage under the state directory `root` and in `store` (rules in the module
/// documentation). `keep` holds the digests of every environment's target and last good release;
/// `min_age` is zero on start and [`MIN_AGE`] afterwards.
pub fn collect(root: &Path, store: &ImageStore, keep: &BTreeSet<Blake3Digest>, min_age: Duration) -> GcReport {
    let now = SystemTime::now();
    let mut report = GcReport::default();
    let mut retention = Retention { images: keep.clone(), ..Retention::default() };
    let mut in_use: Option<HashSet<PathBuf>> = None;

    // Top-level files (the verified state) and the agent's memory.
    for dir in [root.to_path_buf(), root.join("agent")] {
        remove_temporaries(&dir, now, min_age, &mut report);
    }
    for env in subdirectories(&root.join("local")) {
        for instance in subdirectories(&env.join("instances")) {
            let record_path = instance.join("instance.json");
            let record = fs::read(&record_path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice::<InstanceRecord>(&bytes).map_err(|e| e.to_string()));
            match record {
                Ok(record) => {
                    retention.images.insert(*record.release.digest());
                    if record.drift.is_some() {
                        retention.drift_evidence.insert(*record.release.digest());
                    }
                    remove_temporaries(&instance, now, min_age, &mut report);
                }
                Err(why) => {
                    if age(&instance, now) < min_age {
                        continue;
                    }
                    let data = instance.join("data");
                    if in_use.get_or_insert_with(data_dirs_in_use).contains(&data) {
                        tracing::warn!(dir = %instance.display(), %why, "instance directory without a valid record, but a process uses it; kept");
                        continue;
                    }
                    remove(&instance, "instance directory without a valid record", &mut report);
                }
            }
        }
        for group in subdirectories(&env.join("groups")) {
            remove_temporaries(&group, now, min_age, &mut report);
            remove_dead_balancer_temporaries(&group, now, min_age, &mut report);
        }
    }
    let collected = store.collect(&retention, min_age);
    report.removed.extend(collected.removed.into_iter().map(|r| (r.path, r.reason)));
    report.failed.extend(collected.failed);
    if !report.removed.is_empty() || !report.failed.is_empty() {
        tracing::info!(removed = report.removed.len(), failed = report.failed.len(), "garbage collected");
    }
    report
}

fn subdirectories(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> =
        entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect();
    dirs.sort();
    dirs
}

/// How long ago `path` was last modified; zero when that cannot be told (so it is kept).
fn age(path: &Path, now: SystemTime) -> Duration {
    fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| now.duration_since(modified).ok())
        .unwrap_or(Duration::ZERO)
}

fn remove(path: &Path, reason: &'static str, report: &mut GcReport) {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            tracing::info!(path = %path.display(), reason, "collected");
            report.removed.push((path.to_path_buf(), reason));
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not collect garbage; the next pass tries again");
            report.failed.push(format!("{}: {e}", path.display()));
        }
    }
}

/// Removes `*.stele-tmp` files directly in `dir` that are at least `min_age` old.
fn remove_temporaries(dir: &Path, now: SystemTime, min_age: Duration, report: &mut GcReport) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) && age(&path, now) >= min_age {
            remove(&path, "temporary file of an interrupted write", report);
        }
    }
}

/// Removes a balancer's report temporaries (`.<name>.<pid>.tmp`) whose writing process is gone.
fn remove_dead_balancer_temporaries(dir: &Path, now: SystemTime, min_age: Duration, report: &mut GcReport) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|n| n.rsplit_once('.'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if !Path::new(&format!("/proc/{pid}")).exists() && age(&path, now) >= min_age {
            remove(&path, "temporary file of a balancer that is gone", report);
        }
    }
}

/// The data directories (`STELE_DATA_DIR`) of every running process, read from /proc.
fn data_dirs_in_use() -> HashSet<PathBuf> {
    let mut dirs = HashSet::new();
    let Ok(procs) = fs::read_dir("/proc") else { return dirs };
    for entry in procs.flatten() {
        if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(environ) = fs::read(entry.path().join("environ")) else { continue };
        for var in environ.split(|b| *b == 0) {
            if let Some(dir) = var.strip_prefix(b"STELE_DATA_DIR=") {
                dirs.insert(PathBuf::from(String::from_utf8_lossy(dir).into_owned()));
            }
        }
    }
    dirs
}
