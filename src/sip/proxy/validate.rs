//! Request validation (RFC 3261 section 16.3 step 1 and section 8.2): the header checks a
//! proxy makes before it forwards anything. Owns only the syntax checks; Max-Forwards, loop
//! detection and Proxy-Require are steps of [`super::decide`].

use std::borrow::Cow;

use crate::sip::message::{HeaderName, Message, Method};
use crate::sip::via::{Via, MAGIC_COOKIE};

use super::Reject;

/// Header checks of RFC 3261 section 16.3 step 1 and section 8.2.
pub(super) fn check_headers(msg: &Message, via: &Via<'_>) -> Result<(), Reject> {
    // One pass over the header index counts what must appear exactly once.
    let mut counts = [0usize; 5];
    for h in msg.headers() {
        let slot = match h.name {
            HeaderName::From => 0,
            HeaderName::To => 1,
            HeaderName::CallId => 2,
            HeaderName::CSeq => 3,
            HeaderName::MaxForwards => 4,
            _ => continue,
        };
        if let Some(c) = counts.get_mut(slot) {
            *c += 1;
        }
    }
    let [from, to, call_id, cseq, max_forwards] = counts;
    for (count, what) in [
        (from, "From"),
        (to, "To"),
        (call_id, "Call-ID"),
        (cseq, "CSeq"),
    ] {
        match count {
            1 => {}
            0 => {
                return Err(Reject {
                    code: 400,
                    reason: Cow::Owned(format!("Missing {what}")),
                    extra: Vec::new(),
                })
            }
            _ => {
                return Err(Reject {
                    code: 400,
                    reason: Cow::Owned(format!("Multiple {what}")),
                    extra: Vec::new(),
                })
            }
        }
    }
    if max_forwards > 1 {
        return Err(Reject::new(400, "Multiple Max-Forwards"));
    }
    for name in [HeaderName::From, HeaderName::To] {
        if let Some(h) = msg.first(name) {
            if !name_addr_ok(msg.value(h)) {
                return Err(Reject::new(400, "Malformed From or To"));
            }
        }
    }
    for h in msg.all(HeaderName::Contact) {
        let v = msg.value(h);
        if crate::sip::syntax::trim(v) == b"*" {
            continue;
        }
        if !crate::sip::syntax::list(v).all(|r| name_addr_ok(v.get(r).unwrap_or_default())) {
            return Err(Reject::new(400, "Malformed Contact"));
        }
    }
    if msg.call_id().is_some_and(|c| c.is_empty()) {
        return Err(Reject::new(400, "Malformed Call-ID"));
    }
    let Some((_, cseq_method)) = msg.cseq() else {
        return Err(Reject::new(400, "Malformed CSeq"));
    };
    if Some(&cseq_method) != msg.method() {
        return Err(match msg.method() {
            Some(Method::Other(_)) => Reject::new(501, "Not Implemented"),
            _ => Reject::new(400, "CSeq Method Does Not Match"),
        });
    }
    let branch = via.branch().unwrap_or_default();
    if branch == MAGIC_COOKIE {
        return Err(Reject::new(400, "Missing Transaction Identifier"));
    }
    // The top Via is `via`, parsed already; the others are checked here. A request that
    // has not passed through another proxy has no other (one Via line, one value).
    let mut via_lines = msg.all(HeaderName::Via);
    let single = via_lines.next().is_some_and(|h| {
        let v = msg.value(h);
        crate::sip::syntax::list(v).nth(1).is_none()
    }) && via_lines.next().is_none();
    if !single {
        for v in msg.list_values(HeaderName::Via).into_iter().skip(1) {
            if Via::parse(msg.slice(v)).is_err() {
                return Err(Reject::new(400, "Malformed Via"));
            }
        }
    }
    Ok(())
}

/// A From/To/Contact value: quotes balanced; a display name that is not quoted is tokens
/// and spaces only; no white space just inside `<` and `>`; an addr-spec without `<>` has
/// no `?headers` (RFC 3261 section 20 and RFC 4475 sections 3.1.2.13-15). The URI must be
/// there as `name_addr_uri` finds it.
///
/// One scan finds the first `<...>` outside quoted strings and whether the quotes balance
/// (the checks every request's From and To get).
fn name_addr_ok(v: &[u8]) -> bool {
    use crate::sip::syntax::{is_lws, is_token_char, trim};
    let Some(Scan { angle, balanced }) = scan(v) else {
        return false;
    };
    if !balanced {
        return false;
    }
    match angle {
        Some((open, close)) => {
            let uri_ok = v.get(open + 1..close).is_some();
            let display = trim(v.get(..open).unwrap_or_default());
            let display_ok = display.first() == Some(&b'"')
                || display.iter().all(|&b| is_token_char(b) || is_lws(b));
            let first = v.get(open + 1).copied().unwrap_or(b'>');
            let last = close
                .checked_sub(1)
                .and_then(|i| v.get(i))
                .copied()
                .unwrap_or(b'<');
            uri_ok && display_ok && !is_lws(first) && !is_lws(last)
        }
        None => {
            // An addr-spec: no `<` at all, a URI up to the first `;`, without `?`.
            if memchr::memchr(b'<', v).is_some() {
                return false;
            }
            let end = memchr::memchr(b';', v).unwrap_or(v.len());
            let uri = trim(v.get(..end).unwrap_or_default());
            !uri.is_empty() && !uri.contains(&b'?')
        }
    }
}

/// What one pass over a name-addr value finds.
struct Scan {
    /// The first `<` outside quotes and the first `>` after it (as `angle_span`).
    angle: Option<(usize, usize)>,
    /// Whether every quoted string is closed.
    balanced: bool,
}

/// Scans `v` once, jumping between the bytes that matter (`"`, `\`, `<`, `>`).
fn scan(v: &[u8]) -> Option<Scan> {
    let mut open = None;
    let mut i = 0;
    loop {
        let rest = v.get(i..)?;
        // Outside a quoted string: the next quote or bracket.
        let Some(at) = memchr::memchr3(b'"', b'<', b'>', rest) else {
            let angle = None;
            return Some(Scan {
                angle,
                balanced: true,
            });
        };
        i += at;
        match v.get(i) {
            Some(b'"') => {
                // Inside: up to the closing quote, skipping escaped characters.
                i += 1;
                loop {
                    let rest = v.get(i..)?;
                    let Some(at) = memchr::memchr2(b'"', b'\\', rest) else {
                        return Some(Scan {
                            angle: None,
                            balanced: false,
                        });
                    };
                    i += at;
                    if v.get(i) == Some(&b'"') {
                        i += 1;
                        break;
                    }
                    i += 2;
                    if i > v.len() {
                        return Some(Scan {
                            angle: None,
                            balanced: false,
                        });
                    }
                }
            }
            Some(b'<') => {
                if open.is_none() {
                    open = Some(i);
                }
                i += 1;
            }
            _ => {
                if let Some(o) = open {
                    // The URI is found; the rest only has to balance its quotes.
                    let balanced = quotes_balanced(v.get(i..)?);
                    return Some(Scan {
                        angle: Some((o, i)),
                        balanced,
                    });
                }
                i += 1;
            }
        }
    }
}

fn quotes_balanced(v: &[u8]) -> bool {
    let mut in_quote = false;
    let mut escaped = false;
    for &b in v {
        if escaped {
            escaped = false;
        } else if in_quote && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            in_quote = !in_quote;
        }
    }
    !in_quote
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks as they were written before [`scan`]: three passes.
    fn name_addr_ok_reference(v: &[u8]) -> bool {
        use crate::sip::syntax::{is_lws, is_token_char, trim};
        let Some(uri) = crate::sip::message::name_addr_uri(v).filter(|_| quotes_balanced(v)) else {
            return false;
        };
        match crate::sip::message::angle_span(v) {
            Some((open, close)) => {
                let display = trim(v.get(..open).unwrap_or_default());
                let display_ok = display.first() == Some(&b'"')
                    || display.iter().all(|&b| is_token_char(b) || is_lws(b));
                let first = v.get(open + 1).copied().unwrap_or(b'>');
                let last = close
                    .checked_sub(1)
                    .and_then(|i| v.get(i))
                    .copied()
                    .unwrap_or(b'<');
                display_ok && !is_lws(first) && !is_lws(last)
            }
            None => !uri.contains(&b'?'),
        }
    }

    #[test]
    fn one_scan_agrees_with_the_three_passes() {
        let cases: &[&[u8]] = &[
            b"<sip:a@b>;tag=1",
            b"\"A \\\"x\\\" B\" <sip:a@b>;tag=1",
            b"\"unclosed <sip:a@b>",
            b"sip:a@b;tag=2",
            b"sip:a@b?x=y",
            b"Bob <sip:b@c>",
            b"Bob Smith <sip:b@c>",
            b"B@b <sip:b@c>",
            b"< sip:a@b>",
            b"<sip:a@b >",
            b"<sip:a@b",
            b"sip:a@b>",
            b"\"a<b>\" <sip:x@y>;p=\"q\"",
            b"<sip:x@y>;p=\"unclosed",
            b"\"\\",
            b"\"x\\\"",
            b"",
            b"   ",
            b";tag=1",
            b"<>",
            b"<sip:a@b> <sip:c@d>",
            b"\"\" <sip:a@b>",
            b"x <sip:a@b>>",
            b"x >< <sip:a@b>",
        ];
        for v in cases {
            assert_eq!(
                name_addr_ok(v),
                name_addr_ok_reference(v),
                "{}",
                String::from_utf8_lossy(v)
            );
        }
    }
}
