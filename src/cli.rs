//! The command line, as clap types. This interface is a contract that the README and the tests use.
//!
//! Owns: argument names, defaults, help text and examples. Must not do any work: `commands` does.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

mod timestamp;
pub use timestamp::{RenewArgs, ShowArgs as TimestampShowArgs, TimestampArgs, TimestampCommand};

/// What `stele --version` prints after the name: the version, the commit and how it was built.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("STELE_GIT_COMMIT"),
    ")\nrustc:    ",
    env!("STELE_RUSTC_VERSION"),
    "\ntarget:   ",
    env!("STELE_TARGET"),
    "\nfeatures: ",
    env!("STELE_FEATURES_SHOWN"),
    "\nprofile:  ",
    env!("STELE_PROFILE"),
);

#[derive(Parser, Debug)]
#[command(
    name = "stele",
    version = crate::build_info::SHORT_VERSION,
    long_version = LONG_VERSION,
    about = "Signed release ledger and pull-based GitOps reconciler for immutable infrastructure",
    long_about = "Stele keeps an append-only, signed ledger of releases in a Git repository: which image \
                  (by BLAKE3 digest) each environment runs. Every document is signed with Ed25519 by keys \
                  that a signed trust policy authorises. See ledger-format/SPEC.md for the format.",
    after_help = crate::exit::help_text()
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `--repo` for commands that read or change a local ledger work tree.
#[derive(Args, Debug, Clone, Default)]
pub struct RepoArgs {
    /// The ledger repository: any directory inside its work tree (default: the current directory).
    #[arg(long, env = "STELE_REPO", value_name = "DIR")]
    pub repo: Option<PathBuf>,
}

impl RepoArgs {
    /// The directory given, or the current directory.
    pub fn dir(&self) -> PathBuf {
        self.repo.clone().unwrap_or_else(|| PathBuf::from("."))
    }
}

/// `--repo` for commands that also fetch a remote ledger.
#[derive(Args, Debug, Clone, Default)]
pub struct SourceArgs {
    /// The ledger: a directory inside its work tree, or a file://, git://, ssh:// or https:// URL
    /// (default: the current directory).
    #[arg(long, env = "STELE_REPO", value_name = "DIR|URL")]
    pub repo: Option<PathBuf>,
}

impl SourceArgs {
    /// The location given, or the current directory.
    pub fn dir(&self) -> PathBuf {
        self.repo.clone().unwrap_or_else(|| PathBuf::from("."))
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate and inspect signing keys (OpenSSH Ed25519 key files).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Create a ledger: a Git repository with a signed policy and environment specs.
    #[command(after_help = INIT_EXAMPLES)]
    Init(InitArgs),
    /// Change the trust policy: signers, thresholds, environments, root keys.
    #[command(after_help = POLICY_EXAMPLES)]
    Policy(PolicyArgs),
    /// Build and hash image artifacts.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Promote a version: append a signed entry to an environment's chain and commit it.
    #[command(after_help = RELEASE_EXAMPLES)]
    Release(ReleaseArgs),
    /// Change how an environment runs: sign a new environment spec (strategy, groups, health) and commit it.
    Env(EnvArgs),
    /// Co-sign a proposal (--proposal NAME: every document of it the key may sign), or a document on
    /// the ledger branch (--env: the tip entry; --file: a document) and commit the signature.
    #[command(after_help = SIGN_EXAMPLES)]
    Sign(SignArgs),
    /// Land a proposal (branch stele/proposals/NAME) on the current branch as one commit, once every
    /// threshold is met; refuses a stale proposal. Deletes the local proposal branch.
    #[command(after_help = PROMOTE_EXAMPLES)]
    Promote(PromoteArgs),
    /// Verify the ledger tree: policy, environment specs and every chain. Exits 0 only if all verify.
    #[command(after_help = VERIFY_EXAMPLES)]
    Verify(VerifyArgs),
    /// Roll an environment back: commit exactly what `git revert` of its tip promotion would, SSH-signed
    /// with --key (for environments whose revert policy is `signed`).
    Rollback(RollbackArgs),
    /// Fetch the ledger (--repo: a path or a file://, git://, ssh:// or https:// URL), verify every new
    /// first-parent commit since the last verified one, and persist the new high-water mark.
    Poll(PollArgs),
    /// Replay the whole history offline, verify every step, and print each environment's timeline.
    #[command(after_help = AUDIT_EXAMPLES)]
    Audit(AuditArgs),
    /// Run the agent: poll and verify the ledger, converge instance groups to each environment's
    /// target, and record what runs on the status branch.
    #[command(after_help = AGENT_EXAMPLES)]
    Agent(AgentArgs),
    /// Print what the agent would do now (verify, observe, plan), without doing it.
    #[command(after_help = PLAN_EXAMPLES)]
    Plan(PlanArgs),
    /// Freeze convergence of one environment during an incident, without a commit: the agent keeps
    /// observing and reporting it (status, metrics, page) and acts on nothing until `stele resume`.
    Suspend(SuspendArgs),
    /// Let the agent converge a suspended environment again.
    Resume(ResumeArgs),
    /// Stop everything an agent started on the local provider under its state directory: every
    /// instance and balancer of every environment under <state>/local/, and remove their records.
    /// Stop the agent first (`systemctl stop stele-agent`): a running agent starts them again at its
    /// next pass, and nothing here checks for one.
    #[command(after_help = DOWN_EXAMPLES)]
    Down(DownArgs),
    /// Renew or show the timestamp: a short-lived, signed claim that the ledger had reached a commit,
    /// which agents require to be current (a frozen mirror or a replayed ledger stalls them).
    #[command(subcommand_required = true)]
    Timestamp(TimestampArgs),
    /// Show what runs where, as the agent last recorded it on the status branch.
    #[command(after_help = STATUS_EXAMPLES)]
    Status(StatusArgs),
    /// The whole story in one command: make a ledger and keys, release v1 and v2 of the demo app to a
    /// local environment, roll back by `git revert`, audit, and clean up.
    Quickstart(QuickstartArgs),
    /// Print the version, the Git commit and how this binary was built.
    Version(VersionArgs),
    /// Print a shell completion script: `stele completions bash > /etc/bash_completion.d/stele`.
    Completions(CompletionsArgs),
    /// Write a man page for every command (stele.1, stele-release.1, ...) into a directory.
    Man(ManArgs),
    /// Run a local TCP load balancer for one instance group (started by the local provider).
    #[command(hide = true)]
    Lb(LbArgs),
}

const DOWN_EXAMPLES: &str = "Examples:
  systemctl stop stele-agent && stele down --config /etc/stele/agent.toml
  stele down --state-dir ./agent-state";

const INIT_EXAMPLES: &str = "Examples:
  stele key generate --out alice.key
  stele init ledger --key alice.key --env staging --env prod";

const POLICY_EXAMPLES: &str = "Examples:
  stele policy show
  stele policy add-signer --env prod --pubkey bob.key.pub --key alice.key
  stele policy set-threshold --env prod --threshold 2 --key alice.key
  stele policy add-env canary --key alice.key";

const RELEASE_EXAMPLES: &str = "Examples:
  stele release --env staging --version 1.4.2 --image app.tar --key alice.key
  stele release --env prod --version 1.4.2 --image app.tar --expect-blake3 HEX --key alice.key
  stele release --env prod --version 1.4.2 --image https://images.example/app-1.4.2.tar --key alice.key";

const SIGN_EXAMPLES: &str = "Examples:
  stele sign --proposal prod-1.4.2 --key bob.key       # co-sign a proposal branch
  stele sign --env prod --key bob.key                  # co-sign prod's tip entry on the ledger branch
  stele sign --file trust/policy.json --key carol.key  # co-sign the policy";

const PROMOTE_EXAMPLES: &str = "Examples:
  stele promote prod-1.4.2";

const VERIFY_EXAMPLES: &str = "Examples:
  stele verify
  stele verify --rev HEAD~3 --json";

const AUDIT_EXAMPLES: &str = "Examples:
  stele audit --trust-root KEYID
  stele audit --repo https://git.example/ops/ledger.git --trust-root KEYID
  stele audit --env prod --at 2026-03-03T14:00:00Z --trust-root KEYID   # what prod ran then";

const AGENT_EXAMPLES: &str = "Examples:
  stele agent --config /etc/stele/agent.toml
  stele agent --repo ledger --state-dir state --trust-root KEYID --once --timeout 120";

const PLAN_EXAMPLES: &str = "Examples:
  stele plan --config /etc/stele/agent.toml
  stele plan --repo ledger --state-dir state --trust-root KEYID --env prod --json";

const STATUS_EXAMPLES: &str = "Examples:
  git fetch origin '+refs/stele/status/*:refs/stele/status/*'   # every agent's status ref
  stele status --trust-root KEYID
  stele status --env prod --json --trust-root-hash HEX
  stele status                     # without a trust root: every observation shown UNVERIFIED";

const ENV_SET_EXAMPLES: &str = "Examples:
  stele env show --env prod > prod.json      # edit prod.json, then:
  stele env set --env prod --spec prod.json --key alice.key";

#[derive(Args, Debug)]
pub struct VersionArgs {
    /// Print the build facts as a JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// The ledger repository: any directory inside its work tree (default: the current directory).
    #[arg(long, global = true, env = "STELE_REPO", value_name = "DIR")]
    pub repo: Option<PathBuf>,
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Args, Debug)]
pub struct EnvArgs {
    /// The ledger repository: any directory inside its work tree (default: the current directory).
    #[arg(long, global = true, env = "STELE_REPO", value_name = "DIR")]
    pub repo: Option<PathBuf>,
    #[command(subcommand)]
    pub command: EnvCommand,
}

/// Agent settings; each flag overrides the same key of the --config file.
#[derive(Args, Debug, Clone, Default)]
pub struct AgentSettingsArgs {
    /// Configuration file (TOML); see examples/agent.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Branch of the ledger to follow (default: HEAD of a local repository, main for a URL).
    #[arg(long, value_name = "NAME")]
    pub branch: Option<String>,
    /// Manage only this environment (repeatable; default: every environment of the ledger).
    #[arg(long = "env", value_name = "NAME")]
    pub envs: Vec<String>,
    /// Where the verified state, images, instance records and caches live.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Pinned trust root: key ids (comma-separated) of which --trust-threshold signed the genesis policy.
    #[arg(long, value_delimiter = ',', value_name = "KEYID[,KEYID...]", conflicts_with = "trust_root_hash")]
    pub trust_root: Vec<String>,
    /// How many of the --trust-root keys must have signed the genesis policy (default 1).
    #[arg(long, value_name = "N")]
    pub trust_threshold: Option<u64>,
    /// Pinned trust root: the document hash of the genesis policy.
    #[arg(long, value_name = "HEX")]
    pub trust_root_hash: Option<String>,
    /// Seconds between ledger polls (±10% jitter; default 30).
    #[arg(long, value_name = "SECONDS")]
    pub interval: Option<u64>,
    /// Status branch to write (default stele/status).
    #[arg(long, value_name = "BRANCH")]
    pub status_branch: Option<String>,
    /// Do not write status to Git.
    #[arg(long)]
    pub no_status: bool,
    /// Refuse a ledger whose head does not contain this commit (overrides `floor_commit`): a fresh
    /// agent cannot then be fed a mirror reset below what you know exists.
    #[arg(long, value_name = "COMMIT")]
    pub floor_commit: Option<String>,
    /// Refuse a ledger where environment ENV is below generation N (repeatable; adds to
    /// `floor_generations`).
    #[arg(long = "floor-generation", value_name = "ENV=N")]
    pub floor_generations: Vec<String>,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    pub repo: SourceArgs,
    #[command(flatten)]
    pub settings: AgentSettingsArgs,
    /// Run until every environment settles (converged, degraded or stalled), then exit:
    /// 0 converged, 1 stalled, 5 degraded, 6 timed out.
    #[arg(long)]
    pub once: bool,
    /// With --once: give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub timeout: u64,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Serve metrics, /healthz, /readyz, webhooks and the status page on this address (overrides
    /// `[http] listen`; the HTTP surface is off unless one of them is set). Example: 127.0.0.1:9469.
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<std::net::SocketAddr>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Args, Debug)]
pub struct SuspendArgs {
    /// The agent's configuration file (its state directory holds the suspension).
    #[arg(long, value_name = "FILE", required_unless_present = "state_dir")]
    pub config: Option<PathBuf>,
    /// The agent's state directory, instead of --config.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The environment to suspend.
    #[arg(long, value_name = "NAME")]
    pub env: String,
    /// Why, for the status, the metrics and the page (e.g. an incident number).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

#[derive(Args, Debug)]
pub struct DownArgs {
    /// The agent's configuration file (its state_dir and [local] settings are used).
    #[arg(long, value_name = "FILE", required_unless_present = "state_dir")]
    pub config: Option<PathBuf>,
    /// The agent's state directory, instead of --config.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// The agent's configuration file.
    #[arg(long, value_name = "FILE", required_unless_present = "state_dir")]
    pub config: Option<PathBuf>,
    /// The agent's state directory, instead of --config.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The environment to resume.
    #[arg(long, value_name = "NAME")]
    pub env: String,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub repo: SourceArgs,
    #[command(flatten)]
    pub settings: AgentSettingsArgs,
    /// Print each environment's plan as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct QuickstartArgs {
    /// Work in this directory (default: a new temporary directory, removed at the end).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Leave the ledger, keys and state behind (instances are still stopped).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Subcommand, Debug)]
pub enum EnvCommand {
    /// Sign and commit a new spec for an environment. FILE holds the spec's payload (see
    /// examples/environments/); `ledger`, `name` and `version` may be left out and are filled in
    /// (version = current + 1).
    #[command(after_help = ENV_SET_EXAMPLES)]
    Set(EnvSetArgs),
    /// Print an environment's current spec payload (the starting point for `env set`).
    Show {
        /// The environment to show.
        #[arg(long, value_name = "NAME")]
        env: String,
    },
}

#[derive(Args, Debug)]
pub struct EnvSetArgs {
    /// The environment whose spec to change.
    #[arg(long, value_name = "NAME")]
    pub env: String,
    /// The spec payload (JSON).
    #[arg(long, value_name = "FILE")]
    pub spec: PathBuf,
    /// Signing key(s) of the environment's role (repeat for a threshold above 1); a change that weakens a
    /// safety setting needs root keys too.
    #[arg(long, value_name = "SECRET", required = true)]
    pub key: Vec<PathBuf>,
    /// Name of the proposal written when signatures are missing (default: ENV-spec-vVERSION).
    #[arg(long, value_name = "NAME")]
    pub proposal: Option<String>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Only this environment.
    #[arg(long, value_name = "NAME")]
    pub env: Option<String>,
    /// The legacy status branch to read besides every ref under refs/stele/status/ (local branch
    /// first, then refs/remotes/origin/<branch>).
    #[arg(long, default_value = "stele/status", value_name = "BRANCH")]
    pub branch: String,
    /// The ledger branch observations are verified against (default: HEAD).
    #[arg(long, value_name = "NAME")]
    pub ledger_branch: Option<String>,
    /// Verify observations against the ledger replayed from this trust root (as `stele audit`).
    /// Without one, every observation is shown UNVERIFIED ("no trust root given").
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Verify observations against the ledger taken as found: whoever wrote its first commit is
    /// trusted (the heading says so).
    #[arg(long, conflicts_with_all = ["trust_root", "trust_root_hash"])]
    pub trust_genesis_as_found: bool,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LbArgs {
    /// The balancer's configuration file (JSON), re-read when it changes.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

#[derive(Args, Debug)]
pub struct TrustArgs {
    /// Pinned trust root: key ids (comma-separated) of which --trust-threshold must have signed the
    /// genesis policy.
    #[arg(long, value_delimiter = ',', value_name = "KEYID[,KEYID...]", conflicts_with = "trust_root_hash")]
    pub trust_root: Vec<String>,
    /// How many of the --trust-root keys must have signed the genesis policy.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub trust_threshold: u64,
    /// Pinned trust root: the document hash of the genesis policy.
    #[arg(long, value_name = "HEX")]
    pub trust_root_hash: Option<String>,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The environment to roll back.
    #[arg(long, value_name = "NAME")]
    pub env: String,
    /// SSH-sign the revert commit with this key (git's gpg.format=ssh signature, namespace "git"): one key
    /// of the environment's role, required under `revert: signed` (the default).
    #[arg(long, value_name = "SECRET")]
    pub key: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PollArgs {
    #[command(flatten)]
    pub repo: SourceArgs,
    /// Where the verified state (high-water mark) and the fetch cache live.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Branch to follow; default: HEAD of a local repository, main for a URL.
    #[arg(long, value_name = "NAME")]
    pub branch: Option<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    pub repo: SourceArgs,
    /// Branch to replay; default: HEAD of a local repository, main for a URL.
    #[arg(long, value_name = "NAME")]
    pub branch: Option<String>,
    /// Only this environment (its rows, and the policy's, in the timeline; its answer with --at).
    #[arg(long, value_name = "NAME")]
    pub env: Option<String>,
    /// Print the answer instead of the timeline: each environment's target at TIME (by commit time)
    /// and how it took effect, beside what the status branch says was observed running then. TIME is
    /// RFC 3339 with an offset (2026-03-03T14:00:00Z, 2026-03-03T14:00:00+01:00; fractional seconds
    /// are truncated toward the past) or a plain date (2026-03-03, meaning 00:00:00Z that day).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Audit without a pinned trust root: take the genesis policy as found, so whoever wrote the
    /// history's first commit is trusted (the output says so loudly). Without a trust root and without
    /// this flag, `stele audit` refuses (exit 3).
    #[arg(long, conflicts_with_all = ["trust_root", "trust_root_hash"])]
    pub trust_genesis_as_found: bool,
    /// Where to fetch a remote ledger (default: a temporary directory).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print the same timeline or answer as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also write the timeline, with the environments as the status branch reports them, as one
    /// self-contained HTML page to FILE (no scripts, no external assets). Stdout then gets a summary,
    /// or the JSON with --json; the exit code is the same. Not with --at: the page is the timeline.
    #[arg(long, value_name = "FILE", conflicts_with = "at")]
    pub html: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Write a new secret key to FILE (mode 0600) and its public key to FILE.pub; print the key id.
    Generate {
        /// Where to write the secret key (FILE.pub gets the public key).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Name recorded with the key (the OpenSSH comment); defaults to the file name.
        #[arg(long)]
        name: Option<String>,
        /// Replace existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Print the key id of a secret or public key file.
    Id {
        /// A public key file (.pub) or a secret key file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Where to create the ledger (an existing Git repository is used as it is).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Secret key that becomes the root key and the signer of every environment.
    #[arg(long, value_name = "SECRET")]
    pub key: PathBuf,
    /// An environment to create (repeat for more).
    #[arg(long = "env", value_name = "NAME", required = true)]
    pub envs: Vec<String>,
    /// The ledger's identity, bound into every signature; default: the directory name and a random suffix.
    #[arg(long, value_name = "ID")]
    pub ledger_id: Option<String>,
    /// Name recorded for the key in the policy; default: the key's comment.
    #[arg(long)]
    pub name: Option<String>,
    /// Where entries live: `flat` (every verifier since revision 1 reads it) or `buckets` (revision 5:
    /// a thousand entries per directory, for ledgers that will hold many thousands of entries per
    /// environment). `stele policy set-layout` changes it later.
    #[arg(long, value_enum, value_name = "LAYOUT", default_value = "flat")]
    pub layout: LayoutName,
}

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Print the policy: keys, root role and environment roles.
    Show {
        /// Print the policy payload as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Authorise a key to sign for an environment.
    AddSigner {
        /// The environment the key may sign for.
        #[arg(long, value_name = "NAME")]
        env: String,
        /// Public key file of the new signer (OpenSSH .pub, or a secret key file).
        #[arg(long, value_name = "FILE")]
        pubkey: PathBuf,
        /// Name recorded for the key; default: the key's comment.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        root: RootKeys,
    },
    /// Withdraw a key's authority to sign for an environment (the key stays listed if other roles use it).
    RemoveSigner {
        /// The environment the key may no longer sign for.
        #[arg(long, value_name = "NAME")]
        env: String,
        /// Key id of the signer to remove.
        #[arg(long, value_name = "KEYID", conflicts_with = "pubkey", required_unless_present = "pubkey")]
        keyid: Option<String>,
        /// Public key file of the signer to remove.
        #[arg(long, value_name = "FILE")]
        pubkey: Option<PathBuf>,
        #[command(flatten)]
        root: RootKeys,
    },
    /// Set how many distinct signatures an environment (or, with --root, the policy) needs.
    SetThreshold {
        /// The environment whose threshold to set.
        #[arg(long, value_name = "NAME", conflicts_with = "root_role", required_unless_present = "root_role")]
        env: Option<String>,
        /// Set the root role's threshold instead of an environment's.
        #[arg(long = "root")]
        root_role: bool,
        /// How many distinct signatures are needed from now on.
        #[arg(long, value_name = "N")]
        threshold: u64,
        #[command(flatten)]
        root: RootKeys,
    },
    /// Declare a new environment, signed by the given key, with a default spec.
    AddEnv {
        /// The new environment's name.
        #[arg(value_name = "NAME")]
        name: String,
        #[command(flatten)]
        root: RootKeys,
    },
    /// Replace the root keys. The new policy must be signed by a threshold of the old root keys and a
    /// threshold of the new ones: pass both sets with --key (or co-sign later with `stele sign --file
    /// trust/policy.json`).
    RotateRoot {
        /// Public key file of a new root key (repeat).
        #[arg(long = "new-root", value_name = "FILE", required = true)]
        new_root: Vec<PathBuf>,
        /// How many of the new root keys must sign later policy changes.
        #[arg(long, value_name = "N", default_value_t = 1)]
        threshold: u64,
        #[command(flatten)]
        root: RootKeys,
    },
    /// Authorise an agent key (`stele key generate`) to sign status reports for environments, or
    /// change which ones. An agent key may hold no other role: agents never sign releases.
    SetAgent {
        /// Public key file of the agent (OpenSSH .pub, or a secret key file).
        #[arg(long, value_name = "FILE")]
        pubkey: PathBuf,
        /// The environments it reports on (comma-separated or repeated).
        #[arg(long, value_name = "NAME", value_delimiter = ',', required = true)]
        env: Vec<String>,
        /// Name recorded for the key; default: the key's comment.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        root: RootKeys,
    },
    /// Withdraw an agent key: its reports are UNVERIFIED from this policy version on.
    RemoveAgent {
        /// Key id of the agent to remove.
        #[arg(long, value_name = "KEYID", conflicts_with = "pubkey", required_unless_present = "pubkey")]
        keyid: Option<String>,
        /// Public key file of the agent to remove.
        #[arg(long, value_name = "FILE")]
        pubkey: Option<PathBuf>,
        #[command(flatten)]
        root: RootKeys,
    },
    /// Set the timestamp role: the keys (for example a CI bot's) that renew trust/timestamp.json with
    /// `stele timestamp renew`, and how long one timestamp may be valid. From the next commit on,
    /// agents refuse to act on a ledger whose timestamp is missing or expired.
    SetTimestamp {
        /// Public key file of a timestamp key (repeat).
        #[arg(long, value_name = "FILE", required = true)]
        pubkey: Vec<PathBuf>,
        /// How many of them must sign a timestamp.
        #[arg(long, value_name = "N", default_value_t = 1)]
        threshold: u64,
        /// The longest a timestamp may be valid: 60s to 365d, such as 24h or 7d.
        #[arg(long, value_name = "DURATION", default_value = "24h")]
        max_validity: String,
        #[command(flatten)]
        root: RootKeys,
    },
    /// Remove the timestamp role and trust/timestamp.json (in one commit).
    RemoveTimestamp {
        #[command(flatten)]
        root: RootKeys,
    },
    /// Move every entry into another layout, in one commit with the policy that names it (SPEC.md
    /// revision 5). `buckets` puts entry N of an environment at ledger/<env>/<N / 1000>/<N>.json, so no
    /// Git tree grows past a thousand entries and reading a long history costs the same per entry at any
    /// length; `flat` (ledger/<env>/<N>.json) is the layout of revision 1. Entries move byte for byte,
    /// so nothing any agent runs changes. Upgrade every verifier to revision 5 before using `buckets`.
    SetLayout {
        /// The layout to move every entry into: `buckets` or `flat`.
        #[arg(value_enum, value_name = "LAYOUT")]
        layout: LayoutName,
        #[command(flatten)]
        root: RootKeys,
    },
}

/// Where entry files live (SPEC.md §2.3).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutName {
    /// ledger/<env>/<seq>.json (revision 1).
    Flat,
    /// ledger/<env>/<seq / 1000>/<seq>.json (revision 5).
    Buckets,
}

impl LayoutName {
    pub fn policy_value(self) -> Option<ledger_format::types::LedgerLayout> {
        match self {
            LayoutName::Flat => None,
            LayoutName::Buckets => Some(ledger_format::types::LedgerLayout::Buckets),
        }
    }
}

#[derive(Args, Debug)]
pub struct RootKeys {
    /// Secret key that signs the new policy (repeat for several signers).
    #[arg(long = "key", value_name = "SECRET", required = true)]
    pub keys: Vec<PathBuf>,
    /// Expiry of the new policy, e.g. 365d or 2027-12-31T00:00:00Z; default: none.
    #[arg(long, value_name = "WHEN")]
    pub expires: Option<String>,
    /// Name of the proposal written when signatures are missing (default: policy-vVERSION).
    #[arg(long, value_name = "NAME")]
    pub proposal: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Pack DIR into a reproducible tar archive (sorted entries, fixed times, owners and modes) and
    /// print its BLAKE3 digest and size: the same input always gives the same bytes.
    ///
    /// DIR must be an image: `stele-image.json` at its root, a JSON object with `command` (required:
    /// the program, a path relative to DIR such as `bin/app`, naming an executable regular file),
    /// `args` (array of strings) and `env` (object of strings; no `STELE_*` names). Example:
    /// {"command": "bin/app", "args": ["--port-from-env"], "env": {"RUST_LOG": "info"}}. The agent
    /// starts the command with STELE_PORT and friends set. A directory without a valid manifest is
    /// refused (exit 3) and nothing is written.
    Pack {
        /// The directory to pack.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Where to write the archive (outside DIR).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Print the digest and size as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the BLAKE3 digest and size of a file or of what a URL serves now, streamed: review it,
    /// then release a URL with `--expect-blake3` set to it.
    Digest {
        /// The file (or http:// or https:// URL) to hash.
        #[arg(value_name = "FILE|URL")]
        file: String,
        /// Print the digest and size as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The environment to release to.
    #[arg(long, value_name = "NAME")]
    pub env: String,
    /// Version label, e.g. 1.4.2.
    #[arg(long, value_name = "V")]
    pub version: String,
    /// Image artifact: a local path, or a file://, http:// or https:// URL. It is hashed as a stream.
    #[arg(long, value_name = "PATH_OR_URL", required_unless_present = "ami")]
    pub image: Option<String>,
    /// A machine image instead, with --blake3: the digest its bake pipeline recorded. For `aws`
    /// environments an AMI id, tagged `stele:blake3`; for `gcp` environments
    /// projects/P/global/images/NAME, labelled `stele-blake3-hi`/`-lo`. The agent checks the tag or labels.
    #[arg(long, visible_alias = "machine-image", value_name = "ID", conflicts_with_all = ["image", "uri", "expect_blake3", "expect_size"], requires = "blake3")]
    pub ami: Option<String>,
    /// With --ami: the image's BLAKE3 digest (hex).
    #[arg(long, value_name = "HEX", requires = "ami")]
    pub blake3: Option<String>,
    /// Record this URI in the entry instead of the image's own location (hash a local copy, publish
    /// the URL the agents fetch from).
    #[arg(long, value_name = "URI")]
    pub uri: Option<String>,
    /// Refuse unless the image's BLAKE3 digest is this (hex), e.g. the digest your build recorded.
    /// Required when --image is a URL: the entry signs only bytes someone reviewed.
    #[arg(long, value_name = "HEX")]
    pub expect_blake3: Option<String>,
    /// Refuse unless the image is exactly this many bytes.
    #[arg(long, value_name = "BYTES")]
    pub expect_size: Option<u64>,
    /// Largest image accepted, in bytes (reading stops past it).
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 30)]
    pub max_size: u64,
    /// The entry expires (is no longer acted on) after this, e.g. 30d, 12h or 2027-01-01T00:00:00Z.
    #[arg(long, value_name = "WHEN")]
    pub expires: Option<String>,
    /// Secret key that signs the entry.
    #[arg(long, value_name = "SECRET")]
    pub key: PathBuf,
    /// Name of the proposal written when the threshold is not met (default: ENV-VERSION).
    #[arg(long, value_name = "NAME")]
    pub proposal: Option<String>,
    /// Print what was committed (or proposed) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["env", "file", "proposal"])))]
pub struct SignArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Co-sign proposal NAME (branch stele/proposals/NAME): every document of it this key may sign.
    #[arg(long, value_name = "NAME")]
    pub proposal: Option<String>,
    /// Co-sign this environment's tip entry.
    #[arg(long, value_name = "NAME")]
    pub env: Option<String>,
    /// Co-sign this document instead (trust/policy.json, environments/<env>.json, or a tip entry).
    #[arg(long, value_name = "PATH")]
    pub file: Option<String>,
    /// Secret key to sign with.
    #[arg(long, value_name = "SECRET")]
    pub key: PathBuf,
}

#[derive(Args, Debug)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The proposal's name (branch stele/proposals/NAME).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Print what was landed as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Verify this commit's tree instead of the work tree.
    #[arg(long, value_name = "REV")]
    pub rev: Option<String>,
    /// Judge expiry as of this time (YYYY-MM-DDTHH:MM:SSZ) instead of now.
    #[arg(long, value_name = "TIME")]
    pub now: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}
