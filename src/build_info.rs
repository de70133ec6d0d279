//! What this binary was built from, recorded by build.rs: shown by `stele version` and `--version`,
//! and exported by the agent as a metric.
//!
//! Owns: the build facts. Must not read anything at run time: every field is fixed at compile time.

use serde::Serialize;

/// The build facts, as plain strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BuildInfo {
    /// The package version, e.g. `0.1.0`.
    pub version: String,
    /// The Git commit built: a short hash, with `+dirty` when tracked files differed from it;
    /// `unknown` when built outside Git (a source tarball).
    pub commit: String,
    /// The compiler, as `rustc --version` prints it.
    pub rustc: String,
    /// The target triple, e.g. `x86_64-unknown-linux-gnu`.
    pub target: String,
    /// Enabled Cargo features, comma-separated (`aws`), or empty.
    pub features: String,
    /// The Cargo profile: `debug` or `release`.
    pub profile: String,
}

const VERSION: &str = env!("CARGO_PKG_VERSION");
const COMMIT: &str = env!("STELE_GIT_COMMIT");
const RUSTC: &str = env!("STELE_RUSTC_VERSION");
const TARGET: &str = env!("STELE_TARGET");
const FEATURES: &str = env!("STELE_FEATURES");
const PROFILE: &str = env!("STELE_PROFILE");

/// `0.1.0 (abc1234)`: what `stele --version` and `-V` print after the name.
pub const SHORT_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("STELE_GIT_COMMIT"), ")");

/// The build facts of this binary.
pub fn build_info() -> BuildInfo {
    BuildInfo {
        version: VERSION.into(),
        commit: COMMIT.into(),
        rustc: RUSTC.into(),
        target: TARGET.into(),
        features: FEATURES.into(),
        profile: PROFILE.into(),
    }
}

impl std::fmt::Display for BuildInfo {
    /// The lines `stele version` prints, the same as `stele --version`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let features = if self.features.is_empty() { "none" } else { &self.features };
        writeln!(f, "stele {} ({})", self.version, self.commit)?;
        writeln!(f, "rustc:    {}", self.rustc)?;
        writeln!(f, "target:   {}", self.target)?;
        writeln!(f, "features: {features}")?;
        write!(f, "profile:  {}", self.profile)
    }
}
