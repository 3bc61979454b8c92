//! `sippool demo` in-process: calls flow, the primary is killed and revived through the
//! control endpoint, the pair switches over and back, and no call fails.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sippool::demo::{Demo, DemoOptions};
use sippool::health::Member;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn post(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn demo_switches_over_and_back_without_a_failed_call() {
    let any = "127.0.0.1:0".parse().unwrap();
    let d = Demo::start(DemoOptions {
        http: any,
        control: any,
        rate: 20.0,
        hold: Duration::from_millis(500),
    })
    .await
    .unwrap();
    let completed = |d: &Demo| d.stats.completed.load(Ordering::Relaxed);
    let dash = d.dashboard().unwrap();
    assert_eq!(support::http_get(dash, "/").await.0, 200);
    assert_eq!(support::http_get(d.control, "/").await.0, 200);
    until("calls", Duration::from_secs(10), || completed(&d) >= 10).await;

    let r = post(d.control, "/primary/kill").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    until("switch to backup", Duration::from_secs(5), || {
        d.proxy.core().live().upstreams.states.active(0) == Some(Member::Backup)
    })
    .await;
    let at_switch = completed(&d);
    until("calls on the backup", Duration::from_secs(10), || {
        completed(&d) >= at_switch + 20
    })
    .await;
    assert!(d.backup.invites.load(Ordering::Relaxed) > 0);

    post(d.control, "/primary/revive").await;
    until("switch back", Duration::from_secs(5), || {
        d.proxy.core().live().upstreams.states.active(0) == Some(Member::Primary)
    })
    .await;
    let primary_before = d.primary.invites.load(Ordering::Relaxed);
    until(
        "calls on the primary again",
        Duration::from_secs(10),
        || d.primary.invites.load(Ordering::Relaxed) >= primary_before + 10,
    )
    .await;
    // Every call started before this point has ended, one way or the other (a lost one
    // is counted failed after its 40 s wait).
    let started = d.stats.started.load(Ordering::Relaxed);
    until(
        "the calls of the switchovers to end",
        Duration::from_secs(60),
        || completed(&d) + d.stats.failed.load(Ordering::Relaxed) >= started,
    )
    .await;
    assert_eq!(d.stats.failed.load(Ordering::Relaxed), 0, "{}", d.summary());
    d.stop().await;
}
