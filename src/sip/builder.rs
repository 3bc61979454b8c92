//! Writing messages: forwarded requests and responses, locally generated responses, and the
//! CANCEL and hop-by-hop ACK a client transaction needs (RFC 3261 sections 8.2.6, 9.1,
//! 16.6, 16.7, 17.1.1.3).
//!
//! Every header the proxy does not edit is copied as its original bytes; edits are described
//! by a [`RequestEdits`] plan made by `sip::proxy`.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

use crate::sip::message::{HeaderName, Message};
use crate::sip::syntax::list;

/// How a forwarded request differs from the received one.
#[derive(Debug, Clone, Default)]
pub struct RequestEdits {
    /// A replacement Request-URI (strict-router compatibility, RFC 3261 section 16.4).
    pub request_uri: Option<String>,
    /// The received top via-parm rewritten with `received`/`rport`.
    pub top_via: Option<String>,
    /// The Max-Forwards value to write (decremented, or 70 when absent).
    pub max_forwards: u8,
    /// A Route value to insert above the ones kept: the next hop's, when the request is
    /// relayed to the instance of the pool that holds a flow.
    pub route: Option<String>,
    /// Route values to drop from the top (ours).
    pub drop_top_routes: usize,
    /// Route value to drop from the bottom (strict-router compatibility).
    pub drop_last_route: bool,
    /// Extra header lines (`Name: value`) to add.
    pub extra: Vec<String>,
}

/// What this hop adds on top of a forwarded request, which differs per branch: our Via,
/// our Record-Route entries and our Path.
#[derive(Debug, Clone, Copy, Default)]
pub struct Added<'a> {
    /// Our Via value, inserted on top.
    pub via: &'a str,
    /// Record-Route values to insert on top, in order (the first ends up topmost).
    pub record_route: &'a [String],
    /// A Path value (RFC 3327) to insert above any Path already there.
    pub path: Option<&'a str>,
}

/// Writes the forwarded request: the received one with `edits` applied and what this hop
/// adds on top.
pub fn forward_request(msg: &Message, edits: &RequestEdits, added: Added<'_>) -> Bytes {
    // Room for all it adds (each header with its name, ": " and CRLF): the buffer is kept
    // for retransmissions, and one that overflows doubles.
    let room = |v: &str| v.len() + 32;
    let capacity = msg.bytes().len()
        + edits.request_uri.as_deref().map_or(0, str::len)
        + room(added.via)
        + edits.top_via.as_deref().map_or(0, room)
        + added.record_route.iter().map(|r| room(r)).sum::<usize>()
        + added.path.map_or(0, room)
        + edits.extra.iter().map(|e| room(e)).sum::<usize>()
        + 32;
    let mut out = BytesMut::with_capacity(capacity);
    let method = msg.method().map(|m| m.as_str()).unwrap_or_default();
    let uri = match &edits.request_uri {
        Some(u) => u.as_bytes(),
        None => msg.request_uri().unwrap_or_default(),
    };
    out.put_slice(method.as_bytes());
    out.put_u8(b' ');
    out.put_slice(uri);
    out.put_slice(b" SIP/2.0\r\n");
    put_header(&mut out, "Via", added.via);
    for rr in added.record_route {
        put_header(&mut out, "Record-Route", rr);
    }
    if let Some(p) = added.path {
        put_header(&mut out, "Path", p);
    }
    if let Some(r) = &edits.route {
        put_header(&mut out, "Route", r);
    }
    let mut via_done = false;
    let mut routes_seen = 0usize;
    let total_routes = match msg.first(HeaderName::Route) {
        Some(_) => msg.list(HeaderName::Route).count(),
        None => 0,
    };
    let mut saw_max_forwards = false;
    let mut saw_content_length = false;
    for h in msg.headers() {
        match h.name {
            HeaderName::Via if !via_done && edits.top_via.is_some() => {
                via_done = true;
                let rewritten = edits.top_via.as_deref().unwrap_or_default();
                let rest = list_after_first(msg.value(h));
                out.put_slice(b"Via: ");
                out.put_slice(rewritten.as_bytes());
                if !rest.is_empty() {
                    out.put_slice(b", ");
                    out.put_slice(rest);
                }
                out.put_slice(b"\r\n");
            }
            HeaderName::Via => {
                via_done = true;
                put_line(&mut out, msg.slice(h.line.clone()));
            }
            HeaderName::MaxForwards => {
                if !saw_max_forwards {
                    put_number_header(&mut out, "Max-Forwards", edits.max_forwards.into());
                }
                saw_max_forwards = true;
            }
            HeaderName::ContentLength => {
                saw_content_length = true;
                put_line(&mut out, msg.slice(h.line.clone()));
            }
            HeaderName::Route => {
                put_kept_routes(&mut out, msg, h, edits, &mut routes_seen, total_routes);
            }
            _ => put_line(&mut out, msg.slice(h.line.clone())),
        }
    }
    if !saw_max_forwards {
        put_number_header(&mut out, "Max-Forwards", edits.max_forwards.into());
    }
    for line in &edits.extra {
        out.put_slice(line.as_bytes());
        out.put_slice(b"\r\n");
    }
    let body = msg.body();
    if !saw_content_length {
        put_number_header(&mut out, "Content-Length", body.len() as u64);
    }
    out.put_slice(b"\r\n");
    out.put_slice(body);
    out.freeze()
}

/// Writes a response with its top Via (ours) removed, everything else unchanged.
pub fn forward_response(msg: &Message) -> Bytes {
    let mut out = BytesMut::with_capacity(msg.bytes().len());
    out.put_slice(msg.start_line_text());
    out.put_slice(b"\r\n");
    let mut removed = false;
    for h in msg.headers() {
        if h.name == HeaderName::Via && !removed {
            removed = true;
            let rest = list_after_first(msg.value(h));
            if !rest.is_empty() {
                out.put_slice(b"Via: ");
                out.put_slice(rest);
                out.put_slice(b"\r\n");
            }
            continue;
        }
        put_line(&mut out, msg.slice(h.line.clone()));
    }
    if msg.first(HeaderName::ContentLength).is_none() {
        put_number_header(&mut out, "Content-Length", msg.body().len() as u64);
    }
    out.put_slice(b"\r\n");
    out.put_slice(msg.body());
    out.freeze()
}

/// Writes a response generated by the proxy to `req` (RFC 3261 section 8.2.6): all Vias,
/// From, To (with `to_tag` added when it has none and the code is above 100), Call-ID, CSeq.
pub fn response(req: &Message, code: u16, reason: &str, to_tag: &str, extra: &[String]) -> Bytes {
    let mut out = BytesMut::with_capacity(512);
    out.put_slice(b"SIP/2.0 ");
    out.put_slice(itoa::Buffer::new().format(code).as_bytes());
    out.put_u8(b' ');
    out.put_slice(reason.as_bytes());
    out.put_slice(b"\r\n");
    let add_tag = code > 100 && req.to_tag().is_none();
    for h in req.headers() {
        match h.name {
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                put_line(&mut out, req.slice(h.line.clone()));
            }
            HeaderName::To => {
                out.put_slice(b"To: ");
                out.put_slice(req.value(h));
                if add_tag {
                    out.put_slice(b";tag=");
                    out.put_slice(to_tag.as_bytes());
                }
                out.put_slice(b"\r\n");
            }
            _ => {}
        }
    }
    for line in extra {
        out.put_slice(line.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"Server: sippool\r\nContent-Length: 0\r\n\r\n");
    out.freeze()
}

/// Writes a Route header line keeping only the values `edits` keeps (ours dropped from
/// the top, the strict router's last one dropped); `seen` counts the values before it.
fn put_kept_routes(
    out: &mut BytesMut,
    msg: &Message,
    h: &crate::sip::message::Header,
    edits: &RequestEdits,
    seen: &mut usize,
    total: usize,
) {
    let value = msg.value(h);
    let first = *seen;
    let kept = |i: usize| {
        let n = first + i;
        n >= edits.drop_top_routes && !(edits.drop_last_route && n + 1 == total)
    };
    let parts = list(value).count();
    *seen += parts;
    let keep = (0..parts).filter(|&i| kept(i)).count();
    if keep == parts {
        put_line(out, msg.slice(h.line.clone()));
    } else if keep > 0 {
        out.put_slice(b"Route: ");
        let values = list(value).enumerate().filter(|&(i, _)| kept(i));
        for (written, (_, r)) in values.enumerate() {
            if written > 0 {
                out.put_slice(b", ");
            }
            out.put_slice(value.get(r).unwrap_or_default());
        }
        out.put_slice(b"\r\n");
    }
}

/// The CANCEL for a forwarded INVITE (RFC 3261 section 9.1): the same Request-URI, top Via
/// (`via`, ours), Route set, Call-ID, From, To and CSeq number as the INVITE that was
/// sent, written from the received INVITE and the edits it was forwarded with (no
/// re-parsing of what was sent).
pub fn cancel_for(invite: &Message, edits: &RequestEdits, via: &str) -> Bytes {
    hop_request(invite, edits, via, "CANCEL", None)
}

/// The hop-by-hop ACK for a non-2xx final response to a forwarded INVITE (RFC 3261
/// section 17.1.1.3): as [`cancel_for`], with the To of the response.
pub fn ack_for(invite: &Message, edits: &RequestEdits, via: &str, response: &Message) -> Bytes {
    let to = response.first(HeaderName::To).map(|h| response.value(h));
    hop_request(invite, edits, via, "ACK", to)
}

fn hop_request(
    invite: &Message,
    edits: &RequestEdits,
    via: &str,
    method: &str,
    to: Option<&[u8]>,
) -> Bytes {
    let mut out = BytesMut::with_capacity(512);
    out.put_slice(method.as_bytes());
    out.put_u8(b' ');
    match &edits.request_uri {
        Some(u) => out.put_slice(u.as_bytes()),
        None => out.put_slice(invite.request_uri().unwrap_or_default()),
    }
    out.put_slice(b" SIP/2.0\r\n");
    put_header(&mut out, "Via", via);
    if let Some(r) = &edits.route {
        put_header(&mut out, "Route", r);
    }
    let total_routes = invite.list_values(HeaderName::Route).len();
    let mut routes_seen = 0usize;
    for h in invite.headers() {
        match h.name {
            HeaderName::Route => {
                put_kept_routes(&mut out, invite, h, edits, &mut routes_seen, total_routes);
            }
            HeaderName::From | HeaderName::CallId => {
                put_line(&mut out, invite.slice(h.line.clone()));
            }
            HeaderName::To => match to {
                Some(t) => {
                    out.put_slice(b"To: ");
                    out.put_slice(t);
                    out.put_slice(b"\r\n");
                }
                None => put_line(&mut out, invite.slice(h.line.clone())),
            },
            _ => {}
        }
    }
    let seq = invite.cseq().map(|(n, _)| n).unwrap_or(1);
    let _ = write!(
        Writer(&mut out),
        "CSeq: {seq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    out.freeze()
}

/// A request in the dialog a 2xx to `invite` set up, sent from this proxy's place as if by
/// the caller (RFC 3261 section 12.2.1.1): the ACK for that 2xx (section 13.2.2.4, CSeq
/// number of the INVITE) or a BYE (the next number), for a dialog nobody else will end.
/// Request-URI: the 2xx's Contact; route set: the Record-Route entries the far side added
/// beyond the `rr_sent` the INVITE carried, reversed; From of the INVITE, To of the 2xx.
pub fn in_dialog_after_2xx(
    invite: &Message,
    ok: &Message,
    via: &str,
    method: &str,
    cseq: u32,
    rr_sent: usize,
) -> Bytes {
    let mut out = BytesMut::with_capacity(512);
    out.put_slice(method.as_bytes());
    out.put_u8(b' ');
    let contact = ok
        .first(HeaderName::Contact)
        .and_then(|h| crate::sip::name_addr::name_addr_uri(ok.value(h)));
    match contact {
        Some(uri) => out.put_slice(uri),
        None => out.put_slice(invite.request_uri().unwrap_or_default()),
    }
    out.put_slice(b" SIP/2.0\r\n");
    put_header(&mut out, "Via", via);
    let rr = ok.list_values(HeaderName::RecordRoute);
    let added = rr.len().saturating_sub(rr_sent);
    for r in rr.iter().take(added).rev() {
        out.put_slice(b"Route: ");
        out.put_slice(ok.slice(r.clone()));
        out.put_slice(b"\r\n");
    }
    for h in invite.headers() {
        if matches!(h.name, HeaderName::From | HeaderName::CallId) {
            put_line(&mut out, invite.slice(h.line.clone()));
        }
    }
    if let Some(h) = ok.first(HeaderName::To) {
        put_line(&mut out, ok.slice(h.line.clone()));
    }
    let _ = write!(
        Writer(&mut out),
        "CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    out.freeze()
}

/// The part of a list header value after its first element (and the comma), from where
/// the second element starts.
fn list_after_first(v: &[u8]) -> &[u8] {
    match crate::sip::syntax::list(v).nth(1) {
        Some(second) => v.get(second.start..).unwrap_or_default(),
        None => &[],
    }
}

/// Copies a header line as received, completing a missing final CRLF.
fn put_line(out: &mut BytesMut, line: &[u8]) {
    out.put_slice(line);
    if !line.ends_with(b"\n") {
        out.put_slice(b"\r\n");
    }
}

/// A header line whose value is a decimal number, written without `format!`.
fn put_number_header(out: &mut BytesMut, name: &str, value: u64) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(itoa::Buffer::new().format(value).as_bytes());
    out.put_slice(b"\r\n");
}

fn put_header(out: &mut BytesMut, name: &str, value: &str) {
    out.put_slice(name.as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_slice(b"\r\n");
}

struct Writer<'a>(&'a mut BytesMut);

impl std::fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Message {
        crate::sip::message::parse_for_test(s)
    }

    const REQ: &str = "INVITE sip:bob@b.example SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport, SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKb\r\n\
Route: <sip:proxy.example;lr>, <sip:next.example;lr>\r\n\
Max-Forwards: 10\r\n\
From: <sip:a@a.example>;tag=1\r\n\
To: <sip:bob@b.example>\r\n\
Call-ID: c1\r\n\
CSeq: 5 INVITE\r\n\
X-Odd:   kept   exactly  \r\n\
Content-Length: 2\r\n\r\nhi";

    #[test]
    fn forwarded_request_edits_only_what_it_must() {
        let m = parse(REQ);
        let edits = RequestEdits {
            top_via: Some(
                "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport=4000;received=10.0.0.2".into(),
            ),
            max_forwards: 9,
            drop_top_routes: 1,
            ..Default::default()
        };
        let added = Added {
            via: "SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bKme",
            record_route: &["<sip:192.0.2.5;lr>".into()],
            path: None,
        };
        let out = forward_request(&m, &edits, added);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with("INVITE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bKme\r\nRecord-Route: <sip:192.0.2.5;lr>\r\n"), "{text}");
        assert!(text.contains("Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKa;rport=4000;received=10.0.0.2, SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKb\r\n"));
        assert!(text.contains("\r\nRoute: <sip:next.example;lr>\r\n"));
        assert!(text.contains("Max-Forwards: 9\r\n"));
        assert!(text.contains("X-Odd:   kept   exactly  \r\n"));
        assert!(text.ends_with("\r\n\r\nhi"));
        let again = parse(text);
        assert!(again.defect().is_none());
    }

    #[test]
    fn bye_after_a_2xx_follows_its_contact_and_the_route_set_added_beyond_us() {
        let invite = parse(REQ);
        let ok = parse(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bKme\r\n\
             Record-Route: <sip:far2.example;lr>\r\nRecord-Route: <sip:far1.example;lr>, <sip:192.0.2.5;lr>\r\n\
             From: <sip:a@a.example>;tag=1\r\nTo: <sip:bob@b.example>;tag=bob9\r\nCall-ID: c1\r\n\
             CSeq: 5 INVITE\r\nContact: <sip:bob@198.51.100.7:5080>\r\nContent-Length: 0\r\n\r\n",
        );
        let via = "SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bKbye";
        let bye = in_dialog_after_2xx(&invite, &ok, via, "BYE", 6, 1);
        let bye = parse(std::str::from_utf8(&bye).unwrap());
        assert_eq!(bye.request_uri(), Some(&b"sip:bob@198.51.100.7:5080"[..]));
        let routes: Vec<&[u8]> = bye
            .list_values(HeaderName::Route)
            .into_iter()
            .map(|r| bye.slice(r))
            .collect();
        assert_eq!(
            routes,
            [&b"<sip:far1.example;lr>"[..], b"<sip:far2.example;lr>"],
            "the far side's entries, reversed; ours left out"
        );
        assert_eq!(bye.to_tag(), Some(&b"bob9"[..]));
        assert_eq!(bye.from_tag(), Some(&b"1"[..]));
        assert_eq!(bye.cseq(), Some((6, crate::sip::message::Method::Bye)));
    }

    #[test]
    fn after_the_first_list_element() {
        for (v, rest) in [
            (&b"a"[..], &b""[..]),
            (b"a, b", b"b"),
            (b"a ,\r\n  b, c", b"b, c"),
            (b"\"x,y\" <sip:a,b>, c", b"c"),
            (b"a,,b", b",b"),
            (b"a,   ", b""),
        ] {
            assert_eq!(
                list_after_first(v),
                rest,
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn response_loses_top_via_only() {
        let m = parse("SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP me;branch=z9hG4bKme\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKa\r\nCSeq: 5 INVITE\r\nContent-Length: 0\r\n\r\n");
        let out = forward_response(&m);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKa\r\nCSeq: 5 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn local_response_and_cancel() {
        let m = parse(REQ);
        let r = response(&m, 483, "Too Many Hops", "xyz", &[]);
        let r = parse(std::str::from_utf8(&r).unwrap());
        assert_eq!(r.status(), Some(483));
        assert_eq!(r.to_tag(), Some(&b"xyz"[..]));
        assert_eq!(r.list_values(HeaderName::Via).len(), 2);
        let edits = RequestEdits {
            drop_top_routes: 1,
            ..Default::default()
        };
        let via = "SIP/2.0/UDP 192.0.2.5:5060;branch=z9hG4bKme";
        let c = parse(std::str::from_utf8(&cancel_for(&m, &edits, via)).unwrap());
        assert_eq!(c.cseq(), Some((5, crate::sip::message::Method::Cancel)));
        assert_eq!(c.list_values(HeaderName::Via).len(), 1);
        assert_eq!(
            c.top_via().unwrap().unwrap().branch(),
            Some("z9hG4bKme"),
            "the Via of the INVITE as sent"
        );
        let routes = c.list_values(HeaderName::Route);
        assert_eq!(routes.len(), 1, "the Route set as sent: ours removed");
        assert_eq!(c.slice(routes[0].clone()), b"<sip:next.example;lr>");
        assert_eq!(c.request_uri(), Some(&b"sip:bob@b.example"[..]));
    }
}
