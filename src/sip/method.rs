//! SIP request methods (RFC 3261 section 7.1): the six the core knows by name and any
//! other token, kept as written (methods are case-sensitive).

use crate::sip::syntax::is_token;

/// SIP request methods.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// OPTIONS
    Options,
    /// REGISTER
    Register,
    /// Any other token, kept as written (methods are case-sensitive).
    Other(Box<str>),
}

impl Method {
    /// Parses a method token; `None` when it is not a token.
    pub fn parse(s: &[u8]) -> Option<Method> {
        if !is_token(s) {
            return None;
        }
        Some(match s {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"OPTIONS" => Method::Options,
            b"REGISTER" => Method::Register,
            other => Method::Other(String::from_utf8_lossy(other).into()),
        })
    }

    /// The method as written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Other(s) => s,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
