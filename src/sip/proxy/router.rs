//! Where a request goes (RFC 3261 section 16.5, the "target set" of a proxy that forwards
//! to one next hop): the routing policy of sippool over its pairs and static routes.
//!
//! Owns the routing table as read-only data. The pair's *active member* is not here: the
//! health layer knows it, and the shell resolves [`Destination::Pair`] against it.

use crate::sip::addr::{HostPort, Target};
use crate::sip::flow::Flow;
use crate::sip::transport::Transport;
use crate::sip::uri::SipUri;

use super::{LocalIdentity, Reject};

/// An upstream pair after validation.
#[derive(Debug, Clone)]
pub struct Pair {
    /// Pair name.
    pub name: String,
    /// Domain it serves, lower-cased.
    pub domain: Option<String>,
    /// Primary server.
    pub primary: HostPort,
    /// Backup server.
    pub backup: HostPort,
    /// Return to the primary when it comes back.
    pub failback: bool,
}

/// A member of a primary/backup pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Member {
    /// The primary server.
    Primary = 0,
    /// The backup server.
    Backup = 1,
}

impl Member {
    /// The other member of the pair.
    pub fn other(self) -> Member {
        match self {
            Member::Primary => Member::Backup,
            Member::Backup => Member::Primary,
        }
    }
}

/// A static route after validation.
#[derive(Debug, Clone)]
pub struct StaticRoute {
    /// Domain (lower-cased) that selects it.
    pub domain: String,
    /// Where requests for it go.
    pub target: HostPort,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The active member of pair N.
    Pair(usize),
    /// A fixed next hop (static route or upstream from config).
    Host(HostPort),
    /// A flow of this instance (a phone's own connection), named by the token in our Route
    /// entry.
    Flow {
        /// The token, as written in the Route entry.
        token: String,
        /// What it names.
        flow: Flow,
    },
    /// Another instance of the pool, which holds the flow our Route entry names: the
    /// request is relayed to it (RFC 3261 section 16.4, our own Route entry on top).
    Relay {
        /// Where that instance takes relayed requests.
        instance: Target,
        /// The flow it holds.
        flow: Flow,
    },
}

/// The routing table: pairs, static routes and the serving pair.
#[derive(Debug, Clone)]
pub struct Router {
    /// Pairs in config order.
    pub pairs: Vec<Pair>,
    /// Static routes.
    pub routes: Vec<StaticRoute>,
    /// Index of the serving pair.
    pub serving: usize,
}

impl Router {
    /// A pair or static route serving `host`.
    fn by_domain(&self, host: &str) -> Option<Destination> {
        if let Some(r) = self
            .routes
            .iter()
            .find(|r| r.domain.eq_ignore_ascii_case(host))
        {
            return Some(Destination::Host(r.target.clone()));
        }
        self.pairs
            .iter()
            .position(|p| {
                p.domain
                    .as_deref()
                    .is_some_and(|d| d.eq_ignore_ascii_case(host))
            })
            .map(Destination::Pair)
    }

    /// Picks the destination (see the module documentation for the policy).
    pub(super) fn destination(
        &self,
        identity: &LocalIdentity,
        next_route: Option<&SipUri<'_>>,
        request_uri: Option<&SipUri<'_>>,
        from_upstream: bool,
        in_dialog: bool,
    ) -> Result<Destination, Reject> {
        if let Some(r) = next_route {
            return Ok(self.by_domain(r.host).unwrap_or_else(|| uri_destination(r)));
        }
        let Some(uri) = request_uri else {
            // tel: and other non-SIP Request-URIs go to the serving pair.
            return Ok(Destination::Pair(self.serving));
        };
        if let Some(d) = self.by_domain(uri.host) {
            return Ok(d);
        }
        if identity.is_local_uri(uri) {
            if from_upstream {
                return Err(Reject::new(404, "Not Found"));
            }
            return Ok(Destination::Pair(self.serving));
        }
        if from_upstream || in_dialog {
            return Ok(uri_destination(uri));
        }
        Ok(Destination::Pair(self.serving))
    }
}

fn uri_destination(u: &SipUri<'_>) -> Destination {
    let transport = u.transport().unwrap_or(Transport::Udp);
    Destination::Host(HostPort {
        host: u.target_host().to_string(),
        port: u.port.unwrap_or(transport.default_port()),
        transport,
        explicit_port: u.port.is_some(),
    })
}
