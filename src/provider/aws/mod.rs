//! The AWS provider (DESIGN.md "Convergence", "Images"; SPEC.md §6.2 `aws`): instances are EC2
//! instances of Auto Scaling groups that Stele owns, launched from launch-template versions pinned to
//! the entry's AMI. The planner stays the single brain: its per-instance actions map onto Auto Scaling
//! calls (a launch raises the group's desired capacity by one; a termination is
//! `TerminateInstanceInAutoScalingGroup` with the desired capacity decremented), and everything this
//! provider reports is read back from AWS on every observation, so an agent killed at any point and
//! restarted continues where AWS is, without duplicates or leaked groups, templates or instances.
//!
//! Owns: the AMI checks (exists, `available`, owned by an account in `ami_owners`, tag `stele:blake3`
//! equal to the entry's digest), the launch-template versions Stele adds (one per environment,
//! generation and AMI, found again by their description), the groups and per-generation target groups
//! Stele creates and their bounds, the listener's forward weights, reading instances, images and health
//! back (and, opt-in, probing instances with the environment's own check), and the classification of
//! AWS errors into retryable and refused. Must not decide what to run or when traffic moves (that is
//! `plan`), or touch the ledger.
//!
//! What AWS holds for an environment `E` (all of it found again from tags, names and descriptions):
//! ```text
//! rolling             Auto Scaling group stele-E-G, attached to the spec's target_groups
//!                     tags stele:env=E, stele:group=G (propagated), stele:managed=true
//! blue/green, canary  one Auto Scaling group per generation N: stele-E-G-gN (tags as above plus
//!                     stele:generation=N), attached to its own target group stele-<26 hex> (VPC and
//!                     port from the spec; tags stele:env, stele:group, stele:generation,
//!                     stele:managed, and stele:traffic-since, when its weight last changed); the
//!                     spec's listener forwards to these target groups with the plan's weights
//! launch template     <spec.launch_template>, one version per release:
//!                     description "stele E generation N ami-..."; only ImageId and the instance tags
//!                     (stele:env, stele:generation, stele:version, stele:blake3) differ from the
//!                     template's default version they were made from
//! instances           whatever the groups run; which image an instance runs is its EC2 ImageId, its
//!                     generation the tag stele:generation (or its launch-template version's description)
//! ```
//! A generation's group and target group are deleted once the group is empty and the listener no
//! longer forwards to it; launch-template versions are kept (a restore or an audit may need them).
//!
//! Threads: the AWS SDK is async, the `Provider` trait is not. The provider owns a current-thread tokio
//! runtime and `block_on`s each call: it must be used from a plain thread or a tokio blocking thread
//! (`spawn_blocking`, which is how the agent runs providers), never from inside an async task.

use super::{Provider, ProviderError, Readiness};
use crate::plan::{Generation, GroupTraffic, Health, Instance, Observed, Release, Traffic};
use aws_sdk_autoscaling as autoscaling;
use aws_sdk_ec2 as ec2;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_elasticloadbalancingv2 as elbv2;
use ledger_format::types::{EnvName, Environment, GroupName, HealthCheck, Image, Strategy};
use ledger_format::Blake3Digest;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

/// Tags Stele writes and reads.
pub const TAG_ENV: &str = "stele:env";
pub const TAG_GROUP: &str = "stele:group";
pub const TAG_MANAGED: &str = "stele:managed";
pub const TAG_GENERATION: &str = "stele:generation";
pub const TAG_VERSION: &str = "stele:version";
pub const TAG_BLAKE3: &str = "stele:blake3";
/// On a per-generation target group: when (agent clock, milliseconds) the listener's weights last
/// changed, so pauses and grace periods survive a restart.
pub const TAG_TRAFFIC_SINCE: &str = "stele:traffic-since";

/// Error codes AWS uses for throttling; these (and 5xx, timeouts, dispatch failures) are retryable.
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "RequestThrottled",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "SlowDown",
    "BandwidthLimitExceeded",
    "EC2ThrottledException",
    "PriorRequestNotComplete",
];

/// Error codes that name a passing condition rather than a mistake: retryable as well.
const TRANSIENT: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "ScalingActivityInProgress",
    "ResourceContention",
    "IdempotentParameterMismatch",
];

/// How the provider reaches AWS. `Default` is what the agent uses: endpoint and credentials from the
/// standard variables and chain (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, profiles, instance roles...).
#[derive(Clone, Debug)]
pub struct AwsOptions {
    /// Overrides the endpoint of every service (an emulator); `None` uses `AWS_ENDPOINT_URL` or AWS.
    pub endpoint_url: Option<String>,
    /// Static credentials (access key id, secret access key); `None` uses the standard chain.
    pub credentials: Option<(String, String)>,
    /// Attempts per call, with the SDK's standard backoff between them (throttling, 5xx, timeouts).
    pub max_attempts: u32,
    /// The first backoff of the SDK's standard retry mode (it grows exponentially, with jitter).
    pub initial_backoff: Duration,
    /// The limit of one attempt of one call.
    pub attempt_timeout: Duration,
    /// Also probe each running instance at its private IP with the environment's health check (see
    /// `AwsSettings::probe_instances`).
    pub probe_instances: bool,
    /// Observe only (`stele plan`): the clean-up an observation does otherwise (deleting emptied
    /// groups and unused target groups) is skipped, and every action is refused.
    pub observe_only: bool,
}

impl Default for AwsOptions {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            credentials: None,
            max_attempts: 8,
            initial_backoff: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(30),
            probe_instances: false,
            observe_only: false,
        }
    }
}

pub struct AwsProvider {
    /// Always `Some` until dropped.
    rt: Option<tokio::runtime::Runtime>,
    inner: Inner,
}

impl Drop for AwsProvider {
    /// The agent drops its providers at the end of its async main: a runtime dropped there would panic
    /// ("cannot drop a runtime in a context where blocking is not allowed"). Nothing runs on this
    /// runtime between calls, so there is nothing to wait for.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl AwsProvider {
    fn block_on<F: std::future::Future>(rt: &Option<tokio::runtime::Runtime>, f: F) -> F::Output {
        rt.as_ref().expect("the runtime lives as long as the provider").block_on(f)
    }
}

impl AwsProvider {
    /// The agent's provider: AWS configuration from the environment, loaded once.
    pub fn new() -> Result<Self, ProviderError> {
        Self::with_options(AwsOptions::default())
    }

    /// A provider whose calls all go to `endpoint_url` (an emulator such as moto); credentials still
    /// come from the standard chain.
    pub fn with_endpoint(endpoint_url: &str) -> Result<Self, ProviderError> {
        Self::with_options(AwsOptions { endpoint_url: Some(endpoint_url.to_owned()), ..AwsOptions::default() })
    }

    pub fn with_options(options: AwsOptions) -> Result<Self, ProviderError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ProviderError::Retryable(format!("aws: cannot start a runtime: {e}")))?;
        let retry = aws_config::retry::RetryConfig::standard()
            .with_max_attempts(options.max_attempts.max(1))
            .with_initial_backoff(options.initial_backoff)
            .with_max_backoff(Duration::from_secs(20));
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(10))
            .operation_attempt_timeout(options.attempt_timeout)
            .build();
        // The region of each call is the spec's; this one only keeps the loader from looking for one.
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::from_static("us-east-1"))
            .retry_config(retry)
            .timeout_config(timeouts);
        if let Some(url) = &options.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some((key, secret)) = &options.credentials {
            loader = loader.credentials_provider(aws_credential_types(key, secret));
        }
        let config = rt.block_on(loader.load());
        Ok(Self {
            rt: Some(rt),
            inner: Inner {
                config,
                probe_instances: options.probe_instances,
                observe_only: options.observe_only,
                clients: HashMap::new(),
                digests: HashMap::new(),
                versions: HashMap::new(),
                version_info: HashMap::new(),
                seen: HashSet::new(),
                healthy_since: HashMap::new(),
                scaled_at: HashMap::new(),
                specs: HashMap::new(),
                traffic_seen: HashMap::new(),
                tg_seen: HashSet::new(),
                rolling_versions: HashMap::new(),
            },
        })
    }
}

fn aws_credential_types(key: &str, secret: &str) -> ec2::config::Credentials {
    ec2::config::Credentials::new(key, secret, None, None, "stele-static")
}

impl Provider for AwsProvider {
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
            // A rolling group's target groups send to every registered (healthy) instance.
            Traffic::Even => Ok(()),
            Traffic::Weighted(weights) => {
                self.inner.acting()?;
                Self::block_on(&self.rt, self.inner.set_weights(env, group, weights, now_ms))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Names, descriptions and the spec

/// The Auto Scaling group of a rolling group.
pub fn group_name(env: &EnvName, group: &GroupName) -> String {
    format!("stele-{env}-{group}")
}

/// The Auto Scaling group of one generation of a blue/green or canary group.
pub fn generation_group_name(env: &EnvName, group: &GroupName, generation: Generation) -> String {
    format!("stele-{env}-{group}-g{generation}")
}

/// The target group of one generation: ELBv2 allows 32 characters, so the name is a digest of
/// (environment, group, generation); the tags say what it is.
pub fn target_group_name(env: &EnvName, group: &GroupName, generation: Generation) -> String {
    let h = blake3::hash(format!("stele target group\n{env}\n{group}\n{generation}").as_bytes()).to_hex();
    format!("stele-{}", &h[..26])
}

/// The description that identifies the launch-template version of (environment, generation, AMI).
pub fn version_description(env: &EnvName, generation: Generation, ami: &str) -> String {
    format!("stele {env} generation {generation} {ami}")
}

/// The inverse of `version_description`: (environment, generation, AMI).
pub fn parse_version_description(s: &str) -> Option<(String, Generation, String)> {
    let parts: Vec<&str> = s.split(' ').collect();
    match parts.as_slice() {
        ["stele", env, "generation", n, ami] if !env.is_empty() && !ami.is_empty() => {
            Some(((*env).to_owned(), n.parse().ok()?, (*ami).to_owned()))
        }
        _ => None,
    }
}

/// Listener weights as logs and errors show them: `generation 1: 90, generation 2: 10`.
fn weights_text(weights: &BTreeMap<Generation, u32>) -> String {
    weights.iter().map(|(g, w)| format!("generation {g}: {w}")).collect::<Vec<_>>().join(", ")
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

fn refused(msg: impl Into<String>) -> ProviderError {
    ProviderError::Refused(msg.into())
}

fn retryable(msg: impl Into<String>) -> ProviderError {
    ProviderError::Retryable(msg.into())
}

/// The `aws` members of a spec, borrowed.
struct AwsSpec<'a> {
    region: &'a str,
    launch_template: &'a str,
    subnets: Vec<&'a str>,
    ami_owners: Vec<&'a str>,
    target_groups: Vec<&'a str>,
    listener: Option<&'a str>,
    vpc: Option<&'a str>,
    port: Option<u64>,
}

impl<'a> AwsSpec<'a> {
    fn of(spec: &'a Environment) -> Result<Self, ProviderError> {
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
            } => Ok(Self {
                region: region.as_str(),
                launch_template: launch_template.as_str(),
                subnets: subnets.iter().map(|s| s.as_str()).collect(),
                ami_owners: ami_owners.iter().map(|s| s.as_str()).collect(),
                target_groups: target_groups.iter().map(|s| s.as_str()).collect(),
                listener: listener.as_ref().map(|s| s.as_str()),
                vpc: vpc.as_ref().map(|s| s.as_str()),
                port: *port,
            }),
            _ => Err(refused(format!("environment {} does not use provider aws", spec.name))),
        }
    }
}

/// How a strategy lays groups out on AWS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout<'a> {
    /// One Auto Scaling group per spec group, attached to the spec's target groups.
    Rolling,
    /// One Auto Scaling group and one target group per generation; the listener's weighted forward
    /// action moves traffic between generations.
    Weighted { listener: &'a str, vpc: &'a str, port: i32 },
}

impl<'a> AwsSpec<'a> {
    fn layout(&self, spec: &Environment) -> Result<Layout<'a>, ProviderError> {
        let strategy = match &spec.strategy {
            Strategy::Rolling { .. } => return Ok(Layout::Rolling),
            Strategy::BlueGreen { .. } => "blue_green",
            Strategy::Canary { .. } => "canary",
        };
        let (Some(listener), Some(vpc), Some(port)) = (self.listener, self.vpc, self.port) else {
            return Err(refused(format!("strategy {strategy} on aws needs listener, vpc and port in the provider")));
        };
        // One listener carries one group's generations: two groups would fight over its weights.
        if spec.groups.len() != 1 {
            return Err(refused(format!(
                "strategy {strategy} on aws moves one listener's traffic, so the spec must have exactly one \
                 group; it has {}",
                spec.groups.len()
            )));
        }
        Ok(Layout::Weighted { listener, vpc, port: to_i32(port, "port")? })
    }
}

fn machine_image(release: &Release) -> Result<&str, ProviderError> {
    match &release.image {
        Image::MachineImage { id, .. } => Ok(id.as_str()),
        Image::Artifact { .. } => Err(refused(format!(
            "generation {} pins an artifact; provider aws runs machine images (AMIs)",
            release.generation
        ))),
    }
}

fn to_i32(n: u64, what: &str) -> Result<i32, ProviderError> {
    i32::try_from(n).map_err(|_| refused(format!("{what} {n} is too large for auto scaling")))
}

// ---------------------------------------------------------------------------------------------------
// Errors

/// Turns an SDK error into the provider's error classes: throttling, 5xx, timeouts and dispatch
/// failures are retryable (the SDK has already retried them with backoff); any other service error
/// (validation, missing resources, permissions) is refused with AWS's code and message.
fn classify<E>(op: &str, err: SdkError<E, HttpResponse>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    match &err {
        SdkError::ServiceError(_) => {
            let code = err.code().unwrap_or("").to_owned();
            let message = err.message().unwrap_or("").to_owned();
            let what = if code.is_empty() { format!("HTTP {}", status.unwrap_or(0)) } else { code.clone() };
            let text = format!("aws {op}: {what}: {message}");
            if THROTTLING.contains(&code.as_str())
                || TRANSIENT.contains(&code.as_str())
                || status.is_some_and(|s| s >= 500 || s == 429)
            {
                retryable(text)
            } else {
                refused(text)
            }
        }
        // Timeouts, connection failures, unparseable responses and requests that could not be built
        // (credentials that could not be loaded yet): nothing a human must fix first.
        _ => retryable(format!("aws {op}: {}", DisplayErrorContext(&err))),
    }
}

/// The AWS error code of a failed call, if it was a service error.
fn error_code<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<String> {
    match err {
        SdkError::ServiceError(_) => err.code().map(str::to_owned),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------------
// The provider's state: clients and caches; none of it is needed to continue after a restart

#[derive(Clone)]
struct Clients {
    ec2: ec2::Client,
    autoscaling: autoscaling::Client,
    elb: elbv2::Client,
}

struct Inner {
    config: aws_config::SdkConfig,
    probe_instances: bool,
    observe_only: bool,
    clients: HashMap<String, Clients>,
    /// (region, AMI) → its `stele:blake3` digest, for observing; prepare always asks AWS afresh.
    digests: HashMap<(String, String), Blake3Digest>,
    /// (region, template, description) → the version number Stele made for it.
    versions: HashMap<(String, String, String), i64>,
    /// (region, template) → version number → (description, ImageId), for reading generations back.
    version_info: HashMap<(String, String), BTreeMap<i64, (String, String)>>,
    /// Environments observed at least once by this process.
    seen: HashSet<EnvName>,
    /// Instance id → when this process first saw it healthy.
    healthy_since: HashMap<String, u64>,
    /// Group name → when this process last raised its desired capacity (the age of pending launches).
    scaled_at: HashMap<String, u64>,
    /// The spec of each environment as last observed (traffic changes and terminations have none).
    specs: HashMap<EnvName, Environment>,
    /// (environment, listener weights) → when this process first saw them, for weights whose target
    /// groups carry no `stele:traffic-since` tag.
    traffic_seen: HashMap<(EnvName, String), u64>,
    /// Rolling groups of each environment at the last observation: (group name, launch-template version).
    rolling_versions: HashMap<EnvName, Vec<(String, Option<String>)>>,
    /// Environments whose per-generation target groups were not all gone at the last look.
    tg_seen: HashSet<EnvName>,
}

/// An Auto Scaling group as read from AWS.
#[derive(Clone, Debug)]
struct GroupView {
    name: String,
    env: Option<String>,
    group: Option<String>,
    /// Set on the per-generation groups of blue/green and canary.
    generation: Option<Generation>,
    managed: bool,
    min: i32,
    max: i32,
    desired: i32,
    template_name: Option<String>,
    template_version: Option<String>,
    target_groups: Vec<String>,
    instances: Vec<GroupInstance>,
}

#[derive(Clone, Debug)]
struct GroupInstance {
    id: String,
    lifecycle: String,
    health_status: String,
}

impl GroupInstance {
    /// On its way out (or out already): not counted, not reported.
    fn leaving(&self) -> bool {
        self.lifecycle.starts_with("Terminat") || self.lifecycle.starts_with("Detach")
    }
}

impl GroupView {
    fn from_aws(g: &autoscaling::types::AutoScalingGroup) -> Self {
        let tag = |k: &str| g.tags().iter().find(|t| t.key() == Some(k)).and_then(|t| t.value()).map(str::to_owned);
        let lt = g.launch_template();
        Self {
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
            target_groups: g.target_group_arns().to_vec(),
            instances: g
                .instances()
                .iter()
                .filter_map(|i| {
                    Some(GroupInstance {
                        id: i.instance_id()?.to_owned(),
                        lifecycle: i.lifecycle_state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                        health_status: i.health_status().unwrap_or("Healthy").to_owned(),
                    })
                })
                .collect(),
        }
    }

    fn live(&self) -> impl Iterator<Item = &GroupInstance> {
        self.instances.iter().filter(|i| !i.leaving())
    }

    /// Refuses a group Stele does not own for this environment, group and (for blue/green and canary)
    /// generation: a name taken by someone else, or by another environment or group whose names spell
    /// the same group name.
    fn check_owned(
        &self,
        env: &EnvName,
        group: &GroupName,
        generation: Option<Generation>,
    ) -> Result<(), ProviderError> {
        if self.managed
            && self.env.as_deref() == Some(env.as_str())
            && self.group.as_deref() == Some(group.as_str())
            && self.generation == generation
        {
            return Ok(());
        }
        Err(refused(format!(
            "auto scaling group {} exists but is not Stele's group {group}{} of environment {env} \
             (tags {TAG_ENV}={}, {TAG_GROUP}={}, {TAG_GENERATION}={}, {TAG_MANAGED}={}); rename or remove it",
            self.name,
            generation.map(|g| format!(" generation {g}")).unwrap_or_default(),
            self.env.as_deref().unwrap_or("-"),
            self.group.as_deref().unwrap_or("-"),
            self.generation.map_or("-".to_owned(), |g| g.to_string()),
            self.managed
        )))
    }

    /// An empty group with nothing on its way: safe to delete.
    fn empty(&self) -> bool {
        self.desired == 0 && self.instances.is_empty()
    }
}

/// A group `launch` creates.
struct NewGroup<'a> {
    name: &'a str,
    group: &'a GroupName,
    generation: Option<Generation>,
    version: i64,
    max: u64,
    target_groups: Vec<String>,
}

/// A per-generation target group Stele made, as read from ELBv2.
#[derive(Clone, Debug)]
struct TargetGroupView {
    arn: String,
    group: String,
    generation: Generation,
    traffic_since: Option<u64>,
}

/// An EC2 instance as read from `DescribeInstances`.
#[derive(Clone, Debug)]
struct Ec2Instance {
    image_id: String,
    private_ip: Option<String>,
    state: String,
    launched_ms: u64,
    tags: HashMap<String, String>,
}

/// One target group's verdict on one instance.
#[derive(Clone, Debug)]
struct TargetVerdict {
    target_group: String,
    state: String,
    reason: String,
    description: String,
}

/// What an instance's health is, from EC2, Auto Scaling and the load balancer; `None`: leaving or gone,
/// not reported.
fn judge_health(
    member: &GroupInstance,
    ec2: Option<&Ec2Instance>,
    targets: &[TargetVerdict],
    now_ms: u64,
) -> Option<Health> {
    if member.leaving() {
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
                        short_arn(&t.target_group),
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

/// The environment's own health check against every running instance's private IP and `port`, all at
/// once (each bounded by the check's timeout): instance id → verdict, the error naming the address.
fn probe_instances(
    instances: &HashMap<String, Ec2Instance>,
    check: &HealthCheck,
    port: u64,
) -> HashMap<String, Result<(), String>> {
    let Ok(port) = u16::try_from(port) else { return HashMap::new() };
    let targets: Vec<(String, std::net::SocketAddr)> = instances
        .iter()
        .filter(|(_, i)| i.state == "running")
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

/// A target group's view from its tags, when it is Stele's for this environment.
fn target_group_view(env: &EnvName, arn: String, tags: &HashMap<String, String>) -> Option<TargetGroupView> {
    if tags.get(TAG_MANAGED).map(String::as_str) != Some("true") || tags.get(TAG_ENV)? != env.as_str() {
        return None;
    }
    Some(TargetGroupView {
        arn,
        group: tags.get(TAG_GROUP)?.clone(),
        generation: tags.get(TAG_GENERATION)?.parse().ok()?,
        traffic_since: tags.get(TAG_TRAFFIC_SINCE).and_then(|t| t.parse().ok()),
    })
}

/// Forward weights as shares of 1000 per target group, sorted: two settings that send the same shares
/// of traffic compare equal whatever their scale.
fn normalize(tuples: &[(String, i32)]) -> Vec<(String, i64)> {
    let total: i64 = tuples.iter().map(|(_, w)| i64::from(*w)).sum();
    let mut out: Vec<(String, i64)> = tuples
        .iter()
        .filter(|(_, w)| *w > 0)
        .map(|(a, w)| (a.clone(), if total > 0 { i64::from(*w) * 1000 / total } else { 0 }))
        .collect();
    out.sort();
    out
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

// ---------------------------------------------------------------------------------------------------
// The work

impl Inner {
    /// Refuses every change in observe-only mode.
    fn acting(&self) -> Result<(), ProviderError> {
        if self.observe_only {
            return Err(refused("this aws provider only observes (stele plan)"));
        }
        Ok(())
    }

    fn clients(&mut self, region: &str) -> Clients {
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

    /// Checks the release's AMI and makes sure its launch-template version exists; returns its number.
    async fn prepare(&mut self, env: &EnvName, spec: &Environment, release: &Release) -> Result<i64, ProviderError> {
        let aws = AwsSpec::of(spec)?;
        aws.layout(spec)?;
        let ami = machine_image(release)?;
        let c = self.clients(aws.region);
        self.check_image(&c, &aws, ami, release.digest()).await?;
        self.ensure_version(&c, &aws, env, release, ami).await
    }

    /// The AMI exists, is `available`, is owned by an account in `ami_owners` and carries the tag
    /// `stele:blake3` equal to the entry's digest; otherwise the release is refused, naming which.
    async fn check_image(
        &mut self,
        c: &Clients,
        aws: &AwsSpec<'_>,
        ami: &str,
        digest: &Blake3Digest,
    ) -> Result<(), ProviderError> {
        let out = c.ec2.describe_images().image_ids(ami).send().await.map_err(|e| match error_code(&e).as_deref() {
            Some(code) if code.starts_with("InvalidAMIID") => {
                refused(format!("AMI {ami} does not exist or is not visible here ({code})"))
            }
            _ => classify("DescribeImages", e),
        })?;
        let Some(image) = out.images().iter().find(|i| i.image_id() == Some(ami)) else {
            return Err(refused(format!("AMI {ami} does not exist or is not visible here")));
        };
        let state = image.state().map(|s| s.as_str()).unwrap_or("unknown");
        if state != "available" {
            return Err(refused(format!("AMI {ami} is {state}, not available")));
        }
        let owner = image.owner_id().unwrap_or("unknown");
        if !aws.ami_owners.contains(&owner) {
            return Err(refused(format!(
                "AMI {ami} is owned by account {owner}, which is not in ami_owners ({})",
                aws.ami_owners.join(", ")
            )));
        }
        let want = digest.to_hex();
        match tags_ec2(image.tags()).get(TAG_BLAKE3) {
            None => Err(refused(format!("AMI {ami} has no tag {TAG_BLAKE3}; the entry pins {want}"))),
            Some(tag) if *tag != want => {
                Err(refused(format!("AMI {ami} tag {TAG_BLAKE3} is {tag}, the entry pins {want}")))
            }
            Some(_) => {
                self.digests.insert((aws.region.to_owned(), ami.to_owned()), *digest);
                Ok(())
            }
        }
    }

    /// Every version of the template: number → (description, ImageId), remembered for observing.
    async fn list_versions(
        &mut self,
        c: &Clients,
        region: &str,
        template: &str,
    ) -> Result<Vec<ec2::types::LaunchTemplateVersion>, ProviderError> {
        let versions: Vec<ec2::types::LaunchTemplateVersion> = c
            .ec2
            .describe_launch_template_versions()
            .launch_template_name(template)
            .max_results(200)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<_, _>>()
            .await
            .map_err(|e| match error_code(&e).as_deref() {
                Some(code) if code.starts_with("InvalidLaunchTemplateName") || code.contains("NotFound") => {
                    refused(format!("launch template {template} does not exist in {region} ({code})"))
                }
                _ => classify("DescribeLaunchTemplateVersions", e),
            })?;
        let info = self.version_info.entry((region.to_owned(), template.to_owned())).or_default();
        for v in &versions {
            if let Some(n) = v.version_number() {
                let image = v.launch_template_data().and_then(|d| d.image_id()).unwrap_or_default();
                info.insert(n, (v.version_description().unwrap_or_default().to_owned(), image.to_owned()));
            }
        }
        Ok(versions)
    }

    /// The lowest version of the template made for (env, generation, AMI): its description says so and
    /// its ImageId is the AMI.
    fn find_version(&self, region: &str, template: &str, description: &str, ami: &str) -> Option<i64> {
        self.version_info
            .get(&(region.to_owned(), template.to_owned()))?
            .iter()
            .find(|(_, (d, image))| d == description && image == ami)
            .map(|(n, _)| *n)
    }

    async fn ensure_version(
        &mut self,
        c: &Clients,
        aws: &AwsSpec<'_>,
        env: &EnvName,
        release: &Release,
        ami: &str,
    ) -> Result<i64, ProviderError> {
        let (region, template) = (aws.region, aws.launch_template);
        let description = version_description(env, release.generation, ami);
        let key = (region.to_owned(), template.to_owned(), description.clone());
        if let Some(n) = self.versions.get(&key) {
            return Ok(*n);
        }
        let versions = self.list_versions(c, region, template).await?;
        if let Some(n) = self.find_version(region, template, &description, ami) {
            self.versions.insert(key, n);
            return Ok(n);
        }
        // A new version made from the template's default version as it is now: only the image and the
        // instance tags change (the operator's own instance tags are kept).
        let described = c
            .ec2
            .describe_launch_templates()
            .launch_template_names(template)
            .send()
            .await
            .map_err(|e| classify("DescribeLaunchTemplates", e))?;
        let source = described
            .launch_templates()
            .iter()
            .find(|t| t.launch_template_name() == Some(template))
            .and_then(|t| t.default_version_number())
            .ok_or_else(|| refused(format!("launch template {template} has no default version")))?;
        let source_data = versions
            .iter()
            .find(|v| v.version_number() == Some(source))
            .and_then(|v| v.launch_template_data())
            .cloned()
            .unwrap_or_else(|| ec2::types::ResponseLaunchTemplateData::builder().build());
        let ours = [
            (TAG_ENV, env.to_string()),
            (TAG_GENERATION, release.generation.to_string()),
            (TAG_VERSION, release.version.to_string()),
            (TAG_BLAKE3, release.digest().to_hex()),
        ];
        let mut specs = Vec::new();
        let mut has_instance = false;
        for s in source_data.tag_specifications() {
            let instance = s.resource_type() == Some(&ec2::types::ResourceType::Instance);
            has_instance |= instance;
            let mut tags: Vec<ec2::types::Tag> = s
                .tags()
                .iter()
                .filter(|t| !(instance && t.key().is_some_and(|k| k.starts_with("stele:"))))
                .cloned()
                .collect();
            if instance {
                tags.extend(ours.iter().map(|(k, v)| ec2::types::Tag::builder().key(*k).value(v).build()));
            }
            specs.push(
                ec2::types::LaunchTemplateTagSpecificationRequest::builder()
                    .set_resource_type(s.resource_type().cloned())
                    .set_tags(Some(tags))
                    .build(),
            );
        }
        if !has_instance {
            specs.push(
                ec2::types::LaunchTemplateTagSpecificationRequest::builder()
                    .resource_type(ec2::types::ResourceType::Instance)
                    .set_tags(Some(
                        ours.iter().map(|(k, v)| ec2::types::Tag::builder().key(*k).value(v).build()).collect(),
                    ))
                    .build(),
            );
        }
        // SourceVersion carries everything else over on AWS; the instance type is copied as well
        // because emulators (moto) ignore SourceVersion.
        let data = ec2::types::RequestLaunchTemplateData::builder()
            .image_id(ami)
            .set_instance_type(source_data.instance_type().cloned())
            .set_tag_specifications(Some(specs))
            .build();
        // The same request after a lost response (or a restart) is the same token: no second version.
        let token = blake3::hash(format!("{region}\n{template}\n{source}\n{description}").as_bytes()).to_hex();
        c.ec2
            .create_launch_template_version()
            .launch_template_name(template)
            .source_version(source.to_string())
            .version_description(&description)
            .launch_template_data(data)
            .client_token(&token[..64])
            .send()
            .await
            .map_err(|e| classify("CreateLaunchTemplateVersion", e))?;
        tracing::info!(template, %description, "created a launch template version");
        // Read back rather than trusting the answer: where a retried create made two, the lowest wins.
        self.list_versions(c, region, template).await?;
        let n = self
            .find_version(region, template, &description, ami)
            .ok_or_else(|| retryable(format!("launch template {template}: the new version is not visible yet")))?;
        self.versions.insert(key, n);
        Ok(n)
    }

    // -----------------------------------------------------------------------------------------------
    // Target groups and the listener (blue/green, canary)

    /// Tags of target groups, by ARN (DescribeTags takes 20 at a time).
    async fn target_group_tags(
        &self,
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

    /// The per-generation target groups Stele made for this environment (found by name prefix and tags).
    async fn env_target_groups(&self, c: &Clients, env: &EnvName) -> Result<Vec<TargetGroupView>, ProviderError> {
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
        let tags = self.target_group_tags(c, &arns).await?;
        Ok(arns.into_iter().filter_map(|arn| target_group_view(env, arn.clone(), tags.get(&arn)?)).collect())
    }

    /// The target group of (env, group, generation), if it exists and is Stele's.
    async fn find_target_group(
        &self,
        c: &Clients,
        env: &EnvName,
        group: &GroupName,
        generation: Generation,
    ) -> Result<Option<String>, ProviderError> {
        let name = target_group_name(env, group, generation);
        let found = match c.elb.describe_target_groups().names(&name).send().await {
            Ok(out) => out.target_groups().iter().find_map(|t| t.target_group_arn().map(str::to_owned)),
            Err(e) if error_code(&e).as_deref() == Some("TargetGroupNotFound") => None,
            Err(e) => return Err(classify("DescribeTargetGroups", e)),
        };
        let Some(arn) = found else { return Ok(None) };
        let tags = self.target_group_tags(c, std::slice::from_ref(&arn)).await?;
        match tags.get(&arn).and_then(|t| target_group_view(env, arn.clone(), t)) {
            Some(v) if v.group == group.as_str() && v.generation == generation => Ok(Some(arn)),
            _ => Err(refused(format!(
                "target group {name} exists but is not Stele's for group {group} generation {generation} of \
                 environment {env}; rename or remove it"
            ))),
        }
    }

    /// The target group of a generation, created when missing: the spec's VPC and port, HTTP, health
    /// checked on the spec's HTTP path (or `/` for a TCP check).
    #[allow(clippy::too_many_arguments)]
    async fn ensure_target_group(
        &self,
        c: &Clients,
        spec: &Environment,
        env: &EnvName,
        group: &GroupName,
        generation: Generation,
        vpc: &str,
        port: i32,
    ) -> Result<String, ProviderError> {
        if let Some(arn) = self.find_target_group(c, env, group, generation).await? {
            return Ok(arn);
        }
        let name = target_group_name(env, group, generation);
        let tag = |k: &str, v: String| elbv2::types::Tag::builder().key(k).value(v).build();
        let mut create = c
            .elb
            .create_target_group()
            .name(&name)
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
        self.find_target_group(c, env, group, generation)
            .await?
            .ok_or_else(|| retryable(format!("target group {name} is not visible yet")))
    }

    /// The listener's forward action as (target group ARN, weight) pairs; empty when it does not
    /// forward (a fixed response, a redirect).
    async fn listener_forward(&self, c: &Clients, listener: &str) -> Result<Vec<(String, i32)>, ProviderError> {
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

    /// Points the listener at the generations' target groups with these weights. The target groups
    /// are tagged with the time first, so a restart between the two calls lengthens a pause, never
    /// shortens it.
    async fn set_weights(
        &mut self,
        env: &EnvName,
        group: &GroupName,
        weights: &BTreeMap<Generation, u32>,
        now_ms: u64,
    ) -> Result<(), ProviderError> {
        let spec = self.spec_of(env)?;
        let aws = AwsSpec::of(&spec)?;
        let Layout::Weighted { listener, .. } = aws.layout(&spec)? else {
            return Err(refused(format!("environment {env} is rolling; its traffic has no weights")));
        };
        let c = self.clients(aws.region);
        let mut tuples = Vec::new();
        for (generation, weight) in listener_weights(weights)? {
            if weight == 0 {
                continue;
            }
            // Only generations with healthy instances get weight, so their target groups exist.
            let arn = self.find_target_group(&c, env, group, generation).await?.ok_or_else(|| {
                retryable(format!("target group of generation {generation} of {env}/{group} does not exist"))
            })?;
            tuples.push((arn, weight));
        }
        if tuples.is_empty() {
            return Err(refused(format!("weights {} send no traffic anywhere", weights_text(weights))));
        }
        let current = self.listener_forward(&c, listener).await?;
        if normalize(&current) == normalize(&tuples) {
            return Ok(());
        }
        c.elb
            .add_tags()
            .set_resource_arns(Some(tuples.iter().map(|(a, _)| a.clone()).collect()))
            .tags(elbv2::types::Tag::builder().key(TAG_TRAFFIC_SINCE).value(now_ms.to_string()).build())
            .send()
            .await
            .map_err(|e| classify("AddTags", e))?;
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
            .map_err(|e| classify("ModifyListener", e))?;
        tracing::info!(listener = short_listener(listener), weights = %weights_text(weights), "listener weights set");
        Ok(())
    }

    /// Deletes the target groups of this environment that no group is attached to and the listener does
    /// not forward to; a target group still held by a group being deleted is tried again next time.
    async fn delete_unused_target_groups(
        &self,
        c: &Clients,
        tgs: &[TargetGroupView],
        forward: &[(String, i32)],
        attached: &HashSet<String>,
    ) {
        for tg in tgs {
            if forward.iter().any(|(a, _)| *a == tg.arn) || attached.contains(&tg.arn) {
                continue;
            }
            match c.elb.delete_target_group().target_group_arn(&tg.arn).send().await {
                Ok(_) => tracing::info!(
                    target_group = short_arn(&tg.arn),
                    generation = tg.generation,
                    "deleted target group"
                ),
                Err(e) => tracing::warn!(target_group = short_arn(&tg.arn), "{}", classify("DeleteTargetGroup", e)),
            }
        }
    }

    /// The strategy changed from rolling to blue/green or canary: a rolling group that still runs
    /// instances of one generation gets that generation's target group attached, so the listener can
    /// weight it like any generation while the planner replaces it. A rolling group caught mid-rollout,
    /// with two generations, is refused: one target group attached to it would carry both.
    #[allow(clippy::too_many_arguments)]
    async fn adopt_rolling_groups(
        &self,
        c: &Clients,
        spec: &Environment,
        env: &EnvName,
        groups: &[GroupView],
        tgs: &[TargetGroupView],
        ec2: &HashMap<String, Ec2Instance>,
        vpc: &str,
        port: i32,
    ) -> Result<(), ProviderError> {
        for view in groups.iter().filter(|g| g.generation.is_none()) {
            let Some(group) = view.group.as_deref().and_then(|g| g.parse::<GroupName>().ok()) else { continue };
            let generations: BTreeSet<Generation> =
                view.live().filter_map(|m| ec2.get(&m.id)?.tags.get(TAG_GENERATION)?.parse().ok()).collect();
            let generation = match generations.into_iter().collect::<Vec<_>>()[..] {
                [] => continue,
                [g] => g,
                ref several => {
                    // One target group attached to the group would carry every generation in it.
                    return Err(refused(format!(
                        "the rolling group {} runs generations {several:?}: a rolling rollout is under way; \
                         finish it with strategy rolling before switching to {}",
                        view.name,
                        if matches!(spec.strategy, Strategy::Canary { .. }) { "canary" } else { "blue_green" }
                    )));
                }
            };
            // Adopted on an earlier tick: its target group (read this tick) is attached already.
            if tgs
                .iter()
                .any(|t| t.group == group.as_str() && t.generation == generation && view.target_groups.contains(&t.arn))
            {
                continue;
            }
            let arn = self.ensure_target_group(c, spec, env, &group, generation, vpc, port).await?;
            if view.target_groups.contains(&arn) {
                continue;
            }
            c.autoscaling
                .attach_load_balancer_target_groups()
                .auto_scaling_group_name(&view.name)
                .target_group_arns(&arn)
                .send()
                .await
                .map_err(|e| classify("AttachLoadBalancerTargetGroups", e))?;
            tracing::info!(group = %view.name, generation, target_group = short_arn(&arn), "rolling group adopted: its generation's target group attached");
        }
        Ok(())
    }

    /// Every group tagged with this environment.
    async fn env_groups(&self, c: &Clients, env: &EnvName) -> Result<Vec<GroupView>, ProviderError> {
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
        Ok(groups
            .iter()
            .map(GroupView::from_aws)
            .filter(|g| g.managed && g.env.as_deref() == Some(env.as_str()))
            .collect())
    }

    async fn describe_group(&self, c: &Clients, name: &str) -> Result<Option<GroupView>, ProviderError> {
        let out = c
            .autoscaling
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .map_err(|e| classify("DescribeAutoScalingGroups", e))?;
        Ok(out.auto_scaling_groups().iter().map(GroupView::from_aws).find(|g| g.name == name))
    }

    async fn describe_instances(
        &self,
        c: &Clients,
        ids: &[String],
    ) -> Result<HashMap<String, Ec2Instance>, ProviderError> {
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
                out.insert(
                    id.to_owned(),
                    Ec2Instance {
                        image_id: i.image_id().unwrap_or_default().to_owned(),
                        private_ip: i.private_ip_address().map(str::to_owned),
                        state: i.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default(),
                        launched_ms,
                        tags: tags_ec2(i.tags()),
                    },
                );
            }
        }
        Ok(out)
    }

    /// The digest an AMI's tag records, remembered; `None` when the AMI is gone or has no valid tag.
    async fn image_digest(
        &mut self,
        c: &Clients,
        region: &str,
        ami: &str,
    ) -> Result<Option<Blake3Digest>, ProviderError> {
        let key = (region.to_owned(), ami.to_owned());
        if let Some(d) = self.digests.get(&key) {
            return Ok(Some(*d));
        }
        let out = match c.ec2.describe_images().image_ids(ami).send().await {
            Ok(out) => out,
            Err(e) if error_code(&e).is_some_and(|c| c.starts_with("InvalidAMIID")) => return Ok(None),
            Err(e) => return Err(classify("DescribeImages", e)),
        };
        let digest = out
            .images()
            .iter()
            .find(|i| i.image_id() == Some(ami))
            .and_then(|i| tags_ec2(i.tags()).get(TAG_BLAKE3).and_then(|t| t.parse::<Blake3Digest>().ok()));
        if let Some(d) = &digest {
            self.digests.insert(key, *d);
        }
        Ok(digest)
    }

    /// Target health of the given instances in each of the target groups.
    async fn target_health(
        &self,
        c: &Clients,
        target_groups: &[String],
        ids: &[String],
    ) -> Result<HashMap<String, Vec<TargetVerdict>>, ProviderError> {
        let mut out: HashMap<String, Vec<TargetVerdict>> = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
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
                    target_group: tg.clone(),
                    state: h.state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                    reason: h.reason().map(|s| s.as_str().to_owned()).unwrap_or_default(),
                    description: h.description().unwrap_or_default().to_owned(),
                });
            }
        }
        Ok(out)
    }

    /// The generation and AMI a launch-template version of `template` was made for, if Stele made it.
    fn version_release(&self, region: &str, env: &EnvName, view: &GroupView) -> Option<(Generation, String)> {
        let template = view.template_name.as_deref()?;
        let n: i64 = view.template_version.as_deref()?.parse().ok()?;
        let (description, image) = self.version_info.get(&(region.to_owned(), template.to_owned()))?.get(&n)?;
        let (of, generation, ami) = parse_version_description(description)?;
        (of == env.as_str() && ami == *image).then_some((generation, ami))
    }

    async fn observe(&mut self, env: &EnvName, spec: &Environment, now_ms: u64) -> Result<Observed, ProviderError> {
        let aws = AwsSpec::of(spec)?;
        let c = self.clients(aws.region);
        let region = aws.region.to_owned();
        self.specs.insert(env.clone(), spec.clone());
        let first_look = self.seen.insert(env.clone());
        let layout = aws.layout(spec)?;
        let groups = self.env_groups(&c, env).await?;
        // Per-generation target groups and the listener: read for blue/green and canary, and while
        // anything of such a layout may be left to clean up.
        let weighted = matches!(layout, Layout::Weighted { .. });
        let (tgs, forward) =
            if weighted || first_look || self.tg_seen.contains(env) || groups.iter().any(|g| g.generation.is_some()) {
                let tgs = self.env_target_groups(&c, env).await?;
                let forward = match aws.listener {
                    Some(l) if weighted || !tgs.is_empty() => self.listener_forward(&c, l).await?,
                    _ => vec![],
                };
                (tgs, forward)
            } else {
                (vec![], vec![])
            };
        if tgs.is_empty() {
            self.tg_seen.remove(env);
        } else {
            self.tg_seen.insert(env.clone());
        }
        // (group, generation) of the target groups the listener forwards to, with their weights.
        let forwarded: BTreeMap<(String, Generation), (i32, Option<u64>)> = forward
            .iter()
            .filter_map(|(arn, w)| {
                let tg = tgs.iter().find(|t| t.arn == *arn)?;
                Some(((tg.group.clone(), tg.generation), (*w, tg.traffic_since)))
            })
            .collect();
        if !weighted {
            if let Some(((_, generation), _)) = forwarded.iter().next() {
                return Err(refused(format!(
                    "the listener {} forwards to the target group of generation {generation}: this environment \
                     ran blue_green or canary, and switching it to rolling on aws is not supported (the \
                     listener would be left on a group being emptied); nothing was changed. Keep a weighted \
                     strategy, or move the listener by hand first",
                    short_listener(aws.listener.unwrap_or_default())
                )));
            }
        }
        // Versions are read once (and again whenever a group names one not yet known).
        let unknown_version = groups.iter().any(|g| {
            g.template_name.as_deref().is_some_and(|t| {
                let known = self.version_info.get(&(region.clone(), t.to_owned()));
                g.template_version
                    .as_deref()
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| known.is_none_or(|k| !k.contains_key(&v)))
            })
        });
        if unknown_version {
            let templates: BTreeSet<String> = groups.iter().filter_map(|g| g.template_name.clone()).collect();
            for t in templates {
                // A group made from a template that is gone still reports its instances.
                if let Err(e) = self.list_versions(&c, &region, &t).await {
                    if e.is_retryable() {
                        return Err(e);
                    }
                    tracing::warn!(template = %t, "cannot read launch template versions: {e}");
                }
            }
        }
        let ids: Vec<String> = groups.iter().flat_map(|g| g.live().map(|i| i.id.clone())).collect();
        let ec2 = self.describe_instances(&c, &ids).await?;
        if let (Layout::Weighted { vpc, port, .. }, false) = (layout, self.observe_only) {
            self.adopt_rolling_groups(&c, spec, env, &groups, &tgs, &ec2, vpc, port).await?;
        }
        let probes = match (self.probe_instances, aws.port) {
            (true, Some(port)) => probe_instances(&ec2, &spec.health, port),
            _ => HashMap::new(),
        };
        let mut observed = Observed::default();
        let mut healthy_now = HashSet::new();
        // Target groups attached to a group that stays: not to be deleted.
        let mut attached: HashSet<String> = HashSet::new();
        let rolling_versions = groups
            .iter()
            .filter(|g| g.generation.is_none() && g.template_name.as_deref() == Some(aws.launch_template))
            .map(|g| (g.name.clone(), g.template_version.clone()))
            .collect();
        self.rolling_versions.insert(env.clone(), rolling_versions);
        for view in &groups {
            let Some(group) = view.group.as_deref().and_then(|g| g.parse::<GroupName>().ok()) else {
                tracing::warn!(group = %view.name, "auto scaling group tagged for {env} has no valid {TAG_GROUP} tag");
                continue;
            };
            let live: Vec<String> = view.live().map(|i| i.id.clone()).collect();
            let targets = self.target_health(&c, &view.target_groups, &live).await?;
            // What the group launches now: instances not visible in EC2 yet, and launches not started
            // yet, are taken to be of it.
            let launching = match self.version_release(&region, env, view) {
                Some((g, ami)) => (g, self.image_digest(&c, &region, &ami).await?.unwrap_or(Blake3Digest::ZERO)),
                None => (0, Blake3Digest::ZERO),
            };
            let mut counted = 0i32;
            for member in view.live() {
                let inst = ec2.get(&member.id);
                let verdicts = targets.get(&member.id).map(Vec::as_slice).unwrap_or(&[]);
                let Some(mut health) = judge_health(member, inst, verdicts, now_ms) else { continue };
                if let (Health::Healthy { .. }, Some(Err(reason))) = (&health, probes.get(&member.id)) {
                    health = Health::Unhealthy { since_ms: now_ms, reason: reason.clone() };
                }
                counted += 1;
                let launched_ms = inst.map_or(now_ms, |i| i.launched_ms);
                if let Health::Healthy { since_ms } = &mut health {
                    // Healthy since this process first saw it so; on the first look after a start,
                    // since launch (what was running before the restart has been up at least that long).
                    let first = if first_look { launched_ms } else { now_ms };
                    *since_ms = *self.healthy_since.entry(member.id.clone()).or_insert(first);
                    healthy_now.insert(member.id.clone());
                }
                let (generation, digest, drift) = match inst {
                    Some(i) => {
                        let generation = i
                            .tags
                            .get(TAG_GENERATION)
                            .filter(|_| i.tags.get(TAG_ENV).map(String::as_str) == Some(env.as_str()))
                            .and_then(|g| g.parse::<Generation>().ok())
                            .or_else(|| {
                                // No tag: the version the group launched from, if its image is this one.
                                self.version_release(&region, env, view)
                                    .filter(|(_, ami)| *ami == i.image_id)
                                    .map(|(g, _)| g)
                            })
                            .unwrap_or(0);
                        match self.image_digest(&c, &region, &i.image_id).await? {
                            Some(d) => (generation, d, None),
                            None => (
                                generation,
                                Blake3Digest::ZERO,
                                Some(format!("its AMI {} has no valid tag {TAG_BLAKE3}", i.image_id)),
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
            // Launches Auto Scaling has accepted but not started yet: reported as starting instances of
            // the version the group launches from, so the planner does not ask for them twice.
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
            // layout, or a generation the listener does not forward to. Its target group goes after it.
            let unneeded = !spec.groups.iter().any(|g| g.name == group)
                || match view.generation {
                    None => weighted,
                    Some(g) => !weighted || !forwarded.contains_key(&(group.to_string(), g)),
                };
            if view.empty() && unneeded && !self.observe_only {
                match c.autoscaling.delete_auto_scaling_group().auto_scaling_group_name(&view.name).send().await {
                    Ok(_) => {
                        tracing::info!(group = %view.name, "deleted an empty group that is no longer needed");
                        continue;
                    }
                    Err(e) => tracing::warn!(group = %view.name, "{}", classify("DeleteAutoScalingGroup", e)),
                }
            }
            attached.extend(view.target_groups.iter().cloned());
        }
        if !tgs.is_empty() && !self.observe_only {
            self.delete_unused_target_groups(&c, &tgs, &forward, &attached).await;
        }
        if weighted {
            // One group (`layout` checks it): its traffic is the listener's weights by generation.
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
        self.healthy_since.retain(|id, _| healthy_now.contains(id));
        Ok(observed)
    }

    /// Points every rolling group (as last observed) at the launch-template version of `release`: after
    /// a failed gate that is the last good release again, so Auto Scaling's own replacements never
    /// launch the failed image. Per-generation groups launch only their own generation.
    async fn pin(&mut self, env: &EnvName, spec: &Environment, release: &Release) -> Result<(), ProviderError> {
        let aws = AwsSpec::of(spec)?;
        if aws.layout(spec)? != Layout::Rolling {
            return Ok(());
        }
        let ami = machine_image(release)?;
        let key =
            (aws.region.to_owned(), aws.launch_template.to_owned(), version_description(env, release.generation, ami));
        let groups = self.rolling_versions.get(env).cloned().unwrap_or_default();
        let known = self.versions.get(&key).map(|v| v.to_string());
        if groups.is_empty() || groups.iter().all(|(_, v)| v.is_some() && *v == known) {
            return Ok(());
        }
        let version = self.prepare(env, spec, release).await?.to_string();
        let c = self.clients(aws.region);
        for (name, current) in groups {
            if current.as_deref() == Some(version.as_str()) {
                continue;
            }
            c.autoscaling
                .update_auto_scaling_group()
                .auto_scaling_group_name(&name)
                .launch_template(
                    autoscaling::types::LaunchTemplateSpecification::builder()
                        .launch_template_name(aws.launch_template)
                        .version(&version)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| classify("UpdateAutoScalingGroup", e))?;
            tracing::info!(group = %name, version, generation = release.generation, "group pointed at launch template version");
        }
        self.rolling_versions.remove(env);
        Ok(())
    }

    async fn launch(
        &mut self,
        env: &EnvName,
        spec: &Environment,
        group: &GroupName,
        release: &Release,
        now_ms: u64,
    ) -> Result<String, ProviderError> {
        let aws = AwsSpec::of(spec)?;
        let layout = aws.layout(spec)?;
        let ami = machine_image(release)?;
        let capacity = spec
            .groups
            .iter()
            .find(|g| &g.name == group)
            .map(|g| g.capacity)
            .ok_or_else(|| refused(format!("group {group} is not in the spec of {env}")))?;
        let c = self.clients(aws.region);
        let description = version_description(env, release.generation, ami);
        let version = match self.versions.get(&(aws.region.to_owned(), aws.launch_template.to_owned(), description)) {
            Some(v) => *v,
            None => self.prepare(env, spec, release).await?,
        };
        let (name, generation) = match layout {
            Layout::Rolling => (group_name(env, group), None),
            Layout::Weighted { .. } => {
                (generation_group_name(env, group, release.generation), Some(release.generation))
            }
        };
        let view = match self.describe_group(&c, &name).await? {
            Some(view) => view,
            None => {
                let target_groups = match layout {
                    Layout::Rolling => aws.target_groups.iter().map(|s| (*s).to_owned()).collect(),
                    Layout::Weighted { vpc, port, .. } => {
                        vec![self.ensure_target_group(&c, spec, env, group, release.generation, vpc, port).await?]
                    }
                };
                // MaxSize starts at the capacity; a surge raises it while it lasts (see below) and the
                // terminations that end the surge lower it again.
                let new = NewGroup { name: &name, group, generation, version, max: capacity, target_groups };
                self.create_group(&c, &aws, env, new).await?;
                self.describe_group(&c, &name)
                    .await?
                    .ok_or_else(|| retryable(format!("auto scaling group {name} is not visible yet")))?
            }
        };
        view.check_owned(env, group, generation)?;
        let version_s = version.to_string();
        let same_template = view.template_name.as_deref() == Some(aws.launch_template);
        let mut update = c.autoscaling.update_auto_scaling_group().auto_scaling_group_name(&name);
        let mut changed = false;
        if !same_template || view.template_version.as_deref() != Some(version_s.as_str()) {
            update = update.launch_template(
                autoscaling::types::LaunchTemplateSpecification::builder()
                    .launch_template_name(aws.launch_template)
                    .version(&version_s)
                    .build(),
            );
            changed = true;
        }
        // Checked here, not left to AWS (emulators accept it): the new desired capacity fits the bounds.
        let desired = view.desired.checked_add(1).ok_or_else(|| refused("desired capacity overflows"))?;
        if desired > view.max {
            update = update.max_size(desired);
            changed = true;
        }
        if desired < view.min {
            return Err(refused(format!("{name}: desired {desired} below MinSize {}", view.min)));
        }
        if changed {
            update.send().await.map_err(|e| classify("UpdateAutoScalingGroup", e))?;
            if view.template_version.as_deref() != Some(version_s.as_str()) {
                tracing::info!(group = %name, version, generation = release.generation, "group switched to launch template version");
            }
        }
        c.autoscaling
            .set_desired_capacity()
            .auto_scaling_group_name(&name)
            .desired_capacity(desired)
            .honor_cooldown(false)
            .send()
            .await
            .map_err(|e| classify("SetDesiredCapacity", e))?;
        self.scaled_at.insert(name.clone(), now_ms);
        Ok(format!("pending:{name}:{desired}"))
    }

    async fn create_group(
        &self,
        c: &Clients,
        aws: &AwsSpec<'_>,
        env: &EnvName,
        new: NewGroup<'_>,
    ) -> Result<(), ProviderError> {
        let NewGroup { name, group, generation, version, max, target_groups } = new;
        if name.len() > 255 {
            return Err(refused(format!("auto scaling group name {name} is longer than 255")));
        }
        let max = to_i32(max.max(1), "max size")?;
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
            .launch_template(
                autoscaling::types::LaunchTemplateSpecification::builder()
                    .launch_template_name(aws.launch_template)
                    .version(version.to_string())
                    .build(),
            )
            .min_size(0)
            .max_size(max)
            .desired_capacity(0)
            .vpc_zone_identifier(aws.subnets.join(","))
            .set_target_group_arns(Some(target_groups))
            .tags(tag(TAG_ENV, env.as_str(), false))
            .tags(tag(TAG_GROUP, group.as_str(), true))
            .tags(tag(TAG_MANAGED, "true", false));
        if let Some(g) = generation {
            // Instances get their generation from the launch-template version's tags.
            create = create.tags(tag(TAG_GENERATION, &g.to_string(), false));
        }
        let r = create.send().await;
        match r {
            Ok(_) => {
                tracing::info!(group = name, "created auto scaling group");
                Ok(())
            }
            Err(e) if error_code(&e).as_deref() == Some("AlreadyExists") => Ok(()),
            Err(e) => Err(classify("CreateAutoScalingGroup", e)),
        }
    }

    async fn terminate_all(&mut self, env: &EnvName, group: &GroupName, ids: &[String]) -> Result<(), ProviderError> {
        let spec = self.spec_of(env)?;
        let aws = AwsSpec::of(&spec)?;
        let c = self.clients(aws.region);
        let capacity = spec.groups.iter().find(|g| &g.name == group).map(|g| g.capacity);
        // The rolling group and the per-generation groups of (env, group): each id is in one of them
        // (a pending launch names its group), or in none any more.
        let views = self.env_groups(&c, env).await?;
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
            if let Err(e) = self.terminate_in(&c, view, &mine, capacity).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Terminates instances (or pending launches) of one group, lowering its desired capacity by one
    /// each, and tidies its bounds once the surge is over.
    async fn terminate_in(
        &self,
        c: &Clients,
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
                self.lower_min(c, name, &mut min, desired - 1).await.and(
                    c.autoscaling
                        .set_desired_capacity()
                        .auto_scaling_group_name(name)
                        .desired_capacity(desired - 1)
                        .honor_cooldown(false)
                        .send()
                        .await
                        .map(drop)
                        .map_err(|e| classify("SetDesiredCapacity", e)),
                )
            } else {
                match view.instances.iter().find(|i| &i.id == *id) {
                    None => continue, // not in the group (any more)
                    Some(i) if i.leaving() => continue,
                    Some(_) => match self.lower_min(c, name, &mut min, desired - 1).await {
                        Ok(()) => self.terminate_instance(c, name, id).await.map(|_| live -= 1),
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
            let capacity = to_i32(capacity, "capacity")?;
            if desired <= capacity && view.max > capacity {
                c.autoscaling
                    .update_auto_scaling_group()
                    .auto_scaling_group_name(name)
                    .max_size(capacity.max(min))
                    .send()
                    .await
                    .map_err(|e| classify("UpdateAutoScalingGroup", e))?;
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Lowers MinSize so that `desired` is allowed (AWS refuses a desired capacity below it).
    async fn lower_min(&self, c: &Clients, name: &str, min: &mut i32, desired: i32) -> Result<(), ProviderError> {
        if desired >= *min {
            return Ok(());
        }
        let to = desired.max(0);
        c.autoscaling
            .update_auto_scaling_group()
            .auto_scaling_group_name(name)
            .min_size(to)
            .send()
            .await
            .map_err(|e| classify("UpdateAutoScalingGroup", e))?;
        *min = to;
        Ok(())
    }

    /// Terminates one instance of the group and decrements its desired capacity, exactly once: each
    /// try is a single attempt, and after a failure the group is read again, so a try that took effect
    /// but whose answer was lost is not repeated (a second decrement would stop another instance).
    async fn terminate_instance(&self, c: &Clients, name: &str, id: &str) -> Result<(), ProviderError> {
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
            match self.describe_group(c, name).await {
                Ok(Some(view)) if view.live().any(|i| i.id == id) => {}
                Ok(_) => return Ok(()),
                Err(_) => {}
            }
        }
        Err(last.unwrap_or_else(|| retryable(format!("terminate {id}: gave up"))))
    }

    /// The spec of an environment as last observed (traffic changes and terminations have none).
    fn spec_of(&self, env: &EnvName) -> Result<Environment, ProviderError> {
        self.specs
            .get(env)
            .cloned()
            .ok_or_else(|| retryable(format!("environment {env} was not observed yet; its spec is unknown")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_round_trip() {
        let env: EnvName = "prod".parse().unwrap();
        let d = version_description(&env, 12, "ami-0abc");
        assert_eq!(d, "stele prod generation 12 ami-0abc");
        assert_eq!(parse_version_description(&d), Some(("prod".into(), 12, "ami-0abc".into())));
        for bad in
            ["", "stele prod generation x ami-1", "stele prod gen 1 ami-1", "stele prod generation 1", "web-base"]
        {
            assert_eq!(parse_version_description(bad), None, "{bad}");
        }
    }

    #[test]
    fn per_generation_names() {
        let env: EnvName = "a-very-long-environment-name-for-prod".parse().unwrap();
        let g: GroupName = "web".parse().unwrap();
        assert_eq!(generation_group_name(&env, &g, 7), "stele-a-very-long-environment-name-for-prod-web-g7");
        let (t7, t8) = (target_group_name(&env, &g, 7), target_group_name(&env, &g, 8));
        // ELBv2: at most 32 characters, alphanumerics and hyphens, not ending in a hyphen.
        for t in [&t7, &t8] {
            assert_eq!(t.len(), 32, "{t}");
            assert!(t.starts_with("stele-") && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'), "{t}");
        }
        assert_ne!(t7, t8);
        assert_eq!(t7, target_group_name(&env, &g, 7), "stable across calls and restarts");
    }

    #[test]
    fn target_group_views_need_stele_tags_of_this_environment() {
        let env: EnvName = "prod".parse().unwrap();
        let tags = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let full = tags(&[
            (TAG_MANAGED, "true"),
            (TAG_ENV, "prod"),
            (TAG_GROUP, "web"),
            (TAG_GENERATION, "3"),
            (TAG_TRAFFIC_SINCE, "1234"),
        ]);
        let v = target_group_view(&env, "arn".into(), &full).expect("Stele's");
        assert_eq!((v.group.as_str(), v.generation, v.traffic_since), ("web", 3, Some(1234)));
        let other_env = tags(&[(TAG_MANAGED, "true"), (TAG_ENV, "stage"), (TAG_GROUP, "web"), (TAG_GENERATION, "3")]);
        assert!(target_group_view(&env, "arn".into(), &other_env).is_none());
        let unmanaged = tags(&[(TAG_ENV, "prod"), (TAG_GROUP, "web"), (TAG_GENERATION, "3")]);
        assert!(target_group_view(&env, "arn".into(), &unmanaged).is_none());
        let bad_generation =
            tags(&[(TAG_MANAGED, "true"), (TAG_ENV, "prod"), (TAG_GROUP, "web"), (TAG_GENERATION, "x")]);
        assert!(target_group_view(&env, "arn".into(), &bad_generation).is_none());
    }

    #[test]
    fn forward_weights_compare_by_share() {
        let t = |a: &str, w: i32| (a.to_owned(), w);
        assert_eq!(normalize(&[t("b", 10), t("a", 90)]), normalize(&[t("a", 900), t("b", 100)]));
        assert_eq!(normalize(&[t("a", 100), t("b", 0)]), normalize(&[t("a", 1)]));
        assert_ne!(normalize(&[t("a", 50), t("b", 50)]), normalize(&[t("a", 90), t("b", 10)]));
    }

    #[test]
    fn weights_are_checked() {
        assert!(listener_weights(&BTreeMap::from([(1, 10), (2, 90)])).is_ok());
        assert!(listener_weights(&BTreeMap::from([(1, 1000)])).is_err());
        assert!(listener_weights(&BTreeMap::new()).is_err());
    }

    fn member(lifecycle: &str) -> GroupInstance {
        GroupInstance { id: "i-1".into(), lifecycle: lifecycle.into(), health_status: "Healthy".into() }
    }

    fn ec2(state: &str) -> Ec2Instance {
        Ec2Instance {
            image_id: "ami-1".into(),
            private_ip: None,
            state: state.into(),
            launched_ms: 5,
            tags: HashMap::new(),
        }
    }

    fn verdict(state: &str, reason: &str) -> TargetVerdict {
        TargetVerdict {
            target_group: "arn:aws:elasticloadbalancing:r:1:targetgroup/web/abc".into(),
            state: state.into(),
            reason: reason.into(),
            description: "d".into(),
        }
    }

    #[test]
    fn health_from_ec2_autoscaling_and_targets() {
        let m = member("InService");
        assert_eq!(judge_health(&m, Some(&ec2("running")), &[], 9), Some(Health::Healthy { since_ms: 0 }));
        assert_eq!(judge_health(&m, Some(&ec2("pending")), &[], 9), Some(Health::Starting));
        assert_eq!(judge_health(&m, Some(&ec2("terminated")), &[], 9), None);
        assert_eq!(judge_health(&m, Some(&ec2("shutting-down")), &[], 9), None);
        assert_eq!(judge_health(&member("Terminating"), Some(&ec2("running")), &[], 9), None);
        assert_eq!(judge_health(&member("Pending"), Some(&ec2("running")), &[], 9), Some(Health::Starting));
        assert_eq!(judge_health(&m, None, &[], 9), Some(Health::Starting));
        assert!(matches!(judge_health(&m, Some(&ec2("stopped")), &[], 9), Some(Health::Unhealthy { .. })));
        let ok = [verdict("healthy", ""), verdict("unavailable", "Target.HealthCheckDisabled")];
        assert_eq!(judge_health(&m, Some(&ec2("running")), &ok, 9), Some(Health::Healthy { since_ms: 0 }));
        let init = [verdict("initial", "Elb.RegistrationInProgress")];
        assert_eq!(judge_health(&m, Some(&ec2("running")), &init, 9), Some(Health::Starting));
        let bad = [verdict("unhealthy", "Target.ResponseCodeMismatch")];
        match judge_health(&m, Some(&ec2("running")), &bad, 9) {
            Some(Health::Unhealthy { reason, .. }) => {
                assert!(reason.contains("web/abc") && reason.contains("Target.ResponseCodeMismatch"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let mut sick = member("InService");
        sick.health_status = "Unhealthy".into();
        assert!(matches!(judge_health(&sick, Some(&ec2("running")), &[], 9), Some(Health::Unhealthy { .. })));
    }

    #[test]
    fn provider_can_be_dropped_inside_async_code() {
        // The agent drops its providers at the end of its async main (found by tests/agent_aws.rs).
        let options = AwsOptions { credentials: Some(("k".into(), "s".into())), ..AwsOptions::default() };
        let p = AwsProvider::with_options(options).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move { drop(p) });
    }

    #[test]
    fn provider_runs_inside_spawn_blocking() {
        // The agent runs providers on tokio blocking threads; the provider's own runtime must work there.
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let ok = rt.block_on(async {
            tokio::task::spawn_blocking(|| {
                let mut p = AwsProvider::with_options(AwsOptions {
                    endpoint_url: Some("http://127.0.0.1:9".into()),
                    credentials: Some(("k".into(), "s".into())),
                    max_attempts: 1,
                    ..AwsOptions::default()
                })
                .unwrap();
                let w = BTreeMap::from([(1, 50), (2, 50)]);
                let g: GroupName = "web".parse().unwrap();
                let e: EnvName = "prod".parse().unwrap();
                // Weights need the spec of an observed environment.
                assert!(matches!(p.set_traffic(&e, &g, &Traffic::Weighted(w), 0), Err(ProviderError::Retryable(_))));
                assert!(p.set_traffic(&e, &g, &Traffic::Even, 0).is_ok());
                // A real call (nothing listens on port 9): a dispatch failure, retryable.
                let c = p.inner.clients("eu-west-1");
                let r = AwsProvider::block_on(&p.rt, p.inner.describe_group(&c, "stele-prod-web"));
                matches!(r, Err(ProviderError::Retryable(_)))
            })
            .await
            .unwrap()
        });
        assert!(ok);
    }
}
