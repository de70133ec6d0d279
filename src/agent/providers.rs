//! The providers an agent (or `stele plan`) drives, made when first needed, chosen per environment by
//! its spec's `provider.kind`. Must not decide anything.

use super::AgentConfig;
use crate::provider::local::LocalProvider;
use crate::provider::Provider;
use anyhow::Result;

/// The providers an agent drives, chosen per environment by its spec's `provider.kind`.
/// The providers of one agent (or of `stele plan`, observing only), each made when first needed.
pub(crate) struct Providers {
    pub(super) local: LocalProvider,
    #[cfg(feature = "aws")]
    aws: Option<crate::provider::aws::AwsProvider>,
    #[cfg(feature = "aws")]
    aws_settings: crate::provider::AwsSettings,
    #[cfg(feature = "aws")]
    observe_only: bool,
}

impl Providers {
    pub(super) fn new(cfg: &AgentConfig) -> Result<Self> {
        Ok(Self {
            local: LocalProvider::new(&cfg.state_dir, cfg.local.clone(), cfg.stele_exe.clone())?,
            #[cfg(feature = "aws")]
            aws: None,
            #[cfg(feature = "aws")]
            aws_settings: cfg.aws.clone(),
            #[cfg(feature = "aws")]
            observe_only: false,
        })
    }

    /// Providers that only observe and refuse every action: for `stele plan`.
    pub(crate) fn observe_only(cfg: &AgentConfig) -> Result<Self> {
        Ok(Self {
            local: LocalProvider::new(&cfg.state_dir, cfg.local.clone(), cfg.stele_exe.clone())?.dry_run(),
            #[cfg(feature = "aws")]
            aws: None,
            #[cfg(feature = "aws")]
            aws_settings: cfg.aws.clone(),
            #[cfg(feature = "aws")]
            observe_only: true,
        })
    }

    pub(crate) fn for_spec(&mut self, spec: &ledger_format::types::Environment) -> Result<&mut dyn Provider, String> {
        match &spec.provider {
            ledger_format::types::Provider::Local {} => Ok(&mut self.local),
            #[cfg(feature = "aws")]
            ledger_format::types::Provider::Aws { .. } => {
                if self.aws.is_none() {
                    let options = crate::provider::aws::AwsOptions {
                        probe_instances: self.aws_settings.probe_instances,
                        observe_only: self.observe_only,
                        ..Default::default()
                    };
                    let provider = crate::provider::aws::AwsProvider::with_options(options);
                    self.aws = Some(provider.map_err(|e| e.to_string())?);
                }
                Ok(self.aws.as_mut().expect("created above"))
            }
            #[cfg(not(feature = "aws"))]
            ledger_format::types::Provider::Aws { .. } => Err(format!(
                "environment {} uses provider aws, but this stele was built without the `aws` feature \
                 (cargo build --features aws)",
                spec.name
            )),
        }
    }
}
