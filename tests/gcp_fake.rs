//! Tests of the GCP test harness itself (tests/gcp/fake.py through tests/common/gcp.rs), with raw HTTP, not
//! the SDK: requests are checked against Google's compute v1 discovery document and refused in Google's
//! error shape; operations go PENDING, RUNNING, DONE; managed groups create and delete their fake instances;
//! getHealth follows the control API; the fault proxy answers in Google's shape; a missing venv or
//! discovery document fails loudly.

mod common;

use common::gcp::{api_path, FaultProxy, FaultShape, GcpFake, Outcome, PROJECT, REGION};
use serde_json::{json, Value};
use std::path::Path;

const IMAGES: &str = "stele-images";
const DIGEST: &str = "1111111111111111111111111111111111111111111111111111111111111111";

fn ok(fake: &GcpFake, method: &str, path: &str, body: Option<&Value>) -> Value {
    let (status, out) = fake.call(method, path, body);
    assert_eq!(status, 200, "{method} {path} answered {status}: {out:#}\n{}", fake.log());
    out
}

/// Runs a mutating call and polls its operation to DONE without error.
fn done(fake: &GcpFake, method: &str, path: &str, body: Option<&Value>) -> Value {
    let op = ok(fake, method, path, body);
    let op = fake.poll_until_done(&op, 5);
    assert!(op.get("error").is_none(), "{method} {path} failed: {op:#}");
    op
}

/// Asserts a refusal in Google's error shape and returns its message.
fn refused(fake: &GcpFake, method: &str, path: &str, body: Option<&Value>, code: u16, status: &str) -> String {
    let (got, out) = fake.call(method, path, body);
    assert_eq!(got, code, "{method} {path} answered {got}: {out:#}");
    assert_eq!(out["error"]["code"], code, "{out:#}");
    assert_eq!(out["error"]["status"], status, "{out:#}");
    assert!(out["error"]["errors"][0]["reason"].is_string(), "{out:#}");
    out["error"]["message"].as_str().expect("a message").to_string()
}

fn template(fake: &GcpFake, name: &str) {
    let body = json!({"name": name, "properties": {"machineType": "e2-small", "disks": [{"boot": true,
        "initializeParams": {"sourceImage": format!("projects/{IMAGES}/global/images/app-1")}}]}});
    done(fake, "POST", &api_path("global/instanceTemplates"), Some(&body));
}

fn mig_path(rest: &str) -> String {
    api_path(&format!("regions/{REGION}/instanceGroupManagers{rest}"))
}

fn managed(fake: &GcpFake) -> Vec<Value> {
    let out = ok(fake, "POST", &mig_path("/web/listManagedInstances"), None);
    out["managedInstances"].as_array().cloned().unwrap_or_default()
}

fn templates_of(instances: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = instances
        .iter()
        .map(|i| i["version"]["instanceTemplate"].as_str().unwrap().rsplit('/').next().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// A fake with image app-1 and templates t1, t2, and a regional group `web` of `size` on t1.
fn with_group(size: u32, policy: &str) -> GcpFake {
    let fake = GcpFake::start();
    fake.seed_image(IMAGES, "app-1", "READY", &[("stele-blake3", DIGEST)]);
    template(&fake, "t1");
    template(&fake, "t2");
    let body = json!({"name": "web", "instanceTemplate": "global/instanceTemplates/t1", "targetSize": size,
        "baseInstanceName": "web", "updatePolicy": {"type": policy}});
    done(&fake, "POST", &mig_path(""), Some(&body));
    fake
}

#[test]
fn operations_go_pending_running_done_and_resources_carry_their_schema_fields() {
    let fake = GcpFake::start();
    fake.seed_image(IMAGES, "app-1", "PENDING", &[("stele-blake3", DIGEST)]);
    let image = ok(
        &fake,
        "GET",
        &format!("/compute/v1/projects/{IMAGES}/global/images/app-1?$alt=json;enum-encoding=int&prettyPrint=false"),
        None,
    );
    assert_eq!(image["status"], "PENDING");
    assert_eq!(image["labels"]["stele-blake3"], DIGEST);

    let body = json!({"name": "t1", "properties": {"machineType": "e2-small"}});
    let op = ok(&fake, "POST", &api_path("global/instanceTemplates"), Some(&body));
    assert_eq!(op["kind"], "compute#operation");
    assert_eq!(op["status"], "PENDING");
    assert_eq!(op["operationType"], "insert");
    assert!(op["selfLink"].as_str().unwrap().contains(&format!("/projects/{PROJECT}/global/operations/")), "{op:#}");
    assert!(op["targetLink"].as_str().unwrap().ends_with(&format!("projects/{PROJECT}/global/instanceTemplates/t1")));
    let path = format!("/compute/v1/{}", op["selfLink"].as_str().unwrap().split("/compute/v1/").nth(1).unwrap());
    assert_eq!(ok(&fake, "GET", &path, None)["status"], "RUNNING");
    assert_eq!(ok(&fake, "GET", &path, None)["status"], "DONE");

    let got = ok(&fake, "GET", &api_path("global/instanceTemplates/t1"), None);
    assert_eq!(got["kind"], "compute#instanceTemplate");
    assert_eq!(got["name"], "t1");
    for field in ["id", "selfLink", "creationTimestamp"] {
        assert!(got[field].is_string(), "{field} missing: {got:#}");
    }
    // Regional calls get regional operations, and wait returns DONE at once.
    let body = json!({"name": "web", "instanceTemplate": "global/instanceTemplates/t1", "targetSize": 1});
    let op = ok(&fake, "POST", &mig_path(""), Some(&body));
    assert_eq!(op["region"].as_str().unwrap().rsplit('/').next(), Some(REGION));
    let wait = format!("/compute/v1/{}/wait", op["selfLink"].as_str().unwrap().split("/compute/v1/").nth(1).unwrap());
    assert_eq!(ok(&fake, "POST", &wait, None)["status"], "DONE");

    // A repeated requestId returns the first operation and applies nothing again.
    let resize = mig_path("/web/resize?size=3&requestId=8a7c0c5e-2b2e-4c36-9a57-1ec5b7c2a4d1");
    let first = ok(&fake, "POST", &resize, None);
    let again = ok(&fake, "POST", &resize, None);
    assert_eq!(first["name"], again["name"]);
    assert_eq!(fake.instances().len(), 3);

    // An injected failure: the operation ends DONE with Google's error, and nothing is applied.
    fake.fail_next("compute.regionInstanceGroupManagers.resize", 403, "QUOTA_EXCEEDED", false);
    let op = ok(&fake, "POST", &mig_path("/web/resize?size=9"), None);
    let op = fake.poll_until_done(&op, 5);
    assert_eq!(op["error"]["errors"][0]["code"], "QUOTA_EXCEEDED", "{op:#}");
    assert_eq!(op["httpErrorStatusCode"], 403);
    assert_eq!(fake.instances().len(), 3);
}

#[test]
fn invalid_requests_are_refused_in_googles_shape() {
    let fake = GcpFake::start();
    let templates = api_path("global/instanceTemplates");
    let msg = refused(&fake, "POST", &templates, Some(&json!({"name": "t", "bogus": 1})), 400, "INVALID_ARGUMENT");
    assert!(msg.contains("Unknown name \"bogus\""), "{msg}");
    let body = json!({"name": "t", "properties": {"machineType": "e2-small", "canIpForward": "yes"}});
    refused(&fake, "POST", &templates, Some(&body), 400, "INVALID_ARGUMENT");
    let msg =
        refused(&fake, "POST", &templates, Some(&json!({"name": "t", "properties": {}})), 400, "INVALID_ARGUMENT");
    assert!(msg.contains("machineType"), "a field the document marks required: {msg}");
    let body = json!({"name": "Bad_Name", "properties": {"machineType": "e2-small"}});
    refused(&fake, "POST", &templates, Some(&body), 400, "INVALID_ARGUMENT");
    let body = json!({"name": "web", "instanceTemplate": "global/instanceTemplates/t", "targetSize": "three"});
    refused(&fake, "POST", &mig_path(""), Some(&body), 400, "INVALID_ARGUMENT");
    let msg = refused(&fake, "POST", &mig_path("/web/resize"), None, 400, "INVALID_ARGUMENT");
    assert!(msg.contains("size"), "a missing required query parameter: {msg}");
    refused(&fake, "GET", &format!("{templates}?colour=blue"), None, 400, "INVALID_ARGUMENT");
    refused(&fake, "POST", &api_path("global/instanceTemplatez"), Some(&json!({})), 404, "NOT_FOUND");
    refused(&fake, "PUT", &templates, Some(&json!({})), 404, "NOT_FOUND");
    refused(&fake, "GET", &api_path("global/instanceTemplates/missing"), None, 404, "NOT_FOUND");
    let body = json!({"name": "web", "instanceTemplate": "global/instanceTemplates/missing", "targetSize": 1});
    refused(&fake, "POST", &mig_path(""), Some(&body), 404, "NOT_FOUND");
    let (status, out) = common::gcp::http(&fake.endpoint, "GET", &templates, &[], b"")
        .map(|r| (r.status, serde_json::from_slice::<Value>(&r.body).unwrap()))
        .unwrap();
    assert_eq!((status, &out["error"]["status"]), (401, &json!("UNAUTHENTICATED")), "{out:#}");
    // Every call is in the log, refused ones too.
    let calls = fake.calls();
    assert!(calls.iter().any(|c| c.method.is_empty() && c.status == 404), "{calls:?}");
    assert!(calls.iter().any(|c| c.method == "compute.instanceTemplates.insert" && c.status == 400));
}

#[test]
fn resize_and_delete_instances_change_the_managed_instances() {
    let fake = with_group(2, "OPPORTUNISTIC");
    assert_eq!(managed(&fake).len(), 2);
    done(&fake, "POST", &mig_path("/web/resize?size=4"), None);
    let instances = managed(&fake);
    assert_eq!(instances.len(), 4);
    for item in &instances {
        assert_eq!(item["instanceStatus"], "RUNNING", "{item:#}");
        assert_eq!(item["currentAction"], "NONE", "{item:#}");
        assert!(item["instance"].as_str().unwrap().contains(&format!("/zones/{REGION}-")), "{item:#}");
    }
    assert_eq!(templates_of(&instances), ["t1"; 4]);

    // OPPORTUNISTIC: a new template touches no running instance; new ones take it.
    let set = json!({"instanceTemplate": format!("projects/{PROJECT}/global/instanceTemplates/t2")});
    done(&fake, "POST", &mig_path("/web/setInstanceTemplate"), Some(&set));
    assert_eq!(templates_of(&managed(&fake)), ["t1"; 4]);
    done(&fake, "POST", &mig_path("/web/resize?size=5"), None);
    assert_eq!(templates_of(&managed(&fake)), ["t1", "t1", "t1", "t1", "t2"]);

    let victims: Vec<Value> = managed(&fake).iter().take(2).map(|i| i["instance"].clone()).collect();
    done(&fake, "POST", &mig_path("/web/deleteInstances"), Some(&json!({"instances": victims})));
    let group = ok(&fake, "GET", &mig_path("/web"), None);
    assert_eq!(group["targetSize"], 3, "{group:#}");
    assert_eq!(managed(&fake).len(), 3);
    let msg = refused(
        &fake,
        "POST",
        &mig_path("/web/deleteInstances"),
        Some(&json!({"instances": victims})),
        400,
        "INVALID_ARGUMENT",
    );
    assert!(msg.contains("not a member"), "{msg}");

    // patch needs the current fingerprint (412 conditionNotMet otherwise), as the document says.
    let patch = json!({"updatePolicy": {"type": "PROACTIVE"}});
    refused(&fake, "PATCH", &mig_path("/web"), Some(&patch), 412, "FAILED_PRECONDITION");
    let patch = json!({"updatePolicy": {"type": "PROACTIVE"}, "fingerprint": group["fingerprint"]});
    done(&fake, "PATCH", &mig_path("/web"), Some(&patch));
    refused(&fake, "PATCH", &mig_path("/web"), Some(&patch), 412, "FAILED_PRECONDITION");
    // PROACTIVE: the group moves every instance onto the target template.
    assert_eq!(templates_of(&managed(&fake)), ["t2"; 3]);

    // A template in use cannot be deleted; the group's delete removes its instances.
    refused(&fake, "DELETE", &api_path("global/instanceTemplates/t2"), None, 400, "INVALID_ARGUMENT");
    done(&fake, "DELETE", &mig_path("/web"), None);
    assert!(fake.instances().is_empty());
    done(&fake, "DELETE", &api_path("global/instanceTemplates/t2"), None);
}

#[test]
fn get_health_follows_the_control_api_and_url_maps_weigh_backend_services() {
    let fake = with_group(2, "OPPORTUNISTIC");
    done(
        &fake,
        "POST",
        &api_path("global/healthChecks"),
        Some(&json!({"name": "hc", "type": "HTTP",
        "httpHealthCheck": {"port": 8080, "requestPath": "/healthz"}})),
    );
    let group = format!("projects/{PROJECT}/regions/{REGION}/instanceGroups/web");
    let service = json!({"name": "blue", "backends": [{"group": group}], "healthChecks": ["global/healthChecks/hc"],
        "loadBalancingScheme": "EXTERNAL_MANAGED", "port": 8080});
    done(&fake, "POST", &api_path("global/backendServices"), Some(&service));
    done(&fake, "POST", &api_path("global/backendServices"), Some(&json!({"name": "green"})));
    let health_path = api_path("global/backendServices/blue/getHealth");
    let states = |fake: &GcpFake| -> Vec<String> {
        let out = ok(fake, "POST", &health_path, Some(&json!({"group": group})));
        let mut s: Vec<String> = out["healthStatus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["healthState"].as_str().unwrap().to_string())
            .collect();
        s.sort();
        s
    };
    assert_eq!(states(&fake), ["HEALTHY", "HEALTHY"]);
    let first = fake.instances()[0]["name"].as_str().unwrap().to_string();
    fake.set_health(&first, Some("UNHEALTHY"));
    assert_eq!(states(&fake), ["HEALTHY", "UNHEALTHY"]);
    fake.set_health(&first, None);
    // A failing canary: every instance of t2 stays unhealthy.
    fake.set_failing_template("t2", true);
    done(
        &fake,
        "POST",
        &mig_path("/web/setInstanceTemplate"),
        Some(&json!({"instanceTemplate": "global/instanceTemplates/t2"})),
    );
    done(&fake, "POST", &mig_path("/web/resize?size=3"), None);
    assert_eq!(states(&fake), ["HEALTHY", "HEALTHY", "UNHEALTHY"]);
    let other = json!({"group": format!("projects/{PROJECT}/regions/{REGION}/instanceGroups/other")});
    refused(&fake, "POST", &health_path, Some(&other), 400, "INVALID_ARGUMENT");

    // URL map: weighted backend services, checked and kept as full URLs; both defaults at once refused.
    let weighted = |blue: u32, green: u32| {
        json!({"weightedBackendServices": [
        {"backendService": "global/backendServices/blue", "weight": blue},
        {"backendService": "global/backendServices/green", "weight": green}]})
    };
    done(
        &fake,
        "POST",
        &api_path("global/urlMaps"),
        Some(&json!({"name": "lb", "defaultRouteAction": weighted(100, 0)})),
    );
    let map = ok(&fake, "GET", &api_path("global/urlMaps/lb"), None);
    let patch = json!({"defaultRouteAction": weighted(90, 10), "fingerprint": map["fingerprint"]});
    done(&fake, "PATCH", &api_path("global/urlMaps/lb"), Some(&patch));
    let map = ok(&fake, "GET", &api_path("global/urlMaps/lb"), None);
    let services = &map["defaultRouteAction"]["weightedBackendServices"];
    assert_eq!(services[1]["weight"], 10, "{map:#}");
    assert!(services[1]["backendService"]
        .as_str()
        .unwrap()
        .starts_with("https://www.googleapis.com/compute/v1/projects/"));
    let both = json!({"defaultService": "global/backendServices/blue", "fingerprint": map["fingerprint"]});
    refused(&fake, "PATCH", &api_path("global/urlMaps/lb"), Some(&both), 400, "INVALID_ARGUMENT");
    refused(&fake, "DELETE", &api_path("global/backendServices/green"), None, 400, "INVALID_ARGUMENT");
    let counts = fake.call_counts();
    assert_eq!(counts.get("compute.backendServices.getHealth"), Some(&4), "three reads and one refusal: {counts:?}");
}

#[test]
fn faults_through_the_proxy_are_google_shaped_and_seeded() {
    let fake = GcpFake::start();
    let run = |seed: u64| -> Vec<Outcome> {
        let proxy = FaultProxy::start_shaped(&fake.endpoint, 0.5, seed, FaultShape::Google);
        for _ in 0..24 {
            let (status, out) = GcpFake::call_via(&proxy.endpoint, "GET", &api_path("global/instanceTemplates"), None);
            match status {
                200 => assert_eq!(out["kind"], "compute#instanceTemplateList", "{out:#}"),
                429 => {
                    assert_eq!(out["error"]["status"], "RESOURCE_EXHAUSTED", "{out:#}");
                    assert_eq!(out["error"]["errors"][0]["reason"], "rateLimitExceeded", "{out:#}");
                }
                503 => assert_eq!(out["error"]["status"], "UNAVAILABLE", "{out:#}"),
                other => panic!("unexpected {other}: {out:#}"),
            }
        }
        let requests = proxy.requests();
        assert!(requests.iter().all(|r| r.service == "compute" && r.action.starts_with("GET /compute/v1/")));
        assert_eq!(proxy.faults() + proxy.forwarded(), 24);
        assert!(proxy.faults() >= 4 && proxy.forwarded() >= 4, "{requests:?}");
        requests.iter().map(|r| r.outcome).collect()
    };
    let first = run(7);
    assert_eq!(first, run(7), "the same seed faults the same requests");
    assert!(first.contains(&Outcome::Throttled) && first.contains(&Outcome::InternalError));
}

#[test]
fn a_missing_venv_or_discovery_document_fails_loudly() {
    let err = GcpFake::start_with(Path::new("/nonexistent/.venv-gcp/bin/python"), &[]).err().expect("an error");
    assert!(err.contains("scripts/gcp-venv.sh"), "{err}");
    let python = common::gcp::python_path();
    let err = GcpFake::start_with(&python, &["--discovery", "/nonexistent/compute.v1.json"]).err().expect("an error");
    assert!(err.contains("discovery document is missing"), "{err}");
}
