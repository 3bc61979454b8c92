//! Flow tokens (RFC 5626 section 5.2 style): a Path or Record-Route URI user part that names
//! one flow of this instance (a TCP/TLS connection, or a UDP peer) so that a request from
//! upstream reaches a phone over the connection the phone opened.
//!
//! A token is `hex(version | transport | epoch | connection | peer ip | peer port | mac)`,
//! the mac an HMAC-SHA256 (truncated to 12 bytes) under the pool's shared key, so a forged
//! or altered token is refused. The epoch is random per process start: a token from before
//! a restart names a flow that is gone.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use ring::hmac;

use crate::sip::transport::Transport;

const VERSION: u8 = 1;
const PAYLOAD: usize = 1 + 1 + 4 + 8 + 16 + 2;
const MAC: usize = 12;

/// What a valid token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Transport of the flow.
    pub transport: Transport,
    /// Process epoch the token was made in.
    pub epoch: u32,
    /// Connection number (streams); 0 for UDP.
    pub conn: u64,
    /// The peer's address.
    pub peer: SocketAddr,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowError {
    /// Not a token of ours at all (wrong length, not hex, unknown version).
    NotAToken,
    /// The mac does not match: forged, altered, or from a pool with another key.
    Forged,
}

/// Makes and checks tokens.
pub struct FlowKeys {
    key: hmac::Key,
    epoch: u32,
}

impl std::fmt::Debug for FlowKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowKeys")
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl FlowKeys {
    /// Keys from the pool's shared secret and this process's epoch.
    pub fn new(secret: &[u8], epoch: u32) -> Self {
        FlowKeys {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            epoch,
        }
    }

    /// This process's epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The token for a flow of this process.
    pub fn token(&self, transport: Transport, conn: u64, peer: SocketAddr) -> String {
        let mut p = Vec::with_capacity(PAYLOAD + MAC);
        p.push(VERSION);
        p.push(match transport {
            Transport::Udp => 0,
            Transport::Tcp => 1,
            Transport::Tls => 2,
        });
        p.extend_from_slice(&self.epoch.to_be_bytes());
        p.extend_from_slice(&conn.to_be_bytes());
        let ip = match peer.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        p.extend_from_slice(&ip.octets());
        p.extend_from_slice(&peer.port().to_be_bytes());
        let tag = hmac::sign(&self.key, &p);
        p.extend_from_slice(tag.as_ref().get(..MAC).unwrap_or_default());
        hex(&p)
    }

    /// Checks a token and says what it names.
    pub fn verify(&self, token: &str) -> Result<Flow, FlowError> {
        let raw = unhex(token).ok_or(FlowError::NotAToken)?;
        if raw.len() != PAYLOAD + MAC || raw.first() != Some(&VERSION) {
            return Err(FlowError::NotAToken);
        }
        let (payload, mac) = raw.split_at(PAYLOAD);
        let tag = hmac::sign(&self.key, payload);
        // Constant time: how many leading bytes of a forged mac are right must not show in
        // how long the refusal takes.
        let expected = tag.as_ref().get(..MAC).unwrap_or_default();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(expected, mac)) {
            return Err(FlowError::Forged);
        }
        let transport = match payload.get(1) {
            Some(0) => Transport::Udp,
            Some(1) => Transport::Tcp,
            Some(2) => Transport::Tls,
            _ => return Err(FlowError::NotAToken),
        };
        let be4 =
            |r: std::ops::Range<usize>| -> Option<[u8; 4]> { payload.get(r)?.try_into().ok() };
        let epoch = u32::from_be_bytes(be4(2..6).ok_or(FlowError::NotAToken)?);
        let conn: [u8; 8] = payload
            .get(6..14)
            .and_then(|s| s.try_into().ok())
            .ok_or(FlowError::NotAToken)?;
        let ip: [u8; 16] = payload
            .get(14..30)
            .and_then(|s| s.try_into().ok())
            .ok_or(FlowError::NotAToken)?;
        let port: [u8; 2] = payload
            .get(30..32)
            .and_then(|s| s.try_into().ok())
            .ok_or(FlowError::NotAToken)?;
        let ip = Ipv6Addr::from(ip);
        let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
        Ok(Flow {
            transport,
            epoch,
            conn: u64::from_be_bytes(conn),
            peer: SocketAddr::new(ip, u16::from_be_bytes(port)),
        })
    }
}

/// Whether a URI user part looks like one of our tokens (a cheap test before the mac).
pub fn looks_like_token(user: &[u8]) -> bool {
    user.len() == 2 * (PAYLOAD + MAC) && user.iter().all(u8::is_ascii_hexdigit)
}

fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(
            D.get(usize::from(x >> 4)).copied().unwrap_or(b'0'),
        ));
        s.push(char::from(
            D.get(usize::from(x & 15)).copied().unwrap_or(b'0'),
        ));
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let val = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(val(*p.first()?)? << 4 | val(*p.get(1)?)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_forgery() {
        let k = FlowKeys::new(b"pool secret", 7);
        let peer: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let t = k.token(Transport::Tls, 42, peer);
        assert!(looks_like_token(t.as_bytes()));
        let f = k.verify(&t).unwrap();
        assert_eq!(
            f,
            Flow {
                transport: Transport::Tls,
                epoch: 7,
                conn: 42,
                peer
            }
        );
        // One character changed: refused.
        let mut forged = t.clone().into_bytes();
        forged[10] = if forged[10] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            k.verify(std::str::from_utf8(&forged).unwrap()),
            Err(FlowError::Forged)
        );
        // Another pool's key: refused.
        assert_eq!(
            FlowKeys::new(b"other", 7).verify(&t),
            Err(FlowError::Forged)
        );
        assert_eq!(k.verify("zz"), Err(FlowError::NotAToken));
        let v6: SocketAddr = "[2001:db8::1]:5061".parse().unwrap();
        assert_eq!(k.verify(&k.token(Transport::Udp, 0, v6)).unwrap().peer, v6);
    }
}
