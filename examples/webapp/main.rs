//! `stele-webapp`: the tiny web app the quickstart and the agent tests pack into images and run as
//! instances. It uses only `std` and `libc`, so its image is one static-enough binary and a few text
//! files.
//!
//! Owns: answering health and version probes the way the local provider expects, and shutting down
//! cleanly on SIGTERM. Must not touch: anything of Stele's own (ledger, images, plans); it only reads
//! the environment the agent sets and files in its own image.
//!
//! # Interface
//!
//! - Listens on `127.0.0.1:$STELE_PORT` (or `--port N`) and prints one line to stdout once listening.
//! - Reads `STELE_INSTANCE_ID`, `STELE_VERSION`, `STELE_GENERATION` and `STELE_DATA_DIR`.
//! - Its version is the contents of `version.txt` at the image root, found at
//!   `<directory of the executable>/../version.txt` (the binary lives at `bin/stele-webapp`); without
//!   that file it is `$STELE_VERSION`.
//! - `GET /healthz` answers `200 ok`, or `503` when started with `--fail-health` or when a file named
//!   `FAIL_HEALTH` exists at the image root (how the quickstart builds a release that fails its health
//!   gate). `GET /version` answers `<version> <instance id>`. `GET /` says hello. Anything else is 404.
//! - HTTP/1.1, one thread per connection, one request per connection (`Connection: close`).
//! - On SIGTERM (or SIGINT) it stops accepting, gives requests in flight up to two seconds, and exits 0.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Set by the signal handler; the accept loop polls it.
static TERMINATE: AtomicBool = AtomicBool::new(false);

/// How often the accept loop looks for a new connection or a termination request.
const ACCEPT_POLL: Duration = Duration::from_millis(20);
/// How long requests in flight may take to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client may take to send its request, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A request head (request line and headers) longer than this is refused.
const MAX_HEAD_BYTES: usize = 16 * 1024;

const USAGE: &str = "\
usage: stele-webapp [--port N] [--fail-health]

A demo web app for Stele images. Listens on 127.0.0.1:$STELE_PORT (or --port N).
  GET /healthz   200 ok, or 503 with --fail-health or a FAIL_HEALTH file at the image root
  GET /version   <version> <instance id>
  GET /          a greeting
Environment: STELE_PORT, STELE_INSTANCE_ID, STELE_VERSION, STELE_GENERATION, STELE_DATA_DIR.
The version is read from <exe dir>/../version.txt, else $STELE_VERSION.";

extern "C" fn request_termination(_signal: libc::c_int) {
    // Only an atomic store: nothing else is safe in a signal handler.
    TERMINATE.store(true, Ordering::SeqCst);
}

/// Everything a request handler needs, fixed at start-up.
struct App {
    version: String,
    instance: String,
    generation: String,
    fail_health_flag: bool,
    /// The image root, where `FAIL_HEALTH` may appear; `None` if the executable's location is unknown.
    image_root: Option<PathBuf>,
}

impl App {
    fn healthy(&self) -> bool {
        let marker = self.image_root.as_ref().map(|root| root.join("FAIL_HEALTH"));
        !self.fail_health_flag && !marker.is_some_and(|path| path.exists())
    }
}

/// The command line, parsed.
struct Args {
    port: Option<u16>,
    fail_health: bool,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args { port: None, fail_health: false };
    let mut rest = std::env::args().skip(1);
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--help" | "-h" => return Ok(None),
            "--fail-health" => args.fail_health = true,
            "--port" => {
                let value = rest.next().ok_or("--port needs a value")?;
                args.port = Some(value.parse().map_err(|_| format!("--port: {value:?} is not a port number"))?);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(args))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("stele-webapp: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let port = match args.port.map(Ok).or_else(|| std::env::var("STELE_PORT").ok().map(|p| p.parse::<u16>())) {
        Some(Ok(port)) => port,
        Some(Err(error)) => {
            eprintln!("stele-webapp: STELE_PORT is not a port number: {error}");
            return ExitCode::from(2);
        }
        None => {
            eprintln!("stele-webapp: set STELE_PORT or pass --port N\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let image_root = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()));
    let file_version = image_root
        .as_ref()
        .and_then(|root| std::fs::read_to_string(root.join("version.txt")).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty());
    let version = file_version.unwrap_or_else(|| match env("STELE_VERSION") {
        v if v.is_empty() => "unknown".to_owned(),
        v => v,
    });
    let app = Arc::new(App {
        version,
        instance: env("STELE_INSTANCE_ID"),
        generation: env("STELE_GENERATION"),
        fail_health_flag: args.fail_health,
        image_root,
    });

    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let handler = request_termination as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGINT, handler);
    }

    let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("stele-webapp: cannot listen on 127.0.0.1:{port}: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Non-blocking, so the loop notices a termination request within one poll interval.
    if let Err(error) = listener.set_nonblocking(true) {
        eprintln!("stele-webapp: cannot make the listener non-blocking: {error}");
        return ExitCode::FAILURE;
    }
    // The port actually bound, which differs from the one asked for when that was 0.
    let port = listener.local_addr().map_or(port, |address| address.port());
    let data_dir = env("STELE_DATA_DIR");
    let mut stdout = io::stdout().lock();
    // A closed stdout must not stop the app from serving, so write errors are ignored.
    let _ = writeln!(
        stdout,
        "stele-webapp {} (instance {:?}, generation {:?}, data dir {:?}) listening on http://127.0.0.1:{port}",
        app.version, app.instance, app.generation, data_dir
    );
    let _ = stdout.flush();
    drop(stdout);

    let in_flight = Arc::new(AtomicUsize::new(0));
    while !TERMINATE.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let app = Arc::clone(&app);
                let guard = InFlight::enter(&in_flight);
                thread::spawn(move || {
                    let _guard = guard;
                    serve(stream, &app);
                });
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                // Running out of file descriptors and the like may pass; back off instead of spinning.
                eprintln!("stele-webapp: accept failed: {error}");
                thread::sleep(ACCEPT_POLL);
            }
        }
    }

    drop(listener);
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    let left = in_flight.load(Ordering::SeqCst);
    if left > 0 {
        eprintln!("stele-webapp: exiting with {left} request(s) unfinished after {DRAIN_TIMEOUT:?}");
    }
    ExitCode::SUCCESS
}

/// Counts a connection as in flight until dropped, also when its thread panics.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An answer: status line parts and a text body.
struct Response {
    status: u16,
    reason: &'static str,
    body: String,
    allow: Option<&'static str>,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: impl Into<String>) -> Self {
        Response { status, reason, body: body.into(), allow: None }
    }
}

/// Why a request head could not be read.
enum HeadError {
    /// The client closed the connection before sending anything: nothing to answer.
    Closed,
    TimedOut,
    TooLarge,
    Malformed,
    Io,
}

fn serve(mut stream: TcpStream, app: &App) {
    // Accepted sockets may inherit non-blocking mode from the listener on some platforms.
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(IO_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(IO_TIMEOUT)).is_err()
    {
        return;
    }
    let (response, head_only) = match read_head(&mut stream) {
        Ok(head) => match parse_request_line(&head) {
            Some((method, target)) => (route(app, method, target), method == "HEAD"),
            None => (Response::text(400, "Bad Request", "bad request\n"), false),
        },
        Err(HeadError::Closed | HeadError::Io) => return,
        Err(HeadError::TimedOut) => (Response::text(408, "Request Timeout", "request timeout\n"), false),
        Err(HeadError::TooLarge) => {
            (Response::text(431, "Request Header Fields Too Large", "request too large\n"), false)
        }
        Err(HeadError::Malformed) => (Response::text(400, "Bad Request", "bad request\n"), false),
    };
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.reason,
        response.body.len()
    );
    if let Some(allow) = response.allow {
        head.push_str(&format!("Allow: {allow}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if !head_only {
        bytes.extend_from_slice(response.body.as_bytes());
    }
    // The client may already be gone; there is no one left to tell.
    let _ = stream.write_all(&bytes).and_then(|()| stream.flush());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Reads until the blank line that ends the request head, however the bytes arrive, and returns the
/// head without it. A request body is never read: every answer closes the connection.
fn read_head(stream: &mut TcpStream) -> Result<String, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let read = match stream.read(&mut buf) {
            Ok(0) if head.is_empty() => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Malformed),
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(if head.is_empty() { HeadError::Closed } else { HeadError::TimedOut })
            }
            Err(_) => return Err(HeadError::Io),
        };
        // Only the new bytes and the three before them can complete the terminator.
        let search_from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..read]);
        if let Some(end) = find(&head[search_from..], b"\r\n\r\n").map(|at| at + search_from) {
            head.truncate(end);
            return String::from_utf8(head).map_err(|_| HeadError::Malformed);
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// Returns method and target if the head is a well-formed HTTP/1.x request: a request line of three
/// parts, then header lines that each have a name and a colon.
fn parse_request_line(head: &str) -> Option<(&str, &str)> {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let well_formed = parts.next().is_none()
        && !method.is_empty()
        && method.bytes().all(|b| b.is_ascii_uppercase())
        && target.starts_with('/')
        && matches!(version, "HTTP/1.0" | "HTTP/1.1")
        && lines.all(|line| line.split_once(':').is_some_and(|(name, _)| is_token(name)));
    well_formed.then_some((method, target))
}

fn is_token(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn route(app: &App, method: &str, target: &str) -> Response {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let known = matches!(path, "/" | "/healthz" | "/version");
    if !known {
        return Response::text(404, "Not Found", "not found\n");
    }
    if method != "GET" && method != "HEAD" {
        let mut response = Response::text(405, "Method Not Allowed", "method not allowed\n");
        response.allow = Some("GET, HEAD");
        return response;
    }
    match path {
        "/healthz" if app.healthy() => Response::text(200, "OK", "ok\n"),
        "/healthz" => Response::text(503, "Service Unavailable", "failing on purpose\n"),
        "/version" => Response::text(200, "OK", format!("{} {}\n", app.version, app.instance)),
        _ => Response::text(
            200,
            "OK",
            format!(
                "Hello from stele-webapp {} (instance {}, generation {})\n",
                app.version, app.instance, app.generation
            ),
        ),
    }
}
