//! What the host says about itself: its name and its interfaces' addresses, read once at
//! start-up so that the proxy takes a Route or Request-URI naming either as its own.

use std::net::IpAddr;

use crate::sip::proxy::LocalIdentity;

/// The host's name and, when the kernel has a domain name, its fully qualified name.
pub fn host_names() -> Vec<String> {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    let mut names = Vec::new();
    if let Ok(host) = read("/proc/sys/kernel/hostname") {
        if let Ok(domain) = read("/proc/sys/kernel/domainname") {
            if !host.is_empty() && !domain.is_empty() && domain != "(none)" {
                names.push(format!("{host}.{domain}"));
            }
        }
        names.push(host);
    }
    names.retain(|n| !n.is_empty());
    names
}

/// The addresses of the host's interfaces (empty when they cannot be read).
pub fn interface_addresses() -> Vec<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(list) => list.into_iter().map(|i| i.ip()).collect(),
        Err(e) => {
            tracing::warn!(event = "interface_addresses_unknown", error = %e);
            Vec::new()
        }
    }
}

/// `identity` with the host's names, and its interface addresses when a listener is bound to
/// an unspecified address.
pub fn complete_identity(identity: LocalIdentity) -> LocalIdentity {
    let wildcard = identity
        .listeners()
        .iter()
        .any(|l| l.address.ip().is_unspecified());
    let identity = identity.with_names(host_names());
    if wildcard {
        identity.with_addresses(interface_addresses())
    } else {
        identity
    }
}
