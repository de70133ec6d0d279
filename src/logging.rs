//! Structured logs via `tracing`, to stderr: human-readable or one JSON object per line. `STELE_LOG`
//! (an env-filter such as `info` or `stele=debug`) overrides the default level.
//!
//! Human-readable logs are coloured only when stderr is a terminal and `NO_COLOR` is unset or empty
//! (<https://no-color.org>), so escape codes never land in files, pipes or the journal.

use std::ffi::OsStr;
use std::io::IsTerminal;

/// Installs the global subscriber once, at start-up.
pub fn init(json: bool, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STELE_LOG").unwrap_or_else(|_| default_level.into());
    let colour = use_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Whether to colour the logs: on a terminal, unless `NO_COLOR` is set to anything but "".
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        let cases: [(bool, Option<&str>, bool); 5] = [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (false, None, false),
            (false, Some("1"), false),
        ];
        for (terminal, no_color, expected) in cases {
            assert_eq!(use_colour(terminal, no_color.map(OsStr::new)), expected, "{terminal} {no_color:?}");
        }
    }
}
