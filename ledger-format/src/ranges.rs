//! Value ranges of an environment spec (check N3, SPEC.md §6.2): limits that a schema type cannot
//! express, such as "at least one of max_surge and max_unavailable".
//!
//! Owns: the numeric limits. Must not look beyond the one spec it is given.

use crate::types::{Environment, HealthCheck, Provider, Strategy};
use std::collections::BTreeSet;

/// Largest capacity of one instance group.
pub const MAX_CAPACITY: u64 = 10_000;
/// Longest wait of any kind (pause, grace, deadline, min ready): one day.
pub const MAX_WAIT_SECONDS: u64 = 86_400;
/// Longest environment and group names together on provider `gcp`: GCP names have at most 63
/// characters, and `stele-<env>-<group>-g<generation>` spends 9 on its fixed parts and up to 20 on the
/// generation (a u64).
pub const GCP_MAX_ENV_AND_GROUP: usize = 63 - 9 - 20;

pub fn check_environment_ranges(spec: &Environment) -> Result<(), String> {
    if spec.version < 1 {
        return Err("version must be at least 1".into());
    }
    if spec.groups.is_empty() {
        return Err("groups must not be empty".into());
    }
    let mut names = BTreeSet::new();
    for g in &spec.groups {
        if !names.insert(&g.name) {
            return Err(format!("group {} is listed twice", g.name));
        }
        if !(1..=MAX_CAPACITY).contains(&g.capacity) {
            return Err(format!("group {} has capacity {}, allowed 1..={MAX_CAPACITY}", g.name, g.capacity));
        }
    }
    let min_capacity = spec.groups.iter().map(|g| g.capacity).min().expect("groups is not empty");
    match &spec.strategy {
        Strategy::Rolling { max_surge, max_unavailable, min_ready_seconds } => {
            if max_surge + max_unavailable == 0 {
                return Err("rolling: max_surge and max_unavailable cannot both be 0 (no progress possible)".into());
            }
            if *max_surge > MAX_CAPACITY || *max_unavailable > min_capacity {
                return Err(format!("rolling: max_unavailable {max_unavailable} exceeds the smallest group's capacity {min_capacity}, or max_surge {max_surge} exceeds {MAX_CAPACITY}"));
            }
            check_wait("rolling: min_ready_seconds", *min_ready_seconds)?;
        }
        Strategy::BlueGreen { grace_seconds } => check_wait("blue_green: grace_seconds", *grace_seconds)?,
        Strategy::Canary { steps } => {
            if steps.is_empty() {
                return Err("canary: steps must not be empty".into());
            }
            let mut last = 0;
            for (i, step) in steps.iter().enumerate() {
                if step.weight <= last || step.weight > 100 {
                    return Err(format!(
                        "canary: step {} has weight {}; weights must rise strictly within 1..=100",
                        i + 1,
                        step.weight
                    ));
                }
                last = step.weight;
                check_wait(&format!("canary: step {} pause_seconds", i + 1), step.pause_seconds)?;
            }
        }
    }
    let (interval_ms, timeout_ms, healthy_threshold, deadline_seconds) = match &spec.health {
        HealthCheck::Http { interval_ms, timeout_ms, healthy_threshold, deadline_seconds, .. }
        | HealthCheck::Tcp { interval_ms, timeout_ms, healthy_threshold, deadline_seconds } => {
            (*interval_ms, *timeout_ms, *healthy_threshold, *deadline_seconds)
        }
    };
    if !(100..=600_000).contains(&interval_ms) {
        return Err(format!("health: interval_ms {interval_ms} outside 100..=600000"));
    }
    if timeout_ms < 1 || timeout_ms > interval_ms {
        return Err(format!("health: timeout_ms {timeout_ms} must be within 1..=interval_ms ({interval_ms})"));
    }
    if !(1..=100).contains(&healthy_threshold) {
        return Err(format!("health: healthy_threshold {healthy_threshold} outside 1..=100"));
    }
    if deadline_seconds < 1 {
        return Err("health: deadline_seconds must be at least 1".into());
    }
    check_wait("health: deadline_seconds", deadline_seconds)?;
    if let Provider::Aws { subnets, ami_owners, listener, vpc, port, .. } = &spec.provider {
        if subnets.is_empty() || ami_owners.is_empty() {
            return Err("aws: subnets and ami_owners must not be empty".into());
        }
        if let Some(p) = port {
            if !(1..=65_535).contains(p) {
                return Err(format!("aws: port {p} outside 1..=65535"));
            }
        }
        let weighted = !matches!(spec.strategy, Strategy::Rolling { .. });
        if weighted && (listener.is_none() || vpc.is_none() || port.is_none()) {
            return Err("aws: blue_green and canary need listener, vpc and port (traffic moves by listener weights between per-generation target groups)".into());
        }
    }
    if let Provider::Gcp { image_projects, url_map, health_check, port, .. } = &spec.provider {
        if image_projects.is_empty() {
            return Err("gcp: image_projects must not be empty".into());
        }
        if let Some(p) = port {
            if !(1..=65_535).contains(p) {
                return Err(format!("gcp: port {p} outside 1..=65535"));
            }
        }
        for g in &spec.groups {
            let len = spec.name.as_str().len() + g.name.as_str().len();
            if len > GCP_MAX_ENV_AND_GROUP {
                return Err(format!(
                    "gcp: environment {} and group {} are {len} characters together, at most \
                     {GCP_MAX_ENV_AND_GROUP} (instance group names stele-<env>-<group>-g<generation> must fit \
                     GCP's 63)",
                    spec.name, g.name
                ));
            }
        }
        let weighted = !matches!(spec.strategy, Strategy::Rolling { .. });
        if weighted && (url_map.is_none() || health_check.is_none() || port.is_none()) {
            return Err("gcp: blue_green and canary need url_map, health_check and port (traffic moves by the url map's weights between per-generation backend services)".into());
        }
    }
    if let Some(age) = spec.max_instance_age_seconds {
        if age < 60 {
            return Err(format!("max_instance_age_seconds {age} is below the minimum of 60"));
        }
    }
    Ok(())
}

fn check_wait(what: &str, seconds: u64) -> Result<(), String> {
    if seconds > MAX_WAIT_SECONDS {
        return Err(format!("{what} {seconds} exceeds {MAX_WAIT_SECONDS} (one day)"));
    }
    Ok(())
}
