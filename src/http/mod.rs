//! The agent's HTTP surface (`[http]` in the agent configuration, off unless configured): metrics,
//! liveness and readiness, webhook receivers, the status as JSON and the read-only operator page.
//!
//! Owns: routes, request limits and response codes. Must not: act on anything but `Shared` (a webhook
//! only requests a sync; what the sync fetches is verified as on every poll), or block the agent's loop.
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | OpenMetrics text (`metrics.rs`) |
//! | `GET /healthz` | 200 while the loop is alive (a pass finished within `wedged_after`), else 503 |
//! | `GET /readyz` | 200 once the first verified sync is done, else 503 |
//! | `POST /hooks/{github,gitlab,gitea}` | 202 and a sync for a genuine push to the followed branch; 200 for other genuine events; 401 for a bad or missing signature; 404 when no secret is configured; 413 over the body limit |
//! | `GET /api/status` | the environments as `stele status --json` prints them |
//! | `GET /` | the read-only operator page (`crate::report`): environments, instances, suspensions and the audit timeline; refreshes every 5 s |

pub mod hooks;
pub mod metrics;
pub mod state;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use state::Shared;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// The default address of the HTTP surface: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9469";

/// Webhook bodies larger than this are refused (413) unless configured otherwise.
pub const DEFAULT_MAX_HOOK_BODY: usize = 1024 * 1024;

/// The `[http]` table of the agent configuration.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Address to listen on (default 127.0.0.1:9469).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// File holding the webhook secret (GitHub/Gitea HMAC key, GitLab token); webhooks are refused
    /// (404) without one.
    #[serde(default)]
    pub hook_secret_file: Option<PathBuf>,
    /// Largest webhook body accepted, in bytes.
    #[serde(default = "default_max_body")]
    pub max_hook_body_bytes: usize,
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("a valid default")
}

fn default_max_body() -> usize {
    DEFAULT_MAX_HOOK_BODY
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings { listen: default_listen(), hook_secret_file: None, max_hook_body_bytes: DEFAULT_MAX_HOOK_BODY }
    }
}

struct App {
    shared: Arc<Shared>,
    secret: Option<Vec<u8>>,
}

/// Reads the webhook secret (a trailing newline is not part of it); an unreadable or empty file is an
/// error naming it.
pub fn read_secret(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: cannot read the webhook secret: {e}", path.display()))?;
    let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
    anyhow::ensure!(!secret.is_empty(), "{}: the webhook secret is empty", path.display());
    Ok(secret.to_vec())
}

/// Binds the listener now, so a taken port fails the agent's start with the address named.
pub async fn bind(settings: &HttpSettings) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("[http] listen = {}: cannot listen: {e}", settings.listen))
}

/// Serves until the process ends. `secret`: the webhook secret read from `hook_secret_file`, if any
/// ([`read_secret`], read once at start so that a bad file fails the agent's start).
pub async fn serve(
    listener: tokio::net::TcpListener,
    settings: &HttpSettings,
    secret: Option<Vec<u8>>,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    let app = Arc::new(App { shared, secret });
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/status", get(api_status))
        .route("/", get(page))
        .route("/hooks/{forge}", post(hook))
        .layer(DefaultBodyLimit::max(settings.max_hook_body_bytes))
        .with_state(app);
    axum::serve(listener, router).await
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = app.shared.metrics.render();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    match app.shared.alive() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.shared.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no verified sync yet\n").into_response()
    }
}

async fn api_status(State(app): State<Arc<App>>) -> Response {
    let view = app.shared.view();
    let body = serde_json::json!({
        "agent": view.agent_id,
        "ledger": view.ledger,
        "last_poll": view.last_poll,
        "ledger_stall": view.ledger_stall,
        "ready": app.shared.ready(),
        "environments": view.environments,
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn page(State(app): State<Arc<App>>) -> Response {
    let shared = app.shared.clone();
    let html = tokio::task::spawn_blocking(move || {
        let view = shared.view();
        let timeline = view.verified_commit.as_deref().and_then(|c| shared.timeline(c));
        let page = crate::report::PageView {
            title: format!("Stele agent {}", view.agent_id),
            generated_at: crate::clock::now().to_string(),
            ledger: view.ledger.clone(),
            agent: Some(crate::report::AgentView {
                id: view.agent_id.clone(),
                last_poll: view.last_poll.clone(),
                ready: shared.ready(),
                message: view.ledger_stall.clone(),
            }),
            environments: view
                .environments
                .iter()
                .map(|status| crate::report::EnvView {
                    suspended: status
                        .suspended
                        .as_ref()
                        .map(|s| format!("suspended by {} since {}: {}", s.by, s.since, s.reason)),
                    status: status.clone(),
                    verified: None,
                })
                .collect(),
            timeline,
            refresh_seconds: Some(5),
        };
        crate::report::render_page(&page)
    })
    .await;
    match html {
        Ok(html) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("page failed: {e}\n")).into_response(),
    }
}

async fn hook(
    State(app): State<Arc<App>>,
    UrlPath(forge): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(forge) = hooks::Forge::from_path(&forge) else {
        return (StatusCode::NOT_FOUND, "unknown forge: use /hooks/github, /hooks/gitlab or /hooks/gitea\n")
            .into_response();
    };
    let Some(secret) = &app.secret else {
        app.shared.metrics.webhook("not_configured");
        return (StatusCode::NOT_FOUND, "webhooks are not configured (set [http] hook_secret_file)\n").into_response();
    };
    let Some(branch) = app.shared.branch() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: the ledger source is not open yet\n").into_response();
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    match hooks::judge(forge, secret, header, &body, branch) {
        hooks::Verdict::Sync => {
            app.shared.metrics.webhook("sync");
            tracing::info!(forge = forge.name(), "webhook: push to the followed branch; syncing now");
            app.shared.request_sync();
            (StatusCode::ACCEPTED, "sync requested\n").into_response()
        }
        hooks::Verdict::Ignored(why) => {
            app.shared.metrics.webhook("ignored");
            (StatusCode::OK, format!("ignored: {why}\n")).into_response()
        }
        hooks::Verdict::Unauthorized(why) => {
            app.shared.metrics.webhook("unauthorized");
            tracing::warn!(forge = forge.name(), "webhook refused: {why}");
            (StatusCode::UNAUTHORIZED, format!("{why}\n")).into_response()
        }
        hooks::Verdict::BadRequest(why) => {
            app.shared.metrics.webhook("bad_request");
            (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response()
        }
    }
}
