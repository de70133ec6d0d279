//! `stele agent`: builds the agent's configuration from the `--config` file and flags, then runs it.
//! Also used by `stele plan`, which needs the same configuration.

use super::trust_anchor;
use crate::agent::identity::{self, Identity};
use crate::agent::{self, default_agent_id, AgentConfig, StatusConfig};
use crate::cli::{AgentArgs, AgentSettingsArgs, TrustArgs};
use crate::exit::Refused;
use crate::provider::local::LocalSettings;
use crate::source::is_remote;
use anyhow::{Context, Result};
use ledger_format::types::EnvName;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The configuration file (TOML). Every key is optional; flags override keys. Relative paths are
/// relative to the file's directory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    repo: Option<String>,
    branch: Option<String>,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    trust_root: Vec<String>,
    trust_threshold: Option<u64>,
    trust_root_hash: Option<String>,
    #[serde(default)]
    environments: Vec<String>,
    interval_seconds: Option<u64>,
    status_branch: Option<String>,
    write_status: Option<bool>,
    agent_id: Option<String>,
    /// The agent's own Ed25519 key (`stele key generate`): status is then signed and written to the
    /// agent's own ref.
    key_file: Option<PathBuf>,
    /// The full status ref (default `refs/stele/status/<agent-id>` with a key).
    status_ref: Option<String>,
    #[serde(default)]
    local: LocalSettings,
    #[serde(default)]
    aws: crate::provider::AwsSettings,
    #[serde(default)]
    gcp: crate::provider::GcpSettings,
    /// The HTTP surface; off without this table (or `--http-listen`).
    http: Option<crate::http::HttpSettings>,
    /// Notification targets (`[[notify]]`).
    #[serde(default)]
    notify: Vec<crate::notify::NotifyTarget>,
    /// The freshness floor: a commit the ledger head must contain.
    floor_commit: Option<String>,
    /// The freshness floor: the least generation of each named environment.
    #[serde(default)]
    floor_generations: std::collections::BTreeMap<String, u64>,
}

/// The freshness floor from the file and the flags (flags win for the commit, add generations).
fn floor(
    file_commit: Option<String>,
    file_generations: std::collections::BTreeMap<String, u64>,
    args: &AgentSettingsArgs,
) -> Result<crate::sync::Floor> {
    let commit = args
        .floor_commit
        .clone()
        .or(file_commit)
        .map(|c| git2::Oid::from_str(&c).map_err(|e| Refused(format!("floor commit {c:?}: {e}"))))
        .transpose()?;
    let mut generations = std::collections::BTreeMap::new();
    let flags = args.floor_generations.iter().map(|f| {
        let (env, n) = f.split_once('=').ok_or_else(|| Refused(format!("--floor-generation {f:?}: expected ENV=N")))?;
        let n = n.parse::<u64>().map_err(|e| Refused(format!("--floor-generation {f:?}: {e}")))?;
        Ok::<_, anyhow::Error>((env.to_owned(), n))
    });
    for pair in file_generations.into_iter().map(Ok).chain(flags) {
        let (env, n) = pair?;
        generations.insert(env.parse::<EnvName>().map_err(Refused)?, n);
    }
    Ok(crate::sync::Floor { commit, generations })
}

pub fn load_config(repo_flag: Option<&Path>, args: &AgentSettingsArgs) -> Result<AgentConfig> {
    load_config_with(repo_flag, args, true)
}

/// [`load_config`]; with `create` false, a missing state directory is left missing (its path made
/// absolute), for commands that must write nothing (`stele plan`).
pub fn load_config_with(repo_flag: Option<&Path>, args: &AgentSettingsArgs, create: bool) -> Result<AgentConfig> {
    let (file, base) = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
            let file: AgentFile = toml::from_str(&text).map_err(|e| Refused(format!("{}: {e}", path.display())))?;
            (file, path.parent().map(Path::to_owned).unwrap_or_default())
        }
        None => (AgentFile::default(), PathBuf::new()),
    };
    // Absolute, so the same ledger is named the same way whatever the working directory (the state
    // directory records which source it belongs to).
    let base = std::path::absolute(if base.as_os_str().is_empty() { Path::new(".") } else { &base }).unwrap_or(base);
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    let repo = match (repo_flag, file.repo) {
        (Some(flag), _) if is_remote(&flag.to_string_lossy()) => {
            flag.to_str().ok_or_else(|| Refused(format!("{}: not UTF-8", flag.display())))?.to_owned()
        }
        (Some(flag), _) => std::fs::canonicalize(flag)
            .or_else(|_| std::path::absolute(flag))
            .unwrap_or_else(|_| flag.to_owned())
            .to_str()
            .ok_or_else(|| Refused(format!("{}: not UTF-8", flag.display())))?
            .to_owned(),
        (None, Some(r)) if is_remote(&r) => r,
        (None, Some(r)) => {
            let path = resolve(PathBuf::from(r));
            std::fs::canonicalize(&path).unwrap_or(path).display().to_string()
        }
        (None, None) => return Err(Refused("no ledger: pass --repo DIR|URL or set repo in --config".into()).into()),
    };
    let state_dir = match (&args.state_dir, file.state_dir) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => resolve(d),
        (None, None) => return Err(Refused("no state directory: pass --state-dir or set state_dir".into()).into()),
    };
    // Instances and balancers run in their own directories and outlive this process: give them
    // absolute paths.
    if create {
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("{}: cannot create the state directory", state_dir.display()))?;
    }
    let state_dir = match state_dir.canonicalize() {
        Err(_) if !create && !state_dir.exists() => std::path::absolute(&state_dir)?,
        r => r.with_context(|| format!("{}: cannot resolve the state directory", state_dir.display()))?,
    };
    let trust = if !args.trust_root.is_empty() || args.trust_root_hash.is_some() {
        TrustArgs {
            trust_root: args.trust_root.clone(),
            trust_threshold: args.trust_threshold.unwrap_or(1),
            trust_root_hash: args.trust_root_hash.clone(),
        }
    } else {
        TrustArgs {
            trust_root: file.trust_root,
            trust_threshold: args.trust_threshold.or(file.trust_threshold).unwrap_or(1),
            trust_root_hash: file.trust_root_hash,
        }
    };
    let names = if args.envs.is_empty() { file.environments } else { args.envs.clone() };
    let envs = names.iter().map(|e| e.parse::<EnvName>().map_err(Refused)).collect::<Result<Vec<_>, _>>()?;
    let interval = args.interval.or(file.interval_seconds).unwrap_or(30).max(1);
    let write_status = !args.no_status && file.write_status.unwrap_or(true);
    let status_branch = args.status_branch.clone().or(file.status_branch);
    // `stele plan` (create false) writes nothing, so it neither needs nor reads the key.
    let status = if write_status && create {
        Some(status_config(file.key_file.map(resolve), file.status_ref, status_branch, file.agent_id.as_deref())?)
    } else {
        None
    };
    let agent_id = match (file.agent_id, status.as_ref().and_then(|s| s.identity.as_ref())) {
        (Some(id), _) => id,
        (None, Some(identity)) => identity.default_id(),
        (None, None) => default_agent_id(&state_dir),
    };
    Ok(AgentConfig {
        anchor: trust_anchor(&trust)?,
        branch: args.branch.clone().or(file.branch),
        envs,
        interval: Duration::from_secs(interval),
        status,
        agent_id,
        local: file.local,
        aws: file.aws,
        gcp: file.gcp,
        http: file.http.map(|mut h| {
            h.hook_secret_file = h.hook_secret_file.map(resolve);
            h
        }),
        notify: file
            .notify
            .into_iter()
            .map(|mut n| {
                n.secret_file = n.secret_file.map(resolve);
                n
            })
            .collect(),
        timeline: None,
        floor: floor(file.floor_commit, file.floor_generations, args)?,
        stele_exe: std::env::current_exe().context("cannot find the stele binary for `stele lb`")?,
        repo,
        state_dir,
    })
}

/// Where status goes: with `key_file`, signed to `status_ref` or `refs/stele/status/<agent-id>` (the
/// id being `agent_id` or the first 16 hex digits of the key id); without, unsigned to `status_ref`
/// or the shared branch `refs/heads/<status_branch>` (default `stele/status`), with a warning that
/// readers will label those reports UNVERIFIED.
fn status_config(
    key_file: Option<PathBuf>,
    status_ref: Option<String>,
    status_branch: Option<String>,
    agent_id: Option<&str>,
) -> Result<StatusConfig> {
    let Some(key_file) = key_file else {
        let refname =
            status_ref.unwrap_or_else(|| format!("refs/heads/{}", status_branch.as_deref().unwrap_or("stele/status")));
        tracing::warn!(
            status_ref = %refname,
            "no key_file: status is written unsigned, and readers (`stele status`, `stele audit`) will label \
             its reports UNVERIFIED; give the agent a key of its own (`stele key generate --out agent.key`, \
             key_file = \"agent.key\") and declare it with `stele policy set-agent`"
        );
        return Ok(StatusConfig { refname, identity: None });
    };
    let identity = Identity::load(&key_file)?;
    let refname = match status_ref {
        Some(r) => r,
        None => identity::status_ref(agent_id.map_or_else(|| identity.default_id(), str::to_owned).as_str())
            .map_err(Refused)?,
    };
    if let Some(branch) = status_branch.filter(|b| b != "stele/status") {
        tracing::warn!(
            %branch,
            status_ref = %refname,
            "status_branch is ignored: an agent with a key writes signed status to its own ref"
        );
    }
    tracing::info!(key = %identity.key.key_id(), status_ref = %refname, "status is signed with the agent's key");
    Ok(StatusConfig { refname, identity: Some(identity) })
}

/// Parses the text of a configuration file and checks what [`load_config`] checks without the file
/// system: the environment names and the trust root. Used by the `agent_config` fuzz target
/// (fuzz/fuzz_targets/agent_config.rs); the agent itself reads its file through [`load_config`].
pub fn check_config_text(text: &str) -> Result<()> {
    let file: AgentFile = toml::from_str(text).map_err(|e| Refused(e.to_string()))?;
    for name in &file.environments {
        name.parse::<EnvName>().map_err(Refused)?;
    }
    trust_anchor(&TrustArgs {
        trust_root: file.trust_root,
        trust_threshold: file.trust_threshold.unwrap_or(1),
        trust_root_hash: file.trust_root_hash,
    })?;
    Ok(())
}

pub fn run(repo: Option<&Path>, args: AgentArgs) -> Result<u8> {
    let mut cfg = load_config(repo, &args.settings)?;
    if let Some(listen) = args.http_listen {
        cfg.http.get_or_insert_with(Default::default).listen = listen;
    }
    // The page's audit timeline: replayed from the agent's own copy of the ledger (its fetch cache,
    // or the local repository), up to the commit the agent verified.
    let repo_path = crate::source::local_copy(&cfg.repo, &crate::sync::cache_dir(&cfg.state_dir));
    let anchor = cfg.anchor.clone().unwrap_or(ledger_format::history::TrustAnchor::UnpinnedTrustGenesisAsFound);
    cfg.timeline = Some(agent::Timeline(std::sync::Arc::new(move |commit: &str| {
        let head = git2::Oid::from_str(commit).map_err(|e| e.to_string())?;
        super::audit::timeline_json(&repo_path, head, &anchor, None).map_err(|e| format!("{e:#}"))
    })));
    agent::run(cfg, args.once, Duration::from_secs(args.timeout))
}

#[cfg(test)]
mod tests {
    use super::AgentFile;

    #[test]
    fn the_example_configurations_parse() {
        for (name, text) in [
            ("examples/agent.toml", include_str!("../../examples/agent.toml")),
            ("examples/aws/agent.toml", include_str!("../../examples/aws/agent.toml")),
            ("examples/gcp/agent.toml", include_str!("../../examples/gcp/agent.toml")),
        ] {
            let file: AgentFile = toml::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(file.repo.is_some() && !file.trust_root.is_empty(), "{name}");
            assert!(!file.aws.probe_instances && !file.gcp.probe_instances, "{name}: probing is opt-in");
            assert!(file.gcp.endpoint.is_none() && !file.gcp.anonymous, "{name}: GCP itself, with ADC");
        }
        let fake: AgentFile = toml::from_str("[gcp]\nendpoint = \"http://127.0.0.1:1\"\nanonymous = true\n").unwrap();
        assert!(fake.gcp.anonymous && fake.gcp.endpoint.is_some());
        assert!(toml::from_str::<AgentFile>("[gcp]\nprobe = true\n").is_err(), "unknown keys are refused");
        let on: AgentFile = toml::from_str("[aws]\nprobe_instances = true\n").unwrap();
        assert!(on.aws.probe_instances);
        assert!(toml::from_str::<AgentFile>("[aws]\nprobe = true\n").is_err(), "unknown keys are refused");
    }

    #[test]
    fn config_text_checks_names_and_trust_root_without_the_file_system() {
        assert!(super::check_config_text(include_str!("../../examples/agent.toml")).is_ok());
        assert!(super::check_config_text("").is_ok(), "every key is optional");
        for bad in [
            "environments = [\"no/slash\"]\n",
            "trust_root = [\"not-hex\"]\n",
            "trust_root_hash = \"00\"\n",
            "trust_threshold = 2\ntrust_root = [\"a9a2e6c3c6c72a9b5bed1496aeef407b9ea86b9490c9009b68a28b1c19a02b65\"]\n",
            "unknown = 1\n",
        ] {
            assert!(super::check_config_text(bad).is_err(), "{bad}");
        }
    }
}
