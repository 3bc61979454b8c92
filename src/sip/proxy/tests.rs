//! `decide` over every rule of section 16.3-16.6 it applies: routing, loose routing, our
//! names, loop and spiral, Path and `ob`, rejections.

use super::*;
use crate::sip::addr::Listener;
use crate::sip::message::{Framing, Limits};

fn identity() -> LocalIdentity {
    LocalIdentity::new(
        "192.0.2.10",
        vec![
            Listener::new(Transport::Udp, "192.0.2.10:5060".parse().unwrap()),
            Listener::new(Transport::Tcp, "192.0.2.10:5060".parse().unwrap()),
        ],
    )
    .with_names(["pool.example.com"])
}

fn router() -> Router {
    Router {
        pairs: vec![Pair {
            name: "a".into(),
            domain: Some("site-a.example".into()),
            primary: "192.0.2.11:5060".parse().unwrap(),
            backup: "192.0.2.12:5060".parse().unwrap(),
            failback: false,
        }],
        routes: vec![StaticRoute {
            domain: "partner.example".into(),
            target: "198.51.100.1:5060;transport=tcp".parse().unwrap(),
        }],
        serving: 0,
    }
}

fn req(extra: &str, ruri: &str) -> Message {
    let s = format!(
        "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKabc;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c\r\n\
         CSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
    );
    Message::parse(Bytes::from(s), Framing::Datagram, &Limits::default()).unwrap()
}

fn decide_from(msg: &Message, src: &str, upstream: bool) -> Decision {
    decide(
        Received {
            msg,
            transport: Transport::Udp,
            source: src.parse().unwrap(),
            from_upstream: upstream,
            local: None,
            flow_token: None,
        },
        &identity(),
        &router(),
    )
}

fn code(d: &Decision) -> u16 {
    match d {
        Decision::Respond(r) => r.code,
        Decision::Drop(_) => 0,
        Decision::Forward(_) => 1,
        Decision::OptionsToUs { .. } => 200,
    }
}

#[test]
fn endpoint_request_goes_to_serving_pair_with_record_route_and_received() {
    let m = req("", "sip:bob@anything.example");
    let Decision::Forward(plan) = decide_from(&m, "10.9.9.9:40000", false) else {
        panic!()
    };
    assert_eq!(plan.destination, Destination::Pair(0));
    let out = plan.build(&m, &identity(), Transport::Tcp.into(), "z9hG4bKsptest");
    let text = std::str::from_utf8(&out).unwrap();
    assert!(text.contains("Via: SIP/2.0/TCP 192.0.2.10:5060;branch=z9hG4bKsptest\r\n"));
    // Double Record-Route: TCP side on top, UDP side below (RFC 5658).
    assert!(text.contains(
        "Record-Route: <sip:192.0.2.10:5060;transport=tcp;lr>\r\nRecord-Route: <sip:192.0.2.10:5060;lr>\r\n"
    ));
    assert!(text.contains("rport=40000;received=10.9.9.9"));
    assert!(text.contains("Max-Forwards: 69\r\n"));
}

#[test]
fn upstream_request_follows_request_uri_and_static_routes() {
    let m = req("", "sip:alice@203.0.113.5:5070;transport=tcp");
    let Decision::Forward(plan) = decide_from(&m, "192.0.2.11:5060", true) else {
        panic!()
    };
    assert_eq!(
        plan.destination,
        Destination::Host("203.0.113.5:5070;transport=tcp".parse().unwrap())
    );
    let m = req("", "sip:x@partner.example");
    let Decision::Forward(plan) = decide_from(&m, "10.9.9.9:5060", false) else {
        panic!()
    };
    assert_eq!(
        plan.destination,
        Destination::Host("198.51.100.1:5060;transport=tcp".parse().unwrap())
    );
}

/// A request from a phone with these Route header lines, as forwarded: where it goes, and
/// its text.
fn routed(routes: &str) -> (Destination, String) {
    let m = req(routes, "sip:bob@203.0.113.1");
    let Decision::Forward(plan) = decide_from(&m, "10.9.9.9:5060", false) else {
        panic!()
    };
    let out = plan.build(&m, &identity(), Transport::Udp.into(), "z9hG4bKspx");
    let text = std::str::from_utf8(&out).unwrap().to_string();
    (plan.destination, text)
}

#[test]
fn loose_routing_removes_our_route_entries() {
    let (to, text) = routed(
        "Route: <sip:192.0.2.10;lr>, <sip:192.0.2.10:5060;transport=tcp;lr>\r\nRoute: <sip:203.0.113.9;lr>\r\n",
    );
    assert_eq!(to, Destination::Host("203.0.113.9".parse().unwrap()));
    assert!(text.contains("\r\nRoute: <sip:203.0.113.9;lr>\r\n"));
    assert!(!text.contains("192.0.2.10;lr>,"));
}

#[test]
fn our_route_entry_leaves_the_rest_of_its_line() {
    let (_, text) =
        routed("Route: <sip:192.0.2.10;lr>, <sip:203.0.113.9;lr>,<sip:203.0.113.7;lr>\r\n");
    assert!(
        text.contains("\r\nRoute: <sip:203.0.113.9;lr>, <sip:203.0.113.7;lr>\r\n"),
        "{text}"
    );
    assert!(!text.contains("<sip:192.0.2.10;lr>"), "{text}");
}

#[test]
fn max_forwards_zero_and_bad() {
    let m = req("", "sip:b@y").clone();
    let zero = Message::parse(
        Bytes::from(
            String::from_utf8_lossy(m.bytes()).replace("Max-Forwards: 70", "Max-Forwards: 0"),
        ),
        Framing::Datagram,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(code(&decide_from(&zero, "10.0.0.1:5060", false)), 483);
    let big = Message::parse(
        Bytes::from(
            String::from_utf8_lossy(m.bytes()).replace("Max-Forwards: 70", "Max-Forwards: 300"),
        ),
        Framing::Datagram,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(code(&decide_from(&big, "10.0.0.1:5060", false)), 400);
}

/// `msg` as it comes back after passing this proxy once from `src`: our Via (with the
/// loop hash of the first pass) under the new top Via, and `routes` as its Route set.
fn back_again(first: &Message, src: &str, ruri: &str, routes: &str) -> Message {
    let hop = Hop {
        transport: Transport::Udp,
        source: src.parse::<SocketAddr>().unwrap().ip(),
    };
    let ours = format!(
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch={}\r\n{routes}",
        new_branch(loop_hash(first, hop))
    );
    req(&ours, ruri)
}

#[test]
fn an_identical_request_back_from_the_same_hop_is_a_loop() {
    let first = req("", "sip:bob@y");
    let looped = back_again(&first, "10.0.0.1:5060", "sip:bob@y", "");
    assert_eq!(code(&decide_from(&looped, "10.0.0.1:5060", false)), 482);
}

#[test]
fn a_changed_request_uri_is_a_spiral() {
    let first = req("", "sip:bob@y");
    let spiral = back_again(&first, "10.0.0.1:5060", "sip:bob@elsewhere", "");
    assert_eq!(code(&decide_from(&spiral, "10.0.0.1:5060", false)), 1);
}

#[test]
fn a_changed_route_set_is_a_spiral() {
    // Phone A -> proxy -> registrar -> proxy -> phone B: the in-dialog BYE keeps its
    // Request-URI; the registrar removed its own Route entry on the way.
    let routes = "Route: <sip:192.0.2.10;lr>, <sip:192.0.2.99;lr>, <sip:tok@192.0.2.10;lr>\r\n";
    let first = req(routes, "sip:bob@203.0.113.7");
    let second = back_again(
        &first,
        "10.0.0.1:5060",
        "sip:bob@203.0.113.7",
        "Route: <sip:tok@192.0.2.10;lr>\r\n",
    );
    assert_eq!(code(&decide_from(&second, "10.0.0.1:5060", false)), 1);
    // The same Route set back again is a loop.
    let looped = back_again(&first, "10.0.0.1:5060", "sip:bob@203.0.113.7", routes);
    assert_eq!(code(&decide_from(&looped, "10.0.0.1:5060", false)), 482);
}

#[test]
fn the_same_request_from_another_hop_is_a_spiral() {
    // Forwarded to the registrar by a phone's request, sent back by the registrar: the
    // proxy routes a request from upstream differently, so it is not a loop.
    let first = req("", "sip:bob@y");
    let from_registrar = back_again(&first, "10.0.0.1:5060", "sip:bob@y", "");
    assert_eq!(
        code(&decide_from(&from_registrar, "192.0.2.11:5060", true)),
        1
    );
}

#[test]
fn a_route_naming_the_pool_is_ours_and_removed() {
    let m = req(
        "Route: <sip:pool.example.com:5060;lr>\r\n",
        "sip:bob@anything.example",
    );
    let Decision::Forward(plan) = decide_from(&m, "10.9.9.9:40000", false) else {
        panic!()
    };
    assert_eq!(plan.destination, Destination::Pair(0));
    let out = plan.build(&m, &identity(), Transport::Udp.into(), "z9hG4bKsptest");
    assert!(!std::str::from_utf8(&out)
        .unwrap()
        .contains("Route: <sip:pool"));
    // Without a port (found by SRV) too; with a port we do not listen on, it is not us.
    let m = req(
        "Route: <sip:POOL.example.com;transport=tcp;lr>\r\n",
        "sip:b@x",
    );
    let Decision::Forward(plan) = decide_from(&m, "10.9.9.9:40000", false) else {
        panic!()
    };
    assert_eq!(plan.destination, Destination::Pair(0));
    let m = req("Route: <sip:pool.example.com:5999;lr>\r\n", "sip:b@x");
    let Decision::Forward(plan) = decide_from(&m, "10.9.9.9:40000", false) else {
        panic!()
    };
    assert!(matches!(plan.destination, Destination::Host(h) if h.port == 5999));
}

#[test]
fn path_carries_ob_only_for_an_outbound_registration() {
    let register = |contact: &str| {
        let s = format!(
            "REGISTER sip:site.example SIP/2.0\r\nVia: SIP/2.0/TLS 10.1.1.1:5061;branch=z9hG4bKr\r\n\
             Max-Forwards: 70\r\nFrom: <sip:a@site.example>;tag=1\r\nTo: <sip:a@site.example>\r\n\
             Call-ID: r\r\nCSeq: 1 REGISTER\r\nContact: {contact}\r\nContent-Length: 0\r\n\r\n"
        );
        let m = Message::parse(Bytes::from(s), Framing::Datagram, &Limits::default()).unwrap();
        let Decision::Forward(plan) = decide(
            Received {
                msg: &m,
                transport: Transport::Tls,
                source: "10.1.1.1:40000".parse().unwrap(),
                from_upstream: false,
                local: None,
                flow_token: Some("tok"),
            },
            &identity(),
            &router(),
        ) else {
            panic!()
        };
        let out = plan.build(&m, &identity(), Transport::Udp.into(), "z9hG4bKspx");
        let text = String::from_utf8(out.to_vec()).unwrap();
        let path = text
            .lines()
            .find(|l| l.starts_with("Path: "))
            .unwrap()
            .to_string();
        path
    };
    assert_eq!(
        register("<sip:a@10.1.1.1;transport=tls>;reg-id=1;+sip.instance=\"<urn:uuid:1>\""),
        "Path: <sip:tok@192.0.2.10:5060;lr;ob>"
    );
    assert_eq!(
        register("<sip:a@10.1.1.1;transport=tls>;expires=60"),
        "Path: <sip:tok@192.0.2.10:5060;lr>"
    );
}

#[test]
fn other_rejections() {
    assert_eq!(
        code(&decide_from(&req("", "soap.beep://x"), "10.0.0.1:1", false)),
        416
    );
    assert_eq!(
        code(&decide_from(
            &req("", "sip:a@b?Route=x"),
            "10.0.0.1:1",
            false
        )),
        400
    );
    assert_eq!(
        code(&decide_from(
            &req("Proxy-Require: foo\r\n", "sip:a@b"),
            "10.0.0.1:1",
            false
        )),
        420
    );
    assert_eq!(
        code(&decide_from(
            &req("To: <sip:c@d>\r\n", "sip:a@b"),
            "10.0.0.1:1",
            false
        )),
        400
    );
}

#[test]
fn options_to_us_is_answered() {
    let s = "OPTIONS sip:192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.11;branch=z9hG4bKo\r\nFrom: <sip:p@x>;tag=1\r\nTo: <sip:192.0.2.10>\r\nCall-ID: o\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let m = Message::parse(Bytes::from(s), Framing::Datagram, &Limits::default()).unwrap();
    assert_eq!(code(&decide_from(&m, "192.0.2.11:5060", true)), 200);
}

#[test]
fn transaction_keys() {
    let m = req("", "sip:b@y");
    assert_eq!(server_key(&m).unwrap(), "z9hG4bKabc|10.1.1.1:5060|INVITE");
}
