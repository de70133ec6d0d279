//! The `gcp` provider against the loopback Compute Engine fake (tests/gcp/fake.py through
//! tests/common/gcp.rs): `converge::tick` drives `GcpProvider`, the official Rust SDK underneath, through
//! rolling, blue/green and canary rollouts of regional managed instance groups, and every claim is
//! checked against what the fake holds, read with raw HTTP (the API and its `/_fake/` control API), never
//! through the provider under test. These are the strategy tests of tests/aws_provider.rs on GCP's API.
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
//! provider, each keeping its own health history; and every method called allowed by
//! examples/gcp/iam-role.yaml. The SIGKILL mid-rollout runs the real agent binary (tests/agent_gcp.rs).
//!
//! The fake is faithful to Google's discovery document in shape; what it does not model is listed in the
//! README ("GCP fake"). The provider authenticates anonymously (the fake runs with --allow-anonymous).
#![cfg(feature = "gcp")]

mod common;

use common::cloud::{converge, healthy_of, machine_release, now_ms};
use common::gcp::{
    api_path, FaultProxy, FaultShape, GcpFake, BASE_TEMPLATE, IMAGES, OPERATOR_SERVICE, PROJECT, REGION, URL_MAP,
};
use ledger_format::ranges::check_environment_ranges;
use ledger_format::types::{EnvName, Environment, HealthCheck, Image};
use ledger_format::Blake3Digest;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use stele::converge::{self, Memory};
use stele::plan::{Health, Phase, Release};
use stele::provider::gcp::{backend_service_name, GcpCredentials, GcpOptions, GcpProvider};
use stele::provider::{Provider, ProviderError};

const GROUP: &str = "stele-prod-web";

fn digest(version: &str) -> Blake3Digest {
    Blake3Digest(*blake3::hash(format!("stele gcp test {version}").as_bytes()).as_bytes())
}

fn image_link(project: &str, name: &str) -> String {
    format!("projects/{project}/global/images/{name}")
}

fn env() -> EnvName {
    "prod".parse().unwrap()
}

/// One fake holding what an operator sets up before Stele: images app-1..3 in project stele-images
/// labelled with the digests of v1..v3 (and some that must be refused), the base instance template, a
/// health check, and a URL map sending everything to a backend service of the operator's.
struct World {
    fake: GcpFake,
}

impl World {
    fn new() -> World {
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
        World { fake }
    }

    fn get(&self, path: &str) -> Option<Value> {
        let (status, out) = self.fake.call("GET", path, None);
        match status {
            200 => Some(out),
            404 => None,
            _ => panic!("GET {path}: {status} {out:#}"),
        }
    }

    fn spec(&self, capacity: u64, strategy: Value) -> Environment {
        self.spec_with(json!([{"name": "web", "capacity": capacity}]), strategy, &[IMAGES])
    }

    fn spec_with(&self, groups: Value, strategy: Value, image_projects: &[&str]) -> Environment {
        self.spec_named("prod", groups, strategy, image_projects)
    }

    fn spec_named(&self, name: &str, groups: Value, strategy: Value, image_projects: &[&str]) -> Environment {
        let spec: Environment = serde_json::from_value(json!({
            "type": "stele.environment/v1",
            "ledger": "acme",
            "name": name,
            "version": 1,
            "provider": {
                "kind": "gcp",
                "project": PROJECT,
                "region": REGION,
                "instance_template": BASE_TEMPLATE,
                "image_projects": image_projects,
                "url_map": URL_MAP,
                "health_check": common::gcp::HEALTH_CHECK,
                "port": 8080,
            },
            "groups": groups,
            "strategy": strategy,
            "health": {"kind": "http", "path": "/healthz", "interval_ms": 1000, "timeout_ms": 500,
                       "healthy_threshold": 1, "deadline_seconds": 120},
            "drift": "correct",
            "revert": "allow",
        }))
        .expect("spec parses");
        check_environment_ranges(&spec).expect("spec within the ledger's ranges");
        spec
    }

    fn rolling(&self, capacity: u64, surge: u64, unavailable: u64) -> Environment {
        self.spec(
            capacity,
            json!({"kind": "rolling", "max_surge": surge, "max_unavailable": unavailable, "min_ready_seconds": 0}),
        )
    }

    fn blue_green(&self, capacity: u64, grace_seconds: u64) -> Environment {
        self.spec(capacity, json!({"kind": "blue_green", "grace_seconds": grace_seconds}))
    }

    fn canary(&self, capacity: u64, steps: Value) -> Environment {
        self.spec(capacity, json!({"kind": "canary", "steps": steps}))
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

    fn provider(&self) -> GcpProvider {
        provider_at(&self.fake.endpoint, 4)
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
        let out = self.get(&api_path("global/instanceTemplates")).expect("list");
        out["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t["name"] != BASE_TEMPLATE)
            .map(|t| (t["name"].as_str().unwrap().to_owned(), t))
            .collect()
    }

    /// Stele's backend services by name (every one but the operator's).
    fn stele_services(&self) -> BTreeMap<String, Value> {
        let out = self.get(&api_path("global/backendServices")).expect("list");
        out["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|b| b["name"] != OPERATOR_SERVICE)
            .map(|b| (b["name"].as_str().unwrap().to_owned(), b))
            .collect()
    }

    /// What the URL map's default route sends to, as (generation, weight) by the backend services' names;
    /// the operator's service shows as generation 0, and a plain default service as weight 100.
    fn url_map(&self) -> Vec<(u64, u64)> {
        let map = self.get(&api_path(&format!("global/urlMaps/{URL_MAP}"))).expect("the url map exists");
        let generation_of = |link: &str| {
            let name = link.rsplit('/').next().unwrap();
            (1..=9).find(|g| backend_service_name(&env(), &"web".parse().unwrap(), *g) == name).unwrap_or(0)
        };
        let mut pairs: Vec<(u64, u64)> = match map["defaultRouteAction"]["weightedBackendServices"].as_array() {
            Some(weighted) if !weighted.is_empty() => weighted
                .iter()
                .map(|w| (generation_of(w["backendService"].as_str().unwrap()), w["weight"].as_u64().unwrap_or(0)))
                .collect(),
            _ => vec![(generation_of(map["defaultService"].as_str().expect("a default service")), 100)],
        };
        pairs.sort();
        pairs
    }

    /// Instances ever created (the fake counts them; it forgets deleted ones).
    fn launches(&self) -> usize {
        self.fake.instances_created()
    }
}

fn provider_at(endpoint: &str, max_attempts: u32) -> GcpProvider {
    GcpProvider::with_options(GcpOptions {
        endpoint: Some(endpoint.to_owned()),
        credentials: GcpCredentials::Anonymous,
        max_attempts,
        initial_backoff: Duration::from_millis(20),
        attempt_timeout: Duration::from_secs(30),
        ..GcpOptions::default()
    })
    .expect("provider")
}

/// The release template Stele made for `generation`: exactly one, running `image`, with the base's
/// properties and Stele's labels.
fn release_template(w: &World, generation: u64, image: &str) -> String {
    let made: Vec<(String, Value)> = w
        .release_templates()
        .into_iter()
        .filter(|(_, t)| {
            t["description"].as_str().is_some_and(|d| d.starts_with(&format!("stele prod generation {generation} ")))
        })
        .collect();
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

fn generation_group(generation: u64) -> String {
    format!("{GROUP}-g{generation}")
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
// Rolling

#[test]
fn rolling_v1_to_v2_and_back_to_v1() {
    let w = World::new();
    let spec = w.rolling(4, 0, 1);
    let mut p = w.provider();
    let mut memory = Memory::default();

    let v1 = w.release(1, "1");
    let (_, retried) = converge(&mut p, None, &spec, &v1, &mut memory, |_| {});
    assert_eq!(retried, 0);
    assert_fleet(&w, &image_link(IMAGES, "app-1"), 1, 4);
    assert_eq!(memory.last_good.as_ref(), Some(&v1));

    // v2, one instance at a time: never more than one below capacity, neither in what the provider
    // observed nor in what GCP holds after the tick's actions.
    for (generation, key) in [(2, "2"), (3, "1")] {
        let target = w.release(generation, key);
        let (ticks, retried) = converge(&mut p, None, &spec, &target, &mut memory, |tick| {
            let observed = &tick.observed.instances;
            let healthy = observed.iter().filter(|i| matches!(i.health, Health::Healthy { .. })).count();
            assert!(healthy >= 3, "observed {healthy} healthy: {observed:#?}");
            assert!(observed.len() <= 4, "observed {} instances", observed.len());
            let now = w.instances_of(GROUP).len();
            assert!((3..=4).contains(&now), "GCP runs {now} instances after a tick");
            let g = w.mig(GROUP).expect("the group stays");
            assert!(g["targetSize"].as_u64() <= Some(4), "max_surge 0 never grows the group: {g:#}");
        });
        assert_eq!(retried, 0);
        // Four replacements, one per two ticks (delete, then resize), plus the converged look.
        assert!(ticks >= 8, "generation {generation} converged in {ticks} ticks");
        assert_fleet(&w, &image_link(IMAGES, &format!("app-{key}")), generation, 4);
        assert_eq!(memory.last_good.as_ref(), Some(&target));
    }
    // Earlier templates stay (a restore or an audit may need them): one per generation.
    assert_eq!(w.release_templates().len(), 3, "{:#?}", w.release_templates());
    // 4 of v1, 4 replacements of v2, 4 of v1 again: nothing launched twice.
    assert_eq!(w.launches(), 12);
    assert_iam_role_covers(&w);
}

#[test]
fn refused_images_touch_nothing() {
    let w = World::new();
    let spec = w.rolling(2, 1, 0);
    let mut p = w.provider();
    let v1 = digest("v1");
    let foreign = w.spec_with(
        json!([{"name": "web", "capacity": 2}]),
        json!({"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "min_ready_seconds": 0}),
        &["someone-else-entirely"],
    );
    let blue_green = w.blue_green(2, 0);
    let artifact = Release {
        generation: 1,
        version: "1.0.0".parse().unwrap(),
        seq: 1,
        image: Image::Artifact { uri: "https://example.invalid/app.tar".parse().unwrap(), blake3: v1, size: 1 },
    };
    let at = |name: &str| image_link(IMAGES, name);
    let cases: Vec<(&str, &Environment, Release, String)> = vec![
        (
            "wrong labels",
            &spec,
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
            &spec,
            machine_release(1, "1.0.0", &at("untagged"), v1),
            format!("image {} has no label stele-blake3-hi/lo; the entry pins {}", at("untagged"), v1.to_hex()),
        ),
        (
            "right labels, other digest",
            &spec,
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
            &spec,
            machine_release(1, "1.0.0", &at("pending"), v1),
            format!("image {} is PENDING", at("pending")),
        ),
        (
            "missing",
            &spec,
            machine_release(1, "1.0.0", &at("nope"), v1),
            format!("image {} does not exist or is not visible here (notFound)", at("nope")),
        ),
        (
            "a project not allowed",
            &spec,
            machine_release(1, "1.0.0", &image_link("someone-else", "app-1"), v1),
            "is owned by project someone-else, which is not in image_projects (stele-images)".to_owned(),
        ),
        (
            "not in the spec's projects",
            &foreign,
            w.release(1, "1"),
            "which is not in image_projects (someone-else-entirely)".to_owned(),
        ),
        ("artifact", &spec, artifact, "pins an artifact".to_owned()),
        (
            "blue/green, no labels",
            &blue_green,
            machine_release(1, "1.0.0", &at("untagged"), v1),
            format!("image {} has no label stele-blake3-hi/lo", at("untagged")),
        ),
    ];
    for (what, spec, release, want) in cases {
        let mut memory = Memory::default();
        match converge::tick(&mut p, &env(), spec, Some(&release), &mut memory, now_ms()) {
            Err(ProviderError::Refused(msg)) => assert!(msg.contains(&want), "{what}: {msg:?} does not say {want:?}"),
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }
    assert!(w.migs().is_empty(), "no group was created");
    assert!(w.stele_services().is_empty(), "no backend service was created");
    assert!(w.release_templates().is_empty(), "no instance template was created");
    assert!(w.fake.instances().is_empty(), "no instance was created");
    assert_eq!(w.url_map(), vec![(0, 100)], "the url map is untouched");
}

#[test]
fn a_group_name_taken_by_someone_else_is_refused() {
    let w = World::new();
    w.fake.done(
        "POST",
        &api_path(&format!("regions/{REGION}/instanceGroupManagers")),
        json!({"name": GROUP, "instanceTemplate": format!("global/instanceTemplates/{BASE_TEMPLATE}"),
               "targetSize": 1, "description": "team=someone-else"}),
    );
    let spec = w.rolling(2, 1, 0);
    let mut p = w.provider();
    let mut memory = Memory::default();
    match converge::tick(&mut p, &env(), &spec, Some(&w.release(1, "1")), &mut memory, now_ms()) {
        Err(ProviderError::Refused(msg)) => {
            assert!(msg.contains(&format!("managed instance group {GROUP} exists but is not Stele's")), "{msg}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let g = w.mig(GROUP).unwrap();
    assert_eq!(g["targetSize"], 1, "the other group is left alone: {g:#}");
    assert!(g["instanceTemplate"].as_str().unwrap().ends_with(BASE_TEMPLATE), "{g:#}");
    assert_eq!(w.instances_of(GROUP).len(), 1);
}

#[test]
fn restart_before_every_tick_finishes_without_duplicates() {
    let w = World::new();
    // With a surge: the group grows within a tick (launch first, then delete).
    let spec = w.rolling(4, 1, 1);
    let mut p = w.provider();
    let mut memory = Memory::default();
    let fresh = || w.provider();
    converge(&mut p, Some(&fresh), &spec, &w.release(1, "1"), &mut memory, |_| {});
    assert_fleet(&w, &image_link(IMAGES, "app-1"), 1, 4);
    converge(&mut p, Some(&fresh), &spec, &w.release(2, "2"), &mut memory, |tick| {
        let alive = tick.observed.instances.len();
        assert!(alive <= 5, "capacity + max_surge: {alive}");
        let now = w.instances_of(GROUP).len();
        assert!((3..=5).contains(&now), "GCP runs {now}");
        assert_eq!(w.migs().len(), 1);
    });
    assert_fleet(&w, &image_link(IMAGES, "app-2"), 2, 4);
    assert_eq!(w.launches(), 8, "4 of v1 and 4 replacements, nothing twice");
    assert_eq!(w.release_templates().len(), 2, "one per generation");
}

#[test]
fn rollout_through_throttling_and_unavailable() {
    let w = World::new();
    let proxy = FaultProxy::start_shaped(&w.fake.endpoint, 0.2, 0x6c9, FaultShape::Google);
    // Two attempts per call: the SDK retries only what is safe to repeat; the rest reaches the loop.
    let mut p = provider_at(&proxy.endpoint, 2);
    let spec = w.rolling(4, 1, 1);
    let mut memory = Memory::default();
    let (_, r1) = converge(&mut p, None, &spec, &w.release(1, "1"), &mut memory, |_| {});
    let (_, r2) = converge(&mut p, None, &spec, &w.release(2, "2"), &mut memory, |tick| {
        assert!(tick.observed.instances.len() <= 5, "capacity + max_surge");
    });
    let faults = proxy.faults();
    let total = proxy.requests().len();
    eprintln!("{faults} faults in {total} requests; {} failures reached the converge loop", r1 + r2);
    assert!(faults * 10 >= total, "about a fifth of {total} requests faulted, got {faults}");
    assert!(r1 + r2 > 0, "some faults reached the converge loop and were ticked through");
    assert_fleet(&w, &image_link(IMAGES, "app-2"), 2, 4);
    assert_eq!(w.launches(), 8, "4 of v1 and 4 replacements, nothing twice");
    assert_eq!(w.release_templates().len(), 2, "one per generation");
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
    let tick = converge::tick(&mut p, &env(), &spec, Some(&w.release(1, "1")), &mut memory, now_ms());
    let failures: Vec<String> = match tick {
        Ok(tick) => tick.retryable.clone(),
        Err(e) => vec![e.to_string()],
    };
    assert!(failures.iter().any(|f| f.contains("QUOTA_EXCEEDED") && f.contains("resize")), "{failures:?}");
    converge(&mut p, None, &spec, &w.release(1, "1"), &mut memory, |_| {});
    assert_fleet(&w, &image_link(IMAGES, "app-1"), 1, 2);
}

// ---------------------------------------------------------------------------------------------------
// Blue/green and canary: one group and one backend service per generation, traffic on the URL map

#[test]
fn blue_green_switches_the_url_map_once_the_new_group_is_healthy() {
    let w = World::new();
    let spec = w.blue_green(3, 1);
    let mut p = w.provider();
    let mut memory = Memory::default();
    assert_eq!(w.url_map(), vec![(0, 100)], "the operator's url map sends to its own backend service");

    converge(&mut p, None, &spec, &w.release(1, "1"), &mut memory, |_| {});
    assert_weighted_fleet(&w, &image_link(IMAGES, "app-1"), 1, 3);

    // v2: the URL map sends everything to g1 until all of g2 is healthy, then everything to g2 in one
    // change (never a split); g1 keeps its 3 instances until then and is deleted after the grace period.
    let mut switched = false;
    converge(&mut p, None, &spec, &w.release(2, "2"), &mut memory, |tick| {
        let map = w.url_map();
        let g1 = w.instances_of(&generation_group(1)).len();
        match map.as_slice() {
            [(1, 100)] => {
                assert!(!switched, "traffic went back to g1");
                assert_eq!(g1, 3, "g1 whole while it serves");
            }
            [(2, 100)] => {
                if !switched {
                    assert_eq!(w.instances_of(&generation_group(2)).len(), 3, "all of g2 runs before the switch");
                    assert_eq!(healthy_of(tick, 2), 3, "the switch followed an observation of 3 healthy g2 instances");
                    assert_eq!(g1, 3, "g1 is kept for the grace period");
                }
                switched = true;
            }
            other => panic!("blue/green never splits traffic: {other:?}"),
        }
    });
    assert!(switched);
    assert_weighted_fleet(&w, &image_link(IMAGES, "app-2"), 2, 3);
    assert_eq!(w.launches(), 6, "3 of v1 and 3 of v2, nothing twice");
    assert_eq!(w.release_templates().len(), 2, "g1's template is kept");
    assert_iam_role_covers(&w);
}

#[test]
fn canary_steps_then_a_failed_gate_restores_traffic_and_scales_the_canary_in() {
    let w = World::new();
    let mut spec = w.canary(4, json!([{"weight": 25, "pause_seconds": 1}, {"weight": 50, "pause_seconds": 600}]));
    if let HealthCheck::Http { deadline_seconds, .. } = &mut spec.health {
        *deadline_seconds = 1;
    }
    let mut p = w.provider();
    let mut memory = Memory::default();
    converge(&mut p, None, &spec, &w.release(1, "1"), &mut memory, |_| {});
    assert_weighted_fleet(&w, &image_link(IMAGES, "app-1"), 1, 4);

    // v2 goes 25% (1 instance), then 50% (2 instances), where the 600 s pause holds it.
    let v2 = w.release(2, "2");
    let mut seen = Vec::new();
    // Bounded by wall time: the 1 s pause is real seconds, however fast a tick is.
    let start = std::time::Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(60), "canary did not reach 50%: {seen:?}");
        let tick = converge::tick(&mut p, &env(), &spec, Some(&v2), &mut memory, now_ms()).expect("tick");
        assert_eq!(tick.plan.phase, Phase::Progressing, "{:?}", tick.plan);
        let map = w.url_map();
        if seen.last() != Some(&map) {
            seen.push(map.clone());
        }
        let g2 = w.instances_of(&generation_group(2)).len();
        assert_eq!(w.instances_of(&generation_group(1)).len(), 4, "the stable generation stays whole");
        match map.as_slice() {
            [(1, 100)] => assert!(g2 <= 1, "25% needs 1 instance, {g2} run"),
            [(1, 75), (2, 25)] => assert!(g2 <= 2, "{g2} run at 25%, the next step needs 2"),
            [(1, 50), (2, 50)] => {
                assert!(g2 <= 4, "{g2} run at 50%");
                if tick.plan.waiting.iter().any(|w| w.contains("canary at 50%, pausing")) {
                    break;
                }
            }
            other => panic!("unexpected weights {other:?}"),
        }
    }
    assert_eq!(seen, vec![vec![(1, 100)], vec![(1, 75), (2, 25)], vec![(1, 50), (2, 50)]]);

    // The canary goes bad: its backend service reports its instances UNHEALTHY.
    let g2 = w.instances_of(&generation_group(2));
    let canaries = g2.len();
    assert!((2..=4).contains(&canaries), "{g2:#?}");
    for i in &g2 {
        w.fake.set_health(i["name"].as_str().unwrap(), Some("UNHEALTHY"));
    }
    let mut failed_tick = None;
    let mut restored = None;
    for n in 0..40 {
        let tick = converge::tick(&mut p, &env(), &spec, Some(&v2), &mut memory, now_ms()).expect("tick");
        let map = w.url_map();
        if tick.plan.phase == Phase::Degraded && failed_tick.is_none() {
            failed_tick = Some(n);
        }
        if map == vec![(1, 100)] && restored.is_none() {
            restored = Some(n);
        }
        if restored.is_none() {
            assert_eq!(map, vec![(1, 50), (2, 50)], "traffic stays until the gate fails, then goes back");
        }
        if tick.converged() {
            assert_eq!(tick.plan.phase, Phase::Degraded, "{:?}", tick.plan);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(failed_tick.is_some() && restored.is_some(), "gate failed at {failed_tick:?}, restored at {restored:?}");
    let failed = memory.failed.as_ref().expect("the failed gate is remembered");
    assert_eq!(failed.generation, 2);
    // The canaries had been healthy, so UNHEALTHY means they went bad (not that they are still booting,
    // which is how a young instance's UNHEALTHY reads).
    assert!(failed.reason.contains("stele-prod-web-g2") && failed.reason.contains("UNHEALTHY"), "{}", failed.reason);
    assert_eq!(memory.last_good.as_ref().map(|r| r.generation), Some(1));
    // g1 serves alone again; the canary group and its backend service are gone.
    assert_weighted_fleet(&w, &image_link(IMAGES, "app-1"), 1, 4);
    assert_eq!(w.launches(), 4 + canaries, "4 of v1 and the canaries, nothing twice");
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
    let failures: Vec<String> = match converge::tick(&mut p, &env(), &spec, Some(&v2), &mut memory, now_ms()) {
        Ok(tick) => tick.retryable.clone(),
        Err(e) => vec![e.to_string()],
    };
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

#[test]
fn blue_green_through_faults_with_a_restart_before_every_tick() {
    let w = World::new();
    let proxy = FaultProxy::start_shaped(&w.fake.endpoint, 0.2, 0xb1e, FaultShape::Google);
    let spec = w.blue_green(3, 0);
    let fresh = || provider_at(&proxy.endpoint, 2);
    let mut p = fresh();
    let mut memory = Memory::default();
    converge(&mut p, Some(&fresh), &spec, &w.release(1, "1"), &mut memory, |_| {});
    converge(&mut p, Some(&fresh), &spec, &w.release(2, "2"), &mut memory, |_| {
        let names: BTreeSet<String> = w.migs().iter().map(|g| g["name"].as_str().unwrap().to_owned()).collect();
        assert!(
            names.is_subset(&BTreeSet::from([generation_group(1), generation_group(2)])),
            "at most the serving and the new generation: {names:?}"
        );
    });
    let (faults, total) = (proxy.faults(), proxy.requests().len());
    eprintln!("{faults} faults in {total} requests");
    assert!(faults * 10 >= total, "about a fifth of {total} requests faulted, got {faults}");
    assert_weighted_fleet(&w, &image_link(IMAGES, "app-2"), 2, 3);
    assert_eq!(w.launches(), 6, "3 of v1 and 3 of v2, nothing twice");
}

#[test]
fn weighted_strategies_need_a_url_map_and_one_group() {
    let w = World::new();
    let mut p = w.provider();
    let mut no_map = w.blue_green(2, 0);
    if let ledger_format::types::Provider::Gcp { url_map, .. } = &mut no_map.provider {
        *url_map = None;
    }
    let two_groups = w.spec_with(
        json!([{"name": "web", "capacity": 1}, {"name": "api", "capacity": 1}]),
        json!({"kind": "canary", "steps": [{"weight": 10, "pause_seconds": 0}]}),
        &[IMAGES],
    );
    for (spec, want) in [(&no_map, "needs url_map, health_check and port"), (&two_groups, "exactly one group")] {
        let mut memory = Memory::default();
        match converge::tick(&mut p, &env(), spec, Some(&w.release(1, "1")), &mut memory, now_ms()) {
            Err(ProviderError::Refused(e)) => assert!(e.contains(want), "{e}"),
            other => panic!("expected a refusal naming {want:?}, got {other:?}"),
        }
    }
    assert!(w.migs().is_empty(), "nothing created");
    assert!(w.stele_services().is_empty(), "nothing created");
    assert!(w.release_templates().is_empty(), "no template made");
}

#[test]
fn an_instance_from_another_template_is_replaced() {
    // Which template an instance was made from is what GCP says: an operator points the group at a
    // template of their own and grows it; the stray instance is found and replaced, and the next launch
    // pins the group to Stele's template again.
    let w = World::new();
    let spec = w.rolling(3, 0, 1);
    let mut p = w.provider();
    let mut memory = Memory::default();
    let v1 = w.release(1, "1");
    converge(&mut p, None, &spec, &v1, &mut memory, |_| {});
    assert_fleet(&w, &image_link(IMAGES, "app-1"), 1, 3);
    let mig = api_path(&format!("regions/{REGION}/instanceGroupManagers/{GROUP}"));
    w.fake.done(
        "POST",
        &format!("{mig}/setInstanceTemplate"),
        json!({"instanceTemplate": format!("global/instanceTemplates/{BASE_TEMPLATE}")}),
    );
    w.fake.done("POST", &format!("{mig}/resize?size=4"), json!({}));
    let stray: Vec<String> = w
        .instances_of(GROUP)
        .iter()
        .filter(|i| i["template"].as_str().unwrap().ends_with(BASE_TEMPLATE))
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stray.len(), 1);
    let observed = p.observe(&env(), &spec, now_ms()).expect("observe");
    let seen = observed.instances.iter().find(|i| i.id.ends_with(&stray[0])).expect("the stray instance is observed");
    assert_eq!(seen.generation, 0, "not made from a Stele template: {seen:?}");
    converge(&mut p, None, &spec, &v1, &mut memory, |_| {});
    assert_fleet(&w, &image_link(IMAGES, "app-1"), 1, 3);
    assert!(w.instances_of(GROUP).iter().all(|i| i["name"] != stray[0].as_str()), "the stray instance was deleted");
}

#[test]
fn two_environments_on_one_provider_keep_their_own_health_history() {
    // One agent has one provider for all its environments. Each observation judges only its own
    // environment's instances: with min_ready_seconds, a history wiped by the other environment's look
    // would never let a new instance count as ready, and neither rollout would finish.
    let w = World::new();
    let strategy = json!({"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "min_ready_seconds": 1});
    let group = json!([{"name": "web", "capacity": 2}]);
    let envs: Vec<(EnvName, Environment)> = ["prod", "stage"]
        .iter()
        .map(|name| (name.parse().unwrap(), w.spec_named(name, group.clone(), strategy.clone(), &[IMAGES])))
        .collect();
    let mut p = w.provider();
    let mut memories = [Memory::default(), Memory::default()];
    for target in [w.release(1, "1"), w.release(2, "2")] {
        let mut done = [false, false];
        for n in 0.. {
            assert!(n < 80, "no convergence to generation {} in 80 rounds: {done:?}", target.generation);
            for (k, (env, spec)) in envs.iter().enumerate() {
                let tick = converge::tick(&mut p, env, spec, Some(&target), &mut memories[k], now_ms()).expect("tick");
                assert!(tick.retryable.is_empty(), "{env}: {:?}", tick.retryable);
                done[k] = tick.converged();
            }
            if done == [true, true] {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    for (env, _) in &envs {
        let group = format!("stele-{env}-web");
        let instances = w.instances_of(&group);
        assert_eq!(instances.len(), 2, "{group}: {instances:#?}");
        let template = w.mig(&group).unwrap()["instanceTemplate"].as_str().unwrap().to_owned();
        assert!(instances.iter().all(|i| i["template"] == template.as_str()), "{group} runs its v2 template only");
    }
    assert_eq!(w.launches(), 8, "2 of v1 and 2 of v2 per environment, nothing twice");
}
