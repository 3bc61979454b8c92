//! Addresses as a proxy writes them in config and URIs: `host[:port][;transport=...]`
//! next hops and the sockets an instance listens on.
//!
//! Owns only parsing and printing; resolving a host name is the DNS layer's job.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use crate::sip::transport::Transport;

/// An upstream or static-route address: `host[:port][;transport=udp|tcp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port, 5060 when not given.
    pub port: u16,
    /// Transport, UDP when not given.
    pub transport: Transport,
    /// Whether the port was written (RFC 3263: then no SRV lookup).
    pub explicit_port: bool,
}

impl HostPort {
    /// The socket address when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        parse_ip(&self.host).map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl From<Target> for HostPort {
    /// The next hop at a resolved address (its port written: no SRV lookup).
    fn from(t: Target) -> Self {
        HostPort {
            host: t.addr.ip().to_string(),
            port: t.addr.port(),
            transport: t.transport,
            explicit_port: true,
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(
                f,
                "[{}]:{};transport={}",
                self.host, self.port, self.transport
            )
        } else {
            write!(
                f,
                "{}:{};transport={}",
                self.host, self.port, self.transport
            )
        }
    }
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let mut parts = s.split(';');
        let hostport = parts.next().unwrap_or_default();
        let mut transport = Transport::Udp;
        for param in parts {
            match param.split_once('=') {
                Some((name, value)) if name.eq_ignore_ascii_case("transport") => {
                    transport = Transport::from_str(value)
                        .map_err(|_| format!("unknown transport '{value}' (udp or tcp)"))?;
                }
                _ => return Err(format!("unknown parameter '{param}' (only transport=)")),
            }
        }
        let (host, port) = split_host_port(hostport)?;
        Ok(HostPort {
            host,
            port: port.unwrap_or(transport.default_port()),
            transport,
            explicit_port: port.is_some(),
        })
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let bad_port = |p: &str| format!("invalid port '{p}'");
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unterminated IPv6 literal in '{s}'"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse::<u16>().map_err(|_| bad_port(p))?),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected '{after}' after IPv6 literal")),
        };
        return Ok((host.to_string(), port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| bad_port(p))?)),
        None => (s, None),
    };
    if host.is_empty() {
        return Err("empty host".into());
    }
    if host.contains(':') {
        return Err(format!("IPv6 address must be in brackets: '{s}'"));
    }
    Ok((host.to_string(), port))
}

/// Parses an IP address literal exactly as `str::parse::<IpAddr>` does, with a quick path
/// for the dotted-quad IPv4 form that messages carry most (anything else goes to the
/// standard parser).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    match parse_ipv4_quick(s.as_bytes()) {
        Some(ip) => Some(IpAddr::V4(ip)),
        None => s.parse().ok(),
    }
}

/// A plain dotted quad (four decimal octets, no leading zeros, as the standard parser
/// requires); `None` for anything else, which may still be an address.
fn parse_ipv4_quick(s: &[u8]) -> Option<Ipv4Addr> {
    // One pass, no splitting: this runs several times per request (local checks, Via
    // received, next-hop addresses).
    if !(7..=15).contains(&s.len()) {
        return None;
    }
    let mut octets = [0u8; 4];
    let mut part = 0usize;
    let mut value: u16 = 0;
    let mut digits = 0u8;
    for &b in s {
        if b == b'.' {
            if digits == 0 {
                return None;
            }
            *octets.get_mut(part)? = u8::try_from(value).ok()?;
            part += 1;
            value = 0;
            digits = 0;
            continue;
        }
        let d = b.wrapping_sub(b'0');
        // Not a digit, a fourth digit, or a digit after a leading zero.
        if d > 9 || digits == 3 || (digits == 1 && value == 0) {
            return None;
        }
        value = value * 10 + u16::from(d);
        digits += 1;
    }
    if part != 3 || digits == 0 {
        return None;
    }
    *octets.get_mut(3)? = u8::try_from(value).ok()?;
    Some(Ipv4Addr::from(octets))
}

/// Appends `ip` as `Display` writes it (IPv4 without going through the formatter).
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u16(out, u16::from(o));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends a decimal number (what `Display` writes, without the formatter).
pub fn push_u16(out: &mut String, n: u16) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// A listen socket after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Transport of the socket.
    pub transport: Transport,
    /// Address to bind.
    pub address: SocketAddr,
    /// Host and port written into Via, Record-Route and Path for traffic through this
    /// listener (a public address per network interface; no port: the listener's own);
    /// `None`: the instance's advertised host with this listener's port.
    pub advertised: Option<(String, Option<u16>)>,
    /// DSCP of the packets sent through this socket (RFC 2474); `None`: the system's.
    pub dscp: Option<u8>,
    /// Every connection starts with a PROXY protocol v2 header (a stream listener behind
    /// an L4 load balancer): the client's address is taken from it.
    pub proxy_protocol: bool,
    /// The ports of the workers' own sockets on this (UDP) listener's address, one per
    /// worker (`runtime.workers`; empty with one): a worker's requests toward servers
    /// leave by its own and its Via names that port, so their responses come back to it.
    /// Record-Route and Path name the listener.
    pub worker_ports: Vec<u16>,
}

impl Listener {
    /// A listen socket with no per-listener options.
    pub fn new(transport: Transport, address: SocketAddr) -> Self {
        Listener {
            transport,
            address,
            advertised: None,
            dscp: None,
            proxy_protocol: false,
            worker_ports: Vec::new(),
        }
    }
}

/// A resolved next hop (RFC 3263): the transport and address a request is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Transport to use.
    pub transport: Transport,
    /// Address to send to.
    pub addr: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_ip_parse_agrees_with_std() {
        for s in [
            "192.0.2.1",
            "0.0.0.0",
            "255.255.255.255",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "1..3.4",
            "1.2.3.4 ",
            "",
            "::1",
            "2001:db8::9:1",
            "::ffff:1.2.3.4",
            "a.b.c.d",
            "1.2.3.0004",
            "+1.2.3.4",
        ] {
            assert_eq!(parse_ip(s), s.parse::<IpAddr>().ok(), "{s}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// Digits and dots in any order (and a stray letter): every case the one-pass
        /// parser decides, std decides the same.
        #[test]
        fn quick_ip_parse_agrees_with_std_on_dotted_strings(s in "[0-9.x]{0,16}") {
            proptest::prop_assert_eq!(parse_ip(&s), s.parse::<IpAddr>().ok());
        }

        /// Four groups of one to three digits: addresses, out-of-range octets and leading
        /// zeros.
        #[test]
        fn quick_ip_parse_agrees_with_std_on_quads(
            s in "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}"
        ) {
            proptest::prop_assert_eq!(parse_ip(&s), s.parse::<IpAddr>().ok());
        }
    }

    #[test]
    fn pushes_as_display() {
        for ip in ["0.0.0.0", "10.200.3.45", "255.255.255.255", "2001:db8::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut s = String::new();
            push_ip(&mut s, ip);
            assert_eq!(s, ip.to_string());
        }
        for n in [0u16, 7, 10, 99, 100, 5060, 65535] {
            let mut s = String::new();
            push_u16(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }
}
