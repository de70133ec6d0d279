//! Structured logs via `tracing`, to stderr: human-readable or one JSON object per line. `STELE_LOG`
//! (an env-filter such as `info` or `stele=debug`) overrides the default level.

/// Installs the global subscriber once, at start-up.
pub fn init(json: bool, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STELE_LOG").unwrap_or_else(|_| default_level.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
