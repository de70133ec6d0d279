//! Fetching an artifact (`file://`, `http://`, `https://`) into a file of the store while hashing it,
//! with the signed size as an upper bound. Must not touch: unpacking, or deciding what a mismatch means
//! beyond reporting it (the caller compares the result with the entry).

use super::{io_error, mismatch, StoreError};
use crate::image::{self, ImageDigest, ImageError};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::Path;
use std::time::Duration;

/// How long a TCP (and TLS) connection to an artifact server may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one whole HTTP attempt may take, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// HTTP attempts per `ensure` for failures that may pass (connection errors, timeouts, 5xx).
const HTTP_ATTEMPTS: usize = 3;
/// The pause before the second and third attempt.
const HTTP_BACKOFF: [Duration; HTTP_ATTEMPTS - 1] = [Duration::from_millis(500), Duration::from_millis(1500)];

/// Streams the artifact at `uri` into `out` (at `out_path`), hashing it with at most `expected.size`
/// bytes accepted, and returns what was received. The caller compares it with the entry.
pub(super) fn fetch(
    uri: &str,
    expected: &ImageDigest,
    out: &mut File,
    out_path: &Path,
) -> Result<ImageDigest, StoreError> {
    if let Some(path) = uri.strip_prefix("file://") {
        // `stele release` records `file://` followed by the absolute path as it is, so it is read back
        // the same way, without percent-decoding.
        let source = File::open(path)
            .map_err(|e| StoreError::Fetch { uri: uri.to_owned(), reason: format!("cannot open {path}: {e}") })?;
        return match copy_hashed(source, out, expected.size) {
            Ok(actual) => Ok(actual),
            Err(CopyFailure::Read(e)) => {
                Err(StoreError::Fetch { uri: uri.to_owned(), reason: format!("reading failed: {e}") })
            }
            Err(CopyFailure::Write(error)) => {
                Err(StoreError::Io { action: "write", path: out_path.to_path_buf(), error })
            }
            Err(CopyFailure::TooLarge) => Err(mismatch(uri, expected, too_large(expected.size))),
        };
    }
    fetch_http(uri, expected, out, out_path)
}

fn too_large(size: u64) -> String {
    format!("more than {size} bytes (stopped reading)")
}

/// The outcome of one HTTP attempt that did not succeed.
enum Attempt {
    /// A failure that may pass: try again after a pause.
    Retry(String),
    /// A failure that another attempt would repeat.
    Final(StoreError),
}

fn fetch_http(url: &str, expected: &ImageDigest, out: &mut File, out_path: &Path) -> Result<ImageDigest, StoreError> {
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| StoreError::Fetch { uri: url.to_owned(), reason: format!("cannot set up an HTTP client: {e}") })?;
    let mut last_reason = String::new();
    for attempt in 0..HTTP_ATTEMPTS {
        if attempt > 0 {
            tracing::warn!(uri = url, attempt = attempt + 1, reason = %last_reason, "retrying artifact download");
            std::thread::sleep(HTTP_BACKOFF[attempt - 1]);
            // A failed attempt may have written part of the body; start the file again.
            out.set_len(0).map_err(io_error("truncate", out_path))?;
            out.rewind().map_err(io_error("rewind", out_path))?;
        }
        match http_attempt(&client, url, expected, out, out_path) {
            Ok(actual) => return Ok(actual),
            Err(Attempt::Final(error)) => return Err(error),
            Err(Attempt::Retry(reason)) => last_reason = reason,
        }
    }
    Err(StoreError::Fetch {
        uri: url.to_owned(),
        reason: format!("{last_reason} (gave up after {HTTP_ATTEMPTS} attempts)"),
    })
}

fn http_attempt(
    client: &reqwest::blocking::Client,
    url: &str,
    expected: &ImageDigest,
    out: &mut File,
    out_path: &Path,
) -> Result<ImageDigest, Attempt> {
    // The URL is left out of the message: the error that carries it names it already.
    let response = client.get(url).send().map_err(|e| Attempt::Retry(describe_reqwest_error(&e.without_url())))?;
    let status = response.status();
    if status.is_server_error() {
        return Err(Attempt::Retry(format!("server answered {status}")));
    }
    if !status.is_success() {
        return Err(Attempt::Final(StoreError::Fetch {
            uri: url.to_owned(),
            reason: format!("server answered {status}; not retried"),
        }));
    }
    // The server says how much it will send: a different size can only end in a mismatch, so nothing
    // is read.
    if let Some(announced) = response.content_length() {
        if announced != expected.size {
            return Err(Attempt::Final(mismatch(
                url,
                expected,
                format!("a body the server announces as {announced} bytes"),
            )));
        }
    }
    match copy_hashed(response, out, expected.size) {
        Ok(actual) => Ok(actual),
        Err(CopyFailure::Read(e)) => Err(Attempt::Retry(format!("reading the body failed: {}", with_sources(&e)))),
        Err(CopyFailure::Write(error)) => {
            Err(Attempt::Final(StoreError::Io { action: "write", path: out_path.to_path_buf(), error }))
        }
        Err(CopyFailure::TooLarge) => Err(Attempt::Final(mismatch(url, expected, too_large(expected.size)))),
    }
}

/// A reqwest error with what kind of failure it was and its sources, which hold the useful part
/// ("connection refused").
fn describe_reqwest_error(error: &reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    format!("{what}: {}", with_sources(error))
}

/// An error's message followed by those of its sources, joined with ": ".
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Why [`copy_hashed`] stopped.
enum CopyFailure {
    Read(io::Error),
    Write(io::Error),
    TooLarge,
}

/// Copies `reader` into `out` through [`image::digest_reader`], so the bytes written are exactly the
/// bytes hashed and the size limit is enforced by the same code that hashes releases.
fn copy_hashed(reader: impl Read, out: &mut File, max_size: u64) -> Result<ImageDigest, CopyFailure> {
    let mut tee = Tee { reader, out: BufWriter::new(out), write_error: None };
    let result = image::digest_reader(&mut tee, Some(max_size));
    if let Some(error) = tee.write_error.take() {
        return Err(CopyFailure::Write(error));
    }
    let digest = match result {
        Ok(digest) => digest,
        Err(ImageError::TooLarge { .. }) => return Err(CopyFailure::TooLarge),
        Err(ImageError::Read { error }) => return Err(CopyFailure::Read(error)),
        Err(other) => return Err(CopyFailure::Read(io::Error::other(other.to_string()))),
    };
    tee.out.flush().map_err(CopyFailure::Write)?;
    Ok(digest)
}

/// A reader that writes everything it reads to `out`. A write failure is kept aside and reported to
/// the hashing loop as a read failure, which ends it.
struct Tee<R, W> {
    reader: R,
    out: W,
    write_error: Option<io::Error>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.reader.read(buf)?;
        if let Err(error) = self.out.write_all(&buf[..read]) {
            self.write_error = Some(error);
            return Err(io::Error::other("writing the download to disk failed"));
        }
        Ok(read)
    }
}
