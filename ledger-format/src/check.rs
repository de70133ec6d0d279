//! The numbered verification checks of SPEC.md §7. Every refusal names one, so a message can be looked
//! up in the spec and an independent implementation can match verdicts check by check.
//!
//! Owns: check identifiers and their one-line summaries, and a problem (path, check, reason, cause).
//! Must not contain verification logic.

use serde::Serialize;
use std::fmt;

macro_rules! checks {
    ($($id:ident => $summary:literal,)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        pub enum Check { $($id,)* }

        impl Check {
            pub const ALL: &'static [Check] = &[$(Check::$id,)*];

            /// The identifier used in SPEC.md, messages and test vectors, e.g. `E4`.
            pub fn id(self) -> &'static str {
                match self { $(Check::$id => stringify!($id),)* }
            }

            /// Whether the check judges a transition between trees (SPEC.md §8) rather than one tree.
            pub fn is_history(self) -> bool {
                matches!(
                    self,
                    Check::P5 | Check::P6 | Check::P7 | Check::N5 | Check::N6 | Check::H1 | Check::H2 | Check::H3 | Check::F2
                )
            }

            /// What the check requires, as SPEC.md states it.
            pub fn summary(self) -> &'static str {
                match self { $(Check::$id => $summary,)* }
            }
        }
    };
}

checks! {
    T1 => "every path under trust/, environments/ and ledger/ is a regular file or a directory",
    T2 => "every path under trust/, environments/ and ledger/ is UTF-8 and matches the layout",
    T3 => "trust/policy.json exists",
    D1 => "the document is no larger than its kind allows",
    D2 => "the document is strict JSON",
    D3 => "the document is in canonical file form",
    D4 => "the envelope is exactly {payload, signatures}, signatures sorted and distinct",
    D5 => "the payload matches the schema of the kind its path requires",
    D6 => "the payload names the ledger of the policy",
    S1 => "every signature by a key of the governing role verifies",
    S2 => "every signature is by a key of the governing role",
    S3 => "distinct verified keys meet the role's threshold",
    P1 => "every key id is the key id of its public key",
    P2 => "every role lists known keys once, with 1 <= threshold <= number of keys",
    P3 => "the policy has not expired",
    P4 => "the policy is signed by its root role",
    N1 => "the environment spec is named after its environment, which the policy declares",
    N2 => "every environment the policy declares has a spec",
    N3 => "the environment spec's values are within their ranges",
    N4 => "the environment spec is signed by the environment's role",
    E1 => "entries live under an environment that the policy declares",
    E2 => "the entry's env and seq match its path",
    E3 => "an environment's entries are numbered 1..n without gaps",
    E4 => "prev is the hash of the entry before (zero for seq 1)",
    E5 => "the tip entry is signed by the environment's role; signatures on earlier entries by listed keys verify",
    E6 => "the environment's tip entry has not expired",
    P5 => "a new policy has version = previous version + 1",
    P6 => "a new policy is also signed by the previous root role",
    P7 => "the genesis policy matches the pinned trust root",
    N5 => "a changed environment spec has version = previous version + 1",
    N6 => "a spec change that weakens a safety setting is also signed by the root role",
    H1 => "a new head descends, by first parents, from the last verified commit",
    H2 => "each first-parent step is an allowed transition",
    H3 => "a revert of a target is allowed by the environment's revert policy",
    P8 => "agent keys are listed keys outside every role, for declared environments; the timestamp role's validity is in range",
    F1 => "the timestamp document is signed by the policy's timestamp role and claims no longer validity than it allows",
    F2 => "a new timestamp has a higher version and names the first parent of its commit",
    F3 => "whoever acts holds a current timestamp: present, not expired, not issued in the future, not older than one seen",
    O1 => "the observation is a well-formed status document with exactly one signature",
    O2 => "the observation is signed by an agent key of the policy in force at its ledger commit",
    O3 => "the agent key may report on the observation's environment",
    O4 => "the observation names a verified commit of the ledger branch",
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// One refusal: which file, which check of SPEC.md, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: String,
    pub check: Check,
    pub reason: String,
    /// The signature check (S1-S3) that made a P4, N4, E5 or P6 check fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Check>,
}

impl Problem {
    /// The same problem, with the signature check that caused it.
    pub fn with_cause(self, cause: Option<Check>) -> Self {
        Self { cause, ..self }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.path, self.check, self.reason)
    }
}
