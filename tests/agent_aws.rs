//! The agent end to end on the AWS provider: a real Git ledger made with the `stele` CLI, releases that
//! pin AMIs, the real `stele agent` binary converging Auto Scaling groups in moto (tests/common/moto.rs),
//! status read back from the status branch. Covers promotion, `stele plan` (observes, changes nothing),
//! rollback by `git revert` (a new generation
//! that runs the old AMI again), and an agent killed with SIGKILL in the middle of a blue/green rollout
//! and started again (no duplicate groups, target groups or instances).
#![cfg(feature = "aws")]

mod common;

use common::moto::Moto;
use common::{path_str, scrubbed, Key, Ledger, Sandbox, OK, STELE};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn digest_hex(version: &str) -> String {
    blake3::hash(format!("stele agent aws {version}").as_bytes()).to_hex().to_string()
}

struct World {
    sb: Sandbox,
    ledger: Ledger,
    alice: Key,
    config: std::path::PathBuf,
    moto: Moto,
    setup: Value,
    agent: Option<Child>,
}

impl World {
    /// A ledger with environment `prod` on provider aws in a fresh moto, with `strategy`; the agent
    /// ticks every `tick_ms`.
    fn new(strategy: Value, capacity: u64, tick_ms: u64) -> World {
        let moto = Moto::start();
        let setup = moto.setup(&[&digest_hex("1"), &digest_hex("2"), &digest_hex("3")]);
        let sb = Sandbox::new();
        let alice = sb.key("alice");
        let ledger = sb.ledger("ledger", "aws-test", &alice, &["prod"]);
        let spec = json!({
            "type": "stele.environment/v1",
            "provider": {
                "kind": "aws",
                "region": setup["region"],
                "launch_template": setup["launch_template"],
                "subnets": setup["subnets"],
                "ami_owners": [setup["owner"]],
                "target_groups": setup["target_group_arns"],
                "listener": setup["listener_arn"],
                "vpc": setup["vpc"],
                "port": 8080,
            },
            "groups": [{"name": "web", "capacity": capacity}],
            "strategy": strategy,
            "health": {"kind": "http", "path": "/healthz", "interval_ms": tick_ms, "timeout_ms": 100,
                       "healthy_threshold": 1, "deadline_seconds": 120},
            "drift": "correct",
            "revert": "allow",
        });
        let spec_path = sb.path("prod.json");
        std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        ledger
            .stele(["env", "set", "--env", "prod", "--spec", &path_str(&spec_path), "--key", &alice.secret()])
            .expect(OK);
        let config = sb.path("agent.toml");
        std::fs::write(
            &config,
            format!(
                "repo = \"{}\"\nstate_dir = \"{}\"\ntrust_root = [\"{}\"]\ninterval_seconds = 1\n",
                path_str(&ledger.dir),
                path_str(&sb.path("agent-state")),
                alice.id
            ),
        )
        .unwrap();
        World { sb, ledger, alice, config, moto, setup, agent: None }
    }

    fn ami(&self, key: &str) -> String {
        self.setup["amis"][key].as_str().unwrap().to_owned()
    }

    /// `stele release` of version `key`.0.0 pinning AMI app-`key`.
    fn release(&self, key: &str) {
        let (ami, digest, key_path) = (self.ami(key), digest_hex(key), self.alice.secret());
        let version = format!("{key}.0.0");
        self.ledger
            .stele([
                "release",
                "--env",
                "prod",
                "--version",
                &version,
                "--ami",
                &ami,
                "--blake3",
                &digest,
                "--key",
                &key_path,
            ])
            .expect(OK);
    }

    /// The agent with moto's endpoint and credentials and nothing else of this process's AWS settings.
    fn agent_cmd(&self, once: bool) -> Command {
        let mut cmd = scrubbed(STELE, self.sb.root(), &self.ledger.dir);
        common::moto::configure_aws(&mut cmd, &self.moto.endpoint);
        cmd.args(["agent", "--config", &path_str(&self.config)]);
        if once {
            cmd.args(["--once", "--timeout", "120"]);
        }
        cmd
    }

    /// `stele plan --json` with the agent's configuration: (exit code, JSON).
    fn plan(&self) -> (i32, Value) {
        let mut cmd = scrubbed(STELE, self.sb.root(), &self.ledger.dir);
        common::moto::configure_aws(&mut cmd, &self.moto.endpoint);
        let out = cmd.args(["plan", "--config", &path_str(&self.config), "--json"]).output().expect("run stele plan");
        let json = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("plan JSON: {e}\n{}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code().unwrap_or(-1), json)
    }

    fn agent_once(&self) -> (i32, String) {
        let out = self.agent_cmd(true).stdin(Stdio::null()).output().expect("run the agent");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Starts the agent in the background. Its next poll is a minute away, so after the first sync it
    /// ticks only at the health interval: the window between two steps that a test aims a kill at.
    fn spawn_agent(&mut self) {
        let log = std::fs::File::create(self.sb.path("agent.log")).unwrap();
        let mut cmd = self.agent_cmd(false);
        cmd.args(["--interval", "60"]);
        self.agent = Some(cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().unwrap());
    }

    fn status(&self) -> Value {
        let out = self.ledger.stele(["status", "--json", "--env", "prod"]);
        out.expect(OK);
        let v: Value = serde_json::from_str(&out.stdout).expect("status JSON");
        v["environments"][0].clone()
    }

    fn asgs(&self) -> Vec<Value> {
        self.moto.fixture(&["describe-asgs"]).as_array().unwrap().clone()
    }

    /// (AMI, generation tag) of every running instance of every group, sorted.
    fn running(&self) -> Vec<(String, String, String)> {
        let mut out: Vec<(String, String, String)> = self
            .asgs()
            .iter()
            .flat_map(|g| {
                let name = g["name"].as_str().unwrap().to_owned();
                g["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|i| i["state"] == "running")
                    .map(move |i| {
                        (
                            name.clone(),
                            i["image_id"].as_str().unwrap().to_owned(),
                            i["tags"]["stele:generation"].as_str().unwrap_or("-").to_owned(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    /// Every EC2 instance launched from one of the app AMIs, whatever its state.
    fn launches(&self) -> usize {
        let amis: Vec<String> = ["1", "2", "3"].iter().map(|k| self.ami(k)).collect();
        let script = "import boto3, json, os\n\
             ec2 = boto3.client('ec2', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n\
             print(json.dumps([i['ImageId'] for r in ec2.describe_instances()['Reservations'] for i in r['Instances']]))";
        let mut cmd = Command::new(self.moto.python());
        cmd.arg("-c").arg(script);
        common::moto::configure_aws(&mut cmd, &self.moto.endpoint);
        let out = cmd.output().expect("python");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let images: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
        images.iter().filter(|i| amis.contains(i)).count()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

fn three(group: &str, ami: &str, generation: &str, n: usize) -> Vec<(String, String, String)> {
    vec![(group.to_owned(), ami.to_owned(), generation.to_owned()); n]
}

#[test]
fn release_then_git_revert_rolls_the_group_back_to_the_old_ami() {
    let w =
        World::new(json!({"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "min_ready_seconds": 0}), 2, 200);
    w.release("1");
    let (code, log) = w.agent_once();
    assert_eq!(code, OK, "{log}");
    assert_eq!(w.running(), three("stele-prod-web", &w.ami("1"), "1", 2));
    let s = w.status();
    assert_eq!((s["phase"].as_str(), s["observed_generation"].as_u64()), (Some("Healthy"), Some(1)), "{s:#}");

    w.release("2");
    // `stele plan` shows what the agent would do, from what AWS reports, and changes nothing.
    let versions_before = w.moto.fixture(&["lt-versions", "--name", "web-base"]);
    let (code, plan) = w.plan();
    assert_eq!(code, OK, "{plan:#}");
    let env = &plan["environments"][0];
    assert_eq!(env["target_generation"], 2, "{plan:#}");
    assert_eq!(env["observed"]["instances"].as_array().map(Vec::len), Some(2), "{plan:#}");
    let launches: Vec<&Value> =
        env["plan"]["actions"].as_array().unwrap().iter().filter(|a| a["action"] == "launch").collect();
    assert_eq!(launches.len(), 1, "max_surge 1: {plan:#}");
    assert_eq!(launches[0]["release"]["generation"], 2, "{plan:#}");
    assert_eq!(w.running(), three("stele-prod-web", &w.ami("1"), "1", 2), "plan touched nothing");
    assert_eq!(w.moto.fixture(&["lt-versions", "--name", "web-base"]), versions_before, "no version made");

    let (code, log) = w.agent_once();
    assert_eq!(code, OK, "{log}");
    assert_eq!(w.running(), three("stele-prod-web", &w.ami("2"), "2", 2));

    // Roll back the way people do: revert the release commit. The revert is a new generation (3) that
    // runs v1's AMI again, from a new launch-template version.
    w.ledger.git(["revert", "--no-edit", "HEAD"]);
    let (code, log) = w.agent_once();
    assert_eq!(code, OK, "{log}");
    assert_eq!(w.running(), three("stele-prod-web", &w.ami("1"), "3", 2));
    let s = w.status();
    assert_eq!((s["phase"].as_str(), s["observed_generation"].as_u64()), (Some("Healthy"), Some(3)), "{s:#}");
    assert_eq!(w.launches(), 6, "2 per generation, nothing twice");
}

#[test]
fn an_agent_killed_during_a_blue_green_rollout_finishes_it_after_a_restart() {
    // Ticks 1.5 s apart, so the kill lands between launching g2 and switching the listener.
    let mut w = World::new(json!({"kind": "blue_green", "grace_seconds": 0}), 3, 3000);
    w.release("1");
    let (code, log) = w.agent_once();
    assert_eq!(code, OK, "{log}");
    assert_eq!(w.running(), three("stele-prod-web-g1", &w.ami("1"), "1", 3));

    // v2 with a running agent, killed with SIGKILL as soon as the new group has instances.
    w.release("2");
    w.spawn_agent();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let g2 = w.running().iter().filter(|(g, _, _)| g == "stele-prod-web-g2").count();
        if g2 >= 1 {
            break;
        }
        assert!(
            Instant::now() < until,
            "the agent never launched g2: {}",
            std::fs::read_to_string(w.sb.path("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut agent = w.agent.take().unwrap();
    agent.kill().unwrap();
    agent.wait().unwrap();
    let listener = w.setup["listener_arn"].as_str().unwrap().to_owned();
    let weights = |w: &World| w.moto.fixture(&["listener-weights", "--listener", &listener])["target_groups"].clone();
    let before = weights(&w);
    assert_eq!(before.as_array().map(Vec::len), Some(1), "killed before the switch: {before:#}");
    assert!(w.asgs().len() == 2, "killed with both generations' groups up");

    let (code, log) = w.agent_once();
    assert_eq!(code, OK, "{log}");
    assert_eq!(w.running(), three("stele-prod-web-g2", &w.ami("2"), "2", 3));
    let names: Vec<String> = w.asgs().iter().map(|g| g["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, vec!["stele-prod-web-g2"], "g1 deleted after the switch");
    let after = weights(&w);
    assert_eq!(after.as_array().map(Vec::len), Some(1), "{after:#}");
    assert_eq!(after[0]["weight"], 100, "{after:#}");
    assert_ne!(
        after[0]["arn"],
        before[0]["arn"],
        "the restarted agent switched the listener to g2; first agent's log:\n{}",
        std::fs::read_to_string(w.sb.path("agent.log")).unwrap_or_default()
    );
    assert_eq!(w.launches(), 6, "3 per generation: the restarted agent launched nothing twice");
    let s = w.status();
    assert_eq!((s["phase"].as_str(), s["observed_generation"].as_u64()), (Some("Healthy"), Some(2)), "{s:#}");
}
