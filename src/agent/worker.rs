//! One agent pass: sync the ledger when due, then one tick per managed environment, building each
//! environment's status and handing it to the publisher. Also the gate memory on disk
//! (`<state-dir>/agent/<env>.json`) and garbage collection of the local provider.
//!
//! Owns: what a pass does, in order, and how its outcomes become phases and messages. Must not: sleep
//! or decide when the next pass runs (that is `agent::run`), verify, plan or touch instances directly.

use super::{jitter, now_ms, release_of, suspend, timestamp_of_ms, AgentConfig, PassSummary, Providers};
use crate::converge::{self, Memory};
use crate::http::metrics::EnvFigures;
use crate::http::state::Shared;
use crate::notify::{Event, EventKind, Notifier};
use crate::plan::{Health, Observed, Phase as PlanPhase};
use crate::provider::ProviderError;
use crate::repo::write_atomic;
use crate::status::{
    EnvStatus, InstanceStatus, Phase, StatusPublisher, StatusWriter, Suspension, TargetStatus, FORMAT,
};
use crate::sync::{LedgerSync, SyncStatus};
use anyhow::{Context, Result};
use ledger_format::types::EnvName;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The health of an instance as a metric label: its first word (`healthy`, `starting`, `unhealthy`,
/// `gone`, `stopping`), without the reason.
fn health_word(health: &str) -> String {
    health.split(|c: char| c == ':' || c.is_whitespace()).next().unwrap_or(health).to_owned()
}

/// How soon an environment whose image is being prepared in the background is ticked again.
const PREPARING_TICK: Duration = Duration::from_millis(250);

/// Where a worker's verified state comes from.
// One per worker, made once: the size of the Git variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Ledger {
    /// The ledger's Git source, fetched and verified at every poll: what `stele agent` runs.
    Git(LedgerSync),
    /// A verified state handed over in memory (scale runs and tests: no Git, no fetch, no F3).
    #[cfg(any(test, feature = "sim"))]
    Given(crate::replay::Verified),
}

impl Ledger {
    fn last(&self) -> Option<&crate::replay::Verified> {
        match self {
            Ledger::Git(sync) => sync.last(),
            #[cfg(any(test, feature = "sim"))]
            Ledger::Given(v) => Some(v),
        }
    }

    /// The Git source, when the state comes from one.
    fn git(&mut self) -> Option<&mut LedgerSync> {
        match self {
            Ledger::Git(sync) => Some(sync),
            #[cfg(any(test, feature = "sim"))]
            Ledger::Given(_) => None,
        }
    }
}

/// The long-lived, synchronous part of the agent: it runs on a blocking thread, one pass at a time.
pub struct Worker {
    cfg: AgentConfig,
    ledger: Ledger,
    providers: Providers,
    /// Writes status on a thread of its own: a pass never waits on Git. Dropped with the worker, it
    /// flushes within a bounded budget (`status::publisher::FLUSH_BUDGET`).
    status: Option<StatusPublisher>,
    memory: BTreeMap<EnvName, Memory>,
    /// Last status handed to the publisher per environment (compared as an auditor would).
    published: BTreeMap<EnvName, EnvStatus>,
    /// When the ledger is next fetched: the poll interval with jitter after the last fetch.
    next_sync: Option<Instant>,
    /// Why the ledger is stalled (a refused commit or a rewrite), while it is.
    ledger_stall: Option<String>,
    /// Why the ledger is not fresh (F3: its timestamp expired, is missing or went back), while it is
    /// not: every environment is held, acted on in no way, until a renewal arrives.
    ledger_stale: Option<String>,
    ledger_error: Option<String>,
    head_commit: Option<String>,
    /// When the local provider last collected garbage; `None` until the first pass.
    last_gc: Option<Instant>,
    /// Metrics, the operator's view, liveness and sync requests, shared with the HTTP surface.
    shared: Arc<Shared>,
    notifier: Notifier,
    /// Environments an operator suspended, as read at the start of the last pass.
    suspended: BTreeMap<EnvName, Suspension>,
    /// Refusals already counted in the metrics and notified: (commit, check).
    refusals_seen: BTreeSet<(String, String)>,
    /// Since when each environment's target generation has been ahead of its observed one.
    behind_since: BTreeMap<EnvName, (u64, Instant)>,
    /// The policy version the agent's key was last judged against (warnings once per version).
    judged_policy: Option<u64>,
}

impl Worker {
    pub fn new(cfg: AgentConfig, shared: Arc<Shared>) -> Result<Self> {
        std::fs::create_dir_all(&cfg.state_dir)
            .with_context(|| format!("{}: cannot create the state directory", cfg.state_dir.display()))?;
        let ledger = LedgerSync::open(&cfg.repo, cfg.branch.as_deref(), &cfg.state_dir, cfg.anchor.clone())?
            .with_floor(cfg.floor.clone());
        let providers = Providers::new(&cfg)?;
        Self::with(cfg, shared, Ledger::Git(ledger), providers)
    }

    /// A worker on a verified state held in memory, running every environment on the simulated
    /// provider `sim` (whatever its spec's kind): for scale runs and tests, never for `stele agent`.
    /// Its passes never fetch; `set_verified` hands it a newer state. Status is published only when
    /// `cfg.status` asks for it.
    #[cfg(any(test, feature = "sim"))]
    pub fn simulated(
        cfg: AgentConfig,
        shared: Arc<Shared>,
        verified: crate::replay::Verified,
        sim: crate::provider::sim::Sim,
    ) -> Result<Self> {
        std::fs::create_dir_all(&cfg.state_dir)
            .with_context(|| format!("{}: cannot create the state directory", cfg.state_dir.display()))?;
        let providers = Providers::simulated(&cfg, sim)?;
        Self::with(cfg, shared, Ledger::Given(verified), providers)
    }

    /// Replaces the verified state of a `simulated` worker (a new release, as a poll would bring).
    #[cfg(any(test, feature = "sim"))]
    pub fn set_verified(&mut self, verified: crate::replay::Verified) {
        self.ledger = Ledger::Given(verified);
    }

    /// The simulation of a `simulated` worker.
    #[cfg(any(test, feature = "sim"))]
    pub fn sim(&self) -> Option<&crate::provider::sim::Sim> {
        self.providers.sim()
    }

    fn with(cfg: AgentConfig, shared: Arc<Shared>, ledger: Ledger, providers: Providers) -> Result<Self> {
        let status = match &cfg.status {
            Some(s) => {
                let writer = StatusWriter::open_ref(&cfg.repo, &s.refname, &cfg.state_dir.join("status.git"))?;
                let writer = match &s.identity {
                    Some(identity) => writer.with_key(identity.key.clone()),
                    None => writer,
                };
                Some(StatusPublisher::start(writer))
            }
            None => None,
        };
        let memory = load_memory(&cfg.state_dir)?;
        let notifier = Notifier::start(&cfg.notify)?;
        Ok(Self {
            cfg,
            ledger,
            providers,
            status,
            memory,
            published: BTreeMap::new(),
            next_sync: None,
            ledger_stall: None,
            ledger_stale: None,
            ledger_error: None,
            head_commit: None,
            last_gc: None,
            shared,
            notifier,
            suspended: BTreeMap::new(),
            refusals_seen: BTreeSet::new(),
            behind_since: BTreeMap::new(),
            judged_policy: None,
        })
    }

    fn save_memory(&self, env: &EnvName, m: &Memory) -> Result<()> {
        let dir = self.cfg.state_dir.join("agent");
        std::fs::create_dir_all(&dir)?;
        write_atomic(&dir.join(format!("{env}.json")), &serde_json::to_vec_pretty(m).expect("memory serializes"))?;
        Ok(())
    }

    /// Garbage collection of the local provider (rules in `provider::local::gc`): on the first pass,
    /// before any tick, so nothing is in flight and leftovers of any age go; then every
    /// `gc::INTERVAL`, sparing leftovers younger than `gc::MIN_AGE`. Keeps each environment's target
    /// and last good image.
    fn maybe_collect_garbage(&mut self, verified: &crate::replay::Verified) {
        use crate::provider::local::gc;
        let min_age = match self.last_gc {
            None => Duration::ZERO,
            Some(at) if at.elapsed() >= gc::INTERVAL => gc::MIN_AGE,
            Some(_) => return,
        };
        self.last_gc = Some(Instant::now());
        let targets = verified.state.envs.values().filter_map(release_of);
        let last_good = self.memory.values().filter_map(|m| m.last_good.clone());
        let keep = targets.chain(last_good).map(|r| *r.digest()).collect();
        self.providers.local.collect_garbage(&keep, min_age);
    }

    /// Fetches and verifies the ledger when the poll interval has passed (or `force`).
    fn maybe_sync(&mut self, force: bool) {
        if !force && self.next_sync.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let Some(ledger) = self.ledger.git() else { return };
        self.next_sync = Some(Instant::now() + jitter(self.cfg.interval));
        let started = Instant::now();
        let result = ledger.sync(crate::clock::now(), true);
        let seconds = started.elapsed().as_secs_f64();
        let now_unix = now_ms() as f64 / 1000.0;
        match &result {
            Ok(s) => {
                let kind = match s.status {
                    SyncStatus::Verified => "verified",
                    SyncStatus::Stalled => "stalled",
                    SyncStatus::UpToDate | SyncStatus::NoLedger => "up_to_date",
                };
                self.shared.metrics.poll(kind, seconds, now_unix);
                self.note_refusals(s);
            }
            Err(_) => self.shared.metrics.poll("failed", seconds, now_unix),
        }
        match result {
            Ok(s) => {
                self.ledger_error = None;
                self.ledger_stale = s.stale.clone();
                self.head_commit = Some(s.head.to_string());
                match s.status {
                    SyncStatus::Stalled => {
                        let reason = s.reason.unwrap_or_else(|| "the head is not verified".into());
                        if self.ledger_stall.as_ref() != Some(&reason) {
                            tracing::error!(head = %s.head, "STALLED: {reason}");
                            self.notify(EventKind::CommitRefused, None, None, None, reason.clone());
                        }
                        self.ledger_stall = Some(reason);
                    }
                    SyncStatus::Verified => {
                        self.ledger_stall = None;
                        if let Some(v) = &s.verified {
                            tracing::info!(commit = %v.commit, new_commits = s.outcome.commits_seen, "ledger verified");
                        }
                    }
                    SyncStatus::UpToDate | SyncStatus::NoLedger => self.ledger_stall = None,
                }
            }
            Err(e) => {
                let retry = e.is_retryable();
                tracing::warn!(retryable = retry, "ledger fetch failed: {e}");
                self.ledger_error = Some(format!("ledger fetch failed: {e}"));
                if !retry {
                    self.ledger_stall = Some(format!("ledger unreadable: {e}"));
                }
            }
        }
        if let Some(v) = self.ledger.last() {
            let ledger = format!("{} at {}", v.state.policy.payload.ledger, v.commit);
            let stall = self.ledger_stall.clone();
            let polled = self.ledger_error.is_none().then(crate::clock::now);
            let commit = v.commit.to_string();
            self.shared.update_view(|view| {
                view.ledger = Some(ledger);
                view.verified_commit = Some(commit);
                view.ledger_stall = stall;
                if let Some(at) = polled {
                    view.last_poll = Some(at.to_string());
                }
            });
            if self.ledger_error.is_none() {
                self.shared.set_ready();
            }
        }
    }

    /// F3 between polls: a timestamp fresh at the last poll expires with time alone. Stalls the ledger
    /// loudly (log, notification, metric, the page) the moment it does; the next poll that brings a
    /// renewal clears it.
    fn check_fresh(&mut self) {
        if self.ledger_stale.is_some() {
            return;
        }
        let Some(ledger) = self.ledger.git() else { return };
        let Some(reason) = ledger.stale_now(crate::clock::now()) else { return };
        if self.ledger_stall.as_ref() != Some(&reason) {
            tracing::error!("STALLED: {reason}");
            self.notify(EventKind::CommitRefused, None, None, None, reason.clone());
            if let Some(v) = self.ledger.last() {
                if self.refusals_seen.insert((v.commit.to_string(), "F3".into())) {
                    self.shared.metrics.refusal("F3");
                }
            }
        }
        self.ledger_stall = Some(reason.clone());
        self.ledger_stale = Some(reason.clone());
        self.shared.update_view(|view| view.ledger_stall = Some(reason));
    }

    /// Judges the agent's key against the verified `policy`: a key in a role is an error (the agent
    /// stops before acting on anything); a key readers will not verify is warned about once per policy
    /// version.
    fn judge_key(&mut self, policy: &ledger_format::types::Policy) -> Result<(), String> {
        use super::identity::Judgement;
        let Some(identity) = self.cfg.status.as_ref().and_then(|s| s.identity.as_ref()) else {
            return Ok(());
        };
        let judgement = identity.judge(policy, &self.cfg.envs);
        if let Judgement::Refused(why) = judgement {
            return Err(why);
        }
        if self.judged_policy.replace(policy.version) != Some(policy.version) {
            match judgement {
                Judgement::Unverified(why) => tracing::warn!(policy_version = policy.version, "{why}"),
                _ => tracing::info!(
                    policy_version = policy.version,
                    key = %identity.key.key_id(),
                    "the agent's key is an agent key of the policy; its status reports verify"
                ),
            }
        }
        Ok(())
    }

    /// Counts each refused commit once per check in the metrics (a refused head is judged again at
    /// every poll until it changes).
    fn note_refusals(&mut self, s: &crate::sync::Synced) {
        let mut seen = Vec::new();
        for r in &s.outcome.refusals {
            for p in &r.problems {
                seen.push((r.commit.id.clone(), p.check.to_string()));
            }
        }
        if s.stale.is_some() {
            // A ledger that is not fresh (F3): its timestamp expired, is missing or went back.
            seen.push((s.head.to_string(), "F3".into()));
        } else if s.status == SyncStatus::Stalled && s.outcome.refusals.is_empty() {
            // A rewritten history (H1) refuses the head itself.
            seen.push((s.head.to_string(), "H1".into()));
        }
        for key in seen {
            if self.refusals_seen.insert(key.clone()) {
                self.shared.metrics.refusal(&key.1);
            }
        }
    }

    fn notify(&self, event: EventKind, env: Option<&EnvName>, from: Option<Phase>, to: Option<Phase>, message: String) {
        self.notifier.send(&Event {
            event,
            env: env.map(ToString::to_string),
            from: from.map(|p| p.to_string()),
            to: to.map(|p| p.to_string()),
            message,
            agent: self.cfg.agent_id.clone(),
            at: crate::clock::now(),
        });
    }

    /// The branch the agent follows (`main` when the source does not say).
    pub fn branch(&self) -> String {
        match &self.ledger {
            Ledger::Git(ledger) => ledger.branch().unwrap_or("main").to_owned(),
            #[cfg(any(test, feature = "sim"))]
            Ledger::Given(_) => "main".to_owned(),
        }
    }

    /// How long until the ledger is due to be fetched again.
    pub fn until_sync(&self) -> Duration {
        self.next_sync.map_or(Duration::ZERO, |t| t.saturating_duration_since(Instant::now()))
    }

    /// Between ticks: lets every managed environment's provider repair what needs no plan (a dead
    /// balancer is started again). Cheap; never fetches or plans.
    pub fn heal(&mut self) {
        if self.ledger_stale.is_some() {
            return;
        }
        let Some(verified) = self.ledger.last() else { return };
        for (env, h) in &verified.state.envs {
            if !self.cfg.envs.is_empty() && !self.cfg.envs.contains(env) || self.suspended.contains_key(env) {
                continue;
            }
            let spec = &h.spec.payload;
            if let Ok(provider) = self.providers.for_spec(spec) {
                if let Err(e) = provider.heal(env, spec) {
                    tracing::warn!(%env, "repair between ticks failed: {e}");
                }
            }
        }
    }

    /// One pass: sync when due, then one tick per managed environment.
    pub fn pass(&mut self, force_sync: bool) -> PassSummary {
        self.maybe_sync(force_sync);
        self.check_fresh();
        let mut summary =
            PassSummary { settled: true, ledger_stalled: self.ledger_stall.is_some(), ..PassSummary::default() };
        let Some(verified) = self.ledger.last().cloned() else {
            summary.settled = self.ledger_stall.is_some();
            return summary;
        };
        if let Err(why) = self.judge_key(&verified.state.policy.payload) {
            tracing::error!("{why}");
            summary.fatal = Some(why);
            return summary;
        }
        let ledger_id = verified.state.policy.payload.ledger.clone();
        self.maybe_collect_garbage(&verified);
        self.suspended = suspend::read_all(&self.cfg.state_dir);
        let mut figures = Vec::new();
        let mut events = Vec::new();
        for (env, h) in &verified.state.envs {
            if !self.cfg.envs.is_empty() && !self.cfg.envs.contains(env) {
                continue;
            }
            let spec = &h.spec.payload;
            let target = release_of(h);
            let mut memory = self.memory.get(env).cloned().unwrap_or_default();
            let now = now_ms();
            let mut last_error = self.ledger_error.clone();
            let stall = self.ledger_stall.clone();
            let stale = self.ledger_stale.clone();
            // Nothing expired is acted on (SPEC.md §8.7): neither an expired target nor anything under an
            // expired policy. Observe only, and hold what runs.
            let past = |exp: ledger_format::Timestamp| exp.unix().saturating_mul(1000) <= now as i64;
            let policy_expired = verified.state.policy.payload.expires_at.filter(|e| past(*e)).map(|exp| {
                format!("P3: the policy (version {}) expired at {exp}; holding", verified.state.policy.payload.version)
            });
            // Nor anything on a ledger that is not fresh (F3): a frozen mirror or a replayed ledger.
            let expired = stale.or(policy_expired).or_else(|| {
                h.target.as_ref().and_then(|t| {
                    let exp = t.expires_at.filter(|e| past(*e))?;
                    Some(format!("E6: the target entry {} (seq {}) expired at {exp}; holding", t.version, t.seq))
                })
            });
            let provider = self.providers.for_spec(spec);
            let suspension = self.suspended.get(env).cloned();
            let mut preparing = false;
            let (phase, message, observed, tick_done) = if let Err(why) = &provider {
                // No provider can run this environment here: say so in the status, like any stall.
                tracing::error!(%env, "STALLED: {why}");
                (Phase::Stalled, why.clone(), Observed::default(), true)
            } else if let Some(s) = &suspension {
                // Suspended by an operator: observe and say what would be done, act on nothing.
                let provider = provider.expect("checked above");
                let observed = provider.observe(env, spec, now).unwrap_or_default();
                let plan = converge::decide(spec, target.as_ref(), &memory, &observed, now);
                let would = if plan.actions.is_empty() {
                    "nothing to do".to_owned()
                } else {
                    format!("{} action(s) held", plan.actions.len())
                };
                let phase = match (&stall, &expired, plan.phase) {
                    (Some(_), _, _) | (_, Some(_), _) => Phase::Stalled,
                    (None, None, PlanPhase::Healthy) => Phase::Healthy,
                    (None, None, PlanPhase::Degraded) => Phase::Degraded,
                    (None, None, PlanPhase::Progressing) => Phase::Progressing,
                };
                let message = format!("SUSPENDED by {} since {}: {}; {would}", s.by, s.since, s.reason);
                (phase, message, observed, true)
            } else if let Some(why) = expired {
                let provider = provider.expect("checked above");
                let observed = provider.observe(env, spec, now).unwrap_or_default();
                (Phase::Stalled, why, observed, true)
            } else {
                let provider = provider.expect("checked above");
                let failed_before = memory.failed.clone();
                let ticked = converge::tick(provider, env, spec, target.as_ref(), &mut memory, now);
                if let Some(f) = memory.failed.as_ref().filter(|f| failed_before.as_ref() != Some(*f)) {
                    let message = format!("generation {}: {}; restoring the last good release", f.generation, f.reason);
                    events.push((EventKind::GateFailed, message));
                }
                match ticked {
                    Ok(t) => {
                        for _ in &t.retryable {
                            self.shared.metrics.provider_error(true);
                        }
                        if !t.retryable.is_empty() {
                            summary.retryable_failure = true;
                            last_error = Some(t.retryable.join("; "));
                            tracing::warn!(%env, "retrying later: {}", t.retryable.join("; "));
                        }
                        let done = t.converged();
                        preparing = t.preparing.is_some();
                        let mut message = match t.plan.phase {
                            PlanPhase::Healthy => format!(
                                "running {} (generation {})",
                                target.as_ref().map(|r| r.version.to_string()).unwrap_or_else(|| "nothing".into()),
                                target.as_ref().map_or(0, |r| r.generation)
                            ),
                            PlanPhase::Degraded => memory
                                .failed
                                .as_ref()
                                .map(|f| format!("{}; restored the last good release", f.reason))
                                .unwrap_or_else(|| "degraded".into()),
                            PlanPhase::Progressing => t.plan.waiting.join("; "),
                        };
                        if !t.plan.drift.is_empty() {
                            message = format!("{message}; drift reported: {}", t.plan.drift.join("; "));
                        }
                        if let Some(note) = memory.relaunch_note(target.as_ref().map(|r| r.generation)) {
                            message = format!("{message}; {note}");
                        }
                        for a in &t.plan.actions {
                            tracing::debug!(%env, action = ?a, "planned");
                        }
                        let phase = match (&stall, t.plan.phase) {
                            (Some(_), _) => Phase::Stalled,
                            (None, PlanPhase::Healthy) => Phase::Healthy,
                            (None, PlanPhase::Degraded) => Phase::Degraded,
                            (None, PlanPhase::Progressing) => Phase::Progressing,
                        };
                        if let Some(s) = &stall {
                            message = format!("{s}; acting on the last verified state: {message}");
                        }
                        (phase, message, t.observed, done)
                    }
                    Err(ProviderError::Refused(why)) => {
                        tracing::error!(%env, "STALLED: {why}");
                        self.shared.metrics.provider_error(false);
                        let observed = provider.observe(env, spec, now).unwrap_or_default();
                        (Phase::Stalled, why.clone(), observed, true)
                    }
                    Err(ProviderError::Retryable(why)) => {
                        tracing::warn!(%env, "retrying later: {why}");
                        self.shared.metrics.provider_error(true);
                        summary.retryable_failure = true;
                        last_error = Some(why.clone());
                        (Phase::Progressing, why, Observed::default(), false)
                    }
                }
            };
            if self.memory.get(env) != Some(&memory) {
                if let Err(e) = self.save_memory(env, &memory) {
                    tracing::error!(%env, "cannot save agent memory: {e:#}");
                }
                self.memory.insert(env.clone(), memory.clone());
            }
            let health_interval = match &spec.health {
                ledger_format::types::HealthCheck::Http { interval_ms, .. }
                | ledger_format::types::HealthCheck::Tcp { interval_ms, .. } => *interval_ms,
            };
            let d = Duration::from_millis(health_interval.clamp(100, 5_000));
            summary.watch = Some(summary.watch.map_or(d, |t| t.min(d)));
            // An image prepared in the background is asked after again soon: its rollout starts then.
            let d = if preparing { d.min(PREPARING_TICK) } else { d };
            if !tick_done {
                summary.settled = false;
                summary.tick = Some(summary.tick.map_or(d, |t| t.min(d)));
            }
            summary.phases.insert(env.clone(), phase);
            let status = EnvStatus {
                format: FORMAT,
                env: env.clone(),
                ledger: ledger_id.clone(),
                ledger_commit: verified.commit.to_string(),
                target_generation: h.generation,
                observed_generation: memory.last_good.as_ref().map_or(0, |g| g.generation),
                target: h.target.as_ref().map(|t| TargetStatus {
                    version: t.version.clone(),
                    seq: t.seq,
                    blake3: *t.image.digest(),
                }),
                running: memory.last_good.as_ref().map(|g| TargetStatus {
                    version: g.version.clone(),
                    seq: g.seq,
                    blake3: *g.digest(),
                }),
                phase,
                message,
                instances: observed
                    .instances
                    .iter()
                    .map(|i| InstanceStatus {
                        id: i.id.clone(),
                        group: i.group.clone(),
                        generation: i.generation,
                        blake3: i.digest,
                        health: i.health.to_string(),
                        since: timestamp_of_ms(match &i.health {
                            Health::Healthy { since_ms } | Health::Unhealthy { since_ms, .. } => *since_ms,
                            _ => i.launched_ms,
                        }),
                        drift: i.drift.clone(),
                    })
                    .collect(),
                last_error,
                agent: self.cfg.agent_id.clone(),
                updated_at: crate::clock::now(),
                suspended: suspension,
            };
            for (kind, message) in events.drain(..) {
                self.notify(kind, Some(env), None, None, message);
            }
            figures.push(self.figures(&status));
            self.publish(status);
        }
        let statuses: Vec<EnvStatus> = self.published.values().cloned().collect();
        self.shared.metrics.pass(&figures, now_ms() as f64 / 1000.0);
        self.shared.update_view(|view| view.environments = statuses);
        self.shared.pass_finished();
        summary
    }

    /// The metrics of one environment's status; tracks since when its target has been ahead.
    fn figures(&mut self, s: &EnvStatus) -> EnvFigures {
        let behind = s.target_generation > s.observed_generation;
        let behind_seconds = if behind {
            let since = self.behind_since.entry(s.env.clone()).or_insert((s.target_generation, Instant::now()));
            if since.0 != s.target_generation && since.0 <= s.observed_generation {
                *since = (s.target_generation, Instant::now());
            }
            since.1.elapsed().as_secs_f64()
        } else {
            self.behind_since.remove(&s.env);
            0.0
        };
        EnvFigures {
            env: s.env.to_string(),
            phase: s.phase.as_str(),
            target_generation: s.target_generation,
            observed_generation: s.observed_generation,
            behind_seconds,
            stalled: (s.phase == Phase::Stalled).then(|| s.message.clone()),
            suspended: s.suspended.is_some(),
            instances: s.instances.iter().map(|i| (i.generation, health_word(&i.health))).collect(),
        }
    }

    /// Hands `status` to the publisher when it says something new to an auditor (countdowns and
    /// `updated_at` alone do not: see `status::quiet`). Never waits on Git.
    fn publish(&mut self, status: EnvStatus) {
        let env = status.env.clone();
        if self.published.get(&env).is_some_and(|old| old.same_for_audit(&status)) {
            tracing::debug!(%env, message = %status.message, "status: nothing new for the status branch");
            return;
        }
        tracing::info!(%env, phase = %status.phase, message = %status.message, "status");
        let before = self.published.get(&env).map(|old| old.phase);
        // A phase change is worth telling; so is an agent that starts into trouble.
        let tell = match before {
            Some(old) => old != status.phase,
            None => matches!(status.phase, Phase::Degraded | Phase::Stalled),
        };
        if tell {
            self.notify(EventKind::PhaseChanged, Some(&env), before, Some(status.phase), status.message.clone());
        }
        self.shared.metrics.status_submitted();
        if let Some(publisher) = &self.status {
            publisher.submit(status.clone());
        }
        self.published.insert(env, status);
    }
}

/// The gate memory of every environment, `<state-dir>/agent/<env>.json`.
pub fn load_memory(state_dir: &Path) -> Result<BTreeMap<EnvName, Memory>> {
    let mut memory = BTreeMap::new();
    let dir = state_dir.join("agent");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(memory) };
    for e in entries.flatten() {
        let path = e.path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<EnvName>().ok()) else {
            continue;
        };
        let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
        let m: Memory = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: unreadable agent memory; never guessed at", path.display()))?;
        memory.insert(name, m);
    }
    Ok(memory)
}
