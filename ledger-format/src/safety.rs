//! Safety settings of an environment spec and who may weaken them (SPEC.md §8.3.2, check N6).
//!
//! Owns: the order of each safety setting from strict to lax and the comparison of two specs. Must not
//! judge signatures (that is `history`, which asks the root role to approve what this module reports).

use crate::types::{DriftMode, Environment, HealthCheck, RevertPolicy};

/// How strict a revert rule is: `deny` > `signed` > `allow`.
fn revert_rank(r: RevertPolicy) -> u8 {
    match r {
        RevertPolicy::Deny => 2,
        RevertPolicy::Signed => 1,
        RevertPolicy::Allow => 0,
    }
}

/// Whether `new` is at least as strict as `old`: the same kind (and HTTP path), no fewer consecutive
/// passes, and no longer deadline, interval or timeout.
fn health_not_weaker(old: &HealthCheck, new: &HealthCheck) -> bool {
    use HealthCheck::{Http, Tcp};
    let (o, n) = match (old, new) {
        (Http { path: p1, .. }, Http { path: p2, .. }) if p1 != p2 => return false,
        (Http { interval_ms, timeout_ms, healthy_threshold, deadline_seconds, .. }, Http { .. })
        | (Tcp { interval_ms, timeout_ms, healthy_threshold, deadline_seconds }, Tcp { .. }) => {
            ((*interval_ms, *timeout_ms, *healthy_threshold, *deadline_seconds), new)
        }
        _ => return false,
    };
    let (ni, nt, nh, nd) = match n {
        Http { interval_ms, timeout_ms, healthy_threshold, deadline_seconds, .. }
        | Tcp { interval_ms, timeout_ms, healthy_threshold, deadline_seconds } => {
            (*interval_ms, *timeout_ms, *healthy_threshold, *deadline_seconds)
        }
    };
    nh >= o.2 && nd <= o.3 && ni <= o.0 && nt <= o.1
}

/// Every safety setting that `new` weakens relative to `old`, described for a refusal; empty when the
/// change keeps or strengthens them all (then the environment's own role may make it).
pub fn weakenings(old: &Environment, new: &Environment) -> Vec<String> {
    let mut out = Vec::new();
    if revert_rank(new.revert) < revert_rank(old.revert) {
        out.push(format!("revert {} -> {}", revert_name(old.revert), revert_name(new.revert)));
    }
    if old.drift == DriftMode::Correct && new.drift == DriftMode::Report {
        out.push("drift correct -> report".into());
    }
    if !health_not_weaker(&old.health, &new.health) {
        out.push("the health check is less strict".into());
    }
    match (old.max_instance_age_seconds, new.max_instance_age_seconds) {
        (Some(_), None) => out.push("max_instance_age_seconds removed".into()),
        (Some(o), Some(n)) if n > o => out.push(format!("max_instance_age_seconds {o} -> {n}")),
        _ => {}
    }
    out
}

fn revert_name(r: RevertPolicy) -> &'static str {
    match r {
        RevertPolicy::Deny => "deny",
        RevertPolicy::Signed => "signed",
        RevertPolicy::Allow => "allow",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::*;

    fn spec(revert: RevertPolicy, drift: DriftMode, health: HealthCheck, age: Option<u64>) -> Environment {
        Environment {
            payload_type: EnvironmentType,
            ledger: "l".parse().unwrap(),
            name: "prod".parse().unwrap(),
            version: 1,
            provider: Provider::Local {},
            groups: vec![Group { name: "web".parse().unwrap(), capacity: 1 }],
            strategy: Strategy::BlueGreen { grace_seconds: 0 },
            health,
            drift,
            revert,
            max_instance_age_seconds: age,
        }
    }

    fn http(path: &str, interval: u64, timeout: u64, passes: u64, deadline: u64) -> HealthCheck {
        HealthCheck::Http {
            path: path.parse().unwrap(),
            interval_ms: interval,
            timeout_ms: timeout,
            healthy_threshold: passes,
            deadline_seconds: deadline,
        }
    }

    #[test]
    fn each_setting_weakens_only_toward_lax() {
        use DriftMode::*;
        use RevertPolicy::*;
        let base = spec(Signed, Correct, http("/h", 100, 100, 3, 30), Some(3600));
        let same = |f: &dyn Fn(&mut Environment)| {
            let mut s = base.clone();
            f(&mut s);
            weakenings(&base, &s)
        };
        assert!(same(&|_| {}).is_empty());
        assert_eq!(same(&|s| s.revert = Allow), ["revert signed -> allow"]);
        assert!(same(&|s| s.revert = Deny).is_empty());
        assert_eq!(same(&|s| s.drift = Report), ["drift correct -> report"]);
        assert!(same(&|s| s.health = http("/h", 50, 50, 5, 10)).is_empty());
        for weaker in [
            http("/other", 100, 100, 3, 30),
            http("/h", 200, 100, 3, 30),
            http("/h", 100, 200, 3, 30),
            http("/h", 100, 100, 2, 30),
            http("/h", 100, 100, 3, 60),
            HealthCheck::Tcp { interval_ms: 100, timeout_ms: 100, healthy_threshold: 3, deadline_seconds: 30 },
        ] {
            assert_eq!(same(&|s| s.health = weaker.clone()).len(), 1, "{weaker:?}");
        }
        assert_eq!(same(&|s| s.max_instance_age_seconds = None).len(), 1);
        assert_eq!(same(&|s| s.max_instance_age_seconds = Some(7200)).len(), 1);
        assert!(same(&|s| s.max_instance_age_seconds = Some(60)).is_empty());
        let lax = spec(Allow, Report, http("/h", 100, 100, 3, 30), None);
        assert!(weakenings(&lax, &spec(Signed, Correct, http("/h", 100, 100, 3, 30), Some(1))).is_empty());
    }
}
