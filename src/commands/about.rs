//! `stele version`, `stele completions` and `stele man`: what the binary is, and the shell completion
//! scripts and man pages generated from the same clap command tree the parser uses, so they cannot
//! drift from it.
//!
//! Owns: writing those outputs. Must not touch a ledger.

use crate::build_info::build_info;
use crate::cli::{Cli, CompletionsArgs, ManArgs, VersionArgs};
use crate::exit;
use anyhow::{Context, Result};
use clap::CommandFactory;
use std::path::Path;

pub fn version(args: VersionArgs) -> Result<u8> {
    let info = build_info();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("{info}");
    }
    Ok(exit::OK)
}

pub fn completions(args: CompletionsArgs) -> Result<u8> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "stele", &mut std::io::stdout());
    Ok(exit::OK)
}

/// Writes `stele.1` and one page per subcommand, nested ones named like git's (`stele-policy-show.1`).
pub fn man(args: ManArgs) -> Result<u8> {
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}: cannot create directory", args.out.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = 0;
    write_pages(&cmd, &args.out, &mut written)?;
    eprintln!("wrote {written} man pages to {}", args.out.display());
    Ok(exit::OK)
}

fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut usize) -> Result<()> {
    if cmd.is_hide_set() {
        return Ok(());
    }
    let man = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page).with_context(|| format!("{}: cannot render", path.display()))?;
    std::fs::write(&path, page).with_context(|| format!("{}: cannot write", path.display()))?;
    *written += 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}
