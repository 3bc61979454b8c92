//! Live reload (issue 15): each kind of change reloaded into a running proxy with a call in
//! flight, which must finish on the configuration it started with while new requests take
//! the new one. Real sockets on loopback; the SIGHUP path of the binary is at the end.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use sippool::actors::{Proxy, Reload};
use sippool::config::Config;
use sippool::health::Member;
use sippool::sip::transport::Transport;
use support::binary::Running;
use support::*;

/// The config of the proxy under test: a UDP listener on `ip` (port 0, kept across reloads),
/// `instance` lines added to `[instance]`, then `rest`.
fn text(ip: IpAddr, instance: &str, rest: &str) -> String {
    format!(
        "[instance]\nname = \"reload\"\n{instance}[[listen]]\ntransport = \"udp\"\naddress = \"{ip}:0\"\n{rest}"
    )
}

/// A pair with probing left to `[health]`.
fn pair_of(name: &str, primary: &Upstream, backup: &Upstream) -> String {
    format!(
        "[[pair]]\nname = \"{name}\"\nprimary = \"{}\"\nbackup = \"{}\"\n",
        primary.uri(),
        backup.uri()
    )
}

const NO_PROBES: &str = "[health]\noos_check = 0\n";

async fn start(ip: IpAddr, instance: &str, rest: &str) -> Proxy {
    let settings = Config::from_toml_str(&text(ip, instance, rest))
        .expect("config")
        .validate()
        .expect("valid config");
    Proxy::start(settings).await.expect("proxy starts")
}

async fn reload(p: &Proxy, ip: IpAddr, instance: &str, rest: &str) -> Reload {
    let settings = Config::from_toml_str(&text(ip, instance, rest))
        .expect("config")
        .validate()
        .expect("valid config");
    p.reload(settings).await
}

fn changed(r: &Reload) -> Vec<String> {
    r.applied().map(|c| c.key.clone()).collect()
}

/// A call that has reached its server and rings there, answered after the reload.
struct InFlight {
    phone: Phone,
    call_id: String,
}

impl InFlight {
    /// Sends an INVITE and waits until `server` has it (its answer comes later).
    async fn start(proxy: SocketAddr, server: &mut Upstream) -> InFlight {
        let phone = Phone::udp(proxy).await;
        let call_id = unique("inflight");
        phone
            .send(&phone.request(
                "INVITE",
                "sip:agent@site.example",
                &call_id,
                &unique("z9hG4bKf"),
                "",
                "",
            ))
            .await;
        loop {
            let m = server.recv_method("INVITE").await;
            if m.header("call-id") == Some(call_id.as_str()) {
                break;
            }
        }
        InFlight { phone, call_id }
    }

    /// The call is answered through the proxy, and its ACK and BYE complete.
    async fn completes(mut self) {
        let (ok, _) = self.phone.recv_final().await;
        assert_eq!(ok.status(), Some(200), "{}", ok.text());
        assert_eq!(ok.header("call-id"), Some(self.call_id.as_str()));
        let p = &self.phone;
        p.send(&p.in_dialog("ACK", &ok, &self.call_id, 1, &unique("z9hG4bKa")))
            .await;
        p.send(&p.in_dialog("BYE", &ok, &self.call_id, 2, &unique("z9hG4bKb")))
            .await;
        let (bye, _) = self.phone.recv_final().await;
        assert_eq!(bye.status(), Some(200), "BYE: {}", bye.text());
    }
}

/// The INVITE a new call sends reaches `server`; the call is answered.
async fn new_call_reaches(proxy: SocketAddr, ruri: &str, server: &mut Upstream) -> SipMsg {
    let mut phone = Phone::udp(proxy).await;
    let call_id = unique("new");
    phone
        .send(&phone.request("INVITE", ruri, &call_id, &unique("z9hG4bKn"), "", ""))
        .await;
    let (ok, _) = phone.recv_final().await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text());
    loop {
        let m = server.recv_method("INVITE").await;
        if m.header("call-id") == Some(call_id.as_str()) {
            return m;
        }
    }
}

#[tokio::test]
async fn a_changed_pair_member_takes_new_calls_and_the_call_in_flight_ends_on_the_old_one() {
    let mut a = Upstream::udp(Behaviour::AnswerAfter(700)).await;
    let b = Upstream::udp(Behaviour::Answer).await;
    let mut c = Upstream::udp(Behaviour::Answer).await;
    let ip = loopback(PROXY);
    let p = start(ip, "", &format!("{}{NO_PROBES}", pair_of("p", &a, &b))).await;
    let addr = p.local_addr(Transport::Udp).expect("udp");
    let call = InFlight::start(addr, &mut a).await;
    let r = reload(&p, ip, "", &format!("{}{NO_PROBES}", pair_of("p", &c, &b))).await;
    assert_eq!(changed(&r), ["pair[0].primary"]);
    assert!(r.health_restarted);
    new_call_reaches(addr, "sip:agent@site.example", &mut c).await;
    call.completes().await;
    assert!(
        a.drain(Duration::from_millis(100))
            .await
            .iter()
            .all(|m| m.method() != Some("INVITE")),
        "no new call went to the old primary"
    );
    p.stop().await;
}

#[tokio::test]
async fn an_added_pair_made_serving_and_a_static_route_apply_at_once() {
    let mut a = Upstream::udp(Behaviour::AnswerAfter(700)).await;
    let b = Upstream::udp(Behaviour::Answer).await;
    let mut d = Upstream::udp(Behaviour::Answer).await;
    let e = Upstream::udp(Behaviour::Answer).await;
    let mut partner = Upstream::udp(Behaviour::Answer).await;
    let ip = loopback(PROXY);
    let p = start(ip, "", &format!("{}{NO_PROBES}", pair_of("p", &a, &b))).await;
    let addr = p.local_addr(Transport::Udp).expect("udp");
    let call = InFlight::start(addr, &mut a).await;
    let rest = format!(
        "{}{}[routing]\nserving_pair = \"q\"\n[[route]]\ndomain = \"partner.example\"\ntarget = \"{}\"\n{NO_PROBES}",
        pair_of("p", &a, &b),
        pair_of("q", &d, &e),
        partner.uri()
    );
    let r = reload(&p, ip, "", &rest).await;
    let keys = changed(&r);
    for k in ["pair[1].name", "routing.serving_pair", "route[0].domain"] {
        assert!(keys.iter().any(|c| c == k), "{k} not in {keys:?}");
    }
    new_call_reaches(addr, "sip:agent@site.example", &mut d).await;
    new_call_reaches(addr, "sip:someone@partner.example", &mut partner).await;
    call.completes().await;
    p.stop().await;
}

#[tokio::test]
async fn a_removed_pair_lets_its_call_in_flight_finish_and_leaves_no_series_behind() {
    let mut a = Upstream::udp(Behaviour::AnswerAfter(700)).await;
    let b = Upstream::udp(Behaviour::Answer).await;
    let mut d = Upstream::udp(Behaviour::Answer).await;
    let e = Upstream::udp(Behaviour::Answer).await;
    let ip = loopback(PROXY);
    let http = format!("[http]\naddress = \"{ip}:0\"\n");
    let p = start(
        ip,
        "",
        &format!(
            "{}{}{NO_PROBES}{http}",
            pair_of("p", &a, &b),
            pair_of("q", &d, &e)
        ),
    )
    .await;
    let addr = p.local_addr(Transport::Udp).expect("udp");
    let web = p.http_addr().expect("http");
    let call = InFlight::start(addr, &mut a).await;
    let (_, before) = http_get(web, "/metrics").await;
    assert!(before.contains("pair=\"p\""), "{before}");
    let r = reload(
        &p,
        ip,
        "",
        &format!("{}{NO_PROBES}{http}", pair_of("q", &d, &e)),
    )
    .await;
    assert!(r.health_restarted);
    // The remaining pair serves new calls; the call on the removed one ends normally.
    new_call_reaches(addr, "sip:agent@site.example", &mut d).await;
    call.completes().await;
    let (_, after) = http_get(web, "/metrics").await;
    assert!(!after.contains("pair=\"p\""), "{after}");
    assert!(after.contains("pair=\"q\""), "{after}");
    p.stop().await;
}

#[tokio::test]
async fn health_timings_change_live_and_health_survives_the_reload() {
    // Probing on, the primary silent: the pair runs on its backup.
    let a = Upstream::udp(Behaviour::Silent).await;
    let mut b = Upstream::udp(Behaviour::AnswerAfter(700)).await;
    let ip = loopback(PROXY);
    let health = |every: u32| {
        format!("[health]\noos_check = {every}\noos_force = 1\nprobe_timeout_ms = 200\n")
    };
    let p = start(ip, "", &format!("{}{}", pair_of("p", &a, &b), health(1))).await;
    let addr = p.local_addr(Transport::Udp).expect("udp");
    let started = Instant::now();
    while p.core().live().upstreams.states.active(0) != Some(Member::Backup) {
        assert!(
            started.elapsed() < WAIT,
            "the pair never moved to its backup"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let call = InFlight::start(addr, &mut b).await;
    b.drain(Duration::from_millis(50)).await;
    // Probing every 3 s instead of every second, and a pair added beside.
    let c = Upstream::udp(Behaviour::Answer).await;
    let rest = format!(
        "{}{}{}",
        pair_of("p", &a, &b),
        pair_of("q", &c, &c),
        health(3)
    );
    let r = reload(&p, ip, "", &rest).await;
    assert!(changed(&r).iter().any(|k| k == "health.oos_check"));
    let states = &p.core().live().upstreams.states;
    assert_eq!(
        states.active(0),
        Some(Member::Backup),
        "the pair stays on its backup"
    );
    assert!(!states.is_up(0, Member::Primary), "the primary stays down");
    call.completes().await;
    // The new interval: the backup, answering, is probed about every 3 s, not every 1 s.
    let options = b
        .drain(Duration::from_millis(3500))
        .await
        .into_iter()
        .filter(|m| m.method() == Some("OPTIONS"))
        .count();
    assert!((1..=2).contains(&options), "{options} probes in 3.5 s");
    assert_eq!(
        p.core().live().upstreams.states.active(0),
        Some(Member::Backup)
    );
    p.stop().await;
}

#[tokio::test]
async fn limits_and_the_invite_rate_change_live() {
    let mut a = Upstream::udp(Behaviour::AnswerAfter(700)).await;
    let b = Upstream::udp(Behaviour::Answer).await;
    let ip = loopback(PROXY);
    let p = start(ip, "", &format!("{}{NO_PROBES}", pair_of("p", &a, &b))).await;
    let addr = p.local_addr(Transport::Udp).expect("udp");
    let call = InFlight::start(addr, &mut a).await;
    // One transaction at most: the call in flight holds it.
    let rest = format!(
        "{}{NO_PROBES}[limits]\nmax_transactions = 1\n",
        pair_of("p", &a, &b)
    );
    let r = reload(&p, ip, "", &rest).await;
    assert_eq!(changed(&r), ["limits.max_transactions"]);
    assert!(!r.health_restarted, "limits leave health alone");
    let mut phone = Phone::udp(addr).await;
    let refused = phone.ask("OPTIONS", "sip:agent@site.example").await;
    assert_eq!(refused.status(), Some(503), "{}", refused.text());
    call.completes().await;
    // The INVITE rate: 1 per second, a burst meets 503.
    let rest = format!(
        "{}{NO_PROBES}[overload]\ninvite_rate = 1\n",
        pair_of("p", &a, &b)
    );
    reload(&p, ip, "", &rest).await;
    assert_eq!(p.core().admission.invite_rate(), 1);
    let mut codes = Vec::new();
    for _ in 0..3 {
        let call_id = unique("rate");
        phone
            .send(&phone.request(
                "INVITE",
                "sip:agent@site.example",
                &call_id,
                &unique("z9hG4bKr"),
                "",
                "",
            ))
            .await;
        codes.push(phone.recv_final().await.0.status());
    }
    assert!(codes.contains(&Some(503)), "{codes:?}");
    p.stop().await;
}

#[tokio::test]
async fn a_new_advertised_host_is_written_into_new_requests_only() {
    let mut a = Upstream::udp(Behaviour::AnswerAfter(700)).await;
    let b = Upstream::udp(Behaviour::Answer).await;
    let ip = loopback(PROXY);
    let rest = format!("{}{NO_PROBES}", pair_of("p", &a, &b));
    let p = start(ip, &format!("advertised_host = \"{ip}\"\n"), &rest).await;
    let addr = p.local_addr(Transport::Udp).expect("udp");
    let call = InFlight::start(addr, &mut a).await;
    let r = reload(
        &p,
        ip,
        "advertised_host = \"edge.example\"\nnames = [\"sip.example\"]\n",
        &rest,
    )
    .await;
    assert_eq!(changed(&r), ["instance.advertised_host", "instance.names"]);
    let invite = new_call_reaches(addr, "sip:agent@site.example", &mut a).await;
    let via = invite.header("via").unwrap_or_default().to_string();
    assert!(via.contains("edge.example"), "{via}");
    let rr = invite
        .header("record-route")
        .unwrap_or_default()
        .to_string();
    assert!(rr.contains("edge.example"), "{rr}");
    // The call set up before keeps the Record-Route it was given, and ends through it.
    call.completes().await;
    // A request to the new name is for this instance: answered here.
    let mut phone = Phone::udp(addr).await;
    let r = phone.ask("OPTIONS", "sip:sip.example").await;
    assert_eq!(r.status(), Some(200));
    assert!(a
        .drain(Duration::from_millis(100))
        .await
        .iter()
        .all(|m| m.method() != Some("OPTIONS")));
    p.stop().await;
}

#[tokio::test]
async fn what_needs_a_restart_is_named_and_keeps_its_running_value() {
    let mut a = Upstream::udp(Behaviour::AnswerAfter(500)).await;
    let b = Upstream::udp(Behaviour::Answer).await;
    let ip = loopback(PROXY);
    let rest = format!("{}{NO_PROBES}", pair_of("p", &a, &b));
    let p = start(ip, "", &rest).await;
    let addr = p.local_addr(Transport::Udp).expect("udp");
    let call = InFlight::start(addr, &mut a).await;
    let settings = Config::from_toml_str(&format!(
        "{}[[listen]]\ntransport = \"tcp\"\naddress = \"{ip}:0\"\n[runtime]\nworker_threads = 2\n",
        text(ip, "", &rest)
    ))
    .expect("config")
    .validate()
    .expect("valid");
    let r = p.reload(settings).await;
    let not_live: Vec<String> = r.not_live().map(|c| c.key.clone()).collect();
    assert_eq!(
        not_live,
        [
            "listen[1].address",
            "listen[1].proxy_protocol",
            "listen[1].transport",
            "runtime.worker_threads"
        ]
    );
    assert_eq!(r.applied().count(), 0);
    assert_eq!(p.core().live().settings.listeners.len(), 1);
    assert_eq!(p.local_addr(Transport::Tcp), None);
    call.completes().await;
    p.stop().await;
}

/// The binary: SIGHUP reloads the file, logs the change as a diff, applies the log level,
/// names what needs a restart, and a file that does not validate changes nothing.
#[tokio::test]
async fn sighup_logs_the_diff_applies_the_log_level_and_keeps_the_old_config_on_a_bad_file() {
    let mut a = Upstream::udp(Behaviour::Answer).await;
    let b = Upstream::udp(Behaviour::Answer).await;
    let ip = loopback(PROXY);
    let port = binary::free_udp_port(ip);
    let file = |level: &str, extra: &str| {
        format!(
            "[instance]\nname = \"hup\"\n[[listen]]\ntransport = \"udp\"\naddress = \"{ip}:{port}\"\n{}{NO_PROBES}[log]\nlevel = \"{level}\"\n{extra}",
            pair_of("p", &a, &b)
        )
    };
    let run = Running::start(&file("info", ""));
    let proxy = SocketAddr::new(ip, port);
    let mut phone = Phone::udp(proxy).await;
    binary::wait_listening(&mut phone).await;
    assert!(run
        .log_lines()
        .iter()
        .all(|l| !l.contains("log_filter_applied")));
    run.rewrite(&file(
        "debug",
        &format!("[[listen]]\ntransport = \"tcp\"\naddress = \"{ip}:{port}\"\n[limits]\nmax_transactions = 777\n"),
    ));
    run.signal("-HUP");
    let reloaded = run.wait_log("\"config_reloaded\"").await;
    assert!(
        reloaded.contains("\"keys\":\"limits.max_transactions, log.level\""),
        "{reloaded}"
    );
    let limit = run.wait_log("\"key\":\"limits.max_transactions\"").await;
    assert!(limit.contains("\"config_changed\""), "{limit}");
    assert!(
        limit.contains("\"from\":\"50000\",\"to\":\"777\""),
        "{limit}"
    );
    let not_live = run.wait_log("\"key\":\"listen[1].transport\"").await;
    assert!(not_live.contains("\"config_not_live\""), "{not_live}");
    // Written at debug level, after the new filter took effect.
    run.wait_log("\"log_filter_applied\"").await;
    let call = phone.ask("INVITE", "sip:agent@site.example").await;
    assert_eq!(call.status(), Some(200));
    a.recv_method("INVITE").await;
    // A file that does not validate: logged, and the running configuration stays.
    run.rewrite("[instance]\nname = \"hup\"\n[limits]\nmax_transactions = \"many\"\n");
    run.signal("-HUP");
    let error = run.wait_log("\"config_error\"").await;
    assert!(error.contains("max_transactions"), "{error}");
    let r = phone.ask("OPTIONS", &format!("sip:{proxy}")).await;
    assert_eq!(r.status(), Some(200));
    let call = phone.ask("INVITE", "sip:agent@site.example").await;
    assert_eq!(call.status(), Some(200), "calls still go through");
}
