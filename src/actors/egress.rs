//! Which listener a message leaves by on a multi-homed host (an address per network
//! interface): the one bound to the address the kernel would pick as source toward the
//! destination, as Kamailio's `mhomed` does. The kernel is asked by connecting a UDP socket
//! that is never used (no packet is sent); the answer is cached per destination address.
//! A host with one listener per transport and family never asks.

use std::net::{IpAddr, SocketAddr};

use dashmap::DashMap;

/// The most destinations remembered; past it the cache starts over (routes rarely change,
/// the lookup is three system calls).
const CAPACITY: usize = 4096;

/// Source addresses by destination, as the routing table gives them.
#[derive(Debug, Default)]
pub struct SourceCache {
    by_dest: DashMap<IpAddr, IpAddr>,
}

impl SourceCache {
    /// The local address the kernel would send from toward `dest`; `None` when it has no
    /// route there.
    pub fn source_for(&self, dest: IpAddr) -> Option<IpAddr> {
        if let Some(src) = self.by_dest.get(&dest) {
            return Some(*src);
        }
        let src = ask_kernel(dest)?;
        if self.by_dest.len() >= CAPACITY {
            self.by_dest.clear();
        }
        self.by_dest.insert(dest, src);
        Some(src)
    }
}

fn ask_kernel(dest: IpAddr) -> Option<IpAddr> {
    let any: SocketAddr = match dest {
        IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = std::net::UdpSocket::bind(any).ok()?;
    probe.connect((dest, 9)).ok()?;
    Some(probe.local_addr().ok()?.ip())
}

/// Among `candidates` (local addresses of one transport and family), the one `source`
/// names, or a wildcard one; `None` when none fits.
pub fn pick(
    candidates: impl Iterator<Item = SocketAddr> + Clone,
    source: IpAddr,
) -> Option<SocketAddr> {
    candidates
        .clone()
        .find(|a| a.ip() == source)
        .or_else(|| candidates.into_iter().find(|a| a.ip().is_unspecified()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_names_the_source_toward_a_destination() {
        let cache = SourceCache::default();
        // Toward a loopback address the kernel sends from loopback.
        let dest: IpAddr = "127.0.0.77".parse().unwrap();
        let src = cache.source_for(dest);
        assert!(src.is_some_and(|s| s.is_loopback()), "{src:?}");
        assert_eq!(cache.by_dest.len(), 1);
        assert_eq!(cache.source_for(dest), src, "from the cache");
    }

    #[test]
    fn the_listener_bound_to_the_source_is_picked_else_a_wildcard() {
        let a: SocketAddr = "10.0.0.5:5060".parse().unwrap();
        let b: SocketAddr = "192.0.2.5:5060".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:5070".parse().unwrap();
        let list = [a, b, any];
        assert_eq!(pick(list.iter().copied(), b.ip()), Some(b));
        assert_eq!(
            pick(list.iter().copied(), "10.9.9.9".parse().unwrap()),
            Some(any)
        );
        assert_eq!(pick([a].iter().copied(), b.ip()), None);
    }
}
