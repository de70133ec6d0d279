//! `stele key`: generate a key pair, print a key id (and, on stderr, the SHA256 fingerprint that
//! `ssh-keygen -lf` shows, which people compare keys by).

use crate::cli::KeyCommand;
use crate::exit;
use crate::keys;
use anyhow::Result;

pub fn run(cmd: KeyCommand) -> Result<u8> {
    match cmd {
        KeyCommand::Generate { out, name, force } => {
            let comment = match name {
                Some(n) => n,
                None => keys::default_name("", &out).map(|n| n.to_string()).unwrap_or_else(|| "stele".into()),
            };
            let key = keys::generate(&out, &comment, force)?;
            eprintln!("wrote {} (secret, mode 0600) and {}", out.display(), keys::public_path(&out).display());
            println!("{}", key.key_id());
            eprintln!("fingerprint {} (as `ssh-keygen -lf` shows it)", keys::ssh_fingerprint(&key.key.public_key()));
        }
        KeyCommand::Id { file } => {
            // The key id alone on stdout, for scripts (`--trust-root $(stele key id root.pub)`).
            let key = keys::load_public(&file)?.key;
            println!("{}", key.key_id());
            eprintln!("fingerprint {} (as `ssh-keygen -lf` shows it)", keys::ssh_fingerprint(&key));
        }
    }
    Ok(exit::OK)
}
