//! STUN Binding (RFC 5389) as the UDP keep-alive of SIP Outbound (RFC 5626 sections 4.4.2
//! and 8.4): a phone behind NAT sends a Binding request to the SIP port it registered
//! through and learns from the answer's XOR-MAPPED-ADDRESS whether its NAT binding still
//! holds. A UDP listener tells STUN from SIP by the first byte ([`is_stun`]) and answers with
//! [`answer`].
//!
//! Owns only the wire format: a Binding request in, the bytes of the answer out. No
//! authentication (RFC 5626's keep-alive is unauthenticated); unknown
//! comprehension-required attributes get a 420 error (RFC 5389 section 7.3.1); anything
//! malformed is refused with a reason and costs nothing more than a drop.

use std::net::{IpAddr, SocketAddr};

/// RFC 5389 section 6: distinguishes RFC 5389 STUN from RFC 3489 and from other traffic.
const MAGIC_COOKIE: u32 = 0x2112_a442;
const HEADER_LEN: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_RESPONSE: u16 = 0x0101;
const BINDING_ERROR: u16 = 0x0111;
const MAPPED_ADDRESS: u16 = 0x0001;
const ERROR_CODE: u16 = 0x0009;
const UNKNOWN_ATTRIBUTES: u16 = 0x000a;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
const SOFTWARE: u16 = 0x8022;
const FINGERPRINT: u16 = 0x8028;
/// RFC 5389 section 15.5: the CRC-32 is XORed with this ("STUN").
const FINGERPRINT_XOR: u32 = 0x5354_554e;
/// Comprehension-required attributes this server understands (and may ignore): those of
/// RFC 5389 and the ICE ones (RFC 8445) a keep-alive may carry.
const UNDERSTOOD: [u16; 10] = [
    0x0001, 0x0006, 0x0008, 0x0009, 0x000a, 0x0014, 0x0015, 0x0020, 0x0024, 0x0025,
];
const SOFTWARE_NAME: &[u8] = b"sippool";

/// Whether a datagram is STUN rather than SIP, by its first byte (RFC 7983 section 7:
/// 0 to 3 is STUN); a SIP message starts with a letter, a keep-alive with CR or LF.
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|&b| b <= 3)
}

/// Why a STUN datagram gets no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StunError {
    /// Shorter than a header, or its length field disagrees with the datagram.
    Malformed,
    /// A STUN message, but not a Binding request (an indication, a response, another
    /// method): nothing to answer.
    NotBindingRequest,
    /// An attribute runs past the end of the message.
    BadAttribute,
    /// A FINGERPRINT that does not match the message.
    BadFingerprint,
}

impl StunError {
    /// A short label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            StunError::Malformed => "stun_malformed",
            StunError::NotBindingRequest => "stun_not_binding_request",
            StunError::BadAttribute => "stun_bad_attribute",
            StunError::BadFingerprint => "stun_bad_fingerprint",
        }
    }
}

/// The answer to a STUN Binding request that came from `source`: a Binding success response
/// carrying XOR-MAPPED-ADDRESS (MAPPED-ADDRESS for an RFC 3489 request without the magic
/// cookie), with FINGERPRINT when the request had one; or a 420 error response listing the
/// comprehension-required attributes not understood.
pub fn answer(request: &[u8], source: SocketAddr) -> Result<Vec<u8>, StunError> {
    let header = request.get(..HEADER_LEN).ok_or(StunError::Malformed)?;
    let msg_type = be16(header, 0).ok_or(StunError::Malformed)?;
    let length = usize::from(be16(header, 2).ok_or(StunError::Malformed)?);
    if msg_type & 0xc000 != 0 || length % 4 != 0 || HEADER_LEN + length != request.len() {
        return Err(StunError::Malformed);
    }
    if msg_type != BINDING_REQUEST {
        return Err(StunError::NotBindingRequest);
    }
    let rfc5389 = be32(header, 4) == Some(MAGIC_COOKIE);
    // Bytes 4..20: the magic cookie and the transaction id (RFC 3489: all of it is the id).
    let id = header.get(4..HEADER_LEN).ok_or(StunError::Malformed)?;
    let mut unknown = Vec::new();
    let mut fingerprint = false;
    let mut at = HEADER_LEN;
    while at < request.len() {
        let kind = be16(request, at).ok_or(StunError::BadAttribute)?;
        let len = usize::from(be16(request, at + 2).ok_or(StunError::BadAttribute)?);
        let end = at + 4 + len;
        if end > request.len() {
            return Err(StunError::BadAttribute);
        }
        if kind == FINGERPRINT {
            // The last attribute: a CRC over everything before it.
            let want = be32(request, at + 4).ok_or(StunError::BadAttribute)?;
            let before = request.get(..at).ok_or(StunError::BadAttribute)?;
            if len != 4 || end != request.len() || crc(before) != want {
                return Err(StunError::BadFingerprint);
            }
            fingerprint = true;
        } else if kind < 0x8000 && !UNDERSTOOD.contains(&kind) {
            unknown.push(kind);
        }
        // Attributes are padded to four bytes.
        at = end + (4 - len % 4) % 4;
    }
    let mut out = Vec::with_capacity(64);
    if unknown.is_empty() {
        out.extend_from_slice(&BINDING_RESPONSE.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(id);
        if rfc5389 {
            push_attr(&mut out, XOR_MAPPED_ADDRESS, &xor_address(source, id));
        } else {
            push_attr(&mut out, MAPPED_ADDRESS, &plain_address(source));
        }
    } else {
        out.extend_from_slice(&BINDING_ERROR.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(id);
        // Class 4, number 20, and a reason phrase.
        let mut error = vec![0, 0, 4, 20];
        error.extend_from_slice(b"Unknown Attribute");
        push_attr(&mut out, ERROR_CODE, &error);
        let list: Vec<u8> = unknown.iter().flat_map(|k| k.to_be_bytes()).collect();
        push_attr(&mut out, UNKNOWN_ATTRIBUTES, &list);
    }
    push_attr(&mut out, SOFTWARE, SOFTWARE_NAME);
    if fingerprint && rfc5389 {
        set_length(&mut out, 8);
        let value = crc(&out);
        push_attr(&mut out, FINGERPRINT, &value.to_be_bytes());
    }
    set_length(&mut out, 0);
    Ok(out)
}

/// Whether an answer made by [`answer`] is an error response (420) rather than a success.
pub fn is_error_response(answer: &[u8]) -> bool {
    be16(answer, 0) == Some(BINDING_ERROR)
}

/// Writes the message length field: the bytes after the header, plus `extra` still to come.
fn set_length(out: &mut [u8], extra: usize) {
    let len = u16::try_from(out.len().saturating_sub(HEADER_LEN) + extra).unwrap_or(u16::MAX);
    if let Some(field) = out.get_mut(2..4) {
        field.copy_from_slice(&len.to_be_bytes());
    }
}

fn push_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = u16::try_from(value.len()).unwrap_or(0);
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value.get(..usize::from(len)).unwrap_or_default());
    out.resize(out.len() + (4 - value.len() % 4) % 4, 0);
}

/// XOR-MAPPED-ADDRESS (RFC 5389 section 15.2): the port XORed with the cookie's top half,
/// the address with the cookie (IPv4) or the cookie and the transaction id (IPv6).
fn xor_address(source: SocketAddr, cookie_and_id: &[u8]) -> Vec<u8> {
    let port = source.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut v = vec![0];
    let address: Vec<u8> = match source.ip() {
        IpAddr::V4(ip) => {
            v.push(1);
            ip.octets().to_vec()
        }
        IpAddr::V6(ip) => {
            v.push(2);
            ip.octets().to_vec()
        }
    };
    v.extend_from_slice(&port.to_be_bytes());
    v.extend(address.iter().zip(cookie_and_id).map(|(a, k)| a ^ k));
    v
}

/// MAPPED-ADDRESS (RFC 3489 section 11.2.1), for clients that predate the magic cookie.
fn plain_address(source: SocketAddr) -> Vec<u8> {
    let mut v = vec![0];
    match source.ip() {
        IpAddr::V4(ip) => {
            v.push(1);
            v.extend_from_slice(&source.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            v.push(2);
            v.extend_from_slice(&source.port().to_be_bytes());
            v.extend_from_slice(&ip.octets());
        }
    }
    v
}

fn crc(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes) ^ FINGERPRINT_XOR
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    fn request(attrs: &[(u16, &[u8])], fingerprint: bool) -> Vec<u8> {
        let mut m = BINDING_REQUEST.to_be_bytes().to_vec();
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&ID);
        for (k, v) in attrs {
            push_attr(&mut m, *k, v);
        }
        if fingerprint {
            set_length(&mut m, 8);
            let c = crc(&m);
            push_attr(&mut m, FINGERPRINT, &c.to_be_bytes());
        }
        set_length(&mut m, 0);
        m
    }

    /// The attributes of a message, by type.
    fn attrs(m: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = HEADER_LEN;
        while at < m.len() {
            let k = be16(m, at).unwrap();
            let l = usize::from(be16(m, at + 2).unwrap());
            out.push((k, m[at + 4..at + 4 + l].to_vec()));
            at += 4 + l + (4 - l % 4) % 4;
        }
        out
    }

    #[test]
    fn tells_stun_from_sip_by_the_first_byte() {
        assert!(is_stun(&request(&[], false)));
        assert!(!is_stun(b"OPTIONS sip:x SIP/2.0\r\n"));
        assert!(!is_stun(b"\r\n\r\n"));
        assert!(!is_stun(b""));
    }

    #[test]
    fn binding_request_gets_its_xor_mapped_address() {
        let src: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let resp = answer(&request(&[], false), src).unwrap();
        assert_eq!(be16(&resp, 0), Some(BINDING_RESPONSE));
        assert_eq!(
            usize::from(be16(&resp, 2).unwrap()),
            resp.len() - HEADER_LEN
        );
        assert_eq!(&resp[8..20], &ID);
        let a = attrs(&resp);
        let (_, x) = a.iter().find(|(k, _)| *k == XOR_MAPPED_ADDRESS).unwrap();
        // RFC 5769 section 2.2's arithmetic: 32853 ^ 0x2112 = 0xa147; 192.0.2.1 ^ cookie.
        assert_eq!(x, &[0, 1, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]);
        assert!(!a.iter().any(|(k, _)| *k == FINGERPRINT));
    }

    #[test]
    fn ipv6_source_is_xored_with_cookie_and_id() {
        let src: SocketAddr = "[2001:db8::1]:5060".parse().unwrap();
        let resp = answer(&request(&[], false), src).unwrap();
        let a = attrs(&resp);
        let (_, x) = a.iter().find(|(k, _)| *k == XOR_MAPPED_ADDRESS).unwrap();
        assert_eq!(x.len(), 20);
        assert_eq!(x[1], 2);
        let mut key = MAGIC_COOKIE.to_be_bytes().to_vec();
        key.extend_from_slice(&ID);
        let ip: Vec<u8> = x[4..].iter().zip(&key).map(|(a, k)| a ^ k).collect();
        assert_eq!(
            ip,
            "2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
    }

    #[test]
    fn fingerprint_in_request_means_fingerprint_in_answer() {
        let src: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let resp = answer(&request(&[(SOFTWARE, b"baresip")], true), src).unwrap();
        let a = attrs(&resp);
        let (k, v) = a.last().unwrap();
        assert_eq!(*k, FINGERPRINT);
        let at = resp.len() - 8;
        assert_eq!(
            u32::from_be_bytes(v[..4].try_into().unwrap()),
            crc(&resp[..at])
        );
    }

    #[test]
    fn rfc3489_request_gets_mapped_address() {
        let mut req = request(&[], false);
        req[4..8].copy_from_slice(&[9, 9, 9, 9]);
        let resp = answer(&req, "10.0.0.1:5062".parse().unwrap()).unwrap();
        assert_eq!(&resp[4..20], &req[4..20]);
        let a = attrs(&resp);
        let (_, m) = a.iter().find(|(k, _)| *k == MAPPED_ADDRESS).unwrap();
        assert_eq!(m, &[0, 1, 0x13, 0xc6, 10, 0, 0, 1]);
    }

    #[test]
    fn unknown_required_attribute_gets_420() {
        let resp = answer(
            &request(&[(0x7777, b"x"), (0x8888, b"optional is fine")], false),
            "127.0.0.1:1".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(be16(&resp, 0), Some(BINDING_ERROR));
        let a = attrs(&resp);
        assert!(a.contains(&(UNKNOWN_ATTRIBUTES, vec![0x77, 0x77])));
        let (_, e) = a.iter().find(|(k, _)| *k == ERROR_CODE).unwrap();
        assert_eq!(&e[..4], &[0, 0, 4, 20]);
    }

    #[test]
    fn malformed_is_refused_never_panics() {
        let src: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let good = request(&[(SOFTWARE, b"abc")], true);
        assert_eq!(answer(&good[..10], src), Err(StunError::Malformed));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(answer(&long, src), Err(StunError::Malformed));
        let mut indication = good.clone();
        indication[1] = 0x11;
        assert_eq!(answer(&indication, src), Err(StunError::NotBindingRequest));
        let mut bad_fp = good.clone();
        let n = bad_fp.len();
        bad_fp[n - 1] ^= 1;
        assert_eq!(answer(&bad_fp, src), Err(StunError::BadFingerprint));
        let mut overrun = request(&[(SOFTWARE, b"abcd")], false);
        overrun[23] = 200;
        assert_eq!(answer(&overrun, src), Err(StunError::BadAttribute));
        // Every truncation and every single-byte change: an answer or an error, no panic.
        for i in 0..good.len() {
            let _ = answer(&good[..i], src);
            for v in [0u8, 0x7f, 0xff] {
                let mut m = good.clone();
                m[i] = v;
                let _ = answer(&m, src);
            }
        }
    }
}
