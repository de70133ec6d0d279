//! The GCP provider (SPEC.md §6.2 `gcp`, revision 6): instances are Compute Engine instances of regional
//! managed instance groups (MIGs) that Stele owns, created from one instance template per release, pinned
//! by name. As on AWS the planner stays the single brain: a launch resizes the group by one; a termination
//! is `deleteInstances` (which lowers the target size by one); everything reported is read back from GCP
//! on every observation, so an agent killed at any point continues where GCP is.
//!
//! The step order, groups, traffic, pinning, adoption and the image check are the cloud-provider core's
//! (`provider::cloud`); this binding is its `CloudApi` for GCP (`api.rs`), on the clients and shared reads
//! of `resources.rs`, with the pure rules in `names.rs`, GCP's health verdict in `health.rs` and the error
//! classes (and outcomes of operations) in `errors.rs`.
//!
//! **The MIG never rolls itself.** Groups are created with `updatePolicy.type = OPPORTUNISTIC` (a new
//! template applies only to instances created afterwards; nothing is replaced proactively),
//! `instanceRedistributionType = NONE` (a regional MIG does not move instances between zones), no
//! autohealing policy and no autoscaler. Stele sets the group's instance template (`setInstanceTemplate`),
//! its target size (`resize`) and deletes instances itself (`deleteInstances`).
//!
//! What GCP holds for an environment `E` in the spec's project and region (found again from names and
//! descriptions; MIGs and backend services have no labels, so Stele's tags are `key=value` words in their
//! descriptions):
//! ```text
//! rolling             MIG stele-E-G, description stele-env=E stele-group=G stele-managed=true
//!                     stele-base-template=<spec.instance_template>; a backend of the spec's
//!                     backend_services
//! blue/green, canary  one MIG per generation N, stele-E-G-gN (tags as above plus stele-generation=N),
//!                     the only backend of its own backend service stele-<26 hex> (health check and
//!                     port from the spec, tags in its description, plus stele-traffic-since); the
//!                     default route of the spec's url_map weights these backend services (0..=1000)
//! instance template   stele-<26 hex> per (E, generation, image): the properties of
//!                     spec.instance_template with the boot disk's sourceImage set to the entry's image
//!                     and instance labels stele-env, stele-generation, stele-version added; its
//!                     description "stele E generation N image I from BASE"
//! instances           whatever the groups run; their generation is the label stele-generation, their
//!                     image the template they were created from
//! ```
//! An image is named `projects/P/global/images/NAME` in the entry; P must be in `image_projects`, the
//! image `READY`, and its labels `stele-blake3-hi` / `stele-blake3-lo` the two halves of the digest (a
//! label value holds at most 63 characters).
//!
//! Threads: as `provider::aws`, a current-thread runtime of its own; used from plain or blocking threads.

mod api;
mod errors;
mod health;
mod names;
mod resources;

pub use names::{backend_service_name, template_name, url_map_weights, Scope};

use super::cloud::{Cloud, CloudProvider, TagKeys, Vocabulary};
use super::ProviderError;
pub use resources::GcpApi;
pub use resources::{GcpCredentials, GcpOptions};

pub use super::cloud::{generation_group_name, group_name};

/// GCP's words for the core's messages.
static WORDS: Vocabulary = Vocabulary {
    cloud: "gcp",
    group: "managed instance group",
    image: "image",
    images: "Compute Engine images",
    image_ready: "READY",
    image_owner: "project",
    image_owners: "image_projects",
    tag: "label",
    balancer: "backend service",
    router: "url map",
    template: "instance template",
    weighted_needs: "url_map, health_check and port",
    scaling: "managed instance groups",
    keys: TagKeys {
        env: names::LABEL_ENV,
        group: names::LABEL_GROUP,
        managed: names::LABEL_MANAGED,
        generation: names::LABEL_GENERATION,
        version: names::LABEL_VERSION,
        blake3: names::KEY_BLAKE3,
        traffic_since: names::TAG_TRAFFIC_SINCE,
    },
};

/// The GCP provider: the cloud core on GCP's API.
pub type GcpProvider = CloudProvider<GcpApi>;

impl GcpProvider {
    /// The agent's provider: Application Default Credentials, GCP's endpoint.
    pub fn new() -> Result<Self, ProviderError> {
        Self::with_options(GcpOptions::default())
    }

    /// A provider whose calls all go to `endpoint` without credentials (the loopback fake).
    pub fn with_fake(endpoint: &str) -> Result<Self, ProviderError> {
        Self::with_options(GcpOptions {
            endpoint: Some(endpoint.to_owned()),
            credentials: GcpCredentials::Anonymous,
            ..GcpOptions::default()
        })
    }

    /// The SDK's clients are made on the first call (building one loads the credentials).
    pub fn with_options(options: GcpOptions) -> Result<Self, ProviderError> {
        let rt = Self::runtime()?;
        let (probe, observe_only) = (options.probe_instances, options.observe_only);
        Ok(Self::from_parts(rt, Cloud::new(GcpApi::new(options), probe, observe_only)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Health, Traffic};
    use crate::provider::cloud::{CloudApi, GroupInstance, InstanceView, TargetVerdict};
    use crate::provider::Provider;
    use ledger_format::types::{EnvName, Environment, GroupName};
    use std::collections::{BTreeMap, HashMap};

    #[test]
    fn labels_have_no_colon_and_fit_gcp() {
        let k = &GcpApi::WORDS.keys;
        for key in [k.env, k.group, k.managed, k.generation, k.version, k.traffic_since, names::LABEL_BLAKE3_HI] {
            assert!(key.parse::<ledger_format::types::GcpName>().is_ok(), "{key}");
        }
        assert_eq!(k.blake3, "stele-blake3-hi/lo", "the joined key names both labels in messages");
    }

    #[test]
    fn spec_maps_to_the_core() {
        let spec: Environment = serde_json::from_value(serde_json::json!({
            "type": "stele.environment/v1", "ledger": "l", "name": "prod", "version": 1,
            "provider": {"kind": "gcp", "project": "acme-prod", "region": "europe-west1",
                "instance_template": "web-base", "image_projects": ["acme-images"], "url_map": "web-map",
                "health_check": "web-hc", "port": 8080},
            "groups": [{"name": "web", "capacity": 2}],
            "strategy": {"kind": "blue_green", "grace_seconds": 60},
            "health": {"kind": "tcp", "interval_ms": 1000, "timeout_ms": 500, "healthy_threshold": 1,
                "deadline_seconds": 60},
            "drift": "correct", "revert": "allow"
        }))
        .unwrap();
        let cs = GcpApi::spec_of(&spec).unwrap();
        assert_eq!(cs.region, "acme-prod/europe-west1");
        assert_eq!(
            (cs.template, cs.router, cs.balancer_base, cs.port),
            ("web-base", Some("web-map"), Some("web-hc"), Some(8080))
        );
        assert_eq!(cs.image_owners, vec!["acme-images"]);
        assert!(matches!(cs.layout(&spec, GcpApi::WORDS), Ok(crate::provider::cloud::Layout::Weighted { .. })));
    }

    #[test]
    fn weights_map_to_url_map_weights() {
        assert_eq!(GcpApi::router_weights(&BTreeMap::from([(3, 100), (4, 0)])).unwrap(), vec![(3, 100), (4, 0)]);
        assert!(GcpApi::router_weights(&BTreeMap::from([(3, 1001)])).is_err());
    }

    fn member(action: &str) -> GroupInstance {
        GroupInstance {
            id: "europe-west1-b/i-1".into(),
            lifecycle: action.into(),
            health_status: String::new(),
            leaving: names::leaving(action),
        }
    }

    fn instance(status: &str, launched_ms: u64) -> InstanceView {
        InstanceView {
            image_id: "projects/p/global/images/i".into(),
            private_ip: Some("10.0.0.2".into()),
            state: status.into(),
            running: status == "RUNNING",
            launched_ms,
            tags: HashMap::new(),
        }
    }

    fn verdict(state: &str) -> TargetVerdict {
        TargetVerdict {
            balancer: "stele-abc".into(),
            state: state.into(),
            reason: String::new(),
            description: String::new(),
        }
    }

    #[test]
    fn health_from_the_mig_the_instance_and_backend_services() {
        let now = 1_000_000;
        let m = member("NONE");
        assert_eq!(
            health::judge_health(&m, Some(&instance("RUNNING", 0)), &[], now, false),
            Some(Health::Healthy { since_ms: 0 })
        );
        assert_eq!(health::judge_health(&m, Some(&instance("STAGING", 0)), &[], now, false), Some(Health::Starting));
        assert_eq!(health::judge_health(&member("CREATING"), None, &[], now, false), Some(Health::Starting));
        assert_eq!(health::judge_health(&m, None, &[], now, false), Some(Health::Starting));
        assert_eq!(health::judge_health(&member("DELETING"), Some(&instance("RUNNING", 0)), &[], now, false), None);
        assert!(member("DELETING").leaving && member("ABANDONING").leaving && !member("RECREATING").leaving);
        assert!(matches!(
            health::judge_health(&m, Some(&instance("TERMINATED", 0)), &[], now, false),
            Some(Health::Unhealthy { .. })
        ));
        let ok = [verdict("HEALTHY")];
        assert_eq!(
            health::judge_health(&m, Some(&instance("RUNNING", 0)), &ok, now, false),
            Some(Health::Healthy { since_ms: 0 })
        );
        // Load balancers report a new instance UNHEALTHY until its first checks pass: starting within the
        // grace, unhealthy after it.
        let bad = [verdict("UNHEALTHY")];
        assert_eq!(
            health::judge_health(&m, Some(&instance("RUNNING", now - 1000)), &bad, now, false),
            Some(Health::Starting)
        );
        // ... unless it has been healthy before: then it went bad, whatever its age.
        assert!(matches!(
            health::judge_health(&m, Some(&instance("RUNNING", now - 1000)), &bad, now, true),
            Some(Health::Unhealthy { .. })
        ));
        match health::judge_health(&m, Some(&instance("RUNNING", 0)), &bad, now, false) {
            Some(Health::Unhealthy { reason, .. }) => {
                assert!(reason.contains("stele-abc") && reason.contains("UNHEALTHY"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        let mut sick = member("NONE");
        sick.health_status = "UNHEALTHY".into();
        assert!(matches!(
            health::judge_health(&sick, Some(&instance("RUNNING", 0)), &[], now, false),
            Some(Health::Unhealthy { .. })
        ));
    }

    #[test]
    fn provider_runs_inside_spawn_blocking_and_fails_retryably_without_a_server() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let ok = rt.block_on(async {
            tokio::task::spawn_blocking(|| {
                let mut p = GcpProvider::with_options(GcpOptions {
                    endpoint: Some("http://127.0.0.1:9".into()),
                    credentials: GcpCredentials::Anonymous,
                    max_attempts: 1,
                    ..GcpOptions::default()
                })
                .unwrap();
                let g: GroupName = "web".parse().unwrap();
                let e: EnvName = "prod".parse().unwrap();
                assert!(p.set_traffic(&e, &g, &Traffic::Even, 0).is_ok());
                let r = GcpProvider::block_on(
                    &p.rt,
                    p.inner.api.describe_group("acme-prod/europe-west1", "stele-prod-web"),
                );
                format!("{r:?}")
            })
            .await
            .unwrap()
        });
        assert!(ok.starts_with("Err(Retryable(") && ok.contains("gcp"), "a connection refused is retryable: {ok}");
    }
}
