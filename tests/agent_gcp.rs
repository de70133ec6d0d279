//! The agent end to end on the GCP provider: a real Git ledger made with the `stele` CLI, releases that
//! pin Compute Engine images, the real `stele agent` binary (built with `gcp`) converging managed
//! instance groups in the loopback fake (tests/common/gcp.rs), status read back from the status branch.
//! Covers promotion, `stele plan` (observes, changes nothing), rollback by `git revert` (a new
//! generation that runs the old image again, from a new instance template), and an agent killed with
//! SIGKILL in the middle of a blue/green rollout and started again: it adopts the groups and backend
//! services it finds by name and description, and finishes without duplicates.
#![cfg(feature = "gcp")]

mod common;

use common::gcp::{api_path, GcpFake, BASE_TEMPLATE, HEALTH_CHECK, IMAGES, PROJECT, REGION, URL_MAP};
use common::{path_str, scrubbed, Key, Ledger, Sandbox, OK, STELE};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn digest_hex(version: &str) -> String {
    blake3::hash(format!("stele agent gcp {version}").as_bytes()).to_hex().to_string()
}

fn image(key: &str) -> String {
    format!("projects/{IMAGES}/global/images/app-{key}")
}

struct World {
    sb: Sandbox,
    ledger: Ledger,
    alice: Key,
    config: std::path::PathBuf,
    fake: GcpFake,
    agent: Option<Child>,
}

impl World {
    /// A ledger with environment `prod` on provider gcp in a fresh fake, with `strategy`; the agent
    /// probes every `tick_ms`.
    fn new(strategy: Value, capacity: u64, tick_ms: u64) -> World {
        let fake = GcpFake::start_anonymous();
        for key in ["1", "2", "3"] {
            fake.seed_digest_image(IMAGES, &format!("app-{key}"), "READY", &digest_hex(key));
        }
        fake.seed_operator();
        let sb = Sandbox::new();
        let alice = sb.key("alice");
        let ledger = sb.ledger("ledger", "gcp-test", &alice, &["prod"]);
        let spec = json!({
            "type": "stele.environment/v1",
            "provider": {
                "kind": "gcp",
                "project": PROJECT,
                "region": REGION,
                "instance_template": BASE_TEMPLATE,
                "image_projects": [IMAGES],
                "url_map": URL_MAP,
                "health_check": HEALTH_CHECK,
                "port": 8080,
            },
            "groups": [{"name": "web", "capacity": capacity}],
            "strategy": strategy,
            "health": {"kind": "tcp", "interval_ms": tick_ms, "timeout_ms": 100,
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
                "repo = \"{}\"\nstate_dir = \"{}\"\ntrust_root = [\"{}\"]\ninterval_seconds = 1\n\n\
                 [gcp]\nendpoint = \"{}\"\nanonymous = true\n",
                path_str(&ledger.dir),
                path_str(&sb.path("agent-state")),
                alice.id,
                fake.endpoint,
            ),
        )
        .unwrap();
        World { sb, ledger, alice, config, fake, agent: None }
    }

    /// `stele release` of version `key`.0.0 pinning image app-`key`.
    fn release(&self, key: &str) {
        let (digest, key_path) = (digest_hex(key), self.alice.secret());
        let version = format!("{key}.0.0");
        self.ledger
            .stele([
                "release",
                "--env",
                "prod",
                "--version",
                &version,
                "--machine-image",
                &image(key),
                "--blake3",
                &digest,
                "--key",
                &key_path,
            ])
            .expect(OK);
    }

    fn stele(&self) -> Command {
        scrubbed(STELE, self.sb.root(), &self.ledger.dir)
    }

    fn agent_cmd(&self, once: bool) -> Command {
        let mut cmd = self.stele();
        cmd.args(["agent", "--config", &path_str(&self.config)]);
        if once {
            cmd.args(["--once", "--timeout", "120"]);
        }
        cmd
    }

    /// `stele plan --json` with the agent's configuration: (exit code, JSON).
    fn plan(&self) -> (i32, Value) {
        let out = self
            .stele()
            .args(["plan", "--config", &path_str(&self.config), "--json"])
            .output()
            .expect("run stele plan");
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

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.sb.path("agent.log")).unwrap_or_default()
    }

    fn status(&self) -> Value {
        let out = self.ledger.stele(["status", "--json", "--env", "prod"]);
        out.expect(OK);
        let v: Value = serde_json::from_str(&out.stdout).expect("status JSON");
        v["environments"][0].clone()
    }

    fn list(&self, collection: &str) -> Vec<Value> {
        let (status, out) = self.fake.call("GET", &api_path(collection), None);
        assert_eq!(status, 200, "{out:#}");
        out["items"].as_array().cloned().unwrap_or_default()
    }

    fn group_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .list(&format!("regions/{REGION}/instanceGroupManagers"))
            .iter()
            .map(|g| g["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }

    /// (group, boot image, generation label) of every instance, sorted.
    fn running(&self) -> Vec<(String, String, String)> {
        let templates: Vec<Value> = self.list("global/instanceTemplates");
        let mut out: Vec<(String, String, String)> = self
            .fake
            .instances()
            .iter()
            .map(|i| {
                let group = i["mig"].as_str().unwrap_or("-").rsplit('/').next().unwrap().to_owned();
                let template = templates
                    .iter()
                    .find(|t| t["selfLink"] == i["template"])
                    .unwrap_or_else(|| panic!("no template {}", i["template"]));
                let props = &template["properties"];
                let image = props["disks"][0]["initializeParams"]["sourceImage"].as_str().unwrap_or("-");
                let image = image.split("/compute/v1/").last().unwrap().to_owned();
                let generation = props["labels"]["stele-generation"].as_str().unwrap_or("-").to_owned();
                (group, image, generation)
            })
            .collect();
        out.sort();
        out
    }

    /// The URL map's default route: [(backend service name, weight)], or the default service at 100.
    fn url_map(&self) -> Vec<(String, u64)> {
        let (status, map) = self.fake.call("GET", &api_path(&format!("global/urlMaps/{URL_MAP}")), None);
        assert_eq!(status, 200, "{map:#}");
        let name = |link: &Value| link.as_str().unwrap().rsplit('/').next().unwrap().to_owned();
        match map["defaultRouteAction"]["weightedBackendServices"].as_array() {
            Some(w) if !w.is_empty() => {
                w.iter().map(|b| (name(&b["backendService"]), b["weight"].as_u64().unwrap_or(0))).collect()
            }
            _ => vec![(name(&map["defaultService"]), 100)],
        }
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

fn three(group: &str, key: &str, generation: &str, n: usize) -> Vec<(String, String, String)> {
    vec![(group.to_owned(), image(key), generation.to_owned()); n]
}

#[test]
fn release_then_git_revert_rolls_the_group_back_to_the_old_image() {
    let w =
        World::new(json!({"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "min_ready_seconds": 0}), 2, 200);
    w.release("1");
    let (code, log) = w.agent_once();
    assert_eq!(code, OK, "{log}");
    assert_eq!(w.running(), three("stele-prod-web", "1", "1", 2));
    let s = w.status();
    assert_eq!((s["phase"].as_str(), s["observed_generation"].as_u64()), (Some("Healthy"), Some(1)), "{s:#}");

    w.release("2");
    // `stele plan` shows what the agent would do, from what GCP reports, and changes nothing.
    let templates_before = w.list("global/instanceTemplates").len();
    let (code, plan) = w.plan();
    assert_eq!(code, OK, "{plan:#}");
    let env = &plan["environments"][0];
    assert_eq!(env["target_generation"], 2, "{plan:#}");
    assert_eq!(env["observed"]["instances"].as_array().map(Vec::len), Some(2), "{plan:#}");
    let launches: Vec<&Value> =
        env["plan"]["actions"].as_array().unwrap().iter().filter(|a| a["action"] == "launch").collect();
    assert_eq!(launches.len(), 1, "max_surge 1: {plan:#}");
    assert_eq!(launches[0]["release"]["generation"], 2, "{plan:#}");
    assert_eq!(w.running(), three("stele-prod-web", "1", "1", 2), "plan touched nothing");
    assert_eq!(w.list("global/instanceTemplates").len(), templates_before, "no template made");

    let (code, log) = w.agent_once();
    assert_eq!(code, OK, "{log}");
    assert_eq!(w.running(), three("stele-prod-web", "2", "2", 2));

    // Roll back the way people do: revert the release commit. The revert is a new generation (3) that
    // runs v1's image again, from a new instance template.
    w.ledger.git(["revert", "--no-edit", "HEAD"]);
    let (code, log) = w.agent_once();
    assert_eq!(code, OK, "{log}");
    assert_eq!(w.running(), three("stele-prod-web", "1", "3", 2));
    let s = w.status();
    assert_eq!((s["phase"].as_str(), s["observed_generation"].as_u64()), (Some("Healthy"), Some(3)), "{s:#}");
    assert_eq!(w.fake.instances_created(), 6, "2 per generation, nothing twice");
    assert_eq!(w.list("global/instanceTemplates").len(), 4, "the base and one per generation");
}

#[test]
fn an_agent_killed_during_a_blue_green_rollout_finishes_it_after_a_restart() {
    // Ticks 3 s apart, so the kill lands between creating g2 and switching the URL map.
    let mut w = World::new(json!({"kind": "blue_green", "grace_seconds": 0}), 3, 3000);
    w.release("1");
    let (code, log) = w.agent_once();
    assert_eq!(code, OK, "{log}");
    assert_eq!(w.running(), three("stele-prod-web-g1", "1", "1", 3));
    let before = w.url_map();
    assert_eq!(before.len(), 1, "{before:?}");
    assert!(before[0].0.starts_with("stele-"), "g1's backend service serves: {before:?}");

    // v2 with a running agent, killed with SIGKILL as soon as the new group has instances.
    w.release("2");
    w.spawn_agent();
    let until = Instant::now() + Duration::from_secs(60);
    while !w.running().iter().any(|(g, _, _)| g == "stele-prod-web-g2") {
        assert!(Instant::now() < until, "the agent never created g2: {}", w.agent_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut agent = w.agent.take().unwrap();
    agent.kill().unwrap();
    agent.wait().unwrap();
    assert_eq!(w.url_map(), before, "killed before the switch:\n{}", w.agent_log());
    assert_eq!(w.group_names(), ["stele-prod-web-g1", "stele-prod-web-g2"], "killed with both groups up");

    let (code, log) = w.agent_once();
    assert_eq!(code, OK, "{log}");
    assert_eq!(w.running(), three("stele-prod-web-g2", "2", "2", 3));
    assert_eq!(w.group_names(), ["stele-prod-web-g2"], "g1 deleted after the switch");
    let after = w.url_map();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].1, 100, "{after:?}");
    assert_ne!(after[0].0, before[0].0, "the restarted agent switched the URL map to g2's backend service");
    let services: Vec<String> =
        w.list("global/backendServices").iter().map(|b| b["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(services.len(), 2, "the operator's and g2's: {services:?}");
    assert!(services.contains(&after[0].0), "{services:?}");
    assert_eq!(w.fake.instances_created(), 6, "3 per generation: the restarted agent created nothing twice");
    let s = w.status();
    assert_eq!((s["phase"].as_str(), s["observed_generation"].as_u64()), (Some("Healthy"), Some(2)), "{s:#}");
}
