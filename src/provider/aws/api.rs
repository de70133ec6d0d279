//! The SDK bindings: the core's `CloudApi` calls as EC2, Auto Scaling and ELBv2 requests, and what is
//! read back (groups, instances, target health, AMIs) in the core's terms.

use super::errors::{classify, error_code};
use super::{TAG_ENV, TAG_GENERATION, TAG_GROUP, TAG_MANAGED, WORDS};
use crate::plan::{Generation, Health, Release};
use crate::provider::cloud::{
    refused, retryable, CloudApi, CloudSpec, GroupInstance, GroupUpdate, GroupView, ImageLookup, ImageView,
    InstanceView, NewBalancer, NewGroup, TargetVerdict, TemplateRef, Vocabulary,
};
use crate::provider::ProviderError;
use aws_sdk_autoscaling as autoscaling;
use aws_sdk_ec2 as ec2;
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_elasticloadbalancingv2 as elbv2;
use ledger_format::types::{EnvName, Environment, GroupName, HealthCheck};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

#[derive(Clone)]
pub(super) struct Clients {
    pub(super) ec2: ec2::Client,
    pub(super) autoscaling: autoscaling::Client,
    pub(super) elb: elbv2::Client,
}

/// The AWS side of the provider: SDK clients per region and the launch-template versions this process
/// has read or made (only to save calls).
pub struct AwsApi {
    pub(super) config: aws_config::SdkConfig,
    pub(super) clients: HashMap<String, Clients>,
    /// (region, template, description) → the version number Stele made for it.
    pub(super) versions: HashMap<(String, String, String), i64>,
    /// (region, template) → version number → (description, ImageId), for reading generations back.
    pub(super) version_info: HashMap<(String, String), BTreeMap<i64, (String, String)>>,
}

/// The target group of one generation: ELBv2 allows 32 characters, so the name is a digest of
/// (environment, group, generation); the tags say what it is.
pub fn target_group_name(env: &EnvName, group: &GroupName, generation: Generation) -> String {
    let h = blake3::hash(format!("stele target group\n{env}\n{group}\n{generation}").as_bytes()).to_hex();
    format!("stele-{}", &h[..26])
}

/// Listener forward weights for per-generation target groups: ALB accepts 0..=999 per target group.
/// Used by blue/green and canary once they are built; checked now so a bad plan is named precisely.
pub fn listener_weights(weights: &BTreeMap<Generation, u32>) -> Result<Vec<(Generation, i32)>, ProviderError> {
    if weights.is_empty() || weights.len() > 5 {
        return Err(refused(format!("a listener forwards to 1 to 5 target groups, the plan has {}", weights.len())));
    }
    weights
        .iter()
        .map(|(g, w)| match i32::try_from(*w) {
            Ok(w) if (0..=999).contains(&w) => Ok((*g, w)),
            _ => Err(refused(format!("weight {w} of generation {g} is outside 0..=999"))),
        })
        .collect()
}

/// `listener/app/name/id/id` of a listener ARN, for messages.
fn short_listener(arn: &str) -> &str {
    arn.split_once(":listener/").map_or(arn, |(_, rest)| rest)
}

/// `targetgroup/name/id` of an ARN, for messages.
fn short_arn(arn: &str) -> &str {
    arn.split_once(":targetgroup/").map_or(arn, |(_, rest)| rest)
}

fn tags_ec2(tags: &[ec2::types::Tag]) -> HashMap<String, String> {
    tags.iter().filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned()))).collect()
}

fn group_view(g: &autoscaling::types::AutoScalingGroup) -> GroupView {
    let tag = |k: &str| g.tags().iter().find(|t| t.key() == Some(k)).and_then(|t| t.value()).map(str::to_owned);
    let lt = g.launch_template();
    GroupView {
        name: g.auto_scaling_group_name().unwrap_or_default().to_owned(),
        env: tag(TAG_ENV),
        group: tag(TAG_GROUP),
        generation: tag(TAG_GENERATION).and_then(|g| g.parse().ok()),
        managed: tag(TAG_MANAGED).as_deref() == Some("true"),
        min: g.min_size().unwrap_or(0),
        max: g.max_size().unwrap_or(0),
        desired: g.desired_capacity().unwrap_or(0),
        template_name: lt.and_then(|l| l.launch_template_name()).map(str::to_owned),
        template_version: lt.and_then(|l| l.version()).map(str::to_owned),
        balancers: g.target_group_arns().to_vec(),
        instances: g
            .instances()
            .iter()
            .filter_map(|i| {
                let lifecycle = i.lifecycle_state().map(|s| s.as_str().to_owned()).unwrap_or_default();
                Some(GroupInstance {
                    id: i.instance_id()?.to_owned(),
                    leaving: leaving(&lifecycle),
                    lifecycle,
                    health_status: i.health_status().unwrap_or("Healthy").to_owned(),
                })
            })
            .collect(),
    }
}

/// Whether an Auto Scaling lifecycle state takes the instance out of the group (Terminating:Wait,
/// Terminated, Detaching, Detached...).
pub(super) fn leaving(lifecycle: &str) -> bool {
    lifecycle.starts_with("Terminat") || lifecycle.starts_with("Detach")
}

fn template_spec(template: &TemplateRef) -> autoscaling::types::LaunchTemplateSpecification {
    autoscaling::types::LaunchTemplateSpecification::builder()
        .launch_template_name(&template.name)
        .set_version(template.version.clone())
        .build()
}

/// What an instance's health is, from EC2, Auto Scaling and the load balancer; `None`: leaving or gone,
/// not reported.
pub(super) fn judge_health(
    member: &GroupInstance,
    ec2: Option<&InstanceView>,
    targets: &[TargetVerdict],
    now_ms: u64,
) -> Option<Health> {
    if member.leaving {
        return None;
    }
    let Some(ec2) = ec2 else {
        // Listed by Auto Scaling, not (yet) by EC2: EC2's reads are eventually consistent.
        return Some(Health::Starting);
    };
    match ec2.state.as_str() {
        "shutting-down" | "terminated" => return None,
        "pending" => return Some(Health::Starting),
        "running" => {}
        other => return Some(Health::Unhealthy { since_ms: now_ms, reason: format!("EC2 state {other}") }),
    }
    match member.lifecycle.as_str() {
        "InService" => {}
        s if s.starts_with("Pending") || s.starts_with("Warmed") => return Some(Health::Starting),
        other => {
            return Some(Health::Unhealthy { since_ms: now_ms, reason: format!("auto scaling lifecycle {other}") })
        }
    }
    if member.health_status.eq_ignore_ascii_case("unhealthy") {
        return Some(Health::Unhealthy { since_ms: now_ms, reason: "auto scaling reports it Unhealthy".into() });
    }
    let mut starting = false;
    for t in targets {
        match t.state.as_str() {
            // `unavailable`: the target group runs no health checks; `unused` + Target.NotInUse: the
            // target group is attached to no load balancer, so its verdict says nothing.
            "healthy" | "unavailable" => {}
            "unused" if t.reason == "Target.NotInUse" => {}
            "initial" => starting = true,
            other => {
                return Some(Health::Unhealthy {
                    since_ms: now_ms,
                    reason: format!(
                        "target group {}: {other} ({}: {})",
                        short_arn(&t.balancer),
                        t.reason,
                        t.description
                    ),
                })
            }
        }
    }
    if starting {
        return Some(Health::Starting);
    }
    Some(Health::Healthy { since_ms: 0 })
}

impl AwsApi {
    pub(super) fn clients(&mut self, region: &str) -> Clients {
        let config = &self.config;
        self.clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let region = aws_config::Region::new(region.to_owned());
                Clients {
                    ec2: ec2::Client::from_conf(ec2::config::Builder::from(config).region(region.clone()).build()),
                    autoscaling: autoscaling::Client::from_conf(
                        autoscaling::config::Builder::from(config).region(region.clone()).build(),
                    ),
                    elb: elbv2::Client::from_conf(elbv2::config::Builder::from(config).region(region).build()),
                }
            })
            .clone()
    }

    /// Tags of target groups, by ARN (DescribeTags takes 20 at a time).
    async fn target_group_tags(
        c: &Clients,
        arns: &[String],
    ) -> Result<HashMap<String, HashMap<String, String>>, ProviderError> {
        let mut out = HashMap::new();
        for chunk in arns.chunks(20) {
            let tags = c
                .elb
                .describe_tags()
                .set_resource_arns(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| classify("DescribeTags", e))?;
            for d in tags.tag_descriptions() {
                let Some(arn) = d.resource_arn() else { continue };
                let map = d
                    .tags()
                    .iter()
                    .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
                    .collect();
                out.insert(arn.to_owned(), map);
            }
        }
        Ok(out)
    }
}

impl CloudApi for AwsApi {
    const WORDS: &'static Vocabulary = &WORDS;

    fn spec_of(spec: &Environment) -> Result<CloudSpec<'_>, ProviderError> {
        match &spec.provider {
            ledger_format::types::Provider::Aws {
                region,
                launch_template,
                subnets,
                ami_owners,
                target_groups,
                listener,
                vpc,
                port,
            } => Ok(CloudSpec {
                region: region.as_str().into(),
                template: launch_template.as_str(),
                subnets: subnets.iter().map(|s| s.as_str()).collect(),
                image_owners: ami_owners.iter().map(|s| s.as_str()).collect(),
                balancers: target_groups.iter().map(|s| s.as_str()).collect(),
                router: listener.as_ref().map(|s| s.as_str()),
                balancer_base: vpc.as_ref().map(|s| s.as_str()),
                port: *port,
            }),
            _ => Err(refused(format!("environment {} does not use provider aws", spec.name))),
        }
    }

    fn balancer_name(env: &EnvName, group: &GroupName, generation: Generation) -> String {
        target_group_name(env, group, generation)
    }

    fn router_weights(weights: &BTreeMap<Generation, u32>) -> Result<Vec<(Generation, i32)>, ProviderError> {
        listener_weights(weights)
    }

    fn short_balancer(id: &str) -> &str {
        short_arn(id)
    }

    fn short_router(id: &str) -> &str {
        short_listener(id)
    }

    fn judge_health(
        member: &GroupInstance,
        instance: Option<&InstanceView>,
        verdicts: &[TargetVerdict],
        now_ms: u64,
        _was_healthy: bool,
    ) -> Option<Health> {
        // Auto Scaling's and the target groups' verdicts need no history: a target still registering
        // reports `initial`, not `unhealthy`.
        judge_health(member, instance, verdicts, now_ms)
    }

    async fn describe_image(&mut self, region: &str, ami: &str) -> Result<ImageLookup, ProviderError> {
        let c = self.clients(region);
        let out = match c.ec2.describe_images().image_ids(ami).send().await {
            Ok(out) => out,
            Err(e) => match error_code(&e) {
                Some(code) if code.starts_with("InvalidAMIID") => return Ok(ImageLookup::Missing(Some(code))),
                _ => return Err(classify("DescribeImages", e)),
            },
        };
        let Some(image) = out.images().iter().find(|i| i.image_id() == Some(ami)) else {
            return Ok(ImageLookup::Missing(None));
        };
        let state = image.state().map(|s| s.as_str()).unwrap_or("unknown");
        Ok(ImageLookup::Found(ImageView {
            state: state.to_owned(),
            ready: state == "available",
            owner: image.owner_id().unwrap_or("unknown").to_owned(),
            tags: tags_ec2(image.tags()),
        }))
    }

    async fn ensure_template(
        &mut self,
        spec: &CloudSpec<'_>,
        env: &EnvName,
        release: &Release,
        ami: &str,
    ) -> Result<TemplateRef, ProviderError> {
        let n = self.ensure_version(spec, env, release, ami).await?;
        Ok(TemplateRef { name: spec.template.to_owned(), version: Some(n.to_string()) })
    }

    fn known_template(&self, spec: &CloudSpec<'_>, env: &EnvName, release: &Release, ami: &str) -> Option<TemplateRef> {
        let n = self.known_version(spec, env, release, ami)?;
        Some(TemplateRef { name: spec.template.to_owned(), version: Some(n.to_string()) })
    }

    async fn read_templates(&mut self, region: &str, groups: &[GroupView]) -> Result<(), ProviderError> {
        self.read_versions(region, groups).await
    }

    fn template_release(&self, region: &str, env: &EnvName, view: &GroupView) -> Option<(Generation, String)> {
        self.version_release(region, env, view)
    }

    async fn list_groups(&mut self, region: &str, env: &EnvName) -> Result<Vec<GroupView>, ProviderError> {
        let c = self.clients(region);
        let filter = autoscaling::types::Filter::builder().name(format!("tag:{TAG_ENV}")).values(env.as_str()).build();
        let groups: Vec<autoscaling::types::AutoScalingGroup> = c
            .autoscaling
            .describe_auto_scaling_groups()
            .filters(filter)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<_, _>>()
            .await
            .map_err(|e| classify("DescribeAutoScalingGroups", e))?;
        Ok(groups.iter().map(group_view).collect())
    }

    async fn describe_group(&mut self, region: &str, name: &str) -> Result<Option<GroupView>, ProviderError> {
        let c = self.clients(region);
        let out = c
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .map_err(|e| classify("DescribeAutoScalingGroups", e))?;
        Ok(out.auto_scaling_groups().iter().map(group_view).find(|g| g.name == name))
    }

    async fn create_group(
        &mut self,
        spec: &CloudSpec<'_>,
        env: &EnvName,
        new: NewGroup<'_>,
    ) -> Result<(), ProviderError> {
        let c = self.clients(&spec.region);
        let NewGroup { name, group, generation, template, max, balancers } = new;
        if name.len() > 255 {
            return Err(refused(format!("auto scaling group name {name} is longer than 255")));
        }
        let max = crate::provider::cloud::to_i32(max.max(1), "max size", &WORDS)?;
        let tag = |k: &str, v: &str, propagate: bool| {
            autoscaling::types::Tag::builder()
                .resource_id(name)
                .resource_type("auto-scaling-group")
                .key(k)
                .value(v)
                .propagate_at_launch(propagate)
                .build()
        };
        // Desired 0: the launch that follows raises it, so a create retried after a lost answer (and
        // refused as AlreadyExists) never launches twice.
        let mut create = c
            .autoscaling
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_template(template_spec(&template))
            .min_size(0)
            .max_size(max)
            .desired_capacity(0)
            .vpc_zone_identifier(spec.subnets.join(","))
            .set_target_group_arns(Some(balancers))
            .tags(tag(TAG_ENV, env.as_str(), false))
            .tags(tag(TAG_GROUP, group.as_str(), true))
            .tags(tag(TAG_MANAGED, "true", false));
        if let Some(g) = generation {
            // Instances get their generation from the launch-template version's tags.
            create = create.tags(tag(TAG_GENERATION, &g.to_string(), false));
        }
        match create.send().await {
            Ok(_) => {
                tracing::info!(group = name, "created auto scaling group");
                Ok(())
            }
            Err(e) if error_code(&e).as_deref() == Some("AlreadyExists") => Ok(()),
            Err(e) => Err(classify("CreateAutoScalingGroup", e)),
        }
    }

    async fn update_group(&mut self, region: &str, name: &str, update: GroupUpdate) -> Result<(), ProviderError> {
        let c = self.clients(region);
        c.autoscaling
            .update_auto_scaling_group()
            .auto_scaling_group_name(name)
            .set_launch_template(update.template.as_ref().map(template_spec))
            .set_min_size(update.min)
            .set_max_size(update.max)
            .send()
            .await
            .map(drop)
            .map_err(|e| classify("UpdateAutoScalingGroup", e))
    }

    async fn set_desired(&mut self, region: &str, name: &str, desired: i32) -> Result<(), ProviderError> {
        let c = self.clients(region);
        c.autoscaling
            .set_desired_capacity()
            .auto_scaling_group_name(name)
            .desired_capacity(desired)
            .honor_cooldown(false)
            .send()
            .await
            .map(drop)
            .map_err(|e| classify("SetDesiredCapacity", e))
    }

    /// Each try is a single attempt, and after a failure the group is read again, so a try that took
    /// effect but whose answer was lost is not repeated (a second decrement would stop another instance).
    async fn terminate_instance(&mut self, region: &str, name: &str, id: &str) -> Result<(), ProviderError> {
        let c = self.clients(region);
        let mut backoff = Duration::from_millis(200);
        let mut last = None;
        for _ in 0..6 {
            let r = c
                .autoscaling
                .terminate_instance_in_auto_scaling_group()
                .instance_id(id)
                .should_decrement_desired_capacity(true)
                .customize()
                .config_override(
                    autoscaling::config::Builder::default().retry_config(aws_config::retry::RetryConfig::disabled()),
                )
                .send()
                .await;
            let e = match r {
                Ok(_) => {
                    tracing::info!(group = name, instance = id, "terminating");
                    return Ok(());
                }
                Err(e) => e,
            };
            // "not found": it was terminated already (by us, a moment ago, or by someone else).
            if error_code(&e).as_deref() == Some("ValidationError")
                && e.message().is_some_and(|m| m.to_ascii_lowercase().contains("not found"))
            {
                return Ok(());
            }
            let e = classify("TerminateInstanceInAutoScalingGroup", e);
            if !e.is_retryable() {
                return Err(e);
            }
            last = Some(e);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            match self.describe_group(region, name).await {
                Ok(Some(view)) if view.live().any(|i| i.id == id) => {}
                Ok(_) => return Ok(()),
                Err(_) => {}
            }
        }
        Err(last.unwrap_or_else(|| retryable(format!("terminate {id}: gave up"))))
    }

    async fn delete_group(&mut self, region: &str, name: &str) -> Result<(), ProviderError> {
        let c = self.clients(region);
        c.autoscaling
            .delete_auto_scaling_group()
            .auto_scaling_group_name(name)
            .send()
            .await
            .map(drop)
            .map_err(|e| classify("DeleteAutoScalingGroup", e))
    }

    async fn attach_balancer(&mut self, region: &str, group: &str, arn: &str) -> Result<(), ProviderError> {
        let c = self.clients(region);
        c.autoscaling
            .attach_load_balancer_target_groups()
            .auto_scaling_group_name(group)
            .target_group_arns(arn)
            .send()
            .await
            .map(drop)
            .map_err(|e| classify("AttachLoadBalancerTargetGroups", e))
    }

    async fn describe_instances(
        &mut self,
        region: &str,
        ids: &[String],
    ) -> Result<HashMap<String, InstanceView>, ProviderError> {
        let c = self.clients(region);
        let mut out = HashMap::new();
        // A filter, not InstanceIds: an id EC2 does not list yet is no error.
        for chunk in ids.chunks(150) {
            let filter = ec2::types::Filter::builder().name("instance-id").set_values(Some(chunk.to_vec())).build();
            let reservations: Vec<ec2::types::Reservation> = c
                .ec2
                .describe_instances()
                .filters(filter)
                .into_paginator()
                .items()
                .send()
                .collect::<Result<_, _>>()
                .await
                .map_err(|e| classify("DescribeInstances", e))?;
            for i in reservations.iter().flat_map(|r| r.instances()) {
                let Some(id) = i.instance_id() else { continue };
                let launched_ms =
                    i.launch_time().and_then(|t| t.to_millis().ok()).and_then(|t| u64::try_from(t).ok()).unwrap_or(0);
                let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default();
                out.insert(
                    id.to_owned(),
                    InstanceView {
                        image_id: i.image_id().unwrap_or_default().to_owned(),
                        private_ip: i.private_ip_address().map(str::to_owned),
                        running: state == "running",
                        state,
                        launched_ms,
                        tags: tags_ec2(i.tags()),
                    },
                );
            }
        }
        Ok(out)
    }

    async fn balancer_health(
        &mut self,
        region: &str,
        target_groups: &[String],
        ids: &[String],
    ) -> Result<HashMap<String, Vec<TargetVerdict>>, ProviderError> {
        let mut out: HashMap<String, Vec<TargetVerdict>> = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let c = self.clients(region);
        for tg in target_groups {
            let targets: Vec<elbv2::types::TargetDescription> =
                ids.iter().map(|id| elbv2::types::TargetDescription::builder().id(id).build()).collect();
            let health = c
                .elb
                .describe_target_health()
                .target_group_arn(tg)
                .set_targets(Some(targets))
                .send()
                .await
                .map_err(|e| classify("DescribeTargetHealth", e))?;
            for d in health.target_health_descriptions() {
                let (Some(id), Some(h)) = (d.target().and_then(|t| t.id()), d.target_health()) else { continue };
                out.entry(id.to_owned()).or_default().push(TargetVerdict {
                    balancer: tg.clone(),
                    state: h.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                    reason: h.reason().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                    description: h.description().unwrap_or_default().to_owned(),
                });
            }
        }
        Ok(out)
    }

    /// Stele's target groups are found by name prefix, then read with their tags.
    async fn list_balancers(&mut self, region: &str) -> Result<Vec<(String, HashMap<String, String>)>, ProviderError> {
        let c = self.clients(region);
        let all: Vec<elbv2::types::TargetGroup> = c
            .elb
            .describe_target_groups()
            .into_paginator()
            .items()
            .send()
            .collect::<Result<_, _>>()
            .await
            .map_err(|e| classify("DescribeTargetGroups", e))?;
        let arns: Vec<String> = all
            .iter()
            .filter(|t| t.target_group_name().is_some_and(|n| n.starts_with("stele-")))
            .filter_map(|t| t.target_group_arn().map(str::to_owned))
            .collect();
        let mut tags = Self::target_group_tags(&c, &arns).await?;
        Ok(arns.into_iter().filter_map(|arn| Some((arn.clone(), tags.remove(&arn)?))).collect())
    }

    async fn find_balancer(
        &mut self,
        region: &str,
        name: &str,
    ) -> Result<Option<(String, HashMap<String, String>)>, ProviderError> {
        let c = self.clients(region);
        let found = match c.elb.describe_target_groups().names(name).send().await {
            Ok(out) => out.target_groups().iter().find_map(|t| t.target_group_arn().map(str::to_owned)),
            Err(e) if error_code(&e).as_deref() == Some("TargetGroupNotFound") => None,
            Err(e) => return Err(classify("DescribeTargetGroups", e)),
        };
        let Some(arn) = found else { return Ok(None) };
        let mut tags = Self::target_group_tags(&c, std::slice::from_ref(&arn)).await?;
        let tags = tags.remove(&arn).unwrap_or_default();
        Ok(Some((arn, tags)))
    }

    /// HTTP, instance targets, the spec's VPC and port, health checked on the spec's HTTP path (or `/`
    /// for a TCP check).
    async fn create_balancer(
        &mut self,
        region: &str,
        spec: &Environment,
        new: NewBalancer<'_>,
    ) -> Result<(), ProviderError> {
        let c = self.clients(region);
        let NewBalancer { name, env, group, generation, balancer_base: vpc, port } = new;
        let tag = |k: &str, v: String| elbv2::types::Tag::builder().key(k).value(v).build();
        let mut create = c
            .elb
            .create_target_group()
            .name(name)
            .protocol(elbv2::types::ProtocolEnum::Http)
            .port(port)
            .vpc_id(vpc)
            .target_type(elbv2::types::TargetTypeEnum::Instance)
            .tags(tag(TAG_ENV, env.to_string()))
            .tags(tag(TAG_GROUP, group.to_string()))
            .tags(tag(TAG_GENERATION, generation.to_string()))
            .tags(tag(TAG_MANAGED, "true".into()));
        if let HealthCheck::Http { path, .. } = &spec.health {
            create = create.health_check_path(path.as_str());
        }
        // Same name and settings again (a retry after a lost answer) returns the same target group.
        match create.send().await {
            Ok(_) => tracing::info!(target_group = %name, generation, "created target group"),
            Err(e) if error_code(&e).as_deref() == Some("DuplicateTargetGroupName") => {}
            Err(e) => return Err(classify("CreateTargetGroup", e)),
        }
        Ok(())
    }

    async fn delete_balancer(&mut self, region: &str, arn: &str) -> Result<(), ProviderError> {
        let c = self.clients(region);
        c.elb
            .delete_target_group()
            .target_group_arn(arn)
            .send()
            .await
            .map(drop)
            .map_err(|e| classify("DeleteTargetGroup", e))
    }

    async fn tag_balancers(
        &mut self,
        region: &str,
        arns: &[String],
        key: &str,
        value: &str,
    ) -> Result<(), ProviderError> {
        let c = self.clients(region);
        c.elb
            .add_tags()
            .set_resource_arns(Some(arns.to_vec()))
            .tags(elbv2::types::Tag::builder().key(key).value(value).build())
            .send()
            .await
            .map(drop)
            .map_err(|e| classify("AddTags", e))
    }

    /// The listener's forward action; a forward to one target group without a forward config counts
    /// as weight 100.
    async fn read_weights(&mut self, region: &str, listener: &str) -> Result<Vec<(String, i32)>, ProviderError> {
        let c = self.clients(region);
        let out = c.elb.describe_listeners().listener_arns(listener).send().await.map_err(|e| {
            match error_code(&e).as_deref() {
                Some("ListenerNotFound") => refused(format!("listener {listener} does not exist")),
                _ => classify("DescribeListeners", e),
            }
        })?;
        let Some(l) = out.listeners().iter().find(|l| l.listener_arn() == Some(listener)) else {
            return Err(refused(format!("listener {listener} does not exist")));
        };
        let forward = l.default_actions().iter().find(|a| a.r#type() == Some(&elbv2::types::ActionTypeEnum::Forward));
        let Some(action) = forward else { return Ok(vec![]) };
        let tuples: Vec<(String, i32)> = action
            .forward_config()
            .map(|f| {
                f.target_groups()
                    .iter()
                    .filter_map(|t| Some((t.target_group_arn()?.to_owned(), t.weight().unwrap_or(1))))
                    .collect()
            })
            .unwrap_or_default();
        if tuples.is_empty() {
            return Ok(action.target_group_arn().map(|a| vec![(a.to_owned(), 100)]).unwrap_or_default());
        }
        Ok(tuples)
    }

    async fn write_weights(
        &mut self,
        region: &str,
        listener: &str,
        tuples: &[(String, i32)],
    ) -> Result<(), ProviderError> {
        let c = self.clients(region);
        let forward = elbv2::types::ForwardActionConfig::builder()
            .set_target_groups(Some(
                tuples
                    .iter()
                    .map(|(arn, w)| elbv2::types::TargetGroupTuple::builder().target_group_arn(arn).weight(*w).build())
                    .collect(),
            ))
            .build();
        let action = elbv2::types::Action::builder()
            .r#type(elbv2::types::ActionTypeEnum::Forward)
            .forward_config(forward)
            .build();
        c.elb
            .modify_listener()
            .listener_arn(listener)
            .default_actions(action)
            .send()
            .await
            .map(drop)
            .map_err(|e| classify("ModifyListener", e))
    }
}
