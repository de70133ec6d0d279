//! The local load balancer of one instance group: `stele lb --config FILE`, a TCP proxy on a stable
//! loopback address that spreads connections over the group's instances by weight. The local provider
//! starts it as its own detached process so that traffic keeps flowing while the agent restarts.
//!
//! Owns: the listening socket; the choice of backend for each incoming connection (smooth weighted
//! round-robin, failing over to the next backend when a connect fails); draining connections to
//! backends that were removed; and the two files it shares with the agent: the config it reads
//! ([`LbConfig`], written by the agent with [`write_config`], re-read every 100 ms and on SIGHUP) and
//! the report it writes next to it ([`LbReport`], read with [`read_report`]).
//!
//! Must not: know about generations, plans, health or the ledger, or edit the config file. The agent
//! decides membership and weights, and learns from the report that a config was applied and that a
//! removed backend has drained; the balancer only carries out what the file says. It never cuts a
//! connection because of a config change, and it has no idle timeout: when a draining connection has
//! to end is the agent's call.

use crate::exit::Refused;
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tracing::{debug, error, info, warn};

/// How often the config file is re-read.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// The shortest gap between two report writes that only change connection counts.
const REPORT_EVERY: Duration = Duration::from_millis(200);
/// How long a connect to a backend may take before the next backend is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long in-flight connections get to finish after SIGTERM or SIGINT.
const DRAIN_ON_SHUTDOWN: Duration = Duration::from_secs(5);
/// The pause after a failed `accept` (such as running out of file descriptors), so that the loop does
/// not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The balancer's configuration file, written by the agent and re-read by the balancer when it changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbConfig {
    /// Where the balancer listens. Fixed for the life of the process: a change is logged and ignored.
    pub listen: SocketAddr,
    /// Chosen by the agent and echoed in the report once this config is in effect.
    pub version: u64,
    /// The instances that may receive new connections, in a stable order (the order breaks ties).
    pub backends: Vec<Backend>,
}

/// One instance of the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Unique within a config; the report counts connections by it.
    pub id: String,
    pub addr: SocketAddr,
    /// Relative share of new connections; 0 sends none (existing ones are left alone).
    pub weight: u32,
}

/// What the balancer has applied and the connections it holds, written next to the config as
/// `<config path>.report.json` (see [`report_path`]) when the applied version changes and at most every
/// 200 ms while the counts change.
///
/// Unknown fields are tolerated here (unlike in [`LbConfig`]) because a balancer outlives agent
/// upgrades, so an older balancer's report may be read by a newer agent and the other way round.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbReport {
    /// The version of the config in effect.
    pub version: u64,
    /// The balancer's process id, so that a report left by an earlier balancer can be told apart.
    pub pid: u32,
    /// Open connections per backend, counted from the moment a backend is chosen. Every backend of the
    /// config is listed; a removed one stays listed while it has open connections and until the next
    /// config is applied after it drained.
    pub active: BTreeMap<String, u64>,
    /// Connections handed to each listed backend since it was first configured.
    pub served: BTreeMap<String, u64>,
}

impl LbReport {
    /// Whether backend `id`, removed from the config in version `removed_in`, has no connections left,
    /// so that its instance can be stopped without cutting anything. A backend missing from `active`
    /// has none.
    pub fn has_drained(&self, id: &str, removed_in: u64) -> bool {
        self.version >= removed_in && self.active.get(id).copied().unwrap_or(0) == 0
    }
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("not a balancer config: {0}")]
    Syntax(#[from] serde_json::Error),
    #[error("backend #{index} has an empty id")]
    EmptyId { index: usize },
    #[error("backend id {0:?} appears more than once")]
    DuplicateId(String),
    #[error("backend {id:?} points at the balancer's own address {addr}")]
    SelfLoop { id: String, addr: SocketAddr },
}

/// Parses and checks a config file's bytes.
pub fn parse_config(bytes: &[u8]) -> Result<LbConfig, ConfigError> {
    let config: LbConfig = serde_json::from_slice(bytes)?;
    validate(&config)?;
    Ok(config)
}

/// The rules serde cannot express: ids name backends in the report, so they must be unique and
/// non-empty, and a backend at the listen address would make every connection loop back into the
/// balancer until it runs out of file descriptors.
fn validate(config: &LbConfig) -> Result<(), ConfigError> {
    for (index, backend) in config.backends.iter().enumerate() {
        if backend.id.is_empty() {
            return Err(ConfigError::EmptyId { index });
        }
        if config.backends[..index].iter().any(|earlier| earlier.id == backend.id) {
            return Err(ConfigError::DuplicateId(backend.id.clone()));
        }
        if backend.addr == config.listen {
            return Err(ConfigError::SelfLoop { id: backend.id.clone(), addr: backend.addr });
        }
    }
    Ok(())
}

/// Writes a config for a balancer, atomically and durably. A config the balancer would refuse is not
/// written (`InvalidInput`), so that the agent learns of its mistake here rather than from a log.
pub fn write_config(path: &Path, config: &LbConfig) -> io::Result<()> {
    validate(config).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut bytes = serde_json::to_vec_pretty(config).map_err(io::Error::other)?;
    bytes.push(b'\n');
    crate::repo::write_atomic(path, &bytes).map_err(|e| match e {
        crate::repo::RepoError::Io { ref source, .. } => io::Error::new(source.kind(), e.to_string()),
        other => io::Error::other(other),
    })
}

/// Where the balancer with config file `config` writes its report: `<config>.report.json`.
pub fn report_path(config: &Path) -> PathBuf {
    let mut path = OsString::from(config.as_os_str());
    path.push(".report.json");
    PathBuf::from(path)
}

/// Reads the report of the balancer with config file `config_path`; `None` if it has written none yet.
pub fn read_report(config_path: &Path) -> io::Result<Option<LbReport>> {
    let path = report_path(config_path);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: not a balancer report: {e}", path.display()))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces a file through a temporary file and a rename, so that a reader sees the old or the new
/// content, never a mix. Not synced to disk: the report describes this process's memory and is
/// rewritten by the next balancer anyway.
fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| io::Error::other("a report path has a file name"))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Smooth weighted round-robin, as in nginx: every pick adds each candidate's weight to its running
/// score, takes the highest score (the first one on a tie) and subtracts the candidates' total from
/// it. It is deterministic and interleaves: with weights 25 and 75, any four consecutive picks from a
/// stable set contain the lighter backend exactly once.
#[derive(Debug)]
struct Picker {
    backends: Vec<Backend>,
    scores: Vec<i64>,
}

impl Picker {
    fn new(backends: &[Backend]) -> Self {
        Picker { backends: backends.to_vec(), scores: vec![0; backends.len()] }
    }

    /// Takes the backends of a newly applied config. The scores restart from zero when anything about
    /// the backends changed, but survive a rewrite that leaves them as they were, so that a config
    /// rewritten more often than a full round does not starve a light backend.
    fn reload(&mut self, backends: &[Backend]) {
        if self.backends != backends {
            *self = Picker::new(backends);
        }
    }

    /// The next backend among those with a weight whose id is not in `skip`; `None` when there is none.
    fn pick(&mut self, skip: &[String]) -> Option<&Backend> {
        let mut total = 0_i64;
        let mut best: Option<usize> = None;
        for (index, backend) in self.backends.iter().enumerate() {
            if backend.weight == 0 || skip.contains(&backend.id) {
                continue;
            }
            let weight = i64::from(backend.weight);
            self.scores[index] += weight;
            total += weight;
            if best.is_none_or(|b| self.scores[index] > self.scores[b]) {
                best = Some(index);
            }
        }
        let best = best?;
        self.scores[best] -= total;
        Some(&self.backends[best])
    }
}

/// Connection counts of one backend.
#[derive(Debug, Default)]
struct Stats {
    active: u64,
    served: u64,
    /// Whether the last connect failed, so that a dead backend is logged once, not per connection.
    failing: bool,
}

/// What the connection tasks, the config watcher and the reporter share.
#[derive(Debug)]
struct State {
    config: LbConfig,
    picker: Picker,
    /// Every backend of the config, plus removed ones until they drained and the next config came.
    stats: BTreeMap<String, Stats>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Woken whenever the report would change.
    report_wanted: Notify,
    /// The address bound at start-up, which later configs cannot move.
    listen: SocketAddr,
    config_path: PathBuf,
    pid: u32,
}

impl Shared {
    fn new(config: LbConfig, config_path: PathBuf) -> Self {
        let stats = config.backends.iter().map(|b| (b.id.clone(), Stats::default())).collect();
        Shared {
            listen: config.listen,
            state: Mutex::new(State { picker: Picker::new(&config.backends), config, stats }),
            report_wanted: Notify::new(),
            config_path,
            pid: std::process::id(),
        }
    }

    /// The state, even if a thread panicked while holding the lock: every critical section leaves it
    /// consistent, since none of them can panic halfway through.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn version(&self) -> u64 {
        self.state().config.version
    }

    /// Puts a newly read config into effect for new connections; open ones are left as they are.
    fn apply(&self, mut config: LbConfig) -> Result<(), ConfigError> {
        if config.listen != self.listen {
            error!(
                "{}: the listen address cannot change while the balancer runs: keeping {}, ignoring {} \
                 (restart the balancer to move it)",
                self.config_path.display(),
                self.listen,
                config.listen
            );
            config.listen = self.listen;
            // The config was checked against the address it names, not the one actually in use.
            validate(&config)?;
        }
        let mut state = self.state();
        state.picker.reload(&config.backends);
        let in_config = |id: &str| config.backends.iter().any(|b| b.id == id);
        state.stats.retain(|id, stats| stats.active > 0 || in_config(id));
        for (id, stats) in state.stats.iter().filter(|(id, _)| !in_config(id)) {
            info!(backend = %id, open = stats.active, "backend removed; its open connections drain");
        }
        for backend in &config.backends {
            state.stats.entry(backend.id.clone()).or_default();
        }
        info!(version = config.version, backends = config.backends.len(), "applied balancer config");
        state.config = config;
        drop(state);
        self.report_wanted.notify_one();
        Ok(())
    }

    /// Chooses a backend not in `skip` for a new connection and counts it as active at once, so that a
    /// report never shows a backend drained while a connection to it is being set up.
    fn lease(self: &Arc<Self>, skip: &[String]) -> Option<Lease> {
        let mut state = self.state();
        let backend = state.picker.pick(skip)?;
        let (id, addr) = (backend.id.clone(), backend.addr);
        state.stats.entry(id.clone()).or_default().active += 1;
        drop(state);
        self.report_wanted.notify_one();
        Some(Lease { shared: Arc::clone(self), id, addr })
    }

    fn report(&self) -> LbReport {
        let state = self.state();
        LbReport {
            version: state.config.version,
            pid: self.pid,
            active: state.stats.iter().map(|(id, s)| (id.clone(), s.active)).collect(),
            served: state.stats.iter().map(|(id, s)| (id.clone(), s.served)).collect(),
        }
    }
}

/// One connection's claim on a backend: counted in `active` from the pick until it is dropped.
struct Lease {
    shared: Arc<Shared>,
    id: String,
    addr: SocketAddr,
}

impl Lease {
    fn connected(&self) {
        let mut state = self.shared.state();
        let stats = state.stats.entry(self.id.clone()).or_default();
        stats.served += 1;
        if stats.failing {
            stats.failing = false;
            info!(backend = %self.id, addr = %self.addr, "backend accepts connections again");
        }
    }

    fn failed(&self, reason: &str) {
        let mut state = self.shared.state();
        let stats = state.stats.entry(self.id.clone()).or_default();
        if stats.failing {
            debug!(backend = %self.id, addr = %self.addr, reason, "connect failed; trying the next backend");
        } else {
            stats.failing = true;
            warn!(backend = %self.id, addr = %self.addr, reason, "connect failed; trying the next backend");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(stats) = self.shared.state().stats.get_mut(&self.id) {
            stats.active = stats.active.saturating_sub(1);
        }
        self.shared.report_wanted.notify_one();
    }
}

/// Runs the balancer for config file `config` until SIGTERM or SIGINT; 0 after a clean shutdown.
pub fn run(config: &Path) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("stele-lb")
        .enable_all()
        .build()
        .context("cannot start the balancer's runtime")?;
    runtime.block_on(async {
        // Registered before anything else, so that a signal sent right after start-up is not fatal.
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => info!("SIGTERM: shutting down"),
                _ = interrupt.recv() => info!("SIGINT: shutting down"),
            }
        };
        serve(config.to_owned(), shutdown).await
    })?;
    Ok(crate::exit::OK)
}

/// Serves config file `config` until `shutdown` completes, then stops accepting and gives in-flight
/// connections up to 5 s. A config that cannot be parsed at start-up is refused (exit code 3) and one
/// that cannot be read is an I/O error (4); both name the file and the reason.
pub async fn serve(config: PathBuf, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&config).with_context(|| format!("{}: cannot read the balancer config", config.display()))?;
    let initial = parse_config(&bytes).map_err(|e| Refused(format!("{}: {e}", config.display())))?;
    let listener = TcpListener::bind(initial.listen)
        .await
        .with_context(|| format!("{}: cannot listen on {}", config.display(), initial.listen))?;
    // Registered before the report announces the balancer, so that a SIGHUP never finds the default
    // disposition (which would end the process).
    let hangup = signal(SignalKind::hangup())
        .inspect_err(|e| warn!("cannot handle SIGHUP, the config is still re-read every 100 ms: {e}"))
        .ok();
    info!(listen = %initial.listen, version = initial.version, backends = initial.backends.len(), "balancer started");
    let shared = Arc::new(Shared::new(initial, config.clone()));

    let (stop_reporting, stop) = watch::channel(());
    let mut reporter = AbortOnDrop(tokio::spawn(report_loop(Arc::clone(&shared), stop)));
    let watcher = AbortOnDrop(tokio::spawn(watch_config(Arc::clone(&shared), bytes, hangup)));

    // The connection tasks live in a set so that none outlives this function, also when the caller
    // drops its future instead of completing `shutdown`.
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    connections.spawn(proxy(Arc::clone(&shared), client));
                }
                Err(e) => {
                    error!("cannot accept a connection: {e}");
                    sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(finished) = connections.join_next(), if !connections.is_empty() => log_join(finished),
        }
    }

    drop(listener);
    drop(watcher);
    info!(open = connections.len(), "stopped accepting; waiting for open connections");
    let drained = timeout(DRAIN_ON_SHUTDOWN, async {
        while let Some(finished) = connections.join_next().await {
            log_join(finished);
        }
    })
    .await;
    if drained.is_err() {
        warn!(open = connections.len(), "cutting the connections still open after 5 s");
        connections.shutdown().await;
    }
    // The reporter writes the final counts before it ends; waiting for it means the report is final
    // when this function returns, and no write of the reporter's races with the process exiting.
    drop(stop_reporting);
    if let Err(e) = (&mut reporter.0).await {
        error!("the report writer failed: {e}");
    }
    info!("balancer stopped");
    Ok(())
}

/// A task that is cancelled when its handle goes out of scope.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn log_join(finished: Result<(), tokio::task::JoinError>) {
    if let Err(e) = finished {
        if e.is_panic() {
            error!("a connection task panicked: {e}");
        }
    }
}

/// Proxies one client connection: tries backends in weighted order until one accepts, then copies
/// bytes both ways until both sides have finished (a half-close is passed on). A client for whom no
/// backend answers is closed without a byte.
async fn proxy(shared: Arc<Shared>, mut client: TcpStream) {
    // Requests and answers are passed on as they come; Nagle's delay would only add latency.
    let _ = client.set_nodelay(true);
    let mut tried: Vec<String> = Vec::new();
    loop {
        let Some(lease) = shared.lease(&tried) else {
            if tried.is_empty() {
                debug!("no backend has a weight; closing the client connection");
            } else {
                warn!(tried = %tried.join(", "), "no backend accepted; closing the client connection");
            }
            return;
        };
        match timeout(CONNECT_TIMEOUT, TcpStream::connect(lease.addr)).await {
            Ok(Ok(mut upstream)) => {
                lease.connected();
                let _ = upstream.set_nodelay(true);
                match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    Ok((up, down)) => debug!(backend = %lease.id, up, down, "connection finished"),
                    Err(e) => debug!(backend = %lease.id, "connection ended with an error: {e}"),
                }
                return;
            }
            Ok(Err(e)) => lease.failed(&e.to_string()),
            Err(_) => lease.failed("no answer within 1 s"),
        }
        tried.push(lease.id.clone());
    }
}

/// Re-reads the config file every 100 ms and on SIGHUP, and applies it when its bytes changed. A file
/// that cannot be read or parsed is logged as an error once per change and the last good config stays.
async fn watch_config(shared: Arc<Shared>, mut last: Vec<u8>, mut hangup: Option<Signal>) {
    let path = shared.config_path.clone();
    let mut ticks = tokio::time::interval(POLL_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_read_error: Option<String> = None;
    loop {
        let forced = tokio::select! {
            _ = ticks.tick() => false,
            () = hung_up(&mut hangup) => {
                info!("SIGHUP: re-reading the config");
                true
            }
        };
        // A small local file: read inline rather than on the blocking pool.
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                let reason = e.to_string();
                if forced || last_read_error.as_ref() != Some(&reason) {
                    error!(
                        "{}: cannot read the balancer config ({reason}); keeping version {}",
                        path.display(),
                        shared.version()
                    );
                }
                last_read_error = Some(reason);
                continue;
            }
        };
        last_read_error = None;
        if bytes == last && !forced {
            continue;
        }
        match parse_config(&bytes).and_then(|config| shared.apply(config)) {
            Ok(()) => {}
            Err(e) => error!(
                "{}: refusing the changed balancer config: {e}; keeping version {}",
                path.display(),
                shared.version()
            ),
        }
        last = bytes;
    }
}

/// Completes on the next SIGHUP, or never when SIGHUP could not be handled.
async fn hung_up(hangup: &mut Option<Signal>) {
    if let Some(signal) = hangup {
        if signal.recv().await.is_some() {
            return;
        }
    }
    std::future::pending().await
}

/// Writes the report once at start, at once whenever the applied version changes, at most every 200 ms
/// while only counts change, and a last time when `stop` is closed.
async fn report_loop(shared: Arc<Shared>, mut stop: watch::Receiver<()>) {
    let path = report_path(&shared.config_path);
    let mut written: Option<(LbReport, Instant)> = None;
    let mut failing = false;
    loop {
        let stopping = match &written {
            None => false,
            Some((report, at)) => !wait_for_report_change(&shared, &mut stop, report.version, *at).await,
        };
        let report = shared.report();
        if written.as_ref().is_none_or(|(last, _)| *last != report) {
            match write_report(&path, &report).await {
                Ok(()) => {
                    if failing {
                        info!("{}: report written again", path.display());
                        failing = false;
                    }
                    written = Some((report, Instant::now()));
                }
                Err(e) => {
                    if !failing {
                        error!("{}: cannot write the report: {e}", path.display());
                        failing = true;
                    }
                    // Retried after a pause rather than at once, so that a full disk does not spin.
                    if !stopping {
                        tokio::select! {
                            () = sleep(REPORT_EVERY) => {}
                            _ = stop.changed() => {}
                        }
                    }
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// Waits until the report should be rewritten: true at once when the version differs from `version`,
/// true 200 ms after `written_at` when only counts changed, false when `stop` closes.
async fn wait_for_report_change(
    shared: &Shared,
    stop: &mut watch::Receiver<()>,
    version: u64,
    written_at: Instant,
) -> bool {
    tokio::select! {
        () = shared.report_wanted.notified() => {}
        _ = stop.changed() => return false,
    }
    let deadline = written_at + REPORT_EVERY;
    loop {
        if shared.version() != version {
            return true;
        }
        tokio::select! {
            () = sleep_until(deadline) => return true,
            () = shared.report_wanted.notified() => {}
            _ = stop.changed() => return false,
        }
    }
}

async fn write_report(path: &Path, report: &LbReport) -> io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(report).map_err(io::Error::other)?;
    bytes.push(b'\n');
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || replace_file(&path, &bytes)).await.map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(id: &str, port: u16, weight: u32) -> Backend {
        Backend { id: id.to_owned(), addr: SocketAddr::from(([127, 0, 0, 1], port)), weight }
    }

    fn picks(picker: &mut Picker, n: usize) -> String {
        (0..n).map(|_| picker.pick(&[]).map_or("-".to_owned(), |b| b.id.clone())).collect()
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves_by_weight() {
        let table: &[(&[(&str, u32)], &str)] = &[
            (&[("a", 25), ("b", 75)], "babbbabb"),
            (&[("a", 1), ("b", 1)], "abababab"),
            (&[("a", 5), ("b", 1), ("c", 1)], "aabacaa"),
            (&[("a", 0), ("b", 3)], "bbbb"),
            (&[("a", 0), ("b", 0)], "--"),
            (&[], "--"),
        ];
        for (weights, expected) in table {
            let backends: Vec<_> = weights.iter().zip(1..).map(|(&(id, w), port)| backend(id, port, w)).collect();
            let mut picker = Picker::new(&backends);
            assert_eq!(picks(&mut picker, expected.len()), *expected, "weights {weights:?}");
        }
    }

    #[test]
    fn any_four_consecutive_picks_at_25_75_hold_the_light_backend_once() {
        let mut picker = Picker::new(&[backend("a", 1, 25), backend("b", 2, 75)]);
        let sequence = picks(&mut picker, 400);
        for window in sequence.as_bytes().windows(4) {
            assert_eq!(window.iter().filter(|&&c| c == b'a').count(), 1, "{sequence}");
        }
    }

    #[test]
    fn a_retry_skips_the_backends_already_tried_until_none_is_left() {
        let mut picker = Picker::new(&[backend("a", 1, 1), backend("b", 2, 1), backend("c", 3, 0)]);
        let first = picker.pick(&[]).map(|b| b.id.clone()).expect("a has a weight");
        assert_eq!(first, "a");
        let second = picker.pick(std::slice::from_ref(&first)).map(|b| b.id.clone()).expect("b has a weight");
        assert_eq!(second, "b");
        assert!(picker.pick(&[first, second]).is_none(), "c has no weight, so nothing is left");
    }

    #[test]
    fn an_unchanged_config_keeps_the_round_and_a_changed_one_restarts_it() {
        let backends = [backend("a", 1, 1), backend("b", 2, 3)];
        let mut picker = Picker::new(&backends);
        assert_eq!(picks(&mut picker, 2), "ba");
        picker.reload(&backends);
        assert_eq!(picks(&mut picker, 2), "bb", "the round goes on");
        picker.reload(&[backend("a", 1, 3), backend("b", 2, 1)]);
        assert_eq!(picks(&mut picker, 4), "aaba", "a new round with the new weights");
    }

    #[test]
    fn configs_are_refused_with_a_reason() {
        let good = r#"{"listen": "127.0.0.1:18080", "version": 7, "backends": [
            {"id": "web-3f2a", "addr": "127.0.0.1:40011", "weight": 50},
            {"id": "web-91c0", "addr": "127.0.0.1:40012", "weight": 50}]}"#;
        let config = parse_config(good.as_bytes()).expect("the documented example parses");
        assert_eq!(config.version, 7);
        assert_eq!(config.backends[1].id, "web-91c0");

        let table: &[(&str, &str)] = &[
            (r#"{"listen": "127.0.0.1:1", "version": 1, "backends": [], "extra": 1}"#, "unknown field `extra`"),
            (
                r#"{"listen": "127.0.0.1:1", "version": 1, "backends": [{"id": "a", "addr": "127.0.0.1:2", "weight": 1, "w": 2}]}"#,
                "unknown field `w`",
            ),
            (r#"{"listen": "127.0.0.1:1", "version": -1, "backends": []}"#, "invalid value"),
            (r#"{"listen": "localhost:1", "version": 1, "backends": []}"#, "invalid socket address"),
            (r#"{"listen": "127.0.0.1:1", "version": 1}"#, "missing field `backends`"),
            (
                r#"{"listen": "127.0.0.1:1", "version": 1, "backends": [{"id": "", "addr": "127.0.0.1:2", "weight": 1}]}"#,
                "backend #0 has an empty id",
            ),
            (
                r#"{"listen": "127.0.0.1:1", "version": 1, "backends": [{"id": "a", "addr": "127.0.0.1:2", "weight": 1}, {"id": "a", "addr": "127.0.0.1:3", "weight": 1}]}"#,
                "\"a\" appears more than once",
            ),
            (
                r#"{"listen": "127.0.0.1:1", "version": 1, "backends": [{"id": "a", "addr": "127.0.0.1:1", "weight": 1}]}"#,
                "the balancer's own address",
            ),
            ("{\"listen\": ", "EOF"),
        ];
        for (text, reason) in table {
            let err = parse_config(text.as_bytes()).expect_err(text).to_string();
            assert!(err.contains(reason), "{text}: {err:?} does not say {reason:?}");
        }
    }

    #[test]
    fn write_config_refuses_what_the_balancer_would_refuse_and_round_trips_the_rest() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("lb.json");
        let mut config = LbConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1)),
            version: 3,
            backends: vec![backend("a", 2, 1), backend("a", 3, 1)],
        };
        let err = write_config(&path, &config).expect_err("duplicate ids");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(!path.exists(), "nothing is written");
        config.backends.pop();
        write_config(&path, &config).expect("a valid config is written");
        let read = parse_config(&std::fs::read(&path).expect("the written file")).expect("it parses");
        assert_eq!(read, config);
    }

    #[test]
    fn the_report_lives_next_to_the_config_and_is_none_until_written() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("web.lb.json");
        assert_eq!(report_path(&config), dir.path().join("web.lb.json.report.json"));
        assert!(read_report(&config).expect("a missing report is not an error").is_none());
        let report = LbReport {
            version: 4,
            pid: 1,
            active: [("a".to_owned(), 0), ("b".to_owned(), 2)].into(),
            served: [("a".to_owned(), 5), ("b".to_owned(), 2)].into(),
        };
        replace_file(&report_path(&config), &serde_json::to_vec(&report).expect("serialisable")).expect("written");
        assert_eq!(read_report(&config).expect("readable"), Some(report.clone()));
        assert!(report.has_drained("a", 4));
        assert!(report.has_drained("gone", 3), "a backend missing from the report has no connections");
        assert!(!report.has_drained("b", 4), "b still has two");
        assert!(!report.has_drained("a", 5), "the config that removed a is not applied yet");
    }
}
