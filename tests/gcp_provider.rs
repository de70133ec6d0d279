//! The `gcp` provider against the loopback Compute Engine fake (tests/gcp/fake.py through
//! tests/common/gcp.rs): `converge::tick` drives `GcpProvider`, the official Rust SDK underneath, through
//! rolling, blue/green and canary rollouts of regional managed instance groups, and every claim is
//! checked against what the fake holds, read with raw HTTP (the API and its `/_fake/` control API), never
//! through the provider under test. The strategy scenarios are the shared suite of
//! tests/common/cloud_suite.rs, which tests/aws_provider.rs runs too: this file implements its `CloudWorld`
//! for the fake and adds what only GCP has to say.
//!
//! Covered: a 4-instance rolling v1 → v2 → v1 with max_unavailable 1 (never more than one below
//! capacity), the group never rolling itself (OPPORTUNISTIC, no autohealing), one instance template per
//! release, image refusals (wrong digest, no labels, not READY, missing, a project not allowed, an
//! artifact) that create nothing, a group name taken by someone else, a restart before every tick,
//! faults (429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE) through the fault proxy, a failed operation that
//! ends DONE with an error; blue/green with the URL map's weights checked at every tick (never split,
//! switched only once the new group is whole and healthy); canary steps and their weights; a canary
//! whose backend service reports UNHEALTHY (gate failed, traffic restored, canary group, backend service
//! gone, Degraded); blue/green through faults with a restart before every tick; weighted specs refused
//! before anything is made; an instance from someone else's template replaced; two environments on one
//! provider, each keeping its own health history; a group the spec drops emptied and deleted; the
//! agent's own HTTP check (instances on loopback IPs) failing a rolling gate with the group pinned back to
//! v1; a rolling environment switched to canary (adopted) and back (refused); a switch to canary in the
//! middle of a rolling rollout refused; a group created but never attached made again by the next agent;
//! and every method called allowed by examples/gcp/iam-role.yaml. The SIGKILL mid-rollout runs the real
//! agent binary (tests/agent_gcp.rs).
//!
//! The fake is faithful to Google's discovery document in shape; what it does not model is listed in the
//! README ("GCP fake"). The provider authenticates anonymously (the fake runs with --allow-anonymous).
#![cfg(feature = "gcp")]

mod common;

use common::cloud::{self, converge, machine_release, now_ms};
use common::cloud_suite::{self as suite, env, generation_group, CloudWorld, GROUP};
use common::gcp::{
    api_path, FaultProxy, FaultShape, GcpFake, BASE_TEMPLATE, IMAGES, OPERATOR_SERVICE, PROJECT, REGION, URL_MAP,
};
use ledger_format::types::Environment;
use ledger_format::Blake3Digest;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use stele::converge::{self, Memory, Tick};
use stele::plan::Release;
use stele::provider::gcp::{backend_service_name, GcpCredentials, GcpOptions, GcpProvider};
use stele::provider::ProviderError;

fn digest(version: &str) -> Blake3Digest {
    Blake3Digest(*blake3::hash(format!("stele gcp test {version}").as_bytes()).as_bytes())
}

fn image_link(project: &str, name: &str) -> String {
    format!("projects/{project}/global/images/{name}")
}

/// One fake holding what an operator sets up before Stele: images app-1..3 in project stele-images
/// labelled with the digests of v1..v3 (and some that must be refused), the base instance template, a
/// health check, and a URL map sending everything to a backend service of the operator's.
struct World {
    fake: GcpFake,
    /// The spec's `port` (the agent's own health checks go there).
    port: u16,
}

impl World {
    fn with_port(port: u16) -> World {
        let fake = GcpFake::start_anonymous();
        for key in ["1", "2", "3"] {
            fake.seed_digest_image(IMAGES, &format!("app-{key}"), "READY", &digest(&format!("v{key}")).to_hex());
        }
        let v1 = digest("v1").to_hex();
        fake.seed_image(IMAGES, "untagged", "READY", &[]);
        fake.seed_digest_image(IMAGES, "wrong", "READY", &"deadbeef".repeat(8));
        fake.seed_digest_image(IMAGES, "pending", "PENDING", &v1);
        fake.seed_digest_image("someone-else", "app-1", "READY", &v1);
        fake.seed_operator();
        World { fake, port }
    }

    fn get(&self, path: &str) -> Option<Value> {
        let (status, out) = self.fake.call("GET", path, None);
        match status {
            200 => Some(out),
            404 => None,
            _ => panic!("GET {path}: {status} {out:#}"),
        }
    }

    fn spec_with(&self, name: &str, groups: Value, strategy: Value, image_projects: &[&str]) -> Environment {
        let provider = json!({
            "kind": "gcp",
            "project": PROJECT,
            "region": REGION,
            "instance_template": BASE_TEMPLATE,
            "image_projects": image_projects,
            "url_map": URL_MAP,
            "health_check": common::gcp::HEALTH_CHECK,
            "port": self.port,
        });
        cloud::environment(name, provider, groups, strategy)
    }

    /// Every managed instance group in the region, as `list` shows it.
    fn migs(&self) -> Vec<Value> {
        let out = self.get(&api_path(&format!("regions/{REGION}/instanceGroupManagers"))).expect("list");
        out["items"].as_array().cloned().unwrap_or_default()
    }

    fn mig(&self, name: &str) -> Option<Value> {
        self.migs().into_iter().find(|g| g["name"] == name)
    }

    /// The fake's instances (name, template URL, group URL, health, ...).
    fn instances_of(&self, mig: &str) -> Vec<Value> {
        let suffix = format!("/instanceGroupManagers/{mig}");
        self.fake.instances().into_iter().filter(|i| i["mig"].as_str().is_some_and(|m| m.ends_with(&suffix))).collect()
    }

    /// Every instance template but the base, by name.
    fn release_templates(&self) -> BTreeMap<String, Value> {
        self.listed_by_name("global/instanceTemplates", BASE_TEMPLATE)
    }

    /// The templates Stele made for `generation` (by their description), by name.
    fn templates_for(&self, generation: u64) -> BTreeMap<String, Value> {
        let prefix = format!("stele prod generation {generation} ");
        let mut made = self.release_templates();
        made.retain(|_, t| t["description"].as_str().is_some_and(|d| d.starts_with(&prefix)));
        made
    }

    /// Stele's backend services by name (every one but the operator's).
    fn stele_services(&self) -> BTreeMap<String, Value> {
        self.listed_by_name("global/backendServices", OPERATOR_SERVICE)
    }

    /// The global resources a `list` at `collection` shows, by name, but `except`.
    fn listed_by_name(&self, collection: &str, except: &str) -> BTreeMap<String, Value> {
        let out = self.get(&api_path(collection)).expect("list");
        out["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r["name"] != except)
            .map(|r| (r["name"].as_str().unwrap().to_owned(), r))
            .collect()
    }

    /// What the URL map's default route sends to, as (generation, weight) by the backend services' names;
    /// the operator's service shows as generation 0, and a plain default service as weight 100.
    fn url_map(&self) -> Vec<(u64, i64)> {
        let map = self.get(&api_path(&format!("global/urlMaps/{URL_MAP}"))).expect("the url map exists");
        let generation_of = |link: &str| {
            let name = link.rsplit('/').next().unwrap();
            (1..=9).find(|g| backend_service_name(&env(), &"web".parse().unwrap(), *g) == name).unwrap_or(0)
        };
        let mut pairs: Vec<(u64, i64)> = match map["defaultRouteAction"]["weightedBackendServices"].as_array() {
            Some(weighted) if !weighted.is_empty() => weighted
                .iter()
                .map(|w| (generation_of(w["backendService"].as_str().unwrap()), w["weight"].as_i64().unwrap_or(0)))
                .collect(),
            _ => vec![(generation_of(map["defaultService"].as_str().expect("a default service")), 100)],
        };
        pairs.sort();
        pairs
    }
}

impl CloudWorld for World {
    type P = GcpProvider;
    const CLOUD: &'static str = "gcp";
    const ROLLING_CAPACITY: usize = 4;
    const GROUP_KIND: &'static str = "managed instance group";
    const NO_ROUTER_SAYS: &'static str = "needs url_map, health_check and port";
    // The canaries had been healthy, so UNHEALTHY means they went bad (not that they are still booting,
    // which is how a young instance's UNHEALTHY reads).
    const UNHEALTHY_SAYS: &'static [&'static str] = &["stele-prod-web-g2", "UNHEALTHY"];

    fn new() -> World {
        World::with_port(8080)
    }

    /// The fake gives instances private IPs 127.77.x.y.
    fn probed(port: u16) -> World {
        let w = World::with_port(port);
        w.fake.config(json!({"instanceIpPrefix": "127.77"}));
        w
    }

    fn provider(&self) -> GcpProvider {
        provider_at(&self.fake.endpoint, 4)
    }

    fn probing_provider(&self) -> GcpProvider {
        GcpProvider::with_options(GcpOptions { probe_instances: true, ..options_at(&self.fake.endpoint, 4) })
            .expect("provider")
    }

    /// Google-shaped faults: 429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE.
    fn fault_proxy(&self, rate: f64, seed: u64) -> FaultProxy {
        FaultProxy::start_shaped(&self.fake.endpoint, rate, seed, FaultShape::Google)
    }

    fn provider_via(&self, proxy: &FaultProxy, max_attempts: u32) -> GcpProvider {
        provider_at(&proxy.endpoint, max_attempts)
    }

    fn spec_named(&self, name: &str, groups: Value, strategy: Value) -> Environment {
        self.spec_with(name, groups, strategy, &[IMAGES])
    }

    fn without_router(&self, mut spec: Environment) -> Environment {
        if let ledger_format::types::Provider::Gcp { url_map, .. } = &mut spec.provider {
            *url_map = None;
        }
        spec
    }

    /// Generation `generation` running image app-`key` ("1", "2", "3"): version `key`.0.0, digest of `vkey`.
    fn release(&self, generation: u64, key: &str) -> Release {
        machine_release(
            generation,
            &format!("{key}.0.0"),
            &image_link(IMAGES, &format!("app-{key}")),
            digest(&format!("v{key}")),
        )
    }

    fn group_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.migs().iter().map(|g| g["name"].as_str().unwrap().to_owned()).collect();
        names.sort();
        names
    }

    /// The fake's instances are RUNNING from their creation until their deletion.
    fn running(&self, group: &str) -> Vec<String> {
        self.instances_of(group).iter().map(|i| i["name"].as_str().unwrap().to_owned()).collect()
    }

    /// By the label `stele-generation` of the template each instance was made from.
    fn generations_running(&self, group: &str) -> BTreeSet<u64> {
        let templates = self.release_templates();
        self.instances_of(group)
            .iter()
            .map(|i| {
                let name = i["template"].as_str().unwrap().rsplit('/').next().unwrap();
                templates.get(name).map_or(0, |t| {
                    t["properties"]["labels"]["stele-generation"].as_str().map_or(0, |g| g.parse().unwrap())
                })
            })
            .collect()
    }

    /// targetSize.
    fn size_limit(&self, group: &str) -> u64 {
        let g = self.mig(group).unwrap_or_else(|| panic!("the group {group} stays: {:#?}", self.migs()));
        g["targetSize"].as_u64().unwrap()
    }

    fn router(&self) -> Vec<(u64, i64)> {
        self.url_map()
    }

    /// The operator's URL map sends everything to its own backend service.
    fn operator_route(&self) -> Vec<(u64, i64)> {
        vec![(0, 100)]
    }

    /// Instances ever created (the fake counts them; it forgets deleted ones).
    fn launches(&self) -> usize {
        self.fake.instances_created()
    }

    fn releases_made(&self) -> usize {
        self.release_templates().len()
    }

    fn releases_made_for(&self, generation: u64) -> usize {
        self.templates_for(generation).len()
    }

    fn snapshot(&self) -> String {
        format!("{:#?}", (self.migs(), self.url_map(), self.stele_services(), self.fake.instances()))
    }

    /// Their backend service reports them UNHEALTHY.
    fn mark_unhealthy(&self, instances: &[String]) {
        for i in instances {
            self.fake.set_health(i, Some("UNHEALTHY"));
        }
    }

    fn take_group_name(&self, group: &str) {
        self.fake.done(
            "POST",
            &api_path(&format!("regions/{REGION}/instanceGroupManagers")),
            json!({"name": group, "instanceTemplate": format!("global/instanceTemplates/{BASE_TEMPLATE}"),
                   "targetSize": 1, "description": "team=someone-else"}),
        );
    }

    fn assert_foreign_group_untouched(&self, group: &str) {
        let g = self.mig(group).unwrap();
        assert_eq!(g["targetSize"], 1, "the other group is left alone: {g:#}");
        assert!(g["instanceTemplate"].as_str().unwrap().ends_with(BASE_TEMPLATE), "{g:#}");
        assert_eq!(self.instances_of(group).len(), 1);
    }

    /// Which template an instance was made from is what GCP says: the operator points the group at their
    /// own (the base, no Stele labels) and grows it.
    fn add_stray_instance(&self) -> (String, Option<Blake3Digest>) {
        let mig = api_path(&format!("regions/{REGION}/instanceGroupManagers/{GROUP}"));
        self.fake.done(
            "POST",
            &format!("{mig}/setInstanceTemplate"),
            json!({"instanceTemplate": format!("global/instanceTemplates/{BASE_TEMPLATE}")}),
        );
        self.fake.done("POST", &format!("{mig}/resize?size=4"), json!({}));
        let stray: Vec<String> = self
            .instances_of(GROUP)
            .iter()
            .filter(|i| i["template"].as_str().unwrap().ends_with(BASE_TEMPLATE))
            .map(|i| i["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(stray.len(), 1);
        (stray[0].clone(), None)
    }

    fn assert_instance_gone(&self, name: &str) {
        assert!(self.fake.instances().iter().all(|i| i["name"] != name), "the stray instance was deleted");
    }

    fn assert_fleet(&self, key: &str, generation: u64, capacity: usize) {
        assert_fleet(self, &image_link(IMAGES, &format!("app-{key}")), generation, capacity)
    }

    fn assert_weighted_fleet(&self, key: &str, generation: u64, capacity: usize) {
        assert_weighted_fleet(self, &image_link(IMAGES, &format!("app-{key}")), generation, capacity)
    }

    fn assert_untouched(&self) {
        assert!(self.migs().is_empty(), "no group was created");
        assert!(self.stele_services().is_empty(), "no backend service was created");
        assert!(self.release_templates().is_empty(), "no instance template was created");
        assert!(self.fake.instances().is_empty(), "no instance was created");
        assert_eq!(self.url_map(), vec![(0, 100)], "the url map is untouched");
    }
}

fn provider_at(endpoint: &str, max_attempts: u32) -> GcpProvider {
    GcpProvider::with_options(options_at(endpoint, max_attempts)).expect("provider")
}

fn options_at(endpoint: &str, max_attempts: u32) -> GcpOptions {
    GcpOptions {
        endpoint: Some(endpoint.to_owned()),
        credentials: GcpCredentials::Anonymous,
        max_attempts,
        initial_backoff: Duration::from_millis(20),
        attempt_timeout: Duration::from_secs(30),
        ..GcpOptions::default()
    }
}

/// The release template Stele made for `generation`: exactly one, running `image`, with the base's
/// properties and Stele's labels.
fn release_template(w: &World, generation: u64, image: &str) -> String {
    let made: Vec<(String, Value)> = w.templates_for(generation).into_iter().collect();
    assert_eq!(made.len(), 1, "one template for generation {generation}: {made:#?}");
    let (name, t) = &made[0];
    let props = &t["properties"];
    assert_eq!(props["machineType"], "e2-small", "the base's properties are kept: {t:#}");
    assert_eq!(props["labels"]["team"], "web", "the base's labels are kept: {t:#}");
    assert_eq!(props["labels"]["stele-env"], "prod");
    assert_eq!(props["labels"]["stele-generation"], generation.to_string());
    let source = props["disks"][0]["initializeParams"]["sourceImage"].as_str().unwrap_or_default();
    assert!(source.ends_with(image), "boot image {source} is not {image}: {t:#}");
    name.clone()
}

/// The group `mig` runs exactly `capacity` healthy instances made from the template of `generation`
/// (image `image`), is pinned to that template, and never rolls itself.
fn assert_group(w: &World, mig: &str, image: &str, generation: u64, capacity: usize) -> Value {
    let g = w.mig(mig).unwrap_or_else(|| panic!("no group {mig}: {:#?}", w.migs()));
    let template = release_template(w, generation, image);
    let instances = w.instances_of(mig);
    assert_eq!(instances.len(), capacity, "{g:#}\n{instances:#?}");
    for i in &instances {
        assert!(i["template"].as_str().unwrap().ends_with(&format!("/instanceTemplates/{template}")), "{i:#}");
        assert_eq!(i["health"], "HEALTHY", "{i:#}");
    }
    assert_eq!(g["targetSize"].as_u64(), Some(capacity as u64), "{g:#}");
    assert!(g["instanceTemplate"].as_str().unwrap().ends_with(&format!("/instanceTemplates/{template}")), "{g:#}");
    assert_eq!(g["updatePolicy"]["type"], "OPPORTUNISTIC", "the group never rolls itself: {g:#}");
    assert_eq!(g["updatePolicy"]["instanceRedistributionType"], "NONE", "{g:#}");
    assert!(g["autoHealingPolicies"].as_array().is_none_or(Vec::is_empty), "no autohealing: {g:#}");
    let description = g["description"].as_str().unwrap_or_default();
    for tag in ["stele-env=prod", "stele-group=web", "stele-managed=true"] {
        assert!(description.split_whitespace().any(|w| w == tag), "{tag} in {description:?}");
    }
    g
}

/// The rolling fleet: one group `stele-prod-web` and nothing of the weighted layout.
fn assert_fleet(w: &World, image: &str, generation: u64, capacity: usize) {
    let migs = w.migs();
    assert_eq!(migs.len(), 1, "exactly one group: {migs:#?}");
    assert_group(w, GROUP, image, generation, capacity);
    assert!(w.stele_services().is_empty(), "rolling makes no backend service");
    assert_eq!(w.url_map(), vec![(0, 100)], "rolling leaves the url map alone");
}

/// The environment runs `generation` only: one group `stele-prod-web-gN`, the only backend of its own
/// backend service (tagged, health checked by the spec's check), the URL map sending everything to it,
/// no other group or backend service of Stele's left.
fn assert_weighted_fleet(w: &World, image: &str, generation: u64, capacity: usize) {
    let migs = w.migs();
    assert_eq!(migs.len(), 1, "one group, earlier generations deleted: {migs:#?}");
    let g = assert_group(w, &generation_group(generation), image, generation, capacity);
    let name = backend_service_name(&env(), &"web".parse().unwrap(), generation);
    let services = w.stele_services();
    assert_eq!(services.keys().collect::<Vec<_>>(), vec![&name], "earlier generations' deleted: {services:#?}");
    let b = &services[&name];
    let backends = b["backends"].as_array().expect("backends");
    assert_eq!(backends.len(), 1, "{b:#}");
    assert_eq!(backends[0]["group"], g["instanceGroup"], "{b:#}");
    assert!(b["healthChecks"][0].as_str().unwrap().ends_with("/healthChecks/web-hc"), "{b:#}");
    let description = b["description"].as_str().unwrap_or_default();
    for tag in ["stele-env=prod", "stele-group=web", &format!("stele-generation={generation}")] {
        assert!(description.split_whitespace().any(|w| w == tag), "{tag} in {description:?}");
    }
    assert!(description.contains("stele-traffic-since="), "{description:?}");
    assert_eq!(w.url_map(), vec![(generation, 100)]);
}

/// What failed in a tick: its retryable actions, or the whole tick's error.
fn failures(tick: Result<Tick, ProviderError>) -> Vec<String> {
    match tick {
        Ok(tick) => tick.retryable,
        Err(e) => vec![e.to_string()],
    }
}

/// Every method the provider called (the fake's call log) is a permission of examples/gcp/iam-role.yaml.
fn assert_iam_role_covers(w: &World) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gcp/iam-role.yaml");
    let role = std::fs::read_to_string(&path).unwrap();
    let allowed: BTreeSet<&str> = role.lines().filter_map(|l| l.trim().strip_prefix("- ")).map(|p| p.trim()).collect();
    let called: BTreeSet<String> = w.fake.sdk_call_counts().into_keys().filter(|m| !m.is_empty()).collect();
    assert!(called.len() >= 8, "the fake saw the provider's calls: {called:?}");
    let missing: Vec<String> = called.iter().map(|m| permission(m)).filter(|p| !allowed.contains(p.as_str())).collect();
    assert!(missing.is_empty(), "called but not in {}: {missing:?} (called {called:?})", path.display());
}

/// The IAM permission a discovery method id needs (compute.regionInstanceGroupManagers.resize →
/// compute.instanceGroupManagers.update), as Compute Engine's permission reference lists them.
fn permission(method: &str) -> String {
    let parts: Vec<&str> = method.split('.').collect();
    let (resource, verb) = (parts[1], parts[2]);
    let resource = match resource {
        "regionInstanceGroupManagers" => "instanceGroupManagers",
        "regionOperations" => "regionOperations",
        "globalOperations" => "globalOperations",
        "zoneOperations" => "zoneOperations",
        other => other,
    };
    let verb = match (resource, verb) {
        ("instanceGroupManagers", "insert") => "create",
        ("instanceGroupManagers", "listManagedInstances") => "get",
        ("instanceGroupManagers", "get" | "list") => verb,
        ("instanceGroupManagers", _) => "update",
        ("backendServices", "insert") => "create",
        ("backendServices", "patch") => "update",
        ("urlMaps", "insert") => "create",
        ("urlMaps", "patch") => "update",
        ("instanceTemplates", "insert") => "create",
        (_, "getHealth") => "get",
        (_, "wait") => "get",
        _ => verb,
    };
    format!("compute.{resource}.{verb}")
}

// ---------------------------------------------------------------------------------------------------
// Rolling: the shared strategy suite (tests/common/cloud_suite.rs), then what only GCP has to say

#[test]
fn rolling_v1_to_v2_and_back_to_v1() {
    let w = World::new();
    suite::rolling_v1_to_v2_and_back_to_v1(&w);
    assert_iam_role_covers(&w);
}

#[test]
fn refused_images_touch_nothing() {
    let w = World::new();
    let spec = w.rolling(2, 1, 0);
    let v1 = digest("v1");
    let foreign = w.spec_with(
        "prod",
        json!([{"name": "web", "capacity": 2}]),
        json!({"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "min_ready_seconds": 0}),
        &["someone-else-entirely"],
    );
    let at = |name: &str| image_link(IMAGES, name);
    let cases = vec![
        (
            "wrong labels",
            spec.clone(),
            machine_release(1, "1.0.0", &at("wrong"), v1),
            format!(
                "image {} label stele-blake3-hi/lo is {}, the entry pins {}",
                at("wrong"),
                "deadbeef".repeat(8),
                v1.to_hex()
            ),
        ),
        (
            "no labels",
            spec.clone(),
            machine_release(1, "1.0.0", &at("untagged"), v1),
            format!("image {} has no label stele-blake3-hi/lo; the entry pins {}", at("untagged"), v1.to_hex()),
        ),
        (
            "right labels, other digest",
            spec.clone(),
            machine_release(1, "1.0.0", &at("app-2"), v1),
            format!(
                "image {} label stele-blake3-hi/lo is {}, the entry pins {}",
                at("app-2"),
                digest("v2").to_hex(),
                v1.to_hex()
            ),
        ),
        (
            "not READY",
            spec.clone(),
            machine_release(1, "1.0.0", &at("pending"), v1),
            format!("image {} is PENDING", at("pending")),
        ),
        (
            "missing",
            spec.clone(),
            machine_release(1, "1.0.0", &at("nope"), v1),
            format!("image {} does not exist or is not visible here (notFound)", at("nope")),
        ),
        (
            "a project not allowed",
            spec.clone(),
            machine_release(1, "1.0.0", &image_link("someone-else", "app-1"), v1),
            "is owned by project someone-else, which is not in image_projects (stele-images)".to_owned(),
        ),
        (
            "not in the spec's projects",
            foreign,
            w.release(1, "1"),
            "which is not in image_projects (someone-else-entirely)".to_owned(),
        ),
        (
            "blue/green, no labels",
            w.blue_green(2, 0),
            machine_release(1, "1.0.0", &at("untagged"), v1),
            format!("image {} has no label stele-blake3-hi/lo", at("untagged")),
        ),
    ];
    suite::refused_images_touch_nothing(&w, cases);
}

#[test]
fn a_group_name_taken_by_someone_else_is_refused() {
    suite::a_group_name_taken_by_someone_else_is_refused(&World::new());
}

#[test]
fn restart_before_every_tick_finishes_without_duplicates() {
    suite::restart_before_every_tick_finishes_without_duplicates(&World::new());
}

#[test]
fn rollout_through_throttling_and_unavailable() {
    let (_, reached) = suite::rollout_through_faults(&World::new(), 0x6c9);
    // The SDK retries only what is safe to repeat; the rest reaches the loop.
    assert!(reached > 0, "some faults reached the converge loop and were ticked through");
}

#[test]
fn an_instance_from_another_template_is_replaced() {
    suite::an_instance_from_elsewhere_is_replaced(&World::new());
}

#[test]
fn a_group_the_spec_drops_is_emptied_and_deleted() {
    suite::a_group_the_spec_drops_is_emptied_and_deleted(&World::new());
}

#[test]
fn two_environments_on_one_provider_keep_their_own_health_history() {
    let w = World::new();
    suite::two_environments_on_one_provider_keep_their_own_health_history(&w);
    for env in ["prod", "stage"] {
        let group = format!("stele-{env}-web");
        let template = w.mig(&group).unwrap()["instanceTemplate"].as_str().unwrap().to_owned();
        let instances = w.instances_of(&group);
        assert!(instances.iter().all(|i| i["template"] == template.as_str()), "{group} runs its v2 template only");
    }
}

#[test]
fn a_failed_operation_is_named_and_the_next_tick_goes_on() {
    let w = World::new();
    let spec = w.rolling(2, 1, 0);
    let mut p = w.provider();
    let mut memory = Memory::default();
    // The resize's operation ends DONE with a quota error: the action fails with GCP's reason, nothing
    // is half-applied, and the next tick tries again.
    w.fake.fail_next("compute.regionInstanceGroupManagers.resize", 403, "QUOTA_EXCEEDED", false);
    let failures = failures(converge::tick(&mut p, &env(), &spec, Some(&w.release(1, "1")), &mut memory, now_ms()));
    assert!(failures.iter().any(|f| f.contains("QUOTA_EXCEEDED") && f.contains("resize")), "{failures:?}");
    converge(&mut p, None, &spec, &w.release(1, "1"), &mut memory, |_| {});
    assert_fleet(&w, &image_link(IMAGES, "app-1"), 1, 2);
}

// ---------------------------------------------------------------------------------------------------
// Blue/green and canary: one group and one backend service per generation, traffic on the URL map

#[test]
fn blue_green_switches_the_url_map_once_the_new_group_is_healthy() {
    let w = World::new();
    suite::blue_green_switches_the_router_once_the_new_group_is_healthy(&w);
    assert_iam_role_covers(&w);
}

#[test]
fn canary_steps_then_a_failed_gate_restores_traffic_and_scales_the_canary_in() {
    suite::canary_steps_then_a_failed_gate_restores_traffic_and_scales_the_canary_in(&World::new());
}

#[test]
fn blue_green_through_faults_with_a_restart_before_every_tick() {
    suite::blue_green_through_faults_with_a_restart_before_every_tick(&World::new(), 0xb1e);
}

#[test]
fn weighted_strategies_need_a_url_map_and_one_group() {
    suite::weighted_strategies_need_a_router_and_one_group(&World::new());
}

/// The agent's own health check (GcpOptions::probe_instances): the fake gives instances loopback IPs
/// that the suite's health server answers.
#[test]
fn the_agents_own_health_check_gates_a_rolling_release_and_the_group_is_pinned_back() {
    suite::the_agents_own_health_check_gates_a_rolling_release_and_the_group_is_pinned_back::<World>();
}

#[test]
fn a_rolling_environment_switched_to_canary_is_adopted_and_switching_back_is_refused() {
    let w = World::new();
    suite::a_rolling_environment_switched_to_canary_is_adopted_and_switching_back_is_refused(&w);
    assert_iam_role_covers(&w);
}

#[test]
fn switching_to_canary_in_the_middle_of_a_rolling_rollout_is_refused() {
    suite::switching_to_canary_in_the_middle_of_a_rolling_rollout_is_refused(&World::new());
}

#[test]
fn a_group_created_but_never_attached_is_made_again_by_the_next_agent() {
    // A MIG's insert and its attachment to its backend service are two calls. The attachment fails here,
    // as if the agent had stopped between them. A new agent finds an empty group that the URL map does
    // not send to, deletes it and its backend service, and creates both again: g2 never gets instances
    // while unattached, nothing launches twice, and traffic moves only to an attached, healthy g2.
    let w = World::new();
    let spec = w.blue_green(2, 0);
    let mut p = w.provider();
    let mut memory = Memory::default();
    converge(&mut p, None, &spec, &w.release(1, "1"), &mut memory, |_| {});
    let v2 = w.release(2, "2");
    w.fake.fail_next("compute.backendServices.update", 403, "QUOTA_EXCEEDED", false);
    let failures = failures(converge::tick(&mut p, &env(), &spec, Some(&v2), &mut memory, now_ms()));
    assert!(
        failures.iter().any(|f| f.contains("backendServices.update") && f.contains("QUOTA_EXCEEDED")),
        "{failures:?}"
    );
    let g2 = w.mig(&generation_group(2)).expect("g2 was created");
    let service = backend_service_name(&env(), &"web".parse().unwrap(), 2);
    let backends = w.stele_services()[&service]["backends"].as_array().cloned().unwrap_or_default();
    assert!(backends.is_empty(), "g2 is not attached yet: {backends:?}");
    assert!(g2["description"].as_str().unwrap().contains(&format!("stele-backends={service}")), "{g2:#}");

    let mut p = w.provider();
    converge(&mut p, None, &spec, &v2, &mut memory, |_| {
        let attached = w.stele_services().get(&service).and_then(|b| b["backends"].as_array().cloned());
        let g2 = w.instances_of(&generation_group(2)).len();
        assert!(g2 == 0 || attached.is_some_and(|b| b.len() == 1), "g2 gets instances only once attached");
    });
    assert_weighted_fleet(&w, &image_link(IMAGES, "app-2"), 2, 2);
    assert_eq!(w.launches(), 4, "2 of v1 and 2 of v2, nothing twice");
}
