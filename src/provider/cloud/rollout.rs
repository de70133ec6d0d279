//! The actions of a rollout on groups: pinning rolling groups to a release, launching (one more desired
//! instance, the group and its balancer created first when missing) and terminating (exactly once per
//! instance, bounds tidied after a surge).

use super::{
    generation_group_name, group_name, machine_image, refused, retryable, to_i32, Cloud, CloudApi, GroupUpdate,
    GroupView, Layout, NewGroup,
};
use crate::plan::Release;
use crate::provider::ProviderError;
use ledger_format::types::{EnvName, Environment, GroupName};

impl<A: CloudApi> Cloud<A> {
    /// Points every rolling group (as last observed) at the template of `release`: after a failed gate
    /// that is the last good release again, so the cloud's own replacements never launch the failed
    /// image. Per-generation groups launch only their own generation.
    pub async fn pin(&mut self, env: &EnvName, spec: &Environment, release: &Release) -> Result<(), ProviderError> {
        let cs = A::spec_of(spec)?;
        if cs.layout(spec, A::WORDS)? != Layout::Rolling {
            return Ok(());
        }
        let image = machine_image(release, A::WORDS)?;
        let groups = self.rolling_templates.get(env).cloned().unwrap_or_default();
        let known = self.api.known_template(&cs, env, release, image);
        if groups.is_empty() || groups.iter().all(|(_, t)| t.is_some() && *t == known) {
            return Ok(());
        }
        let template = self.prepare(env, spec, release).await?;
        for (name, current) in groups {
            if current.as_ref() == Some(&template) {
                continue;
            }
            let update = GroupUpdate { template: Some(template.clone()), ..GroupUpdate::default() };
            self.api.update_group(&cs.region, &name, update).await?;
            tracing::info!(group = %name, version = %template, generation = release.generation, "group pointed at {}", A::WORDS.template);
        }
        self.rolling_templates.remove(env);
        Ok(())
    }

    pub async fn launch(
        &mut self,
        env: &EnvName,
        spec: &Environment,
        group: &GroupName,
        release: &Release,
        now_ms: u64,
    ) -> Result<String, ProviderError> {
        let words = A::WORDS;
        let cs = A::spec_of(spec)?;
        let layout = cs.layout(spec, words)?;
        let image = machine_image(release, words)?;
        let capacity = spec
            .groups
            .iter()
            .find(|g| &g.name == group)
            .map(|g| g.capacity)
            .ok_or_else(|| refused(format!("group {group} is not in the spec of {env}")))?;
        let template = match self.api.known_template(&cs, env, release, image) {
            Some(t) => t,
            None => self.prepare(env, spec, release).await?,
        };
        let (name, generation) = match layout {
            Layout::Rolling => (group_name(env, group), None),
            Layout::Weighted { .. } => {
                (generation_group_name(env, group, release.generation), Some(release.generation))
            }
        };
        let view = match self.api.describe_group(&cs.region, &name).await? {
            Some(view) => view,
            None => {
                let balancers = match layout {
                    Layout::Rolling => cs.balancers.iter().map(|s| (*s).to_owned()).collect(),
                    Layout::Weighted { balancer_base, port, .. } => vec![
                        self.ensure_balancer(&cs.region, spec, env, group, release.generation, balancer_base, port)
                            .await?,
                    ],
                };
                // The maximum size starts at the capacity; a surge raises it while it lasts (see below)
                // and the terminations that end the surge lower it again.
                let new =
                    NewGroup { name: &name, group, generation, template: template.clone(), max: capacity, balancers };
                self.api.create_group(&cs, env, new).await?;
                self.api
                    .describe_group(&cs.region, &name)
                    .await?
                    .ok_or_else(|| retryable(format!("{} {name} is not visible yet", words.group)))?
            }
        };
        view.check_owned(env, group, generation, words)?;
        let mut update = GroupUpdate::default();
        if view.template().as_ref() != Some(&template) {
            update.template = Some(template.clone());
        }
        // Checked here, not left to the cloud (emulators accept it): the new desired capacity fits the
        // bounds.
        let desired = view.desired.checked_add(1).ok_or_else(|| refused("desired capacity overflows"))?;
        if desired > view.max {
            update.max = Some(desired);
        }
        if desired < view.min {
            return Err(refused(format!("{name}: desired {desired} below MinSize {}", view.min)));
        }
        if update.template.is_some() || update.max.is_some() {
            self.api.update_group(&cs.region, &name, update).await?;
            if view.template_version != template.version {
                tracing::info!(group = %name, version = %template, generation = release.generation, "group switched to {}", words.template);
            }
        }
        self.api.set_desired(&cs.region, &name, desired).await?;
        self.scaled_at.insert(name.clone(), now_ms);
        Ok(format!("pending:{name}:{desired}"))
    }

    pub async fn terminate_all(
        &mut self,
        env: &EnvName,
        group: &GroupName,
        ids: &[String],
    ) -> Result<(), ProviderError> {
        let spec = self.spec_of(env)?;
        let cs = A::spec_of(&spec)?;
        let region = cs.region.to_string();
        let capacity = spec.groups.iter().find(|g| &g.name == group).map(|g| g.capacity);
        // The rolling group and the per-generation groups of (env, group): each id is in one of them
        // (a pending launch names its group), or in none any more.
        let views = self.env_groups(&region, env).await?;
        let mut first_error = None;
        for view in views.iter().filter(|v| v.group.as_deref() == Some(group.as_str())) {
            let mine: Vec<&String> = ids
                .iter()
                .filter(|id| match id.strip_prefix("pending:") {
                    Some(rest) => rest.rsplit_once(':').is_some_and(|(n, _)| n == view.name),
                    None => view.instances.iter().any(|i| &i.id == *id),
                })
                .collect();
            if mine.is_empty() {
                continue;
            }
            if let Err(e) = self.terminate_in(&region, view, &mine, capacity).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Terminates instances (or pending launches) of one group, lowering its desired capacity by one
    /// each, and tidies its bounds once the surge is over.
    async fn terminate_in(
        &mut self,
        region: &str,
        view: &GroupView,
        ids: &[&String],
        capacity: Option<u64>,
    ) -> Result<(), ProviderError> {
        let name = &view.name;
        let mut desired = view.desired;
        let mut min = view.min;
        let mut live = i32::try_from(view.live().count()).unwrap_or(i32::MAX);
        let mut first_error = None;
        for id in ids {
            let r = if id.starts_with("pending:") {
                // A launch not started yet: given up by lowering the desired capacity, unless it has
                // started meanwhile (then the next observation shows the instance itself).
                if desired <= live {
                    continue;
                }
                let lowered = self.lower_min(region, name, &mut min, desired - 1).await;
                let set = self.api.set_desired(region, name, desired - 1).await;
                lowered.and(set)
            } else {
                match view.instances.iter().find(|i| &i.id == *id) {
                    None => continue, // not in the group (any more)
                    Some(i) if i.leaving => continue,
                    Some(_) => match self.lower_min(region, name, &mut min, desired - 1).await {
                        Ok(()) => self.api.terminate_instance(region, name, id).await.map(|_| live -= 1),
                        Err(e) => Err(e),
                    },
                }
            };
            match r {
                Ok(()) => desired -= 1,
                Err(e) => {
                    tracing::warn!(group = %name, %id, "terminate: {e}");
                    first_error.get_or_insert(e);
                }
            }
        }
        // Bounds tidy again once the rollout no longer needs the surge.
        if let Some(capacity) = capacity {
            let capacity = to_i32(capacity, "capacity", A::WORDS)?;
            if desired <= capacity && view.max > capacity {
                let update = GroupUpdate { max: Some(capacity.max(min)), ..GroupUpdate::default() };
                self.api.update_group(region, name, update).await?;
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Lowers the minimum size so that `desired` is allowed (clouds refuse a desired capacity below it).
    async fn lower_min(&mut self, region: &str, name: &str, min: &mut i32, desired: i32) -> Result<(), ProviderError> {
        if desired >= *min {
            return Ok(());
        }
        let to = desired.max(0);
        self.api.update_group(region, name, GroupUpdate { min: Some(to), ..GroupUpdate::default() }).await?;
        *min = to;
        Ok(())
    }
}
