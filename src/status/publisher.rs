//! Publishing status off the agent's convergence path: [`StatusPublisher`] owns a
//! [`StatusWriter`] on a thread of its own. The agent hands it statuses with [`StatusPublisher::submit`],
//! which never waits on Git; the thread writes whatever is queued as one chain of commits in one push
//! and retries a failed round after a bounded, jittered backoff, for as long as the agent runs.
//!
//! Rules:
//! - **Nothing is lost while the agent runs.** A retryable failure puts the statuses back at the head
//!   of the queue and tries again after a bounded, jittered pause: `min(250 ms × 2^(n-1), 10 s)`,
//!   drawn between half and all of it, when the remote is unreachable; `min(50 ms × 2^(n-1), 1 s)`,
//!   drawn anywhere below it, when other writers kept winning the race for the branch (the writer
//!   itself already retried 5 times, from 25 ms). There is no limit on rounds; only the queue is
//!   bounded.
//! - **A bounded queue.** Past [`MAX_QUEUED`] statuses (a remote down for long), every environment's
//!   queued statuses are coalesced into its latest, and the count of superseded ones is kept.
//! - **A failure a human must fix** (an unreadable status file of an environment, a refused branch)
//!   drops only the statuses it concerns, logged as an error; the others are still written.
//! - **Shutdown flushes, within a budget.** Dropping the publisher waits up to [`FLUSH_BUDGET`] for
//!   the queue to be written, then leaves whatever is left (logged): a stopping agent never hangs on
//!   an unreachable remote, and a restarted agent re-derives its status from what it observes.
//!
//! Must not touch: what a status says; it writes what it is handed, in order.

use super::writer::{random_u64, StatusWriter, WriterStats};
use super::{status_path, EnvStatus, StatusError, STATUS_DIR};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How many statuses may wait before each environment's are coalesced into its latest.
pub const MAX_QUEUED: usize = 64;
/// How long dropping a publisher waits for its queue to be written.
pub const FLUSH_BUDGET: Duration = Duration::from_secs(10);
/// Why a round failed in a way worth retrying, which decides how long to wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setback {
    /// The remote could not be reached or refused for a passing reason: give it time.
    Unreachable,
    /// Other writers kept winning the race for the branch: the remote is fine, come back soon, at a
    /// random moment so the losers do not collide again.
    Contended,
}

/// What a publisher did since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Statuses handed to [`StatusPublisher::submit`].
    pub submitted: u64,
    /// Queued statuses superseded by a later one of their environment before they could be written
    /// (only when the queue overflowed).
    pub coalesced: u64,
    /// Rounds: each writes everything queued at its start.
    pub rounds: u64,
    /// Rounds that failed retryably and were tried again after a backoff.
    pub retries: u64,
    /// Statuses given up for good because a human must act (a corrupt file, a refused branch).
    pub dropped: u64,
    /// The writer's own counts: offers (pushes), lost races, commits.
    pub writer: WriterStats,
}

struct State {
    /// Statuses not yet written, oldest first.
    queue: Vec<EnvStatus>,
    /// How many statuses the thread is writing now.
    in_flight: usize,
    closing: bool,
    stats: PublisherStats,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic on the publishing thread must not take the agent down with it.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Writes statuses to the status branch on a thread of its own (see the module documentation).
pub struct StatusPublisher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl StatusPublisher {
    /// Starts the publishing thread, which owns `writer`.
    pub fn start(writer: StatusWriter) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: Vec::new(),
                in_flight: 0,
                closing: false,
                stats: PublisherStats::default(),
            }),
            changed: Condvar::new(),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("stele-status".into())
                .spawn(move || publish_loop(&shared, writer))
                .expect("the OS can start a thread")
        };
        Self { shared, thread: Some(thread) }
    }

    /// Queues `status` to be written and returns at once: it never waits on Git.
    pub fn submit(&self, status: EnvStatus) {
        let mut state = self.shared.lock();
        state.queue.push(status);
        state.stats.submitted += 1;
        if state.queue.len() > MAX_QUEUED {
            let before = state.queue.len();
            coalesce(&mut state.queue);
            state.stats.coalesced += (before - state.queue.len()) as u64;
        }
        self.shared.changed.notify_all();
    }

    /// Waits until everything submitted so far is written or given up, at most `budget`; whether it
    /// all was.
    pub fn flush(&self, budget: Duration) -> bool {
        let deadline = Instant::now() + budget;
        let mut state = self.shared.lock();
        while !state.queue.is_empty() || state.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.shared.changed.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    pub fn stats(&self) -> PublisherStats {
        self.shared.lock().stats
    }
}

impl Drop for StatusPublisher {
    /// Flushes within [`FLUSH_BUDGET`], then stops the thread, or leaves it behind when it is stuck on
    /// the network (it ends with the process).
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.changed.notify_all();
        let flushed = self.flush(FLUSH_BUDGET);
        let s = self.stats();
        tracing::info!(
            submitted = s.submitted,
            commits = s.writer.commits,
            pushes = s.writer.offers,
            lost_races = s.writer.lost_races,
            retried_rounds = s.retries,
            coalesced = s.coalesced,
            dropped = s.dropped,
            "status publisher stopped"
        );
        if flushed {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        } else {
            let left = self.shared.lock().queue.len();
            tracing::warn!(
                unwritten = left,
                budget_s = FLUSH_BUDGET.as_secs(),
                "status not all written before stopping; the next agent run writes what it observes then"
            );
        }
    }
}

fn publish_loop(shared: &Shared, mut writer: StatusWriter) {
    let mut failures: u32 = 0;
    loop {
        let batch = {
            let mut state = shared.lock();
            while state.queue.is_empty() && !state.closing {
                state = shared.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.queue.is_empty() {
                return;
            }
            let batch = std::mem::take(&mut state.queue);
            state.in_flight = batch.len();
            batch
        };
        let outcome = writer.publish_all(&batch);
        let mut state = shared.lock();
        state.stats.rounds += 1;
        state.stats.writer = writer.stats();
        state.in_flight = 0;
        let mut pause = None;
        match outcome {
            Ok(_) => failures = 0,
            Err(e) if e.is_retryable() => {
                failures += 1;
                state.stats.retries += 1;
                let setback = match e {
                    StatusError::Contended { .. } => Setback::Contended,
                    _ => Setback::Unreachable,
                };
                let delay = retry_delay(setback, failures);
                tracing::warn!(
                    queued = batch.len(),
                    retry_in_ms = delay.as_millis() as u64,
                    "status not written yet; retrying: {e}"
                );
                let newer = std::mem::replace(&mut state.queue, batch);
                state.queue.extend(newer);
                if state.queue.len() > MAX_QUEUED {
                    let before = state.queue.len();
                    coalesce(&mut state.queue);
                    state.stats.coalesced += (before - state.queue.len()) as u64;
                }
                pause = Some(delay);
            }
            Err(e) => {
                failures = 0;
                // Only what the error concerns is given up; the rest goes again at once.
                let (dropped, kept): (Vec<EnvStatus>, Vec<EnvStatus>) =
                    batch.into_iter().partition(|s| concerns(&e, s));
                tracing::error!(dropped = dropped.len(), "status not written; a human must act: {e}");
                state.stats.dropped += dropped.len() as u64;
                let newer = std::mem::replace(&mut state.queue, kept);
                state.queue.extend(newer);
            }
        }
        shared.changed.notify_all();
        drop(state);
        if let Some(delay) = pause {
            std::thread::sleep(delay);
        }
    }
}

/// Whether a non-retryable `error` stops `status` from being written: a corrupt file stops only its
/// own environment's (or all, when the status directory itself is corrupt); anything else stops all.
fn concerns(error: &StatusError, status: &EnvStatus) -> bool {
    match error {
        StatusError::Corrupt { file, .. } => file == STATUS_DIR || *file == status_path(&status.env),
        _ => true,
    }
}

/// Keeps only the latest status of each environment, in the order of those latest ones.
fn coalesce(queue: &mut Vec<EnvStatus>) {
    let mut seen = std::collections::BTreeSet::new();
    let mut kept: Vec<EnvStatus> =
        std::mem::take(queue).into_iter().rev().filter(|s| seen.insert(s.env.clone())).collect();
    kept.reverse();
    *queue = kept;
}

/// The pause after the `failures`-th failed round in a row. The ceiling doubles from a first value
/// up to a bound: 250 ms up to 10 s when the remote is unreachable, 50 ms up to 1 s when other
/// writers won the races. The pause is then drawn at random: between half and all of the ceiling
/// when unreachable, anywhere below it when contended ("full jitter", which spreads a crowd of
/// writers best).
fn retry_delay(setback: Setback, failures: u32) -> Duration {
    let (first_ms, max_ms, floor) = match setback {
        Setback::Unreachable => (250u64, 10_000u64, 2),
        Setback::Contended => (50, 1_000, u64::MAX),
    };
    let ceiling = (first_ms << failures.clamp(1, 16).saturating_sub(1)).min(max_ms);
    let least = ceiling.checked_div(floor).unwrap_or(0);
    Duration::from_millis(least + random_u64() % (ceiling - least + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::sample;

    #[test]
    fn retry_delays_grow_are_jittered_and_bounded() {
        let table = [
            // (setback, failures in a row, least ms, most ms)
            (Setback::Unreachable, 1, 125, 250),
            (Setback::Unreachable, 2, 250, 500),
            (Setback::Unreachable, 6, 4_000, 8_000),
            (Setback::Unreachable, 7, 5_000, 10_000),
            (Setback::Unreachable, 1_000, 5_000, 10_000),
            (Setback::Contended, 1, 0, 50),
            (Setback::Contended, 3, 0, 200),
            (Setback::Contended, 5, 0, 800),
            (Setback::Contended, 6, 0, 1_000),
            (Setback::Contended, 1_000, 0, 1_000),
        ];
        for (setback, failures, least, most) in table {
            for _ in 0..200 {
                let d = retry_delay(setback, failures).as_millis() as u64;
                assert!((least..=most).contains(&d), "{setback:?} {failures}: {d} ms not in {least}..={most}");
            }
        }
        let spread: std::collections::BTreeSet<_> = (0..50).map(|_| retry_delay(Setback::Unreachable, 3)).collect();
        assert!(spread.len() > 10, "jittered: {spread:?}");
    }

    #[test]
    fn coalescing_keeps_each_environments_latest_in_order() {
        let at = |env: &str, generation: u64| {
            let mut s = sample();
            s.env = env.parse().unwrap();
            s.target_generation = generation;
            s
        };
        let mut queue = vec![at("a", 1), at("b", 1), at("a", 2), at("c", 1), at("b", 2)];
        coalesce(&mut queue);
        let got: Vec<(String, u64)> = queue.iter().map(|s| (s.env.to_string(), s.target_generation)).collect();
        assert_eq!(got, [("a".to_owned(), 2), ("c".to_owned(), 1), ("b".to_owned(), 2)]);
    }

    #[test]
    fn a_corrupt_file_concerns_only_its_environment() {
        let corrupt =
            |file: &str| StatusError::Corrupt { file: file.into(), commit: "0".repeat(40), reason: "x".into() };
        let s = sample();
        assert!(concerns(&corrupt("status/staging.json"), &s));
        assert!(!concerns(&corrupt("status/prod.json"), &s));
        assert!(concerns(&corrupt("status"), &s));
        assert!(concerns(&StatusError::Refused { location: "x".into(), reason: "y".into() }, &s));
    }
}
