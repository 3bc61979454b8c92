//! Request validation (RFC 3261 section 16.3 step 1 and section 8.2): the header checks a
//! proxy makes before it forwards anything. Owns only the syntax checks; Max-Forwards, loop
//! detection and Proxy-Require are steps of [`super::decide`].

use std::borrow::Cow;

use crate::sip::message::{name_addr_uri, HeaderName, Message, Method};
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
        for r in crate::sip::syntax::split_list(v) {
            if !name_addr_ok(v.get(r).unwrap_or_default()) {
                return Err(Reject::new(400, "Malformed Contact"));
            }
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
    let single = via_lines
        .next()
        .is_some_and(|h| crate::sip::syntax::find_unquoted(msg.value(h), 0, b',').is_none())
        && via_lines.next().is_none();
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
/// no `?headers` (RFC 3261 section 20 and RFC 4475 sections 3.1.2.13-15).
fn name_addr_ok(v: &[u8]) -> bool {
    use crate::sip::syntax::{is_lws, is_token_char, trim};
    let Some(uri) = name_addr_uri(v).filter(|_| quotes_balanced(v)) else {
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
