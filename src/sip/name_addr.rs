//! name-addr / addr-spec values (RFC 3261 section 25.1): finding the URI in a From, To,
//! Contact, Route or Record-Route value, and header parameters after it, without parsing
//! the whole value.

use std::ops::Range;

use crate::sip::syntax::{self, eq_ic};

/// Positions of the `<` and `>` of the first bracketed URI outside quoted strings.
pub fn angle_span(v: &[u8]) -> Option<(usize, usize)> {
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

/// A header parameter (after the name-addr or addr-spec) of a From/To/Contact-like value.
pub fn header_param<'a>(v: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    v.get(header_param_range(v, name)?)
}

/// Where [`header_param`] finds its value in `v`.
pub fn header_param_range(v: &[u8], name: &[u8]) -> Option<Range<usize>> {
    // Parameters start after `>` when the URI is bracketed, else at the first `;`.
    let params_from = match angle_span(v) {
        Some((_, close)) => close + 1,
        None => memchr::memchr(b';', v)?,
    };
    let params = syntax::parse_params(v, params_from..v.len())?;
    params.into_iter().find_map(|p| {
        if eq_ic(v.get(p.name)?, name) {
            p.value
        } else {
            None
        }
    })
}

/// The URI inside a name-addr (`"x" <sip:...>;p`) or an addr-spec.
pub fn name_addr_uri(v: &[u8]) -> Option<&[u8]> {
    match angle_span(v) {
        Some((open, close)) => v.get(open + 1..close).map(syntax::trim),
        None => {
            if v.contains(&b'<') {
                return None;
            }
            let end = memchr::memchr(b';', v).unwrap_or(v.len());
            v.get(..end).map(syntax::trim).filter(|u| !u.is_empty())
        }
    }
}
