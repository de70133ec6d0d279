//! The providers an agent (or `stele plan`) drives, made when first needed, chosen per environment by
//! its spec's `provider.kind`. Must not decide anything.
//!
//! For scale runs and tests only (the `sim` cargo feature, or `cfg(test)`): `Providers::simulated`
//! maps every environment, whatever its spec's kind, to one in-process simulated provider that keeps
//! environments apart. No ledger spec names it and the default binary cannot reach it.

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
    #[cfg(feature = "gcp")]
    gcp: Option<crate::provider::gcp::GcpProvider>,
    #[cfg(feature = "gcp")]
    gcp_settings: crate::provider::GcpSettings,
    #[cfg(any(feature = "aws", feature = "gcp"))]
    observe_only: bool,
    /// Set only by `simulated`: every environment runs here.
    #[cfg(any(test, feature = "sim"))]
    sim: Option<crate::provider::sim::Sim>,
}

impl Providers {
    pub(super) fn new(cfg: &AgentConfig) -> Result<Self> {
        Ok(Self {
            local: LocalProvider::new(&cfg.state_dir, cfg.local.clone(), cfg.stele_exe.clone())?,
            #[cfg(feature = "aws")]
            aws: None,
            #[cfg(feature = "aws")]
            aws_settings: cfg.aws.clone(),
            #[cfg(feature = "gcp")]
            gcp: None,
            #[cfg(feature = "gcp")]
            gcp_settings: cfg.gcp.clone(),
            #[cfg(any(feature = "aws", feature = "gcp"))]
            observe_only: false,
            #[cfg(any(test, feature = "sim"))]
            sim: None,
        })
    }

    /// Providers that run every environment on `sim`, whatever its spec's `provider.kind`.
    #[cfg(any(test, feature = "sim"))]
    pub(super) fn simulated(cfg: &AgentConfig, sim: crate::provider::sim::Sim) -> Result<Self> {
        Ok(Self { sim: Some(sim), ..Self::new(cfg)? })
    }

    /// The simulation, when these providers are simulated.
    #[cfg(any(test, feature = "sim"))]
    pub(super) fn sim(&self) -> Option<&crate::provider::sim::Sim> {
        self.sim.as_ref()
    }

    /// Providers that only observe and refuse every action: for `stele plan`.
    pub(crate) fn observe_only(cfg: &AgentConfig) -> Result<Self> {
        Ok(Self {
            local: LocalProvider::new(&cfg.state_dir, cfg.local.clone(), cfg.stele_exe.clone())?.dry_run(),
            #[cfg(feature = "aws")]
            aws: None,
            #[cfg(feature = "aws")]
            aws_settings: cfg.aws.clone(),
            #[cfg(feature = "gcp")]
            gcp: None,
            #[cfg(feature = "gcp")]
            gcp_settings: cfg.gcp.clone(),
            #[cfg(any(feature = "aws", feature = "gcp"))]
            observe_only: true,
            #[cfg(any(test, feature = "sim"))]
            sim: None,
        })
    }

    pub(crate) fn for_spec(&mut self, spec: &ledger_format::types::Environment) -> Result<&mut dyn Provider, String> {
        #[cfg(any(test, feature = "sim"))]
        if let Some(sim) = &mut self.sim {
            return Ok(sim);
        }
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
            #[cfg(feature = "gcp")]
            ledger_format::types::Provider::Gcp { .. } => {
                if self.gcp.is_none() {
                    let options = crate::provider::gcp::GcpOptions {
                        endpoint: self.gcp_settings.endpoint.clone(),
                        credentials: match (&self.gcp_settings.endpoint, self.gcp_settings.anonymous) {
                            (Some(_), true) => crate::provider::gcp::GcpCredentials::Anonymous,
                            _ => crate::provider::gcp::GcpCredentials::Adc,
                        },
                        probe_instances: self.gcp_settings.probe_instances,
                        observe_only: self.observe_only,
                        ..Default::default()
                    };
                    let provider = crate::provider::gcp::GcpProvider::with_options(options);
                    self.gcp = Some(provider.map_err(|e| e.to_string())?);
                }
                Ok(self.gcp.as_mut().expect("created above"))
            }
            #[cfg(not(feature = "gcp"))]
            ledger_format::types::Provider::Gcp { .. } => Err(format!(
                "environment {} uses provider gcp, but this stele was built without the `gcp` feature \
                 (cargo build --features gcp)",
                spec.name
            )),
        }
    }
}
