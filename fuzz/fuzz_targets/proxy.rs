//! A request through the proxy's rules: validation, routing, the forwarded copy, the
//! transaction key, CANCEL and ACK. Never panics, and a forwarded copy parses again.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sippool::config::Config;
use sippool::sip::message::{Framing, Limits, Message};
use sippool::sip::proxy::{decide, Decision, LocalIdentity, Received, Router};
use sippool::sip::transaction::ServerKey;
use sippool::sip::transport::Transport;
use std::sync::OnceLock;

fn setup() -> &'static (LocalIdentity, Router) {
    static S: OnceLock<(LocalIdentity, Router)> = OnceLock::new();
    S.get_or_init(|| {
        let s = Config::from_toml_str(
            "[instance]\nname = \"f\"\n[[listen]]\ntransport = \"udp\"\naddress = \"192.0.2.10:5060\"\n\
             [[pair]]\nname = \"p\"\ndomain = \"a.example\"\nprimary = \"192.0.2.11\"\nbackup = \"192.0.2.12\"\n\
             [[route]]\ndomain = \"partner.example\"\ntarget = \"192.0.2.13:5070;transport=tcp\"\n",
        )
        .ok()
        .and_then(|c| c.validate().ok())
        .unwrap_or_else(|| std::process::abort());
        (s.identity(), s.router())
    })
}

fuzz_target!(|data: &[u8]| {
    let (identity, router) = setup();
    let Ok(m) = Message::parse(Bytes::copy_from_slice(data), Framing::Datagram, &Limits::default()) else {
        return;
    };
    if m.is_response() {
        return;
    }
    let _ = ServerKey::of(&m).map(|k| k.cancelled_invite());
    let rx = Received {
        msg: &m,
        transport: Transport::Udp,
        source: "198.51.100.1:5062".parse().unwrap_or_else(|_| std::process::abort()),
        from_upstream: data.first().is_some_and(|b| b & 1 == 1),
        local: None,
        flow_token: None,
    };
    if let Decision::Forward(plan) = decide(rx, identity, router) {
        for t in [Transport::Udp, Transport::Tcp] {
            let branch = plan.new_branch();
            let out = plan.build(&m, identity, t.into(), &branch);
            let again = Message::parse(out.clone(), Framing::Stream, &Limits { max_size: usize::MAX, max_headers: usize::MAX });
            assert!(again.is_ok(), "a forwarded request must parse");
            let cancel = plan.cancel(&m, &identity.via(t.into(), &branch));
            let cancel = Message::parse(cancel, Framing::Stream, &Limits { max_size: usize::MAX, max_headers: usize::MAX });
            assert!(cancel.is_ok(), "its CANCEL must parse");
        }
    }
});
