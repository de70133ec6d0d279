//! The agent: polls the ledger, converges every managed environment one step per tick, and writes
//! what it observes back to the status branch. `stele agent` runs it; `--once` runs it until every
//! environment settles.
//!
//! Owns: the loop and its timing (poll interval with jitter, fast ticks while something converges,
//! a watch tick at the health interval once converged, balancer repairs between ticks, backoff after
//! retryable failures), the classification of every failure as stalled, waiting or
//! retryable, shutdown on SIGTERM/SIGINT between steps, and the gate memory on disk
//! (`<state-dir>/agent/<env>.json`). Must not verify (that is `sync`), plan (`plan`) or touch instances
//! directly (`provider`).

use crate::http::metrics::Metrics;
use crate::http::state::Shared;
use crate::plan::Release;
use crate::provider::local::LocalSettings;
use crate::status::Phase;
use anyhow::{Context, Result};
use ledger_format::history::{EnvHistory, Link, TrustAnchor};
use ledger_format::types::EnvName;
use ledger_format::Timestamp;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod identity;
mod providers;
#[cfg(any(test, feature = "sim"))]
pub mod simulation;
pub mod suspend;
mod worker;

pub(crate) use providers::Providers;
pub use worker::{load_memory, Worker};

/// The agent's validated settings (from the configuration file and flags).
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub repo: String,
    pub branch: Option<String>,
    pub state_dir: PathBuf,
    pub anchor: Option<TrustAnchor>,
    /// Environments to manage; empty means every environment of the ledger.
    pub envs: Vec<EnvName>,
    pub interval: Duration,
    /// Where and how status is written, or `None` to not write status.
    pub status: Option<StatusConfig>,
    pub agent_id: String,
    pub local: LocalSettings,
    pub aws: crate::provider::AwsSettings,
    pub gcp: crate::provider::GcpSettings,
    /// The binary that runs `stele lb`.
    pub stele_exe: PathBuf,
    /// The HTTP surface (`[http]`, `--http-listen`); off when `None`.
    pub http: Option<crate::http::HttpSettings>,
    /// Where notifications go (`[[notify]]`).
    pub notify: Vec<crate::notify::NotifyTarget>,
    /// The operator's freshness floor (`floor_commit`, `floor_generations`): a head below it stalls.
    pub floor: crate::sync::Floor,
    /// How the page reads the audit timeline (given by `stele agent`; none: no timeline on the page).
    pub timeline: Option<Timeline>,
}

/// Where the agent writes status, and with which key.
#[derive(Clone, Debug)]
pub struct StatusConfig {
    /// The full ref: `refs/stele/status/<agent-id>` for an agent with a key (or `status_ref`),
    /// `refs/heads/<status_branch>` (default `stele/status`, shared, unsigned) without one.
    pub refname: String,
    /// The agent's own key (`key_file`): every status file is then a signed status document.
    pub identity: Option<identity::Identity>,
}

/// A function from a verified commit to its audit timeline (see `http::state::TimelineFn`).
#[derive(Clone)]
pub struct Timeline(pub Arc<crate::http::state::TimelineFn>);

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Timeline")
    }
}

/// How a pass ended, for `--once` and the loop's timing.
#[derive(Clone, Debug, Default)]
pub struct PassSummary {
    pub phases: BTreeMap<EnvName, Phase>,
    /// True when every managed environment has nothing left to do (converged, degraded and restored,
    /// or stalled).
    pub settled: bool,
    /// The shortest useful delay before the next tick while something converges.
    pub tick: Option<Duration>,
    /// How often converged environments are still watched (observed and planned, without a ledger
    /// fetch): the shortest health interval among them, so a dead instance is replaced per the plan
    /// between polls.
    pub watch: Option<Duration>,
    pub retryable_failure: bool,
    /// The ledger is stalled (a refused commit, a rewrite, a head below the floor).
    pub ledger_stalled: bool,
    /// The agent must stop: its configuration is unsafe under the verified policy (its key is in a
    /// role). Nothing was acted on in this pass.
    pub fatal: Option<String>,
}

/// Milliseconds since the Unix epoch: the planner's clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(crate) fn timestamp_of_ms(ms: u64) -> Timestamp {
    Timestamp::from_unix((ms / 1000) as i64).expect("the clock is between 1970 and 9999")
}

pub fn release_of(h: &EnvHistory) -> Option<Release> {
    h.target.as_ref().map(|t: &Link| Release {
        generation: h.generation,
        version: t.version.clone(),
        seq: t.seq,
        image: t.image.clone(),
    })
}

/// Exit codes of `stele agent --once` (also in `exit.rs`).
pub fn once_code(summary: &PassSummary) -> u8 {
    if summary.ledger_stalled || summary.phases.values().any(|p| *p == Phase::Stalled) {
        crate::exit::VERIFY_FAILED
    } else if summary.phases.values().any(|p| *p == Phase::Degraded) {
        crate::exit::DEGRADED
    } else {
        crate::exit::OK
    }
}

/// Runs the agent until a signal (or, with `once`, until every environment settles or `timeout`).
pub fn run(cfg: AgentConfig, once: bool, timeout: Duration) -> Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(cfg, once, timeout))
}

async fn run_async(cfg: AgentConfig, once: bool, timeout: Duration) -> Result<u8> {
    let stop = Arc::new(AtomicBool::new(false));
    let notify = Arc::new(tokio::sync::Notify::new());
    {
        let (stop, notify) = (stop.clone(), notify.clone());
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler can be installed");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutdown requested; finishing the current step");
            stop.store(true, Ordering::SeqCst);
            notify.notify_waiters();
        });
    }
    let interval = cfg.interval;
    let started = Instant::now();
    // Liveness: a pass is due at least every poll interval; three missed ones mean a wedged loop.
    let wedged_after = interval * 3 + Duration::from_secs(30);
    let build = crate::build_info::build_info();
    let shared = Arc::new(Shared::new(Metrics::new(&build.version, &build.commit), cfg.agent_id.clone(), wedged_after));
    if let Some(t) = &cfg.timeline {
        shared.set_timeline(t.0.clone());
    }
    if let Some(http) = cfg.http.clone() {
        let listener = crate::http::bind(&http).await?;
        let secret = http.hook_secret_file.as_deref().map(crate::http::read_secret).transpose()?;
        tracing::info!(listen = %listener.local_addr()?, "HTTP surface: /metrics /healthz /readyz /api/status /hooks/*");
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::http::serve(listener, &http, secret, shared).await {
                tracing::error!("the HTTP surface stopped: {e}");
            }
        });
    }
    let mut worker = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || Worker::new(cfg, shared)).await??
    };
    shared.set_branch(worker.branch());
    tracing::info!(interval_s = interval.as_secs_f64(), "agent started");
    let mut first = true;
    let mut backoff = Duration::from_millis(500);
    let (mut busy, mut passes) = (Duration::ZERO, 0u64);
    loop {
        let pass_started = Instant::now();
        let force = first || shared.take_sync_request();
        let (w, summary) = tokio::task::spawn_blocking(move || {
            let s = worker.pass(force);
            (worker, s)
        })
        .await?;
        busy += pass_started.elapsed();
        passes += 1;
        worker = w;
        first = false;
        if let Some(why) = summary.fatal {
            return Err(crate::exit::Refused(why).into());
        }
        if stop.load(Ordering::SeqCst) {
            tracing::info!("stopped between steps; instances keep running and are adopted on restart");
            return Ok(crate::exit::OK);
        }
        if once && summary.settled && !summary.retryable_failure {
            // Where the time went: passes (fetch, verify, observe, plan, act) versus sleeping between
            // ticks while health checks, pauses and grace periods ran.
            tracing::info!(
                elapsed_s = started.elapsed().as_secs_f64(),
                busy_s = busy.as_secs_f64(),
                passes,
                peak_rss_kib = peak_rss_kib(),
                phases = %phases_line(&summary.phases),
                "settled"
            );
            return Ok(once_code(&summary));
        }
        if once && started.elapsed() > timeout {
            tracing::error!(
                phases = %phases_line(&summary.phases),
                "--once timed out before every environment settled"
            );
            return Ok(crate::exit::TIMED_OUT);
        }
        // Converging: the next tick at the health interval. Converged: a watch tick at the health
        // interval, or the poll when it comes first. Between ticks, balancers are repaired every
        // HEAL_EVERY, so a dead one is back within about that long whatever the intervals.
        let delay = if summary.retryable_failure {
            backoff = (backoff * 2).min(Duration::from_secs(30));
            backoff
        } else {
            backoff = Duration::from_millis(500);
            match summary.tick.or(summary.watch) {
                Some(t) => t.min(worker.until_sync()),
                None => worker.until_sync(),
            }
        };
        let wake = Instant::now() + delay;
        loop {
            let left = wake.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut hooked = false;
            tokio::select! {
                _ = tokio::time::sleep(left.min(HEAL_EVERY)) => {}
                _ = notify.notified() => {}
                _ = shared.wake.notified() => hooked = true,
            }
            if hooked {
                // A webhook asked for a sync: run the pass now.
                break;
            }
            if stop.load(Ordering::SeqCst) {
                tracing::info!("stopped between steps; instances keep running and are adopted on restart");
                return Ok(crate::exit::OK);
            }
            worker = tokio::task::spawn_blocking(move || {
                worker.heal();
                worker
            })
            .await?;
        }
    }
}

/// `prod=Healthy, qa=Progressing`: phases for a log line.
fn phases_line(phases: &BTreeMap<EnvName, Phase>) -> String {
    phases.iter().map(|(env, phase)| format!("{env}={phase}")).collect::<Vec<_>>().join(", ")
}

/// How often, between ticks, dead balancers are looked for and restarted.
const HEAL_EVERY: Duration = Duration::from_millis(200);

/// The process's peak resident memory (VmHWM), in KiB; 0 when /proc cannot tell.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// The poll interval ±10%, so many agents polling one remote spread out.
pub(crate) fn jitter(d: Duration) -> Duration {
    use rand_core::RngCore;
    let spread = d.as_millis() as u64 / 10;
    if spread == 0 {
        return d;
    }
    let offset = rand_core::OsRng.next_u64() % (2 * spread + 1);
    Duration::from_millis(d.as_millis() as u64 - spread + offset)
}

/// The default agent id: host name and state directory.
pub fn default_agent_id(state_dir: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    format!("{}:{}", if host.is_empty() { "localhost" } else { &host }, state_dir.display())
}
