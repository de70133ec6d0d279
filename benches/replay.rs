//! History replay and polling cost, in figures printed to stdout (run: `cargo bench --bench replay`;
//! `STELE_BENCH_SIZES=1000,10000` to choose sizes, default 1000,10000,100000).
//!
//! For each size it writes a real Git repository (with `git fast-import`, one commit per entry,
//! entries spread over environments of at most 1 000 entries each), then measures in one run:
//! the raw strict-verification rate on one core and on all cores, a full `replay` (what `stele audit`
//! does, in process), and the first and a no-change `stele poll` (the binary, end to end).

mod support;

use ledger_format::history::TrustAnchor;
use ledger_format::types::EnvName;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use stele::replay::replay;
use stele::source::{GitSource, LedgerSource};
use support::{raw_verify_rates, BenchLedger};

const PER_ENV: usize = 1_000;

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
        use std::io::Write;
        self.time += 1;
        let w = &mut self.input;
        writeln!(w, "commit refs/heads/main").unwrap();
        writeln!(w, "committer bench <bench@example.invalid> {} +0000", self.time).unwrap();
        writeln!(w, "data {}\n{message}", message.len()).unwrap();
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

/// Writes a ledger of `entries` entries, one commit each; returns the key id that roots it.
fn generate(dir: &Path, entries: usize) -> String {
    let mut gen = BenchLedger::new();
    let envs: Vec<EnvName> =
        (0..entries.div_ceil(PER_ENV).max(1)).map(|i| format!("env{i}").parse().unwrap()).collect();
    let mut import = Importer::start(dir);
    import.commit("init", &gen.genesis(&envs));
    for n in 0..entries {
        let env = &envs[n / PER_ENV];
        let (path, bytes) = gen.next_entry(env);
        import.commit(&format!("release {path}"), &[(path, bytes)]);
    }
    import.finish();
    gen.root().to_hex()
}

fn poll(stele: &str, repo: &Path, state: &Path, root: &str) -> f64 {
    let start = Instant::now();
    let out = Command::new(stele)
        .args(["poll", "--json", "--trust-root", root, "--repo"])
        .arg(repo)
        .arg("--state-dir")
        .arg(state)
        .output()
        .unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    elapsed
}

fn main() {
    let sizes: Vec<usize> = std::env::var("STELE_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("sizes are numbers"))
        .collect();
    let (one, all) = raw_verify_rates();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("raw verify_strict: {one:.0}/s on one core, {all:.0}/s on {threads} threads");
    let stele = env!("CARGO_BIN_EXE_stele");
    for n in sizes {
        // STELE_BENCH_KEEP=DIR keeps generated repositories there and reuses them (for profiling).
        let dir = tempfile::tempdir().unwrap();
        let repo_dir = match std::env::var("STELE_BENCH_KEEP") {
            Ok(keep) => Path::new(&keep).join(format!("ledger-{n}.git")),
            Err(_) => dir.path().join("ledger.git"),
        };
        let start = Instant::now();
        let root =
            if repo_dir.join("HEAD").exists() { BenchLedger::new().root().to_hex() } else { generate(&repo_dir, n) };
        let gen_s = start.elapsed().as_secs_f64();

        let mut source = GitSource::open(repo_dir.to_str().unwrap(), Some("main"), dir.path()).unwrap();
        let head = source.refresh().unwrap();
        let anchor = TrustAnchor::RootKeys { keys: vec![root.parse().unwrap()], threshold: 1 };
        let start = Instant::now();
        let outcome = replay(&source, None, head, &anchor, &mut |_, _| {}).unwrap();
        let replay_s = start.elapsed().as_secs_f64();
        assert!(outcome.refusals.is_empty(), "{:?}", outcome.refusals.first());
        let generations: u64 = outcome.verified.as_ref().unwrap().state.envs.values().map(|h| h.generation).sum();
        assert_eq!(generations, n as u64, "every entry is one generation");
        let t = outcome.timings;
        println!(
            "  replay phases: walk {:.0} ms, read {:.0} ms, verify signatures {:.0} ms, judge steps {:.0} ms",
            t.walk.as_secs_f64() * 1e3,
            t.read.as_secs_f64() * 1e3,
            t.verify.as_secs_f64() * 1e3,
            t.apply.as_secs_f64() * 1e3
        );
        let rate = n as f64 / replay_s;
        println!(
            "{n} entries ({} commits, generated in {gen_s:.1} s): replay {replay_s:.2} s = {rate:.0} entries/s = {:.0}% of raw verify on {threads} threads",
            n + 1,
            100.0 * rate / all
        );

        // In process, as the agent polls: refresh the source and compare with the verified head.
        let verified = outcome.verified.as_ref().unwrap().commit;
        let mut best = f64::MAX;
        for _ in 0..20 {
            let start = Instant::now();
            let head = source.refresh().unwrap();
            let todo = source.first_parents(Some(verified), head).unwrap();
            best = best.min(start.elapsed().as_secs_f64());
            assert!(todo.is_empty());
        }
        println!("  no-change poll in process (agent): {:.3} ms (best of 20)", best * 1e3);

        let state = dir.path().join("state");
        let first = poll(stele, &repo_dir, &state, &root);
        let mut unchanged = f64::MAX;
        for _ in 0..5 {
            unchanged = unchanged.min(poll(stele, &repo_dir, &state, &root));
        }
        println!(
            "  stele poll: first (full verification) {first:.2} s; no-change poll {:.1} ms (best of 5)",
            unchanged * 1e3
        );
    }
}
