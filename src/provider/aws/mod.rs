//! The AWS provider (DESIGN.md "Convergence", "Images"; SPEC.md §6.2 `aws`): instances are EC2
//! instances of Auto Scaling groups that Stele owns, launched from launch-template versions pinned to
//! the entry's AMI. The planner stays the single brain: its per-instance actions map onto Auto Scaling
//! calls (a launch raises the group's desired capacity by one; a termination is
//! `TerminateInstanceInAutoScalingGroup` with the desired capacity decremented), and everything this
//! provider reports is read back from AWS on every observation, so an agent killed at any point and
//! restarted continues where AWS is, without duplicates or leaked groups, templates or instances.
//!
//! The step order, the groups' bookkeeping, traffic, pinning, adoption and the shape of the image check
//! are the cloud-provider core's (`provider::cloud`); this binding is its `CloudApi` for AWS.
//!
//! Owns: the AWS calls (`api.rs`: Auto Scaling groups, EC2 instances and AMIs, ELBv2 target groups,
//! target health and the listener), the launch-template versions Stele adds (`templates.rs`: one per
//! environment, generation and AMI, found again by their description), the SDK's configuration and
//! runtime (this file), and the classification of AWS errors into retryable and refused (`errors.rs`).
//! The AMI check is the core's: exists, `available`, owned by an account in `ami_owners`, tag
//! `stele:blake3` equal to the entry's digest. Must not decide what to run or when traffic moves (that is
//! `plan`), carry rollout logic the core owns, or touch the ledger.
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

mod api;
mod errors;
mod templates;

pub use api::{listener_weights, target_group_name};
pub use templates::{parse_version_description, version_description};

use super::cloud::{Cloud, CloudProvider, TagKeys, Vocabulary};
use super::ProviderError;
pub use api::AwsApi;
use aws_sdk_ec2 as ec2;
use std::collections::HashMap;
use std::time::Duration;

pub use super::cloud::{generation_group_name, group_name};

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

/// AWS's words for the core's messages.
static WORDS: Vocabulary = Vocabulary {
    cloud: "aws",
    group: "auto scaling group",
    image: "AMI",
    images: "machine images (AMIs)",
    image_ready: "available",
    image_owner: "account",
    image_owners: "ami_owners",
    tag: "tag",
    balancer: "target group",
    router: "listener",
    template: "launch template version",
    weighted_needs: "listener, vpc and port",
    scaling: "auto scaling",
    keys: TagKeys {
        env: TAG_ENV,
        group: TAG_GROUP,
        managed: TAG_MANAGED,
        generation: TAG_GENERATION,
        version: TAG_VERSION,
        blake3: TAG_BLAKE3,
        traffic_since: TAG_TRAFFIC_SINCE,
    },
};

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

/// The AWS provider: the cloud core on AWS's API.
pub type AwsProvider = CloudProvider<AwsApi>;

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
        let rt = Self::runtime()?;
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
        let api = AwsApi { config, clients: HashMap::new(), versions: HashMap::new(), version_info: HashMap::new() };
        Ok(Self::from_parts(rt, Cloud::new(api, options.probe_instances, options.observe_only)))
    }
}

fn aws_credential_types(key: &str, secret: &str) -> ec2::config::Credentials {
    ec2::config::Credentials::new(key, secret, None, None, "stele-static")
}

#[cfg(test)]
mod tests {
    use super::api::judge_health;
    use super::*;
    use crate::plan::{Health, Traffic};
    use crate::provider::cloud::{balancer_view, CloudApi, GroupInstance, InstanceView, TargetVerdict};
    use crate::provider::Provider;
    use ledger_format::types::{EnvName, GroupName};
    use std::collections::BTreeMap;

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
        let keys = &AwsApi::WORDS.keys;
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
        let v = balancer_view(keys, &env, "arn".into(), &full).expect("Stele's");
        assert_eq!((v.group.as_str(), v.generation, v.traffic_since), ("web", 3, Some(1234)));
        let other_env = tags(&[(TAG_MANAGED, "true"), (TAG_ENV, "stage"), (TAG_GROUP, "web"), (TAG_GENERATION, "3")]);
        assert!(balancer_view(keys, &env, "arn".into(), &other_env).is_none());
        let unmanaged = tags(&[(TAG_ENV, "prod"), (TAG_GROUP, "web"), (TAG_GENERATION, "3")]);
        assert!(balancer_view(keys, &env, "arn".into(), &unmanaged).is_none());
        let bad_generation =
            tags(&[(TAG_MANAGED, "true"), (TAG_ENV, "prod"), (TAG_GROUP, "web"), (TAG_GENERATION, "x")]);
        assert!(balancer_view(keys, &env, "arn".into(), &bad_generation).is_none());
    }

    #[test]
    fn weights_are_checked() {
        assert!(listener_weights(&BTreeMap::from([(1, 10), (2, 90)])).is_ok());
        assert!(listener_weights(&BTreeMap::from([(1, 1000)])).is_err());
        assert!(listener_weights(&BTreeMap::new()).is_err());
    }

    fn member(lifecycle: &str) -> GroupInstance {
        GroupInstance {
            id: "i-1".into(),
            lifecycle: lifecycle.into(),
            health_status: "Healthy".into(),
            leaving: api::leaving(lifecycle),
        }
    }

    fn ec2(state: &str) -> InstanceView {
        InstanceView {
            image_id: "ami-1".into(),
            private_ip: None,
            state: state.into(),
            running: state == "running",
            launched_ms: 5,
            tags: HashMap::new(),
        }
    }

    fn verdict(state: &str, reason: &str) -> TargetVerdict {
        TargetVerdict {
            balancer: "arn:aws:elasticloadbalancing:r:1:targetgroup/web/abc".into(),
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
                let r = AwsProvider::block_on(&p.rt, p.inner.api.describe_group("eu-west-1", "stele-prod-web"));
                matches!(r, Err(ProviderError::Retryable(_)))
            })
            .await
            .unwrap()
        });
        assert!(ok);
    }
}
