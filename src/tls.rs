//! CA roots for HTTPS remotes, loaded when the process first talks to a remote rather than at start.
//!
//! libgit2 (built with OpenSSL) initialises TLS when the first git2 call initialises the library, and
//! that parses the whole CA bundle named by `SSL_CERT_FILE` (the git2 crate sets it from
//! `openssl-probe` when unset): some 15-35 ms, most of a no-change `stele poll` of a local ledger.
//! [`defer_ca_roots`], called once at the start of `main` before any other thread exists, lets that
//! initialisation read an empty file instead and remembers the real one; [`load_ca_roots`], called by
//! every remote operation ([`crate::source::callbacks`]), loads it into libgit2's TLS context before
//! the first connection. Certificates are verified against the same roots as before: the user's
//! `SSL_CERT_FILE` if it names an existing file, else the system bundle `openssl-probe` finds; the
//! certificate directory (`SSL_CERT_DIR`, looked up per certificate, costing nothing at start) is left
//! to libgit2 as it was. Child processes see `SSL_CERT_FILE` as they did before this existed.

use std::path::PathBuf;
use std::sync::{Once, OnceLock};

const CERT_FILE_VAR: &str = "SSL_CERT_FILE";

/// The CA bundle [`defer_ca_roots`] kept libgit2 from loading at start, for [`load_ca_roots`].
static DEFERRED: OnceLock<PathBuf> = OnceLock::new();

/// Initialises libgit2 without parsing the CA bundle, and remembers the bundle for
/// [`load_ca_roots`]. Call it once, first thing in `main`, while the process has one thread: it sets
/// and restores `SSL_CERT_FILE`. Without it (library users, tests in process), libgit2 loads the
/// bundle at initialisation as usual and [`load_ca_roots`] does nothing.
pub fn defer_ca_roots() {
    // The file libgit2 would load: the user's SSL_CERT_FILE if it exists, else the system bundle,
    // exactly as the git2 crate decides it at initialisation.
    let Some(bundle) = openssl_probe::probe().cert_file else {
        return; // nothing to load at start, nothing to defer
    };
    // SAFETY (environment): called at the start of `main`, before any other thread exists.
    std::env::set_var(CERT_FILE_VAR, "/dev/null");
    // Any git2 call initialises libgit2 (and its TLS context, which reads SSL_CERT_FILE) once.
    // SAFETY: reads an option; no repository is open yet.
    let initialised = unsafe { git2::opts::get_mwindow_size() };
    // Children (instance processes, hooks) see what they saw before: the git2 crate would have set
    // SSL_CERT_FILE to the probed bundle at initialisation.
    std::env::set_var(CERT_FILE_VAR, &bundle);
    if initialised.is_ok() {
        let _ = DEFERRED.set(bundle);
    }
}

/// Loads the CA bundle [`defer_ca_roots`] deferred into libgit2's TLS context, once per process.
/// Every remote operation calls it (through [`crate::source::callbacks`]) before connecting.
pub fn load_ca_roots() {
    static LOAD: Once = Once::new();
    LOAD.call_once(|| {
        let Some(bundle) = DEFERRED.get() else { return };
        // SAFETY: libgit2 is initialised; the Once makes this the only change to its TLS context,
        // made before any connection of this process starts.
        if let Err(e) = unsafe { git2::opts::set_ssl_cert_file(bundle) } {
            // As libgit2's own start-up does, go on: the connection then fails certificate
            // verification, naming the server.
            tracing::warn!(file = %bundle.display(), "could not load CA certificates: {}", e.message());
        }
    });
}
