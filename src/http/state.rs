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
    pub environments: Vec<EnvStatus>,
}

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
