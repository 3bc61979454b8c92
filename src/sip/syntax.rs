//! Small lexical helpers shared by the header parsers (RFC 3261 section 25.1).
//!
//! They work on byte slices and ranges into them, never allocate, and never panic on any
//! input: every index is checked. Folded header values (CRLF followed by white space) are
//! handled by treating CR and LF as linear white space, so no unfolding copy is needed.

use std::ops::Range;

/// Linear white space as it can appear inside a (possibly folded) header value.
#[inline]
pub fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// RFC 3261 `token` characters.
#[inline]
pub fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// Whether `s` is a non-empty RFC 3261 token.
#[inline]
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_token_char(b))
}

/// The range of `s` within `r` with leading and trailing LWS removed.
#[inline]
pub fn trim_range(s: &[u8], r: Range<usize>) -> Range<usize> {
    let mut start = r.start.min(s.len());
    let mut end = r.end.min(s.len()).max(start);
    while start < end && s.get(start).is_some_and(|&b| is_lws(b)) {
        start += 1;
    }
    while end > start && s.get(end - 1).is_some_and(|&b| is_lws(b)) {
        end -= 1;
    }
    start..end
}

/// `s` with leading and trailing LWS removed.
#[inline]
pub fn trim(s: &[u8]) -> &[u8] {
    let r = trim_range(s, 0..s.len());
    s.get(r).unwrap_or_default()
}

/// Splits a header value on the commas that separate list elements: commas inside a
/// quoted string or inside `<...>` do not count. Elements are trimmed; empty elements are
/// returned as empty ranges so that callers can reject `a,,b`.
pub fn split_list(s: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(2);
    let mut start = 0;
    let mut in_quote = false;
    let mut in_angle = false;
    let mut i = 0;
    while i < s.len() {
        let b = s.get(i).copied().unwrap_or(0);
        if in_quote {
            if b == b'\\' {
                i += 1;
            } else if b == b'"' {
                in_quote = false;
            }
        } else {
            match b {
                b'"' => in_quote = true,
                b'<' => in_angle = true,
                b'>' => in_angle = false,
                b',' if !in_angle => {
                    out.push(trim_range(s, start..i));
                    start = i + 1;
                }
                _ => {}
            }
        }
        i += 1;
    }
    out.push(trim_range(s, start..s.len()));
    out
}

/// Position of the first `needle` in `s` at or after `from` that is outside quotes and
/// angle brackets.
pub fn find_unquoted(s: &[u8], from: usize, needle: u8) -> Option<usize> {
    let mut in_quote = false;
    let mut in_angle = false;
    let mut i = from;
    while i < s.len() {
        let b = s.get(i).copied().unwrap_or(0);
        if in_quote {
            if b == b'\\' {
                i += 1;
            } else if b == b'"' {
                in_quote = false;
            }
        } else if b == b'"' {
            in_quote = true;
        } else if b == b'<' {
            in_angle = true;
        } else if b == b'>' {
            in_angle = false;
        } else if b == needle && !in_angle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// One `;name[=value]` parameter, as ranges into the slice it was found in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The name, trimmed.
    pub name: Range<usize>,
    /// The value, trimmed, if an `=` was present.
    pub value: Option<Range<usize>>,
}

/// Parses `;a=b;c` (the leading `;` included) into parameters. Returns `None` when a
/// parameter has an empty or non-token name, or a `=` with nothing after it.
pub fn parse_params(s: &[u8], r: Range<usize>) -> Option<Vec<Param>> {
    let mut out = Vec::new();
    let r = trim_range(s, r);
    if r.is_empty() {
        return Some(out);
    }
    if s.get(r.start) != Some(&b';') {
        return None;
    }
    let body = r.start + 1..r.end;
    let mut start = body.start;
    loop {
        let end = find_unquoted(s, start, b';')
            .filter(|&p| p < body.end)
            .unwrap_or(body.end);
        let piece = trim_range(s, start..end);
        let (name, value) = match find_byte(s, piece.clone(), b'=') {
            Some(eq) => (
                trim_range(s, piece.start..eq),
                Some(trim_range(s, eq + 1..piece.end)),
            ),
            None => (piece, None),
        };
        if !is_token(s.get(name.clone())?) {
            return None;
        }
        if let Some(v) = &value {
            if v.is_empty() {
                return None;
            }
        }
        out.push(Param { name, value });
        if end >= body.end {
            break;
        }
        start = end + 1;
    }
    Some(out)
}

/// Position of `needle` within `r` of `s`.
#[inline]
pub fn find_byte(s: &[u8], r: Range<usize>, needle: u8) -> Option<usize> {
    let slice = s.get(r.clone())?;
    memchr::memchr(needle, slice).map(|p| p + r.start)
}

/// Parses a decimal number of at most `max` value; `None` for empty, non-digit or overflow.
pub fn parse_u32(s: &[u8], max: u64) -> Option<u32> {
    if s.is_empty() || s.len() > 10 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(b - b'0');
    }
    if v > max {
        return None;
    }
    u32::try_from(v).ok()
}

/// Whether the two byte strings are equal ignoring ASCII case.
#[inline]
pub fn eq_ic(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_split_respects_quotes_and_angles() {
        let s = br#""a,b" <sip:x;p=1,2>, <sip:y> ,z"#;
        let parts: Vec<&[u8]> = split_list(s).into_iter().map(|r| &s[r]).collect();
        assert_eq!(
            parts,
            vec![&br#""a,b" <sip:x;p=1,2>"#[..], b"<sip:y>", b"z"]
        );
    }

    #[test]
    fn params_parse_and_reject_empty() {
        let s = b";branch=z9hG4bK1 ; rport;received=1.2.3.4";
        let p = parse_params(s, 0..s.len()).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(&s[p[1].name.clone()], b"rport");
        assert!(p[1].value.is_none());
        assert!(parse_params(b";;a", 0..3).is_none());
        assert!(parse_params(b";a=", 0..3).is_none());
    }

    #[test]
    fn numbers() {
        assert_eq!(
            parse_u32(b"4294967295", u64::from(u32::MAX)),
            Some(u32::MAX)
        );
        assert_eq!(parse_u32(b"4294967296", u64::from(u32::MAX)), None);
        assert_eq!(parse_u32(b"-1", 100), None);
        assert_eq!(parse_u32(b"", 100), None);
    }
}
