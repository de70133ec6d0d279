//! Exit codes of the `stele` binary, assigned here and nowhere else (README "Exit codes" lists them).
//!
//! Owns: the mapping from outcomes and error types to process exit codes. Must not print anything.

use crate::image::ImageError;
use crate::keys::KeyError;
use crate::provider::ProviderError;
use crate::repo::RepoError;
use crate::source::SourceError;
use crate::status::StatusError;

/// Success.
pub const OK: u8 = 0;
/// Verification ran and found problems (`stele verify`); `stele agent --once`: stalled (a human must act).
pub const VERIFY_FAILED: u8 = 1;
/// The command line is wrong (clap's own code for usage errors).
pub const USAGE: u8 = 2;
/// Input refused: a bad key or image, an unauthorised key, a ledger that does not verify before a
/// change, uncommitted changes. Nothing was written.
pub const REFUSED: u8 = 3;
/// The environment failed: I/O, a Git error, a repository that cannot be read. Retrying may help.
pub const IO: u8 = 4;
/// `stele agent --once`: an environment's health gate failed; the last good release was restored.
pub const DEGRADED: u8 = 5;
/// `stele agent --once`: not every environment settled before `--timeout`.
pub const TIMED_OUT: u8 = 6;

/// Every exit code with a one-line meaning, in order: what `stele --help` lists.
pub const CODES: &[(u8, &str)] = &[
    (OK, "success"),
    (VERIFY_FAILED, "verification failed; `agent --once`: stalled, a human must act"),
    (USAGE, "usage error (the command line is wrong)"),
    (REFUSED, "refused: bad input, unauthorised key, ledger does not verify; nothing was written"),
    (IO, "I/O, network or Git failure; retrying may help"),
    (DEGRADED, "`agent --once`: a health gate failed and the last good release was restored"),
    (TIMED_OUT, "`agent --once`: not every environment settled before --timeout"),
];

/// The exit-code table shown at the end of `stele --help`.
pub fn help_text() -> String {
    let mut text = String::from("Exit codes:");
    for (code, meaning) in CODES {
        text.push_str(&format!("\n  {code}  {meaning}"));
    }
    text
}

/// An operation refused for a reason the user must fix; maps to [`REFUSED`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// The exit code for an error that ended a command.
pub fn for_error(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<Refused>() || cause.is::<KeyError>() {
            return REFUSED;
        }
        if let Some(e) = cause.downcast_ref::<ImageError>() {
            return match e {
                ImageError::Read { .. }
                | ImageError::Io { .. }
                | ImageError::Http { .. }
                | ImageError::Append { .. }
                | ImageError::Finish { .. } => IO,
                _ => REFUSED,
            };
        }
        if let Some(e) = cause.downcast_ref::<SourceError>() {
            return match e {
                SourceError::Network { .. } | SourceError::Git { .. } => IO,
                SourceError::Rewritten { .. } => VERIFY_FAILED,
                SourceError::NoBranch { .. } | SourceError::UnknownHostKey { .. } => REFUSED,
            };
        }
        if let Some(e) = cause.downcast_ref::<StatusError>() {
            return match e {
                StatusError::Refused { .. } | StatusError::Corrupt { .. } => REFUSED,
                StatusError::Network { .. } | StatusError::Contended { .. } | StatusError::Git { .. } => IO,
            };
        }
        if let Some(e) = cause.downcast_ref::<ProviderError>() {
            return match e {
                ProviderError::Refused(_) => REFUSED,
                ProviderError::Retryable(_) => IO,
            };
        }
        if let Some(e) = cause.downcast_ref::<RepoError>() {
            return match e {
                RepoError::Dirty { .. }
                | RepoError::NotARepository { .. }
                | RepoError::UnknownRevision { .. }
                | RepoError::Proposal { .. } => REFUSED,
                RepoError::Io { .. } | RepoError::Git { .. } => IO,
            };
        }
    }
    IO
}
