//! The agent's identity (issue 13, SPEC.md §6.1 and §6.5): its own Ed25519 key (`key_file`), the id
//! its status ref is named by, and what the verified policy says of that key.
//!
//! Owns: loading the key and naming the ref (`refs/stele/status/<agent-id>`, the id being the first 16
//! hex digits of the key id unless the configuration names one); the judgement of the key against a
//! verified policy: a key in any role (root, an environment, timestamp) is refused, since an agent
//! never holds a key that signs releases, specs, policies or timestamps; a key that is not (yet) an
//! agent key of the policy, or not granted a managed environment, is allowed and warned about once per
//! policy version, because readers will label its reports UNVERIFIED.
//!
//! Must not: sign anything (the status writer does), or read the ledger.

use crate::exit::Refused;
use crate::status::StatusKey;
use ledger_format::types::{EnvName, Policy};
use std::path::{Path, PathBuf};

/// Where an agent with a key writes its status: one ref per agent, never shared.
pub const STATUS_REF_PREFIX: &str = "refs/stele/status/";

/// An agent's key and the file it came from.
#[derive(Clone, Debug)]
pub struct Identity {
    pub key: StatusKey,
    pub file: PathBuf,
}

impl Identity {
    /// Loads the OpenSSH Ed25519 secret key at `file` (from `stele key generate`). An unreadable or
    /// unusable file is refused, naming it.
    pub fn load(file: &Path) -> anyhow::Result<Self> {
        let loaded = crate::keys::load_secret(file)
            .map_err(|e| Refused(format!("key_file: {e}; the agent signs its status with it")))?;
        Ok(Self { key: StatusKey::new(loaded.key), file: file.to_owned() })
    }

    /// The default agent id: the first 16 hex digits of the key id.
    pub fn default_id(&self) -> String {
        self.key.key_id().to_hex()[..16].to_owned()
    }

    /// Judges the key against a verified `policy`, for the environments this agent manages (`envs`;
    /// empty: every environment of the policy).
    pub fn judge(&self, policy: &Policy, envs: &[EnvName]) -> Judgement {
        let id = self.key.key_id();
        let role = std::iter::once(("root".to_owned(), &policy.root.keys))
            .chain(policy.environments.iter().map(|(env, r)| (format!("environment {env}"), &r.keys)))
            .chain(policy.timestamp.iter().map(|t| ("timestamp".to_owned(), &t.keys)))
            .find(|(_, keys)| keys.contains(id));
        if let Some((role, _)) = role {
            return Judgement::Refused(format!(
                "{}: key {id} is in the {role} role of policy v{}; an agent never holds a key that signs \
                 releases, specs, policies or timestamps: generate one of its own with `stele key generate` \
                 and declare it with `stele policy set-agent`",
                self.file.display(),
                policy.version
            ));
        }
        let Some(grant) = policy.agents.get(id) else {
            return Judgement::Unverified(format!(
                "reports will be UNVERIFIED: key {id} is not an agent key of policy v{} (declare it with \
                 `stele policy set-agent --pubkey {}.pub --env ENV`)",
                policy.version,
                self.file.display()
            ));
        };
        let managed: Vec<&EnvName> =
            if envs.is_empty() { policy.environments.keys().collect() } else { envs.iter().collect() };
        let missing: Vec<String> =
            managed.into_iter().filter(|e| !grant.environments.contains(e)).map(ToString::to_string).collect();
        if missing.is_empty() {
            Judgement::Agent
        } else {
            Judgement::Unverified(format!(
                "reports on {} will be UNVERIFIED: key {id} is an agent key of policy v{} for {} only",
                missing.join(", "),
                policy.version,
                grant.environments.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ))
        }
    }
}

/// What a verified policy says of the agent's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// An agent key granted every managed environment.
    Agent,
    /// Allowed, but readers will label (some of) its reports UNVERIFIED: why.
    Unverified(String),
    /// A key in a role: the agent must not run with it. Why, naming the file.
    Refused(String),
}

/// The status ref of an agent named `id`: `refs/stele/status/<id>`. The id must be one ref
/// component (letters, digits, `.`, `_`, `-`; no `/`).
pub fn status_ref(id: &str) -> Result<String, String> {
    let refname = format!("{STATUS_REF_PREFIX}{id}");
    let plain = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if plain && git2::Reference::is_valid_name(&refname) {
        Ok(refname)
    } else {
        Err(format!(
            "agent_id {id:?} cannot name a status ref ({STATUS_REF_PREFIX}<agent-id>): use letters, digits, \
             '.', '_' and '-', or set status_ref"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_format::types::{AgentGrant, KeyInfo, LedgerId, PolicyType, Role};
    use ledger_format::SecretKey;
    use std::collections::BTreeMap;

    fn policy(agent: &SecretKey, in_role: bool, grant: Option<&[&str]>) -> Policy {
        let root = SecretKey::from_seed(&[1; 32]);
        let info = |name: &str, k: &SecretKey| KeyInfo { name: name.parse().unwrap(), public_key: k.public_key() };
        let mut keys = BTreeMap::new();
        keys.insert(root.public_key().key_id(), info("root", &root));
        keys.insert(agent.public_key().key_id(), info("agent", agent));
        let mut env_keys = vec![root.public_key().key_id()];
        if in_role {
            env_keys.push(agent.public_key().key_id());
        }
        let environments = ["prod", "staging"]
            .into_iter()
            .map(|e| (e.parse().unwrap(), Role { keys: env_keys.clone(), threshold: 1 }))
            .collect();
        let agents = grant
            .map(|envs| {
                let grant = AgentGrant { environments: envs.iter().map(|e| e.parse().unwrap()).collect() };
                BTreeMap::from([(agent.public_key().key_id(), grant)])
            })
            .unwrap_or_default();
        Policy {
            payload_type: PolicyType,
            ledger: "acme".parse::<LedgerId>().unwrap(),
            version: 7,
            expires_at: None,
            keys,
            root: Role { keys: vec![root.public_key().key_id()], threshold: 1 },
            environments,
            agents,
            timestamp: None,
            ledger_layout: None,
        }
    }

    fn identity(key: &SecretKey) -> Identity {
        Identity { key: StatusKey::new(SecretKey::from_seed(&key.seed())), file: "/etc/stele/agent.key".into() }
    }

    #[test]
    fn a_key_in_a_role_is_refused_naming_the_file_and_the_role() {
        let agent = SecretKey::from_seed(&[2; 32]);
        let Judgement::Refused(why) = identity(&agent).judge(&policy(&agent, true, None), &[]) else {
            panic!("a release key must be refused")
        };
        assert!(why.contains("/etc/stele/agent.key") && why.contains("environment prod role of policy v7"), "{why}");
    }

    #[test]
    fn a_key_not_declared_or_not_granted_is_warned_about() {
        let agent = SecretKey::from_seed(&[2; 32]);
        let me = identity(&agent);
        let id = agent.public_key().key_id();
        assert_eq!(
            me.judge(&policy(&agent, false, None), &[]),
            Judgement::Unverified(format!(
                "reports will be UNVERIFIED: key {id} is not an agent key of policy v7 (declare it with \
                 `stele policy set-agent --pubkey /etc/stele/agent.key.pub --env ENV`)"
            ))
        );
        let staging_only = policy(&agent, false, Some(&["staging"]));
        assert_eq!(me.judge(&staging_only, &["staging".parse().unwrap()]), Judgement::Agent);
        let Judgement::Unverified(why) = me.judge(&staging_only, &[]) else { panic!("prod is not granted") };
        assert!(why.starts_with("reports on prod will be UNVERIFIED") && why.ends_with("for staging only"), "{why}");
        assert_eq!(me.judge(&policy(&agent, false, Some(&["prod", "staging"])), &[]), Judgement::Agent);
    }

    #[test]
    fn status_refs_are_one_plain_component() {
        assert_eq!(status_ref("0123456789abcdef").unwrap(), "refs/stele/status/0123456789abcdef");
        assert_eq!(status_ref("web-host_1.eu").unwrap(), "refs/stele/status/web-host_1.eu");
        for bad in ["", "a/b", "host:/var/lib/stele", "a..b", "x.lock", ".hidden", "sp ace"] {
            assert!(status_ref(bad).is_err(), "{bad:?}");
        }
    }
}
