//! `stele image`: pack a directory reproducibly (refusing one that is not an image: no valid
//! `stele-image.json` whose command is an executable file in it), or hash a file.

use super::human_size;
use crate::cli::ImageCommand;
use crate::exit::{self, Refused};
use crate::image;
use crate::provider::local::store::{check_image_dir, IMAGE_NEEDS};
use anyhow::Result;
use serde_json::json;

pub fn run(cmd: ImageCommand) -> Result<u8> {
    match cmd {
        ImageCommand::Pack { dir, out, json } => {
            check_image_dir(&dir).map_err(|reason| {
                Refused(format!("{}: not an image: {reason}; {IMAGE_NEEDS}; nothing was written", dir.display()))
            })?;
            let (summary, digest) = image::pack_dir_to_file(&dir, &out)?;
            if json {
                println!(
                    "{}",
                    json!({"file": out, "blake3": digest.blake3, "size": digest.size, "files": summary.files, "directories": summary.directories})
                );
            } else {
                println!("{}  {}", digest.blake3, out.display());
                eprintln!(
                    "packed {} files in {} directories: {} ({} bytes)",
                    summary.files,
                    summary.directories,
                    human_size(digest.size),
                    digest.size
                );
            }
        }
        ImageCommand::Digest { file, json } => {
            let digest = if file.starts_with("http://") || file.starts_with("https://") {
                image::digest_url(&file, None)?
            } else {
                image::digest_file_parallel(std::path::Path::new(&file), None)?
            };
            if json {
                println!("{}", json!({"file": file, "blake3": digest.blake3, "size": digest.size}));
            } else {
                println!("{}  {}  ({} bytes)", digest.blake3, file, digest.size);
            }
        }
    }
    Ok(exit::OK)
}
