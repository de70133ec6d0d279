//! What signing costs per status write (issue 13): `status::render` (unsigned) versus
//! `status::render_signed` (build the `stele.status/v1` document, PAE, Ed25519 sign, canonical file
//! form, and the strict re-parse it makes), `status::decode` of each (what the writer reads to skip an
//! unchanged status), and a whole `StatusWriter::publish` to a bare repository on this machine (read
//! the tip, decode the file there, build the blob, tree and commit, move the ref), unsigned to a
//! branch versus signed to `refs/stele/status/<id>`.
//!
//! The status is a typical one: 3 instances, a target and a running release.

use ledger_format::{Blake3Digest, SecretKey};
use std::time::{Duration, Instant};
use stele::status::{
    decode, render, render_signed, EnvStatus, InstanceStatus, Phase, StatusKey, StatusWriter, TargetStatus, FORMAT,
};

fn typical(generation: u64) -> EnvStatus {
    with_instances(3, generation)
}

/// A Healthy status of `instances` instances at `generation` (also the `observations` part's fixture).
pub fn with_instances(instances: usize, generation: u64) -> EnvStatus {
    let target = TargetStatus { version: "2.0.0".parse().unwrap(), seq: 4, blake3: Blake3Digest([7; 32]) };
    EnvStatus {
        format: FORMAT,
        env: "staging".parse().unwrap(),
        ledger: "acme".parse().unwrap(),
        ledger_commit: "c".repeat(40),
        target_generation: generation,
        observed_generation: generation,
        target: Some(target.clone()),
        running: Some(target),
        phase: Phase::Healthy,
        message: String::new(),
        instances: (1..=instances)
            .map(|i| InstanceStatus {
                id: format!("web-{i}"),
                group: "web".parse().unwrap(),
                generation,
                blake3: Blake3Digest([7; 32]),
                health: "healthy".into(),
                since: "2026-01-01T00:00:00Z".parse().unwrap(),
                drift: None,
            })
            .collect(),
        last_error: None,
        agent: "host:/var/lib/stele".into(),
        updated_at: "2026-01-01T00:00:00Z".parse().unwrap(),
        suspended: None,
    }
}

/// Median of `rounds` timings of `f` run `per` times, per call.
fn per_call(rounds: usize, per: u32, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per {
                f();
            }
            t.elapsed() / per
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

pub fn run() {
    let key = SecretKey::from_seed(&[9; 32]);
    let status = typical(3);
    let plain = render(&status);
    let signed = render_signed(&status, &key).expect("sign");
    println!("\nsigned status write (issue 13): one typical status (3 instances), median of 15 rounds");
    println!("{:<44} {:>12} {:>12} {:>10}", "step", "unsigned", "signed", "bytes");
    let r_plain = per_call(15, 200, || drop(std::hint::black_box(render(&status))));
    let r_signed = per_call(15, 200, || drop(std::hint::black_box(render_signed(&status, &key).expect("sign"))));
    println!(
        "{:<44} {:>12} {:>12} {:>4} → {}",
        "render (sign + render)",
        us(r_plain),
        us(r_signed),
        plain.len(),
        signed.len()
    );
    let d_plain = per_call(15, 200, || drop(std::hint::black_box(decode(&plain).expect("decode"))));
    let d_signed = per_call(15, 200, || drop(std::hint::black_box(decode(&signed).expect("decode"))));
    println!("{:<44} {:>12} {:>12}", "decode (the writer's unchanged check)", us(d_plain), us(d_signed));

    let tmp = tempfile::tempdir().expect("tempdir");
    let bare = tmp.path().join("ledger.git");
    git2::Repository::init_bare(&bare).expect("init");
    let location = bare.to_str().expect("utf-8");
    let mut unsigned = StatusWriter::open(location, "stele/status", &tmp.path().join("c1")).expect("open");
    let mut signed_writer = StatusWriter::open_ref(location, "refs/stele/status/bench", &tmp.path().join("c2"))
        .expect("open")
        .with_key(StatusKey::new(SecretKey::from_seed(&[9; 32])));
    let mut generation = 3;
    let mut publish = |w: &mut StatusWriter| {
        generation += 1;
        w.publish(&typical(generation)).expect("publish");
    };
    let p_plain = per_call(15, 20, || publish(&mut unsigned));
    let p_signed = per_call(15, 20, || publish(&mut signed_writer));
    println!("{:<44} {:>12} {:>12}", "StatusWriter::publish, local bare repository", us(p_plain), us(p_signed));
}
