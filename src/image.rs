//! Image bytes on the agent's side of the ledger: the streaming BLAKE3 digest an artifact is checked
//! against, and the reproducible tar archive a directory is packed into before it is published.
//!
//! Owns: [`ImageDigest`] (digest plus size), hashing a stream under a size limit, comparing an expected
//! digest with an observed one, and the byte-exact archive format of [`pack_dir`]. Must not touch:
//! deciding whether a digest is trusted (that is the ledger's verdict, made in `ledger-format`), fetching
//! artifacts over the network, or unpacking archives onto a host. Nothing here reads a clock, and the
//! archive carries no host detail (times, owners, permission quirks), so the same directory contents give
//! the same bytes, and therefore the same digest, on every machine.
//!
//! # Archive format
//!
//! [`pack_dir`] writes a GNU tar archive (ustar layout; the GNU long-name extension only for paths longer
//! than 100 bytes) holding the *contents* of a directory, not the directory itself:
//!
//! - Entries come in depth-first order. Siblings are sorted by the bytes of their names and a
//!   directory's entry comes immediately before its children, so `a`, `a/b`, `a-c` (not plain byte
//!   order of whole paths, which would put `a-c` before `a/b`).
//! - Paths are relative to the packed directory, joined with `/`, with no leading `./` and no trailing
//!   `/` on directories.
//! - mtime, uid and gid are 0; user and group names are empty.
//! - Directories get mode 0755. Regular files get 0755 if any execute bit is set, else 0644.
//! - Only regular files and directories are allowed. Symbolic links, device files, FIFOs and sockets
//!   are refused, as are names that are not valid UTF-8.

use ledger_format::Blake3Digest;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process;
use std::sync::atomic::{AtomicU64, Ordering};

/// How much [`digest_reader`] reads at a time. Large enough that BLAKE3 can use its SIMD paths,
/// small enough that hashing a multi-gigabyte image needs no more memory than this.
const CHUNK_SIZE: usize = 64 * 1024;

/// Mode of every directory entry in a packed archive.
const DIR_MODE: u32 = 0o755;
/// Mode of a regular file with at least one execute bit set on disk.
const EXECUTABLE_FILE_MODE: u32 = 0o755;
/// Mode of every other regular file.
const PLAIN_FILE_MODE: u32 = 0o644;

/// What an image is pinned to: the BLAKE3 digest of its bytes and their count. The size is kept beside
/// the digest so that a short or overlong download is reported as such rather than as a bare digest
/// mismatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageDigest {
    pub blake3: Blake3Digest,
    pub size: u64,
}

/// What [`pack_dir`] put into an archive. Counts do not include the packed directory itself, which has
/// no entry of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PackSummary {
    /// Regular files written.
    pub files: u64,
    /// Directory entries written.
    pub directories: u64,
    /// Sum of the sizes of the regular files: the archive's payload without headers and padding.
    pub content_bytes: u64,
}

/// Why an image could not be hashed, checked or packed.
///
/// Variants that wrap an [`io::Error`] print it as part of their own message (so a single line names
/// the path, the operation and the OS reason) and keep it in the `error` field for callers that need
/// its [`io::ErrorKind`]; they do not also report it as [`std::error::Error::source`], which would print
/// the reason twice in an error chain.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Reading an unnamed stream failed (see [`digest_reader`]).
    #[error("could not read image data: {error}")]
    Read { error: io::Error },

    /// An unnamed stream produced more than `max_size` bytes. Reading stopped at the first byte over.
    #[error("image data is larger than the limit of {max_size} bytes; stopped reading")]
    TooLarge { max_size: u64 },

    /// A file produced more than `max_size` bytes. Reading stopped at the first byte over.
    #[error("{}: larger than the limit of {max_size} bytes; stopped reading", path.display())]
    FileTooLarge { path: PathBuf, max_size: u64 },

    /// Fetching an image over HTTP failed (connection, status, or a body cut short).
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },

    /// A URL produced more than `max_size` bytes. Reading stopped at the first byte over.
    #[error("{url}: larger than the limit of {max_size} bytes; stopped reading")]
    UrlTooLarge { url: String, max_size: u64 },

    /// A file-system operation on `path` failed. `action` is a verb phrase such as "open" or
    /// "list directory".
    #[error("could not {action} {}: {error}", path.display())]
    Io { action: &'static str, path: PathBuf, error: io::Error },

    /// The image has the expected size but different bytes.
    #[error("image digest mismatch: expected blake3 {expected}, got {actual}")]
    DigestMismatch { expected: Blake3Digest, actual: Blake3Digest },

    /// The image has a different number of bytes than expected, e.g. a truncated download.
    #[error("image size mismatch: expected {expected} bytes, got {actual} bytes ({})", size_gap(*.expected, *.actual))]
    SizeMismatch { expected: u64, actual: u64 },

    /// The path given to [`pack_dir`] is not a directory.
    #[error("{}: not a directory; only a directory can be packed into an image", path.display())]
    NotADirectory { path: PathBuf },

    /// A symbolic link was found while packing.
    #[error(
        "{}: symbolic links are not allowed in an image (an image must be self-contained); \
         replace the link with the file or directory it points to",
        path.display()
    )]
    Symlink { path: PathBuf },

    /// A device file, FIFO or socket was found while packing. `kind` names which.
    #[error("{}: is a {kind}; an image may only contain regular files and directories", path.display())]
    SpecialFile { path: PathBuf, kind: &'static str },

    /// A name that is not valid UTF-8 was found while packing. `path` is shown lossily.
    #[error("{}: file name is not valid UTF-8; image paths must be UTF-8", path.display())]
    NonUtf8Name { path: PathBuf },

    /// A file was replaced, or grew or shrank, between being listed and being read, so its archive entry
    /// would not match any single state of the file.
    #[error(
        "{}: changed while being packed ({reason}); pack again once nothing writes to the directory",
        path.display()
    )]
    ChangedWhilePacking { path: PathBuf, reason: &'static str },

    /// Writing the archive entry for `path` failed, while reading `path` or writing the output.
    #[error("could not add {} to the archive: {error}", path.display())]
    Append { path: PathBuf, error: io::Error },

    /// Writing the end of the archive, or flushing it, failed.
    #[error("could not finish writing the archive: {error}")]
    Finish { error: io::Error },

    /// [`pack_dir_to_file`] was asked to write its output inside the directory it packs.
    #[error(
        "{}: the output would be inside the packed directory {}, so the next pack would include this one",
        out_file.display(),
        dir.display()
    )]
    OutputInsideInput { out_file: PathBuf, dir: PathBuf },

    /// [`pack_dir_to_file`] was given an output path without a file name, such as `/` or `foo/..`.
    #[error("{}: not a file path; the output of a pack must name a file", path.display())]
    InvalidOutputPath { path: PathBuf },
}

/// Says in words how far apart two sizes are, for [`ImageError::SizeMismatch`].
fn size_gap(expected: u64, actual: u64) -> String {
    if actual < expected {
        format!("truncated: {} bytes missing", expected - actual)
    } else {
        format!("{} bytes too many", actual - expected)
    }
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |error| ImageError::Io { action, path: path.to_path_buf(), error }
}

// ---------------------------------------------------------------------------------------------------
// Streaming digest
// ---------------------------------------------------------------------------------------------------

/// Why [`hash_stream`] stopped, before the caller attaches a path (or not).
enum StreamFailure {
    Read(io::Error),
    TooLarge { max_size: u64 },
}

/// Hashes everything `reader` yields, 64 KiB at a time, and counts it.
///
/// With `max_size`, an input of exactly `max_size` bytes is accepted and one byte more is refused
/// with [`ImageError::TooLarge`]. Reading stops as soon as that byte arrives: no read asks for more
/// than one byte past the limit, so a hostile or endless stream costs at most `max_size + 1` bytes.
/// Interrupted reads are retried; any other read error is returned as [`ImageError::Read`].
pub fn digest_reader<R: Read>(reader: R, max_size: Option<u64>) -> Result<ImageDigest, ImageError> {
    hash_stream(reader, max_size).map_err(|failure| match failure {
        StreamFailure::Read(error) => ImageError::Read { error },
        StreamFailure::TooLarge { max_size } => ImageError::TooLarge { max_size },
    })
}

/// Hashes the file at `path` like [`digest_reader`]; every error names `path`.
pub fn digest_file(path: &Path, max_size: Option<u64>) -> Result<ImageDigest, ImageError> {
    let file = File::open(path).map_err(io_error("open", path))?;
    hash_stream(file, max_size).map_err(|failure| match failure {
        StreamFailure::Read(error) => ImageError::Io { action: "read", path: path.to_path_buf(), error },
        StreamFailure::TooLarge { max_size } => ImageError::FileTooLarge { path: path.to_path_buf(), max_size },
    })
}

/// Files smaller than this are streamed: mapping them and starting threads costs more than it saves.
const PARALLEL_MIN: u64 = 1 << 20;

/// Hashes the file at `path` like [`digest_file`], but memory-mapped and on every core (BLAKE3's tree
/// mode), as `b3sum` does: for the commands a person waits on (`stele image digest`, `stele release`).
/// A file shorter than 1 MiB, or not a regular file, is streamed instead. Not for the agent: a file
/// truncated while it is mapped kills the process (SIGBUS), which a command may risk for a file its
/// user handed it, and an agent must not.
pub fn digest_file_parallel(path: &Path, max_size: Option<u64>) -> Result<ImageDigest, ImageError> {
    let meta = std::fs::metadata(path).map_err(io_error("open", path))?;
    if !meta.is_file() || meta.len() < PARALLEL_MIN {
        return digest_file(path, max_size);
    }
    let too_large = |max_size| ImageError::FileTooLarge { path: path.to_path_buf(), max_size };
    if let Some(max) = max_size.filter(|max| meta.len() > *max) {
        return Err(too_large(max));
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(path).map_err(io_error("read", path))?;
    // The length hashed, whatever the file became since `metadata`.
    let size = hasher.count();
    if let Some(max) = max_size.filter(|max| size > *max) {
        return Err(too_large(max));
    }
    Ok(ImageDigest { blake3: Blake3Digest(*hasher.finalize().as_bytes()), size })
}

/// Streams `url` (http or https) through the same hashing as [`digest_file`], never holding the body
/// in memory. A `Content-Length` beyond `max_size` is refused before any body is read.
pub fn digest_url(url: &str, max_size: Option<u64>) -> Result<ImageDigest, ImageError> {
    let http = |reason: String| ImageError::Http { url: url.to_owned(), reason };
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(None)
        .build()
        .map_err(|e| http(e.to_string()))?;
    let response = client.get(url).send().map_err(|e| http(e.to_string()))?;
    if !response.status().is_success() {
        return Err(http(format!("server answered {}", response.status())));
    }
    if let (Some(max), Some(len)) = (max_size, response.content_length()) {
        if len > max {
            return Err(ImageError::UrlTooLarge { url: url.to_owned(), max_size: max });
        }
    }
    hash_stream(response, max_size).map_err(|failure| match failure {
        StreamFailure::Read(error) => http(format!("reading the body failed: {error}")),
        StreamFailure::TooLarge { max_size } => ImageError::UrlTooLarge { url: url.to_owned(), max_size },
    })
}

fn hash_stream<R: Read>(mut reader: R, max_size: Option<u64>) -> Result<ImageDigest, StreamFailure> {
    let mut hasher = blake3::Hasher::new();
    // On the heap: 64 KiB is a sizeable stack frame for a function callers may run on small threads.
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut size: u64 = 0;
    loop {
        let want = match max_size {
            // Room for one byte past the limit: that byte is what proves the input too large.
            Some(max) => {
                let allowed = max.saturating_sub(size).saturating_add(1);
                usize::try_from(allowed).map_or(CHUNK_SIZE, |allowed| allowed.min(CHUNK_SIZE))
            }
            None => CHUNK_SIZE,
        };
        let read = match reader.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(StreamFailure::Read(error)),
        };
        // `read <= want <= CHUNK_SIZE` by the `Read` contract, so this cannot overflow before 2^64
        // bytes have been hashed.
        size += read as u64;
        if let Some(max) = max_size {
            if size > max {
                return Err(StreamFailure::TooLarge { max_size: max });
            }
        }
        hasher.update(&buf[..read]);
    }
    Ok(ImageDigest { blake3: Blake3Digest(*hasher.finalize().as_bytes()), size })
}

/// Checks an observed digest against the pinned one.
///
/// The size is compared first: a truncated or overlong image differs in both, and "truncated: 10 bytes
/// missing" says what went wrong where a digest mismatch would not. Equal sizes with different bytes
/// give [`ImageError::DigestMismatch`] with both digests in hex.
pub fn check_digest(expected: &ImageDigest, actual: &ImageDigest) -> Result<(), ImageError> {
    if expected.size != actual.size {
        return Err(ImageError::SizeMismatch { expected: expected.size, actual: actual.size });
    }
    if expected.blake3 != actual.blake3 {
        return Err(ImageError::DigestMismatch { expected: expected.blake3, actual: actual.blake3 });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Reproducible pack
// ---------------------------------------------------------------------------------------------------

/// One archive entry, decided before any byte of the archive is written.
struct PlannedEntry {
    /// Where the entry goes in the archive, e.g. `bin/app`.
    archive_path: String,
    /// Where it comes from on disk.
    source: PathBuf,
    kind: PlannedKind,
}

enum PlannedKind {
    Directory,
    /// A regular file, with the identity it had when listed, so a file swapped in between listing and
    /// reading (for example for a symlink) is caught. `None` where the platform has no inode numbers.
    File {
        identity: Option<FileIdentity>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
}

#[cfg(unix)]
fn file_identity(meta: &fs::Metadata) -> Option<FileIdentity> {
    use std::os::unix::fs::MetadataExt;
    Some(FileIdentity { device: meta.dev(), inode: meta.ino() })
}

#[cfg(not(unix))]
fn file_identity(_meta: &fs::Metadata) -> Option<FileIdentity> {
    None
}

/// The archive mode of a regular file whose on-disk permission bits are `raw_mode`: only "is it
/// executable" survives, so umask, group-writability and the like do not change the image digest.
fn normalise_file_mode(raw_mode: u32) -> u32 {
    if raw_mode & 0o111 != 0 {
        EXECUTABLE_FILE_MODE
    } else {
        PLAIN_FILE_MODE
    }
}

#[cfg(unix)]
fn archive_file_mode(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    normalise_file_mode(meta.permissions().mode())
}

#[cfg(not(unix))]
fn archive_file_mode(_meta: &fs::Metadata) -> u32 {
    // No execute bit to carry over.
    PLAIN_FILE_MODE
}

/// Names a file type that is neither a regular file, a directory nor a symlink, for the error message.
#[cfg(unix)]
fn special_kind(file_type: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_block_device() {
        "block device"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_fifo() {
        "named pipe (FIFO)"
    } else if file_type.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_file_type: fs::FileType) -> &'static str {
    "special file"
}

/// A directory child waiting to be classified, in the order it will appear in the archive.
struct Pending {
    source: PathBuf,
    /// Archive path of the parent directory; empty for children of the packed directory.
    parent: String,
    name: OsString,
}

/// Walks `root` without following symlinks and returns every entry of the archive in archive order.
/// Refuses the first offending entry in that order, so the error is the same on every run.
fn plan_dir(root: &Path) -> Result<Vec<PlannedEntry>, ImageError> {
    // The root itself is followed if it is a symlink: the caller named it, and it has no archive entry.
    let root_meta = fs::metadata(root).map_err(io_error("read metadata of", root))?;
    if !root_meta.is_dir() {
        return Err(ImageError::NotADirectory { path: root.to_path_buf() });
    }

    let mut plan = Vec::new();
    // A stack whose top is the next entry in archive order: children are pushed in reverse sorted order
    // when their directory is emitted, which yields a depth-first, parent-first walk.
    let mut stack = Vec::new();
    push_children(root, "", &mut stack)?;
    while let Some(Pending { source, parent, name }) = stack.pop() {
        let Some(name) = name.to_str() else {
            return Err(ImageError::NonUtf8Name { path: source });
        };
        let archive_path = if parent.is_empty() { name.to_owned() } else { format!("{parent}/{name}") };

        let meta = fs::symlink_metadata(&source).map_err(io_error("read metadata of", &source))?;
        let file_type = meta.file_type();
        let kind = if file_type.is_symlink() {
            return Err(ImageError::Symlink { path: source });
        } else if file_type.is_dir() {
            push_children(&source, &archive_path, &mut stack)?;
            PlannedKind::Directory
        } else if file_type.is_file() {
            PlannedKind::File { identity: file_identity(&meta) }
        } else {
            return Err(ImageError::SpecialFile { path: source, kind: special_kind(file_type) });
        };
        plan.push(PlannedEntry { archive_path, source, kind });
    }
    Ok(plan)
}

fn push_children(dir: &Path, archive_path: &str, stack: &mut Vec<Pending>) -> Result<(), ImageError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("list directory", dir))? {
        names.push(entry.map_err(io_error("list directory", dir))?.file_name());
    }
    // Byte order of the raw names (on Unix, `as_encoded_bytes` is exactly the bytes on disk), reversed
    // because the stack pops from the end.
    names.sort_unstable_by(|a, b| b.as_encoded_bytes().cmp(a.as_encoded_bytes()));
    stack.extend(names.into_iter().map(|name| Pending {
        source: dir.join(&name),
        parent: archive_path.to_owned(),
        name,
    }));
    Ok(())
}

/// A tar header with everything that could vary between hosts set to a fixed value. A fresh GNU header
/// is all zeros apart from its magic, which already means empty user and group names, zero device
/// numbers and no access or change times.
pub fn normalised_header(entry_type: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(entry_type);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

/// Writes the planned entries as a tar archive to `out`.
fn write_plan<W: Write>(plan: &[PlannedEntry], out: W) -> Result<PackSummary, ImageError> {
    let mut builder = tar::Builder::new(out);
    let mut summary = PackSummary::default();
    for entry in plan {
        let append_error = |error| ImageError::Append { path: entry.source.clone(), error };
        match entry.kind {
            PlannedKind::Directory => {
                let mut header = normalised_header(tar::EntryType::Directory, DIR_MODE, 0);
                builder.append_data(&mut header, &entry.archive_path, io::empty()).map_err(append_error)?;
                summary.directories += 1;
            }
            PlannedKind::File { identity } => {
                let file = File::open(&entry.source).map_err(io_error("open", &entry.source))?;
                // Size and mode come from the open file, not the listing, so they describe the bytes
                // about to be read.
                let meta = file.metadata().map_err(io_error("read metadata of", &entry.source))?;
                if !meta.is_file() || file_identity(&meta) != identity {
                    return Err(ImageError::ChangedWhilePacking {
                        path: entry.source.clone(),
                        reason: "it was replaced by another file",
                    });
                }
                let size = meta.len();
                let mut header = normalised_header(tar::EntryType::Regular, archive_file_mode(&meta), size);
                // The header promises `size` bytes: never copy more, and check below that there were
                // not fewer (the tar crate pads a short entry silently) nor more.
                let mut content = (&file).take(size);
                builder.append_data(&mut header, &entry.archive_path, &mut content).map_err(append_error)?;
                if content.limit() != 0 {
                    return Err(ImageError::ChangedWhilePacking {
                        path: entry.source.clone(),
                        reason: "it shrank while being read",
                    });
                }
                let mut probe = [0u8; 1];
                if (&file).read(&mut probe).map_err(io_error("read", &entry.source))? != 0 {
                    return Err(ImageError::ChangedWhilePacking {
                        path: entry.source.clone(),
                        reason: "it grew while being read",
                    });
                }
                summary.files += 1;
                summary.content_bytes += size;
            }
        }
    }
    // `into_inner` writes the two zero blocks that end a tar archive.
    let mut out = builder.into_inner().map_err(|error| ImageError::Finish { error })?;
    out.flush().map_err(|error| ImageError::Finish { error })?;
    Ok(summary)
}

/// Packs the contents of `dir` into a tar archive written to `out`, byte-for-byte reproducibly: the
/// same names, contents and execute bits always give the same archive, whatever the mtimes, owners,
/// other permission bits or the order the files were created in. The format is described in the
/// module documentation.
///
/// Symbolic links are refused ([`ImageError::Symlink`]) rather than followed or stored: an image must
/// be self-contained, and a link would either point outside it or make its meaning depend on where it
/// is unpacked. Device files, FIFOs and sockets ([`ImageError::SpecialFile`]) and names that are not
/// UTF-8 ([`ImageError::NonUtf8Name`]) are refused too.
///
/// The whole tree is walked and checked before anything is written, so a refused entry leaves `out`
/// untouched. An error while writing (an I/O failure, or a file changing under the pack) leaves `out`
/// holding a partial archive that must be discarded; [`pack_dir_to_file`] does that for you.
pub fn pack_dir(dir: &Path, out: &mut impl Write) -> Result<PackSummary, ImageError> {
    let plan = plan_dir(dir)?;
    write_plan(&plan, out)
}

/// Packs `dir` like [`pack_dir`] into `out_file`, which appears complete or not at all: the archive is
/// written to a temporary file beside `out_file`, synced, and renamed over it. Returns the digest of
/// the archive, computed while writing it.
///
/// Refuses an `out_file` inside `dir` ([`ImageError::OutputInsideInput`]): the next pack would then
/// contain the previous output and the image would depend on how often it had been built.
pub fn pack_dir_to_file(dir: &Path, out_file: &Path) -> Result<(PackSummary, ImageDigest), ImageError> {
    let Some(file_name) = out_file.file_name() else {
        return Err(ImageError::InvalidOutputPath { path: out_file.to_path_buf() });
    };
    let out_dir = match out_file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let dir_resolved = fs::canonicalize(dir).map_err(io_error("resolve", dir))?;
    let out_dir_resolved = fs::canonicalize(out_dir).map_err(io_error("resolve", out_dir))?;
    if out_dir_resolved.starts_with(&dir_resolved) {
        return Err(ImageError::OutputInsideInput { out_file: out_file.to_path_buf(), dir: dir.to_path_buf() });
    }

    let plan = plan_dir(dir)?;
    let temp = TempFile::create_beside(out_dir, file_name)?;
    let mut writer = HashingWriter::new(BufWriter::new(&temp.file));
    let summary = write_plan(&plan, &mut writer)?;
    let digest = writer.digest();
    // `write_plan` flushed the whole chain, so the buffer is empty and all bytes are in the file.
    drop(writer);
    temp.file.sync_all().map_err(io_error("sync", &temp.path))?;
    temp.persist(out_file, out_dir)?;
    Ok((summary, digest))
}

/// Passes writes through to `inner` while hashing and counting exactly the bytes `inner` accepted.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self { inner, hasher: blake3::Hasher::new(), size: 0 }
    }

    fn digest(&self) -> ImageDigest {
        ImageDigest { blake3: Blake3Digest(*self.hasher.finalize().as_bytes()), size: self.size }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.size += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A file created next to its final destination that is removed again unless [`TempFile::persist`]
/// renames it into place, so a failed pack leaves no debris behind.
struct TempFile {
    path: PathBuf,
    file: File,
    persisted: bool,
}

/// Makes temporary names unique among threads of this process; the process id covers other processes.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TempFile {
    /// Creates `.<name>.<pid>.<n>.tmp` in `dir`. The same directory as the destination, because a
    /// rename is only atomic within one file system.
    fn create_beside(dir: &Path, name: &std::ffi::OsStr) -> Result<Self, ImageError> {
        // A stale file from a crashed process that had the same pid can hold a name; skip past it.
        const ATTEMPTS: u32 = 64;
        let mut attempt = 0;
        loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".{}.{}.{n}.tmp", name.to_string_lossy(), process::id()));
            match File::options().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok(Self { path, file, persisted: false }),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists && attempt + 1 < ATTEMPTS => {
                    attempt += 1;
                }
                Err(error) => return Err(ImageError::Io { action: "create temporary file", path, error }),
            }
        }
    }

    /// Renames the file to `dest`, replacing any file there, then syncs `dest_dir` so the rename itself
    /// survives a crash.
    fn persist(mut self, dest: &Path, dest_dir: &Path) -> Result<(), ImageError> {
        fs::rename(&self.path, dest).map_err(io_error("rename temporary file into place as", dest))?;
        self.persisted = true;
        sync_dir(dest_dir)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            // Best effort: the error that made us give up is the one worth reporting, not this one.
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir).and_then(|handle| handle.sync_all()).map_err(io_error("sync directory", dir))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), ImageError> {
    // Directories cannot be opened and synced this way outside Unix; the rename is still atomic.
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Serves `body` once on a loopback port, declaring `declared_len` as Content-Length.
    fn serve_once(body: Vec<u8>, declared_len: usize) -> String {
        use std::io::{BufRead, BufReader};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let mut stream = stream;
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {declared_len}\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        });
        format!("http://{addr}/app.tar")
    }

    #[test]
    fn url_images_are_hashed_as_streams() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let url = serve_once(body.clone(), body.len());
        let got = digest_url(&url, Some(1 << 20)).unwrap();
        assert_eq!(got.blake3.0, *blake3::hash(&body).as_bytes());
        assert_eq!(got.size, body.len() as u64);
    }

    #[test]
    fn truncated_download_is_an_error_not_a_short_digest() {
        let body = vec![7u8; 1000];
        let url = serve_once(body, 5000);
        let err = digest_url(&url, None).unwrap_err();
        assert!(matches!(err, ImageError::Http { .. }), "{err}");
    }

    #[test]
    fn declared_oversize_is_refused_before_reading() {
        let url = serve_once(vec![1u8; 10], 10);
        assert!(matches!(digest_url(&url, Some(5)), Err(ImageError::UrlTooLarge { .. })));
    }

    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime};

    /// Byte `i` is `i % 251`, as in the BLAKE3 test vectors: a period that does not divide any chunk size.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn expected_digest(data: &[u8]) -> ImageDigest {
        ImageDigest { blake3: Blake3Digest(*blake3::hash(data).as_bytes()), size: data.len() as u64 }
    }

    /// Yields `data` in pieces of the given sizes, cycling, and records how much was handed out.
    struct PieceReader<'a> {
        data: &'a [u8],
        pieces: &'a [usize],
        next_piece: usize,
    }

    impl Read for PieceReader<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let piece = self.pieces[self.next_piece % self.pieces.len()];
            self.next_piece += 1;
            let n = piece.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Counts how many bytes the wrapped reader handed out.
    struct CountingReader<R> {
        inner: R,
        handed_out: u64,
    }

    impl<R: Read> Read for CountingReader<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.handed_out += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn digest_of_known_inputs_equals_blake3_hash() {
        let inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"a".to_vec(),
            b"abc".to_vec(),
            pattern(1023),
            pattern(1024),
            pattern(1025),
            pattern(CHUNK_SIZE - 1),
            pattern(CHUNK_SIZE),
            pattern(CHUNK_SIZE + 1),
            pattern(3 * CHUNK_SIZE + 17),
        ];
        for input in &inputs {
            let digest = digest_reader(input.as_slice(), None).expect("reading a slice cannot fail");
            assert_eq!(digest, expected_digest(input), "input of {} bytes", input.len());
        }
    }

    #[test]
    fn size_limit_accepts_exactly_max_and_refuses_one_more_byte() {
        for max in [0u64, 1, 1000, CHUNK_SIZE as u64 - 1, CHUNK_SIZE as u64, CHUNK_SIZE as u64 + 1] {
            let at_limit = pattern(max as usize);
            let digest = digest_reader(at_limit.as_slice(), Some(max)).expect("exactly max_size is allowed");
            assert_eq!(digest, expected_digest(&at_limit));

            let over = pattern(max as usize + 1);
            match digest_reader(over.as_slice(), Some(max)) {
                Err(ImageError::TooLarge { max_size }) => assert_eq!(max_size, max),
                other => panic!("max {max}: expected TooLarge, got {other:?}"),
            }
        }
    }

    #[test]
    fn size_limit_stops_reading_an_endless_stream_one_byte_past_max() {
        for max in [0u64, 10, CHUNK_SIZE as u64, 5 * CHUNK_SIZE as u64 + 3] {
            let mut endless = CountingReader { inner: io::repeat(7), handed_out: 0 };
            let result = digest_reader(&mut endless, Some(max));
            assert!(matches!(result, Err(ImageError::TooLarge { .. })), "max {max}: {result:?}");
            assert_eq!(endless.handed_out, max + 1, "max {max}: read past the first byte over the limit");
        }
    }

    #[test]
    fn interrupted_reads_are_retried_and_other_read_errors_are_reported() {
        struct Flaky {
            calls: u32,
        }
        impl Read for Flaky {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.calls += 1;
                match self.calls {
                    1 => Err(io::Error::from(io::ErrorKind::Interrupted)),
                    2 => {
                        buf[0] = b'x';
                        Ok(1)
                    }
                    _ => Err(io::Error::other("disk on fire")),
                }
            }
        }
        let error = digest_reader(Flaky { calls: 0 }, None).expect_err("third read fails");
        assert!(matches!(error, ImageError::Read { .. }), "{error:?}");
        assert!(error.to_string().contains("disk on fire"), "{error}");
    }

    #[test]
    fn digest_file_matches_digest_reader_and_names_the_path_in_errors() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("image.bin");
        let data = pattern(200_000);
        fs::write(&path, &data).expect("write test file");
        assert_eq!(digest_file(&path, None).expect("digest file"), expected_digest(&data));
        assert_eq!(digest_file(&path, Some(200_000)).expect("at the limit"), expected_digest(&data));

        match digest_file(&path, Some(199_999)) {
            Err(error @ ImageError::FileTooLarge { .. }) => {
                let message = error.to_string();
                assert!(message.contains(&path.display().to_string()) && message.contains("199999"), "{message}");
            }
            other => panic!("expected FileTooLarge, got {other:?}"),
        }

        let missing = dir.path().join("missing.bin");
        let error = digest_file(&missing, None).expect_err("missing file");
        assert!(matches!(error, ImageError::Io { action: "open", .. }), "{error:?}");
        assert!(error.to_string().contains(&missing.display().to_string()), "{error}");
    }

    #[test]
    fn the_parallel_digest_of_a_file_is_the_streamed_one_and_keeps_the_limit() {
        let dir = tempfile::tempdir().expect("create temp dir");
        for len in [10usize, (1 << 20) - 1, 1 << 20, 3 * (1 << 20) + 12_345] {
            let path = dir.path().join(format!("image-{len}.bin"));
            let data = pattern(len);
            fs::write(&path, &data).expect("write test file");
            assert_eq!(digest_file_parallel(&path, None).expect("digest"), expected_digest(&data), "{len} bytes");
            let at_limit = digest_file_parallel(&path, Some(len as u64)).expect("at the limit");
            assert_eq!(at_limit, expected_digest(&data), "{len} bytes at the limit");
            match digest_file_parallel(&path, Some(len as u64 - 1)) {
                Err(ImageError::FileTooLarge { path: named, .. }) => assert_eq!(named, path),
                other => panic!("{len} bytes past the limit: expected FileTooLarge, got {other:?}"),
            }
        }
        let error = digest_file_parallel(&dir.path().join("missing"), None).expect_err("missing file");
        assert!(matches!(error, ImageError::Io { action: "open", .. }), "{error:?}");
    }

    #[test]
    fn check_digest_accepts_a_match() {
        let digest = expected_digest(b"image");
        check_digest(&digest, &digest).expect("identical digests match");
    }

    #[test]
    fn truncated_image_is_a_size_mismatch_not_a_digest_mismatch() {
        let full = pattern(1000);
        let expected = expected_digest(&full);
        let truncated = digest_reader(&full[..990], None).expect("reading a slice cannot fail");
        let error = check_digest(&expected, &truncated).expect_err("truncated input must be refused");
        assert!(matches!(error, ImageError::SizeMismatch { expected: 1000, actual: 990 }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains("1000") && message.contains("990") && message.contains("truncated"), "{message}");

        let longer = expected_digest(&pattern(1003));
        let message = check_digest(&expected, &longer).expect_err("longer input must be refused").to_string();
        assert!(message.contains("3 bytes too many"), "{message}");
    }

    #[test]
    fn same_size_different_bytes_is_a_digest_mismatch_showing_both_digests() {
        let expected = expected_digest(b"good image");
        let actual = expected_digest(b"evil image");
        let error = check_digest(&expected, &actual).expect_err("different bytes must be refused");
        assert!(matches!(error, ImageError::DigestMismatch { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&expected.blake3.to_hex()), "{message}");
        assert!(message.contains(&actual.blake3.to_hex()), "{message}");
    }

    // --- pack ---------------------------------------------------------------------------------------

    fn pack_to_vec(dir: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        pack_dir(dir, &mut out).expect("pack test directory");
        out
    }

    #[cfg(unix)]
    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("set permissions");
    }

    /// A small tree with nesting, an empty file, an empty directory and an executable.
    fn sample_tree(root: &Path) {
        fs::create_dir_all(root.join("bin")).expect("mkdir");
        fs::create_dir_all(root.join("etc/app/empty")).expect("mkdir");
        fs::write(root.join("bin/app"), b"#!/bin/sh\necho hi\n").expect("write");
        fs::write(root.join("etc/app/config.toml"), b"port = 8080\n").expect("write");
        fs::write(root.join("etc/app/blank"), b"").expect("write");
        fs::write(root.join("README"), pattern(5000)).expect("write");
        #[cfg(unix)]
        set_mode(&root.join("bin/app"), 0o700);
    }

    /// Every entry of an archive as (path, entry type, mode, contents), checking on the way that no
    /// host detail leaked into a header.
    fn read_archive(bytes: &[u8]) -> Vec<(String, tar::EntryType, u32, Vec<u8>)> {
        let mut archive = tar::Archive::new(bytes);
        let mut entries = Vec::new();
        for entry in archive.entries().expect("archive is readable") {
            let mut entry = entry.expect("entry is readable");
            let header = entry.header();
            let path = entry.path().expect("path is readable").to_str().expect("path is UTF-8").to_owned();
            assert_eq!(header.mtime().expect("mtime"), 0, "{path}");
            assert_eq!(header.uid().expect("uid"), 0, "{path}");
            assert_eq!(header.gid().expect("gid"), 0, "{path}");
            assert_eq!(header.username_bytes(), Some(&b""[..]), "{path}");
            assert_eq!(header.groupname_bytes(), Some(&b""[..]), "{path}");
            let entry_type = header.entry_type();
            let mode = header.mode().expect("mode");
            let mut contents = Vec::new();
            entry.read_to_end(&mut contents).expect("contents are readable");
            entries.push((path, entry_type, mode, contents));
        }
        entries
    }

    #[test]
    fn packing_the_same_directory_twice_gives_identical_bytes() {
        let dir = tempfile::tempdir().expect("create temp dir");
        sample_tree(dir.path());
        let first = pack_to_vec(dir.path());
        assert_eq!(pack_to_vec(dir.path()), first);
    }

    #[test]
    fn mtimes_owners_and_non_execute_permission_bits_do_not_change_the_archive() {
        let dir = tempfile::tempdir().expect("create temp dir");
        sample_tree(dir.path());
        let before = pack_to_vec(dir.path());

        let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(123_456_789);
        for path in ["README", "bin/app", "etc/app/config.toml", "etc/app/blank", "bin", "etc/app", "etc"] {
            let path = dir.path().join(path);
            // Read-only handles suffice to set times on files and directories alike (futimens).
            let handle = File::open(&path).expect("open for touching");
            handle.set_modified(long_ago).expect("set mtime");
        }
        #[cfg(unix)]
        {
            set_mode(&dir.path().join("README"), 0o600);
            set_mode(&dir.path().join("etc/app/config.toml"), 0o664);
            set_mode(&dir.path().join("bin/app"), 0o751);
            set_mode(&dir.path().join("etc/app"), 0o700);
            // Changing the owner needs root; where the test runs as root it checks owners too.
            let _ = std::os::unix::fs::chown(dir.path().join("README"), Some(4321), Some(4321));
        }
        assert_eq!(pack_to_vec(dir.path()), before);
    }

    #[test]
    fn creation_order_does_not_change_the_archive() {
        let files = [("b", &b"bee"[..]), ("a/z", b"zed"), ("a/y", b"why"), ("c/d/e", b"deep"), ("a-", b"dash")];
        let forward = tempfile::tempdir().expect("create temp dir");
        let backward = tempfile::tempdir().expect("create temp dir");
        for (root, order) in
            [(forward.path(), files.to_vec()), (backward.path(), files.iter().rev().copied().collect::<Vec<_>>())]
        {
            for (path, contents) in order {
                let path = root.join(path);
                fs::create_dir_all(path.parent().expect("test paths have a parent")).expect("mkdir");
                fs::write(path, contents).expect("write");
            }
        }
        assert_eq!(pack_to_vec(forward.path()), pack_to_vec(backward.path()));
    }

    #[test]
    fn entries_are_depth_first_with_siblings_in_byte_order() {
        let dir = tempfile::tempdir().expect("create temp dir");
        for file in ["a/b", "a-c", "B", "a/a/x", "é"] {
            let path = dir.path().join(file);
            fs::create_dir_all(path.parent().expect("test paths have a parent")).expect("mkdir");
            fs::write(path, b"").expect("write");
        }
        let paths: Vec<String> = read_archive(&pack_to_vec(dir.path())).into_iter().map(|e| e.0).collect();
        assert_eq!(paths, ["B", "a", "a/a", "a/a/x", "a/b", "a-c", "é"]);
    }

    #[cfg(unix)]
    #[test]
    fn modes_are_normalised() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let table = [
            ("plain", 0o644, 0o644),
            ("private", 0o600, 0o644),
            ("group-writable", 0o664, 0o644),
            ("read-only", 0o400, 0o644),
            ("owner-exec", 0o700, 0o755),
            ("other-exec-only", 0o641, 0o755),
            ("setuid", 0o4755, 0o755),
        ];
        for (name, disk_mode, _) in table {
            let path = dir.path().join(name);
            fs::write(&path, name).expect("write");
            set_mode(&path, disk_mode);
        }
        fs::create_dir(dir.path().join("private-dir")).expect("mkdir");
        set_mode(&dir.path().join("private-dir"), 0o700);

        let modes: BTreeMap<String, u32> =
            read_archive(&pack_to_vec(dir.path())).into_iter().map(|(path, _, mode, _)| (path, mode)).collect();
        for (name, disk_mode, archive_mode) in table {
            assert_eq!(modes[name], archive_mode, "{name} (mode {disk_mode:o} on disk)");
        }
        assert_eq!(modes["private-dir"], 0o755);
    }

    #[test]
    fn normalise_file_mode_keeps_only_the_execute_question() {
        for (raw, expected) in [(0o644, 0o644), (0o000, 0o644), (0o777, 0o755), (0o100, 0o755), (0o001, 0o755)] {
            assert_eq!(normalise_file_mode(raw), expected, "{raw:o}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_refused_because_images_must_be_self_contained() {
        for target in ["/etc/passwd", "inside", "."] {
            let dir = tempfile::tempdir().expect("create temp dir");
            fs::write(dir.path().join("inside"), b"x").expect("write");
            fs::create_dir(dir.path().join("sub")).expect("mkdir");
            let link = dir.path().join("sub/link");
            std::os::unix::fs::symlink(target, &link).expect("create symlink");

            let mut out = Vec::new();
            let error = pack_dir(dir.path(), &mut out).expect_err("symlink must be refused");
            assert!(matches!(&error, ImageError::Symlink { path } if *path == link), "{error:?}");
            let message = error.to_string();
            assert!(message.contains(&link.display().to_string()) && message.contains("self-contained"), "{message}");
            assert!(out.is_empty(), "nothing is written before the whole tree is checked");
        }
    }

    #[cfg(unix)]
    #[test]
    fn sockets_are_refused_as_special_files() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let socket = dir.path().join("control.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind unix socket");
        let error = pack_dir(dir.path(), &mut Vec::new()).expect_err("socket must be refused");
        assert!(matches!(&error, ImageError::SpecialFile { path, kind: "socket" } if *path == socket), "{error:?}");
        assert!(error.to_string().contains(&socket.display().to_string()), "{error}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn non_utf8_names_are_refused_and_shown_lossily() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().expect("create temp dir");
        let bad = dir.path().join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
        fs::write(&bad, b"x").expect("Linux file systems accept any bytes in names");
        let error = pack_dir(dir.path(), &mut Vec::new()).expect_err("non-UTF-8 name must be refused");
        assert!(matches!(&error, ImageError::NonUtf8Name { path } if *path == bad), "{error:?}");
        assert!(error.to_string().contains("caf\u{fffd}"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn file_replaced_between_listing_and_reading_is_refused() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let outside = tempfile::tempdir().expect("create temp dir");
        fs::write(dir.path().join("app"), b"listed").expect("write");
        fs::write(outside.path().join("secret"), b"not part of the image").expect("write");
        let plan = plan_dir(dir.path()).expect("plan");

        // A symlink renamed over the listed file: opening would follow it to a file outside the image.
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("app.new")).expect("symlink");
        fs::rename(dir.path().join("app.new"), dir.path().join("app")).expect("rename over");

        let error = write_plan(&plan, Vec::new()).expect_err("swapped file must be refused");
        assert!(matches!(error, ImageError::ChangedWhilePacking { .. }), "{error:?}");
    }

    #[test]
    fn packing_a_file_is_refused() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let file = dir.path().join("file");
        fs::write(&file, b"x").expect("write");
        let error = pack_dir(&file, &mut Vec::new()).expect_err("a file is not a directory");
        assert!(matches!(error, ImageError::NotADirectory { .. }), "{error:?}");
    }

    #[test]
    fn empty_directory_packs_to_just_the_end_of_archive_marker() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let mut out = Vec::new();
        let summary = pack_dir(dir.path(), &mut out).expect("pack empty directory");
        assert_eq!(summary, PackSummary::default());
        assert_eq!(out, vec![0u8; 1024]);
    }

    #[test]
    fn archive_unpacks_to_the_same_files() {
        let dir = tempfile::tempdir().expect("create temp dir");
        sample_tree(dir.path());
        // Longer than the 100 bytes a tar header holds, so the GNU long-name extension is exercised.
        let long_dir = dir.path().join("x".repeat(60)).join("y".repeat(60));
        fs::create_dir_all(&long_dir).expect("mkdir");
        fs::write(long_dir.join("z".repeat(50)), pattern(70_000)).expect("write");

        let mut bytes = Vec::new();
        let summary = pack_dir(dir.path(), &mut bytes).expect("pack");
        assert_eq!(summary, PackSummary { files: 5, directories: 6, content_bytes: 18 + 12 + 5000 + 70_000 });

        let unpacked = tempfile::tempdir().expect("create temp dir");
        tar::Archive::new(bytes.as_slice()).unpack(unpacked.path()).expect("unpack");
        assert_eq!(tree_contents(unpacked.path()), tree_contents(dir.path()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(unpacked.path().join("bin/app")).expect("stat").permissions().mode();
            assert_ne!(mode & 0o111, 0, "the executable is still executable after unpacking");
        }
    }

    /// Every path under `root` with its contents (`None` for directories), in a stable order.
    fn tree_contents(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
        let mut found = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).expect("list") {
                let path = entry.expect("list entry").path();
                let rel = path.strip_prefix(root).expect("under root").to_path_buf();
                if path.is_dir() {
                    stack.push(path);
                    found.insert(rel, None);
                } else {
                    found.insert(rel, Some(fs::read(&path).expect("read")));
                }
            }
        }
        found
    }

    #[test]
    fn pack_dir_to_file_returns_the_digest_of_what_it_wrote_and_leaves_no_temp_files() {
        let src = tempfile::tempdir().expect("create temp dir");
        sample_tree(src.path());
        let dest = tempfile::tempdir().expect("create temp dir");
        let out_file = dest.path().join("image.tar");
        fs::write(&out_file, b"previous image").expect("write stale output");

        let (summary, digest) = pack_dir_to_file(src.path(), &out_file).expect("pack to file");
        let in_memory = pack_to_vec(src.path());
        assert_eq!(fs::read(&out_file).expect("read output"), in_memory);
        assert_eq!(digest, expected_digest(&in_memory));
        assert_eq!(digest, digest_file(&out_file, None).expect("digest output"));
        assert_eq!(summary, PackSummary { files: 4, directories: 4, content_bytes: 18 + 12 + 5000 });

        let names: Vec<OsString> =
            fs::read_dir(dest.path()).expect("list").map(|e| e.expect("list entry").file_name()).collect();
        assert_eq!(names, ["image.tar"], "temporary file left behind");
    }

    #[cfg(unix)]
    #[test]
    fn failed_pack_to_file_keeps_the_previous_output_and_removes_the_temp_file() {
        let src = tempfile::tempdir().expect("create temp dir");
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("link")).expect("create symlink");
        let dest = tempfile::tempdir().expect("create temp dir");
        let out_file = dest.path().join("image.tar");
        fs::write(&out_file, b"previous image").expect("write previous output");

        let error = pack_dir_to_file(src.path(), &out_file).expect_err("symlink must be refused");
        assert!(matches!(error, ImageError::Symlink { .. }), "{error:?}");
        assert_eq!(fs::read(&out_file).expect("read output"), b"previous image");
        assert_eq!(fs::read_dir(dest.path()).expect("list").count(), 1, "temporary file left behind");
    }

    #[test]
    fn output_inside_the_packed_directory_is_refused() {
        let src = tempfile::tempdir().expect("create temp dir");
        fs::create_dir(src.path().join("out")).expect("mkdir");
        for out_file in [src.path().join("image.tar"), src.path().join("out/image.tar")] {
            let error = pack_dir_to_file(src.path(), &out_file).expect_err("output inside input");
            assert!(matches!(error, ImageError::OutputInsideInput { .. }), "{error:?}");
            assert!(!out_file.exists());
        }
    }

    #[test]
    fn output_path_without_a_file_name_is_refused() {
        let src = tempfile::tempdir().expect("create temp dir");
        let error = pack_dir_to_file(src.path(), Path::new("/")).expect_err("no file name");
        assert!(matches!(error, ImageError::InvalidOutputPath { .. }), "{error:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn digest_does_not_depend_on_how_the_reader_splits_the_input(
            len in 0usize..300_000,
            pieces in proptest::collection::vec(1usize..100_000, 1..8),
            max_slack in proptest::option::of(0u64..3),
        ) {
            let data = pattern(len);
            let reader = PieceReader { data: &data, pieces: &pieces, next_piece: 0 };
            let max_size = max_slack.map(|slack| len as u64 + slack);
            let digest = digest_reader(reader, max_size).expect("within the limit");
            prop_assert_eq!(digest, expected_digest(&data));
        }
    }

    proptest! {
        // Each case touches the file system twice over, so keep the count modest.
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn any_creation_order_gives_the_same_archive(
            files in proptest::collection::btree_map(
                "[a-c]{1,2}(/[a-c]{1,2}){0,2}",
                proptest::collection::vec(any::<u8>(), 0..600),
                1..12,
            ),
            seed in any::<u64>(),
        ) {
            // Paths that are a prefix directory of another path cannot also be files; drop those.
            let files: Vec<(String, Vec<u8>)> = files
                .iter()
                .filter(|(path, _)| !files.keys().any(|other| other.starts_with(&format!("{path}/"))))
                .map(|(path, contents)| (path.clone(), contents.clone()))
                .collect();
            let mut shuffled = files.clone();
            // A deterministic shuffle from the seed, so a failure reproduces.
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }

            let mut archives = Vec::new();
            for order in [&files, &shuffled] {
                let dir = tempfile::tempdir().expect("create temp dir");
                for (path, contents) in order {
                    let path = dir.path().join(path);
                    fs::create_dir_all(path.parent().expect("joined paths have a parent")).expect("mkdir");
                    fs::write(&path, contents).expect("write");
                }
                archives.push(pack_to_vec(dir.path()));
            }
            prop_assert!(archives[0] == archives[1], "archives differ");

            let unpacked: BTreeMap<String, Vec<u8>> = read_archive(&archives[0])
                .into_iter()
                .filter(|(_, entry_type, _, _)| entry_type.is_file())
                .map(|(path, _, _, contents)| (path, contents))
                .collect();
            prop_assert_eq!(unpacked, files.into_iter().collect::<BTreeMap<_, _>>());
        }
    }
}
