//! Key files. Stele keys are ordinary OpenSSH Ed25519 keys (`FILE` and `FILE.pub`), so one key signs
//! ledger documents and, through git's `gpg.format=ssh`, revert commits; `ssh-keygen -t ed25519` keys
//! work as they are.
//!
//! Owns: reading and writing key files. Must not decide what a key is authorised for (that is the
//! policy's job, in `ledger-format`).

use ledger_format::types::KeyName;
use ledger_format::{KeyId, PublicKey, SecretKey};
use rand_core::{OsRng, RngCore};
use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::{LineEnding, PrivateKey};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: cannot read key file: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not an OpenSSH key file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: is a {algorithm} key; Stele uses Ed25519 keys only")]
    NotEd25519 { path: PathBuf, algorithm: String },
    #[error("{path}: the key is passphrase-protected; Stele reads unencrypted keys only (keep them on an encrypted volume or a hardware token, or remove the passphrase with `ssh-keygen -p`)")]
    Encrypted { path: PathBuf },
    #[error("{path}: public key refused: {reason}")]
    Weak { path: PathBuf, reason: String },
    #[error("{path}: already exists; refusing to overwrite a key (pass --force to replace it)")]
    Exists { path: PathBuf },
    #[error("{path}: cannot write key file: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// A secret key loaded from a file, with the name to show for it.
pub struct LoadedSecret {
    pub key: SecretKey,
    pub comment: String,
}

impl LoadedSecret {
    pub fn key_id(&self) -> KeyId {
        self.key.public_key().key_id()
    }
}

/// A public key loaded from a `.pub` file (or derived from a secret key file).
pub struct LoadedPublic {
    pub key: PublicKey,
    pub comment: String,
}

/// The public key file written beside a secret key file.
pub fn public_path(secret: &Path) -> PathBuf {
    let mut s = secret.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Generates a key and writes `out` (mode 0600) and `out.pub`. Refuses to overwrite unless `force`.
pub fn generate(out: &Path, comment: &str, force: bool) -> Result<LoadedSecret, KeyError> {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let keypair = Ed25519Keypair::from_seed(&seed);
    let private = PrivateKey::new(KeypairData::Ed25519(keypair), comment)
        .map_err(|e| KeyError::Format { path: out.to_owned(), reason: e.to_string() })?;
    let secret_text = private
        .to_openssh(LineEnding::LF)
        .map_err(|e| KeyError::Format { path: out.to_owned(), reason: e.to_string() })?;
    let public_text = private
        .public_key()
        .to_openssh()
        .map_err(|e| KeyError::Format { path: out.to_owned(), reason: e.to_string() })?;
    let pub_path = public_path(out);
    if !force {
        for p in [out, pub_path.as_path()] {
            if p.symlink_metadata().is_ok() {
                return Err(KeyError::Exists { path: p.to_owned() });
            }
        }
    }
    write_new(out, secret_text.as_bytes(), 0o600, force)?;
    write_new(&pub_path, format!("{public_text}\n").as_bytes(), 0o644, force)?;
    Ok(LoadedSecret { key: SecretKey::from_seed(&seed), comment: comment.to_owned() })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> Result<(), KeyError> {
    let err = |source| KeyError::Write { path: path.to_owned(), source };
    if replace {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
    }
    // create_new: never follow a planted symlink or truncate someone else's file; mode applies at creation.
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

/// The key's SHA256 fingerprint exactly as `ssh-keygen -lf` prints it: `SHA256:` and the unpadded
/// Base64 of the SHA-256 of the OpenSSH public key blob. People compare keys by it.
pub fn ssh_fingerprint(key: &PublicKey) -> String {
    let data = KeyData::Ed25519(Ed25519PublicKey(key.to_bytes()));
    ssh_key::PublicKey::from(data).fingerprint(ssh_key::HashAlg::Sha256).to_string()
}

/// Signs `message` as OpenSSH's `ssh-keygen -Y sign -n NAMESPACE` does (SSHSIG, SHA-512), returning
/// the armored signature: with namespace `git`, what git stores in a commit's `gpgsig` header.
pub fn ssh_sign(key: &SecretKey, namespace: &str, message: &[u8]) -> Result<String, String> {
    let pair = Ed25519Keypair::from_seed(&key.seed());
    let private = PrivateKey::new(KeypairData::Ed25519(pair), "").map_err(|e| e.to_string())?;
    let sig = private.sign(namespace, ssh_key::HashAlg::Sha512, message).map_err(|e| e.to_string())?;
    sig.to_pem(LineEnding::LF).map_err(|e| e.to_string())
}

/// Loads an unencrypted OpenSSH Ed25519 secret key.
pub fn load_secret(path: &Path) -> Result<LoadedSecret, KeyError> {
    let text = read_small(path)?;
    let text = rewrap_armour(&text).unwrap_or(text);
    let private = PrivateKey::from_openssh(&text).map_err(|e| KeyError::Format {
        path: path.to_owned(),
        reason: format!("{e} (expected a file from `stele key generate` or `ssh-keygen -t ed25519`)"),
    })?;
    if private.is_encrypted() {
        return Err(KeyError::Encrypted { path: path.to_owned() });
    }
    let KeypairData::Ed25519(pair) = private.key_data() else {
        return Err(KeyError::NotEd25519 { path: path.to_owned(), algorithm: private.algorithm().to_string() });
    };
    let key = SecretKey::from_seed(&pair.private.to_bytes());
    if key.public_key().to_bytes() != pair.public.0 {
        return Err(KeyError::Format {
            path: path.to_owned(),
            reason: "public half does not match the secret key".into(),
        });
    }
    Ok(LoadedSecret { key, comment: private.comment().to_owned() })
}

/// Loads a public key from an OpenSSH `.pub` line, or from a secret key file.
pub fn load_public(path: &Path) -> Result<LoadedPublic, KeyError> {
    let text = read_small(path)?;
    if text.trim_start().starts_with("-----BEGIN") {
        let secret = load_secret(path)?;
        return Ok(LoadedPublic { key: secret.key.public_key(), comment: secret.comment });
    }
    let public = ssh_key::PublicKey::from_openssh(text.trim())
        .map_err(|e| KeyError::Format { path: path.to_owned(), reason: e.to_string() })?;
    let Some(ed) = public.key_data().ed25519() else {
        return Err(KeyError::NotEd25519 { path: path.to_owned(), algorithm: public.algorithm().to_string() });
    };
    let key =
        PublicKey::from_bytes(&ed.0).map_err(|e| KeyError::Weak { path: path.to_owned(), reason: e.to_string() })?;
    Ok(LoadedPublic { key, comment: public.comment().to_owned() })
}

const BEGIN_PRIVATE: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const END_PRIVATE: &str = "-----END OPENSSH PRIVATE KEY-----";
/// The Base64 line width `ssh-keygen` writes, the only one the `ssh-key` crate reads.
const OPENSSH_LINE_WIDTH: usize = 70;

/// An OpenSSH private key's armour re-wrapped at 70 columns, the way `ssh-keygen` writes it. OpenSSH
/// joins the Base64 lines whatever their width, and other writers wrap differently: Python's
/// `cryptography` package wraps at 64 columns, as PEM does. `None` when `text` has no such armour
/// (the parser then reports what is wrong with the original).
fn rewrap_armour(text: &str) -> Option<String> {
    let start = text.find(BEGIN_PRIVATE)? + BEGIN_PRIVATE.len();
    let end = start + text[start..].find(END_PRIVATE)?;
    let body: Vec<u8> = text[start..end].bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !body.is_ascii() {
        return None;
    }
    let mut out = String::with_capacity(body.len() + body.len() / OPENSSH_LINE_WIDTH + 80);
    out.push_str(BEGIN_PRIVATE);
    out.push('\n');
    for line in body.chunks(OPENSSH_LINE_WIDTH) {
        out.push_str(std::str::from_utf8(line).ok()?);
        out.push('\n');
    }
    out.push_str(END_PRIVATE);
    out.push('\n');
    Some(out)
}

fn read_small(path: &Path) -> Result<String, KeyError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
    let mut text = String::new();
    f.take(64 << 10).read_to_string(&mut text).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
    Ok(text)
}

/// The name recorded for a key in the policy: the key's comment when it is a valid name, else the
/// file name without extension.
pub fn default_name(comment: &str, path: &Path) -> Option<KeyName> {
    comment.parse().ok().or_else(|| {
        let stem = path.file_name()?.to_str()?;
        stem.trim_end_matches(".pub").trim_end_matches(".key").parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_keys_load_back_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alice.key");
        let made = generate(&path, "alice", false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let secret = load_secret(&path).unwrap();
        let public = load_public(&public_path(&path)).unwrap();
        assert_eq!(secret.key_id(), made.key_id());
        assert_eq!(public.key.key_id(), made.key_id());
        assert_eq!(public.comment, "alice");
        assert!(matches!(generate(&path, "alice", false), Err(KeyError::Exists { .. })));
    }

    #[test]
    fn ssh_keygen_keys_are_stele_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "bob", "-f"])
            .arg(&path)
            .status()
            .expect("ssh-keygen (openssh-client) is needed for this test");
        assert!(status.success());
        let secret = load_secret(&path).unwrap();
        let public = load_public(&public_path(&path)).unwrap();
        assert_eq!(secret.key_id(), public.key.key_id());
        assert_eq!(secret.comment, "bob");
    }

    /// Keys written by other OpenSSH-format writers (tests/fixtures/keys/README.md says how each was
    /// made): OpenSSH reads them, so Stele must, and they must sign what verifies.
    #[test]
    fn keys_from_other_writers_that_openssh_reads_load_and_sign() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys");
        let expected_public = std::fs::read_to_string(fixtures.join("python-cryptography-ed25519.pub")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for name in ["python-cryptography-ed25519", "rewrapped-76-columns-ed25519"] {
            // ssh-keygen refuses a key file others may read; git checks files out 0644.
            let path = dir.path().join(name);
            std::fs::copy(fixtures.join(name), &path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let openssh = std::process::Command::new("ssh-keygen")
                .arg("-y")
                .arg("-f")
                .arg(&path)
                .output()
                .expect("ssh-keygen (openssh-client) is needed for this test");
            assert!(
                openssh.status.success(),
                "{name}: OpenSSH refuses it: {}",
                String::from_utf8_lossy(&openssh.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&openssh.stdout).trim(), expected_public.trim(), "{name}");

            let secret = load_secret(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            let public = load_public(&fixtures.join("python-cryptography-ed25519.pub")).unwrap();
            assert_eq!(secret.key_id(), public.key.key_id(), "{name}");
            let signature = secret.key.sign(b"release 1.4.2");
            assert!(public.key.verify(b"release 1.4.2", &signature).is_ok(), "{name}");
            let armored = ssh_sign(&secret.key, "git", b"commit").unwrap();
            let signer = ledger_format::crypto::verify_sshsig(armored.as_bytes(), "git", b"commit").unwrap();
            assert_eq!(signer.key_id(), public.key.key_id(), "{name}");
        }
    }

    /// The fingerprint is the one OpenSSH shows for the same key file.
    #[test]
    fn fingerprints_match_ssh_keygen() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys");
        let dir = tempfile::tempdir().unwrap();
        let generated = dir.path().join("k");
        generate(&generated, "carol", false).unwrap();
        for file in [public_path(&generated), fixtures.join("python-cryptography-ed25519.pub")] {
            let out = std::process::Command::new("ssh-keygen")
                .arg("-lf")
                .arg(&file)
                .output()
                .expect("ssh-keygen (openssh-client) is needed for this test");
            assert!(out.status.success(), "{}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
            // "256 SHA256:... comment (ED25519)"
            let listed = String::from_utf8_lossy(&out.stdout);
            let theirs = listed.split_whitespace().nth(1).expect("a fingerprint");
            assert!(theirs.starts_with("SHA256:") && !theirs.ends_with('='), "{listed}");
            assert_eq!(ssh_fingerprint(&load_public(&file).unwrap().key), theirs, "{}", file.display());
        }
    }

    #[test]
    fn non_key_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk");
        std::fs::write(&path, "hello").unwrap();
        let err = load_secret(&path).err().unwrap().to_string();
        assert!(err.contains("junk") && err.contains("not an OpenSSH key file"), "{err}");
    }
}
