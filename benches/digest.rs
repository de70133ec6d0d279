//! Hashing a large image (issue 14): `stele image digest FILE` against `b3sum FILE` on the same file,
//! and `stele image digest http://...` against `curl -s URL | b3sum` from a loopback HTTP server,
//! paired, alternating, best of `STELE_BENCH_ROUNDS` (default 5) each. Needs `b3sum` and `curl`
//! (Debian packages `b3sum`, `curl`); it fails, naming them, when they are missing.
//!
//! Run: `cargo bench --bench digest` (`STELE_BENCH_MIB`, default 1024, sets the file size). The file
//! is written once under the target directory and read from the page cache in every round (first
//! round discarded), so the figures compare hashing, not the disk.

#[path = "support/cli.rs"]
mod cli;

use cli::STELE;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn need(program: &str, package: &str) {
    let found = Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(found.is_ok_and(|s| s.success()), "{program} is needed for this benchmark: apt-get install {package}");
}

fn best(rounds: usize, mut run: impl FnMut() -> String) -> (Duration, String) {
    let mut out = String::new();
    let times: Vec<Duration> = (0..=rounds)
        .map(|_| {
            let t = Instant::now();
            out = run();
            t.elapsed()
        })
        .skip(1)
        .collect();
    (times.into_iter().min().expect("rounds >= 1"), out)
}

fn shell(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh runs");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Serves `file` to every GET on a loopback port, one connection at a time, on a thread.
fn serve(file: &Path) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let path = file.to_path_buf();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let len = std::fs::metadata(&path).expect("served file").len();
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
            let mut f = std::fs::File::open(&path).expect("open served file");
            let _ = std::io::copy(&mut f, &mut stream);
        }
    });
    port
}

fn main() {
    need("b3sum", "b3sum");
    need("curl", "curl");
    let rounds: usize = std::env::var("STELE_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let mib: u64 = std::env::var("STELE_BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("digest-bench-{mib}.bin"));
    if std::fs::metadata(&file).map(|m| m.len()).ok() != Some(mib << 20) {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).expect("create"));
        let mut block = vec![0u8; 1 << 20];
        for i in 0..mib {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (i as usize).wrapping_mul(31).wrapping_add(j.wrapping_mul(7)) as u8;
            }
            f.write_all(&block).expect("write");
        }
        f.flush().expect("flush");
    }
    let path = file.display().to_string();
    println!("hashing {mib} MiB, best of {rounds} (after one warm-up round), {} cores", num_cores());

    let (b3, b3_out) = best(rounds, || shell(&format!("b3sum --no-names '{path}'")));
    let (ours, ours_out) = best(rounds, || shell(&format!("'{STELE}' image digest '{path}'")));
    assert!(ours_out.contains(b3_out.trim()), "the digests differ: b3sum {b3_out:?}, stele {ours_out:?}");
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    println!(
        "  file: b3sum {:.3} s ({:.0} MiB/s), stele image digest {:.3} s ({:.0} MiB/s): {:.2}x b3sum's throughput",
        b3.as_secs_f64(),
        rate(b3),
        ours.as_secs_f64(),
        rate(ours),
        b3.as_secs_f64() / ours.as_secs_f64()
    );

    let port = serve(&file);
    let url = format!("http://127.0.0.1:{port}/image.tar");
    let (curl, curl_out) = best(rounds, || shell(&format!("curl -s '{url}' | b3sum --no-names")));
    let (http, http_out) = best(rounds, || shell(&format!("'{STELE}' image digest '{url}'")));
    assert!(http_out.contains(curl_out.trim()), "the digests differ: {curl_out:?} vs {http_out:?}");
    println!(
        "  http: curl | b3sum {:.3} s ({:.0} MiB/s), stele image digest URL {:.3} s ({:.0} MiB/s): {:.2}x",
        curl.as_secs_f64(),
        rate(curl),
        http.as_secs_f64(),
        rate(http),
        curl.as_secs_f64() / http.as_secs_f64()
    );
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
