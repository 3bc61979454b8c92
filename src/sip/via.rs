//! The Via header (RFC 3261 section 20.42) with `received` and `rport` (RFC 3581).
//!
//! A proxy reads the top Via of every request (transaction key, where responses go) and
//! of every response (is it ours, which branch), and rewrites only the top value of a
//! request it forwards. Lower values are never touched.

use std::net::SocketAddr;
use std::ops::Range;

use crate::sip::addr::{parse_ip, push_ip, push_u16};
use crate::sip::syntax::{
    ascii_str, eq_ic, eq_lower, is_host_char, is_token_char, is_v6_char, params, parse_u32,
    scan_params, slot_of, trim_range, Param, Slot,
};

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
    params_at: usize,
    known: Known,
}

/// A via-parm that does not follow the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViaError;

/// The parameters a proxy reads on every message, found while the parameter list is
/// checked (the first of each name counts); any other is looked up again when asked for.
const KNOWN: [&[u8]; 3] = [b"branch", b"received", b"rport"];
const BRANCH: usize = 0;
const RECEIVED: usize = 1;
const RPORT: usize = 2;

/// Where the [`KNOWN`] parameters are, relative to the via-parm text.
type Known = [Slot; 3];

/// Where the parts of a parsed via-parm lie in its text: what a [`Message`] keeps so that
/// its top Via is parsed once however often it is read.
///
/// [`Message`]: crate::sip::message::Message
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViaIndex {
    /// The via-parm without surrounding LWS, in the text given to [`ViaIndex::parse`].
    text: Range<usize>,
    /// The rest relative to `text`.
    transport: Range<usize>,
    host: Range<usize>,
    host_is_v6: bool,
    port: Option<u16>,
    params_at: usize,
    known: Known,
}

impl ViaIndex {
    /// Parses one via-parm (`SIP/2.0/UDP host:port;params`).
    pub fn parse(input: &[u8]) -> Result<ViaIndex, ViaError> {
        let trimmed = trim_range(input, 0..input.len());
        let text = input.get(trimmed.clone()).ok_or(ViaError)?;
        let (transport, mut i) = match protocol_plain(text) {
            Some(found) => found,
            None => protocol(text)?,
        };
        // sent-by
        let (host, host_is_v6) = if text.get(i) == Some(&b'[') {
            let close = text
                .get(i..)
                .and_then(|t| memchr::memchr(b']', t))
                .ok_or(ViaError)?
                + i;
            let h = text.get(i + 1..close).ok_or(ViaError)?;
            if h.is_empty() || !h.iter().all(|&b| is_v6_char(b)) {
                return Err(ViaError);
            }
            let r = i + 1..close;
            i = close + 1;
            (r, true)
        } else {
            let start = i;
            i += text
                .get(i..)
                .unwrap_or_default()
                .iter()
                .position(|&b| !is_host_char(b))
                .unwrap_or(text.len().saturating_sub(i));
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
        // The whole parameter list is checked here; the parameters read on every message
        // are kept, any other is found again by `Via::param`.
        let known = scan_params(text, i..text.len(), &KNOWN).map_err(|_| ViaError)?;
        Ok(ViaIndex {
            text: trimmed,
            transport,
            host,
            host_is_v6,
            port,
            params_at: i,
            known,
        })
    }

    /// The parsed via-parm over `input`, the text this index was made from.
    pub fn view<'a>(&self, input: &'a [u8]) -> Result<Via<'a>, ViaError> {
        let text = input.get(self.text.clone()).ok_or(ViaError)?;
        let transport = str_in(text, self.transport.clone()).ok_or(ViaError)?;
        let host = str_in(text, self.host.clone()).ok_or(ViaError)?;
        Ok(Via {
            transport,
            host,
            host_is_v6: self.host_is_v6,
            port: self.port,
            text,
            params_at: self.params_at,
            known: self.known.clone(),
        })
    }
}

impl<'a> Via<'a> {
    /// Parses one via-parm (`SIP/2.0/UDP host:port;params`).
    pub fn parse(text: &'a [u8]) -> Result<Via<'a>, ViaError> {
        ViaIndex::parse(text)?.view(text)
    }

    /// The parameters after the sent-by, as ranges into the via-parm text (already checked
    /// when the via-parm was parsed).
    fn param_list(&self) -> impl Iterator<Item = Param> + 'a {
        params(self.text, self.params_at..self.text.len()).map_while(Result::ok)
    }

    /// A parameter by name: `None` when absent, `Some(None)` for a flag such as `rport`.
    pub fn param(&self, name: &str) -> Option<Option<&'a [u8]>> {
        let text = self.text;
        let found = match slot_of(&KNOWN, name.as_bytes()) {
            Some(i) => self.known.get(i).cloned().flatten(),
            None => self
                .param_list()
                .find_map(|p| eq_ic(text.get(p.name)?, name.as_bytes()).then_some(p.value)),
        };
        found.map(|v| v.and_then(|v| text.get(v)))
    }
    /// One of the [`KNOWN`] parameters, as [`Via::param`] gives it.
    fn known_param(&self, i: usize) -> Option<Option<&'a [u8]>> {
        let text = self.text;
        self.known
            .get(i)?
            .as_ref()
            .map(|v| v.clone().and_then(|v| text.get(v)))
    }

    /// The value of one of the [`KNOWN`] parameters as a string, `None` when absent, a
    /// flag, or not UTF-8.
    fn known_str(&self, i: usize) -> Option<&'a str> {
        let r = self.known.get(i)?.clone()??;
        str_in(self.text, r)
    }

    /// The branch parameter.
    pub fn branch(&self) -> Option<&'a str> {
        self.known_str(BRANCH)
    }

    /// Whether the branch starts with the RFC 3261 magic cookie and has more after it.
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch()
            .is_some_and(|b| b.len() > MAGIC_COOKIE.len() && b.starts_with(MAGIC_COOKIE))
    }

    /// `received` when present.
    pub fn received(&self) -> Option<&'a str> {
        self.known_str(RECEIVED)
    }

    /// `rport`: `None` absent, `Some(None)` requested, `Some(Some(p))` filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.known_param(RPORT).map(|v| {
            v.and_then(|p| parse_u32(p, 65535))
                .and_then(|p| u16::try_from(p).ok())
        })
    }

    /// Where a response to this Via goes per RFC 3261 section 18.2.2 and RFC 3581 (for
    /// unreliable transports): `received`/`rport` when present, else the sent-by.
    pub fn response_address(&self) -> Option<SocketAddr> {
        let host = self.received().unwrap_or(self.host);
        let ip = parse_ip(host.trim_matches(['[', ']']))?;
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
        let wants_rport = self.rport().is_some();
        let host_differs = parse_ip(self.host) != Some(source.ip());
        if !wants_rport && !host_differs {
            return None;
        }
        let at = |r: Range<usize>| str_in(self.text, r);
        let head = at(0..self.params_at)?;
        let mut out = String::with_capacity(self.text.len() + 40);
        out.push_str(head.trim_end());
        for p in self.param_list() {
            let name = self.text.get(p.name.clone())?;
            if eq_lower(name, b"received") {
                continue;
            }
            out.push(';');
            if eq_lower(name, b"rport") {
                out.push_str("rport=");
                push_u16(&mut out, source.port());
                continue;
            }
            out.push_str(at(p.name)?);
            if let Some(v) = p.value {
                out.push('=');
                out.push_str(at(v)?);
            }
        }
        out.push_str(";received=");
        push_ip(&mut out, source.ip());
        Some(out)
    }
}

/// The common `SIP/2.0/transport` with nothing between its parts: the transport's range
/// and where it ends (LWS after it skipped); `None` for any other form.
fn protocol_plain(text: &[u8]) -> Option<(Range<usize>, usize)> {
    if !eq_lower(text.get(..8)?, b"sip/2.0/") {
        return None;
    }
    let len = text
        .get(8..)?
        .iter()
        .position(|&b| !is_token_char(b))
        .unwrap_or(text.len() - 8);
    if len == 0 {
        return None;
    }
    let mut i = 8 + len;
    skip_lws(text, &mut i);
    Some((8..8 + len, i))
}

/// `SIP / 2.0 / transport`, LWS allowed around each part (RFC 3261 section 25.1): the
/// transport's range and where it ends (LWS after it skipped).
fn protocol(text: &[u8]) -> Result<(Range<usize>, usize), ViaError> {
    let mut i = 0;
    let mut parts = [0..0, 0..0, 0..0];
    for (n, slot) in parts.iter_mut().enumerate() {
        skip_lws(text, &mut i);
        let start = i;
        while text.get(i).is_some_and(|&b| is_token_char(b)) {
            i += 1;
        }
        if start == i {
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
    let [name, version, transport] = parts;
    if !eq_ic(text.get(name).unwrap_or_default(), b"SIP")
        || text.get(version).unwrap_or_default() != b"2.0"
    {
        return Err(ViaError);
    }
    Ok((transport, i))
}

/// `text[r]` as a string, `None` when out of range or not UTF-8.
fn str_in(text: &[u8], r: Range<usize>) -> Option<&str> {
    ascii_str(text.get(r)?)
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
