//! A dialog that outlives the instance that set it up, sans-IO: two instances of one pool
//! (A and B, one flow-token key) and the requests of a call as they would cross them.
//! Record-Route names the pool; a request toward a phone that lands on the instance which
//! does not hold its flow is relayed to the one that does, and is not taken for a loop.

use super::*;
use crate::sip::addr::{Listener, Target};
use crate::sip::flow::FlowKeys;
use crate::sip::message::{Framing, Limits};

const KEY: &[u8] = b"the pool's shared flow-token key";
const POOL: &str = "pool.example.com";
const SERVER: &str = "192.0.2.11:5060";
const PHONE: &str = "198.51.100.7:40000";

fn instance(ip: &str, epoch: u32, sides: PoolSides) -> LocalIdentity {
    let udp: std::net::SocketAddr = format!("{ip}:5060").parse().unwrap();
    LocalIdentity::new(
        ip,
        vec![
            Listener::new(Transport::Udp, udp),
            Listener::new(Transport::Tls, format!("{ip}:5061").parse().unwrap()),
        ],
    )
    .with_pool(POOL, sides)
    .with_flows(FlowKeys::new(KEY, epoch).with_instance(Some(Target {
        transport: Transport::Udp,
        addr: udp,
    })))
}

fn a() -> LocalIdentity {
    instance("10.0.0.5", 1, PoolSides::Both)
}

fn b() -> LocalIdentity {
    instance("10.0.0.6", 2, PoolSides::Both)
}

fn router() -> Router {
    Router {
        pairs: vec![Pair {
            name: "a".into(),
            domain: None,
            primary: SERVER.parse().unwrap(),
            backup: "192.0.2.12:5060".parse().unwrap(),
            failback: false,
        }],
        routes: Vec::new(),
        serving: 0,
    }
}

fn parse(s: String) -> Message {
    Message::parse(Bytes::from(s), Framing::Datagram, &Limits::default()).unwrap()
}

/// A request with these extra header lines; `via` its top Via's sent-by.
fn request(method: &str, ruri: &str, via: &str, extra: &str) -> Message {
    let tag = if method == "INVITE" && !extra.contains("to-tag") {
        ""
    } else {
        ";tag=callee"
    };
    parse(format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK{method}x;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:agent@site.example>;tag=caller\r\n\
         To: <sip:phone@site.example>{tag}\r\nCall-ID: pool-call\r\nCSeq: 2 {method}\r\n\
         {extra}Content-Length: 0\r\n\r\n"
    ))
}

fn decide_at(
    id: &LocalIdentity,
    msg: &Message,
    transport: Transport,
    source: &str,
    from_upstream: bool,
    flow_token: Option<&str>,
) -> Decision {
    decide(
        Received {
            msg,
            transport,
            source: source.parse().unwrap(),
            from_upstream,
            local: None,
            flow_token,
        },
        id,
        &router(),
    )
}

fn forward(d: Decision) -> Plan {
    match d {
        Decision::Forward(p) => p,
        other => panic!("not forwarded: {other:?}"),
    }
}

fn lines(bytes: &Bytes, name: &str) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| l.starts_with(name))
        .map(|l| l.trim_start_matches(name).to_string())
        .collect()
}

/// The phone's TLS flow at A, and the Record-Route A writes on the server's INVITE to it.
fn call_to_phone_through_a() -> (String, Vec<String>) {
    let a = a();
    let token = a.flows().token(Transport::Tls, 42, PHONE.parse().unwrap());
    let path = a.path(Transport::Udp.into(), &token, true);
    assert_eq!(
        path,
        format!("<sip:{token}@10.0.0.5:5060;lr;ob>"),
        "Path names A"
    );
    let invite = request(
        "INVITE",
        "sip:phone@198.51.100.7:40000;transport=tls",
        SERVER,
        &format!("Route: {path}\r\n"),
    );
    let plan = forward(decide_at(&a, &invite, Transport::Udp, SERVER, true, None));
    assert!(matches!(plan.destination, Destination::Flow { flow, .. } if flow.conn == 42));
    let out = plan.build(&invite, &a, Transport::Tls.into(), "z9hG4bKout");
    (token, lines(&out, "Record-Route: "))
}

#[test]
fn record_route_names_the_pool_with_the_phones_token_on_its_side() {
    let (token, rr) = call_to_phone_through_a();
    assert_eq!(
        rr,
        [
            format!("<sip:{token}@{POOL};transport=tls;lr>"),
            format!("<sip:{POOL};lr>"),
        ]
    );
    // A call from a phone: the same two entries, the other way round.
    let a = a();
    let mine = a.flows().token(Transport::Tls, 7, PHONE.parse().unwrap());
    let invite = request("INVITE", "sip:agent@site.example", PHONE, "");
    let plan = forward(decide_at(
        &a,
        &invite,
        Transport::Tls,
        PHONE,
        false,
        Some(&mine),
    ));
    let out = plan.build(&invite, &a, Transport::Udp.into(), "z9hG4bKout");
    assert_eq!(
        lines(&out, "Record-Route: "),
        [
            format!("<sip:{POOL};lr>"),
            format!("<sip:{mine}@{POOL};transport=tls;lr>"),
        ]
    );
}

#[test]
fn with_the_pool_facing_endpoints_only_servers_get_this_instance() {
    let a = instance("10.0.0.5", 1, PoolSides::Endpoints);
    let invite = request("INVITE", "sip:agent@site.example", PHONE, "");
    // Same transport, no flow: still one entry per side, as they name different hosts.
    let plan = forward(decide_at(&a, &invite, Transport::Udp, PHONE, false, None));
    let out = plan.build(&invite, &a, Transport::Udp.into(), "z9hG4bKout");
    assert_eq!(
        lines(&out, "Record-Route: "),
        [
            "<sip:10.0.0.5:5060;lr>".to_string(),
            format!("<sip:{POOL};lr>")
        ]
    );
}

#[test]
fn the_phones_own_request_goes_upstream_from_any_instance() {
    let (token, rr) = call_to_phone_through_a();
    // The phone (UAS) keeps the Record-Route order as its route set; A is gone and its
    // BYE lands on B over a new connection.
    let bye = request(
        "BYE",
        &format!("sip:agent@{SERVER}"),
        PHONE,
        &format!("Route: {}, {}\r\n", rr[0], rr[1]),
    );
    let b = b();
    let new_flow = b.flows().token(Transport::Tls, 9, PHONE.parse().unwrap());
    let plan = forward(decide_at(
        &b,
        &bye,
        Transport::Tls,
        PHONE,
        false,
        Some(&new_flow),
    ));
    assert!(
        matches!(&plan.destination, Destination::Host(hp) if hp.host == "192.0.2.11"),
        "to the server: {:?}",
        plan.destination
    );
    let out = plan.build(&bye, &b, Transport::Udp.into(), "z9hG4bKout");
    assert!(
        lines(&out, "Route: ").is_empty(),
        "both our entries consumed"
    );
    assert!(
        !String::from_utf8_lossy(&out).contains(&token),
        "the token is only needed to reach the phone"
    );
}

#[test]
fn a_request_toward_the_phone_is_relayed_to_the_instance_holding_its_flow() {
    let (token, rr) = call_to_phone_through_a();
    // The server (UAC) reverses the Record-Route; its BYE lands on B.
    let bye = request(
        "BYE",
        "sip:phone@198.51.100.7:40000;transport=tls",
        SERVER,
        &format!("Route: {}, {}\r\n", rr[1], rr[0]),
    );
    let b = b();
    let plan = forward(decide_at(&b, &bye, Transport::Udp, SERVER, true, None));
    let a_relay = Target {
        transport: Transport::Udp,
        addr: "10.0.0.5:5060".parse().unwrap(),
    };
    assert!(
        matches!(plan.destination, Destination::Relay { instance, flow } if instance == a_relay && flow.conn == 42)
    );
    assert_eq!(plan.record_route_count(&b, Transport::Udp.into()), 0);
    let relayed = plan.build(&bye, &b, Transport::Udp.into(), "z9hG4bKrelay");
    assert_eq!(
        lines(&relayed, "Route: "),
        ["<sip:10.0.0.5:5060;lr>".to_string(), rr[0].clone()],
        "A's address on top of the flow's entry; the pool entry before it consumed"
    );
    // At A, from B: over the phone's flow, and not a loop.
    let relayed = parse(String::from_utf8(relayed.to_vec()).unwrap());
    let plan = forward(decide_at(
        &a(),
        &relayed,
        Transport::Udp,
        "10.0.0.6:5060",
        false,
        None,
    ));
    match &plan.destination {
        Destination::Flow { token: t, flow } => {
            assert_eq!(*t, token);
            assert_eq!((flow.conn, flow.transport), (42, Transport::Tls));
        }
        other => panic!("not over the flow: {other:?}"),
    }
    let out = plan.build(&relayed, &a(), Transport::Tls.into(), "z9hG4bKlast");
    assert!(lines(&out, "Route: ").is_empty());
    assert_eq!(
        lines(&out, "Via: ").len(),
        3,
        "A's, B's and the server's Via"
    );
}

#[test]
fn a_path_sent_to_another_instance_is_relayed_the_same_way() {
    // A registrar using the pool as its outbound proxy sends the Path's request to B.
    let a = a();
    let token = a.flows().token(Transport::Tls, 42, PHONE.parse().unwrap());
    let invite = request(
        "INVITE",
        "sip:phone@198.51.100.7:40000;transport=tls",
        SERVER,
        &format!("Route: {}\r\n", a.path(Transport::Udp.into(), &token, true)),
    );
    let plan = forward(decide_at(&b(), &invite, Transport::Udp, SERVER, true, None));
    assert!(
        matches!(plan.destination, Destination::Relay { instance, .. } if instance.addr.to_string() == "10.0.0.5:5060")
    );
    assert!(
        !plan.record_route,
        "the relaying instance does not stay on the path"
    );
}

#[test]
fn a_flow_of_a_restarted_instance_is_430_and_a_forged_token_403() {
    let (token, rr) = call_to_phone_through_a();
    let bye = |entry: &str| {
        request(
            "BYE",
            "sip:phone@198.51.100.7:40000;transport=tls",
            SERVER,
            &format!("Route: {}, {entry}\r\n", rr[1]),
        )
    };
    let a_again = instance("10.0.0.5", 3, PoolSides::Both);
    let d = decide_at(&a_again, &bye(&rr[0]), Transport::Udp, SERVER, true, None);
    assert!(matches!(&d, Decision::Respond(r) if r.code == 430), "{d:?}");
    // A UDP peer is no connection: sent to from here, it may still answer.
    let udp = a().flows().token(Transport::Udp, 0, PHONE.parse().unwrap());
    let d = decide_at(
        &a_again,
        &bye(&rr[0].replace(&token, &udp)),
        Transport::Udp,
        SERVER,
        true,
        None,
    );
    assert!(
        matches!(&d, Decision::Forward(p) if matches!(p.destination, Destination::Flow { flow, .. } if flow.peer.to_string() == PHONE)),
        "{d:?}"
    );
    let other_pool = LocalIdentity::new("10.0.0.7", Vec::new())
        .with_pool(POOL, PoolSides::Both)
        .with_flows(FlowKeys::new(b"another pool's key", 1));
    let forged = rr[0].replace(
        &token,
        &other_pool
            .flows()
            .token(Transport::Tls, 42, PHONE.parse().unwrap()),
    );
    let d = decide_at(&b(), &bye(&forged), Transport::Udp, SERVER, true, None);
    assert!(matches!(&d, Decision::Respond(r) if r.code == 403), "{d:?}");
}
