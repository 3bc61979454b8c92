//! A datagram on a UDP listener that looks like STUN: answered or refused, never a panic,
//! and an answer is a well-formed STUN message whose length field matches.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sippool::sip::stun;

fuzz_target!(|data: &[u8]| {
    if !stun::is_stun(data) {
        return;
    }
    let source = "198.51.100.1:5062".parse().unwrap_or_else(|_| std::process::abort());
    if let Ok(answer) = stun::answer(data, source) {
        assert!(answer.len() >= 20 && answer.len() % 4 == 0);
        let len = u16::from_be_bytes([answer[2], answer[3]]) as usize;
        assert_eq!(len + 20, answer.len());
    }
});
