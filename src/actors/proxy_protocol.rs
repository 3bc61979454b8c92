//! PROXY protocol version 2 (HAProxy's specification) on stream listeners that sit behind
//! an L4 load balancer: the balancer opens the connection and sends, before anything else,
//! a binary header naming the client it accepted. The client's address taken from it is
//! the connection's peer for everything after: `received`/`rport`, flow tokens, the
//! per-address limits and the logs.
//!
//! Owns reading exactly the header from a fresh connection (nothing of the SIP or TLS bytes
//! after it), within a deadline; parsing is the `ppp` crate's. A connection without a valid
//! header is refused: on such a listener, the balancer is the only peer.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::v2::{Addresses, Command, Header};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature every version 2 header starts with.
const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part: signature, version and command, family and protocol, length.
const FIXED: usize = 16;
/// The most address and TLV bytes accepted after the fixed part (the spec's own bound for
/// a header sent in one segment is 536 bytes in all).
const MAX_REST: usize = 520;

/// Why a connection's header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It does not start with a version 2 PROXY header.
    NoHeader,
    /// The header is malformed or its address block too long.
    Malformed,
    /// The header did not arrive within the deadline, or the connection closed first.
    Timeout,
}

impl Refused {
    /// The label of the counter and log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::NoHeader => "no_header",
            Refused::Malformed => "malformed",
            Refused::Timeout => "timeout",
        }
    }
}

/// Reads the header at the start of `stream` and returns the client's address: the
/// header's source for a proxied TCP connection, `peer` (the balancer itself) for a LOCAL
/// one, such as its health checks.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    deadline: Duration,
) -> Result<SocketAddr, Refused> {
    let read = async {
        let mut fixed = [0u8; FIXED];
        stream
            .read_exact(&mut fixed)
            .await
            .map_err(|_| Refused::Timeout)?;
        if !fixed.starts_with(SIGNATURE) {
            return Err(Refused::NoHeader);
        }
        let rest = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
        if rest > MAX_REST {
            return Err(Refused::Malformed);
        }
        let mut header = Vec::with_capacity(FIXED + rest);
        header.extend_from_slice(&fixed);
        header.resize(FIXED + rest, 0);
        if let Some(tail) = header.get_mut(FIXED..) {
            stream
                .read_exact(tail)
                .await
                .map_err(|_| Refused::Timeout)?;
        }
        client_of(&header, peer)
    };
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| Refused::Timeout)?
}

/// The client a complete header names (see [`read_header`]).
pub fn client_of(header: &[u8], peer: SocketAddr) -> Result<SocketAddr, Refused> {
    let h = Header::try_from(header).map_err(|_| Refused::Malformed)?;
    if h.command == Command::Local {
        return Ok(peer);
    }
    match h.addresses {
        Addresses::IPv4(a) => Ok(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::IPv6(a) => Ok(SocketAddr::from((a.source_address, a.source_port))),
        Addresses::Unspecified | Addresses::Unix(_) => Err(Refused::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Protocol, Version};
    use tokio::io::AsyncWriteExt;

    fn header(command: Command, client: &str, server: &str) -> Vec<u8> {
        let client: SocketAddr = client.parse().unwrap();
        let server: SocketAddr = server.parse().unwrap();
        Builder::with_addresses(Version::Two | command, Protocol::Stream, (client, server))
            .build()
            .unwrap()
    }

    const LB: &str = "10.0.0.1:40000";

    #[tokio::test]
    async fn the_client_comes_from_the_header_and_nothing_after_it_is_read() {
        for (client, server) in [
            ("198.51.100.7:5062", "10.0.0.5:5061"),
            ("[2001:db8::7]:5062", "[2001:db8::5]:5061"),
        ] {
            let (mut a, mut b) = tokio::io::duplex(4096);
            let mut bytes = header(Command::Proxy, client, server);
            bytes.extend_from_slice(b"REGISTER sip:x SIP/2.0\r\n");
            a.write_all(&bytes).await.unwrap();
            let got = read_header(&mut b, LB.parse().unwrap(), Duration::from_secs(1)).await;
            assert_eq!(got, Ok(client.parse().unwrap()));
            let mut next = [0u8; 8];
            b.read_exact(&mut next).await.unwrap();
            assert_eq!(&next, b"REGISTER");
        }
    }

    #[tokio::test]
    async fn a_local_header_is_the_balancer_itself() {
        let bytes = header(Command::Local, "198.51.100.7:5062", "10.0.0.5:5061");
        assert_eq!(
            client_of(&bytes, LB.parse().unwrap()),
            Ok(LB.parse().unwrap())
        );
    }

    #[tokio::test]
    async fn no_header_a_bad_one_or_silence_is_refused() {
        let lb: SocketAddr = LB.parse().unwrap();
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(b"REGISTER sip:x SIP/2.0\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            read_header(&mut b, lb, Duration::from_secs(1)).await,
            Err(Refused::NoHeader)
        );
        let mut bad = header(Command::Proxy, "198.51.100.7:5062", "10.0.0.5:5061");
        bad[13] = 0x61; // an address family that does not exist
        assert_eq!(client_of(&bad, lb), Err(Refused::Malformed));
        let mut long = SIGNATURE.to_vec();
        long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(&long).await.unwrap();
        assert_eq!(
            read_header(&mut b, lb, Duration::from_secs(1)).await,
            Err(Refused::Malformed)
        );
        // Half a header, then nothing.
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(&SIGNATURE[..6]).await.unwrap();
        assert_eq!(
            read_header(&mut b, lb, Duration::from_millis(50)).await,
            Err(Refused::Timeout)
        );
    }
}
