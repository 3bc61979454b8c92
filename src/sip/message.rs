//! SIP messages as a zero-copy header index over the received bytes (RFC 3261 section 7).
//!
//! [`Message::parse`] finds the start line, every header line (folded continuations included)
//! and the body, and records the first defect it meets instead of giving up, so that a
//! request with a bad header can still be answered with a 400 that carries its Via. Typed
//! views ([`Message::top_via`], [`Message::cseq`], ...) parse only the header they are asked
//! for. Everything a proxy does not touch is forwarded as the original bytes.
//!
//! Caps on size and header count are enforced here, before any typed parsing.

use std::ops::Range;

use bytes::Bytes;

use crate::sip::syntax::{self, eq_ic, is_token, list, parse_u32, trim_range};
use crate::sip::via::{Via, ViaError, ViaIndex};

pub use crate::sip::method::Method;
pub use crate::sip::name_addr::{angle_span, header_param, header_param_range, name_addr_uri};

/// A datagram's text parsed with the default caps, for tests (panics on a bad message).
#[cfg(test)]
pub(crate) fn parse_for_test(s: &str) -> Message {
    #[allow(clippy::unwrap_used)]
    Message::parse(
        Bytes::from(s.to_string()),
        Framing::Datagram,
        &Limits::default(),
    )
    .unwrap()
}

/// Caps applied before parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest message, bytes.
    pub max_size: usize,
    /// Most header lines.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_size: 65_535,
            max_headers: 256,
        }
    }
}

/// How many kinds of [`HeaderName`] there are.
const KINDS: usize = HeaderName::Other as usize + 1;

/// No header of that kind (in [`Message`]'s index of first headers).
const NONE: u16 = u16::MAX;

/// Header names a proxy acts on; the rest are [`HeaderName::Other`] and forwarded untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderName {
    /// Via / v
    Via,
    /// Route
    Route,
    /// Record-Route
    RecordRoute,
    /// Max-Forwards
    MaxForwards,
    /// CSeq
    CSeq,
    /// Call-ID / i
    CallId,
    /// From / f
    From,
    /// To / t
    To,
    /// Content-Length / l
    ContentLength,
    /// Proxy-Require
    ProxyRequire,
    /// Proxy-Authorization
    ProxyAuthorization,
    /// Contact / m
    Contact,
    /// Path (RFC 3327)
    Path,
    /// Anything else.
    Other,
}

impl HeaderName {
    /// Classifies a header name, compact forms (RFC 3261 section 7.3.3) included.
    pub fn classify(name: &[u8]) -> HeaderName {
        // The names known are tokens: only a token can be one of them.
        if is_token(name) {
            HeaderName::classify_token(name)
        } else {
            HeaderName::Other
        }
    }

    /// [`HeaderName::classify`] for a name already known to be a token (as
    /// [`Message::parse`] finds them).
    fn classify_token(name: &[u8]) -> HeaderName {
        if name.len() == 1 {
            return match name.first().map(u8::to_ascii_lowercase) {
                Some(b'v') => HeaderName::Via,
                Some(b'i') => HeaderName::CallId,
                Some(b'f') => HeaderName::From,
                Some(b't') => HeaderName::To,
                Some(b'l') => HeaderName::ContentLength,
                Some(b'm') => HeaderName::Contact,
                _ => HeaderName::Other,
            };
        }
        // One candidate per length and first letter, then one comparison with a constant:
        // the case bit set on each byte of the token, which makes an upper-case letter
        // lower case and leaves `-` (the only other character of these names) as it is; no
        // other token character becomes a letter or `-` that way.
        fn is<const N: usize>(name: &[u8], long: &[u8; N]) -> bool {
            let Ok(name): Result<&[u8; N], _> = name.try_into() else {
                return false;
            };
            name.iter()
                .zip(long)
                .fold(0u8, |diff, (&b, &l)| diff | ((b | 0x20) ^ l))
                == 0
        }
        match (name.len(), name.first().map(u8::to_ascii_lowercase)) {
            (2, Some(b't')) if is(name, b"to") => HeaderName::To,
            (3, Some(b'v')) if is(name, b"via") => HeaderName::Via,
            (4, Some(b'c')) if is(name, b"cseq") => HeaderName::CSeq,
            (4, Some(b'f')) if is(name, b"from") => HeaderName::From,
            (4, Some(b'p')) if is(name, b"path") => HeaderName::Path,
            (5, Some(b'r')) if is(name, b"route") => HeaderName::Route,
            (7, Some(b'c')) if is(name, b"call-id") => HeaderName::CallId,
            (7, Some(b'c')) if is(name, b"contact") => HeaderName::Contact,
            (12, Some(b'r')) if is(name, b"record-route") => HeaderName::RecordRoute,
            (12, Some(b'm')) if is(name, b"max-forwards") => HeaderName::MaxForwards,
            (13, Some(b'p')) if is(name, b"proxy-require") => HeaderName::ProxyRequire,
            (14, Some(b'c')) if is(name, b"content-length") => HeaderName::ContentLength,
            (19, Some(b'p')) if is(name, b"proxy-authorization") => HeaderName::ProxyAuthorization,
            _ => HeaderName::Other,
        }
    }
}

/// One indexed header line.
#[derive(Debug, Clone)]
pub struct Header {
    /// What it is.
    pub name: HeaderName,
    /// The whole line(s), name to final CRLF, continuation lines included.
    pub line: Range<usize>,
    /// The value, trimmed (may contain folded CRLF + white space).
    pub value: Range<usize>,
}

/// The first line.
#[derive(Debug, Clone)]
pub enum StartLine {
    /// `METHOD SP Request-URI SP SIP/2.0`
    Request {
        /// The method.
        method: Method,
        /// Request-URI text.
        uri: Range<usize>,
    },
    /// `SIP/2.0 SP code SP reason`
    Response {
        /// Status code, 100..=699.
        code: u16,
        /// Reason phrase text (may be empty).
        reason: Range<usize>,
    },
}

/// Why a request cannot be processed, with the response to send where one can be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defect {
    /// Status code to answer with.
    pub code: u16,
    /// Reason phrase naming the problem.
    pub reason: &'static str,
}

impl Defect {
    const fn bad(reason: &'static str) -> Defect {
        Defect { code: 400, reason }
    }
}

/// The message could not be indexed at all: nothing can be answered, it is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Larger than `limits.max_size`.
    TooLarge,
    /// Nothing but white space.
    Empty,
    /// A response whose status line is malformed (responses are never answered).
    BadStatusLine,
    /// A response with a defect such as a bad Content-Length.
    BadResponse(&'static str),
}

/// How the bytes were delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One UDP datagram: Content-Length, when present, must fit; bytes after it are ignored.
    Datagram,
    /// Cut out of a stream by the framer: the buffer is exactly the message.
    Stream,
}

/// A parsed SIP message: the original bytes plus an index into them.
#[derive(Debug, Clone)]
pub struct Message {
    buf: Bytes,
    start: StartLine,
    /// Range of the start line without its CRLF.
    start_line: Range<usize>,
    headers: Vec<Header>,
    /// Where each kind of header first appears in `headers` (`NONE` when it does not): a
    /// message is asked for its From, To, CSeq, Via, Route... many times on its way.
    firsts: [u16; KINDS],
    body: Range<usize>,
    defect: Option<Defect>,
    /// The top via-parm (its range in `buf`) and its parse, made at the first read: a
    /// request's top Via is read several times on its way through (transaction key,
    /// routing, response address).
    top_via: std::sync::OnceLock<Option<TopVia>>,
    /// The From and To tags' ranges in `buf`, found at the first read (the transaction
    /// key, loop detection and dialog checks all read them).
    tags: std::sync::OnceLock<[Option<Range<usize>>; 2]>,
}

/// The top via-parm's range in the buffer, and its parse.
type TopVia = (Range<usize>, Result<ViaIndex, ViaError>);

impl Message {
    /// Indexes `buf`. Requests with a syntax problem still parse, with [`Message::defect`]
    /// set; responses with one are refused (they are dropped, RFC 3261 section 18.1.2).
    pub fn parse(buf: Bytes, framing: Framing, limits: &Limits) -> Result<Message, ParseError> {
        if buf.len() > limits.max_size {
            return Err(ParseError::TooLarge);
        }
        let s: &[u8] = &buf;
        let mut defect: Option<Defect> = None;
        let mut note = |d: Defect| {
            if defect.is_none() {
                defect = Some(d);
            }
        };
        // Leading CRLFs are ignored (RFC 3261 section 7.5).
        let mut pos = 0;
        while s.get(pos).is_some_and(|&b| b == b'\r' || b == b'\n') {
            pos += 1;
        }
        if pos >= s.len() {
            return Err(ParseError::Empty);
        }
        let (line_end, next) = line_at(s, pos);
        let start_line = pos..line_end;
        let first = s.get(start_line.clone()).unwrap_or_default();
        let start = if first.starts_with(b"SIP/") {
            parse_status_line(first, pos).ok_or(ParseError::BadStatusLine)?
        } else {
            let (start, d) = parse_request_line(first, pos);
            if let Some(d) = d {
                note(d);
            }
            start
        };
        pos = next;
        // Header lines.
        let mut headers: Vec<Header> = Vec::with_capacity(24);
        let mut firsts = [NONE; KINDS];
        let mut body_start = s.len();
        while pos < s.len() {
            let (end, next) = line_at(s, pos);
            if end == pos {
                body_start = next;
                break;
            }
            let first_byte = s.get(pos).copied().unwrap_or(0);
            if first_byte == b' ' || first_byte == b'\t' {
                match headers.last_mut() {
                    Some(h) => {
                        h.line.end = next;
                        h.value = trim_range(s, h.value.start..end);
                    }
                    None => note(Defect::bad("Malformed header continuation")),
                }
                pos = next;
                continue;
            }
            if headers.len() >= limits.max_headers {
                note(Defect {
                    code: 400,
                    reason: "Too Many Header Fields",
                });
                // Skip to the end of the header section without indexing.
                pos = next;
                continue;
            }
            match header_name(s, pos, end) {
                Ok((name_r, colon)) => {
                    let name = HeaderName::classify_token(s.get(name_r).unwrap_or_default());
                    if let Some(f) = firsts.get_mut(name as usize) {
                        if *f == NONE {
                            *f = u16::try_from(headers.len()).unwrap_or(NONE);
                        }
                    }
                    headers.push(Header {
                        name,
                        line: pos..next,
                        value: trim_range(s, colon + 1..end),
                    });
                }
                Err(d) => note(d),
            }
            pos = next;
        }
        let mut msg = Message {
            start,
            start_line,
            headers,
            firsts,
            body: body_start.min(s.len())..s.len(),
            defect: None,
            buf: Bytes::new(),
            top_via: std::sync::OnceLock::new(),
            tags: std::sync::OnceLock::new(),
        };
        // Content-Length.
        let mut cl: Option<usize> = None;
        for h in msg
            .headers
            .iter()
            .filter(|h| h.name == HeaderName::ContentLength)
        {
            let v = s.get(h.value.clone()).unwrap_or_default();
            match parse_u32(v, u64::from(u32::MAX)) {
                Some(n) => {
                    let n = n as usize;
                    if cl.is_some_and(|c| c != n) {
                        note(Defect::bad("Conflicting Content-Length"));
                    }
                    cl = Some(n);
                }
                None => note(Defect::bad("Bad Content-Length")),
            }
        }
        if let Some(n) = cl {
            let available = msg.body.len();
            if n > available {
                match framing {
                    Framing::Datagram => note(Defect::bad("Content-Length Larger Than Message")),
                    Framing::Stream => note(Defect::bad("Truncated Message")),
                }
            } else {
                msg.body.end = msg.body.start + n;
            }
        } else if framing == Framing::Stream {
            // The framer treats a missing Content-Length as 0 on streams.
            msg.body.end = msg.body.start;
        }
        if msg.is_response() {
            if let Some(d) = defect {
                return Err(ParseError::BadResponse(d.reason));
            }
        }
        msg.defect = defect;
        msg.buf = buf;
        Ok(msg)
    }

    /// The bytes of the message as received (for a datagram, possibly with trailing octets
    /// after the body, which [`Message::body`] excludes).
    pub fn bytes(&self) -> &Bytes {
        &self.buf
    }

    /// The first syntax problem found in a request, if any.
    pub fn defect(&self) -> Option<Defect> {
        self.defect
    }

    /// Gives back the header index's spare room (for a message kept a while, not every one).
    pub fn shrink_to_fit(&mut self) {
        self.headers.shrink_to_fit();
    }

    /// The start line.
    pub fn start(&self) -> &StartLine {
        &self.start
    }

    /// The text of the start line, without its CRLF.
    pub fn start_line_text(&self) -> &[u8] {
        self.slice(self.start_line.clone())
    }

    /// Whether this is a response.
    pub fn is_response(&self) -> bool {
        matches!(self.start, StartLine::Response { .. })
    }

    /// The request method, `None` for a response.
    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI text, `None` for a response.
    pub fn request_uri(&self) -> Option<&[u8]> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(self.slice(uri.clone())),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code, `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// The index of header lines, in order.
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// The bytes of a range of this message.
    pub fn slice(&self, r: Range<usize>) -> &[u8] {
        self.buf.get(r).unwrap_or_default()
    }

    /// The value of a header.
    pub fn value(&self, h: &Header) -> &[u8] {
        self.slice(h.value.clone())
    }

    /// The body (exactly Content-Length bytes).
    pub fn body(&self) -> &[u8] {
        self.slice(self.body.clone())
    }

    /// The headers of one kind.
    pub fn all(&self, name: HeaderName) -> impl Iterator<Item = &Header> {
        let from = self.first_index(name).unwrap_or(self.headers.len());
        let rest = self.headers.get(from..).unwrap_or_default();
        rest.iter().filter(move |h| h.name == name)
    }

    /// The first header of one kind.
    pub fn first(&self, name: HeaderName) -> Option<&Header> {
        self.headers.get(self.first_index(name)?)
    }

    /// Where the first header of one kind is in the index (`Other` has none: it names
    /// many headers, each looked up by its own name).
    fn first_index(&self, name: HeaderName) -> Option<usize> {
        // (and a message with more header lines than the index can number: scanned)
        if name == HeaderName::Other || self.headers.len() >= usize::from(NONE) {
            return self.headers.iter().position(|h| h.name == name);
        }
        match self.firsts.get(name as usize).copied() {
            Some(NONE) | None => None,
            Some(i) => Some(usize::from(i)),
        }
    }

    /// How many header lines of one kind there are.
    pub fn count(&self, name: HeaderName) -> usize {
        self.all(name).count()
    }

    /// The values of a list header (Via, Route, Record-Route, Path, Contact) across all its
    /// lines, in order, as ranges into the message.
    pub fn list_values(&self, name: HeaderName) -> Vec<Range<usize>> {
        self.list(name).collect()
    }

    /// [`Message::list_values`] without collecting them.
    pub fn list(&self, name: HeaderName) -> impl Iterator<Item = Range<usize>> + '_ {
        self.all(name).flat_map(move |h| {
            let base = h.value.start;
            list(self.value(h)).map(move |r| base + r.start..base + r.end)
        })
    }

    /// The value of the first header with this name (case-insensitive, long form).
    pub fn header_value(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find_map(|h| {
            let line = self.slice(h.line.clone());
            let colon = memchr::memchr(b':', line)?;
            let n = syntax::trim(line.get(..colon)?);
            eq_ic(n, name.as_bytes()).then(|| self.value(h))
        })
    }

    /// The top Via, parsed. `None` when absent; `Some(Err)` when it does not parse.
    pub fn top_via(&self) -> Option<Result<Via<'_>, ViaError>> {
        let (range, index) = self
            .top_via
            .get_or_init(|| {
                let h = self.first(HeaderName::Via)?;
                let first = list(self.value(h)).next()?;
                let range = h.value.start + first.start..h.value.start + first.end;
                let index = ViaIndex::parse(self.slice(range.clone()));
                Some((range, index))
            })
            .as_ref()?;
        let text = self.buf.get(range.clone())?;
        Some(match index {
            Ok(index) => index.view(text),
            Err(e) => Err(*e),
        })
    }

    /// The Call-ID value.
    pub fn call_id(&self) -> Option<&[u8]> {
        self.first(HeaderName::CallId).map(|h| self.value(h))
    }

    /// CSeq number and method; `None` when absent or malformed (number above 2^32-1).
    pub fn cseq(&self) -> Option<(u32, Method)> {
        let v = self.value(self.first(HeaderName::CSeq)?);
        let split = v.iter().position(|&b| syntax::is_lws(b))?;
        let num = parse_u32(v.get(..split)?, u64::from(u32::MAX))?;
        let method = Method::parse(syntax::trim(v.get(split..)?))?;
        Some((num, method))
    }

    /// Max-Forwards; `None` when absent, `Some(Err(()))` when not a number 0..=255.
    pub fn max_forwards(&self) -> Option<Result<u8, ()>> {
        let h = self.first(HeaderName::MaxForwards)?;
        Some(
            parse_u32(self.value(h), 255)
                .and_then(|n| u8::try_from(n).ok())
                .ok_or(()),
        )
    }

    /// The `tag` parameter of From.
    pub fn from_tag(&self) -> Option<&[u8]> {
        self.tag_of(HeaderName::From)
    }

    /// The `tag` parameter of To.
    pub fn to_tag(&self) -> Option<&[u8]> {
        self.tag_of(HeaderName::To)
    }

    fn tag_of(&self, name: HeaderName) -> Option<&[u8]> {
        let [from, to] = self.tags.get_or_init(|| {
            [HeaderName::From, HeaderName::To].map(|n| {
                let h = self.first(n)?;
                let r = header_param_range(self.value(h), b"tag")?;
                Some(h.value.start + r.start..h.value.start + r.end)
            })
        });
        let r = if name == HeaderName::From { from } else { to };
        self.buf.get(r.clone()?)
    }
}

/// Finds the end of the line starting at `pos`: returns (end of content, start of next line).
/// Lines end in CRLF; a bare LF is accepted.
fn line_at(s: &[u8], pos: usize) -> (usize, usize) {
    match s.get(pos..).and_then(|rest| memchr::memchr(b'\n', rest)) {
        Some(off) => {
            let lf = pos + off;
            let end = if lf > pos && s.get(lf - 1) == Some(&b'\r') {
                lf - 1
            } else {
                lf
            };
            (end, lf + 1)
        }
        None => (s.len(), s.len()),
    }
}

/// The name of the header line `s[pos..end]` (a token, LWS around it allowed) and the
/// position of its colon; the defect to note when the line has no colon or a bad name.
#[inline]
fn header_name(s: &[u8], pos: usize, end: usize) -> Result<(Range<usize>, usize), Defect> {
    // The usual `Name:` or `Name :` in one pass; anything else the general way below.
    let line = s.get(pos..end).unwrap_or_default();
    let mut name_len = 0;
    while line
        .get(name_len)
        .is_some_and(|&b| syntax::is_token_char(b))
    {
        name_len += 1;
    }
    let mut colon = name_len;
    while line.get(colon).is_some_and(|&b| b == b' ' || b == b'\t') {
        colon += 1;
    }
    if name_len > 0 && line.get(colon) == Some(&b':') {
        return Ok((pos..pos + name_len, pos + colon));
    }
    let colon = syntax::find_byte(s, pos..end, b':').ok_or(Defect::bad("Malformed header line"))?;
    let name_r = trim_range(s, pos..colon);
    if !is_token(s.get(name_r.clone()).unwrap_or_default()) {
        return Err(Defect::bad("Malformed header name"));
    }
    Ok((name_r, colon))
}

fn parse_status_line(line: &[u8], base: usize) -> Option<StartLine> {
    let rest = line.strip_prefix(b"SIP/2.0 ")?;
    let code_bytes = rest.get(..3)?;
    if !code_bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if rest.get(3).is_some_and(|&b| b != b' ') {
        return None;
    }
    let code = u16::try_from(parse_u32(code_bytes, 999)?).ok()?;
    if !(100..=699).contains(&code) {
        return None;
    }
    let reason_start = base + 8 + 4;
    Some(StartLine::Response {
        code,
        reason: reason_start.min(base + line.len())..base + line.len(),
    })
}

fn parse_request_line(line: &[u8], base: usize) -> (StartLine, Option<Defect>) {
    // `METHOD SP URI SP VERSION`: exactly three non-empty parts between single spaces.
    let mut parts = line.splitn(4, |&b| b == b' ');
    let method_text = parts.next();
    let uri_text = parts.next();
    let version = parts.next();
    let extra = parts.next();
    let method = method_text
        .and_then(Method::parse)
        .unwrap_or_else(|| Method::Other("".into()));
    let uri_start = base + method_text.map_or(0, |m| m.len() + 1);
    let uri_len = uri_text.map_or(0, |u| u.len());
    let malformed = extra.is_some()
        || [method_text, uri_text, version]
            .iter()
            .any(|p| p.is_none_or(|p| p.is_empty()));
    let start = StartLine::Request {
        method,
        uri: uri_start.min(base + line.len())..(uri_start + uri_len).min(base + line.len()),
    };
    if malformed {
        return (start, Some(Defect::bad("Malformed Request-Line")));
    }
    if matches!(&start, StartLine::Request { method: Method::Other(m), .. } if m.is_empty()) {
        return (start, Some(Defect::bad("Malformed Method")));
    }
    let version = version.unwrap_or_default();
    if version != b"SIP/2.0" {
        let d = if version.len() > 4 && eq_ic(version.get(..4).unwrap_or_default(), b"SIP/") {
            Defect {
                code: 505,
                reason: "Version Not Supported",
            }
        } else {
            Defect::bad("Malformed Request-Line")
        };
        return (start, Some(d));
    }
    (start, None)
}

#[cfg(test)]
mod tests;
