//! Message framing on stream transports (RFC 3261 section 18.3, RFC 5626 section 3.5.1).
//!
//! A [`StreamFramer`] takes bytes as they arrive from a TCP (or TLS) connection and cuts them
//! into whole messages by Content-Length: several messages in one read, and one message
//! split over many reads. It also recognises the RFC 5626 keep-alive ping (CRLFCRLF). Size
//! and header-count caps are checked here, before any parsing, so a peer cannot make the
//! buffer grow without bound. A framing error cannot be recovered from on a stream: the
//! connection is closed.

use bytes::{Buf, Bytes, BytesMut};

use crate::sip::message::Limits;
use crate::sip::syntax::{eq_ic, parse_u32, trim};

/// What the framer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One whole message, exactly its bytes.
    Message(Bytes),
    /// A CRLFCRLF keep-alive ping: answer with CRLF.
    Ping,
}

/// The stream cannot be framed any further; the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// Headers or the whole message exceed the size cap.
    TooLarge,
    /// More header lines than the cap.
    TooManyHeaders,
    /// Content-Length missing a number, negative, or given twice with different values.
    BadContentLength,
}

impl FramingError {
    /// A short name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            FramingError::TooLarge => "too_large",
            FramingError::TooManyHeaders => "too_many_headers",
            FramingError::BadContentLength => "bad_content_length",
        }
    }
}

/// Reassembles messages from a byte stream.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    limits: Limits,
    /// Where to resume looking for the end of the headers.
    scanned: usize,
    /// Total length of the message being received, once its headers are complete.
    pending_len: Option<usize>,
}

impl StreamFramer {
    /// A framer with the given caps.
    pub fn new(limits: Limits) -> Self {
        StreamFramer {
            // Nothing until bytes arrive: most connections are idle (see `shed`).
            buf: BytesMut::new(),
            limits,
            scanned: 0,
            pending_len: None,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read into directly (avoids a copy), see [`StreamFramer::push`].
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Gives the buffer's memory back when it holds nothing (between messages), so that an
    /// idle connection keeps no buffer; the next [`push`](Self::push) allocates what it
    /// needs. Messages already framed keep their own bytes.
    pub fn shed(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
            self.scanned = 0;
            self.pending_len = None;
        }
    }

    /// The bytes held that do not yet form a whole message.
    pub fn held(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes of buffer the framer holds (allocated, used or not).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Bytes held that do not yet form a whole message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FramingError> {
        if self.pending_len.is_none() {
            // Keep-alives and stray CRLFs between messages.
            loop {
                if self.buf.starts_with(b"\r\n\r\n") {
                    self.buf.advance(4);
                    self.scanned = 0;
                    return Ok(Some(Frame::Ping));
                }
                if self.buf.starts_with(b"\r\n") {
                    if self.buf.len() < 4 && self.buf.iter().all(|&b| b == b'\r' || b == b'\n') {
                        return Ok(None);
                    }
                    self.buf.advance(2);
                    self.scanned = 0;
                    continue;
                }
                break;
            }
            let from = self.scanned.saturating_sub(3);
            let end = match self
                .buf
                .get(from..)
                .and_then(|rest| memchr::memmem::find(rest, b"\r\n\r\n"))
            {
                Some(off) => from + off + 4,
                None => {
                    self.scanned = self.buf.len();
                    if self.buf.len() > self.limits.max_size {
                        return Err(FramingError::TooLarge);
                    }
                    return Ok(None);
                }
            };
            let head = self.buf.get(..end).unwrap_or_default();
            let cl = content_length(head, self.limits.max_headers)?;
            let total = end.checked_add(cl).ok_or(FramingError::TooLarge)?;
            if total > self.limits.max_size {
                return Err(FramingError::TooLarge);
            }
            self.pending_len = Some(total);
        }
        match self.pending_len {
            Some(total) if self.buf.len() >= total => {
                self.pending_len = None;
                self.scanned = 0;
                Ok(Some(Frame::Message(self.buf.split_to(total).freeze())))
            }
            _ => Ok(None),
        }
    }
}

/// Reads Content-Length (long or compact form) from a complete header section, counting
/// lines against the cap. A missing Content-Length counts as 0.
fn content_length(head: &[u8], max_headers: usize) -> Result<usize, FramingError> {
    let mut value: Option<u32> = None;
    let mut lines = 0usize;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        lines += 1;
        if lines > max_headers + 1 {
            return Err(FramingError::TooManyHeaders);
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = trim(line.get(..colon).unwrap_or_default());
        if eq_ic(name, b"content-length") || eq_ic(name, b"l") {
            let v = trim(line.get(colon + 1..).unwrap_or_default());
            let n = parse_u32(v, u64::from(u32::MAX)).ok_or(FramingError::BadContentLength)?;
            if value.is_some_and(|old| old != n) {
                return Err(FramingError::BadContentLength);
            }
            value = Some(n);
        }
    }
    Ok(value.unwrap_or(0) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body: &str) -> String {
        format!(
            "MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            body
        )
    }

    #[test]
    fn pipelined_messages_in_one_read() {
        let mut f = StreamFramer::new(Limits::default());
        let two = format!("{}{}", msg("hello"), msg("world!"));
        f.push(two.as_bytes());
        let a = f.next_frame().unwrap().unwrap();
        let b = f.next_frame().unwrap().unwrap();
        assert_eq!(a, Frame::Message(Bytes::from(msg("hello"))));
        assert_eq!(b, Frame::Message(Bytes::from(msg("world!"))));
        assert_eq!(f.next_frame().unwrap(), None);
    }

    #[test]
    fn shed_between_messages_only() {
        let mut f = StreamFramer::new(Limits::default());
        assert_eq!(f.capacity(), 0, "nothing before the first byte");
        f.push(b"\r\n\r\n");
        assert_eq!(f.next_frame().unwrap(), Some(Frame::Ping));
        f.shed();
        assert_eq!(f.capacity(), 0, "an idle framer holds no buffer");
        let m = msg("split");
        let (a, b) = m.as_bytes().split_at(m.len() / 2);
        f.push(a);
        assert_eq!(f.next_frame().unwrap(), None);
        f.shed();
        assert_eq!(f.buffered(), a.len(), "half a message is kept");
        f.push(b);
        assert_eq!(
            f.next_frame().unwrap(),
            Some(Frame::Message(Bytes::from(m)))
        );
        f.shed();
        assert_eq!(f.capacity(), 0);
    }

    #[test]
    fn split_message_reassembled_byte_by_byte() {
        let mut f = StreamFramer::new(Limits::default());
        let m = msg(&"x".repeat(10_000));
        for (i, b) in m.as_bytes().iter().enumerate() {
            f.push(&[*b]);
            let r = f.next_frame().unwrap();
            if i + 1 < m.len() {
                assert_eq!(r, None);
            } else {
                assert_eq!(r, Some(Frame::Message(Bytes::from(m.clone()))));
            }
        }
    }

    #[test]
    fn keepalive_ping_and_stray_crlf() {
        let mut f = StreamFramer::new(Limits::default());
        f.push(b"\r\n\r\n");
        assert_eq!(f.next_frame().unwrap(), Some(Frame::Ping));
        f.push(b"\r\n");
        assert_eq!(f.next_frame().unwrap(), None);
        f.push(msg("").as_bytes());
        assert!(matches!(f.next_frame().unwrap(), Some(Frame::Message(_))));
    }

    #[test]
    fn framing_errors() {
        let mut f = StreamFramer::new(Limits::default());
        f.push(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: -999\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FramingError::BadContentLength));
        let mut f = StreamFramer::new(Limits::default());
        f.push(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 13\r\nl: 5\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FramingError::BadContentLength));
        let mut f = StreamFramer::new(Limits::default());
        f.push(b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 99999999\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FramingError::TooLarge));
        let mut f = StreamFramer::new(Limits::default());
        f.push(&vec![b'a'; 70_000]);
        assert_eq!(f.next_frame(), Err(FramingError::TooLarge));
    }
}
