//! Launch-template versions: one per (environment, generation, AMI), made from the template's default
//! version with only the image and the instance tags changed, found again by their description.

use super::api::{AwsApi, Clients};
use super::errors::{classify, error_code};
use super::{TAG_BLAKE3, TAG_ENV, TAG_GENERATION, TAG_VERSION};
use crate::plan::{Generation, Release};
use crate::provider::cloud::{refused, retryable, CloudSpec, GroupView};
use crate::provider::ProviderError;
use aws_sdk_ec2 as ec2;
use ledger_format::types::EnvName;
use std::collections::BTreeSet;

/// The description that identifies the launch-template version of (environment, generation, AMI).
pub fn version_description(env: &EnvName, generation: Generation, ami: &str) -> String {
    format!("stele {env} generation {generation} {ami}")
}

/// The inverse of `version_description`: (environment, generation, AMI).
pub fn parse_version_description(s: &str) -> Option<(String, Generation, String)> {
    let parts: Vec<&str> = s.split(' ').collect();
    match parts.as_slice() {
        ["stele", env, "generation", n, ami] if !env.is_empty() && !ami.is_empty() => {
            Some(((*env).to_owned(), n.parse().ok()?, (*ami).to_owned()))
        }
        _ => None,
    }
}

impl AwsApi {
    /// Every version of the template: number → (description, ImageId), remembered for observing.
    pub(super) async fn list_versions(
        &mut self,
        c: &Clients,
        region: &str,
        template: &str,
    ) -> Result<Vec<ec2::types::LaunchTemplateVersion>, ProviderError> {
        let versions: Vec<ec2::types::LaunchTemplateVersion> = c
            .ec2
            .describe_launch_template_versions()
            .launch_template_name(template)
            .max_results(200)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<_, _>>()
            .await
            .map_err(|e| match error_code(&e).as_deref() {
                Some(code) if code.starts_with("InvalidLaunchTemplateName") || code.contains("NotFound") => {
                    refused(format!("launch template {template} does not exist in {region} ({code})"))
                }
                _ => classify("DescribeLaunchTemplateVersions", e),
            })?;
        let info = self.version_info.entry((region.to_owned(), template.to_owned())).or_default();
        for v in &versions {
            if let Some(n) = v.version_number() {
                let image = v.launch_template_data().and_then(|d| d.image_id()).unwrap_or_default();
                info.insert(n, (v.version_description().unwrap_or_default().to_owned(), image.to_owned()));
            }
        }
        Ok(versions)
    }

    /// The lowest version of the template made for (env, generation, AMI): its description says so and
    /// its ImageId is the AMI.
    pub(super) fn find_version(&self, region: &str, template: &str, description: &str, ami: &str) -> Option<i64> {
        self.version_info
            .get(&(region.to_owned(), template.to_owned()))?
            .iter()
            .find(|(_, (d, image))| d == description && image == ami)
            .map(|(n, _)| *n)
    }

    /// The version Stele made for the release, as this process knows it (no call).
    pub(super) fn known_version(
        &self,
        aws: &CloudSpec<'_>,
        env: &EnvName,
        release: &Release,
        ami: &str,
    ) -> Option<i64> {
        let description = version_description(env, release.generation, ami);
        self.versions.get(&(aws.region.to_string(), aws.template.to_owned(), description)).copied()
    }

    pub(super) async fn ensure_version(
        &mut self,
        aws: &CloudSpec<'_>,
        env: &EnvName,
        release: &Release,
        ami: &str,
    ) -> Result<i64, ProviderError> {
        let (region, template) = (&*aws.region, aws.template);
        let c = self.clients(region);
        let description = version_description(env, release.generation, ami);
        let key = (region.to_owned(), template.to_owned(), description.clone());
        if let Some(n) = self.versions.get(&key) {
            return Ok(*n);
        }
        let versions = self.list_versions(&c, region, template).await?;
        if let Some(n) = self.find_version(region, template, &description, ami) {
            self.versions.insert(key, n);
            return Ok(n);
        }
        // A new version made from the template's default version as it is now: only the image and the
        // instance tags change (the operator's own instance tags are kept).
        let described = c
            .ec2
            .describe_launch_templates()
            .launch_template_names(template)
            .send()
            .await
            .map_err(|e| classify("DescribeLaunchTemplates", e))?;
        let source = described
            .launch_templates()
            .iter()
            .find(|t| t.launch_template_name() == Some(template))
            .and_then(|t| t.default_version_number())
            .ok_or_else(|| refused(format!("launch template {template} has no default version")))?;
        let source_data = versions
            .iter()
            .find(|v| v.version_number() == Some(source))
            .and_then(|v| v.launch_template_data())
            .cloned()
            .unwrap_or_else(|| ec2::types::ResponseLaunchTemplateData::builder().build());
        let ours = [
            (TAG_ENV, env.to_string()),
            (TAG_GENERATION, release.generation.to_string()),
            (TAG_VERSION, release.version.to_string()),
            (TAG_BLAKE3, release.digest().to_hex()),
        ];
        let mut specs = Vec::new();
        let mut has_instance = false;
        for s in source_data.tag_specifications() {
            let instance = s.resource_type() == Some(&ec2::types::ResourceType::Instance);
            has_instance |= instance;
            let mut tags: Vec<ec2::types::Tag> = s
                .tags()
                .iter()
                .filter(|t| !(instance && t.key().is_some_and(|k| k.starts_with("stele:"))))
                .cloned()
                .collect();
            if instance {
                tags.extend(ours.iter().map(|(k, v)| ec2::types::Tag::builder().key(*k).value(v).build()));
            }
            specs.push(
                ec2::types::LaunchTemplateTagSpecificationRequest::builder()
                    .set_resource_type(s.resource_type().cloned())
                    .set_tags(Some(tags))
                    .build(),
            );
        }
        if !has_instance {
            specs.push(
                ec2::types::LaunchTemplateTagSpecificationRequest::builder()
                    .resource_type(ec2::types::ResourceType::Instance)
                    .set_tags(Some(
                        ours.iter().map(|(k, v)| ec2::types::Tag::builder().key(*k).value(v).build()).collect(),
                    ))
                    .build(),
            );
        }
        // SourceVersion carries everything else over on AWS; the instance type is copied as well
        // because emulators (moto) ignore SourceVersion.
        let data = ec2::types::RequestLaunchTemplateData::builder()
            .image_id(ami)
            .set_instance_type(source_data.instance_type().cloned())
            .set_tag_specifications(Some(specs))
            .build();
        // The same request after a lost response (or a restart) is the same token: no second version.
        let token = blake3::hash(format!("{region}\n{template}\n{source}\n{description}").as_bytes()).to_hex();
        c.ec2
            .create_launch_template_version()
            .launch_template_name(template)
            .source_version(source.to_string())
            .version_description(&description)
            .launch_template_data(data)
            .client_token(&token[..64])
            .send()
            .await
            .map_err(|e| classify("CreateLaunchTemplateVersion", e))?;
        tracing::info!(template, %description, "created a launch template version");
        // Read back rather than trusting the answer: where a retried create made two, the lowest wins.
        self.list_versions(&c, region, template).await?;
        let n = self
            .find_version(region, template, &description, ami)
            .ok_or_else(|| retryable(format!("launch template {template}: the new version is not visible yet")))?;
        self.versions.insert(key, n);
        Ok(n)
    }

    /// Reads the versions of the groups' templates again when a group names a version not known yet
    /// (a group made from a template that is gone still reports its instances).
    pub(super) async fn read_versions(&mut self, region: &str, groups: &[GroupView]) -> Result<(), ProviderError> {
        let unknown_version = groups.iter().any(|g| {
            g.template_name.as_deref().is_some_and(|t| {
                let known = self.version_info.get(&(region.to_owned(), t.to_owned()));
                g.template_version
                    .as_deref()
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| known.is_none_or(|k| !k.contains_key(&v)))
            })
        });
        if unknown_version {
            let c = self.clients(region);
            let templates: BTreeSet<String> = groups.iter().filter_map(|g| g.template_name.clone()).collect();
            for t in templates {
                if let Err(e) = self.list_versions(&c, region, &t).await {
                    if e.is_retryable() {
                        return Err(e);
                    }
                    tracing::warn!(template = %t, "cannot read launch template versions: {e}");
                }
            }
        }
        Ok(())
    }

    /// The generation and AMI a launch-template version of `template` was made for, if Stele made it.
    pub(super) fn version_release(
        &self,
        region: &str,
        env: &EnvName,
        view: &GroupView,
    ) -> Option<(Generation, String)> {
        let template = view.template_name.as_deref()?;
        let n: i64 = view.template_version.as_deref()?.parse().ok()?;
        let (description, image) = self.version_info.get(&(region.to_owned(), template.to_owned()))?.get(&n)?;
        let (of, generation, ami) = parse_version_description(description)?;
        (of == env.as_str() && ami == *image).then_some((generation, ami))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_round_trip() {
        let env: EnvName = "prod".parse().unwrap();
        let d = version_description(&env, 12, "ami-0abc");
        assert_eq!(d, "stele prod generation 12 ami-0abc");
        assert_eq!(parse_version_description(&d), Some(("prod".into(), 12, "ami-0abc".into())));
        for bad in
            ["", "stele prod generation x ami-1", "stele prod gen 1 ami-1", "stele prod generation 1", "web-base"]
        {
            assert_eq!(parse_version_description(bad), None, "{bad}");
        }
    }
}
