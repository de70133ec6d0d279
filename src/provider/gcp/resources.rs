//! The SDK's clients, made on first use, what this process has read (only to save calls), and the reads
//! and read-modify-writes several `CloudApi` calls share: a MIG as the core sees it, release templates,
//! backend services.

use super::errors::{classify, done, not_found_is_none};
use super::names::{self, instance_id, last_segment, parse_tags, same_resource, Scope};
use super::names::{LABEL_ENV, LABEL_GENERATION, LABEL_GROUP, LABEL_MANAGED, TAG_BACKENDS, TAG_BASE_TEMPLATE};
use crate::plan::Generation;
use crate::provider::cloud::{refused, retryable, GroupInstance, GroupView};
use crate::provider::ProviderError;
use google_cloud_compute_v1::client::{
    BackendServices, Images, InstanceTemplates, Instances, RegionInstanceGroupManagers, UrlMaps,
};
use google_cloud_compute_v1::model as m;
use google_cloud_gax::error::rpc::Code;
use google_cloud_gax::exponential_backoff::{ExponentialBackoff, ExponentialBackoffBuilder};
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_gax::paginator::ItemPaginator;
use google_cloud_gax::polling_error_policy::{PollingErrorPolicy, PollingErrorPolicyExt};
use google_cloud_gax::polling_state::PollingState;
use google_cloud_gax::retry_policy::{RetryPolicy, RetryPolicyExt};
use google_cloud_gax::retry_result::RetryResult;
use google_cloud_gax::retry_state::RetryState;
use std::collections::HashMap;
use std::time::Duration;

/// Where the provider's credentials come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GcpCredentials {
    /// Application Default Credentials (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's user credentials, the
    /// metadata server of a VM or workload identity): the SDK's default.
    #[default]
    Adc,
    /// No credentials at all: only for an endpoint that needs none (the loopback fake of the tests).
    Anonymous,
}

/// How the provider reaches GCP. `Default` is what the agent uses.
#[derive(Clone, Debug)]
pub struct GcpOptions {
    /// Overrides the Compute Engine endpoint (a Private Service Connect endpoint, or the tests' fake);
    /// `None`: `https://compute.googleapis.com`.
    pub endpoint: Option<String>,
    pub credentials: GcpCredentials,
    /// Attempts per call, with exponential backoff between them from `initial_backoff`. Rate limits
    /// (429), 5xx and connection failures are retried for calls that are safe to repeat: reads, and
    /// mutations, which all carry a `requestId` (GCP ignores a repeated one); everything else comes back
    /// at once and is classed.
    pub max_attempts: u32,
    /// The first wait between attempts, and between polls of an operation; it doubles up to a minute.
    pub initial_backoff: Duration,
    /// The limit of one attempt of one call.
    pub attempt_timeout: Duration,
    /// Also probe each running instance at its internal IP with the environment's health check.
    pub probe_instances: bool,
    /// Observe only (`stele plan`): no clean-up, every action refused.
    pub observe_only: bool,
}

impl Default for GcpOptions {
    fn default() -> Self {
        Self {
            endpoint: None,
            credentials: GcpCredentials::Adc,
            max_attempts: 4,
            initial_backoff: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(30),
            probe_instances: false,
            observe_only: false,
        }
    }
}

#[derive(Clone)]
pub(super) struct Clients {
    pub(super) groups: RegionInstanceGroupManagers,
    pub(super) templates: InstanceTemplates,
    pub(super) instances: Instances,
    pub(super) images: Images,
    pub(super) backends: BackendServices,
    pub(super) url_maps: UrlMaps,
}

/// The retry policy: what GCP asks clients to retry (429 RESOURCE_EXHAUSTED, 5xx, UNAVAILABLE, a
/// connection that failed) when the call is safe to repeat; the SDK's own AIP-194 policy retries only
/// UNAVAILABLE, so rate limits would otherwise fail the whole tick.
#[derive(Debug)]
struct Transient;

impl Transient {
    fn judge(error: google_cloud_gax::error::Error) -> RetryResult {
        let code = error.status().map(|s| s.code);
        let http = error.http_status_code();
        if error.is_transient_and_before_rpc()
            || error.is_io()
            || matches!(code, Some(Code::Unavailable | Code::ResourceExhausted | Code::Internal))
            || http.is_some_and(|h| h == 429 || (500..=599).contains(&h))
        {
            return RetryResult::Continue(error);
        }
        RetryResult::Permanent(error)
    }
}

impl RetryPolicy for Transient {
    fn on_error(&self, state: &RetryState, error: google_cloud_gax::error::Error) -> RetryResult {
        // A call that never reached GCP may be sent again whatever it is.
        if !state.idempotent && !error.is_transient_and_before_rpc() {
            return RetryResult::Permanent(error);
        }
        Self::judge(error)
    }
}

/// Polling an operation (`operations.get`) is always safe to repeat.
impl PollingErrorPolicy for Transient {
    fn on_error(&self, _state: &PollingState, error: google_cloud_gax::error::Error) -> RetryResult {
        Self::judge(error)
    }
}

/// How long one mutation's operation is polled before the call fails (retryably; the next tick
/// observes what it did). Resizing or deleting a group takes minutes at most.
const OPERATION_LIMIT: Duration = Duration::from_secs(600);

fn backoff(initial: Duration) -> Result<ExponentialBackoff, ProviderError> {
    let initial = initial.max(Duration::from_millis(1));
    ExponentialBackoffBuilder::new()
        .with_initial_delay(initial)
        .with_maximum_delay(Duration::from_secs(60).max(initial))
        .build()
        .map_err(|e| retryable(format!("gcp: backoff {initial:?}: {e}")))
}

/// A fresh `requestId` for one mutation (a version-4 UUID): the SDK may then repeat the call, and GCP
/// runs it once.
pub(super) fn request_id() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Which of a template's disks is its boot disk: the one marked so, else the first.
pub(super) fn boot_disk(disks: &[m::AttachedDisk]) -> usize {
    disks.iter().position(|d| d.boot == Some(true)).unwrap_or(0)
}

/// What an instance template makes: its boot image and instance labels, and, for Stele's release
/// templates, the environment and generation its description names.
#[derive(Clone, Debug)]
pub(super) struct TemplateInfo {
    /// `Some((env, generation))`: a release template of Stele's; `None`: someone else's.
    pub(super) release: Option<(String, Generation)>,
    /// The boot disk's source image as `projects/P/global/images/NAME` (what GCP runs, whatever the
    /// description says); empty when the template has none.
    pub(super) image: String,
    pub(super) labels: HashMap<String, String>,
}

/// The GCP side of the provider: the SDK's clients and what this process has read (only to save calls).
pub struct GcpApi {
    options: GcpOptions,
    clients: Option<Clients>,
    /// (location, template name) → what it makes; `None`: it does not exist.
    pub(super) templates: HashMap<(String, String), Option<TemplateInfo>>,
    /// Instance id → the template URL it was created from (from the last listing of its group).
    pub(super) instance_templates: HashMap<String, String>,
    /// Instance id → its group's name.
    pub(super) instance_groups: HashMap<String, String>,
    /// Group name → backend services its description names that it is not a backend of yet (creation
    /// attaches after the insert; a group given instances before that is attached at the next resize).
    pub(super) unattached: HashMap<String, Vec<String>>,
    /// The project's backend services as the last `list_groups` read them, for the `list_balancers`
    /// that follows it in the same observation: taken by that call (one use), dropped by the next listing.
    pub(super) listed_backends: Option<(String, Vec<m::BackendService>)>,
}

impl GcpApi {
    pub(super) fn new(options: GcpOptions) -> Self {
        Self {
            options,
            clients: None,
            templates: HashMap::new(),
            instance_templates: HashMap::new(),
            instance_groups: HashMap::new(),
            unattached: HashMap::new(),
            listed_backends: None,
        }
    }

    /// The SDK's clients, made on first use (each loads the credentials).
    pub(super) async fn clients(&mut self) -> Result<Clients, ProviderError> {
        if let Some(c) = &self.clients {
            return Ok(c.clone());
        }
        let o = &self.options;
        macro_rules! build {
            ($client:ty) => {{
                let mut b = <$client>::builder()
                    .with_attempt_timeout(o.attempt_timeout)
                    .with_retry_policy(RetryPolicyExt::with_attempt_limit(Transient, o.max_attempts.max(1)))
                    .with_backoff_policy(backoff(o.initial_backoff)?)
                    .with_polling_error_policy(PollingErrorPolicyExt::with_time_limit(Transient, OPERATION_LIMIT))
                    .with_polling_backoff_policy(backoff(o.initial_backoff)?);
                if let Some(e) = &o.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                if o.credentials == GcpCredentials::Anonymous {
                    b = b.with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build());
                }
                b.build().await.map_err(|e| retryable(format!("gcp: cannot make a client: {e}")))?
            }};
        }
        let c = Clients {
            groups: build!(RegionInstanceGroupManagers),
            templates: build!(InstanceTemplates),
            instances: build!(Instances),
            images: build!(Images),
            backends: build!(BackendServices),
            url_maps: build!(UrlMaps),
        };
        self.clients = Some(c.clone());
        Ok(c)
    }

    /// Every backend service of the project: which instance groups each has as backends.
    pub(super) async fn backend_services(&mut self, s: Scope<'_>) -> Result<Vec<m::BackendService>, ProviderError> {
        let c = self.clients().await?;
        let mut out = Vec::new();
        let mut items = c.backends.list().set_project(s.project).by_item();
        while let Some(item) = items.next().await {
            out.push(item.map_err(|e| classify("backendServices.list", e))?);
        }
        Ok(out)
    }

    /// A MIG as the core sees it: tags from its description, its instances from `listManagedInstances`,
    /// the backend services it is a backend of.
    pub(super) async fn group_view(
        &mut self,
        s: Scope<'_>,
        igm: &m::InstanceGroupManager,
        backends: &[m::BackendService],
    ) -> Result<GroupView, ProviderError> {
        let c = self.clients().await?;
        let name = igm.name.clone().unwrap_or_default();
        let tags = parse_tags(igm.description.as_deref().unwrap_or_default());
        let mut instances = Vec::new();
        let mut items = c
            .groups
            .list_managed_instances()
            .set_project(s.project)
            .set_region(s.region)
            .set_instance_group_manager(&name)
            .by_item();
        while let Some(item) = items.next().await {
            let mi = item.map_err(|e| classify("regionInstanceGroupManagers.listManagedInstances", e))?;
            let Some(id) = mi.instance.as_deref().and_then(instance_id) else { continue };
            let action = mi.current_action.as_ref().and_then(|a| a.name()).unwrap_or("NONE");
            let leaving = names::leaving(action);
            let lifecycle = action.to_owned();
            let health = mi
                .instance_health
                .iter()
                .filter_map(|h| h.detailed_health_state.as_ref().and_then(|d| d.name()))
                .find(|h| *h != "HEALTHY")
                .unwrap_or("")
                .to_owned();
            if let Some(t) = mi.version.as_ref().and_then(|v| v.instance_template.clone()) {
                self.instance_templates.insert(id.clone(), t);
            }
            self.instance_groups.insert(id.clone(), name.clone());
            instances.push(GroupInstance { id, lifecycle, health_status: health, leaving });
        }
        let group_url = s.instance_group(&name);
        let attached = backends
            .iter()
            .filter(|b| b.backends.iter().any(|be| be.group.as_deref().is_some_and(|g| same_resource(g, &group_url))))
            .filter_map(|b| b.name.clone())
            .collect::<Vec<String>>();
        let missing: Vec<String> = tags
            .get(TAG_BACKENDS)
            .map(|list| {
                list.split(',')
                    .filter(|b| !b.is_empty() && !attached.iter().any(|a| a == b))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if missing.is_empty() {
            self.unattached.remove(&name);
        } else {
            self.unattached.insert(name.clone(), missing);
        }
        Ok(GroupView {
            name,
            env: tags.get(LABEL_ENV).cloned(),
            group: tags.get(LABEL_GROUP).cloned(),
            generation: tags.get(LABEL_GENERATION).and_then(|g| g.parse().ok()),
            managed: tags.get(LABEL_MANAGED).map(String::as_str) == Some("true"),
            // A MIG has a target size only: no bounds to keep.
            min: 0,
            max: i32::MAX,
            desired: igm.target_size.unwrap_or(0),
            template_name: tags.get(TAG_BASE_TEMPLATE).cloned(),
            template_version: igm.instance_template.as_deref().map(|t| last_segment(t).to_owned()),
            balancers: attached,
            instances,
        })
    }

    /// Reads a template's description, boot image and labels once.
    pub(super) async fn read_template(&mut self, location: &str, name: &str) -> Result<(), ProviderError> {
        let key = (location.to_owned(), name.to_owned());
        if self.templates.contains_key(&key) {
            return Ok(());
        }
        let s = Scope::parse(location)?;
        let c = self.clients().await?;
        let r = c.templates.get().set_project(s.project).set_instance_template(name).send().await;
        let info = not_found_is_none("instanceTemplates.get", r)?.map(|t| {
            let release = t
                .description
                .as_deref()
                .and_then(names::parse_template_description)
                .map(|(env, generation, _)| (env, generation));
            let props = t.properties.unwrap_or_default();
            let boot = props.disks.get(boot_disk(&props.disks));
            let source = boot.and_then(|d| d.initialize_params.as_ref()).and_then(|p| p.source_image.as_deref());
            let image = source.map(|i| names::partial_url(i).to_owned()).unwrap_or_default();
            TemplateInfo { release, image, labels: props.labels }
        });
        self.templates.insert(key, info);
        Ok(())
    }

    /// Gets a backend service, changes it and writes it back whole (`update`, guarded by its fingerprint).
    pub(super) async fn modify_backend_service(
        &mut self,
        s: Scope<'_>,
        name: &str,
        op: &str,
        change: impl FnOnce(&mut m::BackendService) -> bool,
    ) -> Result<(), ProviderError> {
        let c = self.clients().await?;
        let r = c.backends.get().set_project(s.project).set_backend_service(name).send().await;
        let Some(mut b) = not_found_is_none("backendServices.get", r)? else {
            return Err(refused(format!("backend service {name} does not exist")));
        };
        if !change(&mut b) {
            return Ok(());
        }
        let poller = c
            .backends
            .update()
            .set_project(s.project)
            .set_backend_service(name)
            .set_body(b)
            .set_request_id(request_id())
            .with_idempotency(true)
            .poller();
        done(op, poller).await.map(drop)
    }
}
