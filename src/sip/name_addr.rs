//! name-addr / addr-spec values (RFC 3261 section 25.1): finding the URI in a From, To,
//! Contact, Route or Record-Route value, and header parameters after it, without parsing
//! the whole value.

use std::ops::Range;

use crate::sip::syntax;

/// Positions of the `<` and `>` of the first bracketed URI outside quoted strings.
pub fn angle_span(v: &[u8]) -> Option<(usize, usize)> {
    // Jumps between the bytes that matter: outside a quoted string `"` and the bracket
    // looked for; inside one `"` and `\` (which escapes the byte after it).
    let mut i = 0;
    let mut open = None;
    loop {
        let rest = v.get(i..)?;
        let want = if open.is_none() { b'<' } else { b'>' };
        let at = i + memchr::memchr2(b'"', want, rest)?;
        if v.get(at) == Some(&b'"') {
            i = at + 1;
            loop {
                let q = i + memchr::memchr2(b'"', b'\\', v.get(i..)?)?;
                if v.get(q) == Some(&b'"') {
                    i = q + 1;
                    break;
                }
                i = q + 2;
            }
        } else if let Some(o) = open {
            return Some((o, at));
        } else {
            open = Some(at);
            i = at + 1;
        }
    }
}

/// A header parameter (after the name-addr or addr-spec) of a From/To/Contact-like value.
pub fn header_param<'a>(v: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    v.get(header_param_range(v, name)?)
}

/// Where [`header_param`] finds its value in `v`: the first parameter of that name that
/// has a value, provided the whole parameter list parses.
pub fn header_param_range(v: &[u8], name: &[u8]) -> Option<Range<usize>> {
    // Parameters start after `>` when the URI is bracketed, else at the first `;`.
    let params_from = match angle_span(v) {
        Some((_, close)) => close + 1,
        None => memchr::memchr(b';', v)?,
    };
    syntax::param_value(v, params_from..v.len(), name)
}

/// The URI inside a name-addr (`"x" <sip:...>;p`) or an addr-spec.
pub fn name_addr_uri(v: &[u8]) -> Option<&[u8]> {
    match angle_span(v) {
        Some((open, close)) => v.get(open + 1..close).map(syntax::trim),
        None => {
            if memchr::memchr(b'<', v).is_some() {
                return None;
            }
            let end = memchr::memchr(b';', v).unwrap_or(v.len());
            v.get(..end).map(syntax::trim).filter(|u| !u.is_empty())
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The byte-at-a-time scanner `angle_span` replaced.
    fn angle_span_ref(v: &[u8]) -> Option<(usize, usize)> {
        let mut in_quote = false;
        let mut escaped = false;
        let mut open = None;
        for (i, &b) in v.iter().enumerate() {
            if escaped {
                escaped = false;
                continue;
            }
            match b {
                b'\\' if in_quote => escaped = true,
                b'"' => in_quote = !in_quote,
                b'<' if !in_quote && open.is_none() => open = Some(i),
                b'>' if !in_quote => {
                    if let Some(o) = open {
                        return Some((o, i));
                    }
                }
                _ => {}
            }
        }
        None
    }

    #[test]
    fn spans_quotes_and_escapes() {
        let cases: &[&[u8]] = &[
            br#""A <b>" <sip:x@y;lr>;p=1"#,
            br#""a\"<" <sip:x>"#,
            br#""a\\" <sip:x>"#,
            br#"> <sip:x> >"#,
            br#"<sip:"x>">"#,
            br#""unclosed <sip:x>"#,
            b"sip:x@y",
            b"<<sip:x>>",
            b"\"\\",
        ];
        for v in cases {
            assert_eq!(
                angle_span(v),
                angle_span_ref(v),
                "{}",
                String::from_utf8_lossy(v)
            );
        }
        assert_eq!(angle_span(br#""a\"<" <sip:x>"#), Some((7, 13)));
    }

    #[test]
    fn params_after_the_uri() {
        assert_eq!(header_param(b"sip:x@y;tag=1", b"tag"), Some(&b"1"[..]));
        assert_eq!(
            header_param(b"<sip:x@y;tag=no>;tag=2", b"tag"),
            Some(&b"2"[..])
        );
        assert_eq!(header_param(b"<sip:x@y>;TAG=3 ;x", b"tag"), Some(&b"3"[..]));
        assert_eq!(header_param(b"<sip:x@y>;tag=3;;", b"tag"), None);
        assert_eq!(header_param(b"<sip:x@y>", b"tag"), None);
        assert_eq!(header_param(b"\"a;tag=1\" <sip:x>", b"tag"), None);
    }

    #[test]
    fn uri_of_name_addr_and_addr_spec() {
        assert_eq!(name_addr_uri(b" <sip:x@y> "), Some(&b"sip:x@y"[..]));
        assert_eq!(name_addr_uri(b"sip:x@y;tag=1"), Some(&b"sip:x@y"[..]));
        assert_eq!(name_addr_uri(b"\"a\" <sip:x"), None);
        assert_eq!(name_addr_uri(b";tag=1"), None);
    }

    proptest! {
        #[test]
        fn span_agrees_with_reference(v in proptest::collection::vec(
            prop_oneof![Just(b'"'), Just(b'\\'), Just(b'<'), Just(b'>'), Just(b'a'), any::<u8>()],
            0..30,
        )) {
            prop_assert_eq!(angle_span(&v), angle_span_ref(&v));
        }
    }
}
