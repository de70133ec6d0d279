//! Observation: groups, instances, health, images and the router's weights read back into `Observed`,
//! and the tidying an observation does (deleting emptied groups and unused balancers, attaching a
//! generation's balancer to a rolling group a weighted strategy adopts).

use super::{balancer_view, refused, BalancerView, Cloud, CloudApi, GroupView, InstanceView, Layout, TemplateRef};
use crate::plan::{Generation, GroupTraffic, Health, Instance, Observed, Traffic};
use crate::provider::ProviderError;
use ledger_format::types::{EnvName, Environment, GroupName, HealthCheck, Strategy};
use ledger_format::Blake3Digest;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// The environment's own health check against every running instance's private IP and `port`, all at
/// once (each bounded by the check's timeout): instance id → verdict, the error naming the address.
fn probe_instances(
    instances: &HashMap<String, InstanceView>,
    check: &HealthCheck,
    port: u64,
) -> HashMap<String, Result<(), String>> {
    let Ok(port) = u16::try_from(port) else { return HashMap::new() };
    let targets: Vec<(String, std::net::SocketAddr)> = instances
        .iter()
        .filter(|(_, i)| i.running)
        .filter_map(|(id, i)| {
            Some((id.clone(), std::net::SocketAddr::new(i.private_ip.as_deref()?.parse().ok()?, port)))
        })
        .collect();
    std::thread::scope(|scope| {
        let running: Vec<_> = targets
            .iter()
            .map(|(id, addr)| {
                scope.spawn(move || {
                    let verdict = crate::provider::local::process::probe(check, *addr);
                    (id.clone(), verdict.map_err(|e| format!("health check of {addr}: {e}")))
                })
            })
            .collect();
        running.into_iter().filter_map(|h| h.join().ok()).collect()
    })
}

impl<A: CloudApi> Cloud<A> {
    /// The per-generation balancers Stele made for this environment (found by name and tags).
    pub(super) async fn env_balancers(
        &mut self,
        region: &str,
        env: &EnvName,
    ) -> Result<Vec<BalancerView>, ProviderError> {
        let all = self.api.list_balancers(region).await?;
        Ok(all.into_iter().filter_map(|(id, tags)| balancer_view(&A::WORDS.keys, env, id, &tags)).collect())
    }

    /// Every group tagged with this environment and managed by Stele.
    pub(super) async fn env_groups(&mut self, region: &str, env: &EnvName) -> Result<Vec<GroupView>, ProviderError> {
        let groups = self.api.list_groups(region, env).await?;
        Ok(groups.into_iter().filter(|g| g.managed && g.env.as_deref() == Some(env.as_str())).collect())
    }

    pub async fn observe(&mut self, env: &EnvName, spec: &Environment, now_ms: u64) -> Result<Observed, ProviderError> {
        let words = A::WORDS;
        let keys = &words.keys;
        let cs = A::spec_of(spec)?;
        let region = cs.region.to_string();
        self.specs.insert(env.clone(), spec.clone());
        let first_look = self.seen.insert(env.clone());
        let layout = cs.layout(spec, words)?;
        let groups = self.env_groups(&region, env).await?;
        // Per-generation balancers and the router: read for blue/green and canary, and while anything of
        // such a layout may be left to clean up.
        let weighted = matches!(layout, Layout::Weighted { .. });
        let (balancers, forward) = if weighted
            || first_look
            || self.balancers_seen.contains(env)
            || groups.iter().any(|g| g.generation.is_some())
        {
            let balancers = self.env_balancers(&region, env).await?;
            let forward = match cs.router {
                Some(r) if weighted || !balancers.is_empty() => self.api.read_weights(&region, r).await?,
                _ => vec![],
            };
            (balancers, forward)
        } else {
            (vec![], vec![])
        };
        if balancers.is_empty() {
            self.balancers_seen.remove(env);
        } else {
            self.balancers_seen.insert(env.clone());
        }
        // (group, generation) of the balancers the router forwards to, with their weights.
        let forwarded: BTreeMap<(String, Generation), (i32, Option<u64>)> = forward
            .iter()
            .filter_map(|(id, w)| {
                let b = balancers.iter().find(|b| b.id == *id)?;
                Some(((b.group.clone(), b.generation), (*w, b.traffic_since)))
            })
            .collect();
        if !weighted {
            if let Some(((_, generation), _)) = forwarded.iter().next() {
                return Err(refused(format!(
                    "the {router} {} forwards to the {balancer} of generation {generation}: this environment \
                     ran blue_green or canary, and switching it to rolling on {cloud} is not supported (the \
                     {router} would be left on a group being emptied); nothing was changed. Keep a weighted \
                     strategy, or move the {router} by hand first",
                    A::short_router(cs.router.unwrap_or_default()),
                    router = words.router,
                    balancer = words.balancer,
                    cloud = words.cloud,
                )));
            }
        }
        // Templates are read once (and again whenever a group names one not known yet).
        self.api.read_templates(&region, &groups).await?;
        let ids: Vec<String> = groups.iter().flat_map(|g| g.live().map(|i| i.id.clone())).collect();
        let instances = self.api.describe_instances(&region, &ids).await?;
        if let (Layout::Weighted { balancer_base, port, .. }, false) = (layout, self.observe_only) {
            self.adopt_rolling_groups(&region, spec, env, &groups, &balancers, &instances, balancer_base, port).await?;
        }
        let probes = match (self.probe_instances, cs.port) {
            (true, Some(port)) => probe_instances(&instances, &spec.health, port),
            _ => HashMap::new(),
        };
        let mut observed = Observed::default();
        let mut healthy_now = HashSet::new();
        let mut members_now = HashSet::new();
        // Balancers attached to a group that stays: not to be deleted.
        let mut attached: HashSet<String> = HashSet::new();
        let rolling_templates = groups
            .iter()
            .filter(|g| g.generation.is_none() && g.template_name.as_deref() == Some(cs.template))
            .map(|g| (g.name.clone(), g.template()))
            .collect::<Vec<(String, Option<TemplateRef>)>>();
        self.rolling_templates.insert(env.clone(), rolling_templates);
        for view in &groups {
            let Some(group) = view.group.as_deref().and_then(|g| g.parse::<GroupName>().ok()) else {
                tracing::warn!(group = %view.name, "{} tagged for {env} has no valid {} {}", words.group, keys.group, words.tag);
                continue;
            };
            let live: Vec<String> = view.live().map(|i| i.id.clone()).collect();
            let verdicts = self.api.balancer_health(&region, &view.balancers, &live).await?;
            // What the group launches now: instances not visible in the compute API yet, and launches
            // not started yet, are taken to be of it.
            let launching = match self.api.template_release(&region, env, view) {
                Some((g, image)) => (g, self.image_digest(&region, &image).await?.unwrap_or(Blake3Digest::ZERO)),
                None => (0, Blake3Digest::ZERO),
            };
            let mut counted = 0i32;
            for member in view.live() {
                let inst = instances.get(&member.id);
                let verdicts = verdicts.get(&member.id).map(Vec::as_slice).unwrap_or(&[]);
                let key = (env.clone(), member.id.clone());
                members_now.insert(key.clone());
                let was_healthy = self.ever_healthy.contains(&key);
                let Some(mut health) = A::judge_health(member, inst, verdicts, now_ms, was_healthy) else { continue };
                if let (Health::Healthy { .. }, Some(Err(reason))) = (&health, probes.get(&member.id)) {
                    health = Health::Unhealthy { since_ms: now_ms, reason: reason.clone() };
                }
                counted += 1;
                let launched_ms = inst.map_or(now_ms, |i| i.launched_ms);
                if let Health::Healthy { since_ms } = &mut health {
                    // Healthy since this process first saw it so; on the first look after a start,
                    // since launch (what was running before the restart has been up at least that long).
                    let first = if first_look { launched_ms } else { now_ms };
                    *since_ms = *self.healthy_since.entry(key.clone()).or_insert(first);
                    self.ever_healthy.insert(key.clone());
                    healthy_now.insert(key);
                }
                let (generation, digest, drift) = match inst {
                    Some(i) => {
                        let generation = i
                            .tags
                            .get(keys.generation)
                            .filter(|_| i.tags.get(keys.env).map(String::as_str) == Some(env.as_str()))
                            .and_then(|g| g.parse::<Generation>().ok())
                            .or_else(|| {
                                // No tag: the template the group launched from, if its image is this one.
                                self.api
                                    .template_release(&region, env, view)
                                    .filter(|(_, image)| *image == i.image_id)
                                    .map(|(g, _)| g)
                            })
                            .unwrap_or(0);
                        match self.image_digest(&region, &i.image_id).await? {
                            Some(d) => (generation, d, None),
                            None => (
                                generation,
                                Blake3Digest::ZERO,
                                Some(format!(
                                    "its {} {} has no valid {} {}",
                                    words.image, i.image_id, words.tag, keys.blake3
                                )),
                            ),
                        }
                    }
                    None => (launching.0, launching.1, None),
                };
                observed.instances.push(Instance {
                    id: member.id.clone(),
                    group: group.clone(),
                    generation,
                    digest,
                    launched_ms,
                    health,
                    drift,
                });
            }
            // Launches the cloud has accepted but not started yet: reported as starting instances of
            // the template the group launches from, so the planner does not ask for them twice.
            let pending = view.desired.saturating_sub(counted).max(0);
            if pending > 0 {
                let (generation, digest) = launching;
                let since = self.scaled_at.get(&view.name).copied().unwrap_or(now_ms);
                for k in 1..=pending {
                    observed.instances.push(Instance {
                        id: format!("pending:{}:{k}", view.name),
                        group: group.clone(),
                        generation,
                        digest,
                        launched_ms: since,
                        health: Health::Starting,
                        drift: None,
                    });
                }
            }
            if !weighted {
                observed.traffic.insert(group.clone(), GroupTraffic { traffic: Traffic::Even, since_ms: 0 });
            }
            // An emptied group that is no longer needed: one the spec no longer has, one of the other
            // layout, or a generation the router does not forward to. Its balancer goes after it.
            let unneeded = !spec.groups.iter().any(|g| g.name == group)
                || match view.generation {
                    None => weighted,
                    Some(g) => !weighted || !forwarded.contains_key(&(group.to_string(), g)),
                };
            if view.empty() && unneeded && !self.observe_only {
                match self.api.delete_group(&region, &view.name).await {
                    Ok(()) => {
                        tracing::info!(group = %view.name, "deleted an empty group that is no longer needed");
                        continue;
                    }
                    Err(e) => tracing::warn!(group = %view.name, "{e}"),
                }
            }
            attached.extend(view.balancers.iter().cloned());
        }
        if !balancers.is_empty() && !self.observe_only {
            self.delete_unused_balancers(&region, &balancers, &forward, &attached).await;
        }
        if weighted {
            // One group (`layout` checks it): its traffic is the router's weights by generation.
            let group = &spec.groups[0].name;
            let mine: Vec<(Generation, i32, Option<u64>)> = forwarded
                .iter()
                .filter(|((g, _), _)| g == group.as_str())
                .map(|((_, generation), (w, since))| (*generation, *w, *since))
                .collect();
            let total: i64 = mine.iter().map(|(_, w, _)| i64::from((*w).max(0))).sum();
            let weights: BTreeMap<Generation, u32> = mine
                .iter()
                .map(|(g, w, _)| {
                    // Percentages as Stele writes them; any other scale (set by hand) is read as shares.
                    let pct = if total == 100 || total == 0 { i64::from(*w) } else { i64::from(*w) * 100 / total };
                    (*g, u32::try_from(pct).unwrap_or(0))
                })
                .collect();
            let key = (env.clone(), format!("{weights:?}"));
            let since_ms = match mine.iter().filter_map(|(_, _, s)| *s).max() {
                Some(s) => s,
                None => *self.traffic_seen.entry(key).or_insert(now_ms),
            };
            observed.traffic.insert(group.clone(), GroupTraffic { traffic: Traffic::Weighted(weights), since_ms });
        }
        // Only this environment's history is judged here; another's is kept for its own observation.
        self.healthy_since.retain(|key, _| key.0 != *env || healthy_now.contains(key));
        self.ever_healthy.retain(|key| key.0 != *env || members_now.contains(key));
        Ok(observed)
    }

    /// Deletes the balancers of this environment that no group is attached to and the router does not
    /// forward to; a balancer still held by a group being deleted is tried again next time.
    async fn delete_unused_balancers(
        &mut self,
        region: &str,
        balancers: &[BalancerView],
        forward: &[(String, i32)],
        attached: &HashSet<String>,
    ) {
        for b in balancers {
            if forward.iter().any(|(a, _)| *a == b.id) || attached.contains(&b.id) {
                continue;
            }
            match self.api.delete_balancer(region, &b.id).await {
                Ok(()) => tracing::info!(
                    target_group = A::short_balancer(&b.id),
                    generation = b.generation,
                    "deleted {}",
                    A::WORDS.balancer
                ),
                Err(e) => tracing::warn!(target_group = A::short_balancer(&b.id), "{e}"),
            }
        }
    }

    /// The strategy changed from rolling to blue/green or canary: a rolling group that still runs
    /// instances of one generation gets that generation's balancer attached, so the router can weight it
    /// like any generation while the planner replaces it. A rolling group caught mid-rollout, with two
    /// generations, is refused: one balancer attached to it would carry both.
    #[allow(clippy::too_many_arguments)]
    async fn adopt_rolling_groups(
        &mut self,
        region: &str,
        spec: &Environment,
        env: &EnvName,
        groups: &[GroupView],
        balancers: &[BalancerView],
        instances: &HashMap<String, InstanceView>,
        balancer_base: &str,
        port: i32,
    ) -> Result<(), ProviderError> {
        for view in groups.iter().filter(|g| g.generation.is_none()) {
            let Some(group) = view.group.as_deref().and_then(|g| g.parse::<GroupName>().ok()) else { continue };
            let generations: BTreeSet<Generation> = view
                .live()
                .filter_map(|m| instances.get(&m.id)?.tags.get(A::WORDS.keys.generation)?.parse().ok())
                .collect();
            let generation = match generations.into_iter().collect::<Vec<_>>()[..] {
                [] => continue,
                [g] => g,
                ref several => {
                    // One balancer attached to the group would carry every generation in it.
                    return Err(refused(format!(
                        "the rolling group {} runs generations {several:?}: a rolling rollout is under way; \
                         finish it with strategy rolling before switching to {}",
                        view.name,
                        if matches!(spec.strategy, Strategy::Canary { .. }) { "canary" } else { "blue_green" }
                    )));
                }
            };
            // Adopted on an earlier tick: its balancer (read this tick) is attached already.
            if balancers
                .iter()
                .any(|b| b.group == group.as_str() && b.generation == generation && view.balancers.contains(&b.id))
            {
                continue;
            }
            let id = self.ensure_balancer(region, spec, env, &group, generation, balancer_base, port).await?;
            if view.balancers.contains(&id) {
                continue;
            }
            self.api.attach_balancer(region, &view.name, &id).await?;
            tracing::info!(
                group = %view.name,
                generation,
                target_group = A::short_balancer(&id),
                "rolling group adopted: its generation's {} attached",
                A::WORDS.balancer
            );
        }
        Ok(())
    }
}
