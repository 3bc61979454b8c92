//! Locating SIP servers by name (RFC 3263) with hickory-resolver.
//!
//! A name without an explicit port is looked up as an SRV record (`_sip._udp`, `_sip._tcp`,
//! `_sips._tcp`), the targets ordered by priority and then weight (RFC 2782), then each
//! target's A/AAAA records; with a port, or without SRV records, the name's own A/AAAA
//! records are used. Answers are cached until their TTL runs out, so a changed record is
//! picked up at the next request after expiry. IP literals never touch DNS.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use crate::config::HostPort;
use crate::sip::addr::Target;
use crate::sip::transport::Transport;

/// One SRV answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower is preferred.
    pub priority: u16,
    /// Share among records of equal priority.
    pub weight: u16,
    /// Port to use.
    pub port: u16,
    /// Host to look up.
    pub target: String,
}

/// Orders SRV records for trying (RFC 2782): by priority, and within a priority by a
/// weighted random draw; `draw(total)` returns a number in `0..=total`.
pub fn order_srv(mut records: Vec<SrvRecord>, mut draw: impl FnMut(u32) -> u32) -> Vec<SrvRecord> {
    records.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let prio = records.first().map_or(0, |r| r.priority);
        let end = records
            .iter()
            .position(|r| r.priority != prio)
            .unwrap_or(records.len());
        let mut group: Vec<SrvRecord> = records.drain(..end).collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = draw(total);
            let mut running = 0u32;
            let idx = group
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(0);
            out.push(group.remove(idx));
        }
    }
    out
}

/// Resolves [`HostPort`]s to [`Target`]s with a TTL-bounded cache.
pub struct Locator {
    resolver: TokioResolver,
    cache: DashMap<String, (Target, Instant)>,
}

impl std::fmt::Debug for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locator")
            .field("cached", &self.cache.len())
            .finish()
    }
}

/// The resolver could not be set up.
#[derive(Debug, Clone)]
pub struct LocatorError(pub String);

impl Locator {
    /// A locator asking `servers`, or the system's resolvers (`/etc/resolv.conf`) when
    /// `servers` is empty.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<Locator, LocatorError> {
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| LocatorError(e.to_string()))?
        } else {
            let ns = servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    let mut cfg = NameServerConfig::udp_and_tcp(s.ip());
                    cfg.connections = vec![udp, tcp];
                    cfg
                })
                .collect();
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(ns),
                TokioRuntimeProvider::default(),
            );
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        };
        let opts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = 2;
        // sippool keeps its own cache of located targets.
        opts.cache_size = 0;
        let resolver = builder.build().map_err(|e| LocatorError(e.to_string()))?;
        Ok(Locator {
            resolver,
            cache: DashMap::new(),
        })
    }

    /// Where to send for `hp`: the IP literal itself, a cached answer, or a fresh lookup.
    /// `None` when the name does not resolve.
    pub async fn locate(&self, hp: &HostPort) -> Option<Target> {
        if let Some(target) = self.locate_now(hp) {
            return Some(target);
        }
        let (target, until) = self.lookup(hp).await?;
        self.cache.insert(hp.to_string(), (target, until));
        Some(target)
    }

    /// What [`Self::locate`] answers without asking DNS: the IP literal itself or a cached
    /// answer still valid; `None` when it would have to ask. A transaction tries this
    /// first, and awaits a lookup only when it must.
    pub fn locate_now(&self, hp: &HostPort) -> Option<Target> {
        if let Some(addr) = hp.socket_addr() {
            return Some(Target {
                transport: hp.transport,
                addr,
            });
        }
        let e = self.cache.get(&hp.to_string())?;
        (e.1 > Instant::now()).then_some(e.0)
    }

    /// Every target for `hp` in the order a client tries them (RFC 3263 section 4.3: the
    /// SRV targets by priority and weight, else the name's own address), without caching.
    pub async fn candidates(&self, hp: &HostPort) -> Vec<Target> {
        if let Some(addr) = hp.socket_addr() {
            return vec![Target {
                transport: hp.transport,
                addr,
            }];
        }
        let mut out = Vec::new();
        if let Some((records, _)) = self.srv(hp).await {
            for r in records {
                if let Some((ip, _)) = self.address(&r.target).await {
                    out.push(Target {
                        transport: hp.transport,
                        addr: SocketAddr::new(ip, r.port),
                    });
                }
            }
        }
        if out.is_empty() {
            if let Some((ip, _)) = self.address(&hp.host).await {
                out.push(Target {
                    transport: hp.transport,
                    addr: SocketAddr::new(ip, hp.port),
                });
            }
        }
        out
    }

    /// The SRV records for `hp` in trying order, and until when they are valid; `None`
    /// with an explicit port or without records.
    async fn srv(&self, hp: &HostPort) -> Option<(Vec<SrvRecord>, Instant)> {
        if hp.explicit_port {
            return None;
        }
        let service = match hp.transport {
            Transport::Udp => "_sip._udp",
            Transport::Tcp => "_sip._tcp",
            Transport::Tls => "_sips._tcp",
        };
        let srv = self
            .resolver
            .srv_lookup(format!("{service}.{}", fqdn(&hp.host)))
            .await
            .ok()?;
        let records: Vec<SrvRecord> = srv
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some(SrvRecord {
                    priority: s.priority,
                    weight: s.weight,
                    port: s.port,
                    target: s.target.to_string(),
                }),
                _ => None,
            })
            .collect();
        let ordered = order_srv(records, |total| {
            rand::Rng::gen_range(&mut rand::thread_rng(), 0..=total)
        });
        Some((ordered, srv.valid_until()))
    }

    async fn lookup(&self, hp: &HostPort) -> Option<(Target, Instant)> {
        if let Some((records, srv_until)) = self.srv(hp).await {
            for r in records {
                if let Some((ip, until)) = self.address(&r.target).await {
                    let target = Target {
                        transport: hp.transport,
                        addr: SocketAddr::new(ip, r.port),
                    };
                    return Some((target, until.min(srv_until)));
                }
            }
        }
        let (ip, until) = self.address(&hp.host).await?;
        Some((
            Target {
                transport: hp.transport,
                addr: SocketAddr::new(ip, hp.port),
            },
            until,
        ))
    }

    async fn address(&self, name: &str) -> Option<(std::net::IpAddr, Instant)> {
        let ips = self.resolver.lookup_ip(fqdn(name)).await.ok()?;
        let until = ips.valid_until();
        ips.iter().next().map(|ip| (ip, until))
    }
}

/// The name with a final dot, so no search domain is appended.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: 5060,
            target: target.into(),
        }
    }

    #[test]
    fn lower_priority_first_then_weighted() {
        let recs = vec![rec(20, 0, "c"), rec(10, 90, "a"), rec(10, 10, "b")];
        // A draw of the maximum picks the last of the group ...
        let o = order_srv(recs.clone(), |total| total);
        let names: Vec<_> = o.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(names, vec!["b", "a", "c"]);
        // ... a draw of 1 the first.
        let o = order_srv(recs, |_| 1);
        let names: Vec<_> = o.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(names, vec!["a", "b", "c"]);
    }

    #[test]
    fn fqdn_adds_one_dot() {
        assert_eq!(fqdn("pbx.example"), "pbx.example.");
        assert_eq!(fqdn("pbx.example."), "pbx.example.");
    }
}
