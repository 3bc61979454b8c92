//! Shared-nothing workers (`runtime.workers`, issue 18): several threads, each with its own
//! `SO_REUSEPORT` socket on the listener's address, carry calls together.

mod support;

use std::time::Duration;

use sippool::sip::transport::Transport;
use support::*;

/// The sockets bound to `addr` (IPv4 UDP), from /proc/net/udp.
fn udp_sockets_on(addr: std::net::SocketAddr) -> usize {
    let std::net::SocketAddr::V4(v4) = addr else {
        return 0;
    };
    let o = v4.ip().octets();
    let want = format!(
        "{:02X}{:02X}{:02X}{:02X}:{:04X}",
        o[3],
        o[2],
        o[1],
        o[0],
        v4.port()
    );
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
        .count()
}

/// Threads of this process named as sippool's workers.
fn worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim_end().starts_with("sippool-w"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn two_workers_share_the_listener_and_every_call_goes_through() {
    let up = Upstream::udp(Behaviour::Answer).await;
    let extra = format!(
        "{}[runtime]\nworkers = 2\n",
        pair(&up.uri(), "127.0.2.254:9")
    );
    let p = proxy(&["udp"], &extra).await;
    let addr = p.local_addr(Transport::Udp).expect("udp");
    assert_eq!(udp_sockets_on(addr), 2, "one socket per worker");
    // Phones on many source ports: the kernel spreads them over both sockets.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..40 {
        calls.spawn(async move {
            let mut phone = Phone::udp(addr).await;
            phone.call("sip:agent@site.example").await;
        });
    }
    while let Some(done) = calls.join_next().await {
        done.expect("every call completes");
    }
    // Both workers received some of them.
    let metrics = p.core().metrics.encode();
    for w in ["0", "1"] {
        let n = sample(
            &metrics,
            &format!("sippool_datagrams_received_total{{worker=\"{w}\"}}"),
        );
        assert!(n > 0.0, "worker {w} received nothing:\n{metrics}");
    }
    let m = p.core().metrics.transactions.get();
    assert!(m <= 2, "transactions left in flight: {m}");
    assert!(
        worker_threads() >= 1,
        "the worker runs on a thread of its own"
    );
    p.stop().await;
    // Stopped: the worker's thread has ended.
    let start = std::time::Instant::now();
    while worker_threads() > 0 {
        assert!(start.elapsed() < WAIT, "a worker outlived the proxy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn workers_and_a_work_stealing_runtime_do_not_go_together() {
    let text =
        "[instance]\nname = \"w\"\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\
                [[pair]]\nname = \"p\"\nprimary = \"127.0.0.2:5060\"\nbackup = \"127.0.0.3:5060\"\n\
                [runtime]\nworkers = 2\nworker_threads = 2\n";
    let e = sippool::config::Config::from_toml_str(text)
        .expect("parses")
        .validate()
        .expect_err("refused");
    assert_eq!(e.key, "runtime.workers");
    let text = text.replace("workers = 2\nworker_threads = 2", "workers = \"many\"");
    let e = sippool::config::Config::from_toml_str(&text)
        .expect("parses")
        .validate()
        .expect_err("refused");
    assert_eq!(e.key, "runtime.workers");
    let auto = text.replace("\"many\"", "\"auto\"");
    let s = sippool::config::Config::from_toml_str(&auto)
        .expect("parses")
        .validate()
        .expect("auto is valid");
    assert!(s.workers >= 1);
}
