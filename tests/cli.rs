//! The `sippool` command line: help, version and usage errors; check-config on good and bad
//! files, and a bad key named; run failures; the demo.

use std::process::Command;

fn sippool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sippool"))
}

fn root(p: &str) -> String {
    format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn shipped_configs_validate() {
    for f in ["examples/sippool.toml", "bench/bench.toml"] {
        let out = sippool().args(["check-config", &root(f)]).output().unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn environment_override_with_a_bad_value_names_the_key() {
    let out = sippool()
        .args(["check-config", &root("bench/bench.toml")])
        .env("SIPPOOL__OVERLOAD__INVITE_RATE", "fast")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("overload.invite_rate"), "{err}");
}

#[test]
fn unknown_key_is_an_error() {
    let dir = std::env::temp_dir().join(format!("sippool-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("typo.toml");
    let text = std::fs::read_to_string(root("bench/bench.toml"))
        .unwrap()
        .replace("invite_rate = 0", "invite_rat = 0");
    std::fs::write(&f, text).unwrap();
    let out = sippool()
        .args(["check-config", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invite_rat"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs sippool on `config` and expects it to exit non-zero logging `event`.
fn expect_run_failure(name: &str, config: &str, event: &str) {
    let dir = std::env::temp_dir().join(format!("sippool-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("c.toml");
    std::fs::write(&f, config).unwrap();
    let out = sippool()
        .args([
            "run",
            "--config",
            f.to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("\"event\":\"{event}\"")), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn run_fails_when_the_listener_cannot_bind() {
    // Take a TCP port, then ask sippool to listen on it.
    let held = std::net::TcpListener::bind("127.0.9.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    expect_run_failure(
        "bind",
        &format!(
            "[instance]\nname = \"x\"\n[[listen]]\ntransport = \"tcp\"\naddress = \"{addr}\"\n\
             [[pair]]\nname = \"p\"\nprimary = \"127.0.9.2\"\nbackup = \"127.0.9.3\"\n"
        ),
        "sip_listener_cannot_start",
    );
}

#[test]
fn run_fails_when_the_http_listener_cannot_bind() {
    let held = std::net::TcpListener::bind("127.0.9.5:0").unwrap();
    let addr = held.local_addr().unwrap();
    expect_run_failure(
        "http",
        &format!(
            "[instance]\nname = \"x\"\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.9.5:0\"\n\
             [[pair]]\nname = \"p\"\nprimary = \"127.0.9.6\"\nbackup = \"127.0.9.7\"\n[http]\naddress = \"{addr}\"\n"
        ),
        "http_listener_cannot_start",
    );
}

#[test]
fn demo_starts_prints_its_addresses_and_obeys_keys() {
    use std::io::{BufRead, BufReader, Write};
    let mut child = sippool()
        .args(["demo", "--http", "127.0.0.1:0", "--control", "127.0.0.1:0"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // A watchdog: a demo that hangs is killed, and the reads below fail.
    let pid = child.id().to_string();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let finished = done.clone();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(30));
        if !finished.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut next_line = |seen: &mut Vec<String>| {
        let l = lines.next().expect("demo output").unwrap();
        seen.push(l.clone());
        l
    };
    while !next_line(&mut seen).contains("controls:") {}
    assert!(
        seen.iter()
            .any(|l| l.contains("dashboard:  http://127.0.0.1:")),
        "{seen:?}"
    );
    writeln!(stdin, "k").unwrap();
    while !next_line(&mut seen).starts_with("primary killed") {}
    writeln!(stdin, "q").unwrap();
    let status = child.wait().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(status.success(), "{seen:?}");
}

#[test]
fn help_lists_the_subcommands_on_stdout() {
    for args in [&["--help"][..], &["help"], &["-h"]] {
        let out = sippool().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for sub in ["run", "check-config", "demo"] {
            assert!(text.contains(sub), "{args:?}: {sub} missing from {text}");
        }
        assert!(text.contains("SIPPOOL__"), "{args:?}: {text}");
    }
}

#[test]
fn subcommand_help_names_its_flags() {
    let out = sippool().args(["run", "--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--config <FILE>"), "{text}");
    assert!(text.contains("--log-format"), "{text}");
    let out = sippool().args(["help", "demo"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--http", "--control", "--rate"] {
        assert!(text.contains(flag), "{flag} missing from {text}");
    }
}

#[test]
fn version_is_printed() {
    let out = sippool().arg("--version").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sippool {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Runs sippool with `args` and expects exit code 2 with `needle` on stderr.
fn expect_usage_error(args: &[&str], needle: &str) {
    let out = sippool().args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    assert!(out.stdout.is_empty(), "{args:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{args:?}: {err}");
}

#[test]
fn usage_errors_exit_2_with_a_message_on_stderr() {
    expect_usage_error(&["frobnicate"], "frobnicate");
    expect_usage_error(&[], "Usage:");
    expect_usage_error(&["run"], "--config <FILE>");
    expect_usage_error(&["check-config"], "<FILE>");
    expect_usage_error(&["check-config", "a.toml", "b.toml"], "b.toml");
    expect_usage_error(&["run", "--config", "x.toml", "--log-format", "xml"], "xml");
    expect_usage_error(&["demo", "--rate", "0"], "--rate");
    expect_usage_error(&["demo", "--rate", "fast"], "--rate");
    expect_usage_error(&["demo", "--http", "nowhere"], "--http");
}
