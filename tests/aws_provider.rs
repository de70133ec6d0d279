//! The `aws` provider against moto (tests/common/moto.rs): `converge::tick` drives `AwsProvider` through
//! rolling, blue/green and canary rollouts of Auto Scaling groups, and every claim is checked against what the emulated AWS
//! holds (groups, launch-template versions, EC2 ImageIds, target health), read with boto3 through
//! tests/aws/fixture.py, never through the provider under test.
//!
//! Covered: a 6-instance rolling v1 → v2 with max_unavailable 1 and max_surge 0 (at most one instance below
//! capacity at every step), back to v1 as a new generation, AMI refusals (wrong tag, no tag, disabled,
//! foreign owner) that create nothing, a group name taken by someone else, a restart before every tick,
//! and a rollout through a fault proxy that throttles or fails a fifth of the calls; blue/green with the
//! listener's weights checked at every tick (never split, switched only once the new group is whole and
//! healthy), canary steps and pauses, a canary whose instances Auto Scaling reports Unhealthy (gate
//! failed, traffic restored, canary scaled in, group and target group deleted, Degraded), blue/green
//! through the fault proxy with a restart before every tick, weighted specs without a listener or
//! with two groups refused before anything is created, the agent's own HTTP check (instances on
//! loopback IPs) failing a rolling gate with the group pinned back to v1, a rolling environment
//! switched to canary (adopted) and back (refused), and every call seen by a proxy allowed by
//! examples/aws/iam-policy.json.
//!
//! moto gaps met (and how the provider or the tests cope, see src/provider/aws/): `SourceVersion` of
//! CreateLaunchTemplateVersion is ignored (the instance type is copied explicitly), the per-instance
//! launch-template version in DescribeAutoScalingGroups is the template's default (generations are read
//! from the instance tag `stele:generation`), `ClientToken` is ignored (versions are found again by their
//! description, lowest number first), SetDesiredCapacity above MaxSize is accepted (the provider checks
//! bounds itself), instances start synchronously and InService at once (the provider's "pending" launches
//! are not exercised here), and instances terminated through the group stay "healthy" targets (real AWS
//! drains them; `assert_fleet` only requires such targets to be terminated instances). Target groups
//! report every registered instance healthy at once, so the failing canary is made with
//! SetInstanceHealth.
#![cfg(feature = "aws")]

mod common;

use common::cloud::{converge, healthy_of, machine_release, now_ms};
use common::moto::{self, FaultProxy, Moto};
use ledger_format::ranges::check_environment_ranges;
use ledger_format::types::{EnvName, Environment, HealthCheck, Image};
use ledger_format::Blake3Digest;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;
use stele::converge::{self, Memory};
use stele::plan::{Health, Phase, Release};
use stele::provider::aws::{target_group_name, AwsOptions, AwsProvider};
use stele::provider::{Provider, ProviderError};

const GROUP: &str = "stele-prod-web";

fn digest(version: &str) -> Blake3Digest {
    Blake3Digest(*blake3::hash(format!("stele aws test {version}").as_bytes()).as_bytes())
}

/// One moto with the fixture's world: AMIs app-1..3 tagged with the digests of v1..v3.
struct World {
    moto: Moto,
    setup: Value,
    /// The spec's `port` (the agent's own health checks go there).
    port: u16,
}

impl World {
    fn new() -> World {
        Self::in_net("10.42", 8080)
    }

    /// A world whose VPC is `net`.0.0/16 ("127.77": instances' private IPs are on loopback).
    fn in_net(net: &str, port: u16) -> World {
        let moto = Moto::start();
        let (d1, d2, d3) = (digest("v1").to_hex(), digest("v2").to_hex(), digest("v3").to_hex());
        let setup = moto.setup_in(net, &[&d1, &d2, &d3]);
        World { moto, setup, port }
    }

    fn ami(&self, key: &str) -> String {
        self.setup["amis"][key].as_str().unwrap_or_else(|| panic!("no AMI {key} in {}", self.setup)).to_owned()
    }

    fn owner(&self) -> String {
        self.setup["owner"].as_str().expect("owner").to_owned()
    }

    /// A spec for environment `prod` with one group `web`, provider aws on this world.
    fn spec(&self, capacity: u64, strategy: Value, owners: &[String]) -> Environment {
        self.spec_groups(json!([{"name": "web", "capacity": capacity}]), strategy, owners)
    }

    fn spec_groups(&self, groups: Value, strategy: Value, owners: &[String]) -> Environment {
        let s = &self.setup;
        let spec: Environment = serde_json::from_value(json!({
            "type": "stele.environment/v1",
            "ledger": "acme",
            "name": "prod",
            "version": 1,
            "provider": {
                "kind": "aws",
                "region": s["region"],
                "launch_template": s["launch_template"],
                "subnets": s["subnets"],
                "ami_owners": owners,
                "target_groups": s["target_group_arns"],
                "listener": s["listener_arn"],
                "vpc": s["vpc"],
                "port": self.port,
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
        let strategy =
            json!({"kind": "rolling", "max_surge": surge, "max_unavailable": unavailable, "min_ready_seconds": 0});
        self.spec(capacity, strategy, &[self.owner()])
    }

    /// Generation `generation` running AMI app-`key` ("1", "2", "3"): version `key`.0.0, digest of `vkey`.
    fn release(&self, generation: u64, key: &str) -> Release {
        machine_release(generation, &format!("{key}.0.0"), &self.ami(key), digest(&format!("v{key}")))
    }

    fn provider(&self) -> AwsProvider {
        provider_at(&self.moto.endpoint, 8)
    }

    fn asgs(&self) -> Vec<Value> {
        self.moto.fixture(&["describe-asgs"]).as_array().expect("describe-asgs gives a list").clone()
    }

    fn lt_versions(&self) -> Vec<Value> {
        let lt = self.setup["launch_template"].as_str().unwrap();
        self.moto.fixture(&["lt-versions", "--name", lt])["versions"].as_array().unwrap().clone()
    }

    /// Every EC2 instance moto knows, terminated ones included: (id, image, state).
    fn all_instances(&self) -> Vec<(String, String, String)> {
        let out = boto(
            &self.moto,
            "import json\n\
             ids = [(i['InstanceId'], i['ImageId'], i['State']['Name']) for r in ec2.describe_instances()['Reservations'] for i in r['Instances']]\n\
             print(json.dumps(ids))",
        );
        serde_json::from_str::<Vec<(String, String, String)>>(&out).expect("instances json")
    }

    /// Instances the fleet launched (all but the fixture's image builder).
    fn fleet_launches(&self) -> usize {
        let base = self.setup["base_ami"].as_str().unwrap();
        self.all_instances().iter().filter(|(_, image, _)| image != base).count()
    }
}

fn provider_at(endpoint: &str, max_attempts: u32) -> AwsProvider {
    AwsProvider::with_options(options_at(endpoint, max_attempts)).expect("provider")
}

fn options_at(endpoint: &str, max_attempts: u32) -> AwsOptions {
    AwsOptions {
        endpoint_url: Some(endpoint.to_owned()),
        credentials: Some((moto::ACCESS_KEY_ID.into(), moto::SECRET_ACCESS_KEY.into())),
        max_attempts,
        initial_backoff: Duration::from_millis(20),
        attempt_timeout: Duration::from_secs(30),
        ..AwsOptions::default()
    }
}

/// Runs a boto3 snippet (with `ec2`, `asg` and `elb` clients bound) against moto; returns its stdout.
fn boto(moto: &Moto, body: &str) -> String {
    let script = format!(
        "import boto3\n\
         kw = dict(endpoint_url='{}', region_name='{}', aws_access_key_id='testing', aws_secret_access_key='testing')\n\
         ec2 = boto3.client('ec2', **kw)\nasg = boto3.client('autoscaling', **kw)\nelb = boto3.client('elbv2', **kw)\n{body}\n",
        moto.endpoint,
        moto::REGION
    );
    let mut cmd = Command::new(moto.python());
    cmd.arg("-c").arg(script).stdin(Stdio::null());
    moto::configure_aws(&mut cmd, &moto.endpoint);
    let out = cmd.output().expect("run python");
    assert!(out.status.success(), "boto3 snippet failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn env() -> EnvName {
    "prod".parse().unwrap()
}

// ---------------------------------------------------------------------------------------------------
// What AWS holds, read through boto3

/// Instances of the group that run (EC2 state `running`), as the fixture reports them.
fn running(group: &Value) -> Vec<&Value> {
    group["instances"].as_array().unwrap().iter().filter(|i| i["state"] == "running").collect()
}

/// The launch-template version Stele made for `generation`, as (number, ImageId).
fn stele_version(versions: &[Value], generation: u64) -> Vec<(u64, String)> {
    versions
        .iter()
        .filter(|v| {
            v["description"].as_str().is_some_and(|d| d.starts_with(&format!("stele prod generation {generation} ")))
        })
        .map(|v| (v["version"].as_u64().unwrap(), v["image_id"].as_str().unwrap().to_owned()))
        .collect()
}

/// The fleet runs exactly `capacity` instances of `ami` for `generation`, in one group Stele owns, pinned
/// to an explicit launch-template version of that generation, tidy bounds, all healthy in the target group.
fn assert_fleet(w: &World, ami: &str, generation: u64, capacity: usize) {
    let asgs = w.asgs();
    assert_eq!(asgs.len(), 1, "exactly one group: {asgs:#?}");
    let g = &asgs[0];
    assert_eq!(g["name"], GROUP);
    let instances = running(g);
    assert_eq!(instances.len(), capacity, "{g:#}");
    for i in &instances {
        assert_eq!(i["image_id"].as_str(), Some(ami), "EC2 ImageId of {}", i["id"]);
        assert_eq!(i["lifecycle"], "InService");
        assert_eq!(i["tags"]["stele:generation"], generation.to_string());
        assert_eq!(i["tags"]["stele:env"], "prod");
        assert_eq!(i["tags"]["stele:group"], "web");
    }
    assert_eq!(g["desired"].as_u64(), Some(capacity as u64));
    assert_eq!(g["max"].as_u64(), Some(capacity as u64), "bounds tidy after the rollout");
    assert_eq!(g["min"].as_u64(), Some(0));
    let tags: BTreeMap<&str, &str> = g["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["key"].as_str().unwrap(), t["value"].as_str().unwrap()))
        .collect();
    assert_eq!(tags.get("stele:env"), Some(&"prod"));
    assert_eq!(tags.get("stele:group"), Some(&"web"));
    assert_eq!(tags.get("stele:managed"), Some(&"true"));
    assert_eq!(g["target_group_arns"], w.setup["target_group_arns"]);
    // The group launches from the explicit version made for this generation, never $Latest/$Default.
    let versions = w.lt_versions();
    let made = stele_version(&versions, generation);
    assert_eq!(made.len(), 1, "one version for generation {generation}: {versions:#?}");
    assert_eq!(made[0].1, ami);
    assert_eq!(g["launch_template"]["version"], made[0].0.to_string());
    assert_eq!(g["launch_template"]["name"], w.setup["launch_template"]);
    // Every running instance is a healthy target. moto keeps instances terminated through
    // TerminateInstanceInAutoScalingGroup registered and "healthy" (real AWS drains and deregisters them),
    // so any other healthy target must at least be a terminated instance.
    let tg = w.setup["target_group_arns"][0].as_str().unwrap();
    let health = w.moto.fixture(&["target-health", "--target-group", tg]);
    let healthy: BTreeSet<String> = health
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "healthy")
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    let ids: BTreeSet<String> = instances.iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect();
    assert!(ids.is_subset(&healthy), "target health: {health:#}");
    let terminated: BTreeSet<String> =
        w.all_instances().into_iter().filter(|(_, _, state)| state == "terminated").map(|(id, _, _)| id).collect();
    for id in healthy.difference(&ids) {
        assert!(terminated.contains(id), "{id} is a healthy target but neither in the group nor terminated");
    }
}

// ---------------------------------------------------------------------------------------------------
// Tests

#[test]
fn rolling_v1_to_v2_and_back_to_v1() {
    let w = World::new();
    let spec = w.rolling(6, 0, 1);
    let mut p = w.provider();
    let mut memory = Memory::default();

    let v1 = w.release(1, "1");
    let (_, retried) = converge(&mut p, None, &spec, &v1, &mut memory, |_| {});
    assert_eq!(retried, 0);
    assert_fleet(&w, &w.ami("1"), 1, 6);
    assert_eq!(memory.last_good.as_ref(), Some(&v1));

    // v2, one instance at a time: never more than one below capacity, neither in what the provider
    // observed nor in what AWS holds after the tick's actions.
    for (generation, key) in [(2, "2"), (3, "1")] {
        let target = w.release(generation, key);
        let mut steps = 0;
        let (ticks, retried) = converge(&mut p, None, &spec, &target, &mut memory, |tick| {
            let observed = &tick.observed.instances;
            let healthy = observed.iter().filter(|i| matches!(i.health, Health::Healthy { .. })).count();
            assert!(healthy >= 5, "observed {healthy} healthy: {observed:#?}");
            assert!(observed.len() <= 6, "observed {} instances", observed.len());
            let asgs = w.asgs();
            let now = running(&asgs[0]).len();
            assert!((5..=6).contains(&now), "AWS runs {now} instances after a tick: {asgs:#?}");
            assert!(asgs[0]["max"].as_u64() <= Some(6), "max_surge 0 never raises MaxSize: {asgs:#?}");
            steps += 1;
        });
        assert_eq!(retried, 0);
        // Six replacements, one per two ticks (terminate, then launch), plus the converged look.
        assert!(ticks >= 12, "generation {generation} converged in {ticks} ticks, {steps} checked");
        assert_fleet(&w, &w.ami(key), generation, 6);
        assert_eq!(memory.last_good.as_ref(), Some(&target));
    }
    // Earlier versions stay (a restore or an audit may need them).
    let versions = w.lt_versions();
    assert_eq!(stele_version(&versions, 1), vec![(2, w.ami("1"))], "{versions:#?}");
    assert_eq!(stele_version(&versions, 2), vec![(3, w.ami("2"))], "{versions:#?}");
    assert_eq!(versions.len(), 4, "base + one per generation: {versions:#?}");
    // 6 of v1, 6 replacements of v2, 6 of v1 again: nothing launched twice.
    assert_eq!(w.fleet_launches(), 18);
}

#[test]
fn refused_images_touch_nothing() {
    let w = World::new();
    let spec = w.rolling(2, 1, 0);
    let mut p = w.provider();
    boto(&w.moto, &format!("ec2.disable_image(ImageId='{}')", w.ami("3")));
    let (v1, v3) = (digest("v1"), digest("v3"));
    let foreign = w.spec(
        2,
        json!({"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "min_ready_seconds": 0}),
        &["111122223333".to_owned()],
    );
    let blue_green = w.spec(2, json!({"kind": "blue_green", "grace_seconds": 0}), &[w.owner()]);
    let artifact = Release {
        generation: 1,
        version: "1.0.0".parse().unwrap(),
        seq: 1,
        image: Image::Artifact { uri: "https://example.invalid/app.tar".parse().unwrap(), blake3: v1, size: 1 },
    };
    let cases: Vec<(&str, &Environment, Release, String)> = vec![
        (
            "wrong tag",
            &spec,
            machine_release(1, "1.0.0", &w.ami("wrong"), v1),
            format!(
                "AMI {} tag stele:blake3 is {}, the entry pins {}",
                w.ami("wrong"),
                "deadbeef".repeat(8),
                v1.to_hex()
            ),
        ),
        (
            "no tag",
            &spec,
            machine_release(1, "1.0.0", &w.ami("untagged"), v1),
            format!("AMI {} has no tag stele:blake3; the entry pins {}", w.ami("untagged"), v1.to_hex()),
        ),
        (
            "right tag, other digest",
            &spec,
            machine_release(1, "1.0.0", &w.ami("2"), v1),
            format!("AMI {} tag stele:blake3 is {}, the entry pins {}", w.ami("2"), digest("v2").to_hex(), v1.to_hex()),
        ),
        (
            "disabled",
            &spec,
            machine_release(1, "3.0.0", &w.ami("3"), v3),
            format!("AMI {} is disabled, not available", w.ami("3")),
        ),
        (
            "missing",
            &spec,
            machine_release(1, "1.0.0", "ami-0123456789abcdef0", v1),
            "AMI ami-0123456789abcdef0 does not exist".to_owned(),
        ),
        (
            "foreign owner",
            &foreign,
            w.release(1, "1"),
            format!("AMI {} is owned by account {}, which is not in ami_owners (111122223333)", w.ami("1"), w.owner()),
        ),
        ("artifact", &spec, artifact, "pins an artifact".to_owned()),
        (
            "blue/green, untagged",
            &blue_green,
            machine_release(1, "1.0.0", &w.ami("untagged"), v1),
            format!("AMI {} has no tag stele:blake3", w.ami("untagged")),
        ),
    ];
    for (what, spec, release, want) in cases {
        let mut memory = Memory::default();
        match converge::tick(&mut p, &env(), spec, Some(&release), &mut memory, now_ms()) {
            Err(ProviderError::Refused(msg)) => assert!(msg.contains(&want), "{what}: {msg:?} does not say {want:?}"),
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(w.asgs().len(), 0, "no group was created");
    assert!(w.stele_target_groups().is_empty(), "no target group was created");
    assert_eq!(w.lt_versions().len(), 1, "no launch template version was created");
    assert_eq!(w.fleet_launches(), 0, "no instance was launched");
    assert_eq!(w.listener(), vec![(0, 1)], "the listener is untouched");
}

#[test]
fn a_group_name_taken_by_someone_else_is_refused() {
    let w = World::new();
    let subnet = w.setup["subnets"][0].as_str().unwrap();
    let lt = w.setup["launch_template"].as_str().unwrap();
    w.moto.fixture(&[
        "create-asg",
        "--name",
        GROUP,
        "--subnet",
        subnet,
        "--lt",
        lt,
        "--lt-version",
        "1",
        "--desired",
        "1",
        "--tag",
        "team=someone-else",
    ]);
    let spec = w.rolling(2, 1, 0);
    let mut p = w.provider();
    let mut memory = Memory::default();
    match converge::tick(&mut p, &env(), &spec, Some(&w.release(1, "1")), &mut memory, now_ms()) {
        Err(ProviderError::Refused(msg)) => {
            assert!(msg.contains(&format!("auto scaling group {GROUP} exists but is not Stele's")), "{msg}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let asgs = w.asgs();
    assert_eq!(asgs.len(), 1);
    assert_eq!(asgs[0]["desired"], 1, "the other group is left alone: {asgs:#?}");
    assert_eq!(asgs[0]["launch_template"]["version"], "1");
    assert_eq!(running(&asgs[0]).len(), 1);
}

#[test]
fn restart_before_every_tick_finishes_without_duplicates() {
    let w = World::new();
    // With a surge: MaxSize is raised within a tick (launch first, then terminate) and tidied again.
    let spec = w.rolling(4, 1, 1);
    let mut p = w.provider();
    let mut memory = Memory::default();
    let fresh = || w.provider();
    converge(&mut p, Some(&fresh), &spec, &w.release(1, "1"), &mut memory, |_| {});
    assert_fleet(&w, &w.ami("1"), 1, 4);
    converge(&mut p, Some(&fresh), &spec, &w.release(2, "2"), &mut memory, |tick| {
        let alive = tick.observed.instances.len();
        assert!(alive <= 5, "capacity + max_surge: {alive}");
        let asgs = w.asgs();
        assert_eq!(asgs.len(), 1, "{asgs:#?}");
        let now = running(&asgs[0]).len();
        assert!((3..=5).contains(&now), "AWS runs {now}: {asgs:#?}");
        assert!(asgs[0]["max"].as_u64() <= Some(5), "MaxSize within capacity + max_surge: {asgs:#?}");
    });
    assert_fleet(&w, &w.ami("2"), 2, 4);
    assert_eq!(w.fleet_launches(), 8, "4 of v1 and 4 replacements, nothing twice");
    assert_eq!(w.lt_versions().len(), 3, "base + one per generation");
}

#[test]
fn rollout_through_throttling_and_internal_errors() {
    let w = World::new();
    let proxy = FaultProxy::start(&w.moto.endpoint, 0.2, 0x5e1e);
    // Two attempts per call: most faults are absorbed by the SDK's retries, some reach the converge loop.
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
    assert_fleet(&w, &w.ami("2"), 2, 4);
    assert_eq!(w.fleet_launches(), 8, "4 of v1 and 4 replacements, nothing twice");
    assert_eq!(w.lt_versions().len(), 3, "base + one per generation");
    assert_iam_policy_covers(&proxy);
}

#[test]
fn an_instance_from_another_image_is_replaced() {
    // Which image an instance runs is what EC2 says: an operator points the group at a version of their
    // own (another AMI, no Stele tags) and scales it up; the stray instance is found and replaced, and
    // the next launch pins the group to Stele's version again.
    let w = World::new();
    let spec = w.rolling(3, 0, 1);
    let mut p = w.provider();
    let mut memory = Memory::default();
    let v1 = w.release(1, "1");
    converge(&mut p, None, &spec, &v1, &mut memory, |_| {});
    assert_fleet(&w, &w.ami("1"), 1, 3);
    let lt = w.setup["launch_template"].as_str().unwrap();
    let theirs = w.moto.fixture(&["lt-create-version", "--name", lt, "--image-id", &w.ami("2")]);
    let version = theirs["version"].to_string();
    boto(
        &w.moto,
        &format!(
            "asg.update_auto_scaling_group(AutoScalingGroupName='{GROUP}', LaunchTemplate={{'LaunchTemplateName': '{lt}', 'Version': '{version}'}}, MaxSize=4)\n\
             asg.set_desired_capacity(AutoScalingGroupName='{GROUP}', DesiredCapacity=4)"
        ),
    );
    let asgs = w.asgs();
    let stray: Vec<String> = running(&asgs[0])
        .iter()
        .filter(|i| i["image_id"].as_str() == Some(w.ami("2").as_str()))
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stray.len(), 1, "{asgs:#?}");
    let observed = p.observe(&env(), &spec, now_ms()).expect("observe");
    let seen = observed.instances.iter().find(|i| i.id == stray[0]).expect("the stray instance is observed");
    assert_eq!(seen.generation, 0, "no stele:generation tag, not launched from a Stele version");
    assert_eq!(seen.digest, digest("v2"), "the digest of the AMI EC2 reports");
    // Take one of ours away as well, so that the group must launch again (from Stele's version).
    let ours = running(&asgs[0])
        .iter()
        .find(|i| i["image_id"].as_str() == Some(w.ami("1").as_str()))
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .unwrap();
    w.moto.fixture(&["terminate-in-asg", "--instance", &ours, "--decrement"]);
    converge(&mut p, None, &spec, &v1, &mut memory, |_| {});
    assert_fleet(&w, &w.ami("1"), 1, 3);
    let gone = w.all_instances().into_iter().find(|(id, _, _)| *id == stray[0]).unwrap();
    assert_eq!(gone.2, "terminated");
}

#[test]
fn a_group_the_spec_drops_is_emptied_and_deleted() {
    let w = World::new();
    let strategy = json!({"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "min_ready_seconds": 0});
    let both = w.spec_groups(
        json!([{"name": "web", "capacity": 2}, {"name": "api", "capacity": 1}]),
        strategy.clone(),
        &[w.owner()],
    );
    let mut p = w.provider();
    let mut memory = Memory::default();
    let v1 = w.release(1, "1");
    converge(&mut p, None, &both, &v1, &mut memory, |_| {});
    let names: Vec<String> = w.asgs().iter().map(|g| g["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["stele-prod-api", "stele-prod-web"]);
    let web = w.spec_groups(json!([{"name": "web", "capacity": 2}]), strategy, &[w.owner()]);
    converge(&mut p, None, &web, &v1, &mut memory, |_| {});
    assert_fleet(&w, &w.ami("1"), 1, 2);
    assert_eq!(w.fleet_launches(), 3);
}

// ---------------------------------------------------------------------------------------------------
// Blue/green and canary: one group and one target group per generation, traffic on the listener

impl World {
    fn blue_green(&self, capacity: u64, grace_seconds: u64) -> Environment {
        self.spec(capacity, json!({"kind": "blue_green", "grace_seconds": grace_seconds}), &[self.owner()])
    }

    fn canary(&self, capacity: u64, steps: Value) -> Environment {
        self.spec(capacity, json!({"kind": "canary", "steps": steps}), &[self.owner()])
    }

    /// What the listener forwards to, as (generation, weight) by the target groups' names; a target
    /// group that is no generation's (the fixture's own) shows as generation 0.
    fn listener(&self) -> Vec<(u64, i64)> {
        let l = self.setup["listener_arn"].as_str().unwrap();
        let out = self.moto.fixture(&["listener-weights", "--listener", l]);
        let mut pairs: Vec<(u64, i64)> = out["target_groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let name = t["name"].as_str().unwrap_or_default();
                let generation = (1..=9).find(|g| target_group_name(&env(), &"web".parse().unwrap(), *g) == name);
                (generation.unwrap_or(0), t["weight"].as_i64().unwrap_or(-1))
            })
            .collect();
        pairs.sort();
        pairs
    }

    /// Stele's target groups: (name, tags).
    fn stele_target_groups(&self) -> Vec<(String, BTreeMap<String, String>)> {
        let out = boto(
            &self.moto,
            "import json\n\
             tgs = [t for t in elb.describe_target_groups()['TargetGroups'] if t['TargetGroupName'].startswith('stele-') and t['TargetGroupName'] != 'stele-base']\n\
             tags = {d['ResourceArn']: {t['Key']: t['Value'] for t in d['Tags']} for d in (elb.describe_tags(ResourceArns=[t['TargetGroupArn'] for t in tgs])['TagDescriptions'] if tgs else [])}\n\
             print(json.dumps(sorted([(t['TargetGroupName'], tags.get(t['TargetGroupArn'], {})) for t in tgs])))",
        );
        serde_json::from_str(&out).expect("target groups json")
    }

    fn group(&self, name: &str) -> Option<Value> {
        self.asgs().into_iter().find(|g| g["name"] == name)
    }
}

/// Every AWS action the provider called through `proxy` is allowed by examples/aws/iam-policy.json
/// (the least-privilege policy the README documents).
fn assert_iam_policy_covers(proxy: &FaultProxy) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/aws/iam-policy.json");
    let policy: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("policy JSON");
    let mut allowed = BTreeSet::new();
    for statement in policy["Statement"].as_array().unwrap() {
        match &statement["Action"] {
            Value::String(a) => {
                allowed.insert(a.clone());
            }
            Value::Array(list) => allowed.extend(list.iter().map(|a| a.as_str().unwrap().to_owned())),
            other => panic!("unexpected Action {other}"),
        }
    }
    let called: BTreeSet<String> = proxy
        .requests()
        .iter()
        .filter(|r| !r.action.is_empty() && r.service != "sts")
        .map(|r| format!("{}:{}", r.service, r.action))
        .collect();
    assert!(called.len() >= 8, "the proxy saw the provider's calls: {called:?}");
    let missing: Vec<&String> = called.iter().filter(|a| !allowed.contains(*a)).collect();
    assert!(missing.is_empty(), "called but not in {}: {missing:?}", path.display());
}

fn generation_group(generation: u64) -> String {
    format!("{GROUP}-g{generation}")
}

/// The environment runs `generation` only: one group `stele-prod-web-gN` of `capacity` running
/// instances of `ami`, attached to its own target group (tagged), the listener forwarding all traffic
/// to it, and no other group or target group of Stele's left.
fn assert_weighted_fleet(w: &World, ami: &str, generation: u64, capacity: usize) {
    let asgs = w.asgs();
    assert_eq!(asgs.len(), 1, "one group, earlier generations deleted: {asgs:#?}");
    let g = &asgs[0];
    assert_eq!(g["name"], generation_group(generation));
    let instances = running(g);
    assert_eq!(instances.len(), capacity, "{g:#}");
    for i in &instances {
        assert_eq!(i["image_id"].as_str(), Some(ami), "EC2 ImageId of {}", i["id"]);
        assert_eq!(i["tags"]["stele:generation"], generation.to_string());
    }
    assert_eq!((g["desired"].as_u64(), g["max"].as_u64()), (Some(capacity as u64), Some(capacity as u64)));
    let tg = target_group_name(&env(), &"web".parse().unwrap(), generation);
    let tgs = w.stele_target_groups();
    assert_eq!(tgs.len(), 1, "one target group, earlier generations' deleted: {tgs:#?}");
    assert_eq!(tgs[0].0, tg);
    let tags = &tgs[0].1;
    assert_eq!(tags.get("stele:env").map(String::as_str), Some("prod"));
    assert_eq!(tags.get("stele:group").map(String::as_str), Some("web"));
    assert_eq!(tags.get("stele:generation"), Some(&generation.to_string()));
    assert!(tags.get("stele:traffic-since").is_some_and(|t| t.parse::<u64>().is_ok()), "{tags:?}");
    let attached = g["target_group_arns"].as_array().unwrap();
    assert_eq!(attached.len(), 1, "{g:#}");
    assert!(attached[0].as_str().unwrap().contains(&format!(":targetgroup/{tg}/")), "{g:#}");
    assert_eq!(w.listener(), vec![(generation, 100)]);
    let made = stele_version(&w.lt_versions(), generation);
    assert_eq!(made.len(), 1, "one launch-template version for generation {generation}");
    assert_eq!(g["launch_template"]["version"], made[0].0.to_string());
}

#[test]
fn blue_green_switches_the_listener_once_the_new_group_is_healthy() {
    let w = World::new();
    let spec = w.blue_green(3, 1);
    let mut p = w.provider();
    let mut memory = Memory::default();
    assert_eq!(w.listener(), vec![(0, 1)], "the fixture's listener forwards to its own target group");

    converge(&mut p, None, &spec, &w.release(1, "1"), &mut memory, |_| {});
    assert_weighted_fleet(&w, &w.ami("1"), 1, 3);

    // v2: the listener sends everything to g1 until all of g2 is healthy, then everything to g2 in one
    // change (never a split); g1 keeps its 3 instances until then and is deleted after the grace period.
    let mut switched = false;
    converge(&mut p, None, &spec, &w.release(2, "2"), &mut memory, |tick| {
        let listener = w.listener();
        let g1 = w.group(&generation_group(1));
        match listener.as_slice() {
            [(1, 100)] => {
                assert!(!switched, "traffic went back to g1");
                let g1 = g1.expect("g1 serves, so it exists");
                assert_eq!(running(&g1).len(), 3, "g1 whole while it serves: {g1:#}");
            }
            [(2, 100)] => {
                if !switched {
                    let g2 = w.group(&generation_group(2)).expect("g2 exists");
                    assert_eq!(running(&g2).len(), 3, "all of g2 runs before the switch: {g2:#}");
                    assert_eq!(healthy_of(tick, 2), 3, "the switch followed an observation of 3 healthy g2 instances");
                    let g1 = g1.expect("g1 is kept for the grace period");
                    assert_eq!(running(&g1).len(), 3, "{g1:#}");
                }
                switched = true;
            }
            other => panic!("blue/green never splits traffic: {other:?}"),
        }
    });
    assert!(switched);
    assert_weighted_fleet(&w, &w.ami("2"), 2, 3);
    assert_eq!(w.fleet_launches(), 6, "3 of v1 and 3 of v2, nothing twice");
    assert_eq!(stele_version(&w.lt_versions(), 1).len(), 1, "g1's launch-template version is kept");
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
    assert_weighted_fleet(&w, &w.ami("1"), 1, 4);

    // v2 goes 25% (1 instance), then 50% (2 instances), where the 600 s pause holds it. The instances
    // of the next step are launched during a pause (they get traffic only after it).
    let v2 = w.release(2, "2");
    let mut seen = Vec::new();
    // Bounded by wall time: the 1 s pause is real seconds, however fast a tick is.
    let start = std::time::Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(60), "canary did not reach 50%: {seen:?}");
        let tick = converge::tick(&mut p, &env(), &spec, Some(&v2), &mut memory, now_ms()).expect("tick");
        assert_eq!(tick.plan.phase, Phase::Progressing, "{:?}", tick.plan);
        let listener = w.listener();
        if seen.last() != Some(&listener) {
            seen.push(listener.clone());
        }
        let g2 = w.group(&generation_group(2)).map(|g| running(&g).len()).unwrap_or(0);
        let g1 = running(&w.group(&generation_group(1)).expect("g1 stays during the canary")).len();
        assert_eq!(g1, 4, "the stable generation stays whole during the canary");
        match listener.as_slice() {
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

    // The canary goes bad: Auto Scaling reports its instances Unhealthy.
    let g2 = w.group(&generation_group(2)).unwrap();
    let ids: Vec<String> = running(&g2).iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect();
    let canaries = ids.len();
    assert!((2..=4).contains(&canaries), "{g2:#}");
    boto(
        &w.moto,
        &format!(
            "for i in {ids:?}:\n    asg.set_instance_health(InstanceId=i, HealthStatus='Unhealthy', ShouldRespectGracePeriod=False)"
        ),
    );
    let mut failed_tick = None;
    let mut restored = None;
    for n in 0..40 {
        let tick = converge::tick(&mut p, &env(), &spec, Some(&v2), &mut memory, now_ms()).expect("tick");
        let listener = w.listener();
        if tick.plan.phase == Phase::Degraded && failed_tick.is_none() {
            failed_tick = Some(n);
        }
        if listener == vec![(1, 100)] && restored.is_none() {
            restored = Some(n);
        }
        if restored.is_none() {
            assert_eq!(listener, vec![(1, 50), (2, 50)], "traffic stays until the gate fails, then goes back");
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
    assert!(failed.reason.contains("Unhealthy"), "{}", failed.reason);
    assert_eq!(memory.last_good.as_ref().map(|r| r.generation), Some(1));
    // g1 serves alone again; the canary group and its target group are gone.
    assert_weighted_fleet(&w, &w.ami("1"), 1, 4);
    assert_eq!(w.fleet_launches(), 4 + canaries, "4 of v1 and the canaries, nothing twice");
}

#[test]
fn blue_green_through_faults_with_a_restart_before_every_tick() {
    let w = World::new();
    let proxy = FaultProxy::start(&w.moto.endpoint, 0.2, 0xb1e);
    let spec = w.blue_green(3, 0);
    let fresh = || provider_at(&proxy.endpoint, 2);
    let mut p = fresh();
    let mut memory = Memory::default();
    converge(&mut p, Some(&fresh), &spec, &w.release(1, "1"), &mut memory, |_| {});
    converge(&mut p, Some(&fresh), &spec, &w.release(2, "2"), &mut memory, |_| {
        let asgs = w.asgs();
        assert!(asgs.len() <= 2, "at most the serving and the new generation: {asgs:#?}");
        let names: BTreeSet<&str> = asgs.iter().map(|g| g["name"].as_str().unwrap()).collect();
        assert!(names.is_subset(&BTreeSet::from(["stele-prod-web-g1", "stele-prod-web-g2"])), "{names:?}");
    });
    let (faults, total) = (proxy.faults(), proxy.requests().len());
    eprintln!("{faults} faults in {total} requests");
    assert!(faults * 10 >= total, "about a fifth of {total} requests faulted, got {faults}");
    assert_weighted_fleet(&w, &w.ami("2"), 2, 3);
    assert_eq!(w.fleet_launches(), 6, "3 of v1 and 3 of v2, nothing twice");
    assert_iam_policy_covers(&proxy);
}

#[test]
fn weighted_strategies_need_a_listener_and_one_group() {
    let w = World::new();
    let mut p = w.provider();
    let mut no_listener = w.blue_green(2, 0);
    if let ledger_format::types::Provider::Aws { listener, .. } = &mut no_listener.provider {
        *listener = None;
    }
    let two_groups = w.spec_groups(
        json!([{"name": "web", "capacity": 1}, {"name": "api", "capacity": 1}]),
        json!({"kind": "canary", "steps": [{"weight": 10, "pause_seconds": 0}]}),
        &[w.owner()],
    );
    for (spec, want) in [(&no_listener, "needs listener, vpc and port"), (&two_groups, "exactly one group")] {
        let mut memory = Memory::default();
        match converge::tick(&mut p, &env(), spec, Some(&w.release(1, "1")), &mut memory, now_ms()) {
            Err(ProviderError::Refused(e)) => assert!(e.contains(want), "{e}"),
            other => panic!("expected a refusal naming {want:?}, got {other:?}"),
        }
    }
    assert!(w.asgs().is_empty(), "nothing created");
    assert!(w.stele_target_groups().is_empty(), "nothing created");
    assert_eq!(w.lt_versions().len(), 1, "no launch-template version made");
}

// ---------------------------------------------------------------------------------------------------
// The agent's own health check (AwsSettings::probe_instances)

/// Answers the environment's health check for every instance: the VPC is 127.77.0.0/16, so each
/// instance's private IP is a loopback address and this one listener on 0.0.0.0 gets every probe;
/// which address was probed is the connection's local address. Addresses outside `good` (once it is
/// set) answer 503.
struct HealthServer {
    port: u16,
    probed: std::sync::Arc<std::sync::Mutex<BTreeSet<std::net::IpAddr>>>,
    good: std::sync::Arc<std::sync::Mutex<Option<BTreeSet<std::net::IpAddr>>>>,
}

impl HealthServer {
    fn start() -> HealthServer {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind the health server");
        let port = listener.local_addr().unwrap().port();
        let probed = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
        let good = std::sync::Arc::new(std::sync::Mutex::new(None::<BTreeSet<std::net::IpAddr>>));
        let (p, g) = (probed.clone(), good.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let ip = stream.local_addr().unwrap().ip();
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                p.lock().unwrap().insert(ip);
                let ok = g.lock().unwrap().as_ref().is_none_or(|good| good.contains(&ip));
                let status = if ok { "200 OK" } else { "503 Service Unavailable" };
                let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        HealthServer { port, probed, good }
    }
}

#[test]
fn the_agents_own_health_check_gates_a_rolling_release_and_the_group_is_pinned_back() {
    let server = HealthServer::start();
    let w = World::in_net("127.77", server.port);
    let mut spec = w.rolling(3, 1, 0);
    if let HealthCheck::Http { deadline_seconds, .. } = &mut spec.health {
        *deadline_seconds = 1;
    }
    let mut p = AwsProvider::with_options(AwsOptions { probe_instances: true, ..options_at(&w.moto.endpoint, 8) })
        .expect("provider");
    let mut memory = Memory::default();
    converge(&mut p, None, &spec, &w.release(1, "1"), &mut memory, |_| {});
    assert_fleet(&w, &w.ami("1"), 1, 3);
    let v1_ips = server.probed.lock().unwrap().clone();
    assert_eq!(v1_ips.len(), 3, "each v1 instance was probed at its own address: {v1_ips:?}");
    assert!(v1_ips.iter().all(|ip| ip.to_string().starts_with("127.77.")), "{v1_ips:?}");

    // v2's instances answer 503: EC2, Auto Scaling and the target group all call them fine (moto), only
    // the environment's own check sees it. The gate fails and v1 is restored.
    *server.good.lock().unwrap() = Some(v1_ips);
    let v2 = w.release(2, "2");
    let mut degraded = None;
    for _ in 0..40 {
        let tick = converge::tick(&mut p, &env(), &spec, Some(&v2), &mut memory, now_ms()).expect("tick");
        assert_eq!(healthy_of(&tick, 1), 3, "max_unavailable 0: v1 stays whole");
        if tick.converged() {
            degraded = Some(tick.plan.phase);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(degraded, Some(Phase::Degraded));
    let failed = memory.failed.as_ref().expect("gate failed");
    assert_eq!(failed.generation, 2);
    assert!(failed.reason.contains("status 503"), "{}", failed.reason);
    // v1 runs, and the group launches from v1's version again: an instance Auto Scaling replaces on
    // its own gets the good image, not the failed one.
    assert_fleet(&w, &w.ami("1"), 1, 3);
    assert_eq!(stele_version(&w.lt_versions(), 2).len(), 1, "the failed version is kept, not used");
}

#[test]
fn a_rolling_environment_switched_to_canary_is_adopted_and_switching_back_is_refused() {
    let w = World::new();
    // A proxy without faults: it records the calls, to check them against the IAM policy.
    let proxy = FaultProxy::start(&w.moto.endpoint, 0.0, 7);
    let mut p = provider_at(&proxy.endpoint, 8);
    let mut memory = Memory::default();
    converge(&mut p, None, &w.rolling(2, 1, 0), &w.release(1, "1"), &mut memory, |_| {});
    assert_fleet(&w, &w.ami("1"), 1, 2);

    // The spec becomes a canary; v2 arrives. The rolling group's generation gets its own target group,
    // so the listener can split traffic between it and g2; then the rolling group is emptied and
    // deleted with that target group.
    let canary = w.canary(2, json!([{"weight": 50, "pause_seconds": 0}]));
    let mut seen = Vec::new();
    converge(&mut p, None, &canary, &w.release(2, "2"), &mut memory, |_| {
        let l = w.listener();
        if seen.last() != Some(&l) {
            seen.push(l);
        }
    });
    assert_eq!(seen.first(), Some(&vec![(0, 1)]), "the fixture's own target group first: {seen:?}");
    assert!(seen.contains(&vec![(1, 50), (2, 50)]), "a 50/50 step between the adopted group and g2: {seen:?}");
    assert_eq!(seen.last(), Some(&vec![(2, 100)]), "{seen:?}");
    assert_weighted_fleet(&w, &w.ami("2"), 2, 2);
    assert_eq!(w.fleet_launches(), 4, "2 of v1 and 2 of v2, nothing twice");

    // Back to rolling would leave the listener on a group being emptied: refused, nothing touched.
    let before = (w.asgs(), w.listener());
    match converge::tick(&mut p, &env(), &w.rolling(2, 1, 0), Some(&w.release(3, "1")), &mut memory, now_ms()) {
        Err(ProviderError::Refused(e)) => assert!(e.contains("switching it to rolling on aws is not supported"), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!((w.asgs(), w.listener()), before, "nothing changed");
    assert_iam_policy_covers(&proxy);
}

#[test]
fn switching_to_canary_in_the_middle_of_a_rolling_rollout_is_refused() {
    let w = World::new();
    let mut p = w.provider();
    let mut memory = Memory::default();
    let rolling = w.rolling(2, 0, 1);
    converge(&mut p, None, &rolling, &w.release(1, "1"), &mut memory, |_| {});
    // v2 until the group runs both generations (one replaced, one not yet).
    let v2 = w.release(2, "2");
    for n in 0.. {
        assert!(n < 20, "never ran both generations");
        converge::tick(&mut p, &env(), &rolling, Some(&v2), &mut memory, now_ms()).expect("tick");
        let generations: BTreeSet<String> =
            running(&w.asgs()[0]).iter().map(|i| i["tags"]["stele:generation"].to_string()).collect();
        if generations.len() == 2 {
            break;
        }
    }
    let canary = w.canary(2, json!([{"weight": 50, "pause_seconds": 0}]));
    let before = (w.asgs(), w.listener(), w.stele_target_groups());
    match converge::tick(&mut p, &env(), &canary, Some(&v2), &mut memory, now_ms()) {
        Err(ProviderError::Refused(e)) => {
            assert!(e.contains("runs generations [1, 2]") && e.contains("finish it with strategy rolling"), "{e}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!((w.asgs(), w.listener(), w.stele_target_groups()), before, "nothing changed");
}
