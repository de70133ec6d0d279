//! [`CloudProvider`]: a cloud binding's [`Cloud`] as the agent's [`Provider`], run on a runtime of its
//! own (the SDKs are async; the agent's provider calls are not).

use super::{Cloud, CloudApi};
use crate::plan::{Observed, Release, Traffic};
use crate::provider::{Provider, ProviderError, Readiness};
use ledger_format::types::{EnvName, Environment, GroupName};

/// The `Provider` of every cloud binding (`provider::aws::AwsProvider`, `provider::gcp::GcpProvider`).
pub struct CloudProvider<A: CloudApi> {
    /// Always `Some` until dropped.
    pub(in crate::provider) rt: Option<tokio::runtime::Runtime>,
    pub(in crate::provider) inner: Cloud<A>,
}

impl<A: CloudApi> CloudProvider<A> {
    /// The current-thread runtime a binding's calls run on; a binding may use it before [`Self::from_parts`]
    /// (to load its configuration).
    pub fn runtime() -> Result<tokio::runtime::Runtime, ProviderError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ProviderError::Retryable(format!("{}: cannot start a runtime: {e}", A::WORDS.cloud)))
    }

    pub fn from_parts(rt: tokio::runtime::Runtime, inner: Cloud<A>) -> Self {
        Self { rt: Some(rt), inner }
    }

    pub(in crate::provider) fn block_on<F: std::future::Future>(
        rt: &Option<tokio::runtime::Runtime>,
        f: F,
    ) -> F::Output {
        rt.as_ref().expect("the runtime lives as long as the provider").block_on(f)
    }
}

impl<A: CloudApi> Drop for CloudProvider<A> {
    /// The agent drops its providers at the end of its async main: a runtime dropped there would panic
    /// ("cannot drop a runtime in a context where blocking is not allowed"). Nothing runs on this
    /// runtime between calls, so there is nothing to wait for.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl<A: CloudApi> Provider for CloudProvider<A> {
    fn prepare(&mut self, env: &EnvName, spec: &Environment, release: &Release) -> Result<Readiness, ProviderError> {
        self.inner.acting()?;
        Self::block_on(&self.rt, self.inner.prepare(env, spec, release)).map(|_| Readiness::Ready)
    }

    fn pin(&mut self, env: &EnvName, spec: &Environment, release: &Release) -> Result<(), ProviderError> {
        self.inner.acting()?;
        Self::block_on(&self.rt, self.inner.pin(env, spec, release))
    }

    fn observe(&mut self, env: &EnvName, spec: &Environment, now_ms: u64) -> Result<Observed, ProviderError> {
        Self::block_on(&self.rt, self.inner.observe(env, spec, now_ms))
    }

    fn launch(
        &mut self,
        env: &EnvName,
        spec: &Environment,
        group: &GroupName,
        release: &Release,
        now_ms: u64,
    ) -> Result<String, ProviderError> {
        self.inner.acting()?;
        Self::block_on(&self.rt, self.inner.launch(env, spec, group, release, now_ms))
    }

    fn terminate(&mut self, env: &EnvName, group: &GroupName, id: &str) -> Result<(), ProviderError> {
        self.inner.acting()?;
        Self::block_on(&self.rt, self.inner.terminate_all(env, group, &[id.to_owned()]))
    }

    fn terminate_all(&mut self, env: &EnvName, group: &GroupName, ids: &[String]) -> Result<(), ProviderError> {
        self.inner.acting()?;
        Self::block_on(&self.rt, self.inner.terminate_all(env, group, ids))
    }

    fn set_traffic(
        &mut self,
        env: &EnvName,
        group: &GroupName,
        traffic: &Traffic,
        now_ms: u64,
    ) -> Result<(), ProviderError> {
        match traffic {
            // A rolling group's balancers (target groups, backend services) send to every healthy
            // registered instance.
            Traffic::Even => Ok(()),
            Traffic::Weighted(weights) => {
                self.inner.acting()?;
                Self::block_on(&self.rt, self.inner.set_weights(env, group, weights, now_ms))
            }
        }
    }
}
