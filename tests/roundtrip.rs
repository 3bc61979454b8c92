//! Property: a generated request parses, is forwarded, and the forwarded copy parses again
//! with the same Call-ID, CSeq, tags, body and every header the proxy does not touch; a
//! response loses exactly its top Via. Compact names, folding and odd spacing included.

use bytes::Bytes;
use proptest::prelude::*;
use sippool::config::Config;
use sippool::sip::builder;
use sippool::sip::message::{Framing, Limits, Message};
use sippool::sip::proxy::{decide, Decision, LocalIdentity, Received, Router};
use sippool::sip::transport::Transport;

fn setup() -> (LocalIdentity, Router) {
    let s = Config::from_toml_str(
        "[instance]\nname = \"p\"\n[[listen]]\ntransport = \"udp\"\naddress = \"192.0.2.10:5060\"\n\
         [[pair]]\nname = \"p\"\nprimary = \"192.0.2.11\"\nbackup = \"192.0.2.12\"\n",
    )
    .unwrap()
    .validate()
    .unwrap();
    (s.identity(), s.router())
}

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9.!%*_+`'~-]{0,11}"
}

fn value() -> impl Strategy<Value = String> {
    // Printable header text, possibly with inner spaces, commas and quoted parts.
    "[A-Za-z0-9][ A-Za-z0-9;=,.:@<>/\"_-]{0,40}[A-Za-z0-9>]"
}

#[derive(Debug, Clone)]
struct Req {
    method: String,
    user: String,
    host: String,
    call_id: String,
    cseq: u32,
    from_tag: String,
    to_tag: Option<String>,
    compact: bool,
    fold: bool,
    extra: Vec<(String, String)>,
    body: Vec<u8>,
}

fn request() -> impl Strategy<Value = Req> {
    (
        prop_oneof![
            Just("INVITE".to_string()),
            Just("OPTIONS".to_string()),
            Just("MESSAGE".to_string()),
            "[A-Z]{3,10}"
        ],
        token(),
        "[a-z]{1,10}(\\.[a-z]{2,5}){1,2}",
        "[A-Za-z0-9]{4,20}(@[a-z0-9.]{1,10})?",
        1u32..u32::MAX,
        token(),
        proptest::option::of(token()),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(("X-[A-Za-z]{1,10}", value()), 0..6),
        proptest::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(
            |(method, user, host, call_id, cseq, from_tag, to_tag, compact, fold, extra, body)| {
                Req {
                    method: if method == "ACK" || method == "CANCEL" {
                        "OPTIONS".into()
                    } else {
                        method
                    },
                    user,
                    host,
                    call_id,
                    cseq,
                    from_tag,
                    to_tag,
                    compact,
                    fold,
                    extra,
                    body,
                }
            },
        )
}

fn render(r: &Req) -> Vec<u8> {
    let (v, f, t, i, l) = if r.compact {
        ("v", "f", "t", "i", "l")
    } else {
        ("Via", "From", "To", "Call-ID", "Content-Length")
    };
    let to_tag = r
        .to_tag
        .as_ref()
        .map(|t| format!(";tag={t}"))
        .unwrap_or_default();
    let mut s = format!(
        "{m} sip:{u}@{h} SIP/2.0\r\n{v}: SIP/2.0/UDP 198.51.100.1:5062;branch=z9hG4bK{c}x\r\nMax-Forwards: 70\r\n\
         {f}: <sip:a@{h}>;tag={ft}\r\n{t}: <sip:{u}@{h}>{to_tag}\r\n{i}: {cid}\r\nCSeq: {n} {m}\r\n",
        m = r.method,
        u = r.user,
        h = r.host,
        c = r.cseq,
        ft = r.from_tag,
        cid = r.call_id,
        n = r.cseq,
    );
    for (name, val) in &r.extra {
        if r.fold {
            s.push_str(&format!("{name}:\r\n  {val}\r\n"));
        } else {
            s.push_str(&format!("{name}: {val}\r\n"));
        }
    }
    s.push_str(&format!("{l}: {}\r\n\r\n", r.body.len()));
    let mut out = s.into_bytes();
    out.extend_from_slice(&r.body);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn forwarded_request_parses_to_the_same_request(r in request()) {
        let (identity, router) = setup();
        let raw = render(&r);
        let m = Message::parse(Bytes::from(raw.clone()), Framing::Datagram, &Limits::default()).unwrap();
        prop_assert!(m.defect().is_none(), "{:?}", m.defect());
        let rx = Received {
            msg: &m,
            transport: Transport::Udp,
            source: "198.51.100.1:5062".parse().unwrap(),
            from_upstream: false,
            local: None,
            flow_token: None,
        };
        let Decision::Forward(plan) = decide(rx, &identity, &router) else {
            return Err(TestCaseError::fail("not forwarded"));
        };
        for t in [Transport::Udp, Transport::Tcp] {
            let out = plan.build(&m, &identity, t.into(), "z9hG4bKspprop");
            let again = Message::parse(out.clone(), Framing::Stream, &Limits::default()).unwrap();
            prop_assert!(again.defect().is_none());
            prop_assert_eq!(again.call_id(), m.call_id());
            prop_assert_eq!(again.cseq(), m.cseq());
            prop_assert_eq!(again.from_tag(), m.from_tag());
            prop_assert_eq!(again.to_tag(), m.to_tag());
            prop_assert_eq!(again.body(), m.body());
            prop_assert_eq!(again.max_forwards(), Some(Ok(69)));
            prop_assert_eq!(again.top_via().unwrap().unwrap().branch(), Some("z9hG4bKspprop"));
            for h in m.headers().iter().filter(|h| h.name == sippool::sip::message::HeaderName::Other) {
                let line = m.slice(h.line.clone());
                prop_assert!(out.windows(line.len()).any(|w| w == line), "lost {:?}", String::from_utf8_lossy(line));
            }
            // Forwarding the forwarded copy changes nothing more: stable.
            let rx2 = Received { msg: &again, transport: t, source: "192.0.2.99:5060".parse().unwrap(), from_upstream: false, local: None, flow_token: None };
            if let Decision::Forward(plan2) = decide(rx2, &identity, &router) {
                let out2 = plan2.build(&again, &identity, t.into(), "z9hG4bKspprop2");
                let third = Message::parse(out2, Framing::Stream, &Limits::default()).unwrap();
                prop_assert_eq!(third.call_id(), m.call_id());
                prop_assert_eq!(third.body(), m.body());
            }
        }
        // The response path: a response loses exactly its top Via.
        let resp = builder::response(&m, 200, "OK", "t1", &[]);
        let resp = Message::parse(resp, Framing::Stream, &Limits::default()).unwrap();
        let fwd = Message::parse(builder::forward_response(&resp), Framing::Stream, &Limits::default()).unwrap();
        prop_assert_eq!(fwd.list_values(sippool::sip::message::HeaderName::Via).len() + 1,
            resp.list_values(sippool::sip::message::HeaderName::Via).len());
        prop_assert_eq!(fwd.call_id(), m.call_id());
    }
}
