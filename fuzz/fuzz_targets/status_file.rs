//! The status file (`status/<env>.json` on a status ref): what `stele::status::parse` accepts renders and
//! parses back to the same status, and rendering is a fixed point; a signed status document (SPEC.md
//! §6.5) is judged by `verify_observation` without panicking, and its verdict never says verified for a
//! key the policy does not list as an agent.
#![no_main]

use ledger_format::observation::verify_observation;
use ledger_format::types::{EnvName, Policy};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use stele::status::{decode, parse, render};

/// A policy with no agents: nothing may verify under it.
fn no_agents() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let text = include_str!("../../ledger-format/test-vectors/valid/basic.json");
        let vector: serde_json::Value = serde_json::from_str(text).expect("the vector is JSON");
        let bytes = vector["files"]["trust/policy.json"]["text"].as_str().expect("the policy file");
        ledger_format::Document::<Policy>::parse(bytes.as_bytes()).expect("the policy parses").payload
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = decode(data) {
        let env: EnvName = file.status.env.clone();
        let verdict = verify_observation(data, &env, |_| Some(no_agents()));
        assert!(verdict.is_err(), "an observation verified under a policy without agents");
    }
    let Ok(status) = parse(data) else { return };
    let rendered = render(&status);
    let again = parse(&rendered).expect("a rendered status parses");
    assert_eq!(again, status, "rendering changes the status");
    assert_eq!(render(&again), rendered, "rendering is not a fixed point");
});
