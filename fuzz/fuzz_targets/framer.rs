//! The stream framer fed arbitrary bytes in arbitrary chunks: never panics, never yields a
//! frame larger than the cap, and every frame it yields parses or is refused cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sippool::sip::framing::{Frame, StreamFramer};
use sippool::sip::message::{Framing, Limits, Message};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_size: 4096, max_headers: 32 };
    let mut f = StreamFramer::new(limits);
    // The first byte picks the chunk size, the rest is the stream.
    let (chunk, rest) = match data.split_first() {
        Some((c, r)) => (usize::from(*c).max(1), r),
        None => return,
    };
    for piece in rest.chunks(chunk) {
        f.push(piece);
        loop {
            match f.next_frame() {
                Ok(Some(Frame::Message(m))) => {
                    assert!(m.len() <= limits.max_size);
                    let _ = Message::parse(m, Framing::Stream, &limits);
                }
                Ok(Some(Frame::Ping)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
