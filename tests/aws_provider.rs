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
//! switched to canary (adopted) and back (refused), a switch to canary in the middle of a rolling
//! rollout refused, a group the spec drops emptied and deleted, two environments on one provider each
//! keeping its own health history, and every call seen by a proxy allowed by
//! examples/aws/iam-policy.json.
//!
//! The scenarios are the shared strategy suite of tests/common/cloud_suite.rs, which tests/gcp_provider.rs
//! runs too: this file implements its `CloudWorld` for moto (boto3 reads, AWS's fleet assertions) and adds
//! what only AWS has to say (the refusals' wording, launch-template version numbers, the IAM policy).
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

use common::cloud::{self, machine_release};
use common::cloud_suite::{self as suite, env, generation_group, CloudWorld, GROUP};
use common::moto::{self, FaultProxy, Moto};
use ledger_format::types::Environment;
use ledger_format::Blake3Digest;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;
use stele::plan::Release;
use stele::provider::aws::{target_group_name, AwsOptions, AwsProvider};

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

    /// A spec for environment `name` with `groups`, provider aws on this world, AMIs of `owners`.
    fn spec_with(&self, name: &str, groups: Value, strategy: Value, owners: &[String]) -> Environment {
        let s = &self.setup;
        let provider = json!({
            "kind": "aws",
            "region": s["region"],
            "launch_template": s["launch_template"],
            "subnets": s["subnets"],
            "ami_owners": owners,
            "target_groups": s["target_group_arns"],
            "listener": s["listener_arn"],
            "vpc": s["vpc"],
            "port": self.port,
        });
        cloud::environment(name, provider, groups, strategy)
    }

    fn asgs(&self) -> Vec<Value> {
        self.moto.fixture(&["describe-asgs"]).as_array().expect("describe-asgs gives a list").clone()
    }

    fn group(&self, name: &str) -> Option<Value> {
        self.asgs().into_iter().find(|g| g["name"] == name)
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
}

impl CloudWorld for World {
    type P = AwsProvider;
    const CLOUD: &'static str = "aws";
    const ROLLING_CAPACITY: usize = 6;
    const GROUP_KIND: &'static str = "auto scaling group";
    const NO_ROUTER_SAYS: &'static str = "needs listener, vpc and port";
    const UNHEALTHY_SAYS: &'static [&'static str] = &["Unhealthy"];

    fn new() -> World {
        Self::in_net("10.42", 8080)
    }

    fn probed(port: u16) -> World {
        Self::in_net("127.77", port)
    }

    fn provider(&self) -> AwsProvider {
        provider_at(&self.moto.endpoint, 8)
    }

    fn probing_provider(&self) -> AwsProvider {
        AwsProvider::with_options(AwsOptions { probe_instances: true, ..options_at(&self.moto.endpoint, 8) })
            .expect("provider")
    }

    fn fault_proxy(&self, rate: f64, seed: u64) -> FaultProxy {
        FaultProxy::start(&self.moto.endpoint, rate, seed)
    }

    fn provider_via(&self, proxy: &FaultProxy, max_attempts: u32) -> AwsProvider {
        provider_at(&proxy.endpoint, max_attempts)
    }

    fn spec_named(&self, name: &str, groups: Value, strategy: Value) -> Environment {
        self.spec_with(name, groups, strategy, &[self.owner()])
    }

    fn without_router(&self, mut spec: Environment) -> Environment {
        if let ledger_format::types::Provider::Aws { listener, .. } = &mut spec.provider {
            *listener = None;
        }
        spec
    }

    /// Generation `generation` running AMI app-`key` ("1", "2", "3"): version `key`.0.0, digest of `vkey`.
    fn release(&self, generation: u64, key: &str) -> Release {
        machine_release(generation, &format!("{key}.0.0"), &self.ami(key), digest(&format!("v{key}")))
    }

    fn group_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.asgs().iter().map(|g| g["name"].as_str().unwrap().to_owned()).collect();
        names.sort();
        names
    }

    fn running(&self, group: &str) -> Vec<String> {
        let g = self.group(group);
        g.iter().flat_map(running).map(|i| i["id"].as_str().unwrap().to_owned()).collect()
    }

    /// By each running instance's tag `stele:generation` (moto reports the template's default version).
    fn generations_running(&self, group: &str) -> BTreeSet<u64> {
        let g = self.group(group);
        g.iter()
            .flat_map(running)
            .map(|i| i["tags"]["stele:generation"].as_str().map_or(0, |g| g.parse().unwrap()))
            .collect()
    }

    /// MaxSize.
    fn size_limit(&self, group: &str) -> u64 {
        let g = self.group(group).unwrap_or_else(|| panic!("no group {group}: {:#?}", self.asgs()));
        g["max"].as_u64().unwrap()
    }

    fn router(&self) -> Vec<(u64, i64)> {
        self.listener()
    }

    /// The fixture's listener forwards to its own target group (weight 1).
    fn operator_route(&self) -> Vec<(u64, i64)> {
        vec![(0, 1)]
    }

    /// Instances the fleet launched (all but the fixture's image builder).
    fn launches(&self) -> usize {
        let base = self.setup["base_ami"].as_str().unwrap();
        self.all_instances().iter().filter(|(_, image, _)| image != base).count()
    }

    /// Launch-template versions but the base.
    fn releases_made(&self) -> usize {
        self.lt_versions().len() - 1
    }

    fn releases_made_for(&self, generation: u64) -> usize {
        stele_version(&self.lt_versions(), generation).len()
    }

    fn snapshot(&self) -> String {
        format!("{:#?}", (self.asgs(), self.listener(), self.stele_target_groups()))
    }

    /// Auto Scaling reports them Unhealthy (target groups report every registered instance healthy).
    fn mark_unhealthy(&self, instances: &[String]) {
        boto(
            &self.moto,
            &format!(
                "for i in {instances:?}:\n    asg.set_instance_health(InstanceId=i, HealthStatus='Unhealthy', ShouldRespectGracePeriod=False)"
            ),
        );
    }

    fn take_group_name(&self, group: &str) {
        let subnet = self.setup["subnets"][0].as_str().unwrap();
        let lt = self.setup["launch_template"].as_str().unwrap();
        self.moto.fixture(&[
            "create-asg",
            "--name",
            group,
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
    }

    fn assert_foreign_group_untouched(&self, _group: &str) {
        let asgs = self.asgs();
        assert_eq!(asgs.len(), 1);
        assert_eq!(asgs[0]["desired"], 1, "the other group is left alone: {asgs:#?}");
        assert_eq!(asgs[0]["launch_template"]["version"], "1");
        assert_eq!(running(&asgs[0]).len(), 1);
    }

    /// Which image an instance runs is what EC2 says: the operator's version runs another AMI (app-2) and
    /// has no Stele tags. One of ours is taken away as well, so that the group must launch again (from
    /// Stele's version).
    fn add_stray_instance(&self) -> (String, Option<Blake3Digest>) {
        let lt = self.setup["launch_template"].as_str().unwrap();
        let theirs = self.moto.fixture(&["lt-create-version", "--name", lt, "--image-id", &self.ami("2")]);
        let version = theirs["version"].to_string();
        boto(
            &self.moto,
            &format!(
                "asg.update_auto_scaling_group(AutoScalingGroupName='{GROUP}', LaunchTemplate={{'LaunchTemplateName': '{lt}', 'Version': '{version}'}}, MaxSize=4)\n\
                 asg.set_desired_capacity(AutoScalingGroupName='{GROUP}', DesiredCapacity=4)"
            ),
        );
        let asgs = self.asgs();
        let stray: Vec<String> = running(&asgs[0])
            .iter()
            .filter(|i| i["image_id"].as_str() == Some(self.ami("2").as_str()))
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(stray.len(), 1, "{asgs:#?}");
        let ours = running(&asgs[0])
            .iter()
            .find(|i| i["image_id"].as_str() == Some(self.ami("1").as_str()))
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .unwrap();
        self.moto.fixture(&["terminate-in-asg", "--instance", &ours, "--decrement"]);
        // No stele:generation tag, not launched from a Stele version; the digest is the AMI's tag.
        (stray[0].clone(), Some(digest("v2")))
    }

    fn assert_instance_gone(&self, id: &str) {
        let gone = self.all_instances().into_iter().find(|(i, _, _)| i == id).unwrap();
        assert_eq!(gone.2, "terminated");
    }

    fn assert_fleet(&self, key: &str, generation: u64, capacity: usize) {
        assert_fleet(self, &self.ami(key), generation, capacity)
    }

    fn assert_weighted_fleet(&self, key: &str, generation: u64, capacity: usize) {
        assert_weighted_fleet(self, &self.ami(key), generation, capacity)
    }

    fn assert_untouched(&self) {
        assert_eq!(self.asgs().len(), 0, "no group was created");
        assert!(self.stele_target_groups().is_empty(), "no target group was created");
        assert_eq!(self.lt_versions().len(), 1, "no launch template version was created");
        assert_eq!(self.launches(), 0, "no instance was launched");
        assert_eq!(self.listener(), vec![(0, 1)], "the listener is untouched");
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

// ---------------------------------------------------------------------------------------------------
// Tests: the shared strategy suite (tests/common/cloud_suite.rs), then what only AWS has to say

#[test]
fn rolling_v1_to_v2_and_back_to_v1() {
    let w = World::new();
    suite::rolling_v1_to_v2_and_back_to_v1(&w);
    // Earlier versions stay (a restore or an audit may need them), numbered in order.
    let versions = w.lt_versions();
    assert_eq!(stele_version(&versions, 1), vec![(2, w.ami("1"))], "{versions:#?}");
    assert_eq!(stele_version(&versions, 2), vec![(3, w.ami("2"))], "{versions:#?}");
    assert_eq!(versions.len(), 4, "base + one per generation: {versions:#?}");
}

#[test]
fn refused_images_touch_nothing() {
    let w = World::new();
    boto(&w.moto, &format!("ec2.disable_image(ImageId='{}')", w.ami("3")));
    let spec = w.rolling(2, 1, 0);
    let (v1, v3) = (digest("v1"), digest("v3"));
    let foreign = w.spec_with(
        "prod",
        json!([{"name": "web", "capacity": 2}]),
        json!({"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "min_ready_seconds": 0}),
        &["111122223333".to_owned()],
    );
    let cases = vec![
        (
            "wrong tag",
            spec.clone(),
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
            spec.clone(),
            machine_release(1, "1.0.0", &w.ami("untagged"), v1),
            format!("AMI {} has no tag stele:blake3; the entry pins {}", w.ami("untagged"), v1.to_hex()),
        ),
        (
            "right tag, other digest",
            spec.clone(),
            machine_release(1, "1.0.0", &w.ami("2"), v1),
            format!("AMI {} tag stele:blake3 is {}, the entry pins {}", w.ami("2"), digest("v2").to_hex(), v1.to_hex()),
        ),
        (
            "disabled",
            spec.clone(),
            machine_release(1, "3.0.0", &w.ami("3"), v3),
            format!("AMI {} is disabled, not available", w.ami("3")),
        ),
        (
            "missing",
            spec.clone(),
            machine_release(1, "1.0.0", "ami-0123456789abcdef0", v1),
            "AMI ami-0123456789abcdef0 does not exist".to_owned(),
        ),
        (
            "foreign owner",
            foreign,
            w.release(1, "1"),
            format!("AMI {} is owned by account {}, which is not in ami_owners (111122223333)", w.ami("1"), w.owner()),
        ),
        (
            "blue/green, untagged",
            w.blue_green(2, 0),
            machine_release(1, "1.0.0", &w.ami("untagged"), v1),
            format!("AMI {} has no tag stele:blake3", w.ami("untagged")),
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
fn rollout_through_throttling_and_internal_errors() {
    let w = World::new();
    let (proxy, _) = suite::rollout_through_faults(&w, 0x5e1e);
    assert_iam_policy_covers(&proxy);
}

#[test]
fn an_instance_from_another_image_is_replaced() {
    suite::an_instance_from_elsewhere_is_replaced(&World::new());
}

#[test]
fn a_group_the_spec_drops_is_emptied_and_deleted() {
    suite::a_group_the_spec_drops_is_emptied_and_deleted(&World::new());
}

#[test]
fn two_environments_on_one_provider_keep_their_own_health_history() {
    suite::two_environments_on_one_provider_keep_their_own_health_history(&World::new());
}

#[test]
fn blue_green_switches_the_listener_once_the_new_group_is_healthy() {
    suite::blue_green_switches_the_router_once_the_new_group_is_healthy(&World::new());
}

#[test]
fn canary_steps_then_a_failed_gate_restores_traffic_and_scales_the_canary_in() {
    suite::canary_steps_then_a_failed_gate_restores_traffic_and_scales_the_canary_in(&World::new());
}

#[test]
fn blue_green_through_faults_with_a_restart_before_every_tick() {
    let w = World::new();
    let proxy = suite::blue_green_through_faults_with_a_restart_before_every_tick(&w, 0xb1e);
    assert_iam_policy_covers(&proxy);
}

#[test]
fn weighted_strategies_need_a_listener_and_one_group() {
    suite::weighted_strategies_need_a_router_and_one_group(&World::new());
}

/// The agent's own health check (AwsSettings::probe_instances): the VPC is 127.77.0.0/16, so each
/// instance's private IP is a loopback address that the suite's health server answers.
#[test]
fn the_agents_own_health_check_gates_a_rolling_release_and_the_group_is_pinned_back() {
    suite::the_agents_own_health_check_gates_a_rolling_release_and_the_group_is_pinned_back::<World>();
}

#[test]
fn a_rolling_environment_switched_to_canary_is_adopted_and_switching_back_is_refused() {
    let w = World::new();
    let proxy = suite::a_rolling_environment_switched_to_canary_is_adopted_and_switching_back_is_refused(&w);
    assert_iam_policy_covers(&proxy);
}

#[test]
fn switching_to_canary_in_the_middle_of_a_rolling_rollout_is_refused() {
    suite::switching_to_canary_in_the_middle_of_a_rolling_rollout_is_refused(&World::new());
}
