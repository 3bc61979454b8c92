//! ICMP errors for datagrams this proxy sent, as Linux reports them on a UDP socket with
//! `IP_RECVERR` / `IPV6_RECVERR` (ip(7), ipv6(7)): each is an entry on the socket's error
//! queue naming the original destination. A port or host unreachable toward a server is
//! the network saying within milliseconds what the failover timer would learn in a second:
//! the transactions sent there fail over at once and the server's probe counts it.
//!
//! Owns only the socket options and reading the error queue (through `nix`: no unsafe
//! code here); what the evidence means is decided by the health layer and the response
//! contexts.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};

use nix::libc;
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
};

/// Asks the kernel to queue ICMP errors on this UDP socket (IPv4 or IPv6).
pub fn enable(sock: &impl AsFd, ipv6: bool) -> std::io::Result<()> {
    let r = if ipv6 {
        setsockopt(sock, sockopt::Ipv6RecvErr, &true)
    } else {
        setsockopt(sock, sockopt::Ipv4RecvErr, &true)
    };
    r.map_err(std::io::Error::from)
}

/// A datagram this proxy sent that the network refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable {
    /// Where the datagram was going.
    pub dest: SocketAddr,
    /// What the ICMP error said, as an errno (`ECONNREFUSED`: port unreachable;
    /// `EHOSTUNREACH`, `ENETUNREACH`: no route).
    pub errno: i32,
}

impl Unreachable {
    /// A short label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self.errno {
            libc::ECONNREFUSED => "port_unreachable",
            libc::EHOSTUNREACH => "host_unreachable",
            libc::ENETUNREACH => "net_unreachable",
            _ => "unreachable",
        }
    }
}

/// Takes up to `max` entries off the socket's error queue (never blocks). Entries that are
/// not ICMP unreachables toward a known destination are dropped.
pub fn drain(sock: &impl AsRawFd, max: usize) -> Vec<Unreachable> {
    let mut out = Vec::new();
    let mut data = [0u8; 256];
    let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
    for _ in 0..max {
        let mut iov = [IoSliceMut::new(&mut data)];
        let Ok(msg) = recvmsg::<SockaddrStorage>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
        ) else {
            break;
        };
        let dest = msg.address.and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                })
        });
        let Ok(cmsgs) = msg.cmsgs() else { continue };
        for c in cmsgs {
            let err = match c {
                ControlMessageOwned::Ipv4RecvErr(e, _) | ControlMessageOwned::Ipv6RecvErr(e, _) => {
                    e
                }
                _ => continue,
            };
            let from_icmp = matches!(
                err.ee_origin,
                libc::SO_EE_ORIGIN_ICMP | libc::SO_EE_ORIGIN_ICMP6
            );
            let errno = i32::try_from(err.ee_errno).unwrap_or(0);
            let unreachable = matches!(
                errno,
                libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH
            );
            if let (true, true, Some(dest)) = (from_icmp, unreachable, dest) {
                out.push(Unreachable { dest, errno });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_datagram_to_a_closed_port_comes_back_as_port_unreachable() {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        enable(&sock, false).unwrap();
        // A port nothing listens on: bind one, note it, close it.
        let closed = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        sock.send_to(b"OPTIONS", closed).await.unwrap();
        // The kernel answers with ICMP port unreachable at once; the socket's next receive
        // reports the error, and the queue says which datagram it was.
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(std::time::Duration::from_secs(2), sock.recv_from(&mut buf))
            .await
            .expect("the error wakes the socket");
        assert!(r.is_err(), "{r:?}");
        let errors = drain(&sock, 8);
        assert_eq!(
            errors,
            [Unreachable {
                dest: closed,
                errno: libc::ECONNREFUSED
            }]
        );
        assert_eq!(errors[0].reason(), "port_unreachable");
        assert!(drain(&sock, 8).is_empty());
    }

    #[tokio::test]
    async fn a_pending_icmp_error_does_not_fail_the_next_send_elsewhere() {
        let sock = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        enable(sock.as_ref(), false).unwrap();
        let closed = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let open = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(b"probe", closed).await.unwrap();
        // Let the ICMP error arrive (it is generated synchronously on loopback).
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let to = open.local_addr().unwrap();
        super::super::transport::send_udp(&sock, to, bytes::Bytes::from_static(b"BYE"))
            .expect("the send to a live peer goes out");
        let mut buf = [0u8; 8];
        let (n, _) =
            tokio::time::timeout(std::time::Duration::from_secs(2), open.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(&buf[..n], b"BYE");
        // What the error was is still on the queue for the receive loop.
        assert_eq!(drain(sock.as_ref(), 8).len(), 1);
    }
}
