//! Transport identifiers as SIP names them (Via sent-protocol, `;transport=` URI parameter).
//!
//! Only names live here; sockets belong to `actors::transport`.

use std::fmt;
use std::str::FromStr;

/// A SIP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Datagrams, RFC 3261 section 18.
    Udp,
    /// Streams framed by Content-Length.
    Tcp,
    /// TCP inside TLS.
    Tls,
}

impl Transport {
    /// The port a URI without one implies (RFC 3263).
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Udp | Transport::Tcp => 5060,
            Transport::Tls => 5061,
        }
    }

    /// The token written in a Via sent-protocol (`SIP/2.0/UDP`).
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The value written in a URI `transport=` parameter.
    pub fn uri_param(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// Whether the transport is a reliable stream (no retransmissions, Content-Length framing).
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.uri_param())
    }
}

/// The text was not a transport name sippool knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTransport;

impl FromStr for Transport {
    type Err = UnknownTransport;

    fn from_str(s: &str) -> Result<Self, UnknownTransport> {
        if s.eq_ignore_ascii_case("udp") {
            Ok(Transport::Udp)
        } else if s.eq_ignore_ascii_case("tcp") {
            Ok(Transport::Tcp)
        } else if s.eq_ignore_ascii_case("tls") {
            Ok(Transport::Tls)
        } else {
            Err(UnknownTransport)
        }
    }
}
