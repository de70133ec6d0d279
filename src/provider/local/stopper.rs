//! Background drains and stops of the local provider's instances, one thread per instance, so the
//! agent's loop never waits on a slow or hung instance (DESIGN.md invariant 5).
//!
//! Owns: the order of a stop once an instance's record is marked `stopping` — wait until the
//! balancer reports a config without the instance and no open connection to it (at most
//! [`DRAIN_LIMIT_MS`] after it was marked), stop its process group with grace, then remove its
//! directory. Must not decide what to stop or touch balancer configs: `mod.rs` marks the record and
//! takes the instance out of the balancer before a job starts. A job interrupted by an agent restart
//! is started again from the record, with the drain deadline counted from the same mark.

use super::process::{self, ProcessHandle};
use super::read_json;
use crate::lb::LbConfig;
use ledger_format::types::{EnvName, GroupName};
use std::path::PathBuf;
use std::time::Duration;

/// How long open connections get to finish before the instance is stopped anyway.
pub(super) const DRAIN_LIMIT_MS: u64 = 10_000;

/// How often a drain looks at the balancer's report.
const DRAIN_POLL: Duration = Duration::from_millis(25);

/// One instance to drain and stop.
pub(super) struct StopJob {
    pub env: EnvName,
    pub group: GroupName,
    pub id: String,
    /// The instance's directory, removed once its process group is gone.
    pub dir: PathBuf,
    pub process: Option<ProcessHandle>,
    /// The group's balancer config (its report lives next to it).
    pub config: PathBuf,
    pub drain_until_ms: u64,
    pub grace: Duration,
}

pub(super) fn spawn(job: StopJob) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("stop {}", job.id)).spawn(move || job.run())
}

impl StopJob {
    fn run(self) {
        let Self { env, group, id, dir, process, config, drain_until_ms, grace } = self;
        if !drained(&config, &id, drain_until_ms) {
            tracing::warn!(%env, %group, %id, "connections still open after the drain limit; stopping anyway");
        }
        if let Some(h) = &process {
            if let Err(e) = process::stop(h, grace) {
                // The record stays `stopping`; the next observe starts the stop again.
                tracing::error!(%env, %group, %id, "cannot stop: {e}");
                return;
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(%env, %group, %id, "terminated"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(%env, %group, %id, dir = %dir.display(), "stopped, but cannot remove: {e}"),
        }
    }
}

/// Waits until the balancer runs a config without `id` and holds no connection to it, or until
/// `until_ms`; true when drained.
fn drained(config: &std::path::Path, id: &str, until_ms: u64) -> bool {
    loop {
        let current = read_json::<LbConfig>(config).ok().flatten();
        let report = crate::lb::read_report(config).ok().flatten();
        match (current, report) {
            (Some(c), Some(r)) if !c.backends.iter().any(|b| b.id == id) && r.has_drained(id, c.version) => {
                return true
            }
            (None, _) => return true,
            _ => {}
        }
        if super::clock_ms() >= until_ms {
            return false;
        }
        std::thread::sleep(DRAIN_POLL);
    }
}
