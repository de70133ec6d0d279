//! Signed observations (SPEC.md §6.5, §8.10): what an agent reports about one environment, signed with
//! its own key, and the reader's verdict on it (checks O1-O4). Observations live outside the ledger
//! branch (on status refs) and never change what runs; they are judged so that `status` and `audit`
//! show only what an authorised agent said, and label everything else UNVERIFIED with the reason.
//!
//! Owns: parsing a status file and judging it against the policy in force at the ledger commit it
//! names. Must not read Git: the reader hands in which commits are verified and their policies.

use crate::check::Check;
use crate::crypto::{CryptoError, KeyId};
use crate::document::{display_key, DocError, Document};
use crate::types::{CommitId, EnvName, Observation, Policy};

/// An observation that passed O1-O4: the document and the agent key that signed it.
#[derive(Clone, Debug)]
pub struct VerifiedObservation {
    pub doc: Document<Observation>,
    pub agent: KeyId,
    /// `name (keyid-prefix)` of the agent key in the policy that authorised it.
    pub agent_display: String,
}

/// Judges the bytes of `status/<env>.json` (checks O1-O4, in order). `policy_at` returns the policy
/// in force after the verified ledger commit it is given, or `None` when the reader's verified
/// first-parent history of the ledger branch does not hold that commit.
pub fn verify_observation<'p>(
    bytes: &[u8],
    env: &EnvName,
    policy_at: impl FnOnce(&CommitId) -> Option<&'p Policy>,
) -> Result<VerifiedObservation, DocError> {
    let doc = Document::<Observation>::parse(bytes).map_err(|e| DocError::new(Check::O1, e.to_string()))?;
    let o = &doc.payload;
    if o.env != *env {
        return Err(DocError::new(Check::O1, format!("observation is about environment {}, filed under {env}", o.env)));
    }
    let [signature] = doc.signatures.as_slice() else {
        return Err(DocError::new(
            Check::O1,
            format!("{} signatures; an observation carries exactly one, by its agent", doc.signatures.len()),
        ));
    };
    let Some(policy) = policy_at(&o.ledger_commit) else {
        return Err(DocError::new(
            Check::O4,
            format!("ledger commit {} is not a verified commit of the ledger branch", o.ledger_commit),
        ));
    };
    if o.ledger != policy.ledger {
        return Err(DocError::new(
            Check::O1,
            format!("observation names ledger {}, the policy's ledger is {}", o.ledger, policy.ledger),
        ));
    }
    let (Some(grant), Some(info)) = (policy.agents.get(&signature.keyid), policy.keys.get(&signature.keyid)) else {
        return Err(DocError::new(
            Check::O2,
            format!(
                "signed by key {}, which is not an agent key of the policy (version {}) in force at {}",
                signature.keyid, policy.version, o.ledger_commit
            ),
        ));
    };
    match info.public_key.verify(doc.pae(), &signature.sig.0) {
        Ok(()) => {}
        Err(CryptoError::BadSignature) => {
            return Err(DocError::new(Check::O2, format!("signature by agent {} does not verify", info.name)))
        }
        Err(e) => return Err(DocError::new(Check::O2, format!("agent key {}: {e}", signature.keyid))),
    }
    if !grant.environments.contains(env) {
        return Err(DocError::new(
            Check::O3,
            format!(
                "agent {} may report on {}, not on {env}",
                display_key(policy, &signature.keyid),
                grant.environments.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    let agent = signature.keyid;
    Ok(VerifiedObservation { agent_display: display_key(policy, &agent), agent, doc })
}
