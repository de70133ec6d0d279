//! The pure parts of the GCP binding: where a spec's calls go (`project/region`), resource names and
//! partial URLs, Stele's tags written into descriptions (MIGs and backend services have no labels), the
//! digest labels of an image, and URL-map weights.

use crate::plan::Generation;
use crate::provider::cloud::refused;
use crate::provider::ProviderError;
use ledger_format::types::{EnvName, GroupName};
use std::collections::{BTreeMap, HashMap};

/// Label keys (GCP label keys and values: lowercase letters, digits, `-`, `_`; at most 63 characters,
/// so no `:` as on AWS).
pub const LABEL_ENV: &str = "stele-env";
pub const LABEL_GROUP: &str = "stele-group";
pub const LABEL_MANAGED: &str = "stele-managed";
pub const LABEL_GENERATION: &str = "stele-generation";
pub const LABEL_VERSION: &str = "stele-version";
/// A label value holds at most 63 characters and a digest has 64 hex digits: an image carries the first
/// 32 in `stele-blake3-hi` and the last 32 in `stele-blake3-lo`.
pub const LABEL_BLAKE3_HI: &str = "stele-blake3-hi";
pub const LABEL_BLAKE3_LO: &str = "stele-blake3-lo";
/// The key under which the binding reports the joined digest to the core (and names it in messages).
pub const KEY_BLAKE3: &str = "stele-blake3-hi/lo";
/// On a per-generation backend service: when (agent clock, milliseconds) the URL map's weights last
/// changed.
pub const TAG_TRAFFIC_SINCE: &str = "stele-traffic-since";
/// In a MIG's description: the operator's instance template its release templates are copied from.
pub const TAG_BASE_TEMPLATE: &str = "stele-base-template";
/// In a MIG's description: the backend services it was created to be a backend of (comma-separated),
/// so an attachment cut short by a restart is completed later.
pub const TAG_BACKENDS: &str = "stele-backends";

/// The largest weight of one weighted backend service in a URL map.
pub const MAX_URL_MAP_WEIGHT: u32 = 1000;

/// Where an environment's calls go: the spec's project and region, carried as `project/region`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope<'a> {
    pub project: &'a str,
    pub region: &'a str,
}

impl<'a> Scope<'a> {
    pub fn location(project: &str, region: &str) -> String {
        format!("{project}/{region}")
    }

    pub fn parse(location: &'a str) -> Result<Self, ProviderError> {
        match location.split_once('/') {
            Some((project, region)) if !project.is_empty() && !region.is_empty() && !region.contains('/') => {
                Ok(Self { project, region })
            }
            _ => Err(refused(format!("gcp: {location} is not project/region"))),
        }
    }

    pub fn instance_template(&self, name: &str) -> String {
        format!("projects/{}/global/instanceTemplates/{name}", self.project)
    }

    pub fn backend_service(&self, name: &str) -> String {
        format!("projects/{}/global/backendServices/{name}", self.project)
    }

    pub fn health_check(&self, name: &str) -> String {
        format!("projects/{}/global/healthChecks/{name}", self.project)
    }

    /// The instance group a regional MIG manages (what a backend service's backend names).
    pub fn instance_group(&self, mig: &str) -> String {
        format!("projects/{}/regions/{}/instanceGroups/{mig}", self.project, self.region)
    }

    /// An instance by its id `zone/name`.
    pub fn instance(&self, id: &str) -> Option<String> {
        let (zone, name) = id.split_once('/')?;
        Some(format!("projects/{}/zones/{zone}/instances/{name}", self.project))
    }
}

/// The last path segment of a resource URL (full or partial): its name.
pub fn last_segment(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// The partial URL (`projects/...`) of a resource URL, full (`https://.../compute/v1/projects/...`) or
/// partial already.
pub fn partial_url(url: &str) -> &str {
    url.find("projects/").map_or(url, |i| &url[i..])
}

/// Whether two resource URLs, full or partial, name the same resource.
pub fn same_resource(a: &str, b: &str) -> bool {
    partial_url(a) == partial_url(b)
}

/// An instance's id, `zone/name`, from its URL.
pub fn instance_id(url: &str) -> Option<String> {
    let rest = &url[url.find("/zones/")? + "/zones/".len()..];
    let (zone, rest) = rest.split_once('/')?;
    let name = rest.strip_prefix("instances/")?;
    (!zone.is_empty() && !name.is_empty() && !name.contains('/')).then(|| format!("{zone}/{name}"))
}

/// The (project, name) of an entry's image: `projects/P/global/images/N`, optionally as a full URL.
/// Image families are refused: an entry pins one image.
pub fn image_ref(image: &str) -> Result<(&str, &str), ProviderError> {
    let parts: Vec<&str> = partial_url(image).split('/').collect();
    match parts[..] {
        ["projects", project, "global", "images", name] if !project.is_empty() && !name.is_empty() => {
            Ok((project, name))
        }
        ["projects", _, "global", "images", "family", _] => Err(refused(format!(
            "image {image} names an image family; an entry pins one image (projects/P/global/images/NAME)"
        ))),
        _ => Err(refused(format!("image {image} is not projects/PROJECT/global/images/NAME"))),
    }
}

/// Whether a managed instance's `currentAction` takes it out of the group.
pub fn leaving(action: &str) -> bool {
    matches!(action, "DELETING" | "ABANDONING")
}

/// At most this many instance names in one list filter (the filter travels in the URL).
pub const NAMES_PER_FILTER: usize = 50;

/// A list filter that matches exactly these resource names: `name eq "a|b|c"` (a whole-value RE2 match;
/// names are `[a-z0-9-]`, nothing to escape).
pub fn name_filter(names: &[&str]) -> String {
    format!("name eq \"{}\"", names.join("|"))
}

/// Stele's tags as a description: `stele-env=prod stele-group=web ...` (MIGs and backend services have
/// no labels). Values are names and numbers, without spaces.
pub fn tags_text(tags: &[(&str, String)]) -> String {
    tags.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// The `stele-*` tags of a description; anything else in it is ignored.
pub fn parse_tags(description: &str) -> HashMap<String, String> {
    description
        .split_whitespace()
        .filter_map(|t| t.split_once('='))
        .filter(|(k, _)| k.starts_with("stele-"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `tags` with `key` set to `value` (added or replaced).
pub fn with_tag(description: &str, key: &str, value: &str) -> String {
    let mut out: Vec<String> = description
        .split_whitespace()
        .filter(|t| t.split_once('=').map(|(k, _)| k) != Some(key))
        .map(str::to_owned)
        .collect();
    out.push(format!("{key}={value}"));
    out.join(" ")
}

/// The digest an image's labels record, joined; `None` unless both halves are 32 lowercase hex digits.
pub fn joined_digest(labels: &HashMap<String, String>) -> Option<String> {
    let hex = |s: &String| s.len() == 32 && s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    let (hi, lo) = (labels.get(LABEL_BLAKE3_HI)?, labels.get(LABEL_BLAKE3_LO)?);
    (hex(hi) && hex(lo)).then(|| format!("{hi}{lo}"))
}

/// A label value for a release version: GCP allows only lowercase letters, digits, `-` and `_`, so
/// others become `_` (informative only; the version Stele acts on is the ledger's).
pub fn label_value(s: &str) -> String {
    let v: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    v.chars().take(63).collect()
}

fn digest_name(what: &str, parts: &[&str]) -> String {
    let h = blake3::hash(format!("stele {what}\n{}", parts.join("\n")).as_bytes()).to_hex();
    format!("stele-{}", &h[..26])
}

/// The instance template of one release of an environment: a digest of (environment, generation,
/// image), so it is found again by name after a restart; its description says what it is.
pub fn template_name(env: &EnvName, generation: Generation, image: &str) -> String {
    digest_name("instance template", &[env.as_str(), &generation.to_string(), image])
}

/// What a release template's description says: `stele E generation N image I from BASE`.
pub fn template_description(env: &EnvName, generation: Generation, image: &str, base: &str) -> String {
    format!("stele {env} generation {generation} image {image} from {base}")
}

/// (environment, generation, image) of a release template's description.
pub fn parse_template_description(d: &str) -> Option<(String, Generation, String)> {
    let rest = d.strip_prefix("stele ")?;
    let (env, rest) = rest.split_once(" generation ")?;
    let (generation, rest) = rest.split_once(" image ")?;
    let image = rest.split_once(" from ").map_or(rest, |(i, _)| i);
    Some((env.to_owned(), generation.parse().ok()?, image.to_owned()))
}

/// The backend service of one generation (a digest: names must stay within 63 characters).
pub fn backend_service_name(env: &EnvName, group: &GroupName, generation: Generation) -> String {
    digest_name("backend service", &[env.as_str(), group.as_str(), &generation.to_string()])
}

/// URL-map weights for per-generation backend services: 0..=1000 each, at least one.
pub fn url_map_weights(weights: &BTreeMap<Generation, u32>) -> Result<Vec<(Generation, i32)>, ProviderError> {
    if weights.is_empty() {
        return Err(refused("a url map's weighted backend services need at least one, the plan has none"));
    }
    weights
        .iter()
        .map(|(g, w)| match i32::try_from(*w) {
            Ok(v) if *w <= MAX_URL_MAP_WEIGHT => Ok((*g, v)),
            _ => Err(refused(format!("weight {w} of generation {g} is outside 0..={MAX_URL_MAP_WEIGHT}"))),
        })
        .collect()
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp (GCP's `creationTimestamp`).
pub fn rfc3339_ms(t: &str) -> Option<u64> {
    let ts: ledger_format::Timestamp = t.parse().ok().or_else(|| {
        // GCP writes fractions and offsets (`2026-05-01T12:00:00.123-07:00`); the seconds are enough.
        time_to_utc_seconds(t).and_then(ledger_format::Timestamp::from_unix)
    })?;
    u64::try_from(ts.unix()).ok().map(|s| s * 1000)
}

/// Seconds of `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)`.
fn time_to_utc_seconds(t: &str) -> Option<i64> {
    let (date, rest) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let clock = &rest[..8.min(rest.len())];
    let mut c = clock.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (c.next()?.ok()?, c.next()?.ok()?, c.next()?.ok()?);
    let zone = rest[8..].trim_start_matches(|ch: char| ch == '.' || ch.is_ascii_digit());
    let offset = match zone {
        "Z" | "" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let (h, m) = z[1..].split_once(':')?;
            sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_filter_matches_whole_names() {
        assert_eq!(name_filter(&["web-ab12", "web-cd34"]), "name eq \"web-ab12|web-cd34\"");
        let longest = "a".repeat(63);
        let full = name_filter(&vec![longest.as_str(); NAMES_PER_FILTER]);
        assert!(full.len() < 4096, "a full filter stays well within a URL: {} bytes", full.len());
    }

    #[test]
    fn scope_and_urls() {
        let s = Scope::parse("acme-prod/europe-west1").unwrap();
        assert_eq!((s.project, s.region), ("acme-prod", "europe-west1"));
        assert!(Scope::parse("acme-prod").is_err() && Scope::parse("a/b/c").is_err());
        assert_eq!(
            s.instance_group("stele-prod-web"),
            "projects/acme-prod/regions/europe-west1/instanceGroups/stele-prod-web"
        );
        assert_eq!(
            s.instance("europe-west1-b/web-x1").unwrap(),
            "projects/acme-prod/zones/europe-west1-b/instances/web-x1"
        );
        let full = "https://www.googleapis.com/compute/v1/projects/acme-prod/zones/europe-west1-b/instances/web-x1";
        assert_eq!(instance_id(full).unwrap(), "europe-west1-b/web-x1");
        assert!(same_resource(full, "projects/acme-prod/zones/europe-west1-b/instances/web-x1"));
        assert_eq!(last_segment(full), "web-x1");
    }

    #[test]
    fn images_are_pinned_by_project_and_name() {
        assert_eq!(image_ref("projects/acme-images/global/images/web-1-2-0").unwrap(), ("acme-images", "web-1-2-0"));
        let url = "https://www.googleapis.com/compute/v1/projects/acme-images/global/images/web";
        assert_eq!(image_ref(url).unwrap(), ("acme-images", "web"));
        let family = image_ref("projects/acme-images/global/images/family/web").unwrap_err().to_string();
        assert!(family.contains("family"), "{family}");
        assert!(image_ref("web-1-2-0").is_err() && image_ref("projects/acme-images/images/web").is_err());
    }

    #[test]
    fn tags_live_in_descriptions() {
        let text =
            tags_text(&[(LABEL_ENV, "prod".into()), (LABEL_GROUP, "web".into()), (LABEL_MANAGED, "true".into())]);
        assert_eq!(text, "stele-env=prod stele-group=web stele-managed=true");
        let tags = parse_tags(&format!("{text} set by hand=1 other"));
        assert_eq!(tags.len(), 3);
        assert_eq!(tags[LABEL_GROUP], "web");
        let updated = with_tag(&text, TAG_TRAFFIC_SINCE, "5");
        let updated = with_tag(&updated, TAG_TRAFFIC_SINCE, "7");
        assert_eq!(parse_tags(&updated)[TAG_TRAFFIC_SINCE], "7");
        assert_eq!(updated.matches(TAG_TRAFFIC_SINCE).count(), 1);
    }

    #[test]
    fn digest_labels_are_two_halves() {
        let d = "0123456789abcdef".repeat(4);
        let labels: HashMap<String, String> =
            [(LABEL_BLAKE3_HI.to_owned(), d[..32].to_owned()), (LABEL_BLAKE3_LO.to_owned(), d[32..].to_owned())].into();
        assert_eq!(joined_digest(&labels).unwrap(), d);
        let mut short = labels.clone();
        short.insert(LABEL_BLAKE3_LO.into(), d[33..].to_owned());
        assert!(joined_digest(&short).is_none());
        let mut upper = labels;
        upper.insert(LABEL_BLAKE3_HI.into(), d[..32].to_ascii_uppercase());
        assert!(joined_digest(&upper).is_none(), "labels are lowercase");
        assert_eq!(label_value("1.2.0+Build"), "1_2_0_build");
    }

    #[test]
    fn names_fit_gcp_and_are_stable() {
        let env: EnvName = "prod".parse().unwrap();
        let g: GroupName = "web".parse().unwrap();
        for n in [template_name(&env, 7, "projects/p/global/images/i"), backend_service_name(&env, &g, 7)] {
            assert_eq!(n.len(), 32, "{n}");
            assert!(n.parse::<ledger_format::types::GcpName>().is_ok(), "{n}");
        }
        assert_ne!(backend_service_name(&env, &g, 7), backend_service_name(&env, &g, 8));
        assert_eq!(template_name(&env, 7, "i"), template_name(&env, 7, "i"));
        let d = template_description(&env, 7, "projects/p/global/images/i", "web-base");
        assert_eq!(parse_template_description(&d).unwrap(), ("prod".into(), 7, "projects/p/global/images/i".into()));
    }

    #[test]
    fn url_map_weights_are_0_to_1000() {
        assert_eq!(url_map_weights(&BTreeMap::from([(1, 90), (2, 10)])).unwrap(), vec![(1, 90), (2, 10)]);
        assert!(url_map_weights(&BTreeMap::from([(1, 1000), (2, 0)])).is_ok());
        assert!(url_map_weights(&BTreeMap::from([(1, 1001)])).unwrap_err().to_string().contains("0..=1000"));
        assert!(url_map_weights(&BTreeMap::new()).is_err());
    }

    #[test]
    fn creation_timestamps() {
        assert_eq!(rfc3339_ms("1970-01-01T00:01:00Z"), Some(60_000));
        assert_eq!(rfc3339_ms("2026-05-01T12:00:00.123-07:00"), rfc3339_ms("2026-05-01T19:00:00Z"));
        assert_eq!(rfc3339_ms("not a time"), None);
    }
}
