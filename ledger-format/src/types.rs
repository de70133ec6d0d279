//! The payload schemas of the three document kinds (SPEC.md §6) and the small validated names they
//! use. A value of these types can only hold what the spec allows: parsing is validation.
//!
//! Owns: field names, field types and per-field limits. Must not verify signatures or read files.

use crate::crypto::{Blake3Digest, KeyId, PublicKey};
use crate::time::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A string newtype whose every value matched `$valid` on the way in.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $what:literal, $valid:expr, $rule:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let valid: fn(&str) -> bool = $valid;
                if valid(s) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(format!("{} {:?} is invalid: {}", $what, s, $rule))
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

fn is_slug(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

checked_string!(
    /// An environment name; also a directory and file name in the repository, hence the tight rule.
    EnvName, "environment name", |s| is_slug(s, 63),
    "use 1-63 of a-z 0-9 '-', starting with a letter and not ending with '-'"
);
checked_string!(
    /// An instance group name within an environment.
    GroupName, "group name", |s| is_slug(s, 63),
    "use 1-63 of a-z 0-9 '-', starting with a letter and not ending with '-'"
);
checked_string!(
    /// The ledger's identity, bound into every signed payload so signatures cannot be replayed
    /// into another ledger (SPEC.md §4.2).
    LedgerId, "ledger id",
    |s| !s.is_empty() && s.len() <= 128 && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.' | b'_')),
    "use 1-128 of a-z 0-9 '-' '.' '_', starting with a letter or digit"
);
checked_string!(
    /// A release version label such as `1.4.2` or `2026.11.22-rc1`.
    ReleaseVersion, "release version",
    |s| !s.is_empty() && s.len() <= 64 && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b'+')),
    "use 1-64 of A-Z a-z 0-9 '.' '-' '_' '+', starting with a letter or digit"
);
checked_string!(
    /// A human-readable key name (who holds the key), shown in verification output and audits.
    KeyName, "key name",
    |s| !s.is_empty() && s.len() <= 64 && s.bytes().all(|c| c.is_ascii_graphic() || c == b' ')
        && !s.starts_with(' ') && !s.ends_with(' '),
    "use 1-64 printable ASCII characters without leading or trailing spaces"
);
checked_string!(
    /// Where an artifact can be fetched: `file:///` (absolute path), `http://` or `https://` (SPEC.md §6.3).
    ArtifactUri, "artifact uri",
    |s| s.len() <= 2048
        && ["file:///", "http://", "https://"].iter().any(|p| s.starts_with(p) && s.len() > p.len())
        && s.bytes().all(|c| c.is_ascii_graphic()),
    "use a file:///, http:// or https:// URL of at most 2048 printable ASCII characters without spaces"
);
checked_string!(
    /// A provider's machine image id, such as an AMI id.
    MachineImageId, "machine image id",
    |s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'/')),
    "use 1-128 of A-Z a-z 0-9 '-' '_' '.' ':' '/'"
);
checked_string!(
    /// An HTTP path for health checks.
    HttpPath, "health check path",
    |s| s.starts_with('/') && s.len() <= 256 && s.bytes().all(|c| c.is_ascii_graphic()),
    "use an absolute path of at most 256 printable ASCII characters"
);

checked_string!(
    /// An AWS region such as `eu-west-1`.
    AwsRegion, "aws region",
    |s| (4..=32).contains(&s.len()) && s.as_bytes()[0].is_ascii_lowercase()
        && s.as_bytes()[s.len() - 1].is_ascii_digit()
        && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
    "use a region name such as eu-west-1"
);
checked_string!(
    /// A launch template name.
    AwsName, "aws name",
    |s| (3..=128).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'(' | b')' | b'.' | b'/' | b'_' | b'-')),
    "use 3-128 of A-Z a-z 0-9 ( ) . / _ -"
);
checked_string!(
    /// An AWS resource id such as `subnet-0123abcd` or `vpc-0123abcd`.
    AwsId, "aws resource id",
    |s| s.len() <= 64 && s.split_once('-').is_some_and(|(kind, hex)| !kind.is_empty()
        && kind.bytes().all(|c| c.is_ascii_lowercase()) && !hex.is_empty()
        && hex.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())),
    "use an id such as subnet-0123abcd (lowercase kind, '-', lowercase hex)"
);
checked_string!(
    /// A 12-digit AWS account id.
    AwsAccount, "aws account id",
    |s| s.len() == 12 && s.bytes().all(|c| c.is_ascii_digit()),
    "use the 12-digit account id"
);
checked_string!(
    /// An Amazon Resource Name.
    AwsArn, "aws arn",
    |s| s.starts_with("arn:") && s.len() <= 2048 && s.bytes().all(|c| c.is_ascii_graphic()),
    "use an ARN (arn:partition:service:region:account:resource)"
);

checked_string!(
    /// A Google Cloud project id such as `acme-prod`: 6-30 characters (GCP's rule).
    GcpProject, "gcp project id",
    |s| (6..=30).contains(&s.len()) && is_slug(s, 30),
    "use 6-30 of a-z 0-9 '-', starting with a letter and not ending with '-'"
);
checked_string!(
    /// A Google Cloud region such as `europe-west1`.
    GcpRegion, "gcp region",
    |s| is_slug(s, 63) && s.as_bytes()[s.len() - 1].is_ascii_digit(),
    "use a region name such as europe-west1 (1-63 of a-z 0-9 '-', starting with a letter, ending in a digit)"
);
checked_string!(
    /// A Compute Engine resource name (RFC 1035): instance templates, backend services, URL maps,
    /// health checks.
    GcpName, "gcp resource name", |s| is_slug(s, 63),
    "use 1-63 of a-z 0-9 '-', starting with a letter and not ending with '-' (RFC 1035)"
);

/// A payload kind's `type` member: a unit value that only deserializes from its one spelling.
macro_rules! type_tag {
    ($name:ident, $value:literal) => {
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name;

        impl $name {
            pub const VALUE: &'static str = $value;
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($value)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                if s == $value {
                    Ok($name)
                } else {
                    Err(serde::de::Error::custom(format!("type is {s:?}, expected {:?}", $value)))
                }
            }
        }
    };
}

type_tag!(PolicyType, "stele.policy/v1");
type_tag!(EnvironmentType, "stele.environment/v1");
type_tag!(EntryType, "stele.entry/v1");
type_tag!(TimestampType, "stele.timestamp/v1");
type_tag!(StatusType, "stele.status/v1");

checked_string!(
    /// A Git commit id as the ledger's host spells it: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
    CommitId, "commit id",
    |s| (s.len() == 40 || s.len() == 64) && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
    "use the full commit id: 40 or 64 lowercase hex digits"
);

/// The trust policy, `trust/policy.json` (SPEC.md §6.1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(rename = "type")]
    pub payload_type: PolicyType,
    pub ledger: LedgerId,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    pub keys: BTreeMap<KeyId, KeyInfo>,
    pub root: Role,
    pub environments: BTreeMap<EnvName, Role>,
    /// Agent keys and the environments each may report on (revision 4, SPEC.md §6.1). Omitted when
    /// empty: an empty object is a second spelling of "no agents" and is refused (D5).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<KeyId, AgentGrant>,
    /// Who renews the timestamp document and how long one may be valid (revision 4, SPEC.md §6.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<TimestampRole>,
    /// Where entries live (revision 5, SPEC.md §2.3): absent for `ledger/<env>/<seq>.json`, `buckets` for
    /// `ledger/<env>/<seq / 1000>/<seq>.json`. "flat" is spelled by omitting it, so only `buckets` parses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_layout: Option<LedgerLayout>,
}

/// How many entries share a bucket directory in the `buckets` layout.
pub const BUCKET: u64 = 1000;

/// Where entry files live (SPEC.md §2.3): the policy's `ledger_layout` decides for the whole tree.
///
/// `Flat` puts every entry of an environment in one directory, so one Git tree object that each
/// release rewrites and every reader re-reads: reading one environment's history costs O(n²).
/// `Buckets` (revision 5) fans entries out by `seq / 1000`, so a release rewrites a bucket of at most
/// a thousand entries and a directory of `n / 1000` buckets (SPEC.md §2.3.1 has the measurements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Flat,
    Buckets,
}

impl Layout {
    pub fn entry_path(self, env: &EnvName, seq: u64) -> String {
        match self {
            Layout::Flat => format!("ledger/{env}/{seq}.json"),
            Layout::Buckets => format!("ledger/{env}/{}/{seq}.json", seq / BUCKET),
        }
    }

    /// The form of a path that [`crate::tree::classify`] took for an entry.
    pub fn of_entry_path(path: &str) -> Layout {
        if path.bytes().filter(|b| *b == b'/').count() == 3 {
            Layout::Buckets
        } else {
            Layout::Flat
        }
    }

    /// The policy's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Flat => "flat",
            Layout::Buckets => "buckets",
        }
    }
}

/// The one value of a policy's `ledger_layout` (revision 5): entries fanned out into buckets of
/// [`BUCKET`] by sequence number, so no Git tree of the ledger grows past about a thousand
/// entries however long an environment's history is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerLayout {
    Buckets,
}

/// What one agent key may sign: observations of these environments (SPEC.md §6.1, P8).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentGrant {
    pub environments: Vec<EnvName>,
}

/// The timestamp role (SPEC.md §6.4): a role, and the longest validity a timestamp may claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestampRole {
    pub keys: Vec<KeyId>,
    pub threshold: u64,
    /// `expires_at - issued_at` of a timestamp is at most this (P8: 60 to 31,536,000).
    pub max_validity_seconds: u64,
}

impl TimestampRole {
    pub fn role(&self) -> Role {
        Role { keys: self.keys.clone(), threshold: self.threshold }
    }
}

/// The timestamp document, `trust/timestamp.json` (SPEC.md §6.4): the timestamp role vouches that the
/// ledger branch had reached `ledger_commit` at `issued_at`, and that this claim is good until
/// `expires_at`. Renewed every few hours by a low-privilege key; an agent refuses to act on a ledger
/// whose timestamp expired (a frozen mirror) or went back (a replay).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestampDoc {
    #[serde(rename = "type")]
    pub payload_type: TimestampType,
    pub ledger: LedgerId,
    pub version: u64,
    /// The first parent of the commit that writes this document: the head it was renewed on.
    pub ledger_commit: CommitId,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A signed observation, `status/<env>.json` on a status ref (SPEC.md §6.5): an agent's report of one
/// environment as it acted on the verified ledger commit `ledger_commit`. `report` is the agent's
/// status object; this format binds it and does not interpret it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    #[serde(rename = "type")]
    pub payload_type: StatusType,
    pub ledger: LedgerId,
    pub env: EnvName,
    pub ledger_commit: CommitId,
    pub report: serde_json::Map<String, serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyInfo {
    pub name: KeyName,
    pub public_key: PublicKey,
}

/// Who may sign for something, and how many distinct keys must.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub keys: Vec<KeyId>,
    pub threshold: u64,
}

impl Policy {
    /// Where this policy puts entry files (revision 5).
    pub fn layout(&self) -> Layout {
        match self.ledger_layout {
            None => Layout::Flat,
            Some(LedgerLayout::Buckets) => Layout::Buckets,
        }
    }

    /// The role that signs documents of `env` (entries and the environment spec).
    pub fn env_role(&self, env: &EnvName) -> Option<&Role> {
        self.environments.get(env)
    }

    pub fn key_name(&self, id: &KeyId) -> Option<&KeyName> {
        self.keys.get(id).map(|k| &k.name)
    }
}

/// An environment spec, `environments/<env>.json` (SPEC.md §6.2): where and how the environment's
/// target runs. Signed by the environment's role.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    #[serde(rename = "type")]
    pub payload_type: EnvironmentType,
    pub ledger: LedgerId,
    pub name: EnvName,
    pub version: u64,
    pub provider: Provider,
    pub groups: Vec<Group>,
    pub strategy: Strategy,
    pub health: HealthCheck,
    pub drift: DriftMode,
    pub revert: RevertPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instance_age_seconds: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Provider {
    /// Processes on the agent's host, started from the verified image directory.
    Local {},
    /// EC2 Auto Scaling groups launched from launch-template versions pinned to the entry's AMI
    /// (SPEC.md §6.2, revision 2).
    Aws {
        region: AwsRegion,
        /// The operator's launch template (instance type, network, user data); Stele adds one version
        /// per release with only the image changed.
        launch_template: AwsName,
        /// Subnets for groups Stele creates.
        subnets: Vec<AwsId>,
        /// Accounts whose AMIs may run here.
        ami_owners: Vec<AwsAccount>,
        /// Target groups the rolling group is attached to.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        target_groups: Vec<AwsArn>,
        /// The ALB listener whose weighted forward action carries blue/green and canary traffic.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        listener: Option<AwsArn>,
        /// The VPC and port of the per-generation target groups (blue/green, canary).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vpc: Option<AwsId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u64>,
    },
    /// Regional Compute Engine managed instance groups launched from instance templates pinned to the
    /// entry's image (SPEC.md §6.2, revision 6).
    Gcp {
        /// The project every group, template and load-balancing resource of the environment is in.
        project: GcpProject,
        /// The region of the (regional) managed instance groups.
        region: GcpRegion,
        /// The operator's global instance template (machine type, network, service account, metadata);
        /// Stele copies its properties into one new template per release with only the boot image (and
        /// Stele's labels) changed.
        instance_template: GcpName,
        /// Projects whose images may run here.
        image_projects: Vec<GcpProject>,
        /// Global backend services the rolling group is a backend of.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        backend_services: Vec<GcpName>,
        /// The global URL map whose default weighted backend services carry blue/green and canary
        /// traffic between per-generation backend services.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url_map: Option<GcpName>,
        /// The global health check of the per-generation backend services (blue/green, canary).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        health_check: Option<GcpName>,
        /// The serving port: the groups' named port `http` and the backend services' port.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u64>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: GroupName,
    pub capacity: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Strategy {
    Rolling { max_surge: u64, max_unavailable: u64, min_ready_seconds: u64 },
    BlueGreen { grace_seconds: u64 },
    Canary { steps: Vec<CanaryStep> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryStep {
    /// Percentage of traffic sent to the new generation during this step, 1..=100.
    pub weight: u64,
    pub pause_seconds: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum HealthCheck {
    Http { path: HttpPath, interval_ms: u64, timeout_ms: u64, healthy_threshold: u64, deadline_seconds: u64 },
    Tcp { interval_ms: u64, timeout_ms: u64, healthy_threshold: u64, deadline_seconds: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftMode {
    Correct,
    Report,
}

/// What a `git revert` of a promotion may do in this environment (SPEC.md §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevertPolicy {
    Allow,
    Signed,
    Deny,
}

/// A release entry, `ledger/<env>/<seq>.json` (SPEC.md §6.3): "environment E runs image I".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    #[serde(rename = "type")]
    pub payload_type: EntryType,
    pub ledger: LedgerId,
    pub env: EnvName,
    pub seq: u64,
    pub prev: Blake3Digest,
    pub version: ReleaseVersion,
    pub image: Image,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Image {
    /// A file the agent fetches, hashes while streaming, and refuses unless digest and size match.
    Artifact { uri: ArtifactUri, blake3: Blake3Digest, size: u64 },
    /// A provider image (an AMI id) with the digest its bake pipeline recorded.
    MachineImage { id: MachineImageId, blake3: Blake3Digest },
}

impl Image {
    pub fn digest(&self) -> &Blake3Digest {
        match self {
            Image::Artifact { blake3, .. } | Image::MachineImage { blake3, .. } => blake3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_one_tight_rule() {
        for ok in ["a", "prod", "eu-west-1", "a1"] {
            assert!(ok.parse::<EnvName>().is_ok(), "{ok}");
        }
        for bad in ["", "Prod", "1a", "a-", "a_b", "..", "a/b", "é", &"a".repeat(64)] {
            assert!(bad.parse::<EnvName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn artifact_uris_need_a_known_scheme() {
        assert!("file:///srv/app.tar".parse::<ArtifactUri>().is_ok());
        assert!("https://example.com/app.tar".parse::<ArtifactUri>().is_ok());
        for bad in ["/srv/app.tar", "ftp://x/y", "https://", "https://a b"] {
            assert!(bad.parse::<ArtifactUri>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tagged_enums_refuse_unknown_members() {
        let ok = serde_json::json!({"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "min_ready_seconds": 0});
        assert!(serde_json::from_value::<Strategy>(ok).is_ok());
        let extra = serde_json::json!({"kind": "rolling", "max_surge": 1, "max_unavailable": 0, "min_ready_seconds": 0, "x": 1});
        assert!(serde_json::from_value::<Strategy>(extra).is_err());
        let local_extra = serde_json::json!({"kind": "local", "x": 1});
        assert!(serde_json::from_value::<Provider>(local_extra).is_err());
    }
}

#[cfg(test)]
mod aws_tests {
    use super::*;

    #[test]
    fn aws_provider_members_are_validated_and_unknown_ones_refused() {
        let ok = serde_json::json!({
            "kind": "aws", "region": "eu-west-1", "launch_template": "web-base",
            "subnets": ["subnet-0a1b2c"], "ami_owners": ["123456789012"],
            "listener": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/x/1/2",
            "vpc": "vpc-0abc", "port": 8080
        });
        let p: Provider = serde_json::from_value(ok.clone()).expect("valid");
        assert_eq!(serde_json::to_value(&p).expect("renders"), ok);
        for (member, bad) in [
            ("region", serde_json::json!("EU-WEST-1")),
            ("subnets", serde_json::json!(["subnet_0a"])),
            ("ami_owners", serde_json::json!(["12345"])),
            ("listener", serde_json::json!("listener/1")),
            ("vpc", serde_json::json!("vpc-XYZ")),
        ] {
            let mut v = ok.clone();
            v[member] = bad;
            assert!(serde_json::from_value::<Provider>(v).is_err(), "{member}");
        }
        let mut extra = ok;
        extra["endpoint"] = serde_json::json!("http://localhost");
        assert!(serde_json::from_value::<Provider>(extra).is_err(), "unknown members are refused");
    }
}

#[cfg(test)]
mod gcp_tests {
    use super::*;

    #[test]
    fn gcp_provider_members_are_validated_and_unknown_ones_refused() {
        let ok = serde_json::json!({
            "kind": "gcp", "project": "acme-prod", "region": "europe-west1", "instance_template": "web-base",
            "image_projects": ["acme-images"], "backend_services": ["web"], "url_map": "web-map",
            "health_check": "web-hc", "port": 8080
        });
        let p: Provider = serde_json::from_value(ok.clone()).expect("valid");
        assert_eq!(serde_json::to_value(&p).expect("renders"), ok);
        let minimal = serde_json::json!({
            "kind": "gcp", "project": "acme-prod", "region": "us-central1", "instance_template": "t",
            "image_projects": ["acme-images"]
        });
        let p: Provider = serde_json::from_value(minimal.clone()).expect("valid");
        assert_eq!(serde_json::to_value(&p).expect("renders"), minimal, "optional members are omitted");
        for (member, bad) in [
            ("project", serde_json::json!("acme")),
            ("project", serde_json::json!("a-project-id-longer-than-thirty")),
            ("project", serde_json::json!("Acme-prod")),
            ("project", serde_json::json!("acme-prod-")),
            ("region", serde_json::json!("europe-west")),
            ("region", serde_json::json!("EUROPE-WEST1")),
            ("instance_template", serde_json::json!("Web_base")),
            ("instance_template", serde_json::json!("1web")),
            ("instance_template", serde_json::json!("a".repeat(64))),
            ("image_projects", serde_json::json!(["acme"])),
            ("backend_services", serde_json::json!(["web-"])),
            ("url_map", serde_json::json!("projects/acme-prod/global/urlMaps/web")),
            ("health_check", serde_json::json!("")),
        ] {
            let mut v = ok.clone();
            v[member] = bad.clone();
            assert!(serde_json::from_value::<Provider>(v).is_err(), "{member}: {bad}");
        }
        assert!("a".repeat(63).parse::<GcpName>().is_ok());
        assert!("abcdef".parse::<GcpProject>().is_ok() && "a".repeat(30).parse::<GcpProject>().is_ok());
        let mut extra = ok;
        extra["zone"] = serde_json::json!("europe-west1-b");
        assert!(serde_json::from_value::<Provider>(extra).is_err(), "unknown members are refused");
    }
}
