//! The cloud-provider core: what a provider of managed instance groups does whatever the cloud (AWS
//! Auto Scaling groups and GCP managed instance groups today; Azure scale sets and OCI instance pools
//! would be bindings of their own).
//! A cloud binding implements [`CloudApi`], a small set of API calls (groups, instances, per-generation
//! balancers, the router's traffic weights, images, release templates), and [`Cloud`] carries out the
//! `Provider` trait's actions with them in a restart-safe, idempotent order:
//!
//! - **Groups.** One group per spec group for rolling (`stele-E-G`); one group per generation for
//!   blue/green and canary (`stele-E-G-gN`), each behind its own balancer, the router weighting them.
//!   A launch raises a group's desired capacity by one (a create is made at desired 0 first, so a
//!   create retried after a lost answer never launches twice); a termination lowers it by one, exactly
//!   once. An emptied group (and balancer) that nothing needs any more is deleted on observation.
//! - **Traffic.** Weights are written only when they differ by share; the balancers are tagged with the
//!   time first, so a restart between the two calls lengthens a pause, never shortens it. Restoring the
//!   old split after a failed gate is `plan` asking for the old weights again: nothing is remembered here.
//! - **Pinning.** Rolling groups are pointed at the release the agent converges to (after a failed gate,
//!   the last good one), so the cloud's own replacements never launch a failed image.
//! - **Adoption.** Everything is found again from tags (or labels) and names on every observation; the
//!   caches here only save calls, so an agent killed at any point continues where the cloud is. Health
//!   history (since when an instance is healthy, whether it ever was) is kept per environment: one
//!   provider serves all of an agent's environments.
//! - **Images.** Checked before anything is made: exists, ready, owned by an allowed owner, its digest
//!   tag equal to the entry's digest; otherwise the release is refused with the reason.
//! - **Errors.** Bindings class their errors as [`ProviderError::Retryable`] (throttling, 5xx, timeouts)
//!   or [`ProviderError::Refused`] (a human must act), with the cloud's code and message.
//!
//! Owns: that step order, group and generation bookkeeping, reading health, images and weights back into
//! `Observed`. Must not decide what runs or when traffic moves (that is `plan`), keep state a restart
//! would need, or name any cloud's SDK: bindings (`provider::aws`, `provider::gcp`) import this module,
//! never the reverse.

mod observe;
mod provider;
mod rollout;
mod traffic;

pub use provider::CloudProvider;

use super::ProviderError;
use crate::plan::{Generation, Health, Release};
use ledger_format::types::{EnvName, Environment, GroupName, Image, Strategy};
use ledger_format::Blake3Digest;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The words a cloud uses for its parts, so the core's messages read as that cloud's.
#[derive(Debug)]
pub struct Vocabulary {
    /// The provider's name in specs: `aws`.
    pub cloud: &'static str,
    /// A group of instances: `auto scaling group`.
    pub group: &'static str,
    /// A machine image: `AMI`.
    pub image: &'static str,
    /// What the provider runs, in a refusal of an artifact: `machine images (AMIs)`.
    pub images: &'static str,
    /// The state of an image ready to launch: `available`.
    pub image_ready: &'static str,
    /// Who owns an image: `account`.
    pub image_owner: &'static str,
    /// The spec's list of allowed image owners: `ami_owners`.
    pub image_owners: &'static str,
    /// A tag or label: `tag`.
    pub tag: &'static str,
    /// The per-generation balancer: `target group`.
    pub balancer: &'static str,
    /// What weights balancers: `listener`.
    pub router: &'static str,
    /// What a group launches from, in logs: `launch template version`.
    pub template: &'static str,
    /// The spec members blue/green and canary need: `listener, vpc and port`.
    pub weighted_needs: &'static str,
    /// The service whose integer limits apply: `auto scaling`.
    pub scaling: &'static str,
    /// The keys Stele writes and reads.
    pub keys: TagKeys,
}

/// Tag (or label) keys.
#[derive(Debug)]
pub struct TagKeys {
    pub env: &'static str,
    pub group: &'static str,
    pub managed: &'static str,
    pub generation: &'static str,
    pub version: &'static str,
    pub blake3: &'static str,
    /// On a per-generation balancer: when (agent clock, milliseconds) the router's weights last changed,
    /// so pauses and grace periods survive a restart.
    pub traffic_since: &'static str,
}

/// The provider members of a spec a cloud maps onto, borrowed.
#[derive(Clone, Debug)]
pub struct CloudSpec<'a> {
    /// Where every call of this environment goes: the region (or zone), or what the binding makes of its
    /// spec's scope (GCP: `project/region`). Borrowed from the spec where it is one member.
    pub region: std::borrow::Cow<'a, str>,
    /// The operator's template that release templates are made from.
    pub template: &'a str,
    pub subnets: Vec<&'a str>,
    pub image_owners: Vec<&'a str>,
    /// Balancers a rolling group is attached to.
    pub balancers: Vec<&'a str>,
    /// What weights the per-generation balancers (blue/green, canary).
    pub router: Option<&'a str>,
    /// What each per-generation balancer is made on, besides its port: the VPC of a target group on
    /// AWS, the health check of a backend service on GCP.
    pub balancer_base: Option<&'a str>,
    pub port: Option<u64>,
}

/// How a strategy lays groups out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout<'a> {
    /// One group per spec group, attached to the spec's balancers.
    Rolling,
    /// One group and one balancer per generation; the router's weights move traffic between generations.
    Weighted { router: &'a str, balancer_base: &'a str, port: i32 },
}

impl<'a> CloudSpec<'a> {
    pub fn layout(&self, spec: &Environment, words: &Vocabulary) -> Result<Layout<'a>, ProviderError> {
        let strategy = match &spec.strategy {
            Strategy::Rolling { .. } => return Ok(Layout::Rolling),
            Strategy::BlueGreen { .. } => "blue_green",
            Strategy::Canary { .. } => "canary",
        };
        let (Some(router), Some(balancer_base), Some(port)) = (self.router, self.balancer_base, self.port) else {
            return Err(refused(format!(
                "strategy {strategy} on {} needs {} in the provider",
                words.cloud, words.weighted_needs
            )));
        };
        // One router carries one group's generations: two groups would fight over its weights.
        if spec.groups.len() != 1 {
            return Err(refused(format!(
                "strategy {strategy} on {} moves one {}'s traffic, so the spec must have exactly one \
                 group; it has {}",
                words.cloud,
                words.router,
                spec.groups.len()
            )));
        }
        Ok(Layout::Weighted { router, balancer_base, port: to_i32(port, "port", words)? })
    }
}

/// A release's template as a group names it: the template and, where the cloud versions templates, the
/// version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateRef {
    pub name: String,
    pub version: Option<String>,
}

impl std::fmt::Display for TemplateRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.version {
            Some(v) => f.write_str(v),
            None => f.write_str(&self.name),
        }
    }
}

/// A group as read from the cloud.
#[derive(Clone, Debug)]
pub struct GroupView {
    pub name: String,
    pub env: Option<String>,
    pub group: Option<String>,
    /// Set on the per-generation groups of blue/green and canary.
    pub generation: Option<Generation>,
    pub managed: bool,
    pub min: i32,
    pub max: i32,
    pub desired: i32,
    pub template_name: Option<String>,
    pub template_version: Option<String>,
    pub balancers: Vec<String>,
    pub instances: Vec<GroupInstance>,
}

#[derive(Clone, Debug)]
pub struct GroupInstance {
    pub id: String,
    /// The cloud's word for what the group is doing with it (informative, in the cloud's terms).
    pub lifecycle: String,
    pub health_status: String,
    /// On its way out of the group (or out already), in the binding's judgement of `lifecycle`: not
    /// counted, not reported.
    pub leaving: bool,
}

impl GroupView {
    pub fn live(&self) -> impl Iterator<Item = &GroupInstance> {
        self.instances.iter().filter(|i| !i.leaving)
    }

    /// The template the group launches from.
    pub fn template(&self) -> Option<TemplateRef> {
        Some(TemplateRef { name: self.template_name.clone()?, version: self.template_version.clone() })
    }

    /// Refuses a group Stele does not own for this environment, group and (for blue/green and canary)
    /// generation: a name taken by someone else, or by another environment or group whose names spell
    /// the same group name.
    pub fn check_owned(
        &self,
        env: &EnvName,
        group: &GroupName,
        generation: Option<Generation>,
        words: &Vocabulary,
    ) -> Result<(), ProviderError> {
        if self.managed
            && self.env.as_deref() == Some(env.as_str())
            && self.group.as_deref() == Some(group.as_str())
            && self.generation == generation
        {
            return Ok(());
        }
        let k = &words.keys;
        Err(refused(format!(
            "{} {} exists but is not Stele's group {group}{} of environment {env} \
             ({}s {}={}, {}={}, {}={}, {}={}); rename or remove it",
            words.group,
            self.name,
            generation.map(|g| format!(" generation {g}")).unwrap_or_default(),
            words.tag,
            k.env,
            self.env.as_deref().unwrap_or("-"),
            k.group,
            self.group.as_deref().unwrap_or("-"),
            k.generation,
            self.generation.map_or("-".to_owned(), |g| g.to_string()),
            k.managed,
            self.managed
        )))
    }

    /// An empty group with nothing on its way: safe to delete.
    pub fn empty(&self) -> bool {
        self.desired == 0 && self.instances.is_empty()
    }
}

/// A group `launch` creates.
#[derive(Debug)]
pub struct NewGroup<'a> {
    pub name: &'a str,
    pub group: &'a GroupName,
    pub generation: Option<Generation>,
    pub template: TemplateRef,
    pub max: u64,
    pub balancers: Vec<String>,
}

/// A change to a group's settings; `None` leaves that setting as it is.
#[derive(Debug, Default)]
pub struct GroupUpdate {
    pub template: Option<TemplateRef>,
    pub min: Option<i32>,
    pub max: Option<i32>,
}

/// A per-generation balancer `launch` creates.
#[derive(Debug)]
pub struct NewBalancer<'a> {
    pub name: &'a str,
    pub env: &'a EnvName,
    pub group: &'a GroupName,
    pub generation: Generation,
    pub balancer_base: &'a str,
    pub port: i32,
}

/// A per-generation balancer Stele made, as read from its tags.
#[derive(Clone, Debug)]
pub struct BalancerView {
    pub id: String,
    pub group: String,
    pub generation: Generation,
    pub traffic_since: Option<u64>,
}

/// An instance as the cloud's compute API describes it.
#[derive(Clone, Debug)]
pub struct InstanceView {
    pub image_id: String,
    pub private_ip: Option<String>,
    pub state: String,
    /// Whether `state` is the cloud's running state (probes go only to running instances).
    pub running: bool,
    pub launched_ms: u64,
    pub tags: HashMap<String, String>,
}

/// One balancer's verdict on one instance.
#[derive(Clone, Debug)]
pub struct TargetVerdict {
    pub balancer: String,
    pub state: String,
    pub reason: String,
    pub description: String,
}

/// An image as read from the cloud.
#[derive(Clone, Debug)]
pub struct ImageView {
    pub state: String,
    pub ready: bool,
    pub owner: String,
    pub tags: HashMap<String, String>,
}

/// The answer to an image lookup.
#[derive(Clone, Debug)]
pub enum ImageLookup {
    Found(ImageView),
    /// Not there, or not visible to these credentials; the cloud's error code when it gave one.
    Missing(Option<String>),
}

/// The API calls a cloud binding makes for the core. Every call is one request (or one paginated
/// read) to the cloud, classed into retryable and refused errors by the binding; `region` is the
/// spec's. Idempotence the cloud offers (client tokens, "already exists") is the binding's to use.
#[allow(async_fn_in_trait)]
pub trait CloudApi {
    /// The cloud's words for messages and its tag keys.
    const WORDS: &'static Vocabulary;

    /// The spec's provider members, or a refusal when the spec is for another provider.
    fn spec_of(spec: &Environment) -> Result<CloudSpec<'_>, ProviderError>;

    /// The per-generation balancer's name (stable across restarts, within the cloud's limits).
    fn balancer_name(env: &EnvName, group: &GroupName, generation: Generation) -> String;

    /// Router weights in the cloud's range, per generation; refused (naming which) when out of it.
    fn router_weights(weights: &BTreeMap<Generation, u32>) -> Result<Vec<(Generation, i32)>, ProviderError>;

    /// Short forms of ids for messages.
    fn short_balancer(id: &str) -> &str;
    fn short_router(id: &str) -> &str;

    /// What an instance's health is, from the group's member, the compute API and the balancers'
    /// verdicts; `None`: leaving or gone, not reported. `was_healthy`: this process has seen it healthy
    /// before (a balancer's "unhealthy" then means it went bad, not that it is still booting).
    fn judge_health(
        member: &GroupInstance,
        instance: Option<&InstanceView>,
        verdicts: &[TargetVerdict],
        now_ms: u64,
        was_healthy: bool,
    ) -> Option<Health>;

    // Images and release templates.
    async fn describe_image(&mut self, region: &str, image: &str) -> Result<ImageLookup, ProviderError>;
    /// The release's template (made from the spec's template when missing, found again after a restart).
    async fn ensure_template(
        &mut self,
        spec: &CloudSpec<'_>,
        env: &EnvName,
        release: &Release,
        image: &str,
    ) -> Result<TemplateRef, ProviderError>;
    /// The release's template when this process knows it already (no call).
    fn known_template(
        &self,
        spec: &CloudSpec<'_>,
        env: &EnvName,
        release: &Release,
        image: &str,
    ) -> Option<TemplateRef>;
    /// Reads what the groups' templates were made for, where this process does not know yet.
    async fn read_templates(&mut self, region: &str, groups: &[GroupView]) -> Result<(), ProviderError>;
    /// The (generation, image) a group's template was made for, if Stele made it for `env`.
    fn template_release(&self, region: &str, env: &EnvName, view: &GroupView) -> Option<(Generation, String)>;

    // Groups.
    /// Every group tagged with this environment.
    async fn list_groups(&mut self, region: &str, env: &EnvName) -> Result<Vec<GroupView>, ProviderError>;
    async fn describe_group(&mut self, region: &str, name: &str) -> Result<Option<GroupView>, ProviderError>;
    /// Creates the group at desired capacity 0; a group of that name that exists already is no error.
    async fn create_group(
        &mut self,
        spec: &CloudSpec<'_>,
        env: &EnvName,
        new: NewGroup<'_>,
    ) -> Result<(), ProviderError>;
    async fn update_group(&mut self, region: &str, name: &str, update: GroupUpdate) -> Result<(), ProviderError>;
    async fn set_desired(&mut self, region: &str, name: &str, desired: i32) -> Result<(), ProviderError>;
    /// Terminates one instance and lowers the group's desired capacity by one, exactly once (a try
    /// that took effect but whose answer was lost is not repeated); an instance gone already is no error.
    async fn terminate_instance(&mut self, region: &str, group: &str, id: &str) -> Result<(), ProviderError>;
    async fn delete_group(&mut self, region: &str, name: &str) -> Result<(), ProviderError>;
    async fn attach_balancer(&mut self, region: &str, group: &str, balancer: &str) -> Result<(), ProviderError>;

    // Instances.
    /// Instances by id; ids the compute API does not list (yet) are left out, not an error.
    async fn describe_instances(
        &mut self,
        region: &str,
        ids: &[String],
    ) -> Result<HashMap<String, InstanceView>, ProviderError>;
    /// Each balancer's verdict on the given instances, by instance id.
    async fn balancer_health(
        &mut self,
        region: &str,
        balancers: &[String],
        ids: &[String],
    ) -> Result<HashMap<String, Vec<TargetVerdict>>, ProviderError>;

    // Per-generation balancers and the router.
    /// Stele's balancers that may be this environment's, with their tags. An observation calls it right
    /// after `list_groups` with nothing changed in between, so a binding may answer both from one read.
    async fn list_balancers(&mut self, region: &str) -> Result<Vec<(String, HashMap<String, String>)>, ProviderError>;
    /// The balancer of this name with its tags, if it exists.
    async fn find_balancer(
        &mut self,
        region: &str,
        name: &str,
    ) -> Result<Option<(String, HashMap<String, String>)>, ProviderError>;
    /// Creates the balancer (health checked as the spec says); one of that name already is no error.
    async fn create_balancer(
        &mut self,
        region: &str,
        spec: &Environment,
        new: NewBalancer<'_>,
    ) -> Result<(), ProviderError>;
    async fn delete_balancer(&mut self, region: &str, id: &str) -> Result<(), ProviderError>;
    async fn tag_balancers(
        &mut self,
        region: &str,
        ids: &[String],
        key: &str,
        value: &str,
    ) -> Result<(), ProviderError>;
    /// The router's weights as (balancer id, weight); empty when it does not forward.
    async fn read_weights(&mut self, region: &str, router: &str) -> Result<Vec<(String, i32)>, ProviderError>;
    async fn write_weights(
        &mut self,
        region: &str,
        router: &str,
        weights: &[(String, i32)],
    ) -> Result<(), ProviderError>;
}

// ---------------------------------------------------------------------------------------------------
// Names and small rules

/// The group of a rolling group.
pub fn group_name(env: &EnvName, group: &GroupName) -> String {
    format!("stele-{env}-{group}")
}

/// The group of one generation of a blue/green or canary group.
pub fn generation_group_name(env: &EnvName, group: &GroupName, generation: Generation) -> String {
    format!("stele-{env}-{group}-g{generation}")
}

/// Weights as logs and errors show them: `generation 1: 90, generation 2: 10`.
pub fn weights_text(weights: &BTreeMap<Generation, u32>) -> String {
    weights.iter().map(|(g, w)| format!("generation {g}: {w}")).collect::<Vec<_>>().join(", ")
}

/// Weights as shares of 1000 per balancer, sorted: two settings that send the same shares of traffic
/// compare equal whatever their scale.
pub fn normalize(tuples: &[(String, i32)]) -> Vec<(String, i64)> {
    let total: i64 = tuples.iter().map(|(_, w)| i64::from(*w)).sum();
    let mut out: Vec<(String, i64)> = tuples
        .iter()
        .filter(|(_, w)| *w > 0)
        .map(|(a, w)| (a.clone(), if total > 0 { i64::from(*w) * 1000 / total } else { 0 }))
        .collect();
    out.sort();
    out
}

/// A balancer's view from its tags, when it is Stele's for this environment.
pub fn balancer_view(
    keys: &TagKeys,
    env: &EnvName,
    id: String,
    tags: &HashMap<String, String>,
) -> Option<BalancerView> {
    if tags.get(keys.managed).map(String::as_str) != Some("true") || tags.get(keys.env)? != env.as_str() {
        return None;
    }
    Some(BalancerView {
        id,
        group: tags.get(keys.group)?.clone(),
        generation: tags.get(keys.generation)?.parse().ok()?,
        traffic_since: tags.get(keys.traffic_since).and_then(|t| t.parse().ok()),
    })
}

pub fn refused(msg: impl Into<String>) -> ProviderError {
    ProviderError::Refused(msg.into())
}

pub fn retryable(msg: impl Into<String>) -> ProviderError {
    ProviderError::Retryable(msg.into())
}

/// HTTP statuses that are retryable whatever the cloud's error code: 5xx and 429.
pub fn retryable_status(status: u16) -> bool {
    status >= 500 || status == 429
}

pub fn to_i32(n: u64, what: &str, words: &Vocabulary) -> Result<i32, ProviderError> {
    i32::try_from(n).map_err(|_| refused(format!("{what} {n} is too large for {}", words.scaling)))
}

fn machine_image<'r>(release: &'r Release, words: &Vocabulary) -> Result<&'r str, ProviderError> {
    match &release.image {
        Image::MachineImage { id, .. } => Ok(id.as_str()),
        Image::Artifact { .. } => Err(refused(format!(
            "generation {} pins an artifact; provider {} runs {}",
            release.generation, words.cloud, words.images
        ))),
    }
}

// ---------------------------------------------------------------------------------------------------
// The provider's state: the binding and caches; none of it is needed to continue after a restart

pub struct Cloud<A> {
    pub(crate) api: A,
    probe_instances: bool,
    observe_only: bool,
    /// (region, image) → its digest tag, for observing; prepare always asks the cloud afresh.
    digests: HashMap<(String, String), Blake3Digest>,
    /// Environments observed at least once by this process.
    seen: HashSet<EnvName>,
    /// (environment, instance id) → when this process first saw it healthy, in its current healthy spell.
    healthy_since: HashMap<(EnvName, String), u64>,
    /// (environment, instance id) of the members this process has ever seen healthy (kept while they
    /// are members).
    ever_healthy: HashSet<(EnvName, String)>,
    /// Group name → when this process last raised its desired capacity (the age of pending launches).
    scaled_at: HashMap<String, u64>,
    /// The spec of each environment as last observed (traffic changes and terminations have none).
    specs: HashMap<EnvName, Environment>,
    /// (environment, weights) → when this process first saw them, for weights whose balancers carry no
    /// traffic-since tag.
    traffic_seen: HashMap<(EnvName, String), u64>,
    /// Rolling groups of each environment at the last observation: (group name, template).
    rolling_templates: HashMap<EnvName, Vec<(String, Option<TemplateRef>)>>,
    /// Environments whose per-generation balancers were not all gone at the last look.
    balancers_seen: HashSet<EnvName>,
}

impl<A: CloudApi> Cloud<A> {
    pub fn new(api: A, probe_instances: bool, observe_only: bool) -> Self {
        Self {
            api,
            probe_instances,
            observe_only,
            digests: HashMap::new(),
            seen: HashSet::new(),
            healthy_since: HashMap::new(),
            ever_healthy: HashSet::new(),
            scaled_at: HashMap::new(),
            specs: HashMap::new(),
            traffic_seen: HashMap::new(),
            rolling_templates: HashMap::new(),
            balancers_seen: HashSet::new(),
        }
    }

    /// Refuses every change in observe-only mode.
    pub fn acting(&self) -> Result<(), ProviderError> {
        if self.observe_only {
            return Err(refused(format!("this {} provider only observes (stele plan)", A::WORDS.cloud)));
        }
        Ok(())
    }

    /// Checks the release's image and makes sure its template exists.
    pub async fn prepare(
        &mut self,
        env: &EnvName,
        spec: &Environment,
        release: &Release,
    ) -> Result<TemplateRef, ProviderError> {
        let cs = A::spec_of(spec)?;
        cs.layout(spec, A::WORDS)?;
        let image = machine_image(release, A::WORDS)?;
        self.check_image(&cs, image, release.digest()).await?;
        self.api.ensure_template(&cs, env, release, image).await
    }

    /// The image exists, is ready, is owned by an allowed owner and carries the digest tag equal to the
    /// entry's digest; otherwise the release is refused, naming which.
    async fn check_image(
        &mut self,
        cs: &CloudSpec<'_>,
        image: &str,
        digest: &Blake3Digest,
    ) -> Result<(), ProviderError> {
        let w = A::WORDS;
        let noun = w.image;
        let found = match self.api.describe_image(&cs.region, image).await? {
            ImageLookup::Found(found) => found,
            ImageLookup::Missing(Some(code)) => {
                return Err(refused(format!("{noun} {image} does not exist or is not visible here ({code})")))
            }
            ImageLookup::Missing(None) => {
                return Err(refused(format!("{noun} {image} does not exist or is not visible here")))
            }
        };
        if !found.ready {
            return Err(refused(format!("{noun} {image} is {}, not {}", found.state, w.image_ready)));
        }
        if !cs.image_owners.contains(&found.owner.as_str()) {
            return Err(refused(format!(
                "{noun} {image} is owned by {} {}, which is not in {} ({})",
                w.image_owner,
                found.owner,
                w.image_owners,
                cs.image_owners.join(", ")
            )));
        }
        let want = digest.to_hex();
        let (tag, key) = (w.tag, w.keys.blake3);
        match found.tags.get(key) {
            None => Err(refused(format!("{noun} {image} has no {tag} {key}; the entry pins {want}"))),
            Some(got) if *got != want => {
                Err(refused(format!("{noun} {image} {tag} {key} is {got}, the entry pins {want}")))
            }
            Some(_) => {
                self.digests.insert((cs.region.to_string(), image.to_owned()), *digest);
                Ok(())
            }
        }
    }

    /// The digest an image's tag records, remembered; `None` when the image is gone or has no valid tag.
    async fn image_digest(&mut self, region: &str, image: &str) -> Result<Option<Blake3Digest>, ProviderError> {
        let key = (region.to_owned(), image.to_owned());
        if let Some(d) = self.digests.get(&key) {
            return Ok(Some(*d));
        }
        let digest = match self.api.describe_image(region, image).await? {
            ImageLookup::Found(found) => {
                found.tags.get(A::WORDS.keys.blake3).and_then(|t| t.parse::<Blake3Digest>().ok())
            }
            ImageLookup::Missing(_) => None,
        };
        if let Some(d) = &digest {
            self.digests.insert(key, *d);
        }
        Ok(digest)
    }

    /// The spec of an environment as last observed (traffic changes and terminations have none).
    fn spec_of(&self, env: &EnvName) -> Result<Environment, ProviderError> {
        self.specs
            .get(env)
            .cloned()
            .ok_or_else(|| retryable(format!("environment {env} was not observed yet; its spec is unknown")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_weights_compare_by_share() {
        let t = |a: &str, w: i32| (a.to_owned(), w);
        assert_eq!(normalize(&[t("b", 10), t("a", 90)]), normalize(&[t("a", 900), t("b", 100)]));
        assert_eq!(normalize(&[t("a", 100), t("b", 0)]), normalize(&[t("a", 1)]));
        assert_ne!(normalize(&[t("a", 50), t("b", 50)]), normalize(&[t("a", 90), t("b", 10)]));
    }

    #[test]
    fn per_generation_group_names() {
        let env: EnvName = "a-very-long-environment-name-for-prod".parse().unwrap();
        let g: GroupName = "web".parse().unwrap();
        assert_eq!(group_name(&env, &g), "stele-a-very-long-environment-name-for-prod-web");
        assert_eq!(generation_group_name(&env, &g, 7), "stele-a-very-long-environment-name-for-prod-web-g7");
    }
}
