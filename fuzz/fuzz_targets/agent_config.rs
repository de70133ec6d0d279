//! The agent's configuration file (TOML, `stele agent --config`): parsing into the agent's config type
//! and the checks that need no file system (environment names, trust root), through
//! `stele::commands::check_config_text`. Any text, any verdict, no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = stele::commands::check_config_text(text);
});
