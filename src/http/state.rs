//! What the agent shares with its HTTP surface: the metrics, the latest view of every environment,
//! liveness and readiness, and the request for a sync that a webhook makes.
//!
//! Owns: that shared state and its locking (short critical sections, never held across I/O). The agent
//! writes it after each pass and sync; HTTP handlers only read it, except `request_sync`. Must not:
//! decide anything, or block the agent's loop.

use super::metrics::Metrics;
use crate::status::EnvStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the page and `/api/status` show.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub agent_id: String,
    /// Ledger id and the verified commit the agent acts on.
    pub ledger: Option<String>,
    /// When the ledger was last fetched and verified (RFC 3339).
    pub last_poll: Option<String>,
    /// Why the ledger is stalled, while it is.
    pub ledger_stall: Option<String>,
    /// The verified commit the agent acts on (the audit timeline of the page is read up to it).
    pub verified_commit: Option<String>,
    pub environments: Vec<EnvStatus>,
}

/// Computes the audit timeline (`stele audit --json`) up to a verified commit, for the page. Given by
/// the command that starts the agent, so this layer does not reach up into the commands.
pub type TimelineFn = dyn Fn(&str) -> Result<serde_json::Value, String> + Send + Sync;

pub struct Shared {
    pub metrics: Metrics,
    view: Mutex<View>,
    ready: AtomicBool,
    started: Instant,
    last_pass: Mutex<Option<Instant>>,
    /// The loop counts as wedged when no pass finished for this long.
    wedged_after: Duration,
    sync_requested: AtomicBool,
    /// Wakes the loop for a requested sync.
    pub wake: tokio::sync::Notify,
    /// The branch the agent follows (what a push must name to trigger a sync), once the ledger source
    /// is open.
    branch: std::sync::OnceLock<String>,
    timeline: std::sync::OnceLock<std::sync::Arc<TimelineFn>>,
    /// The last timeline computed, by commit: replaying the history once per new head, not per view.
    timeline_cache: Mutex<Option<(String, serde_json::Value)>>,
}

impl Shared {
    pub fn new(metrics: Metrics, agent_id: String, wedged_after: Duration) -> Self {
        Shared {
            metrics,
            view: Mutex::new(View { agent_id, ..View::default() }),
            ready: AtomicBool::new(false),
            started: Instant::now(),
            last_pass: Mutex::new(None),
            wedged_after,
            sync_requested: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            branch: std::sync::OnceLock::new(),
            timeline: std::sync::OnceLock::new(),
            timeline_cache: Mutex::new(None),
        }
    }

    pub fn set_timeline(&self, f: std::sync::Arc<TimelineFn>) {
        let _ = self.timeline.set(f);
    }

    /// The audit timeline up to `commit` (cached per commit); `None` when no timeline function was
    /// given or it failed (logged).
    pub fn timeline(&self, commit: &str) -> Option<serde_json::Value> {
        let f = self.timeline.get()?;
        if let Some((c, v)) = &*self.timeline_cache.lock().unwrap_or_else(|p| p.into_inner()) {
            if c == commit {
                return Some(v.clone());
            }
        }
        match f(commit) {
            Ok(v) => {
                *self.timeline_cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((commit.to_owned(), v.clone()));
                Some(v)
            }
            Err(e) => {
                tracing::warn!("the page's audit timeline could not be read: {e}");
                None
            }
        }
    }

    pub fn set_branch(&self, branch: String) {
        let _ = self.branch.set(branch);
    }

    /// The followed branch, once known.
    pub fn branch(&self) -> Option<&str> {
        self.branch.get().map(String::as_str)
    }

    pub fn view(&self) -> View {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn update_view(&self, change: impl FnOnce(&mut View)) {
        change(&mut self.view.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The first verified sync is done: the agent knows what should run.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn pass_finished(&self) {
        *self.last_pass.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// `Ok` while the loop is alive; otherwise why not.
    pub fn alive(&self) -> Result<(), String> {
        let last = *self.last_pass.lock().unwrap_or_else(|p| p.into_inner());
        let since = last.unwrap_or(self.started).elapsed();
        if since <= self.wedged_after {
            return Ok(());
        }
        Err(match last {
            None => format!("wedged: no pass has finished since the start {}s ago", since.as_secs()),
            Some(_) => format!(
                "wedged: the last pass finished {}s ago (limit {}s)",
                since.as_secs(),
                self.wedged_after.as_secs()
            ),
        })
    }

    /// Asks the loop for a sync as soon as possible; requests made before it starts coalesce into one.
    pub fn request_sync(&self) {
        self.sync_requested.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Takes the pending request, if any.
    pub fn take_sync_request(&self) -> bool {
        self.sync_requested.swap(false, Ordering::SeqCst)
    }
}
