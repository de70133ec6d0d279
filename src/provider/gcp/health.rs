//! GCP's health verdict on one instance: the MIG's current action and health, the instance's status and
//! the backend services' health states.

use crate::plan::Health;
use crate::provider::cloud::{GroupInstance, InstanceView, TargetVerdict};

/// A backend service reports a new instance UNHEALTHY until its first checks pass: within this long of
/// its creation, and until it has been seen healthy once, that is taken as starting.
const HEALTH_GRACE_MS: u64 = 120_000;

/// What an instance's health is, from the MIG's view of it, the instance and the backend services'
/// verdicts; `None`: leaving or gone, not reported. An instance seen healthy before (`was_healthy`) that a
/// backend service reports UNHEALTHY went bad: unhealthy at once, whatever its age.
pub(super) fn judge_health(
    member: &GroupInstance,
    instance: Option<&InstanceView>,
    verdicts: &[TargetVerdict],
    now_ms: u64,
    was_healthy: bool,
) -> Option<Health> {
    if member.leaving {
        return None;
    }
    match member.lifecycle.as_str() {
        "NONE" | "" => {}
        "CREATING" | "CREATING_WITHOUT_RETRIES" | "STARTING" | "VERIFYING" | "REFRESHING" | "RESUMING" => {
            return Some(Health::Starting)
        }
        other => {
            return Some(Health::Unhealthy { since_ms: now_ms, reason: format!("managed instance action {other}") })
        }
    }
    let Some(instance) = instance else { return Some(Health::Starting) };
    match instance.state.as_str() {
        "RUNNING" => {}
        "PROVISIONING" | "STAGING" => return Some(Health::Starting),
        "STOPPING" | "DEPROVISIONING" if member.lifecycle == "NONE" => {
            return Some(Health::Unhealthy { since_ms: now_ms, reason: format!("instance {}", instance.state) })
        }
        other => return Some(Health::Unhealthy { since_ms: now_ms, reason: format!("instance status {other}") }),
    }
    if member.health_status.eq_ignore_ascii_case("unhealthy") || member.health_status.eq_ignore_ascii_case("timeout") {
        return Some(Health::Unhealthy {
            since_ms: now_ms,
            reason: format!("managed instance group health {}", member.health_status),
        });
    }
    let young = !was_healthy && now_ms.saturating_sub(instance.launched_ms) < HEALTH_GRACE_MS;
    for v in verdicts {
        match v.state.as_str() {
            "HEALTHY" => {}
            _ if young => return Some(Health::Starting),
            other => {
                return Some(Health::Unhealthy {
                    since_ms: now_ms,
                    reason: format!("backend service {}: {other}", v.balancer),
                })
            }
        }
    }
    Some(Health::Healthy { since_ms: 0 })
}
