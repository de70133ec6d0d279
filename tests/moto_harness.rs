//! Tests of the AWS test harness itself (tests/common/moto.rs, tests/aws/fixture.py): moto starts, answers and
//! stops; the fixture builds the documented world; the fault proxy faults the configured fraction,
//! deterministically, in each service's own error shape, and an SDK with retries gets every call through it;
//! a missing moto fails loudly. A few tests pin moto's known gaps, so that a moto upgrade that changes them
//! shows up here first.

#[path = "common/moto.rs"]
mod moto;

use moto::{FaultProxy, Moto, Outcome};
use serde_json::Value;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

const DIGESTS: [&str; 3] = [
    "1111111111111111111111111111111111111111111111111111111111111111",
    "2222222222222222222222222222222222222222222222222222222222222222",
    "3333333333333333333333333333333333333333333333333333333333333333",
];

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("no string at {pointer} in {value:#}"))
}

/// A hand-made EC2 `DescribeVpcs` request, signed in form only: moto does not check signatures, and the
/// proxy reads the service from the credential scope.
fn describe_vpcs(endpoint: &str) -> moto::HttpResponse {
    signed_query(endpoint, "ec2", "Action=DescribeVpcs&Version=2016-11-15")
}

fn signed_query(endpoint: &str, service: &str, body: &str) -> moto::HttpResponse {
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, \
         Signature=00"
    );
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),
        ("X-Amz-Date", "20260101T000000Z"),
    ];
    moto::http(endpoint, "POST", "/", &headers, body.as_bytes()).expect("request through the proxy")
}

#[test]
fn moto_starts_answers_and_is_gone_after_drop() {
    let moto = Moto::start();
    assert!(moto.endpoint.starts_with("http://127.0.0.1:"), "{}", moto.endpoint);
    let home = moto::http(&moto.endpoint, "GET", "/moto-api/", &[], b"").expect("GET /moto-api/");
    assert_eq!(home.status, 200);
    let vpcs = describe_vpcs(&moto.endpoint);
    assert_eq!(vpcs.status, 200, "{}", vpcs.text());
    assert!(vpcs.text().contains("<DescribeVpcsResponse"), "{}", vpcs.text());
    assert!(moto.log().contains("/moto-api/"), "moto's request log is captured:\n{}", moto.log());

    let env = moto.env();
    let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    assert_eq!(get("AWS_ENDPOINT_URL"), Some(moto.endpoint.as_str()));
    assert_eq!(get("AWS_ACCESS_KEY_ID"), Some("testing"));
    assert_eq!(get("AWS_SECRET_ACCESS_KEY"), Some("testing"));
    assert_eq!(get("AWS_REGION"), Some("us-east-1"));
    assert_eq!(get("AWS_DEFAULT_REGION"), Some("us-east-1"));
    assert_eq!(get("AWS_EC2_METADATA_DISABLED"), Some("true"));

    let port = moto.port;
    drop(moto);
    assert!(
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).is_err(),
        "moto still listens on {port} after drop"
    );
}

#[test]
fn each_moto_is_its_own_world() {
    let (a, b) = (Moto::start(), Moto::start());
    assert_ne!(a.port, b.port);
    let world = a.setup(&DIGESTS);
    assert_eq!(a.fixture(&["images"]).as_array().map(Vec::len), Some(5), "{world:#}");
    assert_eq!(b.fixture(&["images"]), Value::Array(vec![]), "a second moto sees none of the first's images");
    a.reset();
    assert_eq!(a.fixture(&["images"]), Value::Array(vec![]), "reset forgets everything");
}

#[test]
fn fixture_setup_builds_the_documented_world() {
    let moto = Moto::start();
    let world = moto.setup(&DIGESTS);
    for key in [
        "vpc",
        "subnets",
        "security_group",
        "listener_arn",
        "target_group_arns",
        "load_balancer_arn",
        "launch_template",
        "amis",
        "owner",
        "base_ami",
        "region",
        "wrong_digest",
    ] {
        assert!(world.get(key).is_some(), "setup output lacks {key}: {world:#}");
    }
    assert!(str_at(&world, "/vpc").starts_with("vpc-"));
    assert_eq!(world["subnets"].as_array().map(Vec::len), Some(2), "{world:#}");
    assert!(str_at(&world, "/security_group").starts_with("sg-"));
    assert_eq!(str_at(&world, "/owner"), moto::ACCOUNT_ID);
    assert_eq!(str_at(&world, "/launch_template"), "web-base");
    let base_tg = str_at(&world, "/target_group_arns/0");
    assert!(base_tg.contains(":targetgroup/stele-base/"), "{base_tg}");

    // Every AMI exists, is distinct, and carries exactly the digest tag it should.
    let images = moto.fixture(&["images"]);
    let tag_of = |ami: &str| -> Option<String> {
        let image = images.as_array().and_then(|list| list.iter().find(|i| i["id"] == ami));
        let image = image.unwrap_or_else(|| panic!("{ami} not among the images: {images:#}"));
        assert_eq!(image["state"], "available");
        image["tags"].get("stele:blake3").and_then(Value::as_str).map(str::to_string)
    };
    let mut ids = Vec::new();
    for (i, digest) in DIGESTS.iter().enumerate() {
        let ami = str_at(&world, &format!("/amis/{}", i + 1));
        assert_eq!(tag_of(ami).as_deref(), Some(*digest), "AMI app-{}", i + 1);
        ids.push(ami.to_string());
    }
    assert_eq!(tag_of(str_at(&world, "/amis/untagged")), None);
    let wrong = tag_of(str_at(&world, "/amis/wrong")).expect("the wrong AMI has a digest tag");
    assert_eq!(wrong, str_at(&world, "/wrong_digest"));
    assert!(!DIGESTS.contains(&wrong.as_str()));
    ids.extend(["untagged", "wrong"].map(|k| str_at(&world, &format!("/amis/{k}")).to_string()));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "AMI ids are distinct: {world:#}");

    // The listener forwards everything to stele-base; the template has one version on the base image.
    let weights = moto.fixture(&["listener-weights", "--listener", str_at(&world, "/listener_arn")]);
    assert_eq!(weights["target_groups"].as_array().map(Vec::len), Some(1), "{weights:#}");
    assert_eq!(weights["target_groups"][0]["arn"], base_tg);
    assert_eq!(weights["target_groups"][0]["name"], "stele-base");
    assert_eq!(weights["target_groups"][0]["weight"], 1);
    let versions = moto.fixture(&["lt-versions", "--name", "web-base"]);
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(1), "{versions:#}");
    assert_eq!(versions["versions"][0]["image_id"], world["base_ami"]);
    assert_eq!(versions["versions"][0]["instance_type"], "t3.micro");
    assert_eq!(moto.fixture(&["describe-asgs"]), Value::Array(vec![]), "setup creates no group");
}

#[test]
fn fixture_reads_back_groups_weights_and_template_versions() {
    let moto = Moto::start();
    let world = moto.setup(&DIGESTS);
    let app2 = str_at(&world, "/amis/2");
    let made = moto.fixture(&["lt-create-version", "--name", "web-base", "--image-id", app2]);
    assert_eq!(made["version"], 2, "{made:#}");
    let group = moto.fixture(&[
        "create-asg",
        "--name",
        "web-g2",
        "--subnet",
        str_at(&world, "/subnets/0"),
        "--lt",
        "web-base",
        "--lt-version",
        "2",
        "--desired",
        "2",
        "--tag",
        "stele:generation=2",
    ]);
    assert_eq!(group["name"], "web-g2");
    assert_eq!((group["min"].as_u64(), group["max"].as_u64(), group["desired"].as_u64()), (Some(0), Some(4), Some(2)));
    assert_eq!(group["launch_template"]["name"], "web-base");
    assert_eq!(group["launch_template"]["version"], "2");
    assert_eq!(group["tags"][0]["key"], "stele:generation");
    let instances = group["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 2, "{group:#}");
    for instance in instances {
        assert_eq!(instance["lifecycle"], "InService");
        assert_eq!(instance["health"], "Healthy");
        assert_eq!(instance["state"], "running");
        assert_eq!(instance["image_id"], app2, "EC2 reports the image of the version the group launches");
        assert_eq!(instance["instance_type"], "t3.micro");
        assert_eq!(instance["tags"]["stele:generation"], "2", "group tags propagate at launch");
        assert_eq!(instance["tags"]["aws:autoscaling:groupName"], "web-g2");
    }
    let versions = moto.fixture(&["lt-versions", "--name", "web-base"]);
    let images: Vec<&Value> =
        versions["versions"].as_array().expect("versions").iter().map(|v| &v["image_id"]).collect();
    assert_eq!(images, [&world["base_ami"], &world["amis"]["2"]]);
    assert_eq!(versions["latest_version"], 2);

    let base_tg = str_at(&world, "/target_group_arns/0").to_string();
    let other_tg = format!("{base_tg}x");
    let listener = str_at(&world, "/listener_arn");
    let set = moto.fixture(&[
        "set-weights",
        "--listener",
        listener,
        "--weight",
        &format!("{base_tg}=90"),
        "--weight",
        &format!("{other_tg}=10"),
    ]);
    assert_eq!(set["form"], "forward_config");
    let pairs: Vec<(&str, u64)> = set["target_groups"]
        .as_array()
        .expect("target groups")
        .iter()
        .map(|t| (t["arn"].as_str().expect("arn"), t["weight"].as_u64().expect("weight")))
        .collect();
    assert_eq!(pairs, [(base_tg.as_str(), 90), (other_tg.as_str(), 10)]);
    assert_eq!(set["target_groups"][1]["name"], Value::Null, "an unknown group has no name");
}

/// Pins what moto gets wrong or leaves out, so that the provider's tests do not rely on it and a moto upgrade
/// that changes it is noticed. Each assertion names the real AWS behaviour it differs from.
#[test]
fn moto_gaps_the_aws_provider_tests_must_live_with() {
    let moto = Moto::start();
    let world = moto.setup(&DIGESTS);
    let subnet = str_at(&world, "/subnets/0");
    let base_tg = str_at(&world, "/target_group_arns/0");
    moto.fixture(&["lt-create-version", "--name", "web-base", "--image-id", str_at(&world, "/amis/2")]);
    let group = moto.fixture(&[
        "create-asg",
        "--name",
        "web-g2",
        "--subnet",
        subnet,
        "--lt",
        "web-base",
        "--lt-version",
        "2",
        "--desired",
        "2",
        "--target-group",
        base_tg,
    ]);
    // AWS reports the version an instance was launched from; moto reports the template's default version,
    // both in DescribeAutoScalingGroups and in the aws:ec2launchtemplate:version tag. The EC2 ImageId is right.
    for instance in group["instances"].as_array().expect("instances") {
        assert_eq!(instance["launch_template_version"], "1", "{instance:#}");
        assert_eq!(instance["tags"]["aws:ec2launchtemplate:version"], "1", "{instance:#}");
        assert_eq!(instance["image_id"], world["amis"]["2"]);
    }
    // AWS shows a plain forward as a one-group ForwardConfig too; moto only echoes TargetGroupArn.
    let weights = moto.fixture(&["listener-weights", "--listener", str_at(&world, "/listener_arn")]);
    assert_eq!(weights["form"], "target_group_arn", "{weights:#}");
    // AWS refuses weights outside 0..=999; moto stores them.
    let stored = moto.fixture(&[
        "set-weights",
        "--listener",
        str_at(&world, "/listener_arn"),
        "--weight",
        &format!("{base_tg}=1000"),
    ]);
    assert_eq!(stored["target_groups"][0]["weight"], 1000);
    // TerminateInstanceInAutoScalingGroup with ShouldDecrementDesiredCapacity works as on AWS: the instance
    // terminates and the desired capacity drops, so no replacement is launched.
    let ids: Vec<String> = group["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_string())
        .collect();
    let done = moto.fixture(&["terminate-in-asg", "--instance", &ids[0], "--decrement"]);
    assert_eq!(done["group"], "web-g2", "{done:#}");
    let after = moto.fixture(&["describe-asgs", "--name", "web-g2"]);
    assert_eq!(after[0]["desired"], 1, "{after:#}");
    let left: Vec<&str> =
        after[0]["instances"].as_array().expect("instances").iter().map(|i| str_at(i, "/id")).collect();
    assert_eq!(left, [ids[1].as_str()]);
    // AWS answers a second terminate of the same instance with ValidationError; moto crashes (HTTP 500, an
    // HTML body), which an SDK classifies as retryable.
    let again = moto.try_fixture_via(
        &moto.endpoint,
        &["--max-attempts", "1", "terminate-in-asg", "--instance", &ids[0], "--decrement"],
    );
    let again = again.expect_err("moto refuses the second terminate");
    assert!(again.contains("500 Internal Server Error"), "{again}");
    // Instances that leave through Auto Scaling (terminate-in-asg, scale-in) stay registered and "healthy" in
    // the group's target groups; AWS deregisters and drains them. Only EC2's TerminateInstances drains.
    moto.fixture(&["set-desired", "--name", "web-g2", "--desired", "0"]);
    let health = moto.fixture(&["target-health", "--target-group", base_tg]);
    let listed: Vec<(&str, &str)> =
        health.as_array().expect("health").iter().map(|t| (str_at(t, "/id"), str_at(t, "/state"))).collect();
    let mut expected: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "healthy")).collect();
    expected.sort();
    assert_eq!(listed, expected, "{health:#}");
}

#[test]
fn fault_proxy_faults_the_configured_fraction_deterministically() {
    let moto = Moto::start();
    const REQUESTS: usize = 200;
    let statuses = |seed: u64| -> (Vec<u16>, usize, usize, Vec<moto::ProxiedRequest>) {
        let proxy = FaultProxy::start(&moto.endpoint, 0.3, seed);
        let statuses: Vec<u16> = (0..REQUESTS)
            .map(|_| {
                let response = describe_vpcs(&proxy.endpoint);
                assert_eq!(response.header("connection"), Some("close"), "every response closes its connection");
                response.status
            })
            .collect();
        (statuses, proxy.faults(), proxy.forwarded(), proxy.requests())
    };
    let (first, faults, forwarded, log) = statuses(7);
    assert_eq!(faults + forwarded, REQUESTS);
    // 30% of 200 is 60; the binomial standard deviation is about 6.5.
    assert!((40..=80).contains(&faults), "{faults} faults in {REQUESTS} requests at rate 0.3");
    assert_eq!(first.iter().filter(|&&s| s == 200).count(), forwarded, "forwarded requests reach moto: {first:?}");
    // EC2 faults alternate, throttling first, and come back in EC2's own shapes.
    let fault_statuses: Vec<u16> = first.iter().copied().filter(|&s| s != 200).collect();
    let expected: Vec<u16> = (0..faults).map(|i| if i % 2 == 0 { 503 } else { 500 }).collect();
    assert_eq!(fault_statuses, expected);
    assert!(log.iter().all(|r| r.service == "ec2" && r.action == "DescribeVpcs"), "{log:?}");
    assert_eq!(log.iter().filter(|r| r.outcome == Outcome::Throttled).count(), faults.div_ceil(2));

    let (again, ..) = statuses(7);
    assert_eq!(first, again, "the same seed faults the same requests");
    let (other, ..) = statuses(8);
    assert_ne!(first, other, "another seed faults other requests");
}

#[test]
fn fault_proxy_speaks_each_services_error_shape_and_follows_its_rate() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint, 1.0, 1);

    let throttled = describe_vpcs(&proxy.endpoint);
    assert_eq!(throttled.status, 503);
    assert!(
        throttled.text().contains("<Response><Errors><Error><Code>RequestLimitExceeded</Code>"),
        "{}",
        throttled.text()
    );
    let internal = describe_vpcs(&proxy.endpoint);
    assert_eq!(internal.status, 500);
    assert!(internal.text().contains("<Code>InternalError</Code>"), "{}", internal.text());

    let groups = "Action=DescribeAutoScalingGroups&Version=2011-01-01";
    let throttled = signed_query(&proxy.endpoint, "autoscaling", groups);
    assert_eq!(throttled.status, 400);
    let body = throttled.text();
    assert!(body.starts_with("<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code>"), "{body}");
    assert!(body.contains("<Message>Rate exceeded</Message>") && body.contains("<RequestId>"), "{body}");
    assert_eq!(throttled.header("content-type"), Some("text/xml"));
    let internal = signed_query(&proxy.endpoint, "autoscaling", groups);
    assert_eq!(internal.status, 500);
    assert!(internal.text().contains("<Type>Receiver</Type><Code>InternalFailure</Code>"), "{}", internal.text());
    assert_eq!((proxy.faults(), proxy.forwarded()), (4, 0));

    proxy.set_fault_rate(0.0);
    let passed = signed_query(&proxy.endpoint, "autoscaling", groups);
    assert_eq!(passed.status, 200, "{}", passed.text());
    assert!(passed.text().contains("<DescribeAutoScalingGroupsResponse"), "{}", passed.text());
    assert_eq!((proxy.faults(), proxy.forwarded()), (4, 1));
    let last = proxy.requests().pop().expect("a logged request");
    assert_eq!((last.service.as_str(), last.action.as_str()), ("autoscaling", "DescribeAutoScalingGroups"));
    assert_eq!(last.outcome, Outcome::Forwarded(200));
}

#[test]
fn boto3_with_retries_gets_every_call_through_the_fault_proxy() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.endpoint, 0.3, 42);
    // botocore's standard retry mode retries both fault kinds; each retry is one more request to the proxy.
    let pinged = moto.fixture_via(&proxy.endpoint, &["--no-backoff", "ping", "--count", "25"]);
    assert_eq!(pinged["calls"], 25);
    assert_eq!(proxy.forwarded(), 25, "each call reached moto exactly once");
    assert!(proxy.faults() > 0, "seed 42 at rate 0.3 faults some of the first requests");
    assert_eq!(pinged["retry_attempts"].as_u64(), Some(proxy.faults() as u64), "every fault was retried");

    // The whole world can be built through faults: EC2, ELBv2 and STS requests all pass the proxy.
    let world = moto.fixture_via(&proxy.endpoint, &["--no-backoff", "setup", "--digest", &format!("1={}", DIGESTS[0])]);
    assert!(str_at(&world, "/amis/1").starts_with("ami-"), "{world:#}");
    let services: std::collections::BTreeSet<String> = proxy.requests().into_iter().map(|r| r.service).collect();
    for service in ["ec2", "elasticloadbalancing", "sts"] {
        assert!(services.contains(service), "{service} requests went through the proxy: {services:?}");
    }
    // Without retries the first fault is the caller's error, carrying the service's error code.
    proxy.set_fault_rate(1.0);
    let error = moto.try_fixture_via(&proxy.endpoint, &["--max-attempts", "1", "ping", "--count", "1"]).unwrap_err();
    assert!(error.contains("RequestLimitExceeded") || error.contains("InternalError"), "{error}");
}

/// Run only as a child of `missing_moto_server_fails_loudly`, with STELE_MOTO_SERVER set to a missing path.
#[test]
#[ignore = "run by missing_moto_server_fails_loudly in a child process"]
fn start_moto_in_child_process() {
    if std::env::var_os("STELE_HARNESS_CHILD").is_some() {
        let _moto = Moto::start();
    }
}

#[test]
fn missing_moto_server_fails_loudly() {
    let missing = std::env::temp_dir().join("stele-no-such-dir/moto_server");
    let out = Command::new(std::env::current_exe().expect("test binary path"))
        .args(["--exact", "start_moto_in_child_process", "--ignored", "--nocapture", "--test-threads=1"])
        .env("STELE_MOTO_SERVER", &missing)
        .env("STELE_HARNESS_CHILD", "1")
        .output()
        .expect("run the test binary as a child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "Moto::start must fail, not skip:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 failed"), "the child ran and failed the start test:\n{stdout}");
    assert!(stderr.contains("scripts/moto-venv.sh"), "the message says how to install moto:\n{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "the message names the path it tried:\n{stderr}");
}
