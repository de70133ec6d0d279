//! Traffic of blue/green and canary: the per-generation balancers (found again by name and tags, created
//! when missing) and the router's weights between them.

use super::{balancer_view, normalize, refused, retryable, weights_text, Cloud, CloudApi, Layout, NewBalancer};
use crate::plan::Generation;
use crate::provider::ProviderError;
use ledger_format::types::{EnvName, Environment, GroupName};
use std::collections::BTreeMap;

impl<A: CloudApi> Cloud<A> {
    /// Points the router at the generations' balancers with these weights. The balancers are tagged with
    /// the time first, so a restart between the two calls lengthens a pause, never shortens it.
    pub async fn set_weights(
        &mut self,
        env: &EnvName,
        group: &GroupName,
        weights: &BTreeMap<Generation, u32>,
        now_ms: u64,
    ) -> Result<(), ProviderError> {
        let words = A::WORDS;
        let spec = self.spec_of(env)?;
        let cs = A::spec_of(&spec)?;
        let Layout::Weighted { router, .. } = cs.layout(&spec, words)? else {
            return Err(refused(format!("environment {env} is rolling; its traffic has no weights")));
        };
        let mut tuples = Vec::new();
        for (generation, weight) in A::router_weights(weights)? {
            if weight == 0 {
                continue;
            }
            // Only generations with healthy instances get weight, so their balancers exist.
            let id = self.find_balancer(&cs.region, env, group, generation).await?.ok_or_else(|| {
                retryable(format!("{} of generation {generation} of {env}/{group} does not exist", words.balancer))
            })?;
            tuples.push((id, weight));
        }
        if tuples.is_empty() {
            return Err(refused(format!("weights {} send no traffic anywhere", weights_text(weights))));
        }
        let current = self.api.read_weights(&cs.region, router).await?;
        if normalize(&current) == normalize(&tuples) {
            return Ok(());
        }
        let ids: Vec<String> = tuples.iter().map(|(a, _)| a.clone()).collect();
        self.api.tag_balancers(&cs.region, &ids, words.keys.traffic_since, &now_ms.to_string()).await?;
        self.api.write_weights(&cs.region, router, &tuples).await?;
        tracing::info!(listener = A::short_router(router), weights = %weights_text(weights), "{} weights set", words.router);
        Ok(())
    }

    /// The balancer of (env, group, generation), if it exists and is Stele's.
    pub(super) async fn find_balancer(
        &mut self,
        region: &str,
        env: &EnvName,
        group: &GroupName,
        generation: Generation,
    ) -> Result<Option<String>, ProviderError> {
        let name = A::balancer_name(env, group, generation);
        let Some((id, tags)) = self.api.find_balancer(region, &name).await? else { return Ok(None) };
        match balancer_view(&A::WORDS.keys, env, id.clone(), &tags) {
            Some(v) if v.group == group.as_str() && v.generation == generation => Ok(Some(id)),
            _ => Err(refused(format!(
                "{} {name} exists but is not Stele's for group {group} generation {generation} of \
                 environment {env}; rename or remove it",
                A::WORDS.balancer
            ))),
        }
    }

    /// The balancer of a generation, created when missing.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn ensure_balancer(
        &mut self,
        region: &str,
        spec: &Environment,
        env: &EnvName,
        group: &GroupName,
        generation: Generation,
        balancer_base: &str,
        port: i32,
    ) -> Result<String, ProviderError> {
        if let Some(id) = self.find_balancer(region, env, group, generation).await? {
            return Ok(id);
        }
        let name = A::balancer_name(env, group, generation);
        let new = NewBalancer { name: &name, env, group, generation, balancer_base, port };
        self.api.create_balancer(region, spec, new).await?;
        self.find_balancer(region, env, group, generation)
            .await?
            .ok_or_else(|| retryable(format!("{} {name} is not visible yet", A::WORDS.balancer)))
    }
}
