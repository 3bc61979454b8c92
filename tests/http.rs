//! The HTTP endpoint: metrics that move by exactly the right amounts during a call, the
//! status document through a failover, and the health probes.

mod support;

use std::time::{Duration, Instant};

use sippool::health::Member;
use sippool::sip::transport::Transport;
use support::*;

fn http_extra(primary: &Upstream, backup: &Upstream, health: &str) -> String {
    format!(
        "[[pair]]\nname = \"site\"\nprimary = \"{}\"\nbackup = \"{}\"\n[health]\n{health}\n[http]\naddress = \"{}:0\"\n",
        primary.uri(),
        backup.uri(),
        loopback(PROXY)
    )
}

#[tokio::test]
async fn metrics_count_a_call_exactly() {
    let mut up = Upstream::udp(Behaviour::Answer).await;
    let backup = Upstream::udp(Behaviour::Answer).await;
    // 100 Trying at once (not only when the server takes 200 ms): one local 1xx, exactly.
    let extra = format!(
        "{}[timers]\ntrying_ms = 0\n",
        http_extra(&up, &backup, "oos_check = 0")
    );
    let p = proxy(&["udp"], &extra).await;
    let http = p.http_addr().unwrap();
    let (code, before) = http_get(http, "/metrics").await;
    assert_eq!(code, 200);
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    let call_id = unique("m");
    phone
        .send(&phone.request(
            "INVITE",
            "sip:bob@site.example",
            &call_id,
            &unique("z9hG4bKm"),
            "",
            "",
        ))
        .await;
    up.recv_method("INVITE").await;
    let (ok, _) = phone.recv_final().await;
    phone
        .send(&phone.in_dialog("ACK", &ok, &call_id, 1, &unique("z9hG4bKa")))
        .await;
    up.recv_method("ACK").await;
    phone
        .send(&phone.in_dialog("BYE", &ok, &call_id, 2, &unique("z9hG4bKb")))
        .await;
    up.recv_method("BYE").await;
    assert_eq!(phone.recv_final().await.0.status(), Some(200));
    let (_, after) = http_get(http, "/metrics").await;
    let delta = |s: &str| sample(&after, s) - sample(&before, s);
    assert_eq!(
        delta("sippool_requests_received_total{method=\"INVITE\"}"),
        1.0
    );
    assert_eq!(
        delta("sippool_requests_received_total{method=\"ACK\"}"),
        1.0
    );
    assert_eq!(
        delta("sippool_requests_received_total{method=\"BYE\"}"),
        1.0
    );
    assert_eq!(
        delta("sippool_responses_sent_total{class=\"1xx\",origin=\"local\"}"),
        1.0
    );
    assert_eq!(
        delta("sippool_responses_sent_total{class=\"1xx\",origin=\"relayed\"}"),
        1.0
    );
    assert_eq!(
        delta("sippool_responses_sent_total{class=\"2xx\",origin=\"relayed\"}"),
        2.0
    );
    assert_eq!(
        delta("sippool_message_latency_seconds_count"),
        5.0,
        "INVITE, 180, 200, BYE, 200"
    );
    let active_primary = after
        .lines()
        .find(|l| l.starts_with("sippool_upstream_active{pair=\"site\",member=\"primary\""))
        .unwrap();
    assert!(active_primary.ends_with(" 1"), "{active_primary}");
    assert!(after.contains("sippool_build_info{version="), "{after}");
    assert!(after.contains("# TYPE sippool_requests_received_total counter"));
    // The process's memory, next to the transaction and connection counts.
    let rss = sample(&after, "sippool_resident_memory_bytes");
    assert!(rss > f64::from(1 << 20), "{rss}");
    p.stop().await;
}

#[tokio::test]
async fn status_follows_a_failover() {
    let primary = Upstream::udp(Behaviour::Answer).await;
    let backup = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(
        &["udp"],
        &http_extra(
            &primary,
            &backup,
            "oos_check = 1\noos_force = 1\nprobe_timeout_ms = 300",
        ),
    )
    .await;
    let http = p.http_addr().unwrap();
    let (code, body) = http_get(http, "/status").await;
    assert_eq!(code, 200);
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["pairs"][0]["active"], "primary");
    let rss = st["memory"]["resident_bytes"].as_u64().unwrap();
    assert!(rss > 1 << 20, "{rss}");
    assert!(st["max_transactions"].as_u64().unwrap() > 0);
    primary.set(Behaviour::Silent);
    let start = Instant::now();
    while p.core().live().upstreams.states.active(0) != Some(Member::Backup) {
        assert!(start.elapsed() < Duration::from_secs(4));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, body) = http_get(http, "/status").await;
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pair = &st["pairs"][0];
    assert_eq!(pair["active"], "backup");
    assert_eq!(pair["state"], "in_service");
    assert_eq!(pair["members"][0]["state"], "down");
    assert_eq!(pair["members"][1]["active"], true);
    assert!(pair["members"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("no answer"));
    assert_eq!(pair["last_switch"]["from"], "primary");
    assert_eq!(pair["last_switch"]["to"], "backup");
    assert!(pair["members"][1]["last_rtt_ms"].as_f64().is_some());
    let (_, metrics) = http_get(http, "/metrics").await;
    assert!(metrics.contains("sippool_upstream_up{pair=\"site\",member=\"primary\""));
    assert!(
        metrics.contains("sippool_pair_switches_total 1"),
        "{metrics}"
    );
    p.stop().await;
}

#[tokio::test]
async fn healthz_and_readyz() {
    let primary = Upstream::udp(Behaviour::Answer).await;
    let backup = Upstream::udp(Behaviour::Answer).await;
    let p = proxy(&["udp"], &http_extra(&primary, &backup, "oos_check = 0")).await;
    let http = p.http_addr().unwrap();
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    assert_eq!(http_get(http, "/readyz").await.0, 200);
    let (code, page) = http_get(http, "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("<title>sippool</title>"));
    p.core().admission.start_drain();
    assert_eq!(http_get(http, "/readyz").await.0, 503);
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    p.stop().await;
}

#[tokio::test]
async fn manual_switchover_needs_the_token_and_switches_there_and_back() {
    let primary = Upstream::udp(Behaviour::Answer).await;
    let backup = Upstream::udp(Behaviour::Answer).await;
    let token = "0123456789abcdef-switch";
    let extra = format!(
        "{}[http]\naddress = \"{}:0\"\nadmin_token = \"{token}\"\n",
        pair(&primary.uri(), &backup.uri()),
        loopback(PROXY)
    );
    let p = proxy(&["udp"], &extra).await;
    let http = p.http_addr().unwrap();
    let path = "/pairs/p/switch";
    let active = || p.core().live().upstreams.states.active(0);
    assert_eq!(http_post(http, path, None, "").await.0, 401);
    assert_eq!(
        http_post(http, path, Some("0123456789abcdef-wrong"), "")
            .await
            .0,
        401
    );
    assert_eq!(
        active(),
        Some(Member::Primary),
        "refused requests change nothing"
    );
    let (code, body) = http_post(http, path, Some(token), r#"{"why":"maintenance"}"#).await;
    assert_eq!((code, body.trim()), (200, "p: backup is active now"));
    assert_eq!(active(), Some(Member::Backup));
    let (_, status) = http_get(http, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let why = status["pairs"][0]["last_switch"]["why"].as_str().unwrap();
    assert!(why.starts_with("manual: maintenance (by 127."), "{why}");
    // And back, naming the member; an unknown pair or member is refused.
    let (code, _) = http_post(http, path, Some(token), r#"{"to":"primary"}"#).await;
    assert_eq!(code, 200);
    assert_eq!(active(), Some(Member::Primary));
    assert_eq!(
        http_post(http, "/pairs/nope/switch", Some(token), "")
            .await
            .0,
        404
    );
    assert_eq!(
        http_post(http, path, Some(token), r#"{"to":"third"}"#)
            .await
            .0,
        400
    );
    p.stop().await;
}

#[tokio::test]
async fn switchover_is_off_without_a_token() {
    let up = Upstream::udp(Behaviour::Answer).await;
    let extra = format!(
        "{}[http]\naddress = \"{}:0\"\n",
        pair(&up.uri(), "127.0.2.254:9"),
        loopback(PROXY)
    );
    let p = proxy(&["udp"], &extra).await;
    let (code, _) = http_post(
        p.http_addr().unwrap(),
        "/pairs/p/switch",
        Some("anything-at-all-16"),
        "",
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(
        p.core().live().upstreams.states.active(0),
        Some(Member::Primary)
    );
    p.stop().await;
}

#[tokio::test]
async fn history_carries_rates_round_trips_and_a_manual_switch() {
    let primary = Upstream::udp(Behaviour::Answer).await;
    let backup = Upstream::udp(Behaviour::Answer).await;
    let token = "0123456789abcdef-history";
    let extra = format!(
        "{}admin_token = \"{token}\"\n",
        http_extra(&primary, &backup, "oos_check = 1\noos_force = 1")
    );
    let p = proxy(&["udp"], &extra).await;
    let http = p.http_addr().unwrap();
    let get = || async {
        let (code, body) = http_get(http, "/status/history").await;
        assert_eq!(code, 200);
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let h = get().await;
    assert_eq!(h["period_s"], 5.0);
    assert_eq!(h["window_s"], 900.0);
    assert_eq!(h["switches"], serde_json::json!([]));
    assert_eq!(
        h["t"],
        serde_json::json!([]),
        "no sample before the first period"
    );

    // Three calls, then one 503 (draining), then a manual switch.
    let mut phone = Phone::udp(p.local_addr(Transport::Udp).unwrap()).await;
    for _ in 0..3 {
        phone.call("sip:bob@site.example").await;
    }
    p.core().admission.start_drain();
    assert_eq!(
        phone.ask("OPTIONS", "sip:bob@site.example").await.status(),
        Some(503)
    );
    let (code, _) = http_post(
        http,
        "/pairs/site/switch",
        Some(token),
        r#"{"why":"drill"}"#,
    )
    .await;
    assert_eq!(code, 200);

    // The switch is there at once, not only after the next sample.
    let h = get().await;
    let switches = h["switches"].as_array().unwrap();
    assert_eq!(switches.len(), 1, "{h}");
    let sw = &switches[0];
    assert_eq!(
        (&sw["pair"], &sw["from"], &sw["to"]),
        (&"site".into(), &"primary".into(), &"backup".into())
    );
    assert!(
        sw["why"].as_str().unwrap().starts_with("manual: drill"),
        "{sw}"
    );
    let at = sw["at"].as_f64().unwrap();
    assert!((h["now"].as_f64().unwrap() - at).abs() < 5.0, "{sw}");

    // Samples come every period from the start: wait for one taken after the switch, then
    // the calls and the 503 are in the window.
    let start = Instant::now();
    let h = loop {
        let h = get().await;
        let last = h["t"].as_array().unwrap().last().and_then(|v| v.as_f64());
        if last.is_some_and(|t| t >= at) {
            break h;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "no sample: {h}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let column = |name: &str| -> Vec<f64> {
        h[name]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let t = column("t");
    let calls = column("calls_per_s");
    let rejected = column("rejected_503_per_s");
    assert_eq!((calls.len(), rejected.len()), (t.len(), t.len()));
    // Rates over periods of 5 s (and a few ms): 3 INVITEs and one 503 in all.
    let total = |rates: &[f64]| (rates.iter().sum::<f64>() * 5.0).round();
    assert_eq!(total(&calls), 3.0, "{h}");
    assert_eq!(total(&rejected), 1.0, "{h}");
    let servers = h["servers"].as_array().unwrap();
    let members: Vec<(&str, &str)> = servers
        .iter()
        .map(|s| (s["member"].as_str().unwrap(), s["server"].as_str().unwrap()))
        .collect();
    assert_eq!(
        members,
        [
            ("primary", primary.uri().as_str()),
            ("backup", backup.uri().as_str())
        ]
    );
    for s in servers {
        let rtt = s["rtt_ms"]
            .as_array()
            .unwrap()
            .last()
            .and_then(|v| v.as_f64());
        assert!(
            rtt.is_some_and(|ms| (0.0..1000.0).contains(&ms)),
            "probed: {s}"
        );
    }
    p.stop().await;
}
