//! Which status changes are worth a commit: the quiet status branch of issue 11.
//!
//! An auditor reads the status branch to learn what ran where and why it changed, so a commit is made
//! when, and only when, one of these differs from what the branch already says of the environment:
//!
//! - the phase (Progressing, Healthy, Degraded, Stalled);
//! - the verified ledger commit acted on, the target and observed generations, the target release
//!   and the release the instances actually run;
//! - the instance set (ids, groups, generations, images) and each instance's health (kind and
//!   reason), when it last changed, and its drift;
//! - the message, which carries the gate verdict (Degraded), the stall reason (Stalled) and where a
//!   rollout stands (the canary step, what it waits for), once its countdowns are masked;
//! - the last error;
//! - the agent that wrote it.
//!
//! Not worth a commit on its own: `updated_at`, and **countdowns** — a whole number of seconds
//! followed by `s more`, which is how the planner writes a wait that ticks down ("canary at 50%,
//! pausing 12s more", "keeping 2 previous instance(s) for 7s more"). When a commit is made for
//! another reason, it carries the current message, countdown included.
//!
//! Pure: no I/O. [`super::writer`] compares against the branch with it, and the agent compares
//! against what it last handed the publisher.

use super::EnvStatus;

/// Whether `a` and `b` say the same thing to an auditor (see the module documentation).
pub fn same_for_audit(a: &EnvStatus, b: &EnvStatus) -> bool {
    audit_view(a) == audit_view(b)
}

/// `status` as an auditor compares it: without `updated_at`, countdowns masked.
fn audit_view(status: &EnvStatus) -> EnvStatus {
    EnvStatus {
        message: mask_countdowns(&status.message),
        last_error: status.last_error.as_deref().map(mask_countdowns),
        updated_at: ledger_format::Timestamp::from_unix(0).expect("the epoch is a timestamp"),
        ..status.clone()
    }
}

/// `text` with every countdown (`<digits>s more`) written `…s more`.
pub fn mask_countdowns(text: &str) -> String {
    const TAIL: &str = "s more";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(digit) = rest.find(|c: char| c.is_ascii_digit()) {
        let run = rest[digit..].find(|c: char| !c.is_ascii_digit()).map_or(rest.len(), |n| digit + n);
        // A countdown is a whole number: not the tail of a word or of a longer number ("v2s more").
        let whole = !rest[..digit].ends_with(|c: char| c.is_alphanumeric() || c == '.');
        out.push_str(&rest[..digit]);
        if whole && rest[run..].starts_with(TAIL) {
            out.push('…');
        } else {
            out.push_str(&rest[digit..run]);
        }
        rest = &rest[run..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::sample;
    use crate::status::Phase;

    #[test]
    fn countdowns_are_masked_and_other_numbers_kept() {
        let table = [
            ("web: canary at 50%, pausing 12s more", "web: canary at 50%, pausing …s more"),
            ("web: canary at 50%, pausing 1s more", "web: canary at 50%, pausing …s more"),
            ("web: keeping 2 previous instance(s) for 7s more", "web: keeping 2 previous instance(s) for …s more"),
            (
                "a: canary at 25%, pausing 3s more; b: keeping 1 previous instance(s) for 10s more",
                "a: canary at 25%, pausing …s more; b: keeping 1 previous instance(s) for …s more",
            ),
            (
                "web: 1 of 2 new instance(s) healthy before 100% of traffic",
                "web: 1 of 2 new instance(s) healthy before 100% of traffic",
            ),
            (
                "instance i-1 is not healthy 10s after launch (starting)",
                "instance i-1 is not healthy 10s after launch (starting)",
            ),
            ("v2s more", "v2s more"),
            ("1.5s more", "1.5s more"),
            ("12s moreover", "…s moreover"),
            ("", ""),
            ("ends with a number 42", "ends with a number 42"),
        ];
        for (text, masked) in table {
            assert_eq!(mask_countdowns(text), masked, "{text:?}");
        }
    }

    #[test]
    fn a_countdown_or_a_new_updated_at_alone_is_not_worth_a_commit() {
        let mut a = sample();
        a.message = "web: canary at 50%, pausing 5s more".into();
        let mut b = a.clone();
        b.message = "web: canary at 50%, pausing 4s more".into();
        b.updated_at = "2027-01-01T00:00:00Z".parse().unwrap();
        assert!(same_for_audit(&a, &b));
    }

    /// Each row changes one thing an auditor cares about; each must be worth a commit.
    #[test]
    fn every_change_an_auditor_cares_about_is_worth_a_commit() {
        type Edit = fn(&mut EnvStatus);
        let edits: [(&str, Edit); 12] = [
            ("phase", |s| s.phase = Phase::Healthy),
            ("target generation", |s| s.target_generation += 1),
            ("observed generation", |s| s.observed_generation += 1),
            ("ledger commit", |s| s.ledger_commit = "1".repeat(40)),
            ("running release", |s| s.running = s.target.clone()),
            ("instance added", |s| {
                let mut i = s.instances[0].clone();
                i.id = "i-2".into();
                s.instances.push(i)
            }),
            ("instance gone", |s| s.instances.clear()),
            ("health", |s| s.instances[0].health = "healthy".into()),
            ("health reason", |s| s.instances[0].health = "unhealthy: GET /healthz: status 503".into()),
            ("drift", |s| s.instances[0].drift = Some("bin/app: content changed".into())),
            ("gate step", |s| s.message = "web: canary at 100%, pausing 5s more".into()),
            ("stall reason or error", |s| s.last_error = Some("ledger fetch failed: connection refused".into())),
        ];
        let mut base = sample();
        base.message = "web: canary at 50%, pausing 5s more".into();
        for (what, edit) in edits {
            let mut changed = base.clone();
            edit(&mut changed);
            assert!(!same_for_audit(&base, &changed), "a change of {what} must be committed");
        }
    }
}
