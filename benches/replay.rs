//! History replay and polling cost, in figures printed to stdout (run: `cargo bench --bench replay`;
//! `STELE_BENCH_SIZES=1000,10000` to choose sizes, default 1000,10000,100000;
//! `STELE_BENCH_SHAPES=1000,one` to choose how many entries each environment holds, where `one` puts
//! every entry in one environment; default 1000,10000,one; `STELE_BENCH_LAYOUTS=flat,buckets` to choose
//! the entry layouts (SPEC.md §2.3.1; default both, except that the flat layout is not generated with more
//! than 10 000 entries in one environment: writing it is itself O(n²)); `STELE_BENCH_STELE=PATH` to
//! measure another build of the binary; `STELE_BENCH_BASELINE=PATH` to measure a baseline build's no-change and one-new-entry
//! polls too, interleaved with this build's in the same run).
//!
//! For each size and shape it writes a real Git repository (with `git fast-import`, one commit per
//! entry), then measures in one run: the raw strict-verification rate on one core and on all cores, a
//! full `replay` (what `stele audit` does, in process) with its peak RSS, the first, a no-change and a
//! one-new-entry `stele poll` and a `stele audit` (the binaries, end to end) with their peak RSS. The
//! polls read a hard-linked clone of the ledger, which the one-new-entry polls append to.

mod support;

use ledger_format::history::TrustAnchor;
use ledger_format::tree::Layout;
use ledger_format::types::EnvName;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use stele::replay::replay;
use stele::source::{GitSource, LedgerSource};
use support::{raw_verify_rates, BenchLedger};

/// Streams commits into `git fast-import`, which writes a delta-compressed pack like a fetched
/// repository's.
struct Importer {
    child: std::process::Child,
    input: std::io::BufWriter<std::process::ChildStdin>,
    time: i64,
}

impl Importer {
    fn start(dir: &Path) -> Self {
        let status =
            Command::new("git").args(["init", "-q", "--bare", "-b", "main"]).arg(dir).status().expect("git runs");
        assert!(status.success(), "git init failed");
        Self::resume(dir)
    }

    /// Goes on writing into an existing repository (the first commit must name `from`).
    fn resume(dir: &Path) -> Self {
        let mut child = Command::new("git")
            .args(["fast-import", "--quiet", "--done"])
            .current_dir(dir)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("git fast-import runs");
        let input = std::io::BufWriter::with_capacity(1 << 20, child.stdin.take().expect("piped stdin"));
        Self { child, input, time: 1_800_000_000 }
    }

    fn commit(&mut self, message: &str, files: &[(String, Vec<u8>)]) {
        self.commit_from(message, None, files);
    }

    /// A commit on `main` whose first parent is `from` (a commit-ish), or the last one written.
    fn commit_from(&mut self, message: &str, from: Option<&str>, files: &[(String, Vec<u8>)]) {
        use std::io::Write;
        self.time += 1;
        let w = &mut self.input;
        writeln!(w, "commit refs/heads/main").unwrap();
        writeln!(w, "committer bench <bench@example.invalid> {} +0000", self.time).unwrap();
        writeln!(w, "data {}\n{message}", message.len()).unwrap();
        if let Some(from) = from {
            writeln!(w, "from {from}").unwrap();
        }
        for (path, bytes) in files {
            writeln!(w, "M 100644 inline {path}").unwrap();
            writeln!(w, "data {}", bytes.len()).unwrap();
            w.write_all(bytes).unwrap();
            writeln!(w).unwrap();
        }
        writeln!(w).unwrap();
    }

    fn finish(mut self) {
        use std::io::Write;
        writeln!(self.input, "done").unwrap();
        self.input.flush().unwrap();
        drop(self.input);
        assert!(self.child.wait().unwrap().success(), "git fast-import failed");
    }
}

/// The environments of a ledger of `entries` entries, `per_env` per environment.
fn environments(entries: usize, per_env: usize) -> Vec<EnvName> {
    (0..entries.div_ceil(per_env).max(1)).map(|i| format!("env{i}").parse().unwrap()).collect()
}

/// Writes a ledger of `entries` entries, `per_env` per environment, one commit each into `dir` (or only
/// signs them when `dir` is `None`, to carry on a ledger kept from an earlier run); returns the
/// generator, ready for the next entry.
fn generate(dir: Option<&Path>, entries: usize, per_env: usize, layout: Layout) -> BenchLedger {
    let mut gen = BenchLedger::new().with_layout(layout);
    let envs = environments(entries, per_env);
    let mut import = dir.map(Importer::start);
    let genesis = gen.genesis(&envs);
    if let Some(import) = &mut import {
        import.commit("init", &genesis);
    }
    for n in 0..entries {
        let env = &envs[n / per_env];
        let (path, bytes) = gen.next_entry(env);
        if let Some(import) = &mut import {
            import.commit(&format!("release {path}"), &[(path, bytes)]);
        }
    }
    if let Some(import) = import {
        import.finish();
    }
    gen
}

/// Appends the next entry of `env` to `main` in the repository at `dir`, as one commit.
fn append(dir: &Path, gen: &mut BenchLedger, env: &EnvName) {
    let mut import = Importer::resume(dir);
    import.time = 1_900_000_000;
    let (path, bytes) = gen.next_entry(env);
    import.commit_from(&format!("release {path}"), Some("refs/heads/main^0"), &[(path, bytes)]);
    import.finish();
}

/// Runs `command` to the end; returns its wall time in seconds and its peak RSS in MiB.
///
/// The peak is measured by `/usr/bin/time -f %M`, which forks the command from its own small process:
/// `wait4`'s `ru_maxrss` of a child spawned from this harness starts at the harness's own RSS (Linux
/// carries the parent's high-water mark across `exec`), which overstated every binary's figure after
/// the in-process replay had grown the harness.
fn timed(command: &mut Command, out_dir: &Path) -> (f64, f64) {
    let (out, err, rss) = (out_dir.join("stdout"), out_dir.join("stderr"), out_dir.join("maxrss"));
    assert!(Path::new("/usr/bin/time").exists(), "the replay bench needs /usr/bin/time (Debian package `time`)");
    let mut wrapped = Command::new("/usr/bin/time");
    wrapped.args(["-f", "%M", "-o"]).arg(&rss).arg(command.get_program()).args(command.get_args());
    let start = Instant::now();
    let status = wrapped
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .expect("the stele binary runs");
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        status.success(),
        "{:?} failed: {}{}",
        command,
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    let kib: f64 = std::fs::read_to_string(&rss).unwrap().trim().parse().expect("time -f %M prints KiB");
    (elapsed, kib / 1024.0)
}

fn poll(stele: &str, repo: &Path, state: &Path, root: &str) -> (f64, f64) {
    let mut cmd = Command::new(stele);
    cmd.args(["poll", "--json", "--trust-root", root, "--repo"]).arg(repo).arg("--state-dir").arg(state);
    timed(&mut cmd, state.parent().unwrap())
}

/// A `stele poll`'s wall time alone, spawned directly (no `time` wrapper to add its own start-up).
fn poll_wall(stele: &str, repo: &Path, state: &Path, root: &str) -> f64 {
    let start = Instant::now();
    let status = Command::new(stele)
        .args(["poll", "--json", "--trust-root", root, "--repo"])
        .arg(repo)
        .arg("--state-dir")
        .arg(state)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("the stele binary runs");
    assert!(status.success(), "stele poll failed");
    start.elapsed().as_secs_f64()
}

/// Resets this process's peak RSS to its current RSS (Linux `clear_refs`, value 5).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("write /proc/self/clear_refs");
}

/// A `/proc/self/status` figure in MiB (`VmHWM`: peak RSS; `VmRSS`: current).
fn proc_status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field}"));
    let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024.0
}

fn main() {
    let sizes: Vec<usize> = std::env::var("STELE_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("sizes are numbers"))
        .collect();
    let shapes: Vec<Option<usize>> = std::env::var("STELE_BENCH_SHAPES")
        .unwrap_or_else(|_| "1000,10000,one".into())
        .split(',')
        .map(|s| match s.trim() {
            "one" => None,
            n => Some(n.parse().expect("shapes are numbers or `one`")),
        })
        .collect();
    let layouts: Vec<Layout> = std::env::var("STELE_BENCH_LAYOUTS")
        .unwrap_or_else(|_| "flat,buckets".into())
        .split(',')
        .map(|s| match s.trim() {
            "flat" => Layout::Flat,
            "buckets" => Layout::Buckets,
            other => panic!("layouts are flat or buckets, not {other}"),
        })
        .collect();
    let (one, all) = raw_verify_rates();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("raw verify_strict: {one:.0}/s on one core, {all:.0}/s on {threads} threads");
    // STELE_BENCH_STELE=PATH measures another build of the binary (a baseline kept aside).
    let stele = std::env::var("STELE_BENCH_STELE").unwrap_or_else(|_| env!("CARGO_BIN_EXE_stele").to_owned());
    let stele = stele.as_str();
    let baseline = std::env::var("STELE_BENCH_BASELINE").ok();
    for n in sizes {
        let mut done = Vec::new();
        for shape in &shapes {
            let per_env = shape.unwrap_or(n).min(n);
            if done.contains(&per_env) {
                continue; // the same ledger as a shape already measured at this size
            }
            done.push(per_env);
            for layout in &layouts {
                if *layout == Layout::Flat && per_env > 10_000 {
                    println!("{n} entries in one env, flat layout: not generated (O(n²) to write; see SPEC.md §2.3.1)");
                    continue;
                }
                measure(stele, baseline.as_deref(), n, per_env, *layout, all, threads);
            }
        }
    }
}

fn measure(stele: &str, baseline: Option<&str>, n: usize, per_env: usize, layout: Layout, all: f64, threads: usize) {
    // STELE_BENCH_KEEP=DIR keeps generated repositories there and reuses them (for profiling).
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = match std::env::var("STELE_BENCH_KEEP") {
        Ok(keep) => Path::new(&keep).join(format!("ledger-{n}-{per_env}-{}.git", layout.name())),
        Err(_) => dir.path().join("ledger.git"),
    };
    let start = Instant::now();
    let kept = repo_dir.join("HEAD").exists();
    let mut gen = generate((!kept).then_some(repo_dir.as_path()), n, per_env, layout);
    let root = gen.root().to_hex();
    let gen_s = start.elapsed().as_secs_f64();
    let envs = n.div_ceil(per_env);

    let mut source = GitSource::open(repo_dir.to_str().unwrap(), Some("main"), dir.path()).unwrap();
    let head = source.refresh().unwrap();
    let anchor = TrustAnchor::RootKeys { keys: vec![root.parse().unwrap()], threshold: 1 };
    let rss_before = proc_status_mib("VmRSS:");
    reset_peak_rss();
    let start = Instant::now();
    let outcome = replay(&source, None, head, &anchor, &mut |_, _| {}).unwrap();
    let replay_s = start.elapsed().as_secs_f64();
    let peak = proc_status_mib("VmHWM:");
    assert!(outcome.refusals.is_empty(), "{:?}", outcome.refusals.first());
    let generations: u64 = outcome.verified.as_ref().unwrap().state.envs.values().map(|h| h.generation).sum();
    assert_eq!(generations, n as u64, "every entry is one generation");
    let t = outcome.timings;
    let rate = n as f64 / replay_s;
    println!(
        "{n} entries in {envs} env(s) of {per_env}, {} layout ({} commits, generated in {gen_s:.1} s): replay \
         {replay_s:.2} s = {rate:.0} entries/s = {:.0}% of raw verify on {threads} threads; {:.1} us per entry",
        layout.name(),
        n + 1,
        100.0 * rate / all,
        replay_s * 1e6 / n as f64
    );
    println!(
        "  replay phases: walk {:.0} ms, read {:.0} ms ({:.0} us per commit), verify signatures {:.0} ms, judge \
         steps {:.0} ms",
        t.walk.as_secs_f64() * 1e3,
        t.read.as_secs_f64() * 1e3,
        t.read.as_secs_f64() * 1e6 / n as f64,
        t.verify.as_secs_f64() * 1e3,
        t.apply.as_secs_f64() * 1e3
    );
    println!("  replay in process: peak RSS {peak:.0} MiB ({rss_before:.0} MiB before it)");
    drop(outcome);

    // In process, as the agent polls: refresh the source and compare with the verified head.
    let verified = head;
    let mut best = f64::MAX;
    for _ in 0..20 {
        let start = Instant::now();
        let head = source.refresh().unwrap();
        let todo = source.first_parents(Some(verified), head).unwrap();
        best = best.min(start.elapsed().as_secs_f64());
        assert!(todo.is_empty());
    }
    println!("  no-change poll in process (agent): {:.3} ms (best of 20)", best * 1e3);

    // The binaries poll a hard-linked clone, which the one-new-entry polls append to.
    let polled = dir.path().join("polled.git");
    let cloned = Command::new("git").args(["clone", "-q", "--bare", "--local"]).arg(&repo_dir).arg(&polled).status();
    assert!(cloned.expect("git runs").success(), "git clone failed");
    let state = dir.path().join("state");
    let (first, first_rss) = poll(stele, &polled, &state, &root);
    // The baseline (if any) starts from a copy of the state this build saved.
    let base_state = dir.path().join("base").join("state");
    if baseline.is_some() {
        std::fs::create_dir_all(base_state.parent().unwrap()).unwrap();
        let copied = Command::new("cp").arg("-a").arg(&state).arg(&base_state).status().expect("cp runs");
        assert!(copied.success(), "copy the state directory");
    }
    // Best and median of 20 (no change) and of 10 (one new entry each), the builds interleaved: a
    // concurrent build on the machine shows in the median first.
    let (mut unchanged, mut base_unchanged) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        unchanged.push(poll_wall(stele, &polled, &state, &root));
        if let Some(base) = baseline {
            base_unchanged.push(poll_wall(base, &polled, &base_state, &root));
        }
    }
    let env = environments(n, per_env).pop().unwrap();
    let (mut one_new, mut base_one_new) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        append(&polled, &mut gen, &env);
        one_new.push(poll_wall(stele, &polled, &state, &root));
        if let Some(base) = baseline {
            base_one_new.push(poll_wall(base, &polled, &base_state, &root));
        }
    }
    let ms = |samples: &mut Vec<f64>| {
        samples.sort_by(f64::total_cmp);
        format!("{:.1} ms (median {:.1})", samples[0] * 1e3, samples[samples.len() / 2] * 1e3)
    };
    println!(
        "  stele poll: first (full verification) {first:.2} s, peak RSS {first_rss:.0} MiB; no-change poll {} \
         (best of 20, target <= 10 ms); one new entry {} (best of 10, target <= 20 ms)",
        ms(&mut unchanged),
        ms(&mut one_new)
    );
    if baseline.is_some() {
        println!(
            "  baseline stele poll (interleaved with the above): no-change {}, one new entry {}",
            ms(&mut base_unchanged),
            ms(&mut base_one_new)
        );
    }
    let mut audit = Command::new(stele);
    audit.args(["audit", "--json", "--trust-root", &root, "--repo"]).arg(&repo_dir);
    let (audit_s, audit_rss) = timed(&mut audit, dir.path());
    println!("  stele audit: {audit_s:.2} s = {:.0} entries/s, peak RSS {audit_rss:.0} MiB", n as f64 / audit_s);
}
