//! The agent's metrics, in the OpenMetrics text format (`GET /metrics`).
//!
//! Owns: the metric names, their help and labels, and how a pass, a sync and a provider failure turn
//! into values. Per-environment gauges are rewritten whole after every pass, so an environment that is
//! no longer managed (or an instance that is gone) disappears from the output; counters and the poll
//! histogram accumulate for the life of the process. Must not: decide anything, or be read by the
//! agent (the agent writes, scrapers read).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Every phase an environment can be in, so each gets a 0/1 series (a state set).
pub const PHASES: [&str; 4] = ["Healthy", "Progressing", "Degraded", "Stalled"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnvLabels {
    pub env: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub env: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StallLabels {
    pub env: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub env: String,
    pub generation: String,
    pub health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    commit: String,
}

/// What one environment looked like after a pass, for the gauges.
#[derive(Clone, Debug)]
pub struct EnvFigures {
    pub env: String,
    pub phase: &'static str,
    pub target_generation: u64,
    pub observed_generation: u64,
    /// Seconds the target has been ahead of the observed generation (0 when it is not).
    pub behind_seconds: f64,
    /// The stall reason, while the environment is stalled.
    pub stalled: Option<String>,
    pub suspended: bool,
    /// (generation, health) of each instance.
    pub instances: Vec<(u64, String)>,
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// The registry and every family in it.
pub struct Metrics {
    registry: Registry,
    phase: Family<PhaseLabels, Gauge>,
    target_generation: Family<EnvLabels, Gauge>,
    observed_generation: Family<EnvLabels, Gauge>,
    behind: Family<EnvLabels, F64Gauge>,
    stalled: Family<StallLabels, Gauge>,
    suspended: Family<EnvLabels, Gauge>,
    instances: Family<InstanceLabels, Gauge>,
    last_poll: F64Gauge,
    last_pass: F64Gauge,
    polls: Family<ResultLabels, Counter>,
    poll_seconds: Histogram,
    refusals: Family<CheckLabels, Counter>,
    provider_errors: Family<ClassLabels, Counter>,
    status_commits: Counter,
    webhooks: Family<ResultLabels, Counter>,
}

impl Metrics {
    pub fn new(version: &str, commit: &str) -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            phase: Family::default(),
            target_generation: Family::default(),
            observed_generation: Family::default(),
            behind: Family::default(),
            stalled: Family::default(),
            suspended: Family::default(),
            instances: Family::default(),
            last_poll: F64Gauge::default(),
            last_pass: F64Gauge::default(),
            polls: Family::default(),
            poll_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            refusals: Family::default(),
            provider_errors: Family::default(),
            status_commits: Counter::default(),
            webhooks: Family::default(),
        };
        let build = Info::new(BuildLabels { version: version.to_owned(), commit: commit.to_owned() });
        registry.register("stele_build", "Version and commit of this stele binary", build);
        registry.register(
            "stele_env_phase",
            "1 for the phase each environment is in, 0 for the others",
            m.phase.clone(),
        );
        registry.register(
            "stele_env_target_generation",
            "The generation the ledger asks for",
            m.target_generation.clone(),
        );
        registry.register(
            "stele_env_observed_generation",
            "The generation last seen Healthy",
            m.observed_generation.clone(),
        );
        registry.register(
            "stele_env_behind_seconds",
            "Seconds the target generation has been ahead of the observed one (0 when converged)",
            m.behind.clone(),
        );
        registry.register(
            "stele_env_stall_info",
            "1 while an environment is stalled, with the reason",
            m.stalled.clone(),
        );
        registry.register(
            "stele_env_suspended",
            "1 while an operator has suspended convergence of the environment",
            m.suspended.clone(),
        );
        registry.register("stele_instances", "Instances by generation and health", m.instances.clone());
        registry.register(
            "stele_last_poll_success_timestamp_seconds",
            "When the ledger was last fetched and verified (Unix time)",
            m.last_poll.clone(),
        );
        registry.register(
            "stele_last_pass_timestamp_seconds",
            "When the loop last finished a pass",
            m.last_pass.clone(),
        );
        registry.register(
            "stele_polls",
            "Ledger polls by result (verified, up_to_date, stalled, failed)",
            m.polls.clone(),
        );
        registry.register("stele_poll_duration_seconds", "Time to fetch and verify the ledger", m.poll_seconds.clone());
        registry.register(
            "stele_refusals",
            "Refused ledger commits, by the check that refused them",
            m.refusals.clone(),
        );
        registry.register(
            "stele_provider_errors",
            "Provider failures by class (retryable: retried with backoff; refused: a human must act)",
            m.provider_errors.clone(),
        );
        registry.register(
            "stele_status_submissions",
            "Statuses handed to the status-branch publisher",
            m.status_commits.clone(),
        );
        registry.register("stele_webhooks", "Webhook deliveries by result", m.webhooks.clone());
        Metrics { registry, ..m }
    }

    /// Rewrites every per-environment gauge from one pass.
    pub fn pass(&self, envs: &[EnvFigures], at_unix: f64) {
        for family in [&self.target_generation, &self.observed_generation, &self.suspended] {
            family.clear();
        }
        self.phase.clear();
        self.behind.clear();
        self.stalled.clear();
        self.instances.clear();
        for e in envs {
            let env = EnvLabels { env: e.env.clone() };
            for phase in PHASES {
                let labels = PhaseLabels { env: e.env.clone(), phase: phase.to_owned() };
                self.phase.get_or_create(&labels).set(i64::from(phase == e.phase));
            }
            self.target_generation.get_or_create(&env).set(e.target_generation as i64);
            self.observed_generation.get_or_create(&env).set(e.observed_generation as i64);
            self.behind.get_or_create(&env).set(e.behind_seconds);
            self.suspended.get_or_create(&env).set(i64::from(e.suspended));
            if let Some(reason) = &e.stalled {
                self.stalled.get_or_create(&StallLabels { env: e.env.clone(), reason: reason.clone() }).set(1);
            }
            for (generation, health) in &e.instances {
                let labels =
                    InstanceLabels { env: e.env.clone(), generation: generation.to_string(), health: health.clone() };
                self.instances.get_or_create(&labels).inc();
            }
        }
        self.last_pass.set(at_unix);
    }

    /// One ledger poll: its result (`verified`, `up_to_date`, `stalled`, `failed`) and duration.
    pub fn poll(&self, result: &str, seconds: f64, at_unix: f64) {
        self.polls.get_or_create(&ResultLabels { result: result.to_owned() }).inc();
        self.poll_seconds.observe(seconds);
        if result != "failed" {
            self.last_poll.set(at_unix);
        }
    }

    /// A refused ledger commit, counted once per (commit, check) by the caller.
    pub fn refusal(&self, check: &str) {
        self.refusals.get_or_create(&CheckLabels { check: check.to_owned() }).inc();
    }

    pub fn provider_error(&self, retryable: bool) {
        let class = if retryable { "retryable" } else { "refused" };
        self.provider_errors.get_or_create(&ClassLabels { class: class.to_owned() }).inc();
    }

    pub fn status_submitted(&self) {
        self.status_commits.inc();
    }

    pub fn webhook(&self, result: &str) {
        self.webhooks.get_or_create(&ResultLabels { result: result.to_owned() }).inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(phase: &'static str, instances: Vec<(u64, String)>) -> EnvFigures {
        EnvFigures {
            env: "prod".into(),
            phase,
            target_generation: 3,
            observed_generation: 2,
            behind_seconds: 4.5,
            stalled: (phase == "Stalled").then(|| "P3: the policy expired".into()),
            suspended: false,
            instances,
        }
    }

    #[test]
    fn a_pass_sets_the_gauges_and_the_next_pass_replaces_them() {
        let m = Metrics::new("1.2.3", "abc");
        m.pass(&[figures("Stalled", vec![(2, "healthy".into()), (2, "healthy".into()), (3, "starting".into())])], 10.0);
        let text = m.render();
        for line in [
            "stele_build_info{version=\"1.2.3\",commit=\"abc\"} 1",
            "stele_env_phase{env=\"prod\",phase=\"Stalled\"} 1",
            "stele_env_phase{env=\"prod\",phase=\"Healthy\"} 0",
            "stele_env_target_generation{env=\"prod\"} 3",
            "stele_env_behind_seconds{env=\"prod\"} 4.5",
            "stele_env_stall_info{env=\"prod\",reason=\"P3: the policy expired\"} 1",
            "stele_instances{env=\"prod\",generation=\"2\",health=\"healthy\"} 2",
            "stele_instances{env=\"prod\",generation=\"3\",health=\"starting\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        m.pass(&[figures("Healthy", vec![(3, "healthy".into())])], 11.0);
        let text = m.render();
        assert!(!text.contains("stele_env_stall_info{"), "{text}");
        assert!(!text.contains("generation=\"2\""), "{text}");
        assert!(text.contains("stele_env_phase{env=\"prod\",phase=\"Healthy\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn counters_and_the_poll_histogram_accumulate() {
        let m = Metrics::new("1", "x");
        m.poll("verified", 0.02, 5.0);
        m.poll("failed", 0.5, 6.0);
        m.refusal("E5");
        m.provider_error(true);
        let text = m.render();
        for line in [
            "stele_polls_total{result=\"verified\"} 1",
            "stele_polls_total{result=\"failed\"} 1",
            "stele_poll_duration_seconds_count 2",
            "stele_last_poll_success_timestamp_seconds 5.0",
            "stele_refusals_total{check=\"E5\"} 1",
            "stele_provider_errors_total{class=\"retryable\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
