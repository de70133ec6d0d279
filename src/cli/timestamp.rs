//! `stele timestamp`: the command line of the timestamp role (SPEC.md §6.4, §8.9), kept out of
//! `cli.rs` so that file stays short. Same contract: names, defaults, help and examples only.

use super::RepoArgs;
use clap::{Args, Subcommand};
use std::path::PathBuf;

pub const TIMESTAMP_EXAMPLES: &str = "Examples:
  stele policy set-timestamp --pubkey bot.key.pub --max-validity 6h --key alice.key   # once, by root
  stele timestamp renew --key bot.key               # every few hours, e.g. from CI: valid for 6h
  stele timestamp renew --key bot.key --expires 2h && git push origin HEAD
  stele timestamp show                              # exits 1 when the timestamp has expired";

#[derive(Args, Debug)]
pub struct TimestampArgs {
    #[command(subcommand)]
    pub command: TimestampCommand,
}

#[derive(Subcommand, Debug)]
pub enum TimestampCommand {
    /// Sign and commit the next timestamp (trust/timestamp.json): it names HEAD, the commit it is made
    /// on, and is valid from now until --expires. Agents refuse to act on a ledger whose timestamp
    /// expired or went back, so a frozen mirror or a replayed ledger stalls them.
    #[command(after_help = TIMESTAMP_EXAMPLES)]
    Renew(RenewArgs),
    /// Show the current timestamp: version, the commit it names, when it was issued and expires, the
    /// time left and who signed it. Exits 1 when it has expired (or is missing under a timestamp role).
    #[command(after_help = TIMESTAMP_EXAMPLES)]
    Show(ShowArgs),
}

#[derive(Args, Debug)]
pub struct RenewArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Secret key of the policy's timestamp role (repeat until the role's threshold is met).
    #[arg(long = "key", value_name = "SECRET", required = true)]
    pub keys: Vec<PathBuf>,
    /// How long the timestamp is valid, such as 90m, 6h or 1d, or until a time (YYYY-MM-DDTHH:MM:SSZ);
    /// default and upper limit: the role's max_validity_seconds.
    #[arg(long, value_name = "DURATION")]
    pub expires: Option<String>,
    /// Print what was committed as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Print the timestamp as JSON.
    #[arg(long)]
    pub json: bool,
}
