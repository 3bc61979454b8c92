//! Transaction routing, sans-IO: which transaction a received message belongs to, or what
//! else becomes of it (RFC 3261 sections 17.1.3 and 17.2.3 for matching, 9.2 for CANCEL,
//! 16.11 for the ACK of a 2xx, 18.2.2 for stray responses).
//!
//! Owns the order of the questions, not the tables: the shell keeps the concurrent tables
//! and answers [`TransactionTables`]' questions about them; [`dispatch`] says where the
//! message goes. Nothing here sends, spawns or reads a clock (the shell passes `now`).

use std::time::Instant;

use crate::sip::message::{Message, Method};
use crate::sip::transaction::{ClientKey, ServerKey};

/// What the shell's tables hold, as far as routing a message needs to know.
pub trait TransactionTables {
    /// Whether a server transaction with this key is running.
    fn has_server(&self, key: &ServerKey) -> bool;
    /// Whether a client transaction with this key is running.
    fn has_client(&self, key: &ClientKey) -> bool;
    /// Whether a transaction with this key has ended but still absorbs retransmissions of
    /// its request at `now` (Timers J and L).
    fn is_lingering(&self, key: &ServerKey, now: Instant) -> bool;
    /// Whether a response with this key answers one of our own health probes.
    fn is_probe(&self, key: &ClientKey) -> bool;
}

/// Where a received message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dispatch {
    /// A response to one of our OPTIONS probes: to the health layer.
    Probe(ClientKey),
    /// A response to a running client transaction.
    ClientTransaction(ClientKey),
    /// A response that matches no client transaction: forwarded statelessly along its Via
    /// when the top Via is ours (section 18.2.2), else dropped.
    StrayResponse,
    /// A request for a running server transaction: a retransmission, or the ACK for a
    /// non-2xx final response.
    ServerTransaction(ServerKey),
    /// A CANCEL for a running INVITE server transaction (section 9.2), by the INVITE's key.
    Cancel(ServerKey),
    /// A retransmitted request whose transaction has ended and lingers: resend the last
    /// response, if there was one.
    Absorb(ServerKey),
    /// An ACK that matches no INVITE transaction: the ACK for a 2xx, forwarded statelessly
    /// (section 16.11).
    AckStateless,
    /// A request that starts a new server transaction.
    New(ServerKey),
    /// A request that cannot have a transaction but can be answered (a Via is there but
    /// does not parse): answer it statelessly with this status.
    Respond(u16, &'static str),
    /// Nothing to do but drop it, counted under this reason.
    Drop(&'static str),
}

/// Routes one received message (see the module documentation).
pub fn dispatch(msg: &Message, tables: &impl TransactionTables, now: Instant) -> Dispatch {
    if msg.is_response() {
        response(msg, tables)
    } else {
        request(msg, tables, now)
    }
}

fn response(msg: &Message, tables: &impl TransactionTables) -> Dispatch {
    let Some(key) = ClientKey::of_response(msg) else {
        return Dispatch::StrayResponse;
    };
    if tables.is_probe(&key) {
        Dispatch::Probe(key)
    } else if tables.has_client(&key) {
        Dispatch::ClientTransaction(key)
    } else {
        Dispatch::StrayResponse
    }
}

fn request(msg: &Message, tables: &impl TransactionTables, now: Instant) -> Dispatch {
    let method = msg.method();
    let Some(key) = ServerKey::of(msg) else {
        // No usable top Via: answer along the packet source if a Via is there at all.
        return match msg.top_via() {
            Some(_) if method != Some(&Method::Ack) => {
                let (code, reason) = msg
                    .defect()
                    .map_or((400, "Malformed Via"), |d| (d.code, d.reason));
                Dispatch::Respond(code, reason)
            }
            _ => Dispatch::Drop("no_via"),
        };
    };
    if let Some(invite) = key.cancelled_invite() {
        if tables.has_server(&invite) {
            return Dispatch::Cancel(invite);
        }
    }
    if tables.has_server(&key) {
        return Dispatch::ServerTransaction(key);
    }
    let ack = method == Some(&Method::Ack);
    if tables.is_lingering(&key, now) {
        // An ACK here is for a 2xx that reused the INVITE's branch: still stateless.
        return if ack {
            Dispatch::AckStateless
        } else {
            Dispatch::Absorb(key)
        };
    }
    if ack {
        return Dispatch::AckStateless;
    }
    Dispatch::New(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    #[derive(Default)]
    struct Tables {
        servers: HashSet<ServerKey>,
        clients: HashSet<ClientKey>,
        lingering: Vec<(ServerKey, Instant)>,
        probes: HashSet<ClientKey>,
    }

    impl TransactionTables for Tables {
        fn has_server(&self, key: &ServerKey) -> bool {
            self.servers.contains(key)
        }
        fn has_client(&self, key: &ClientKey) -> bool {
            self.clients.contains(key)
        }
        fn is_lingering(&self, key: &ServerKey, now: Instant) -> bool {
            self.lingering
                .iter()
                .any(|(k, until)| k == key && *until > now)
        }
        fn is_probe(&self, key: &ClientKey) -> bool {
            self.probes.contains(key)
        }
    }

    fn parse(s: &str) -> Message {
        crate::sip::message::parse_for_test(s)
    }

    fn req(method: &str, branch: &str) -> Message {
        parse(&format!(
            "{method} sip:b@y SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch={branch}\r\n\
             From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n\
             Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    fn resp(branch: &str) -> Message {
        parse(&format!(
            "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 10.0.0.9:5060;branch={branch}\r\n\
             Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKc\r\nFrom: <sip:a@x>;tag=1\r\n\
             To: <sip:b@y>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    #[test]
    fn new_request_then_its_retransmission_then_its_lingering() {
        let now = Instant::now();
        let mut t = Tables::default();
        let invite = req("INVITE", "z9hG4bK1");
        let Dispatch::New(key) = dispatch(&invite, &t, now) else {
            panic!("a new transaction")
        };
        t.servers.insert(key.clone());
        assert_eq!(
            dispatch(&invite, &t, now),
            Dispatch::ServerTransaction(key.clone())
        );
        // The ACK for a non-2xx goes to the INVITE transaction.
        assert_eq!(
            dispatch(&req("ACK", "z9hG4bK1"), &t, now),
            Dispatch::ServerTransaction(key.clone())
        );
        t.servers.clear();
        t.lingering
            .push((key.clone(), now + Duration::from_secs(32)));
        assert_eq!(dispatch(&invite, &t, now), Dispatch::Absorb(key.clone()));
        assert_eq!(
            dispatch(&req("ACK", "z9hG4bK1"), &t, now),
            Dispatch::AckStateless
        );
        // Once its time is up, the same request is new again.
        let later = now + Duration::from_secs(33);
        assert_eq!(dispatch(&invite, &t, later), Dispatch::New(key));
    }

    #[test]
    fn cancel_finds_its_invite_or_is_a_transaction_of_its_own() {
        let now = Instant::now();
        let mut t = Tables::default();
        let cancel = req("CANCEL", "z9hG4bK7");
        let Dispatch::New(own) = dispatch(&cancel, &t, now) else {
            panic!("no INVITE: a transaction of its own (answered 481)")
        };
        let invite = ServerKey::of(&req("INVITE", "z9hG4bK7")).unwrap();
        t.servers.insert(invite.clone());
        assert_eq!(dispatch(&cancel, &t, now), Dispatch::Cancel(invite));
        assert_ne!(own, ServerKey::of(&req("INVITE", "z9hG4bK7")).unwrap());
    }

    #[test]
    fn ack_for_2xx_is_stateless() {
        let t = Tables::default();
        assert_eq!(
            dispatch(&req("ACK", "z9hG4bK9"), &t, Instant::now()),
            Dispatch::AckStateless
        );
    }

    #[test]
    fn responses_go_to_probe_client_transaction_or_stray() {
        let now = Instant::now();
        let mut t = Tables::default();
        assert_eq!(
            dispatch(&resp("z9hG4bKsp1"), &t, now),
            Dispatch::StrayResponse
        );
        t.clients.insert(ClientKey::new("z9hG4bKsp1"));
        t.probes.insert(ClientKey::new("z9hG4bKpr1"));
        assert_eq!(
            dispatch(&resp("z9hG4bKsp1"), &t, now),
            Dispatch::ClientTransaction(ClientKey::new("z9hG4bKsp1"))
        );
        assert_eq!(
            dispatch(&resp("z9hG4bKpr1"), &t, now),
            Dispatch::Probe(ClientKey::new("z9hG4bKpr1"))
        );
    }

    #[test]
    fn a_request_without_a_usable_via_is_answered_or_dropped() {
        let t = Tables::default();
        let now = Instant::now();
        let bad_via = parse(
            "OPTIONS sip:b@y SIP/2.0\r\nVia: garbage\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\n\
             Call-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        );
        assert!(matches!(
            dispatch(&bad_via, &t, now),
            Dispatch::Respond(400, _)
        ));
        let ack = parse(
            "ACK sip:b@y SIP/2.0\r\nVia: garbage\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\n\
             Call-ID: c\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(dispatch(&ack, &t, now), Dispatch::Drop("no_via"));
    }
}
