//! Checks made before an image reaches the store: `stele image pack` checks the directory it packs
//! and `stele release` the archive it signs, so that an image the store would refuse at deploy time
//! (no manifest, a bad one, a command that is not an executable file in the image) is refused while
//! the person who made it is still there. The store still checks everything itself when it unpacks.

use super::{Manifest, MANIFEST_FILE, MANIFEST_MAX_BYTES};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What every image must contain, for error messages and `--help`.
pub const IMAGE_NEEDS: &str = "an image needs stele-image.json at its root, a JSON object such as \
     {\"command\": \"bin/app\", \"args\": [], \"env\": {}}, whose command names an executable file in the image";

/// Checks that the directory `dir` holds a valid manifest whose command is an executable file there.
/// The error is a reason naming the file, without `dir`.
pub fn check_image_dir(dir: &Path) -> Result<Manifest, String> {
    let path = dir.join(MANIFEST_FILE);
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(format!("{MANIFEST_FILE} is missing")),
        Err(e) => return Err(format!("{MANIFEST_FILE}: {e}")),
    };
    if !meta.is_file() || meta.len() > MANIFEST_MAX_BYTES {
        return Err(format!("{MANIFEST_FILE} is not a regular file of at most {MANIFEST_MAX_BYTES} bytes"));
    }
    let bytes = fs::read(&path).map_err(|e| format!("{MANIFEST_FILE}: {e}"))?;
    let manifest = Manifest::parse(&bytes).map_err(|reason| format!("{MANIFEST_FILE}: {reason}"))?;
    match fs::symlink_metadata(manifest.command_path(dir)) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(manifest),
        Ok(_) => {
            Err(format!("{}, the command in {MANIFEST_FILE}, is not an executable regular file", manifest.command))
        }
        Err(_) => Err(format!("{}, the command in {MANIFEST_FILE}, is not in the image", manifest.command)),
    }
}

/// Checks that the tar archive at `archive` holds a valid manifest at its root whose command is an
/// executable regular file in the archive. Reads the headers and the manifest only.
pub fn check_image_archive(archive: &Path) -> Result<Manifest, String> {
    let file = File::open(archive).map_err(|e| format!("cannot open: {e}"))?;
    let mut tar = tar::Archive::new(file);
    let mut manifest_bytes = None;
    // Path (without a leading "./") -> whether it is an executable regular file.
    let mut executables: BTreeMap<String, bool> = BTreeMap::new();
    let entries = tar.entries().map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("not a tar archive: {e}"))?;
        let path = entry.path().map_err(|e| format!("not a tar archive: {e}"))?;
        let name = path.to_string_lossy().trim_start_matches("./").trim_end_matches('/').to_owned();
        let header = entry.header();
        let regular = header.entry_type().is_file();
        let executable = regular && header.mode().map(|m| m & 0o111 != 0).unwrap_or(false);
        executables.insert(name.clone(), executable);
        if name == MANIFEST_FILE && regular {
            let mut bytes = Vec::new();
            (&mut entry).take(MANIFEST_MAX_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("{e}"))?;
            manifest_bytes = Some(bytes);
        }
    }
    let bytes = manifest_bytes.ok_or_else(|| format!("{MANIFEST_FILE} is missing at the archive's root"))?;
    if bytes.len() as u64 > MANIFEST_MAX_BYTES {
        return Err(format!("{MANIFEST_FILE} is larger than {MANIFEST_MAX_BYTES} bytes"));
    }
    let manifest = Manifest::parse(&bytes).map_err(|reason| format!("{MANIFEST_FILE}: {reason}"))?;
    match executables.get(&manifest.command) {
        Some(true) => Ok(manifest),
        Some(false) => {
            Err(format!("{}, the command in {MANIFEST_FILE}, is not an executable regular file", manifest.command))
        }
        None => Err(format!("{}, the command in {MANIFEST_FILE}, is not in the image", manifest.command)),
    }
}
