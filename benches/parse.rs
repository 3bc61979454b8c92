//! The parse layer on the messages of one benchmark call (INVITE, 100, 180, 200, ACK, BYE,
//! 200 as a proxy receives them), read the way the proxy reads them: index, top Via several
//! times, tags, CSeq, every Via, the Request-URI and the route set.
//!
//! Meant to be counted, not timed: `valgrind --tool=callgrind target/release/deps/parse-*`
//! gives the user-space instructions of `ITER` calls (default 1000), deterministic, in
//! seconds (the whole proxy under `bench/callgrind.sh` takes minutes). `cargo bench --bench
//! parse` just runs it.

use std::hint::black_box;
use std::net::SocketAddr;

use bytes::Bytes;
use sippool::sip::message::{header_param, name_addr_uri, Framing, HeaderName, Limits, Message};
use sippool::sip::uri::{scheme_of, SipUri};
use sippool::sip::Via;

const SDP: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.7.1\r\ns=-\r\nc=IN IP4 127.0.7.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

fn messages() -> Vec<String> {
    let uac_via = "Via: SIP/2.0/UDP 127.0.7.1:5061;branch=z9hG4bK-31243-1-0\r\n";
    let our_via = "Via: SIP/2.0/UDP 127.0.7.10:5060;branch=z9hG4bK-sp-4a1b2c3d-e5f60718-0\r\n";
    let from = "From: sipp <sip:sipp@127.0.7.1:5061>;tag=31243SIPpTag001\r\n";
    let to = "To: <sip:service@127.0.7.10:5060>";
    let call = "Call-ID: 1-31243@127.0.7.1\r\n";
    let rr = "Record-Route: <sip:127.0.7.10:5060;transport=udp;lr>\r\n";
    let invite = format!(
        "INVITE sip:service@127.0.7.10:5060 SIP/2.0\r\n{uac_via}{from}{to}\r\n{call}CSeq: 1 INVITE\r\nContact: <sip:sipp@127.0.7.1:5061;transport=UDP>\r\nMax-Forwards: 70\r\nSubject: Performance Test\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    );
    let response = |code: &str, cseq: &str, body: &str| {
        format!(
            "SIP/2.0 {code}\r\n{our_via}{uac_via}{rr}{from}{to};tag=31244SIPpTag011\r\n{call}CSeq: {cseq}\r\nContact: <sip:127.0.7.11:5060;transport=UDP>\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let in_dialog = |method: &str| {
        format!(
            "{method} sip:127.0.7.11:5060;transport=UDP SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.7.1:5061;branch=z9hG4bK-31243-1-5\r\n{from}{to};tag=31244SIPpTag011\r\n{call}CSeq: {} {method}\r\nContact: <sip:sipp@127.0.7.1:5061;transport=UDP>\r\nMax-Forwards: 70\r\nRoute: <sip:127.0.7.10:5060;transport=udp;lr>\r\nSubject: Performance Test\r\nContent-Length: 0\r\n\r\n",
            if method == "ACK" { 1 } else { 2 }
        )
    };
    vec![
        invite,
        response("100 Trying", "1 INVITE", ""),
        response("180 Ringing", "1 INVITE", ""),
        response("200 OK", "1 INVITE", SDP),
        in_dialog("ACK"),
        in_dialog("BYE"),
        response("200 OK", "2 BYE", ""),
    ]
}

fn read_like_the_proxy(m: &Message, source: SocketAddr) -> usize {
    let mut n = 0;
    for _ in 0..3 {
        if let Some(Ok(v)) = m.top_via() {
            n += v.branch().map_or(0, str::len) + v.host.len();
        }
    }
    n += m.from_tag().map_or(0, <[u8]>::len) + m.to_tag().map_or(0, <[u8]>::len);
    n += m.call_id().map_or(0, <[u8]>::len);
    n += m.cseq().map_or(0, |(c, _)| c as usize);
    n += m.max_forwards().map_or(0, |r| r.map_or(0, usize::from));
    if m.is_response() {
        return n;
    }
    if let Some(Ok(v)) = m.top_via() {
        n += v.with_received(source).map_or(0, |s| s.len());
    }
    for _ in 0..2 {
        for r in m.list_values(HeaderName::Via) {
            n += Via::parse(m.slice(r)).map_or(0, |v| v.host.len());
        }
    }
    for name in [HeaderName::From, HeaderName::To] {
        if let Some(h) = m.first(name) {
            n += name_addr_uri(m.value(h)).map_or(0, <[u8]>::len);
        }
    }
    for h in m.all(HeaderName::Contact) {
        n += header_param(m.value(h), b"reg-id").map_or(0, <[u8]>::len);
    }
    if let Some(ruri) = m.request_uri() {
        if scheme_of(ruri).is_ok() {
            if let Ok(u) = SipUri::parse(ruri) {
                n += u.host.len() + usize::from(u.lr()) + u.transport().map_or(0, |_| 1);
            }
        }
    }
    for r in m.list_values(HeaderName::Route) {
        if let Some(u) = name_addr_uri(m.slice(r)).and_then(|u| SipUri::parse(u).ok()) {
            n += u.host.len() + usize::from(u.lr()) + u.transport().map_or(0, |_| 1);
        }
    }
    n
}

fn main() {
    let iter: usize = std::env::var("ITER")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let msgs: Vec<Bytes> = messages().into_iter().map(Bytes::from).collect();
    let limits = Limits::default();
    let source: SocketAddr = "127.0.7.1:5061"
        .parse()
        .unwrap_or(SocketAddr::from(([0; 4], 0)));
    let mut total = 0usize;
    for _ in 0..iter {
        for b in &msgs {
            match Message::parse(black_box(b.clone()), Framing::Datagram, &limits) {
                Ok(m) => total += read_like_the_proxy(&m, source),
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    println!("{total}");
}
