//! History replay and polling cost, in figures printed to stdout (run: `cargo bench --bench replay`;
//! `STELE_BENCH_SIZES=1000,10000` to choose sizes, default 1000,10000,100000).
//!
//! For each size it writes a real Git repository (with `git fast-import`, one commit per entry,
//! entries spread over environments of at most 1 000 entries each), then measures in one run:
//! the raw strict-verification rate on one core and on all cores, a full `replay` (what `stele audit`
//! does, in process), and the first and a no-change `stele poll` (the binary, end to end).

use ledger_format::crypto::SecretKey;
use ledger_format::document::Document;
use ledger_format::history::TrustAnchor;
use ledger_format::tree::{entry_path, environment_path, POLICY_PATH};
use ledger_format::types::*;
use ledger_format::{Blake3Digest, Timestamp};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use stele::replay::replay;
use stele::source::{GitSource, LedgerSource};

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
    let key = SecretKey::from_seed(&[5; 32]);
    let id = key.public_key().key_id();
    let ledger: LedgerId = "bench".parse().unwrap();
    let envs: Vec<EnvName> =
        (0..entries.div_ceil(PER_ENV).max(1)).map(|i| format!("env{i}").parse().unwrap()).collect();
    let role = Role { keys: vec![id], threshold: 1 };
    let policy = Policy {
        payload_type: PolicyType,
        ledger: ledger.clone(),
        version: 1,
        expires_at: None,
        keys: BTreeMap::from([(id, KeyInfo { name: "bench".parse().unwrap(), public_key: key.public_key() })]),
        root: role.clone(),
        environments: envs.iter().map(|e| (e.clone(), role.clone())).collect(),
    };
    let mut import = Importer::start(dir);
    let mut doc = Document::new(policy);
    doc.sign(&key);
    let mut files = vec![(POLICY_PATH.to_owned(), doc.to_file_bytes())];
    for env in &envs {
        let mut spec = Document::new(Environment {
            payload_type: EnvironmentType,
            ledger: ledger.clone(),
            name: env.clone(),
            version: 1,
            provider: Provider::Local {},
            groups: vec![Group { name: "web".parse().unwrap(), capacity: 2 }],
            strategy: Strategy::Rolling { max_surge: 1, max_unavailable: 0, min_ready_seconds: 0 },
            health: HealthCheck::Tcp { interval_ms: 500, timeout_ms: 500, healthy_threshold: 1, deadline_seconds: 30 },
            drift: DriftMode::Correct,
            revert: RevertPolicy::Allow,
            max_instance_age_seconds: None,
        });
        spec.sign(&key);
        files.push((environment_path(env), spec.to_file_bytes()));
    }
    import.commit("init", &files);
    let mut prev: BTreeMap<EnvName, Blake3Digest> = BTreeMap::new();
    for n in 0..entries {
        let env = &envs[n / PER_ENV];
        let seq = (n % PER_ENV) as u64 + 1;
        let entry = Entry {
            payload_type: EntryType,
            ledger: ledger.clone(),
            env: env.clone(),
            seq,
            prev: prev.get(env).copied().unwrap_or(Blake3Digest::ZERO),
            version: format!("1.0.{seq}").parse().unwrap(),
            image: Image::Artifact {
                uri: format!("https://images.example/{env}-{seq}.tar").parse().unwrap(),
                blake3: Blake3Digest(*blake3::hash(&(n as u64).to_le_bytes()).as_bytes()),
                size: 1 << 20,
            },
            created_at: Timestamp::from_unix(1_800_000_000 + n as i64).unwrap(),
            expires_at: None,
        };
        let mut doc = Document::new(entry);
        doc.sign(&key);
        prev.insert(env.clone(), doc.hash());
        import.commit(&format!("release {env} 1.0.{seq}"), &[(entry_path(env, seq), doc.to_file_bytes())]);
    }
    import.finish();
    id.to_hex()
}

fn raw_rates() -> (f64, f64) {
    let key = SecretKey::from_seed(&[3; 32]);
    let msg = [0x5au8; 400];
    let sig = key.sign(&msg);
    let pk = key.public_key();
    let n = 20_000;
    let start = Instant::now();
    for _ in 0..n {
        pk.verify(&msg, &sig).unwrap();
    }
    let one = n as f64 / start.elapsed().as_secs_f64();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..n / threads {
                    pk.verify(&msg, &sig).unwrap();
                }
            });
        }
    });
    (one, (n / threads * threads) as f64 / start.elapsed().as_secs_f64())
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
    let (one, all) = raw_rates();
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
        let root = if repo_dir.join("HEAD").exists() {
            SecretKey::from_seed(&[5; 32]).public_key().key_id().to_hex()
        } else {
            generate(&repo_dir, n)
        };
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
