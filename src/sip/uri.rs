//! SIP and SIPS URIs (RFC 3261 section 19.1), parsed just far enough to route on.
//!
//! A proxy reads the host, port and a few parameters (`transport`, `lr`, `maddr`) and forwards
//! the URI text unchanged, so a parsed [`SipUri`] borrows from the message and escapes are
//! never decoded.

use crate::sip::syntax::{
    ascii_str, eq_ic, eq_lower, has_not_uri_char, is_host_char, is_scheme_char, is_v6_char, params,
    parse_u32, scan_params, slot_of, Param, Slot,
};
use crate::sip::transport::Transport;

/// URI schemes a proxy tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `sip:`
    Sip,
    /// `sips:`
    Sips,
    /// `tel:` (RFC 3966): routed to the serving pair, never parsed further.
    Tel,
    /// Any other syntactically valid scheme: 416 Unsupported URI Scheme.
    Other,
}

/// Why a URI was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriError {
    /// Not `scheme:...` at all (for example `<sip:...>` or text with spaces).
    Malformed,
}

/// Reads the scheme of an absolute URI.
pub fn scheme_of(s: &[u8]) -> Result<Scheme, UriError> {
    // The scheme runs to the first byte that cannot be in one, which must be the colon.
    let colon = s
        .iter()
        .position(|&b| !is_scheme_char(b))
        .filter(|&c| s.get(c) == Some(&b':'))
        .ok_or(UriError::Malformed)?;
    let scheme = s.get(..colon).ok_or(UriError::Malformed)?;
    if !scheme.first().is_some_and(|b| b.is_ascii_alphabetic()) {
        return Err(UriError::Malformed);
    }
    if has_not_uri_char(s.get(colon..).unwrap_or_default()) {
        return Err(UriError::Malformed);
    }
    Ok(if eq_lower(scheme, b"sip") {
        Scheme::Sip
    } else if eq_lower(scheme, b"sips") {
        Scheme::Sips
    } else if eq_lower(scheme, b"tel") {
        Scheme::Tel
    } else {
        Scheme::Other
    })
}

/// A parsed `sip:` or `sips:` URI borrowing from the message text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri<'a> {
    /// `sips:` rather than `sip:`.
    pub secure: bool,
    /// The user part, still escaped.
    pub user: Option<&'a [u8]>,
    /// Host name or IP literal, IPv6 without brackets.
    pub host: &'a str,
    /// Port when given.
    pub port: Option<u16>,
    /// The text of the URI parameters, `;` first, up to `?` or the end.
    params: &'a [u8],
    /// Whether `?headers` are present.
    pub has_headers: bool,
    /// Where the [`KNOWN`] parameters are in `params`.
    known: [Slot; 3],
}

/// The URI parameters a proxy reads, found while the parameter list is checked (the first
/// of each name counts); any other is looked up again when asked for.
const KNOWN: [&[u8]; 3] = [b"transport", b"lr", b"maddr"];

impl<'a> SipUri<'a> {
    /// Parses a `sip:`/`sips:` URI.
    pub fn parse(s: &'a [u8]) -> Result<SipUri<'a>, UriError> {
        SipUri::parse_as(s, scheme_of(s)?)
    }

    /// Parses a URI whose scheme [`scheme_of`] has read already (the whole URI checked).
    pub fn parse_as(s: &'a [u8], scheme: Scheme) -> Result<SipUri<'a>, UriError> {
        let secure = match scheme {
            Scheme::Sip => false,
            Scheme::Sips => true,
            _ => return Err(UriError::Malformed),
        };
        let rest = s
            .get(if secure { 5 } else { 4 }..)
            .ok_or(UriError::Malformed)?;
        let (user, hostpart) = match memchr::memrchr(b'@', rest) {
            Some(at) => (rest.get(..at), rest.get(at + 1..).unwrap_or_default()),
            None => (None, rest),
        };
        if user.is_some_and(|u| u.is_empty()) {
            return Err(UriError::Malformed);
        }
        let (host, after_host) = if let Some(v6) = hostpart.strip_prefix(b"[") {
            let close = memchr::memchr(b']', v6).ok_or(UriError::Malformed)?;
            let h = v6.get(..close).ok_or(UriError::Malformed)?;
            if h.is_empty() || !h.iter().all(|&b| is_v6_char(b)) {
                return Err(UriError::Malformed);
            }
            (h, v6.get(close + 1..).unwrap_or_default())
        } else {
            // The host runs to the first byte that cannot be in one, which must end it.
            let end = hostpart
                .iter()
                .position(|&b| !is_host_char(b))
                .unwrap_or(hostpart.len());
            let h = hostpart.get(..end).ok_or(UriError::Malformed)?;
            let ends_ok = hostpart
                .get(end)
                .is_none_or(|b| matches!(b, b':' | b';' | b'?'));
            if h.is_empty() || !ends_ok {
                return Err(UriError::Malformed);
            }
            (h, hostpart.get(end..).unwrap_or_default())
        };
        let host = ascii_str(host).ok_or(UriError::Malformed)?;
        let (port, after_port) = match after_host.strip_prefix(b":") {
            Some(p) => {
                let end = p
                    .iter()
                    .position(|&b| matches!(b, b';' | b'?'))
                    .unwrap_or(p.len());
                let digits = p.get(..end).ok_or(UriError::Malformed)?;
                let port = parse_u32(digits, 65535).ok_or(UriError::Malformed)?;
                (
                    Some(u16::try_from(port).map_err(|_| UriError::Malformed)?),
                    p.get(end..).unwrap_or_default(),
                )
            }
            None => (None, after_host),
        };
        let q = memchr::memchr(b'?', after_port);
        let params_text = match q {
            Some(q) => after_port.get(..q).unwrap_or_default(),
            None => after_port,
        };
        if !params_text.is_empty() && params_text.first() != Some(&b';') {
            return Err(UriError::Malformed);
        }
        let known = scan_params(params_text, 0..params_text.len(), &KNOWN)
            .map_err(|_| UriError::Malformed)?;
        Ok(SipUri {
            secure,
            user,
            host,
            port,
            params: params_text,
            has_headers: q.is_some(),
            known,
        })
    }

    /// A parameter by name: `None` when absent, `Some(None)` for a flag like `lr`.
    pub fn param(&self, name: &str) -> Option<Option<&'a [u8]>> {
        let text = self.params;
        if let Some(i) = slot_of(&KNOWN, name.as_bytes()) {
            let slot = self.known.get(i)?.as_ref()?;
            return Some(slot.clone().and_then(|v| text.get(v)));
        }
        params(text, 0..text.len())
            .map_while(Result::ok)
            .find_map(|Param { name: n, value }| {
                eq_ic(text.get(n)?, name.as_bytes()).then(|| value.and_then(|v| text.get(v)))
            })
    }

    /// Whether the `lr` parameter is present (RFC 3261 loose routing).
    pub fn lr(&self) -> bool {
        self.param("lr").is_some()
    }

    /// The transport the URI asks for: `transport=` or TLS for `sips:`; UDP by default.
    pub fn transport(&self) -> Result<Transport, UriError> {
        match self.param("transport") {
            Some(Some(t)) => ascii_str(t)
                .and_then(|t| t.parse::<Transport>().ok())
                .ok_or(UriError::Malformed),
            _ if self.secure => Ok(Transport::Tls),
            _ => Ok(Transport::Udp),
        }
    }

    /// Whether a `transport=` parameter is given explicitly.
    pub fn has_transport_param(&self) -> bool {
        self.param("transport").is_some()
    }

    /// The host to send to: `maddr` when present, else the host.
    pub fn target_host(&self) -> &'a str {
        match self.param("maddr") {
            Some(Some(m)) => ascii_str(m).unwrap_or(self.host),
            _ => self.host,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The `scheme_of` before the one-pass scheme scan.
    fn scheme_of_ref(s: &[u8]) -> Result<Scheme, UriError> {
        let colon = memchr::memchr(b':', s).ok_or(UriError::Malformed)?;
        let scheme = s.get(..colon).ok_or(UriError::Malformed)?;
        let first_ok = scheme.first().is_some_and(|b| b.is_ascii_alphabetic());
        if !first_ok
            || !scheme
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return Err(UriError::Malformed);
        }
        if s.iter()
            .any(|&b| b <= b' ' || b == 0x7f || b == b'<' || b == b'>')
        {
            return Err(UriError::Malformed);
        }
        Ok(if eq_ic(scheme, b"sip") {
            Scheme::Sip
        } else if eq_ic(scheme, b"sips") {
            Scheme::Sips
        } else if eq_ic(scheme, b"tel") {
            Scheme::Tel
        } else {
            Scheme::Other
        })
    }

    fn uri_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"sip:".to_vec()),
            Just(b"SIPS:".to_vec()),
            Just(b"tel:".to_vec()),
            Just(b"a@".to_vec()),
            Just(b"[2001:db8::1]".to_vec()),
            Just(b"host.example".to_vec()),
            Just(b":5060".to_vec()),
            Just(b";lr".to_vec()),
            Just(b";transport=tcp".to_vec()),
            Just(b"?h=1".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..3),
        ];
        proptest::collection::vec(piece, 0..6).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn scheme_agrees_with_reference(s in uri_bytes()) {
            prop_assert_eq!(scheme_of(&s), scheme_of_ref(&s));
        }

        #[test]
        fn parse_never_panics(s in uri_bytes()) {
            let _ = SipUri::parse(&s);
        }
    }

    #[test]
    fn host_ends_only_at_port_params_or_headers() {
        assert_eq!(SipUri::parse(b"sip:a@h.example").unwrap().host, "h.example");
        assert_eq!(SipUri::parse(b"sip:h;lr").unwrap().host, "h");
        assert_eq!(SipUri::parse(b"sip:h?x=1").unwrap().host, "h");
        assert!(SipUri::parse(b"sip:a@h/x").is_err());
        assert!(SipUri::parse(b"sip:a@:5060").is_err());
        assert!(SipUri::parse(b"sip:a@h%41").is_err());
    }

    #[test]
    fn parses_common_forms() {
        let u = SipUri::parse(b"sip:alice@192.0.2.1:5070;transport=tcp;lr").unwrap();
        assert_eq!(u.user, Some(&b"alice"[..]));
        assert_eq!(u.host, "192.0.2.1");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.transport().unwrap(), Transport::Tcp);
        assert!(u.lr());
        let u = SipUri::parse(b"sips:[2001:db8::10]:5061").unwrap();
        assert_eq!(u.host, "2001:db8::10");
        assert_eq!(u.transport().unwrap(), Transport::Tls);
    }

    #[test]
    fn user_with_semicolon() {
        let u = SipUri::parse(b"sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.host, "example.com");
        assert_eq!(u.user, Some(&b"user;par=u%40example.net"[..]));
        assert!(u.param("par").is_none());
    }

    #[test]
    fn rejects_bad_forms() {
        assert!(SipUri::parse(b"<sip:a@b>").is_err());
        assert!(SipUri::parse(b"sip:a@b; lr").is_err());
        assert!(SipUri::parse(b"sip:a@b:99999").is_err());
        assert!(SipUri::parse(b"sip:@b").is_err());
        assert!(SipUri::parse(b"sip:a@").is_err());
        assert_eq!(scheme_of(b"soap.beep://x"), Ok(Scheme::Other));
        assert_eq!(scheme_of(b"tel:+1234"), Ok(Scheme::Tel));
    }

    #[test]
    fn headers_flagged() {
        let u = SipUri::parse(b"sip:a@b?Route=%3Csip:x%3E").unwrap();
        assert!(u.has_headers);
    }
}
