//! The agent's HTTP surface on a real `stele agent` process (issue 12): readiness before and after the
//! first sync, metrics after a real local rollout and after a failed gate, webhooks from GitHub,
//! GitLab and Gitea (good, bad and missing signatures, another branch, an oversized body, a burst that
//! coalesces), notifications to a receiver that is down and then up, suspend and resume, and the
//! operator page in headless Chromium.

mod agent_world;
mod common;

use agent_world::*;
use common::{browser, free_port, path_str, GitDaemon, OK};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One HTTP/1.1 request; (status code, body), or (0, why) when nothing answers.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => return (0, format!("connect to the agent: {e}")),
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("send");
    let _ = s.write_all(body);
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let code = response.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path, &[], b"")
}

/// The value of the metric line starting with `series ` (name and labels as printed).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

fn polls(addr: SocketAddr) -> f64 {
    let (_, text) = get(addr, "/metrics");
    ["verified", "up_to_date", "stalled", "failed"]
        .iter()
        .filter_map(|r| metric(&text, &format!("stele_polls_total{{result=\"{r}\"}}")))
        .sum()
}

fn wait_for(what: &str, w: &World, limit: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}; agent log:\n{}", w.agent_log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Adds `text` to the world's agent configuration.
fn configure(w: &World, text: &str) {
    let mut config = std::fs::read_to_string(&w.config).expect("read agent.toml");
    config.push_str(text);
    std::fs::write(&w.config, config).expect("write agent.toml");
}

#[test]
fn readiness_before_and_after_the_first_sync_and_metrics_after_a_rollout_and_a_failed_gate() {
    let port = free_port();
    let (mut w, bare) = World::served(port, 1);
    let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    configure(&w, &format!("\n[http]\nlisten = \"{http}\"\n"));
    let v1 = w.image("1.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.ledger.git(["push", "-q", "origin", "HEAD:main"]);
    // The remote is down: the loop runs (healthz) but nothing is verified yet (readyz).
    w.spawn_agent();
    wait_for("/healthz", &w, Duration::from_secs(20), || get(http, "/healthz").0 == 200);
    let (code, body) = get(http, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no verified sync"), "{body}");
    wait_for("a failed poll of the remote that is down", &w, Duration::from_secs(20), || {
        metric(&get(http, "/metrics").1, "stele_polls_total{result=\"failed\"}").is_some_and(|v| v >= 1.0)
    });
    assert_eq!(get(http, "/readyz").0, 503, "still not ready");
    let _daemon = GitDaemon::serve_on(&w.sb, &bare, port);
    wait_for("/readyz after the first sync", &w, Duration::from_secs(40), || get(http, "/readyz").0 == 200);

    let healthy = |w: &World, generation: u64| {
        let (_, text) = get(http, "/metrics");
        metric(&text, "stele_env_phase{env=\"staging\",phase=\"Healthy\"}") == Some(1.0)
            && metric(&text, "stele_env_observed_generation{env=\"staging\"}") == Some(generation as f64)
            && !w.agent_log().is_empty()
    };
    wait_for("Healthy at generation 1 in the metrics", &w, Duration::from_secs(60), || healthy(&w, 1));
    let (_, text) = get(http, "/metrics");
    for (series, value) in [
        ("stele_env_target_generation{env=\"staging\"}", 1.0),
        ("stele_env_behind_seconds{env=\"staging\"}", 0.0),
        ("stele_env_suspended{env=\"staging\"}", 0.0),
        ("stele_env_phase{env=\"staging\",phase=\"Degraded\"}", 0.0),
        ("stele_instances{env=\"staging\",generation=\"1\",health=\"healthy\"}", 2.0),
    ] {
        assert_eq!(metric(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(metric(&text, "stele_polls_total{result=\"verified\"}").is_some_and(|v| v >= 1.0), "{text}");
    assert!(
        metric(&text, "stele_polls_total{result=\"failed\"}").is_some_and(|v| v >= 1.0),
        "the remote was down: {text}"
    );
    assert!(metric(&text, "stele_last_poll_success_timestamp_seconds").is_some_and(|t| t > 1.7e9), "{text}");
    assert!(text.contains("stele_build_info{version=\""), "{text}");
    assert!(text.contains("stele_poll_duration_seconds_bucket{le="), "{text}");
    let (code, status) = get(http, "/api/status");
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(status["ready"], true);
    assert_eq!(status["environments"][0]["phase"], "Healthy", "{status:#}");

    // A release whose health check fails: the gate fails and v1 is restored.
    let v2 = w.image("2.0.0", true);
    w.release("2.0.0", &v2, &[]).expect(OK);
    w.ledger.git(["push", "-q", "origin", "HEAD:main"]);
    wait_for("Degraded in the metrics", &w, Duration::from_secs(90), || {
        metric(&get(http, "/metrics").1, "stele_env_phase{env=\"staging\",phase=\"Degraded\"}") == Some(1.0)
    });
    let (_, text) = get(http, "/metrics");
    assert_eq!(metric(&text, "stele_env_target_generation{env=\"staging\"}"), Some(2.0), "{text}");
    assert_eq!(metric(&text, "stele_env_observed_generation{env=\"staging\"}"), Some(1.0), "{text}");
    assert!(metric(&text, "stele_env_behind_seconds{env=\"staging\"}").is_some_and(|s| s > 0.0), "{text}");
    assert_eq!(
        metric(&text, "stele_instances{env=\"staging\",generation=\"1\",health=\"healthy\"}"),
        Some(2.0),
        "{text}"
    );
    w.kill_agent();
}

#[test]
fn webhooks_trigger_a_sync_only_when_genuine_and_a_burst_coalesces() {
    let daemon_port = free_port();
    let (mut w, bare) = World::served(daemon_port, 300);
    let _daemon = GitDaemon::serve_on(&w.sb, &bare, daemon_port);
    let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let secret = w.sb.path("hook-secret");
    std::fs::write(&secret, "it's a secret\n").expect("write secret");
    configure(&w, &format!("\n[http]\nlisten = \"{http}\"\nhook_secret_file = \"{}\"\n", path_str(&secret)));
    let v1 = w.image("1.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.ledger.git(["push", "-q", "origin", "HEAD:main"]);
    w.spawn_agent();
    wait_for("the first sync", &w, Duration::from_secs(30), || get(http, "/readyz").0 == 200);
    std::thread::sleep(Duration::from_millis(500));

    let key = b"it's a secret";
    let push = |branch: &str| format!("{{\"ref\":\"refs/heads/{branch}\",\"after\":\"0000\"}}").into_bytes();
    let github = |body: &[u8], signature: Option<String>| {
        let mut h = vec![("X-GitHub-Event", "push".to_owned()), ("Content-Type", "application/json".into())];
        if let Some(s) = signature {
            h.push(("X-Hub-Signature-256", s));
        }
        request(http, "POST", "/hooks/github", &h, body)
    };
    let sign = |body: &[u8]| format!("sha256={}", stele::http::hooks::sign(key, body));

    // Refused deliveries do no work.
    let before = polls(http);
    let main = push("main");
    assert_eq!(github(&main, None).0, 401, "missing signature");
    assert_eq!(github(&main, Some(sign(b"other body"))).0, 401, "signature of another body");
    assert_eq!(github(&main, Some(format!("sha256={}", stele::http::hooks::sign(b"wrong", &main)))).0, 401);
    let (code, body) = github(&push("feature"), Some(sign(&push("feature"))));
    assert_eq!(code, 200, "another branch is ignored: {body}");
    assert!(body.contains("not refs/heads/main"), "{body}");
    let big = vec![b' '; 2 * 1024 * 1024];
    assert_eq!(github(&big, Some(sign(&big))).0, 413, "over the body limit");
    let gitlab_bad = [("X-Gitlab-Event", "Push Hook".to_owned()), ("X-Gitlab-Token", "not it".into())];
    assert_eq!(request(http, "POST", "/hooks/gitlab", &gitlab_bad, &main).0, 401);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(polls(http), before, "no sync for refused or ignored deliveries");

    // A genuine push: the new commit is verified at once (the poll interval is 300 s).
    let v2 = w.image("2.0.0", false);
    w.release("2.0.0", &v2, &[]).expect(OK);
    let head = w.ledger.git(["rev-parse", "HEAD"]).trim().to_owned();
    w.ledger.git(["push", "-q", "origin", "HEAD:main"]);
    let sent = Instant::now();
    assert_eq!(github(&main, Some(sign(&main))).0, 202);
    wait_for("the pushed commit verified after the hook", &w, Duration::from_secs(10), || {
        get(http, "/api/status").1.contains(&head)
    });
    eprintln!("webhook → verified commit: {:?}", sent.elapsed());
    // The page's audit timeline is replayed from the agent's fetch cache of this served ledger.
    let (code, page) = get(http, "/");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("data-signer") && page.contains(&head[..12]), "the timeline reaches the new head:\n{page}");

    // GitLab's token and Gitea's signature are accepted too.
    let gitlab = [("X-Gitlab-Event", "Push Hook".to_owned()), ("X-Gitlab-Token", "it's a secret".into())];
    assert_eq!(request(http, "POST", "/hooks/gitlab", &gitlab, &main).0, 202);
    let gitea = [("X-Gitea-Event", "push".to_owned()), ("X-Gitea-Signature", stele::http::hooks::sign(key, &main))];
    assert_eq!(request(http, "POST", "/hooks/gitea", &gitea, &main).0, 202);

    // A burst of 20 genuine hooks: one sync for those that arrive while none runs, one more at most
    // for those that arrive during it.
    std::thread::sleep(Duration::from_secs(1));
    let before = polls(http);
    for _ in 0..20 {
        assert_eq!(github(&main, Some(sign(&main))).0, 202);
    }
    std::thread::sleep(Duration::from_secs(2));
    let syncs = polls(http) - before;
    assert!((1.0..=3.0).contains(&syncs), "20 hooks made {syncs} syncs");
    w.kill_agent();
}

/// Accepts POSTs on `listener` and keeps their bodies, each with its `X-Stele-Signature-256` header
/// checked against `secret`: a body whose signature is missing or wrong is kept as `{"bad": ...}`.
fn receiver(listener: TcpListener, got: Arc<Mutex<Vec<Value>>>, secret: &'static [u8]) {
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut data = Vec::new();
            let mut buf = [0u8; 4096];
            // Read the head, then Content-Length bytes of body.
            let (head_end, length) = loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break (None, 0);
                }
                data.extend_from_slice(&buf[..n]);
                if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&data[..i]).to_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                        .unwrap_or(0);
                    break (Some(i + 4), length);
                }
            };
            let Some(start) = head_end else { continue };
            while data.len() < start + length {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&data[..start]).to_lowercase();
            let signature =
                head.lines().find_map(|l| l.strip_prefix("x-stele-signature-256:").map(|v| v.trim().to_owned()));
            let expected = format!("sha256={}", stele::http::hooks::sign(secret, &data[start..]));
            if let Ok(v) = serde_json::from_slice::<Value>(&data[start..]) {
                let v =
                    if signature.as_deref() == Some(expected.as_str()) { v } else { serde_json::json!({ "bad": v }) };
                got.lock().expect("lock").push(v);
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
}

#[test]
fn notifications_reach_a_receiver_that_was_down_and_report_a_failed_gate() {
    let mut w = World::new();
    let port = free_port();
    let secret = w.sb.path("notify-secret");
    std::fs::write(&secret, "shared\n").expect("write the secret");
    configure(
        &w,
        &format!("\n[[notify]]\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret_file = \"{}\"\n", path_str(&secret)),
    );
    let v1 = w.image("1.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.spawn_agent();
    w.wait_status("Healthy at v1", |s| s["phase"] == "Healthy");
    // Nothing listened while the agent went Progressing → Healthy; the notification is retried.
    std::thread::sleep(Duration::from_secs(1));
    assert!(w.agent_log().contains("notification not delivered"), "{}", w.agent_log());
    let got = Arc::new(Mutex::new(Vec::new()));
    receiver(TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver"), got.clone(), b"shared");
    wait_for("the Healthy notification after the receiver came up", &w, Duration::from_secs(40), || {
        got.lock().unwrap().iter().any(|v| v["event"] == "phase_changed" && v["to"] == "Healthy")
    });
    let first = got.lock().unwrap()[0].clone();
    assert_eq!(first["type"], "stele.notification/v1", "{first:#}");
    assert_eq!(first["env"], "staging", "{first:#}");
    assert_eq!(first["from"], "Progressing", "{first:#}");

    let v2 = w.image("2.0.0", true);
    w.release("2.0.0", &v2, &[]).expect(OK);
    wait_for("gate_failed and Degraded notifications", &w, Duration::from_secs(90), || {
        let got = got.lock().unwrap();
        got.iter().any(|v| v["event"] == "gate_failed" && v["message"].as_str().unwrap_or("").contains("generation 2"))
            && got.iter().any(|v| v["event"] == "phase_changed" && v["to"] == "Degraded")
    });
    let bad: Vec<Value> = got.lock().unwrap().iter().filter(|v| !v["bad"].is_null()).cloned().collect();
    assert!(bad.is_empty(), "every notification carries a valid signature: {bad:?}");
    w.kill_agent();
}

#[test]
fn a_suspended_environment_is_observed_but_not_converged_until_resumed_and_the_page_shows_it() {
    let mut w = World::new();
    let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    configure(&w, &format!("\n[http]\nlisten = \"{http}\"\n"));
    let v1 = w.image("1.0.0", false);
    w.release("1.0.0", &v1, &[]).expect(OK);
    w.spawn_agent();
    w.wait_status("Healthy at v1", |s| s["phase"] == "Healthy");
    let config = path_str(&w.config);
    w.ledger.stele(["suspend", "--config", &config, "--env", "staging", "--reason", "incident 7"]).expect(OK);
    let v2 = w.image("2.0.0", false);
    w.release("2.0.0", &v2, &[]).expect(OK);
    let s = w.wait_status("the suspension in the status", |s| !s["suspended"].is_null() && s["target_generation"] == 2);
    assert_eq!(s["suspended"]["reason"], "incident 7", "{s:#}");
    assert!(s["message"].as_str().unwrap_or("").starts_with("SUSPENDED by "), "{s:#}");
    std::thread::sleep(Duration::from_secs(3));
    let live = w.live_instances();
    assert!(live.len() == 2 && live.iter().all(|(_, v)| v == "1.0.0"), "nothing changed while suspended: {live:?}");
    let (_, text) = get(http, "/metrics");
    assert_eq!(metric(&text, "stele_env_suspended{env=\"staging\"}"), Some(1.0), "{text}");

    // The page, in a real browser: the environment, its generations, the suspension, the signers.
    let dom = browser::dom(&format!("http://{http}/"));
    let doc = scraper::Html::parse_document(&dom);
    let card = scraper::Selector::parse("[data-env=\"staging\"]").expect("selector");
    let card = doc.select(&card).next().unwrap_or_else(|| panic!("an environment card for staging in\n{dom}"));
    assert_eq!(card.value().attr("data-target-generation"), Some("2"), "{dom}");
    assert_eq!(card.value().attr("data-observed-generation"), Some("1"), "{dom}");
    assert!(card.text().collect::<String>().contains("incident 7"), "{dom}");
    let signer = scraper::Selector::parse("[data-signer]").expect("selector");
    assert!(doc.select(&signer).next().is_some(), "the audit timeline names its signers: {dom}");
    let shot = browser::screenshot_dir().join("agent-page.png");
    browser::screenshot(&format!("http://{http}/"), &shot, 1280, 1400);
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000), "{}", shot.display());

    w.ledger.stele(["resume", "--config", &config, "--env", "staging"]).expect(OK);
    w.wait_status("Healthy at v2 after resume", |s| {
        s["phase"] == "Healthy" && s["observed_generation"] == 2 && s["suspended"].is_null()
    });
    w.kill_agent();
}
