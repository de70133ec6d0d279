//! The local provider, the embedded default: instances are processes on this host, started from a
//! verified, read-only image directory, each in its own process group with a private data directory;
//! each instance group has a load balancer process (`stele lb`) on a stable loopback port. Instances
//! and balancers outlive the agent and are adopted by the next one from their records on disk.
//!
//! Owns: the on-disk records under `<state-dir>/local/<env>/`, health probing and its thresholds, drift
//! checks of unpacked images, and turning a group's traffic setting into balancer weights. Must not
//! decide what to run (that is `plan`), or touch the ledger.
//!
//! Nothing here waits on one instance: `terminate` marks the record `stopping`, takes the instance out
//! of its balancer and hands the drain and the stop to a background thread (`stopper.rs`); `observe`
//! reports the instance as `stopping` until its record is gone, and resumes the stop after an agent
//! restart. Drift is remembered per instance: an instance whose image tree was found altered, or whose
//! tree was since replaced (moved aside and unpacked afresh by any environment), stays drifted until
//! it is replaced.
//!
//! Layout:
//! ```text
//! <root>/store/{blobs,images}/...         the content-addressed image store (store/)
//! <root>/local/<env>/instances/<id>/      instance.json (record), data/ (private, writable), log
//! <root>/local/<env>/groups/<group>/      traffic.json, lb.json (balancer process), lb-config.json,
//!                                         lb-config.json.report.json, lb.log
//! ```

pub mod gc;
pub mod process;
mod stopper;
pub mod store;

use super::{Provider, ProviderError, Readiness};
use crate::lb::{Backend, LbConfig};
use crate::plan::{GroupTraffic, Health, Instance, Observed, Release, Traffic};
use crate::repo::write_atomic;
use ledger_format::types::{EnvName, Environment, GroupName, HealthCheck, Image};
use ledger_format::Blake3Digest;
use process::{Liveness, ProcessHandle, SpawnSpec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use store::{ImageStore, PreparedImage, StoreError};

/// Settings of the local provider (the `[local]` table of the agent's configuration).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    /// Stable balancer addresses per `env/group`; a group without one gets a free port, kept across restarts.
    #[serde(default)]
    pub listen: BTreeMap<String, SocketAddr>,
    /// How often each unpacked image is re-hashed to detect tampering (seconds; default 30).
    #[serde(default)]
    pub drift_check_seconds: Option<u64>,
    /// How long a stopping instance gets after SIGTERM before SIGKILL (seconds; default 10).
    #[serde(default)]
    pub stop_grace_seconds: Option<u64>,
}

/// The record of one instance, `instances/<id>/instance.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceRecord {
    id: String,
    group: GroupName,
    release: Release,
    port: u16,
    launched_ms: u64,
    image_dir: PathBuf,
    /// Written after the process started; a record without it is a launch that was interrupted.
    process: Option<ProcessHandle>,
    /// Set once the image this instance started from was found altered; sticky, because the instance
    /// may have loaded the altered files even after the image is unpacked afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    drift: Option<String>,
    /// The identity of the image tree at launch: a tree found at `image_dir` with another identity was
    /// unpacked afresh since, so this instance runs from one that was moved aside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    image_tree: Option<TreeId>,
    /// When the instance was taken out of traffic to be drained and stopped (ms on the agent's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stopping: Option<u64>,
}

/// What tells two directories at one path apart: device, inode and (where the file system records it)
/// birth time, so a reused inode number is not taken for the old tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TreeId {
    dev: u64,
    ino: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    born_ns: Option<u64>,
}

fn tree_id(dir: &Path) -> std::io::Result<TreeId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir)?;
    let born_ns = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_nanos()).ok());
    Ok(TreeId { dev: m.dev(), ino: m.ino(), born_ns })
}

/// Milliseconds since the Unix epoch (the agent's clock), for records written outside a tick.
fn clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The record of a group's balancer process, `groups/<group>/lb.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BalancerRecord {
    listen: SocketAddr,
    process: Option<ProcessHandle>,
}

/// Consecutive probe results of one instance, kept in memory: after a restart health is re-learnt.
#[derive(Clone, Debug, Default)]
struct HealthTrack {
    ok_streak: u64,
    fail_streak: u64,
    healthy_since: Option<u64>,
    last_failure: Option<(u64, String)>,
    /// Probes made since launch or since this agent started, for the planner's deadlines.
    probes: u64,
}

/// How long `prepare` waits for an image being made ready before answering `Pending`: long enough
/// for a small image from a local file, short enough that a large download never holds up the loop.
const PREPARE_WAIT: Duration = Duration::from_millis(100);

/// An image being fetched and unpacked on a thread of its own.
struct Preparing {
    version: String,
    done: mpsc::Receiver<Result<PreparedImage, StoreError>>,
}

pub struct LocalProvider {
    root: PathBuf,
    /// Shared with the threads that prepare images in the background (the store serialises work on
    /// one digest itself).
    store: Arc<ImageStore>,
    /// Images being prepared in the background, per digest.
    preparing: HashMap<Blake3Digest, Preparing>,
    settings: LocalSettings,
    /// The `stele` binary that runs balancers (`stele lb`).
    stele_exe: PathBuf,
    /// Per instance directory (unique across environments).
    health: HashMap<PathBuf, HealthTrack>,
    /// Background drains and stops, per instance directory.
    stoppers: HashMap<PathBuf, std::thread::JoinHandle<()>>,
    /// When each image directory was last re-hashed, and the verdict.
    drift: HashMap<PathBuf, (Instant, Option<String>)>,
    /// The healthy instances per group as last observed, which the balancer config is built from.
    healthy: HashMap<(EnvName, GroupName), Vec<String>>,
    /// Observe without side effects (`stele plan`): no balancer is started or reconfigured.
    dry_run: bool,
}

fn io_err<'a>(what: &str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ProviderError + 'a {
    let what = what.to_owned();
    move |e| ProviderError::Retryable(format!("{}: {what}: {e}", path.display()))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ProviderError> {
    let bytes = serde_json::to_vec_pretty(value).expect("records serialize");
    write_atomic(path, &bytes).map_err(|e| ProviderError::Retryable(e.to_string()))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, ProviderError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ProviderError::Refused(format!("{}: unreadable record: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// A short random instance id suffix.
fn random_suffix() -> String {
    use rand_core::RngCore;
    format!("{:08x}", rand_core::OsRng.next_u32())
}

impl LocalProvider {
    /// `root` is the agent's state directory; `stele_exe` the binary that runs `stele lb`.
    pub fn new(root: &Path, settings: LocalSettings, stele_exe: PathBuf) -> Result<Self, ProviderError> {
        // Records hold paths that processes with other working directories use.
        let root = &std::path::absolute(root).map_err(io_err("make absolute", root))?;
        let store = ImageStore::open(&root.join("store")).map_err(|e| ProviderError::Refused(e.to_string()))?;
        Ok(Self {
            root: root.to_owned(),
            store: Arc::new(store),
            preparing: HashMap::new(),
            settings,
            stele_exe,
            health: HashMap::new(),
            stoppers: HashMap::new(),
            drift: HashMap::new(),
            healthy: HashMap::new(),
            dry_run: false,
        })
    }

    /// A provider that only observes: for `stele plan`.
    pub fn dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }

    fn env_dir(&self, env: &EnvName) -> PathBuf {
        self.root.join("local").join(env.as_str())
    }

    fn group_dir(&self, env: &EnvName, group: &GroupName) -> PathBuf {
        self.env_dir(env).join("groups").join(group.as_str())
    }

    fn instance_dir(&self, env: &EnvName, id: &str) -> PathBuf {
        self.env_dir(env).join("instances").join(id)
    }

    fn stop_grace(&self) -> Duration {
        Duration::from_secs(self.settings.stop_grace_seconds.unwrap_or(10))
    }

    fn records(&self, env: &EnvName) -> Result<Vec<InstanceRecord>, ProviderError> {
        let dir = self.env_dir(env).join("instances");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io_err("list instances", &dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list instances", &dir))?;
            let Some(mut r) = read_json::<InstanceRecord>(&entry.path().join("instance.json"))? else { continue };
            if r.process.is_none() {
                // A launch interrupted between starting the process and recording it: adopt the
                // process if it runs, else forget the launch (nothing of it is left to stop).
                match find_by_environment(&r.id, &entry.path().join("data")) {
                    Some(handle) => {
                        tracing::warn!(%env, id = %r.id, pid = handle.pid, "adopting an instance whose launch was interrupted");
                        r.process = Some(handle);
                        write_json(&entry.path().join("instance.json"), &r)?;
                    }
                    None => {
                        tracing::warn!(%env, id = %r.id, "forgetting a launch that was interrupted before its process started");
                        std::fs::remove_dir_all(entry.path()).map_err(io_err("remove", &entry.path()))?;
                        continue;
                    }
                }
            }
            out.push(r);
        }
        out.sort_by(|a, b| (a.launched_ms, &a.id).cmp(&(b.launched_ms, &b.id)));
        Ok(out)
    }

    fn probe(check: &HealthCheck, port: u16) -> Result<(), String> {
        process::probe(check, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Re-hashes an image directory when its last check is older than the drift interval.
    fn drift_of(&mut self, dir: &Path, digest: &Blake3Digest) -> Option<String> {
        let every = Duration::from_secs(self.settings.drift_check_seconds.unwrap_or(30));
        if let Some((at, verdict)) = self.drift.get(dir) {
            if at.elapsed() < every {
                return verdict.clone();
            }
        }
        let verdict = match tree_digest(dir) {
            Ok(actual) if &actual == digest => None,
            Ok(actual) => Some(format!("files under {} no longer hash to {digest} (got {actual})", dir.display())),
            Err(e) => Some(format!("cannot re-hash {}: {e}", dir.display())),
        };
        if let Some(v) = &verdict {
            tracing::error!(dir = %dir.display(), "DRIFT: {v}");
            self.mark_drifted(dir, v);
        }
        self.drift.insert(dir.to_owned(), (Instant::now(), verdict.clone()));
        verdict
    }

    /// Marks every instance started from the tree now at `dir`, in every environment, as drifted, before
    /// any environment moves the tree aside: the mark is on each instance's record, so it survives the
    /// fresh unpack and an agent restart.
    fn mark_drifted(&self, dir: &Path, why: &str) {
        let current = tree_id(dir).ok();
        let Ok(envs) = std::fs::read_dir(self.root.join("local")) else { return };
        for env in envs.flatten() {
            let Ok(instances) = std::fs::read_dir(env.path().join("instances")) else { continue };
            for entry in instances.flatten() {
                let path = entry.path().join("instance.json");
                let Ok(Some(mut r)) = read_json::<InstanceRecord>(&path) else { continue };
                let same_tree = r.image_tree.is_none() || r.image_tree == current;
                if r.image_dir != dir || r.drift.is_some() || r.stopping.is_some() || !same_tree {
                    continue;
                }
                r.drift = Some(why.to_owned());
                if let Err(e) = write_json(&path, &r) {
                    tracing::warn!(record = %path.display(), "cannot mark an instance drifted: {e}");
                }
            }
        }
    }

    fn traffic(&self, env: &EnvName, group: &GroupName) -> Result<GroupTraffic, ProviderError> {
        Ok(read_json(&self.group_dir(env, group).join("traffic.json"))?
            .unwrap_or(GroupTraffic { traffic: Traffic::Even, since_ms: 0 }))
    }

    /// Makes sure the group's balancer runs, starting it if needed; returns its record.
    fn balancer(&self, env: &EnvName, group: &GroupName) -> Result<BalancerRecord, ProviderError> {
        let dir = self.group_dir(env, group);
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let record_path = dir.join("lb.json");
        let mut record = match read_json::<BalancerRecord>(&record_path)? {
            Some(r) => r,
            None => {
                let key = format!("{env}/{group}");
                let listen = match self.settings.listen.get(&key) {
                    Some(a) => *a,
                    None => {
                        SocketAddr::from(([127, 0, 0, 1], process::free_port().map_err(io_err("pick a port", &dir))?))
                    }
                };
                BalancerRecord { listen, process: None }
            }
        };
        if let Some(h) = &record.process {
            if process::liveness(h) == Liveness::Running {
                return Ok(record);
            }
            tracing::warn!(%env, %group, "load balancer is not running; starting it again");
        }
        let config_path = dir.join("lb-config.json");
        if !config_path.exists() {
            crate::lb::write_config(&config_path, &LbConfig { listen: record.listen, version: 1, backends: vec![] })
                .map_err(io_err("write", &config_path))?;
        }
        let spec = SpawnSpec {
            program: self.stele_exe.clone(),
            args: vec!["lb".into(), "--config".into(), config_path.display().to_string()],
            cwd: dir.clone(),
            env: vec![],
            log: dir.join("lb.log"),
        };
        let handle = process::spawn(&spec).map_err(io_err("start load balancer", &dir))?;
        record.process = Some(handle);
        write_json(&record_path, &record)?;
        tracing::info!(%env, %group, listen = %record.listen, "load balancer started");
        Ok(record)
    }

    /// Writes the balancer configuration for the group's current traffic and healthy instances, without
    /// those `exclude` names (leaving now); the balancer applies it within 100 ms and reports so.
    fn sync_balancer(&self, env: &EnvName, group: &GroupName, exclude: &[&str]) -> Result<(), ProviderError> {
        let lb = self.balancer(env, group)?;
        let dir = self.group_dir(env, group);
        let config_path = dir.join("lb-config.json");
        let traffic = self.traffic(env, group)?.traffic;
        let healthy = self.healthy.get(&(env.clone(), group.clone())).cloned().unwrap_or_default();
        let records: Vec<InstanceRecord> = self
            .records(env)?
            .into_iter()
            .filter(|r| &r.group == group && healthy.contains(&r.id) && !exclude.contains(&r.id.as_str()))
            .collect();
        let mut per_generation: BTreeMap<u64, usize> = BTreeMap::new();
        for r in &records {
            *per_generation.entry(r.release.generation).or_default() += 1;
        }
        let backends: Vec<Backend> = records
            .iter()
            .filter_map(|r| {
                let weight = match &traffic {
                    Traffic::Even => 100,
                    Traffic::Weighted(w) => {
                        let share = w.get(&r.release.generation).copied().unwrap_or(0);
                        let n = per_generation[&r.release.generation] as u32;
                        if share == 0 {
                            0
                        } else {
                            (share * 100 / n).max(1)
                        }
                    }
                };
                (weight > 0).then(|| Backend {
                    id: r.id.clone(),
                    addr: SocketAddr::from(([127, 0, 0, 1], r.port)),
                    weight,
                })
            })
            .collect();
        let old: Option<LbConfig> = read_json(&config_path)?;
        let version = match &old {
            Some(o) if o.backends == backends && o.listen == lb.listen => return Ok(()),
            Some(o) => o.version + 1,
            None => 1,
        };
        let cfg = LbConfig { listen: lb.listen, version, backends };
        crate::lb::write_config(&config_path, &cfg).map_err(io_err("write", &config_path))
    }

    /// Starts the background drain and stop of a `stopping` record unless one already runs.
    fn resume_stop(&mut self, env: &EnvName, r: &InstanceRecord) {
        let dir = self.instance_dir(env, &r.id);
        if self.stoppers.get(&dir).is_some_and(|t| !t.is_finished()) {
            return;
        }
        let job = stopper::StopJob {
            env: env.clone(),
            group: r.group.clone(),
            id: r.id.clone(),
            dir: dir.clone(),
            process: r.process.clone(),
            config: self.group_dir(env, &r.group).join("lb-config.json"),
            drain_until_ms: r.stopping.unwrap_or_else(clock_ms).saturating_add(stopper::DRAIN_LIMIT_MS),
            grace: self.stop_grace(),
        };
        match stopper::spawn(job) {
            Ok(handle) => {
                self.stoppers.insert(dir, handle);
            }
            Err(e) => tracing::warn!(%env, id = %r.id, "cannot start a stopper thread; retrying next tick: {e}"),
        }
    }

    /// The address clients use for a group (its balancer), if it has one.
    pub fn listen_addr(&self, env: &EnvName, group: &GroupName) -> Option<SocketAddr> {
        read_json::<BalancerRecord>(&self.group_dir(env, group).join("lb.json")).ok().flatten().map(|r| r.listen)
    }

    /// Collects garbage in the state directory and the image store (rules in [`gc`]). `keep`: the
    /// digests of every environment's target and last good release; `min_age`: zero on start, else
    /// [`gc::MIN_AGE`]. Does nothing in a dry run.
    pub fn collect_garbage(&self, keep: &std::collections::BTreeSet<Blake3Digest>, min_age: Duration) -> gc::GcReport {
        if self.dry_run {
            return gc::GcReport::default();
        }
        gc::collect(&self.root, &self.store, keep, min_age)
    }

    /// Stops every instance and balancer of an environment and removes its records (quickstart clean-up).
    pub fn destroy(&mut self, env: &EnvName) -> Result<(), ProviderError> {
        for r in self.records(env)? {
            if let Some(h) = &r.process {
                process::stop(h, self.stop_grace()).map_err(io_err("stop", &self.instance_dir(env, &r.id)))?;
            }
        }
        let groups = self.env_dir(env).join("groups");
        if let Ok(entries) = std::fs::read_dir(&groups) {
            for entry in entries.flatten() {
                if let Ok(Some(lb)) = read_json::<BalancerRecord>(&entry.path().join("lb.json")) {
                    if let Some(h) = &lb.process {
                        process::stop(h, Duration::from_secs(6)).map_err(io_err("stop", &entry.path()))?;
                    }
                }
            }
        }
        let dir = self.env_dir(env);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", &dir)(e)),
            _ => Ok(()),
        }
    }
}

/// The process started for instance `id`, found by the variables the agent gave it (used when the agent
/// died before recording the process).
fn find_by_environment(id: &str, data_dir: &Path) -> Option<ProcessHandle> {
    let want_id = format!("STELE_INSTANCE_ID={id}");
    let want_dir = format!("STELE_DATA_DIR={}", data_dir.display());
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else { continue };
        let mut vars = environ.split(|b| *b == 0);
        let (mut has_id, mut has_dir) = (false, false);
        for v in &mut vars {
            has_id |= v == want_id.as_bytes();
            has_dir |= v == want_dir.as_bytes();
        }
        if has_id && has_dir {
            return process::identify(pid).ok();
        }
    }
    None
}

/// The digest an unpacked image tree packs to; `pack` is reproducible, so an intact tree packs to the
/// digest of the artifact it came from.
fn tree_digest(dir: &Path) -> Result<Blake3Digest, String> {
    let mut hasher = blake3::Hasher::new();
    crate::image::pack_dir(dir, &mut hasher).map_err(|e| e.to_string())?;
    Ok(Blake3Digest(*hasher.finalize().as_bytes()))
}

impl Provider for LocalProvider {
    /// Fetches and unpacks in the background (one thread per image being prepared), so a large
    /// download or unpack of one environment's image never holds up the others: answers `Ready` once
    /// the store holds the verified image, `Pending` meanwhile, and the store's verdict when it fails.
    fn prepare(&mut self, _env: &EnvName, _spec: &Environment, release: &Release) -> Result<Readiness, ProviderError> {
        let Image::Artifact { uri, blake3, size } = &release.image else {
            return Err(ProviderError::Refused(format!(
                "release {} pins a machine image; the local provider runs artifacts (image.kind = \"artifact\")",
                release.version
            )));
        };
        if !self.preparing.contains_key(blake3) {
            // An unpacked tree found drifted is moved aside (its instances keep running from it until
            // replaced) so that replacements start from a fresh unpack of the verified blob.
            let dir = self.store.image_dir(blake3);
            if dir.exists() {
                if let Some(why) = self.drift_of(&dir.clone(), blake3) {
                    let aside = dir.with_extension(format!("drifted-{}", random_suffix()));
                    tracing::warn!(dir = %dir.display(), "moving a drifted image aside ({why})");
                    std::fs::rename(&dir, &aside).map_err(io_err("move aside", &dir))?;
                    self.store.discard_unpacked(blake3).map_err(|e| ProviderError::Retryable(e.to_string()))?;
                    self.drift.remove(&dir);
                }
            }
            let (done, answer) = mpsc::channel();
            let (store, uri, digest, size) = (Arc::clone(&self.store), uri.clone(), *blake3, *size);
            std::thread::Builder::new()
                .name(format!("stele-prepare-{}", &digest.to_hex()[..12]))
                .spawn(move || {
                    let _ = done.send(store.ensure(&uri, &digest, size));
                })
                .map_err(|e| ProviderError::Retryable(format!("cannot start a thread to prepare the image: {e}")))?;
            let job = Preparing { version: release.version.to_string(), done: answer };
            self.preparing.insert(*blake3, job);
        }
        let job = &self.preparing[blake3];
        let verdict = match job.done.recv_timeout(PREPARE_WAIT) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // No elapsed time in the text: it goes to the status, and a ticking number would be a
                // status commit per second.
                let why = format!(
                    "preparing the image of {} (blake3 {}) in the background",
                    job.version,
                    &blake3.to_hex()[..12]
                );
                return Ok(Readiness::Pending(why));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(ProviderError::Retryable(format!("the thread preparing image {blake3} ended without an answer")))
            }
            Ok(Ok(_)) => Ok(Readiness::Ready),
            Ok(Err(e)) if e.is_retryable() => Err(ProviderError::Retryable(e.to_string())),
            Ok(Err(e)) => {
                Err(ProviderError::Refused(format!("release {} (seq {}): {e}", release.version, release.seq)))
            }
        };
        self.preparing.remove(blake3);
        verdict
    }

    /// Restarts the balancer of any group whose balancer process died (a record says it ran): a few
    /// reads of /proc per group, cheap enough to run several times a second between ticks.
    fn heal(&mut self, env: &EnvName, spec: &Environment) -> Result<(), ProviderError> {
        if self.dry_run {
            return Ok(());
        }
        for g in &spec.groups {
            let record = read_json::<BalancerRecord>(&self.group_dir(env, &g.name).join("lb.json"))?;
            if record.and_then(|r| r.process).is_some_and(|h| process::liveness(&h) != Liveness::Running) {
                self.balancer(env, &g.name)?;
            }
        }
        Ok(())
    }

    fn observe(&mut self, env: &EnvName, spec: &Environment, now_ms: u64) -> Result<Observed, ProviderError> {
        let (stopping, records): (Vec<InstanceRecord>, Vec<InstanceRecord>) =
            self.records(env)?.into_iter().partition(|r| r.stopping.is_some());
        let mut instances = Vec::new();
        // Instances being drained and stopped: reported as such; a stop this agent did not start (it was
        // interrupted by a restart) or that failed is started again.
        self.stoppers.retain(|_, t| !t.is_finished());
        for r in &stopping {
            if !self.dry_run {
                self.resume_stop(env, r);
            }
            instances.push(Instance {
                id: r.id.clone(),
                group: r.group.clone(),
                generation: r.release.generation,
                digest: *r.release.digest(),
                launched_ms: r.launched_ms,
                health: Health::Stopping { since_ms: r.stopping.unwrap_or(now_ms) },
                drift: None,
            });
        }
        // Forget the probe history of instances that no longer exist here.
        let env_dir = self.env_dir(env);
        let present: std::collections::HashSet<PathBuf> =
            records.iter().map(|r| self.instance_dir(env, &r.id)).collect();
        self.health.retain(|dir, _| !dir.starts_with(&env_dir) || present.contains(dir));
        let threshold = match &spec.health {
            HealthCheck::Http { healthy_threshold, .. } | HealthCheck::Tcp { healthy_threshold, .. } => {
                (*healthy_threshold).max(1)
            }
        };
        // Probe every live instance in parallel: one slow instance must not delay the others' verdicts.
        let liveness: Vec<Liveness> = records
            .iter()
            .map(|r| match &r.process {
                Some(h) => process::liveness(h),
                None => Liveness::Gone("its launch was interrupted before the process was recorded".into()),
            })
            .collect();
        let probes: Vec<Option<Result<(), String>>> = std::thread::scope(|s| {
            let handles: Vec<_> = records
                .iter()
                .zip(&liveness)
                .map(|(r, l)| {
                    let check = &spec.health;
                    let port = r.port;
                    let alive = *l == Liveness::Running;
                    s.spawn(move || alive.then(|| Self::probe(check, port)))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(Some(Err("probe panicked".into())))).collect()
        });
        let mut probe_counts = BTreeMap::new();
        let mut healthy_by_group: HashMap<GroupName, Vec<String>> = HashMap::new();
        // An instance the balancer already serves was found healthy by a previous agent: it keeps that
        // verdict until `healthy_threshold` probes in a row fail, so adopting instances after a restart
        // never empties the balancer.
        let mut serving: HashMap<String, ()> = HashMap::new();
        for g in &spec.groups {
            let config = self.group_dir(env, &g.name).join("lb-config.json");
            if let Ok(Some(cfg)) = read_json::<LbConfig>(&config) {
                serving.extend(cfg.backends.into_iter().map(|b| (b.id, ())));
            }
        }
        for ((r, l), probe) in records.iter().zip(liveness).zip(probes) {
            let track = self.health.entry(self.instance_dir(env, &r.id)).or_insert_with(|| {
                if serving.contains_key(&r.id) {
                    HealthTrack { ok_streak: threshold, healthy_since: Some(now_ms), ..HealthTrack::default() }
                } else {
                    HealthTrack::default()
                }
            });
            if probe.is_some() {
                track.probes += 1;
            }
            probe_counts.insert(r.id.clone(), track.probes);
            let health = match (l, probe) {
                (Liveness::Gone(why), _) => Health::Gone { reason: why },
                (_, Some(Ok(()))) => {
                    track.ok_streak += 1;
                    track.fail_streak = 0;
                    if track.ok_streak >= threshold && track.healthy_since.is_none() {
                        track.healthy_since = Some(now_ms);
                    }
                    match track.healthy_since {
                        Some(since_ms) => Health::Healthy { since_ms },
                        None => Health::Starting,
                    }
                }
                (_, failed) => {
                    let why = match failed {
                        Some(Err(why)) => why,
                        _ => "not probed".into(),
                    };
                    track.ok_streak = 0;
                    track.fail_streak += 1;
                    if track.last_failure.is_none() {
                        track.last_failure = Some((now_ms, why.clone()));
                    }
                    if track.healthy_since.is_some() && track.fail_streak < threshold {
                        Health::Healthy { since_ms: track.healthy_since.unwrap_or(now_ms) }
                    } else {
                        track.healthy_since = None;
                        let since_ms = track.last_failure.as_ref().map_or(now_ms, |f| f.0);
                        Health::Unhealthy { since_ms, reason: why }
                    }
                }
            };
            if matches!(health, Health::Healthy { .. }) {
                track.last_failure = None;
                healthy_by_group.entry(r.group.clone()).or_default().push(r.id.clone());
            }
            let drift = if matches!(health, Health::Gone { .. }) {
                None
            } else if r.drift.is_some() {
                r.drift.clone()
            } else {
                let replaced = match (&r.image_tree, tree_id(&r.image_dir)) {
                    (Some(then), Ok(now)) if *then != now => Some(format!(
                        "the image tree it started from was replaced at {} since launch (a drifted tree is moved \
                         aside and unpacked afresh); it may run altered files",
                        r.image_dir.display()
                    )),
                    (Some(_), Err(e)) => Some(format!(
                        "the image tree it started from, {}, is gone since launch ({e})",
                        r.image_dir.display()
                    )),
                    _ => None,
                };
                let found = replaced.or_else(|| self.drift_of(&r.image_dir.clone(), r.release.digest()));
                if found.is_some() {
                    let mut marked = r.clone();
                    marked.drift = found.clone();
                    write_json(&self.instance_dir(env, &r.id).join("instance.json"), &marked)?;
                }
                found
            };
            instances.push(Instance {
                id: r.id.clone(),
                group: r.group.clone(),
                generation: r.release.generation,
                digest: *r.release.digest(),
                launched_ms: r.launched_ms,
                health,
                drift,
            });
        }
        let mut traffic = BTreeMap::new();
        for g in &spec.groups {
            self.healthy.insert((env.clone(), g.name.clone()), healthy_by_group.remove(&g.name).unwrap_or_default());
            // New healthy instances join, failed ones leave, without waiting for the balancer.
            if !self.dry_run {
                self.sync_balancer(env, &g.name, &[])?;
            }
            traffic.insert(g.name.clone(), self.traffic(env, &g.name)?);
        }
        Ok(Observed { instances, traffic, probes: Some(probe_counts) })
    }

    fn launch(
        &mut self,
        env: &EnvName,
        _spec: &Environment,
        group: &GroupName,
        release: &Release,
        now_ms: u64,
    ) -> Result<String, ProviderError> {
        let Image::Artifact { uri, blake3, size } = &release.image else {
            return Err(ProviderError::Refused("the local provider runs artifacts only".into()));
        };
        let image = self.store.ensure(uri, blake3, *size).map_err(|e| {
            if e.is_retryable() {
                ProviderError::Retryable(e.to_string())
            } else {
                ProviderError::Refused(e.to_string())
            }
        })?;
        let id = format!("{group}-g{}-{}", release.generation, random_suffix());
        let dir = self.instance_dir(env, &id);
        let data = dir.join("data");
        std::fs::create_dir_all(&data).map_err(io_err("create", &data))?;
        let port = process::free_port().map_err(io_err("pick a port", &dir))?;
        let mut record = InstanceRecord {
            id: id.clone(),
            group: group.clone(),
            release: release.clone(),
            port,
            launched_ms: now_ms,
            image_dir: image.dir.clone(),
            process: None,
            drift: None,
            image_tree: tree_id(&image.dir).ok(),
            stopping: None,
        };
        write_json(&dir.join("instance.json"), &record)?;
        let mut vars: Vec<(String, String)> = image.manifest.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.extend([
            ("STELE_PORT".to_owned(), port.to_string()),
            ("STELE_INSTANCE_ID".to_owned(), id.clone()),
            ("STELE_ENV".to_owned(), env.to_string()),
            ("STELE_GROUP".to_owned(), group.to_string()),
            ("STELE_VERSION".to_owned(), release.version.to_string()),
            ("STELE_GENERATION".to_owned(), release.generation.to_string()),
            ("STELE_IMAGE_DIR".to_owned(), image.dir.display().to_string()),
            ("STELE_DATA_DIR".to_owned(), data.display().to_string()),
        ]);
        let program = image.dir.join(&image.manifest.command);
        let handle = process::spawn(&SpawnSpec {
            program,
            args: image.manifest.args.clone(),
            cwd: data,
            env: vars,
            log: dir.join("log"),
        })
        .map_err(|e| ProviderError::Retryable(format!("{id}: cannot start {}: {e}", image.manifest.command)))?;
        record.process = Some(handle);
        write_json(&dir.join("instance.json"), &record)?;
        tracing::info!(%env, %group, %id, port, version = %release.version, generation = release.generation, "launched");
        Ok(id)
    }

    fn terminate(&mut self, env: &EnvName, group: &GroupName, id: &str) -> Result<(), ProviderError> {
        self.terminate_all(env, group, &[id.to_owned()])
    }

    /// Out of the balancer first (one configuration change for the whole batch), then the drain and
    /// the stop run in the background: each record is marked `stopping` first, so an agent restart
    /// resumes the stop, and `observe` reports the instance as stopping until its record is removed.
    fn terminate_all(&mut self, env: &EnvName, group: &GroupName, ids: &[String]) -> Result<(), ProviderError> {
        let mut records = Vec::new();
        for id in ids {
            let path = self.instance_dir(env, id).join("instance.json");
            if let Some(mut record) = read_json::<InstanceRecord>(&path)? {
                if record.stopping.is_none() {
                    record.stopping = Some(clock_ms());
                    write_json(&path, &record)?;
                }
                records.push(record);
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        let leaving: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        if let Some(list) = self.healthy.get_mut(&(env.clone(), group.clone())) {
            list.retain(|x| !leaving.contains(&x.as_str()));
        }
        self.sync_balancer(env, group, &leaving)?;
        for r in &records {
            self.resume_stop(env, r);
        }
        Ok(())
    }

    fn set_traffic(
        &mut self,
        env: &EnvName,
        group: &GroupName,
        traffic: &Traffic,
        now_ms: u64,
    ) -> Result<(), ProviderError> {
        let dir = self.group_dir(env, group);
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        write_json(&dir.join("traffic.json"), &GroupTraffic { traffic: traffic.clone(), since_ms: now_ms })?;
        // Not waiting for the balancer to apply it: an instance leaves only once the balancer reports a
        // config without it (the stopper checks), so nothing waits here on a slow or dead balancer.
        self.sync_balancer(env, group, &[])?;
        tracing::info!(%env, %group, %traffic, "traffic moved");
        Ok(())
    }
}
