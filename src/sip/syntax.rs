//! Small lexical helpers shared by the header parsers (RFC 3261 section 25.1).
//!
//! They work on byte slices and ranges into them, never allocate (but for the `Vec` the
//! compatibility helper [`split_list`] returns), and never panic on any input: every index
//! is checked. Folded header values (CRLF followed by white space) are handled by treating
//! CR and LF as linear white space, so no unfolding copy is needed.
//!
//! The scanners jump between the bytes that matter (quotes, brackets, the delimiter) with
//! `memchr` rather than looking at every byte, and character classes are one table lookup.

use std::ops::Range;

/// Class bit: RFC 3261 `token` character.
const TOKEN: u8 = 1;
/// Class bit: linear white space (SP, HTAB, CR, LF).
const LWS: u8 = 2;
/// Class bit: a host name character (alphanumeric, `-`, `.`, `_`).
const HOST: u8 = 4;
/// Class bit: an IPv6 reference character (hex digit, `:`, `.`).
const V6: u8 = 8;
/// Class bit: a URI scheme character after the first (alphanumeric, `+`, `-`, `.`).
const SCHEME: u8 = 16;
/// Class bit: a byte that cannot appear in a URI as written in a message (controls, SP,
/// DEL, `<`, `>`).
const NOT_URI: u8 = 32;

/// The class bits of every byte value.
static CLASS: [u8; 256] = classes();

// Evaluated at compile time (a bad index would fail the build, not panic at run time).
#[allow(clippy::indexing_slicing)]
const fn classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0usize;
    while i < 256 {
        let b = i as u8;
        let alnum = b.is_ascii_alphanumeric();
        let mut c = 0u8;
        if alnum
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            )
        {
            c |= TOKEN;
        }
        if matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
            c |= LWS;
        }
        if alnum || matches!(b, b'-' | b'.' | b'_') {
            c |= HOST;
        }
        if b.is_ascii_hexdigit() || b == b':' || b == b'.' {
            c |= V6;
        }
        if alnum || matches!(b, b'+' | b'-' | b'.') {
            c |= SCHEME;
        }
        if b <= b' ' || b == 0x7f || b == b'<' || b == b'>' {
            c |= NOT_URI;
        }
        t[i] = c;
        i += 1;
    }
    t
}

#[inline(always)]
fn class(b: u8) -> u8 {
    // A u8 always indexes a 256-entry table: the check compiles away.
    CLASS.get(usize::from(b)).copied().unwrap_or(0)
}

/// Linear white space as it can appear inside a (possibly folded) header value.
#[inline]
pub fn is_lws(b: u8) -> bool {
    class(b) & LWS != 0
}

/// RFC 3261 `token` characters.
#[inline]
pub fn is_token_char(b: u8) -> bool {
    class(b) & TOKEN != 0
}

/// Host name characters as this parser accepts them: alphanumerics, `-`, `.` and `_`.
#[inline]
pub fn is_host_char(b: u8) -> bool {
    class(b) & HOST != 0
}

/// Characters of an IPv6 reference between its brackets: hex digits, `:` and `.`.
#[inline]
pub fn is_v6_char(b: u8) -> bool {
    class(b) & V6 != 0
}

/// Characters of a URI scheme after its first letter: alphanumerics, `+`, `-` and `.`.
#[inline]
pub fn is_scheme_char(b: u8) -> bool {
    class(b) & SCHEME != 0
}

/// Bytes that cannot be part of a URI written in a message: controls, SP, DEL, `<`, `>`.
/// (The table's answer, which [`has_not_uri_char`] is checked against.)
#[cfg(test)]
pub fn is_not_uri_char(b: u8) -> bool {
    class(b) & NOT_URI != 0
}

/// Whether any byte of `s` cannot be part of a URI (controls, SP, DEL, `<`, `>`). Compares
/// rather than looks up, and has no early exit, so that it runs many bytes at a time.
#[inline]
pub fn has_not_uri_char(s: &[u8]) -> bool {
    s.iter().fold(false, |bad, &b| {
        bad | (b <= b' ') | (b == 0x7f) | (b == b'<') | (b == b'>')
    })
}

/// Whether `s` is a non-empty RFC 3261 token.
#[inline]
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_token_char(b))
}

/// The range of `s` within `r` with leading and trailing LWS removed.
#[inline]
pub fn trim_range(s: &[u8], r: Range<usize>) -> Range<usize> {
    let start = r.start.min(s.len());
    let end = r.end.min(s.len()).max(start);
    let inner = s.get(start..end).unwrap_or_default();
    let lead = inner.iter().take_while(|&&b| is_lws(b)).count();
    if lead == inner.len() {
        return end..end;
    }
    let trail = inner.iter().rev().take_while(|&&b| is_lws(b)).count();
    start + lead..end - trail
}

/// `s` with leading and trailing LWS removed.
#[inline]
pub fn trim(s: &[u8]) -> &[u8] {
    let r = trim_range(s, 0..s.len());
    s.get(r).unwrap_or_default()
}

/// Position just after the `"` that closes a quoted string whose content starts at
/// `from` (a backslash escapes the byte after it); `None` when it is never closed.
#[inline]
fn after_quote(s: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let at = from + memchr::memchr2(b'"', b'\\', s.get(from..)?)?;
        if s.get(at) == Some(&b'"') {
            return Some(at + 1);
        }
        from = at + 2;
    }
}

/// Position of the first `delim` in `s[from..end]` that is outside quoted strings and
/// `<...>`, scanning with no quote or bracket open at `from`. A quoted string or bracket
/// left open hides every later delimiter.
#[inline]
fn next_delim(s: &[u8], from: usize, end: usize, delim: u8) -> Option<usize> {
    let s = s.get(..end.min(s.len()))?;
    let mut i = from;
    let mut in_angle = false;
    loop {
        let rest = s.get(i..)?;
        let at = i + if in_angle {
            memchr::memchr2(b'"', b'>', rest)?
        } else {
            memchr::memchr3(b'"', b'<', delim, rest)?
        };
        match s.get(at) {
            Some(b'"') => i = after_quote(s, at + 1)?,
            Some(b'<') => {
                in_angle = true;
                i = at + 1;
            }
            Some(b'>') => {
                in_angle = false;
                i = at + 1;
            }
            _ => return Some(at),
        }
    }
}

/// The elements of a list header value, see [`list`].
#[derive(Debug, Clone)]
pub struct List<'a> {
    s: &'a [u8],
    pos: usize,
    done: bool,
}

impl Iterator for List<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        if self.done {
            return None;
        }
        let len = self.s.len();
        let end = match next_delim(self.s, self.pos, len, b',') {
            Some(comma) => comma,
            None => {
                self.done = true;
                len
            }
        };
        let r = trim_range(self.s, self.pos..end);
        self.pos = end + 1;
        Some(r)
    }
}

/// Iterates over the elements of a header value split on the commas that separate list
/// elements: commas inside a quoted string or inside `<...>` do not count. Elements are
/// trimmed ranges into `s`; empty elements are yielded as empty ranges so that callers can
/// reject `a,,b`. There is always at least one element.
#[inline]
pub fn list(s: &[u8]) -> List<'_> {
    List {
        s,
        pos: 0,
        done: false,
    }
}

/// [`list`] collected (kept for callers that want a `Vec`).
pub fn split_list(s: &[u8]) -> Vec<Range<usize>> {
    list(s).collect()
}

/// One `;name[=value]` parameter, as ranges into the slice it was found in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The name, trimmed.
    pub name: Range<usize>,
    /// The value, trimmed, if an `=` was present.
    pub value: Option<Range<usize>>,
}

/// A parameter list that does not follow the grammar (see [`params`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadParams;

/// The parameters of a `;a=b;c` text, see [`params`].
#[derive(Debug, Clone)]
pub struct Params<'a> {
    s: &'a [u8],
    /// Start of the next parameter; `None` once finished.
    pos: Option<usize>,
    end: usize,
    bad: bool,
}

impl Iterator for Params<'_> {
    type Item = Result<Param, BadParams>;

    #[inline]
    fn next(&mut self) -> Option<Result<Param, BadParams>> {
        if self.bad {
            self.bad = false;
            self.pos = None;
            return Some(Err(BadParams));
        }
        let start = self.pos?;
        if let Some((p, stop)) = plain_param(self.s, start, self.end) {
            self.pos = (stop < self.end).then_some(stop + 1);
            return Some(Ok(p));
        }
        let end = match next_delim(self.s, start, self.end, b';') {
            Some(semi) => {
                self.pos = Some(semi + 1);
                semi
            }
            None => {
                self.pos = None;
                self.end
            }
        };
        match param_at(self.s, start, end) {
            Some(p) => Some(Ok(p)),
            None => {
                self.pos = None;
                Some(Err(BadParams))
            }
        }
    }
}

/// The common `token` or `token=token` parameter at `start`, directly followed by `;` or
/// `end`, and where it stops; `None` for any other form (LWS, quotes, brackets, errors),
/// which the general path then reads (to the same result for the common forms).
#[inline]
fn plain_param(s: &[u8], start: usize, end: usize) -> Option<(Param, usize)> {
    let region = s.get(start..end)?;
    let name_len = region
        .iter()
        .position(|&b| !is_token_char(b))
        .unwrap_or(region.len());
    if name_len == 0 {
        return None;
    }
    let name = start..start + name_len;
    match region.get(name_len) {
        None => Some((Param { name, value: None }, end)),
        Some(b';') => Some((Param { name, value: None }, start + name_len)),
        Some(b'=') => {
            let rest = region.get(name_len + 1..)?;
            let value_len = rest
                .iter()
                .position(|&b| !is_token_char(b))
                .unwrap_or(rest.len());
            if value_len == 0 {
                return None;
            }
            let value_start = start + name_len + 1;
            let value = Some(value_start..value_start + value_len);
            match rest.get(value_len) {
                None => Some((Param { name, value }, end)),
                Some(b';') => Some((Param { name, value }, value_start + value_len)),
                Some(_) => None,
            }
        }
        Some(_) => None,
    }
}

/// The parameter in `s[start..end]` (between `;` and the next one): a token name, then
/// `=` and a non-empty value or nothing, LWS allowed around each; `None` when malformed.
#[inline]
fn param_at(s: &[u8], start: usize, end: usize) -> Option<Param> {
    let mut i = start;
    while i < end && s.get(i).is_some_and(|&b| is_lws(b)) {
        i += 1;
    }
    let name_start = i;
    while i < end && s.get(i).is_some_and(|&b| is_token_char(b)) {
        i += 1;
    }
    let name = name_start..i;
    if name.is_empty() {
        return None;
    }
    while i < end && s.get(i).is_some_and(|&b| is_lws(b)) {
        i += 1;
    }
    if i >= end {
        return Some(Param { name, value: None });
    }
    if s.get(i) != Some(&b'=') {
        return None;
    }
    let value = trim_range(s, i + 1..end);
    if value.is_empty() {
        return None;
    }
    Some(Param {
        name,
        value: Some(value),
    })
}
/// Iterates over the parameters of `;a=b;c` (the leading `;` included) in `s[r]`, as
/// ranges into `s`. Yields one `Err` and stops when the text does not start with `;`, or
/// when a parameter has an empty or non-token name, or a `=` with nothing after it. An
/// empty (or all LWS) range has no parameters.
pub fn params(s: &[u8], r: Range<usize>) -> Params<'_> {
    let r = trim_range(s, r);
    let mut it = Params {
        s,
        pos: None,
        end: r.end,
        bad: false,
    };
    if !r.is_empty() {
        if s.get(r.start) == Some(&b';') {
            it.pos = Some(r.start + 1);
        } else {
            it.bad = true;
        }
    }
    it
}

/// Parses `;a=b;c` (the leading `;` included) into parameters. Returns `None` when a
/// parameter has an empty or non-token name, or a `=` with nothing after it.
#[cfg(test)]
pub fn parse_params(s: &[u8], r: Range<usize>) -> Option<Vec<Param>> {
    params(s, r).collect::<Result<Vec<_>, _>>().ok()
}

/// The value of the first parameter named `name` (ASCII case-insensitive) in `s[r]` that
/// has a value, as collecting [`params`] and searching would find it: `None` when the
/// list does not parse, or when no parameter of that name has a value.
pub fn param_value(s: &[u8], r: Range<usize>, name: &[u8]) -> Option<Range<usize>> {
    let mut found = None;
    for p in params(s, r) {
        let p = p.ok()?;
        if found.is_none()
            && p.value.is_some()
            && s.get(p.name.clone()).is_some_and(|n| eq_ic(n, name))
        {
            found = p.value;
        }
    }
    found
}

/// Where a parameter was found by [`scan_params`]: `None` absent, `Some(None)` a flag,
/// `Some(Some(r))` a value at `r`.
pub type Slot = Option<Option<Range<usize>>>;

/// Checks the whole parameter list in `s[r]` as [`params`] does and notes, for each of
/// `names` (lower case; compared ignoring ASCII case), where its first occurrence is.
pub fn scan_params<const N: usize>(
    s: &[u8],
    r: Range<usize>,
    names: &[&[u8]; N],
) -> Result<[Slot; N], BadParams> {
    let mut slots: [Slot; N] = std::array::from_fn(|_| None);
    for p in params(s, r) {
        let Param { name, value } = p?;
        let name = s.get(name).unwrap_or_default();
        if let Some(slot) = slot_of(names, name).and_then(|i| slots.get_mut(i)) {
            if slot.is_none() {
                *slot = Some(value);
            }
        }
    }
    Ok(slots)
}

/// The index in `names` (lower case) of `name`, compared ignoring ASCII case.
#[inline]
pub fn slot_of<const N: usize>(names: &[&[u8]; N], name: &[u8]) -> Option<usize> {
    names.iter().position(|n| eq_lower(name, n))
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

/// `s` as a string, `None` when it is not UTF-8: what `std::str::from_utf8(s).ok()` gives,
/// without its cost on the short ASCII texts (hosts, transports, branches) read from
/// every message.
#[inline]
pub fn ascii_str(s: &[u8]) -> Option<&str> {
    if s.is_ascii() {
        // SAFETY: every ASCII byte sequence is valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(s) })
    } else {
        std::str::from_utf8(s).ok()
    }
}

/// Whether `s` equals `lower` ignoring ASCII case, for a `lower` already in lower case
/// (header and parameter names): the same answer as [`eq_ic`], in fewer instructions (one
/// side folded, no early exit, so a constant `lower` unrolls).
#[inline(always)]
pub fn eq_lower(s: &[u8], lower: &[u8]) -> bool {
    s.len() == lower.len()
        && s.iter().zip(lower).fold(0u8, |diff, (&b, &l)| {
            // Only a letter may differ by the case bit.
            let fold = if l.is_ascii_lowercase() { 0x20 } else { 0 };
            diff | ((b | fold) ^ l)
        }) == 0
}

/// Whether the two byte strings are equal ignoring ASCII case.
#[inline]
pub fn eq_ic(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests;
