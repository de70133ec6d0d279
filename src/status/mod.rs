//! Status write-back: what the agent observes, written to a status branch of the ledger repository
//! (default `stele/status`) as one file per environment, `status/<env>.json`, and read back by
//! `stele status` and `stele audit`.
//!
//! Owns: the status file format ([`EnvStatus`], this file); reading status refs back ([`read`]);
//! judging each observation against the verified ledger ([`verify`]); which
//! changes are worth a commit ([`quiet`]); building status commits and moving the branch with a
//! compare-and-swap ([`writer`]); publishing off the agent's convergence path, with bounded,
//! jittered retries ([`publisher`]).
//!
//! Must not touch: the ledger branch or its documents. It never reads them and never judges them;
//! the agent hands it what it verified. It never overwrites another environment's file, never
//! overwrites a file it cannot parse, never force-pushes, and never moves the branch a work tree has
//! checked out.
//!
//! **Write policy** (issue 11): a commit is made only when something an auditor cares about changes
//! (see [`quiet`]: phase, generations, target and running release, the instance set and each
//! instance's health and drift, the gate verdict or stall reason in the message, the last error),
//! never for countdowns. Each such change of an environment is its own commit, so the branch's
//! history is the environment's audit trail; a writer with several changes queued offers them as one
//! chain of commits in one push.

pub mod publisher;
pub mod quiet;
pub mod read;
pub mod verify;
pub mod writer;

pub use publisher::{PublisherStats, StatusPublisher};
pub use read::{
    history, open_repository, read_all, read_history, read_tips, status_refs, Candidate, STATUS_REFS, STATUS_REFSPEC,
};
pub(crate) use read::{read_env_file, status_dir};
pub use verify::{judge, newest_per_env, Judged, Label, LedgerIndex, Trust};
pub use writer::{Published, StatusKey, StatusWriter, WriterStats};

use ledger_format::document::Document;
use ledger_format::types::{EnvName, GroupName, LedgerId, Observation, ReleaseVersion, StatusType};
use ledger_format::{Blake3Digest, SecretKey, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The version of the status file format; a reader refuses any other.
pub const FORMAT: u32 = 1;
/// The directory holding one file per environment.
pub const STATUS_DIR: &str = "status";

/// Where a rollout stands, as the agent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum Phase {
    /// Instances are being replaced towards the target.
    Progressing,
    /// Every instance runs the target and passes its health check.
    Healthy,
    /// The target failed (for example its health gate) and the instances run something else.
    Degraded,
    /// The agent cannot proceed until a human acts (for example a ledger that does not verify).
    Stalled,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "Progressing",
            Phase::Healthy => "Healthy",
            Phase::Degraded => "Degraded",
            Phase::Stalled => "Stalled",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A release as the status file names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetStatus {
    pub version: ReleaseVersion,
    pub seq: u64,
    pub blake3: Blake3Digest,
}

/// One instance as the provider reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceStatus {
    pub id: String,
    pub group: GroupName,
    pub generation: u64,
    pub blake3: Blake3Digest,
    /// `healthy`, `starting`, `unhealthy: <why>` or `gone: <why>`.
    pub health: String,
    /// When `health` last changed.
    pub since: Timestamp,
    /// How the instance differs from what was asked of it, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
}

/// The content of `status/<env>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvStatus {
    pub format: u32,
    pub env: EnvName,
    pub ledger: LedgerId,
    /// The verified ledger commit the agent acts on.
    pub ledger_commit: String,
    pub target_generation: u64,
    /// The generation the instances fully run (reached when the phase is Healthy).
    pub observed_generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetStatus>,
    /// What the instances actually run now (for example the previous release while Degraded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<TargetStatus>,
    pub phase: Phase,
    pub message: String,
    pub instances: Vec<InstanceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Which agent wrote this (host name and state directory, chosen by the agent).
    pub agent: String,
    /// When this content last changed; not a heartbeat.
    pub updated_at: Timestamp,
    /// Set while an operator has suspended convergence of this environment (`stele suspend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<Suspension>,
}

/// An operator's freeze of one environment's convergence: the agent observes and reports, and acts on
/// nothing, until `stele resume`. Kept in the agent's state directory, not in the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suspension {
    pub reason: String,
    /// Who suspended it (the user name `stele suspend` ran as).
    pub by: String,
    pub since: Timestamp,
}

impl EnvStatus {
    /// Whether `other` says the same thing, ignoring when it was said.
    pub fn same_content(&self, other: &EnvStatus) -> bool {
        *self == EnvStatus { updated_at: self.updated_at, ..other.clone() }
    }

    /// Whether `other` says the same thing to an auditor: nothing but when it was said and ticking
    /// text (countdowns) differ. See [`quiet`].
    pub fn same_for_audit(&self, other: &EnvStatus) -> bool {
        quiet::same_for_audit(self, other)
    }
}

/// The path of an environment's file on the status branch.
pub fn status_path(env: &EnvName) -> String {
    format!("{STATUS_DIR}/{env}.json")
}

/// The file bytes of `status`: pretty JSON, fields in declaration order, and a final newline.
pub fn render(status: &EnvStatus) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(status).expect("a status serializes: its maps have string keys");
    bytes.push(b'\n');
    bytes
}

/// Parses a status file, signed or not, refusing unknown fields and any format but [`FORMAT`]. Says
/// nothing about who wrote it: see [`decode`] and `ledger_format::observation` for that.
pub fn parse(bytes: &[u8]) -> Result<EnvStatus, String> {
    decode(bytes).map(|file| file.status)
}

/// A status file as read: the agent's report and, when the file is a signed status document (SPEC.md
/// §6.5), that document. Whether the signature is one the ledger authorises is judged separately
/// (`ledger_format::observation::verify_observation`), against the policy at the ledger commit.
#[derive(Clone, Debug)]
pub struct StatusFile {
    pub status: EnvStatus,
    pub signed: Option<Document<Observation>>,
}

/// Parses a status file: a signed `stele.status/v1` document whose `report` is the status, or (from
/// agents without a key, and before revision 4) the bare status object. The document's own `env`,
/// `ledger` and `ledger_commit` must say what its report says.
pub fn decode(bytes: &[u8]) -> Result<StatusFile, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let (report, signed) = if value.get("payload").is_some() {
        let doc = Document::<Observation>::parse(bytes).map_err(|e| format!("signed status document: {e}"))?;
        (serde_json::Value::Object(doc.payload.report.clone()), Some(doc))
    } else {
        (value, None)
    };
    let status: EnvStatus = serde_json::from_value(report).map_err(|e| e.to_string())?;
    if status.format != FORMAT {
        return Err(format!("format {} is not the supported format {FORMAT}", status.format));
    }
    if let Some(doc) = &signed {
        let o = &doc.payload;
        if o.env != status.env || o.ledger != status.ledger || o.ledger_commit.as_str() != status.ledger_commit {
            return Err("the signed document's env, ledger or ledger_commit differ from its report's".into());
        }
    }
    Ok(StatusFile { status, signed })
}

/// The file bytes of `status` signed by the agent's `key`: a `stele.status/v1` document in canonical
/// file form (SPEC.md §6.5) whose `report` is the status object.
pub fn render_signed(status: &EnvStatus, key: &SecretKey) -> Result<Vec<u8>, String> {
    let serde_json::Value::Object(report) = serde_json::to_value(status).map_err(|e| e.to_string())? else {
        unreachable!("a status serializes to an object")
    };
    let observation = Observation {
        payload_type: StatusType,
        ledger: status.ledger.clone(),
        env: status.env.clone(),
        ledger_commit: status.ledger_commit.parse().map_err(|e| format!("ledger_commit: {e}"))?,
        report,
    };
    let mut doc = Document::new(observation);
    doc.sign(key);
    let bytes = doc.to_file_bytes();
    // The report must survive the strict parse a reader makes (no floats, no nulls, no huge numbers).
    Document::<Observation>::parse(&bytes).map_err(|e| format!("the status is not a valid document: {e}"))?;
    Ok(bytes)
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The remote could not be reached or rejected the push for a reason other than a race: retry
    /// later.
    #[error("{url}: cannot publish status: {reason}")]
    Network { url: String, reason: String },
    /// The branch moved under us on every attempt: other writers keep winning. Retry later.
    #[error("{location}: branch {branch} kept moving; gave up after {attempts} attempts")]
    Contended { location: String, branch: String, attempts: u32 },
    #[error("{location}: {context}: {source}")]
    Git { location: String, context: String, source: git2::Error },
    /// The branch holds a file that is not a status file we can read. It is never overwritten
    /// blindly: a human must look at it.
    #[error("{file} at commit {commit} of the status branch is not a readable status file: {reason}")]
    Corrupt { file: String, commit: String, reason: String },
    /// The request itself is unsafe or invalid, such as writing to the branch a work tree has
    /// checked out: a human must change the configuration.
    #[error("{location}: {reason}")]
    Refused { location: String, reason: String },
}

impl StatusError {
    /// Whether waiting and trying again may help (as opposed to a human having to act).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StatusError::Network { .. } | StatusError::Contended { .. })
    }
}

pub(crate) fn git_err<'a>(location: &'a str, context: &'a str) -> impl FnOnce(git2::Error) -> StatusError + 'a {
    move |source| StatusError::Git { location: location.to_owned(), context: context.to_owned(), source }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> EnvStatus {
        EnvStatus {
            format: FORMAT,
            env: "staging".parse().unwrap(),
            ledger: "acme".parse().unwrap(),
            ledger_commit: "0".repeat(40),
            target_generation: 3,
            observed_generation: 2,
            target: Some(TargetStatus { version: "2.0.0".parse().unwrap(), seq: 4, blake3: Blake3Digest([7; 32]) }),
            running: None,
            phase: Phase::Progressing,
            message: "replacing 1 of 3".into(),
            instances: vec![InstanceStatus {
                id: "i-1".into(),
                group: "web".parse().unwrap(),
                generation: 3,
                blake3: Blake3Digest([7; 32]),
                health: "starting".into(),
                since: "2026-01-01T00:00:00Z".parse().unwrap(),
                drift: None,
            }],
            last_error: None,
            agent: "host:/var/lib/stele".into(),
            updated_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            suspended: None,
        }
    }

    /// `env` Healthy at generation 3 (release 2.0.0), one healthy instance.
    pub(crate) fn healthy(env: &str) -> EnvStatus {
        let target = TargetStatus { version: "2.0.0".parse().unwrap(), seq: 2, blake3: Blake3Digest([0xab; 32]) };
        EnvStatus {
            format: FORMAT,
            env: env.parse().unwrap(),
            ledger: "acme".parse().unwrap(),
            ledger_commit: "c".repeat(40),
            target_generation: 3,
            observed_generation: 3,
            target: Some(target.clone()),
            running: Some(target),
            phase: Phase::Healthy,
            message: String::new(),
            instances: vec![InstanceStatus {
                id: "web-1".into(),
                group: "web".parse().unwrap(),
                generation: 3,
                blake3: Blake3Digest([0xab; 32]),
                health: "healthy".into(),
                since: "2026-01-01T00:00:00Z".parse().unwrap(),
                drift: None,
            }],
            last_error: None,
            agent: "host:/state".into(),
            updated_at: "2026-01-02T00:00:00Z".parse().unwrap(),
            suspended: None,
        }
    }

    #[test]
    fn a_status_file_round_trips_in_declaration_order_with_a_final_newline() {
        let bytes = render(&sample());
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.ends_with("}\n"));
        let order =
            ["\"format\"", "\"env\"", "\"ledger\"", "\"ledger_commit\"", "\"observed_generation\"", "\"updated_at\""];
        let positions: Vec<usize> = order.iter().map(|k| text.find(k).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(text.contains("\"phase\": \"Progressing\""));
        assert_eq!(parse(&bytes).unwrap(), sample());
    }
    #[test]
    fn unknown_fields_and_other_formats_are_refused() {
        let mut value: serde_json::Value = serde_json::from_slice(&render(&sample())).unwrap();
        value["extra"] = 1.into();
        assert!(parse(value.to_string().as_bytes()).unwrap_err().contains("extra"));
        let mut value: serde_json::Value = serde_json::from_slice(&render(&sample())).unwrap();
        value["format"] = 2.into();
        assert!(parse(value.to_string().as_bytes()).unwrap_err().contains("format 2"));
        let mut value: serde_json::Value = serde_json::from_slice(&render(&sample())).unwrap();
        value["instances"][0]["extra"] = true.into();
        assert!(parse(value.to_string().as_bytes()).is_err());
    }
    #[test]
    fn a_signed_status_decodes_to_the_same_status_and_its_document() {
        let key = SecretKey::from_seed(&[9; 32]);
        let bytes = render_signed(&sample(), &key).unwrap();
        let file = decode(&bytes).unwrap();
        assert_eq!(file.status, sample());
        let doc = file.signed.expect("signed");
        assert_eq!(doc.signatures.len(), 1);
        assert_eq!(doc.signatures[0].keyid, key.public_key().key_id());
        assert_eq!(parse(&bytes).unwrap(), sample());
        // A report that disagrees with its document is refused.
        let text = String::from_utf8(bytes).unwrap().replacen("\"env\": \"staging\"", "\"env\": \"prod\"", 1);
        assert!(decode(text.as_bytes()).is_err());
    }
    #[test]
    fn same_content_ignores_only_updated_at() {
        let a = sample();
        let mut b = sample();
        b.updated_at = "2027-01-01T00:00:00Z".parse().unwrap();
        assert!(a.same_content(&b));
        b.instances[0].health = "healthy".into();
        assert!(!a.same_content(&b));
    }
}
