//! The `aws` provider against moto (tests/common/moto.rs): `converge::tick` drives `AwsProvider` through
//! rolling rollouts of an Auto Scaling group, and every claim is checked against what the emulated AWS
//! holds (groups, launch-template versions, EC2 ImageIds, target health), read with boto3 through
//! tests/aws/fixture.py, never through the provider under test.
//!
//! Covered: a 6-instance rolling v1 → v2 with max_unavailable 1 and max_surge 0 (at most one instance below
//! capacity at every step), back to v1 as a new generation, AMI refusals (wrong tag, no tag, disabled,
//! foreign owner) that create nothing, a group name taken by someone else, a restart before every tick,
//! and a rollout through a fault proxy that throttles or fails a fifth of the calls.
//!
//! moto gaps met (and how the provider or the tests cope, see src/provider/aws.rs): `SourceVersion` of
//! CreateLaunchTemplateVersion is ignored (the instance type is copied explicitly), the per-instance
//! launch-template version in DescribeAutoScalingGroups is the template's default (generations are read
//! from the instance tag `stele:generation`), `ClientToken` is ignored (versions are found again by their
//! description, lowest number first), SetDesiredCapacity above MaxSize is accepted (the provider checks
//! bounds itself), instances start synchronously and InService at once (the provider's "pending" launches
//! are not exercised here), and instances terminated through the group stay "healthy" targets (real AWS
//! drains them; `assert_fleet` only requires such targets to be terminated instances).
#![cfg(feature = "aws")]

#[path = "common/moto.rs"]
mod moto;

use ledger_format::ranges::check_environment_ranges;
use ledger_format::types::{EnvName, Environment, Image};
use ledger_format::Blake3Digest;
use moto::{FaultProxy, Moto};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;
use stele::converge::{self, Memory, Tick};
use stele::plan::{Health, Phase, Release};
use stele::provider::aws::{AwsOptions, AwsProvider};
use stele::provider::{Provider, ProviderError};

const GROUP: &str = "stele-prod-web";

fn digest(version: &str) -> Blake3Digest {
    Blake3Digest(*blake3::hash(format!("stele aws test {version}").as_bytes()).as_bytes())
}

/// One moto with the fixture's world: AMIs app-1..3 tagged with the digests of v1..v3.
struct World {
    moto: Moto,
    setup: Value,
}

impl World {
    fn new() -> World {
        let moto = Moto::start();
        let (d1, d2, d3) = (digest("v1").to_hex(), digest("v2").to_hex(), digest("v3").to_hex());
        let setup = moto.setup(&[&d1, &d2, &d3]);
        World { moto, setup }
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

fn machine_release(generation: u64, version: &str, ami: &str, blake3: Blake3Digest) -> Release {
    Release {
        generation,
        version: version.parse().unwrap(),
        seq: generation,
        image: Image::MachineImage { id: ami.parse().unwrap(), blake3 },
    }
}

fn provider_at(endpoint: &str, max_attempts: u32) -> AwsProvider {
    AwsProvider::with_options(AwsOptions {
        endpoint_url: Some(endpoint.to_owned()),
        credentials: Some((moto::ACCESS_KEY_ID.into(), moto::SECRET_ACCESS_KEY.into())),
        max_attempts,
        initial_backoff: Duration::from_millis(20),
        attempt_timeout: Duration::from_secs(30),
    })
    .expect("provider")
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

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Ticks until converged; `check` sees every tick. With `restart`, every tick runs on a new provider
/// (an agent restarted before each tick). Retryable failures (of the whole tick or of single actions)
/// are counted and ticked through; a refusal fails the test. Returns (ticks, retryable failures).
fn converge(
    provider: &mut AwsProvider,
    restart: Option<&dyn Fn() -> AwsProvider>,
    spec: &Environment,
    target: &Release,
    memory: &mut Memory,
    mut check: impl FnMut(&Tick),
) -> (usize, usize) {
    let mut retryable = 0;
    for n in 1..=80 {
        if let Some(fresh) = restart {
            *provider = fresh();
        }
        match converge::tick(provider, &env(), spec, Some(target), memory, now_ms()) {
            Ok(tick) => {
                check(&tick);
                retryable += tick.retryable.len();
                for e in &tick.retryable {
                    eprintln!("tick {n}: retryable action: {e}");
                }
                if tick.converged() {
                    assert_eq!(tick.plan.phase, Phase::Healthy, "{:?}", tick.plan);
                    return (n, retryable);
                }
            }
            Err(ProviderError::Retryable(e)) => {
                eprintln!("tick {n}: retryable: {e}");
                retryable += 1;
            }
            Err(e @ ProviderError::Refused(_)) => panic!("tick {n} refused: {e}"),
        }
    }
    panic!("no convergence to generation {} in 80 ticks", target.generation);
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
        ("blue/green", &blue_green, w.release(1, "1"), "blue/green and canary on aws are not built yet".to_owned()),
    ];
    for (what, spec, release, want) in cases {
        let mut memory = Memory::default();
        match converge::tick(&mut p, &env(), spec, Some(&release), &mut memory, now_ms()) {
            Err(ProviderError::Refused(msg)) => assert!(msg.contains(&want), "{what}: {msg:?} does not say {want:?}"),
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(w.asgs().len(), 0, "no group was created");
    assert_eq!(w.lt_versions().len(), 1, "no launch template version was created");
    assert_eq!(w.fleet_launches(), 0, "no instance was launched");
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
