//! Tests of the message index.

use super::*;

fn parse(s: &str) -> Message {
    Message::parse(
        Bytes::copy_from_slice(s.as_bytes()),
        Framing::Datagram,
        &Limits::default(),
    )
    .unwrap()
}

const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport\r\n\
Max-Forwards: 70\r\n\
f: Alice <sip:alice@example.com>;tag=a1\r\n\
t: <sip:bob@example.com>\r\n\
Call-ID : abc@192.0.2.1\r\n\
CSeq: 1 INVITE\r\n\
Subject: a\r\n  folded value\r\n\
l: 4\r\n\
\r\n\
bodyTRAILING";

#[test]
fn indexes_compact_folded_and_body() {
    let m = parse(INVITE);
    assert!(m.defect().is_none(), "{:?}", m.defect());
    assert_eq!(m.method(), Some(&Method::Invite));
    assert_eq!(m.request_uri(), Some(&b"sip:bob@example.com"[..]));
    assert_eq!(m.call_id(), Some(&b"abc@192.0.2.1"[..]));
    assert_eq!(m.cseq(), Some((1, Method::Invite)));
    assert_eq!(m.from_tag(), Some(&b"a1"[..]));
    assert_eq!(m.to_tag(), None);
    assert_eq!(m.max_forwards(), Some(Ok(70)));
    assert_eq!(m.body(), b"body");
    let via = m.top_via().unwrap().unwrap();
    assert_eq!(via.branch(), Some("z9hG4bK1"));
    let subject = m
        .headers()
        .iter()
        .find(|h| m.slice(h.line.clone()).starts_with(b"Subject"))
        .unwrap();
    assert_eq!(m.value(subject), b"a\r\n  folded value");
}

#[test]
fn datagram_content_length_too_large_is_a_defect() {
    let m = parse(&INVITE.replace("l: 4", "l: 9999"));
    assert_eq!(m.defect().unwrap().code, 400);
}

#[test]
fn conflicting_and_negative_content_length() {
    let m = parse(&INVITE.replace("l: 4", "l: 4\r\nContent-Length: 5"));
    assert_eq!(m.defect().unwrap().reason, "Conflicting Content-Length");
    let m = parse(&INVITE.replace("l: 4", "l: -4"));
    assert_eq!(m.defect().unwrap().reason, "Bad Content-Length");
}

#[test]
fn request_line_defects() {
    let m = parse(&INVITE.replace("SIP/2.0\r\nv:", "SIP/7.0\r\nv:"));
    assert_eq!(m.defect().unwrap().code, 505);
    let m = parse(&INVITE.replace("INVITE sip", "INVITE  sip"));
    assert_eq!(m.defect().unwrap().code, 400);
    let m = parse(&INVITE.replace("SIP/2.0\r\nv:", "SIP/2.0 \r\nv:"));
    assert_eq!(m.defect().unwrap().code, 400);
}

#[test]
fn responses() {
    let m = parse("SIP/2.0 100 \r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n\r\n");
    assert_eq!(m.status(), Some(100));
    assert!(Message::parse(
        Bytes::from_static(b"SIP/2.0 4294967301 Huge\r\n\r\n"),
        Framing::Datagram,
        &Limits::default()
    )
    .is_err());
}

#[test]
fn caps_checked() {
    let big = "x".repeat(70_000);
    assert_eq!(
        Message::parse(Bytes::from(big), Framing::Datagram, &Limits::default()).unwrap_err(),
        ParseError::TooLarge
    );
    let many = format!(
        "OPTIONS sip:a@b SIP/2.0\r\n{}\r\n",
        "X-A: 1\r\n".repeat(300)
    );
    assert_eq!(
        parse(&many).defect().unwrap().reason,
        "Too Many Header Fields"
    );
}

#[test]
fn name_addr_helpers() {
    assert_eq!(
        name_addr_uri(br#""A <b>" <sip:x@y;lr>;p=1"#),
        Some(&b"sip:x@y;lr"[..])
    );
    assert_eq!(name_addr_uri(b"sip:x@y;tag=1"), Some(&b"sip:x@y"[..]));
    assert_eq!(header_param(b"sip:x@y;tag=1", b"tag"), Some(&b"1"[..]));
    assert_eq!(
        header_param(b"<sip:x@y;tag=no>;tag=2", b"tag"),
        Some(&b"2"[..])
    );
}

/// The table scan `HeaderName::classify` replaced.
fn classify_ref(name: &[u8]) -> HeaderName {
    if name.len() == 1 {
        return match name.first().map(u8::to_ascii_lowercase) {
            Some(b'v') => HeaderName::Via,
            Some(b'i') => HeaderName::CallId,
            Some(b'f') => HeaderName::From,
            Some(b't') => HeaderName::To,
            Some(b'l') => HeaderName::ContentLength,
            Some(b'm') => HeaderName::Contact,
            _ => HeaderName::Other,
        };
    }
    const NAMES: [(&[u8], HeaderName); 13] = [
        (b"via", HeaderName::Via),
        (b"route", HeaderName::Route),
        (b"record-route", HeaderName::RecordRoute),
        (b"max-forwards", HeaderName::MaxForwards),
        (b"cseq", HeaderName::CSeq),
        (b"call-id", HeaderName::CallId),
        (b"from", HeaderName::From),
        (b"to", HeaderName::To),
        (b"content-length", HeaderName::ContentLength),
        (b"proxy-require", HeaderName::ProxyRequire),
        (b"proxy-authorization", HeaderName::ProxyAuthorization),
        (b"contact", HeaderName::Contact),
        (b"path", HeaderName::Path),
    ];
    NAMES
        .iter()
        .find(|(n, _)| n.len() == name.len() && eq_ic(n, name))
        .map_or(HeaderName::Other, |(_, h)| *h)
}

#[test]
fn classify_agrees_with_the_table() {
    let names = [
        "Via",
        "v",
        "V",
        "Route",
        "Record-Route",
        "RECORD-ROUTE",
        "Max-Forwards",
        "CSeq",
        "cseq",
        "Call-ID",
        "call-id",
        "i",
        "From",
        "f",
        "To",
        "t",
        "Content-Length",
        "l",
        "Proxy-Require",
        "Proxy-Authorization",
        "Contact",
        "m",
        "Path",
        "Content-Type",
        "c",
        "Contacts",
        "Vias",
        "Record-Routf",
        "Max-Forward",
        "Call-Id2",
        "Cont-ct",
        "Toe",
        "",
        "Subject",
        "s",
        "Require",
        "Rout",
        "Proxy-Authenticate",
        "Proxy-Authorizatio_",
    ];
    for n in names {
        assert_eq!(
            HeaderName::classify(n.as_bytes()),
            classify_ref(n.as_bytes()),
            "{n}"
        );
    }
}

#[test]
fn header_names_with_space_before_colon_and_bad_names() {
    let m = parse(&INVITE.replace("CSeq: 1 INVITE", "CSeq \t: 1 INVITE"));
    assert!(m.defect().is_none(), "{:?}", m.defect());
    assert_eq!(m.cseq(), Some((1, Method::Invite)));
    let m = parse(&INVITE.replace("Subject: a", "Sub ject: a"));
    assert_eq!(m.defect().unwrap().reason, "Malformed header name");
    let m = parse(&INVITE.replace("Subject: a", "Subject a"));
    assert_eq!(m.defect().unwrap().reason, "Malformed header line");
    let m = parse(&INVITE.replace("Subject: a", ": a"));
    assert_eq!(m.defect().unwrap().reason, "Malformed header name");
    let m = parse(&INVITE.replace("Subject: a", "Subject\r: a"));
    assert!(m.defect().is_none(), "{:?}", m.defect());
}

#[test]
fn request_line_parts() {
    for (line, defect) in [
        ("INVITE sip:a@b SIP/2.0", None),
        ("INVITE sip:a@b SIP/2.0 x", Some(400)),
        ("INVITE sip:a@b", Some(400)),
        ("INVITE", Some(400)),
        (" sip:a@b SIP/2.0", Some(400)),
        ("INV@TE sip:a@b SIP/2.0", Some(400)),
        ("INVITE sip:a@b SIP/3.0", Some(505)),
        ("INVITE sip:a@b HTTP/1.1", Some(400)),
    ] {
        let (start, d) = parse_request_line(line.as_bytes(), 0);
        assert_eq!(d.map(|d| d.code), defect, "{line}");
        if let StartLine::Request { uri, .. } = start {
            let want = line.split(' ').nth(1).unwrap_or("");
            assert_eq!(&line.as_bytes()[uri], want.as_bytes(), "{line}");
        }
    }
}

#[test]
fn top_via_is_the_first_of_a_list() {
    let m = parse(&INVITE.replace(
        "v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport",
        "v: SIP/2.0/UDP \"q,\" [2001:db8::1];branch=z9hG4bK2 , SIP/2.0/TCP h;branch=z9hG4bK3",
    ));
    assert_eq!(m.top_via().unwrap(), Err(ViaError));
    let m = parse(&INVITE.replace(
        "v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport",
        "v: SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK2 ,\r\n SIP/2.0/TCP h;branch=z9hG4bK3",
    ));
    let via = m.top_via().unwrap().unwrap();
    assert_eq!(via.host, "2001:db8::1");
    assert_eq!(via.branch(), Some("z9hG4bK2"));
    assert_eq!(m.list(HeaderName::Via).count(), 2);
    assert_eq!(
        m.list_values(HeaderName::Via),
        m.list(HeaderName::Via).collect::<Vec<_>>()
    );
}

#[test]
fn classify_agrees_with_the_table_on_one_byte_changes() {
    let names: [&[u8]; 13] = [
        b"via",
        b"route",
        b"record-route",
        b"max-forwards",
        b"cseq",
        b"call-id",
        b"from",
        b"to",
        b"content-length",
        b"proxy-require",
        b"proxy-authorization",
        b"contact",
        b"path",
    ];
    for n in names {
        for at in 0..n.len() {
            for b in 0..=255u8 {
                let mut v = n.to_vec();
                v[at] = b;
                assert_eq!(HeaderName::classify(&v), classify_ref(&v), "{v:?}");
            }
        }
    }
}

#[test]
fn the_index_of_first_headers_agrees_with_a_scan() {
    let m = parse(
        "INVITE sip:b@example.com SIP/2.0\r\nX-A: 1\r\nv: SIP/2.0/UDP h1;branch=z9hG4bK1\r\n\
         Route: <sip:r1;lr>\r\nVia: SIP/2.0/UDP h2;branch=z9hG4bK2\r\nX-B: 2\r\n\
         route: <sip:r2;lr>\r\nf: <sip:a@x>;tag=1\r\nt: <sip:b@y>\r\ni: c\r\n\
         CSeq: 1 INVITE\r\nl: 0\r\n\r\n",
    );
    let kinds = [
        HeaderName::Via,
        HeaderName::Route,
        HeaderName::RecordRoute,
        HeaderName::MaxForwards,
        HeaderName::CSeq,
        HeaderName::CallId,
        HeaderName::From,
        HeaderName::To,
        HeaderName::ContentLength,
        HeaderName::ProxyRequire,
        HeaderName::ProxyAuthorization,
        HeaderName::Contact,
        HeaderName::Path,
        HeaderName::Other,
    ];
    assert_eq!(kinds.len(), KINDS);
    for name in kinds {
        let scanned: Vec<_> = m.headers().iter().filter(|h| h.name == name).collect();
        let indexed: Vec<_> = m.all(name).collect();
        assert_eq!(indexed.len(), scanned.len(), "{name:?}");
        for (a, b) in indexed.iter().zip(&scanned) {
            assert_eq!(a.line, b.line, "{name:?}");
        }
        assert_eq!(
            m.first(name).map(|h| h.line.clone()),
            scanned.first().map(|h| h.line.clone()),
            "{name:?}"
        );
    }
    assert_eq!(m.count(HeaderName::Via), 2);
    assert_eq!(m.count(HeaderName::Route), 2);
    assert_eq!(m.count(HeaderName::Other), 2);
    assert!(m.first(HeaderName::Contact).is_none());
}
