//! The AWS provider: being built (issue 5).

use super::{Provider, ProviderError};
use crate::plan::{Observed, Release, Traffic};
use ledger_format::types::{EnvName, Environment, GroupName};

pub struct AwsProvider {}

impl AwsProvider {
    pub fn new() -> Result<Self, ProviderError> {
        Err(ProviderError::Refused("the aws provider is not built yet".into()))
    }
}

impl Provider for AwsProvider {
    fn prepare(&mut self, _: &EnvName, _: &Environment, _: &Release) -> Result<(), ProviderError> {
        Err(ProviderError::Refused("the aws provider is not built yet".into()))
    }
    fn observe(&mut self, _: &EnvName, _: &Environment, _: u64) -> Result<Observed, ProviderError> {
        Err(ProviderError::Refused("the aws provider is not built yet".into()))
    }
    fn launch(
        &mut self,
        _: &EnvName,
        _: &Environment,
        _: &GroupName,
        _: &Release,
        _: u64,
    ) -> Result<String, ProviderError> {
        Err(ProviderError::Refused("the aws provider is not built yet".into()))
    }
    fn terminate(&mut self, _: &EnvName, _: &GroupName, _: &str) -> Result<(), ProviderError> {
        Err(ProviderError::Refused("the aws provider is not built yet".into()))
    }
    fn set_traffic(&mut self, _: &EnvName, _: &GroupName, _: &Traffic, _: u64) -> Result<(), ProviderError> {
        Err(ProviderError::Refused("the aws provider is not built yet".into()))
    }
}
