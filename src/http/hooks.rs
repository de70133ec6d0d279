//! Webhook deliveries from Git hosts: is this a genuine push to the branch the agent follows?
//!
//! Owns: each host's authentication (GitHub's `X-Hub-Signature-256` and Gitea's `X-Gitea-Signature`,
//! both HMAC-SHA256 of the body; GitLab's `X-Gitlab-Token`, the secret itself), checked in constant
//! time before the body is parsed, and the push event's branch. Pure: headers, body and secret in, a
//! verdict out. Must not: do any work for a delivery (the caller triggers a sync on `Verdict::Sync`),
//! or trust anything in the body: a hook only makes the agent fetch sooner; what it fetches is verified
//! as on every poll.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The Git hosts whose deliveries are understood (the path `/hooks/<name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    GitHub,
    GitLab,
    Gitea,
}

impl Forge {
    pub fn name(self) -> &'static str {
        match self {
            Forge::GitHub => "github",
            Forge::GitLab => "gitlab",
            Forge::Gitea => "gitea",
        }
    }

    pub fn from_path(name: &str) -> Option<Forge> {
        match name {
            "github" => Some(Forge::GitHub),
            "gitlab" => Some(Forge::GitLab),
            "gitea" => Some(Forge::Gitea),
            _ => None,
        }
    }
}

/// What to do with a delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A genuine push to the followed branch: sync now.
    Sync,
    /// Genuine, but nothing to do (another branch, another event, a ping); the text says which.
    Ignored(String),
    /// Missing or wrong authentication: 401, nothing done.
    Unauthorized(&'static str),
    /// Authenticated but unreadable.
    BadRequest(String),
}

/// Judges one delivery. `header` looks a request header up by name (case-insensitively, as HTTP
/// headers are); `branch` is the branch the agent follows, without `refs/heads/`.
pub fn judge(
    forge: Forge,
    secret: &[u8],
    header: impl Fn(&str) -> Option<String>,
    body: &[u8],
    branch: &str,
) -> Verdict {
    let (event_header, push_event) = match forge {
        Forge::GitHub => ("x-github-event", "push"),
        Forge::GitLab => ("x-gitlab-event", "Push Hook"),
        Forge::Gitea => ("x-gitea-event", "push"),
    };
    let authentic = match forge {
        Forge::GitHub => header("x-hub-signature-256")
            .as_deref()
            .and_then(|v| v.strip_prefix("sha256="))
            .is_some_and(|hex| hmac_matches(secret, body, hex)),
        Forge::Gitea => header("x-gitea-signature").is_some_and(|hex| hmac_matches(secret, body, &hex)),
        Forge::GitLab => header("x-gitlab-token").is_some_and(|token| same_secret(secret, token.as_bytes())),
    };
    if !authentic {
        return Verdict::Unauthorized("missing or wrong webhook signature");
    }
    let event = header(event_header).unwrap_or_default();
    if event != push_event {
        return Verdict::Ignored(format!("event {event:?} is not a push"));
    }
    let payload: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Verdict::BadRequest(format!("push payload is not JSON: {e}")),
    };
    let Some(git_ref) = payload["ref"].as_str() else {
        return Verdict::BadRequest("push payload has no \"ref\"".into());
    };
    if git_ref.strip_prefix("refs/heads/") == Some(branch) {
        Verdict::Sync
    } else {
        Verdict::Ignored(format!("push to {git_ref}, not refs/heads/{branch}"))
    }
}

/// Whether `hex` is the HMAC-SHA256 of `body` under `secret`, compared in constant time.
fn hmac_matches(secret: &[u8], body: &[u8], hex: &str) -> bool {
    let Ok(given) = hex::decode(hex.trim()) else { return false };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

/// Compares two secrets in constant time, lengths included (both are hashed first).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    Sha256::digest(a).ct_eq(&Sha256::digest(b)).into()
}

/// The GitHub/Gitea signature of `body` under `secret`, as hex (for tests and for senders).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"s3cret";

    fn headers<'a>(pairs: &'a [(&'a str, String)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
    }

    #[test]
    fn github_signature_good_bad_and_missing() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good =
            [("X-Hub-Signature-256", format!("sha256={}", sign(SECRET, body))), ("X-GitHub-Event", "push".into())];
        assert_eq!(judge(Forge::GitHub, SECRET, headers(&good), body, "main"), Verdict::Sync);
        assert!(matches!(judge(Forge::GitHub, SECRET, headers(&good), body, "release"), Verdict::Ignored(_)));
        let bad =
            [("X-Hub-Signature-256", format!("sha256={}", sign(b"other", body))), ("X-GitHub-Event", "push".into())];
        assert!(matches!(judge(Forge::GitHub, SECRET, headers(&bad), body, "main"), Verdict::Unauthorized(_)));
        let missing = [("X-GitHub-Event", "push".into())];
        assert!(matches!(judge(Forge::GitHub, SECRET, headers(&missing), body, "main"), Verdict::Unauthorized(_)));
        // A signature of another body does not authenticate this one.
        let other =
            [("X-Hub-Signature-256", format!("sha256={}", sign(SECRET, b"{}"))), ("X-GitHub-Event", "push".into())];
        assert!(matches!(judge(Forge::GitHub, SECRET, headers(&other), body, "main"), Verdict::Unauthorized(_)));
        let ping =
            [("X-Hub-Signature-256", format!("sha256={}", sign(SECRET, body))), ("X-GitHub-Event", "ping".into())];
        assert!(matches!(judge(Forge::GitHub, SECRET, headers(&ping), body, "main"), Verdict::Ignored(_)));
    }

    #[test]
    fn gitea_signature_and_gitlab_token() {
        let body = br#"{"ref":"refs/heads/main","commits":[]}"#;
        let gitea = [("X-Gitea-Signature", sign(SECRET, body)), ("X-Gitea-Event", "push".into())];
        assert_eq!(judge(Forge::Gitea, SECRET, headers(&gitea), body, "main"), Verdict::Sync);
        let gitea_bad = [("X-Gitea-Signature", "00".repeat(32)), ("X-Gitea-Event", "push".into())];
        assert!(matches!(judge(Forge::Gitea, SECRET, headers(&gitea_bad), body, "main"), Verdict::Unauthorized(_)));
        let gitlab = [("X-Gitlab-Token", "s3cret".into()), ("X-Gitlab-Event", "Push Hook".into())];
        assert_eq!(judge(Forge::GitLab, SECRET, headers(&gitlab), body, "main"), Verdict::Sync);
        let gitlab_bad = [("X-Gitlab-Token", "s3cre".into()), ("X-Gitlab-Event", "Push Hook".into())];
        assert!(matches!(judge(Forge::GitLab, SECRET, headers(&gitlab_bad), body, "main"), Verdict::Unauthorized(_)));
        let tag = [("X-Gitlab-Token", "s3cret".into()), ("X-Gitlab-Event", "Tag Push Hook".into())];
        assert!(matches!(judge(Forge::GitLab, SECRET, headers(&tag), body, "main"), Verdict::Ignored(_)));
    }

    #[test]
    fn an_authentic_delivery_that_is_not_json_is_a_bad_request() {
        let body = b"ref=refs/heads/main";
        let h = [("X-Hub-Signature-256", format!("sha256={}", sign(SECRET, body))), ("X-GitHub-Event", "push".into())];
        assert!(matches!(judge(Forge::GitHub, SECRET, headers(&h), body, "main"), Verdict::BadRequest(_)));
    }
}
