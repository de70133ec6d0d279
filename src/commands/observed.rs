//! The verified ledger history that `stele status` and `stele audit` judge observations against:
//! the ledger branch replayed under a trust anchor (`crate::replay`), indexed by commit with the
//! policy in force after each ([`crate::status::LedgerIndex`]).
//!
//! Owns: reading the policies in force along a replay and the replay `stele status` makes. Must not
//! judge: verdicts come from `replay` (the ledger) and `status::verify` (the observations).

use crate::replay::{replay, Outcome};
use crate::source::{GitSource, LedgerSource};
use crate::status::LedgerIndex;
use anyhow::{Context, Result};
use git2::Repository;
use ledger_format::document::Document;
use ledger_format::history::{Action, TrustAnchor};
use ledger_format::tree::POLICY_PATH;
use ledger_format::types::Policy;
use std::collections::BTreeMap;
use std::path::Path;

/// Every policy in force along the verified steps of `outcome`, by version: the one each genesis or
/// policy-change commit holds.
pub fn policies_along(repo: &Repository, outcome: &Outcome) -> Result<BTreeMap<u64, Policy>> {
    let mut out = BTreeMap::new();
    for report in &outcome.reports {
        if !report.events.iter().any(|e| matches!(e.action, Action::Genesis | Action::PolicyChange)) {
            continue;
        }
        let id: git2::Oid = report.commit.id.parse().with_context(|| format!("commit id {}", report.commit.id))?;
        let bytes = super::audit::blob_at(repo, id, POLICY_PATH)?
            .with_context(|| format!("commit {id} changed {POLICY_PATH} but holds none"))?;
        let doc =
            Document::<Policy>::parse(&bytes).map_err(|e| anyhow::anyhow!("{POLICY_PATH} at commit {id}: {e}"))?;
        out.insert(doc.payload.version, doc.payload);
    }
    Ok(out)
}

/// What observations are judged against: the index of the verified history and a line saying
/// what it is, or why there is none.
pub struct Judging {
    pub index: Option<LedgerIndex>,
    /// `verified against ledger acme at 0123456789ab (trust root pinned)`, or the reason nothing
    /// verifies (`no trust root given ...`).
    pub summary: String,
}

/// Replays the ledger branch `branch` (default: HEAD) of the repository at `repo` under `anchor`
/// (`None`: nothing is verified, "no trust root given"). A ledger that cannot be read or whose
/// genesis is refused leaves every observation unverified, with that reason; it is not an error.
pub fn judging(repo: &Path, branch: Option<&str>, anchor: Option<&TrustAnchor>) -> Judging {
    let Some(anchor) = anchor else {
        return Judging {
            index: None,
            summary: "no trust root given (pin the ledger's genesis with --trust-root or --trust-root-hash, or pass \
                      --trust-genesis-as-found)"
                .into(),
        };
    };
    let why_not = |summary: String| Judging { index: None, summary };
    let Some(location) = repo.to_str() else { return why_not(format!("{}: not UTF-8", repo.display())) };
    let mut source = match GitSource::open(location, branch, repo) {
        Ok(s) => s,
        Err(e) => return why_not(format!("cannot read the ledger: {e}")),
    };
    let head = match source.refresh() {
        Ok(h) => h,
        Err(e) => return why_not(format!("cannot read the ledger branch: {e}")),
    };
    let outcome = match replay(&source, None, head, anchor, &mut |_, _| {}) {
        Ok(o) => o,
        Err(e) => return why_not(format!("cannot replay the ledger: {e}")),
    };
    let Some(verified) = &outcome.verified else {
        let problems: Vec<String> =
            outcome.refusals.iter().flat_map(|r| r.problems.iter().map(ToString::to_string)).collect();
        return why_not(format!(
            "the ledger's genesis does not verify against the trust root: {}",
            problems.join("; ")
        ));
    };
    let ledger = verified.state.policy.payload.ledger.clone();
    let policies = match policies_along(source.repository(), &outcome) {
        Ok(p) => p,
        Err(e) => return why_not(format!("cannot read the ledger's policies: {e:#}")),
    };
    let pinned = !matches!(anchor, TrustAnchor::UnpinnedTrustGenesisAsFound);
    let summary = format!(
        "verified against ledger {ledger} at {} ({}{})",
        &head.to_string()[..12],
        if pinned { "trust root pinned" } else { "trust root NOT PINNED: genesis taken as found" },
        if outcome.refusals.is_empty() {
            String::new()
        } else {
            format!(", {} refused commits", outcome.refusals.len())
        }
    );
    Judging { index: Some(LedgerIndex::new(&outcome.reports, policies)), summary }
}
