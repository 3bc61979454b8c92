//! Transaction keys: which server transaction a request belongs to (RFC 3261 section
//! 17.2.3, with the RFC 2543 fallback of section 17.2.3's last paragraphs), which INVITE a
//! CANCEL refers to (section 9.2), and which client transaction a response answers
//! (section 17.1.3).
//!
//! Owns only the identity of a transaction: what is compared, and how. Keys are small owned
//! values (they outlive the message in the tables); nothing here formats text. Their text
//! (branches, sent-by hosts) is kept inline when it is short, as it nearly always is: a key
//! is made for every message and cloned into the tables, and a heap string per field was
//! a fifth of the allocations per call (issue 18).

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

/// The text of a key field: inline up to [`KeyText::INLINE`] bytes (this proxy's branches
/// are 26-28 bytes, phones' and servers' 17-35, an IPv6 sent-by at most 39 with its
/// brackets), on the heap beyond. Compared and hashed as its text, whichever way it is
/// held: a text is inline exactly when it fits, so equal texts are held alike.
#[derive(Clone)]
enum KeyText {
    Inline {
        len: u8,
        bytes: [u8; KeyText::INLINE],
    },
    Heap(Box<str>),
}

impl KeyText {
    /// The most bytes kept inline: the enum is then 40 bytes, as large as its tag, a
    /// length and this (a heap string's pointer and length fit in the same room).
    const INLINE: usize = 38;

    fn new(s: &str) -> KeyText {
        let mut bytes = [0u8; KeyText::INLINE];
        match (bytes.get_mut(..s.len()), u8::try_from(s.len())) {
            (Some(room), Ok(len)) => {
                room.copy_from_slice(s.as_bytes());
                KeyText::Inline { len, bytes }
            }
            _ => KeyText::Heap(s.into()),
        }
    }

    /// `s` in lower case (host names compare without case), without a copy on the heap
    /// when it fits inline.
    fn lowercase(s: &str) -> KeyText {
        let mut t = KeyText::new(s);
        match &mut t {
            KeyText::Inline { len, bytes } => {
                if let Some(b) = bytes.get_mut(..usize::from(*len)) {
                    b.make_ascii_lowercase();
                }
            }
            KeyText::Heap(h) => h.make_ascii_lowercase(),
        }
        t
    }

    /// The text's bytes: what keys compare and hash (no UTF-8 check on that path).
    fn as_bytes(&self) -> &[u8] {
        match self {
            KeyText::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            KeyText::Heap(h) => h.as_bytes(),
        }
    }

    /// The text (it was made from a `str`, whole, so its bytes are UTF-8).
    fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl PartialEq for KeyText {
    fn eq(&self, other: &KeyText) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for KeyText {}

impl std::hash::Hash for KeyText {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl std::fmt::Debug for KeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl std::fmt::Display for KeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the request names its transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Id {
    /// RFC 3261: the top Via's branch, which starts with the magic cookie.
    Branch(KeyText),
    /// RFC 2543 (no magic cookie): Call-ID, From tag and CSeq number.
    Rfc2543 {
        call_id: Box<[u8]>,
        from_tag: Box<[u8]>,
        cseq: u32,
    },
}

/// A key's hash, computed once when the key is made: the tables hash a key on every
/// lookup, insert and removal (about 25 times per call), and hashing its text each time
/// cost more than the lookups. Seeded once per process (foldhash), so that keys an
/// attacker chooses (branches) do not collide on purpose.
fn digest_of(fields: impl std::hash::Hash) -> u64 {
    use std::hash::BuildHasher;
    static STATE: std::sync::OnceLock<foldhash::fast::RandomState> = std::sync::OnceLock::new();
    STATE
        .get_or_init(foldhash::fast::RandomState::default)
        .hash_one(fields)
}

/// The key of a server transaction (RFC 3261 section 17.2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerKey {
    /// The hash of the fields below ([`digest_of`]); compared first, so that unequal keys
    /// differ at once.
    digest: u64,
    id: Id,
    /// The top Via's sent-by host (lower case: host names compare case-insensitively) ...
    host: KeyText,
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
            Id::Branch(KeyText::new(via.branch()?))
        } else {
            Id::Rfc2543 {
                call_id: msg.call_id().unwrap_or_default().into(),
                from_tag: msg.from_tag().unwrap_or_default().into(),
                cseq: msg.cseq().map_or(0, |(n, _)| n),
            }
        };
        Some(ServerKey::sealed(
            id,
            KeyText::lowercase(via.host),
            via.port.unwrap_or(5060),
            method,
        ))
    }

    fn sealed(id: Id, host: KeyText, port: u16, method: KeyMethod) -> ServerKey {
        ServerKey {
            digest: digest_of((&id, &host, port, &method)),
            id,
            host,
            port,
            method,
        }
    }

    /// For a CANCEL's key, the key of the INVITE transaction it cancels (section 9.2: same
    /// branch and sent-by, method INVITE); `None` for any other key.
    pub fn cancelled_invite(&self) -> Option<ServerKey> {
        (self.method == KeyMethod::Cancel).then(|| {
            ServerKey::sealed(
                self.id.clone(),
                self.host.clone(),
                self.port,
                KeyMethod::Invite,
            )
        })
    }

    /// Whether this is the key of an INVITE transaction (or of an ACK for one).
    pub fn is_invite(&self) -> bool {
        self.method == KeyMethod::Invite
    }

    /// The branch, for an RFC 3261 key (logs).
    pub fn branch(&self) -> Option<&str> {
        match &self.id {
            Id::Branch(b) => Some(b.as_str()),
            Id::Rfc2543 { .. } => None,
        }
    }
}

impl std::hash::Hash for ServerKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.digest);
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
/// Hashed once, as a [`ServerKey`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    digest: u64,
    branch: KeyText,
}

impl std::hash::Hash for ClientKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.digest);
    }
}

impl ClientKey {
    /// The key for a branch we wrote.
    pub fn new(branch: &str) -> ClientKey {
        let branch = KeyText::new(branch);
        ClientKey {
            digest: digest_of(&branch),
            branch,
        }
    }

    /// The key a response names: its top Via's branch.
    pub fn of_response(msg: &Message) -> Option<ClientKey> {
        Some(ClientKey::new(msg.top_via()?.ok()?.branch()?))
    }

    /// The branch.
    pub fn branch(&self) -> &str {
        self.branch.as_str()
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
    fn key_text_is_inline_when_it_fits_and_compares_as_text_either_way() {
        let fits = "a".repeat(KeyText::INLINE);
        let long = "a".repeat(KeyText::INLINE + 1);
        assert!(matches!(KeyText::new(&fits), KeyText::Inline { .. }));
        assert!(matches!(KeyText::new(&long), KeyText::Heap(_)));
        for s in ["", "z9hG4bK1", fits.as_str(), long.as_str()] {
            assert_eq!(KeyText::new(s).as_str(), s);
        }
        assert_ne!(KeyText::new(&fits), KeyText::new(&long));
        assert_eq!(
            KeyText::lowercase("HoSt.Example"),
            KeyText::new("host.example")
        );
        let upper = "A".repeat(KeyText::INLINE + 2);
        assert_eq!(
            KeyText::lowercase(&upper).as_str(),
            upper.to_ascii_lowercase()
        );
        assert_eq!(std::mem::size_of::<KeyText>(), 40);
        // A long branch and a long host work as keys as short ones do.
        let via = format!("{}:5060;branch=z9hG4bK{long}", "H".repeat(50));
        let a = ServerKey::of(&msg("BYE", &via, "2 BYE")).unwrap();
        let b = ServerKey::of(&msg(
            "BYE",
            &via.to_ascii_lowercase().replace("z9hg4bk", "z9hG4bK"),
            "2 BYE",
        ))
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.branch(), Some(format!("z9hG4bK{long}").as_str()));
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
