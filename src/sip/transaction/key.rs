//! Transaction keys: which server transaction a request belongs to (RFC 3261 section
//! 17.2.3, with the RFC 2543 fallback of section 17.2.3's last paragraphs), which INVITE a
//! CANCEL refers to (section 9.2), and which client transaction a response answers
//! (section 17.1.3).
//!
//! Owns only the identity of a transaction: what is compared, and how. Keys are small owned
//! values (they outlive the message in the tables); nothing here formats text.

use crate::sip::message::{Message, Method};

/// The method part of a server transaction key: ACK is keyed as the INVITE it acknowledges
/// (section 17.2.3: "except for ACK, where the method of the request that created the
/// transaction is INVITE").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyMethod {
    /// INVITE, and the ACK for a non-2xx final response to it.
    Invite,
    /// CANCEL: a transaction of its own, beside the INVITE it cancels.
    Cancel,
    /// Any other method.
    Other(Method),
}

impl KeyMethod {
    fn of(m: &Method) -> KeyMethod {
        match m {
            Method::Invite | Method::Ack => KeyMethod::Invite,
            Method::Cancel => KeyMethod::Cancel,
            other => KeyMethod::Other(other.clone()),
        }
    }
}

/// How the request names its transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Id {
    /// RFC 3261: the top Via's branch, which starts with the magic cookie.
    Branch(Box<str>),
    /// RFC 2543 (no magic cookie): Call-ID, From tag and CSeq number.
    Rfc2543 {
        call_id: Box<[u8]>,
        from_tag: Box<[u8]>,
        cseq: u32,
    },
}

/// The key of a server transaction (RFC 3261 section 17.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerKey {
    id: Id,
    /// The top Via's sent-by host (lower case: host names compare case-insensitively) ...
    host: Box<str>,
    /// ... and port (5060 when absent, as the existing tables always had it).
    port: u16,
    method: KeyMethod,
}

impl ServerKey {
    /// The key of a request; `None` when it has no usable top Via or no method.
    pub fn of(msg: &Message) -> Option<ServerKey> {
        let via = msg.top_via()?.ok()?;
        let method = KeyMethod::of(msg.method()?);
        let id = if via.has_rfc3261_branch() {
            Id::Branch(via.branch()?.into())
        } else {
            Id::Rfc2543 {
                call_id: msg.call_id().unwrap_or_default().into(),
                from_tag: msg.from_tag().unwrap_or_default().into(),
                cseq: msg.cseq().map_or(0, |(n, _)| n),
            }
        };
        Some(ServerKey {
            id,
            host: via.host.to_ascii_lowercase().into(),
            port: via.port.unwrap_or(5060),
            method,
        })
    }

    /// For a CANCEL's key, the key of the INVITE transaction it cancels (section 9.2: same
    /// branch and sent-by, method INVITE); `None` for any other key.
    pub fn cancelled_invite(&self) -> Option<ServerKey> {
        (self.method == KeyMethod::Cancel).then(|| ServerKey {
            method: KeyMethod::Invite,
            ..self.clone()
        })
    }

    /// Whether this is the key of an INVITE transaction (or of an ACK for one).
    pub fn is_invite(&self) -> bool {
        self.method == KeyMethod::Invite
    }

    /// The branch, for an RFC 3261 key (logs).
    pub fn branch(&self) -> Option<&str> {
        match &self.id {
            Id::Branch(b) => Some(b),
            Id::Rfc2543 { .. } => None,
        }
    }
}

impl std::fmt::Display for ServerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let method = match &self.method {
            KeyMethod::Invite => "INVITE",
            KeyMethod::Cancel => "CANCEL",
            KeyMethod::Other(m) => m.as_str(),
        };
        match &self.id {
            Id::Branch(b) => write!(f, "{b}|{}:{}|{method}", self.host, self.port),
            Id::Rfc2543 { call_id, cseq, .. } => write!(
                f,
                "2543|{}|{cseq}|{}:{}|{method}",
                String::from_utf8_lossy(call_id),
                self.host,
                self.port
            ),
        }
    }
}

/// The key of a client transaction (RFC 3261 section 17.1.3): the branch this proxy wrote
/// in its Via. The CSeq method is not part of it: our branches are unique per client
/// transaction, and a CANCEL we send gets a branch of its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey(Box<str>);

impl ClientKey {
    /// The key for a branch we wrote.
    pub fn new(branch: &str) -> ClientKey {
        ClientKey(branch.into())
    }

    /// The key a response names: its top Via's branch.
    pub fn of_response(msg: &Message) -> Option<ClientKey> {
        Some(ClientKey::new(msg.top_via()?.ok()?.branch()?))
    }

    /// The branch.
    pub fn branch(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message::{Framing, Limits};
    use bytes::Bytes;

    fn msg(method: &str, via: &str, cseq: &str) -> Message {
        let s = format!(
            "{method} sip:b@y SIP/2.0\r\nVia: SIP/2.0/UDP {via}\r\nMax-Forwards: 70\r\n\
             From: <sip:a@x>;tag=f1\r\nTo: <sip:b@y>\r\nCall-ID: c1\r\nCSeq: {cseq}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(s), Framing::Datagram, &Limits::default()).unwrap()
    }

    #[test]
    fn ack_matches_its_invite_and_cancel_finds_it() {
        let invite = ServerKey::of(&msg("INVITE", "h:5060;branch=z9hG4bK1", "1 INVITE")).unwrap();
        let ack = ServerKey::of(&msg("ACK", "H:5060;branch=z9hG4bK1", "1 ACK")).unwrap();
        assert_eq!(
            invite, ack,
            "ACK keyed as its INVITE; hosts compare without case"
        );
        let cancel = ServerKey::of(&msg("CANCEL", "h;branch=z9hG4bK1", "1 CANCEL")).unwrap();
        assert_ne!(cancel, invite);
        assert_eq!(cancel.cancelled_invite(), Some(invite.clone()));
        assert_eq!(invite.cancelled_invite(), None);
        assert!(invite.is_invite() && !cancel.is_invite());
        assert_eq!(invite.to_string(), "z9hG4bK1|h:5060|INVITE");
    }

    #[test]
    fn branch_sent_by_and_method_all_count() {
        let a = ServerKey::of(&msg("BYE", "h:5060;branch=z9hG4bK1", "2 BYE")).unwrap();
        for other in [
            msg("BYE", "h:5060;branch=z9hG4bK2", "2 BYE"),
            msg("BYE", "h:5070;branch=z9hG4bK1", "2 BYE"),
            msg("BYE", "g:5060;branch=z9hG4bK1", "2 BYE"),
            msg("INFO", "h:5060;branch=z9hG4bK1", "2 INFO"),
        ] {
            assert_ne!(ServerKey::of(&other).unwrap(), a);
        }
    }

    #[test]
    fn rfc2543_requests_are_keyed_on_dialog_fields() {
        let a = ServerKey::of(&msg("INVITE", "h:5060;branch=old1", "7 INVITE")).unwrap();
        // Another (non-cookie) branch but the same Call-ID, From tag and CSeq: the same.
        let b = ServerKey::of(&msg("INVITE", "h:5060;branch=old2", "7 INVITE")).unwrap();
        assert_eq!(a, b);
        let c = ServerKey::of(&msg("INVITE", "h:5060", "8 INVITE")).unwrap();
        assert_ne!(a, c);
        assert_eq!(a.branch(), None);
        let cancel = ServerKey::of(&msg("CANCEL", "h:5060", "7 CANCEL")).unwrap();
        assert_eq!(cancel.cancelled_invite(), Some(a));
    }

    #[test]
    fn client_key_is_the_top_branch_of_a_response() {
        let r = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP p;branch=z9hG4bKsp1\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKo\r\n\
                 From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let m = Message::parse(Bytes::from(r), Framing::Datagram, &Limits::default()).unwrap();
        assert_eq!(
            ClientKey::of_response(&m),
            Some(ClientKey::new("z9hG4bKsp1"))
        );
    }
}
