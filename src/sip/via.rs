//! The Via header (RFC 3261 section 20.42) with `received` and `rport` (RFC 3581).
//!
//! A proxy reads the top Via of every request (transaction key, where responses go) and
//! of every response (is it ours, which branch), and rewrites only the top value of a
//! request it forwards. Lower values are never touched.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::sip::syntax::{eq_ic, is_token, parse_params, parse_u32, Param};

/// The RFC 3261 branch magic cookie.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// One parsed via-parm, borrowing from the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via<'a> {
    /// Transport token as written (`UDP`, `TCP`, `TLS`, or anything else).
    pub transport: &'a str,
    /// sent-by host, IPv6 without brackets.
    pub host: &'a str,
    /// Whether the host was a bracketed IPv6 literal.
    pub host_is_v6: bool,
    /// sent-by port.
    pub port: Option<u16>,
    text: &'a [u8],
    params: std::borrow::Cow<'a, [Param]>,
    params_at: usize,
}

/// A via-parm that does not follow the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViaError;

/// Where the parts of a parsed via-parm lie in its text: what a [`Message`] keeps so that
/// its top Via is parsed once however often it is read.
///
/// [`Message`]: crate::sip::message::Message
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViaIndex {
    /// The via-parm without surrounding LWS, in the text given to [`ViaIndex::parse`].
    text: std::ops::Range<usize>,
    /// The rest relative to `text`.
    transport: std::ops::Range<usize>,
    host: std::ops::Range<usize>,
    host_is_v6: bool,
    port: Option<u16>,
    params: Vec<Param>,
    params_at: usize,
}

impl ViaIndex {
    /// Parses one via-parm (`SIP/2.0/UDP host:port;params`).
    pub fn parse(input: &[u8]) -> Result<ViaIndex, ViaError> {
        let trimmed = crate::sip::syntax::trim_range(input, 0..input.len());
        let text = input.get(trimmed.clone()).ok_or(ViaError)?;
        let mut i = 0;
        let mut protocol = [0..0, 0..0, 0..0];
        for (n, slot) in protocol.iter_mut().enumerate() {
            skip_lws(text, &mut i);
            let start = i;
            while text
                .get(i)
                .is_some_and(|&b| crate::sip::syntax::is_token_char(b))
            {
                i += 1;
            }
            if !is_token(text.get(start..i).ok_or(ViaError)?) {
                return Err(ViaError);
            }
            *slot = start..i;
            skip_lws(text, &mut i);
            if n < 2 {
                if text.get(i) != Some(&b'/') {
                    return Err(ViaError);
                }
                i += 1;
            }
        }
        let [name, version, transport] = protocol;
        if !eq_ic(text.get(name).unwrap_or_default(), b"SIP")
            || text.get(version).unwrap_or_default() != b"2.0"
        {
            return Err(ViaError);
        }
        std::str::from_utf8(text.get(transport.clone()).unwrap_or_default())
            .map_err(|_| ViaError)?;
        // sent-by
        let (host, host_is_v6) = if text.get(i) == Some(&b'[') {
            let close = text
                .get(i..)
                .and_then(|t| memchr::memchr(b']', t))
                .ok_or(ViaError)?
                + i;
            let h = text.get(i + 1..close).ok_or(ViaError)?;
            if h.is_empty()
                || !h
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return Err(ViaError);
            }
            let r = i + 1..close;
            i = close + 1;
            (r, true)
        } else {
            let start = i;
            while text
                .get(i)
                .is_some_and(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            {
                i += 1;
            }
            if start == i {
                return Err(ViaError);
            }
            (start..i, false)
        };
        skip_lws(text, &mut i);
        let port = if text.get(i) == Some(&b':') {
            i += 1;
            skip_lws(text, &mut i);
            let start = i;
            while text.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            let p = parse_u32(text.get(start..i).ok_or(ViaError)?, 65535).ok_or(ViaError)?;
            skip_lws(text, &mut i);
            Some(u16::try_from(p).map_err(|_| ViaError)?)
        } else {
            None
        };
        let params = parse_params(text, i..text.len()).ok_or(ViaError)?;
        Ok(ViaIndex {
            text: trimmed,
            transport,
            host,
            host_is_v6,
            port,
            params,
            params_at: i,
        })
    }

    /// The parsed via-parm over `input`, the text this index was made from.
    pub fn view<'a>(&'a self, input: &'a [u8]) -> Result<Via<'a>, ViaError> {
        self.to_via(input, std::borrow::Cow::Borrowed(&self.params))
    }

    fn to_via<'a>(
        &self,
        input: &'a [u8],
        params: std::borrow::Cow<'a, [Param]>,
    ) -> Result<Via<'a>, ViaError> {
        let text = input.get(self.text.clone()).ok_or(ViaError)?;
        let str_at = |r: &std::ops::Range<usize>| {
            text.get(r.clone())
                .and_then(|b| std::str::from_utf8(b).ok())
                .ok_or(ViaError)
        };
        Ok(Via {
            transport: str_at(&self.transport)?,
            host: str_at(&self.host)?,
            host_is_v6: self.host_is_v6,
            port: self.port,
            text,
            params,
            params_at: self.params_at,
        })
    }
}

impl<'a> Via<'a> {
    /// Parses one via-parm (`SIP/2.0/UDP host:port;params`).
    pub fn parse(text: &'a [u8]) -> Result<Via<'a>, ViaError> {
        let mut index = ViaIndex::parse(text)?;
        let params = std::mem::take(&mut index.params);
        index.to_via(text, std::borrow::Cow::Owned(params))
    }

    /// A parameter by name: `None` when absent, `Some(None)` for a flag such as `rport`.
    pub fn param(&self, name: &str) -> Option<Option<&'a [u8]>> {
        self.params.iter().find_map(|p| {
            let n = self.text.get(p.name.clone())?;
            if eq_ic(n, name.as_bytes()) {
                Some(p.value.clone().and_then(|v| self.text.get(v)))
            } else {
                None
            }
        })
    }

    /// The branch parameter.
    pub fn branch(&self) -> Option<&'a str> {
        self.param("branch")
            .flatten()
            .and_then(|b| std::str::from_utf8(b).ok())
    }

    /// Whether the branch starts with the RFC 3261 magic cookie and has more after it.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch()
            .is_some_and(|b| b.len() > MAGIC_COOKIE.len() && b.starts_with(MAGIC_COOKIE))
    }

    /// `received` when present.
    pub fn received(&self) -> Option<&'a str> {
        self.param("received")
            .flatten()
            .and_then(|b| std::str::from_utf8(b).ok())
    }

    /// `rport`: `None` absent, `Some(None)` requested, `Some(Some(p))` filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.param("rport").map(|v| {
            v.and_then(|p| parse_u32(p, 65535))
                .and_then(|p| u16::try_from(p).ok())
        })
    }

    /// Where a response to this Via goes per RFC 3261 section 18.2.2 and RFC 3581 (for
    /// unreliable transports): `received`/`rport` when present, else the sent-by.
    pub fn response_address(&self) -> Option<SocketAddr> {
        let host = self.received().unwrap_or(self.host);
        let ip = host.trim_matches(['[', ']']).parse().ok()?;
        let port = match self.rport() {
            Some(Some(p)) => p,
            _ => self.port.unwrap_or(5060),
        };
        Some(SocketAddr::new(ip, port))
    }

    /// This via-parm rewritten with `received` and a filled `rport` (RFC 3581 section 4),
    /// other parameters kept in order and byte for byte. `received` is added only when the
    /// source IP differs from the sent-by host or `rport` was requested.
    pub fn with_received(&self, source: SocketAddr) -> Option<String> {
        let src_ip = source.ip().to_string();
        let wants_rport = self.rport().is_some();
        let host_differs = self.host.parse::<std::net::IpAddr>().ok() != Some(source.ip());
        if !wants_rport && !host_differs {
            return None;
        }
        let head = std::str::from_utf8(self.text.get(..self.params_at)?).ok()?;
        let mut out = String::with_capacity(self.text.len() + 40);
        out.push_str(head.trim_end());
        for p in self.params.iter() {
            let name = self.text.get(p.name.clone())?;
            if eq_ic(name, b"received") {
                continue;
            }
            out.push(';');
            if eq_ic(name, b"rport") {
                let _ = write!(out, "rport={}", source.port());
                continue;
            }
            out.push_str(std::str::from_utf8(name).ok()?);
            if let Some(v) = &p.value {
                out.push('=');
                out.push_str(std::str::from_utf8(self.text.get(v.clone())?).ok()?);
            }
        }
        let _ = write!(out, ";received={src_ip}");
        Some(out)
    }
}

fn skip_lws(s: &[u8], i: &mut usize) {
    while s.get(*i).is_some_and(|&b| crate::sip::syntax::is_lws(b)) {
        *i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_lws_and_params() {
        let v = Via::parse(b"SIP / 2.0 / UDP 192.0.2.2:5060 ;branch=z9hG4bK74bf9;rport").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "192.0.2.2");
        assert_eq!(v.port, Some(5060));
        assert_eq!(v.branch(), Some("z9hG4bK74bf9"));
        assert_eq!(v.rport(), Some(None));
        assert!(v.has_rfc3261_branch());
    }

    #[test]
    fn ipv6_sent_by() {
        let v = Via::parse(b"SIP/2.0/TCP [2001:db8::9:1]:5061;branch=z9hG4bKx").unwrap();
        assert_eq!(v.host, "2001:db8::9:1");
        assert!(v.host_is_v6);
        assert_eq!(v.port, Some(5061));
    }

    #[test]
    fn bad_vias() {
        assert!(Via::parse(b"SIP/2.0/UDP 192.0.2.15;;,").is_err());
        assert!(Via::parse(b"garbage").is_err());
        assert!(Via::parse(b"SIP/2.0/UDP").is_err());
        assert!(!Via::parse(b"SIP/2.0/UDP h;branch=z9hG4bK")
            .unwrap()
            .has_rfc3261_branch());
    }

    #[test]
    fn received_and_rport_filled() {
        let v = Via::parse(b"SIP/2.0/UDP phone.example;branch=z9hG4bKa;rport").unwrap();
        let src: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let s = v.with_received(src).unwrap();
        assert_eq!(
            s,
            "SIP/2.0/UDP phone.example;branch=z9hG4bKa;rport=40000;received=198.51.100.7"
        );
        let v2 = Via::parse(s.as_bytes()).unwrap();
        assert_eq!(v2.response_address(), Some(src));
        let same = Via::parse(b"SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKa").unwrap();
        assert!(same.with_received(src).is_none());
    }
}
