//! Instance processes of the local provider: spawning them detached, recognising them again after the
//! agent restarts, stopping them, and probing their health over TCP and HTTP.
//!
//! This module owns the operating-system side of an instance and nothing else. It must not know about
//! images, plans, the ledger, git or the load balancer: it is given a program, arguments, a working
//! directory, an environment and a log file, and it hands back a [`ProcessHandle`].
//!
//! # Why a double fork
//!
//! An instance must outlive the agent, which can be killed with SIGKILL at any moment and then adopts
//! its instances again from their stored handles. [`spawn`] therefore runs the program through a double
//! fork: `std::process::Command` forks an intermediate process, whose `pre_exec` hook forks once more,
//! writes the grandchild's pid and start time into a pipe and exits at once. The grandchild calls
//! `setsid()` (a new session and process group, both numbered by its own pid, with no controlling
//! terminal) and then lets `Command` carry on to `exec` the program. The agent reaps the intermediate
//! straight away, so the instance is never the agent's child: it is reparented to init (or the nearest
//! subreaper), and a process spawned by this agent is in exactly the same position as one adopted after
//! a restart. Nothing has to be kept in memory to reap it, and an agent killed with SIGKILL leaves
//! nothing behind that would take the instance down (no controlling terminal, no parent-death signal).
//!
//! Between the second fork and `exec` only async-signal-safe system calls run (`fork`, `setsid`,
//! `open`, `read`, `write`, `close`, `kill`, `_exit`) on stack memory. The intermediate reads the
//! grandchild's start time itself because only it can do so without a race: until the intermediate
//! exits, the grandchild cannot be reaped, even if it has already exited.
//!
//! # Identity and zombies
//!
//! A pid alone is not an identity: pids are recycled, and a reboot starts counting again. A handle is
//! the pid plus the kernel's start time of that pid and the boot id, and every check (and every signal)
//! compares all three against `/proc` first. Because the instance is not our child, whoever it was
//! reparented to may never reap it; a zombie whose start time matches is reported as
//! [`Liveness::Gone`] with its exit status, which the kernel still shows for zombies. If the agent runs
//! as PID 1 or as a subreaper, the instance becomes its child again; [`liveness`] then reaps it itself.
//!
//! # Process groups
//!
//! [`stop`] signals the instance's whole process group, so helper processes the instance started go
//! with it. Processes that leave the group (`setsid`, `setpgid`) escape; confining those would need
//! cgroups, which this provider deliberately does without.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How to start one instance process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpawnSpec {
    /// The program to run; must be an absolute path, so that no `PATH` lookup decides what runs.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The instance's private writable data directory; the process starts in it.
    pub cwd: PathBuf,
    /// Variables added to a clean environment that keeps only `PATH`, `HOME` and `LANG` from the agent.
    pub env: Vec<(String, String)>,
    /// Standard output and standard error are both appended to this file, which is created if missing.
    pub log: PathBuf,
}

/// What identifies a running process across agent restarts: the pid plus the kernel's start time of that
/// pid (field 22 of /proc/<pid>/stat, in clock ticks since boot) and the boot id
/// (/proc/sys/kernel/random/boot_id), so a recycled pid or a reboot is never mistaken for our instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessHandle {
    pub pid: i32,
    pub start_ticks: u64,
    pub boot_id: String,
}

/// Whether the process a handle names is still running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Liveness {
    Running,
    /// Exited, zombie, or the pid now belongs to another process; the text says which.
    Gone(String),
}

/// The environment variables an instance inherits from the agent; everything else comes from the spec.
const INHERITED_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

/// How often [`stop`] looks whether the process group is gone.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long [`stop`] waits after SIGKILL. SIGKILL cannot be ignored, so only a process stuck in the
/// kernel (uninterruptible I/O) takes longer than a moment.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Start ticks written by the intermediate process when it could not read them.
const UNKNOWN_TICKS: u64 = u64::MAX;

/// Starts `spec.program` as a detached instance (see the module documentation for how) and returns the
/// handle that identifies it from now on, also after an agent restart.
///
/// Fails if the program is not an absolute path, the log cannot be opened, or the program cannot be
/// executed (the `exec` error is reported, not hidden in the log).
pub fn spawn(spec: &SpawnSpec) -> io::Result<ProcessHandle> {
    if !spec.program.is_absolute() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("instance program {} is not an absolute path", spec.program.display()),
        ));
    }
    let boot_id = boot_id()?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(&spec.log)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open instance log {}: {e}", spec.log.display())))?;
    let log_for_stderr = log.try_clone()?;
    let (pid_reader, pid_writer) = cloexec_pipe()?;

    let mut command = Command::new(&spec.program);
    command.args(&spec.args).current_dir(&spec.cwd).stdin(Stdio::null()).stdout(log).stderr(log_for_stderr);
    command.env_clear();
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.envs(spec.env.iter().map(|(name, value)| (name, value)));
    let writer_fd = pid_writer.as_raw_fd();
    // SAFETY: the hook runs in the forked intermediate process, where only async-signal-safe calls are
    // allowed. `detach_in_child` makes only such calls (fork, setsid, open, read, write, close, kill,
    // _exit), touches only stack memory and the captured file descriptor number, and never allocates.
    unsafe {
        command.pre_exec(move || detach_in_child(writer_fd));
    }

    let mut intermediate = command.spawn().map_err(|e| {
        io::Error::new(e.kind(), format!("cannot start instance program {}: {e}", spec.program.display()))
    })?;
    // Our copy of the write end must be closed, or a failed intermediate would leave the read below
    // waiting forever instead of seeing end-of-file.
    drop(pid_writer);
    let status = intermediate.wait()?;
    let mut message = [0u8; 12];
    File::from(pid_reader).read_exact(&mut message).map_err(|e| {
        io::Error::new(e.kind(), format!("the intermediate process did not report the instance's pid ({status}): {e}"))
    })?;
    let (pid_bytes, ticks_bytes) = message.split_at(4);
    let pid = i32::from_ne_bytes(pid_bytes.try_into().expect("the split leaves exactly 4 bytes"));
    let start_ticks = u64::from_ne_bytes(ticks_bytes.try_into().expect("the split leaves exactly 8 bytes"));
    if !status.success() {
        return Err(io::Error::other(format!("the intermediate process for pid {pid} failed: {status}")));
    }
    let handle = if start_ticks == UNKNOWN_TICKS {
        // The intermediate could not read /proc; try once more from here, which only fails if the
        // instance has already exited and been reaped.
        let now = identify(pid)
            .map_err(|e| io::Error::new(e.kind(), format!("spawned pid {pid} but cannot read its start time: {e}")))?;
        ProcessHandle { boot_id, ..now }
    } else {
        ProcessHandle { pid, start_ticks, boot_id }
    };
    tracing::info!(pid = handle.pid, program = %spec.program.display(), "started instance process");
    Ok(handle)
}

/// The handle of whatever process has `pid` right now, for adopting a process by pid.
pub fn identify(pid: i32) -> io::Result<ProcessHandle> {
    let stat = read_stat(pid)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("there is no process with pid {pid}")))?;
    Ok(ProcessHandle { pid, start_ticks: stat.start_ticks, boot_id: boot_id()? })
}

/// The current boot id, read once per agent process (it cannot change while the agent runs).
pub fn boot_id() -> io::Result<String> {
    static BOOT_ID: OnceLock<String> = OnceLock::new();
    if let Some(id) = BOOT_ID.get() {
        return Ok(id.clone());
    }
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read /proc/sys/kernel/random/boot_id: {e}")))?;
    Ok(BOOT_ID.get_or_init(|| id.trim().to_owned()).clone())
}

/// Whether the process `h` names is still running. A zombie counts as gone; if the agent itself is the
/// zombie's parent (it runs as PID 1 or as a subreaper), the zombie is reaped here.
///
/// If `/proc` cannot be read at all the process is reported gone with that error as the reason, since
/// nothing could be done to it either.
pub fn liveness(h: &ProcessHandle) -> Liveness {
    match boot_id() {
        Ok(current) if current == h.boot_id => {}
        Ok(_) => return Liveness::Gone(format!("the host has rebooted since pid {} was started", h.pid)),
        Err(e) => return Liveness::Gone(e.to_string()),
    }
    match read_stat(h.pid) {
        Err(e) => Liveness::Gone(format!("cannot read /proc/{}/stat: {e}", h.pid)),
        Ok(None) => Liveness::Gone(format!("process {} has exited", h.pid)),
        Ok(Some(stat)) if stat.start_ticks != h.start_ticks => {
            Liveness::Gone(format!("pid {} was reused by another process", h.pid))
        }
        Ok(Some(stat)) if stat.is_dead() => Liveness::Gone(reap_or_describe(h.pid, &stat)),
        Ok(Some(_)) => Liveness::Running,
    }
}

/// SIGTERM to the whole process group, wait up to `grace` for it to go, then SIGKILL the group and wait
/// briefly. Idempotent: a Gone process is Ok. Never signals a pid whose start time no longer matches
/// (pid reuse).
///
/// Members of the group that outlived the instance itself are ended too, so calling `stop` on a handle
/// that [`liveness`] reports gone sweeps up whatever the instance left running.
pub fn stop(h: &ProcessHandle, grace: Duration) -> io::Result<()> {
    if boot_id()? != h.boot_id {
        // Nothing started before a reboot can still run.
        return Ok(());
    }
    if signal_instance(h, libc::SIGTERM)? == 0 {
        return Ok(());
    }
    if wait_until_stopped(h, grace)? {
        return Ok(());
    }
    tracing::warn!(
        pid = h.pid,
        grace_seconds = grace.as_secs_f64(),
        "instance did not stop after SIGTERM; sending SIGKILL to its process group"
    );
    signal_instance(h, libc::SIGKILL)?;
    if wait_until_stopped(h, KILL_WAIT)? {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("process group {} is still running {KILL_WAIT:?} after SIGKILL", h.pid),
    ))
}

/// The pids of living (not zombie) processes in the instance's process group, the instance included.
///
/// A group member is recognised by its process group and session both being the instance's pid, and by
/// having started no earlier than the instance. If the instance's pid now belongs to another process the
/// list is empty: the kernel never reuses a pid while a process group of that number has members.
pub fn group_members(h: &ProcessHandle) -> io::Result<Vec<i32>> {
    if boot_id()? != h.boot_id {
        return Ok(Vec::new());
    }
    if let Some(leader) = read_stat(h.pid)? {
        if leader.start_ticks != h.start_ticks {
            return Ok(Vec::new());
        }
    }
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else {
            continue;
        };
        // A process may exit while we look; that is simply not a member.
        if let Ok(Some(stat)) = read_stat(pid) {
            if stat.pgrp == h.pid && stat.session == h.pid && stat.start_ticks >= h.start_ticks && !stat.is_dead() {
                members.push(pid);
            }
        }
    }
    Ok(members)
}

/// The HTTP client every probe shares (made once: a client owns a connection pool and a thread).
/// Redirects are followed (at most 5), chunked and compressed bodies are handled by the client, and a
/// redirect to `https://` is followed over TLS without verifying the certificate, as Kubernetes' HTTPS
/// probes do: a health probe reads a status code, it sends nothing secret. No connection is kept
/// between probes, so a probe never holds a connection open on an instance being drained.
fn probe_client() -> Result<&'static reqwest::blocking::Client, String> {
    static CLIENT: std::sync::OnceLock<Result<reqwest::blocking::Client, String>> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::blocking::Client::builder()
                .redirect(reqwest::redirect::Policy::limited(5))
                .danger_accept_invalid_certs(true)
                .pool_max_idle_per_host(0)
                .user_agent("stele-probe")
                .build()
                .map_err(|e| format!("cannot make the probe's HTTP client: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// GET `path` over HTTP and succeed only for a 2xx status (after following redirects), all within
/// `timeout`. The error says why: refused, timed out, the status received, or an answer that is not
/// HTTP.
pub fn probe_http(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    // The path goes into the request line verbatim, so it must not be able to add to the request.
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(format!(
            "invalid probe path {path:?}: it must start with '/' and contain no spaces or control characters"
        ));
    }
    if timeout.is_zero() {
        return Err(format!("no HTTP response from {addr} within {timeout:?}"));
    }
    let url = format!("http://{addr}{path}");
    let response =
        probe_client()?.get(&url).header(reqwest::header::CONNECTION, "close").timeout(timeout).send().map_err(
            |e| {
                if e.is_timeout() {
                    format!("no HTTP response from {addr} within {timeout:?}")
                } else if e.is_connect() && with_sources(&e).contains("refused") {
                    format!("connection to {addr} refused")
                } else {
                    format!("GET {url}: {}", with_sources(&e))
                }
            },
        )?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        let reason = status.canonical_reason().unwrap_or("");
        Err(format!("{addr} answered GET {path} with status {} {reason}", status.as_u16()).trim_end().to_owned())
    }
}

/// An error and its causes on one line.
fn with_sources(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = e.source();
    }
    text
}

/// Runs an environment's health check against `addr`: GET its path for `http`, a connection for `tcp`,
/// each within the check's timeout.
pub fn probe(check: &ledger_format::types::HealthCheck, addr: SocketAddr) -> Result<(), String> {
    use ledger_format::types::HealthCheck;
    match check {
        HealthCheck::Http { path, timeout_ms, .. } => {
            probe_http(addr, path.as_str(), Duration::from_millis(*timeout_ms))
        }
        HealthCheck::Tcp { timeout_ms, .. } => probe_tcp(addr, Duration::from_millis(*timeout_ms)),
    }
}

/// Succeeds if a TCP connection to `addr` is accepted within `timeout`.
pub fn probe_tcp(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    connect(addr, timeout).map(drop)
}

/// A free loopback port chosen by the OS (bind 127.0.0.1:0, read, drop).
///
/// Another process may take the port before the caller binds it; callers must expect that rare failure.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// Runs in the forked intermediate process as the `pre_exec` hook: forks the instance, reports its pid
/// and start time through `writer`, and exits; in the instance itself, starts a new session and returns
/// so that `Command` goes on to `exec` the program.
///
/// Only async-signal-safe calls are allowed here, and no allocation: the parent may have had other
/// threads holding locks at the moment it forked.
fn detach_in_child(writer: RawFd) -> io::Result<()> {
    // SAFETY: this process is a fresh fork child with a single thread; fork has no memory-safety
    // preconditions, and each branch below only makes async-signal-safe calls.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // The instance: a new session and process group, numbered by its own pid, with no controlling
        // terminal. `Command` then executes the program; an exec failure reaches the agent through
        // `Command`'s own error pipe, which this process inherited.
        // SAFETY: setsid takes no arguments and has no memory-safety preconditions.
        if unsafe { libc::setsid() } < 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(());
    }
    // The intermediate: the instance is still our child, so it cannot have been reaped and its start
    // time is readable even if it has already exited.
    let start_ticks = start_ticks_without_allocating(pid).unwrap_or(UNKNOWN_TICKS);
    let mut message = [0u8; 12];
    let (pid_bytes, ticks_bytes) = message.split_at_mut(4);
    pid_bytes.copy_from_slice(&pid.to_ne_bytes());
    ticks_bytes.copy_from_slice(&start_ticks.to_ne_bytes());
    let code = if write_all_raw(writer, &message) {
        0
    } else {
        // The agent would not learn the pid of this instance and could never stop it; end it instead.
        // SAFETY: kill has no memory-safety preconditions; `pid` is our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        1
    };
    // SAFETY: _exit ends this process without running destructors or atexit handlers, which must not
    // run in a fork child; it never returns.
    unsafe { libc::_exit(code) }
}

/// Writes all of `bytes` to `fd` with raw system calls; async-signal-safe.
fn write_all_raw(fd: RawFd, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe the live slice `bytes`.
        let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if written < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        match usize::try_from(written).ok().and_then(|n| bytes.get(n..)) {
            Some(rest) => bytes = rest,
            None => return false,
        }
    }
    true
}

/// Reads the start time of `pid` from /proc with raw system calls and stack buffers only, so that it
/// may run between fork and exec.
fn start_ticks_without_allocating(pid: libc::pid_t) -> Option<u64> {
    let mut path = [0u8; 32];
    let mut len = 0;
    let mut push = |bytes: &[u8]| -> Option<()> {
        path.get_mut(len..len + bytes.len())?.copy_from_slice(bytes);
        len += bytes.len();
        Some(())
    };
    push(b"/proc/")?;
    let mut digits = [0u8; 10];
    let mut count = 0;
    let mut rest = u32::try_from(pid).ok()?;
    loop {
        *digits.get_mut(count)? = b'0' + (rest % 10) as u8;
        count += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    while count > 0 {
        count -= 1;
        push(&[digits[count]])?;
    }
    push(b"/stat\0")?;

    // SAFETY: `path` holds a NUL-terminated string.
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut buf = [0u8; 1024];
    let mut filled = 0;
    while filled < buf.len() {
        let free = &mut buf[filled..];
        // SAFETY: the pointer and length describe the writable slice `free`.
        let n = unsafe { libc::read(fd, free.as_mut_ptr().cast(), free.len()) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            filled = 0;
            break;
        }
        if n == 0 {
            break;
        }
        filled += usize::try_from(n).ok()?;
    }
    // SAFETY: `fd` was opened above and is closed exactly once.
    unsafe { libc::close(fd) };
    stat_number(buf.get(..filled)?, 22)
}

/// The fields of /proc/<pid>/stat this module uses.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stat {
    state: u8,
    ppid: i32,
    pgrp: i32,
    session: i32,
    start_ticks: u64,
    /// The exit status in `waitpid` form; filled in only for zombies, and only since Linux 3.5.
    exit_code: Option<i32>,
}

impl Stat {
    /// Zombie (`Z`) or dead (`X`, or `x` on old kernels): the process will not run again.
    fn is_dead(&self) -> bool {
        matches!(self.state, b'Z' | b'X' | b'x')
    }
}

/// Field `n` (numbered from 1 as in proc(5), and at least 3) of a /proc/<pid>/stat line. The command
/// name in field 2 may contain spaces and parentheses, so fields are counted from the last `)`.
fn stat_field(stat: &[u8], n: usize) -> Option<&[u8]> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let after_comm = stat.get(close + 1..)?;
    after_comm.split(|b| b.is_ascii_whitespace()).filter(|field| !field.is_empty()).nth(n.checked_sub(3)?)
}

/// Field `n` of a /proc/<pid>/stat line as a number.
fn stat_number<T: std::str::FromStr>(stat: &[u8], n: usize) -> Option<T> {
    std::str::from_utf8(stat_field(stat, n)?).ok()?.parse().ok()
}

fn parse_stat(stat: &[u8]) -> Option<Stat> {
    Some(Stat {
        state: *stat_field(stat, 3)?.first()?,
        ppid: stat_number(stat, 4)?,
        pgrp: stat_number(stat, 5)?,
        session: stat_number(stat, 6)?,
        start_ticks: stat_number(stat, 22)?,
        exit_code: stat_number(stat, 52),
    })
}

/// The stat of `pid`, or `None` if there is no such process (any more).
fn read_stat(pid: i32) -> io::Result<Option<Stat>> {
    if pid <= 0 {
        return Ok(None);
    }
    match std::fs::read(format!("/proc/{pid}/stat")) {
        Ok(bytes) => parse_stat(&bytes)
            .map(Some)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unexpected /proc/{pid}/stat format"))),
        // ESRCH: the process was reaped between opening and reading the file.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Why a dead process whose start time matches ended. If the agent is its parent, it is reaped here,
/// since nobody else will.
fn reap_or_describe(pid: i32, stat: &Stat) -> String {
    // SAFETY: getpid has no preconditions.
    if stat.ppid == unsafe { libc::getpid() } {
        let mut status = 0;
        // SAFETY: `status` is a valid place for waitpid to write; `pid` is our own zombie child, whose
        // identity the caller has just checked, so reaping it takes nothing from other code.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            return describe_wait_status(status);
        }
    }
    match stat.exit_code {
        Some(status) => describe_wait_status(status),
        None => format!("process {pid} has exited (it is a zombie)"),
    }
}

fn describe_wait_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        match signal_name(signal) {
            Some(name) => format!("killed by signal {signal} ({name})"),
            None => format!("killed by signal {signal}"),
        }
    } else {
        format!("ended with wait status {status:#x}")
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => return None,
    })
}

/// Sends `signal` to the instance and returns how many processes were alive to receive it.
///
/// While the instance itself runs, its process group gets the signal (or the process alone, if it does
/// not lead a group, as a handle from [`identify`] may not). Once the instance has exited, the members
/// of its group that outlived it are signalled one by one, each just after its own stat was read.
fn signal_instance(h: &ProcessHandle, signal: i32) -> io::Result<usize> {
    match read_stat(h.pid)? {
        // A reused pid proves the old group is empty (see `group_members`): nothing of ours is left.
        Some(leader) if leader.start_ticks != h.start_ticks => Ok(0),
        Some(leader) if !leader.is_dead() => {
            let target = if leader.pgrp == h.pid { -h.pid } else { h.pid };
            kill(target, signal).map(usize::from)
        }
        _ => {
            let mut signalled = 0;
            for pid in group_members(h)? {
                signalled += usize::from(kill(pid, signal)?);
            }
            Ok(signalled)
        }
    }
}

/// `kill(2)`; false if the target no longer exists.
fn kill(target: i32, signal: i32) -> io::Result<bool> {
    // SAFETY: kill has no memory-safety preconditions; the caller has checked the target's identity.
    if unsafe { libc::kill(target, signal) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(io::Error::new(error.kind(), format!("cannot send signal {signal} to {target}: {error}")))
    }
}

/// Polls until neither the instance nor any member of its group is running, or `limit` has passed.
fn wait_until_stopped(h: &ProcessHandle, limit: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        if liveness(h) != Liveness::Running && group_members(h)?.is_empty() {
            return Ok(true);
        }
        let Some(left) = remaining(deadline) else {
            return Ok(false);
        };
        std::thread::sleep(left.min(POLL_INTERVAL));
    }
}

fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    if timeout.is_zero() {
        return Err(format!("cannot connect to {addr}: the timeout is zero"));
    }
    TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
        if is_timeout(&e) {
            format!("no connection to {addr} within {timeout:?}")
        } else {
            format!("cannot connect to {addr}: {e}")
        }
    })
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
}

/// Time left until `deadline`, or `None` once it has passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    deadline.checked_duration_since(Instant::now()).filter(|left| !left.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stat line with fields 1 to 52 where field n holds n, except the named ones.
    fn stat_line(comm: &str, state: char) -> String {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[0] = state.to_string();
        format!("1234 ({comm}) {}\n", fields.join(" "))
    }

    #[test]
    fn stat_fields_are_counted_from_the_last_closing_parenthesis() {
        let cases = [("sleep", 'S'), ("a b c", 'R'), ("x) 9 9 9 (y", 'Z'), (") ) )", 'S'), ("(", 'X'), ("", 'D')];
        for (comm, state) in cases {
            let line = stat_line(comm, state);
            let stat = parse_stat(line.as_bytes()).expect("a well-formed line parses");
            assert_eq!(
                stat,
                Stat { state: state as u8, ppid: 4, pgrp: 5, session: 6, start_ticks: 22, exit_code: Some(52) },
                "{line}"
            );
            assert_eq!(stat_number::<u64>(line.as_bytes(), 22), Some(22), "{line}");
        }
    }

    #[test]
    fn old_kernels_without_an_exit_code_field_still_parse() {
        let line = "77 (init) S 1 77 77 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 1234 10 20";
        let stat = parse_stat(line.as_bytes()).expect("fields up to 22 are enough");
        assert_eq!((stat.start_ticks, stat.exit_code), (1234, None));
    }

    #[test]
    fn truncated_or_garbled_stat_lines_are_refused() {
        for line in [
            "",
            "1234 (sleep",
            "1234 (sleep) S 1 2",
            "1234 (sleep) S one 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
        ] {
            assert_eq!(parse_stat(line.as_bytes()), None, "{line:?}");
        }
    }

    #[test]
    fn our_own_start_time_is_read_the_same_way_with_and_without_allocating() {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let stat = read_stat(pid).expect("our own stat is readable").expect("we exist");
        assert_eq!(start_ticks_without_allocating(pid), Some(stat.start_ticks));
        // SAFETY: getpgrp has no preconditions.
        assert_eq!(stat.pgrp, unsafe { libc::getpgrp() });
    }

    #[test]
    fn wait_statuses_are_described_for_people() {
        assert_eq!(describe_wait_status(3 << 8), "exited with status 3");
        assert_eq!(describe_wait_status(libc::SIGKILL), "killed by signal 9 (SIGKILL)");
        assert_eq!(describe_wait_status(64), "killed by signal 64");
    }
}
