//! Flow tokens (RFC 5626 section 5.2 style): a Path or Record-Route URI user part that names
//! one flow (a TCP/TLS connection, or a UDP peer) and the pool instance that holds it, so
//! that a request from upstream reaches a phone over the connection the phone opened, from
//! whichever instance of the pool it lands on.
//!
//! A token is `hex(version | transport | epoch | connection | peer ip | peer port |
//! instance transport | instance ip | instance port | mac)`, the mac an HMAC-SHA256
//! (truncated to 12 bytes) under the pool's shared key, so a forged or altered token is
//! refused by every instance. The epoch is random per process start: a token from before a
//! restart names a flow that is gone. The instance part is the address other instances
//! relay to (see [`Place::Elsewhere`]). Version 1 tokens (no instance part) are still read:
//! they name a flow of this process or one that is gone.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use ring::hmac;

use crate::sip::addr::Target;
use crate::sip::transport::Transport;

const V1: u8 = 1;
const V2: u8 = 2;
/// version, transport, epoch, connection, peer ip, peer port.
const V1_PAYLOAD: usize = 1 + 1 + 4 + 8 + 16 + 2;
/// The v1 payload, then the instance's transport, ip and port.
const V2_PAYLOAD: usize = V1_PAYLOAD + 1 + 16 + 2;
const MAC: usize = 12;
/// The instance-transport byte of a token whose instance has no relay address.
const NO_INSTANCE: u8 = 0xff;

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
    /// Where the instance holding the flow takes requests relayed by the other instances
    /// (`None` in a version 1 token, or when that instance has no relay address).
    pub instance: Option<Target>,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowError {
    /// Not a token of ours at all (wrong length, not hex, unknown version).
    NotAToken,
    /// The mac does not match: forged, altered, or from a pool with another key.
    Forged,
}

/// Where the flow a valid token names is, seen from this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A flow of this process.
    Here(Flow),
    /// A flow of another instance of the pool, which takes relayed requests at `instance`.
    Elsewhere {
        /// Where that instance takes relayed requests.
        instance: Target,
        /// The flow.
        flow: Flow,
    },
    /// A flow of an earlier life of this instance, or of an instance that cannot be
    /// reached: no process holds it any more.
    Gone(Flow),
}

/// Makes and checks tokens.
#[derive(Clone)]
pub struct FlowKeys {
    key: hmac::Key,
    epoch: u32,
    instance: Option<Target>,
}

impl std::fmt::Debug for FlowKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowKeys")
            .field("epoch", &self.epoch)
            .field("instance", &self.instance)
            .finish()
    }
}

impl FlowKeys {
    /// Keys from the pool's shared secret and this process's epoch.
    pub fn new(secret: &[u8], epoch: u32) -> Self {
        FlowKeys {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            epoch,
            instance: None,
        }
    }

    /// Keys with a random secret and epoch: tokens only this process can read.
    pub fn random() -> Self {
        let secret: [u8; 32] = rand::random();
        FlowKeys::new(&secret, rand::random())
    }

    /// The same keys, writing `instance` into every token as the address other instances
    /// relay requests for this process's flows to.
    pub fn with_instance(mut self, instance: Option<Target>) -> Self {
        self.instance = instance;
        self
    }

    /// This process's epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The relay address this process writes into its tokens.
    pub fn instance(&self) -> Option<Target> {
        self.instance
    }

    /// The token for a flow of this process.
    pub fn token(&self, transport: Transport, conn: u64, peer: SocketAddr) -> String {
        let mut p = Vec::with_capacity(V2_PAYLOAD + MAC);
        p.push(V2);
        p.push(transport_byte(transport));
        p.extend_from_slice(&self.epoch.to_be_bytes());
        p.extend_from_slice(&conn.to_be_bytes());
        put_addr(&mut p, peer);
        match self.instance {
            Some(t) => {
                p.push(transport_byte(t.transport));
                put_addr(&mut p, t.addr);
            }
            None => {
                p.push(NO_INSTANCE);
                p.extend_from_slice(&[0; 18]);
            }
        }
        let tag = hmac::sign(&self.key, &p);
        p.extend_from_slice(tag.as_ref().get(..MAC).unwrap_or_default());
        hex(&p)
    }

    /// Checks a token and says what it names.
    pub fn verify(&self, token: &str) -> Result<Flow, FlowError> {
        let raw = unhex(token).ok_or(FlowError::NotAToken)?;
        let payload_len = match raw.first() {
            Some(&V1) => V1_PAYLOAD,
            Some(&V2) => V2_PAYLOAD,
            _ => return Err(FlowError::NotAToken),
        };
        if raw.len() != payload_len + MAC {
            return Err(FlowError::NotAToken);
        }
        let (payload, mac) = raw.split_at(payload_len);
        let tag = hmac::sign(&self.key, payload);
        // Constant time: how many leading bytes of a forged mac are right must not show in
        // how long the refusal takes.
        let expected = tag.as_ref().get(..MAC).unwrap_or_default();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(expected, mac)) {
            return Err(FlowError::Forged);
        }
        let mut r = Reader(payload.get(1..).unwrap_or_default());
        let transport = r.transport().ok_or(FlowError::NotAToken)?;
        let epoch = u32::from_be_bytes(r.take().ok_or(FlowError::NotAToken)?);
        let conn = u64::from_be_bytes(r.take().ok_or(FlowError::NotAToken)?);
        let peer = r.addr().ok_or(FlowError::NotAToken)?;
        let instance = if payload_len == V2_PAYLOAD {
            let t = r.take::<1>().ok_or(FlowError::NotAToken)?;
            let addr = r.addr().ok_or(FlowError::NotAToken)?;
            match t {
                [NO_INSTANCE] => None,
                [b] => Some(Target {
                    transport: transport_of(b).ok_or(FlowError::NotAToken)?,
                    addr,
                }),
            }
        } else {
            None
        };
        Ok(Flow {
            transport,
            epoch,
            conn,
            peer,
            instance,
        })
    }

    /// Checks a token and says where its flow is: here, at another instance of the pool,
    /// or gone. A token made by this process is here; one naming this instance's relay
    /// address from another epoch, or naming no instance, is from a process that is gone.
    pub fn place(&self, token: &str) -> Result<Place, FlowError> {
        let flow = self.verify(token)?;
        let ours =
            flow.epoch == self.epoch && (flow.instance.is_none() || flow.instance == self.instance);
        Ok(match flow.instance {
            _ if ours => Place::Here(flow),
            Some(instance) if Some(instance) != self.instance => {
                Place::Elsewhere { instance, flow }
            }
            _ => Place::Gone(flow),
        })
    }
}

fn transport_byte(t: Transport) -> u8 {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
    }
}

fn transport_of(b: u8) -> Option<Transport> {
    match b {
        0 => Some(Transport::Udp),
        1 => Some(Transport::Tcp),
        2 => Some(Transport::Tls),
        _ => None,
    }
}

fn put_addr(p: &mut Vec<u8>, a: SocketAddr) {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    p.extend_from_slice(&ip.octets());
    p.extend_from_slice(&a.port().to_be_bytes());
}

/// Reads a token's payload front to back.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn transport(&mut self) -> Option<Transport> {
        let [b] = self.take::<1>()?;
        transport_of(b)
    }

    fn addr(&mut self) -> Option<SocketAddr> {
        let ip = Ipv6Addr::from(self.take::<16>()?);
        let port = u16::from_be_bytes(self.take()?);
        let ip = ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4);
        Some(SocketAddr::new(ip, port))
    }
}

/// Whether a URI user part looks like one of our tokens (a cheap test before the mac).
pub fn looks_like_token(user: &[u8]) -> bool {
    (user.len() == 2 * (V2_PAYLOAD + MAC) || user.len() == 2 * (V1_PAYLOAD + MAC))
        && user.iter().all(u8::is_ascii_hexdigit)
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

    fn target(t: Transport, a: &str) -> Target {
        Target {
            transport: t,
            addr: a.parse().unwrap(),
        }
    }

    #[test]
    fn token_round_trip_and_forgery() {
        let a = target(Transport::Udp, "10.0.0.5:5060");
        let k = FlowKeys::new(b"pool secret", 7).with_instance(Some(a));
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
                peer,
                instance: Some(a),
            }
        );
        // One character changed, anywhere: refused.
        for at in [10, 70, 100] {
            let mut forged = t.clone().into_bytes();
            forged[at] = if forged[at] == b'0' { b'1' } else { b'0' };
            assert_eq!(
                k.verify(std::str::from_utf8(&forged).unwrap()),
                Err(FlowError::Forged)
            );
        }
        // Another pool's key: refused.
        assert_eq!(
            FlowKeys::new(b"other", 7).verify(&t),
            Err(FlowError::Forged)
        );
        assert_eq!(k.verify("zz"), Err(FlowError::NotAToken));
        assert_eq!(k.verify(&"0".repeat(126)), Err(FlowError::NotAToken));
        let v6: SocketAddr = "[2001:db8::1]:5061".parse().unwrap();
        assert_eq!(k.verify(&k.token(Transport::Udp, 0, v6)).unwrap().peer, v6);
        // No relay address: the token says so.
        let lone = FlowKeys::new(b"pool secret", 7);
        assert_eq!(
            lone.verify(&lone.token(Transport::Tcp, 1, peer))
                .unwrap()
                .instance,
            None
        );
    }

    #[test]
    fn any_instance_of_the_pool_knows_where_a_flow_is() {
        let a = target(Transport::Udp, "10.0.0.5:5060");
        let b = target(Transport::Udp, "10.0.0.6:5060");
        let peer: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let at_a = FlowKeys::new(b"pool secret", 7).with_instance(Some(a));
        let at_b = FlowKeys::new(b"pool secret", 9).with_instance(Some(b));
        let token = at_a.token(Transport::Tls, 42, peer);
        assert!(matches!(at_a.place(&token), Ok(Place::Here(f)) if f.conn == 42));
        let flow = at_a.verify(&token).unwrap();
        assert_eq!(
            at_b.place(&token),
            Ok(Place::Elsewhere { instance: a, flow })
        );
        // a restarted: same address, another epoch; its old flows are gone.
        let a_again = FlowKeys::new(b"pool secret", 8).with_instance(Some(a));
        assert_eq!(a_again.place(&token), Ok(Place::Gone(flow)));
        // A token naming no instance is here only in its own process.
        let lone = FlowKeys::new(b"pool secret", 7);
        let t = lone.token(Transport::Udp, 0, peer);
        assert!(matches!(lone.place(&t), Ok(Place::Here(_))));
        assert!(matches!(at_b.place(&t), Ok(Place::Gone(_))));
        assert_eq!(
            FlowKeys::new(b"other", 7).place(&token),
            Err(FlowError::Forged)
        );
    }

    #[test]
    fn version_1_tokens_are_still_read() {
        // A v1 token as the previous release wrote it: no instance part.
        let k = FlowKeys::new(b"pool secret", 7);
        let peer: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let mut p = vec![V1, 2];
        p.extend_from_slice(&7u32.to_be_bytes());
        p.extend_from_slice(&42u64.to_be_bytes());
        put_addr(&mut p, peer);
        let tag = hmac::sign(&k.key, &p);
        p.extend_from_slice(&tag.as_ref()[..MAC]);
        let t = hex(&p);
        assert!(looks_like_token(t.as_bytes()));
        let f = k.verify(&t).unwrap();
        assert_eq!(
            (f.transport, f.conn, f.peer, f.instance),
            (Transport::Tls, 42, peer, None)
        );
        assert!(matches!(k.place(&t), Ok(Place::Here(_))));
    }
}
