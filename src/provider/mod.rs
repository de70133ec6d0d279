//! Providers: where instances run. A provider reports what exists (instances with their health, and
//! each group's traffic setting), and carries out single actions of a plan. It never decides what to
//! do: that is `plan`.
//!
//! Owns: the `Provider` trait and the errors the loop branches on. Implementations: `local` (processes
//! on this host, the embedded default), `sim` (deterministic, virtual time, injected failures) and
//! `aws` (feature `aws`) and `gcp` (feature `gcp`), bindings of `cloud`, the core shared by providers of
//! managed instance groups.

#[cfg(feature = "aws")]
pub mod aws;
pub mod cloud;
#[cfg(feature = "gcp")]
pub mod gcp;
pub mod local;
pub mod sim;

use crate::plan::{Observed, Release, Traffic};
use ledger_format::types::{EnvName, Environment, GroupName};
use serde::{Deserialize, Serialize};

/// Settings of the AWS provider (the `[aws]` table of the agent's configuration). Parsed in every build,
/// so a configuration stays valid for an agent built without the feature.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// Also run the environment's HTTP/TCP health check against each instance's private IP and the
    /// spec's `port`. Only where the agent runs inside the VPC and reaches the instances directly: a
    /// proxy or middlebox that answers in their place would make every probe fail. Default false.
    #[serde(default)]
    pub probe_instances: bool,
}

/// Settings of the GCP provider (the `[gcp]` table of the agent's configuration). Parsed in every build,
/// so a configuration stays valid for an agent built without the feature.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GcpSettings {
    /// As `AwsSettings::probe_instances`, at each instance's internal IP. Default false.
    #[serde(default)]
    pub probe_instances: bool,
    /// The Compute Engine endpoint, for a Private Service Connect endpoint; default
    /// `https://compute.googleapis.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Call `endpoint` without credentials (the tests' loopback fake of Compute Engine). Ignored without
    /// `endpoint`: GCP itself always gets Application Default Credentials. Default false.
    #[serde(default)]
    pub anonymous: bool,
}

/// How the agent must react to a provider failure (STYLE.md 4).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A human must act: the image does not match its signed digest, the spec cannot be run here.
    /// Nothing was started.
    #[error("{0}")]
    Refused(String),
    /// Worth retrying with backoff: network, a busy API, a launch that failed for a passing reason.
    #[error("{0}")]
    Retryable(String),
}

impl ProviderError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ProviderError::Retryable(_))
    }
}

/// Whether a release's image can be launched now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Still being made ready in the background; the text says what is happening, for the status.
    Pending(String),
}

/// One environment's instances somewhere. Times are milliseconds on the agent's clock, passed in so a
/// simulated provider can run on virtual time.
pub trait Provider {
    /// Makes a release's image ready to launch (fetch and verify it for `local`). Refuses an image
    /// whose digest or size differs from the signed entry before anything runs. Must not hold up the
    /// loop on slow work: a provider that needs long (a large download, an unpack) starts it in the
    /// background and answers [`Readiness::Pending`]; the next tick asks again.
    fn prepare(&mut self, env: &EnvName, spec: &Environment, release: &Release) -> Result<Readiness, ProviderError>;

    /// Called on every tick that has a release to converge to (the target, or while degraded the last
    /// good release), after the image checks of `prepare` would pass: a provider that launches from a
    /// stored template outside the agent's own launches (an Auto Scaling group replacing an instance)
    /// points that template at this release, so a failed rollout never keeps launching its broken
    /// image. Must cost nothing when already pointed there. Default: nothing to do.
    fn pin(&mut self, _env: &EnvName, _spec: &Environment, _release: &Release) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Repairs, between ticks, what needs no plan: for `local`, a balancer process that died is started
    /// again. Must be cheap (it runs several times a second) and never wait. Default: nothing to do.
    fn heal(&mut self, _env: &EnvName, _spec: &Environment) -> Result<(), ProviderError> {
        Ok(())
    }

    /// What runs now, with fresh health results.
    fn observe(&mut self, env: &EnvName, spec: &Environment, now_ms: u64) -> Result<Observed, ProviderError>;

    /// Starts one instance of `release` in `group`; returns its id.
    fn launch(
        &mut self,
        env: &EnvName,
        spec: &Environment,
        group: &GroupName,
        release: &Release,
        now_ms: u64,
    ) -> Result<String, ProviderError>;

    /// Stops one instance (after taking it out of traffic). Idempotent. Must not wait for the instance
    /// to drain or stop: a provider that cannot stop at once reports the instance as
    /// `Health::Stopping` until it is gone.
    fn terminate(&mut self, env: &EnvName, group: &GroupName, id: &str) -> Result<(), ProviderError>;

    /// Stops several instances of one group; providers that can batch (one traffic change, parallel
    /// stops) override this.
    fn terminate_all(&mut self, env: &EnvName, group: &GroupName, ids: &[String]) -> Result<(), ProviderError> {
        ids.iter().try_for_each(|id| self.terminate(env, group, id))
    }

    /// Changes where a group's traffic goes.
    fn set_traffic(
        &mut self,
        env: &EnvName,
        group: &GroupName,
        traffic: &Traffic,
        now_ms: u64,
    ) -> Result<(), ProviderError>;
}
