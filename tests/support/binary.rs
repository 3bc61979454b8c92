//! The `sippool` binary run as a process (`run --config FILE --log-format json`): its
//! config file, signals, and its log lines as they come.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{unique, Phone, WAIT};

/// A running sippool process; killed when dropped.
pub struct Running {
    pub child: Child,
    pub config: PathBuf,
    log: Arc<(Mutex<Vec<String>>, tokio::sync::Notify)>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

impl Running {
    /// Writes `toml` to a fresh file and starts `sippool run` on it, its stderr (JSON lines)
    /// collected.
    pub fn start(toml: &str) -> Running {
        let config = std::env::temp_dir().join(format!("sippool-bin-{}.toml", unique("c")));
        std::fs::File::create(&config)
            .and_then(|mut f| f.write_all(toml.as_bytes()))
            .expect("config file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sippool"))
            .args(["run", "--config"])
            .arg(&config)
            .args(["--log-format", "json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sippool starts");
        let log = Arc::new((Mutex::new(Vec::new()), tokio::sync::Notify::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.0.lock().expect("log").push(line);
                sink.1.notify_waiters();
            }
        });
        Running { child, config, log }
    }

    /// Replaces the config file's text.
    pub fn rewrite(&self, toml: &str) {
        std::fs::write(&self.config, toml).expect("config file");
    }

    /// Sends a signal (`-HUP`, `-TERM`).
    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
    }

    /// Every log line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.0.lock().expect("log").clone()
    }

    /// The first log line containing `needle`, waiting for it (at most [`WAIT`]).
    pub async fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let notified = self.log.1.notified();
            if let Some(l) = self.log_lines().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, notified).await.is_err() {
                panic!(
                    "no log line with {needle}:\n{}",
                    self.log_lines().join("\n")
                );
            }
        }
    }
}

/// A UDP port free on `ip` now (for a config file that must name its port).
pub fn free_udp_port(ip: IpAddr) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

/// Waits until the proxy answers OPTIONS addressed to it.
pub async fn wait_listening(phone: &mut Phone) {
    let start = Instant::now();
    loop {
        let req = phone.request(
            "OPTIONS",
            &format!("sip:{}", phone.proxy),
            &unique("up"),
            &unique("z9hG4bKu"),
            "",
            "",
        );
        phone.send(&req).await;
        if phone
            .recv_within(Duration::from_millis(100))
            .await
            .is_some()
        {
            return;
        }
        assert!(start.elapsed() < WAIT, "sippool did not start");
    }
}
