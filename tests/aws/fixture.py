#!/usr/bin/env python3
"""Builds and reads the AWS world that the `aws` provider tests run against, through boto3 on a moto server.

Run with the interpreter of .venv-moto (scripts/moto-venv.sh); tests/common/moto.rs does that for the tests.
Every subcommand prints one JSON document on stdout. A failed AWS call prints
{"error": {"code", "message", "operation"}} on stderr and exits with 2.

    fixture.py --endpoint URL setup --digest 1=<hex> --digest 2=<hex> --digest 3=<hex>
    fixture.py --endpoint URL describe-asgs [--name NAME ...]
    fixture.py --endpoint URL listener-weights --listener ARN
    fixture.py --endpoint URL lt-versions --name NAME
    fixture.py --endpoint URL target-health --target-group ARN
    fixture.py --endpoint URL images
    fixture.py --endpoint URL ping --count N          (N DescribeVpcs calls; for the fault proxy tests)

and, to set the scene for a test the way an operator or another tool would (not the provider's job):

    fixture.py --endpoint URL lt-create-version --name NAME --image-id AMI   (full data copied from $Default)
    fixture.py --endpoint URL create-asg --name NAME --subnet ID [--subnet ID] --lt NAME --lt-version V
                              --desired N [--min N] [--max N] [--target-group ARN] [--tag KEY=VALUE ...]
    fixture.py --endpoint URL set-weights --listener ARN --weight TG_ARN=W [--weight TG_ARN=W ...]
    fixture.py --endpoint URL set-desired --name NAME --desired N
    fixture.py --endpoint URL terminate-in-asg --instance ID [--decrement]

Credentials are fixed fake ones and the region is us-east-1: nothing here can reach real AWS, because every
client is built with the explicit endpoint.
"""

import argparse
import json
import sys

import boto3
import botocore.config
import botocore.exceptions

REGION = "us-east-1"
# A Linux image from moto's bundled default AMI list (moto/ec2/resources/amis.json.gz); the fixture falls back
# to any default Amazon Linux image if a moto release drops it.
BASE_AMI = "ami-760aaa0f"
DIGEST_TAG = "stele:blake3"
# A well-formed digest that no test ever packs: the "wrong" AMI carries it.
WRONG_DIGEST = "deadbeef" * 8


def clients(args):
    config = botocore.config.Config(retries={"mode": "standard", "max_attempts": args.max_attempts})
    kw = dict(
        endpoint_url=args.endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=config,
    )
    return {name: boto3.client(name, **kw) for name in ("ec2", "autoscaling", "elbv2", "sts")}


def paged(client, operation, key, **kw):
    out = []
    for page in client.get_paginator(operation).paginate(**kw):
        out.extend(page[key])
    return out


def tag_map(tags):
    return {t["Key"]: t["Value"] for t in tags or []}


def parse_digests(pairs):
    digests = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise SystemExit(f"--digest wants KEY=HEX, got {pair!r}")
        if key in digests:
            raise SystemExit(f"--digest {key} given twice")
        if value == WRONG_DIGEST:
            raise SystemExit(f"--digest {key}: that value is reserved for the 'wrong' AMI")
        digests[key] = value
    if not digests:
        raise SystemExit("setup needs at least one --digest KEY=HEX (the tests pass 1, 2 and 3)")
    return digests


def base_image(ec2):
    found = ec2.describe_images(ImageIds=[BASE_AMI])["Images"] if BASE_AMI else []
    if not found:
        found = ec2.describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn*"]}])["Images"]
    if not found:
        raise SystemExit("no default Linux AMI in this moto: set MOTO_EC2_LOAD_DEFAULT_AMIS?")
    return found[0]["ImageId"]


def cmd_setup(c, args):
    digests = parse_digests(args.digest)
    ec2, elb = c["ec2"], c["elbv2"]
    net = args.net  # the first two octets of the VPC's /16
    vpc = ec2.create_vpc(CidrBlock=f"{net}.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"{net}.{i}.0/24", AvailabilityZone=f"{REGION}{az}")["Subnet"][
            "SubnetId"
        ]
        for i, az in ((1, "a"), (2, "b"))
    ]
    sg = ec2.create_security_group(GroupName="stele-web", Description="stele test web", VpcId=vpc)["GroupId"]

    lb = elb.create_load_balancer(Name="stele-web", Subnets=subnets, SecurityGroups=[sg], Type="application")
    lb_arn = lb["LoadBalancers"][0]["LoadBalancerArn"]
    tg = elb.create_target_group(
        Name="stele-base", Protocol="HTTP", Port=8080, VpcId=vpc, TargetType="instance", HealthCheckPath="/healthz"
    )
    tg_arn = tg["TargetGroups"][0]["TargetGroupArn"]
    listener = elb.create_listener(
        LoadBalancerArn=lb_arn, Protocol="HTTP", Port=80, DefaultActions=[{"Type": "forward", "TargetGroupArn": tg_arn}]
    )
    listener_arn = listener["Listeners"][0]["ListenerArn"]

    base = base_image(ec2)
    ec2.create_launch_template(
        LaunchTemplateName="web-base",
        LaunchTemplateData={"ImageId": base, "InstanceType": "t3.micro", "SecurityGroupIds": [sg]},
    )

    # Images are made the way a real pipeline makes them: from a running builder instance.
    builder = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, InstanceType="t3.micro", SubnetId=subnets[0])
    builder_id = builder["Instances"][0]["InstanceId"]
    amis = {}
    for key, digest in sorted(digests.items()):
        ami = ec2.create_image(InstanceId=builder_id, Name=f"app-{key}")["ImageId"]
        ec2.create_tags(Resources=[ami], Tags=[{"Key": DIGEST_TAG, "Value": digest}, {"Key": "Name", "Value": f"app-{key}"}])
        amis[key] = ami
    amis["untagged"] = ec2.create_image(InstanceId=builder_id, Name="app-untagged")["ImageId"]
    amis["wrong"] = ec2.create_image(InstanceId=builder_id, Name="app-wrong")["ImageId"]
    ec2.create_tags(Resources=[amis["wrong"]], Tags=[{"Key": DIGEST_TAG, "Value": WRONG_DIGEST}])
    # The builder is not part of any group; terminate it so that it never looks like a fleet member.
    ec2.terminate_instances(InstanceIds=[builder_id])

    return {
        "region": REGION,
        "vpc": vpc,
        "subnets": subnets,
        "security_group": sg,
        "load_balancer_arn": lb_arn,
        "listener_arn": listener_arn,
        "target_group_arns": [tg_arn],
        "launch_template": "web-base",
        "base_ami": base,
        "amis": amis,
        "wrong_digest": WRONG_DIGEST,
        "owner": c["sts"].get_caller_identity()["Account"],
    }


def cmd_describe_asgs(c, args):
    kw = {"AutoScalingGroupNames": args.name} if args.name else {}
    groups = paged(c["autoscaling"], "describe_auto_scaling_groups", "AutoScalingGroups", **kw)
    ids = [i["InstanceId"] for g in groups for i in g["Instances"]]
    ec2_by_id = {}
    if ids:
        for r in paged(c["ec2"], "describe_instances", "Reservations", InstanceIds=ids):
            for i in r["Instances"]:
                ec2_by_id[i["InstanceId"]] = i
    out = []
    for g in sorted(groups, key=lambda g: g["AutoScalingGroupName"]):
        lt = g.get("LaunchTemplate") or {}
        instances = []
        for i in sorted(g["Instances"], key=lambda i: i["InstanceId"]):
            e = ec2_by_id.get(i["InstanceId"], {})
            instances.append(
                {
                    "id": i["InstanceId"],
                    "lifecycle": i["LifecycleState"],
                    "health": i["HealthStatus"],
                    "availability_zone": i.get("AvailabilityZone"),
                    # moto reports the template's default version here, not the one the instance came from.
                    "launch_template_version": (i.get("LaunchTemplate") or {}).get("Version"),
                    "image_id": e.get("ImageId"),
                    "state": (e.get("State") or {}).get("Name"),
                    "instance_type": e.get("InstanceType"),
                    "tags": tag_map(e.get("Tags")),
                }
            )
        out.append(
            {
                "name": g["AutoScalingGroupName"],
                "min": g["MinSize"],
                "max": g["MaxSize"],
                "desired": g["DesiredCapacity"],
                "launch_template": {"id": lt.get("LaunchTemplateId"), "name": lt.get("LaunchTemplateName"), "version": lt.get("Version")},
                "target_group_arns": g.get("TargetGroupARNs", []),
                "subnets": [s for s in (g.get("VPCZoneIdentifier") or "").split(",") if s],
                "tags": [
                    {"key": t["Key"], "value": t["Value"], "propagate_at_launch": t.get("PropagateAtLaunch", False)}
                    for t in g.get("Tags", [])
                ],
                "instances": instances,
            }
        )
    return out


def cmd_listener_weights(c, args):
    listener = c["elbv2"].describe_listeners(ListenerArns=[args.listener])["Listeners"][0]
    forwards = [a for a in listener["DefaultActions"] if a["Type"] == "forward"]
    if len(forwards) != 1:
        raise SystemExit(f"listener has {len(forwards)} forward default actions, expected 1")
    action = forwards[0]
    if "ForwardConfig" in action:
        form = "forward_config"
        pairs = [(t["TargetGroupArn"], t.get("Weight")) for t in action["ForwardConfig"]["TargetGroups"]]
    else:
        # A plain forward sends everything to one group; real AWS reports it as that group with weight 1.
        form = "target_group_arn"
        pairs = [(action["TargetGroupArn"], 1)]
    names = {}
    for t in paged(c["elbv2"], "describe_target_groups", "TargetGroups"):
        names[t["TargetGroupArn"]] = t["TargetGroupName"]
    return {
        "listener_arn": args.listener,
        "form": form,
        "target_groups": [{"arn": arn, "name": names.get(arn), "weight": weight} for arn, weight in pairs],
    }


def cmd_lt_versions(c, args):
    ec2 = c["ec2"]
    template = ec2.describe_launch_templates(LaunchTemplateNames=[args.name])["LaunchTemplates"][0]
    versions = paged(ec2, "describe_launch_template_versions", "LaunchTemplateVersions", LaunchTemplateName=args.name)
    return {
        "name": args.name,
        "id": template["LaunchTemplateId"],
        "default_version": template["DefaultVersionNumber"],
        "latest_version": template["LatestVersionNumber"],
        "versions": [
            {
                "version": v["VersionNumber"],
                "default": v.get("DefaultVersion", False),
                "image_id": v["LaunchTemplateData"].get("ImageId"),
                "instance_type": v["LaunchTemplateData"].get("InstanceType"),
                "description": v.get("VersionDescription"),
            }
            for v in sorted(versions, key=lambda v: v["VersionNumber"])
        ],
    }


def cmd_target_health(c, args):
    described = c["elbv2"].describe_target_health(TargetGroupArn=args.target_group)["TargetHealthDescriptions"]
    return [
        {"id": d["Target"]["Id"], "port": d["Target"].get("Port"), "state": d["TargetHealth"]["State"]}
        for d in sorted(described, key=lambda d: d["Target"]["Id"])
    ]


def cmd_images(c, args):
    images = c["ec2"].describe_images(Owners=["self"])["Images"]
    return [
        {"id": i["ImageId"], "name": i.get("Name"), "state": i.get("State"), "tags": tag_map(i.get("Tags"))}
        for i in sorted(images, key=lambda i: i.get("Name") or "")
    ]


def cmd_ping(c, args):
    retries = 0
    for _ in range(args.count):
        response = c["ec2"].describe_vpcs()
        retries += response["ResponseMetadata"].get("RetryAttempts", 0)
    return {"calls": args.count, "retry_attempts": retries}


def key_values(pairs, what):
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what} wants KEY=VALUE, got {pair!r}")
        out.append((key, value))
    return out


def cmd_lt_create_version(c, args):
    ec2 = c["ec2"]
    # moto ignores SourceVersion, so the new version gets the default version's data copied explicitly.
    default = ec2.describe_launch_template_versions(LaunchTemplateName=args.name, Versions=["$Default"])
    data = dict(default["LaunchTemplateVersions"][0]["LaunchTemplateData"])
    data["ImageId"] = args.image_id
    created = ec2.create_launch_template_version(LaunchTemplateName=args.name, LaunchTemplateData=data)
    version = created["LaunchTemplateVersion"]
    return {"name": args.name, "version": version["VersionNumber"], "image_id": version["LaunchTemplateData"]["ImageId"]}


def cmd_create_asg(c, args):
    kw = dict(
        AutoScalingGroupName=args.name,
        LaunchTemplate={"LaunchTemplateName": args.lt, "Version": args.lt_version},
        MinSize=args.min,
        MaxSize=args.max if args.max is not None else max(args.desired, 1) * 2,
        DesiredCapacity=args.desired,
        VPCZoneIdentifier=",".join(args.subnet),
        Tags=[
            {"ResourceId": args.name, "ResourceType": "auto-scaling-group", "Key": k, "Value": v, "PropagateAtLaunch": True}
            for k, v in key_values(args.tag, "--tag")
        ],
    )
    if args.target_group:
        kw["TargetGroupARNs"] = args.target_group
    c["autoscaling"].create_auto_scaling_group(**kw)
    args.name = [args.name]
    return cmd_describe_asgs(c, args)[0]


def cmd_set_weights(c, args):
    groups = []
    for pair in args.weight:
        arn, sep, weight = pair.rpartition("=")
        if not sep or not arn:
            raise SystemExit(f"--weight wants TG_ARN=WEIGHT, got {pair!r}")
        groups.append({"TargetGroupArn": arn, "Weight": int(weight)})
    c["elbv2"].modify_listener(
        ListenerArn=args.listener, DefaultActions=[{"Type": "forward", "ForwardConfig": {"TargetGroups": groups}}]
    )
    return cmd_listener_weights(c, args)


def cmd_set_desired(c, args):
    c["autoscaling"].set_desired_capacity(AutoScalingGroupName=args.name, DesiredCapacity=args.desired)
    args.name = [args.name]
    return cmd_describe_asgs(c, args)[0]


def cmd_terminate_in_asg(c, args):
    activity = c["autoscaling"].terminate_instance_in_auto_scaling_group(
        InstanceId=args.instance, ShouldDecrementDesiredCapacity=args.decrement
    )["Activity"]
    return {"activity_id": activity.get("ActivityId"), "status": activity.get("StatusCode"), "group": activity.get("AutoScalingGroupName")}


def no_backoff():
    # The fault-proxy tests only count attempts; botocore's jittered exponential delays would make them slow.
    from botocore.retries import standard

    standard.ExponentialBackoff.delay_amount = lambda self, context: 0.0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", required=True, help="moto (or fault proxy) URL, e.g. http://127.0.0.1:5000")
    p.add_argument("--max-attempts", type=int, default=10, help="botocore standard-mode attempts per call")
    p.add_argument("--no-backoff", action="store_true", help="retry at once (tests of the fault proxy)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--digest", action="append", default=[], metavar="KEY=HEX")
    # moto gives instances private IPs from the subnets: "127.77" puts them on loopback, where a test
    # can answer the agent's own health checks.
    s.add_argument("--net", default="10.42", help="first two octets of the VPC /16 (default 10.42)")
    s = sub.add_parser("describe-asgs")
    s.add_argument("--name", action="append", default=[])
    s = sub.add_parser("listener-weights")
    s.add_argument("--listener", required=True)
    s = sub.add_parser("lt-versions")
    s.add_argument("--name", required=True)
    s = sub.add_parser("target-health")
    s.add_argument("--target-group", required=True)
    sub.add_parser("images")
    s = sub.add_parser("lt-create-version")
    s.add_argument("--name", required=True)
    s.add_argument("--image-id", required=True)
    s = sub.add_parser("create-asg")
    s.add_argument("--name", required=True)
    s.add_argument("--subnet", action="append", required=True)
    s.add_argument("--lt", required=True)
    s.add_argument("--lt-version", required=True)
    s.add_argument("--desired", type=int, required=True)
    s.add_argument("--min", type=int, default=0)
    s.add_argument("--max", type=int)
    s.add_argument("--target-group", action="append", default=[])
    s.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    s = sub.add_parser("set-weights")
    s.add_argument("--listener", required=True)
    s.add_argument("--weight", action="append", required=True, metavar="TG_ARN=WEIGHT")
    s = sub.add_parser("set-desired")
    s.add_argument("--name", required=True)
    s.add_argument("--desired", type=int, required=True)
    s = sub.add_parser("terminate-in-asg")
    s.add_argument("--instance", required=True)
    s.add_argument("--decrement", action="store_true")
    s = sub.add_parser("ping")
    s.add_argument("--count", type=int, required=True)
    args = p.parse_args()

    if args.no_backoff:
        no_backoff()
    commands = {
        "setup": cmd_setup,
        "describe-asgs": cmd_describe_asgs,
        "listener-weights": cmd_listener_weights,
        "lt-versions": cmd_lt_versions,
        "target-health": cmd_target_health,
        "images": cmd_images,
        "ping": cmd_ping,
        "lt-create-version": cmd_lt_create_version,
        "create-asg": cmd_create_asg,
        "set-weights": cmd_set_weights,
        "set-desired": cmd_set_desired,
        "terminate-in-asg": cmd_terminate_in_asg,
    }
    try:
        result = commands[args.command](clients(args), args)
    except botocore.exceptions.ClientError as e:
        error = e.response.get("Error", {})
        json.dump(
            {"error": {"code": error.get("Code"), "message": error.get("Message"), "operation": e.operation_name}},
            sys.stderr,
        )
        sys.stderr.write("\n")
        sys.exit(2)
    json.dump(result, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
