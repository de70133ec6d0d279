//! What a rollout costs on the AWS provider, against moto: ticks, wall time, and AWS API calls (per tick
//! and by action), counted by a pass-through proxy in front of moto (the fault proxy of the tests with
//! no faults). API calls are what real accounts budget (throttling); wall time here is moto's latency
//! plus Stele's, not AWS's. For each strategy: 6 instances, v1 converged, then v2 timed. Also: the cost
//! of one observation of a converged environment (what every tick pays while nothing changes).
//!
//! Run: `cargo bench --features aws --bench aws --profile dev` (the figures are call counts and
//! emulator latency, so the SDK's optimisation level barely matters, and the dev build is already
//! there after the tests). Needs moto: `scripts/moto-venv.sh`.

#[path = "../tests/common/cloud.rs"]
#[allow(dead_code)]
mod cloud;
#[path = "../tests/common/moto.rs"]
mod moto;

use cloud::{bench_strategies, converge_clean, machine_release, median_observe, most_frequent, OBSERVATIONS};
use ledger_format::types::{EnvName, Environment};
use ledger_format::Blake3Digest;
use moto::{FaultProxy, Moto};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use stele::converge::Memory;
use stele::plan::Release;
use stele::provider::aws::{AwsOptions, AwsProvider};

fn digest(v: &str) -> Blake3Digest {
    Blake3Digest(*blake3::hash(format!("stele aws bench {v}").as_bytes()).as_bytes())
}

fn spec(setup: &Value, strategy: Value) -> Environment {
    let provider = json!({
        "kind": "aws", "region": setup["region"], "launch_template": setup["launch_template"],
        "subnets": setup["subnets"], "ami_owners": [setup["owner"]],
        "target_groups": setup["target_group_arns"], "listener": setup["listener_arn"],
        "vpc": setup["vpc"], "port": 8080,
    });
    cloud::environment("prod", provider, json!([{"name": "web", "capacity": 6}]), strategy)
}

fn release(setup: &Value, generation: u64, key: &str) -> Release {
    machine_release(generation, &format!("{key}.0.0"), setup["amis"][key].as_str().unwrap(), digest(&format!("v{key}")))
}

fn by_action(proxy: &FaultProxy, from: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in &proxy.requests()[from..] {
        *out.entry(if r.action.is_empty() { r.service.clone() } else { r.action.clone() }).or_default() += 1;
    }
    out
}

fn main() {
    println!("AWS provider against moto, 6 instances, v1 converged then v2 timed");
    println!(
        "| strategy | ticks | wall time | API calls | calls per tick | observe of a converged environment: calls, median time | top calls |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, strategy) in bench_strategies() {
        let moto = Moto::start();
        let setup = moto.setup(&[&digest("v1").to_hex(), &digest("v2").to_hex()]);
        let proxy = FaultProxy::start(&moto.endpoint, 0.0, 1);
        let mut p = AwsProvider::with_options(AwsOptions {
            endpoint_url: Some(proxy.endpoint.clone()),
            credentials: Some((moto::ACCESS_KEY_ID.into(), moto::SECRET_ACCESS_KEY.into())),
            ..AwsOptions::default()
        })
        .expect("provider");
        let spec = spec(&setup, strategy);
        let mut memory = Memory::default();
        converge_clean(&mut p, &spec, &release(&setup, 1, "1"), &mut memory);
        let before = proxy.requests().len();
        let (ticks, wall) = converge_clean(&mut p, &spec, &release(&setup, 2, "2"), &mut memory);
        let calls = proxy.requests().len() - before;
        let actions = by_action(&proxy, before);
        let top = most_frequent(&actions, 4);
        // Observations of the converged environment.
        let env: EnvName = "prod".parse().unwrap();
        let start = proxy.requests().len();
        let median = median_observe(&mut p, &env, &spec);
        let per_observe = (proxy.requests().len() - start) as f64 / OBSERVATIONS as f64;
        println!(
            "| {name} | {ticks} | {:.2} s | {calls} | {:.1} | {per_observe:.0} calls, {:.1} ms | {} |",
            wall.as_secs_f64(),
            calls as f64 / ticks as f64,
            median.as_secs_f64() * 1000.0,
            top.join(", ")
        );
    }
}
