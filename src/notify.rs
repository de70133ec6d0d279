//! Notifications: what the agent tells people without being asked. A phase change (Progressing →
//! Healthy, Degraded, Stalled), a failed health gate and its restore, and a refused ledger commit are
//! each POSTed as JSON to every configured URL (`[[notify]]` in the agent configuration), either as
//! Stele's own payload (`format = "generic"`) or as a Slack-compatible incoming-webhook message
//! (`format = "slack"`, also understood by Mattermost and Rocket.Chat).
//!
//! Owns: the payloads, one sending thread per URL, its queue and its retries: a failed delivery (no
//! answer, a non-2xx status) is retried after 0.5 s, doubling up to 30 s, for up to an hour, in order;
//! at most 1 000 events wait per URL (the oldest is dropped first). Must not: block the
//! agent's loop (`send` only queues) or decide what is worth telling (the agent does). With a
//! `secret_file`, every POST is signed (`X-Stele-Signature-256`, HMAC-SHA256 of the body).

use ledger_format::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One `[[notify]]` table.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NotifyTarget {
    /// Where to POST (http or https).
    pub url: String,
    #[serde(default)]
    pub format: NotifyFormat,
    /// A file holding a shared secret: each POST then carries `X-Stele-Signature-256: sha256=<hex>`,
    /// the HMAC-SHA256 of the body (as GitHub signs its webhooks), so the receiver can tell Stele's
    /// notifications from anyone else's. The body's `at` lets it refuse old ones.
    #[serde(default)]
    pub secret_file: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    #[default]
    Generic,
    Slack,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    PhaseChanged,
    GateFailed,
    CommitRefused,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::PhaseChanged => "phase_changed",
            EventKind::GateFailed => "gate_failed",
            EventKind::CommitRefused => "commit_refused",
        }
    }
}

/// One notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    pub event: EventKind,
    /// The environment, except for a refused commit (which concerns the whole ledger).
    pub env: Option<String>,
    /// Phases, for a phase change.
    pub from: Option<String>,
    pub to: Option<String>,
    /// One line saying what happened and why.
    pub message: String,
    pub agent: String,
    pub at: Timestamp,
}

/// The body POSTed for `event` in `format`.
pub fn payload(event: &Event, format: NotifyFormat) -> serde_json::Value {
    match format {
        NotifyFormat::Generic => {
            let mut v = serde_json::to_value(event).expect("events serialize");
            v["type"] = "stele.notification/v1".into();
            v
        }
        NotifyFormat::Slack => {
            let what = match (event.event, &event.env) {
                (EventKind::PhaseChanged, Some(env)) => format!(
                    "*{env}*: {} → *{}*",
                    event.from.as_deref().unwrap_or("(start)"),
                    event.to.as_deref().unwrap_or("?")
                ),
                (EventKind::GateFailed, Some(env)) => {
                    format!("*{env}*: health gate failed, last good release restored")
                }
                (EventKind::CommitRefused, _) => {
                    "ledger commit refused; the agent holds the last verified state".into()
                }
                (_, None) => "stele".into(),
            };
            serde_json::json!({ "text": format!("{what}\n{} (agent {})", event.message, event.agent) })
        }
    }
}

const QUEUE_LIMIT: usize = 1000;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const GIVE_UP_AFTER: Duration = Duration::from_secs(3600);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

struct Queue {
    events: VecDeque<Event>,
    closing: bool,
}

struct Channel {
    target: NotifyTarget,
    secret: Option<Vec<u8>>,
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Channel {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sends events to every configured URL on threads of its own.
pub struct Notifier {
    channels: Vec<Arc<Channel>>,
}

impl Notifier {
    /// Starts a sending thread per target; an unreadable secret file is an error naming it.
    pub fn start(targets: &[NotifyTarget]) -> anyhow::Result<Self> {
        let mut channels = Vec::new();
        for target in targets {
            let secret = target.secret_file.as_deref().map(crate::http::read_secret).transpose()?;
            channels.push((target, secret));
        }
        let channels = channels
            .into_iter()
            .map(|(target, secret)| {
                let channel = Arc::new(Channel {
                    target: target.clone(),
                    secret,
                    queue: Mutex::new(Queue { events: VecDeque::new(), closing: false }),
                    changed: Condvar::new(),
                });
                let c = Arc::clone(&channel);
                std::thread::Builder::new()
                    .name("stele-notify".into())
                    .spawn(move || deliver_loop(&c))
                    .expect("the OS can start a thread");
                channel
            })
            .collect();
        Ok(Notifier { channels })
    }

    /// Queues `event` for every URL and returns at once.
    pub fn send(&self, event: &Event) {
        if self.channels.is_empty() {
            return;
        }
        tracing::info!(
            event = event.event.name(),
            env = event.env.as_deref().unwrap_or("-"),
            "notify: {}",
            event.message
        );
        for c in &self.channels {
            let mut q = c.lock();
            if q.events.len() >= QUEUE_LIMIT {
                q.events.pop_front();
            }
            q.events.push_back(event.clone());
            c.changed.notify_all();
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        for c in &self.channels {
            c.lock().closing = true;
            c.changed.notify_all();
        }
    }
}

fn deliver_loop(c: &Channel) {
    let client = match reqwest::blocking::Client::builder().timeout(ATTEMPT_TIMEOUT).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(url = %c.target.url, "notifications disabled: cannot make an HTTP client: {e}");
            return;
        }
    };
    loop {
        let event = {
            let mut q = c.lock();
            while q.events.is_empty() && !q.closing {
                q = c.changed.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            match q.events.front() {
                Some(e) => e.clone(),
                None => return,
            }
        };
        let body = payload(&event, c.target.format).to_string();
        let signature =
            c.secret.as_deref().map(|key| format!("sha256={}", crate::http::hooks::sign(key, body.as_bytes())));
        let first = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let delivered = loop {
            let mut request = client
                .post(&c.target.url)
                .header("content-type", "application/json")
                .header("x-stele-event", event.event.name())
                .body(body.clone());
            if let Some(s) = &signature {
                request = request.header("x-stele-signature-256", s);
            }
            match request.send() {
                Ok(r) if r.status().is_success() => break true,
                Ok(r) => tracing::warn!(url = %c.target.url, status = %r.status(), "notification refused; retrying"),
                Err(e) => tracing::warn!(url = %c.target.url, "notification not delivered ({e}); retrying"),
            }
            if first.elapsed() > GIVE_UP_AFTER || c.lock().closing {
                break false;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };
        let mut q = c.lock();
        // The event may have been dropped by an overflow meanwhile; remove it only if it is still first.
        if q.events.front() == Some(&event) {
            q.events.pop_front();
        }
        if !delivered {
            tracing::error!(url = %c.target.url, "notification given up: {}", event.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            event: EventKind::PhaseChanged,
            env: Some("prod".into()),
            from: Some("Progressing".into()),
            to: Some("Degraded".into()),
            message: "not healthy 20s after launch".into(),
            agent: "host:/var/lib/stele".into(),
            at: "2026-11-30T10:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn generic_and_slack_payloads() {
        let g = payload(&event(), NotifyFormat::Generic);
        assert_eq!(g["type"], "stele.notification/v1");
        assert_eq!(g["event"], "phase_changed");
        assert_eq!(g["env"], "prod");
        assert_eq!(g["to"], "Degraded");
        assert_eq!(g["at"], "2026-11-30T10:00:00Z");
        let s = payload(&event(), NotifyFormat::Slack);
        let text = s["text"].as_str().unwrap();
        assert!(text.starts_with("*prod*: Progressing → *Degraded*\nnot healthy 20s"), "{text}");
        assert_eq!(s.as_object().unwrap().len(), 1, "Slack's incoming webhooks take {{\"text\"}}");
    }

    #[test]
    fn the_format_is_generic_unless_slack_and_unknown_keys_are_refused() {
        let t: NotifyTarget = toml::from_str("url = \"http://x\"").unwrap();
        assert_eq!(t.format, NotifyFormat::Generic);
        let t: NotifyTarget = toml::from_str("url = \"http://x\"\nformat = \"slack\"").unwrap();
        assert_eq!(t.format, NotifyFormat::Slack);
        assert!(toml::from_str::<NotifyTarget>("url = \"http://x\"\nformat = \"teams\"").is_err());
        assert!(toml::from_str::<NotifyTarget>("url = \"http://x\"\nretries = 3").is_err());
    }
}
