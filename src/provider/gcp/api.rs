//! The SDK bindings: the core's `CloudApi` calls as Compute Engine v1 requests (regional instance group
//! managers, instance templates, instances, images, backend services, URL maps), each long-running
//! operation polled until DONE, and what is read back in the core's terms.

use super::errors::{classify, created, deleted, done, not_found_is_none};
use super::health::judge_health;
use super::names::{
    self, instance_id, joined_digest, last_segment, parse_tags, same_resource, tags_text, Scope, LABEL_ENV,
    LABEL_GENERATION, LABEL_GROUP, LABEL_MANAGED, LABEL_VERSION, TAG_BACKENDS, TAG_BASE_TEMPLATE,
};
use super::resources::{boot_disk, request_id, GcpApi, TemplateInfo};
use super::WORDS;
use crate::plan::{Generation, Health, Release};
use crate::provider::cloud::{
    refused, CloudApi, CloudSpec, GroupInstance, GroupUpdate, GroupView, ImageLookup, ImageView, InstanceView,
    NewBalancer, NewGroup, TargetVerdict, TemplateRef, Vocabulary,
};
use crate::provider::ProviderError;
use google_cloud_compute_v1::model as m;
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_gax::paginator::ItemPaginator;
use ledger_format::types::{EnvName, Environment, GroupName};
use std::collections::{BTreeMap, HashMap};

impl CloudApi for GcpApi {
    const WORDS: &'static Vocabulary = &WORDS;

    fn spec_of(spec: &Environment) -> Result<CloudSpec<'_>, ProviderError> {
        match &spec.provider {
            ledger_format::types::Provider::Gcp {
                project,
                region,
                instance_template,
                image_projects,
                backend_services,
                url_map,
                health_check,
                port,
            } => Ok(CloudSpec {
                region: Scope::location(project.as_str(), region.as_str()).into(),
                template: instance_template.as_str(),
                subnets: vec![],
                image_owners: image_projects.iter().map(|p| p.as_str()).collect(),
                balancers: backend_services.iter().map(|b| b.as_str()).collect(),
                router: url_map.as_ref().map(|u| u.as_str()),
                balancer_base: health_check.as_ref().map(|h| h.as_str()),
                port: *port,
            }),
            _ => Err(refused(format!("environment {} does not use provider gcp", spec.name))),
        }
    }

    fn balancer_name(env: &EnvName, group: &GroupName, generation: Generation) -> String {
        names::backend_service_name(env, group, generation)
    }

    fn router_weights(weights: &BTreeMap<Generation, u32>) -> Result<Vec<(Generation, i32)>, ProviderError> {
        names::url_map_weights(weights)
    }

    fn short_balancer(id: &str) -> &str {
        last_segment(id)
    }

    fn short_router(id: &str) -> &str {
        last_segment(id)
    }

    fn judge_health(
        member: &GroupInstance,
        instance: Option<&InstanceView>,
        verdicts: &[TargetVerdict],
        now_ms: u64,
        was_healthy: bool,
    ) -> Option<Health> {
        judge_health(member, instance, verdicts, now_ms, was_healthy)
    }

    /// `images.get`; the owner is the image's project. A name that is no image's (an instance template of
    /// someone else's may boot from an image family, or from none) is missing, with the reason.
    async fn describe_image(&mut self, _location: &str, image: &str) -> Result<ImageLookup, ProviderError> {
        let (project, name) = match names::image_ref(image) {
            Ok(found) => found,
            Err(e) => return Ok(ImageLookup::Missing(Some(e.to_string()))),
        };
        let c = self.clients().await?;
        let r = c.images.get().set_project(project).set_image(name).send().await;
        let Some(img) = not_found_is_none("images.get", r)? else {
            return Ok(ImageLookup::Missing(Some("notFound".into())));
        };
        let state = img.status.as_ref().and_then(|s| s.name()).unwrap_or("UNKNOWN").to_owned();
        let mut tags = img.labels.clone();
        if let Some(d) = joined_digest(&img.labels) {
            tags.insert(WORDS.keys.blake3.to_owned(), d);
        }
        Ok(ImageLookup::Found(ImageView { ready: state == "READY", state, owner: project.to_owned(), tags }))
    }

    /// `instanceTemplates.get` of the release's template; when missing, `instanceTemplates.get` of the
    /// spec's template and `instanceTemplates.insert` of its copy with the image (and labels) changed.
    async fn ensure_template(
        &mut self,
        spec: &CloudSpec<'_>,
        env: &EnvName,
        release: &Release,
        image: &str,
    ) -> Result<TemplateRef, ProviderError> {
        let s = Scope::parse(&spec.region)?;
        let name = names::template_name(env, release.generation, image);
        let done_ref = TemplateRef { name: spec.template.to_owned(), version: Some(name.clone()) };
        let key = (spec.region.to_string(), name.clone());
        let made_for_this = |t: &TemplateInfo| {
            t.release.as_ref().is_some_and(|(e, g)| e == env.as_str() && *g == release.generation)
                && names::same_resource(&t.image, image)
        };
        if self.templates.get(&key).is_some_and(|t| t.as_ref().is_some_and(made_for_this)) {
            return Ok(done_ref);
        }
        self.templates.remove(&key);
        self.read_template(&spec.region, &name).await?;
        match self.templates.get(&key) {
            Some(Some(t)) if made_for_this(t) => return Ok(done_ref),
            Some(Some(_)) => {
                return Err(refused(format!(
                    "instance template {name} exists but is not Stele's for generation {} of {env} with \
                     image {image}; rename or remove it",
                    release.generation
                )))
            }
            _ => {}
        }
        let c = self.clients().await?;
        let r = c.templates.get().set_project(s.project).set_instance_template(spec.template).send().await;
        let Some(base) = not_found_is_none("instanceTemplates.get", r)? else {
            return Err(refused(format!(
                "instance template {} does not exist in project {}",
                spec.template, s.project
            )));
        };
        let mut props = base.properties.unwrap_or_default();
        let (project, image_name) = names::image_ref(image)?;
        let source = format!("projects/{project}/global/images/{image_name}");
        let boot = boot_disk(&props.disks);
        let Some(boot) = props.disks.get_mut(boot) else {
            return Err(refused(format!("instance template {} has no boot disk", spec.template)));
        };
        boot.initialize_params.get_or_insert_with(Default::default).source_image = Some(source.clone());
        props.labels.insert(LABEL_ENV.into(), env.to_string());
        props.labels.insert(LABEL_GENERATION.into(), release.generation.to_string());
        props.labels.insert(LABEL_VERSION.into(), names::label_value(release.version.as_str()));
        let labels = props.labels.clone();
        let mut t = m::InstanceTemplate::default();
        t.name = Some(name.clone());
        t.description = Some(names::template_description(env, release.generation, image, spec.template));
        t.properties = Some(props);
        let poller = c
            .templates
            .insert()
            .set_project(s.project)
            .set_body(t)
            .set_request_id(request_id())
            .with_idempotency(true)
            .poller();
        if created("instanceTemplates.insert", poller).await? {
            tracing::info!(template = %name, generation = release.generation, "created instance template");
        }
        let info = TemplateInfo { release: Some((env.to_string(), release.generation)), image: source, labels };
        self.templates.insert(key, Some(info));
        Ok(done_ref)
    }

    fn known_template(
        &self,
        spec: &CloudSpec<'_>,
        env: &EnvName,
        release: &Release,
        image: &str,
    ) -> Option<TemplateRef> {
        let name = names::template_name(env, release.generation, image);
        match self.templates.get(&(spec.region.to_string(), name.clone())) {
            Some(Some(t)) if t.release.is_some() => {
                Some(TemplateRef { name: spec.template.to_owned(), version: Some(name) })
            }
            _ => None,
        }
    }

    async fn read_templates(&mut self, location: &str, groups: &[GroupView]) -> Result<(), ProviderError> {
        let mut wanted: Vec<String> = groups.iter().filter_map(|g| g.template_version.clone()).collect();
        wanted.extend(self.instance_templates.values().map(|t| last_segment(t).to_owned()));
        wanted.sort();
        wanted.dedup();
        for name in wanted {
            self.read_template(location, &name).await?;
        }
        Ok(())
    }

    fn template_release(&self, location: &str, env: &EnvName, view: &GroupView) -> Option<(Generation, String)> {
        let name = view.template_version.as_deref()?;
        let info = self.templates.get(&(location.to_owned(), name.to_owned()))?.as_ref()?;
        let (made_for, generation) = info.release.as_ref()?;
        (made_for == env.as_str()).then(|| (*generation, info.image.clone()))
    }

    /// `regionInstanceGroupManagers.list` (Stele's by name and description), `listManagedInstances` of
    /// each, and `backendServices.list` for their attachments (kept for the observation's
    /// `list_balancers`, which then needs no second listing).
    async fn list_groups(&mut self, location: &str, env: &EnvName) -> Result<Vec<GroupView>, ProviderError> {
        self.listed_backends = None;
        let s = Scope::parse(location)?;
        let c = self.clients().await?;
        let mut mine = Vec::new();
        let mut items = c.groups.list().set_project(s.project).set_region(s.region).by_item();
        while let Some(item) = items.next().await {
            let igm = item.map_err(|e| classify("regionInstanceGroupManagers.list", e))?;
            let tags = parse_tags(igm.description.as_deref().unwrap_or_default());
            if igm.name.as_deref().is_some_and(|n| n.starts_with("stele-"))
                && tags.get(LABEL_ENV).map(String::as_str) == Some(env.as_str())
            {
                mine.push(igm);
            }
        }
        if mine.is_empty() {
            return Ok(vec![]);
        }
        let backends = self.backend_services(s).await?;
        let mut out = Vec::new();
        for igm in &mine {
            out.push(self.group_view(s, igm, &backends).await?);
        }
        self.listed_backends = Some((s.project.to_owned(), backends));
        Ok(out)
    }

    async fn describe_group(&mut self, location: &str, name: &str) -> Result<Option<GroupView>, ProviderError> {
        let s = Scope::parse(location)?;
        let c = self.clients().await?;
        let r =
            c.groups.get().set_project(s.project).set_region(s.region).set_instance_group_manager(name).send().await;
        let Some(igm) = not_found_is_none("regionInstanceGroupManagers.get", r)? else { return Ok(None) };
        let backends = self.backend_services(s).await?;
        self.group_view(s, &igm, &backends).await.map(Some)
    }

    /// `regionInstanceGroupManagers.insert` at target size 0, then each backend service attached. The
    /// update policy keeps the MIG from rolling by itself (see the module's documentation).
    async fn create_group(
        &mut self,
        spec: &CloudSpec<'_>,
        env: &EnvName,
        new: NewGroup<'_>,
    ) -> Result<(), ProviderError> {
        use m::instance_group_manager_update_policy::{InstanceRedistributionType, MinimalAction, Type};
        let s = Scope::parse(&spec.region)?;
        let NewGroup { name, group, generation, template, max: _, balancers } = new;
        if name.len() > 63 {
            return Err(refused(format!("managed instance group name {name} is longer than 63")));
        }
        let mut tags = vec![
            (LABEL_ENV, env.to_string()),
            (LABEL_GROUP, group.to_string()),
            (LABEL_MANAGED, "true".to_owned()),
            (TAG_BASE_TEMPLATE, template.name.clone()),
        ];
        if let Some(g) = generation {
            tags.push((LABEL_GENERATION, g.to_string()));
        }
        let backends: Vec<&str> = balancers.iter().map(|b| last_segment(b)).collect();
        if !backends.is_empty() {
            tags.push((TAG_BACKENDS, backends.join(",")));
        }
        let version = template.version.clone().unwrap_or_else(|| template.name.clone());
        let mut policy = m::InstanceGroupManagerUpdatePolicy::default();
        policy.r#type = Some(Type::Opportunistic);
        policy.minimal_action = Some(MinimalAction::None);
        policy.instance_redistribution_type = Some(InstanceRedistributionType::None);
        let mut igm = m::InstanceGroupManager::default();
        igm.name = Some(name.to_owned());
        igm.description = Some(tags_text(&tags));
        // Instance names are the base name and a suffix of 4 characters; the base has at most 58.
        igm.base_instance_name = Some(name.chars().take(58).collect::<String>().trim_end_matches('-').to_owned());
        igm.instance_template = Some(s.instance_template(&version));
        igm.target_size = Some(0);
        igm.update_policy = Some(policy);
        if let Some(port) = spec.port {
            let mut np = m::NamedPort::default();
            np.name = Some("http".into());
            np.port = Some(crate::provider::cloud::to_i32(port, "port", &WORDS)?);
            igm.named_ports = vec![np];
        }
        let c = self.clients().await?;
        let poller = c
            .groups
            .insert()
            .set_project(s.project)
            .set_region(s.region)
            .set_body(igm)
            .set_request_id(request_id())
            .with_idempotency(true)
            .poller();
        if created("regionInstanceGroupManagers.insert", poller).await? {
            tracing::info!(group = name, "created managed instance group");
        }
        for b in balancers {
            self.attach_balancer(&spec.region, name, &b).await?;
        }
        Ok(())
    }

    /// `regionInstanceGroupManagers.setInstanceTemplate` (bounds do not exist on a MIG).
    async fn update_group(&mut self, location: &str, name: &str, update: GroupUpdate) -> Result<(), ProviderError> {
        let Some(template) = update.template else { return Ok(()) };
        let s = Scope::parse(location)?;
        let c = self.clients().await?;
        let mut body = m::RegionInstanceGroupManagersSetTemplateRequest::default();
        body.instance_template = Some(s.instance_template(template.version.as_deref().unwrap_or(&template.name)));
        let poller = c
            .groups
            .set_instance_template()
            .set_project(s.project)
            .set_region(s.region)
            .set_instance_group_manager(name)
            .set_body(body)
            .set_request_id(request_id())
            .with_idempotency(true)
            .poller();
        done("regionInstanceGroupManagers.setInstanceTemplate", poller).await.map(drop)
    }

    /// `regionInstanceGroupManagers.resize`, after attaching the group to the backend services it was
    /// created for and is not a backend of yet. An agent stopped between a group's insert and its
    /// attachment leaves an empty group, which the next observation deletes and the plan creates again
    /// (`tests/gcp_provider.rs`); this covers a group given instances from outside before its attachment.
    async fn set_desired(&mut self, location: &str, name: &str, desired: i32) -> Result<(), ProviderError> {
        for b in self.unattached.remove(name).unwrap_or_default() {
            self.attach_balancer(location, name, &b).await?;
            tracing::info!(group = name, backend_service = %b, "attached (completing an interrupted creation)");
        }
        let s = Scope::parse(location)?;
        let c = self.clients().await?;
        let poller = c
            .groups
            .resize()
            .set_project(s.project)
            .set_region(s.region)
            .set_instance_group_manager(name)
            .set_size(desired)
            .set_request_id(request_id())
            .with_idempotency(true)
            .poller();
        done("regionInstanceGroupManagers.resize", poller).await.map(drop)
    }

    /// `regionInstanceGroupManagers.deleteInstances` with `skipInstancesOnValidationError`: it lowers the
    /// target size by one, and a repeat for an instance already being deleted (or gone) is skipped, so a
    /// try whose answer was lost never lowers it twice.
    async fn terminate_instance(&mut self, location: &str, group: &str, id: &str) -> Result<(), ProviderError> {
        let s = Scope::parse(location)?;
        let url = s.instance(id).ok_or_else(|| refused(format!("instance id {id} is not zone/name")))?;
        let c = self.clients().await?;
        let mut body = m::RegionInstanceGroupManagersDeleteInstancesRequest::default();
        body.instances = vec![url];
        body.skip_instances_on_validation_error = Some(true);
        let poller = c
            .groups
            .delete_instances()
            .set_project(s.project)
            .set_region(s.region)
            .set_instance_group_manager(group)
            .set_body(body)
            .set_request_id(request_id())
            .with_idempotency(true)
            .poller();
        deleted("regionInstanceGroupManagers.deleteInstances", poller).await?;
        tracing::info!(group, instance = id, "deleting");
        Ok(())
    }

    /// Detaches the group from every backend service that has it (`backendServices.get` and `update`: GCP
    /// refuses to delete a group in use), then `regionInstanceGroupManagers.delete`.
    async fn delete_group(&mut self, location: &str, name: &str) -> Result<(), ProviderError> {
        let s = Scope::parse(location)?;
        let group_url = s.instance_group(name);
        let holding: Vec<String> = self
            .backend_services(s)
            .await?
            .into_iter()
            .filter(|b| b.backends.iter().any(|be| be.group.as_deref().is_some_and(|g| same_resource(g, &group_url))))
            .filter_map(|b| b.name)
            .collect();
        for b in holding {
            let url = group_url.clone();
            self.modify_backend_service(s, &b, "backendServices.update", move |bs| {
                let before = bs.backends.len();
                bs.backends.retain(|be| !be.group.as_deref().is_some_and(|g| same_resource(g, &url)));
                bs.backends.len() != before
            })
            .await?;
        }
        let c = self.clients().await?;
        let poller = c
            .groups
            .delete()
            .set_project(s.project)
            .set_region(s.region)
            .set_instance_group_manager(name)
            .set_request_id(request_id())
            .with_idempotency(true)
            .poller();
        deleted("regionInstanceGroupManagers.delete", poller).await
    }

    /// `backendServices.get` and `update` with the group added as a backend (balancing mode UTILIZATION).
    async fn attach_balancer(&mut self, location: &str, group: &str, balancer: &str) -> Result<(), ProviderError> {
        let s = Scope::parse(location)?;
        let url = s.instance_group(group);
        let name = last_segment(balancer).to_owned();
        self.modify_backend_service(s, &name, "backendServices.update", move |bs| {
            if bs.backends.iter().any(|be| be.group.as_deref().is_some_and(|g| same_resource(g, &url))) {
                return false;
            }
            let mut be = m::Backend::default();
            be.group = Some(url);
            be.balancing_mode = Some(m::backend::BalancingMode::Utilization);
            bs.backends.push(be);
            true
        })
        .await
    }

    /// The instances (their status, internal IP, creation time and labels), one `instances.list` per
    /// zone filtered by name; the image is the one of the template the MIG created it from.
    async fn describe_instances(
        &mut self,
        location: &str,
        ids: &[String],
    ) -> Result<HashMap<String, InstanceView>, ProviderError> {
        let s = Scope::parse(location)?;
        let c = self.clients().await?;
        let mut by_zone: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for id in ids {
            if let Some((zone, name)) = id.split_once('/') {
                by_zone.entry(zone).or_default().push(name);
            }
        }
        let mut found: Vec<(String, m::Instance)> = Vec::new();
        for (zone, zone_names) in by_zone {
            for chunk in zone_names.chunks(names::NAMES_PER_FILTER) {
                let mut items = c
                    .instances
                    .list()
                    .set_project(s.project)
                    .set_zone(zone)
                    .set_filter(names::name_filter(chunk))
                    .by_item();
                while let Some(i) = items.next().await {
                    let i = i.map_err(|e| classify("instances.list", e))?;
                    if let Some(name) = i.name.clone().filter(|n| chunk.contains(&n.as_str())) {
                        found.push((format!("{zone}/{name}"), i));
                    }
                }
            }
        }
        let mut out = HashMap::new();
        for (id, i) in found {
            let template = self.instance_templates.get(&id).map(|t| last_segment(t).to_owned());
            let info = template.and_then(|t| self.templates.get(&(location.to_owned(), t)).cloned().flatten());
            let status = i.status.as_ref().and_then(|st| st.name()).unwrap_or("UNKNOWN").to_owned();
            let mut tags = info.as_ref().map(|t| t.labels.clone()).unwrap_or_default();
            tags.extend(i.labels.clone());
            out.insert(
                id,
                InstanceView {
                    image_id: info.map(|t| t.image).unwrap_or_default(),
                    private_ip: i.network_interfaces.first().and_then(|n| n.network_ip.clone()),
                    running: status == "RUNNING",
                    state: status,
                    launched_ms: i.creation_timestamp.as_deref().and_then(names::rfc3339_ms).unwrap_or(0),
                    tags,
                },
            );
        }
        Ok(out)
    }

    /// `backendServices.getHealth` of each backend service for each instance group the instances are in.
    async fn balancer_health(
        &mut self,
        location: &str,
        balancers: &[String],
        ids: &[String],
    ) -> Result<HashMap<String, Vec<TargetVerdict>>, ProviderError> {
        let mut out: HashMap<String, Vec<TargetVerdict>> = HashMap::new();
        if ids.is_empty() || balancers.is_empty() {
            return Ok(out);
        }
        let s = Scope::parse(location)?;
        let c = self.clients().await?;
        let mut groups: Vec<String> = ids.iter().filter_map(|id| self.instance_groups.get(id).cloned()).collect();
        groups.sort();
        groups.dedup();
        for b in balancers {
            let b = last_segment(b);
            for g in &groups {
                let mut body = m::ResourceGroupReference::default();
                body.group = Some(s.instance_group(g));
                let r =
                    c.backends.get_health().set_project(s.project).set_backend_service(b).set_body(body).send().await;
                let health = r.map_err(|e| classify("backendServices.getHealth", e))?;
                for h in &health.health_status {
                    let Some(id) = h.instance.as_deref().and_then(instance_id) else { continue };
                    if !ids.contains(&id) {
                        continue;
                    }
                    out.entry(id).or_default().push(TargetVerdict {
                        balancer: b.to_owned(),
                        state: h.health_state.as_ref().and_then(|x| x.name()).unwrap_or("UNKNOWN").to_owned(),
                        reason: String::new(),
                        description: String::new(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// `backendServices.list`: Stele's by name, with the tags of their descriptions. Right after
    /// `list_groups` (as an observation calls them), its listing is used instead of a second one.
    async fn list_balancers(
        &mut self,
        location: &str,
    ) -> Result<Vec<(String, HashMap<String, String>)>, ProviderError> {
        let s = Scope::parse(location)?;
        let services = match self.listed_backends.take() {
            Some((project, services)) if project == s.project => services,
            _ => self.backend_services(s).await?,
        };
        Ok(services
            .into_iter()
            .filter_map(|b| {
                let name = b.name.filter(|n| n.starts_with("stele-"))?;
                Some((name, parse_tags(b.description.as_deref().unwrap_or_default())))
            })
            .collect())
    }

    /// `backendServices.get`.
    async fn find_balancer(
        &mut self,
        location: &str,
        name: &str,
    ) -> Result<Option<(String, HashMap<String, String>)>, ProviderError> {
        let s = Scope::parse(location)?;
        let c = self.clients().await?;
        let r = c.backends.get().set_project(s.project).set_backend_service(name).send().await;
        Ok(not_found_is_none("backendServices.get", r)?
            .map(|b| (name.to_owned(), parse_tags(b.description.as_deref().unwrap_or_default()))))
    }

    /// `backendServices.insert`: HTTP on the groups' named port `http`, EXTERNAL_MANAGED, health checked by
    /// the spec's health check; no backends yet (the generation's group is attached when created).
    async fn create_balancer(
        &mut self,
        location: &str,
        _spec: &Environment,
        new: NewBalancer<'_>,
    ) -> Result<(), ProviderError> {
        let s = Scope::parse(location)?;
        let NewBalancer { name, env, group, generation, balancer_base: health_check, port: _ } = new;
        let mut b = m::BackendService::default();
        b.name = Some(name.to_owned());
        b.description = Some(tags_text(&[
            (LABEL_ENV, env.to_string()),
            (LABEL_GROUP, group.to_string()),
            (LABEL_GENERATION, generation.to_string()),
            (LABEL_MANAGED, "true".to_owned()),
        ]));
        b.protocol = Some(m::backend_service::Protocol::Http);
        b.port_name = Some("http".into());
        b.load_balancing_scheme = Some(m::backend_service::LoadBalancingScheme::ExternalManaged);
        b.health_checks = vec![s.health_check(health_check)];
        let c = self.clients().await?;
        let poller = c
            .backends
            .insert()
            .set_project(s.project)
            .set_body(b)
            .set_request_id(request_id())
            .with_idempotency(true)
            .poller();
        if created("backendServices.insert", poller).await? {
            tracing::info!(backend_service = %name, generation, "created backend service");
        }
        Ok(())
    }

    /// `backendServices.delete`.
    async fn delete_balancer(&mut self, location: &str, id: &str) -> Result<(), ProviderError> {
        let s = Scope::parse(location)?;
        let c = self.clients().await?;
        let poller = c
            .backends
            .delete()
            .set_project(s.project)
            .set_backend_service(last_segment(id))
            .set_request_id(request_id())
            .with_idempotency(true)
            .poller();
        deleted("backendServices.delete", poller).await
    }

    /// `backendServices.get` and `update` of each, with the tag set in its description.
    async fn tag_balancers(
        &mut self,
        location: &str,
        ids: &[String],
        key: &str,
        value: &str,
    ) -> Result<(), ProviderError> {
        let s = Scope::parse(location)?;
        for id in ids {
            self.modify_backend_service(s, last_segment(id), "backendServices.update", |b| {
                let d = names::with_tag(b.description.as_deref().unwrap_or_default(), key, value);
                let changed = b.description.as_deref() != Some(d.as_str());
                b.description = Some(d);
                changed
            })
            .await?;
        }
        Ok(())
    }

    /// `urlMaps.get`: the default route's weighted backend services by name; a plain default service
    /// counts as weight 100.
    async fn read_weights(&mut self, location: &str, url_map: &str) -> Result<Vec<(String, i32)>, ProviderError> {
        let s = Scope::parse(location)?;
        let c = self.clients().await?;
        let r = c.url_maps.get().set_project(s.project).set_url_map(url_map).send().await;
        let Some(map) = not_found_is_none("urlMaps.get", r)? else {
            return Err(refused(format!("url map {url_map} does not exist in project {}", s.project)));
        };
        let weighted: Vec<(String, i32)> = map
            .default_route_action
            .as_ref()
            .map(|a| {
                a.weighted_backend_services
                    .iter()
                    .filter_map(|w| {
                        let name = last_segment(w.backend_service.as_deref()?).to_owned();
                        Some((name, i32::try_from(w.weight.unwrap_or(0)).unwrap_or(i32::MAX)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if weighted.is_empty() {
            return Ok(map
                .default_service
                .as_deref()
                .map(|d| vec![(last_segment(d).to_owned(), 100)])
                .unwrap_or_default());
        }
        Ok(weighted)
    }

    /// `urlMaps.get` and `urlMaps.update` (guarded by its fingerprint) with the default route's weighted
    /// backend services set and the default service cleared (GCP allows one or the other).
    async fn write_weights(
        &mut self,
        location: &str,
        url_map: &str,
        weights: &[(String, i32)],
    ) -> Result<(), ProviderError> {
        let s = Scope::parse(location)?;
        let c = self.clients().await?;
        let r = c.url_maps.get().set_project(s.project).set_url_map(url_map).send().await;
        let Some(mut map) = not_found_is_none("urlMaps.get", r)? else {
            return Err(refused(format!("url map {url_map} does not exist in project {}", s.project)));
        };
        let action = map.default_route_action.get_or_insert_with(Default::default);
        action.weighted_backend_services = weights
            .iter()
            .map(|(b, w)| {
                let mut wb = m::WeightedBackendService::default();
                wb.backend_service = Some(s.backend_service(last_segment(b)));
                wb.weight = Some(u32::try_from(*w).unwrap_or(0));
                wb
            })
            .collect();
        map.default_service = None;
        let poller = c
            .url_maps
            .update()
            .set_project(s.project)
            .set_url_map(url_map)
            .set_body(map)
            .set_request_id(request_id())
            .with_idempotency(true)
            .poller();
        done("urlMaps.update", poller).await.map(drop)
    }
}
