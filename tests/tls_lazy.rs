//! CA roots are loaded when `stele` first talks to a remote, not when libgit2 starts (src/tls.rs), and
//! certificates are still verified against them. A real HTTPS server on loopback (python3's `ssl` in
//! front of `git http-backend`, Git's smart HTTP protocol) with a certificate from a test CA made by the
//! `openssl` CLI:
//! - not trusted (the system roots only): `stele poll` is refused for the certificate, nothing fetched;
//! - `SSL_CERT_FILE` naming the test CA: the poll fetches and verifies the ledger. libgit2 started with
//!   an empty bundle, so this passes only if the roots are loaded before the first connection;
//! - `SSL_CERT_FILE` naming a FIFO nobody writes: a poll of a local repository still finishes, because
//!   nothing opens the bundle (opening a FIFO for reading blocks until a writer comes).
//!
//! A missing `python3` or `openssl` is a test failure, never a skip (scripts/test.sh installs them).

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Exit code of `stele` when a fetch failed (as for any network failure; retried by an agent).
const NETWORK: i32 = 4;
/// The longest any one process may run before the test kills it and fails.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

/// Smart HTTP over TLS: each request runs `git http-backend` as a CGI program. Prints its port.
const SERVER: &str = r#"
import http.server, os, ssl, subprocess, sys
cert, key, root = sys.argv[1:4]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.cgi()

    def do_POST(self):
        self.cgi()

    def cgi(self):
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ["PATH"], "HOME": root, "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROJECT_ROOT": root, "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path,
            "QUERY_STRING": query, "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
        }
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        sep = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
        head, _, rest = out.partition(sep)
        status, headers = 200, []
        for line in head.decode().splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        self.wfile.write(rest)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// Runs `cmd` to the end, killing it (and failing) after [`PROCESS_TIMEOUT`].
fn run(cmd: &mut Command) -> Output {
    run_within(cmd, PROCESS_TIMEOUT)
}

/// Runs the `openssl` CLI in `dir`, failing loudly when it is missing or fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!("cannot run `openssl`: {e}; install it (`apt-get install openssl`, as scripts/test.sh does)")
    });
    assert!(out.status.success(), "openssl {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// A test CA and a server certificate for 127.0.0.1 it signed: (CA certificate, server cert, server key).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("create the certificate directory");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca = [&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]];
    openssl(dir, &[ca.concat(), vec!["-subj", "/CN=stele test CA"]].concat());
    let csr = [&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]];
    openssl(dir, &csr.concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write the extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "1",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"))
}

/// The HTTPS server, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(sb: &Sandbox, cert: &Path, key: &Path, root: &Path) -> Self {
        let script = sb.path("https_git.py");
        std::fs::write(&script, SERVER).expect("write the server script");
        let mut child = scrubbed("python3", sb.root(), sb.root())
            .arg(&script)
            .args([cert, key, root])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(sb.path("https_git.log")).expect("create the server log"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `python3`: {e}; install it (`apt-get install python3`, as scripts/test.sh does)")
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line).expect("read the port");
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "the HTTPS server did not start:\n{}",
                std::fs::read_to_string(sb.path("https_git.log")).unwrap_or_default()
            )
        });
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A ledger (alice its root, one release to `staging`), and with [`Fixture::served`] a bare copy served
/// over HTTPS.
struct Fixture {
    sb: Sandbox,
    alice: Key,
    ledger: Ledger,
    ca: PathBuf,
    url: String,
    head: String,
    _server: Option<Server>,
}

fn fixture() -> Fixture {
    let sb = Sandbox::new();
    let alice = sb.key("alice");
    let ledger = sb.ledger("ledger", "tls-lazy", &alice, &["staging"]);
    let image = sb.image("app-1.0.0.tar", b"app 1.0.0\n");
    ledger.release("staging", "1.0.0", &image, &alice);
    let head = ledger.git(["rev-parse", "HEAD"]).trim().to_owned();
    Fixture { sb, alice, ledger, ca: PathBuf::new(), url: String::new(), head, _server: None }
}

fn served() -> Fixture {
    let Fixture { sb, alice, ledger, head, .. } = fixture();
    let served = sb.path("served");
    let bare = served.join("ledger.git");
    std::fs::create_dir_all(&bare).expect("create the served repository");
    sb.git(&bare, ["init", "-q", "--bare", "-b", "main"]);
    ledger.git(["push", "-q", &path_str(&bare), "main"]);
    let (ca, cert, key) = certificates(&sb.path("certs"));
    let server = Server::start(&sb, &cert, &key, &served);
    let url = format!("https://127.0.0.1:{}/ledger.git", server.port);
    Fixture { sb, alice, ledger, ca, url, head, _server: Some(server) }
}

impl Fixture {
    /// `stele poll --repo REPO --state-dir STATE --trust-root ALICE --json`, with `SSL_CERT_FILE` if
    /// given; returns what it printed and its JSON (null when none).
    fn poll(&self, repo: &str, state: &Path, cert_file: Option<&Path>) -> (Output, Value) {
        let mut cmd = scrubbed(STELE, self.sb.root(), self.sb.root());
        cmd.args(["poll", "--repo", repo, "--state-dir", &path_str(state), "--trust-root", &self.alice.id, "--json"]);
        if let Some(file) = cert_file {
            cmd.env("SSL_CERT_FILE", file);
        }
        let out = run(&mut cmd);
        let json = match out.stdout.trim() {
            "" => Value::Null,
            text => serde_json::from_str(text).unwrap_or_else(|e| panic!("poll printed no JSON: {e}\n{}", out.dump())),
        };
        (out, json)
    }
}

#[test]
fn https_remote_is_verified_against_the_roots_loaded_before_the_first_connection() {
    let f = served();

    // The system roots only: the test CA is not among them.
    let untrusted = f.sb.path("state-untrusted");
    let (out, json) = f.poll(&f.url, &untrusted, None);
    assert_eq!(out.code, NETWORK, "a certificate from an untrusted CA fails the fetch (exit 4)\n{}", out.dump());
    assert_eq!(json, Value::Null, "no poll result\n{}", out.dump());
    assert!(out.stderr.to_lowercase().contains("certificate"), "the refusal names the certificate\n{}", out.dump());
    assert!(!untrusted.join("verified.json").exists(), "nothing verified or saved\n{}", out.dump());

    // SSL_CERT_FILE naming the test CA: TLS succeeds, the ledger is fetched and verified.
    let trusted = f.sb.path("state-trusted");
    let (out, json) = f.poll(&f.url, &trusted, Some(&f.ca));
    out.expect(OK);
    assert_eq!(json["status"], "verified", "{}", out.dump());
    assert_eq!(json["commit"], f.head.as_str(), "{}", out.dump());
    assert_eq!(json["environments"]["staging"]["target"]["version"], "1.0.0", "{}", out.dump());

    // And again, unchanged: up to date, over the same verified connection.
    let (out, json) = f.poll(&f.url, &trusted, Some(&f.ca));
    out.expect(OK);
    assert_eq!(json["status"], "up_to_date", "{}", out.dump());
}

#[test]
fn a_local_poll_never_opens_the_ca_bundle() {
    let f = fixture();
    // Opening a FIFO for reading blocks until a writer opens it, and no one will: a poll that loads
    // the bundle at start hangs and is killed at the timeout.
    let fifo = f.sb.path("bundle.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    let state = f.sb.path("state-local");
    let repo = path_str(&f.ledger.path(""));
    let (out, json) = f.poll(&repo, &state, Some(&fifo));
    out.expect(OK);
    assert_eq!(json["status"], "verified", "{}", out.dump());
    let (out, json) = f.poll(&repo, &state, Some(&fifo));
    out.expect(OK);
    assert_eq!(json["status"], "up_to_date", "{}", out.dump());
}
