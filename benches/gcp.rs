//! What a rollout costs on the GCP provider, against the loopback Compute Engine fake: ticks, wall time,
//! and Compute Engine API calls (from the fake's call log, only the SDK's), split into reads, mutations
//! and operation polls. API calls are what real projects budget (per-minute read and write quotas); wall
//! time here is the fake's latency plus Stele's, not GCP's, and the fake finishes every operation on its
//! second poll, where GCP takes as long as the change does. For each strategy: 6 instances, v1
//! converged, then v2 measured. Also: the cost of one observation of a converged environment (what every
//! tick pays while nothing changes).
//!
//! Run: `cargo bench --features gcp --bench gcp --profile dev` (call counts and fake latency, so the
//! dev build the tests made serves). Needs the fake's venv: `scripts/gcp-venv.sh`.

#[path = "../tests/common/cloud.rs"]
#[allow(dead_code)]
mod cloud;
#[path = "../tests/common/gcp.rs"]
#[allow(dead_code)]
mod gcp;
#[path = "../tests/common/moto.rs"]
mod moto;

use cloud::{bench_strategies, converge_clean, machine_release, median_observe, most_frequent, OBSERVATIONS};
use gcp::{GcpFake, BASE_TEMPLATE, HEALTH_CHECK, IMAGES, PROJECT, REGION, URL_MAP};
use ledger_format::types::{EnvName, Environment};
use ledger_format::Blake3Digest;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use stele::converge::Memory;
use stele::plan::Release;
use stele::provider::gcp::{GcpCredentials, GcpOptions, GcpProvider};

fn digest(v: &str) -> Blake3Digest {
    Blake3Digest(*blake3::hash(format!("stele gcp bench {v}").as_bytes()).as_bytes())
}

/// The operator's side (`GcpFake::seed_operator`) and images app-1, app-2 labelled with their digests.
fn world() -> GcpFake {
    let fake = GcpFake::start_anonymous();
    for key in ["1", "2"] {
        fake.seed_digest_image(IMAGES, &format!("app-{key}"), "READY", &digest(&format!("v{key}")).to_hex());
    }
    fake.seed_operator();
    fake
}

fn spec(strategy: Value) -> Environment {
    let provider = json!({
        "kind": "gcp", "project": PROJECT, "region": REGION, "instance_template": BASE_TEMPLATE,
        "image_projects": [IMAGES], "url_map": URL_MAP, "health_check": HEALTH_CHECK, "port": 8080,
    });
    cloud::environment("prod", provider, json!([{"name": "web", "capacity": 6}]), strategy)
}

fn release(generation: u64, key: &str) -> Release {
    machine_release(
        generation,
        &format!("{key}.0.0"),
        &format!("projects/{IMAGES}/global/images/app-{key}"),
        digest(&format!("v{key}")),
    )
}

/// (reads, mutations, operation polls) of a call count by method id.
fn split(counts: &BTreeMap<String, usize>) -> (usize, usize, usize) {
    let (mut reads, mut mutations, mut polls) = (0, 0, 0);
    for (method, n) in counts {
        let verb = method.rsplit('.').next().unwrap_or_default();
        if method.contains("Operations.") {
            polls += n;
        } else if matches!(verb, "get" | "list" | "listManagedInstances" | "getHealth") {
            reads += n;
        } else {
            mutations += n;
        }
    }
    (reads, mutations, polls)
}

fn main() {
    println!("GCP provider against the loopback fake, 6 instances, v1 converged then v2 measured");
    println!(
        "| strategy | ticks | wall time | API calls | reads / mutations / operation polls | calls per tick | \
         observe of a converged environment: calls, median time | top calls |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, strategy) in bench_strategies() {
        let fake = world();
        let mut p = GcpProvider::with_options(GcpOptions {
            endpoint: Some(fake.endpoint.clone()),
            credentials: GcpCredentials::Anonymous,
            // The fake finishes an operation on its second poll; GCP's own pace would only add waiting.
            initial_backoff: Duration::from_millis(20),
            ..GcpOptions::default()
        })
        .expect("provider");
        let spec = spec(strategy);
        let mut memory = Memory::default();
        converge_clean(&mut p, &spec, &release(1, "1"), &mut memory);
        fake.clear_calls();
        let (ticks, wall) = converge_clean(&mut p, &spec, &release(2, "2"), &mut memory);
        let counts = fake.sdk_call_counts();
        let calls: usize = counts.values().sum();
        let (reads, mutations, polls) = split(&counts);
        let top: Vec<String> =
            most_frequent(&counts, 4).iter().map(|c| c.trim_start_matches("compute.").to_owned()).collect();
        // Observations of the converged environment.
        let env: EnvName = "prod".parse().unwrap();
        fake.clear_calls();
        let median = median_observe(&mut p, &env, &spec);
        let per_observe = fake.sdk_call_counts().values().sum::<usize>() as f64 / OBSERVATIONS as f64;
        println!(
            "| {name} | {ticks} | {:.2} s | {calls} | {reads} / {mutations} / {polls} | {:.1} | {per_observe:.0} calls, {:.1} ms | {} |",
            wall.as_secs_f64(),
            calls as f64 / ticks as f64,
            median.as_secs_f64() * 1000.0,
            top.join(", ")
        );
    }
}
