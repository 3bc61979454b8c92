//! The datagram parser and every typed view of the message: never panics.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sippool::sip::builder;
use sippool::sip::message::{Framing, HeaderName, Limits, Message};
use sippool::sip::uri::SipUri;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Message::parse(Bytes::copy_from_slice(data), Framing::Datagram, &Limits::default()) else {
        return;
    };
    let _ = m.top_via().map(|v| v.map(|v| (v.branch(), v.rport(), v.received(), v.response_address())));
    let _ = (m.cseq(), m.call_id(), m.max_forwards(), m.from_tag(), m.to_tag(), m.body());
    for name in [HeaderName::Via, HeaderName::Route, HeaderName::RecordRoute, HeaderName::Contact] {
        for r in m.list_values(name) {
            let _ = sippool::sip::message::name_addr_uri(m.slice(r)).map(SipUri::parse);
        }
    }
    if let Some(u) = m.request_uri() {
        let _ = SipUri::parse(u).map(|u| (u.transport(), u.lr(), u.target_host()));
    }
    if m.is_response() {
        let _ = builder::forward_response(&m);
    } else {
        let _ = builder::response(&m, 400, "Bad Request", "t", &[]);
    }
});
