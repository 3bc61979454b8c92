//! The branch parameter this proxy writes (RFC 3261 section 16.6 step 8): the magic
//! cookie, a loop-detection hash of the request, then a unique part; and loop detection
//! (section 16.3 step 4) by recomputing that hash.
//!
//! Owns branch text and the hash; nothing here keeps state but a counter.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sip::message::{HeaderName, Message};
use crate::sip::transport::Transport;
use crate::sip::via::Via;

use super::LocalIdentity;

/// Prefix of every branch this proxy writes: the magic cookie and `sp`, then 8 hex digits of
/// the loop-detection hash (RFC 3261 section 16.6 step 8), then a unique part.
pub const BRANCH_PREFIX: &str = "z9hG4bKsp";

static BRANCH_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A unique RFC 3261 branch carrying `loop_hash`.
pub fn new_branch(loop_hash: u32) -> String {
    use std::sync::OnceLock;
    static SALT: OnceLock<u64> = OnceLock::new();
    let salt = SALT.get_or_init(rand::random::<u64>);
    let n = BRANCH_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut branch = String::with_capacity(BRANCH_PREFIX.len() + 8 + 8 + 16);
    branch.push_str(BRANCH_PREFIX);
    push_hex(&mut branch, u64::from(loop_hash), 8);
    push_hex(&mut branch, salt & 0xffff_ffff, 1);
    push_hex(&mut branch, n, 1);
    branch
}

/// Appends `v` in lower-case hex with at least `min_digits` digits (as `{:0N$x}`).
pub(super) fn push_hex(out: &mut String, v: u64, min_digits: usize) {
    let digits = (16 - v.leading_zeros() as usize / 4)
        .max(min_digits)
        .min(16);
    out.extend(hex_digits(v, digits).map(char::from));
}

/// The last `digits` hex digits of `v` (at most 16), most significant first, lower case.
fn hex_digits(v: u64, digits: usize) -> impl Iterator<Item = u8> {
    (0..digits.min(16)).rev().map(move |i| {
        let nibble = (v >> (4 * i)) & 0xf;
        HEX.get(nibble as usize).copied().unwrap_or(b'0')
    })
}

/// A branch that is the same every time for the same received request (stateless
/// forwarding of ACK for 2xx, RFC 3261 section 16.11).
pub fn stateless_branch(loop_hash: u32, received_branch: &[u8]) -> String {
    let mut branch = String::with_capacity(BRANCH_PREFIX.len() + 8 + 1 + 16);
    branch.push_str(BRANCH_PREFIX);
    push_hex(&mut branch, u64::from(loop_hash), 8);
    branch.push('s');
    push_hex(&mut branch, fnv1a(&[received_branch]), 16);
    branch
}

/// FNV-1a over several byte strings (with a separator), for branches and tags.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h = Fnv1a::default();
    for p in parts {
        h.part(p);
    }
    h.0
}

/// An FNV-1a hash fed one part at a time; each part ends with a separator byte so that
/// `("ab", "c")` and `("a", "bc")` differ.
struct Fnv1a(u64);

const FNV_PRIME: u64 = 0x0100_0000_01b3;

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn part(&mut self, p: &[u8]) {
        let mut h = self.0;
        for &b in p {
            h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
        self.0 = (h ^ 0xff).wrapping_mul(FNV_PRIME);
    }
}

/// The hop a request arrived from, as far as this proxy's forwarding decision depends on
/// it (a request from an upstream server is routed differently from the same request from
/// a phone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// Transport it arrived on.
    pub transport: Transport,
    /// Address of the previous hop (the packet's source; the port is left out, since a
    /// stream's source port changes with each connection).
    pub source: IpAddr,
}

/// The loop-detection hash of a request (RFC 3261 section 16.6 step 8): over every field
/// the forwarding decision depends on: the Request-URI, From tag, To tag, Call-ID, CSeq
/// number, the Route set as received, Proxy-Require, Proxy-Authorization, and the hop it
/// came from. A request that comes back through this proxy with any of them changed is a
/// spiral (section 16.3 step 4): phone A -> proxy -> registrar -> proxy -> phone B passes
/// twice with the same Request-URI but another Route set and another previous hop.
pub fn loop_hash(msg: &Message, hop: Hop) -> u32 {
    let mut h = Fnv1a::default();
    h.part(msg.request_uri().unwrap_or_default());
    h.part(msg.from_tag().unwrap_or_default());
    h.part(msg.to_tag().unwrap_or_default());
    h.part(msg.call_id().unwrap_or_default());
    h.part(&msg.cseq().map(|(n, _)| n.to_be_bytes()).unwrap_or_default());
    for header in msg.headers() {
        let tag: &[u8] = match header.name {
            HeaderName::Route => b"R",
            HeaderName::ProxyRequire => b"P",
            HeaderName::ProxyAuthorization => b"A",
            _ => continue,
        };
        h.part(tag);
        h.part(msg.value(header));
    }
    h.part(hop.transport.via_token().as_bytes());
    match hop.source {
        IpAddr::V4(ip) => h.part(&ip.octets()),
        IpAddr::V6(ip) => h.part(&ip.octets()),
    }
    (h.0 & 0xffff_ffff) as u32
}

/// Whether one of our own Vias in the request carries the same loop hash (RFC 3261
/// section 16.3 step 4): the request came back unchanged.
///
/// Only a Via whose text holds our branch prefix with this hash can match, so the Via
/// lines are searched for it first and parsed only when it is there (most requests have
/// never passed through us and are settled by one substring search per Via line).
pub(super) fn is_loop(msg: &Message, identity: &LocalIdentity, hash: u32) -> bool {
    // Our branch prefix, then the hash's 8 hex digits: a Via of ours carries both. The
    // prefix's searcher is built once (building one costs more than a search).
    static PREFIX: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
        std::sync::OnceLock::new();
    let finder = PREFIX.get_or_init(|| memchr::memmem::Finder::new(BRANCH_PREFIX.as_bytes()));
    let mut want = [0u8; BRANCH_PREFIX.len() + 8];
    let (prefix, digits) = want.split_at_mut(BRANCH_PREFIX.len());
    prefix.copy_from_slice(BRANCH_PREFIX.as_bytes());
    for (d, h) in digits.iter_mut().zip(hex_digits(u64::from(hash), 8)) {
        *d = h;
    }
    let want = &want[..];
    let mentioned = msg.all(HeaderName::Via).any(|h| {
        let v = msg.value(h);
        finder
            .find_iter(v)
            .any(|at| v.get(at..).is_some_and(|rest| rest.starts_with(want)))
    });
    if !mentioned {
        return false;
    }
    msg.list(HeaderName::Via).any(|r| {
        let Ok(v) = Via::parse(msg.slice(r)) else {
            return false;
        };
        let t = v.transport.parse().unwrap_or(Transport::Udp);
        identity.is_local(v.host, v.port, t)
            && v.branch().is_some_and(|b| b.as_bytes().starts_with(want))
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_format_x() {
        for v in [0u64, 1, 0xf, 0x10, 0xdead_beef, u64::MAX, 0x0012_3400] {
            let mut s = String::new();
            push_hex(&mut s, v, 1);
            assert_eq!(s, format!("{v:x}"));
            let mut s = String::new();
            push_hex(&mut s, v, 8);
            assert_eq!(s, format!("{v:08x}"));
        }
    }

    #[test]
    fn branches_read_as_before() {
        assert_eq!(
            stateless_branch(0xab, b"z9hG4bK1"),
            format!("{BRANCH_PREFIX}{:08x}s{:016x}", 0xab, fnv1a(&[b"z9hG4bK1"]))
        );
        let b = new_branch(0x1234);
        assert!(b.starts_with(&format!("{BRANCH_PREFIX}00001234")), "{b}");
    }

    #[test]
    fn fnv1a_of_known_input() {
        // FNV-1a 64 of "a" then the 0xff separator, computed by hand from the definition.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in [b'a', 0xff] {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        assert_eq!(fnv1a(&[b"a"]), h);
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }
}
