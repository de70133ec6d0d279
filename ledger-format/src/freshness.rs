//! The timestamp document (SPEC.md §6.4, §8.9): a low-privilege role vouches, until an expiry, that
//! the ledger branch had reached a commit. An agent that refuses to act on an expired or older
//! timestamp detects a frozen mirror or a replayed branch without trusting the mirror's clock.
//!
//! Owns: the timestamp's tree check (F1), its transition rule (F2) and the rule for whoever acts
//! (F3). Must not read Git or the clock: the commit ids and `now` are handed in.

use crate::check::Check;
use crate::document::{DocError, Document, ForeignSignatures, SignedBy};
use crate::time::Timestamp;
use crate::types::{Policy, TimestampDoc};

/// Path of the timestamp document.
pub const TIMESTAMP_PATH: &str = "trust/timestamp.json";
/// The longest `max_validity_seconds` a policy may give the timestamp role (P8): a year.
pub const MAX_VALIDITY_LIMIT: u64 = 365 * 24 * 3600;
/// The shortest (P8): a minute.
pub const MIN_VALIDITY_LIMIT: u64 = 60;
/// How far in the future a timestamp may claim to have been issued before whoever acts refuses it
/// (F3): clocks of the renewing bot and the agent may differ by this much.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 300;

/// F1: the policy has a timestamp role, the document meets its threshold (signatures by other keys
/// refused), and it claims no longer validity than the role allows.
pub fn check_timestamp(policy: &Policy, doc: &Document<TimestampDoc>) -> Result<SignedBy, DocError> {
    let Some(role) = &policy.timestamp else {
        return Err(DocError::new(Check::F1, "the policy has no timestamp role, so no timestamp is valid"));
    };
    let t = &doc.payload;
    let validity = t.expires_at.unix() - t.issued_at.unix();
    if validity <= 0 {
        return Err(DocError::new(
            Check::F1,
            format!("expires_at {} is not after issued_at {}", t.expires_at, t.issued_at),
        ));
    }
    if validity as u64 > role.max_validity_seconds {
        return Err(DocError::new(
            Check::F1,
            format!(
                "valid for {validity} s ({} to {}), longer than the role's max_validity_seconds {}",
                t.issued_at, t.expires_at, role.max_validity_seconds
            ),
        ));
    }
    doc.check_role(policy, &role.role(), ForeignSignatures::Refuse).map_err(|e| e.caused(Check::F1))
}

/// F2: a timestamp added or changed by a commit whose first parent is `parent` (`None` for a commit
/// without parents) names that parent, and has a higher version than the one it replaces.
pub fn check_renewal(
    previous: Option<&Document<TimestampDoc>>,
    new: &Document<TimestampDoc>,
    parent: Option<&str>,
) -> Result<(), DocError> {
    let t = &new.payload;
    match parent {
        None => {
            return Err(DocError::new(
                Check::F2,
                format!("names commit {}, but its commit has no parent to name", t.ledger_commit),
            ))
        }
        Some(parent) if parent != t.ledger_commit.as_str() => {
            return Err(DocError::new(
                Check::F2,
                format!("names commit {}, but its commit's first parent is {parent}", t.ledger_commit),
            ))
        }
        Some(_) => {}
    }
    if let Some(previous) = previous {
        if t.version <= previous.payload.version {
            return Err(DocError::new(
                Check::F2,
                format!(
                    "version {} does not go above the previous timestamp's {}",
                    t.version, previous.payload.version
                ),
            ));
        }
    }
    Ok(())
}

/// F3, for whoever acts at `now` (SPEC.md §8.9): under a policy with a timestamp role, the verified
/// state holds a timestamp that has not expired, was not issued in the future, and is not older
/// (by version) than `seen`, the highest version this verifier has accepted before.
pub fn check_current(
    policy: &Policy,
    timestamp: Option<&Document<TimestampDoc>>,
    seen: Option<u64>,
    now: Timestamp,
) -> Result<(), DocError> {
    if policy.timestamp.is_none() {
        return Ok(());
    }
    let Some(doc) = timestamp else {
        return Err(DocError::new(
            Check::F3,
            "the policy has a timestamp role, but the ledger holds no timestamp (trust/timestamp.json)",
        ));
    };
    let t = &doc.payload;
    if t.expires_at <= now {
        return Err(DocError::new(
            Check::F3,
            format!(
                "the timestamp (version {}, on commit {}) expired at {}: the ledger or its mirror stopped being renewed",
                t.version, t.ledger_commit, t.expires_at
            ),
        ));
    }
    if t.issued_at.unix() > now.unix() + MAX_CLOCK_SKEW_SECONDS {
        return Err(DocError::new(
            Check::F3,
            format!("the timestamp claims to be issued at {}, in the future of {now}", t.issued_at),
        ));
    }
    if let Some(seen) = seen.filter(|seen| t.version < *seen) {
        return Err(DocError::new(
            Check::F3,
            format!("timestamp version {} is older than version {seen} seen before: a replayed ledger", t.version),
        ));
    }
    Ok(())
}
