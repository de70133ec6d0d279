//! Webhook deliveries (`POST /hooks/{github,gitlab,gitea}`): whatever the headers and body,
//! `stele::http::hooks::judge` never panics, and it answers `Sync` only for a delivery that carries
//! the right authentication for the secret (the HMAC-SHA256 of the body for GitHub and Gitea, the
//! secret itself for GitLab) and names the followed branch.
//!
//! Input: byte 0 picks the forge; then a secret, a signature/token header value and a body, split at
//! the first two `\n` bytes. Seeds put a valid signature in, so the fuzzer also explores parsed bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stele::http::hooks::{judge, sign, Forge, Verdict};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let forge = [Forge::GitHub, Forge::GitLab, Forge::Gitea][usize::from(pick % 3)];
    let mut parts = rest.splitn(3, |&b| b == b'\n');
    let (secret, auth, body) = (parts.next().unwrap_or(b""), parts.next().unwrap_or(b""), parts.next().unwrap_or(b""));
    let auth = String::from_utf8_lossy(auth).into_owned();
    let event = match forge {
        Forge::GitHub | Forge::Gitea => "push",
        Forge::GitLab => "Push Hook",
    };
    let header = |name: &str| -> Option<String> {
        match name {
            "x-github-event" | "x-gitea-event" | "x-gitlab-event" => Some(event.to_owned()),
            "x-hub-signature-256" | "x-gitea-signature" | "x-gitlab-token" => Some(auth.clone()),
            _ => None,
        }
    };
    let verdict = judge(forge, secret, header, body, "main");
    if verdict == Verdict::Sync {
        let authentic = match forge {
            Forge::GitHub => {
                auth.strip_prefix("sha256=").is_some_and(|h| h.trim().eq_ignore_ascii_case(&sign(secret, body)))
            }
            Forge::Gitea => auth.trim().eq_ignore_ascii_case(&sign(secret, body)),
            Forge::GitLab => auth.as_bytes() == secret,
        };
        assert!(authentic, "Sync without the right authentication");
        let v: serde_json::Value = serde_json::from_slice(body).expect("Sync only for a JSON body");
        assert_eq!(v["ref"], "refs/heads/main", "Sync only for a push to the followed branch");
    }
});
