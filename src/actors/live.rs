//! The configuration the proxy runs on, as one snapshot that a reload (SIGHUP) replaces
//! whole: the settings and everything built from them (identity, routing table, upstreams
//! and their health, parse limits, resolver).
//!
//! A transaction takes the snapshot when it starts and keeps it to its end, so that work in
//! flight finishes on the configuration it began with (its pair indices, timers and
//! upstreams stay consistent); everything else reads the current one. This module owns the
//! snapshot and how one is built; what a reload changes and logs is `reload`.

use std::sync::Arc;

use crate::config::Settings;
use crate::dns::Locator;
use crate::health::upstreams::Upstreams;
use crate::sip::message::Limits;
use crate::sip::proxy::{LocalIdentity, Router};
use crate::sip::FlowKeys;

/// One snapshot of the running configuration (see the module documentation).
pub struct Live {
    /// Validated settings (listen addresses are the bound ones).
    pub settings: Settings,
    /// Our host, names, ports and flow-token keys.
    pub identity: LocalIdentity,
    /// Pairs and static routes.
    pub router: Router,
    /// The upstream servers and their health, shared with the health actors.
    pub upstreams: Arc<Upstreams>,
    /// Size and header caps of received messages.
    pub limits: Limits,
    /// DNS (RFC 3263) for upstream and route names.
    pub locator: Arc<Locator>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("name", &self.settings.name)
            .field("pairs", &self.settings.pairs.len())
            .finish()
    }
}

impl Live {
    /// The snapshot of `settings`, with these flow-token keys (their instance address is
    /// set from the settings) and this resolver.
    pub fn new(
        settings: Settings,
        flows: FlowKeys,
        upstreams: Arc<Upstreams>,
        locator: Arc<Locator>,
    ) -> Live {
        let identity = super::host::complete_identity(settings.identity());
        // Where the other instances of the pool relay requests for our flows: written into
        // every token we hand out.
        let relay = crate::config::relay_address(
            settings.pool.as_ref().and_then(|p| p.relay_address),
            identity.listeners(),
            identity.advertised_host(),
            identity.addresses(),
        );
        if settings.pool.is_some() && relay.is_none() {
            tracing::warn!(
                event = "no_relay_address",
                "no address for the other instances to relay requests for this instance's flows; set pool.relay_address"
            );
        }
        Live {
            identity: identity.with_flows(flows.with_instance(relay)),
            router: settings.router(),
            upstreams,
            limits: limits(&settings),
            locator,
            settings,
        }
    }
}

/// The parse limits the settings give.
fn limits(settings: &Settings) -> Limits {
    Limits {
        max_size: settings.limits.max_message_size,
        max_headers: settings.limits.max_headers,
    }
}
