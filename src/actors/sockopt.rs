//! Per-listener socket options: the DSCP (RFC 2474) of the SIP packets a listener sends,
//! as the IPv4 type-of-service byte or the IPv6 traffic class (the six DSCP bits above the
//! two ECN bits). Set on the listen socket (datagrams sent from it, and connections it
//! accepts), and on each connection this instance opens toward a server.

use std::net::SocketAddr;

/// Sets the DSCP of `sock`, whose addresses are of the family of `family_of`.
pub fn set_dscp(
    sock: socket2::SockRef<'_>,
    family_of: SocketAddr,
    dscp: u8,
) -> std::io::Result<()> {
    let value = u32::from(dscp) << 2;
    if family_of.is_ipv6() {
        sock.set_tclass_v6(value)
    } else {
        sock.set_tos(value)
    }
}

/// The DSCP `sock` sends with.
#[cfg(test)]
pub fn dscp(sock: socket2::SockRef<'_>, family_of: SocketAddr) -> std::io::Result<u8> {
    let value = if family_of.is_ipv6() {
        sock.tclass_v6()?
    } else {
        sock.tos()?
    };
    Ok(u8::try_from(value >> 2).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The listen sockets as the proxy binds them carry the DSCP, and so does a connection
    /// one of them accepts.
    #[tokio::test]
    async fn listen_sockets_and_accepted_connections_carry_the_dscp() {
        let udp = super::super::bind_udp("127.0.0.1:0".parse().unwrap(), Some(26), true).unwrap();
        let local = udp.local_addr().unwrap();
        assert_eq!(dscp(socket2::SockRef::from(&udp), local).unwrap(), 26);
        let tcp = super::super::bind_tcp("127.0.0.1:0".parse().unwrap(), Some(46)).unwrap();
        let local = tcp.local_addr().unwrap();
        assert_eq!(dscp(socket2::SockRef::from(&tcp), local).unwrap(), 46);
        let _client = tokio::net::TcpStream::connect(local).await.unwrap();
        let (accepted, _) = tcp.accept().await.unwrap();
        assert_eq!(dscp(socket2::SockRef::from(&accepted), local).unwrap(), 46);
        let plain = super::super::bind_udp("127.0.0.1:0".parse().unwrap(), None, false).unwrap();
        let local = plain.local_addr().unwrap();
        assert_eq!(dscp(socket2::SockRef::from(&plain), local).unwrap(), 0);
    }

    #[test]
    fn dscp_is_read_back_for_ipv4_and_ipv6() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(s) = std::net::UdpSocket::bind(addr) else {
                continue; // no IPv6 on this host
            };
            let local = s.local_addr().unwrap();
            set_dscp(socket2::SockRef::from(&s), local, 46).unwrap();
            assert_eq!(
                dscp(socket2::SockRef::from(&s), local).unwrap(),
                46,
                "{addr}"
            );
        }
    }
}
