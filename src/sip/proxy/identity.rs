//! Which names and addresses are this instance (RFC 3261 section 16.4: a proxy removes a
//! Route entry that names it), and how it writes itself into Via, Record-Route and Path.
//!
//! Owns the instance's own names; the names come from configuration and start-up (the host
//! name, the interfaces' addresses) and never change while a request is handled. Owns too
//! the pool this instance belongs to: its name, which Record-Route entries carry so that a
//! dialog outlives the instance that set it up, and the flow-token keys every instance of
//! the pool shares.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use crate::sip::addr::{Listener, Target};
use crate::sip::flow::FlowKeys;
use crate::sip::transport::Transport;
use crate::sip::uri::SipUri;

/// The listener a message goes through: its transport and, when known, the local address
/// of the socket (a multi-homed instance advertises one address per listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Through {
    /// Transport.
    pub transport: Transport,
    /// Local address of the socket, if known.
    pub local: Option<SocketAddr>,
}

impl From<Transport> for Through {
    /// The transport's first listener.
    fn from(transport: Transport) -> Self {
        Through {
            transport,
            local: None,
        }
    }
}

/// The side of the proxy a Record-Route entry faces: who reads it and sends requests to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Endpoints (phones, gateways), which find the pool by DNS.
    Endpoints,
    /// The upstream servers.
    Servers,
}

/// Which Record-Route entries name the pool rather than this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolSides {
    /// Entries facing endpoints and servers: both find the pool by DNS.
    Both,
    /// Only entries facing endpoints; servers reach this instance by its own address.
    Endpoints,
}

/// The pool this instance belongs to (RFC 3263: the name clients find it by SRV).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// The pool's DNS name, lower-case, no trailing dot.
    pub name: String,
    /// Which Record-Route entries name it.
    pub sides: PoolSides,
}

/// Who this instance is on the wire: the host and ports it advertises, and every name and
/// address it is known by.
#[derive(Debug, Clone)]
pub struct LocalIdentity {
    /// Host written into Via and Record-Route (read with [`Self::advertised_host`]: what
    /// is derived from it below is computed once).
    advertised_host: String,
    /// Listen sockets (read with [`Self::listeners`]: `listener_ips` is derived from them).
    listeners: Vec<Listener>,
    /// DNS names this instance also answers to, lower-case: the pool's SRV/A name, the
    /// host's name, `instance.names`. A URI naming one of them without a port is ours
    /// (RFC 3263: the port comes from SRV); with a port, the port must be one we listen on.
    names: Vec<String>,
    /// The host's own interface addresses, for listeners bound to `0.0.0.0` or `::`.
    addresses: Vec<IpAddr>,
    /// The pool, when Record-Route entries name it.
    pool: Option<Pool>,
    /// Flow-token keys (the pool's shared key, this process's epoch and relay address).
    flows: FlowKeys,
    /// `advertised_host` as an address, when it is one (read once, not per request).
    advertised_ip: Option<IpAddr>,
    /// `advertised_host` as written in a header (bracketed when IPv6).
    advertised_written: String,
    /// Each listener's advertised host as an address, when it is one (same order).
    listener_ips: Vec<Option<IpAddr>>,
}

impl LocalIdentity {
    /// An identity advertising `advertised_host` (a name or an IP literal, IPv6 without
    /// brackets) over `listeners`.
    pub fn new(advertised_host: impl Into<String>, listeners: Vec<Listener>) -> Self {
        let advertised_host = advertised_host.into();
        LocalIdentity {
            advertised_written: bracketed(&advertised_host).into_owned(),
            advertised_ip: crate::sip::addr::parse_ip(&advertised_host),
            listener_ips: listeners
                .iter()
                .map(|l| {
                    l.advertised
                        .as_ref()
                        .and_then(|(h, _)| crate::sip::addr::parse_ip(h))
                })
                .collect(),
            advertised_host,
            listeners,
            names: Vec::new(),
            addresses: Vec::new(),
            pool: None,
            flows: FlowKeys::random(),
        }
    }

    /// The host written into Via and Record-Route (IPv6 without brackets).
    pub fn advertised_host(&self) -> &str {
        &self.advertised_host
    }

    /// The listen sockets.
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// Adds the pool: its name is this instance's too, and Record-Route entries facing
    /// `sides` name it instead of this instance.
    pub fn with_pool(mut self, name: &str, sides: PoolSides) -> Self {
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            return self;
        }
        self = self.with_names([&name]);
        self.pool = Some(Pool { name, sides });
        self
    }

    /// Uses these flow-token keys (by default, random ones only this process can read).
    pub fn with_flows(mut self, flows: FlowKeys) -> Self {
        self.flows = flows;
        self
    }

    /// The flow-token keys.
    pub fn flows(&self) -> &FlowKeys {
        &self.flows
    }

    /// The pool, if one is configured.
    pub fn pool(&self) -> Option<&Pool> {
        self.pool.as_ref()
    }

    /// Adds names this instance is known by (empty ones are skipped).
    pub fn with_names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for n in names {
            let n = n.as_ref().trim().trim_end_matches('.').to_ascii_lowercase();
            if !n.is_empty() && !self.names.contains(&n) {
                self.names.push(n);
            }
        }
        self
    }

    /// Adds the host's interface addresses (meaningful when a listener is bound to an
    /// unspecified address).
    pub fn with_addresses(mut self, addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        for a in addresses {
            if !a.is_unspecified() && !self.addresses.contains(&a) {
                self.addresses.push(a);
            }
        }
        self
    }

    /// The host's interface addresses it was given.
    pub fn addresses(&self) -> &[IpAddr] {
        &self.addresses
    }

    /// The names this instance is known by besides its advertised host.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The advertised port for a transport (the first listener of that transport; falls back
    /// to the first listener at all).
    pub fn port_for(&self, t: Transport) -> u16 {
        self.listeners
            .iter()
            .find(|l| l.transport == t)
            .or_else(|| self.listeners.first())
            .map_or(t.default_port(), |l| l.address.port())
    }

    /// The listener a message goes through: the one bound to `through.local` (or a
    /// wildcard one on its port, or the one a worker's own socket there sends for), else
    /// the first of its transport, else the first.
    pub fn listener(&self, through: Through) -> Option<&Listener> {
        let of_transport = || {
            self.listeners
                .iter()
                .filter(|l| l.transport == through.transport)
        };
        through
            .local
            .and_then(|local| {
                of_transport()
                    .find(|l| l.address == local)
                    .or_else(|| {
                        of_transport().find(|l| {
                            l.address.ip().is_unspecified()
                                && l.address.port() == local.port()
                                && l.address.is_ipv4() == local.is_ipv4()
                        })
                    })
                    .or_else(|| of_transport().find(|l| is_worker_socket(l, local)))
            })
            .or_else(|| of_transport().next())
            .or_else(|| self.listeners.first())
    }

    /// The host (bracketed when IPv6) and port written for traffic through a listener:
    /// its own advertised address, else the instance's advertised host with its port.
    pub fn host_port(&self, through: Through) -> (Cow<'_, str>, u16) {
        let listener = self.listener(through);
        let own_port = listener.map_or(through.transport.default_port(), |l| l.address.port());
        match listener.and_then(|l| l.advertised.as_ref()) {
            Some((h, p)) => (bracketed(h), p.unwrap_or(own_port)),
            None => (Cow::Borrowed(self.advertised_written.as_str()), own_port),
        }
    }

    /// Our Via value for a request sent through a listener: from a worker's own socket
    /// ([`Listener::worker_ports`]), with that socket's port, unless the listener
    /// advertises a port of its own (only that one is reachable).
    pub fn via(&self, through: Through, branch: &str) -> String {
        let (host, port) = self.host_port(through);
        let port = match (through.local, self.listener(through)) {
            (Some(local), Some(l))
                if is_worker_socket(l, local)
                    && l.advertised.as_ref().is_none_or(|(_, p)| p.is_none()) =>
            {
                local.port()
            }
            _ => port,
        };
        let token = through.transport.via_token();
        // "SIP/2.0/", the token, a space, ':', the port and ";branch=": at most 30.
        let mut via = String::with_capacity(30 + host.len() + branch.len());
        for part in [
            "SIP/2.0/",
            token,
            " ",
            &host,
            ":",
            itoa::Buffer::new().format(port),
            ";branch=",
            branch,
        ] {
            via.push_str(part);
        }
        via
    }

    /// Our Path value carrying a flow token in its user part (RFC 3327). It names this
    /// instance, not the pool: the registrar must reach the instance holding the flow.
    pub fn path(&self, through: Through, token: &str, ob: bool) -> String {
        let ob = if ob { ";ob" } else { "" };
        let (host, port) = self.host_port(through);
        format!(
            "<sip:{token}@{host}:{port}{};lr{ob}>",
            transport_param(through.transport)
        )
    }

    /// Our Record-Route value for the side of the proxy facing `side` through a listener,
    /// with a flow token in its user part when the side is a phone's flow. It names the
    /// pool, without a port (the side finds an instance by SRV, RFC 3263), when the pool
    /// is configured for that side; else this instance as that listener advertises it.
    pub fn record_route(&self, through: Through, side: Side, token: Option<&str>) -> String {
        let param = transport_param(through.transport);
        let pool = self.pool_for(side);
        let (host, port) = match pool {
            Some(pool) => (Cow::Borrowed(pool), None),
            None => {
                let (host, port) = self.host_port(through);
                (host, Some(port))
            }
        };
        // "<sip:", "@", ":", the port, ";lr>": at most 17 besides the parts.
        let len = 17 + token.map_or(0, str::len) + host.len() + param.len();
        let mut rr = String::with_capacity(len);
        rr.push_str("<sip:");
        if let Some(t) = token {
            rr.push_str(t);
            rr.push('@');
        }
        rr.push_str(&host);
        if let Some(port) = port {
            rr.push(':');
            rr.push_str(itoa::Buffer::new().format(port));
        }
        rr.push_str(param);
        rr.push_str(";lr>");
        rr
    }

    /// Whether the Record-Route entries facing two sides, through two listeners, name
    /// different hosts (the pool and this instance, or two listeners' own addresses): then
    /// each side needs its own entry (RFC 5658).
    pub fn entries_differ(&self, a: (Through, Side), b: (Through, Side)) -> bool {
        match (self.pool_for(a.1), self.pool_for(b.1)) {
            (Some(_), Some(_)) => false,
            (None, None) => self.host_port(a.0) != self.host_port(b.0),
            _ => true,
        }
    }

    fn pool_for(&self, side: Side) -> Option<&str> {
        let pool = self.pool.as_ref()?;
        match (pool.sides, side) {
            (PoolSides::Both, _) | (PoolSides::Endpoints, Side::Endpoints) => Some(&pool.name),
            (PoolSides::Endpoints, Side::Servers) => None,
        }
    }

    /// Whether host and port name this instance: the advertised host, a listener's
    /// address (or, for a listener on `0.0.0.0`/`::`, one of the host's addresses), or one
    /// of its names. An IP literal or the advertised host without a port means the
    /// transport's default port; a name from [`Self::names`] without a port is ours on any
    /// port (it is looked up by SRV).
    pub fn is_local(&self, host: &str, port: Option<u16>, t: Transport) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.strip_suffix('.').unwrap_or(host);
        let listens_on = |p: u16| {
            self.listeners
                .iter()
                .any(|l| l.address.port() == p || l.worker_ports.contains(&p))
        };
        // A listener's own advertised address (a public address per interface).
        let host_ip = crate::sip::addr::parse_ip(host);
        let ips = self.listener_ips.iter();
        let advertised_by_a_listener = self.listeners.iter().zip(ips).any(|(l, ip)| {
            l.advertised.as_ref().is_some_and(|(h, p)| {
                let same_host = match (*ip, host_ip) {
                    (Some(a), Some(b)) => a == b,
                    _ => h.eq_ignore_ascii_case(host),
                };
                same_host && port.unwrap_or(t.default_port()) == p.unwrap_or(l.address.port())
            })
        });
        if advertised_by_a_listener {
            return true;
        }
        if let Some(ip) = host_ip {
            let ours = self.listeners.iter().any(|l| {
                let bound = l.address.ip();
                bound == ip
                    || (bound.is_unspecified()
                        && bound.is_ipv4() == ip.is_ipv4()
                        && (ip.is_loopback() || self.addresses.contains(&ip)))
            }) || self.advertised_ip == Some(ip);
            return ours && listens_on(port.unwrap_or(t.default_port()));
        }
        if host.eq_ignore_ascii_case(&self.advertised_host) {
            return listens_on(port.unwrap_or(t.default_port()));
        }
        if self.names.iter().any(|n| n.eq_ignore_ascii_case(host)) {
            return port.is_none_or(listens_on);
        }
        false
    }

    /// Whether a SIP URI names this instance.
    pub fn is_local_uri(&self, uri: &SipUri<'_>) -> bool {
        let t = uri.transport().unwrap_or(Transport::Udp);
        self.is_local(uri.host, uri.port, t)
    }
}

/// A host as written in a header: an IPv6 address in brackets.
fn bracketed(host: &str) -> Cow<'_, str> {
    if host.contains(':') {
        Cow::Owned(format!("[{host}]"))
    } else {
        Cow::Borrowed(host)
    }
}

/// Whether `local` is a worker's own socket on the listener's address.
fn is_worker_socket(l: &Listener, local: SocketAddr) -> bool {
    l.address.ip() == local.ip() && l.worker_ports.contains(&local.port())
}

/// The Route value that sends a request to another instance of the pool at `to`, on top of
/// the entry naming the flow that instance holds.
pub fn relay_route(to: Target) -> String {
    let host = match to.addr.ip() {
        IpAddr::V6(v6) => format!("[{v6}]"),
        IpAddr::V4(v4) => v4.to_string(),
    };
    format!(
        "<sip:{host}:{}{};lr>",
        to.addr.port(),
        transport_param(to.transport)
    )
}

fn transport_param(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
        Transport::Tls => ";transport=tls",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(t: Transport, a: &str) -> Listener {
        Listener::new(t, a.parse().unwrap())
    }

    fn identity() -> LocalIdentity {
        LocalIdentity::new(
            "sip-a.example.com",
            vec![
                listener(Transport::Udp, "192.0.2.10:5060"),
                listener(Transport::Tls, "192.0.2.10:5061"),
            ],
        )
        .with_names(["Pool.Example.com.", "host-a", ""])
    }

    #[test]
    fn advertised_host_and_listener_addresses_are_ours_on_a_listened_port() {
        let id = identity();
        assert!(id.is_local("sip-a.example.com", None, Transport::Udp));
        assert!(id.is_local("SIP-A.example.com", Some(5061), Transport::Tls));
        assert!(!id.is_local("sip-a.example.com", Some(5070), Transport::Udp));
        assert!(id.is_local("192.0.2.10", None, Transport::Udp));
        assert!(id.is_local("192.0.2.10", None, Transport::Tls));
        assert!(!id.is_local("192.0.2.11", None, Transport::Udp));
        assert!(!id.is_local("elsewhere.example.com", None, Transport::Udp));
    }

    #[test]
    fn pool_and_host_names_are_ours_without_a_port_or_on_a_listened_port() {
        let id = identity();
        assert_eq!(id.names(), ["pool.example.com", "host-a"]);
        assert!(id.is_local("pool.example.com", None, Transport::Tls));
        assert!(id.is_local("pool.example.com.", Some(5061), Transport::Tls));
        assert!(id.is_local("POOL.EXAMPLE.COM", Some(5060), Transport::Udp));
        assert!(!id.is_local("pool.example.com", Some(5080), Transport::Udp));
        assert!(id.is_local("host-a", None, Transport::Udp));
    }

    #[test]
    fn wildcard_listener_knows_the_interfaces_addresses() {
        let id = LocalIdentity::new("10.0.0.5", vec![listener(Transport::Udp, "0.0.0.0:5060")])
            .with_addresses(["10.0.0.5".parse().unwrap(), "10.1.0.5".parse().unwrap()]);
        assert!(id.is_local("10.1.0.5", None, Transport::Udp));
        assert!(id.is_local("127.0.0.1", Some(5060), Transport::Udp));
        assert!(!id.is_local("10.2.0.5", None, Transport::Udp));
        assert!(!id.is_local("::1", None, Transport::Udp));
        let v6 = LocalIdentity::new("2001:db8::5", vec![listener(Transport::Udp, "[::]:5060")])
            .with_addresses(["2001:db8::6".parse().unwrap()]);
        assert!(v6.is_local("[2001:db8::6]", None, Transport::Udp));
        assert!(v6.is_local("2001:db8::5", None, Transport::Udp));
    }

    #[test]
    fn each_listener_advertises_its_own_address_and_takes_it_as_ours() {
        let mut public = listener(Transport::Udp, "192.0.2.10:5062");
        public.advertised = Some(("203.0.113.9".into(), Some(5080)));
        let mut named = listener(Transport::Tls, "192.0.2.10:5061");
        named.advertised = Some(("sip.example.net".into(), None));
        let id = LocalIdentity::new(
            "192.0.2.10",
            vec![
                listener(Transport::Udp, "192.0.2.10:5060"),
                public.clone(),
                named,
            ],
        );
        let through = |t, a: &str| Through {
            transport: t,
            local: Some(a.parse().unwrap()),
        };
        assert_eq!(
            id.via(through(Transport::Udp, "192.0.2.10:5062"), "z9hG4bKx"),
            "SIP/2.0/UDP 203.0.113.9:5080;branch=z9hG4bKx"
        );
        assert_eq!(
            id.via(through(Transport::Udp, "192.0.2.10:5060"), "z9hG4bKx"),
            "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKx"
        );
        assert_eq!(
            id.record_route(Transport::Tls.into(), Side::Endpoints, None),
            "<sip:sip.example.net:5061;transport=tls;lr>",
            "no port given: the listener's own"
        );
        assert!(id.entries_differ(
            (through(Transport::Udp, "192.0.2.10:5062"), Side::Endpoints),
            (through(Transport::Udp, "192.0.2.10:5060"), Side::Servers),
        ));
        assert!(id.is_local("203.0.113.9", Some(5080), Transport::Udp));
        assert!(!id.is_local("203.0.113.9", Some(5060), Transport::Udp));
        assert!(id.is_local("SIP.example.net", Some(5061), Transport::Tls));
        // With the pool on both sides, every entry names the pool: one is enough.
        let pooled = id.clone().with_pool("pool.example.com", PoolSides::Both);
        assert!(!pooled.entries_differ(
            (through(Transport::Udp, "192.0.2.10:5062"), Side::Endpoints),
            (through(Transport::Udp, "192.0.2.10:5060"), Side::Servers),
        ));
    }
}
