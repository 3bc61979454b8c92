//! `[pool]` after validation: the pool's name, which Record-Route entries carry it, and
//! where the other instances relay requests for this instance's flows.
//!
//! Owns the checks of the `[pool]` keys, each error naming its key; like the rest of
//! validation it opens no socket.

use std::time::Duration;

use super::{err, ConfigError, HostPort, Listener};
use crate::sip::proxy::PoolSides;
use crate::sip::transport::Transport;
use crate::sip::Target;

/// The pool settings the running proxy uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// The pool's DNS name, lower-case.
    pub name: String,
    /// Which Record-Route entries name it.
    pub sides: PoolSides,
    /// How long a relayed request waits for the holding instance's first answer.
    pub relay_timeout: Duration,
    /// The configured relay address (`None`: derived from the listeners at start-up).
    pub relay_address: Option<Target>,
}

/// Checks a DNS name written in `key`: letters, digits, `-` and `.`, no port. Returns it
/// lower-case without a trailing dot.
pub(super) fn dns_name(key: &str, n: &str) -> Result<String, ConfigError> {
    let n = n.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid {
        Ok(n)
    } else {
        Err(err(
            key,
            format!("'{n}' is not a DNS name (letters, digits, '-' and '.', no port)"),
        ))
    }
}

/// Validates `[pool]`; `has_token_key`: whether `flow.token_key` is set (the instances
/// must read each other's tokens).
pub(super) fn validate(
    pool: &super::schema::PoolConfig,
    has_token_key: bool,
) -> Result<PoolSettings, ConfigError> {
    let name = dns_name("pool.name", &pool.name)?;
    if !has_token_key {
        return Err(err(
            "flow.token_key",
            "is required when pool.name is set: every instance must read the others' flow tokens",
        ));
    }
    let sides = match pool.record_route.as_str() {
        "both" => PoolSides::Both,
        "endpoints" => PoolSides::Endpoints,
        other => {
            return Err(err(
                "pool.record_route",
                format!("'{other}' is not one of: both, endpoints"),
            ))
        }
    };
    if !(10..=60_000).contains(&pool.relay_timeout_ms) {
        return Err(err("pool.relay_timeout_ms", "must be 10 to 60000 ms"));
    }
    let relay_address = match &pool.relay_address {
        None => None,
        Some(text) => {
            let hp: HostPort = text
                .parse()
                .map_err(|e| err("pool.relay_address", format!("'{text}': {e}")))?;
            let addr = hp.socket_addr().filter(|a| !a.ip().is_unspecified());
            match (addr, hp.transport, hp.explicit_port) {
                (Some(addr), Transport::Udp | Transport::Tcp, true) => Some(Target {
                    transport: hp.transport,
                    addr,
                }),
                _ => {
                    return Err(err(
                        "pool.relay_address",
                        format!("'{text}' must be ip:port;transport=udp|tcp with a specific IP"),
                    ))
                }
            }
        }
    };
    Ok(PoolSettings {
        name,
        sides,
        relay_timeout: Duration::from_millis(pool.relay_timeout_ms),
        relay_address,
    })
}

/// Where the other instances relay requests for this instance's flows: the configured
/// address, else a UDP (then TCP) listener's; for a listener on a wildcard address, the
/// advertised host when it is an IP of that family, else the first interface address of
/// that family that is not loopback. `None` when there is no such address: this instance's
/// flows are then reachable only through it (a relayed request gets 430).
pub fn relay_address(
    configured: Option<Target>,
    listeners: &[Listener],
    advertised_host: &str,
    interfaces: &[std::net::IpAddr],
) -> Option<Target> {
    if configured.is_some() {
        return configured;
    }
    let advertised = advertised_host.parse::<std::net::IpAddr>().ok();
    [Transport::Udp, Transport::Tcp].into_iter().find_map(|t| {
        listeners.iter().filter(|l| l.transport == t).find_map(|l| {
            let bound = l.address.ip();
            let ip = if !bound.is_unspecified() {
                Some(bound)
            } else {
                advertised
                    .filter(|a| a.is_ipv4() == bound.is_ipv4() && !a.is_unspecified())
                    .or_else(|| {
                        interfaces.iter().copied().find(|a| {
                            a.is_ipv4() == bound.is_ipv4()
                                && !a.is_loopback()
                                && !a.is_unspecified()
                        })
                    })
            }?;
            Some(Target {
                transport: t,
                addr: std::net::SocketAddr::new(ip, l.address.port()),
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(t: Transport, a: &str) -> Listener {
        Listener::new(t, a.parse().unwrap())
    }

    #[test]
    fn the_relay_address_prefers_udp_and_fills_in_a_wildcard() {
        let tls = l(Transport::Tls, "10.0.0.5:5061");
        let udp = l(Transport::Udp, "10.0.0.5:5060");
        let got = relay_address(None, &[tls.clone(), udp], "10.0.0.5", &[]);
        assert_eq!(got.map(|t| t.transport), Some(Transport::Udp));
        assert_eq!(relay_address(None, &[tls], "10.0.0.5", &[]), None);
        let any = l(Transport::Tcp, "0.0.0.0:5060");
        let ifs = ["127.0.0.1".parse().unwrap(), "10.1.0.7".parse().unwrap()];
        let by_ifs = relay_address(None, std::slice::from_ref(&any), "sip-a.example.com", &ifs);
        assert_eq!(
            by_ifs.map(|t| t.addr),
            Some("10.1.0.7:5060".parse().unwrap())
        );
        let by_host = relay_address(None, std::slice::from_ref(&any), "10.2.0.9", &ifs);
        assert_eq!(
            by_host.map(|t| t.addr),
            Some("10.2.0.9:5060".parse().unwrap())
        );
        assert_eq!(relay_address(None, &[any], "name", &[]), None);
    }
}
