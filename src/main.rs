//! The `stele` binary: parse the command line, run the command, map the outcome to an exit code.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away (`stele audit | head`)
    // instead of panicking on a broken pipe. Rust ignores SIGPIPE by default.
    // SAFETY: restoring a default signal disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match stele::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { stele::exit::USAGE } else { stele::exit::OK });
        }
    };
    // Before any git2 call and any other thread: libgit2 starts without parsing the CA bundle, which
    // is loaded before the first remote operation instead (a local or no-change poll never needs it).
    // Commands that never read a repository skip it and so never start libgit2 (and OpenSSL) at all;
    // were one of them to use git2 after all, libgit2 would load the bundle at start, as before.
    use stele::cli::Command as C;
    if !matches!(cli.command, C::Lb(_) | C::Key(_) | C::Image(_) | C::Version(_) | C::Completions(_) | C::Man(_)) {
        stele::tls::defer_ca_roots();
    }
    // Long-running commands narrate at `info`; one-shot commands speak only about trouble.
    match &cli.command {
        stele::cli::Command::Agent(a) => stele::logging::init(a.log_format == stele::cli::LogFormat::Json, "info"),
        stele::cli::Command::Lb(_) | stele::cli::Command::Quickstart(_) => stele::logging::init(false, "info"),
        _ => stele::logging::init(false, "warn"),
    }
    match stele::commands::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err}");
            // A cause already quoted by the message before it (libgit2's, say) is not printed again.
            let mut shown = err.to_string();
            for cause in err.chain().skip(1) {
                let text = cause.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                }
                shown = text;
            }
            ExitCode::from(stele::exit::for_error(&err))
        }
    }
}
