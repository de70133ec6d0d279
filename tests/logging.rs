//! Logs carry colour only to a terminal, and never with `NO_COLOR` set: escape codes must not land in
//! files, pipes or the journal. Driven through the real binary (the local balancer, which logs at
//! `info` as it starts and stops), once with stderr in a file and twice on a real pseudo-terminal
//! made by `script` (util-linux).

mod common;

use common::{free_port, scrubbed, Sandbox, STELE};

const ESC: u8 = 0x1b;

/// Starts `stele lb` on an empty balancer config, waits until it listens, stops it with SIGTERM, and
/// returns everything written to the terminal (`on_terminal`) or to the stderr file.
fn balancer_logs(sb: &Sandbox, on_terminal: bool, no_color: Option<&str>) -> Vec<u8> {
    let port = free_port();
    let config = sb.path("lb.json");
    std::fs::write(&config, format!(r#"{{"listen": "127.0.0.1:{port}", "version": 1, "backends": []}}"#)).unwrap();
    let log = sb.path("stderr.log");
    let redirect = if on_terminal { String::new() } else { format!(" 2>'{}'", log.display()) };
    let script = format!(
        "'{STELE}' lb --config '{}'{redirect} & p=$!; \
         for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && break; sleep 0.05; done; \
         kill -TERM $p; wait $p",
        config.display()
    );
    let script_file = sb.path("run-lb.sh");
    std::fs::write(&script_file, script).unwrap();
    let mut cmd = if on_terminal {
        let mut cmd = scrubbed("script", sb.root(), sb.root());
        cmd.args(["-qec", &format!("bash '{}'", script_file.display()), "/dev/null"]);
        cmd
    } else {
        let mut cmd = scrubbed("bash", sb.root(), sb.root());
        cmd.arg(&script_file);
        cmd
    };
    if let Some(value) = no_color {
        cmd.env("NO_COLOR", value);
    }
    let out = cmd.output().expect("bash and script (util-linux) are needed for this test");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the balancer run failed ({}): {said}", out.status);
    let logs = if on_terminal { out.stdout } else { std::fs::read(&log).expect("stderr file written") };
    let text = String::from_utf8_lossy(&logs);
    assert!(text.contains("balancer started") && text.contains("shutting down"), "unexpected logs:\n{text}");
    logs
}

#[test]
fn logs_are_coloured_only_on_a_terminal_without_no_color() {
    let sb = Sandbox::new();
    let in_file = balancer_logs(&sb, false, None);
    assert!(!in_file.contains(&ESC), "escape codes in a log file:\n{}", String::from_utf8_lossy(&in_file));
    let on_terminal = balancer_logs(&sb, true, None);
    assert!(on_terminal.contains(&ESC), "no colour on a terminal:\n{}", String::from_utf8_lossy(&on_terminal));
    let no_color = balancer_logs(&sb, true, Some("1"));
    assert!(!no_color.contains(&ESC), "colour despite NO_COLOR=1:\n{}", String::from_utf8_lossy(&no_color));
}
